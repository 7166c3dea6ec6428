//! Blueprints: the scripts instances are created from, and the metadata block
//! at the top of each (`### AIKORE-METADATA-START ###` ... `# aikore.key = value`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const START: &str = "### AIKORE-METADATA-START ###";
const END: &str = "### AIKORE-METADATA-END ###";

#[derive(Debug, Clone, serde::Serialize)]
pub struct Blueprint {
    /// The file stem: `comfyui` for `comfyui.sh`.
    pub id: String,
    pub name: String,
    pub category: String,
    pub description: String,
    pub venv_type: String,
    pub venv_path: String,
    /// `subpath` (served under /app/<name>/) or `port` (reached on its own port).
    pub proxy: String,
    pub persistent_mode: bool,
    /// From `<data>/blueprints` rather than the stock set.
    pub custom: bool,
    #[serde(skip)]
    pub path: PathBuf,
}

/// `# aikore.key = value` lines between the markers, in order; anything else is ignored.
fn metadata_entries(text: &str) -> impl Iterator<Item = (&str, &str)> {
    text.lines()
        .take(200)
        .map(str::trim)
        .skip_while(|line| *line != START)
        .skip(1)
        .take_while(|line| *line != END)
        .filter_map(|line| {
            let (key, value) = line.strip_prefix('#')?.trim().strip_prefix("aikore.")?.split_once('=')?;
            Some((key.trim(), value.trim()))
        })
}

/// The metadata as a map: a key given twice keeps its last value.
pub fn parse_metadata(text: &str) -> BTreeMap<String, String> {
    metadata_entries(text).map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// Every `# aikore.failure = class: regex` line, in order (the one key that
/// may repeat).
pub fn failure_specs(text: &str) -> Vec<String> {
    metadata_entries(text).filter(|(k, _)| *k == "failure").map(|(_, v)| v.to_string()).collect()
}

fn read_blueprint(path: &Path, custom: bool) -> Option<Blueprint> {
    let id = path.file_stem()?.to_str()?.to_string();
    // functions.sh and persistent-run.sh are helpers, not blueprints.
    if !crate::units::is_valid_unit_name(&id) || id == "functions" || id == "persistent-run" {
        return None;
    }
    let text = std::fs::read_to_string(path).ok()?;
    let meta = parse_metadata(&text);
    let get = |k: &str, default: &str| meta.get(k).cloned().unwrap_or_else(|| default.to_string());
    Some(Blueprint {
        name: get("name", &id),
        category: get("category", "Other"),
        description: get("description", ""),
        venv_type: get("venv_type", "none"),
        venv_path: get("venv_path", ""),
        proxy: match meta.get("proxy").map(String::as_str) {
            Some("port") => "port".into(),
            _ => "subpath".into(),
        },
        persistent_mode: matches!(meta.get("persistent_mode").map(String::as_str), Some("true" | "yes" | "1")),
        custom,
        path: path.to_path_buf(),
        id,
    })
}

/// Stock and custom blueprints by id; a custom one with a stock id wins.
pub fn list(stock: &Path, custom: &Path) -> Vec<Blueprint> {
    let mut by_id: BTreeMap<String, Blueprint> = BTreeMap::new();
    for (dir, is_custom) in [(stock, false), (custom, true)] {
        let Ok(entries) = std::fs::read_dir(dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("sh") {
                continue;
            }
            if let Some(bp) = read_blueprint(&path, is_custom) {
                by_id.insert(bp.id.clone(), bp);
            }
        }
    }
    by_id.into_values().collect()
}

pub fn find(stock: &Path, custom: &Path, id: &str) -> Option<Blueprint> {
    if !crate::units::is_valid_unit_name(id) {
        return None;
    }
    [custom, stock]
        .iter()
        .zip([true, false])
        .find_map(|(dir, is_custom)| read_blueprint(&dir.join(format!("{id}.sh")), is_custom))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_between_markers_only() {
        let text = "#!/bin/bash\n# aikore.name = Outside\n### AIKORE-METADATA-START ###\n# aikore.name = ComfyUI\n# aikore.venv_path = ./env\n#aikore.proxy=port\n### AIKORE-METADATA-END ###\n# aikore.category = Late\n";
        let meta = parse_metadata(text);
        assert_eq!(meta.get("name").map(String::as_str), Some("ComfyUI"));
        assert_eq!(meta.get("venv_path").map(String::as_str), Some("./env"));
        assert_eq!(meta.get("proxy").map(String::as_str), Some("port"));
        assert!(!meta.contains_key("category"));
    }

    #[test]
    fn failure_lines_repeat_and_keep_their_regex_whole() {
        let text = "### AIKORE-METADATA-START ###\n# aikore.failure = cuda-oom: HIP out of memory\n# aikore.name = X\n# aikore.failure = network: a=b\n### AIKORE-METADATA-END ###\n# aikore.failure = disk-full: late\n";
        assert_eq!(failure_specs(text), ["cuda-oom: HIP out of memory", "network: a=b"]);
    }

    #[test]
    fn custom_overrides_stock_and_functions_is_not_a_blueprint() {
        let stock = tempfile::tempdir().unwrap();
        let custom = tempfile::tempdir().unwrap();
        std::fs::write(
            stock.path().join("a.sh"),
            "### AIKORE-METADATA-START ###\n# aikore.name = Stock A\n### AIKORE-METADATA-END ###\n",
        )
        .unwrap();
        std::fs::write(stock.path().join("functions.sh"), "").unwrap();
        std::fs::write(stock.path().join("persistent-run.sh"), "").unwrap();
        std::fs::write(
            custom.path().join("a.sh"),
            "### AIKORE-METADATA-START ###\n# aikore.name = Mine\n### AIKORE-METADATA-END ###\n",
        )
        .unwrap();
        let all = list(stock.path(), custom.path());
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].name, "Mine");
        assert!(all[0].custom);
        assert!(find(stock.path(), custom.path(), "../a").is_none());
        assert!(find(stock.path(), custom.path(), "persistent-run").is_none());
    }
}
