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
    ("post", "/api/v1/units/{name}/{action}", "start, stop, restart or reload a unit (a template's instance is loaded on first start)"),
    ("get", "/api/v1/units/{name}/file", "The unit's file: {unit, path, text} (aikore cat)"),
    ("get", "/api/v1/units/{name}/properties", "The unit's properties as [key, value] pairs, systemd's names (aikore show)"),
    ("get", "/api/v1/units/{name}/dependencies", "The tree of units it pulls in (aikore list-dependencies)"),
    ("get", "/api/v1/units/{name}/processes", "Its processes with parent pids, memory, CPU seconds, tasks (aikore status)"),
    ("post", "/api/v1/units/{name}/kill", "Send ?signal= (default SIGTERM) to every process of the unit"),
    ("post", "/api/v1/units/{name}/reset-failed", "A failed or error unit that is not running becomes stopped"),
    ("post", "/api/v1/units/{name}/enable", "Link the unit as its [Install] says: it starts at boot"),
    ("post", "/api/v1/units/{name}/disable", "Remove the unit's [Install] links"),
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
    ("post", "/api/v1/instances/{name}/{action}", "start, stop (drains first), restart, rebuild, reinstall or update an instance"),
    ("get", "/api/v1/blueprints", "Stock and custom blueprints with their metadata"),
    ("post", "/api/v1/blueprints", "Save an instance's launch.sh as a custom blueprint"),
    ("get", "/api/v1/trashcan", "Deleted instances"),
    ("post", "/api/v1/trashcan/{id}/restore", "Restore a deleted instance"),
    ("delete", "/api/v1/trashcan/{id}", "Delete a trashed instance for good"),
    ("get", "/api/v1/instances/{name}/terminal", "WebSocket: a shell on a PTY in the instance's dir with its environment"),
    ("get", "/api/v1/instances/{name}/public", "Whether the instance's app is reachable without login"),
    ("put", "/api/v1/instances/{name}/public", "Share the instance's app without login, or stop sharing ({\"public\": bool})"),
    ("get", "/app-login", "Apps-origin login handshake: a logged-in browser gets a one-time code and goes to the apps origin (?next=PATH)"),
    ("get", "/_aikore/handshake", "On the apps origin: spends a one-time code, sets the apps origin's cookie, redirects to ?next"),
    ("get", "/api/v1/auth/check", "NGINX auth_request: 204 with a valid session or bearer (or a public instance's URI in X-Original-URI), else 401"),
    ("get", "/api/v1/proxy", "NGINX routes: the live ones, whether the last render passed nginx -t, its error"),
    ("post", "/api/v1/proxy/render", "Render, test and swap the NGINX routes now"),
    ("get", "/api/v1/openapi.json", "This document"),
    ("get", "/metrics", "Prometheus text format: supervisor, units, host, GPUs"),
    ("get", "/api/v1/system", "CPU, memory, disk and GPUs as JSON"),
];

/// JSON request bodies: (method, path, schema name in components).
pub const BODIES: &[(&str, &str, &str)] = &[
    ("post", "/api/v1/instances", "InstanceCreate"),
    ("patch", "/api/v1/instances/{name}", "InstanceChange"),
    ("put", "/api/v1/instances/{name}/script", "Script"),
    ("put", "/api/v1/instances/{name}/public", "Public"),
    ("post", "/api/v1/blueprints", "SaveBlueprint"),
];

/// The instance fields a create or change may set (src/web/instances.rs InstanceInput).
fn instance_properties(create: bool) -> Value {
    let mut props = json!({
        "name": { "type": "string", "pattern": "^[a-z0-9][a-z0-9_-]{0,62}$", "description": "A change renames the instance" },
        "description": { "type": "string" },
        "blueprint": { "type": "string", "description": "A blueprint id from GET /api/v1/blueprints" },
        "gpus": {
            "oneOf": [
                { "type": "string", "description": "Comma-separated GPU indices or UUIDs; empty for CPU only; \"auto\" or \"auto:N\" for the freest healthy GPUs at each start (docs/gpus.md)" },
                { "type": "array", "items": { "oneOf": [{ "type": "integer", "minimum": 0 }, { "type": "string" }] } }
            ]
        },
        "port": {
            "oneOf": [
                { "type": "integer", "minimum": 1, "maximum": 65535 },
                { "type": "string", "description": "\"auto\" (leased from AIKORE_PORT_RANGE) or a number" }
            ]
        },
        "autostart": { "type": "boolean" },
        "active_slot": { "type": "string", "nullable": true, "enum": ["comfyui", null] },
        "persistent_mode": { "type": "boolean" },
        "public": { "type": "boolean", "description": "Served on the apps origin without login" },
        "stall_after_sec": { "type": "integer", "minimum": 0 },
        "output_dir": { "type": "string", "nullable": true, "description": "An absolute path" },
        "environment": { "type": "object", "additionalProperties": { "type": "string" } }
    });
    if create {
        props["start"] = json!({ "type": "boolean", "description": "Start it right away" });
    }
    props
}

fn schemas() -> Value {
    json!({
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": { "error": { "type": "string" } }
        },
        "InstanceCreate": {
            "type": "object",
            "required": ["name", "blueprint"],
            "additionalProperties": false,
            "properties": instance_properties(true)
        },
        "InstanceChange": {
            "type": "object",
            "additionalProperties": false,
            "properties": instance_properties(false)
        },
        "Script": {
            "type": "object",
            "required": ["content"],
            "additionalProperties": false,
            "properties": { "content": { "type": "string", "description": "The whole launch.sh" } }
        },
        "Public": {
            "type": "object",
            "required": ["public"],
            "additionalProperties": false,
            "properties": { "public": { "type": "boolean" } }
        },
        "SaveBlueprint": {
            "type": "object",
            "required": ["instance", "id"],
            "additionalProperties": false,
            "properties": {
                "instance": { "type": "string", "description": "The instance whose launch.sh becomes the blueprint" },
                "id": { "type": "string", "description": "The new blueprint's id" }
            }
        }
    })
}

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
        if let Some((_, _, schema)) = BODIES.iter().find(|(m, p, _)| m == method && p == path) {
            entry[*method]["requestBody"] = json!({
                "required": true,
                "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{schema}") } } }
            });
            entry[*method]["responses"]["413"] = json!({ "description": "The body is over the size limit" });
        }
    }
    json!({
        "openapi": "3.0.3",
        "info": { "title": "AiKore API", "version": env!("CARGO_PKG_VERSION") },
        "paths": paths,
        "components": { "schemas": schemas() }
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
    fn json_bodies_are_documented_with_their_schemas() {
        let doc = build();
        for (method, path, schema) in BODIES {
            let op = &doc["paths"][*path][*method];
            assert!(op.is_object(), "{method} {path} is not an operation");
            let r = op["requestBody"]["content"]["application/json"]["schema"]["$ref"].as_str().unwrap();
            assert_eq!(r, format!("#/components/schemas/{schema}"));
            assert!(doc["components"]["schemas"][*schema].is_object(), "{schema}");
        }
        // Every handler taking Json<...> has its body documented.
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/web");
        let mut takers = 0;
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            if entry.file_name() == "openapi.rs" {
                continue;
            }
            let text = std::fs::read_to_string(entry.path()).unwrap();
            takers += text.matches("body: Result<Json<").count();
        }
        assert_eq!(takers, BODIES.len(), "a handler reads a JSON body that BODIES does not list");
        let fields = doc["components"]["schemas"]["InstanceChange"]["properties"].as_object().unwrap();
        assert!(fields.contains_key("public") && fields.contains_key("gpus"));
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
