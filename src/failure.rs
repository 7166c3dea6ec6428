//! Failure classes: why a run ended badly, in plain words, from what is known
//! when it ends: its exit status, how many OOM kills its cgroup (or the host)
//! saw during it, and the last lines of its log. Pure: the supervisor gathers
//! that evidence and decides what a class means for restarts
//! ([`FailureClass::restart_cannot_fix`]).

use std::fmt;

/// Why a run ended badly. The names are the API's and the metric's `class`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureClass {
    /// The GPU ran out of memory (PyTorch's OutOfMemoryError, CUDA/cuBLAS allocation errors).
    CudaOom,
    /// The kernel's OOM killer killed a process in the unit's own cgroup
    /// (its MemoryMax=, or the memory of a cgroup above it): systemd's
    /// `Result=oom-kill`.
    OomKill,
    /// The kernel's OOM killer killed the run's main process while the host
    /// ran out of memory (known without a cgroup: SIGKILL while
    /// `/proc/vmstat` `oom_kill` moved).
    HostOom,
    /// A Python module is not installed in the environment the app runs in.
    MissingModule,
    /// The port the app wants is taken.
    PortInUse,
    DiskFull,
    /// No GPU is visible to the process, or the driver is missing or too old.
    NoGpu,
    /// Name resolution or connections failed (typically during an install).
    Network,
    /// A signal from outside ended it, with no sign of an OOM kill.
    Killed,
    Unknown,
}

impl FailureClass {
    pub const ALL: [FailureClass; 10] = [
        FailureClass::CudaOom,
        FailureClass::OomKill,
        FailureClass::HostOom,
        FailureClass::MissingModule,
        FailureClass::PortInUse,
        FailureClass::DiskFull,
        FailureClass::NoGpu,
        FailureClass::Network,
        FailureClass::Killed,
        FailureClass::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FailureClass::CudaOom => "cuda-oom",
            FailureClass::OomKill => "oom-kill",
            FailureClass::HostOom => "host-oom",
            FailureClass::MissingModule => "missing-module",
            FailureClass::PortInUse => "port-in-use",
            FailureClass::DiskFull => "disk-full",
            FailureClass::NoGpu => "no-gpu",
            FailureClass::Network => "network",
            FailureClass::Killed => "killed",
            FailureClass::Unknown => "unknown",
        }
    }

    pub fn parse(s: &str) -> Option<FailureClass> {
        FailureClass::ALL.into_iter().find(|c| c.as_str() == s.trim())
    }

    /// Running the same thing again ends the same way until someone changes
    /// something (installs the module, frees the port, exposes a GPU), so a
    /// restart only burns the start limit and hides the cause in a loop.
    pub fn restart_cannot_fix(self) -> bool {
        matches!(self, FailureClass::MissingModule | FailureClass::PortInUse | FailureClass::NoGpu)
    }
}

impl fmt::Display for FailureClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What is known of a run that ended badly.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Evidence {
    /// The exit code, when the process exited by itself.
    pub code: Option<i32>,
    /// The signal that ended it, when one did.
    pub signal: Option<i32>,
    /// OOM kills in the run's own cgroup (`memory.events` `oom_kill` moved):
    /// certain, whatever the exit status reads (a shell parent exits 137).
    pub cgroup_oom_kills: u64,
    /// OOM kills host-wide (`/proc/vmstat` `oom_kill` moved) during the run,
    /// for runs without a cgroup: only telling together with SIGKILL.
    pub host_oom_kills: u64,
    /// The last lines of the run's log, oldest first; aikore's own notes are skipped.
    pub lines: Vec<String>,
    /// The port the run was given, for the port-in-use hint.
    pub port: Option<u16>,
}

/// A user's extra pattern (`# aikore.failure = class: regex` in a blueprint).
#[derive(Debug, Clone)]
pub struct Pattern {
    pub class: FailureClass,
    pub regex: regex::Regex,
}

