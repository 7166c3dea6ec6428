//! The namespace sandbox keys through the real daemon (issue 14), each
//! checked by what a process of the unit sees: PrivateDevices=,
//! ProtectProc=/ProcSubset=, PrivateNetwork= (one namespace per run),
//! PrivateIPC=, PrivateUsers=, PrivateMounts=, NoExecPaths=/ExecPaths=,
//! BindPaths=/BindReadOnlyPaths=, TemporaryFileSystem= and RemoveIPC=.
//! Where the kernel refuses a namespace here, the test checks the unit's
//! log says so (a `PRECONDITION:` line tells), as the feature requires.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::harness::Daemon;

fn main_pid(d: &Daemon, unit: &str) -> i32 {
    d.wait_status(unit, "started")["pid"].as_i64().expect("a pid") as i32
}

/// Waits for `end` on a line of its own in the unit's output, and returns the output.
fn output_until(d: &Daemon, unit: &str, end: &str) -> String {
    d.wait_until(&format!("{unit} to print {end}"), |d| {
        d.unit_output(unit).lines().any(|l| l == end) || d.unit(unit)["status"] == "failed"
    });
    d.unit_output(unit)
}

/// The kernel refused what `note` names: the log must say so.
fn refused(d: &Daemon, unit: &str, note: &str) -> bool {
    let log = d.unit_log(unit);
    if log.contains(note) {
        eprintln!("PRECONDITION: {note} here; checked the unit's note only");
        return true;
    }
    false
}

fn has_line(out: &str, want: &str) -> bool {
    out.lines().any(|l| l.trim() == want)
}

fn ns_link(pid: impl std::fmt::Display, kind: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).unwrap().display().to_string()
}

