//! The seccomp sandbox keys through the real daemon (issue 14): each unit
//! runs a Python probe that makes the forbidden call with an argument the
//! kernel itself would refuse differently (EINVAL, ENOENT), so the errno it
//! prints tells the filter's answer from the kernel's.

use std::os::unix::fs::PermissionsExt;

use crate::harness::Daemon;

const PROBE: &str = r#"
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]

def errno_of(f, *args):
    ctypes.set_errno(0)
    r = f(*args)
    failed = r is None or r == -1 or r == ctypes.c_void_p(-1).value
    return ctypes.get_errno() if failed else 0

what, scratch = sys.argv[1], sys.argv[2]
out = []
if what == "persona":
    out.append(("linux32", errno_of(libc.personality, 0x0008)))
    out.append(("query", errno_of(libc.personality, 0xffffffff)))
elif what == "realtime":
    # A NULL param: the kernel alone says EINVAL.
    out.append(("fifo", errno_of(libc.sched_setscheduler, 0, 1, None)))
    out.append(("rr", errno_of(libc.sched_setscheduler, 0, 2, None)))
    out.append(("batch", errno_of(libc.sched_setscheduler, 0, 3, None)))
elif what == "suid":
    missing = scratch + "/missing/file"
    out.append(("chmod_suid", errno_of(libc.chmod, missing.encode(), 0o4755)))
    out.append(("chmod_plain", errno_of(libc.chmod, missing.encode(), 0o755)))
    out.append(("open_sgid", errno_of(libc.open, missing.encode(), os.O_CREAT | os.O_WRONLY, 0o2755)))
    out.append(("open_plain", errno_of(libc.open, missing.encode(), os.O_CREAT | os.O_WRONLY, 0o644)))
elif what == "namespaces":
    # Bit 0x1 is not an unshare flag: the kernel alone says EINVAL.
    out.append(("net", errno_of(libc.unshare, 0x40000000 | 0x1)))
    out.append(("uts", errno_of(libc.unshare, 0x04000000 | 0x1)))
elif what == "wx":
    # A zero length: the kernel alone says EINVAL.
    out.append(("wx", errno_of(libc.mmap, None, 0, 0x2 | 0x4, 0x22, -1, 0)))
    out.append(("w", errno_of(libc.mmap, None, 0, 0x2, 0x22, -1, 0)))
elif what == "families":
    out.append(("inet", errno_of(libc.socket, 2, 1, 0)))
    out.append(("unix", errno_of(libc.socket, 1, 1, 0)))
elif what == "mount":
    # mount(NULL, NULL, ...): the kernel alone says EFAULT; umount2 with an
    # unknown flag: EINVAL, both before any privilege check.
    print("before", flush=True)
    out.append(("mount", errno_of(libc.mount, None, None, None, 0, None)))
    out.append(("umount", errno_of(libc.umount2, b"/nonexistent", 0x100)))
    print("after", flush=True)
elif what == "outside":
    # Calls outside @system-service, each with arguments the kernel alone
    # refuses with another errno than the unit's EUCLEAN.
    out.append(("ptrace", errno_of(libc.ptrace, 0xdead, 0, None, None)))
    # reboot(0): not a command (EINVAL) where allowed at all (EPERM).
    out.append(("reboot", errno_of(libc.reboot, 0)))
    out.append(("swapon", errno_of(libc.swapon, b"/nonexistent", 0)))
    out.append(("init_module", errno_of(libc.init_module, None, 0, None)))
    out.append(("getpid", 0 if os.getpid() > 0 else 1))
elif what == "arch":
    print("before", flush=True)
    libc.syscall(0x40000000 + 39)  # x32 getpid
    print("after", flush=True)
print("probe " + " ".join(f"{k}={v}" for k, v in out), flush=True)
time.sleep(1000)
"#;

fn status_field(pid: i32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status.lines().find_map(|l| l.strip_prefix(&format!("{field}:"))).expect(field).trim().to_string()
}

/// The `probe ...` line a unit printed.
fn probe(d: &Daemon, unit: &str) -> String {
    let mut line = String::new();
    d.wait_until(&format!("{unit}'s probe line"), |d| {
        line = d.unit_output(unit).lines().find(|l| l.starts_with("probe ")).unwrap_or_default().to_string();
        !line.is_empty()
    });
    line
}