impl Pattern {
    /// `class: regex`, e.g. `cuda-oom: HIP out of memory`.
    pub fn parse(spec: &str) -> Result<Pattern, String> {
        let (class, regex) = spec
            .split_once(':')
            .ok_or_else(|| format!("{spec:?} is not `class: regex` (e.g. `network: timed out`)"))?;
        let class = FailureClass::parse(class).ok_or_else(|| {
            let known: Vec<&str> = FailureClass::ALL.iter().map(|c| c.as_str()).collect();
            format!("unknown failure class {:?} (one of {})", class.trim(), known.join(", "))
        })?;
        let regex = regex.trim();
        if regex.is_empty() {
            return Err(format!("{spec:?} has an empty regex"));
        }
        // Bounded so a pattern from a blueprint cannot make a huge automaton.
        let regex = regex::RegexBuilder::new(regex)
            .size_limit(1 << 20)
            .build()
            .map_err(|e| format!("bad regex in {spec:?}: {e}"))?;
        Ok(Pattern { class, regex })
    }
}

/// The verdict: the class, the log line that gave it away, and what to do.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Failure {
    pub class: FailureClass,
    /// The log line that matched, if the class came from the log.
    pub line: Option<String>,
    /// What a user can do about it, in a sentence.
    pub hint: Option<String>,
    /// For `port-in-use`: the port found taken (from the line, else the run's).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub port: Option<u16>,
}

impl Failure {
    /// One line for a status detail or a journal entry.
    pub fn summary(&self) -> String {
        let mut s = self.class.as_str().to_string();
        if let Some(hint) = &self.hint {
            s.push_str(": ");
            s.push_str(hint);
        }
        s
    }
}

/// Built-in tells, matched against the lowercased line (asyncio writes
/// "address already in use", the C library "Address already in use").
/// Order matters only within one line; the newest matching line wins.
const BUILTIN: &[(FailureClass, &str)] = &[
    (FailureClass::CudaOom, "outofmemoryerror: cuda out of memory"),
    (FailureClass::CudaOom, "cuda out of memory"),
    (FailureClass::CudaOom, "cuda error: out of memory"),
    (FailureClass::CudaOom, "cublas_status_alloc_failed"),
    (FailureClass::NoGpu, "no cuda-capable device is detected"),
    (FailureClass::NoGpu, "cuda driver version is insufficient"),
    (FailureClass::NoGpu, "found no nvidia driver"),
    (FailureClass::MissingModule, "modulenotfounderror: no module named"),
    (FailureClass::PortInUse, "address already in use"),
    // aikore's own check before it starts an instance on its port.
    (FailureClass::PortInUse, "already in use by another process"),
    (FailureClass::DiskFull, "no space left on device"),
    (FailureClass::Network, "could not resolve host"),
    (FailureClass::Network, "temporary failure in name resolution"),
    (FailureClass::Network, "name or service not known"),
    (FailureClass::Network, "newconnectionerror"),
    (FailureClass::Network, "connecttimeouterror"),
    (FailureClass::Network, "network is unreachable"),
    (FailureClass::Network, "connection broken by"),
];

/// aikore's own lines in a unit's log (`logs::NOTE_PREFIX`, spelled here so
/// this layer-0 module needs no other).
const NOTE_PREFIX: &str = "[aikore]";

/// Decides the class of a run that ended badly. An OOM kill outranks the
/// log (the process had no chance to say anything); then a user's pattern,
/// then a built-in one, newest line first; then a signal is `killed`; else `unknown`.
pub fn classify(ev: &Evidence, extra: &[Pattern]) -> Failure {
    let sigkill = ev.signal == Some(libc::SIGKILL);
    // The unit cgroup's own count is certain; the host-wide one only means
    // something together with a SIGKILL.
    if ev.cgroup_oom_kills > 0 || (sigkill && ev.host_oom_kills > 0) {
        let class = if ev.cgroup_oom_kills > 0 { FailureClass::OomKill } else { FailureClass::HostOom };
        return Failure { class, line: None, port: None, hint: Some(hint(class, "", None)) };
    }
    let lines = || ev.lines.iter().rev().filter(|l| !l.starts_with(NOTE_PREFIX));
    let user = lines().find_map(|l| extra.iter().find(|p| p.regex.is_match(l)).map(|p| (p.class, l)));
    let found = user.or_else(|| {
        lines().find_map(|l| {
            let lower = l.to_lowercase();
            BUILTIN.iter().find(|(_, needle)| lower.contains(needle)).map(|(c, _)| (*c, l))
        })
    });
    if let Some((class, line)) = found {
        let port = if class == FailureClass::PortInUse { port_in(line).or(ev.port) } else { None };
        return Failure { class, hint: Some(hint(class, line, port)), line: Some(printable(line.trim())), port };
    }
    match ev.signal {
        Some(signal) => Failure {
            class: FailureClass::Killed,
            line: None,
            port: None,
            hint: Some(format!("signal {signal} from outside aikore (another process, or the container runtime)")),
        },
        None => Failure { class: FailureClass::Unknown, line: None, hint: None, port: None },
    }
}

