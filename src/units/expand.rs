//! What a unit file's words and environment files mean at run time:
//! `$NAME`/`${NAME}` expansion in command words and `EnvironmentFile=`'s
//! `KEY=VALUE` lines (unit-file semantics, applied by the spawner).

use super::quote::is_valid_env_name;

/// `KEY=VALUE` lines, `#`/`;` comments, optional `export ` and quotes around the value.
pub fn parse_env_file(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';'))
        .filter_map(|l| {
            let l = l.strip_prefix("export ").unwrap_or(l);
            let (k, v) = l.split_once('=')?;
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|s| s.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')))
                .unwrap_or(v);
            Some((k.trim().to_string(), v.to_string()))
        })
        .collect()
}

/// systemd's `$NAME` / `${NAME}` substitution in command words; `$$` is a
/// literal `$`. Unlike systemd, a name the unit's environment does not define
/// is left as written rather than emptied: an inline `sh -c '... $i ...'`
/// then means what it says, and unit files written for systemd (with `$$i`)
/// still work.
pub fn expand_vars(word: &str, env: &[(String, String)]) -> String {
    let lookup = |name: &str| env.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let mut out = String::with_capacity(word.len());
    let mut rest = word;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
            continue;
        }
        let (name, consumed) = match after.strip_prefix('{') {
            Some(braced) => match braced.find('}') {
                Some(end) => (&braced[..end], end + 2),
                None => ("", 0),
            },
            None => {
                let len = after.bytes().take_while(|b| b.is_ascii_alphanumeric() || *b == b'_').count();
                (&after[..len], len)
            }
        };
        match lookup(name).filter(|_| is_valid_env_name(name)) {
            Some(value) => out.push_str(value),
            None => out.push_str(&rest[at..at + 1 + consumed]),
        }
        rest = &after[consumed..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_like_systemd() {
        let env = vec![("PORT".to_string(), "8188".to_string()), ("A".to_string(), "x".to_string())];
        assert_eq!(expand_vars("--port=${PORT}", &env), "--port=8188");
        assert_eq!(expand_vars("$PORT", &env), "8188");
        assert_eq!(expand_vars("$A-$MISSING.", &env), "x-$MISSING.");
        assert_eq!(expand_vars("${A}${MISSING} $1 $(pwd)", &env), "x${MISSING} $1 $(pwd)");
        assert_eq!(expand_vars("cost $$5", &env), "cost $5");
        assert_eq!(expand_vars("${unterminated", &env), "${unterminated");
    }

    #[test]
    fn env_files_take_comments_export_and_quotes() {
        let parsed = parse_env_file("# c\nexport A=1\nB=\"two words\"\n;x\nC='3'\nbad line\n");
        assert_eq!(parsed, vec![("A".into(), "1".into()), ("B".into(), "two words".into()), ("C".into(), "3".into())]);
    }
}
