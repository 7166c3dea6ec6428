//! The `Condition*=`/`Assert*=` kinds about the machine and the manager
//! rather than a path: credentials passed to aikore, first boot, pending
//! updates of /usr, architecture, kernel version, os-release, host name,
//! the manager's user and group, CPUs, memory, globs, cgroup controllers,
//! CPU features and pressure (PSI). Each follows systemd 252's rule
//! (src/shared/condition.c), with aikore as "the service manager".

use std::cmp::Ordering;
use std::path::Path;
use std::sync::OnceLock;

use super::checks::{parse_bool, Test};

/// The kinds this module evaluates.
pub const HOST_TESTS: &[Test] = &[
    Test::Credential,
    Test::FirstBoot,
    Test::NeedsUpdate,
    Test::Architecture,
    Test::KernelVersion,
    Test::OSRelease,
    Test::Host,
    Test::User,
    Test::Group,
    Test::CPUs,
    Test::Memory,
    Test::ControlGroupController,
    Test::CPUFeature,
    Test::MemoryPressure,
    Test::CPUPressure,
    Test::IOPressure,
    Test::Firmware,
];

/// systemd's architecture names (`uname -m` spelled its way, as `%a` gives it).
const ARCHITECTURES: &[&str] = &[
    "x86",
    "x86-64",
    "ppc",
    "ppc-le",
    "ppc64",
    "ppc64-le",
    "ia64",
    "parisc",
    "parisc64",
    "s390",
    "s390x",
    "sparc",
    "sparc64",
    "mips",
    "mips-le",
    "mips64",
    "mips64-le",
    "alpha",
    "arm",
    "arm-be",
    "arm64",
    "arm64-be",
    "sh",
    "sh64",
    "m68k",
    "tilegx",
    "cris",
    "nios2",
    "riscv32",
    "riscv64",
    "arc",
    "arc-be",
    "loongarch64",
    "native",
];

/// aikore's architecture by systemd's name (it is built for the machine it runs on).
fn architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "x86-64",
        "aarch64" if cfg!(target_endian = "big") => "arm64-be",
        "aarch64" => "arm64",
        "powerpc64" if cfg!(target_endian = "little") => "ppc64-le",
        "powerpc64" => "ppc64",
        "mips64" if cfg!(target_endian = "little") => "mips64-le",
        "sparc64" => "sparc64",
        other => other,
    }
}

/// The comparison operators of ConditionKernelVersion=, ConditionOSRelease=, ConditionCPUs=, ConditionMemory=.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Lt,
    Le,
    Eq,
    Ne,
    Ge,
    Gt,
}

impl Op {
    /// The operator at the start of `s` (longest first) and the rest, trimmed.
    fn split(s: &str) -> Option<(Op, &str)> {
        for (text, op) in [("<=", Op::Le), (">=", Op::Ge), ("!=", Op::Ne), ("<", Op::Lt), (">", Op::Gt), ("=", Op::Eq)]
        {
            if let Some(rest) = s.strip_prefix(text) {
                return Some((op, rest.trim()));
            }
        }
        None
    }

    fn test(self, order: Ordering) -> bool {
        match self {
            Op::Lt => order == Ordering::Less,
            Op::Le => order != Ordering::Greater,
            Op::Eq => order == Ordering::Equal,
            Op::Ne => order != Ordering::Equal,
            Op::Ge => order != Ordering::Less,
            Op::Gt => order == Ordering::Greater,
        }
    }
}

/// Version order as systemd's `strverscmp_improved`: runs of digits compare
/// as numbers, other characters one by one, `~` before anything (a pre-release).
pub fn version_cmp(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        match (a.first(), b.first()) {
            (None, None) => return Ordering::Equal,
            (Some(b'~'), Some(b'~')) => {
                a = &a[1..];
                b = &b[1..];
            }
            (Some(b'~'), _) => return Ordering::Less,
            (_, Some(b'~')) => return Ordering::Greater,
            (None, _) => return Ordering::Less,
            (_, None) => return Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let la = a.iter().take_while(|c| c.is_ascii_digit()).count();
                let lb = b.iter().take_while(|c| c.is_ascii_digit()).count();
                let strip = |d: &[u8]| {
                    let zeros = d.iter().take_while(|c| **c == b'0').count();
                    d[zeros..].to_vec()
                };
                let (na, nb) = (strip(&a[..la]), strip(&b[..lb]));
                let order = na.len().cmp(&nb.len()).then_with(|| na.cmp(&nb));
                if order != Ordering::Equal {
                    return order;
                }
                a = &a[la..];
                b = &b[lb..];
            }
            (Some(x), Some(y)) => {
                // A digit sorts after a letter (1.0a < 1.01), as in strverscmp_improved.
                let order = match (x.is_ascii_digit(), y.is_ascii_digit()) {
                    (true, false) => Ordering::Greater,
                    (false, true) => Ordering::Less,
                    _ => x.cmp(y),
                };
                if order != Ordering::Equal {
                    return order;
                }
                a = &a[1..];
                b = &b[1..];
            }
        }
    }
}

