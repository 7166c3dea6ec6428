//! `[Install]` and `aikore enable/disable`, the way systemd keeps it: enabling
//! a unit puts an entry named after it into `<target>.wants/` (WantedBy=) or
//! `<target>.requires/` (RequiredBy=) in the user units dir (`<data>/units`);
//! loading reads those dirs back. aikore writes a small file where systemd
//! makes a symlink (symlinks in aikore's state are quarantined); a stock dir's
//! symlinks (Debian's `/lib/systemd/system`) count the same. A link under a `.target` means "start at
//! boot" (aikore has no targets: every target is reached at boot); a link
//! under `<service>.service.wants/` adds to that service's Wants=, as in systemd.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::name::{is_template_name, template_of};
use super::resolve::parse_unit_named;
use super::{is_valid_service_name, Unit};

/// What the link dirs of the units dirs say.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Links {
    /// Units linked under a target: started at boot.
    pub boot: BTreeSet<String>,
    /// `(from, "Wants" | "Requires" | "Upholds", to)`: links under a service's `.wants/`, `.requires/` or `.upholds/`.
    pub edges: Vec<(String, &'static str, String)>,
}

/// Reads every `*.wants/`, `*.requires/` and `*.upholds/` dir directly in `dirs`.
pub fn read_links(dirs: &[PathBuf]) -> Links {
    let mut links = Links::default();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else { continue };
        for entry in entries.flatten() {
            let dir_name = entry.file_name().to_string_lossy().into_owned();
            let kinds = [(".wants", "Wants"), (".requires", "Requires"), (".upholds", "Upholds")];
            let Some((owner, key)) =
                kinds.iter().find_map(|(suffix, key)| Some((dir_name.strip_suffix(suffix)?.to_string(), *key)))
            else {
                continue;
            };
            let Ok(linked) = std::fs::read_dir(entry.path()) else { continue };
            for link in linked.flatten() {
                let file = link.file_name().to_string_lossy().into_owned();
                let Some(name) = file.strip_suffix(".service").filter(|n| is_valid_service_name(n)) else { continue };
                if owner.ends_with(".target") {
                    links.boot.insert(name.to_string());
                } else if let Some(from) = owner.strip_suffix(".service").filter(|n| is_valid_service_name(n)) {
                    links.edges.push((from.to_string(), key, name.to_string()));
                }
            }
        }
    }
    links
}

/// The file `name` is defined by, searching `dirs` last first (the user dir
/// overrides the stock one): `name.service`, else its template's file.
fn unit_file(dirs: &[PathBuf], name: &str) -> Option<PathBuf> {
    let template = template_of(name).map(|t| format!("{t}.service"));
    let candidates = [Some(format!("{name}.service")), template];
    candidates.iter().flatten().find_map(|file| dirs.iter().rev().map(|d| d.join(file)).find(|p| p.is_file()))
}

fn load(dirs: &[PathBuf], name: &str) -> Result<Unit, String> {
    let path = unit_file(dirs, name).ok_or_else(|| format!("no unit file for '{name}' in the units dirs"))?;
    let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse_unit_named(&path, name, &text).map(|(u, _)| u).map_err(|diags| {
        let text: Vec<String> = diags.iter().map(|d| d.to_string()).collect();
        format!("{} has errors:\n{}", path.display(), text.join("\n"))
    })
}

/// The unit an alias (`Alias=`, or a link under another name) stands for, as
/// `systemctl enable` follows one; any other name as it is.
fn real_name(dirs: &[PathBuf], name: &str) -> String {
    if unit_file(dirs, name).is_some_and(|p| p.symlink_metadata().is_ok_and(|m| !m.file_type().is_symlink())) {
        return name.to_string();
    }
    let loaded = super::load_dirs(dirs);
    loaded.units.into_iter().find(|u| u.aliases.iter().any(|a| a == name)).map_or_else(|| name.to_string(), |u| u.name)
}

/// The link dirs a unit's [Install] names: `multi-user.target.wants`, `web.service.requires`.
fn link_dirs(unit: &Unit) -> Vec<String> {
    let dir = |owner: &str, kind: &str| {
        if owner.ends_with(".target") {
            format!("{owner}.{kind}")
        } else {
            format!("{owner}.service.{kind}")
        }
    };
    let wants = unit.install.wanted_by.iter().map(|o| dir(o, "wants"));
    let upholds = unit.install.upheld_by.iter().map(|o| dir(o, "upholds"));
    wants.chain(unit.install.required_by.iter().map(|o| dir(o, "requires"))).chain(upholds).collect()
}

/// `aikore enable NAME`: links NAME (and its Also= units) as its [Install]
/// says, in `dirs`' last (the user dir). A template (`getty@`) is enabled
/// as its DefaultInstance=. Returns one line per link made; none when it
/// was enabled already.
pub fn enable(dirs: &[PathBuf], name: &str) -> Result<Vec<String>, String> {
    let user_dir = dirs.last().ok_or("no units dir")?;
    let name = &real_name(dirs, name);
    let mut done = Vec::new();
    let mut seen = BTreeSet::new();
    enable_one(dirs, user_dir, name, &mut seen, &mut done, true)?;
    Ok(done)
}

