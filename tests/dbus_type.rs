//! [Service] Type=dbus with BusName=: a real system bus (Debian's
//! dbus-daemon with its stock system policy, on a socket of the test's own,
//! itself run as a Type=dbus unit owning `org.freedesktop.DBus`), Debian's
//! avahi-daemon from its own shipped unit file, and units whose name appears
//! late, never, or goes away while they run.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use crate::harness::{Daemon, Options};

fn tool(path: &str) -> String {
    assert!(std::path::Path::new(path).exists(), "{path} is missing (.ci/run installs it)");
    path.to_string()
}

fn shipped(name: &str) -> String {
    let path = format!("/lib/systemd/system/{name}");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e} (.ci/run installs the package)"))
}

/// Whether `name` has an owner, asked of the bus by Debian's own dbus-send (not aikore's client).
fn has_owner(address: &str, name: &str) -> bool {
    let out = std::process::Command::new(tool("/usr/bin/dbus-send"))
        .env("DBUS_SYSTEM_BUS_ADDRESS", address)
        .args(["--system", "--print-reply", "--dest=org.freedesktop.DBus", "/org/freedesktop/DBus"])
        .args(["org.freedesktop.DBus.NameHasOwner", &format!("string:{name}")])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "dbus-send: {text}{}", String::from_utf8_lossy(&out.stderr));
    text.contains("boolean true")
}

/// A bus client of the test's own (Python, marshalling by hand as the
/// specification says, independent of aikore's): takes `name` with
/// `RequestName`, gives it back with `ReleaseName` once `gate` exists, and
/// keeps running.
const CLAIMER: &str = r#"
import os, socket, struct, sys, time
path, name, gate = sys.argv[1:4]
s = socket.socket(socket.AF_UNIX)
s.connect(path)
s.sendall(b"\0AUTH EXTERNAL " + str(os.geteuid()).encode().hex().encode() + b"\r\n")
assert s.recv(512).startswith(b"OK ")
s.sendall(b"BEGIN\r\n")
def pad(b, n):
    return b + b"\0" * (-len(b) % n)
def string(v):
    return struct.pack("<I", len(v)) + v.encode() + b"\0"
serial = 0
def call(member, sig="", body=b""):
    global serial
    serial += 1
    fields = b""
    bus = "org.freedesktop.DBus"
    for code, t, v in [(1, "o", "/org/freedesktop/DBus"), (6, "s", bus), (2, "s", bus), (3, "s", member), (8, "g", sig)]:
        if t == "g" and not sig:
            continue
        value = bytes([len(v)]) + v.encode() + b"\0" if t == "g" else string(v)
        fields = pad(fields, 8) + bytes([code, 1, ord(t), 0]) + value
    head = b"l\1\0\1" + struct.pack("<III", len(body), serial, len(fields)) + fields
    s.sendall(pad(head, 8) + body)
    time.sleep(0.2)
call("Hello")
call("RequestName", "su", pad(string(name), 4) + struct.pack("<I", 0))
while not os.path.exists(gate):
    time.sleep(0.1)
call("ReleaseName", "s", string(name))
time.sleep(1000)
"#;

fn options(address: &str) -> Options {
    let mut options = Options::default();
    // aikore's client reads it, and the units inherit it (avahi-daemon's libdbus reads it too).
    options.env.push(("DBUS_SYSTEM_BUS_ADDRESS".into(), address.into()));
    options
}

