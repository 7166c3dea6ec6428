//! The typed stage: raw INI entries become a validated [`Unit`], with every
//! problem in the file collected as a [`Diagnostic`].

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use nix::sys::signal::Signal;

use super::ini::{self, Entry};
use super::keys::{self, KeyClass, Section, SectionClass};
use super::name::{is_template_name, is_valid_service_name};
use super::quote::{parse_environment, parse_exec_command};
use super::specifier::Specifiers;
use super::timespan::{parse_finite_timespan, parse_timespan};
use super::{
    is_valid_unit_name, Diagnostic, EnvironmentFile, ExecCommand, ExitSet, InstallConfig, InstanceConfig, KillMode,
    NotifyAccess, PathCondition, PortSpec, ReadyCheck, Relations, RestartPolicy, ServiceConfig, ServiceType, Severity,
    Unit, UnitKind,
};

/// Suffixes of systemd unit types aikore does not run; dependencies on them
/// (`After=network.target`) are common in real files and are skipped.
const IGNORED_DEP_SUFFIXES: &[&str] =
    &[".target", ".socket", ".mount", ".automount", ".swap", ".path", ".timer", ".slice", ".scope", ".device"];

/// Keys the engine does not act on yet but the definition carries all the
/// same: the dependency graph shows Requisite=.
const PARSED_THOUGH_IGNORED: &[&str] = &[];