#[test]
fn seccomp_keys_refuse_what_systemd_refuses() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let script = dir.path().join("probe.py");
    std::fs::write(&script, PROBE).unwrap();
    let run =
        |what: &str| format!("ExecStart=/usr/bin/python3 -u {} {what} {}\n", script.display(), dir.path().display());
    let units = [
        ("persona.service", format!("[Service]\nUser=nobody\nLockPersonality=yes\n{}", run("persona"))),
        ("realtime.service", format!("[Service]\nRestrictRealtime=yes\n{}", run("realtime"))),
        ("suid.service", format!("[Service]\nRestrictSUIDSGID=yes\n{}", run("suid"))),
        ("namespaces.service", format!("[Service]\nRestrictNamespaces=uts\n{}", run("namespaces"))),
        ("wx.service", format!("[Service]\nMemoryDenyWriteExecute=yes\n{}", run("wx"))),
        ("families.service", format!("[Service]\nRestrictAddressFamilies=AF_UNIX\n{}", run("families"))),
        ("arch.service", format!("[Service]\nSystemCallArchitectures=native\n{}", run("arch"))),
        ("plain.service", format!("[Service]\n{}", run("namespaces"))),
    ];
    let units: Vec<(&str, &str)> = units.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let d = Daemon::start(&units);
    let (eperm, einval, enoent, eafnosupport) = (libc::EPERM, libc::EINVAL, libc::ENOENT, libc::EAFNOSUPPORT);

    assert_eq!(probe(&d, "persona"), format!("probe linux32={eperm} query=0"));
    assert_eq!(probe(&d, "realtime"), format!("probe fifo={eperm} rr={eperm} batch={einval}"));
    assert_eq!(
        probe(&d, "suid"),
        format!("probe chmod_suid={eperm} chmod_plain={enoent} open_sgid={eperm} open_plain={enoent}")
    );
    assert_eq!(probe(&d, "namespaces"), format!("probe net={eperm} uts={einval}"));
    assert_eq!(probe(&d, "plain"), format!("probe net={einval} uts={einval}"), "no key, no filter");
    assert_eq!(probe(&d, "wx"), format!("probe wx={eperm} w={einval}"));
    assert_eq!(probe(&d, "families"), format!("probe inet={eafnosupport} unix=0"));

    for unit in ["persona", "realtime", "suid", "namespaces", "wx", "families"] {
        let pid = d.wait_status(unit, "started")["pid"].as_i64().unwrap() as i32;
        assert_eq!(status_field(pid, "Seccomp"), "2", "{unit}");
        // Installing a filter without CAP_SYS_ADMIN implies NoNewPrivileges=, as in systemd.
        let sys_admin = u64::from_str_radix(&status_field(pid, "CapEff"), 16).unwrap() & (1 << 21) != 0;
        assert_eq!(status_field(pid, "NoNewPrivs"), if sys_admin { "0" } else { "1" }, "{unit}");
    }
    let plain = d.wait_status("plain", "started")["pid"].as_i64().unwrap() as i32;
    assert_eq!(status_field(plain, "Seccomp"), "0");

    // Another ABI's call (x32) kills the process with SIGSYS.
    #[cfg(target_arch = "x86_64")]
    {
        let arch = d.wait_status("arch", "error");
        assert!(arch["detail"].as_str().unwrap().contains("SIGSYS"), "{arch}");
        let out = d.unit_output("arch");
        assert!(out.contains("before") && !out.contains("after"), "{out}");
    }
}

/// The unit's end detail once it stopped on its own.
fn ended(d: &Daemon, unit: &str) -> String {
    let mut detail = String::new();
    d.wait_until(&format!("{unit} ended"), |d| {
        let u = d.unit(unit);
        let status = u["status"].as_str().unwrap_or_default().to_string();
        detail = format!("{status}: {}", u["detail"].as_str().unwrap_or_default());
        status == "error" || status == "stopped" || status == "failed"
    });
    detail
}

