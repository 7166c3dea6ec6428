//! Issue 12: one test per attack vector found against an older release.
//! `state`, `symlinks`, `processes`: the instance user gains nothing on the
//! host side. Each replays the attack as uid 65534 (the daemon runs with
//! PUID=PGID=65534, as root), against the real daemon and, where it matters,
//! the real NGINX; and asserts it fails and that nothing outside the
//! instance dir changed. Attacker steps run through `setpriv` (util-linux),
//! exactly the rights code inside an instance has. `web`: what reaches the
//! ports gains nothing: apps on their own origin, the first-run claim, login
//! floods, the public flag, /metrics, oversize bodies (the hostile app page
//! in a browser is web/tests/origin.test.mjs).

mod processes;
mod state;
mod symlinks;
mod web;

use std::collections::BTreeMap;
use std::io::{BufReader, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::{free_port, read_head, Daemon, Options};

/// The instance user of these tests: nobody/nogroup on Debian.
pub const EVIL: u32 = 65534;

/// A daemon with PUID/PGID = 65534 and a root-only victim dir beside its data dir.
pub struct Target {
    pub d: Daemon,
    /// NGINX's public port (when started with NGINX).
    pub port: u16,
    /// Root-only (0700) dir with a 0600 file: what the attacks aim at.
    pub victim: PathBuf,
    victim_before: BTreeMap<String, (u32, u32, u64, Vec<u8>)>,
}

pub fn options(port: u16) -> Options {
    let mut options = Options::default();
    options.env.push(("PUID".into(), EVIL.to_string()));
    options.env.push(("PGID".into(), EVIL.to_string()));
    options.env.push(("AIKORE_PORT".into(), port.to_string()));
    // The test runner's PATH may start in /root (pyenv shims): unreachable for 65534.
    options.env.push(("PATH".into(), "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()));
    options
}

pub fn nginx_unit() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("units/nginx.service")).unwrap()
}

impl Target {
    pub fn start(with_nginx: bool) -> Target {
        Target::start_with(with_nginx, options(free_port()))
    }

    pub fn start_with(with_nginx: bool, options: Options) -> Target {
        assert!(Path::new("/usr/bin/setpriv").exists(), "setpriv (util-linux) is needed for the attack tests");
        assert!(nix_is_root(), "the attack tests run the daemon as root with PUID set");
        let port = options.env.iter().find(|(k, _)| k == "AIKORE_PORT").and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
        let nginx = nginx_unit();
        let units: Vec<(&str, &str)> = if with_nginx { vec![("nginx.service", &nginx)] } else { Vec::new() };
        let d = Daemon::start_with(&units, options);
        // The temp dir above the data dir is root's 0700; a container's /config has no such parent.
        std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let victim = d.dir.path().join("victim");
        std::fs::create_dir(&victim).unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::write(victim.join("secret"), "root only\n").unwrap();
        std::fs::set_permissions(victim.join("secret"), std::fs::Permissions::from_mode(0o600)).unwrap();
        write_blueprint(&d, "sleeper", "exec sleep 1000");
        if with_nginx {
            let u = d.wait_status("nginx", "started");
            assert!(u["detail"].is_null(), "NGINX must be installed for this test: {u}");
        }
        let mut t = Target { d, port, victim, victim_before: BTreeMap::new() };
        t.victim_before = t.victim_state();
        t
    }

    fn victim_state(&self) -> BTreeMap<String, (u32, u32, u64, Vec<u8>)> {
        let mut out = BTreeMap::new();
        for entry in std::fs::read_dir(&self.victim).unwrap().flatten() {
            let m = std::fs::symlink_metadata(entry.path()).unwrap();
            let content = if m.is_file() { std::fs::read(entry.path()).unwrap() } else { Vec::new() };
            out.insert(entry.file_name().to_string_lossy().into(), (m.uid(), m.mode(), m.len(), content));
        }
        let m = std::fs::metadata(&self.victim).unwrap();
        out.insert(".".into(), (m.uid(), m.mode(), 0, Vec::new()));
        out
    }

    /// An instance of `blueprint`, started; returns its dir.
    pub fn instance(&self, name: &str, blueprint: &str) -> PathBuf {
        let (code, body) =
            self.d.post_json("/api/v1/instances", json!({ "name": name, "blueprint": blueprint, "start": true }));
        assert_eq!(code, 201, "{body}");
        self.d.data_dir.join("instances").join(name)
    }

    /// The attack left no trace: the victim dir is as it was, and aikore's own
    /// state (the data dir except the instance dirs) holds no symlink and
    /// nothing the instance user owns or may write.
    pub fn assert_intact(&self) {
        assert_eq!(self.victim_state(), self.victim_before, "the root-only victim dir changed");
        let bad = writable_state(&self.d.data_dir);
        assert!(bad.is_empty(), "aikore's state open to the instance user: {bad:#?}");
    }
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

pub fn write_blueprint(d: &Daemon, id: &str, body: &str) {
    let dir = d.data_dir.join("blueprints");
    std::fs::create_dir_all(&dir).unwrap();
    let script = format!(
        "#!/usr/bin/env bash\n### AIKORE-METADATA-START ###\n# aikore.name = {id}\n# aikore.category = Testing\n# aikore.proxy = subpath\n### AIKORE-METADATA-END ###\n{body}\n"
    );
    std::fs::write(dir.join(format!("{id}.sh")), script).unwrap();
}

/// Runs `script` with `sh -c` as uid/gid 65534 and no supplementary groups.
pub fn as_evil(script: &str) -> Output {
    Command::new("/usr/bin/setpriv")
        .args(["--reuid", &EVIL.to_string(), "--regid", &EVIL.to_string(), "--clear-groups", "--", "/bin/sh", "-c"])
        .arg(script)
        .current_dir("/")
        .output()
        .expect("run setpriv")
}

/// `as_evil`, expecting the script's last line of output to be a count; returns it.
pub fn evil_count(script: &str) -> usize {
    let out = as_evil(script);
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().last().and_then(|l| l.trim().parse().ok()).unwrap_or_else(|| {
        panic!("attacker script printed no count: {text}\nstderr: {}", String::from_utf8_lossy(&out.stderr))
    })
}

/// Every entry of aikore's own state (the data dir minus `instances/*`, NGINX's
/// worker temp dirs and the quarantine) that is a symlink, owned by 65534,
/// or writable by it (owner, group 65534, or others).
pub fn writable_state(data_dir: &Path) -> Vec<String> {
    let mut bad = Vec::new();
    let skip: Vec<PathBuf> = ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]
        .iter()
        .map(|d| data_dir.join("nginx/tmp").join(d))
        .chain([data_dir.join("quarantine")])
        .collect();
    let mut stack = vec![data_dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let m = std::fs::symlink_metadata(&path).unwrap();
        let rel = path.strip_prefix(data_dir).unwrap().display().to_string();
        let mode = m.mode();
        if m.file_type().is_symlink() {
            bad.push(format!("{rel}: a symlink"));
            continue;
        }
        if m.uid() == EVIL || (m.gid() == EVIL && mode & 0o020 != 0) || mode & 0o002 != 0 {
            bad.push(format!("{rel}: {}:{} {:o}", m.uid(), m.gid(), mode & 0o7777));
        }
        if m.is_dir() {
            for entry in std::fs::read_dir(&path).unwrap().flatten() {
                let p = entry.path();
                let is_instance_dir = p.parent() == Some(&data_dir.join("instances"));
                let in_trash = p.parent().and_then(Path::parent) == Some(&data_dir.join("trashcan"))
                    && p.file_name().is_some_and(|n| n == "instance");
                if !is_instance_dir && !in_trash && !skip.contains(&p) {
                    stack.push(p);
                }
            }
        }
    }
    bad
}

/// (uid, gid) of a live process.
pub fn ids_of(pid: i32) -> Option<(u32, u32)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u32> {
        status.lines().find(|l| l.starts_with(name))?.split_whitespace().nth(1)?.parse().ok()
    };
    Some((field("Uid:")?, field("Gid:")?))
}

