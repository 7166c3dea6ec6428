//! DevicePolicy=/DeviceAllow= and IPAddressAllow=/IPAddressDeny= through the
//! real daemon on this machine (issue 14): where the kernel lets aikore load
//! cgroup BPF programs, a probe in the unit gets EPERM for what the unit does
//! not list; where it does not, the unit still runs and its log says why.
//! tests/cgroup-vm/run.sh checks the same on a cgroup v2 kernel, and Delegate=.

use std::process::Command;

use crate::harness::{Daemon, BIN};

/// The probe: a TCP connect and a UDP datagram to each address, an open of
/// each device, one line per attempt with the errno's name.
const PROBE: &str = r#"
import errno, socket, sys, time
port = int(sys.argv[1])
for host in ("127.0.0.1", "127.0.0.2"):
    s = socket.socket()
    # A dropped SYN is retransmitted: TCP times out where UDP fails at once.
    s.settimeout(3)
    try:
        s.connect((host, port))
        print("connect", host, "ok")
    except socket.timeout:
        print("connect", host, "timed out")
    except OSError as e:
        print("connect", host, errno.errorcode.get(e.errno, e))
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        u.sendto(b"x", (host, port))
        print("udp", host, "ok")
    except OSError as e:
        print("udp", host, errno.errorcode.get(e.errno, e))
for path, mode in (("/dev/zero", "rb"), ("/dev/zero", "wb"), ("/dev/null", "wb")):
    try:
        open(path, mode).close()
        print("open", path, mode, "ok")
    except OSError as e:
        print("open", path, mode, errno.errorcode.get(e.errno, e))
print("probe done", flush=True)
time.sleep(1000)
"#;

#[test]
fn a_unit_gets_eperm_for_devices_and_addresses_it_does_not_list() {
    // The interpreter itself: a wrapper script (pyenv's shim) would open /dev/null under DevicePolicy=strict.
    let out = Command::new("python3").args(["-c", "import sys; print(sys.executable)"]).output();
    let python = String::from_utf8(out.expect("python3 is needed (.ci/run installs it)").stdout).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let probe = dir.path().join("probe.py");
    std::fs::write(&probe, PROBE).unwrap();
    // Bound to every address: 127.0.0.2 reaches it too unless the unit's program drops the packet.
    let listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || for _ in listener.incoming() {});
    let unit = format!(
        "[Service]\nDevicePolicy=strict\nDeviceAllow=/dev/zero r\nIPAddressDeny=any\nIPAddressAllow=127.0.0.1\nIPAccounting=yes\n\
         ExecStart={} -u {} {port}\n",
        python.trim(),
        probe.display()
    );
    let d = Daemon::start(&[("probe.service", &unit)]);
    d.wait_until("the probe's last line", |d| d.unit_log("probe").contains("probe done"));
    let log = d.unit_log("probe");
    let devices_said = log.contains("DevicePolicy= and DeviceAllow= are not enforced")
        || log.contains("IPAccounting= and Delegate= are not enforced");
    if devices_said {
        eprintln!("PRECONDITION: no cgroup BPF for aikore here; the unit's log says so:\n{log}");
        assert!(
            log.contains("connect 127.0.0.2 ok") && log.contains("udp 127.0.0.2 ok"),
            "not enforced, yet refused: {log}"
        );
        return;
    }
    for line in [
        "connect 127.0.0.1 ok",
        "udp 127.0.0.1 ok",
        "connect 127.0.0.2 timed out",
        "udp 127.0.0.2 EPERM",
        "open /dev/zero rb ok",
        "open /dev/zero wb EPERM",
        "open /dev/null wb EPERM",
    ] {
        assert!(log.contains(line), "{line:?} missing:\n{log}");
    }
    // IPAccounting=: what passed (the connect to 127.0.0.1 and its UDP datagram), in both directions.
    let status = d.cli(&["status", "probe"]);
    let status = String::from_utf8_lossy(&status.stdout);
    let ip = status.lines().find_map(|l| l.trim().strip_prefix("ip:")).unwrap_or_else(|| panic!("{status}"));
    let packets: Vec<u64> = ip.split(['(', ' ']).filter_map(|w| w.parse().ok()).collect();
    assert_eq!(packets.len(), 2, "{ip}");
    assert!(packets[0] >= 1 && packets[1] >= 2, "in: SYN-ACK at least; out: SYN and the datagram: {ip}");
    let (_, metrics) = d.get("/metrics");
    let metrics = metrics.as_str().map(String::from).unwrap_or_else(|| metrics.to_string());
    let egress = metrics
        .lines()
        .find(|l| {
            l.starts_with("aikore_unit_ip_packets_total{")
                && l.contains("direction=\"egress\"")
                && l.contains("unit=\"probe\"")
        })
        .unwrap_or_else(|| panic!("no egress packet counter:\n{metrics}"));
    let value: f64 = egress.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(value >= 2.0, "{egress}");
}

