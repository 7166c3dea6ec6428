//! `Condition*=` and `Assert*=` on paths, files, directories and the
//! environment: a condition that does not hold skips the start (not an
//! error), an assert that does not hold fails it, as in systemd.
//! `ConditionPathExists=` keeps its own field ([`super::PathCondition`]).

use std::path::Path;

/// [Unit] keys this module parses (they are `Implemented` in `keys`).
pub const UNIT_KEYS: &[&str] = &[
    "ConditionPathIsDirectory",
    "ConditionPathIsSymbolicLink",
    "ConditionPathIsMountPoint",
    "ConditionPathIsReadWrite",
    "ConditionDirectoryNotEmpty",
    "ConditionFileNotEmpty",
    "ConditionFileIsExecutable",
    "ConditionEnvironment",
    "AssertPathExists",
    "AssertPathIsDirectory",
    "AssertPathIsSymbolicLink",
    "AssertPathIsMountPoint",
    "AssertPathIsReadWrite",
    "AssertDirectoryNotEmpty",
    "AssertFileNotEmpty",
    "AssertFileIsExecutable",
    "AssertEnvironment",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Test {
    PathExists,
    PathIsDirectory,
    PathIsSymbolicLink,
    PathIsMountPoint,
    PathIsReadWrite,
    DirectoryNotEmpty,
    FileNotEmpty,
    FileIsExecutable,
    /// `NAME` (set at all) or `NAME=VALUE`, in aikore's own environment (systemd reads the manager's).
    Environment,
}

impl Test {
    fn from_suffix(s: &str) -> Option<Test> {
        Some(match s {
            "PathExists" => Test::PathExists,
            "PathIsDirectory" => Test::PathIsDirectory,
            "PathIsSymbolicLink" => Test::PathIsSymbolicLink,
            "PathIsMountPoint" => Test::PathIsMountPoint,
            "PathIsReadWrite" => Test::PathIsReadWrite,
            "DirectoryNotEmpty" => Test::DirectoryNotEmpty,
            "FileNotEmpty" => Test::FileNotEmpty,
            "FileIsExecutable" => Test::FileIsExecutable,
            "Environment" => Test::Environment,
            _ => return None,
        })
    }
}

/// One `Condition*=`/`Assert*=` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// The key as written, for messages.
    pub key: String,
    pub test: Test,
    /// `|`: a triggering check; of those, one holding is enough.
    pub trigger: bool,
    /// `!`: the test must fail.
    pub negate: bool,
    pub arg: String,
}

impl Check {
    pub fn holds(&self) -> bool {
        self.evaluate() != self.negate
    }

    fn evaluate(&self) -> bool {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let path = Path::new(&self.arg);
        match self.test {
            Test::PathExists => path.exists(),
            Test::PathIsDirectory => path.is_dir(),
            Test::PathIsSymbolicLink => path.symlink_metadata().is_ok_and(|m| m.file_type().is_symlink()),
            Test::PathIsMountPoint => is_mount_point(path),
            Test::PathIsReadWrite => path.exists() && !read_only_fs(path),
            Test::DirectoryNotEmpty => std::fs::read_dir(path).is_ok_and(|mut d| d.next().is_some()),
            Test::FileNotEmpty => std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.size() > 0),
            Test::FileIsExecutable => {
                std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            }
            Test::Environment => match self.arg.split_once('=') {
                Some((name, value)) => std::env::var_os(name).is_some_and(|v| v == value),
                None => std::env::var_os(&self.arg).is_some(),
            },
        }
    }

    fn describe(&self) -> String {
        format!(
            "{}={}{}{}",
            self.key,
            if self.trigger { "|" } else { "" },
            if self.negate { "!" } else { "" },
            self.arg
        )
    }
}

/// Whether `path` is the root of a mount: its device differs from its
/// parent's, or (a bind mount of the same fs) it is listed in mountinfo.
fn is_mount_point(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(canonical) = path.canonicalize() else { return false };
    if canonical == Path::new("/") {
        return true;
    }
    let parent = canonical.parent().unwrap_or(Path::new("/"));
    match (std::fs::metadata(&canonical), std::fs::metadata(parent)) {
        (Ok(a), Ok(b)) if a.dev() != b.dev() => return true,
        (Err(_), _) => return false,
        _ => {}
    }
    std::fs::read_to_string("/proc/self/mountinfo").is_ok_and(|info| {
        info.lines().any(|l| l.split_whitespace().nth(4).is_some_and(|m| Path::new(&unescape_octal(m)) == canonical))
    })
}