/// A block device of this box (its disk), which a private /dev must not hold.
fn a_block_device() -> String {
    use std::os::unix::fs::FileTypeExt;
    std::fs::read_dir("/dev")
        .unwrap()
        .flatten()
        .find(|e| e.file_type().is_ok_and(|t| t.is_block_device()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .expect("a block device in /dev (the box's disk or a loop device)")
}

#[test]
fn private_devices_hold_only_the_pseudo_devices() {
    let disk = a_block_device();
    let d = Daemon::start(&[(
        "devs.service",
        "[Service]\nPrivateDevices=yes\nExecStart=/bin/sh -c 'echo \"devs=$(ls /dev | tr \"\\n\" \" \")\"; \
         echo x > /dev/null && echo null=ok; echo \"urandom=$(head -c 4 /dev/urandom | wc -c)\"; \
         echo ioperm=$(python3 -c \"import ctypes; l=ctypes.CDLL(None, use_errno=True); \
         l.ioperm(0x20000, 1, 1); print(ctypes.get_errno())\"); \
         echo devs-end; exec sleep 1000'\n",
    )]);
    let pid = main_pid(&d, "devs");
    let out = output_until(&d, "devs", "devs-end");
    if refused(&d, "devs", "not applied: the kernel refused a mount namespace") {
        return;
    }
    let devs: Vec<&str> = out
        .lines()
        .find_map(|l| l.strip_prefix("devs="))
        .unwrap_or_else(|| panic!("{out}"))
        .split_whitespace()
        .collect();
    for want in ["null", "zero", "full", "random", "urandom", "tty", "pts", "ptmx", "shm", "fd", "stdin"] {
        assert!(devs.contains(&want), "{want} missing from the private /dev: {devs:?}");
    }
    assert!(!devs.contains(&disk.as_str()), "the box's {disk} is in the private /dev: {devs:?}");
    assert!(Path::new("/dev").join(&disk).exists(), "still on the host");
    assert!(has_line(&out, "null=ok") && has_line(&out, "urandom=4"), "{out}");
    // /dev is a tmpfs of its own in the unit's mounts; CAP_MKNOD (27) and CAP_SYS_RAWIO (17) are gone.
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let dev = mountinfo.lines().rfind(|l| l.split_whitespace().nth(4) == Some("/dev")).unwrap();
    assert!(dev.contains(" - tmpfs "), "{dev}");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let bounding = status.lines().find_map(|l| l.strip_prefix("CapBnd:")).unwrap().trim();
    let bounding = u64::from_str_radix(bounding, 16).unwrap();
    assert_eq!(bounding & (1 << 27 | 1 << 17), 0, "CapBnd {bounding:x}");
    // @raw-io is refused: a port past the bitmap gets EPERM (1) from the
    // filter; the kernel itself answers EINVAL (22), or ENOSYS (38) where it
    // has no I/O port support (this box's answer outside aikore).
    if cfg!(target_arch = "x86_64") {
        assert!(has_line(&out, "ioperm=1"), "{out}");
        assert!(status.lines().any(|l| l == "Seccomp:\t2"), "{status}");
    }
}

#[test]
fn protect_proc_hides_other_processes_and_proc_subset_drops_the_rest() {
    // A root process of the test: nobody must not see it under ProtectProc=invisible.
    let mut other = std::process::Command::new("sleep").arg("1000").spawn().unwrap();
    let probe = format!(
        "test -e /proc/{p} && echo other=visible || echo other=invisible; \
         test -r /proc/self/status && echo self=ok; \
         test -e /proc/sys && echo sys=present || echo sys=absent; echo probe-end; exec sleep 1000",
        p = other.id()
    );
    let d = Daemon::start(&[
        (
            "hidden.service",
            &format!("[Service]\nUser=nobody\nProtectProc=invisible\nProcSubset=pid\nExecStart=/bin/sh -c '{probe}'\n"),
        ),
        ("plain.service", &format!("[Service]\nUser=nobody\nExecStart=/bin/sh -c '{probe}'\n")),
    ]);
    let pid = main_pid(&d, "hidden");
    let out = output_until(&d, "hidden", "probe-end");
    let plain = output_until(&d, "plain", "probe-end");
    let _ = other.kill();
    let _ = other.wait();
    assert!(has_line(&plain, "other=visible") && has_line(&plain, "sys=present"), "{plain}");
    if refused(&d, "hidden", "not applied: the kernel refused a new procfs instance") {
        return;
    }
    assert!(has_line(&out, "other=invisible"), "{out}");
    assert!(has_line(&out, "self=ok"), "{out}");
    assert!(has_line(&out, "sys=absent"), "{out}");
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let proc = mountinfo.lines().rfind(|l| l.split_whitespace().nth(4) == Some("/proc")).unwrap();
    assert!(proc.contains("hidepid=invisible") && proc.contains("subset=pid"), "{proc}");
}

#[test]
fn private_network_is_one_namespace_per_run_with_only_lo() {
    let d = Daemon::start(&[(
        "netns.service",
        "[Service]\nPrivateNetwork=yes\nPrivateMounts=yes\nType=notify\nNotifyAccess=all\n\
         ExecStartPre=/bin/sh -c 'echo \"pre=$(readlink /proc/self/ns/net)\"'\n\
         ExecStart=/bin/sh -c 'echo \"main=$(readlink /proc/self/ns/net)\"; \
         echo \"devs=$(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d \" \" | tr \"\\n\" \" \")\"; \
         echo \"sys=$(ls /sys/class/net | tr \"\\n\" \" \")\"; echo \"cgroups=$(ls /sys/fs/cgroup | wc -l)\"; \
         ip -o link; echo links-end; systemd-notify --ready; exec sleep 1000'\n",
    )]);
    // Type=notify: READY=1 reaches aikore's socket from inside the namespace.
    let pid = main_pid(&d, "netns");
    let out = output_until(&d, "netns", "links-end");
    if refused(&d, "netns", "PrivateNetwork= not applied: the kernel refused a network namespace") {
        return;
    }
    let ours = ns_link("self", "net");
    let pre = out.lines().find_map(|l| l.strip_prefix("pre=")).unwrap_or_else(|| panic!("{out}"));
    let main = out.lines().find_map(|l| l.strip_prefix("main=")).unwrap_or_else(|| panic!("{out}"));
    assert!(main.starts_with("net:[") && main != ours, "{out}");
    assert_eq!(pre, main, "ExecStartPre= and ExecStart= share the run's namespace");
    assert_eq!(ns_link(pid, "net"), main);
    assert!(has_line(&out, "devs=lo"), "{out}");
    // With a mount namespace, a sysfs of the unit's network namespace, as systemd mounts it;
    // what the container mounted below /sys (the cgroup tree) is still there.
    assert!(has_line(&out, "sys=lo"), "{out}");
    let cgroups = std::fs::read_dir("/sys/fs/cgroup").map(|d| d.count()).unwrap_or(0);
    assert!(has_line(&out, &format!("cgroups={cgroups}")), "{out}");
    let links: Vec<&str> = out.lines().filter(|l| l.contains("mtu")).collect();
    assert_eq!(links.len(), 1, "{out}");
    assert!(links[0].contains(" lo: ") && links[0].contains(",UP"), "{out}");
    // aikore holds the namespace while the run lasts, and lets it go at its end.
    let holds = |d: &Daemon| {
        std::fs::read_dir(format!("/proc/{}/fd", d.pid()))
            .unwrap()
            .flatten()
            .any(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.display().to_string() == main))
    };
    assert!(holds(&d), "the daemon keeps the run's namespace");
    d.post("/api/v1/units/netns/stop");
    d.wait_status("netns", "stopped");
    d.wait_until("the namespace to be let go", |d| !holds(d));
    // A new run gets a new namespace.
    d.post("/api/v1/units/netns/start");
    let pid = main_pid(&d, "netns");
    assert_ne!(ns_link(pid, "net"), main);
}

#[test]
fn private_ipc_is_shared_by_the_run_and_hides_the_hosts_objects() {
    // A segment of the host's: the unit must not see it.
    let made = std::process::Command::new("ipcmk").args(["-M", "4096"]).output().expect("ipcmk (util-linux)");
    let made = String::from_utf8_lossy(&made.stdout).to_string();
    let host_id = made.lines().find_map(|l| l.strip_prefix("Shared memory id: ")).unwrap().trim().to_string();
    let d = Daemon::start(&[(
        "ipcns.service",
        "[Service]\nPrivateIPC=yes\nExecStartPre=/bin/sh -c 'echo \"pre=$(readlink /proc/self/ns/ipc)\"'\n\
         ExecStart=/bin/sh -c 'echo \"main=$(readlink /proc/self/ns/ipc)\"; ipcmk -M 4096; \
         echo \"segments=$(tail -n +2 /proc/sysvipc/shm | wc -l)\"; echo ipc-end; exec sleep 1000'\n",
    )]);
    let out = output_until(&d, "ipcns", "ipc-end");
    let _ = std::process::Command::new("ipcrm").args(["-m", &host_id]).status();
    if refused(&d, "ipcns", "PrivateIPC= not applied") {
        return;
    }
    let pre = out.lines().find_map(|l| l.strip_prefix("pre=")).unwrap_or_else(|| panic!("{out}"));
    let main = out.lines().find_map(|l| l.strip_prefix("main=")).unwrap_or_else(|| panic!("{out}"));
    assert_eq!(pre, main, "{out}");
    assert_ne!(main, ns_link("self", "ipc"), "{out}");
    assert!(has_line(&out, "segments=1"), "only its own segment, not the host's {host_id}: {out}");
}

#[test]
fn private_users_maps_root_and_the_unit_user_only() {
    let d = Daemon::start(&[(
        "userns.service",
        // With ProtectSystem=strict too, as Debian's redis unit has it (a mount stacked on / would make the
        // kernel refuse the user namespace).
        "[Service]\nUser=nobody\nPrivateUsers=yes\nProtectSystem=strict\nExecStart=/bin/sh -c 'cat /proc/self/uid_map /proc/self/gid_map; \
         echo \"id=$(id -u):$(id -g)\"; echo \"ns=$(readlink /proc/self/ns/user)\"; echo users-end; exec sleep 1000'\n",
    )]);
    let pid = main_pid(&d, "userns");
    let out = output_until(&d, "userns", "users-end");
    if refused(&d, "userns", "PrivateUsers= not applied") {
        return;
    }
    let maps: Vec<String> = out
        .lines()
        .filter(|l| l.split_whitespace().count() == 3 && l.split_whitespace().all(|w| w.parse::<u64>().is_ok()))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(maps, ["0 0 1", "65534 65534 1", "0 0 1", "65534 65534 1"], "{out}");
    assert!(has_line(&out, "id=65534:65534"), "{out}");
    assert_ne!(ns_link(pid, "user"), ns_link("self", "user"), "{out}");
    // Its bounding set is kept as the unit says, inside the new namespace too.
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(status.lines().any(|l| l.starts_with("Uid:") && l.contains("65534")), "{status}");
}

#[test]
fn private_mounts_keep_the_units_mounts_from_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let point = dir.path().join("point");
    std::fs::create_dir(&point).unwrap();
    let d = Daemon::start(&[(
        "mounts.service",
        &format!(
            "[Service]\nPrivateMounts=yes\nExecStart=/bin/sh -c 'mount -t tmpfs aikore-test {p} && echo mounted; \
             echo mount-end; exec sleep 1000'\n",
            p = point.display()
        ),
    )]);
    let pid = main_pid(&d, "mounts");
    let out = output_until(&d, "mounts", "mount-end");
    if refused(&d, "mounts", "not applied: the kernel refused a mount namespace") {
        return;
    }
    assert!(has_line(&out, "mounted"), "{out}");
    let target = point.display().to_string();
    let at = |info: &str| info.lines().any(|l| l.split_whitespace().nth(4) == Some(target.as_str()));
    assert!(at(&std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap()));
    assert!(!at(&std::fs::read_to_string("/proc/self/mountinfo").unwrap()), "the unit's mount reached the host");
}

