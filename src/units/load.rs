//! Loading unit directories: which files are units, and how a user directory
//! overrides the stock one.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::graph::check_graph_with;
use super::name::{is_template_name, template_of};
use super::resolve::{is_masked, parse_unit_file, parse_unit_named};
use super::{Diagnostic, Severity, Unit, UnitKind};

/// How many template instances one load makes at most: a template whose
/// instances name further instances (`Wants=a@%i-x.service`) would never end.
const MAX_INSTANCES: usize = 1000;

/// Every unit that parsed, sorted by name, and every diagnostic found.
#[derive(Debug, Clone, Default)]
pub struct LoadedUnits {
    pub units: Vec<Unit>,
    pub diagnostics: Vec<Diagnostic>,
    /// Template files by name (`getty@` -> its path): what `getty@tty1` is made from.
    pub templates: BTreeMap<String, PathBuf>,
}

/// Loads `*.service` and `*.instance` files from `dirs` in order (the caller
/// passes `[stock, user]`). A unit in a later dir replaces one of the same name
/// from an earlier dir. Missing dirs are skipped. Files with errors are left
/// out; graph problems (missing Requires=, cycles) are reported but the units
/// stay loaded, so the supervisor decides what to do with them.
pub fn load_dirs(dirs: &[PathBuf]) -> LoadedUnits {
    load_dirs_with(dirs, &BTreeSet::new())
}

/// [`load_dirs`], also making the template instances in `requested` (ones
/// started by name since the daemon began). Instances named by an enable
/// link (`multi-user.target.wants/getty@tty1.service`) or by another unit's
/// dependencies are made as well, from their template's file.
pub fn load_dirs_with(dirs: &[PathBuf], requested: &BTreeSet<String>) -> LoadedUnits {
    let mut by_name: BTreeMap<String, Unit> = BTreeMap::new();
    let mut templates: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut diagnostics = Vec::new();
    // (alias, unit) from links to a unit file under another name.
    let mut linked: Vec<(String, String)> = Vec::new();
    for dir in dirs {
        let files = match unit_files(dir) {
            Ok(files) => files,
            Err(diag) => {
                diagnostics.extend(diag);
                continue;
            }
        };
        // A later dir's link to /dev/null masks the unit (`systemctl mask`).
        for name in masked_names(dir) {
            linked.retain(|(alias, _)| *alias != name);
            by_name.remove(&name);
            templates.remove(&name);
        }
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
            if let Some(target) = alias_target(&path) {
                // systemd's alias (`dbus-org.freedesktop.login1.service` -> `systemd-logind.service`):
                // the same unit under another name, not a second unit running the same command.
                linked.push((name, target));
                continue;
            }
            match parse_unit_file(&path) {
                Ok((_, warnings)) if is_template_name(&name) => {
                    diagnostics.extend(warnings);
                    templates.insert(name, path);
                }
                Ok((unit, warnings)) => {
                    diagnostics.extend(warnings);
                    by_name.insert(unit.name.clone(), unit);
                }
                Err(diags) => {
                    diagnostics.extend(diags);
                    // A broken override must not quietly run the stock unit the
                    // user meant to replace.
                    let old = by_name.remove(&name).map(|u| u.path).or_else(|| templates.remove(&name));
                    if let Some(old) = old {
                        diagnostics.push(Diagnostic {
                            path: old,
                            line: 0,
                            severity: Severity::Warning,
                            message: format!("not loaded: its override {} has errors", path.display()),
                        });
                    }
                }
            }
        }
    }
    let links = super::install::read_links(dirs);
    let mut wanted: BTreeSet<String> = requested.clone();
    wanted.extend(links.boot.iter().cloned());
    wanted.extend(links.edges.iter().map(|(_, _, to)| to.clone()));
    instantiate(&mut by_name, &templates, wanted, &mut diagnostics);
    for (from, key, to) in &links.edges {
        if let Some(unit) = by_name.get_mut(from) {
            let list = match *key {
                "Requires" => &mut unit.requires,
                "Upholds" => &mut unit.relations.upholds,
                _ => &mut unit.wants,
            };
            if !list.contains(to) {
                list.push(to.clone());
            }
        }
    }
    for name in &links.boot {
        if let Some(unit) = by_name.get_mut(name) {
            unit.starts_at_boot = true;
        }
    }
    let mut units: Vec<Unit> = by_name.into_values().collect();
    diagnostics.extend(resolve_aliases(&mut units, &linked));
    for unit in units.iter_mut() {
        // Enabled under an alias's name (`multi-user.target.wants/sshd.service`).
        if unit.aliases.iter().any(|a| links.boot.contains(a)) {
            unit.starts_at_boot = true;
        }
    }
    let template_names: BTreeSet<String> = templates.keys().cloned().collect();
    diagnostics.extend(check_graph_with(&units, &template_names));
    LoadedUnits { units, diagnostics, templates }
}

