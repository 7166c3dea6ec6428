//! ProtectKernelTunables=, ProtectKernelModules=, ProtectKernelLogs=,
//! ProtectControlGroups=, ProtectClock= and ProtectHostname= through the
//! real daemon (issue 14): one unit per key runs a Python probe, and a unit
//! without any runs the same probes, so each answer is compared with what
//! the kernel says without the key. The calls take arguments the kernel
//! alone refuses otherwise (EFAULT, EINVAL, ENOEXEC), so an EPERM is the
//! key's. Where the kernel refuses a namespace here, the test checks the
//! unit's log says so (a `PRECONDITION:` line tells).

use std::os::unix::fs::PermissionsExt;

use crate::harness::Daemon;

const PROBE: &str = r#"
import ctypes, os, stat, sys, time
libc = ctypes.CDLL(None, use_errno=True)

def errno_of(f, *args):
    ctypes.set_errno(0)
    return ctypes.get_errno() if f(*args) == -1 else 0

def open_errno(path, flags):
    try:
        os.close(os.open(path, flags))
        return 0
    except OSError as e:
        return e.errno

def own_cgroup_procs():
    rel = next(l[3:] for l in open("/proc/self/cgroup").read().splitlines() if l.startswith("0::"))
    for line in open("/proc/self/mountinfo"):
        left, right = line.split(" - ", 1)
        if right.split()[0] == "cgroup2":
            return left.split()[4] + rel.rstrip("/") + "/cgroup.procs"

out = []
for what in sys.argv[1:]:
    if what == "tunables":
        # Opening for writing changes nothing; a read-only mount says EROFS.
        out.append(("proc_sys", open_errno("/proc/sys/kernel/domainname", os.O_WRONLY)))
    elif what == "modules":
        # An empty image: the kernel alone says ENOEXEC (with CAP_SYS_MODULE).
        out.append(("init_module", errno_of(libc.init_module, None, 0, None)))
    elif what == "logs":
        # SYSLOG_ACTION_SIZE_BUFFER: the kernel answers the size.
        out.append(("klogctl", errno_of(libc.klogctl, 10, None, 0)))
        out.append(("dev_kmsg_chr", int(os.path.exists("/dev/kmsg") and stat.S_ISCHR(os.stat("/dev/kmsg").st_mode))))
    elif what == "cgroups":
        # Writing it would move the process into its own cgroup: a no-op.
        out.append(("cgroup_procs", open_errno(own_cgroup_procs(), os.O_WRONLY)))
    elif what == "clock":
        # A NULL time: the kernel alone says EFAULT, before any privilege check.
        # The raw call: glibc's wrapper reads the time itself first.
        nr = {"x86_64": 227, "aarch64": 112}[os.uname().machine]
        out.append(("clock_settime", errno_of(libc.syscall, nr, 0, None)))
    elif what == "hostname":
        # Longer than a host name may be: the kernel alone says EINVAL (with CAP_SYS_ADMIN).
        out.append(("sethostname", errno_of(libc.sethostname, b"x", 1000)))
print("probe " + " ".join(f"{k}={v}" for k, v in out), flush=True)
time.sleep(1000)
"#;

/// The `probe ...` line a unit printed.
fn probe(d: &Daemon, unit: &str) -> String {
    let mut line = String::new();
    d.wait_until(&format!("{unit}'s probe line"), |d| {
        line = d.unit_output(unit).lines().find(|l| l.starts_with("probe ")).unwrap_or_default().to_string();
        !line.is_empty() || ["failed", "error"].contains(&d.unit(unit)["status"].as_str().unwrap_or_default())
    });
    assert!(!line.is_empty(), "{unit} failed: {}", d.unit_log(unit));
    line
}

fn value(line: &str, key: &str) -> i32 {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("{key} in {line}"))
        .parse()
        .unwrap()
}

fn main_pid(d: &Daemon, unit: &str) -> i32 {
    d.wait_status(unit, "started")["pid"].as_i64().expect("a pid") as i32
}

fn bounding_set(pid: impl std::fmt::Display) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let hex = status.lines().find_map(|l| l.strip_prefix("CapBnd:")).unwrap().trim();
    u64::from_str_radix(hex, 16).unwrap()
}

/// Whether the topmost mount at `point` in the process's namespace is read-only.
fn read_only_mount(pid: i32, point: &str) -> Option<bool> {
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let line = mountinfo.lines().rfind(|l| l.split_whitespace().nth(4) == Some(point))?;
    Some(line.split_whitespace().nth(5)?.split(',').any(|o| o == "ro"))
}

/// The kernel refused what `note` names: the log must say so.
fn refused(d: &Daemon, unit: &str, note: &str) -> bool {
    if d.unit_log(unit).contains(note) {
        eprintln!("PRECONDITION: {note} here; checked the unit's note only");
        return true;
    }
    false
}

const MOUNT_REFUSED: &str = "not applied: the kernel refused a mount namespace";

