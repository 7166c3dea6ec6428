//! `LoadCredential=` and `SetCredential=` (systemd.exec(5), "Credentials"):
//! parsed values. The supervisor writes them into the run's credentials
//! directory (`supervisor::credentials`).

use std::path::PathBuf;

/// Where a credential's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `LoadCredential=ID:PATH`: an absolute path, or a name looked up in the
    /// credential stores (see `supervisor::credentials::STORES`).
    Load(PathBuf),
    /// `SetCredential=ID:VALUE`, C escapes resolved.
    Set(Vec<u8>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    pub id: String,
    pub source: Source,
}

/// systemd's credential name rule: a valid file name, at most 255 bytes.
fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 255 && id != "." && id != ".." && !id.contains('/') && !id.contains('\0')
}

/// Applies `LoadCredential=` or `SetCredential=`; an empty value resets the list.
pub fn apply(list: &mut Vec<Credential>, key: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        list.clear();
        return Ok(());
    }
    let (id, rest) = match value.split_once(':') {
        Some((id, rest)) => (id, Some(rest)),
        None => (value, None),
    };
    if !valid_id(id) {
        return Err(format!("'{id}' is not a credential name (a file name without '/')"));
    }
    let source = match key {
        // `LoadCredential=ID` alone loads the credential named ID from the stores.
        "LoadCredential" => {
            let path = rest.filter(|r| !r.is_empty()).unwrap_or(id);
            if !path.starts_with('/') && (path.contains('/') || path == "." || path == "..") {
                return Err(format!("'{path}' must be an absolute path or a credential name"));
            }
            Source::Load(PathBuf::from(path))
        }
        "SetCredential" => Source::Set(unescape(rest.ok_or("expected ID:VALUE")?)?),
        _ => return Err(format!("{key}= is not a credential key")),
    };
    list.push(Credential { id: id.to_string(), source });
    Ok(())
}

/// C escapes as systemd's cunescape reads them: `\n \t \r \\ \" \' \xNN \0NN`.
fn unescape(s: &str) -> Result<Vec<u8>, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            out.push(b[i]);
            i += 1;
            continue;
        }
        let c = *b.get(i + 1).ok_or("a trailing backslash")?;
        i += 2;
        match c {
            b'n' => out.push(b'\n'),
            b't' => out.push(b'\t'),
            b'r' => out.push(b'\r'),
            b'a' => out.push(7),
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'v' => out.push(11),
            b's' => out.push(b' '),
            b'\\' | b'"' | b'\'' => out.push(c),
            b'x' => {
                let hex = s.get(i..i + 2).ok_or("\\x needs two hex digits")?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| format!("\\x{hex} is not hex"))?);
                i += 2;
            }
            b'0'..=b'7' => {
                let oct = s.get(i - 1..i + 2).ok_or("an octal escape needs three digits")?;
                out.push(u8::from_str_radix(oct, 8).map_err(|_| format!("\\{oct} is not octal"))?);
                i += 2;
            }
            _ => return Err(format!("unknown escape \\{}", c as char)),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_and_set_credentials() {
        let mut l = Vec::new();
        apply(&mut l, "LoadCredential", "tls:/etc/ssl/key.pem").unwrap();
        apply(&mut l, "LoadCredential", "token").unwrap();
        apply(&mut l, "SetCredential", "greeting:hello\\nworld\\x21:x").unwrap();
        assert_eq!(l[0], Credential { id: "tls".into(), source: Source::Load("/etc/ssl/key.pem".into()) });
        assert_eq!(l[1].source, Source::Load("token".into()));
        assert_eq!(l[2].source, Source::Set(b"hello\nworld!:x".to_vec()));
        assert!(apply(&mut l, "LoadCredential", "a/b:/x").is_err());
        assert!(apply(&mut l, "LoadCredential", "a:rel/path").is_err());
        assert!(apply(&mut l, "SetCredential", "novalue").is_err());
        assert!(apply(&mut l, "SetCredential", "x:bad\\q").is_err());
        apply(&mut l, "SetCredential", "").unwrap();
        assert!(l.is_empty());
    }
}
