//! `Condition*=` and `Assert*=` on paths, files, directories, the environment
//! and the host (capabilities, kernel command line, virtualization, AC power,
//! security modules): a condition that does not hold skips the start (not an
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
    "ConditionCapability",
    "ConditionKernelCommandLine",
    "ConditionVirtualization",
    "ConditionACPower",
    "ConditionSecurity",
    "AssertCapability",
    "AssertKernelCommandLine",
    "AssertVirtualization",
    "AssertACPower",
    "AssertSecurity",
    "ConditionCredential",
    "ConditionFirstBoot",
    "ConditionNeedsUpdate",
    "ConditionArchitecture",
    "ConditionKernelVersion",
    "ConditionOSRelease",
    "ConditionHost",
    "ConditionUser",
    "ConditionGroup",
    "ConditionCPUs",
    "ConditionMemory",
    "ConditionPathExistsGlob",
    "ConditionControlGroupController",
    "ConditionCPUFeature",
    "ConditionMemoryPressure",
    "ConditionCPUPressure",
    "ConditionIOPressure",
    "AssertCredential",
    "AssertFirstBoot",
    "AssertNeedsUpdate",
    "AssertArchitecture",
    "AssertKernelVersion",
    "AssertOSRelease",
    "AssertHost",
    "AssertUser",
    "AssertGroup",
    "AssertCPUs",
    "AssertMemory",
    "AssertPathExistsGlob",
    "AssertControlGroupController",
    "AssertCPUFeature",
    "AssertMemoryPressure",
    "AssertCPUPressure",
    "AssertIOPressure",
    "ConditionFirmware",
    "ConditionPathIsEncrypted",
    "AssertFirmware",
    "AssertPathIsEncrypted",
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
    /// A capability in aikore's bounding set (`CapBnd` of /proc/self/status).
    Capability,
    /// A word of /proc/cmdline, or `key=value`.
    KernelCommandLine,
    /// See [`virtualization_holds`].
    Virtualization,
    /// `yes`: on mains power, or no power supply information at all (systemd's rule).
    ACPower,
    /// See [`security_holds`].
    Security,
    /// A credential passed to the service manager (aikore): see [`super::checks_host::credential_holds`].
    Credential,
    /// See [`super::checks_host::first_boot`].
    FirstBoot,
    /// See [`super::checks_host::needs_update`].
    NeedsUpdate,
    Architecture,
    /// Glob or `<`, `<=`, `=`, `!=`, `>=`, `>` and a version, against `uname -r`.
    KernelVersion,
    /// `KEY=VALUE` (or another operator) against os-release.
    OSRelease,
    /// The host name (a glob) or the machine ID.
    Host,
    /// The manager's user: a name, a uid or `@system`.
    User,
    /// The manager's group or one of its supplementary groups.
    Group,
    /// An operator and a number, against the CPUs in aikore's affinity mask.
    CPUs,
    /// An operator and a size, against the memory aikore may use.
    Memory,
    PathExistsGlob,
    /// Controllers (or `v1`/`v2`) the cgroup hierarchy offers.
    ControlGroupController,
    /// A flag of /proc/cpuinfo.
    CPUFeature,
    /// A threshold of the host's PSI (`/proc/pressure/*`), optionally over `/10sec`, `/1min` or `/5min`.
    MemoryPressure,
    CPUPressure,
    IOPressure,
    /// `uefi`, `device-tree`, `device-tree-compatible(X)`, `smbios-field(NAME OP VALUE)`.
    Firmware,
    /// The block device under the path is dm-crypt (itself or below it).
    PathIsEncrypted,
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
            "Capability" => Test::Capability,
            "KernelCommandLine" => Test::KernelCommandLine,
            "Virtualization" => Test::Virtualization,
            "ACPower" => Test::ACPower,
            "Security" => Test::Security,
            "Credential" => Test::Credential,
            "FirstBoot" => Test::FirstBoot,
            "NeedsUpdate" => Test::NeedsUpdate,
            "Architecture" => Test::Architecture,
            "KernelVersion" => Test::KernelVersion,
            "OSRelease" => Test::OSRelease,
            "Host" => Test::Host,
            "User" => Test::User,
            "Group" => Test::Group,
            "CPUs" => Test::CPUs,
            "Memory" => Test::Memory,
            "PathExistsGlob" => Test::PathExistsGlob,
            "ControlGroupController" => Test::ControlGroupController,
            "CPUFeature" => Test::CPUFeature,
            "MemoryPressure" => Test::MemoryPressure,
            "CPUPressure" => Test::CPUPressure,
            "IOPressure" => Test::IOPressure,
            "Firmware" => Test::Firmware,
            "PathIsEncrypted" => Test::PathIsEncrypted,
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
            Test::Capability => capability_bit(&self.arg).is_some_and(|bit| bounding_set() & (1 << bit) != 0),
            Test::KernelCommandLine => {
                std::fs::read_to_string("/proc/cmdline").is_ok_and(|line| cmdline_has(&line, &self.arg))
            }
            Test::Virtualization => virtualization_holds(&self.arg, &detect_container(), &detect_vm()),
            Test::ACPower => parse_bool(&self.arg) == Some(on_ac_power(Path::new("/sys/class/power_supply"))),
            Test::Security => security_holds(&self.arg),
            test => super::checks_host::holds(test, &self.arg),
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

