//! The namespace sandbox keys of systemd.exec(5) beyond the path ones of
//! `exec`: `PrivateDevices=`, `ProtectProc=`, `ProcSubset=`,
//! `PrivateNetwork=`, `PrivateIPC=`, `PrivateUsers=`, `PrivateMounts=`,
//! `RemoveIPC=`, `ExecPaths=`, `NoExecPaths=`, `BindPaths=`,
//! `BindReadOnlyPaths=`, `TemporaryFileSystem=` and the `ProtectKernel*=`,
//! `ProtectControlGroups=`, `ProtectClock=` and `ProtectHostname=` keys, as typed values.
//! `supervisor::exec` turns them into mount steps and namespace calls.

use std::path::PathBuf;

use super::exec::{ExecConfig, ProtectHome, ProtectSystem, SandboxPath};

/// [Service] keys this module parses.
pub const KEYS: &[&str] = &[
    "PrivateDevices",
    "ProtectProc",
    "ProcSubset",
    "PrivateNetwork",
    "PrivateIPC",
    "PrivateUsers",
    "PrivateMounts",
    "RemoveIPC",
    "ExecPaths",
    "NoExecPaths",
    "BindPaths",
    "BindReadOnlyPaths",
    "TemporaryFileSystem",
    "DynamicUser",
    "ProtectKernelTunables",
    "ProtectKernelModules",
    "ProtectKernelLogs",
    "ProtectControlGroups",
    "ProtectClock",
    "ProtectHostname",
];

/// `ProtectProc=`: the `hidepid=` of the unit's own procfs instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProtectProc {
    #[default]
    Default,
    NoAccess,
    Invisible,
    Ptraceable,
}

impl ProtectProc {
    /// The procfs `hidepid=` value (Linux ≥ 5.8 names).
    pub fn hidepid(self) -> Option<&'static str> {
        match self {
            ProtectProc::Default => None,
            ProtectProc::NoAccess => Some("noaccess"),
            ProtectProc::Invisible => Some("invisible"),
            ProtectProc::Ptraceable => Some("ptraceable"),
        }
    }
}

/// One `BindPaths=`/`BindReadOnlyPaths=` entry: `[-]SRC[:DST[:rbind|norbind]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindPath {
    pub source: PathBuf,
    pub dest: PathBuf,
    /// `-`: a missing source is skipped.
    pub optional: bool,
    /// `rbind` (the default): the mounts below the source come along.
    pub recursive: bool,
    pub read_only: bool,
}

/// One `TemporaryFileSystem=PATH[:OPTIONS]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TmpfsMount {
    pub path: PathBuf,
    /// The options as written, comma-separated (`ro`, `mode=0700`, `size=10M`, ...).
    pub options: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NamespaceConfig {
    pub private_devices: bool,
    pub protect_proc: ProtectProc,
    /// `ProcSubset=pid`.
    pub proc_subset_pid: bool,
    pub private_network: bool,
    pub private_ipc: bool,
    pub private_users: bool,
    pub private_mounts: bool,
    pub remove_ipc: bool,
    pub exec_paths: Vec<SandboxPath>,
    pub no_exec_paths: Vec<SandboxPath>,
    pub bind_paths: Vec<BindPath>,
    pub temporary_fs: Vec<TmpfsMount>,
    /// `DynamicUser=`: a transient uid/gid for each run (see [`ExecConfig::with_dynamic_user`]).
    pub dynamic_user: bool,
    /// `[Unit] JoinsNamespaceOf=`: units whose running network and IPC namespaces this one shares.
    pub joins_namespace_of: Vec<String>,
    /// `ProtectKernelTunables=`: /proc/sys, /sys, ... read-only.
    pub protect_kernel_tunables: bool,
    /// `ProtectKernelModules=`: CAP_SYS_MODULE, `@module`, /usr/lib/modules.
    pub protect_kernel_modules: bool,
    /// `ProtectKernelLogs=`: CAP_SYSLOG, syslog(2), /proc/kmsg, /dev/kmsg.
    pub protect_kernel_logs: bool,
    /// `ProtectControlGroups=`: /sys/fs/cgroup read-only.
    pub protect_control_groups: bool,
    /// `ProtectClock=`: CAP_SYS_TIME, CAP_WAKE_ALARM, `@clock`, the rtc devices read-only.
    pub protect_clock: bool,
    /// `ProtectHostname=`: a UTS namespace, sethostname/setdomainname refused.
    pub protect_hostname: bool,
}

