//! systemd's `%` specifiers in unit-file values (`%i`, `%n`, `%h`, ...),
//! expanded while a `.service` file is resolved, so a template's instances
//! each get their own values. `.instance` files (written by aikore from user
//! input) are never expanded: a `%` there is a `%`.

use std::sync::OnceLock;

use super::name::{unescape, unescaped_path, NameParts};

/// Facts about the service manager (aikore, usually root as PID 1) the
/// specifiers name, gathered once per process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagerFacts {
    pub user: String,
    pub uid: u32,
    pub group: String,
    pub gid: u32,
    pub home: String,
    pub shell: String,
    /// `%t %S %C %L %E`: /run, /var/lib, /var/cache, /var/log, /etc for root;
    /// the XDG dirs for another user, as systemd's user manager has them.
    pub runtime_dir: String,
    pub state_dir: String,
    pub cache_dir: String,
    pub logs_dir: String,
    pub config_dir: String,
    pub hostname: String,
    pub machine_id: String,
    pub boot_id: String,
    pub kernel_release: String,
    pub architecture: String,
}

impl ManagerFacts {
    /// This process's facts (cached: they do not change while aikore runs).
    pub fn current() -> &'static ManagerFacts {
        static FACTS: OnceLock<ManagerFacts> = OnceLock::new();
        FACTS.get_or_init(ManagerFacts::gather)
    }

    fn gather() -> ManagerFacts {
        let uid = nix::unistd::geteuid();
        let gid = nix::unistd::getegid();
        let user = nix::unistd::User::from_uid(uid).ok().flatten();
        let group = nix::unistd::Group::from_gid(gid).ok().flatten();
        let home = user
            .as_ref()
            .map(|u| u.dir.display().to_string())
            .or_else(|| std::env::var("HOME").ok())
            .unwrap_or_else(|| "/".into());
        let env_or =
            |var: &str, default: String| std::env::var(var).ok().filter(|v| v.starts_with('/')).unwrap_or(default);
        let root = uid.is_root();
        let (runtime_dir, state_dir, cache_dir, logs_dir, config_dir) = if root {
            ("/run".into(), "/var/lib".into(), "/var/cache".into(), "/var/log".into(), "/etc".into())
        } else {
            let state = env_or("XDG_STATE_HOME", format!("{home}/.local/state"));
            (
                env_or("XDG_RUNTIME_DIR", format!("/run/user/{uid}")),
                state.clone(),
                env_or("XDG_CACHE_HOME", format!("{home}/.cache")),
                format!("{state}/log"),
                env_or("XDG_CONFIG_HOME", format!("{home}/.config")),
            )
        };
        let read = |path: &str| std::fs::read_to_string(path).map(|s| s.trim().to_string()).unwrap_or_default();
        let uname = nix::sys::utsname::uname().ok();
        ManagerFacts {
            user: user.as_ref().map(|u| u.name.clone()).unwrap_or_else(|| uid.to_string()),
            uid: uid.as_raw(),
            group: group.map(|g| g.name).unwrap_or_else(|| gid.to_string()),
            gid: gid.as_raw(),
            shell: user.as_ref().map(|u| u.shell.display().to_string()).unwrap_or_else(|| "/bin/sh".into()),
            home,
            runtime_dir,
            state_dir,
            cache_dir,
            logs_dir,
            config_dir,
            hostname: nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_default(),
            machine_id: read("/etc/machine-id"),
            boot_id: read("/proc/sys/kernel/random/boot_id").replace('-', ""),
            kernel_release: uname.as_ref().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default(),
            architecture: std::env::consts::ARCH.replace('_', "-"),
        }
    }
}

/// What `%` expands to for one unit.
#[derive(Debug, Clone)]
pub struct Specifiers<'a> {
    pub name: NameParts,
    pub facts: &'a ManagerFacts,
}