/// The argument's grammar per test; a typo is an error, as `aikore check` promises.
fn validate(test: Test, arg: &str) -> Result<(), String> {
    match test {
        Test::Environment | Test::KernelCommandLine if arg.is_empty() => Err("a name is required".to_string()),
        Test::Environment | Test::KernelCommandLine => Ok(()),
        Test::Capability => {
            capability_bit(arg).map(|_| ()).ok_or_else(|| format!("unknown capability {arg} (see capabilities(7))"))
        }
        Test::ACPower => parse_bool(arg).map(|_| ()).ok_or_else(|| format!("'{arg}' is not a boolean")),
        Test::Virtualization => {
            if parse_bool(arg).is_some() || VIRTUALIZATIONS.contains(&arg) {
                Ok(())
            } else {
                Err(format!("unknown virtualization '{arg}' (one of yes, no, {})", VIRTUALIZATIONS.join(", ")))
            }
        }
        Test::Security if SECURITY.contains(&arg) => Ok(()),
        Test::Security => Err(format!("unknown security technology '{arg}' (one of {})", SECURITY.join(", "))),
        Test::PathExistsGlob if !arg.starts_with('/') => Err(format!("'{arg}' must be an absolute path")),
        Test::PathExistsGlob => Ok(()),
        test if super::checks_host::HOST_TESTS.contains(&test) => super::checks_host::validate(test, arg),
        _ if !arg.starts_with('/') => Err(format!("'{arg}' must be an absolute path")),
        _ => Ok(()),
    }
}

pub(super) fn parse_bool(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "1" | "yes" | "y" | "true" | "t" | "on" => Some(true),
        "0" | "no" | "n" | "false" | "f" | "off" => Some(false),
        _ => None,
    }
}

/// `CAP_CHOWN`, `cap_chown` or `chown`, as systemd's capability_from_name reads them.
fn capability_bit(name: &str) -> Option<usize> {
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("CAP_") { upper } else { format!("CAP_{upper}") };
    super::exec::CAPABILITIES.iter().position(|c| *c == full)
}

/// aikore's own capability bounding set; 0 when /proc is unreadable (nothing holds then).
fn bounding_set() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let hex = s.lines().find_map(|l| l.strip_prefix("CapBnd:"))?.trim().to_string();
            u64::from_str_radix(&hex, 16).ok()
        })
        .unwrap_or(0)
}

/// systemd's rule: an argument with `=` must match a whole word; one
/// without matches the word itself or any `arg=...`.
fn cmdline_has(cmdline: &str, arg: &str) -> bool {
    cmdline
        .split_whitespace()
        .map(|w| w.trim_matches('"'))
        .any(|word| word == arg || (!arg.contains('=') && word.strip_prefix(arg).is_some_and(|r| r.starts_with('='))))
}

/// Values `ConditionVirtualization=` takes besides a boolean (systemd's names).
const VIRTUALIZATIONS: &[&str] = &[
    "vm",
    "container",
    "private-users",
    "qemu",
    "kvm",
    "amazon",
    "zvm",
    "vmware",
    "microsoft",
    "oracle",
    "powervm",
    "xen",
    "bochs",
    "uml",
    "parallels",
    "bhyve",
    "qnx",
    "acrn",
    "apple",
    "sre",
    "google",
    "openvz",
    "lxc",
    "lxc-libvirt",
    "systemd-nspawn",
    "docker",
    "podman",
    "rkt",
    "wsl",
    "proot",
    "pouch",
];

