//! The real [`ProcessControl`]: environments, users, cgroups or process
//! groups, and log pipes for unit processes on this machine.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

use super::cgroup::CgroupRoot;
use super::drain::{CgroupWatcher, ProcSweep, UnitProcesses};
use super::members::Membership;
use super::spawn::{spawn_in, ProcessSpec};
use super::spawner::{SpawnDone, SpawnJob, SpawnReport, Spawner, Spawning};
use super::{DrainHint, ExitReport, OsError, Prepared, ProcessControl, ReadyTarget, Role, RunHooks};
use crate::logs::LogHub;
use crate::units::{expand_vars, parse_env_file, ExecCommand, Privilege, ReadyCheck, Unit};
use nix::sys::signal::Signal;

pub struct HostConfig {
    /// Canonical data dir: the `AIKORE_DATA_DIR` marker value and the base of relative paths.
    pub data_dir: PathBuf,
    pub cgroups: Option<CgroupRoot>,
    /// Environment every unit inherits (the container's, minus aikore's own secrets).
    pub base_env: Vec<(String, String)>,
    /// What the layer above adds to a run of an instance (port lease, env,
    /// display); None in setups without instances. Handed in at boot, so the
    /// supervisor never imports `instances`.
    pub hooks: Option<Arc<dyn RunHooks>>,
    /// (uid, gid) every instance runs as: the instance user (PUID/PGID).
    /// Services are not given it: they run as their User=, else root.
    pub default_identity: Option<(u32, u32)>,
}

pub struct HostProcesses {
    config: HostConfig,
    logs: Arc<LogHub>,
    exits: mpsc::UnboundedSender<ExitReport>,
    /// How each unit with a current run finds its processes.
    members: HashMap<String, Membership>,
    /// The PIDFile= of each forking unit whose main pid was read from it: removed at end-run.
    pid_files: HashMap<String, PathBuf>,
    /// Units whose current run holds a display lease (persistent mode).
    displays: std::collections::HashSet<String>,
    /// Every spawned pid with its start time, on disk: a daemon restarted
    /// after a kill -9 stops what this one left (issue 12 item 7).
    pids: super::members::PidRecord,
    /// Where "the unit may be empty" goes: to the engine.
    hints: mpsc::UnboundedSender<DrainHint>,
    /// Turns a unit cgroup's `populated 0` into a hint; started with the first unit cgroup.
    watcher: Option<CgroupWatcher>,
    /// What is known of the processes of units without a cgroup (see `drain`).
    known: UnitProcesses,
    /// Units without a cgroup the engine waits on: while there is one, the
    /// reaper's orphans become hints (`armed`, read on the reaper thread).
    draining: HashSet<String>,
    armed: Arc<AtomicBool>,
    /// The /proc sweep of the current engine batch, shared by every unit it signals or checks.
    sweep: Option<ProcSweep>,
    /// Per unit, what its current run's failure classification needs.
    runs: HashMap<String, RunFacts>,
    /// Per unit, the current run's private /tmp and runtime dirs (exec.rs).
    exec_runs: HashMap<String, super::exec::RunDirs>,
    /// The NOTIFY_SOCKET readers of `Type=notify` runs, stopped at `end_run`.
    notifiers: HashMap<String, tokio::task::JoinHandle<()>>,
    /// The BPF programs (DeviceAllow=, IPAddressDeny=) on each unit's cgroup for its current run.
    bpf: HashMap<String, super::cgroup_bpf::Attached>,
    /// Forks off the engine's thread (issue 15); its reports go to the engine.
    spawner: Spawner,
    spawn_reports: Option<mpsc::UnboundedReceiver<SpawnReport>>,
}

/// What the failure classifier needs from a run that the run's end cannot
/// tell by itself.
#[derive(Default)]
struct RunFacts {
    /// `/proc/vmstat` `oom_kill` when the run began.
    host_oom_base: u64,
    /// The unit cgroup's `oom_kill` when it was made for this run.
    cgroup_oom_base: u64,
    /// The `seq` of the log's last line before the run: a restart continues
    /// the same log, and the previous run's lines must not speak for this one.
    log_seq_base: u64,
    /// The output captures of the run's processes: its log's last lines are
    /// complete only once they finished.
    captures: Vec<tokio::task::JoinHandle<()>>,
}

/// How long a classification waits for a run's output captures to finish:
/// its processes are gone, so each capture only reads what is left in its
/// pipe; the bound is for a pipe some escaped process still holds open.
const CAPTURE_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

/// Log lines the classifier reads: a Python traceback with chained
/// exceptions fits, and the ring holds them (no disk read).
const FAILURE_TAIL_LINES: usize = 100;