fn enable_one(
    dirs: &[PathBuf],
    user_dir: &Path,
    name: &str,
    seen: &mut BTreeSet<String>,
    done: &mut Vec<String>,
    first: bool,
) -> Result<(), String> {
    if !seen.insert(name.to_string()) {
        return Ok(());
    }
    let mut unit = load(dirs, name)?;
    let mut name = name.to_string();
    if is_template_name(&name) {
        let instance = unit.install.default_instance.clone().ok_or_else(|| {
            format!("{name} is a template with no DefaultInstance=: enable one of its instances ({name}NAME)")
        })?;
        name = format!("{name}{instance}");
        unit = load(dirs, &name)?;
    }
    if !unit.install.is_installable() {
        return if first {
            Err(format!(
                "{name} has no WantedBy=, RequiredBy= or Also= in [Install]: it is static. A service without them \
                 starts at boot already; instances start at boot with Autostart=yes"
            ))
        } else {
            Ok(())
        };
    }
    for dir in link_dirs(&unit) {
        let dir = user_dir.join(dir);
        let link = dir.join(format!("{name}.service"));
        if link.symlink_metadata().is_ok() {
            continue;
        }
        std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        // A plain file, not systemd's symlink: aikore moves any symlink in its own state to
        // quarantine at start (docs/security.md). Only the name counts; the text is for people.
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&link)
            .and_then(|mut f| std::io::Write::write_all(&mut f, format!("{}\n", unit.path.display()).as_bytes()))
            .map_err(|e| format!("cannot create {}: {e}", link.display()))?;
        done.push(format!("Created {} (for {})", link.display(), unit.path.display()));
    }
    for also in unit.install.also.clone() {
        enable_one(dirs, user_dir, &also, seen, done, false)?;
    }
    Ok(())
}

/// `aikore disable NAME`: removes NAME's links (and its Also= units') from
/// the user dir. A link in a stock dir (shipped with the image) is not
/// aikore's to remove: it is reported as an error.
pub fn disable(dirs: &[PathBuf], name: &str) -> Result<Vec<String>, String> {
    let user_dir = dirs.last().ok_or("no units dir")?;
    let name = &real_name(dirs, name);
    let mut names = vec![name.to_string()];
    if let Ok(unit) = load(dirs, name) {
        if let Some(instance) = unit.install.default_instance.as_ref().filter(|_| is_template_name(name)) {
            names[0] = format!("{name}{instance}");
        }
        names.extend(unit.install.also.iter().cloned());
    }
    let mut done = Vec::new();
    for name in &names {
        for link in links_of(std::slice::from_ref(user_dir), name) {
            std::fs::remove_file(&link).map_err(|e| format!("cannot remove {}: {e}", link.display()))?;
            done.push(format!("Removed {}", link.display()));
        }
    }
    let stock = &dirs[..dirs.len() - 1];
    if let Some(link) = links_of(stock, &names[0]).first() {
        return Err(format!(
            "{} stays enabled by {}, which belongs to the stock units dir (override the unit in {} instead)",
            names[0],
            link.display(),
            user_dir.display()
        ));
    }
    Ok(done)
}

/// Every `*.wants/NAME.service`, `*.requires/NAME.service` and `*.upholds/NAME.service` in `dirs`.
fn links_of(dirs: &[PathBuf], name: &str) -> Vec<PathBuf> {
    let file = format!("{name}.service");
    let mut found = Vec::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else { continue };
        for entry in entries.flatten() {
            let dir_name = entry.file_name().to_string_lossy().into_owned();
            if [".wants", ".requires", ".upholds"].iter().any(|suffix| dir_name.ends_with(suffix)) {
                let link = entry.path().join(&file);
                if link.symlink_metadata().is_ok() {
                    found.push(link);
                }
            }
        }
    }
    found.sort();
    found
}