#[test]
fn protect_keys_take_effect_inside_the_unit() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let script = dir.path().join("probe.py");
    std::fs::write(&script, PROBE).unwrap();
    let run = |what: &str| format!("ExecStart=/usr/bin/python3 -u {} {what}\n", script.display());
    let units = [
        ("tunables.service", format!("[Service]\nProtectKernelTunables=yes\n{}", run("tunables cgroups"))),
        ("modules.service", format!("[Service]\nProtectKernelModules=yes\n{}", run("modules"))),
        ("logs.service", format!("[Service]\nProtectKernelLogs=yes\n{}", run("logs"))),
        ("cgroups.service", format!("[Service]\nProtectControlGroups=yes\n{}", run("cgroups"))),
        ("clock.service", format!("[Service]\nProtectClock=yes\n{}", run("clock"))),
        ("hostname.service", format!("[Service]\nProtectHostname=yes\n{}", run("hostname"))),
        ("plain.service", format!("[Service]\n{}", run("tunables modules logs cgroups clock hostname"))),
    ];
    let units: Vec<(&str, &str)> = units.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let d = Daemon::start(&units);
    let (_, health) = d.get("/healthz");
    assert_eq!(health["tracking"], "cgroup", "this test needs a writable cgroup v2: {health}");
    let ours = bounding_set("self");
    let has = |cap: u32| ours & (1 << cap) != 0;
    let plain = probe(&d, "plain");
    let plain_pid = main_pid(&d, "plain");
    let eperm = libc::EPERM;

    // ProtectKernelTunables=: /proc/sys and /sys read-only, the cgroup tree left as it is.
    let line = probe(&d, "tunables");
    let pid = main_pid(&d, "tunables");
    if !refused(&d, "tunables", MOUNT_REFUSED) {
        assert_eq!(value(&line, "proc_sys"), libc::EROFS, "{line}");
        assert_eq!(read_only_mount(pid, "/sys"), Some(true), "/sys in the unit");
        assert_eq!(value(&line, "cgroup_procs"), 0, "ProtectControlGroups= is another key: {line}");
    }
    let writable_here = std::fs::OpenOptions::new().write(true).open("/proc/sys/kernel/domainname").is_ok();
    if writable_here {
        assert_eq!(value(&plain, "proc_sys"), 0, "without the key: {plain}");
    }

    // ProtectKernelModules=: CAP_SYS_MODULE (16) gone, init_module refused.
    let line = probe(&d, "modules");
    assert_eq!(bounding_set(main_pid(&d, "modules")) & 1 << 16, 0);
    assert_eq!(value(&line, "init_module"), eperm, "{line}");
    if has(16) {
        assert_ne!(value(&plain, "init_module"), eperm, "{plain}");
        assert_ne!(bounding_set(plain_pid) & 1 << 16, 0);
    }

    // ProtectKernelLogs=: CAP_SYSLOG (34) gone, syslog(2) refused, /dev/kmsg not the device.
    let line = probe(&d, "logs");
    assert_eq!(bounding_set(main_pid(&d, "logs")) & 1 << 34, 0);
    assert_eq!(value(&line, "klogctl"), eperm, "{line}");
    if has(34) {
        assert_eq!(value(&plain, "klogctl"), 0, "{plain}");
    }
    if !refused(&d, "logs", MOUNT_REFUSED) {
        assert_eq!(value(&line, "dev_kmsg_chr"), 0, "{line}");
        if std::path::Path::new("/dev/kmsg").exists() {
            assert_eq!(value(&plain, "dev_kmsg_chr"), 1, "{plain}");
        }
    }

    // ProtectControlGroups=: the unit's own cgroup files are read-only in it.
    let line = probe(&d, "cgroups");
    let pid = main_pid(&d, "cgroups");
    if !refused(&d, "cgroups", MOUNT_REFUSED) {
        assert_eq!(value(&line, "cgroup_procs"), libc::EROFS, "{line}");
        assert_eq!(read_only_mount(pid, "/sys/fs/cgroup"), Some(true));
    }
    assert_eq!(value(&plain, "cgroup_procs"), 0, "{plain}");
    // aikore itself still writes the unit's cgroup: stopping it kills through cgroup.kill or the procs.
    d.post("/api/v1/units/cgroups/stop");
    d.wait_status("cgroups", "stopped");

    // ProtectClock=: CAP_SYS_TIME (25) and CAP_WAKE_ALARM (35) gone, clock_settime refused.
    let line = probe(&d, "clock");
    assert_eq!(bounding_set(main_pid(&d, "clock")) & (1 << 25 | 1 << 35), 0);
    assert_eq!(value(&line, "clock_settime"), eperm, "{line}");
    assert_eq!(value(&plain, "clock_settime"), libc::EFAULT, "{plain}");

    // ProtectHostname=: a UTS namespace of the unit's own, sethostname refused.
    let line = probe(&d, "hostname");
    assert_eq!(value(&line, "sethostname"), eperm, "{line}");
    if has(21) {
        assert_eq!(value(&plain, "sethostname"), libc::EINVAL, "{plain}");
    }
    let uts = |pid: &dyn std::fmt::Display| std::fs::read_link(format!("/proc/{pid}/ns/uts")).unwrap();
    if !refused(&d, "hostname", "ProtectHostname=: the kernel refused a UTS namespace") {
        assert_ne!(uts(&main_pid(&d, "hostname")), uts(&plain_pid), "the unit's own UTS namespace");
    }
    assert_eq!(uts(&plain_pid), uts(&"self"), "a unit without the key shares aikore's");
}
