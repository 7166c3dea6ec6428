//! The cgroup access keys of systemd.resource-control(5) as typed values:
//! `DeviceAllow=`/`DevicePolicy=` (a device allow-list), `IPAddressAllow=`/
//! `IPAddressDeny=`/`IPAccounting=` (an IP firewall and its counters) and `Delegate=` (the
//! unit's cgroup handed to its user). No system calls here: device paths and
//! `char-NAME` classes are resolved at start by `supervisor::cgroup_bpf`,
//! which also builds and attaches the BPF programs.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

/// [Service] keys this module parses.
pub const KEYS: &[&str] =
    &["DeviceAllow", "DevicePolicy", "IPAddressAllow", "IPAddressDeny", "IPAccounting", "Delegate"];

/// `DevicePolicy=`: what a unit may open besides its `DeviceAllow=` list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DevicePolicy {
    /// Every device when the unit has no `DeviceAllow=`; else as `Closed`.
    #[default]
    Auto,
    /// The list plus the pseudo devices (null, zero, full, random, urandom, tty, ptmx, pts).
    Closed,
    /// The list only.
    Strict,
}

/// Read, write and mknod, as the kernel's `BPF_DEVCG_ACC_*` bits.
pub const ACCESS_MKNOD: u8 = 1;
pub const ACCESS_READ: u8 = 2;
pub const ACCESS_WRITE: u8 = 4;
pub const ACCESS_ALL: u8 = ACCESS_MKNOD | ACCESS_READ | ACCESS_WRITE;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    Char,
    Block,
}

/// What a `DeviceAllow=` entry names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceSpec {
    /// A device node under /dev (or /sys); its type and numbers are read at start.
    Path(PathBuf),
    /// `char-NAME` / `block-NAME`: every device of the majors whose name in
    /// /proc/devices matches the glob `NAME` (`*`, `?`).
    Class { kind: DeviceKind, pattern: String },
}

/// One `DeviceAllow=` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRule {
    pub device: DeviceSpec,
    /// [`ACCESS_READ`] | [`ACCESS_WRITE`] | [`ACCESS_MKNOD`].
    pub access: u8,
}

/// An address prefix of `IPAddressAllow=`/`IPAddressDeny=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpPrefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl IpPrefix {
    fn v4(a: [u8; 4], len: u8) -> IpPrefix {
        IpPrefix { addr: IpAddr::V4(Ipv4Addr::from(a)), len }
    }
    fn v6(a: Ipv6Addr, len: u8) -> IpPrefix {
        IpPrefix { addr: IpAddr::V6(a), len }
    }
}

impl std::fmt::Display for IpPrefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// `Delegate=`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Delegate {
    #[default]
    No,
    /// `yes`: every controller aikore's cgroups have.
    All,
    /// The listed controllers (systemd's names).
    Controllers(Vec<String>),
}

/// Controller names `Delegate=` accepts (systemd 252's list; the v1 names
/// and the `bpf-*` pseudo controllers are accepted and mean nothing more on
/// cgroup v2 than what the v2 names give).
pub const DELEGATE_CONTROLLERS: &[&str] = &[
    "cpu",
    "cpuacct",
    "cpuset",
    "io",
    "blkio",
    "memory",
    "devices",
    "pids",
    "bpf-firewall",
    "bpf-devices",
    "bpf-foreign",
    "bpf-socket-bind",
    "bpf-restrict-network-interfaces",
];

/// The keys of this module for one unit.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CgroupAccess {
    pub device_policy: DevicePolicy,
    pub device_allow: Vec<DeviceRule>,
    pub ip_allow: Vec<IpPrefix>,
    pub ip_deny: Vec<IpPrefix>,
    /// `IPAccounting=`: count the bytes and packets that pass, per direction.
    pub ip_accounting: bool,
    pub delegate: Delegate,
}

impl CgroupAccess {
    /// Whether a device program is needed: `auto` without a list lets everything through.
    pub fn filters_devices(&self) -> bool {
        self.device_policy != DevicePolicy::Auto || !self.device_allow.is_empty()
    }

