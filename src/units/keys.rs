//! The table of keys: which sections and keys aikore implements, which real
//! systemd ones it accepts and ignores, and what to say about the rest.

use super::UnitKind;

const UNIT_KEYS: &[&str] = &[
    "Description",
    "After",
    "Before",
    "Requires",
    "Wants",
    "Documentation",
    "StartLimitIntervalSec",
    "StartLimitBurst",
    "ConditionPathExists",
];

const SERVICE_KEYS: &[&str] = &[
    "ExecStart",
    "ExecStartPre",
    "ExecReload",
    "ExecStop",
    "Restart",
    "RestartSec",
    "TimeoutStartSec",
    "TimeoutStopSec",
    "KillSignal",
    "KillMode",
    "Environment",
    "EnvironmentFile",
    "WorkingDirectory",
    "User",
    "Group",
    "UMask",
    "Nice",
    "ReadyCheck",
    "MemoryMax",
    "LogMaxFileSize",
    "LogMaxFiles",
    "LogCompress",
    // systemd accepts these in [Service] too (they moved from there to [Unit]).
    "StartLimitIntervalSec",
    "StartLimitBurst",
];

const INSTANCE_KEYS: &[&str] =
    &["Blueprint", "GPUs", "Port", "Autostart", "ActiveSlot", "PersistentMode", "Public", "StallAfterSec", "OutputDir"];

/// What an `.instance` file may set outside [Instance] (an allow-list, issue
/// 12): its own restart, stop and readiness behaviour and its environment.
/// Never who it runs as (User=, Group=: an instance always runs as the
/// instance user), what runs (Exec*=: its launch.sh does), files read as root
/// (EnvironmentFile=, ConditionPathExists=) or a raised priority (Nice=).
const INSTANCE_UNIT_KEYS: &[&str] = &[
    "Description",
    "After",
    "Before",
    "Requires",
    "Wants",
    "Documentation",
    "StartLimitIntervalSec",
    "StartLimitBurst",
];
const INSTANCE_SERVICE_KEYS: &[&str] = &[
    "Restart",
    "RestartSec",
    "TimeoutStartSec",
    "TimeoutStopSec",
    "KillSignal",
    "KillMode",
    "Environment",
    "UMask",
    "ReadyCheck",
    "MemoryMax",
    "LogMaxFileSize",
    "LogMaxFiles",
    "LogCompress",
    "StartLimitIntervalSec",
    "StartLimitBurst",
];

/// Whether an `.instance` file may set `key` (one aikore implements) in
/// `section`; the error text says why not.
pub fn instance_may_set(section: Section, key: &str) -> Result<(), String> {
    let allowed = match section {
        Section::Unit => INSTANCE_UNIT_KEYS.contains(&key),
        Section::Service => INSTANCE_SERVICE_KEYS.contains(&key),
        Section::Instance | Section::Install => true,
    };
    if allowed {
        return Ok(());
    }
    Err(format!(
        "{key}= is not allowed in an .instance file: an instance runs its launch.sh as the instance user \
         (PUID); write a .service unit for anything else"
    ))
}

