//! systemd-style word splitting and the command/assignment syntax built on it
//! (ExecStart= and friends, Environment=).
//!
//! `$VAR` and `${VAR}` are NOT expanded here: the text is kept as written, so the
//! supervisor can expand it against the final environment at spawn time.

use super::{ExecCommand, Privilege};

/// Splits a value into words the way systemd does for ExecStart= and
/// Environment=: whitespace separates words, `"..."` and `'...'` group (and may
/// appear mid-word), and backslash escapes work inside and outside quotes.
pub fn split_command_line(s: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word: Vec<u8> = Vec::new();
    // A word exists once anything, even an empty `""`, has been seen.
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                let escaped = chars.next().ok_or("trailing backslash")?;
                unescape(escaped, &mut chars, &mut word)?;
                in_word = true;
            }
            '"' | '\'' if quote == Some(c) => quote = None,
            '"' | '\'' if quote.is_none() => {
                quote = Some(c);
                in_word = true;
            }
            c if quote.is_none() && c.is_whitespace() => {
                if in_word {
                    words.push(finish_word(std::mem::take(&mut word))?);
                    in_word = false;
                }
            }
            c => {
                let mut buf = [0u8; 4];
                word.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                in_word = true;
            }
        }
    }
    if let Some(q) = quote {
        return Err(format!("unterminated {q}quote{q}"));
    }
    if in_word {
        words.push(finish_word(word)?);
    }
    Ok(words)
}

/// Appends the meaning of `\c` to `word`; `\xNN` consumes two more characters.
fn unescape(c: char, chars: &mut std::str::Chars<'_>, word: &mut Vec<u8>) -> Result<(), String> {
    let byte = match c {
        'n' => b'\n',
        't' => b'\t',
        'r' => b'\r',
        'a' => 0x07,
        'b' => 0x08,
        'f' => 0x0c,
        'v' => 0x0b,
        's' => b' ',
        'x' => {
            let hex: String = chars.by_ref().take(2).collect();
            let value = (hex.len() == 2)
                .then(|| u8::from_str_radix(&hex, 16).ok())
                .flatten()
                .ok_or_else(|| format!("invalid escape \\x{hex}: expected two hex digits"))?;
            if value == 0 {
                return Err("\\x00 is not allowed: arguments cannot contain NUL".to_string());
            }
            value
        }
        other => {
            // Any other escaped character stands for itself (\\ \" \' \  \$ ...).
            let mut buf = [0u8; 4];
            word.extend_from_slice(other.encode_utf8(&mut buf).as_bytes());
            return Ok(());
        }
    };
    word.push(byte);
    Ok(())
}

fn finish_word(bytes: Vec<u8>) -> Result<String, String> {
    // \xNN escapes can build invalid UTF-8; argv is kept as String, so refuse it.
    String::from_utf8(bytes).map_err(|_| "\\x escapes produce invalid UTF-8".to_string())
}

/// Parses one ExecStart=-style value. Returns the command plus warnings about
/// prefixes aikore ignores.
pub fn parse_exec_command(value: &str) -> Result<(ExecCommand, Vec<String>), String> {
    let mut words = split_command_line(value)?;
    if words.is_empty() {
        return Err("empty command".to_string());
    }
    let first = words.remove(0);
    let prefix_len = first.find(|c: char| !matches!(c, '-' | '@' | '+' | '!' | ':' | '|')).unwrap_or(first.len());
    let (prefix, exe) = first.split_at(prefix_len);
    let mut warnings = Vec::new();
    let mut command = ExecCommand::default();
    let mut rest = prefix;
    while !rest.is_empty() {
        let token = if rest.starts_with("!!") { "!!" } else { &rest[..1] };
        rest = &rest[token.len()..];
        match token {
            "-" if !command.ignore_failure => command.ignore_failure = true,
            "-" => return Err("the '-' prefix is given twice".to_string()),
            ":" => command.no_expand = true,
            "+" if command.privilege == Privilege::Normal => command.privilege = Privilege::Full,
            "!" if command.privilege == Privilege::Normal => command.privilege = Privilege::NoUser,
            // `!!` acts only on kernels without ambient capabilities (before 4.3), which aikore does not run on.
            "!!" if command.privilege == Privilege::Normal => {}
            "+" | "!" | "!!" => return Err("'+', '!' and '!!' exclude each other".to_string()),
            // systemd 253's `|` (run through the user's shell) is newer than the dialect aikore reads.
            "|" => warnings.push("the '|' command prefix (systemd 253+) is not supported and is ignored".to_string()),
            _ => {}
        }
    }
    if prefix.contains('@') {
        // `@/bin/foo name args`: the process sees `name` as its argv[0].
        if words.is_empty() {
            return Err("the '@' prefix needs an argv[0] word after the executable".to_string());
        }
        command.argv0 = Some(words.remove(0));
    }
    if exe.is_empty() {
        return Err("no executable after the command prefix".to_string());
    }
    if !exe.starts_with('/') && exe.contains('/') {
        return Err(format!("executable '{exe}' must be an absolute path or a bare command name looked up in PATH"));
    }
    let mut argv = Vec::with_capacity(words.len() + 1);
    argv.push(exe.to_string());
    argv.extend(words);
    command.argv = argv;
    Ok((command, warnings))
}

