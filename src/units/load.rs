//! Loading unit directories: which files are units, and how a user directory
//! overrides the stock one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::graph::check_graph;
use super::resolve::parse_unit_file;
use super::{Diagnostic, Severity, Unit, UnitKind};

/// Every unit that parsed, sorted by name, and every diagnostic found.
#[derive(Debug, Clone, Default)]
pub struct LoadedUnits {
    pub units: Vec<Unit>,
    pub diagnostics: Vec<Diagnostic>,
}

/// Loads `*.service` and `*.instance` files from `dirs` in order (the caller
/// passes `[stock, user]`). A unit in a later dir replaces one of the same name
/// from an earlier dir. Missing dirs are skipped. Files with errors are left
/// out; graph problems (missing Requires=, cycles) are reported but the units
/// stay loaded, so the supervisor decides what to do with them.
pub fn load_dirs(dirs: &[PathBuf]) -> LoadedUnits {
    let mut by_name: BTreeMap<String, Unit> = BTreeMap::new();
    let mut diagnostics = Vec::new();
    for dir in dirs {
        let files = match unit_files(dir) {
            Ok(files) => files,
            Err(diag) => {
                diagnostics.extend(diag);
                continue;
            }
        };
        let mut seen_here: BTreeMap<String, PathBuf> = BTreeMap::new();
        for path in files {
            let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or("").to_string();
            if let Some(other) = seen_here.get(&name) {
                diagnostics.push(error(
                    &path,
                    format!("unit name '{name}' is already used by {}; this file is ignored", other.display()),
                ));
                continue;
            }
            seen_here.insert(name.clone(), path.clone());
            match parse_unit_file(&path) {
                Ok((unit, warnings)) => {
                    diagnostics.extend(warnings);
                    by_name.insert(unit.name.clone(), unit);
                }
                Err(diags) => {
                    diagnostics.extend(diags);
                    // A broken override must not quietly run the stock unit the
                    // user meant to replace.
                    if let Some(old) = by_name.remove(&name) {
                        diagnostics.push(Diagnostic {
                            path: old.path.clone(),
                            line: 0,
                            severity: Severity::Warning,
                            message: format!("not loaded: its override {} has errors", path.display()),
                        });
                    }
                }
            }
        }
    }
    let units: Vec<Unit> = by_name.into_values().collect();
    diagnostics.extend(check_graph(&units));
    LoadedUnits { units, diagnostics }
}

/// The unit files directly in `dir`, sorted by file name; a missing dir is empty.
fn unit_files(dir: &Path) -> Result<Vec<PathBuf>, Vec<Diagnostic>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(vec![error(dir, format!("cannot read unit directory: {e}"))]),
    };
    let mut files = Vec::new();
    let mut diags = Vec::new();
    for entry in entries {
        match entry {
            Ok(entry) => {
                let path = entry.path();
                // metadata() follows symlinks, so linked unit files count.
                let is_file = std::fs::metadata(&path).map(|m| m.is_file()).unwrap_or(false);
                if is_file && UnitKind::from_path(&path).is_some() {
                    files.push(path);
                }
            }
            Err(e) => diags.push(error(dir, format!("cannot list unit directory: {e}"))),
        }
    }
    if !diags.is_empty() {
        return Err(diags);
    }
    files.sort();
    Ok(files)
}

/// Validates the given files like `systemd-analyze verify`: each file on its
/// own, then the set as a whole (missing Requires=/Wants= targets, cycles).
pub fn check_paths(paths: &[PathBuf]) -> Vec<Diagnostic> {
    let mut diagnostics = Vec::new();
    let mut units: Vec<Unit> = Vec::new();
    for path in paths {
        match parse_unit_file(path) {
            Ok((unit, warnings)) => {
                diagnostics.extend(warnings);
                if let Some(prev) = units.iter().position(|u| u.name == unit.name) {
                    diagnostics.push(Diagnostic {
                        path: path.clone(),
                        line: 0,
                        severity: Severity::Warning,
                        message: format!(
                            "unit '{}' is also defined by {}; this file overrides it",
                            unit.name,
                            units[prev].path.display()
                        ),
                    });
                    units[prev] = unit;
                } else {
                    units.push(unit);
                }
            }
            Err(diags) => diagnostics.extend(diags),
        }
    }
    diagnostics.extend(check_graph(&units));
    diagnostics
}