#[test]
fn bad_access_values_are_errors_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.service");
    std::fs::write(
        &path,
        "[Service]\nExecStart=/bin/true\nDevicePolicy=close\nDeviceAllow=/dev/null rx\nIPAddressDeny=10.0.0.0/33\n\
         Delegate=pid\nDeviceAllow=char-rtc r\nIPAddressAllow=localhost\n",
    )
    .unwrap();
    let out = Command::new(BIN).arg("check").arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for (line, text) in [
        (3, "invalid DevicePolicy=close: expected auto, closed or strict"),
        (4, "invalid DeviceAllow=/dev/null rx: access \"rx\": expected letters of r, w and m"),
        (5, "invalid IPAddressDeny=10.0.0.0/33"),
        (6, "invalid Delegate=pid: unknown controller \"pid\""),
    ] {
        assert!(stderr.contains(&format!("{}:{line}: ", path.display())), "line {line}: {stderr}");
        assert!(stderr.contains(text), "{text}: {stderr}");
    }
    // The good lines are neither errors nor warnings.
    for line in [7, 8] {
        assert!(!stderr.contains(&format!("{}:{line}:", path.display())), "line {line}: {stderr}");
    }
    // A typo of one of these keys is still an error.
    std::fs::write(&path, "[Service]\nExecStart=/bin/true\nDevicePolcy=closed\n").unwrap();
    let out = Command::new(BIN).arg("check").arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("did you mean DevicePolicy=?"), "{stderr}");
}

/// The cgroup v2 mount point and a process's cgroup path under it.
fn cgroup_dir(pid: i32) -> std::path::PathBuf {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mount = mountinfo
        .lines()
        .find(|l| l.split_once(" - ").is_some_and(|(_, r)| r.starts_with("cgroup2 ")))
        .and_then(|l| l.split_whitespace().nth(4))
        .expect("a cgroup2 mount")
        .to_string();
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let path = own.lines().find_map(|l| l.strip_prefix("0::")).expect("a cgroup v2 entry").trim().to_string();
    std::path::Path::new(&mount).join(path.trim_start_matches('/'))
}

#[test]
fn a_delegated_unit_owns_its_cgroup_and_stop_still_kills_its_children() {
    let unit =
        "[Service]\nUser=nobody\nDelegate=yes\nExecStart=/bin/sh -c 'cg=$(grep ^0:: /proc/self/cgroup | cut -d: -f3); \
                sleep 1000 & sleep 1000 & echo cg=$cg; wait'\n";
    let d = Daemon::start(&[("deleg.service", unit)]);
    let pid = d.wait_status("deleg", "started")["pid"].as_i64().unwrap() as i32;
    // "\ncg=/": the started line quotes the script, which has "cg=$(" in it.
    d.wait_until("the unit's cgroup line", |d| d.unit_log("deleg").contains("\ncg=/"));
    let log = d.unit_log("deleg");
    if log.contains("and Delegate= are not enforced: they need the unit's own cgroup") {
        eprintln!("PRECONDITION: no writable cgroup v2 here; the unit's log says so:\n{log}");
        return;
    }
    let dir = cgroup_dir(pid);
    use std::os::unix::fs::MetadataExt;
    for f in ["", "cgroup.procs", "cgroup.subtree_control", "cgroup.threads"] {
        let uid = std::fs::metadata(dir.join(f)).unwrap_or_else(|e| panic!("{}/{f}: {e}", dir.display())).uid();
        assert_eq!(uid, 65534, "{}/{f} not handed to nobody", dir.display());
    }
    // As the unit would: a child cgroup, and every process moved into it (done here as nobody).
    let child = dir.join("payload");
    let moved = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "sh", "-c"])
        .arg(format!(
            // A process that exited meanwhile cannot move: what is left in the parent is checked below.
            "mkdir {c} && for p in $(cat {d}/cgroup.procs); do echo $p > {c}/cgroup.procs; done; true",
            c = child.display(),
            d = dir.display()
        ))
        .output()
        .expect("setpriv (util-linux)");
    assert!(moved.status.success(), "{}", String::from_utf8_lossy(&moved.stderr));
    let pids: Vec<i32> =
        std::fs::read_to_string(child.join("cgroup.procs")).unwrap().lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(pids.len(), 3, "sh and two sleeps: {pids:?}");

    assert!(std::fs::read_to_string(dir.join("cgroup.procs")).unwrap().trim().is_empty());
    // aikore still sees them all.
    let status = d.cli(&["status", "deleg"]);
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(status.contains("tasks:     3"), "{status}");
    let out = d.cli(&["stop", "deleg", "--wait", "--timeout", "30"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    d.wait_until("every process of the child cgroup gone", |_| {
        pids.iter().all(|p| !std::path::Path::new(&format!("/proc/{p}")).exists())
    });
    d.wait_until("both cgroups removed", |_| !dir.exists());
}

/// Without a cgroup of its own (AIKORE_CGROUP=off, or no writable cgroup v2)
/// the unit still runs, and its log says which keys are not enforced.
#[test]
fn without_a_unit_cgroup_the_keys_are_said_not_enforced() {
    let mut options = crate::harness::Options::default();
    options.env.push(("AIKORE_CGROUP".into(), "off".into()));
    let unit = "[Service]\nDevicePolicy=closed\nIPAddressDeny=any\nExecStart=/bin/sleep 1000\n";
    let d = Daemon::start_with(&[("open.service", unit)], options);
    d.wait_status("open", "started");
    let log = d.unit_log("open");
    assert!(
        log.contains(
            "DevicePolicy=, DeviceAllow=, IPAddressAllow=, IPAddressDeny=, IPAccounting= and Delegate= are not \
             enforced: they need the unit's own cgroup, and there is no writable cgroup v2"
        ),
        "{log}"
    );
    assert!(!log.contains("MemoryMax= and the other resource keys"), "no such key in this unit: {log}");
}