#[test]
fn no_exec_paths_refuse_exec_and_exec_paths_allow_it_again() {
    let dir = tempfile::tempdir().unwrap();
    let allowed = dir.path().join("allowed");
    std::fs::create_dir(&allowed).unwrap();
    for p in [dir.path().join("tool"), allowed.join("tool")] {
        std::fs::write(&p, "#!/bin/sh\necho ran\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let d = Daemon::start(&[(
        "noexec.service",
        &format!(
            "[Service]\nNoExecPaths={d}\nExecPaths={d}/allowed\nExecStart=/bin/sh -c '\
             {d}/tool >/dev/null 2>&1 && echo top=ran || echo top=refused; \
             {d}/allowed/tool >/dev/null 2>&1 && echo allowed=ran || echo allowed=refused; \
             echo exec-end; exec sleep 1000'\n",
            d = dir.path().display()
        ),
    )]);
    let out = output_until(&d, "noexec", "exec-end");
    if refused(&d, "noexec", "not applied: the kernel refused a mount namespace") {
        return;
    }
    assert!(has_line(&out, "top=refused"), "{out}");
    assert!(has_line(&out, "allowed=ran"), "{out}");
    // The host's view is unchanged.
    assert!(std::process::Command::new(dir.path().join("tool")).status().unwrap().success());
}