/// Real systemd [Unit] keys aikore does not implement: accepted with a warning
/// so existing unit files load.
const SYSTEMD_UNIT_KEYS: &[&str] = &[
    "Requisite",
    "BindsTo",
    "PartOf",
    "Upholds",
    "Conflicts",
    "OnFailure",
    "OnSuccess",
    "OnFailureJobMode",
    "PropagatesReloadTo",
    "ReloadPropagatedFrom",
    "PropagatesStopTo",
    "StopPropagatedFrom",
    "JoinsNamespaceOf",
    "RequiresMountsFor",
    "WantsMountsFor",
    "IgnoreOnIsolate",
    "StopWhenUnneeded",
    "RefuseManualStart",
    "RefuseManualStop",
    "AllowIsolate",
    "DefaultDependencies",
    "SurviveFinalKillSignal",
    "CollectMode",
    "FailureAction",
    "SuccessAction",
    "FailureActionExitStatus",
    "SuccessActionExitStatus",
    "JobTimeoutSec",
    "JobRunningTimeoutSec",
    "JobTimeoutAction",
    "JobTimeoutRebootArgument",
    "StartLimitAction",
    "RebootArgument",
    "SourcePath",
    "ConditionArchitecture",
    "ConditionFirmware",
    "ConditionVirtualization",
    "ConditionHost",
    "ConditionKernelCommandLine",
    "ConditionKernelVersion",
    "ConditionCredential",
    "ConditionEnvironment",
    "ConditionSecurity",
    "ConditionCapability",
    "ConditionACPower",
    "ConditionNeedsUpdate",
    "ConditionFirstBoot",
    "ConditionPathExistsGlob",
    "ConditionPathIsDirectory",
    "ConditionPathIsSymbolicLink",
    "ConditionPathIsMountPoint",
    "ConditionPathIsReadWrite",
    "ConditionPathIsEncrypted",
    "ConditionDirectoryNotEmpty",
    "ConditionFileNotEmpty",
    "ConditionFileIsExecutable",
    "ConditionUser",
    "ConditionGroup",
    "ConditionControlGroupController",
    "ConditionMemory",
    "ConditionCPUs",
    "ConditionCPUFeature",
    "ConditionOSRelease",
    "ConditionMemoryPressure",
    "ConditionCPUPressure",
    "ConditionIOPressure",
    "AssertArchitecture",
    "AssertVirtualization",
    "AssertHost",
    "AssertKernelCommandLine",
    "AssertKernelVersion",
    "AssertCredential",
    "AssertEnvironment",
    "AssertSecurity",
    "AssertCapability",
    "AssertACPower",
    "AssertNeedsUpdate",
    "AssertFirstBoot",
    "AssertPathExists",
    "AssertPathExistsGlob",
    "AssertPathIsDirectory",
    "AssertPathIsSymbolicLink",
    "AssertPathIsMountPoint",
    "AssertPathIsReadWrite",
    "AssertDirectoryNotEmpty",
    "AssertFileNotEmpty",
    "AssertFileIsExecutable",
    "AssertUser",
    "AssertGroup",
    "AssertControlGroupController",
    "AssertMemory",
    "AssertCPUs",
    "AssertOSRelease",
];