impl NamespaceConfig {
    /// Whether one of these keys needs the unit's own mount namespace.
    pub fn wants_mount_namespace(&self) -> bool {
        self.private_devices
            || self.protect_proc != ProtectProc::Default
            || self.proc_subset_pid
            || self.private_mounts
            || !self.exec_paths.is_empty()
            || !self.no_exec_paths.is_empty()
            || !self.bind_paths.is_empty()
            || !self.temporary_fs.is_empty()
            || self.protect_kernel_tunables
            || self.protect_kernel_modules
            || self.protect_kernel_logs
            || self.protect_control_groups
    }

    /// The `+` prefix: no file system sandbox and no user namespace for this
    /// command. As in systemd, it still joins the run's network and IPC
    /// namespaces, and RemoveIPC= still applies at the end.
    pub fn without_file_system_sandbox(&self) -> NamespaceConfig {
        NamespaceConfig {
            private_network: self.private_network,
            private_ipc: self.private_ipc,
            remove_ipc: self.remove_ipc,
            dynamic_user: false,
            joins_namespace_of: self.joins_namespace_of.clone(),
            ..NamespaceConfig::default()
        }
    }

    /// The keys set that the mount namespace carries, for a note when the kernel refuses it.
    pub fn mount_keys(&self) -> Vec<&'static str> {
        let mut keys = Vec::new();
        let mut add = |on: bool, key: &'static str| {
            if on {
                keys.push(key);
            }
        };
        add(self.private_devices, "PrivateDevices=");
        add(self.protect_proc != ProtectProc::Default, "ProtectProc=");
        add(self.proc_subset_pid, "ProcSubset=");
        add(self.private_mounts, "PrivateMounts=");
        add(!self.exec_paths.is_empty(), "ExecPaths=");
        add(!self.no_exec_paths.is_empty(), "NoExecPaths=");
        add(self.bind_paths.iter().any(|b| !b.read_only), "BindPaths=");
        add(self.bind_paths.iter().any(|b| b.read_only), "BindReadOnlyPaths=");
        add(!self.temporary_fs.is_empty(), "TemporaryFileSystem=");
        add(self.protect_kernel_tunables, "ProtectKernelTunables=");
        add(
            self.protect_kernel_modules,
            "ProtectKernelModules= (/usr/lib/modules; the capability and the calls are refused)",
        );
        add(
            self.protect_kernel_logs,
            "ProtectKernelLogs= (/proc/kmsg, /dev/kmsg; the capability and syslog(2) are refused)",
        );
        add(self.protect_control_groups, "ProtectControlGroups=");
        add(self.protect_hostname, "ProtectHostname= (read-only /proc/sys/kernel/hostname)");
        keys
    }

    /// Applies one key of [`KEYS`].
    pub fn apply(&mut self, key: &str, value: &str) -> Result<(), String> {
        let flag = |v: &str| -> Result<bool, String> { Ok(!v.is_empty() && super::resolve::parse_bool(v)?) };
        match key {
            "PrivateDevices" => self.private_devices = flag(value)?,
            "PrivateNetwork" => self.private_network = flag(value)?,
            "PrivateIPC" => self.private_ipc = flag(value)?,
            "PrivateMounts" => self.private_mounts = flag(value)?,
            "RemoveIPC" => self.remove_ipc = flag(value)?,
            "DynamicUser" => self.dynamic_user = flag(value)?,
            // systemd 252's booleans (ProtectControlGroups=private/strict and
            // ProtectHostname=private are systemd 257/258's).
            "ProtectKernelTunables" => self.protect_kernel_tunables = flag(value)?,
            "ProtectKernelModules" => self.protect_kernel_modules = flag(value)?,
            "ProtectKernelLogs" => self.protect_kernel_logs = flag(value)?,
            "ProtectControlGroups" => self.protect_control_groups = flag(value)?,
            "ProtectClock" => self.protect_clock = flag(value)?,
            "ProtectHostname" => self.protect_hostname = flag(value)?,
            "PrivateUsers" => {
                // systemd 256's `self` and `identity` map other ranges; only yes/no here.
                self.private_users = flag(value).map_err(|_| "expected yes or no".to_string())?
            }
            "ProtectProc" => {
                self.protect_proc = match value {
                    "" | "default" => ProtectProc::Default,
                    "noaccess" => ProtectProc::NoAccess,
                    "invisible" => ProtectProc::Invisible,
                    "ptraceable" => ProtectProc::Ptraceable,
                    _ => return Err("expected noaccess, invisible, ptraceable or default".to_string()),
                }
            }
            "ProcSubset" => {
                self.proc_subset_pid = match value {
                    "" | "all" => false,
                    "pid" => true,
                    _ => return Err("expected all or pid".to_string()),
                }
            }
            "ExecPaths" => super::exec::parse_paths(&mut self.exec_paths, value)?,
            "NoExecPaths" => super::exec::parse_paths(&mut self.no_exec_paths, value)?,
            "BindPaths" | "BindReadOnlyPaths" => {
                let read_only = key == "BindReadOnlyPaths";
                if value.is_empty() {
                    self.bind_paths.retain(|b| b.read_only != read_only);
                }
                for word in super::quote::split_command_line(value)? {
                    self.bind_paths.push(parse_bind(&word, read_only)?);
                }
            }
            "TemporaryFileSystem" => {
                if value.is_empty() {
                    self.temporary_fs.clear();
                }
                for word in super::quote::split_command_line(value)? {
                    let (path, options) = word.split_once(':').unwrap_or((&word, ""));
                    let path = absolute(path)?;
                    for o in options.split(',').filter(|o| !o.is_empty()) {
                        if o.contains(|c: char| c.is_whitespace() || c.is_control()) {
                            return Err(format!("'{o}' is not a mount option"));
                        }
                    }
                    self.temporary_fs.push(TmpfsMount { path, options: options.to_string() });
                }
            }
            _ => return Err(format!("{key}= is not a namespace key")),
        }
        Ok(())
    }
}