#[test]
fn bind_paths_read_only_binds_and_temporary_file_systems() {
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("file"), "from-the-source").unwrap();
    let rw_src = tempfile::tempdir().unwrap();
    let base = tempfile::tempdir().unwrap();
    let ro_dst = base.path().join("made/ro");
    let rw_dst = base.path().join("rw");
    let scratch = tempfile::tempdir().unwrap();
    std::fs::write(scratch.path().join("hidden"), "x").unwrap();
    let d = Daemon::start(&[(
        "binds.service",
        &format!(
            "[Service]\nBindReadOnlyPaths={src}:{ro}\nBindPaths={rws}:{rw} -/nonexistent/aikore\n\
             TemporaryFileSystem={scratch}:ro\nExecStart=/bin/sh -c '\
             echo \"read=$(cat {ro}/file)\"; touch {ro}/new 2>/dev/null && echo ro=writable || echo ro=readonly; \
             touch {rw}/new && echo rw=ok; echo \"scratch=$(ls -A {scratch} | wc -l)\"; \
             touch {scratch}/x 2>/dev/null && echo tmpfs=writable || echo tmpfs=readonly; echo bind-end; \
             exec sleep 1000'\n",
            src = src.path().display(),
            ro = ro_dst.display(),
            rws = rw_src.path().display(),
            rw = rw_dst.display(),
            scratch = scratch.path().display()
        ),
    )]);
    let out = output_until(&d, "binds", "bind-end");
    if refused(&d, "binds", "not applied: the kernel refused a mount namespace") {
        return;
    }
    for want in ["read=from-the-source", "ro=readonly", "rw=ok", "scratch=0", "tmpfs=readonly"] {
        assert!(has_line(&out, want), "{want} missing: {out}");
    }
    assert!(rw_src.path().join("new").exists(), "BindPaths= writes reach the source");
    assert!(!src.path().join("new").exists());
    assert!(scratch.path().join("hidden").exists() && !scratch.path().join("x").exists());
}

