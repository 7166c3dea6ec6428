//! The typed stage: raw INI entries become a validated [`Unit`], with every
//! problem in the file collected as a [`Diagnostic`].

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use nix::sys::signal::Signal;

use super::ini::{self, Entry};
use super::keys::{self, KeyClass, Section, SectionClass};
use super::quote::{parse_environment, parse_exec_command};
use super::timespan::{parse_finite_timespan, parse_timespan};
use super::{
    is_valid_unit_name, Diagnostic, EnvironmentFile, ExecCommand, InstanceConfig, KillMode, PathCondition, PortSpec,
    ReadyCheck, RestartPolicy, ServiceConfig, Severity, Unit, UnitKind,
};

/// Suffixes of systemd unit types aikore does not run; dependencies on them
/// (`After=network.target`) are common in real files and are skipped.
const IGNORED_DEP_SUFFIXES: &[&str] =
    &[".target", ".socket", ".mount", ".automount", ".swap", ".path", ".timer", ".slice", ".scope", ".device"];

/// Reads and parses one unit file. An unreadable file is one diagnostic at line 0.
pub fn parse_unit_file(path: &Path) -> Result<(Unit, Vec<Diagnostic>), Vec<Diagnostic>> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse_unit_str(path, &text),
        Err(e) => Err(vec![Diagnostic {
            path: path.to_path_buf(),
            line: 0,
            severity: Severity::Error,
            message: format!("cannot read unit file: {e}"),
        }]),
    }
}

/// Parses unit file text; `path` gives the name (file stem), the kind
/// (extension) and the label of diagnostics. `Ok` carries warnings; `Err`
/// carries every diagnostic, at least one of them an error.
pub fn parse_unit_str(path: &Path, text: &str) -> Result<(Unit, Vec<Diagnostic>), Vec<Diagnostic>> {
    let mut cx = Resolver::new(path);
    let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or("").to_string();
    if !is_valid_unit_name(&name) {
        cx.error(0, format!(
            "invalid unit name '{name}': use 1-63 characters from a-z, 0-9, '_' and '-', starting with a letter or digit"
        ));
    }
    let kind = UnitKind::from_path(path).unwrap_or_else(|| {
        cx.error(0, "unit files must end in .service or .instance".to_string());
        UnitKind::Service
    });

    let (doc, ini_diags) = ini::parse(path, text);
    cx.diags.extend(ini_diags);

    let mut unit = Unit {
        name,
        kind,
        path: path.to_path_buf(),
        description: String::new(),
        documentation: Vec::new(),
        after: Vec::new(),
        before: Vec::new(),
        requires: Vec::new(),
        wants: Vec::new(),
        // systemd's DefaultStartLimitIntervalSec= and DefaultStartLimitBurst=.
        start_limit_interval: Duration::from_secs(10),
        start_limit_burst: 5,
        conditions: Vec::new(),
        service: ServiceConfig::default(),
        instance: (kind == UnitKind::Instance).then(InstanceConfig::default),
    };

    for header in &doc.sections {
        // An empty name is a malformed header the INI stage already reported.
        if header.name.is_empty() {
            continue;
        }
        if let SectionClass::Invalid(msg) = keys::classify_section(&header.name, kind) {
            cx.error(header.line, msg);
        }
    }

    let mut blueprint_seen = false;
    let mut exec_start_line: Option<usize> = None;
    for entry in &doc.entries {
        let section = match keys::classify_section(&entry.section, kind) {
            SectionClass::Known(s) => s,
            // Extension sections are ignored; invalid ones were reported at their header.
            SectionClass::Extension | SectionClass::Invalid(_) => continue,
        };
        match keys::classify_key(section, &entry.key) {
            KeyClass::Implemented if kind == UnitKind::Instance => {
                if let Err(msg) = keys::instance_may_set(section, &entry.key) {
                    cx.error(entry.line, msg);
                    continue;
                }
            }
            KeyClass::Implemented => {}
            KeyClass::Ignored(Some(msg)) => {
                cx.warn(entry.line, msg);
                continue;
            }
            KeyClass::Ignored(None) => continue,
            KeyClass::Unknown(msg) => {
                cx.error(entry.line, msg);
                continue;
            }
        }
        match (section, entry.key.as_str()) {
            (Section::Service, "ExecStart") => {
                if entry.value.is_empty() {
                    unit.service.exec_start = None;
                    exec_start_line = None;
                } else if let Some(first) = exec_start_line {
                    cx.error(
                        entry.line,
                        format!(
                            "ExecStart= is already set on line {first}; a service runs one command \
                         (write an empty ExecStart= first to replace it)"
                        ),
                    );
                } else {
                    exec_start_line = Some(entry.line);
                    unit.service.exec_start = cx.exec(entry);
                }
            }
            (Section::Instance, "Blueprint") => {
                blueprint_seen = true;
                if let (Some(b), Some(inst)) = (cx.blueprint(entry), unit.instance.as_mut()) {
                    inst.blueprint = b;
                }
            }
            (Section::Instance, _) => {
                if let Some(inst) = unit.instance.as_mut() {
                    cx.apply_instance(inst, entry);
                }
            }
            (Section::Service, _) => cx.apply_service(&mut unit, entry),
            (Section::Unit, _) => cx.apply_unit(&mut unit, entry),
            (Section::Install, _) => {}
        }
    }

    if kind == UnitKind::Service && unit.service.exec_start.is_none() && exec_start_line.is_none() {
        let line = section_line(&doc.sections, "Service");
        cx.error(line, "a .service unit needs ExecStart=".to_string());
    }
    if kind == UnitKind::Instance && !blueprint_seen {
        let line = section_line(&doc.sections, "Instance");
        cx.error(line, "an .instance unit needs Blueprint= in [Instance]".to_string());
    }
    cx.finish(unit)
}