fn absolute(path: &str) -> Result<PathBuf, String> {
    if path.starts_with('/') && !path.split('/').any(|c| c == "..") {
        Ok(PathBuf::from(path))
    } else {
        Err(format!("'{path}' must be an absolute path without '..'"))
    }
}

/// `[-]SRC[:DST[:rbind|norbind]]`.
fn parse_bind(word: &str, read_only: bool) -> Result<BindPath, String> {
    let (optional, rest) = match word.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, word),
    };
    let mut parts = rest.splitn(3, ':');
    let source = absolute(parts.next().unwrap_or_default())?;
    let dest = match parts.next() {
        Some(d) => absolute(d)?,
        None => source.clone(),
    };
    let recursive = match parts.next() {
        None | Some("rbind") => true,
        Some("norbind") => false,
        Some(o) => return Err(format!("'{o}': expected rbind or norbind")),
    };
    Ok(BindPath { source, dest, optional, recursive, read_only })
}

impl ExecConfig {
    /// What the namespace keys imply, as systemd.exec(5) lists it.
    /// `DynamicUser=yes`: `ProtectSystem=strict`, `ProtectHome=read-only`
    /// (unless stricter), `PrivateTmp=yes`, `RemoveIPC=yes`,
    /// `NoNewPrivileges=yes`, `RestrictSUIDSGID=yes`. `PrivateDevices=yes`:
    /// the `@raw-io` calls (ioperm, iopl, pciconfig_*, ...) refused with
    /// EPERM, since a private /dev leaves raw I/O as the way to the hardware.
    /// `ProtectKernelModules=yes`: `@module`; `ProtectKernelLogs=yes`:
    /// `syslog`; `ProtectClock=yes`: `@clock`; `ProtectHostname=yes`:
    /// `sethostname`, `setdomainname`; each refused with EPERM, as systemd's
    /// own filters for these keys do. (The capabilities they drop are in
    /// `supervisor::exec`, the rtc devices of `ProtectClock=` in the device
    /// program: [`super::cgroup_access::CgroupAccess::with_protect_clock`].)
    pub fn with_implied(&self) -> ExecConfig {
        let mut cfg = self.clone();
        let implied = [
            (cfg.ns.private_devices, "~@raw-io:EPERM"),
            (cfg.ns.protect_kernel_modules, "~@module:EPERM"),
            (cfg.ns.protect_kernel_logs, "~syslog:EPERM"),
            (cfg.ns.protect_clock, "~@clock:EPERM"),
            (cfg.ns.protect_hostname, "~sethostname:EPERM setdomainname:EPERM"),
        ];
        for (on, entries) in implied {
            if on {
                // The sets, calls and errno are fixed strings the parser accepts.
                let _ = super::syscall_filter::apply_filter(&mut cfg.seccomp.call_filter, entries);
            }
        }
        if cfg.ns.dynamic_user {
            cfg.protect_system = ProtectSystem::Strict;
            if cfg.protect_home == ProtectHome::No {
                cfg.protect_home = ProtectHome::ReadOnly;
            }
            cfg.private_tmp = true;
            cfg.ns.remove_ipc = true;
            cfg.no_new_privileges = Some(true);
            cfg.seccomp.restrict_suid_sgid = true;
        }
        cfg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(lines: &[(&str, &str)]) -> NamespaceConfig {
        let mut c = NamespaceConfig::default();
        for (k, v) in lines {
            c.apply(k, v).unwrap_or_else(|e| panic!("{k}={v}: {e}"));
        }
        c
    }

    #[test]
    fn flags_and_proc_options() {
        let c = parsed(&[
            ("PrivateDevices", "true"),
            ("ProtectProc", "invisible"),
            ("ProcSubset", "pid"),
            ("PrivateNetwork", "yes"),
            ("PrivateUsers", "yes"),
            ("RemoveIPC", "yes"),
        ]);
        assert!(c.private_devices && c.proc_subset_pid && c.private_network && c.private_users && c.remove_ipc);
        assert_eq!(c.protect_proc.hidepid(), Some("invisible"));
        assert!(c.wants_mount_namespace());
        assert!(!parsed(&[("PrivateNetwork", "yes"), ("PrivateNetwork", "")]).private_network);
        assert!(!parsed(&[("PrivateNetwork", "yes")]).wants_mount_namespace(), "a network namespace alone");
        let mut c = NamespaceConfig::default();
        assert!(c.apply("ProtectProc", "hidden").is_err());
        assert!(c.apply("ProcSubset", "some").is_err());
        assert!(c.apply("PrivateNetwork", "maybe").is_err());
    }

    #[test]
    fn bind_paths_take_prefixes_destinations_and_options() {
        let c = parsed(&[
            ("BindPaths", "/srv/a -/srv/b:/mnt/b:norbind"),
            ("BindReadOnlyPaths", "/dev/log:/var/lib/haproxy/dev/log"),
        ]);
        assert_eq!(
            c.bind_paths,
            [
                BindPath {
                    source: "/srv/a".into(),
                    dest: "/srv/a".into(),
                    optional: false,
                    recursive: true,
                    read_only: false
                },
                BindPath {
                    source: "/srv/b".into(),
                    dest: "/mnt/b".into(),
                    optional: true,
                    recursive: false,
                    read_only: false
                },
                BindPath {
                    source: "/dev/log".into(),
                    dest: "/var/lib/haproxy/dev/log".into(),
                    optional: false,
                    recursive: true,
                    read_only: true
                },
            ]
        );
        assert_eq!(c.mount_keys(), ["BindPaths=", "BindReadOnlyPaths="]);
        let c = parsed(&[("BindPaths", "/a"), ("BindReadOnlyPaths", "/b"), ("BindPaths", "")]);
        assert_eq!(c.bind_paths.len(), 1, "an empty BindPaths= resets only its own list");
        let mut c = NamespaceConfig::default();
        assert!(c.apply("BindPaths", "relative").is_err());
        assert!(c.apply("BindPaths", "/a:/b:sideways").is_err());
        assert!(c.apply("BindPaths", "/a/../etc").is_err());
    }

    #[test]
    fn dynamic_user_implies_systemds_list() {
        let mut cfg = ExecConfig::default();
        cfg.apply("ProtectHome", "yes").unwrap();
        cfg.apply("DynamicUser", "yes").unwrap();
        let cfg = cfg.with_implied();
        assert_eq!(cfg.protect_system, ProtectSystem::Strict);
        assert_eq!(cfg.protect_home, ProtectHome::Yes, "a stricter one stays");
        assert!(cfg.private_tmp && cfg.ns.remove_ipc && cfg.seccomp.restrict_suid_sgid);
        assert_eq!(cfg.no_new_privileges, Some(true));
        assert_eq!(ExecConfig::default().with_implied(), ExecConfig::default());
    }

    #[test]
    #[cfg(target_arch = "x86_64")] // ioperm is x86's
    fn private_devices_refuses_raw_io_with_eperm_and_keeps_the_units_own_filter() {
        use crate::units::syscall_filter::{Action, CallFilter};
        let mut cfg = ExecConfig::default();
        cfg.ns.private_devices = true;
        let Some(CallFilter::Deny(denied)) = cfg.with_implied().seccomp.call_filter else {
            panic!("PrivateDevices= adds a deny list")
        };
        assert_eq!(denied.get(&libc::SYS_ioperm), Some(&Some(Action::Errno(libc::EPERM as u16))));
        assert!(!denied.contains_key(&libc::SYS_read));
        // An allow list of the unit's own loses the raw I/O calls it named.
        let mut cfg = ExecConfig::default();
        cfg.ns.private_devices = true;
        crate::units::syscall_filter::apply_filter(&mut cfg.seccomp.call_filter, "@system-service @raw-io").unwrap();
        let Some(CallFilter::Allow(allowed)) = cfg.with_implied().seccomp.call_filter else {
            panic!("still an allow list")
        };
        assert!(!allowed.contains(&libc::SYS_ioperm) && allowed.contains(&libc::SYS_read));
    }

    #[test]
    fn protect_keys_refuse_their_calls_with_eperm() {
        use crate::units::syscall_filter::{Action, CallFilter};
        let mut cfg = ExecConfig::default();
        for key in ["ProtectKernelModules", "ProtectKernelLogs", "ProtectClock", "ProtectHostname"] {
            cfg.apply(key, "yes").unwrap();
        }
        assert!(cfg.ns.wants_mount_namespace(), "ProtectKernelModules= hides /usr/lib/modules");
        let Some(CallFilter::Deny(denied)) = cfg.with_implied().seccomp.call_filter else {
            panic!("the keys add a deny list")
        };
        let eperm = Some(&Some(Action::Errno(libc::EPERM as u16)));
        for call in [
            libc::SYS_init_module,
            libc::SYS_finit_module,
            libc::SYS_delete_module,
            libc::SYS_syslog,
            libc::SYS_clock_settime,
            libc::SYS_settimeofday,
            libc::SYS_adjtimex,
            libc::SYS_sethostname,
            libc::SYS_setdomainname,
        ] {
            assert_eq!(denied.get(&call), eperm, "call {call}");
        }
        assert!(!denied.contains_key(&libc::SYS_clock_gettime), "reading the clock stays");
        let mut c = NamespaceConfig::default();
        c.apply("ProtectClock", "yes").unwrap();
        assert!(!c.wants_mount_namespace(), "ProtectClock= mounts nothing");
        c.apply("ProtectClock", "").unwrap();
        assert!(!c.protect_clock);
        assert!(c.apply("ProtectControlGroups", "private").is_err(), "systemd 257's value");
    }

    #[test]
    fn temporary_file_systems_and_exec_paths() {
        let c = parsed(&[
            ("TemporaryFileSystem", "/var:ro /srv:mode=0700,size=1M"),
            ("NoExecPaths", "/"),
            ("ExecPaths", "/usr/bin/redis-server /usr/lib -/lib"),
        ]);
        assert_eq!(c.temporary_fs[0], TmpfsMount { path: "/var".into(), options: "ro".into() });
        assert_eq!(c.temporary_fs[1].options, "mode=0700,size=1M");
        assert_eq!(c.exec_paths.len(), 3);
        assert!(c.exec_paths[2].optional);
        let plus = c.without_file_system_sandbox();
        assert!(!plus.wants_mount_namespace());
    }
}
