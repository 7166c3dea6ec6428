//! An instance's definition as the API sees it, and its `.instance` unit
//! file: rendered from the spec, keeping any other lines a user added by hand.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::units::{InstanceLimits, PortSpec, Unit};

#[derive(Debug, Clone, PartialEq)]
pub struct InstanceSpec {
    pub name: String,
    pub description: String,
    pub blueprint: String,
    pub gpus: Vec<String>,
    pub port: PortSpec,
    pub autostart: bool,
    pub active_slot: Option<String>,
    pub persistent_mode: bool,
    /// Served without login (`Public=`).
    pub public: bool,
    pub stall_after_sec: u64,
    pub output_dir: Option<PathBuf>,
    pub environment: BTreeMap<String, String>,
    /// GPUMemoryMin= and the restart bounds: kept through an API edit.
    pub limits: InstanceLimits,
}

impl InstanceSpec {
    pub fn from_unit(unit: &Unit) -> Option<InstanceSpec> {
        let instance = unit.instance.as_ref()?;
        Some(InstanceSpec {
            name: unit.name.clone(),
            description: unit.description.clone(),
            blueprint: instance.blueprint.clone(),
            gpus: instance.gpus.words(),
            port: instance.port,
            autostart: instance.autostart,
            active_slot: instance.active_slot.clone(),
            persistent_mode: instance.persistent_mode,
            public: instance.public,
            stall_after_sec: instance.stall_after.as_secs(),
            output_dir: instance.output_dir.clone(),
            environment: unit.service.environment.iter().cloned().collect(),
            limits: instance.limits.clone(),
        })
    }

    fn instance_section(&self) -> String {
        let yes_no = |b: bool| if b { "yes" } else { "no" };
        let mut out = String::from("[Instance]\n");
        out += &format!("Blueprint={}\n", self.blueprint);
        out += &format!("GPUs={}\n", self.gpus.join(","));
        out += &match self.port {
            PortSpec::Auto => "Port=auto\n".to_string(),
            PortSpec::Fixed(p) => format!("Port={p}\n"),
        };
        out += &format!("Autostart={}\n", yes_no(self.autostart));
        out += &format!("ActiveSlot={}\n", self.active_slot.as_deref().unwrap_or(""));
        out += &format!("PersistentMode={}\n", yes_no(self.persistent_mode));
        if self.public {
            out += "Public=yes\n";
        }
        out += &format!("StallAfterSec={}s\n", self.stall_after_sec);
        if let Some(dir) = &self.output_dir {
            out += &format!("OutputDir={}\n", dir.display());
        }
        let limits = &self.limits;
        for (key, bytes) in [
            ("GPUMemoryMin", limits.gpu_memory_min),
            ("MemoryRestartAbove", limits.memory_restart_above),
            ("GPUMemoryRestartAbove", limits.gpu_memory_restart_above),
        ] {
            if let Some(bytes) = bytes {
                out += &format!("{key}={bytes}\n");
            }
        }
        if limits.restart_above_window != InstanceLimits::default().restart_above_window {
            out += &format!("RestartAboveSec={}s\n", limits.restart_above_window.as_secs());
        }
        out
    }

    /// The unit file text. `existing` is the current file: its [Instance]
    /// section, Environment= and Description= lines are replaced, every other
    /// line (a hand-added Restart=, comments) is kept.
    pub fn render(&self, existing: Option<&str>) -> String {
        let mut unit_lines: Vec<String> = Vec::new();
        let mut service_lines: Vec<String> = Vec::new();
        let mut other: Vec<String> = Vec::new();
        let mut header: Vec<String> = Vec::new();
        // Operations keys the API does not set (docs/operations.md): kept as written.
        let mut kept_instance: Vec<String> = Vec::new();
        let mut section = String::new();
        for line in existing.unwrap_or("").lines() {
            let trimmed = line.trim();
            if trimmed.starts_with('[') && trimmed.ends_with(']') {
                section = trimmed.to_string();
                if section != "[Unit]" && section != "[Service]" && section != "[Instance]" {
                    other.push(line.to_string());
                }
                continue;
            }
            let key = trimmed.split_once('=').map(|(k, _)| k.trim());
            match section.as_str() {
                "" => header.push(line.to_string()),
                "[Instance]" if key.is_some_and(|k| KEPT_INSTANCE_KEYS.contains(&k)) => {
                    kept_instance.push(line.to_string())
                }
                "[Instance]" => {}
                "[Unit]" if key == Some("Description") => {}
                "[Unit]" => unit_lines.push(line.to_string()),
                "[Service]" if key == Some("Environment") => {}
                "[Service]" => service_lines.push(line.to_string()),
                _ => other.push(line.to_string()),
            }
        }
        if header.is_empty() {
            header.push("# An aikore instance. The dashboard and API rewrite this file; hand edits".into());
            header.push("# are kept and take effect after `aikore reload`.".into());
        }
        let trim_blank = |lines: &mut Vec<String>| {
            while lines.last().is_some_and(|l| l.trim().is_empty()) {
                lines.pop();
            }
        };
        trim_blank(&mut header);
        trim_blank(&mut unit_lines);
        trim_blank(&mut service_lines);
        let mut out = header.join("\n") + "\n\n[Unit]\n";
        if !self.description.is_empty() {
            out += &format!("Description={}\n", self.description);
        }
        for line in &unit_lines {
            out += line;
            out.push('\n');
        }
        out += "\n";
        out += &self.instance_section();
        for line in &kept_instance {
            out += line;
            out.push('\n');
        }
        let env: Vec<String> =
            self.environment.iter().map(|(k, v)| format!("Environment={}\n", quote_assignment(k, v))).collect();
        if !service_lines.is_empty() || !env.is_empty() {
            out += "\n[Service]\n";
            for line in &service_lines {
                out += line;
                out.push('\n');
            }
            for line in env {
                out += &line;
            }
        }
        if !other.is_empty() {
            out += "\n";
            for line in &other {
                out += line;
                out.push('\n');
            }
        }
        out
    }
}