/// mountinfo writes space, tab, newline and backslash as `\040` and friends.
pub fn unescape_octal(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() && bytes[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b)) {
            out.push((bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn read_only_fs(path: &Path) -> bool {
    nix::sys::statvfs::statvfs(path).is_ok_and(|s| s.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY))
}

/// Every Condition*=/Assert*= of a unit beyond ConditionPathExists=.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Checks {
    pub conditions: Vec<Check>,
    pub asserts: Vec<Check>,
}

impl Checks {
    /// Parses one key of [`UNIT_KEYS`]; an empty value resets that kind's list (systemd resets all of them).
    pub fn apply(&mut self, key: &str, value: &str) -> Result<(), String> {
        let (is_assert, suffix) = match key.strip_prefix("Assert") {
            Some(rest) => (true, rest),
            None => (false, key.strip_prefix("Condition").ok_or_else(|| format!("{key}= is not a check"))?),
        };
        let test = Test::from_suffix(suffix).ok_or_else(|| format!("{key}= is not a check aikore knows"))?;
        let list = if is_assert { &mut self.asserts } else { &mut self.conditions };
        let value = value.trim();
        if value.is_empty() {
            list.clear();
            return Ok(());
        }
        let mut rest = value;
        let mut trigger = false;
        let mut negate = false;
        loop {
            if let Some(r) = rest.strip_prefix('|') {
                trigger = true;
                rest = r;
            } else if let Some(r) = rest.strip_prefix('!') {
                negate = true;
                rest = r;
            } else {
                break;
            }
        }
        if test != Test::Environment && !rest.starts_with('/') {
            return Err(format!("'{rest}' must be an absolute path"));
        }
        if rest.is_empty() {
            return Err("a variable name is required".to_string());
        }
        list.push(Check { key: key.to_string(), test, trigger, negate, arg: rest.to_string() });
        Ok(())
    }

    /// The conditions' verdict: `Some(why)` when the start is to be skipped.
    pub fn unmet_condition(&self) -> Option<String> {
        unmet(&self.conditions)
    }

    /// The asserts' verdict: `Some(why)` when the start fails.
    pub fn failed_assert(&self) -> Option<String> {
        unmet(&self.asserts).map(|why| format!("assertion failed: {why}"))
    }
}

/// systemd's rule: every non-triggering check must hold, and when there are
/// triggering ones, at least one of them.
fn unmet(list: &[Check]) -> Option<String> {
    if let Some(c) = list.iter().find(|c| !c.trigger && !c.holds()) {
        return Some(format!("{} not met", c.describe()));
    }
    let triggers: Vec<&Check> = list.iter().filter(|c| c.trigger).collect();
    if !triggers.is_empty() && !triggers.iter().any(|c| c.holds()) {
        let all: Vec<String> = triggers.iter().map(|c| c.describe()).collect();
        return Some(format!("none of {} met", all.join(", ")));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checks(lines: &[(&str, &str)]) -> Checks {
        let mut c = Checks::default();
        for (k, v) in lines {
            c.apply(k, v).unwrap_or_else(|e| panic!("{k}={v}: {e}"));
        }
        c
    }

    #[test]
    fn paths_files_and_directories() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        std::fs::write(dir.path().join("empty"), "").unwrap();
        std::fs::write(dir.path().join("full"), "x").unwrap();
        std::os::unix::fs::symlink("full", dir.path().join("link")).unwrap();
        let ok = checks(&[
            ("ConditionPathIsDirectory", &d),
            ("ConditionDirectoryNotEmpty", &d),
            ("ConditionFileNotEmpty", &format!("{d}/full")),
            ("ConditionFileNotEmpty", &format!("!{d}/empty")),
            ("ConditionPathIsSymbolicLink", &format!("{d}/link")),
            ("ConditionFileIsExecutable", "/bin/sh"),
            ("ConditionPathIsMountPoint", "/proc"),
            ("ConditionPathIsReadWrite", &d),
        ]);
        assert_eq!(ok.unmet_condition(), None);
        let bad = checks(&[("ConditionFileIsExecutable", &format!("{d}/full"))]);
        assert!(bad.unmet_condition().unwrap().contains("ConditionFileIsExecutable="), "{bad:?}");
        assert!(checks(&[("ConditionPathIsMountPoint", &d)]).unmet_condition().is_some());
        assert!(checks(&[("ConditionPathIsReadWrite", "/nonexistent/x")]).unmet_condition().is_some());
    }

    #[test]
    fn triggers_need_one_and_asserts_fail() {
        let c = checks(&[("ConditionPathIsDirectory", "|/nonexistent/a"), ("ConditionPathIsDirectory", "|/")]);
        assert_eq!(c.unmet_condition(), None);
        let c = checks(&[("ConditionPathIsDirectory", "|/nonexistent/a"), ("ConditionPathIsDirectory", "|/nope")]);
        assert!(c.unmet_condition().unwrap().starts_with("none of"));
        // ConditionPathExists=| comes here (its plain form has its own field).
        let c = checks(&[("ConditionPathExists", "|/nonexistent/a"), ("ConditionPathExists", "|!/nonexistent/b")]);
        assert_eq!(c.unmet_condition(), None);
        let c = checks(&[("AssertPathExists", "/nonexistent/x")]);
        assert_eq!(c.unmet_condition(), None);
        assert_eq!(c.failed_assert().unwrap(), "assertion failed: AssertPathExists=/nonexistent/x not met");
        let c = checks(&[("AssertPathExists", "/nonexistent/x"), ("AssertPathExists", "")]);
        assert_eq!(c.failed_assert(), None);
    }

    #[test]
    fn environment() {
        // PATH is set in every test environment; a made-up name is not.
        let c = checks(&[("ConditionEnvironment", "PATH"), ("ConditionEnvironment", "!AIKORE_SURELY_UNSET_42")]);
        assert_eq!(c.unmet_condition(), None);
        let c = checks(&[("AssertEnvironment", "AIKORE_SURELY_UNSET_42=1")]);
        assert!(c.failed_assert().is_some());
        assert!(Checks::default().apply("ConditionPathIsDirectory", "relative").is_err());
        assert!(Checks::default().apply("ConditionEnvironment", "!").is_err());
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_octal("/mnt/a\\040b"), "/mnt/a b");
        assert_eq!(unescape_octal("/plain"), "/plain");
    }
}