/// fnmatch(3) without flags, as systemd matches globs in conditions.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (Ok(p), Ok(t)) = (std::ffi::CString::new(pattern), std::ffi::CString::new(text)) else { return false };
    // SAFETY: both are valid NUL-terminated strings that outlive the call; fnmatch only reads them.
    unsafe { libc::fnmatch(p.as_ptr(), t.as_ptr(), 0) == 0 }
}

/// Whether any path matches the glob (glob(3), as systemd's ConditionPathExistsGlob=).
pub fn glob_exists(pattern: &str) -> bool {
    let Ok(p) = std::ffi::CString::new(pattern) else { return false };
    // SAFETY: glob_t is plain data; zeroed is its documented initial state.
    let mut found: libc::glob_t = unsafe { std::mem::zeroed() };
    // SAFETY: `p` is a valid C string, `found` a valid glob_t freed below whatever glob returned.
    let rc = unsafe { libc::glob(p.as_ptr(), libc::GLOB_NOSORT, None, &mut found) };
    let any = rc == 0 && found.gl_pathc > 0;
    // SAFETY: `found` was filled (or left zeroed) by glob above and is freed once.
    unsafe { libc::globfree(&mut found) };
    any
}

/// An argument's grammar; an error is reported by `aikore check` with the line.
pub fn validate(test: Test, arg: &str) -> Result<(), String> {
    match test {
        Test::Credential => {
            if arg.is_empty() || arg.contains('/') || arg == "." || arg == ".." || arg.len() > 255 {
                Err(format!("'{arg}' is not a credential name"))
            } else {
                Ok(())
            }
        }
        Test::FirstBoot => parse_bool(arg).map(|_| ()).ok_or_else(|| format!("'{arg}' is not a boolean")),
        Test::NeedsUpdate if arg.starts_with('/') => Ok(()),
        Test::NeedsUpdate => Err(format!("'{arg}' must be an absolute path (/etc or /var)")),
        Test::Architecture if ARCHITECTURES.contains(&arg) => Ok(()),
        Test::Architecture => Err(format!("unknown architecture '{arg}' (systemd's names: x86-64, arm64, ...)")),
        Test::KernelVersion | Test::Host | Test::User | Test::Group | Test::CPUFeature if arg.is_empty() => {
            Err("a value is required".to_string())
        }
        Test::KernelVersion | Test::Host | Test::User | Test::Group | Test::CPUFeature => Ok(()),
        Test::OSRelease => {
            for term in arg.split_whitespace() {
                os_release_term(term)?;
            }
            if arg.trim().is_empty() {
                return Err("a KEY=VALUE is required".to_string());
            }
            Ok(())
        }
        Test::CPUs => {
            let (_, n) = Op::split(arg).ok_or_else(|| format!("'{arg}' needs an operator (<, <=, =, !=, >=, >)"))?;
            n.parse::<u64>().map(|_| ()).map_err(|_| format!("'{n}' is not a number"))
        }
        Test::Memory => {
            let (_, n) = Op::split(arg).ok_or_else(|| format!("'{arg}' needs an operator (<, <=, =, !=, >=, >)"))?;
            parse_size(n).map(|_| ())
        }
        Test::ControlGroupController => {
            for word in arg.split_whitespace() {
                if !CONTROLLERS.contains(&word) && word != "v1" && word != "v2" {
                    return Err(format!(
                        "unknown cgroup controller '{word}' (one of v1, v2, {})",
                        CONTROLLERS.join(", ")
                    ));
                }
            }
            if arg.trim().is_empty() {
                return Err("a controller is required".to_string());
            }
            Ok(())
        }
        Test::MemoryPressure | Test::CPUPressure | Test::IOPressure => pressure_arg(arg).map(|_| ()),
        Test::Firmware => firmware_arg(arg).map(|_| ()),
        _ => Ok(()),
    }
}

