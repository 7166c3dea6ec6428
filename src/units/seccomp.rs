//! The seccomp sandbox keys of systemd.exec(5) (`LockPersonality=`,
//! `RestrictRealtime=`, `RestrictSUIDSGID=`, `RestrictNamespaces=`,
//! `MemoryDenyWriteExecute=`, `SystemCallArchitectures=`,
//! `RestrictAddressFamilies=`, and through units/syscall_filter.rs
//! `SystemCallFilter=`, `SystemCallErrorNumber=`, `SystemCallLog=`) as typed
//! values; `supervisor::seccomp` turns them into a BPF program.

pub use super::syscall_filter::{Action, CallFilter, CallLog};

/// [Service] keys this module parses.
pub const KEYS: &[&str] = &[
    "LockPersonality",
    "RestrictRealtime",
    "RestrictSUIDSGID",
    "RestrictNamespaces",
    "MemoryDenyWriteExecute",
    "SystemCallArchitectures",
    "RestrictAddressFamilies",
    "SystemCallFilter",
    "SystemCallErrorNumber",
    "SystemCallLog",
];

/// The namespace kinds of `RestrictNamespaces=` and their CLONE_NEW* flags.
pub const NAMESPACES: &[(&str, u64)] = &[
    ("cgroup", libc::CLONE_NEWCGROUP as u64),
    ("ipc", libc::CLONE_NEWIPC as u64),
    ("net", libc::CLONE_NEWNET as u64),
    ("mnt", libc::CLONE_NEWNS as u64),
    ("pid", libc::CLONE_NEWPID as u64),
    ("user", libc::CLONE_NEWUSER as u64),
    ("uts", libc::CLONE_NEWUTS as u64),
];

/// Every CLONE_NEW* flag of [`NAMESPACES`].
pub const ALL_NAMESPACES: u64 = libc::CLONE_NEWCGROUP as u64
    | libc::CLONE_NEWIPC as u64
    | libc::CLONE_NEWNET as u64
    | libc::CLONE_NEWNS as u64
    | libc::CLONE_NEWPID as u64
    | libc::CLONE_NEWUSER as u64
    | libc::CLONE_NEWUTS as u64;

/// Address families `RestrictAddressFamilies=` knows by name.
const FAMILIES: &[(&str, i32)] = &[
    ("AF_UNIX", libc::AF_UNIX),
    ("AF_LOCAL", libc::AF_LOCAL),
    ("AF_INET", libc::AF_INET),
    ("AF_INET6", libc::AF_INET6),
    ("AF_NETLINK", libc::AF_NETLINK),
    ("AF_PACKET", libc::AF_PACKET),
    ("AF_AX25", libc::AF_AX25),
    ("AF_IPX", libc::AF_IPX),
    ("AF_APPLETALK", libc::AF_APPLETALK),
    ("AF_NETROM", libc::AF_NETROM),
    ("AF_BRIDGE", libc::AF_BRIDGE),
    ("AF_ATMPVC", libc::AF_ATMPVC),
    ("AF_X25", libc::AF_X25),
    ("AF_ROSE", libc::AF_ROSE),
    ("AF_DECnet", libc::AF_DECnet),
    ("AF_NETBEUI", libc::AF_NETBEUI),
    ("AF_SECURITY", libc::AF_SECURITY),
    ("AF_KEY", libc::AF_KEY),
    ("AF_ASH", libc::AF_ASH),
    ("AF_ECONET", libc::AF_ECONET),
    ("AF_ATMSVC", libc::AF_ATMSVC),
    ("AF_RDS", libc::AF_RDS),
    ("AF_SNA", libc::AF_SNA),
    ("AF_IRDA", libc::AF_IRDA),
    ("AF_PPPOX", libc::AF_PPPOX),
    ("AF_WANPIPE", libc::AF_WANPIPE),
    ("AF_LLC", libc::AF_LLC),
    ("AF_IB", libc::AF_IB),
    ("AF_MPLS", libc::AF_MPLS),
    ("AF_CAN", libc::AF_CAN),
    ("AF_TIPC", libc::AF_TIPC),
    ("AF_BLUETOOTH", libc::AF_BLUETOOTH),
    ("AF_IUCV", libc::AF_IUCV),
    ("AF_RXRPC", libc::AF_RXRPC),
    ("AF_ISDN", libc::AF_ISDN),
    ("AF_PHONET", libc::AF_PHONET),
    ("AF_IEEE802154", libc::AF_IEEE802154),
    ("AF_CAIF", libc::AF_CAIF),
    ("AF_ALG", libc::AF_ALG),
    ("AF_NFC", libc::AF_NFC),
    ("AF_VSOCK", libc::AF_VSOCK),
    ("AF_KCM", 41),
    ("AF_QIPCRTR", 42),
    ("AF_SMC", 43),
    ("AF_XDP", 44),
    ("AF_MCTP", 45),
];

