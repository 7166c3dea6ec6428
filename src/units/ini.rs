//! The raw stage: systemd's INI dialect turned into `(section, key, value,
//! line)` entries. Knows nothing about what keys mean and makes no system calls.

use std::path::Path;

use super::{Diagnostic, Severity};

/// One `Key=Value` assignment, after line continuation and trimming.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub section: String,
    pub key: String,
    pub value: String,
    /// 1-based line where the assignment starts.
    pub line: usize,
}

/// A `[Section]` header, kept so later stages can judge sections with no keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SectionHeader {
    pub name: String,
    pub line: usize,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Document {
    pub sections: Vec<SectionHeader>,
    pub entries: Vec<Entry>,
}

/// Parses `text`; `path` only labels the diagnostics. Malformed lines are
/// reported and skipped so every problem in the file shows up at once.
pub fn parse(path: &Path, text: &str) -> (Document, Vec<Diagnostic>) {
    let mut doc = Document::default();
    let mut diags = Vec::new();
    let mut section: Option<String> = None;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);

    for (start_line, logical) in logical_lines(text) {
        let line = logical.trim();
        if line.starts_with('[') {
            match parse_header(line) {
                Ok(name) => {
                    doc.sections.push(SectionHeader { name: name.to_string(), line: start_line });
                    section = Some(name.to_string());
                }
                Err(msg) => {
                    diags.push(error(path, start_line, msg));
                    // Keys after a broken header would each be blamed on the wrong
                    // section; one error for the header is enough.
                    section = None;
                    doc.sections.push(SectionHeader { name: String::new(), line: start_line });
                }
            }
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            diags.push(error(path, start_line, format!("expected Key=Value, found '{line}'")));
            continue;
        };
        let key = key.trim();
        if key.is_empty() {
            diags.push(error(path, start_line, format!("missing key name before '=' in '{line}'")));
            continue;
        }
        match &section {
            Some(name) => doc.entries.push(Entry {
                section: name.clone(),
                key: key.to_string(),
                value: value.trim().to_string(),
                line: start_line,
            }),
            None if doc.sections.is_empty() => {
                diags.push(error(path, start_line, format!("{key}= appears before any [Section] header")))
            }
            // Inside a malformed section: already reported at its header.
            None => {}
        }
    }
    (doc, diags)
}

/// Joins `\`-continued lines (with a space, as systemd does) and drops blank
/// and comment lines. Yields the starting line number and the joined text.
fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut pending: Option<(usize, String)> = None;
    for (idx, raw) in text.lines().enumerate() {
        let number = idx + 1;
        let line = raw.trim();
        if line.starts_with('#') || line.starts_with(';') {
            // systemd skips comments even in the middle of a continuation.
            continue;
        }
        let continues = ends_with_unescaped_backslash(line);
        let body = if continues { &line[..line.len() - 1] } else { line };
        let (start, mut joined) = match pending.take() {
            Some(p) => p,
            None if line.is_empty() => continue,
            None => (number, String::new()),
        };
        joined.push_str(body);
        if continues {
            joined.push(' ');
            pending = Some((start, joined));
        } else {
            out.push((start, joined));
        }
    }
    if let Some(p) = pending {
        out.push(p);
    }
    out
}

/// `foo\` continues; `foo\\` is an escaped backslash and does not.
fn ends_with_unescaped_backslash(line: &str) -> bool {
    line.bytes().rev().take_while(|b| *b == b'\\').count() % 2 == 1
}

fn parse_header(line: &str) -> Result<&str, String> {
    let inner = line
        .strip_prefix('[')
        .and_then(|l| l.strip_suffix(']'))
        .ok_or_else(|| format!("malformed section header '{line}': expected [Name]"))?;
    if inner.trim().is_empty() || inner.contains(['[', ']']) || inner.trim() != inner {
        return Err(format!("malformed section header '{line}'"));
    }
    Ok(inner)
}

fn error(path: &Path, line: usize, message: String) -> Diagnostic {
    Diagnostic { path: path.to_path_buf(), line, severity: Severity::Error, message }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse_ok(text: &str) -> Document {
        let (doc, diags) = parse(Path::new("t.service"), text);
        assert!(diags.is_empty(), "unexpected diagnostics: {diags:?}");
        doc
    }

    fn entry(section: &str, key: &str, value: &str, line: usize) -> Entry {
        Entry { section: section.into(), key: key.into(), value: value.into(), line }
    }

    #[test]
    fn sections_keys_and_lines() {
        let doc =
            parse_ok("# comment\n[Unit]\nDescription = Hello world \n\n; other\n[Service]\nExecStart=/bin/true\n");
        assert_eq!(
            doc.entries,
            [entry("Unit", "Description", "Hello world", 3), entry("Service", "ExecStart", "/bin/true", 7)]
        );
        assert_eq!(doc.sections.len(), 2);
        assert_eq!(doc.sections[1], SectionHeader { name: "Service".into(), line: 6 });
    }

    #[test]
    fn continuation_joins_with_space() {
        let doc = parse_ok("[Service]\nExecStart=/bin/echo a \\\n   b \\\n# skipped\n  c\nUser=x\n");
        assert_eq!(
            doc.entries,
            [entry("Service", "ExecStart", "/bin/echo a  b  c", 2), entry("Service", "User", "x", 6)]
        );
    }

    #[test]
    fn continuation_at_eof_and_escaped_backslash() {
        let doc = parse_ok("[Service]\nA=x\\\\\nB=y \\");
        assert_eq!(doc.entries, [entry("Service", "A", "x\\\\", 2), entry("Service", "B", "y", 3)]);
    }

    #[test]
    fn value_may_contain_equals_and_be_empty() {
        let doc = parse_ok("[Service]\nEnvironment=A=b=c\nEnvironment=\n");
        assert_eq!(doc.entries[0].value, "A=b=c");
        assert_eq!(doc.entries[1].value, "");
    }

    #[test]
    fn crlf_and_bom() {
        let doc = parse_ok("\u{feff}[Unit]\r\nDescription=x\r\n");
        assert_eq!(doc.entries, [entry("Unit", "Description", "x", 2)]);
    }

    #[test]
    fn errors_carry_lines() {
        let (doc, diags) =
            parse(Path::new("t.service"), "Stray=1\n[Unit]\nno equals here\n=x\n[Broken\nKey=v\n[]\n[Service]\nA=1\n");
        let lines: Vec<usize> = diags.iter().map(|d| d.line).collect();
        assert_eq!(lines, [1, 3, 4, 5, 7]);
        assert!(diags.iter().all(|d| d.severity == Severity::Error));
        assert!(diags[0].message.contains("Stray="));
        assert_eq!(doc.entries, [entry("Service", "A", "1", 9)]);
    }

    fn plausible_line() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("[Service]".to_string()),
            Just("[Unit]".to_string()),
            Just("[Instance]".to_string()),
            Just("[".to_string()),
            Just("".to_string()),
            Just("# c".to_string()),
            "[A-Za-z]{0,12}=[ -~]{0,30}",
            "[A-Za-z]{1,12} *= *[\\\\\"' a-z0-9=]{0,20}\\\\?",
            "\\PC{0,30}",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn never_panics(text in "\\PC*") {
            let _ = parse(Path::new("x.service"), &text);
        }

        #[test]
        fn never_panics_on_plausible_lines(lines in proptest::collection::vec(plausible_line(), 0..20)) {
            let text = lines.join("\n");
            let (doc, _) = parse(Path::new("x.service"), &text);
            for e in doc.entries {
                prop_assert!(e.line >= 1 && e.line <= lines.len());
            }
        }
    }
}
