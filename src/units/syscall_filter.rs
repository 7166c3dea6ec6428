//! `SystemCallFilter=`, `SystemCallErrorNumber=` and `SystemCallLog=` of
//! systemd.exec(5): names and `@sets` resolved to this architecture's call
//! numbers (units/syscall_table.rs), lines combined as systemd combines
//! them. `supervisor::seccomp` turns the result into BPF.

use std::collections::{BTreeMap, BTreeSet};

use super::syscall_table::{GROUPS, NUMBERS};

/// What a refused call gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The process dies of SIGSYS (SECCOMP_RET_KILL_PROCESS).
    Kill,
    /// The call returns -1 with this errno, without running.
    Errno(u16),
}

/// `SystemCallFilter=` on this architecture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallFilter {
    /// Only these calls run (`@default` always among them); any other gets
    /// `SystemCallErrorNumber=`'s action.
    Allow(BTreeSet<i64>),
    /// These are refused, each with its own `:errno` action or (None)
    /// `SystemCallErrorNumber=`'s; `@default` calls never are.
    Deny(BTreeMap<i64, Option<Action>>),
}

/// `SystemCallLog=`: which calls are logged (SECCOMP_RET_LOG).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallLog {
    Only(BTreeSet<i64>),
    /// A `~` list: every call but these.
    AllBut(BTreeSet<i64>),
}

/// The number of `name` on this architecture.
fn number(name: &str) -> Option<i64> {
    NUMBERS.binary_search_by(|(n, _)| n.cmp(&name)).ok().map(|i| NUMBERS[i].1)
}

fn group(name: &str) -> Option<&'static super::syscall_table::Group> {
    GROUPS.iter().find(|g| g.name == name)
}

/// Whether systemd knows `name` as a system call on some architecture.
fn known(name: &str) -> bool {
    number(name).is_some() || GROUPS.iter().any(|g| g.members.split_whitespace().any(|m| m == name))
}

/// The numbers of a name or `@set` on this architecture. A name systemd
/// knows that this architecture lacks resolves to nothing, as in systemd.
fn resolve(token: &str, out: &mut BTreeSet<i64>) -> Result<(), String> {
    if token.starts_with('@') {
        let g = group(token).ok_or_else(|| {
            let names: Vec<&str> = GROUPS.iter().map(|g| g.name).collect();
            format!("'{token}' is not a system call set (one of {})", names.join(" "))
        })?;
        for member in g.members.split_whitespace() {
            resolve(member, out)?;
        }
        return Ok(());
    }
    match number(token) {
        Some(nr) => {
            out.insert(nr);
            Ok(())
        }
        None if known(token) => Ok(()),
        None => Err(format!("'{token}' is not a system call (systemd-analyze syscall-filter lists them)")),
    }
}

/// Calls `@default` holds, which every filter lets through.
pub fn default_calls() -> BTreeSet<i64> {
    let mut set = BTreeSet::new();
    // The table's own set: it resolves.
    let _ = resolve("@default", &mut set);
    set
}