/// The daemon's own environment minus variables that are aikore's business
/// (passwords and tokens must never leak into third-party apps).
pub fn inherited_env() -> Vec<(String, String)> {
    std::env::vars().filter(|(k, _)| !k.starts_with("AIKORE_")).collect()
}

impl HostProcesses {
    /// `hints` carries [`DrainHint`]s to the engine (`Engine::run`'s third channel).
    pub fn new(
        config: HostConfig,
        logs: Arc<LogHub>,
        exits: mpsc::UnboundedSender<ExitReport>,
        hints: mpsc::UnboundedSender<DrainHint>,
    ) -> Self {
        let armed = Arc::new(AtomicBool::new(false));
        let (orphans, listening) = (hints.clone(), Arc::clone(&armed));
        crate::init::reaper().on_orphan(Box::new(move |_pid| {
            if listening.load(Ordering::SeqCst) {
                orphans.send(DrainHint::Any).is_ok()
            } else {
                !orphans.is_closed()
            }
        }));
        let pids = super::members::PidRecord::new(&config.data_dir);
        let (spawner, spawn_reports) = Spawner::new();
        HostProcesses {
            spawner,
            spawn_reports: Some(spawn_reports),
            config,
            logs,
            exits,
            members: HashMap::new(),
            pid_files: HashMap::new(),
            displays: Default::default(),
            pids,
            hints,
            watcher: None,
            known: UnitProcesses::default(),
            draining: HashSet::new(),
            armed,
            sweep: None,
            runs: HashMap::new(),
            exec_runs: HashMap::new(),
            notifiers: HashMap::new(),
            bpf: HashMap::new(),
        }
    }

    /// This batch's /proc sweep, taken on first use.
    fn sweep(&mut self) -> &ProcSweep {
        let data_dir = self.data_marker();
        self.sweep.get_or_insert_with(|| ProcSweep::take(&data_dir))
    }

    /// The unit's processes (pid, pgid) by this batch's sweep; they are remembered.
    fn swept_members(&mut self, unit: &str, pgid: Option<i32>) -> Vec<(i32, i32)> {
        let found: Vec<(i32, i32)> = self.sweep().members(unit, pgid).collect();
        for (pid, group) in &found {
            self.known.add(unit, *pid, *group);
        }
        found
    }