/// Live descendants of `pid` (and `pid`).
pub fn tree_of(pid: i32) -> Vec<i32> {
    let mut found = vec![pid];
    loop {
        let before = found.len();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(p) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else { continue };
            let Some(ppid) = stat.rfind(')').and_then(|i| stat[i + 1..].split_whitespace().nth(1)?.parse().ok()) else {
                continue;
            };
            if found.contains(&ppid) && !found.contains(&p) {
                found.push(p);
            }
        }
        if found.len() == before {
            return found;
        }
    }
}

/// Opens the instance's terminal over the daemon's API, types `line` and
/// returns what the PTY printed until `until` appears (or 30 s pass).
pub fn terminal(d: &Daemon, instance: &str, line: &str, until: &str) -> String {
    let addr = d.url.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        stream,
        "GET /api/v1/instances/{instance}/terminal HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nOrigin: http://{addr}\r\nAuthorization: Bearer {}\r\n\r\n",
        d.token
    )
    .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let (status, _) = read_head(&mut reader).unwrap();
    assert_eq!(status, 101, "terminal upgrade refused");
    // One masked binary frame (clients must mask).
    let payload = line.as_bytes();
    assert!(payload.len() < 126);
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    let mut frame = vec![0x82, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    stream.write_all(&frame).unwrap();
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline && !String::from_utf8_lossy(&seen).contains(until) {
        let mut head = [0u8; 2];
        if reader.read_exact(&mut head).is_err() {
            break;
        }
        let mut len = (head[1] & 0x7f) as u64;
        if len == 126 {
            let mut b = [0u8; 2];
            reader.read_exact(&mut b).unwrap();
            len = u16::from_be_bytes(b) as u64;
        } else if len == 127 {
            let mut b = [0u8; 8];
            reader.read_exact(&mut b).unwrap();
            len = u64::from_be_bytes(b);
        }
        let mut body = vec![0u8; len as usize];
        reader.read_exact(&mut body).unwrap();
        if head[0] & 0x0f == 0x8 {
            break;
        }
        seen.extend_from_slice(&body);
    }
    String::from_utf8_lossy(&seen).into()
}