/// systemd's controller names.
const CONTROLLERS: &[&str] =
    &["cpu", "cpuacct", "cpuset", "io", "blkio", "memory", "devices", "pids", "bpf-firewall", "bpf-devices"];

fn os_release_term(term: &str) -> Result<(&str, Op, &str), String> {
    let at =
        term.find(['<', '>', '=', '!']).ok_or_else(|| format!("'{term}' is not KEY=VALUE (or another operator)"))?;
    let (key, rest) = term.split_at(at);
    let (op, value) = Op::split(rest).ok_or_else(|| format!("'{term}' has no operator"))?;
    if key.is_empty() {
        return Err(format!("'{term}' has no key"));
    }
    Ok((key, op, value))
}

/// `1024`, `512K`, `2G` (base 1024, as systemd's parse_size).
fn parse_size(v: &str) -> Result<u64, String> {
    let v = v.trim();
    let split = v.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(v.len());
    let (number, unit) = v.split_at(split);
    let number: f64 = number.parse().map_err(|_| format!("'{v}' is not a size"))?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        "P" => 1 << 50,
        "E" => 1 << 60,
        other => return Err(format!("unknown size suffix '{other}' in '{v}' (K, M, G, T, P, E)")),
    };
    Ok((number * factor as f64) as u64)
}

/// `20%` or `20%/1min`: the threshold in percent and which average (10 s, 60 s, 300 s: the default).
fn pressure_arg(arg: &str) -> Result<(f64, &'static str), String> {
    if arg.contains(':') {
        return Err(format!("'{arg}': a slice's pressure: aikore has no slices (give the threshold alone)"));
    }
    let (threshold, window) = match arg.split_once('/') {
        Some((t, w)) => (t, w.trim()),
        None => (arg, "5min"),
    };
    let avg = match window {
        "10s" | "10sec" => "avg10",
        "1min" | "60s" | "60sec" => "avg60",
        "5min" | "300s" | "300sec" => "avg300",
        other => return Err(format!("'{other}' is not one of 10sec, 1min, 5min")),
    };
    let percent = threshold.trim().strip_suffix('%').ok_or_else(|| format!("'{threshold}' is not a percentage"))?;
    let value: f64 = percent.trim().parse().map_err(|_| format!("'{threshold}' is not a percentage"))?;
    if !(0.0..=100.0).contains(&value) {
        return Err(format!("'{threshold}' is not between 0% and 100%"));
    }
    Ok((value, avg))
}

pub fn holds(test: Test, arg: &str) -> bool {
    match test {
        Test::Credential => credential_holds(arg, manager_credentials_dirs()),
        Test::FirstBoot => parse_bool(arg) == Some(first_boot()),
        Test::NeedsUpdate => needs_update(Path::new(arg), Path::new("/usr")),
        Test::Architecture => arg == "native" || arg == architecture(),
        Test::KernelVersion => {
            let release = nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned());
            release.is_ok_and(|r| kernel_version_holds(arg, &r))
        }
        Test::OSRelease => os_release_holds(arg, &read_os_release()),
        Test::Host => host_holds(arg),
        Test::User => user_holds(arg),
        Test::Group => group_holds(arg),
        Test::CPUs => compare_number(arg, cpus_allowed()),
        Test::Memory => compare_memory(arg),
        Test::PathExistsGlob => glob_exists(arg),
        Test::ControlGroupController => controllers_hold(arg),
        Test::CPUFeature => cpu_feature(arg),
        Test::MemoryPressure => pressure_holds(arg, "memory"),
        Test::CPUPressure => pressure_holds(arg, "cpu"),
        Test::IOPressure => pressure_holds(arg, "io"),
        Test::Firmware => firmware_arg(arg).is_ok_and(|f| firmware_holds(&f, Path::new("/"))),
        Test::PathIsEncrypted => is_encrypted(Path::new(arg)),
        _ => false,
    }
}