    fn watch_cgroup(&mut self, unit: &str, cg: &super::cgroup::UnitCgroup) {
        if self.watcher.is_none() {
            match CgroupWatcher::start(self.hints.clone()) {
                Ok(watcher) => self.watcher = Some(watcher),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch cgroup events; stops wait for TimeoutStopSec");
                    return;
                }
            }
        }
        if let Some(Err(e)) = self.watcher.as_ref().map(|w| w.watch(unit, cg.path())) {
            tracing::warn!(unit = %unit, error = %e, "cannot watch the unit's cgroup.events");
        }
    }

    fn data_marker(&self) -> String {
        self.config.data_dir.display().to_string()
    }

    fn environment(&self, unit: &Unit, extra: &[(String, String)]) -> Result<Vec<(String, String)>, String> {
        let mut env: Vec<(String, String)> = self.config.base_env.clone();
        env.push(("AIKORE_UNIT".into(), unit.name.clone()));
        env.push(("AIKORE_DATA_DIR".into(), self.data_marker()));
        for file in &unit.service.environment_files {
            match std::fs::read_to_string(&file.path) {
                Ok(text) => env.extend(parse_env_file(&text)),
                Err(_) if file.optional => {}
                Err(e) => return Err(format!("EnvironmentFile {}: {e}", file.path.display())),
            }
        }
        env.extend(unit.service.environment.iter().cloned());
        env.extend(extra.iter().cloned());
        // Later assignments win; keep one entry per name, in first-seen order.
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut out: Vec<(String, String)> = Vec::with_capacity(env.len());
        for (k, v) in env {
            match seen.get(&k) {
                Some(&i) => out[i].1 = v,
                None => {
                    seen.insert(k.clone(), out.len());
                    out.push((k, v));
                }
            }
        }
        Ok(out)
    }

    fn membership(&mut self, unit: &Unit, main_pid: Option<i32>) -> Membership {
        if let Some(existing) = self.members.get(&unit.name) {
            if let (Membership::Marked { unit: u, data_dir, pgid: None }, Some(pid)) = (existing, main_pid) {
                let updated = Membership::Marked { unit: u.clone(), data_dir: data_dir.clone(), pgid: Some(pid) };
                self.members.insert(unit.name.clone(), updated.clone());
                return updated;
            }
            return existing.clone();
        }
        let membership = match self.config.cgroups.as_ref().map(|root| root.unit(&unit.name)) {
            Some(Ok(cg)) => {
                // Watched from its creation, before any process is in it, so no emptying is missed.
                self.watch_cgroup(&unit.name, &cg);
                self.runs.entry(unit.name.clone()).or_default().cgroup_oom_base = cg.oom_kills().unwrap_or(0);
                if unit.service.oom_policy == crate::units::OomPolicy::Kill {
                    // OOMPolicy=kill: the kernel kills every process of the cgroup at once on an OOM kill.
                    if let Err(e) = std::fs::write(cg.path().join("memory.oom.group"), "1") {
                        let why = format!("OOMPolicy=kill: memory.oom.group not set ({e}); aikore kills the rest");
                        self.logs.note(&unit.name, &why);
                    }
                }
                // Resource keys (issue 14): each one not applied is said at every start.
                let mut problems = cg.apply_resources(unit.service.memory_max, &unit.service.exec.resources);
                problems.extend(self.apply_access(unit, &cg));
                for why in problems {
                    tracing::warn!(unit = %unit.name, "{why}");
                    self.logs.note(&unit.name, &why);
                }
                Membership::Cgroup(cg)
            }
            Some(Err(e)) => {
                tracing::warn!(unit = %unit.name, error = %e, "cannot create the unit's cgroup; tracking by process group");
                self.marked(unit, main_pid)
            }
            None => {
                let resources =
                    crate::units::Resources { access: Default::default(), ..unit.service.exec.resources.clone() };
                if unit.service.memory_max.is_some() || !resources.is_empty() {
                    self.logs.note(
                        &unit.name,
                        "MemoryMax= and the other resource keys are not enforced: no writable cgroup v2 \
                         (tracking by process group)",
                    );
                }
                let access = &unit.service.exec.resources.access;
                if *access != crate::units::cgroup_access::CgroupAccess::default() {
                    let why = "DevicePolicy=, DeviceAllow=, IPAddressAllow=, IPAddressDeny=, IPAccounting= and Delegate= are not \
                               enforced: they need the unit's own cgroup, and there is no writable cgroup v2";
                    tracing::warn!(unit = %unit.name, "{why}");
                    self.logs.note(&unit.name, why);
                }
                self.marked(unit, main_pid)
            }
        };
        self.members.insert(unit.name.clone(), membership.clone());
        membership
    }

    /// DeviceAllow=, IPAddressDeny= and friends, Delegate= on the unit's new
    /// cgroup (supervisor/cgroup_bpf.rs); the lines for what is not enforced.
    fn apply_access(&mut self, unit: &Unit, cg: &super::cgroup::UnitCgroup) -> Vec<String> {
        use crate::units::cgroup_access::Delegate;
        let access = &unit.service.exec.resources.access;
        let clock;
        let access = if unit.service.exec.ns.protect_clock {
            clock = access.with_protect_clock();
            &clock
        } else {
            access
        };
        if let Some(old) = self.bpf.remove(&unit.name) {
            old.detach();
        }
        let (attached, mut problems) = super::cgroup_bpf::apply(&unit.name, cg.path(), access);
        if let Some(attached) = attached {
            self.bpf.insert(unit.name.clone(), attached);
        }
        if access.delegate != Delegate::No {
            // The unit's User= (an instance never has Delegate=: keys.rs keeps it out of .instance files).
            match resolve_user(unit) {
                Ok(id) => {
                    let owner = id.uid.map(|uid| (uid, id.gid.unwrap_or(uid)));
                    problems.extend(super::cgroup_bpf::delegate(cg.path(), &access.delegate, owner));
                }
                Err(e) => problems.push(format!("Delegate= is not enforced: {e}")),
            }
        }
        problems
    }

    /// The unit's live processes now.
    fn unit_pids(&mut self, unit: &str) -> Vec<i32> {
        match self.members.get(unit) {
            Some(Membership::Marked { pgid, .. }) => {
                let pgid = *pgid;
                self.swept_members(unit, pgid).into_iter().map(|(pid, _)| pid).collect()
            }
            Some(m) => m.pids(),
            None => Vec::new(),
        }
    }

    fn marked(&self, unit: &Unit, pgid: Option<i32>) -> Membership {
        Membership::Marked { unit: unit.name.clone(), data_dir: self.data_marker(), pgid }
    }
}

/// Who a unit's processes run as, resolved before fork (NSS lookups allocate).
#[derive(Default)]
pub struct Identity {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub groups: Vec<u32>,
    /// USER, LOGNAME and HOME for the target user.
    pub env: Vec<(String, String)>,
}