/// The SysV shared memory segments of `uid` (the `uid` column of /proc/sysvipc/shm) by id.
fn segments_of(uid: u32) -> Vec<String> {
    let text = std::fs::read_to_string("/proc/sysvipc/shm").unwrap();
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let c: Vec<&str> = l.split_whitespace().collect();
            (c.get(7) == Some(&uid.to_string().as_str())).then(|| c[1].to_string())
        })
        .collect()
}

#[test]
fn remove_ipc_removes_the_users_segments_at_stop() {
    let unit = |remove: &str| {
        format!(
            "[Service]\nUser=nobody\nRemoveIPC={remove}\nExecStart=/bin/sh -c 'ipcmk -M 4096; echo ipc-end; exec sleep 1000'\n"
        )
    };
    let d = Daemon::start(&[("cleaned.service", &unit("yes"))]);
    let out = output_until(&d, "cleaned", "ipc-end");
    let id = out.lines().find_map(|l| l.strip_prefix("Shared memory id: ")).unwrap_or_else(|| panic!("{out}"));
    assert!(segments_of(65534).iter().any(|s| s == id), "the unit's segment exists while it runs");
    d.post("/api/v1/units/cleaned/stop");
    d.wait_status("cleaned", "stopped");
    assert!(!segments_of(65534).iter().any(|s| s == id), "RemoveIPC=yes removed segment {id}");

    // Without the key the segment outlives the unit (removed here by hand).
    let d = Daemon::start(&[("kept.service", &unit("no"))]);
    let out = output_until(&d, "kept", "ipc-end");
    let id = out.lines().find_map(|l| l.strip_prefix("Shared memory id: ")).unwrap_or_else(|| panic!("{out}"));
    d.post("/api/v1/units/kept/stop");
    d.wait_status("kept", "stopped");
    let left = segments_of(65534).iter().any(|s| s == id);
    let _ = std::process::Command::new("ipcrm").args(["-m", id]).status();
    assert!(left, "without RemoveIPC= the segment stays");
}