fn section_line(sections: &[ini::SectionHeader], name: &str) -> usize {
    sections.iter().find(|s| s.name == name).map_or(0, |s| s.line)
}

/// Collects diagnostics while values are converted.
struct Resolver<'a> {
    path: &'a Path,
    diags: Vec<Diagnostic>,
}

impl<'a> Resolver<'a> {
    fn new(path: &'a Path) -> Self {
        Resolver { path, diags: Vec::new() }
    }

    fn push(&mut self, line: usize, severity: Severity, message: String) {
        self.diags.push(Diagnostic { path: self.path.to_path_buf(), line, severity, message });
    }

    fn error(&mut self, line: usize, message: String) {
        self.push(line, Severity::Error, message);
    }

    fn warn(&mut self, line: usize, message: String) {
        self.push(line, Severity::Warning, message);
    }

    fn finish(mut self, unit: Unit) -> Result<(Unit, Vec<Diagnostic>), Vec<Diagnostic>> {
        self.diags.sort_by_key(|d| d.line);
        if self.diags.iter().any(|d| d.severity == Severity::Error) {
            Err(self.diags)
        } else {
            Ok((unit, self.diags))
        }
    }

    /// Runs `parse` on the entry's value; a failure becomes an error naming
    /// the key and the value.
    fn value<T>(&mut self, entry: &Entry, parse: impl FnOnce(&str) -> Result<T, String>) -> Option<T> {
        match parse(&entry.value) {
            Ok(v) => Some(v),
            Err(e) => {
                self.error(entry.line, format!("invalid {}={}: {e}", entry.key, entry.value));
                None
            }
        }
    }

    fn exec(&mut self, entry: &Entry) -> Option<ExecCommand> {
        let (cmd, warnings) = self.value(entry, parse_exec_command)?;
        for w in warnings {
            self.warn(entry.line, format!("{}=: {w}", entry.key));
        }
        Some(cmd)
    }

    /// Empty assignment resets the list, otherwise appends one command.
    fn exec_list(&mut self, list: &mut Vec<ExecCommand>, entry: &Entry) {
        if entry.value.is_empty() {
            list.clear();
        } else if let Some(cmd) = self.exec(entry) {
            list.push(cmd);
        }
    }