/// `enabled`, `disabled` or `static` (no [Install]), as `systemctl is-enabled` says.
pub fn state(unit: &Unit, dirs: &[PathBuf]) -> &'static str {
    if !unit.install.is_installable() {
        "static"
    } else if links_of(dirs, &unit.name).is_empty() {
        "disabled"
    } else {
        "enabled"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::load_dirs;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).expect("write fixture");
    }

    #[test]
    fn enable_links_disable_unlinks_and_boot_follows() {
        let stock = tempfile::tempdir().expect("tempdir");
        let user = tempfile::tempdir().expect("tempdir");
        let dirs = vec![stock.path().to_path_buf(), user.path().to_path_buf()];
        write(
            stock.path(),
            "web.service",
            "[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\nAlso=helper.service\n",
        );
        write(stock.path(), "helper.service", "[Service]\nExecStart=/bin/true\n[Install]\nRequiredBy=web.service\n");
        write(stock.path(), "plain.service", "[Service]\nExecStart=/bin/true\n");
        let boot = |dirs: &[PathBuf]| -> Vec<(String, bool)> {
            load_dirs(dirs).units.iter().map(|u| (u.name.clone(), u.starts_at_boot)).collect()
        };
        // helper is RequiredBy=web: pulled in by web, not started at boot on its own.
        assert_eq!(boot(&dirs), [("helper".into(), false), ("plain".into(), true), ("web".into(), false)]);

        let made = enable(&dirs, "web").expect("enable");
        assert_eq!(made.len(), 2, "{made:?}");
        assert!(user.path().join("multi-user.target.wants/web.service").symlink_metadata().is_ok());
        assert!(user.path().join("web.service.requires/helper.service").symlink_metadata().is_ok());
        let loaded = load_dirs(&dirs);
        assert!(loaded.units.iter().find(|u| u.name == "web").is_some_and(|u| u.starts_at_boot));
        assert!(loaded.units.iter().find(|u| u.name == "web").is_some_and(|u| u.requires == ["helper"]));
        assert_eq!(state(&loaded.units[2], &dirs), "enabled");
        assert_eq!(state(&loaded.units[1], &dirs), "static");
        assert!(enable(&dirs, "web").expect("again").is_empty(), "enabling twice changes nothing");

        let removed = disable(&dirs, "web").expect("disable");
        assert_eq!(removed.len(), 2, "{removed:?}");
        assert_eq!(boot(&dirs), [("helper".into(), false), ("plain".into(), true), ("web".into(), false)]);
        assert!(enable(&dirs, "plain").unwrap_err().contains("static"));
        assert!(enable(&dirs, "ghost").unwrap_err().contains("no unit file"));
    }

    #[test]
    fn enable_and_disable_follow_an_alias() {
        let user = tempfile::tempdir().expect("tempdir");
        let dirs = vec![user.path().to_path_buf()];
        write(
            user.path(),
            "ssh.service",
            "[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\nAlias=sshd.service\n",
        );
        let made = enable(&dirs, "sshd").expect("enable by the alias");
        assert_eq!(made.len(), 1, "{made:?}");
        assert!(user.path().join("multi-user.target.wants/ssh.service").symlink_metadata().is_ok());
        assert_eq!(disable(&dirs, "sshd").expect("disable by the alias").len(), 1);
    }

    #[test]
    fn upheld_by_links_make_the_other_unit_uphold_this_one() {
        let user = tempfile::tempdir().expect("tempdir");
        let dirs = vec![user.path().to_path_buf()];
        write(user.path(), "keeper.service", "[Service]\nExecStart=/bin/true\n");
        write(user.path(), "kept.service", "[Service]\nExecStart=/bin/true\n[Install]\nUpheldBy=keeper.service\n");
        let kept = |dirs: &[PathBuf]| {
            load_dirs(dirs).units.into_iter().find(|u| u.name == "keeper").map(|u| u.relations.upholds)
        };
        assert_eq!(kept(&dirs), Some(vec![]));
        let made = enable(&dirs, "kept").expect("enable");
        assert_eq!(made.len(), 1, "{made:?}");
        assert!(user.path().join("keeper.service.upholds/kept.service").symlink_metadata().is_ok());
        assert_eq!(kept(&dirs), Some(vec!["kept".to_string()]), "keeper upholds kept once enabled");
        let loaded = load_dirs(&dirs);
        assert!(loaded.units.iter().find(|u| u.name == "kept").is_some_and(|u| !u.starts_at_boot));
        disable(&dirs, "kept").expect("disable");
        assert_eq!(kept(&dirs), Some(vec![]));
    }

    #[test]
    fn templates_enable_their_default_instance_and_links_make_instances() {
        let user = tempfile::tempdir().expect("tempdir");
        let dirs = vec![user.path().to_path_buf()];
        write(
            user.path(),
            "echo@.service",
            "[Service]\nExecStart=/bin/echo %i\n[Install]\nWantedBy=multi-user.target\nDefaultInstance=one\n",
        );
        assert!(load_dirs(&dirs).units.is_empty(), "a template alone runs nothing");
        enable(&dirs, "echo@").expect("enable the default instance");
        enable(&dirs, "echo@two").expect("enable an instance");
        let loaded = load_dirs(&dirs);
        let units: Vec<(&str, bool, Vec<String>)> = loaded
            .units
            .iter()
            .map(|u| {
                (u.name.as_str(), u.starts_at_boot, u.service.exec_start.clone().map(|c| c.argv).unwrap_or_default())
            })
            .collect();
        assert_eq!(
            units,
            [
                ("echo@one", true, vec!["/bin/echo".to_string(), "one".to_string()]),
                ("echo@two", true, vec!["/bin/echo".to_string(), "two".to_string()]),
            ]
        );
        assert_eq!(loaded.units[0].template.as_deref(), Some("echo@"));
        disable(&dirs, "echo@two").expect("disable");
        assert_eq!(load_dirs(&dirs).units.len(), 1);
    }
}