#[test]
fn debian_avahi_daemon_is_started_from_its_own_unit_file_once_its_bus_name_appears() {
    let dbus_daemon = tool("/usr/bin/dbus-daemon");
    let avahi = shipped("avahi-daemon.service");
    assert!(avahi.contains("Type=dbus") && avahi.contains("BusName=org.freedesktop.Avahi"), "{avahi}");
    tool("/usr/sbin/avahi-daemon");
    let dir = tempfile::tempdir().unwrap();
    // avahi-daemon connects as user avahi: the socket's directory must be open to it.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let socket = dir.path().join("system_bus_socket");
    let address = format!("unix:path={}", socket.display());
    // The bus itself is a dbus service: started once it owns its own name.
    let bus = format!(
        "[Service]\nType=dbus\nBusName=org.freedesktop.DBus\n\
         ExecStart={dbus_daemon} --system --nofork --nopidfile --address={address}\n"
    );
    let go = dir.path().join("go");
    // The same daemon, held back until the test says go: its process runs, its name is not there.
    let late = format!(
        "[Service]\nType=dbus\nBusName=org.freedesktop.Avahi\n\
         ExecStart=/bin/sh -c 'while [ ! -e {} ]; do sleep 0.1; done; exec /usr/sbin/avahi-daemon -s'\n\
         [Install]\nWantedBy=multi-user.target\n",
        go.display()
    );
    let claimer = dir.path().join("claimer.py");
    std::fs::write(&claimer, CLAIMER).unwrap();
    std::fs::set_permissions(&claimer, std::fs::Permissions::from_mode(0o644)).unwrap();
    let release = dir.path().join("release");
    let claims = format!(
        "[Service]\nType=dbus\nBusName=org.freedesktop.Avahi\n\
         ExecStart={} {} {} org.freedesktop.Avahi {}\n[Install]\nWantedBy=multi-user.target\n",
        tool("/usr/bin/python3"),
        claimer.display(),
        socket.display(),
        release.display()
    );
    let never = "[Service]\nType=dbus\nBusName=org.example.Never\nTimeoutStartSec=3s\nExecStart=/bin/sleep 1000\n\
                 [Install]\nWantedBy=multi-user.target\n";
    let d = Daemon::start_with(
        &[
            ("bus.service", &bus),
            ("avahi-daemon.service", &avahi),
            ("late.service", &late),
            ("never.service", never),
            ("claims.service", &claims),
        ],
        options(&address),
    );
    d.wait_status("bus", "started");
    assert!(has_owner(&address, "org.freedesktop.DBus"));

    let (code, body) = d.post("/api/v1/units/avahi-daemon/start");
    assert_eq!(code, 200, "{body}");
    let u = d.wait_status("avahi-daemon", "started");
    assert!(has_owner(&address, "org.freedesktop.Avahi"), "started, yet the name has no owner");
    let log = d.unit_log("avahi-daemon");
    let spawned = log.find("started /usr/sbin/avahi-daemon -s, pid").unwrap_or_else(|| panic!("{log}"));
    let appeared = log.find("org.freedesktop.Avahi appeared on the system bus").unwrap_or_else(|| panic!("{log}"));
    assert!(spawned < appeared, "{log}");
    let pid = u["pid"].as_i64().unwrap();
    let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(cmdline.starts_with("avahi-daemon: "), "the daemon itself, named by its proctitle: {cmdline}");
    d.post("/api/v1/units/avahi-daemon/stop");
    d.wait_status("avahi-daemon", "stopped");
    d.wait_until("the name released", |_| !has_owner(&address, "org.freedesktop.Avahi"));

    // Its process runs, the name is not there: starting, however long (within TimeoutStartSec).
    let (code, body) = d.post("/api/v1/units/late/start");
    assert_eq!(code, 200, "{body}");
    d.wait_until("late's shell runs", |d| d.unit_log("late").contains("started /bin/sh"));
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        let u = d.unit("late");
        assert_eq!(u["status"], "starting", "{u}");
        assert_eq!(u["detail"], "waiting for org.freedesktop.Avahi on the system bus", "{u}");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::fs::write(&go, "").unwrap();
    d.wait_status("late", "started");
    assert!(has_owner(&address, "org.freedesktop.Avahi"));
    d.post("/api/v1/units/late/stop");
    d.wait_status("late", "stopped");

    // Released while running: stopped, as systemd does (a clean end: Restart=no leaves it down).
    d.post("/api/v1/units/claims/start");
    let u = d.wait_status("claims", "started");
    let pid = u["pid"].as_i64().unwrap();
    assert!(has_owner(&address, "org.freedesktop.Avahi"));
    std::fs::write(&release, "").unwrap();
    let u = d.wait_status("claims", "stopped");
    assert!(u["pid"].is_null(), "{u}");
    assert!(std::fs::metadata(format!("/proc/{pid}")).is_err(), "the claimer still runs");
    let log = d.unit_log("claims");
    assert!(log.contains("org.freedesktop.Avahi was released on the system bus; stopping it"), "{log}");

    // A process that never claims its name fails at TimeoutStartSec=, and is stopped.
    d.post("/api/v1/units/never/start");
    let u = d.wait_status("never", "error");
    assert_eq!(u["detail"], "did not become ready within TimeoutStartSec", "{u}");
    assert!(u["pid"].is_null(), "{u}");
}

/// No bus at the address: the start waits out TimeoutStartSec=, and the unit's log says why.
#[test]
fn a_dbus_service_without_a_reachable_bus_fails_at_its_timeout_and_its_log_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let address = format!("unix:path={}/no-bus-here", dir.path().display());
    let unit = "[Service]\nType=dbus\nBusName=org.example.Lonely\nTimeoutStartSec=2s\nExecStart=/bin/sleep 1000\n";
    let d = Daemon::start_with(&[("lonely.service", unit)], options(&address));
    let u = d.wait_status("lonely", "error");
    assert_eq!(u["detail"], "did not become ready within TimeoutStartSec", "{u}");
    let log = d.unit_log("lonely");
    assert!(log.contains("waiting for org.example.Lonely: cannot connect to the system bus"), "{log}");
    assert!(log.contains("no-bus-here"), "{log}");
}

#[test]
fn a_dbus_service_without_bus_name_is_refused_with_its_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nameless.service");
    std::fs::write(&path, "[Service]\nType=dbus\nExecStart=/bin/sleep 1000\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_aikore")).arg("check").arg(&path).output().unwrap();
    assert!(!out.status.success());
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(text.contains(&format!("{}:2", path.display())), "{text}");
    assert!(text.contains("Type=dbus needs BusName="), "{text}");
}