/// Makes every template instance that is `wanted` or that a loaded unit
/// names, until no new one appears. A concrete file (`getty@tty1.service`)
/// wins over its template, as in systemd.
fn instantiate(
    by_name: &mut BTreeMap<String, Unit>,
    templates: &BTreeMap<String, PathBuf>,
    mut wanted: BTreeSet<String>,
    diagnostics: &mut Vec<Diagnostic>,
) {
    let mut made = 0usize;
    let mut tried: BTreeSet<String> = BTreeSet::new();
    loop {
        for unit in by_name.values() {
            let lists = [unit.requires.as_slice(), unit.wants.as_slice()]
                .into_iter()
                .chain(unit.relations.all().into_iter().map(|(_, l)| l));
            for list in lists {
                wanted.extend(list.iter().filter(|d| template_of(d).is_some()).cloned());
            }
        }
        let todo: Vec<String> = wanted
            .iter()
            .filter(|n| !by_name.contains_key(*n) && !tried.contains(*n))
            .filter(|n| template_of(n).is_some_and(|t| templates.contains_key(t)))
            .cloned()
            .collect();
        if todo.is_empty() {
            return;
        }
        for name in todo {
            tried.insert(name.clone());
            let Some(path) = template_of(&name).and_then(|t| templates.get(t)) else { continue };
            if made == MAX_INSTANCES {
                diagnostics.push(error(
                    path,
                    format!(
                        "more than {MAX_INSTANCES} instances of this template; '{name}' and later ones are not made"
                    ),
                ));
                return;
            }
            made += 1;
            match std::fs::read_to_string(path)
                .map_err(|e| vec![error(path, format!("cannot read unit file: {e}"))])
                .and_then(|text| parse_unit_named(path, &name, &text))
            {
                Ok((unit, warnings)) => {
                    // The template's own parse already reported what is not about this instance.
                    diagnostics.extend(warnings.into_iter().filter(|w| w.line == 0));
                    by_name.insert(name, unit);
                }
                Err(diags) => diagnostics.extend(diags.into_iter().filter(|d| d.severity == Severity::Error)),
            }
        }
    }
}

/// A link to another unit file of a different name (not a template
/// instance's link to its template, which is how systemd spells those):
/// the name of the unit it is an alias of.
fn alias_target(path: &Path) -> Option<String> {
    let target = std::fs::read_link(path).ok()?;
    let own = path.file_name()?.to_string_lossy().into_owned();
    let to = target.file_name()?.to_string_lossy().into_owned();
    let alias = own != to
        && to.ends_with(".service")
        && template_of(own.trim_end_matches(".service")).is_none_or(|t| format!("{t}.service") != to);
    alias.then(|| to.trim_end_matches(".service").to_string())
}