fn hint(class: FailureClass, line: &str, port: Option<u16>) -> String {
    match class {
        FailureClass::CudaOom => {
            "the GPU ran out of memory: free VRAM (stop other apps on that GPU) or lower the batch size/resolution"
                .into()
        }
        FailureClass::OomKill => {
            "the kernel's OOM killer killed a process in its cgroup (MemoryMax= reached): raise MemoryMax= or make it use less"
                .into()
        }
        FailureClass::HostOom => {
            "the kernel killed it for memory (the host's memory ran out): set MemoryMax= on the big users or stop other apps"
                .into()
        }
        FailureClass::MissingModule => match missing_module(line) {
            Some(module) => format!("pip install {module} into the instance's venv"),
            None => "install the missing Python module into the instance's venv".into(),
        },
        FailureClass::PortInUse => port_hint(port, None),
        FailureClass::DiskFull => "the disk is full: free space in the data volume".into(),
        FailureClass::NoGpu => "no GPU visible: check GPUs= / the NVIDIA runtime (docker run --gpus)".into(),
        FailureClass::Network => "no network: check DNS and the proxy settings, or install offline".into(),
        FailureClass::Killed => "a signal from outside aikore ended it".into(),
        FailureClass::Unknown => String::new(),
    }
}

/// The `port-in-use` hint, naming the holder when the OS side found it.
pub fn port_hint(port: Option<u16>, holder: Option<&str>) -> String {
    let holder = holder.map(printable).unwrap_or_else(|| "another process".to_string());
    match port {
        Some(port) => format!("port {port} is held by {holder}; stop it or give this unit another port"),
        None => format!("its port is held by {holder}; stop it or give this unit another port"),
    }
}

/// Longest log line kept as a failure's reason: it goes into events, the
/// journal and tooltips, and one line of app output can be megabytes.
const MAX_LINE_CHARS: usize = 400;

/// App output (a log line, a process name) made safe to show: control
/// characters (an escape sequence could rewrite the operator's terminal in
/// `aikore status`) become U+FFFD, and the text is cut at [`MAX_LINE_CHARS`].
fn printable(text: &str) -> String {
    text.chars().take(MAX_LINE_CHARS).map(|c| if c.is_control() { '\u{fffd}' } else { c }).collect()
}

/// The port a bind error names: aikore's own "port N ..." or uvicorn's
/// "address ('0.0.0.0', N)".
fn port_in(line: &str) -> Option<u16> {
    let digits = |s: &str| s.trim_start().split(|c: char| !c.is_ascii_digit()).next()?.parse().ok();
    if let Some(i) = line.find("port ") {
        if let Some(p) = digits(&line[i + 5..]) {
            return Some(p);
        }
    }
    let i = line.find("', ")?;
    digits(&line[i + 3..])
}