/// The instance user (PUID/PGID) as a process's identity. HOME is its passwd
/// home when that is a dir it owns, else `fallback_home` (the instance's own
/// dir): never the data dir, which is the daemon's.
pub fn instance_identity(uid: u32, gid: u32, fallback_home: &std::path::Path) -> Identity {
    use std::os::unix::fs::MetadataExt;
    let user = nix::unistd::User::from_uid(uid.into()).ok().flatten();
    let home = user
        .as_ref()
        .filter(|u| std::fs::metadata(&u.dir).is_ok_and(|m| m.is_dir() && m.uid() == uid))
        .map(|u| u.dir.display().to_string())
        .unwrap_or_else(|| fallback_home.display().to_string());
    let mut env = vec![("HOME".to_string(), home)];
    if let Some(u) = &user {
        env.push(("USER".into(), u.name.clone()));
        env.push(("LOGNAME".into(), u.name.clone()));
    }
    Identity { uid: Some(uid), gid: Some(gid), groups: vec![gid], env }
}

fn resolve_user(unit: &Unit) -> Result<Identity, String> {
    use nix::unistd::{Group, User};
    let mut env = Vec::new();
    let mut uid = None;
    let mut gid = None;
    let mut groups = Vec::new();
    if let Some(name) = &unit.service.user {
        let user = match name.parse::<u32>() {
            Ok(n) => User::from_uid(n.into()),
            Err(_) => User::from_name(name),
        }
        .map_err(|e| format!("User={name}: {e}"))?
        .ok_or_else(|| format!("User={name}: no such user"))?;
        uid = Some(user.uid.as_raw());
        gid = Some(user.gid.as_raw());
        let cname = std::ffi::CString::new(user.name.clone()).map_err(|_| "User= contains NUL".to_string())?;
        groups = nix::unistd::getgrouplist(&cname, user.gid)
            .map(|g| g.into_iter().map(|g| g.as_raw()).collect())
            .unwrap_or_else(|_| vec![user.gid.as_raw()]);
        env.push(("USER".into(), user.name.clone()));
        env.push(("LOGNAME".into(), user.name.clone()));
        env.push(("HOME".into(), user.dir.display().to_string()));
    }
    if let Some(name) = &unit.service.group {
        let group = match name.parse::<u32>() {
            Ok(n) => Group::from_gid(n.into()),
            Err(_) => Group::from_name(name),
        }
        .map_err(|e| format!("Group={name}: {e}"))?
        .ok_or_else(|| format!("Group={name}: no such group"))?;
        gid = Some(group.gid.as_raw());
        if groups.is_empty() {
            groups = vec![group.gid.as_raw()];
        } else if !groups.contains(&group.gid.as_raw()) {
            groups.push(group.gid.as_raw());
        }
    }
    Ok(Identity { uid, gid, groups, env })
}

/// A uniformly drawn duration in `[0, max]`; the hasher's per-instance keys
/// come from the OS's randomness, which is all a jitter needs.
fn random_share(max: std::time::Duration) -> std::time::Duration {
    use std::hash::BuildHasher;
    if max.is_zero() {
        return max;
    }
    let draw = std::collections::hash_map::RandomState::new().hash_one(std::time::Instant::now());
    max.mul_f64(draw as f64 / u64::MAX as f64)
}