/// Gives every unit the names it answers to (its `Alias=` names and the
/// links to its file), and makes every reference to an alias (After=,
/// Requires=, Wants=, the relations) name the unit itself, as systemd
/// resolves an alias to the one unit. An `Alias=` that is another unit's name
/// or alias is an error at its line, and is not used; the other side of a
/// `ReloadPropagatedFrom=`/`StopPropagatedFrom=` is written into the unit it
/// names, so the supervisor reads one list.
pub fn resolve_aliases(units: &mut [Unit], linked: &[(String, String)]) -> Vec<Diagnostic> {
    let mut diagnostics = Vec::new();
    let names: BTreeSet<String> = units.iter().map(|u| u.name.clone()).collect();
    // alias -> (unit, its file, the line of Alias=; 0 for a link).
    let mut owner: BTreeMap<String, (String, PathBuf, usize)> = BTreeMap::new();
    for (alias, target) in linked {
        if let Some(unit) = units.iter().find(|u| &u.name == target) {
            if !names.contains(alias) {
                owner.entry(alias.clone()).or_insert((unit.name.clone(), unit.path.clone(), 0));
            }
        }
    }
    for unit in units.iter() {
        for (alias, line) in &unit.install.alias {
            if *alias == unit.name {
                continue;
            }
            let clash = if names.contains(alias) {
                Some(format!("Alias={alias}.service: '{alias}' is the name of another unit"))
            } else {
                match owner.get(alias) {
                    Some((other, path, _)) if *other != unit.name => Some(format!(
                        "Alias={alias}.service: '{alias}' is already an alias of '{other}' ({})",
                        path.display()
                    )),
                    _ => None,
                }
            };
            match clash {
                Some(message) => diagnostics.push(Diagnostic {
                    path: unit.path.clone(),
                    line: *line,
                    severity: Severity::Error,
                    message,
                }),
                None => {
                    owner.insert(alias.clone(), (unit.name.clone(), unit.path.clone(), *line));
                }
            }
        }
    }
    let real = |name: &String| owner.get(name).map_or_else(|| name.clone(), |(unit, _, _)| unit.clone());
    for unit in units.iter_mut() {
        unit.aliases = owner.iter().filter(|(_, (u, _, _))| *u == unit.name).map(|(a, _)| a.clone()).collect();
        let rel = &mut unit.relations;
        let lists = [
            &mut unit.after,
            &mut unit.before,
            &mut unit.requires,
            &mut unit.wants,
            &mut rel.requisite,
            &mut rel.binds_to,
            &mut rel.part_of,
            &mut rel.upholds,
            &mut rel.conflicts,
            &mut rel.on_failure,
            &mut rel.on_success,
            &mut rel.propagates_reload_to,
            &mut rel.reload_propagated_from,
            &mut rel.propagates_stop_to,
            &mut rel.stop_propagated_from,
        ];
        for list in lists {
            let mut resolved: Vec<String> = Vec::with_capacity(list.len());
            for name in list.iter().map(real) {
                if !resolved.contains(&name) {
                    resolved.push(name);
                }
            }
            *list = resolved;
        }
    }
    // X's ReloadPropagatedFrom=Y is Y's PropagatesReloadTo=X (and the same for stops).
    let mut reloads: Vec<(String, String)> = Vec::new();
    let mut stops: Vec<(String, String)> = Vec::new();
    for unit in units.iter() {
        reloads.extend(unit.relations.reload_propagated_from.iter().map(|from| (from.clone(), unit.name.clone())));
        stops.extend(unit.relations.stop_propagated_from.iter().map(|from| (from.clone(), unit.name.clone())));
    }
    for unit in units.iter_mut() {
        for (from, to) in &reloads {
            if *from == unit.name && !unit.relations.propagates_reload_to.contains(to) {
                unit.relations.propagates_reload_to.push(to.clone());
            }
        }
        for (from, to) in &stops {
            if *from == unit.name && !unit.relations.propagates_stop_to.contains(to) {
                unit.relations.propagates_stop_to.push(to.clone());
            }
        }
    }
    diagnostics
}

