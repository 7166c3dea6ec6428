//! The import rule of docs/architecture.md, enforced: every `crate::<module>`
//! path in `src/` must point to a module of a lower layer, with the layers
//! read from the module map in that document (so the rule and the check
//! cannot drift apart). Exceptions are listed in [`ALLOWED`] and in the
//! document's "Remaining exceptions" section, each with its reason; an entry
//! that is no longer needed fails the test, so the list can only shrink.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// (from, to, why): imports against the layer order still in the tree. Empty:
/// keep it that way.
const ALLOWED: &[(&str, &str, &str)] = &[];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `module -> layer` from the module map's table rows: "| `name` | what it owns | N |".
fn layers_from_doc(doc: &str) -> BTreeMap<String, u32> {
    let section = doc.split("## Module map").nth(1).expect("docs/architecture.md has a \"## Module map\" section");
    let section = section.split("\n## ").next().unwrap_or(section);
    let mut layers = BTreeMap::new();
    for line in section.lines() {
        let cells: Vec<&str> = line.trim().trim_matches('|').split('|').map(str::trim).collect();
        if cells.len() < 3 {
            continue;
        }
        let (Some(name), Ok(layer)) =
            (cells[0].strip_prefix('`').and_then(|c| c.strip_suffix('`')), cells[cells.len() - 1].parse::<u32>())
        else {
            continue;
        };
        assert!(layers.insert(name.to_string(), layer).is_none(), "{name} is in the module map twice");
    }
    layers
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file of `src/` belongs to (`src/web/api.rs` -> `web`).
fn module_of(file: &Path) -> String {
    let rel = file.strip_prefix(root().join("src")).unwrap();
    let first = rel.components().next().unwrap().as_os_str().to_str().unwrap();
    first.strip_suffix(".rs").unwrap_or(first).to_string()
}

/// Every top-level module named after `crate::` in `code`, the grouped form
/// (`use crate::{a, b::c}`) included. Comment lines are skipped.
fn imported_modules(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in code.lines() {
        if line.trim_start().starts_with("//") {
            continue;
        }
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            let before = &rest[..at];
            rest = &rest[at + "crate::".len()..];
            // `$crate::` in macros and names ending in "crate" are not paths from the root.
            if before.ends_with(|c: char| c == '$' || c == '_' || c.is_alphanumeric()) {
                continue;
            }
            if let Some(group) = rest.strip_prefix('{') {
                let mut depth = 0;
                let mut item = String::new();
                let mut items = Vec::new();
                for c in group.chars() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => break,
                        '}' => depth -= 1,
                        ',' if depth == 0 => items.push(std::mem::take(&mut item)),
                        _ => item.push(c),
                    }
                }
                items.push(item);
                for item in items {
                    let name: String = item.trim().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                    if !name.is_empty() {
                        found.insert(name);
                    }
                }
            } else {
                let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                if !name.is_empty() {
                    found.insert(name);
                }
            }
        }
    }
    found
}

/// from -> {to: a file that imports it}, between different top-level modules.
fn import_graph() -> BTreeMap<String, BTreeMap<String, String>> {
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    files.sort();
    let mut graph: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for file in files {
        let from = module_of(&file);
        let code = std::fs::read_to_string(&file).unwrap();
        let shown = file.strip_prefix(root()).unwrap().display().to_string();
        for to in imported_modules(&code) {
            if to != from {
                graph.entry(from.clone()).or_default().entry(to).or_insert_with(|| shown.clone());
            }
        }
    }
    graph
}

/// Cycles among top-level modules, each as the path that closes it.
fn cycles(graph: &BTreeMap<String, BTreeMap<String, String>>) -> Vec<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeMap<String, String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        found: &mut Vec<Vec<String>>,
    ) {
        if let Some(at) = stack.iter().position(|n| n == node) {
            let mut cycle = stack[at..].to_vec();
            cycle.push(node.to_string());
            found.push(cycle);
            return;
        }
        if done.contains(node) {
            return;
        }
        stack.push(node.to_string());
        for next in graph.get(node).into_iter().flat_map(|m| m.keys()) {
            visit(next, graph, stack, done, found);
        }
        stack.pop();
        done.insert(node.to_string());
    }
    let mut found = Vec::new();
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        visit(node, graph, &mut Vec::new(), &mut done, &mut found);
    }
    found
}

#[test]
fn the_import_scanner_sees_every_form() {
    let code = "use crate::units::Unit;\nuse crate::{clock::now_ms, store::{A, B}};\n\
                let x = crate::proxy::f();\n// crate::web in a comment\nmacro: $crate::daemon\n";
    let found: Vec<String> = imported_modules(code).into_iter().collect();
    assert_eq!(found, ["clock", "proxy", "store", "units"]);
    let mut graph = BTreeMap::new();
    graph.insert("a".to_string(), BTreeMap::from([("b".to_string(), String::new())]));
    graph.insert("b".to_string(), BTreeMap::from([("a".to_string(), String::new())]));
    assert_eq!(cycles(&graph), [["a", "b", "a"]]);
}

#[test]
fn every_module_has_a_layer_in_the_architecture_doc() {
    let doc = std::fs::read_to_string(root().join("docs/architecture.md")).unwrap();
    let layers = layers_from_doc(&doc);
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(f)).filter(|m| m != "main" && m != "lib").collect();
    let missing: Vec<&String> = modules.iter().filter(|m| !layers.contains_key(*m)).collect();
    assert!(missing.is_empty(), "modules without a layer in docs/architecture.md's module map: {missing:?}");
    let stale: Vec<&String> = layers.keys().filter(|m| !modules.contains(*m)).collect();
    assert!(stale.is_empty(), "the module map lists modules src/ does not have: {stale:?}");
}

#[test]
fn imports_only_point_down_the_layers_and_never_in_a_cycle() {
    let doc = std::fs::read_to_string(root().join("docs/architecture.md")).unwrap();
    let layers = layers_from_doc(&doc);
    let graph = import_graph();
    let mut used = BTreeSet::new();
    let mut wrong = Vec::new();
    for (from, targets) in &graph {
        for (to, file) in targets {
            let (Some(a), Some(b)) = (layers.get(from), layers.get(to)) else {
                wrong.push(format!("{file}: {from} -> {to}: a module without a layer in the module map"));
                continue;
            };
            if a > b {
                continue;
            }
            if let Some(entry) = ALLOWED.iter().find(|(f, t, _)| f == from && t == to) {
                used.insert(*entry);
                continue;
            }
            let how = if a == b { "same layer" } else { "upward" };
            wrong.push(format!("{file}: {from} (layer {a}) -> {to} (layer {b}): {how}"));
        }
    }
    assert!(wrong.is_empty(), "imports against docs/architecture.md's layer order:\n{}", wrong.join("\n"));
    let unneeded: Vec<_> = ALLOWED.iter().filter(|e| !used.contains(*e)).collect();
    assert!(unneeded.is_empty(), "allowed exceptions no longer needed, remove them here and in the doc: {unneeded:?}");
    for (from, to, _) in ALLOWED {
        assert!(
            doc.contains(&format!("`{from}` -> `{to}`")),
            "the exception {from} -> {to} is not listed in docs/architecture.md"
        );
    }
    let found = cycles(&graph);
    assert!(found.is_empty(), "import cycles between modules: {found:?}");
}