/// Where the service manager's own credentials are: `$CREDENTIALS_DIRECTORY`
/// of aikore's environment (a container runtime or systemd-nspawn passes them
/// so), then systemd's system credentials directories.
fn manager_credentials_dirs() -> Vec<std::path::PathBuf> {
    let mut dirs = Vec::new();
    if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY").filter(|d| !d.is_empty()) {
        dirs.push(dir.into());
    }
    dirs.push("/run/credentials/@system".into());
    dirs.push("/run/credentials/@encrypted".into());
    dirs
}

/// systemd's rule: the credential is a file (or entry) of that name in one of the manager's credential dirs.
pub fn credential_holds(name: &str, dirs: Vec<std::path::PathBuf>) -> bool {
    dirs.iter().any(|d| d.join(name).symlink_metadata().is_ok())
}

/// The container's first boot, decided once per aikore process as systemd
/// decides it once per boot: `/run/systemd/first-boot` exists (systemd's own
/// marker), or `/etc/machine-id` is missing, empty or `uninitialized` (what
/// makes systemd write that marker). Read at the first unit load, before any
/// unit could have written a machine ID.
pub fn first_boot() -> bool {
    static FIRST: OnceLock<bool> = OnceLock::new();
    *FIRST.get_or_init(|| {
        Path::new("/run/systemd/first-boot").exists() || machine_id_uninitialized(Path::new("/etc/machine-id"))
    })
}

/// Evaluated when a unit file using ConditionFirstBoot= is parsed, so the
/// answer is the one from before any unit ran.
pub fn note_first_boot() {
    let _ = first_boot();
}

pub fn machine_id_uninitialized(path: &Path) -> bool {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let text = text.trim();
            text.is_empty() || text == "uninitialized"
        }
        Err(_) => true,
    }
}

/// systemd's rule: `dir/.updated` older than /usr (seconds, then nanoseconds,
/// then its `TIMESTAMP_NSEC=`), or missing, means an update is pending; a
/// read-only `dir` never needs one.
pub fn needs_update(dir: &Path, usr: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    if nix::sys::statvfs::statvfs(dir).is_ok_and(|s| s.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY)) {
        return false;
    }
    let stamp = dir.join(".updated");
    let Ok(other) = stamp.symlink_metadata() else { return true };
    let Ok(usr) = std::fs::metadata(usr) else { return true };
    if usr.mtime() != other.mtime() {
        return usr.mtime() > other.mtime();
    }
    if usr.mtime_nsec() == 0 || other.mtime_nsec() > 0 {
        return usr.mtime_nsec() > other.mtime_nsec();
    }
    let recorded = std::fs::read_to_string(&stamp).ok().and_then(|text| {
        text.lines().find_map(|l| l.trim().strip_prefix("TIMESTAMP_NSEC=")?.trim().parse::<i128>().ok())
    });
    let usr_nsec = i128::from(usr.mtime()) * 1_000_000_000 + i128::from(usr.mtime_nsec());
    match recorded {
        Some(recorded) => usr_nsec > recorded,
        None => true,
    }
}

/// Space-separated terms, all of which must hold: an operator and a version
/// (compared as versions), or a glob against the release.
pub fn kernel_version_holds(arg: &str, release: &str) -> bool {
    arg.split_whitespace().all(|term| match Op::split(term) {
        Some((op, version)) => op.test(version_cmp(release, version)),
        None => glob_match(term, release),
    })
}

fn read_os_release() -> String {
    std::fs::read_to_string("/etc/os-release")
        .or_else(|_| std::fs::read_to_string("/usr/lib/os-release"))
        .unwrap_or_default()
}

/// Every `KEY<op>VALUE` term must hold; `=`/`!=` compare strings, the others versions.
pub fn os_release_holds(arg: &str, os_release: &str) -> bool {
    let value_of = |key: &str| {
        os_release.lines().find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == key).then(|| v.trim().trim_matches(|c| c == '"' || c == '\'').to_string())
        })
    };
    arg.split_whitespace().all(|term| {
        let Ok((key, op, want)) = os_release_term(term) else { return false };
        let have = value_of(key).unwrap_or_default();
        match op {
            Op::Eq => have == want,
            Op::Ne => have != want,
            op => op.test(version_cmp(&have, want)),
        }
    })
}

fn host_holds(arg: &str) -> bool {
    let machine_id = std::fs::read_to_string("/etc/machine-id").unwrap_or_default();
    let id = arg.replace('-', "").to_ascii_lowercase();
    if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return machine_id.trim() == id;
    }
    nix::unistd::gethostname().is_ok_and(|h| glob_match(arg, &h.to_string_lossy()))
}