    /// `ProtectClock=yes`, as systemd adds it: `DeviceAllow=char-rtc r` joins a
    /// device policy the unit already has (so the rtc devices may be read,
    /// not written); a unit without one gets none, since an allow list alone
    /// would close every other device.
    pub fn with_protect_clock(&self) -> CgroupAccess {
        let mut access = self.clone();
        if access.filters_devices() {
            access.device_allow.push(DeviceRule {
                device: DeviceSpec::Class { kind: DeviceKind::Char, pattern: "rtc".to_string() },
                access: ACCESS_READ,
            });
        }
        access
    }

    /// Whether an IP program is needed: a deny list (an allow list alone
    /// denies nothing), or counters.
    pub fn filters_ip(&self) -> bool {
        !self.ip_deny.is_empty() || self.ip_accounting
    }

    /// Applies one key of [`KEYS`]; an empty value resets the key, as in systemd.
    pub fn apply(&mut self, key: &str, value: &str) -> Result<(), String> {
        let value = value.trim();
        match key {
            "DevicePolicy" => {
                self.device_policy = match value {
                    "" | "auto" => DevicePolicy::Auto,
                    "closed" => DevicePolicy::Closed,
                    "strict" => DevicePolicy::Strict,
                    _ => return Err("expected auto, closed or strict".to_string()),
                }
            }
            "DeviceAllow" if value.is_empty() => self.device_allow.clear(),
            "DeviceAllow" => self.device_allow.push(parse_device_rule(value)?),
            "IPAddressAllow" | "IPAddressDeny" => {
                let list = if key == "IPAddressAllow" { &mut self.ip_allow } else { &mut self.ip_deny };
                if value.is_empty() {
                    list.clear();
                }
                for word in value.split_whitespace() {
                    list.extend(parse_address(word)?);
                }
            }
            "IPAccounting" => self.ip_accounting = !value.is_empty() && super::resolve::parse_bool(value)?,
            "Delegate" => {
                self.delegate = match value {
                    "" => Delegate::No,
                    v => match super::resolve::parse_bool(v) {
                        Ok(true) => Delegate::All,
                        Ok(false) => Delegate::No,
                        Err(_) => {
                            let mut list = match std::mem::take(&mut self.delegate) {
                                Delegate::Controllers(l) => l,
                                _ => Vec::new(),
                            };
                            for name in v.split_whitespace() {
                                if !DELEGATE_CONTROLLERS.contains(&name) {
                                    return Err(format!(
                                        "unknown controller {name:?}: expected yes, no or a list of {}",
                                        DELEGATE_CONTROLLERS.join(", ")
                                    ));
                                }
                                if !list.iter().any(|c| c == name) {
                                    list.push(name.to_string());
                                }
                            }
                            Delegate::Controllers(list)
                        }
                    },
                }
            }
            _ => return Err(format!("{key}= is not a cgroup access key")),
        }
        Ok(())
    }
}

fn parse_device_rule(value: &str) -> Result<DeviceRule, String> {
    let (name, access) = match value.split_once(char::is_whitespace) {
        Some((n, a)) => (n, a.trim()),
        None => (value, ""),
    };
    let access = if access.is_empty() {
        ACCESS_ALL
    } else {
        let mut bits = 0;
        for c in access.chars() {
            bits |= match c {
                'r' => ACCESS_READ,
                'w' => ACCESS_WRITE,
                'm' => ACCESS_MKNOD,
                _ => return Err(format!("access {access:?}: expected letters of r, w and m")),
            };
        }
        bits
    };
    let device = if let Some(p) = name.strip_prefix("char-") {
        DeviceSpec::Class { kind: DeviceKind::Char, pattern: class_pattern(p)? }
    } else if let Some(p) = name.strip_prefix("block-") {
        DeviceSpec::Class { kind: DeviceKind::Block, pattern: class_pattern(p)? }
    } else if name.starts_with("/dev/") || name.starts_with("/sys/") {
        if name.split('/').any(|c| c == "..") {
            return Err(format!("{name}: '..' is not allowed in a device path"));
        }
        DeviceSpec::Path(PathBuf::from(name))
    } else {
        return Err(format!("{name:?}: expected a path under /dev/ or /sys/, char-NAME or block-NAME"));
    };
    Ok(DeviceRule { device, access })
}

