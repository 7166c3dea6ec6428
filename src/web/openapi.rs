//! The OpenAPI 3 document of /api/v1, served at /api/v1/openapi.json. A test
//! reads the router's `.route(...)` calls and fails when this table and the
//! routes disagree.

use axum::Json;
use serde_json::{json, Value};

/// (method, path, summary) for every route.
pub const OPERATIONS: &[(&str, &str, &str)] = &[
    ("get", "/healthz", "Liveness, PID-1 mode, process tracking mode, reaped counts"),
    ("get", "/api/v1/units", "Every unit with its status"),
    ("get", "/api/v1/units/{name}", "One unit"),
    ("get", "/api/v1/units/{name}/logs", "The tail of a unit's log (?tail=N)"),
    ("get", "/api/v1/units/{name}/logs/stream", "Server-sent events: the tail, then new lines"),
    ("post", "/api/v1/units/{name}/{action}", "start, stop, restart or reload a unit"),
    ("post", "/api/v1/reload", "Re-read unit files"),
    ("get", "/api/v1/events", "Server-sent events of state changes"),
    ("get", "/api/v1/journal", "The event journal (?unit=&after=&limit=)"),
    ("get", "/api/v1/instances", "Every instance"),
    ("post", "/api/v1/instances", "Create an instance from a blueprint"),
    ("get", "/api/v1/instances/{name}", "One instance"),
    ("patch", "/api/v1/instances/{name}", "Change an instance (?restart=true applies it now)"),
    ("delete", "/api/v1/instances/{name}", "Move an instance to the trash can (?force=true stops it first)"),
    ("get", "/api/v1/instances/{name}/script", "Read launch.sh"),
    ("put", "/api/v1/instances/{name}/script", "Write launch.sh (?restart=true)"),
    ("post", "/api/v1/instances/{name}/{action}", "start, stop, restart or rebuild an instance"),
    ("get", "/api/v1/blueprints", "Stock and custom blueprints with their metadata"),
    ("post", "/api/v1/blueprints", "Save an instance's launch.sh as a custom blueprint"),
    ("get", "/api/v1/trashcan", "Deleted instances"),
    ("post", "/api/v1/trashcan/{id}/restore", "Restore a deleted instance"),
    ("delete", "/api/v1/trashcan/{id}", "Delete a trashed instance for good"),
    ("get", "/api/v1/instances/{name}/terminal", "WebSocket: a shell on a PTY in the instance's dir with its environment"),
    ("get", "/api/v1/instances/{name}/public", "Whether the instance's app is reachable without login"),
    ("put", "/api/v1/instances/{name}/public", "Share the instance's app without login, or stop sharing ({\"public\": bool})"),
    ("get", "/api/v1/auth/check", "NGINX auth_request: 204 with a valid session or bearer (or a public instance's URI in X-Original-URI), else 401"),
    ("get", "/api/v1/proxy", "NGINX routes: the live ones, whether the last render passed nginx -t, its error"),
    ("post", "/api/v1/proxy/render", "Render, test and swap the NGINX routes now"),
    ("get", "/api/v1/openapi.json", "This document"),
    ("get", "/metrics", "Prometheus text format: supervisor, units, host, GPUs"),
    ("get", "/api/v1/system", "CPU, memory, disk and GPUs as JSON"),
];

fn parameters(path: &str) -> Vec<Value> {
    path.split('/')
        .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
        .map(|name| json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" } }))
        .collect()
}

pub fn build() -> Value {
    let mut paths = serde_json::Map::new();
    for (method, path, summary) in OPERATIONS {
        let entry = paths.entry(path.to_string()).or_insert_with(|| json!({}));
        entry[*method] = json!({
            "summary": summary,
            "parameters": parameters(path),
            "responses": {
                "200": { "description": "OK" },
                "4XX": {
                    "description": "The request was refused",
                    "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } }
                }
            }
        });
    }
    json!({
        "openapi": "3.0.3",
        "info": { "title": "AiKore API", "version": env!("CARGO_PKG_VERSION") },
        "paths": paths,
        "components": {
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": { "error": { "type": "string" } }
                }
            }
        }
    })
}

pub async fn document() -> Json<Value> {
    Json(build())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `.route("PATH", get(..).post(..))` in the web module, as (method, path).
    fn routes_in_source() -> Vec<(String, String)> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/web");
        let mut found = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            // HTML pages and their form endpoints are not part of the API.
            if entry.file_name() == "pages.rs" {
                continue;
            }
            let text = std::fs::read_to_string(entry.path()).unwrap();
            for chunk in text.split(".route(\"").skip(1) {
                let (path, rest) = chunk.split_once('"').unwrap();
                if !path.starts_with('/') {
                    continue;
                }
                let call = &rest[..rest.find(")\n").unwrap_or(rest.len())];
                for method in ["get", "post", "put", "patch", "delete"] {
                    if call.contains(&format!("{method}(")) {
                        found.push((method.to_string(), path.to_string()));
                    }
                }
            }
        }
        found.sort();
        found.dedup();
        found
    }

    #[test]
    fn the_document_lists_exactly_the_routes() {
        let mut documented: Vec<(String, String)> =
            OPERATIONS.iter().map(|(m, p, _)| (m.to_string(), p.to_string())).collect();
        documented.sort();
        assert_eq!(documented, routes_in_source());
    }

    #[test]
    fn path_parameters_are_declared() {
        let doc = build();
        let op = &doc["paths"]["/api/v1/instances/{name}/{action}"]["post"];
        let names: Vec<&str> =
            op["parameters"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["name", "action"]);
    }
}