    fn apply_unit(&mut self, unit: &mut Unit, entry: &Entry) {
        match entry.key.as_str() {
            "Description" => unit.description = entry.value.clone(),
            "Documentation" => {
                if entry.value.is_empty() {
                    unit.documentation.clear();
                }
                for uri in entry.value.split_whitespace() {
                    if is_documentation_uri(uri) {
                        unit.documentation.push(uri.to_string());
                    } else {
                        self.warn(
                            entry.line,
                            format!(
                                "Documentation={uri} is not an http(s)://, file:, info: or man: URI and is ignored"
                            ),
                        );
                    }
                }
            }
            "After" => self.deps(&mut unit.after, entry),
            "Before" => self.deps(&mut unit.before, entry),
            "Requires" => self.deps(&mut unit.requires, entry),
            "Wants" => self.deps(&mut unit.wants, entry),
            "StartLimitIntervalSec" | "StartLimitBurst" => self.start_limit(unit, entry),
            "ConditionPathExists" => self.condition(unit, entry),
            _ => self.error(entry.line, format!("{}= is not handled in [Unit]", entry.key)),
        }
    }

    fn condition(&mut self, unit: &mut Unit, entry: &Entry) {
        if entry.value.is_empty() {
            unit.conditions.clear();
            return;
        }
        let (negate, path) = match entry.value.strip_prefix('!') {
            Some(rest) => (true, rest),
            None => (false, entry.value.as_str()),
        };
        if !path.starts_with('/') {
            self.error(entry.line, format!("ConditionPathExists={} must be an absolute path", entry.value));
            return;
        }
        unit.conditions.push(PathCondition { path: path.into(), negate });
    }

    fn start_limit(&mut self, unit: &mut Unit, entry: &Entry) {
        if entry.key == "StartLimitIntervalSec" {
            if let Some(d) = self.value(entry, parse_finite_timespan) {
                unit.start_limit_interval = d;
            }
        } else if let Some(n) = self.value(entry, |v| v.parse::<u32>().map_err(|e| e.to_string())) {
            unit.start_limit_burst = n;
        }
    }

    /// After=/Before=/Requires=/Wants=: space-separated names, appended.
    fn deps(&mut self, list: &mut Vec<String>, entry: &Entry) {
        if entry.value.is_empty() {
            list.clear();
        }
        for word in entry.value.split_whitespace() {
            if let Some(suffix) = IGNORED_DEP_SUFFIXES.iter().find(|s| word.ends_with(*s)) {
                self.warn(
                    entry.line,
                    format!("{}={word}: aikore has no {suffix} units; the dependency is ignored", entry.key),
                );
                continue;
            }
            let name = word.strip_suffix(".service").or_else(|| word.strip_suffix(".instance")).unwrap_or(word);
            if !is_valid_unit_name(name) {
                self.error(entry.line, format!("invalid {}={word}: '{name}' is not a valid unit name", entry.key));
            } else if !list.iter().any(|n| n == name) {
                list.push(name.to_string());
            }
        }
    }