fn class_pattern(p: &str) -> Result<String, String> {
    if p.is_empty() {
        return Err("char- and block- need a device class name from /proc/devices".to_string());
    }
    Ok(p.to_string())
}

/// One word of `IPAddressAllow=`/`IPAddressDeny=`: a symbolic name (several
/// prefixes) or an address with an optional prefix length.
fn parse_address(word: &str) -> Result<Vec<IpPrefix>, String> {
    Ok(match word {
        "any" => vec![IpPrefix::v4([0; 4], 0), IpPrefix::v6(Ipv6Addr::UNSPECIFIED, 0)],
        "localhost" => vec![IpPrefix::v4([127, 0, 0, 0], 8), IpPrefix::v6(Ipv6Addr::LOCALHOST, 128)],
        "link-local" => {
            vec![IpPrefix::v4([169, 254, 0, 0], 16), IpPrefix::v6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 64)]
        }
        "multicast" => {
            vec![IpPrefix::v4([224, 0, 0, 0], 4), IpPrefix::v6(Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8)]
        }
        w => {
            let bad = || format!("{w:?}: expected any, localhost, link-local, multicast or an address[/prefix]");
            let (addr, len) = match w.split_once('/') {
                Some((a, l)) => (a, Some(l)),
                None => (w, None),
            };
            let addr: IpAddr = addr.parse().map_err(|_| bad())?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let len = match len {
                None => max,
                Some(l) => l.parse::<u8>().ok().filter(|l| *l <= max).ok_or_else(bad)?,
            };
            vec![IpPrefix { addr, len }]
        }
    })
}