impl ProcessControl for HostProcesses {
    fn begin_run(&mut self, unit: &Unit, fresh: bool) -> Result<Prepared, OsError> {
        let retention = crate::logs::RetentionOverride {
            max_file_bytes: unit.service.log_max_file_size,
            max_files: unit.service.log_max_files,
            compress: unit.service.log_compress,
        };
        self.logs.set_retention(&unit.name, &retention);
        self.logs.begin_run(&unit.name, fresh).map_err(|e| OsError::io("log file", e))?;
        // Assert*= (issue 14): unlike a condition, one that does not hold fails the start.
        if let Some(why) = unit.checks.failed_assert() {
            self.logs.note(&unit.name, &why);
            return Err(OsError::Refused(why));
        }
        if fresh && unit.service.exec.runtime_preserve == crate::units::Preserve::Restart {
            // Kept across automatic restarts only: a start from a stop begins empty.
            super::exec::remove_runtime_directories(unit);
        }
        self.runs.insert(
            unit.name.clone(),
            RunFacts {
                host_oom_base: super::cgroup::host_oom_kills(),
                log_seq_base: self.logs.tail(&unit.name, 1).last().map_or(0, |l| l.seq),
                ..RunFacts::default()
            },
        );
        if unit.instance.is_some() {
            let hooks =
                self.config.hooks.as_ref().ok_or_else(|| OsError::Refused("instances are not configured".into()))?;
            let mut prepared = hooks.prepare(unit).map_err(OsError::Refused)?;
            prepared.runtime_extra = random_share(unit.service.runtime_randomized_extra);
            if prepared.vnc_port.is_some() {
                self.displays.insert(unit.name.clone());
            }
            return Ok(prepared);
        }
        let ready = match &unit.service.ready_check {
            ReadyCheck::Default | ReadyCheck::None => None,
            ReadyCheck::Tcp(port) => Some(ReadyTarget::Tcp { host: "127.0.0.1".into(), port: *port }),
            ReadyCheck::Http { host, port, path } => {
                Some(ReadyTarget::Http { host: host.clone(), port: *port, path: path.clone() })
            }
        };
        let mut env = Vec::new();
        if unit.service.service_type.notifies() {
            if let Some(old) = self.notifiers.remove(&unit.name) {
                old.abort();
            }
            let hints = self.hints.clone();
            super::exec::share_namespaces(unit, &mut self.exec_runs);
            let run = self.exec_runs.entry(unit.name.clone()).or_default();
            let reader = match super::exec::run_namespaces(unit, run).and_then(|ns| ns.net.as_ref()) {
                // PrivateNetwork=: an abstract socket is reached only from its own network namespace.
                Some(net) => {
                    let runtime = tokio::runtime::Handle::current();
                    super::namespaces::in_network_namespace(std::os::fd::AsFd::as_fd(net), || {
                        let _entered = runtime.enter();
                        super::notify::listen(&unit.name, hints)
                    })
                    .and_then(|listening| listening)
                }
                None => super::notify::listen(&unit.name, hints),
            }
            .map_err(|e| OsError::io("NOTIFY_SOCKET", e))?;
            self.notifiers.insert(unit.name.clone(), reader);
            env.push(("NOTIFY_SOCKET".to_string(), super::notify::socket_name(&unit.name)));
        }
        if let Some(watchdog) = unit.service.watchdog {
            env.push(("WATCHDOG_USEC".to_string(), watchdog.as_micros().to_string()));
        }
        let runtime_extra = random_share(unit.service.runtime_randomized_extra);
        Ok(Prepared { ready, env, runtime_extra, ..Prepared::default() })
    }

    fn spawn(
        &mut self,
        unit: &Unit,
        role: Role,
        command: &ExecCommand,
        extra: &[(String, String)],
    ) -> Result<i32, OsError> {
        let job = self.prepare_spawn(unit, role, command, extra, 0)?;
        let SpawnJob { unit, role, marked, spec, context, procs_fd, exits, .. } = job;
        let result = spawn_in(
            &spec,
            &context,
            procs_fd.as_ref(),
            Box::new(move |pid, status| {
                let _ = exits.send((pid, status));
            }),
        );
        self.finish_spawn(SpawnDone { ticket: 0, unit, role, marked, result })
    }

    fn start_spawn(
        &mut self,
        unit: &Unit,
        role: Role,
        command: &ExecCommand,
        extra: &[(String, String)],
        ticket: u64,
    ) -> Spawning {
        match self.prepare_spawn(unit, role, command, extra, ticket) {
            Ok(job) => {
                self.spawner.submit(job);
                Spawning::Later
            }
            Err(e) => Spawning::Now(Err(e)),
        }
    }

    fn spawn_reports(&mut self) -> Option<mpsc::UnboundedReceiver<SpawnReport>> {
        self.spawn_reports.take()
    }

    fn finish_spawn(&mut self, done: SpawnDone) -> Result<i32, OsError> {
        let SpawnDone { unit, role, marked, result, .. } = done;
        let spawned = result.map_err(|e| OsError::Spawn(e.to_string()))?;
        // What the child could not apply as asked, at every start (issue 14).
        for note in &spawned.warnings {
            tracing::warn!(unit = %unit, "{note}");
            self.logs.note(&unit, note);
        }
        if role == Role::Main {
            if let Some(Membership::Marked { pgid: pgid @ None, .. }) = self.members.get_mut(&unit) {
                *pgid = Some(spawned.pid);
            }
        }
        self.pids.add(&unit, spawned.pid);
        if marked && role == Role::Main {
            // The main process leads its own group (setsid): the unit's processes by the pgid rule.
            self.known.set_main_group(&unit, spawned.pid);
        }
        let capture = self.logs.attach(&unit, spawned.output);
        let captures = &mut self.runs.entry(unit).or_default().captures;
        captures.retain(|c| !c.is_finished());
        captures.push(capture);
        Ok(spawned.pid)
    }

    fn signal_process(&mut self, pid: i32, signal: Signal) {
        // A pid we spawned and have not reaped yet; ESRCH: it ended meanwhile, its exit is on its way.
        let _ = crate::sys::signal::to_process(pid, signal);
    }

    fn signal_group(&mut self, pgid: i32, signal: Signal) {
        // A process group we created with setsid(); ESRCH: the whole group is gone already.
        let _ = crate::sys::signal::to_group(pgid, signal);
    }