/// systemd's SYSTEM_UID_MAX on Debian.
const SYSTEM_UID_MAX: u32 = 999;

fn user_holds(arg: &str) -> bool {
    let me = nix::unistd::geteuid();
    if arg == "@system" {
        return me.as_raw() <= SYSTEM_UID_MAX;
    }
    if let Ok(uid) = arg.parse::<u32>() {
        return uid == me.as_raw();
    }
    nix::unistd::User::from_name(arg).ok().flatten().is_some_and(|u| u.uid == me)
}

fn group_holds(arg: &str) -> bool {
    let gid = match arg.parse::<u32>() {
        Ok(gid) => nix::unistd::Gid::from_raw(gid),
        Err(_) => match nix::unistd::Group::from_name(arg).ok().flatten() {
            Some(g) => g.gid,
            None => return false,
        },
    };
    nix::unistd::getegid() == gid || nix::unistd::getgroups().is_ok_and(|groups| groups.contains(&gid))
}

fn compare_number(arg: &str, have: u64) -> bool {
    Op::split(arg).is_some_and(|(op, n)| n.parse::<u64>().is_ok_and(|want| op.test(have.cmp(&want))))
}

/// The CPUs aikore may run on (its affinity mask, as systemd counts them).
fn cpus_allowed() -> u64 {
    nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))
        .map(|set| (0..nix::sched::CpuSet::count()).filter(|i| set.is_set(*i).unwrap_or(false)).count() as u64)
        .unwrap_or(0)
}

/// Physical memory, or less when aikore's own cgroup has a lower memory.max (systemd 252's physical_memory()).
fn compare_memory(arg: &str) -> bool {
    let total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            let kb = m.lines().find_map(|l| l.strip_prefix("MemTotal:"))?.trim().strip_suffix("kB")?.trim().to_string();
            kb.parse::<u64>().ok()
        })
        .map_or(0, |kb| kb * 1024);
    let limit = std::fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|c| c.lines().find_map(|l| l.strip_prefix("0::")).map(str::to_string))
        .and_then(|path| std::fs::read_to_string(format!("/sys/fs/cgroup{}/memory.max", path.trim())).ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let have = limit.map_or(total, |l| l.min(total));
    Op::split(arg).is_some_and(|(op, n)| parse_size(n).is_ok_and(|want| op.test(have.cmp(&want))))
}

/// The unified hierarchy's controllers (`cgroup.controllers` of the root),
/// or on v1 the enabled ones of /proc/cgroups; `v2`/`v1` ask which hierarchy.
fn controllers_hold(arg: &str) -> bool {
    let unified = std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers").ok();
    let v1: Vec<String> = std::fs::read_to_string("/proc/cgroups")
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 4 && f[3] == "1").then(|| f[0].to_string())
        })
        .collect();
    arg.split_whitespace().all(|word| match word {
        "v2" => unified.is_some(),
        "v1" => unified.is_none(),
        name => match &unified {
            Some(list) => {
                let name = if name == "blkio" { "io" } else { name };
                list.split_whitespace().any(|c| c == name)
                    || (name == "cpuacct" && list.split_whitespace().any(|c| c == "cpu"))
            }
            None => v1.iter().any(|c| c == name),
        },
    })
}

fn cpu_feature(arg: &str) -> bool {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let want = arg.to_ascii_lowercase().replace('.', "_");
    info.lines()
        .filter(|l| l.starts_with("flags") || l.starts_with("Features"))
        .any(|l| l.split(':').nth(1).is_some_and(|f| f.split_whitespace().any(|w| w == want)))
}

/// systemd's rule: holds while the `some` average is at or below the
/// threshold; without PSI (an old kernel, no /proc/pressure) it holds.
fn pressure_holds(arg: &str, resource: &str) -> bool {
    let Ok((threshold, avg)) = pressure_arg(arg) else { return false };
    let Ok(text) = std::fs::read_to_string(format!("/proc/pressure/{resource}")) else { return true };
    pressure_below(&text, avg, threshold)
}

pub fn pressure_below(psi: &str, avg: &str, threshold: f64) -> bool {
    let some = psi.lines().find(|l| l.starts_with("some"));
    let value = some
        .and_then(|l| l.split_whitespace().find_map(|f| f.strip_prefix(avg)?.strip_prefix('=')?.parse::<f64>().ok()));
    value.is_none_or(|v| v <= threshold)
}