/// Real systemd [Service] keys (service, exec, kill and resource-control
/// options) aikore does not implement.
const SYSTEMD_SERVICE_KEYS: &[&str] = &[
    // Service behaviour.
    "Type",
    "ExitType",
    "RemainAfterExit",
    "GuessMainPID",
    "PIDFile",
    "BusName",
    "ExecStartPost",
    "ExecCondition",
    "ExecStopPost",
    "RestartSteps",
    "RestartMaxDelaySec",
    "TimeoutSec",
    "TimeoutAbortSec",
    "TimeoutStartFailureMode",
    "TimeoutStopFailureMode",
    "RuntimeMaxSec",
    "RuntimeRandomizedExtraSec",
    "WatchdogSec",
    "SuccessExitStatus",
    "RestartPreventExitStatus",
    "RestartForceExitStatus",
    "RestartMode",
    "RootDirectoryStartOnly",
    "NonBlocking",
    "NotifyAccess",
    "Sockets",
    "FileDescriptorStoreMax",
    "FileDescriptorStorePreserve",
    "USBFunctionDescriptors",
    "USBFunctionStrings",
    "OOMPolicy",
    "OpenFile",
    "ReloadSignal",
    // Kill options.
    "SendSIGKILL",
    "SendSIGHUP",
    "FinalKillSignal",
    "RestartKillSignal",
    "WatchdogSignal",
    // Exec options.
    "ExecSearchPath",
    "RootDirectory",
    "RootImage",
    "RootImageOptions",
    "RootHash",
    "RootVerity",
    "MountAPIVFS",
    "BindPaths",
    "BindReadOnlyPaths",
    "MountImages",
    "ExtensionImages",
    "ExtensionDirectories",
    "DynamicUser",
    "SupplementaryGroups",
    "SetLoginEnvironment",
    "PAMName",
    "CapabilityBoundingSet",
    "AmbientCapabilities",
    "NoNewPrivileges",
    "SecureBits",
    "SELinuxContext",
    "AppArmorProfile",
    "SmackProcessLabel",
    "LimitCPU",
    "LimitFSIZE",
    "LimitDATA",
    "LimitSTACK",
    "LimitCORE",
    "LimitRSS",
    "LimitNOFILE",
    "LimitAS",
    "LimitNPROC",
    "LimitMEMLOCK",
    "LimitLOCKS",
    "LimitSIGPENDING",
    "LimitMSGQUEUE",
    "LimitNICE",
    "LimitRTPRIO",
    "LimitRTTIME",
    "CoredumpFilter",
    "KeyringMode",
    "OOMScoreAdjust",
    "TimerSlackNSec",
    "Personality",
    "IgnoreSIGPIPE",
    "CPUSchedulingPolicy",
    "CPUSchedulingPriority",
    "CPUSchedulingResetOnFork",
    "CPUAffinity",
    "NUMAPolicy",
    "NUMAMask",
    "IOSchedulingClass",
    "IOSchedulingPriority",
    "ProtectSystem",
    "ProtectHome",
    "RuntimeDirectory",
    "StateDirectory",
    "CacheDirectory",
    "LogsDirectory",
    "ConfigurationDirectory",
    "RuntimeDirectoryMode",
    "StateDirectoryMode",
    "CacheDirectoryMode",
    "LogsDirectoryMode",
    "ConfigurationDirectoryMode",
    "RuntimeDirectoryPreserve",
    "TimeoutCleanSec",
    "ReadWritePaths",
    "ReadOnlyPaths",
    "InaccessiblePaths",
    "ExecPaths",
    "NoExecPaths",
    "TemporaryFileSystem",
    "PrivateTmp",
    "PrivateDevices",
    "PrivateNetwork",
    "NetworkNamespacePath",
    "PrivateIPC",
    "IPCNamespacePath",
    "MemoryKSM",
    "PrivatePIDs",
    "PrivateUsers",
    "ProtectHostname",
    "ProtectClock",
    "ProtectKernelTunables",
    "ProtectKernelModules",
    "ProtectKernelLogs",
    "ProtectControlGroups",
    "RestrictAddressFamilies",
    "RestrictFileSystems",
    "RestrictNamespaces",
    "LockPersonality",
    "MemoryDenyWriteExecute",
    "RestrictRealtime",
    "RestrictSUIDSGID",
    "RemoveIPC",
    "PrivateMounts",
    "MountFlags",
    "SystemCallFilter",
    "SystemCallErrorNumber",
    "SystemCallArchitectures",
    "SystemCallLog",
    "PassEnvironment",
    "UnsetEnvironment",
    "StandardInput",
    "StandardOutput",
    "StandardError",
    "StandardInputText",
    "StandardInputData",
    "LogLevelMax",
    "LogExtraFields",
    "LogRateLimitIntervalSec",
    "LogRateLimitBurst",
    "LogFilterPatterns",
    "LogNamespace",
    "SyslogIdentifier",
    "SyslogFacility",
    "SyslogLevel",
    "SyslogLevelPrefix",
    "TTYPath",
    "TTYReset",
    "TTYVHangup",
    "TTYRows",
    "TTYColumns",
    "TTYVTDisallocate",
    "LoadCredential",
    "LoadCredentialEncrypted",
    "ImportCredential",
    "SetCredential",
    "SetCredentialEncrypted",
    "UtmpIdentifier",
    "UtmpMode",
    // Resource control.
    "CPUAccounting",
    "CPUWeight",
    "StartupCPUWeight",
    "CPUQuota",
    "CPUQuotaPeriodSec",
    "AllowedCPUs",
    "StartupAllowedCPUs",
    "MemoryAccounting",
    "MemoryMin",
    "MemoryLow",
    "MemoryHigh",
    "MemorySwapMax",
    "MemoryZSwapMax",
    "AllowedMemoryNodes",
    "TasksAccounting",
    "TasksMax",
    "IOAccounting",
    "IOWeight",
    "StartupIOWeight",
    "IODeviceWeight",
    "IOReadBandwidthMax",
    "IOWriteBandwidthMax",
    "IOReadIOPSMax",
    "IOWriteIOPSMax",
    "IODeviceLatencyTargetSec",
    "IPAccounting",
    "IPAddressAllow",
    "IPAddressDeny",
    "IPIngressFilterPath",
    "IPEgressFilterPath",
    "BPFProgram",
    "SocketBindAllow",
    "SocketBindDeny",
    "RestrictNetworkInterfaces",
    "DeviceAllow",
    "DevicePolicy",
    "Slice",
    "Delegate",
    "DelegateSubgroup",
    "DisableControllers",
    "ManagedOOMSwap",
    "ManagedOOMMemoryPressure",
    "ManagedOOMMemoryPressureLimit",
    "ManagedOOMPreference",
    "CPUShares",
    "StartupCPUShares",
    "MemoryLimit",
    "BlockIOAccounting",
    "BlockIOWeight",
];