    fn signal_unit(&mut self, unit: &str, signal: Signal) {
        let signal = signal as i32;
        match self.members.get(unit) {
            Some(Membership::Marked { pgid, .. }) => {
                let pgid = *pgid;
                if let Some(pgid) = pgid {
                    // The group our main process created through setsid.
                    crate::sys::signal::group_raw(pgid, signal);
                }
                for (pid, _) in self.swept_members(unit, pgid) {
                    // A pid this batch's /proc sweep found carrying the unit's marker.
                    crate::sys::signal::process_raw(pid, signal);
                }
            }
            Some(m) => m.signal_all(signal),
            None => {}
        }
    }

    fn live_processes(&mut self, unit: &str) -> usize {
        match self.members.get(unit) {
            Some(Membership::Marked { pgid, .. }) => {
                let pgid = *pgid;
                let alive = self.known.alive(unit);
                if alive > 0 {
                    return alive;
                }
                // Nothing we know of is left: one sweep confirms that no
                // marked descendant setsid'd away since the last one.
                self.swept_members(unit, pgid).len()
            }
            Some(m) => m.pids().len(),
            None => 0,
        }
    }

    fn watch_drain(&mut self, unit: &str) {
        if let Some(Membership::Marked { .. }) = self.members.get(unit) {
            self.draining.insert(unit.to_string());
            self.armed.store(true, Ordering::SeqCst);
        }
    }

    fn batch_done(&mut self) {
        self.sweep = None;
        self.pids.flush();
    }

    fn end_run(&mut self, unit: &str) {
        super::dynamic_user::release(unit);
        if let Some(path) = self.pid_files.remove(unit) {
            // systemd removes a forking service's PID file once it is down, so a stale one never misleads.
            let _ = std::fs::remove_file(path);
        }
        if let Some(reader) = self.notifiers.remove(unit) {
            reader.abort();
        }
        self.pids.end(unit);
        if let Some(dirs) = self.exec_runs.remove(unit) {
            dirs.clean();
        }
        self.known.forget(unit);
        if self.draining.remove(unit) && self.draining.is_empty() {
            self.armed.store(false, Ordering::SeqCst);
        }
        if let Some(programs) = self.bpf.remove(unit) {
            programs.detach();
        }
        if let Some(Membership::Cgroup(cg)) = self.members.remove(unit) {
            cg.remove();
        }
        if self.displays.remove(unit) {
            if let Some(hooks) = self.config.hooks.as_ref() {
                hooks.end(unit);
            }
        }
    }

    fn note(&mut self, unit: &str, text: &str) {
        self.logs.note(unit, text.strip_prefix("[aikore] ").unwrap_or(text));
    }

    fn forked_main_pid(&mut self, unit: &Unit) -> Result<i32, super::machine::PidFileError> {
        use super::forking;
        use super::machine::PidFileError;
        let pid = match &unit.service.pid_file {
            Some(path) => {
                let file = forking::read(path)?;
                if !forking::alive(file.pid) {
                    // A stale file from an earlier run, not rewritten yet.
                    return Err(PidFileError::NotYet);
                }
                let member = self.is_member(&unit.name, file.pid);
                let pid = forking::trusted(file, nix::unistd::geteuid().as_raw(), member, path)?;
                if pid == std::process::id() as i32 {
                    return Err(PidFileError::Refused(format!("PIDFile {} names aikore itself", path.display())));
                }
                pid
            }
            None => {
                // systemd's guess (unit_search_main_pid): of the unit's processes, the one whose
                // parent is the manager, i.e. the daemon the starter left to be re-parented to us
                // (its own workers are its children, not ours).
                let me = std::process::id() as i32;
                let left: Vec<i32> = self.unit_pids(&unit.name).into_iter().filter(|p| forking::alive(*p)).collect();
                let ours: Vec<i32> =
                    left.iter().copied().filter(|p| crate::sys::proc::stat(*p).is_some_and(|s| s.ppid == me)).collect();
                match ours[..] {
                    [pid] => pid,
                    _ => {
                        return Err(PidFileError::NoMain(format!(
                            "Type=forking without PIDFile=: {} of its {} processes are aikore's children, so the \
                             main one cannot be told (GuessMainPID=)",
                            ours.len(),
                            left.len()
                        )))
                    }
                }
            }
        };
        // Its exit must reach the engine like a spawned process's: a route in the reaper (we are its
        // subreaper once its parent, the starter, is gone). Registered before the liveness check, so an
        // end in between is still routed.
        let exits = self.exits.clone();
        crate::init::reaper().lock().register(
            pid,
            Box::new(move |pid, status| {
                let _ = exits.send((pid, status));
            }),
        );
        if !forking::alive(pid) {
            return Err(PidFileError::NotYet);
        }
        self.pids.add(&unit.name, pid);
        if let Some(Membership::Marked { .. }) = self.members.get(&unit.name) {
            if let Some(pgid) = super::members::process_group_of(pid) {
                self.known.add(&unit.name, pid, pgid);
            }
        }
        if let Some(path) = &unit.service.pid_file {
            self.pid_files.insert(unit.name.clone(), path.clone());
        }
        Ok(pid)
    }