/// `fnmatch` with `*` and `?`, for `char-NAME` globs against /proc/devices.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    fn go(p: &[char], n: &[char]) -> bool {
        match p.split_first() {
            None => n.is_empty(),
            Some(('*', rest)) => (0..=n.len()).any(|i| go(rest, &n[i..])),
            Some(('?', rest)) => !n.is_empty() && go(rest, &n[1..]),
            Some((c, rest)) => n.first() == Some(c) && go(rest, &n[1..]),
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    go(&p, &n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(pairs: &[(&str, &str)]) -> Result<CgroupAccess, String> {
        let mut a = CgroupAccess::default();
        for (k, v) in pairs {
            a.apply(k, v)?;
        }
        Ok(a)
    }

    #[test]
    fn protect_clock_lets_a_device_policy_read_the_rtc_and_adds_none() {
        let rtc = DeviceRule {
            device: DeviceSpec::Class { kind: DeviceKind::Char, pattern: "rtc".to_string() },
            access: ACCESS_READ,
        };
        let closed = parsed(&[("DevicePolicy", "closed")]).unwrap().with_protect_clock();
        assert_eq!(closed.device_allow, std::slice::from_ref(&rtc));
        let listed = parsed(&[("DeviceAllow", "/dev/null rw")]).unwrap().with_protect_clock();
        assert_eq!(listed.device_allow.last(), Some(&rtc));
        let none = CgroupAccess::default().with_protect_clock();
        assert!(!none.filters_devices(), "no device program where the unit has none");
    }

    #[test]
    fn device_rules_of_debians_units() {
        let a = parsed(&[
            ("DevicePolicy", "closed"),
            ("DeviceAllow", "/dev/null rw"),
            ("DeviceAllow", "char-/dev/console rw"),
            ("DeviceAllow", "block-* r"),
            ("DeviceAllow", "char-rtc"),
        ])
        .unwrap();
        assert_eq!(a.device_policy, DevicePolicy::Closed);
        assert_eq!(
            a.device_allow,
            [
                DeviceRule { device: DeviceSpec::Path("/dev/null".into()), access: ACCESS_READ | ACCESS_WRITE },
                DeviceRule {
                    device: DeviceSpec::Class { kind: DeviceKind::Char, pattern: "/dev/console".into() },
                    access: ACCESS_READ | ACCESS_WRITE
                },
                DeviceRule {
                    device: DeviceSpec::Class { kind: DeviceKind::Block, pattern: "*".into() },
                    access: ACCESS_READ
                },
                DeviceRule {
                    device: DeviceSpec::Class { kind: DeviceKind::Char, pattern: "rtc".into() },
                    access: ACCESS_ALL
                },
            ]
        );
        assert!(a.filters_devices());
        // An empty assignment resets the list; auto without a list filters nothing.
        let a = parsed(&[("DeviceAllow", "/dev/null"), ("DeviceAllow", "")]).unwrap();
        assert!(!a.filters_devices());
        assert!(parsed(&[("DevicePolicy", "strict")]).unwrap().filters_devices());
    }

    #[test]
    fn bad_device_values_are_errors() {
        for (k, v, want) in [
            ("DevicePolicy", "close", "expected auto, closed or strict"),
            ("DeviceAllow", "/dev/null rx", "expected letters of r, w and m"),
            ("DeviceAllow", "null rw", "expected a path under /dev/"),
            ("DeviceAllow", "chr-tty", "expected a path under /dev/"),
            ("DeviceAllow", "char- rw", "need a device class name"),
            ("DeviceAllow", "/dev/../etc/passwd", "'..' is not allowed"),
        ] {
            let err = parsed(&[(k, v)]).unwrap_err();
            assert!(err.contains(want), "{k}={v}: {err}");
        }
    }

    #[test]
    fn addresses_symbolic_and_cidr() {
        let a = parsed(&[("IPAddressDeny", "any"), ("IPAddressAllow", "localhost 10.1.0.0/16 fd00::1")]).unwrap();
        let shown: Vec<String> = a.ip_deny.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["0.0.0.0/0", "::/0"]);
        let shown: Vec<String> = a.ip_allow.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["127.0.0.0/8", "::1/128", "10.1.0.0/16", "fd00::1/128"]);
        assert!(a.filters_ip());
        let a = parsed(&[("IPAddressAllow", "link-local multicast")]).unwrap();
        assert_eq!(a.ip_allow.len(), 4);
        assert!(!a.filters_ip(), "an allow list without a deny list changes nothing");
        let a = parsed(&[("IPAddressDeny", "any"), ("IPAddressDeny", "")]).unwrap();
        assert!(a.ip_deny.is_empty());
        assert!(parsed(&[("IPAccounting", "yes")]).unwrap().filters_ip(), "counters need the program");
        assert!(!parsed(&[("IPAccounting", "yes"), ("IPAccounting", "")]).unwrap().ip_accounting);
        assert!(parsed(&[("IPAccounting", "maybe")]).unwrap_err().contains("expected yes or no"));
        for bad in ["anywhere", "10.0.0.0/33", "::/129", "10.0.0/8", "10.0.0.0/x"] {
            let err = parsed(&[("IPAddressDeny", bad)]).unwrap_err();
            assert!(err.contains("expected any, localhost"), "{bad}: {err}");
        }
    }

    #[test]
    fn delegate_yes_no_and_lists() {
        assert_eq!(parsed(&[("Delegate", "yes")]).unwrap().delegate, Delegate::All);
        assert_eq!(parsed(&[("Delegate", "true"), ("Delegate", "")]).unwrap().delegate, Delegate::No);
        assert_eq!(
            parsed(&[("Delegate", "pids memory"), ("Delegate", "cpu pids")]).unwrap().delegate,
            Delegate::Controllers(vec!["pids".into(), "memory".into(), "cpu".into()])
        );
        let err = parsed(&[("Delegate", "pid")]).unwrap_err();
        assert!(err.contains("unknown controller \"pid\""), "{err}");
    }

    #[test]
    fn globs_match_proc_devices_names() {
        assert!(glob_match("*", "tty"));
        assert!(glob_match("tty*", "ttyS"));
        assert!(glob_match("/dev/console", "/dev/console"));
        assert!(glob_match("rt?", "rtc"));
        assert!(!glob_match("tty", "ttyS"));
        assert!(!glob_match("rtc?", "rtc"));
    }
}
