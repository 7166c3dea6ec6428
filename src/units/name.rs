//! Unit names: systemd's grammar for services (`NetworkManager`, `getty@tty1`,
//! `dbus-org.freedesktop.login1`), the stricter one for instances (their name
//! becomes a URL segment, an NGINX location and a directory), templates
//! (`getty@`) and systemd's escaping (`\x2d`, `-` for `/`).

/// systemd's UNIT_NAME_MAX is 255 bytes with the suffix; `.service` takes 8.
const MAX_SERVICE_NAME: usize = 255 - ".service".len();

fn valid_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b':' | b'-' | b'_' | b'.' | b'\\')
}

/// Either half of a `prefix@instance` name: systemd's characters, and no
/// leading `.` (a name is also a file name and a cgroup directory: `.`, `..`
/// and hidden files are never units).
fn valid_part(part: &str) -> bool {
    !part.is_empty() && !part.starts_with('.') && part.bytes().all(valid_char)
}

/// A service name (without `.service`) as systemd accepts it: letters of
/// either case, digits, `:-_.\`, and one `@` between a prefix and a non-empty
/// instance. Template names (`getty@`) are not runnable and fail here.
pub fn is_valid_service_name(name: &str) -> bool {
    if name.len() > MAX_SERVICE_NAME {
        return false;
    }
    match name.split_once('@') {
        None => valid_part(name),
        Some((prefix, instance)) => valid_part(prefix) && valid_instance_string(instance),
    }
}

/// The instance part of `prefix@instance`: a prefix's characters (one `@`
/// per name), and a leading `.` is fine (it is not a path component of its own).
fn valid_instance_string(instance: &str) -> bool {
    !instance.is_empty() && instance.bytes().all(valid_char)
}

/// `getty@` for `getty@.service`: the template a name instantiates, or
/// None when `name` is not a template instance.
pub fn template_of(name: &str) -> Option<&str> {
    let at = name.find('@')?;
    (at + 1 < name.len()).then(|| &name[..=at])
}

/// Whether `stem` (file name without `.service`) names a template (`getty@`).
pub fn is_template_name(stem: &str) -> bool {
    stem.strip_suffix('@').is_some_and(|prefix| valid_part(prefix) && !prefix.contains('@'))
}

/// The parts specifiers are made of: `%p` (prefix), `%i` (instance, empty
/// outside templates), `%N` (the whole name without suffix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameParts {
    pub full: String,
    pub prefix: String,
    pub instance: String,
}

impl NameParts {
    pub fn of(name: &str) -> NameParts {
        match name.split_once('@') {
            Some((prefix, instance)) => {
                NameParts { full: name.to_string(), prefix: prefix.to_string(), instance: instance.to_string() }
            }
            None => NameParts { full: name.to_string(), prefix: name.to_string(), instance: String::new() },
        }
    }
}

/// systemd's unescaping of a name part (`%I`, `%P`, `%f`): `-` is `/` and
/// `\xNN` is the byte NN. Invalid UTF-8 from escapes is replaced, not refused.
pub fn unescape(part: &str) -> String {
    let bytes = part.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'-' => {
                out.push(b'/');
                i += 1;
            }
            b'\\' if bytes.get(i + 1) == Some(&b'x') => {
                let hex = bytes.get(i + 2..i + 4).and_then(|h| std::str::from_utf8(h).ok());
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 4;
                    }
                    None => {
                        out.push(b'\\');
                        i += 1;
                    }
                }
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `%f`: `/` plus the unescaped instance, or the unescaped prefix when there is none.
pub fn unescaped_path(parts: &NameParts) -> String {
    let source = if parts.instance.is_empty() { &parts.prefix } else { &parts.instance };
    let path = unescape(source);
    if path.starts_with('/') {
        path
    } else {
        format!("/{path}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemd_names_are_services() {
        for ok in [
            "NetworkManager",
            "dbus-org.freedesktop.login1",
            "getty@tty1",
            "systemd-fsck@dev-disk-by\\x2duuid-1234",
            "rc.local",
            "a:b_c",
            "x@.hidden",
            "nginx",
        ] {
            assert!(is_valid_service_name(ok), "{ok}");
        }
        for bad in ["", ".", "..", ".hidden", "a/b", "a b", "getty@", "@tty1", "a@b@c", "ü", "a\nb", "a%b"] {
            assert!(!is_valid_service_name(bad), "{bad:?}");
        }
        assert!(is_valid_service_name(&"a".repeat(247)));
        assert!(!is_valid_service_name(&"a".repeat(248)));
    }

    #[test]
    fn instance_names_stay_strict() {
        // The instance rule is is_valid_unit_name's: a URL and a path segment.
        for bad in ["NetworkManager", "a.b", "a@b", "a:b"] {
            assert!(!crate::units::is_valid_unit_name(bad), "{bad}");
            assert!(is_valid_service_name(bad), "{bad}");
        }
    }

    #[test]
    fn templates() {
        assert_eq!(template_of("getty@tty1"), Some("getty@"));
        assert_eq!(template_of("getty@"), None);
        assert_eq!(template_of("nginx"), None);
        assert!(is_template_name("getty@"));
        assert!(!is_template_name("getty@tty1"));
        assert!(!is_template_name("@"));
        assert_eq!(NameParts::of("echo@a").instance, "a");
        assert_eq!(NameParts::of("echo@a").prefix, "echo");
        assert_eq!(NameParts::of("nginx").instance, "");
    }

    #[test]
    fn unescaping() {
        assert_eq!(unescape("dev-disk-by\\x2duuid-1234"), "dev/disk/by-uuid/1234");
        assert_eq!(unescape("plain"), "plain");
        assert_eq!(unescape("bad\\xZZ"), "bad\\xZZ");
        assert_eq!(unescaped_path(&NameParts::of("fsck@dev-sda1")), "/dev/sda1");
        assert_eq!(unescaped_path(&NameParts::of("home")), "/home");
    }
}