    fn apply_service(&mut self, unit: &mut Unit, entry: &Entry) {
        let svc = &mut unit.service;
        match entry.key.as_str() {
            "ExecStartPre" => self.exec_list(&mut svc.exec_start_pre, entry),
            "ExecReload" => self.exec_list(&mut svc.exec_reload, entry),
            "ExecStop" => self.exec_list(&mut svc.exec_stop, entry),
            "Restart" => {
                if let Some(r) = self.value(entry, parse_restart) {
                    svc.restart = r;
                }
            }
            "RestartSec" => {
                if let Some(d) = self.value(entry, parse_finite_timespan) {
                    svc.restart_sec = d;
                }
            }
            "TimeoutStartSec" => {
                if let Some(t) = self.value(entry, parse_timeout) {
                    svc.timeout_start = t;
                }
            }
            "TimeoutStopSec" => {
                if let Some(t) = self.value(entry, parse_timeout) {
                    svc.timeout_stop = t;
                }
            }
            "KillSignal" => {
                if let Some(s) = self.value(entry, parse_signal) {
                    svc.kill_signal = s;
                }
            }
            "KillMode" => {
                if let Some(m) = self.value(entry, parse_kill_mode) {
                    svc.kill_mode = m;
                }
            }
            "Environment" => {
                if entry.value.is_empty() {
                    svc.environment.clear();
                } else if let Some(vars) = self.value(entry, parse_environment) {
                    svc.environment.extend(vars);
                }
            }
            "EnvironmentFile" => {
                if entry.value.is_empty() {
                    svc.environment_files.clear();
                } else if let Some(f) = self.value(entry, parse_environment_file) {
                    svc.environment_files.push(f);
                }
            }
            "WorkingDirectory" => {
                if entry.value.is_empty() {
                    svc.working_directory = None;
                } else if let Some(p) = self.value(entry, absolute_path) {
                    svc.working_directory = Some(p);
                }
            }
            "User" => svc.user = non_empty(&entry.value),
            "Group" => svc.group = non_empty(&entry.value),
            "UMask" => {
                if let Some(m) = self.value(entry, parse_umask) {
                    svc.umask = Some(m);
                }
            }
            "Nice" => {
                if let Some(n) = self.value(entry, parse_nice) {
                    svc.nice = Some(n);
                }
            }
            "MemoryMax" => {
                if let Some(m) = self.value(entry, parse_memory_max) {
                    svc.memory_max = m;
                }
            }
            "ReadyCheck" => {
                if let Some(r) = self.value(entry, parse_ready_check) {
                    svc.ready_check = r;
                }
            }
            // Log retention (aikore's own keys): empty resets to the global setting.
            "LogMaxFileSize" => {
                if let Some(m) = self.value(entry, parse_log_size) {
                    svc.log_max_file_size = m;
                }
            }
            "LogMaxFiles" => {
                if let Some(n) = self.value(entry, parse_log_files) {
                    svc.log_max_files = n;
                }
            }
            "LogCompress" => {
                if entry.value.trim().is_empty() {
                    svc.log_compress = None;
                } else if let Some(b) = self.value(entry, parse_bool) {
                    svc.log_compress = Some(b);
                }
            }
            "StartLimitIntervalSec" | "StartLimitBurst" => self.start_limit(unit, entry),
            _ => self.error(entry.line, format!("{}= is not handled in [Service]", entry.key)),
        }
    }

    fn blueprint(&mut self, entry: &Entry) -> Option<String> {
        self.value(entry, |v| {
            if v.is_empty() {
                Err("a blueprint name is required".to_string())
            } else if v.contains('/') || v.chars().any(char::is_whitespace) || v == "." || v == ".." {
                Err("a blueprint name cannot contain '/' or spaces".to_string())
            } else {
                Ok(v.to_string())
            }
        })
    }

    fn apply_instance(&mut self, inst: &mut InstanceConfig, entry: &Entry) {
        match entry.key.as_str() {
            "GPUs" => {
                if let Some(g) = self.value(entry, parse_gpus) {
                    inst.gpus = g;
                }
            }
            "Port" => {
                if let Some(p) = self.value(entry, parse_port) {
                    inst.port = p;
                }
            }
            "Autostart" => {
                if let Some(b) = self.value(entry, parse_bool) {
                    inst.autostart = b;
                }
            }
            "PersistentMode" => {
                if let Some(b) = self.value(entry, parse_bool) {
                    inst.persistent_mode = b;
                }
            }
            "Public" => {
                if let Some(b) = self.value(entry, parse_bool) {
                    inst.public = b;
                }
            }
            "ActiveSlot" => {
                if let Some(s) = self.value(entry, parse_active_slot) {
                    inst.active_slot = s;
                }
            }
            "StallAfterSec" => {
                if let Some(d) = self.value(entry, parse_finite_timespan) {
                    inst.stall_after = d;
                }
            }
            "OutputDir" => {
                if entry.value.is_empty() {
                    inst.output_dir = None;
                } else if let Some(p) = self.value(entry, absolute_path) {
                    inst.output_dir = Some(p);
                }
            }
            _ => self.error(entry.line, format!("{}= is not handled in [Instance]", entry.key)),
        }
    }
}