/// Which address families `socket()` may create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Families {
    /// Only these (`none`: the empty list).
    Allow(Vec<i32>),
    /// All but these (`~` lists).
    Deny(Vec<i32>),
}

/// The parsed seccomp keys; the default filters nothing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SeccompConfig {
    pub lock_personality: bool,
    pub restrict_realtime: bool,
    pub restrict_suid_sgid: bool,
    /// The CLONE_NEW* flags still allowed; None: all (not set, or `no`).
    pub allowed_namespaces: Option<u64>,
    pub memory_deny_write_execute: bool,
    /// `SystemCallArchitectures=native`.
    pub native_only: bool,
    pub families: Option<Families>,
    /// `SystemCallFilter=`; None: not set.
    pub call_filter: Option<CallFilter>,
    /// `SystemCallErrorNumber=`; None: `kill`, systemd's default.
    pub call_errno: Option<u16>,
    /// `SystemCallLog=`.
    pub call_log: Option<CallLog>,
}

impl SeccompConfig {
    /// Whether any key asks for a filter.
    pub fn wants_filter(&self) -> bool {
        // SystemCallErrorNumber= alone says what a filter does, and asks for none.
        *self != SeccompConfig { call_errno: self.call_errno, ..SeccompConfig::default() }
    }

    /// Applies one key of [`KEYS`]; `Ok(Some(w))` is a warning.
    pub fn apply(&mut self, key: &str, value: &str) -> Result<Option<String>, String> {
        let value = value.trim();
        match key {
            "SystemCallFilter" => {
                let warnings = super::syscall_filter::apply_filter(&mut self.call_filter, value)?;
                return Ok((!warnings.is_empty()).then(|| warnings.join("; ")));
            }
            "SystemCallErrorNumber" => self.call_errno = super::syscall_filter::parse_error_number(value)?,
            "SystemCallLog" => super::syscall_filter::apply_log(&mut self.call_log, value)?,
            _ => self.apply_plain(key, value)?,
        }
        Ok(None)
    }

    fn apply_plain(&mut self, key: &str, value: &str) -> Result<(), String> {
        let value = value.trim();
        let bool_of = |v: &str| if v.is_empty() { Ok(false) } else { super::resolve::parse_bool(v) };
        match key {
            "LockPersonality" => self.lock_personality = bool_of(value)?,
            "RestrictRealtime" => self.restrict_realtime = bool_of(value)?,
            "RestrictSUIDSGID" => self.restrict_suid_sgid = bool_of(value)?,
            "MemoryDenyWriteExecute" => self.memory_deny_write_execute = bool_of(value)?,
            "SystemCallArchitectures" => {
                if value.is_empty() {
                    self.native_only = false;
                }
                for arch in value.split_whitespace() {
                    match arch {
                        "native" => self.native_only = true,
                        #[cfg(target_arch = "x86_64")]
                        "x86-64" => self.native_only = true,
                        #[cfg(target_arch = "aarch64")]
                        "arm64" => self.native_only = true,
                        other => {
                            return Err(format!(
                                "architecture '{other}' is not supported (only native, the daemon's own, is)"
                            ))
                        }
                    }
                }
            }
            "RestrictNamespaces" => self.apply_namespaces(value)?,
            "RestrictAddressFamilies" => self.apply_families(value)?,
            _ => return Err(format!("{key} is not a seccomp key")),
        }
        Ok(())
    }