/// The names of the unit files in `dir` that are links to /dev/null.
fn masked_names(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| UnitKind::from_path(p).is_some() && is_masked(p))
        .filter_map(|p| Some(p.file_stem()?.to_str()?.to_string()))
        .collect()
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
    let mut templates: BTreeSet<String> = BTreeSet::new();
    for path in paths {
        if is_masked(path) {
            // Masked: nothing to check (Debian masks units its init scripts replace).
            continue;
        }
        match parse_unit_file(path) {
            Ok((unit, warnings)) => {
                diagnostics.extend(warnings);
                if is_template_name(&unit.name) {
                    templates.insert(unit.name);
                } else if let Some(prev) = units.iter().position(|u| u.name == unit.name) {
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
    diagnostics.extend(resolve_aliases(&mut units, &[]));
    diagnostics.extend(check_graph_with(&units, &templates));
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
        assert!(
            errors[0].ends_with("bad.service:1: a .service unit needs ExecStart= (a oneshot may do without one if it has ExecStop=, RemainAfterExit=yes or SuccessAction=)")
        );
        assert!(errors[1].ends_with("bad.service:2: unknown key ExecStrat= in [Service]; did you mean ExecStart=?"));
        assert!(errors[2].contains("over.service:2: invalid Restart=sometimes"));
        // The stock unit the broken override meant to replace is not run either.
        assert!(loaded.diagnostics.iter().any(|d| d.severity == Severity::Warning && d.message.contains("override")));
    }

    #[test]
    fn an_alias_link_is_not_a_second_unit() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "systemd-logind.service", SVC);
        write(dir.path(), "getty@.service", "[Service]\nExecStart=/bin/echo %i\n");
        std::os::unix::fs::symlink("systemd-logind.service", dir.path().join("dbus-org.freedesktop.login1.service"))
            .expect("link");
        std::os::unix::fs::symlink("getty@.service", dir.path().join("getty@tty1.service")).expect("link");
        let loaded = load_dirs(&[dir.path().to_path_buf()]);
        let names: Vec<&str> = loaded.units.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["getty@tty1", "systemd-logind"]);
        let argv = loaded.units[0].service.exec_start.as_ref().map(|c| c.argv.clone());
        assert_eq!(argv, Some(vec!["/bin/echo".to_string(), "tty1".to_string()]));
    }

    #[test]
    fn aliases_name_the_unit_in_dependencies_and_a_collision_is_an_error_at_its_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "ssh.service", "[Service]\nExecStart=/bin/true\n[Install]\nAlias=sshd.service\n");
        write(
            dir.path(),
            "web.service",
            "[Unit]\nRequires=sshd.service\nAfter=logind.service\n[Service]\nExecStart=/bin/true\n",
        );
        write(dir.path(), "systemd-logind.service", SVC);
        std::os::unix::fs::symlink("systemd-logind.service", dir.path().join("logind.service")).expect("link");
        let loaded = load_dirs(&[dir.path().to_path_buf()]);
        assert!(loaded.diagnostics.is_empty(), "{:?}", loaded.diagnostics);
        let names: Vec<&str> = loaded.units.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["ssh", "systemd-logind", "web"], "an alias is not a unit");
        assert_eq!(loaded.units[0].aliases, ["sshd"]);
        assert_eq!(loaded.units[1].aliases, ["logind"], "a link under another name is an alias too");
        assert_eq!(loaded.units[2].requires, ["ssh"]);
        assert_eq!(loaded.units[2].after, ["systemd-logind"]);

        // Taken by another unit's name, or by another unit's alias (the first file in name order keeps it): an
        // error at the Alias= line.
        write(
            dir.path(),
            "zz.service",
            "[Unit]\nDescription=x\n[Service]\nExecStart=/bin/true\n[Install]\nAlias=web.service sshd.service\n",
        );
        let loaded = load_dirs(&[dir.path().to_path_buf()]);
        let errors: Vec<String> = loaded.diagnostics.iter().map(|d| d.to_string()).collect();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors[0].ends_with("zz.service:6: Alias=web.service: 'web' is the name of another unit"),
            "{errors:?}"
        );
        assert!(
            errors[1].contains("zz.service:6: Alias=sshd.service: 'sshd' is already an alias of 'ssh'"),
            "{errors:?}"
        );
        assert!(check_paths(&[dir.path().join("zz.service"), dir.path().join("web.service")])
            .iter()
            .any(|d| d.severity == Severity::Error && d.line == 6));
    }

    #[test]
    fn a_link_to_dev_null_masks_a_unit() {
        let stock = tempfile::tempdir().expect("tempdir");
        let user = tempfile::tempdir().expect("tempdir");
        write(stock.path(), "kept.service", SVC);
        write(stock.path(), "masked.service", SVC);
        std::os::unix::fs::symlink("/dev/null", stock.path().join("gone.service")).expect("link");
        std::os::unix::fs::symlink("/dev/null", user.path().join("masked.service")).expect("link");
        let loaded = load_dirs(&[stock.path().to_path_buf(), user.path().to_path_buf()]);
        let names: Vec<&str> = loaded.units.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["kept"]);
        assert!(loaded.diagnostics.is_empty(), "{:?}", loaded.diagnostics);
        // `aikore check` skips a masked file without a word, as Debian ships several.
        assert!(check_paths(&[stock.path().join("gone.service")]).is_empty());
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
        assert!(!text.iter().any(|t| t.contains("network.target")), "targets are dropped silently: {text:?}");
        assert!(text.iter().any(|t| t.contains("c.service:0: cannot read unit file")), "{text:?}");
        assert!(text.iter().any(|t| t.contains("warning: Requires=ghost")), "{text:?}");
        assert!(text.iter().any(|t| t.contains("warning: Wants=maybe")), "{text:?}");
        assert!(text.iter().any(|t| t.contains("ordering cycle: a -> b -> a")), "{text:?}");
    }
}