/// Errno names of Linux (errno(3)) and their numbers.
const ERRNOS: &[(&str, i32)] = &[
    ("EPERM", libc::EPERM),
    ("ENOENT", libc::ENOENT),
    ("ESRCH", libc::ESRCH),
    ("EINTR", libc::EINTR),
    ("EIO", libc::EIO),
    ("ENXIO", libc::ENXIO),
    ("E2BIG", libc::E2BIG),
    ("ENOEXEC", libc::ENOEXEC),
    ("EBADF", libc::EBADF),
    ("ECHILD", libc::ECHILD),
    ("EAGAIN", libc::EAGAIN),
    ("ENOMEM", libc::ENOMEM),
    ("EACCES", libc::EACCES),
    ("EFAULT", libc::EFAULT),
    ("ENOTBLK", libc::ENOTBLK),
    ("EBUSY", libc::EBUSY),
    ("EEXIST", libc::EEXIST),
    ("EXDEV", libc::EXDEV),
    ("ENODEV", libc::ENODEV),
    ("ENOTDIR", libc::ENOTDIR),
    ("EISDIR", libc::EISDIR),
    ("EINVAL", libc::EINVAL),
    ("ENFILE", libc::ENFILE),
    ("EMFILE", libc::EMFILE),
    ("ENOTTY", libc::ENOTTY),
    ("ETXTBSY", libc::ETXTBSY),
    ("EFBIG", libc::EFBIG),
    ("ENOSPC", libc::ENOSPC),
    ("ESPIPE", libc::ESPIPE),
    ("EROFS", libc::EROFS),
    ("EMLINK", libc::EMLINK),
    ("EPIPE", libc::EPIPE),
    ("EDOM", libc::EDOM),
    ("ERANGE", libc::ERANGE),
    ("EDEADLK", libc::EDEADLK),
    ("ENAMETOOLONG", libc::ENAMETOOLONG),
    ("ENOLCK", libc::ENOLCK),
    ("ENOSYS", libc::ENOSYS),
    ("ENOTEMPTY", libc::ENOTEMPTY),
    ("ELOOP", libc::ELOOP),
    ("EWOULDBLOCK", libc::EWOULDBLOCK),
    ("ENOMSG", libc::ENOMSG),
    ("EIDRM", libc::EIDRM),
    ("ECHRNG", libc::ECHRNG),
    ("EL2NSYNC", libc::EL2NSYNC),
    ("EL3HLT", libc::EL3HLT),
    ("EL3RST", libc::EL3RST),
    ("ELNRNG", libc::ELNRNG),
    ("EUNATCH", libc::EUNATCH),
    ("ENOCSI", libc::ENOCSI),
    ("EL2HLT", libc::EL2HLT),
    ("EBADE", libc::EBADE),
    ("EBADR", libc::EBADR),
    ("EXFULL", libc::EXFULL),
    ("ENOANO", libc::ENOANO),
    ("EBADRQC", libc::EBADRQC),
    ("EBADSLT", libc::EBADSLT),
    ("EDEADLOCK", libc::EDEADLOCK),
    ("EBFONT", libc::EBFONT),
    ("ENOSTR", libc::ENOSTR),
    ("ENODATA", libc::ENODATA),
    ("ETIME", libc::ETIME),
    ("ENOSR", libc::ENOSR),
    ("ENONET", libc::ENONET),
    ("ENOPKG", libc::ENOPKG),
    ("EREMOTE", libc::EREMOTE),
    ("ENOLINK", libc::ENOLINK),
    ("EADV", libc::EADV),
    ("ESRMNT", libc::ESRMNT),
    ("ECOMM", libc::ECOMM),
    ("EPROTO", libc::EPROTO),
    ("EMULTIHOP", libc::EMULTIHOP),
    ("EDOTDOT", libc::EDOTDOT),
    ("EBADMSG", libc::EBADMSG),
    ("EOVERFLOW", libc::EOVERFLOW),
    ("ENOTUNIQ", libc::ENOTUNIQ),
    ("EBADFD", libc::EBADFD),
    ("EREMCHG", libc::EREMCHG),
    ("ELIBACC", libc::ELIBACC),
    ("ELIBBAD", libc::ELIBBAD),
    ("ELIBSCN", libc::ELIBSCN),
    ("ELIBMAX", libc::ELIBMAX),
    ("ELIBEXEC", libc::ELIBEXEC),
    ("EILSEQ", libc::EILSEQ),
    ("ERESTART", libc::ERESTART),
    ("ESTRPIPE", libc::ESTRPIPE),
    ("EUSERS", libc::EUSERS),
    ("ENOTSOCK", libc::ENOTSOCK),
    ("EDESTADDRREQ", libc::EDESTADDRREQ),
    ("EMSGSIZE", libc::EMSGSIZE),
    ("EPROTOTYPE", libc::EPROTOTYPE),
    ("ENOPROTOOPT", libc::ENOPROTOOPT),
    ("EPROTONOSUPPORT", libc::EPROTONOSUPPORT),
    ("ESOCKTNOSUPPORT", libc::ESOCKTNOSUPPORT),
    ("EOPNOTSUPP", libc::EOPNOTSUPP),
    ("ENOTSUP", libc::ENOTSUP),
    ("EPFNOSUPPORT", libc::EPFNOSUPPORT),
    ("EAFNOSUPPORT", libc::EAFNOSUPPORT),
    ("EADDRINUSE", libc::EADDRINUSE),
    ("EADDRNOTAVAIL", libc::EADDRNOTAVAIL),
    ("ENETDOWN", libc::ENETDOWN),
    ("ENETUNREACH", libc::ENETUNREACH),
    ("ENETRESET", libc::ENETRESET),
    ("ECONNABORTED", libc::ECONNABORTED),
    ("ECONNRESET", libc::ECONNRESET),
    ("ENOBUFS", libc::ENOBUFS),
    ("EISCONN", libc::EISCONN),
    ("ENOTCONN", libc::ENOTCONN),
    ("ESHUTDOWN", libc::ESHUTDOWN),
    ("ETOOMANYREFS", libc::ETOOMANYREFS),
    ("ETIMEDOUT", libc::ETIMEDOUT),
    ("ECONNREFUSED", libc::ECONNREFUSED),
    ("EHOSTDOWN", libc::EHOSTDOWN),
    ("EHOSTUNREACH", libc::EHOSTUNREACH),
    ("EALREADY", libc::EALREADY),
    ("EINPROGRESS", libc::EINPROGRESS),
    ("ESTALE", libc::ESTALE),
    ("EUCLEAN", libc::EUCLEAN),
    ("ENOTNAM", libc::ENOTNAM),
    ("ENAVAIL", libc::ENAVAIL),
    ("EISNAM", libc::EISNAM),
    ("EREMOTEIO", libc::EREMOTEIO),
    ("EDQUOT", libc::EDQUOT),
    ("ENOMEDIUM", libc::ENOMEDIUM),
    ("EMEDIUMTYPE", libc::EMEDIUMTYPE),
    ("ECANCELED", libc::ECANCELED),
    ("ENOKEY", libc::ENOKEY),
    ("EKEYEXPIRED", libc::EKEYEXPIRED),
    ("EKEYREVOKED", libc::EKEYREVOKED),
    ("EKEYREJECTED", libc::EKEYREJECTED),
    ("EOWNERDEAD", libc::EOWNERDEAD),
    ("ENOTRECOVERABLE", libc::ENOTRECOVERABLE),
    ("ERFKILL", libc::ERFKILL),
    ("EHWPOISON", libc::EHWPOISON),
];