    fn apply_namespaces(&mut self, value: &str) -> Result<(), String> {
        if value.is_empty() {
            self.allowed_namespaces = None;
            return Ok(());
        }
        if let Ok(b) = super::resolve::parse_bool(value) {
            self.allowed_namespaces = b.then_some(0);
            return Ok(());
        }
        let (invert, list) = match value.strip_prefix('~') {
            Some(rest) => (true, rest),
            None => (false, value),
        };
        let mut set = 0;
        for name in list.split_whitespace() {
            let (_, flag) = NAMESPACES
                .iter()
                .find(|(n, _)| *n == name)
                .ok_or_else(|| format!("'{name}' is not a namespace (cgroup ipc net mnt pid user uts)"))?;
            set |= flag;
        }
        let current = self.allowed_namespaces;
        self.allowed_namespaces =
            Some(if invert { current.unwrap_or(ALL_NAMESPACES) & !set } else { current.unwrap_or(0) | set });
        Ok(())
    }

    fn apply_families(&mut self, value: &str) -> Result<(), String> {
        if value.is_empty() {
            self.families = None;
            return Ok(());
        }
        if value == "none" {
            self.families = Some(Families::Allow(Vec::new()));
            return Ok(());
        }
        let (invert, list) = match value.strip_prefix('~') {
            Some(rest) => (true, rest),
            None => (false, value),
        };
        let mut set = Vec::new();
        for name in list.split_whitespace() {
            let (_, af) = FAMILIES
                .iter()
                .find(|(n, _)| *n == name)
                .ok_or_else(|| format!("'{name}' is not an address family (AF_UNIX, AF_INET, ...)"))?;
            set.push(*af);
        }
        // systemd: the first assignment says whether this is an allow or a
        // deny list; later ones of the other kind take from it.
        self.families = Some(match (self.families.take(), invert) {
            (None, false) => Families::Allow(set),
            (None, true) => Families::Deny(set),
            (Some(Families::Allow(mut a)), false) => {
                a.extend(set);
                Families::Allow(a)
            }
            (Some(Families::Allow(mut a)), true) => {
                a.retain(|f| !set.contains(f));
                Families::Allow(a)
            }
            (Some(Families::Deny(mut d)), true) => {
                d.extend(set);
                Families::Deny(d)
            }
            (Some(Families::Deny(mut d)), false) => {
                d.retain(|f| !set.contains(f));
                Families::Deny(d)
            }
        });
        if let Some(Families::Allow(v) | Families::Deny(v)) = &mut self.families {
            v.sort_unstable();
            v.dedup();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(lines: &[(&str, &str)]) -> SeccompConfig {
        let mut c = SeccompConfig::default();
        for (k, v) in lines {
            c.apply(k, v).unwrap_or_else(|e| panic!("{k}={v}: {e}"));
        }
        c
    }

    #[test]
    fn booleans_and_architectures() {
        let c = parsed(&[
            ("LockPersonality", "yes"),
            ("RestrictRealtime", "true"),
            ("RestrictSUIDSGID", "on"),
            ("MemoryDenyWriteExecute", "1"),
            ("SystemCallArchitectures", "native"),
        ]);
        assert!(c.lock_personality && c.restrict_realtime && c.restrict_suid_sgid);
        assert!(c.memory_deny_write_execute && c.native_only && c.wants_filter());
        assert!(!parsed(&[("LockPersonality", "no")]).wants_filter());
        let mut c = SeccompConfig::default();
        assert!(c.apply("LockPersonality", "maybe").is_err());
        assert!(c.apply("SystemCallArchitectures", "mips").unwrap_err().contains("mips"));
    }

    #[test]
    fn namespaces_take_yes_no_lists_and_negation() {
        assert_eq!(parsed(&[("RestrictNamespaces", "yes")]).allowed_namespaces, Some(0));
        assert_eq!(parsed(&[("RestrictNamespaces", "no")]).allowed_namespaces, None);
        let net = libc::CLONE_NEWNET as u64;
        let user = libc::CLONE_NEWUSER as u64;
        assert_eq!(parsed(&[("RestrictNamespaces", "net user")]).allowed_namespaces, Some(net | user));
        assert_eq!(parsed(&[("RestrictNamespaces", "~net")]).allowed_namespaces, Some(ALL_NAMESPACES & !net));
        assert_eq!(parsed(&[("RestrictNamespaces", "net"), ("RestrictNamespaces", "")]).allowed_namespaces, None);
        assert!(SeccompConfig::default().apply("RestrictNamespaces", "net bogus").unwrap_err().contains("bogus"));
    }

    #[test]
    fn address_families_take_lists_negation_and_none() {
        let c = parsed(&[("RestrictAddressFamilies", "AF_INET AF_UNIX")]);
        assert_eq!(c.families, Some(Families::Allow(vec![libc::AF_UNIX, libc::AF_INET])));
        let c = parsed(&[("RestrictAddressFamilies", "~AF_PACKET")]);
        assert_eq!(c.families, Some(Families::Deny(vec![libc::AF_PACKET])));
        let c = parsed(&[("RestrictAddressFamilies", "AF_INET AF_INET6"), ("RestrictAddressFamilies", "~AF_INET6")]);
        assert_eq!(c.families, Some(Families::Allow(vec![libc::AF_INET])));
        assert_eq!(parsed(&[("RestrictAddressFamilies", "none")]).families, Some(Families::Allow(vec![])));
        assert!(SeccompConfig::default().apply("RestrictAddressFamilies", "AF_FOO").unwrap_err().contains("AF_FOO"));
    }

    #[test]
    fn bad_values_in_a_file_are_errors_with_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("bad.service"),
            "[Service]\nExecStart=/bin/true\nRestrictNamespaces=net bogus\nRestrictAddressFamilies=AF_FOO\n\
             LockPersonality=perhaps\nSystemCallArchitectures=mips\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("good.service"),
            "[Service]\nExecStart=/bin/true\nRestrictNamespaces=~user\nRestrictAddressFamilies=AF_UNIX\n\
             LockPersonality=yes\nMemoryDenyWriteExecute=yes\nRestrictRealtime=yes\nRestrictSUIDSGID=yes\n\
             SystemCallArchitectures=native\n",
        )
        .unwrap();
        let loaded = super::super::load_dirs(&[dir.path().to_path_buf()]);
        let errors: Vec<String> = loaded
            .diagnostics
            .iter()
            .filter(|d| d.severity == super::super::Severity::Error)
            .map(|d| d.to_string())
            .collect();
        for (line, key) in [
            (3, "RestrictNamespaces=net bogus"),
            (4, "RestrictAddressFamilies=AF_FOO"),
            (5, "LockPersonality=perhaps"),
            (6, "SystemCallArchitectures=mips"),
        ] {
            assert!(errors.iter().any(|e| e.contains(&format!("bad.service:{line}: invalid {key}"))), "{errors:?}");
        }
        let good = loaded.units.iter().find(|u| u.name == "good").expect("good loads");
        let s = &good.service.exec.seccomp;
        assert!(s.lock_personality && s.memory_deny_write_execute && s.restrict_realtime && s.restrict_suid_sgid);
        assert_eq!(s.allowed_namespaces, Some(ALL_NAMESPACES & !(libc::CLONE_NEWUSER as u64)));
    }
}