fn non_empty(v: &str) -> Option<String> {
    (!v.is_empty()).then(|| v.to_string())
}

fn is_documentation_uri(uri: &str) -> bool {
    ["http://", "https://", "file:", "info:", "man:"].iter().any(|p| uri.starts_with(p))
}

fn absolute_path(v: &str) -> Result<PathBuf, String> {
    if v.starts_with('/') {
        Ok(PathBuf::from(v))
    } else {
        Err("must be an absolute path".to_string())
    }
}

fn parse_restart(v: &str) -> Result<RestartPolicy, String> {
    match v {
        "no" => Ok(RestartPolicy::No),
        "on-failure" => Ok(RestartPolicy::OnFailure),
        "on-abnormal" => Ok(RestartPolicy::OnAbnormal),
        "always" => Ok(RestartPolicy::Always),
        "on-success" | "on-abort" | "on-watchdog" => {
            Err("not supported by aikore; valid values: no, on-failure, on-abnormal, always".to_string())
        }
        _ => Err("valid values: no, on-failure, on-abnormal, always".to_string()),
    }
}

/// TimeoutStartSec=/TimeoutStopSec=: `0` and `infinity` both disable the timeout.
fn parse_timeout(v: &str) -> Result<Option<Duration>, String> {
    Ok(parse_timespan(v)?.filter(|d| !d.is_zero()))
}

fn parse_kill_mode(v: &str) -> Result<KillMode, String> {
    match v {
        "control-group" => Ok(KillMode::ControlGroup),
        "process-group" => Ok(KillMode::ProcessGroup),
        "mixed" => Ok(KillMode::Mixed),
        "process" | "none" => Err("not supported: aikore always stops the whole unit so no process outlives it; \
             valid values: control-group, process-group, mixed"
            .to_string()),
        _ => Err("valid values: control-group, process-group, mixed".to_string()),
    }
}

/// `SIGTERM`, `TERM`, `15`, or a real-time signal number.
fn parse_signal(v: &str) -> Result<i32, String> {
    if let Ok(n) = v.parse::<i32>() {
        let realtime = (libc::SIGRTMIN()..=libc::SIGRTMAX()).contains(&n);
        return if Signal::try_from(n).is_ok() || realtime {
            Ok(n)
        } else {
            Err(format!("{n} is not a signal number"))
        };
    }
    let full = if v.starts_with("SIG") { v.to_string() } else { format!("SIG{v}") };
    Signal::from_str(&full).map(|s| s as i32).map_err(|_| "unknown signal name".to_string())
}

fn parse_umask(v: &str) -> Result<u32, String> {
    let m = u32::from_str_radix(v, 8).map_err(|_| "expected an octal mode such as 0022".to_string())?;
    if m > 0o777 {
        return Err("a umask is at most 0777".to_string());
    }
    Ok(m)
}

fn parse_nice(v: &str) -> Result<i32, String> {
    match v.parse::<i32>() {
        Ok(n) if (-20..=19).contains(&n) => Ok(n),
        _ => Err("expected a number from -20 to 19".to_string()),
    }
}

/// systemd's bytes: a number with an optional K, M, G or T suffix (powers of
/// 1024), or `infinity` (no limit). Percentages of RAM are not supported.
fn parse_memory_max(v: &str) -> Result<Option<u64>, String> {
    let v = v.trim();
    if v == "infinity" || v.is_empty() {
        return Ok(None);
    }
    let (digits, shift) = match v.char_indices().last() {
        Some((i, 'K' | 'k')) => (&v[..i], 10),
        Some((i, 'M' | 'm')) => (&v[..i], 20),
        Some((i, 'G' | 'g')) => (&v[..i], 30),
        Some((i, 'T' | 't')) => (&v[..i], 40),
        _ => (v, 0),
    };
    let err = || format!("'{v}' is not a size (bytes with an optional K, M, G or T suffix, or infinity)");
    let n: u64 = digits.trim().parse().map_err(|_| err())?;
    n.checked_mul(1u64 << shift).filter(|b| *b > 0).map(Some).ok_or_else(err)
}