fn error(path: &Path, message: String) -> Diagnostic {
    Diagnostic { path: path.to_path_buf(), line: 0, severity: Severity::Error, message }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn write(dir: &Path, name: &str, text: &str) {
        fs::write(dir.join(name), text).expect("write fixture");
    }

    const SVC: &str = "[Service]\nExecStart=/bin/true\n";

    #[test]
    fn later_dir_overrides_and_sorted() {
        let stock = tempfile::tempdir().expect("tempdir");
        let user = tempfile::tempdir().expect("tempdir");
        write(stock.path(), "nginx.service", "[Unit]\nDescription=stock\n[Service]\nExecStart=/bin/true\n");
        write(stock.path(), "api.service", SVC);
        write(stock.path(), "README.md", "not a unit");
        write(user.path(), "nginx.service", "[Unit]\nDescription=user\n[Service]\nExecStart=/bin/true\n");
        write(user.path(), "sd.instance", "[Instance]\nBlueprint=sd\n");
        let missing = stock.path().join("nope");
        let loaded = load_dirs(&[stock.path().to_path_buf(), missing, user.path().to_path_buf()]);
        let names: Vec<&str> = loaded.units.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["api", "nginx", "sd"]);
        assert_eq!(loaded.units[1].description, "user");
        assert!(loaded.diagnostics.is_empty(), "{:?}", loaded.diagnostics);
    }

    #[test]
    fn broken_files_are_left_out_with_diagnostics() {
        let stock = tempfile::tempdir().expect("tempdir");
        let user = tempfile::tempdir().expect("tempdir");
        write(stock.path(), "good.service", SVC);
        write(stock.path(), "bad.service", "[Service]\nExecStrat=/bin/true\n");
        write(stock.path(), "over.service", SVC);
        write(user.path(), "over.service", "[Service]\nRestart=sometimes\nExecStart=/bin/true\n");
        let loaded = load_dirs(&[stock.path().to_path_buf(), user.path().to_path_buf()]);
        let names: Vec<&str> = loaded.units.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["good"]);
        let errors: Vec<String> =
            loaded.diagnostics.iter().filter(|d| d.severity == Severity::Error).map(|d| d.to_string()).collect();
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors[0].ends_with("bad.service:1: a .service unit needs ExecStart="));
        assert!(errors[1].ends_with("bad.service:2: unknown key ExecStrat= in [Service]; did you mean ExecStart=?"));
        assert!(errors[2].contains("over.service:2: invalid Restart=sometimes"));
        // The stock unit the broken override meant to replace is not run either.
        assert!(loaded.diagnostics.iter().any(|d| d.severity == Severity::Warning && d.message.contains("override")));
    }

    #[test]
    fn check_reports_graph_problems() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(
            dir.path(),
            "a.service",
            "[Unit]\nAfter=b\nRequires=b ghost\nWants=maybe network.target\n[Service]\nExecStart=/bin/true\n",
        );
        write(dir.path(), "b.service", "[Unit]\nAfter=a.service\n[Service]\nExecStart=/bin/true\n");
        let diags =
            check_paths(&[dir.path().join("a.service"), dir.path().join("b.service"), dir.path().join("c.service")]);
        let text: Vec<String> = diags.iter().map(|d| d.to_string()).collect();
        assert!(text.iter().any(|t| t.contains("network.target")), "{text:?}");
        assert!(text.iter().any(|t| t.contains("c.service:0: cannot read unit file")), "{text:?}");
        assert!(text.iter().any(|t| t.contains("Requires=ghost") && !t.contains("warning")), "{text:?}");
        assert!(text.iter().any(|t| t.contains("warning: Wants=maybe")), "{text:?}");
        assert!(text.iter().any(|t| t.contains("ordering cycle: a -> b -> a")), "{text:?}");
    }
}