#[test]
fn system_call_filter_refuses_what_systemd_refuses() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let script = dir.path().join("probe.py");
    std::fs::write(&script, PROBE).unwrap();
    let run =
        |what: &str| format!("ExecStart=/usr/bin/python3 -u {} {what} {}\n", script.display(), dir.path().display());
    let units = [
        // systemd's default for a refused call: the process dies of SIGSYS.
        ("mount-kill.service", format!("[Service]\nSystemCallFilter=~@mount\n{}", run("mount"))),
        (
            "mount-kill2.service",
            format!("[Service]\nSystemCallFilter=~@mount\nSystemCallErrorNumber=kill\n{}", run("mount")),
        ),
        (
            "mount-eperm.service",
            format!("[Service]\nSystemCallFilter=~@mount\nSystemCallErrorNumber=EPERM\n{}", run("mount")),
        ),
        (
            "mount-eacces.service",
            format!("[Service]\nSystemCallFilter=~@mount\nSystemCallErrorNumber=EACCES\n{}", run("mount")),
        ),
        (
            "mount-enosys.service",
            format!(
                "[Service]\nSystemCallFilter=~mount:ENOSYS umount2\nSystemCallErrorNumber=EACCES\n{}",
                run("mount")
            ),
        ),
        ("mount-plain.service", format!("[Service]\n{}", run("mount"))),
        (
            "allow.service",
            format!(
                "[Service]\nUser=nobody\nSystemCallFilter=@system-service\nSystemCallErrorNumber=EUCLEAN\n{}",
                run("outside")
            ),
        ),
        ("outside-plain.service", format!("[Service]\nUser=nobody\n{}", run("outside"))),
        (
            "shell.service",
            "[Service]\nType=oneshot\nSystemCallFilter=@system-service\nSystemCallLog=@file-system\n\
             ExecStart=/bin/sh -c 'ls / >/dev/null && cat /etc/hostname >/dev/null && echo shell-ok'\n"
                .to_string(),
        ),
    ];
    let units: Vec<(&str, &str)> = units.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let d = Daemon::start(&units);
    let (eperm, eacces, enosys, efault, einval) = (libc::EPERM, libc::EACCES, libc::ENOSYS, libc::EFAULT, libc::EINVAL);

    assert_eq!(probe(&d, "mount-plain"), format!("probe mount={efault} umount={einval}"), "no filter");
    assert_eq!(probe(&d, "mount-eperm"), format!("probe mount={eperm} umount={eperm}"));
    assert_eq!(probe(&d, "mount-eacces"), format!("probe mount={eacces} umount={eacces}"));
    assert_eq!(probe(&d, "mount-enosys"), format!("probe mount={enosys} umount={eacces}"), ":ENOSYS wins");
    for unit in ["mount-kill", "mount-kill2"] {
        let detail = ended(&d, unit);
        assert!(detail.contains("SIGSYS"), "{unit}: {detail}");
        let out = d.unit_output(unit);
        assert!(out.contains("before") && !out.contains("after"), "{unit}: {out}");
    }

    // An allow list runs Python as usual; what is outside it fails.
    let euclean = libc::EUCLEAN;
    assert_eq!(
        probe(&d, "allow"),
        format!("probe ptrace={euclean} reboot={euclean} swapon={euclean} init_module={euclean} getpid=0")
    );
    let plain = probe(&d, "outside-plain");
    assert!(!plain.contains(&format!("={euclean}")), "the kernel alone never says EUCLEAN: {plain}");
    let pid = d.wait_status("allow", "started")["pid"].as_i64().unwrap() as i32;
    assert_eq!(status_field(pid, "Seccomp"), "2");
    assert_eq!(status_field(pid, "NoNewPrivs"), "1", "implied for User=nobody");

    // And sh with the commands it runs (SystemCallLog= only logs).
    let detail = ended(&d, "shell");
    assert!(d.unit_output("shell").contains("shell-ok"), "{detail}: {}", d.unit_output("shell"));
}

#[test]
fn a_typo_in_a_system_call_filter_is_an_error_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("typo.service");
    std::fs::write(
        &path,
        "[Service]\nExecStart=/bin/true\nSystemCallFilter=@system-service\nSystemCallFilter=~@privleged\n\
         SystemCallFilter=~mountt\nSystemCallErrorNumber=EPERMM\nSystemCallLog=@fs\n",
    )
    .unwrap();
    let out = std::process::Command::new(crate::harness::BIN).arg("check").arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let file = path.display();
    for (line, what) in [(4, "'@privleged'"), (5, "'mountt'"), (6, "'EPERMM'"), (7, "'@fs'")] {
        assert!(
            stderr.lines().any(|l| l.contains(&format!("{file}:{line}:")) && l.contains(what)),
            "line {line} ({what}): {stderr}"
        );
    }
    assert!(!stderr.contains(&format!("{file}:3:")), "{stderr}");
}

#[test]
fn debian_units_with_system_call_filters_check_without_warnings_for_them() {
    let dir = std::path::Path::new("/lib/systemd/system");
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
        .expect("/lib/systemd/system (Debian 12 with .ci/run's packages)")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "service"))
        .filter(|p| std::fs::read_to_string(p).is_ok_and(|t| t.contains("SystemCallFilter=")))
        .collect();
    files.sort();
    assert!(files.iter().any(|f| f.ends_with("redis-server.service")), "{files:?}");
    let out = std::process::Command::new(crate::harness::BIN).arg("check").args(&files).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let about: Vec<&str> = stderr.lines().filter(|l| l.contains("SystemCall")).collect();
    assert!(about.is_empty(), "{about:#?}");
    println!("{} Debian units with SystemCallFilter= pass aikore check", files.len());
}