/// LogMaxFileSize=: a size as for MemoryMax= (`infinity`: never rotate by
/// size); empty: the global setting.
fn parse_log_size(v: &str) -> Result<Option<u64>, String> {
    if v.trim().is_empty() {
        return Ok(None);
    }
    Ok(Some(parse_memory_max(v)?.unwrap_or(u64::MAX)))
}

/// LogMaxFiles=: files kept, the current one included (1 to 100, the log
/// module's bound); empty: the global setting.
fn parse_log_files(v: &str) -> Result<Option<u32>, String> {
    match v.trim() {
        "" => Ok(None),
        t => match t.parse::<u32>() {
            Ok(n) if (1..=100).contains(&n) => Ok(Some(n)),
            _ => Err(format!("'{t}' is not a file count from 1 to 100")),
        },
    }
}

fn parse_port_number(v: &str) -> Result<u16, String> {
    match v.parse::<u16>() {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(format!("'{v}' is not a port number (1-65535)")),
    }
}

/// `none`, `tcp:PORT`, or `http://HOST:PORT/path` with a loopback HOST: the
/// check only ever probes the unit's own listener.
fn parse_ready_check(v: &str) -> Result<ReadyCheck, String> {
    if v == "none" {
        return Ok(ReadyCheck::None);
    }
    if let Some(port) = v.strip_prefix("tcp:") {
        return Ok(ReadyCheck::Tcp(parse_port_number(port)?));
    }
    let Some(rest) = v.strip_prefix("http://") else {
        return Err("expected none, tcp:PORT or http://127.0.0.1:PORT/path".to_string());
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    let (host, port) = authority.rsplit_once(':').ok_or_else(|| "the URL needs an explicit port".to_string())?;
    if !matches!(host, "127.0.0.1" | "localhost" | "[::1]") {
        return Err(format!("host '{host}' is not loopback (127.0.0.1, localhost or [::1])"));
    }
    if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("the URL path cannot contain spaces".to_string());
    }
    Ok(ReadyCheck::Http { host: host.to_string(), port: parse_port_number(port)?, path: path.to_string() })
}

fn parse_environment_file(v: &str) -> Result<EnvironmentFile, String> {
    let (optional, path) = match v.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, v),
    };
    Ok(EnvironmentFile { path: absolute_path(path)?, optional })
}

/// systemd's boolean spellings.
pub(crate) fn parse_bool(v: &str) -> Result<bool, String> {
    match v.to_ascii_lowercase().as_str() {
        "yes" | "true" | "on" | "1" | "y" | "t" => Ok(true),
        "no" | "false" | "off" | "0" | "n" | "f" => Ok(false),
        _ => Err("expected yes or no".to_string()),
    }
}

fn parse_gpus(v: &str) -> Result<Vec<String>, String> {
    let mut gpus: Vec<String> = Vec::new();
    for id in v.split(|c: char| c == ',' || c.is_whitespace()).filter(|s| !s.is_empty()) {
        let is_index = id.bytes().all(|b| b.is_ascii_digit()) && id.len() <= 4;
        let is_uuid = ["GPU-", "MIG-"].iter().any(|p| {
            id.strip_prefix(p).is_some_and(|rest| {
                !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'/')
            })
        });
        if !is_index && !is_uuid {
            return Err(format!("'{id}' is neither a GPU index nor a GPU-/MIG- UUID"));
        }
        if gpus.iter().any(|g| g == id) {
            return Err(format!("GPU '{id}' is listed twice"));
        }
        gpus.push(id.to_string());
    }
    Ok(gpus)
}

fn parse_port(v: &str) -> Result<PortSpec, String> {
    if v == "auto" {
        Ok(PortSpec::Auto)
    } else {
        parse_port_number(v).map(PortSpec::Fixed).map_err(|e| format!("{e}; or 'auto'"))
    }
}

fn parse_active_slot(v: &str) -> Result<Option<String>, String> {
    match v {
        "" => Ok(None),
        "comfyui" => Ok(Some(v.to_string())),
        _ => Err("the only slot is 'comfyui' (or empty for none)".to_string()),
    }
}

#[cfg(test)]
mod tests;