/// The container aikore runs in, by systemd's tests that work from inside
/// one: the `container=` variable (of PID 1, which is usually aikore itself,
/// and of aikore), /run/systemd/container, /run/.containerenv (podman),
/// /.dockerenv (docker), and WSL's /proc/sys/kernel/osrelease.
fn detect_container() -> Option<String> {
    let from_env = |environ: &[u8]| {
        environ
            .split(|b| *b == 0)
            .find_map(|kv| kv.strip_prefix(b"container="))
            .map(|v| String::from_utf8_lossy(v).into_owned())
    };
    let named = std::fs::read("/proc/1/environ")
        .ok()
        .and_then(|e| from_env(&e))
        .or_else(|| std::env::var("container").ok())
        .or_else(|| std::fs::read_to_string("/run/systemd/container").ok().map(|s| s.trim().to_string()))
        .filter(|s| !s.is_empty());
    if let Some(name) = named {
        // systemd-nspawn and LXC write these; podman and docker write their own names.
        return Some(if name == "lxc-libvirt" || VIRTUALIZATIONS.contains(&name.as_str()) {
            name
        } else {
            "container-other".to_string()
        });
    }
    if Path::new("/run/.containerenv").exists() {
        return Some("podman".to_string());
    }
    if Path::new("/.dockerenv").exists() {
        return Some("docker".to_string());
    }
    let osrelease = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    if osrelease.contains("Microsoft") || osrelease.contains("WSL") {
        return Some("wsl".to_string());
    }
    None
}