/// An errno name or number in `lowest..=4095` (seccomp's errno field holds
/// up to 4095, as systemd says).
fn parse_errno(s: &str, lowest: u16) -> Result<u16, String> {
    if let Some(&(_, n)) = ERRNOS.iter().find(|(name, _)| *name == s) {
        return Ok(n as u16);
    }
    match s.parse::<u16>() {
        Ok(n) if (lowest..=4095).contains(&n) => Ok(n),
        _ => Err(format!("'{s}' is not an errno name (EPERM, EACCES, ...) or a number {lowest}..4095")),
    }
}

/// `SystemCallErrorNumber=`: None is `kill` (and systemd's default).
pub fn parse_error_number(value: &str) -> Result<Option<u16>, String> {
    match value {
        "" | "kill" => Ok(None),
        v => parse_errno(v, 1).map(Some),
    }
}

/// Splits a `~` list: (inverted, tokens).
fn split_list(value: &str) -> (bool, std::str::SplitWhitespace<'_>) {
    match value.strip_prefix('~') {
        Some(rest) => (true, rest.split_whitespace()),
        None => (false, value.split_whitespace()),
    }
}

/// Applies one `SystemCallFilter=` line to `filter`; returns warnings.
pub fn apply_filter(filter: &mut Option<CallFilter>, value: &str) -> Result<Vec<String>, String> {
    if value.is_empty() {
        *filter = None;
        return Ok(Vec::new());
    }
    let (deny, tokens) = split_list(value);
    let always = default_calls();
    let mut warnings = Vec::new();
    // Resolve every entry first: a bad one leaves the filter as it was.
    let mut entries = Vec::new();
    for token in tokens {
        let (name, errno) = match token.split_once(':') {
            Some((name, e)) => (name, Some(if e == "kill" { Action::Kill } else { Action::Errno(parse_errno(e, 0)?) })),
            None => (token, None),
        };
        let mut calls = BTreeSet::new();
        resolve(name, &mut calls)?;
        if errno.is_some() && !deny {
            warnings.push(format!("'{token}': an allowed call takes no error number; ':' part ignored, as in systemd"));
        }
        if deny && !name.starts_with('@') && calls.iter().any(|c| always.contains(c)) {
            warnings.push(format!(
                "'{name}' is in @default, which aikore always allows (the unit's own exec needs it); not denied"
            ));
        }
        entries.push((calls, errno));
    }
    // systemd: the first line says allow or deny list; later lines of the
    // same kind add to it, of the other kind take from it.
    let current = filter.get_or_insert_with(|| {
        if deny {
            CallFilter::Deny(BTreeMap::new())
        } else {
            CallFilter::Allow(always.clone())
        }
    });
    for (calls, errno) in entries {
        match current {
            CallFilter::Allow(set) if deny => set.retain(|c| !calls.contains(c) || always.contains(c)),
            CallFilter::Allow(set) => set.extend(calls),
            CallFilter::Deny(map) if deny => {
                for c in calls.into_iter().filter(|c| !always.contains(c)) {
                    map.insert(c, errno);
                }
            }
            CallFilter::Deny(map) => map.retain(|c, _| !calls.contains(c)),
        }
    }
    Ok(warnings)
}

