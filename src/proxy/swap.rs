//! Putting rendered `upstreams/aikore.conf` and `routes/aikore.conf` live
//! without ever breaking NGINX: stage them beside copies of the other live
//! snippets, test the FULL config (the live nginx.conf with its includes
//! pointed at the staging dirs) with `nginx -t`, and only then rename the
//! tested files over the live ones. On a failed test the live files are untouched.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::init::reaper;

/// Runs `command` to the end and returns its status and stderr. aikore's
/// reaper owns every exit status (a `Child::wait` would race its
/// `waitpid(-1)` and get ECHILD), so the pid is registered with the reaper
/// under its lock across the fork, and the status comes back from there.
fn run_reaped(mut command: Command) -> std::io::Result<(bool, Vec<u8>)> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let mut child = {
        let mut routes = reaper().lock();
        let child = command.spawn()?;
        routes.register(
            child.id() as i32,
            Box::new(move |_, status| {
                let _ = tx.try_send(status);
            }),
        );
        child
    };
    let mut stderr = Vec::new();
    if let Some(mut pipe) = child.stderr.take() {
        // NGINX's messages are a few lines; the pipe closes when it exits.
        pipe.read_to_end(&mut stderr)?;
    }
    let status = rx.recv().map_err(|_| std::io::Error::other("the reaper dropped the exit status"))?;
    Ok((status.success(), stderr))
}

/// The generated snippet's name inside each include dir.
pub const ROUTES_FILE: &str = "aikore.conf";
/// The include dirs the base config carries (nginx/nginx.conf), in the order
/// their files go live: upstream groups before the locations that name them.
pub const INCLUDE_DIRS: [&str; 2] = ["upstreams", "routes"];
const CANDIDATE_CONF: &str = "nginx.candidate.conf";

fn include_line(dir: &str) -> String {
    format!("include {dir}/*.conf;")
}

fn staging_dir(dir: &str) -> String {
    format!("{dir}.staging")
}