/// Reads and parses one unit file. An unreadable file is one diagnostic at line 0.
pub fn parse_unit_file(path: &Path) -> Result<(Unit, Vec<Diagnostic>), Vec<Diagnostic>> {
    if is_masked(path) {
        return Err(vec![Diagnostic {
            path: path.to_path_buf(),
            line: 0,
            severity: Severity::Error,
            message: "the unit is masked (a link to /dev/null): it cannot be loaded".to_string(),
        }]);
    }
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

/// A unit file linked to /dev/null is masked, as in systemd (Debian masks
/// the units its init scripts replace that way).
pub fn is_masked(path: &Path) -> bool {
    std::fs::canonicalize(path).is_ok_and(|p| p == Path::new("/dev/null"))
}

/// Parses unit file text; `path` gives the name (file stem), the kind
/// (extension) and the label of diagnostics. `Ok` carries warnings; `Err`
/// carries every diagnostic, at least one of them an error.
pub fn parse_unit_str(path: &Path, text: &str) -> Result<(Unit, Vec<Diagnostic>), Vec<Diagnostic>> {
    let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or("").to_string();
    parse_unit_named(path, &name, text)
}

/// Parses `text` as the unit `name`: a template's file (`echo@.service`)
/// read once per instance (`echo@a`), its specifiers expanded for that name.
pub fn parse_unit_named(path: &Path, name: &str, text: &str) -> Result<(Unit, Vec<Diagnostic>), Vec<Diagnostic>> {
    let mut cx = Resolver::new(path);
    let name = name.to_string();
    let kind = UnitKind::from_path(path).unwrap_or_else(|| {
        cx.error(0, "unit files must end in .service or .instance".to_string());
        UnitKind::Service
    });
    match kind {
        UnitKind::Instance if !is_valid_unit_name(&name) => cx.error(
            0,
            format!(
                "invalid instance name '{name}': use 1-63 characters from a-z, 0-9, '_' and '-', starting with a \
                 letter or digit"
            ),
        ),
        UnitKind::Service if !is_valid_service_name(&name) && !is_template_name(&name) => cx.error(
            0,
            format!(
                "invalid unit name '{name}': use letters, digits, ':', '-', '_', '.' and '\\' (not first: '.'), \
                 with at most one '@' before an instance"
            ),
        ),
        _ => {}
    }
    cx.in_template = is_template_name(&name);
    // `.instance` files are aikore's own, written from user input: a `%` there is literal.
    let specifiers = (kind == UnitKind::Service).then(|| Specifiers::for_unit(&name));

    let (doc, ini_diags) = ini::parse(path, text);
    cx.diags.extend(ini_diags);

    let mut unit = Unit {
        kind,
        path: path.to_path_buf(),
        description: String::new(),
        documentation: Vec::new(),
        after: Vec::new(),
        before: Vec::new(),
        requires: Vec::new(),
        wants: Vec::new(),
        relations: Relations::default(),
        install: InstallConfig::default(),
        starts_at_boot: true,
        template: super::name::template_of(&name).map(str::to_string),
        aliases: Vec::new(),
        name,
        // systemd's DefaultStartLimitIntervalSec= and DefaultStartLimitBurst=.
        start_limit_interval: Duration::from_secs(10),
        start_limit_burst: 5,
        conditions: Vec::new(),
        checks: Default::default(),
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
    let mut exec_start_count = 0usize;
    let mut kill_mode_line: Option<usize> = None;
    for entry in &doc.entries {
        let expanded;
        let entry = match &specifiers {
            Some(spec) if entry.value.contains('%') => match expand(spec, entry) {
                Ok(value) => {
                    expanded = Entry { value, ..entry.clone() };
                    &expanded
                }
                Err(e) => {
                    cx.error(entry.line, format!("invalid {}={}: {e}", entry.key, entry.value));
                    continue;
                }
            },
            _ => entry,
        };
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
                if !PARSED_THOUGH_IGNORED.contains(&entry.key.as_str()) {
                    continue;
                }
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
                    unit.service.exec_start_more.clear();
                    exec_start_line = None;
                    exec_start_count = 0;
                } else {
                    // Several are a oneshot's right only; Type= may come later, so judged at the end.
                    exec_start_line.get_or_insert(entry.line);
                    exec_start_count += 1;
                    if let Some(cmd) = cx.exec(entry) {
                        if unit.service.exec_start.is_none() {
                            unit.service.exec_start = Some(cmd);
                        } else {
                            unit.service.exec_start_more.push(cmd);
                        }
                    }
                }
            }
            (Section::Service, "KillMode") => {
                kill_mode_line = Some(entry.line);
                cx.apply_service(&mut unit, entry);
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
            (Section::Install, _) => cx.apply_install(&mut unit.install, entry),
        }
    }

    let type_set = doc.entries.iter().any(|e| e.section == "Service" && e.key == "Type" && !e.value.is_empty());
    if kind == UnitKind::Service && exec_start_line.is_none() && !type_set {
        // systemd's default: a service without ExecStart= or Type= is a oneshot.
        unit.service.service_type = ServiceType::Oneshot;
    }
    let success_action = unit.relations.success_action.is_some();
    let oneshot = unit.service.service_type == ServiceType::Oneshot;
    if kind == UnitKind::Service && exec_start_count > 1 && !oneshot {
        cx.error(
            exec_start_line.unwrap_or(0),
            format!(
                "{exec_start_count} ExecStart= commands: only a Type=oneshot service runs several \
                 (write an empty ExecStart= first to replace the command)"
            ),
        );
    }
    if kind == UnitKind::Service && unit.service.exec_start.is_none() && exec_start_line.is_none() {
        let line = section_line(&doc.sections, "Service");
        // systemd's rule: only a oneshot may have no ExecStart=, and then it needs ExecStop= or RemainAfterExit=yes.
        if !oneshot {
            cx.error(line, "a .service unit needs ExecStart= (only a Type=oneshot may have none)".to_string());
        } else if unit.service.exec_stop.is_empty() && !unit.service.remain_after_exit && !success_action {
            cx.error(
                line,
                "a .service unit needs ExecStart= (a oneshot may do without one if it has ExecStop=, \
                 RemainAfterExit=yes or SuccessAction=)"
                    .to_string(),
            );
        }
    }
    if kind == UnitKind::Service && unit.service.service_type == ServiceType::Dbus && unit.service.bus_name.is_none() {
        // systemd refuses it too: nothing would ever say such a service started.
        let line = doc.entries.iter().rev().find(|e| e.section == "Service" && e.key == "Type").map_or(0, |e| e.line);
        cx.error(line, "Type=dbus needs BusName= (the name whose owner on the system bus makes it started)".into());
    }
    if let (Some(line), KillMode::Process, UnitKind::Instance) = (kill_mode_line, unit.service.kill_mode, kind) {
        // The app's code is a stranger's: nothing of it may outlive a stop (docs/security.md).
        cx.error(
            line,
            "KillMode=process is not allowed in an .instance file: an instance's processes all end with it".into(),
        );
    } else if let (Some(line), KillMode::Process) = (kill_mode_line, unit.service.kill_mode) {
        cx.warn(
            line,
            "KillMode=process: a stop signals the main process only; what it started keeps running after \
             the unit stops, as under systemd (aikore ends it when the container stops)"
                .to_string(),
        );
    }
    if kind == UnitKind::Instance {
        let svc = &unit.service;
        let lists =
            [&svc.exec_condition, &svc.exec_start_pre, &svc.exec_start_post, &svc.exec_stop, &svc.exec_stop_post];
        let all = svc.exec_start.iter().chain(&svc.exec_start_more).chain(lists.into_iter().flatten());
        if all.clone().any(|c| c.privilege != super::Privilege::Normal) {
            // An instance runs as the instance user, always: a prefix must not lift that.
            cx.error(
                section_line(&doc.sections, "Service"),
                "the '+', '!' and '!!' prefixes are not allowed in an instance".to_string(),
            );
        }
    }
    if kind == UnitKind::Service {
        // A unit that says when to start (WantedBy=...) starts at boot only once enabled (load.rs).
        unit.starts_at_boot = unit.install.wanted_by.is_empty()
            && unit.install.required_by.is_empty()
            && unit.install.upheld_by.is_empty();
    }
    if kind == UnitKind::Instance && !blueprint_seen {
        let line = section_line(&doc.sections, "Instance");
        cx.error(line, "an .instance unit needs Blueprint= in [Instance]".to_string());
    }
    cx.finish(unit)
}

