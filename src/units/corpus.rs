//! Counting what aikore makes of a set of real unit files (Debian's
//! /lib/systemd/system): every key use, by the support the keys table gives it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::keys::{self, Section, Support};

/// Key uses of a corpus, by support; `by_key` counts each `[Section] Key`.
#[derive(Debug, Default, Clone)]
pub struct KeyUses {
    pub implemented: usize,
    pub meaningless: usize,
    pub not_yet: usize,
    /// Keys aikore does not know (each is an error of `aikore check`).
    pub unknown: usize,
    pub by_key: BTreeMap<String, (usize, &'static str)>,
}

impl KeyUses {
    pub fn total(&self) -> usize {
        self.implemented + self.meaningless + self.not_yet + self.unknown
    }

    /// Implemented key uses as a percentage of all (0 for an empty corpus).
    pub fn implemented_percent(&self) -> f64 {
        if self.total() == 0 {
            0.0
        } else {
            100.0 * self.implemented as f64 / self.total() as f64
        }
    }
}

/// Counts the `Key=` lines of [Unit], [Service] and [Install] in `paths`
/// (`X-` keys and other sections are not systemd's keys and are skipped).
pub fn key_uses(paths: &[PathBuf]) -> std::io::Result<KeyUses> {
    let mut uses = KeyUses::default();
    for path in paths {
        let text = std::fs::read_to_string(path)?;
        let (doc, _) = super::ini::parse(path, &text);
        for entry in &doc.entries {
            let section = match entry.section.as_str() {
                "Unit" => Section::Unit,
                "Service" => Section::Service,
                "Install" => Section::Install,
                _ => continue,
            };
            if entry.key.starts_with("X-") {
                continue;
            }
            let label = match keys::support(section, &entry.key) {
                Some(Support::Implemented) => {
                    uses.implemented += 1;
                    "implemented"
                }
                Some(Support::Meaningless(_)) => {
                    uses.meaningless += 1;
                    "meaningless in a container"
                }
                Some(Support::NotYet(_)) => {
                    uses.not_yet += 1;
                    "not implemented yet"
                }
                None => {
                    uses.unknown += 1;
                    "unknown"
                }
            };
            uses.by_key.entry(format!("[{}] {}", section.name(), entry.key)).or_insert((0, label)).0 += 1;
        }
    }
    Ok(uses)
}