    fn oom_kills(&mut self, unit: &str) -> u64 {
        let base = self.runs.get(unit).map_or(0, |facts| facts.cgroup_oom_base);
        match self.members.get(unit) {
            Some(Membership::Cgroup(cg)) => cg.oom_kills().unwrap_or(0).saturating_sub(base),
            _ => 0,
        }
    }

    fn is_member(&mut self, unit: &str, pid: i32) -> bool {
        self.unit_pids(unit).contains(&pid)
    }

    fn port_holder(&mut self, port: u16) -> Option<String> {
        super::sockets::listener_of(port)
    }

    fn failure_evidence(&mut self, unit: &str) -> crate::failure::Evidence {
        let facts = self.runs.remove(unit).unwrap_or_default();
        let wait = || {
            let deadline = std::time::Instant::now() + CAPTURE_GRACE;
            while facts.captures.iter().any(|c| !c.is_finished()) && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        };
        // The captures run on the other workers; block_in_place hands this
        // worker's other tasks away meanwhile (it would panic on a
        // current-thread runtime, where nothing could progress anyway).
        if let Ok(tokio::runtime::RuntimeFlavor::MultiThread) =
            tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor())
        {
            tokio::task::block_in_place(wait);
        }
        let cgroup_oom_kills = match self.members.get(unit) {
            Some(Membership::Cgroup(cg)) => cg.oom_kills().unwrap_or(0).saturating_sub(facts.cgroup_oom_base),
            _ => 0,
        };
        let lines = self
            .logs
            .tail(unit, FAILURE_TAIL_LINES)
            .into_iter()
            .filter(|l| l.seq > facts.log_seq_base)
            .map(|l| l.text)
            .collect();
        crate::failure::Evidence {
            cgroup_oom_kills,
            host_oom_kills: super::cgroup::host_oom_kills().saturating_sub(facts.host_oom_base),
            lines,
            ..Default::default()
        }
    }
}