/// Values split into words and unescaped later get their specifiers' `\` escaped.
fn expand(spec: &Specifiers<'_>, entry: &Entry) -> Result<String, String> {
    if entry.key.starts_with("Exec") || entry.key == "Environment" {
        spec.expand_quoted(&entry.value)
    } else {
        spec.expand(&entry.value)
    }
}

fn section_line(sections: &[ini::SectionHeader], name: &str) -> usize {
    sections.iter().find(|s| s.name == name).map_or(0, |s| s.line)
}

/// Collects diagnostics while values are converted.
struct Resolver<'a> {
    path: &'a Path,
    diags: Vec<Diagnostic>,
    /// Reading a template's file as itself (`echo@`): `%i` is empty, so a
    /// reference such as `prep@%i.service` names a template and is skipped.
    in_template: bool,
}

impl<'a> Resolver<'a> {
    fn new(path: &'a Path) -> Self {
        Resolver { path, diags: Vec::new(), in_template: false }
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

    /// An exit-status list: numbers 0-255 and signal names; empty resets it.
    fn exit_set(&mut self, set: &mut ExitSet, entry: &Entry) {
        if entry.value.is_empty() {
            *set = ExitSet::default();
            return;
        }
        if let Some(parsed) = self.value(entry, parse_exit_set) {
            set.codes.extend(parsed.codes);
            set.signals.extend(parsed.signals);
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
            "Requisite" => self.deps(&mut unit.relations.requisite, entry),
            "BindsTo" | "BindTo" => self.deps(&mut unit.relations.binds_to, entry),
            "PartOf" => self.deps(&mut unit.relations.part_of, entry),
            "Upholds" => self.deps(&mut unit.relations.upholds, entry),
            "Conflicts" => self.deps(&mut unit.relations.conflicts, entry),
            "OnFailure" => self.deps(&mut unit.relations.on_failure, entry),
            "OnSuccess" => self.deps(&mut unit.relations.on_success, entry),
            "JoinsNamespaceOf" => self.deps(&mut unit.service.exec.ns.joins_namespace_of, entry),
            "PropagatesReloadTo" => self.deps(&mut unit.relations.propagates_reload_to, entry),
            "ReloadPropagatedFrom" => self.deps(&mut unit.relations.reload_propagated_from, entry),
            "PropagatesStopTo" => self.deps(&mut unit.relations.propagates_stop_to, entry),
            "StopPropagatedFrom" => self.deps(&mut unit.relations.stop_propagated_from, entry),
            "StopWhenUnneeded" => {
                if let Some(b) = self.value(entry, parse_bool) {
                    unit.relations.stop_when_unneeded = b;
                }
            }
            "SuccessAction" => {
                if let Some(a) = self.value(entry, parse_action) {
                    unit.relations.success_action = a;
                }
            }
            "FailureAction" => {
                if let Some(a) = self.value(entry, parse_action) {
                    unit.relations.failure_action = a;
                }
            }
            "StartLimitAction" => {
                if let Some(a) = self.value(entry, parse_action) {
                    unit.relations.start_limit_action = a;
                }
            }
            "SuccessActionExitStatus" | "FailureActionExitStatus" => {
                let parse = |v: &str| match v {
                    "" => Ok(None),
                    v => v.parse::<u8>().map(Some).map_err(|_| "expected an exit status 0-255".to_string()),
                };
                if let Some(status) = self.value(entry, parse) {
                    if entry.key == "SuccessActionExitStatus" {
                        unit.relations.success_action_exit_status = status;
                    } else {
                        unit.relations.failure_action_exit_status = status;
                    }
                }
            }
            "RefuseManualStart" | "RefuseManualStop" => {
                if let Some(b) = self.value(entry, parse_bool) {
                    if entry.key == "RefuseManualStart" {
                        unit.relations.refuse_manual_start = b;
                    } else {
                        unit.relations.refuse_manual_stop = b;
                    }
                }
            }
            "StartLimitIntervalSec" | "StartLimitInterval" | "StartLimitBurst" => self.start_limit(unit, entry),
            "ConditionPathExists" => self.condition(unit, entry),
            k if super::checks::UNIT_KEYS.contains(&k) => {
                if let Err(e) = unit.checks.apply(k, &entry.value) {
                    self.error(entry.line, format!("invalid {k}={}: {e}", entry.value));
                }
            }
            _ => self.error(entry.line, format!("{}= is not handled in [Unit]", entry.key)),
        }
    }

    fn condition(&mut self, unit: &mut Unit, entry: &Entry) {
        if entry.value.is_empty() {
            unit.conditions.clear();
            return;
        }
        let (trigger, rest) = match entry.value.strip_prefix('|') {
            Some(rest) => (true, rest),
            None => (false, entry.value.as_str()),
        };
        let (negate, path) = match rest.strip_prefix('!') {
            Some(rest) => (true, rest),
            None => (false, rest),
        };
        if !path.starts_with('/') {
            self.error(entry.line, format!("ConditionPathExists={} must be an absolute path", entry.value));
            return;
        }
        unit.conditions.push(PathCondition { path: path.into(), negate, trigger });
    }

    fn start_limit(&mut self, unit: &mut Unit, entry: &Entry) {
        if entry.key != "StartLimitBurst" {
            if let Some(d) = self.value(entry, parse_finite_timespan) {
                unit.start_limit_interval = d;
            }
        } else if let Some(n) = self.value(entry, |v| v.parse::<u32>().map_err(|e| e.to_string())) {
            unit.start_limit_burst = n;
        }
    }

    /// After=/Before=/Requires=/Wants= and the relations: space-separated
    /// names, appended. References to unit types aikore does not run
    /// (`network.target`, `dbus.socket`) are dropped without a word: there is
    /// nothing to order against, as systemd says nothing of a missing unit.
    fn deps(&mut self, list: &mut Vec<String>, entry: &Entry) {
        if entry.value.is_empty() {
            list.clear();
        }
        for word in entry.value.split_whitespace() {
            if IGNORED_DEP_SUFFIXES.iter().any(|s| word.ends_with(s)) {
                continue;
            }
            let name = word.strip_suffix(".service").or_else(|| word.strip_suffix(".instance")).unwrap_or(word);
            if self.in_template && is_template_name(name) {
                continue;
            }
            if !is_valid_service_name(name) {
                self.error(entry.line, format!("invalid {}={word}: '{name}' is not a valid unit name", entry.key));
            } else if !list.iter().any(|n| n == name) {
                list.push(name.to_string());
            }
        }
    }

    /// [Install]: WantedBy=/RequiredBy= keep targets as written (`multi-user.target`)
    /// and services without `.service`; Also= names services.
    fn apply_install(&mut self, install: &mut InstallConfig, entry: &Entry) {
        let list = match entry.key.as_str() {
            "WantedBy" => &mut install.wanted_by,
            "RequiredBy" => &mut install.required_by,
            "UpheldBy" => &mut install.upheld_by,
            "Also" => &mut install.also,
            "DefaultInstance" => {
                install.default_instance = non_empty(&entry.value);
                if let Some(i) = &install.default_instance {
                    if !is_valid_service_name(&format!("x@{i}")) {
                        self.error(entry.line, format!("invalid DefaultInstance={i}: not a valid instance name"));
                    }
                }
                return;
            }
            "Alias" => {
                if entry.value.is_empty() {
                    install.alias.clear();
                }
                for word in entry.value.split_whitespace() {
                    match word.strip_suffix(".service") {
                        Some(name) if is_valid_service_name(name) || (self.in_template && is_template_name(name)) => {
                            if !install.alias.iter().any(|(n, _)| n == name) {
                                install.alias.push((name.to_string(), entry.line));
                            }
                        }
                        _ => self.error(
                            entry.line,
                            format!("invalid Alias={word}: an alias of a service is a .service name"),
                        ),
                    }
                }
                return;
            }
            _ => return self.error(entry.line, format!("{}= is not handled in [Install]", entry.key)),
        };
        if entry.value.is_empty() {
            list.clear();
        }
        for word in entry.value.split_whitespace() {
            let name = word.strip_suffix(".service").unwrap_or(word);
            let valid = match name.strip_suffix(".target") {
                Some(target) => is_valid_service_name(target) && entry.key != "Also",
                // `WantedBy=postgresql@%i.service` read in the template itself names a template.
                None => is_valid_service_name(name) || (self.in_template && is_template_name(name)),
            };
            if !valid {
                self.error(entry.line, format!("invalid {}={word}: expected a .target or .service name", entry.key));
            } else if !list.iter().any(|n| n == name) {
                list.push(name.to_string());
            }
        }
    }

    fn apply_service(&mut self, unit: &mut Unit, entry: &Entry) {
        let svc = &mut unit.service;
        match entry.key.as_str() {
            "ExecStartPre" => self.exec_list(&mut svc.exec_start_pre, entry),
            "ExecCondition" => self.exec_list(&mut svc.exec_condition, entry),
            "ExecStartPost" => self.exec_list(&mut svc.exec_start_post, entry),
            "ExecStopPost" => self.exec_list(&mut svc.exec_stop_post, entry),
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
            "TimeoutAbortSec" => {
                if entry.value.is_empty() {
                    svc.timeout_abort = None;
                } else if let Some(t) = self.value(entry, parse_timeout) {
                    svc.timeout_abort = Some(t);
                }
            }
            "TimeoutSec" => {
                if let Some(t) = self.value(entry, parse_timeout) {
                    svc.timeout_start = t;
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
            "Type" => {
                if let Some(t) = self.value(entry, parse_service_type) {
                    svc.service_type = t;
                }
            }
            "PermissionsStartOnly" => {
                if let Some(b) = self.value(entry, parse_bool) {
                    svc.permissions_start_only = b;
                }
            }
            "RuntimeRandomizedExtraSec" => {
                if let Some(t) = self.value(entry, parse_timeout) {
                    svc.runtime_randomized_extra = t.unwrap_or_default();
                }
            }
            "RuntimeMaxSec" => {
                if let Some(t) = self.value(entry, parse_timeout) {
                    svc.runtime_max = t;
                }
            }
            "ReloadSignal" => {
                if let Some(s) = self.value(entry, parse_signal) {
                    svc.reload_signal = s;
                }
            }
            "NotifyAccess" => {
                if let Some(a) = self.value(entry, |v| match v {
                    "none" => Ok(NotifyAccess::None),
                    "main" => Ok(NotifyAccess::Main),
                    "exec" => Ok(NotifyAccess::Exec),
                    "all" => Ok(NotifyAccess::All),
                    _ => Err("valid values: none, main, exec, all".to_string()),
                }) {
                    svc.notify_access = Some(a);
                }
            }
            "BusName" => {
                if entry.value.is_empty() {
                    svc.bus_name = None;
                } else if let Some(name) = self.value(entry, parse_bus_name) {
                    svc.bus_name = Some(name);
                }
            }
            "PIDFile" => {
                if entry.value.is_empty() {
                    svc.pid_file = None;
                } else if let Some(p) = self.value(entry, absolute_path) {
                    svc.pid_file = Some(p);
                }
            }
            "SuccessExitStatus" => self.exit_set(&mut svc.success_exit, entry),
            "RestartPreventExitStatus" => self.exit_set(&mut svc.restart_prevent, entry),
            "RestartForceExitStatus" => self.exit_set(&mut svc.restart_force, entry),
            "RestartSteps" => {
                if let Some(n) =
                    self.value(entry, |v| v.parse::<u32>().map_err(|_| "expected a number of steps".to_string()))
                {
                    svc.restart_steps = n;
                }
            }
            "RestartMaxDelaySec" => {
                if let Some(t) = self.value(entry, parse_timeout) {
                    svc.restart_max_delay = t;
                }
            }
            "RestartKillSignal" => {
                if let Some(s) = self.value(entry, parse_signal) {
                    svc.restart_kill_signal = Some(s);
                }
            }
            "FinalKillSignal" => {
                if let Some(s) = self.value(entry, parse_signal) {
                    svc.final_kill_signal = s;
                }
            }
            "WatchdogSignal" => {
                if let Some(s) = self.value(entry, parse_signal) {
                    svc.watchdog_signal = s;
                }
            }
            "SendSIGKILL" => {
                if let Some(b) = self.value(entry, parse_bool) {
                    svc.send_sigkill = b;
                }
            }
            "SendSIGHUP" => {
                if let Some(b) = self.value(entry, parse_bool) {
                    svc.send_sighup = b;
                }
            }
            "RemainAfterExit" => {
                if let Some(b) = self.value(entry, parse_bool) {
                    svc.remain_after_exit = b;
                }
            }
            "TimeoutStartFailureMode" | "TimeoutStopFailureMode" => {
                let parse = |v: &str| match v {
                    "terminate" | "" => Ok(super::TimeoutMode::Terminate),
                    "abort" => Ok(super::TimeoutMode::Abort),
                    "kill" => Ok(super::TimeoutMode::Kill),
                    _ => Err("expected terminate, abort or kill".to_string()),
                };
                if let Some(mode) = self.value(entry, parse) {
                    if entry.key == "TimeoutStartFailureMode" {
                        svc.timeout_start_failure_mode = mode;
                    } else {
                        svc.timeout_stop_failure_mode = mode;
                    }
                }
            }
            "RestartMode" => {
                let parse = |v: &str| match v {
                    "normal" => Ok(true),
                    "direct" | "" => Ok(false),
                    _ => Err("expected normal or direct".to_string()),
                };
                if let Some(normal) = self.value(entry, parse) {
                    svc.restart_mode_normal = normal;
                }
            }
            "GuessMainPID" => {
                if let Some(b) = self.value(entry, parse_bool) {
                    svc.guess_main_pid = b;
                }
            }
            "OOMPolicy" => {
                let parse = |v: &str| match v {
                    "continue" => Ok(super::OomPolicy::Continue),
                    "stop" | "" => Ok(super::OomPolicy::Stop),
                    "kill" => Ok(super::OomPolicy::Kill),
                    _ => Err("expected continue, stop or kill".to_string()),
                };
                if let Some(p) = self.value(entry, parse) {
                    svc.oom_policy = p;
                }
            }
            "ExitType" => {
                let parse = |v: &str| match v {
                    "main" | "" => Ok(false),
                    "cgroup" => Ok(true),
                    _ => Err("expected main or cgroup".to_string()),
                };
                if let Some(cgroup) = self.value(entry, parse) {
                    svc.exit_type_cgroup = cgroup;
                }
            }
            "WatchdogSec" => {
                if let Some(t) = self.value(entry, parse_timeout) {
                    svc.watchdog = t;
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
                // `-/path`: a missing dir is no error; `~`: the User='s home (issue 14).
                let optional = entry.value.starts_with('-');
                let value = entry.value.strip_prefix('-').unwrap_or(&entry.value);
                svc.exec.working_directory_optional = optional;
                svc.exec.working_directory_home = value == "~";
                if value.is_empty() || value == "~" {
                    svc.working_directory = None;
                } else if let Some(p) = self.value(entry, |_| absolute_path(value)) {
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
            // The [Service] spelling systemd still reads.
            "StartLimitAction" => {
                if let Some(a) = self.value(entry, parse_action) {
                    unit.relations.start_limit_action = a;
                }
            }
            "StartLimitIntervalSec" | "StartLimitInterval" | "StartLimitBurst" => self.start_limit(unit, entry),
            // systemd still reads it in [Service], where it once lived.
            "FailureAction" => {
                if let Some(a) = self.value(entry, parse_action) {
                    unit.relations.failure_action = a;
                }
            }
            k if super::exec::service_keys().any(|e| e == k) => match svc.exec.apply(k, &entry.value) {
                Ok(Some(warning)) => self.warn(entry.line, warning),
                Ok(None) => {}
                Err(e) => self.error(entry.line, format!("invalid {k}={}: {e}", entry.value)),
            },
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
                if let Some(g) = self.value(entry, super::gpus::GpuSpec::parse) {
                    inst.gpus = g;
                }
            }
            "GPUMemoryMin" => {
                if let Some(b) = self.value(entry, parse_memory_max) {
                    inst.limits.gpu_memory_min = b;
                }
            }
            "MemoryRestartAbove" => {
                if let Some(b) = self.value(entry, parse_memory_max) {
                    inst.limits.memory_restart_above = b;
                }
            }
            "GPUMemoryRestartAbove" => {
                if let Some(b) = self.value(entry, parse_memory_max) {
                    inst.limits.gpu_memory_restart_above = b;
                }
            }
            "RestartAboveSec" => {
                if let Some(d) = self.value(entry, parse_finite_timespan) {
                    inst.limits.restart_above_window = d;
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
            "DrainCheck" => inst.drain_check = non_empty(&entry.value),
            "DrainTimeoutSec" => {
                if let Some(d) = self.value(entry, parse_finite_timespan) {
                    inst.drain_timeout = d;
                }
            }
            "IdleStopSec" => {
                if entry.value.is_empty() {
                    inst.idle_stop = None;
                } else if let Some(d) = self.value(entry, parse_finite_timespan) {
                    inst.idle_stop = (!d.is_zero()).then_some(d);
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
        "on-success" => Ok(RestartPolicy::OnSuccess),
        "on-abort" => Ok(RestartPolicy::OnAbort),
        "on-watchdog" => Ok(RestartPolicy::OnWatchdog),
        _ => Err("valid values: no, on-success, on-failure, on-abnormal, on-watchdog, on-abort, always".to_string()),
    }
}

/// TimeoutStartSec=/TimeoutStopSec=: `0` and `infinity` both disable the timeout.
fn parse_timeout(v: &str) -> Result<Option<Duration>, String> {
    Ok(parse_timespan(v)?.filter(|d| !d.is_zero()))
}

/// A well-known D-Bus name (the specification's rule): two or more
/// dot-separated elements of `[A-Za-z0-9_-]`, none empty or starting with a
/// digit, at most 255 bytes. Unique names (`:1.4`) are the bus's to hand out.
fn parse_bus_name(v: &str) -> Result<String, String> {
    let element_ok = |e: &str| {
        !e.is_empty()
            && !e.starts_with(|c: char| c.is_ascii_digit())
            && e.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    };
    if v.len() <= 255 && v.split('.').count() >= 2 && v.split('.').all(element_ok) {
        Ok(v.to_string())
    } else {
        Err("not a well-known D-Bus name (like org.freedesktop.Avahi)".to_string())
    }
}

fn parse_service_type(v: &str) -> Result<ServiceType, String> {
    Ok(match v {
        "simple" => ServiceType::Simple,
        "exec" => ServiceType::Exec,
        "forking" => ServiceType::Forking,
        "oneshot" => ServiceType::Oneshot,
        "dbus" => ServiceType::Dbus,
        "notify" => ServiceType::Notify,
        "notify-reload" => ServiceType::NotifyReload,
        "idle" => ServiceType::Idle,
        _ => return Err("valid values: simple, exec, forking, oneshot, dbus, notify, notify-reload, idle".into()),
    })
}

fn parse_kill_mode(v: &str) -> Result<KillMode, String> {
    match v {
        "control-group" => Ok(KillMode::ControlGroup),
        "process-group" => Ok(KillMode::ProcessGroup),
        "mixed" => Ok(KillMode::Mixed),
        "process" => Ok(KillMode::Process),
        "none" => Err("not supported: systemd itself deprecates it (nothing would be stopped); \
             valid values: control-group, process-group, mixed, process"
            .to_string()),
        _ => Err("valid values: control-group, process-group, mixed, process".to_string()),
    }
}

/// SuccessAction=/FailureAction=: systemd's values; `none` is None.
fn parse_action(v: &str) -> Result<Option<String>, String> {
    const ACTIONS: &[&str] = &[
        "exit",
        "exit-force",
        "reboot",
        "reboot-force",
        "reboot-immediate",
        "poweroff",
        "poweroff-force",
        "poweroff-immediate",
        "halt",
        "halt-force",
        "halt-immediate",
        "kexec",
        "kexec-force",
        "soft-reboot",
        "soft-reboot-force",
    ];
    match v {
        "none" => Ok(None),
        _ if ACTIONS.contains(&v) => Ok(Some(v.to_string())),
        _ => Err(format!("valid values: none, {}", ACTIONS.join(", "))),
    }
}

/// `SIGTERM`, `TERM`, `15`, or a real-time signal number.
/// The exit-code names systemd takes in exit-status lists (systemd.exec(5),
/// "Process Exit Codes": generic, LSB and BSD sysexits; systemd's own 200+
/// names are for its failures to set a process up, which aikore reports by
/// text instead).
const EXIT_NAMES: &[(&str, i32)] = &[
    ("SUCCESS", 0),
    ("FAILURE", 1),
    ("INVALIDARGUMENT", 2),
    ("NOTIMPLEMENTED", 3),
    ("NOPERMISSION", 4),
    ("NOTINSTALLED", 5),
    ("NOTCONFIGURED", 6),
    ("NOTRUNNING", 7),
    ("USAGE", 64),
    ("DATAERR", 65),
    ("NOINPUT", 66),
    ("NOUSER", 67),
    ("NOHOST", 68),
    ("UNAVAILABLE", 69),
    ("SOFTWARE", 70),
    ("OSERR", 71),
    ("OSFILE", 72),
    ("CANTCREAT", 73),
    ("IOERR", 74),
    ("TEMPFAIL", 75),
    ("PROTOCOL", 76),
    ("NOPERM", 77),
    ("CONFIG", 78),
];

/// `SuccessExitStatus=1 2 SIGUSR1 DATAERR`: codes 0-255, signal names and
/// systemd's exit-code names ([`EXIT_NAMES`]).
pub fn parse_exit_set(v: &str) -> Result<ExitSet, String> {
    let mut set = ExitSet::default();
    for word in v.split_whitespace() {
        if let Ok(code) = word.parse::<i32>() {
            if !(0..=255).contains(&code) {
                return Err(format!("{code} is not an exit code (0-255)"));
            }
            set.codes.push(code);
        } else if let Some((_, code)) = EXIT_NAMES.iter().find(|(name, _)| *name == word) {
            set.codes.push(*code);
        } else if word.starts_with("SIG") {
            set.signals.push(parse_signal(word).map_err(|e| format!("{word}: {e}"))?);
        } else {
            return Err(format!(
                "{word}: expected an exit code (0-255), an exit-code name such as DATAERR or a signal name such as \
                 SIGUSR1"
            ));
        }
    }
    Ok(set)
}

pub fn parse_signal(v: &str) -> Result<i32, String> {
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

/// MemoryMax= and the other byte limits: systemd's bytes (units::exec's
/// one parser), a limit of 0 refused; empty or `infinity` is no limit.
pub(crate) fn parse_memory_max(v: &str) -> Result<Option<u64>, String> {
    let v = v.trim();
    if v.is_empty() {
        return Ok(None);
    }
    match super::exec::parse_bytes_or_infinity(v)? {
        Some(0) => Err(format!("'{v}': a limit of 0 bytes would stop everything; give a size or infinity")),
        bytes => Ok(bytes),
    }
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