/// Environment variable names aikore accepts: the portable shell alphabet.
pub fn is_valid_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Parses one Environment= value: whitespace-separated `NAME=value` words,
/// each optionally quoted as a whole (`"FOO=a b"`).
pub fn parse_environment(value: &str) -> Result<Vec<(String, String)>, String> {
    split_command_line(value)?
        .into_iter()
        .map(|word| {
            let (name, val) = word.split_once('=').ok_or_else(|| format!("'{word}' is not a NAME=value assignment"))?;
            if !is_valid_env_name(name) {
                return Err(format!("'{name}' is not a valid environment variable name"));
            }
            Ok((name.to_string(), val.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn split(s: &str) -> Vec<String> {
        split_command_line(s).expect("valid")
    }

    #[test]
    fn plain_words() {
        assert_eq!(split("  /bin/echo  hello   world "), ["/bin/echo", "hello", "world"]);
        assert!(split("").is_empty());
        assert!(split("   ").is_empty());
    }

    #[test]
    fn quotes() {
        assert_eq!(split(r#"echo "a b" 'c d'"#), ["echo", "a b", "c d"]);
        assert_eq!(split(r#"a"b c"d"#), ["ab cd"]);
        assert_eq!(split(r#""" ''"#), ["", ""]);
        assert_eq!(split(r#""it's""#), ["it's"]);
        assert_eq!(split(r#"'say "hi"'"#), [r#"say "hi""#]);
    }

    #[test]
    fn escapes() {
        assert_eq!(split(r"a\nb"), ["a\nb"]);
        assert_eq!(split(r"a\tb"), ["a\tb"]);
        assert_eq!(split(r"a\\b"), [r"a\b"]);
        assert_eq!(split(r#"\"q\""#), [r#""q""#]);
        assert_eq!(split(r"\'q\'"), ["'q'"]);
        assert_eq!(split(r"\x41\x42"), ["AB"]);
        assert_eq!(split(r"a\ b"), ["a b"]);
        assert_eq!(split(r"\$HOME"), ["$HOME"]);
        assert_eq!(split(r#""in \"quotes\"""#), [r#"in "quotes""#]);
        assert_eq!(split(r"\xc3\xa9"), ["é"]);
    }

    #[test]
    fn variables_are_not_expanded() {
        assert_eq!(split("echo $HOME ${USER}"), ["echo", "$HOME", "${USER}"]);
    }

    #[test]
    fn errors() {
        for bad in [r#""open"#, "'open", r"trailing\", r"\x4", r"\xZZ", r"\x00", r"\xff"] {
            assert!(split_command_line(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn exec_prefixes() {
        let (cmd, warnings) = parse_exec_command("-/bin/true x").expect("valid");
        assert!(cmd.ignore_failure);
        assert_eq!(cmd.argv, ["/bin/true", "x"]);
        assert!(warnings.is_empty());

        let (cmd, warnings) = parse_exec_command("+-/bin/true").expect("valid");
        assert!(cmd.ignore_failure);
        assert_eq!(cmd.privilege, Privilege::Full);
        assert!(warnings.is_empty());

        let (cmd, warnings) = parse_exec_command("!!python3 app.py").expect("valid");
        assert!(!cmd.ignore_failure);
        assert_eq!((cmd.argv, cmd.privilege), (vec!["python3".to_string(), "app.py".to_string()], Privilege::Normal));
        assert_eq!(parse_exec_command("!/bin/true").expect("valid").0.privilege, Privilege::NoUser);
        assert!(warnings.is_empty());

        let (cmd, warnings) = parse_exec_command("@/bin/sh mysh -c true").expect("valid");
        assert_eq!(cmd.argv, ["/bin/sh", "-c", "true"]);
        assert_eq!(cmd.argv0.as_deref(), Some("mysh"));
        assert!(warnings.is_empty());

        let (cmd, _) = parse_exec_command(":-/bin/echo $HOME").expect("valid");
        assert!(cmd.no_expand && cmd.ignore_failure);
        assert_eq!(parse_exec_command("|/bin/true").expect("valid").1.len(), 1, "'|' is newer than systemd 252");
        assert!(parse_exec_command("+!/bin/true").is_err());
    }

    #[test]
    fn exec_errors() {
        for bad in ["", "-", "./run.sh", "bin/run", "@/bin/sh", "--/bin/true", "\"/bin/x", "!+/bin/x"] {
            assert!(parse_exec_command(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn environment() {
        assert_eq!(
            parse_environment(r#"A=1 "B=two words" C= D=x=y"#).expect("valid"),
            [
                ("A".to_string(), "1".to_string()),
                ("B".to_string(), "two words".to_string()),
                ("C".to_string(), String::new()),
                ("D".to_string(), "x=y".to_string()),
            ]
        );
        for bad in ["NOEQUALS", "1A=x", "A-B=x", "=x", "\"A=unterminated"] {
            assert!(parse_environment(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    /// Quotes a word so that split_command_line gives it back unchanged.
    fn quote_word(word: &str) -> String {
        let mut out = String::from("\"");
        for c in word.chars() {
            if matches!(c, '"' | '\\') {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('"');
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn never_panics(s in "\\PC*") {
            let _ = split_command_line(&s);
            let _ = parse_exec_command(&s);
            let _ = parse_environment(&s);
        }

        #[test]
        fn never_panics_on_escape_soup(s in "[\\\\\"' ax0-9fn-]{0,40}") {
            let _ = split_command_line(&s);
            let _ = parse_exec_command(&s);
        }

        #[test]
        fn quoted_words_round_trip(words in proptest::collection::vec("\\PC*", 0..8)) {
            let line = words.iter().map(|w| quote_word(w)).collect::<Vec<_>>().join(" ");
            prop_assert_eq!(split_command_line(&line), Ok(words));
        }
    }
}