/// The hypervisor under the kernel, from the DMI vendor strings (readable
/// in most containers) and, failing those, the cpuinfo `hypervisor` flag.
fn detect_vm() -> Option<String> {
    let dmi = ["sys_vendor", "product_name", "board_vendor", "bios_vendor"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(format!("/sys/class/dmi/id/{f}")).ok())
        .collect::<Vec<_>>()
        .join(" ");
    for (needle, id) in [
        ("KVM", "kvm"),
        ("Amazon EC2", "amazon"),
        ("QEMU", "qemu"),
        ("VMware", "vmware"),
        ("VMW", "vmware"),
        ("innotek GmbH", "oracle"),
        ("VirtualBox", "oracle"),
        ("Xen", "xen"),
        ("Bochs", "bochs"),
        ("Parallels", "parallels"),
        ("BHYVE", "bhyve"),
        ("Google", "google"),
        ("Microsoft Corporation", "microsoft"),
        ("Apple Virtualization", "apple"),
    ] {
        if dmi.contains(needle) {
            return Some(id.to_string());
        }
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flagged =
        cpuinfo.lines().filter(|l| l.starts_with("flags")).any(|l| l.split_whitespace().any(|f| f == "hypervisor"));
    flagged.then(|| "vm-other".to_string())
}

fn in_user_namespace() -> bool {
    std::fs::read_to_string("/proc/self/uid_map")
        .is_ok_and(|m| m.split_whitespace().collect::<Vec<_>>() != ["0", "0", "4294967295"])
}

/// systemd's rule: a boolean asks "any virtualization at all"; `vm` and
/// `container` ask for the kind; a name asks for that one.
fn virtualization_holds(arg: &str, container: &Option<String>, vm: &Option<String>) -> bool {
    if let Some(b) = parse_bool(arg) {
        return b == (container.is_some() || vm.is_some());
    }
    match arg {
        "vm" => vm.is_some(),
        "container" => container.is_some(),
        "private-users" => in_user_namespace(),
        name => container.as_deref() == Some(name) || vm.as_deref() == Some(name),
    }
}

fn on_ac_power(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else { return true };
    let mut found_mains = false;
    for entry in entries.flatten() {
        let read = |f: &str| std::fs::read_to_string(entry.path().join(f)).unwrap_or_default().trim().to_string();
        if read("type") != "Mains" {
            continue;
        }
        found_mains = true;
        if read("online") == "1" {
            return true;
        }
    }
    // No mains supply known at all (a server, a container): treated as on AC, like systemd.
    !found_mains
}

/// Values of `ConditionSecurity=`.
const SECURITY: &[&str] =
    &["selinux", "apparmor", "tomoyo", "smack", "ima", "audit", "uefi-secureboot", "tpm2", "landlock", "bpf"];

/// From the kernel's list of active LSMs (/sys/kernel/security/lsm), with
/// each module's own /sys entry as a fallback when securityfs is not mounted.
fn security_holds(what: &str) -> bool {
    let lsm = std::fs::read_to_string("/sys/kernel/security/lsm").unwrap_or_default();
    let active = |name: &str| lsm.trim().split(',').any(|m| m == name);
    match what {
        "selinux" => active("selinux") || Path::new("/sys/fs/selinux/enforce").exists(),
        "apparmor" => {
            active("apparmor")
                || std::fs::read_to_string("/sys/module/apparmor/parameters/enabled").is_ok_and(|s| s.trim() == "Y")
        }
        "smack" => active("smack") || Path::new("/sys/fs/smackfs").is_dir(),
        "tomoyo" => active("tomoyo"),
        "ima" => active("ima") || Path::new("/sys/kernel/security/ima").is_dir(),
        "landlock" => active("landlock"),
        "bpf" => active("bpf"),
        "audit" => Path::new("/proc/self/loginuid").exists(),
        "tpm2" => std::fs::read_dir("/sys/class/tpmrm").is_ok_and(|mut d| d.next().is_some()),
        "uefi-secureboot" => std::fs::read_dir("/sys/firmware/efi/efivars").is_ok_and(|d| {
            d.flatten().any(|e| {
                e.file_name().to_string_lossy().starts_with("SecureBoot-")
                    && std::fs::read(e.path()).is_ok_and(|b| b.last() == Some(&1))
            })
        }),
        _ => false,
    }
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
        validate(test, rest)?;
        if test == Test::FirstBoot {
            super::checks_host::note_first_boot();
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
    fn capability_cmdline_virtualization_power_security() {
        let bnd = bounding_set();
        let (have, lack): (Vec<_>, Vec<_>) =
            (0..super::super::exec::CAPABILITIES.len()).partition(|b| bnd & (1 << b) != 0);
        if let Some(b) = have.first() {
            let name = super::super::exec::CAPABILITIES[*b];
            assert_eq!(checks(&[("ConditionCapability", name)]).unmet_condition(), None);
            assert!(checks(&[("ConditionCapability", &format!("!{name}"))]).unmet_condition().is_some());
        }
        if let Some(b) = lack.first() {
            let name = super::super::exec::CAPABILITIES[*b];
            assert!(checks(&[("AssertCapability", name)]).failed_assert().is_some());
        }
        assert!(Checks::default().apply("ConditionCapability", "CAP_NOPE").is_err());
        assert_eq!(capability_bit("sys_admin"), Some(21));

        let line = "BOOT_IMAGE=/vmlinuz root=/dev/sda1 ro quiet\n";
        assert!(cmdline_has(line, "quiet") && cmdline_has(line, "root") && cmdline_has(line, "root=/dev/sda1"));
        assert!(!cmdline_has(line, "root=/dev/sdb") && !cmdline_has(line, "ro=1") && !cmdline_has(line, "qui"));
        assert!(checks(&[("ConditionKernelCommandLine", "!aikore.surely.absent")]).unmet_condition().is_none());

        let docker = Some("docker".to_string());
        let kvm = Some("kvm".to_string());
        assert!(virtualization_holds("yes", &docker, &None) && virtualization_holds("container", &docker, &None));
        assert!(virtualization_holds("docker", &docker, &kvm) && virtualization_holds("vm", &docker, &kvm));
        assert!(!virtualization_holds("podman", &docker, &None) && !virtualization_holds("no", &None, &kvm));
        assert!(virtualization_holds("no", &None, &None) && !virtualization_holds("vm", &docker, &None));
        assert!(Checks::default().apply("ConditionVirtualization", "dokcer").is_err());
        let here = checks(&[("ConditionVirtualization", "yes")]).unmet_condition().is_none();
        let not_here = checks(&[("ConditionVirtualization", "!yes")]).unmet_condition().is_none();
        assert_ne!(here, not_here);

        let power = tempfile::tempdir().unwrap();
        assert!(on_ac_power(power.path()), "no supply known: on AC");
        std::fs::create_dir(power.path().join("AC")).unwrap();
        std::fs::write(power.path().join("AC/type"), "Mains\n").unwrap();
        std::fs::write(power.path().join("AC/online"), "0\n").unwrap();
        assert!(!on_ac_power(power.path()));
        std::fs::write(power.path().join("AC/online"), "1\n").unwrap();
        assert!(on_ac_power(power.path()));
        assert!(Checks::default().apply("ConditionACPower", "maybe").is_err());

        assert!(Checks::default().apply("ConditionSecurity", "selinx").is_err());
        let sel = checks(&[("ConditionSecurity", "selinux")]).unmet_condition().is_none();
        assert_eq!(sel, security_holds("selinux"));
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_octal("/mnt/a\\040b"), "/mnt/a b");
        assert_eq!(unescape_octal("/plain"), "/plain");
    }
}