/// [Instance] keys only a hand edit sets (drain and idle stop): a rewrite by the API keeps them.
const KEPT_INSTANCE_KEYS: &[&str] = &["DrainCheck", "DrainTimeoutSec", "IdleStopSec"];

/// `"KEY=value"` with systemd quoting, so spaces, quotes and backslashes
/// survive the round trip through the parser.
pub fn quote_assignment(key: &str, value: &str) -> String {
    let mut out = String::from("\"");
    for c in format!("{key}={value}").chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn spec() -> InstanceSpec {
        InstanceSpec {
            name: "comfy-a".into(),
            description: "my comfy".into(),
            blueprint: "comfyui".into(),
            gpus: vec!["0".into(), "1".into()],
            port: PortSpec::Auto,
            autostart: true,
            active_slot: Some("comfyui".into()),
            persistent_mode: false,
            public: false,
            stall_after_sec: 240,
            output_dir: None,
            environment: [("ARGS".to_string(), "--lowvram \"x\" \\ y".to_string())].into_iter().collect(),
            limits: InstanceLimits {
                gpu_memory_min: Some(20 << 30),
                memory_restart_above: None,
                gpu_memory_restart_above: Some(70 << 30),
                restart_above_window: std::time::Duration::from_secs(90),
            },
        }
    }

    #[test]
    fn render_round_trips_through_the_parser() {
        let text = spec().render(None);
        let (unit, warnings) = crate::units::parse_unit_str(Path::new("/d/comfy-a.instance"), &text).expect(&text);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(InstanceSpec::from_unit(&unit).unwrap(), spec());
    }

    #[test]
    fn hand_edits_outside_managed_keys_survive() {
        let existing = "# mine\n[Unit]\nDescription=old\nAfter=nginx.service\n[Instance]\nBlueprint=old\n[Service]\nRestart=on-failure\nEnvironment=OLD=1\n[Install]\nWantedBy=x\n";
        let text = spec().render(Some(existing));
        assert!(text.starts_with("# mine\n"));
        assert!(
            text.contains("After=nginx.service") && text.contains("Restart=on-failure") && text.contains("WantedBy=x")
        );
        assert!(!text.contains("OLD=1") && !text.contains("Blueprint=old") && !text.contains("Description=old"));
        let (unit, _) = crate::units::parse_unit_str(Path::new("/d/comfy-a.instance"), &text).expect(&text);
        assert_eq!(unit.after, ["nginx"]);
    }

    #[test]
    fn drain_and_idle_keys_written_by_hand_survive_a_rewrite() {
        let existing =
            "[Instance]\nBlueprint=old\nDrainCheck=/queue queue_running\nIdleStopSec=5\nDrainTimeoutSec=30s\n";
        let text = spec().render(Some(existing));
        let (unit, warnings) = crate::units::parse_unit_str(Path::new("/d/comfy-a.instance"), &text).expect(&text);
        assert!(warnings.is_empty(), "{warnings:?}");
        let inst = unit.instance.unwrap();
        assert_eq!(inst.drain_check.as_deref(), Some("/queue queue_running"));
        assert_eq!(inst.idle_stop, Some(std::time::Duration::from_secs(5)));
        assert_eq!(inst.drain_timeout, std::time::Duration::from_secs(30));
    }
}