/// `x` of `No module named 'x.y'` — the top-level package is what pip installs.
fn missing_module(line: &str) -> Option<&str> {
    let rest = &line[line.find("No module named")? + "No module named".len()..];
    let name = rest.trim().trim_matches(|c| c == '\'' || c == '"');
    let name = name.split(['\'', '"']).next()?.split('.').next()?.trim();
    (!name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PyTorch 2.x's message, verbatim from a real run (with the traceback above it).
    const TORCH_OOM: &str = r#"Traceback (most recent call last):
  File "/app/main.py", line 12, in <module>
    x = torch.empty(1 << 40, device="cuda")
        ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 4.00 TiB. GPU 0 has a total capacity of 79.25 GiB of which 78.81 GiB is free. Of the allocated memory 0 bytes is allocated by PyTorch, and 0 bytes is reserved by PyTorch but unallocated. If reserved but unallocated memory is large try setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.  See documentation for Memory Management  (https://pytorch.org/docs/stable/notes/cuda.html#environment-variables)"#;

    fn ev(code: Option<i32>, signal: Option<i32>, text: &str) -> Evidence {
        Evidence { code, signal, lines: text.lines().map(String::from).collect(), ..Evidence::default() }
    }

    #[test]
    fn classes_from_exit_and_log_lines() {
        // (exit code, signal, log, class, line the verdict quotes (a prefix of))
        type Row<'a> = (Option<i32>, Option<i32>, &'a str, FailureClass, Option<&'a str>);
        let table: &[Row] = &[
            (Some(1), None, TORCH_OOM, FailureClass::CudaOom, Some("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 4.00 TiB")),
            (Some(1), None, "RuntimeError: CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported", FailureClass::CudaOom, Some("RuntimeError: CUDA error: out of memory")),
            (Some(1), None, "RuntimeError: CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`", FailureClass::CudaOom, Some("RuntimeError: CUDA error: CUBLAS_STATUS_ALLOC_FAILED")),
            (Some(1), None, "Traceback (most recent call last):\n  File \"main.py\", line 1, in <module>\nModuleNotFoundError: No module named 'safetensors'", FailureClass::MissingModule, Some("ModuleNotFoundError: No module named 'safetensors'")),
            (Some(1), None, "ERROR:    [Errno 98] error while attempting to bind on address ('0.0.0.0', 8188): address already in use", FailureClass::PortInUse, Some("ERROR:    [Errno 98]")),
            (Some(1), None, "OSError: [Errno 98] Address already in use", FailureClass::PortInUse, Some("OSError: [Errno 98] Address already in use")),
            (Some(1), None, "OSError: [Errno 28] No space left on device: '/data/models/x.safetensors'", FailureClass::DiskFull, Some("OSError: [Errno 28] No space left on device")),
            (Some(1), None, "RuntimeError: Found no NVIDIA driver on your system. Please check that you have an NVIDIA GPU and installed a driver", FailureClass::NoGpu, Some("RuntimeError: Found no NVIDIA driver")),
            (Some(1), None, "RuntimeError: CUDA error: no CUDA-capable device is detected", FailureClass::NoGpu, Some("RuntimeError: CUDA error: no CUDA-capable device")),
            (Some(1), None, "RuntimeError: The NVIDIA driver on your system is too old. CUDA driver version is insufficient for CUDA runtime version", FailureClass::NoGpu, None),
            (Some(128), None, "fatal: unable to access 'https://github.com/x/y/': Could not resolve host: github.com", FailureClass::Network, Some("fatal: unable to access")),
            (Some(1), None, "WARNING: Retrying (Retry(total=4, connect=None, read=None, redirect=None, status=None)) after connection broken by 'NewConnectionError('<pip._vendor.urllib3.connection.HTTPSConnection object at 0x7f>: Failed to establish a new connection: [Errno -3] Temporary failure in name resolution')': /simple/torch/", FailureClass::Network, Some("WARNING: Retrying")),
            (None, Some(15), "serving on :8188", FailureClass::Killed, None),
            (None, Some(9), "serving on :8188", FailureClass::Killed, None),
            (Some(3), None, "some error nobody knows", FailureClass::Unknown, None),
            (Some(1), None, "", FailureClass::Unknown, None),
        ];
        for (code, signal, log, class, line) in table {
            let got = classify(&ev(*code, *signal, log), &[]);
            assert_eq!(got.class, *class, "{log}");
            match line {
                Some(prefix) => assert!(got.line.as_deref().is_some_and(|l| l.starts_with(prefix)), "{got:?}"),
                None if *class == FailureClass::NoGpu => assert!(got.line.is_some()),
                None => assert_eq!(got.line, None, "{got:?}"),
            }
        }
    }

    #[test]
    fn the_newest_telling_line_wins_and_aikore_notes_are_not_the_apps() {
        let log = "ModuleNotFoundError: No module named 'old'\nrecovered\ntorch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n[aikore] No space left on device";
        let got = classify(&ev(Some(1), None, log), &[]);
        assert_eq!(got.class, FailureClass::CudaOom);
    }

    #[test]
    fn an_oom_kill_outranks_the_log_and_host_counts_need_sigkill() {
        let mut e = ev(Some(137), None, "ModuleNotFoundError: No module named 'x'");
        e.cgroup_oom_kills = 1;
        let got = classify(&e, &[]);
        assert_eq!(got.class, FailureClass::OomKill);
        assert_eq!(got.class.as_str(), "oom-kill", "systemd's Result= name");
        assert!(got.hint.unwrap().contains("MemoryMax="));
        // Both counts moved: the cgroup's is the one that names the unit's own limit.
        e.host_oom_kills = 1;
        e.signal = Some(9);
        assert_eq!(classify(&e, &[]).class, FailureClass::OomKill);

        let mut e = ev(None, Some(9), "");
        e.host_oom_kills = 2;
        assert_eq!(classify(&e, &[]).class, FailureClass::HostOom);
        // Another process's OOM kill elsewhere on the host says nothing about an exit code.
        let mut e = ev(Some(1), None, "");
        e.host_oom_kills = 2;
        assert_eq!(classify(&e, &[]).class, FailureClass::Unknown);
        let mut e = ev(None, Some(15), "");
        e.host_oom_kills = 2;
        assert_eq!(classify(&e, &[]).class, FailureClass::Killed);
    }

    #[test]
    fn hints_name_the_module_and_the_port() {
        let got = classify(&ev(Some(1), None, "ModuleNotFoundError: No module named 'diffusers.models'"), &[]);
        assert_eq!(got.hint.as_deref(), Some("pip install diffusers into the instance's venv"));
        let mut e = ev(Some(1), None, "OSError: [Errno 98] Address already in use");
        e.port = Some(8188);
        assert!(classify(&e, &[]).hint.unwrap().starts_with("port 8188 is held by"));
        let uvicorn =
            "ERROR:    [Errno 98] error while attempting to bind on address ('0.0.0.0', 7860): address already in use";
        assert!(classify(&ev(Some(1), None, uvicorn), &[]).hint.unwrap().starts_with("port 7860 is held by"));
        assert!(FailureClass::MissingModule.restart_cannot_fix());
        assert!(FailureClass::PortInUse.restart_cannot_fix() && FailureClass::NoGpu.restart_cannot_fix());
        assert!(!FailureClass::CudaOom.restart_cannot_fix() && !FailureClass::HostOom.restart_cannot_fix());
        assert!(!FailureClass::OomKill.restart_cannot_fix());
    }

    #[test]
    fn user_patterns_come_before_the_built_in_ones() {
        let hip = Pattern::parse("cuda-oom: HIP out of memory").unwrap();
        let got = classify(
            &ev(Some(1), None, "RuntimeError: HIP out of memory. Tried to allocate 2 GiB"),
            std::slice::from_ref(&hip),
        );
        assert_eq!(got.class, FailureClass::CudaOom);
        assert_eq!(got.line.as_deref(), Some("RuntimeError: HIP out of memory. Tried to allocate 2 GiB"));
        let mine = Pattern::parse(" network : ^E: Unable to fetch").unwrap();
        let log = "E: Unable to fetch some archives\nOSError: [Errno 98] Address already in use";
        assert_eq!(classify(&ev(Some(1), None, log), &[mine]).class, FailureClass::Network);

        assert!(Pattern::parse("nonsense").unwrap_err().contains("class: regex"));
        assert!(Pattern::parse("gpu-melted: x").unwrap_err().contains("unknown failure class"));
        assert!(Pattern::parse("network: (").unwrap_err().contains("bad regex"));
        assert!(Pattern::parse("network:  ").unwrap_err().contains("empty"));
    }

    #[test]
    fn names_round_trip_through_serde_and_parse() {
        for class in FailureClass::ALL {
            assert_eq!(FailureClass::parse(class.as_str()), Some(class));
            assert_eq!(serde_json::to_value(class).unwrap(), class.as_str());
        }
    }

    #[test]
    fn app_text_in_a_reason_is_made_printable_and_short() {
        let ev = Evidence {
            lines: vec![format!("ModuleNotFoundError: No module named 'x'\x1b]52;c;cGF3bmVk\x07{}", "y".repeat(5000))],
            ..Evidence::default()
        };
        let f = classify(&ev, &[]);
        let line = f.line.unwrap();
        assert!(!line.chars().any(char::is_control), "{line:?}");
        assert_eq!(line.chars().count(), MAX_LINE_CHARS);
        assert!(!port_hint(Some(1), Some("evil\x1b[2J")).contains('\x1b'));
    }
}