impl Specifiers<'_> {
    pub fn for_unit(name: &str) -> Specifiers<'static> {
        Specifiers { name: NameParts::of(name), facts: ManagerFacts::current() }
    }

    /// `value` with every specifier replaced; an unknown one (`%q`) is an
    /// error and a stray `%` at the very end is kept (`CPUQuota=50%`), as in
    /// systemd's `specifier_printf`.
    pub fn expand(&self, value: &str) -> Result<String, String> {
        self.expand_with(value, false)
    }

    /// [`Specifiers::expand`] for a value that is split and unescaped later
    /// (ExecStart=, Environment=): a `\` a specifier brings in (`%i` of
    /// `fsck@dev-disk-by\x2duuid`) is doubled so it arrives as written, as
    /// systemd expands specifiers after unquoting.
    pub fn expand_quoted(&self, value: &str) -> Result<String, String> {
        self.expand_with(value, true)
    }

    fn expand_with(&self, value: &str, escape: bool) -> Result<String, String> {
        if !value.contains('%') {
            return Ok(value.to_string());
        }
        let mut out = String::with_capacity(value.len());
        let mut chars = value.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                out.push(c);
                continue;
            }
            let Some(spec) = chars.next() else {
                out.push('%');
                break;
            };
            let expanded = self.one(spec).ok_or_else(|| {
                format!("unknown specifier %{spec} (write %% for a literal %; docs/units.md lists the specifiers)")
            })?;
            if escape {
                out.push_str(&expanded.replace('\\', "\\\\"));
            } else {
                out.push_str(&expanded);
            }
        }
        Ok(out)
    }

    fn one(&self, spec: char) -> Option<String> {
        let n = &self.name;
        let f = self.facts;
        Some(match spec {
            '%' => "%".into(),
            'n' => format!("{}.service", n.full),
            'N' => n.full.clone(),
            'p' => n.prefix.clone(),
            'P' => unescape(&n.prefix),
            'i' => n.instance.clone(),
            'I' => unescape(&n.instance),
            'f' => unescaped_path(n),
            'j' => n.prefix.rsplit('-').next().unwrap_or_default().to_string(),
            'J' => unescape(n.prefix.rsplit('-').next().unwrap_or_default()),
            'u' => f.user.clone(),
            'U' => f.uid.to_string(),
            'g' => f.group.clone(),
            'G' => f.gid.to_string(),
            'h' => f.home.clone(),
            's' => f.shell.clone(),
            't' => f.runtime_dir.clone(),
            'S' => f.state_dir.clone(),
            'C' => f.cache_dir.clone(),
            'L' => f.logs_dir.clone(),
            'E' => f.config_dir.clone(),
            'T' => std::env::temp_dir().display().to_string(),
            'V' => "/var/tmp".into(),
            'H' => f.hostname.clone(),
            'l' => f.hostname.split('.').next().unwrap_or_default().to_string(),
            'm' => f.machine_id.clone(),
            'b' => f.boot_id.clone(),
            'v' => f.kernel_release.clone(),
            'a' => f.architecture.clone(),
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> ManagerFacts {
        ManagerFacts {
            user: "root".into(),
            uid: 0,
            group: "root".into(),
            gid: 0,
            home: "/root".into(),
            shell: "/bin/bash".into(),
            runtime_dir: "/run".into(),
            state_dir: "/var/lib".into(),
            cache_dir: "/var/cache".into(),
            logs_dir: "/var/log".into(),
            config_dir: "/etc".into(),
            hostname: "box.example".into(),
            machine_id: "m".into(),
            boot_id: "b".into(),
            kernel_release: "6.1".into(),
            architecture: "x86-64".into(),
        }
    }

    #[test]
    fn every_specifier_of_the_issue() {
        let f = facts();
        let s = Specifiers { name: NameParts::of("echo@a\\x2db-c"), facts: &f };
        let cases = [
            ("%i", "a\\x2db-c"),
            ("%I", "a-b/c"),
            ("%n", "echo@a\\x2db-c.service"),
            ("%N", "echo@a\\x2db-c"),
            ("%p", "echo"),
            ("%P", "echo"),
            ("%u", "root"),
            ("%U", "0"),
            ("%h", "/root"),
            ("%t", "/run"),
            ("%S", "/var/lib"),
            ("%C", "/var/cache"),
            ("%L", "/var/log"),
            ("%%", "%"),
            ("%f", "/a-b/c"),
            ("%l", "box"),
            ("x=%i;%%i", "x=a\\x2db-c;%i"),
        ];
        for (v, want) in cases {
            assert_eq!(s.expand(v).as_deref(), Ok(want), "{v}");
        }
        // For ExecStart=: the backslash survives the unescaping that follows.
        assert_eq!(s.expand_quoted("%i").as_deref(), Ok("a\\\\x2db-c"));
        let argv = crate::units::split_command_line(&s.expand_quoted("/bin/echo %i").unwrap()).unwrap();
        assert_eq!(argv, ["/bin/echo", "a\\x2db-c"]);
    }

    #[test]
    fn outside_a_template_the_instance_is_empty() {
        let f = facts();
        let s = Specifiers { name: NameParts::of("nginx"), facts: &f };
        assert_eq!(s.expand("[%i] %p %n").as_deref(), Ok("[] nginx nginx.service"));
    }

    #[test]
    fn unknown_is_an_error_and_a_trailing_percent_is_kept() {
        let f = facts();
        let s = Specifiers { name: NameParts::of("x"), facts: &f };
        assert!(s.expand("date +%q").unwrap_err().contains("%q"));
        // CPUQuota=50% is what every systemd unit writes.
        assert_eq!(s.expand("100%").as_deref(), Ok("100%"));
        assert_eq!(s.expand("no specifiers").as_deref(), Ok("no specifiers"));
    }

    #[test]
    fn the_current_manager_is_this_process() {
        let f = ManagerFacts::current();
        assert_eq!(f.uid, nix::unistd::geteuid().as_raw());
        if f.uid == 0 {
            assert_eq!(f.runtime_dir, "/run");
            assert_eq!(f.user, "root");
        }
    }
}