/// ConditionFirmware='s forms.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Firmware {
    Uefi,
    DeviceTree,
    DeviceTreeCompatible(String),
    Smbios { field: String, op: Op, value: String },
}

fn firmware_arg(arg: &str) -> Result<Firmware, String> {
    let inner = |prefix: &str| arg.strip_prefix(prefix).and_then(|r| r.strip_suffix(')')).map(str::trim);
    match arg {
        "uefi" => Ok(Firmware::Uefi),
        "device-tree" => Ok(Firmware::DeviceTree),
        _ => {
            if let Some(c) = inner("device-tree-compatible(").filter(|c| !c.is_empty()) {
                return Ok(Firmware::DeviceTreeCompatible(c.to_string()));
            }
            if let Some(expr) = inner("smbios-field(") {
                let at = expr.find(['<', '>', '=', '!']).ok_or_else(|| format!("'{expr}' has no operator"))?;
                let (field, rest) = expr.split_at(at);
                let (op, value) = Op::split(rest).ok_or_else(|| format!("'{expr}' has no operator"))?;
                let field = field.trim();
                if field.is_empty() || field.contains('/') || field.contains("..") {
                    return Err(format!("'{field}' is not an SMBIOS field name"));
                }
                return Ok(Firmware::Smbios { field: field.to_string(), op, value: value.to_string() });
            }
            Err(format!(
                "'{arg}': expected uefi, device-tree, device-tree-compatible(VALUE) or smbios-field(FIELD OP VALUE)"
            ))
        }
    }
}

/// systemd's tests, under `root` (`/` but in tests): /sys/firmware/efi, the
/// device tree and its `compatible` list, the DMI fields of /sys/class/dmi/id.
fn firmware_holds(firmware: &Firmware, root: &Path) -> bool {
    match firmware {
        Firmware::Uefi => root.join("sys/firmware/efi").is_dir(),
        Firmware::DeviceTree => root.join("sys/firmware/devicetree").is_dir() || root.join("proc/device-tree").is_dir(),
        Firmware::DeviceTreeCompatible(want) => std::fs::read(root.join("proc/device-tree/compatible"))
            .is_ok_and(|list| list.split(|b| *b == 0).any(|c| c == want.as_bytes())),
        Firmware::Smbios { field, op, value } => {
            let Ok(have) = std::fs::read_to_string(root.join("sys/class/dmi/id").join(field)) else { return false };
            let have = have.trim();
            match op {
                Op::Eq => have == value,
                Op::Ne => have != value,
                op => op.test(version_cmp(have, value)),
            }
        }
    }
}

/// Whether the block device `path` lives on is dm-crypt, or stacked on one
/// (systemd follows the device's `slaves/` down the same way).
fn is_encrypted(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(path) else { return false };
    let dev = meta.dev();
    let sys = std::path::PathBuf::from(format!("/sys/dev/block/{}:{}", libc::major(dev), libc::minor(dev)));
    crypt_below(&sys, 0)
}