impl HostProcesses {
    /// Everything a spawn needs that this thread must work out (identity,
    /// environment, exec context, the cgroup to join): the fork itself can
    /// then run anywhere.
    fn prepare_spawn(
        &mut self,
        unit: &Unit,
        role: Role,
        command: &ExecCommand,
        extra: &[(String, String)],
        ticket: u64,
    ) -> Result<SpawnJob, OsError> {
        // An instance always runs as the instance user (its file cannot say
        // otherwise: the .instance allow-list); a service runs as its User=,
        // else as root, systemd's default (docs/security.md).
        let instance_dir = unit.instance.as_ref().and_then(|_| Some(self.config.hooks.as_ref()?.work_dir(&unit.name)));
        let Identity { uid, gid, groups, env: user_env } = match (&instance_dir, self.config.default_identity) {
            (Some(dir), Some((uid, gid))) => instance_identity(uid, gid, dir),
            _ => match super::dynamic_user::for_unit(unit) {
                // DynamicUser=: a transient id, no passwd entry; HOME=/ as systemd gives it.
                Some(dynamic) => {
                    let dynamic = dynamic.map_err(OsError::Refused)?;
                    let env = vec![
                        ("USER".to_string(), dynamic.name.clone()),
                        ("LOGNAME".to_string(), dynamic.name),
                        ("HOME".to_string(), "/".to_string()),
                    ];
                    Identity { uid: Some(dynamic.uid), gid: Some(dynamic.uid), groups: vec![dynamic.uid], env }
                }
                None => resolve_user(unit).map_err(OsError::Refused)?,
            },
        };
        // The exec context (issue 14): directories, private /tmp, groups, limits, sandbox.
        // PermissionsStartOnly=yes: the `+` prefix on every command but ExecStart=.
        let privilege = match (unit.service.permissions_start_only, role) {
            (true, Role::Main) | (false, _) => command.privilege,
            (true, _) => Privilege::Full,
        };
        if unit.instance.is_some() && privilege != Privilege::Normal {
            return Err(OsError::Refused("the '+', '!' and '!!' prefixes are not allowed in an instance".into()));
        }
        // `+`: none of the sandbox for this command.
        let unsandboxed;
        let exec_unit = match privilege {
            Privilege::Full => {
                let mut u = unit.clone();
                let e = &mut u.service.exec;
                e.no_new_privileges = Some(false);
                e.capability_bounding_set = None;
                e.ambient_capabilities = 0;
                e.private_tmp = false;
                e.protect_system = Default::default();
                e.protect_home = Default::default();
                e.read_write_paths.clear();
                e.read_only_paths.clear();
                e.inaccessible_paths.clear();
                e.seccomp = Default::default();
                e.ns = e.ns.without_file_system_sandbox();
                e.supplementary_groups.clear();
                unsandboxed = u;
                &unsandboxed
            }
            Privilege::NoUser => {
                let mut u = unit.clone();
                u.service.exec.supplementary_groups.clear();
                unsandboxed = u;
                &unsandboxed
            }
            Privilege::Normal => unit,
        };
        super::exec::share_namespaces(unit, &mut self.exec_runs);
        let run = self.exec_runs.entry(unit.name.clone()).or_default();
        let for_process = super::exec::for_process(exec_unit, (uid, gid), &groups, unit.instance.is_some(), run)
            .map_err(OsError::Refused)?;
        let groups = for_process.groups;
        let mut env = self.environment(unit, &user_env).map_err(OsError::Refused)?;
        env.extend(for_process.env);
        env.extend(extra.iter().cloned());
        let env = {
            // Re-run dedup with the extras applied last.
            let mut merged: Vec<(String, String)> = Vec::with_capacity(env.len());
            for (k, v) in env {
                match merged.iter_mut().find(|(mk, _)| *mk == k) {
                    Some(slot) => slot.1 = v,
                    None => merged.push((k, v)),
                }
            }
            merged.retain(|(k, v)| !unset_matches(&unit.service.exec.unset_environment, k, v));
            merged
        };
        // The `:` prefix: the words as written.
        let argv: Vec<String> = match command.no_expand {
            true => command.argv.clone(),
            false => command.argv.iter().map(|w| expand_vars(w, &env)).collect(),
        };
        // An instance works in its own dir unless told otherwise.
        let cwd = unit.service.working_directory.clone().or_else(|| {
            let hooks = self.config.hooks.as_ref()?;
            unit.instance.as_ref().map(|_| hooks.work_dir(&unit.name))
        });
        // WorkingDirectory=~: the user's home (root's without User=).
        let home = || env.iter().rev().find(|(k, _)| k == "HOME").map_or("/root".into(), |(_, v)| PathBuf::from(v));
        let cwd = if unit.service.exec.working_directory_home { Some(home()) } else { cwd };
        // `+`, `!`: this command runs as aikore's own user (root), without User=/Group= (and
        // SupplementaryGroups=, whose groups belong to that user); directories above stay the user's.
        let (uid, gid, groups) = match privilege {
            Privilege::Normal => (uid, gid, groups),
            Privilege::NoUser | Privilege::Full => (None, None, Vec::new()),
        };
        let argv0 = command.argv0.clone();
        let (umask, nice) = (unit.service.umask, unit.service.nice);
        let spec = ProcessSpec { argv, argv0, env, cwd, umask, nice, uid, gid, groups };
        let membership = self.membership(unit, None);
        let procs_fd = match &membership {
            Membership::Cgroup(cg) => Some(cg.open_procs().map_err(|e| OsError::io("cgroup", e))?),
            Membership::Marked { .. } => None,
        };
        for note in &for_process.notes {
            self.logs.note(&unit.name, note);
        }
        let marked = matches!(membership, Membership::Marked { .. });
        Ok(SpawnJob {
            ticket,
            unit: unit.name.clone(),
            role,
            marked,
            spec,
            context: for_process.context,
            procs_fd,
            exits: self.exits.clone(),
        })
    }
}

/// `UnsetEnvironment=`: a `NAME` removes the variable, a `NAME=VALUE` only that exact assignment.
fn unset_matches(unset: &[String], name: &str, value: &str) -> bool {
    unset.iter().any(|u| match u.split_once('=') {
        Some((n, v)) => n == name && v == value,
        None => u == name,
    })
}

#[cfg(test)]
mod tests {
    use super::random_share;
    use std::time::Duration;

    #[test]
    fn a_random_share_stays_within_its_bound_and_varies() {
        assert_eq!(random_share(Duration::ZERO), Duration::ZERO);
        let max = Duration::from_secs(30);
        let draws: Vec<Duration> = (0..32).map(|_| random_share(max)).collect();
        assert!(draws.iter().all(|d| *d <= max), "{draws:?}");
        assert!(draws.iter().any(|d| *d != draws[0]), "32 draws all equal: {draws:?}");
    }
}