/// Applies one `SystemCallLog=` line to `log`.
pub fn apply_log(log: &mut Option<CallLog>, value: &str) -> Result<(), String> {
    if value.is_empty() {
        *log = None;
        return Ok(());
    }
    let (invert, tokens) = split_list(value);
    let mut calls = BTreeSet::new();
    for token in tokens {
        resolve(token, &mut calls)?;
    }
    // Combined as SystemCallFilter= lines are: the first says which kind.
    match log
        .get_or_insert_with(|| if invert { CallLog::AllBut(BTreeSet::new()) } else { CallLog::Only(BTreeSet::new()) })
    {
        CallLog::Only(set) if invert => set.retain(|c| !calls.contains(c)),
        CallLog::AllBut(set) if !invert => set.retain(|c| !calls.contains(c)),
        CallLog::Only(set) | CallLog::AllBut(set) => set.extend(calls),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nr(name: &str) -> i64 {
        number(name).unwrap_or_else(|| panic!("{name} has no number here"))
    }

    fn filter(lines: &[&str]) -> CallFilter {
        let mut f = None;
        for l in lines {
            apply_filter(&mut f, l).unwrap_or_else(|e| panic!("{l}: {e}"));
        }
        f.expect("a filter")
    }

    #[test]
    fn every_set_resolves_and_the_tables_are_sorted() {
        for g in GROUPS {
            let mut set = BTreeSet::new();
            resolve(g.name, &mut set).unwrap_or_else(|e| panic!("{}: {e}", g.name));
            assert!(!set.is_empty(), "{} is empty here", g.name);
        }
        assert!(NUMBERS.windows(2).all(|w| w[0].0 < w[1].0), "NUMBERS must be sorted by name");
        // Every number here is a name systemd knows, or newer than its table.
        let mut known = BTreeSet::new();
        resolve("@known", &mut known).unwrap();
        let unknown: Vec<&str> = NUMBERS.iter().filter(|(_, n)| !known.contains(n)).map(|(s, _)| *s).collect();
        assert!(unknown.len() < 10, "{unknown:?}");
    }

    #[test]
    fn sets_hold_what_systemd_documents() {
        let mut mount = BTreeSet::new();
        resolve("@mount", &mut mount).unwrap();
        assert!(mount.contains(&nr("mount")) && mount.contains(&nr("umount2")) && mount.contains(&nr("chroot")));
        let mut service = BTreeSet::new();
        resolve("@system-service", &mut service).unwrap();
        for inside in ["read", "openat", "clone", "execve", "socket", "setuid", "epoll_pwait"] {
            assert!(service.contains(&nr(inside)), "{inside}");
        }
        for outside in ["reboot", "swapon", "init_module", "mount", "ptrace", "settimeofday"] {
            assert!(!service.contains(&nr(outside)), "{outside}");
        }
        let mut privileged = BTreeSet::new();
        resolve("@privileged", &mut privileged).unwrap();
        assert!(privileged.contains(&nr("fchownat")) && privileged.contains(&nr("reboot")));
    }

    #[test]
    fn allow_and_deny_lines_combine_as_in_systemd() {
        // Allow list first: @default joins; a ~ line takes away.
        let CallFilter::Allow(set) = filter(&["read write", "~write"]) else { panic!() };
        assert!(set.contains(&nr("read")) && !set.contains(&nr("write")));
        assert!(set.contains(&nr("execve")) && set.contains(&nr("exit_group")), "@default is implied");
        // Deny list first: a plain line takes away; :errno per entry.
        let CallFilter::Deny(map) = filter(&["~@mount @swap:ENOSYS", "umount2", "~reboot:kill"]) else { panic!() };
        assert_eq!(map.get(&nr("mount")), Some(&None));
        assert_eq!(map.get(&nr("swapon")), Some(&Some(Action::Errno(libc::ENOSYS as u16))));
        assert_eq!(map.get(&nr("reboot")), Some(&Some(Action::Kill)));
        assert!(!map.contains_key(&nr("umount2")));
        // "~ @privileged": the space after ~ is allowed (Debian's redis unit).
        let CallFilter::Allow(set) = filter(&["@system-service", "~ @privileged @resources"]) else { panic!() };
        assert!(set.contains(&nr("read")) && !set.contains(&nr("fchownat")) && !set.contains(&nr("setrlimit")));
        // An empty line resets.
        let mut f = Some(filter(&["~@mount"]));
        apply_filter(&mut f, "").unwrap();
        assert_eq!(f, None);
    }

    #[test]
    fn default_calls_stay_allowed_and_typos_are_errors() {
        let mut f = None;
        let w = apply_filter(&mut f, "~execve @mount").unwrap();
        assert!(w.iter().any(|w| w.contains("execve")), "{w:?}");
        let Some(CallFilter::Deny(map)) = &f else { panic!() };
        assert!(!map.contains_key(&nr("execve")) && map.contains_key(&nr("mount")));
        let w = apply_filter(&mut None, "read:EPERM").unwrap();
        assert!(w[0].contains("no error number"), "{w:?}");
        assert!(apply_filter(&mut None, "@mnt").unwrap_err().contains("'@mnt' is not a system call set"));
        assert!(apply_filter(&mut None, "~mountt").unwrap_err().contains("'mountt' is not a system call"));
        assert!(apply_filter(&mut None, "~mount:EWHAT").unwrap_err().contains("EWHAT"));
        // Names of other architectures are ignored, as systemd does.
        let CallFilter::Allow(set) = filter(&["mmap2 chown32 read"]) else { panic!() };
        assert!(set.contains(&nr("read")));
    }

    #[test]
    fn error_numbers_and_logs() {
        assert_eq!(parse_error_number("EACCES"), Ok(Some(libc::EACCES as u16)));
        assert_eq!(parse_error_number("13"), Ok(Some(13)));
        assert_eq!(parse_error_number("kill"), Ok(None));
        assert_eq!(parse_error_number(""), Ok(None));
        assert!(parse_error_number("0").is_err() && parse_error_number("4096").is_err());
        let mut log = None;
        apply_log(&mut log, "~read write").unwrap();
        apply_log(&mut log, "write").unwrap();
        assert_eq!(log, Some(CallLog::AllBut([nr("read")].into())));
        assert!(apply_log(&mut log, "@nope").is_err());
    }
}
