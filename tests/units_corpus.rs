//! Debian's own unit files through `aikore check` (issue 14): every
//! `.service` under /lib/systemd/system of a Debian 12 box with common server
//! packages (`.ci/run` installs them) must pass with no warning but for keys
//! meaningless in a container, and the test prints how many of their key
//! uses aikore implements (none is left "not implemented yet").

use std::path::{Path, PathBuf};
use std::process::Command;

use aikore::units::corpus::key_uses;

use crate::harness::BIN;

const CORPUS: &str = "/lib/systemd/system";

/// Units of the packages `.ci/run` installs: their absence means the corpus
/// is not the one this test is about (it fails rather than passing on less).
const EXPECTED: &[&str] = &[
    "nginx.service",
    "redis-server.service",
    "postgresql@.service",
    "ssh.service",
    "cron.service",
    "rsyslog.service",
    "chrony.service",
    "memcached.service",
    "haproxy.service",
    "apache2.service",
    "dnsmasq.service",
    "named.service",
    "squid.service",
    "logrotate.service",
    "getty@.service",
];

fn corpus() -> Vec<PathBuf> {
    let dir = Path::new(CORPUS);
    let entries = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{CORPUS} cannot be read ({e}): run on Debian 12 with .ci/run's packages"));
    let mut files: Vec<PathBuf> =
        entries.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "service")).collect();
    files.sort();
    for name in EXPECTED {
        assert!(dir.join(name).exists(), "{CORPUS}/{name} is missing: .ci/run installs its package");
    }
    files
}

#[test]
fn debian_units_pass_check_and_key_uses_are_counted() {
    let files = corpus();
    let out = Command::new(BIN).arg("check").args(&files).output().expect("run aikore check");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = stderr.lines().filter(|l| !l.contains(": warning: ")).collect();
    assert_eq!(out.status.code(), Some(0), "aikore check rejects Debian's units:\n{}", errors.join("\n"));
    assert!(errors.is_empty(), "{errors:#?}");
    // The rule: the only warnings are for keys docs/units.md lists as
    // meaningless in a container, plus what systemd itself would say
    // (a reference to a unit that is not there) and what the issue asks for
    // (KillMode=process leaves processes behind). A terminal (`tty`) for
    // stdio is the console keys' case: a container has none to give.
    let allowed = |w: &str| {
        w.contains("is ignored: it has no meaning in a container")
            || w.starts_with("KillMode=process: ")
            || (w.starts_with("Standard") && w.contains("=tty"))
            || (w.contains(": no unit named '") && w.ends_with("' is loaded"))
    };
    let other: Vec<&str> =
        stderr.lines().filter_map(|l| l.split_once(": warning: ").map(|(_, w)| w)).filter(|w| !allowed(w)).collect();
    assert!(other.is_empty(), "warnings beyond the meaningless keys:\n{}", other.join("\n"));
    let masked = files.iter().filter(|f| std::fs::canonicalize(f).is_ok_and(|p| p == Path::new("/dev/null"))).count();

    let uses = key_uses(&files).expect("read the corpus");
    assert_eq!(uses.unknown, 0, "keys aikore does not know: {:?}", uses.by_key);
    println!("corpus: {} .service files under {CORPUS}, all pass aikore check ({masked} masked)", files.len());
    println!(
        "key uses: {} in all; implemented {} ({:.1} %), meaningless in a container {}, not implemented yet {}",
        uses.total(),
        uses.implemented,
        uses.implemented_percent(),
        uses.meaningless,
        uses.not_yet
    );
    let mut missing: Vec<(&String, &(usize, &str))> =
        uses.by_key.iter().filter(|(_, (_, what))| *what == "not implemented yet").collect();
    missing.sort_by_key(|(_, (n, _))| std::cmp::Reverse(*n));
    let top: Vec<String> = missing.iter().take(15).map(|(k, (n, _))| format!("{k} {n}")).collect();
    assert_eq!(uses.not_yet, 0, "keys of the corpus aikore does not implement yet: {}", top.join(", "));
    // What the count could not have been before issue 14: the keys parsed here since.
    for key in ["[Install] WantedBy", "[Service] TimeoutSec", "[Install] Also"] {
        assert_eq!(uses.by_key.get(key).map(|(_, what)| *what), Some("implemented"), "{key}");
    }
}

#[test]
fn a_typo_in_a_debian_unit_is_still_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(Path::new(CORPUS).join("cron.service")).expect("cron.service from .ci/run");
    assert!(text.contains("KillMode=process"), "the file this test edits changed: {text}");
    let typo = dir.path().join("cron.service");
    std::fs::write(&typo, text.replace("KillMode=process", "KillMod=process")).unwrap();
    let out = Command::new(BIN).arg("check").arg(&typo).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("unknown key KillMod= in [Service]; did you mean KillMode=?"), "{stderr}");
}