#[derive(Debug, thiserror::Error)]
pub enum SwapError {
    #[error("nginx -t rejected the candidate config: {0}")]
    Rejected(String),
    #[error("the live nginx.conf has no `include {0}/*.conf;` line to point at the candidate")]
    NoInclude(&'static str),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The OS boundary: whether a config is valid. The real one runs `nginx -t`;
/// unit tests use a fake.
pub trait ConfigTester: Send + Sync {
    /// Tests `<prefix>/<conf>`; Err carries NGINX's message.
    fn test(&self, prefix: &Path, conf: &str) -> Result<(), String>;
    /// Whether a test happened (false: NGINX is not installed, the snippet went live untested).
    fn available(&self) -> bool {
        true
    }
}

/// `nginx -t` with the unit's own binary.
pub struct NginxTester {
    pub binary: Option<PathBuf>,
    /// Inside the daemon aikore's reaper owns every exit status, so the test
    /// run's status must come from it. Elsewhere (unit tests) starting the
    /// reaper would steal other children's statuses: plain `output()` then.
    pub via_reaper: bool,
}

impl NginxTester {
    /// `binary` (AIKORE_NGINX_BIN), else the path units/nginx.service runs.
    pub fn new(binary: Option<PathBuf>) -> NginxTester {
        let binary = binary.or_else(|| Some(PathBuf::from("/usr/sbin/nginx"))).filter(|p| p.is_file());
        NginxTester { binary, via_reaper: true }
    }
}

impl ConfigTester for NginxTester {
    fn test(&self, prefix: &Path, conf: &str) -> Result<(), String> {
        let Some(binary) = &self.binary else { return Ok(()) };
        let mut prefix_arg = prefix.as_os_str().to_owned();
        prefix_arg.push("/");
        let mut command = Command::new(binary);
        command
            .args(["-t", "-q", "-e", "stderr", "-p"])
            .arg(&prefix_arg)
            .args(["-c", conf])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let ran = if self.via_reaper {
            run_reaped(command)
        } else {
            command.output().map(|o| (o.status.success(), o.stderr))
        };
        let (success, stderr) = ran.map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
        if success {
            Ok(())
        } else {
            let text = String::from_utf8_lossy(&stderr);
            // Keep NGINX's own lines (they name the file and line), drop the "test failed" banner.
            let lines: Vec<&str> =
                text.lines().filter(|l| !l.contains("configuration file") || l.contains("emerg")).collect();
            let message = lines.join("\n").trim().to_string();
            Err(if message.is_empty() { "nginx -t failed without a message".to_string() } else { message })
        }
    }

    fn available(&self) -> bool {
        self.binary.is_some()
    }
}

/// Puts `upstreams` and `routes` live as `upstreams/aikore.conf` and
/// `routes/aikore.conf` if the full config with both passes `tester`.
/// `prefix` is NGINX's prefix (`<data>/nginx`).
pub fn stage_and_swap(
    prefix: &Path,
    upstreams: &str,
    routes: &str,
    tester: &dyn ConfigTester,
) -> Result<(), SwapError> {
    let live_conf = std::fs::read_to_string(prefix.join("nginx.conf"))?;
    let mut candidate = live_conf.clone();
    for (dir, text) in INCLUDE_DIRS.iter().zip([upstreams, routes]) {
        stage(prefix, dir, text)?;
        if !live_conf.contains(&include_line(dir)) {
            return Err(SwapError::NoInclude(dir));
        }
        candidate = candidate.replace(&include_line(dir), &include_line(&staging_dir(dir)));
    }
    super::write_atomically(&prefix.join(CANDIDATE_CONF), candidate.as_bytes())?;
    tester.test(prefix, CANDIDATE_CONF).map_err(SwapError::Rejected)?;

    // The exact bytes that passed go live; each rename is atomic, and NGINX
    // reads neither until the reload that follows both.
    for dir in INCLUDE_DIRS {
        std::fs::rename(prefix.join(staging_dir(dir)).join(ROUTES_FILE), prefix.join(dir).join(ROUTES_FILE))?;
    }
    Ok(())
}

/// `<dir>.staging/`: copies of the hand-written snippets of `<dir>/` (they
/// are part of the full config NGINX will load) plus the candidate.
fn stage(prefix: &Path, dir: &str, text: &str) -> std::io::Result<()> {
    let live = prefix.join(dir);
    let staging = prefix.join(staging_dir(dir));
    std::fs::create_dir_all(&live)?;
    if staging.exists() {
        std::fs::remove_dir_all(&staging)?;
    }
    std::fs::create_dir_all(&staging)?;
    for entry in std::fs::read_dir(&live)?.flatten() {
        let name = entry.file_name();
        let is_conf = name.to_str().is_some_and(|n| n.ends_with(".conf") && n != ROUTES_FILE);
        if is_conf && entry.path().is_file() {
            std::fs::copy(entry.path(), staging.join(&name))?;
        }
    }
    super::write_atomically(&staging.join(ROUTES_FILE), text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Records what it was asked to test and answers from a rule.
    struct FakeTester {
        seen: Mutex<Vec<String>>,
        reject_if_contains: &'static str,
    }

    impl ConfigTester for FakeTester {
        fn test(&self, prefix: &Path, conf: &str) -> Result<(), String> {
            let text = std::fs::read_to_string(prefix.join(conf)).unwrap();
            let routes = std::fs::read_to_string(prefix.join("routes.staging").join(ROUTES_FILE)).unwrap();
            self.seen.lock().unwrap().push(text.clone());
            if routes.contains(self.reject_if_contains) {
                Err(format!("unknown directive \"{}\"", self.reject_if_contains))
            } else {
                Ok(())
            }
        }
    }

    fn prefix_with_base() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("routes")).unwrap();
        std::fs::write(
            dir.path().join("nginx.conf"),
            "http { include upstreams/*.conf; server { include routes/*.conf; } }",
        )
        .unwrap();
        dir
    }

    #[test]
    fn a_valid_candidate_goes_live_and_the_full_config_was_tested() {
        let dir = prefix_with_base();
        std::fs::write(dir.path().join("routes/mine.conf"), "location /mine {}").unwrap();
        let tester = FakeTester { seen: Mutex::new(Vec::new()), reject_if_contains: "bogus" };
        stage_and_swap(dir.path(), "upstream u {}", "location /app/a/ {}", &tester).unwrap();
        assert_eq!(std::fs::read_to_string(dir.path().join("upstreams/aikore.conf")).unwrap(), "upstream u {}");
        assert_eq!(std::fs::read_to_string(dir.path().join("routes/aikore.conf")).unwrap(), "location /app/a/ {}");
        let seen = tester.seen.lock().unwrap();
        assert!(seen[0].contains("include routes.staging/*.conf;"), "{}", seen[0]);
        assert!(seen[0].contains("include upstreams.staging/*.conf;"), "{}", seen[0]);
        // The user's snippet was part of what was tested.
        assert!(dir.path().join("routes.staging/mine.conf").is_file());
        assert!(dir.path().join("routes/mine.conf").is_file());
    }

    #[test]
    fn a_rejected_candidate_leaves_the_live_routes_untouched() {
        let dir = prefix_with_base();
        let tester = FakeTester { seen: Mutex::new(Vec::new()), reject_if_contains: "bogus" };
        stage_and_swap(dir.path(), "", "location /app/a/ {}", &tester).unwrap();
        let err = stage_and_swap(dir.path(), "upstream new {}", "bogus;", &tester).unwrap_err();
        assert!(matches!(err, SwapError::Rejected(ref m) if m.contains("bogus")), "{err}");
        assert_eq!(std::fs::read_to_string(dir.path().join("routes/aikore.conf")).unwrap(), "location /app/a/ {}");
        assert_eq!(std::fs::read_to_string(dir.path().join("upstreams/aikore.conf")).unwrap(), "");
    }

    #[test]
    fn a_base_config_without_the_include_is_an_error_not_a_silent_skip() {
        let dir = prefix_with_base();
        std::fs::write(dir.path().join("nginx.conf"), "http { include upstreams/*.conf; }").unwrap();
        let tester = FakeTester { seen: Mutex::new(Vec::new()), reject_if_contains: "bogus" };
        assert!(matches!(stage_and_swap(dir.path(), "", "", &tester), Err(SwapError::NoInclude("routes"))));
        assert!(!dir.path().join("routes/aikore.conf").exists());
    }
}