const SYSTEMD_INSTALL_KEYS: &[&str] = &["Alias", "WantedBy", "RequiredBy", "UpheldBy", "Also", "DefaultInstance"];

/// Real systemd section names that make no sense in a *.service file; they
/// are errors, but the message says why instead of guessing a typo.
const OTHER_SYSTEMD_SECTIONS: &[&str] =
    &["Socket", "Timer", "Path", "Mount", "Automount", "Swap", "Slice", "Scope", "Target"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Unit,
    Service,
    Instance,
    Install,
}

impl Section {
    fn implemented(self) -> &'static [&'static str] {
        match self {
            Section::Unit => UNIT_KEYS,
            Section::Service => SERVICE_KEYS,
            Section::Instance => INSTANCE_KEYS,
            Section::Install => &[],
        }
    }

    fn systemd_only(self) -> &'static [&'static str] {
        match self {
            Section::Unit => SYSTEMD_UNIT_KEYS,
            Section::Service => SYSTEMD_SERVICE_KEYS,
            Section::Instance => &[],
            Section::Install => SYSTEMD_INSTALL_KEYS,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Section::Unit => "Unit",
            Section::Service => "Service",
            Section::Instance => "Instance",
            Section::Install => "Install",
        }
    }

    const ALL: [Section; 4] = [Section::Unit, Section::Service, Section::Instance, Section::Install];
}

/// What a `[Name]` header means for a unit of `kind`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SectionClass {
    Known(Section),
    /// `X-` sections are systemd's extension space: ignored without a word.
    Extension,
    Invalid(String),
}

pub fn classify_section(name: &str, kind: UnitKind) -> SectionClass {
    if name.starts_with("X-") {
        return SectionClass::Extension;
    }
    if let Some(section) = Section::ALL.iter().copied().find(|s| s.name() == name) {
        if section == Section::Instance && kind != UnitKind::Instance {
            return SectionClass::Invalid("[Instance] is only valid in *.instance files".to_string());
        }
        return SectionClass::Known(section);
    }
    if OTHER_SYSTEMD_SECTIONS.contains(&name) {
        return SectionClass::Invalid(format!(
            "[{name}] belongs to systemd .{} units, which aikore does not run",
            name.to_ascii_lowercase()
        ));
    }
    let candidates = Section::ALL.iter().map(|s| s.name());
    let message = match closest(name, candidates) {
        Some(s) => format!("unknown section [{name}]; did you mean [{s}]?"),
        None => format!("unknown section [{name}]"),
    };
    SectionClass::Invalid(message)
}

/// What a key means inside a known section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyClass {
    Implemented,
    /// A real systemd key (or an `X-` extension key) that aikore ignores;
    /// carries the warning text, or none for silent extension keys.
    Ignored(Option<String>),
    Unknown(String),
}

pub fn classify_key(section: Section, key: &str) -> KeyClass {
    if section.implemented().contains(&key) {
        return KeyClass::Implemented;
    }
    if key.starts_with("X-") {
        return KeyClass::Ignored(None);
    }
    if section.systemd_only().contains(&key) {
        return KeyClass::Ignored(Some(format!("{key}= is not supported by aikore and is ignored")));
    }
    if let Some(home) = Section::ALL.iter().find(|s| s.implemented().contains(&key) || s.systemd_only().contains(&key))
    {
        return KeyClass::Unknown(format!("{key}= belongs in [{}], not [{}]", home.name(), section.name()));
    }
    let candidates = section.implemented().iter().chain(section.systemd_only()).copied();
    let message = match closest(key, candidates) {
        Some(k) => format!("unknown key {key}= in [{}]; did you mean {k}=?", section.name()),
        None => format!("unknown key {key}= in [{}]", section.name()),
    };
    KeyClass::Unknown(message)
}