#[test]
fn dynamic_user_gets_a_transient_id_a_private_state_directory_and_the_implied_sandbox() {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let state = format!("aikore-test-dyn-{}-{nanos}", std::process::id());
    let d = Daemon::start(&[(
        "dyn.service",
        &format!(
            "[Service]\nDynamicUser=yes\nStateDirectory={state}\nExecStart=/bin/sh -c '\
             echo \"id=$(id -u):$(id -g) user=$USER home=$HOME\"; echo \"state=$STATE_DIRECTORY\"; \
             echo hello > $STATE_DIRECTORY/f && echo write=ok; \
             touch /usr/aikore-dyn-probe 2>/dev/null && echo usr=rw || echo usr=ro; \
             ls -A /var/lib/private | tr \"\\n\" \" \" | sed s/^/private=/; echo; \
             grep NoNewPrivs /proc/self/status; echo dyn-end; exec sleep 1000'\n"
        ),
    )]);
    let pid = main_pid(&d, "dyn");
    let out = output_until(&d, "dyn", "dyn-end");
    let public = Path::new("/var/lib").join(&state);
    let real = Path::new("/var/lib/private").join(&state);
    let cleanup = || {
        let _ = std::fs::remove_file(&public);
        let _ = std::fs::remove_dir_all(&real);
    };
    let uid = process_uid(pid);
    if !(61184..=65519).contains(&uid) {
        cleanup();
        panic!("uid {uid} is not a dynamic one: {out}");
    }
    let checks = [
        format!("id={uid}:{uid} user=dyn home=/"),
        format!("state={}", public.display()),
        "write=ok".to_string(),
        "usr=ro".to_string(),
        format!("private={state}"),
    ];
    let link = std::fs::read_link(&public);
    let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(real.join("f")).unwrap_or_else(|e| {
        cleanup();
        panic!("{e}: {out}")
    }));
    d.post("/api/v1/units/dyn/stop");
    d.wait_status("dyn", "stopped");
    d.post("/api/v1/units/dyn/start");
    let again = process_uid(main_pid(&d, "dyn"));
    d.post("/api/v1/units/dyn/stop");
    d.wait_status("dyn", "stopped");
    cleanup();
    for want in &checks {
        assert!(has_line(&out, want), "{want} missing: {out}");
    }
    assert!(out.lines().any(|l| l.starts_with("NoNewPrivs:") && l.ends_with('1')), "{out}");
    assert_eq!(link.unwrap(), Path::new("private").join(&state));
    assert_eq!(owner, uid, "the state dir's files are the dynamic user's");
    assert_eq!(again, uid, "the same id for the same unit");
    let private = std::fs::metadata("/var/lib/private").unwrap();
    assert_eq!(private.permissions().mode() & 0o777, 0o700);
}

/// The real uid of a process, from /proc/<pid>/status.
fn process_uid(pid: i32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find_map(|l| l.strip_prefix("Uid:")).unwrap();
    line.split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn joins_namespace_of_shares_a_running_units_network_namespace() {
    let d = Daemon::start(&[
        ("first.service", "[Service]\nPrivateNetwork=yes\nPrivateIPC=yes\nExecStart=/bin/sleep 1000\n"),
        (
            "second.service",
            "[Unit]\nJoinsNamespaceOf=first.service\n[Service]\nPrivateNetwork=yes\nExecStart=/bin/sleep 1000\n",
        ),
        ("alone.service", "[Service]\nPrivateNetwork=yes\nExecStart=/bin/sleep 1000\n"),
    ]);
    let first = main_pid(&d, "first");
    if refused(&d, "first", "PrivateNetwork= not applied") {
        return;
    }
    d.post("/api/v1/units/second/stop");
    d.wait_status("second", "stopped");
    d.post("/api/v1/units/second/start");
    let second = main_pid(&d, "second");
    let alone = main_pid(&d, "alone");
    assert_eq!(ns_link(second, "net"), ns_link(first, "net"), "JoinsNamespaceOf= shares the network namespace");
    assert_ne!(ns_link(alone, "net"), ns_link(first, "net"));
    assert_ne!(ns_link(first, "net"), ns_link("self", "net"));
    // Only what the joining unit asks for: it keeps aikore's IPC namespace.
    assert_eq!(ns_link(second, "ipc"), ns_link("self", "ipc"));
}