fn crypt_below(dev: &Path, depth: usize) -> bool {
    // Devices stack a few levels at most (LVM on LUKS on RAID); the cap stops a sysfs loop.
    if depth > 8 {
        return false;
    }
    if std::fs::read_to_string(dev.join("dm/uuid")).is_ok_and(|u| u.starts_with("CRYPT-")) {
        return true;
    }
    std::fs::read_dir(dev.join("slaves")).is_ok_and(|d| d.flatten().any(|s| crypt_below(&s.path(), depth + 1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_as_systemd_does() {
        assert_eq!(version_cmp("6.1.0-13-amd64", "6.1"), Ordering::Greater);
        assert_eq!(version_cmp("5.10", "5.9"), Ordering::Greater);
        assert_eq!(version_cmp("12", "12"), Ordering::Equal);
        assert_eq!(version_cmp("1.0~rc1", "1.0"), Ordering::Less);
        assert!(kernel_version_holds(">=4.15 <99", "6.1.0-13-amd64"));
        assert!(!kernel_version_holds("<4.15", "6.1.0-13-amd64"));
        assert!(kernel_version_holds("6.1.*", "6.1.0-13-amd64") && !kernel_version_holds("5.*", "6.1.0"));
    }

    #[test]
    fn os_release_terms() {
        let os = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nVERSION_ID=\"12\"\n";
        assert!(os_release_holds("ID=debian", os));
        assert!(os_release_holds("ID!=ubuntu VERSION_ID>=11", os));
        assert!(!os_release_holds("VERSION_ID<12", os));
        assert!(validate(Test::OSRelease, "ID").is_err());
    }

    #[test]
    fn first_boot_and_needs_update_follow_systemds_files() {
        let dir = tempfile::tempdir().unwrap();
        let id = dir.path().join("machine-id");
        assert!(machine_id_uninitialized(&id), "missing");
        std::fs::write(&id, "uninitialized\n").unwrap();
        assert!(machine_id_uninitialized(&id));
        std::fs::write(&id, "3d1219c7c4c5404aaa1f6d2a48adfda4\n").unwrap();
        assert!(!machine_id_uninitialized(&id));

        let usr = dir.path().join("usr");
        std::fs::create_dir(&usr).unwrap();
        let etc = dir.path().join("etc");
        std::fs::create_dir(&etc).unwrap();
        assert!(needs_update(&etc, &usr), "no .updated: an update is pending");
        let stamp = etc.join(".updated");
        std::fs::write(&stamp, "").unwrap();
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
        std::fs::File::options().write(true).open(&stamp).unwrap().set_modified(later).unwrap();
        assert!(!needs_update(&etc, &usr), ".updated newer than /usr");
        let earlier = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1000);
        std::fs::File::options().write(true).open(&stamp).unwrap().set_modified(earlier).unwrap();
        assert!(needs_update(&etc, &usr), "/usr changed since");
    }

    #[test]
    fn credentials_sizes_pressure_and_globs() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "x").unwrap();
        assert!(credential_holds("token", vec![dir.path().to_path_buf()]));
        assert!(!credential_holds("other", vec![dir.path().to_path_buf()]));
        assert!(validate(Test::Credential, "a/b").is_err());
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert!(validate(Test::Memory, "2G").is_err(), "an operator is required");
        assert!(compare_memory(">=1M") && !compare_memory("<1M"));
        assert!(compare_number(">=1", cpus_allowed()) && !compare_number("=0", cpus_allowed()));
        let psi = "some avg10=1.50 avg60=30.00 avg300=5.00 total=1\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n";
        assert!(pressure_below(psi, "avg10", 2.0) && !pressure_below(psi, "avg60", 20.0));
        assert_eq!(pressure_arg("20%/1min"), Ok((20.0, "avg60")));
        assert!(pressure_arg("foo.slice:20%").is_err());
        let pattern = format!("{}/tok*", dir.path().display());
        assert!(glob_exists(&pattern) && !glob_exists(&format!("{}/nope*", dir.path().display())));
        assert!(holds(Test::Architecture, "native"));
        assert!(validate(Test::Architecture, "x86_64").is_err());
        assert!(holds(Test::User, &nix::unistd::geteuid().to_string()));
        assert!(holds(Test::Group, &nix::unistd::getegid().to_string()));
    }

    #[test]
    fn firmware_forms() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        assert!(!firmware_holds(&Firmware::Uefi, r));
        std::fs::create_dir_all(r.join("sys/firmware/efi")).unwrap();
        assert!(firmware_holds(&Firmware::Uefi, r));
        std::fs::create_dir_all(r.join("proc/device-tree")).unwrap();
        std::fs::write(r.join("proc/device-tree/compatible"), b"raspberrypi,4-model-b\0brcm,bcm2711\0").unwrap();
        assert!(firmware_holds(&firmware_arg("device-tree-compatible(brcm,bcm2711)").unwrap(), r));
        assert!(!firmware_holds(&firmware_arg("device-tree-compatible(brcm)").unwrap(), r));
        std::fs::create_dir_all(r.join("sys/class/dmi/id")).unwrap();
        std::fs::write(r.join("sys/class/dmi/id/bios_version"), "1.12.0\n").unwrap();
        assert!(firmware_holds(&firmware_arg("smbios-field(bios_version >= 1.9)").unwrap(), r));
        assert!(!firmware_holds(&firmware_arg("smbios-field(bios_version = 1.9)").unwrap(), r));
        assert!(firmware_arg("bios").is_err() && firmware_arg("smbios-field(../x = 1)").is_err());
        assert!(!is_encrypted(Path::new("/proc")), "procfs is no block device");
    }
}