/// The candidate nearest to `word`: a case-insensitive match first, otherwise
/// the first one within edit distance 2 (lists put aikore's keys first).
fn closest<'a>(word: &str, candidates: impl Iterator<Item = &'a str> + Clone) -> Option<&'a str> {
    if let Some(c) = candidates.clone().find(|c| c.eq_ignore_ascii_case(word)) {
        return Some(c);
    }
    candidates.map(|c| (edit_distance(word, c), c)).filter(|(d, _)| *d <= 2).min_by_key(|(d, _)| *d).map(|(_, c)| c)
}

/// Optimal string alignment distance: Levenshtein plus adjacent swaps, so
/// `ExecStrat` is one edit from `ExecStart`.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let width = b.len() + 1;
    let mut d = vec![0usize; (a.len() + 1) * width];
    for i in 0..=a.len() {
        d[i * width] = i;
    }
    for (j, cell) in d.iter_mut().enumerate().take(width) {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best =
                (d[(i - 1) * width + j] + 1).min(d[i * width + j - 1] + 1).min(d[(i - 1) * width + j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[(i - 2) * width + j - 2] + 1);
            }
            d[i * width + j] = best;
        }
    }
    d[a.len() * width + b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn implemented_and_ignored() {
        assert_eq!(classify_key(Section::Service, "ExecStart"), KeyClass::Implemented);
        assert_eq!(classify_key(Section::Service, "StartLimitBurst"), KeyClass::Implemented);
        assert_eq!(classify_key(Section::Instance, "GPUs"), KeyClass::Implemented);
        assert_eq!(
            classify_key(Section::Service, "ProtectSystem"),
            KeyClass::Ignored(Some("ProtectSystem= is not supported by aikore and is ignored".into()))
        );
        assert!(matches!(classify_key(Section::Install, "WantedBy"), KeyClass::Ignored(Some(_))));
        assert!(matches!(classify_key(Section::Unit, "ConditionPathIsDirectory"), KeyClass::Ignored(Some(_))));
        assert_eq!(classify_key(Section::Service, "X-Custom"), KeyClass::Ignored(None));
    }

    #[test]
    fn typos_get_suggestions() {
        assert_eq!(
            classify_key(Section::Service, "ExecStrat"),
            KeyClass::Unknown("unknown key ExecStrat= in [Service]; did you mean ExecStart=?".into())
        );
        assert_eq!(
            classify_key(Section::Service, "execstart"),
            KeyClass::Unknown("unknown key execstart= in [Service]; did you mean ExecStart=?".into())
        );
        assert_eq!(
            classify_key(Section::Unit, "Frobnicate"),
            KeyClass::Unknown("unknown key Frobnicate= in [Unit]".into())
        );
    }

    #[test]
    fn key_in_wrong_section() {
        assert_eq!(
            classify_key(Section::Service, "After"),
            KeyClass::Unknown("After= belongs in [Unit], not [Service]".into())
        );
        assert!(matches!(classify_key(Section::Install, "ExecStart"), KeyClass::Unknown(_)));
    }

    #[test]
    fn sections() {
        assert_eq!(classify_section("Service", UnitKind::Service), SectionClass::Known(Section::Service));
        assert_eq!(classify_section("Install", UnitKind::Service), SectionClass::Known(Section::Install));
        assert_eq!(classify_section("Instance", UnitKind::Instance), SectionClass::Known(Section::Instance));
        assert!(matches!(classify_section("Instance", UnitKind::Service), SectionClass::Invalid(_)));
        assert_eq!(classify_section("X-Mine", UnitKind::Service), SectionClass::Extension);
        assert_eq!(
            classify_section("Servce", UnitKind::Service),
            SectionClass::Invalid("unknown section [Servce]; did you mean [Service]?".into())
        );
        assert!(matches!(classify_section("Timer", UnitKind::Service), SectionClass::Invalid(_)));
    }

    #[test]
    fn tables_have_no_duplicates_across_kinds() {
        for s in Section::ALL {
            for k in s.implemented() {
                assert!(!s.systemd_only().contains(k), "{k} is both implemented and ignored");
            }
        }
    }

    #[test]
    fn distances() {
        assert_eq!(edit_distance("ExecStrat", "ExecStart"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
