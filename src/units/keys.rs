//! The table of keys: every key of systemd's [Unit], [Service] and [Install]
//! (systemd 252, Debian 12) with what aikore does with it, aikore's own keys,
//! and what to say about the rest. docs/units.md is generated from this table
//! (`keys::tests::the_doc_matches_the_table` keeps them equal); issue 14's
//! helpers switch a key to `Implemented` in the commit that makes it work.

use super::UnitKind;

/// What aikore does with a real systemd key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Support {
    /// The supervisor acts on it.
    Implemented,
    /// Accepted with a warning: it has no meaning in a container or under
    /// aikore (no targets, no consoles, the host's kernel); the text says why.
    Meaningless(&'static str),
    /// Accepted with a warning: it means something aikore does not do yet.
    NotYet(&'static str),
}

use Support::{Implemented, Meaningless, NotYet};

const TARGETS: Support =
    Meaningless("aikore has no targets, jobs or isolation: boot ordering against systemd's targets has no counterpart");
const MOUNTS: Support = Meaningless("mounts are the container's: aikore has no .mount units");
const MANAGER: Support = Meaningless("systemd's own bookkeeping (generators, unit garbage collection)");
const HOST: Support = Meaningless("the kernel, the hardware and the machine's power belong to the host");
const OBSOLETE: Support = Meaningless("an obsolete spelling systemd itself only warns about");
const DBUS: Support = Meaningless("no D-Bus activation in a container: aikore starts units itself");
const SOCKETS: Support = Meaningless("aikore has no .socket units and no file descriptor store to pass from");
const LSM: Support = Meaningless("SELinux, AppArmor and SMACK labels are the container runtime's to set");
const LOGIN: Support = Meaningless("a container has no login sessions (PAM, utmp, logind)");
const CONSOLE: Support = Meaningless("a container has no consoles or virtual terminals to hand out");
const KEYRING: Support = Meaningless(
    "aikore sets up no kernel keyrings: every unit keeps the session keyring aikore inherited (KeyringMode=inherit); \
     container runtimes' default seccomp profiles refuse the keyring calls",
);
const REBOOT: Support = Meaningless(
    "a reboot action ends the container under aikore (its runtime restarts it): there is no reboot(2) to pass an argument to",
);
const ACCOUNTING: Support = Meaningless("aikore accounts CPU, memory, tasks and I/O of every unit, always");
const SLICE: Support = Meaningless("every unit gets its own cgroup under aikore's; there are no slices");
const ENGINE: Support = NotYet("the supervisor does not act on this one yet (docs/units.md)");
const PROCESS: Support = NotYet("this process property is not applied yet (docs/exec.md lists those that are)");
const SANDBOX: Support = NotYet("this sandbox option is not applied yet (docs/exec.md lists those that are)");
const RESOURCES: Support = NotYet("this resource key is not applied yet (docs/exec.md lists those that are)");
const FILTERS: Support = NotYet(
    "this BPF program or filter is not implemented (SystemCallFilter=, DeviceAllow= and IPAddressDeny= are: docs/exec.md)",
);
const CREDENTIALS: Support =
    NotYet("encrypted and imported credentials need systemd-creds (a TPM2 or host key): not implemented");
const JOURNAL: Support = Meaningless(
    "aikore keeps one log per unit, not a journal of tagged entries: every line is in the unit's log whatever its tag",
);
const LOGGING: Support = NotYet("every line goes to the unit's log; no levels, rate limits or syslog fields");

/// Every [Unit], [Service] and [Install] key aikore accepts, with its support.
const SYSTEMD_KEYS: &[(Section, &str, Support)] = &[
    (Section::Unit, "After", Implemented),
    (Section::Unit, "AllowIsolate", TARGETS),
    (Section::Unit, "AssertACPower", Implemented),
    (Section::Unit, "AssertArchitecture", Implemented),
    (Section::Unit, "AssertCPUFeature", Implemented),
    (Section::Unit, "AssertCPUPressure", Implemented),
    (Section::Unit, "AssertCPUs", Implemented),
    (Section::Unit, "AssertCapability", Implemented),
    (Section::Unit, "AssertControlGroupController", Implemented),
    (Section::Unit, "AssertCredential", Implemented),
    (Section::Unit, "AssertDirectoryNotEmpty", Implemented),
    (Section::Unit, "AssertEnvironment", Implemented),
    (Section::Unit, "AssertFileIsExecutable", Implemented),
    (Section::Unit, "AssertFileNotEmpty", Implemented),
    (Section::Unit, "AssertFirmware", Implemented),
    (Section::Unit, "AssertFirstBoot", Implemented),
    (Section::Unit, "AssertGroup", Implemented),
    (Section::Unit, "AssertHost", Implemented),
    (Section::Unit, "AssertIOPressure", Implemented),
    (Section::Unit, "AssertKernelCommandLine", Implemented),
    (Section::Unit, "AssertKernelVersion", Implemented),
    (Section::Unit, "AssertMemory", Implemented),
    (Section::Unit, "AssertMemoryPressure", Implemented),
    (Section::Unit, "AssertNeedsUpdate", Implemented),
    (Section::Unit, "AssertOSRelease", Implemented),
    (Section::Unit, "AssertPathExists", Implemented),
    (Section::Unit, "AssertPathExistsGlob", Implemented),
    (Section::Unit, "AssertPathIsDirectory", Implemented),
    (Section::Unit, "AssertPathIsEncrypted", Implemented),
    (Section::Unit, "AssertPathIsMountPoint", Implemented),
    (Section::Unit, "AssertPathIsReadWrite", Implemented),
    (Section::Unit, "AssertPathIsSymbolicLink", Implemented),
    (Section::Unit, "AssertSecurity", Implemented),
    (Section::Unit, "AssertUser", Implemented),
    (Section::Unit, "AssertVirtualization", Implemented),
    (Section::Unit, "Before", Implemented),
    (Section::Unit, "BindTo", Implemented),
    (Section::Unit, "BindsTo", Implemented),
    (Section::Unit, "CollectMode", MANAGER),
    (Section::Unit, "ConditionACPower", Implemented),
    (Section::Unit, "ConditionArchitecture", Implemented),
    (Section::Unit, "ConditionCPUFeature", Implemented),
    (Section::Unit, "ConditionCPUPressure", Implemented),
    (Section::Unit, "ConditionCPUs", Implemented),
    (Section::Unit, "ConditionCapability", Implemented),
    (Section::Unit, "ConditionControlGroupController", Implemented),
    (Section::Unit, "ConditionCredential", Implemented),
    (Section::Unit, "ConditionDirectoryNotEmpty", Implemented),
    (Section::Unit, "ConditionEnvironment", Implemented),
    (Section::Unit, "ConditionFileIsExecutable", Implemented),
    (Section::Unit, "ConditionFileNotEmpty", Implemented),
    (Section::Unit, "ConditionFirmware", Implemented),
    (Section::Unit, "ConditionFirstBoot", Implemented),
    (Section::Unit, "ConditionGroup", Implemented),
    (Section::Unit, "ConditionHost", Implemented),
    (Section::Unit, "ConditionIOPressure", Implemented),
    (Section::Unit, "ConditionKernelCommandLine", Implemented),
    (Section::Unit, "ConditionKernelVersion", Implemented),
    (Section::Unit, "ConditionMemory", Implemented),
    (Section::Unit, "ConditionMemoryPressure", Implemented),
    (Section::Unit, "ConditionNeedsUpdate", Implemented),
    (Section::Unit, "ConditionOSRelease", Implemented),
    (Section::Unit, "ConditionPathExists", Implemented),
    (Section::Unit, "ConditionPathExistsGlob", Implemented),
    (Section::Unit, "ConditionPathIsDirectory", Implemented),
    (Section::Unit, "ConditionPathIsEncrypted", Implemented),
    (Section::Unit, "ConditionPathIsMountPoint", Implemented),
    (Section::Unit, "ConditionPathIsReadWrite", Implemented),
    (Section::Unit, "ConditionPathIsSymbolicLink", Implemented),
    (Section::Unit, "ConditionSecurity", Implemented),
    (Section::Unit, "ConditionUser", Implemented),
    (Section::Unit, "ConditionVirtualization", Implemented),
    (Section::Unit, "Conflicts", Implemented),
    (Section::Unit, "DefaultDependencies", TARGETS),
    (Section::Unit, "Description", Implemented),
    (Section::Unit, "Documentation", Implemented),
    (Section::Unit, "FailureAction", Implemented),
    (Section::Unit, "FailureActionExitStatus", Implemented),
    (Section::Unit, "IgnoreOnIsolate", TARGETS),
    (Section::Unit, "IgnoreOnSnapshot", TARGETS),
    (Section::Unit, "JobRunningTimeoutSec", TARGETS),
    (Section::Unit, "JobTimeoutAction", TARGETS),
    (Section::Unit, "JobTimeoutRebootArgument", TARGETS),
    (Section::Unit, "JobTimeoutSec", TARGETS),
    (Section::Unit, "JoinsNamespaceOf", Implemented),
    (Section::Unit, "OnFailure", Implemented),
    (Section::Unit, "OnFailureIsolate", TARGETS),
    (Section::Unit, "OnFailureJobMode", TARGETS),
    (Section::Unit, "OnSuccess", Implemented),
    (Section::Unit, "OnSuccessJobMode", TARGETS),
    (Section::Unit, "PartOf", Implemented),
    (Section::Unit, "PropagateReloadFrom", OBSOLETE),
    (Section::Unit, "PropagateReloadTo", OBSOLETE),
    (Section::Unit, "PropagatesReloadTo", Implemented),
    (Section::Unit, "PropagatesStopTo", Implemented),
    (Section::Unit, "RebootArgument", HOST),
    (Section::Unit, "RefuseManualStart", Implemented),
    (Section::Unit, "RefuseManualStop", Implemented),
    (Section::Unit, "ReloadPropagatedFrom", Implemented),
    (Section::Unit, "Requires", Implemented),
    (Section::Unit, "RequiresMountsFor", MOUNTS),
    (Section::Unit, "RequiresOverridable", OBSOLETE),
    (Section::Unit, "Requisite", Implemented),
    (Section::Unit, "RequisiteOverridable", OBSOLETE),
    (Section::Unit, "SourcePath", MANAGER),
    (Section::Unit, "StartLimitAction", Implemented),
    (Section::Unit, "StartLimitBurst", Implemented),
    (Section::Unit, "StartLimitInterval", Implemented),
    (Section::Unit, "StartLimitIntervalSec", Implemented),
    (Section::Unit, "StopPropagatedFrom", Implemented),
    (Section::Unit, "StopWhenUnneeded", Implemented),
    (Section::Unit, "SuccessAction", Implemented),
    (Section::Unit, "SuccessActionExitStatus", Implemented),
    (Section::Unit, "Upholds", Implemented),
    (Section::Unit, "Wants", Implemented),
    (Section::Unit, "WantsMountsFor", MOUNTS),
    (Section::Unit, "SurviveFinalKillSignal", HOST),
    (Section::Service, "AllowedCPUs", Implemented),
    (Section::Service, "AllowedMemoryNodes", RESOURCES),
    (Section::Service, "AmbientCapabilities", Implemented),
    (Section::Service, "AppArmorProfile", LSM),
    (Section::Service, "BPFProgram", FILTERS),
    (Section::Service, "BindPaths", Implemented),
    (Section::Service, "BindReadOnlyPaths", Implemented),
    (Section::Service, "BlockIOAccounting", ACCOUNTING),
    (Section::Service, "BlockIODeviceWeight", RESOURCES),
    (Section::Service, "BlockIOReadBandwidth", RESOURCES),
    (Section::Service, "BlockIOWeight", RESOURCES),
    (Section::Service, "BlockIOWriteBandwidth", RESOURCES),
    (Section::Service, "BusName", Implemented),
    (Section::Service, "BusPolicy", DBUS),
    (Section::Service, "CPUAccounting", ACCOUNTING),
    (Section::Service, "CPUAffinity", PROCESS),
    (Section::Service, "CPUQuota", Implemented),
    (Section::Service, "CPUQuotaPeriodSec", RESOURCES),
    (Section::Service, "CPUSchedulingPolicy", Implemented),
    (Section::Service, "CPUSchedulingPriority", Implemented),
    (Section::Service, "CPUSchedulingResetOnFork", PROCESS),
    (Section::Service, "CPUShares", RESOURCES),
    (Section::Service, "CPUWeight", Implemented),
    (Section::Service, "CacheDirectory", Implemented),
    (Section::Service, "CacheDirectoryMode", Implemented),
    (Section::Service, "Capabilities", SANDBOX),
    (Section::Service, "CapabilityBoundingSet", Implemented),
    (Section::Service, "ConfigurationDirectory", Implemented),
    (Section::Service, "ConfigurationDirectoryMode", Implemented),
    (Section::Service, "CoredumpFilter", PROCESS),
    (Section::Service, "DefaultMemoryLow", RESOURCES),
    (Section::Service, "DefaultMemoryMin", RESOURCES),
    (Section::Service, "Delegate", Implemented),
    (Section::Service, "DeviceAllow", Implemented),
    (Section::Service, "DevicePolicy", Implemented),
    (Section::Service, "DisableControllers", RESOURCES),
    (Section::Service, "DynamicUser", Implemented),
    (Section::Service, "Environment", Implemented),
    (Section::Service, "EnvironmentFile", Implemented),
    (Section::Service, "ExecCondition", Implemented),
    (Section::Service, "ExecPaths", Implemented),
    (Section::Service, "ExecReload", Implemented),
    (Section::Service, "ExecSearchPath", PROCESS),
    (Section::Service, "ExecStart", Implemented),
    (Section::Service, "ExecStartPost", Implemented),
    (Section::Service, "ExecStartPre", Implemented),
    (Section::Service, "ExecStop", Implemented),
    (Section::Service, "ExecStopPost", Implemented),
    (Section::Service, "ExitType", Implemented),
    (Section::Service, "ExtensionDirectories", SANDBOX),
    (Section::Service, "ExtensionImages", SANDBOX),
    (Section::Service, "FailureAction", Implemented),
    (Section::Service, "FileDescriptorStoreMax", SOCKETS),
    (Section::Service, "FinalKillSignal", Implemented),
    (Section::Service, "Group", Implemented),
    (Section::Service, "GuessMainPID", Implemented),
    (Section::Service, "IOAccounting", ACCOUNTING),
    (Section::Service, "IODeviceLatencyTargetSec", RESOURCES),
    (Section::Service, "IODeviceWeight", RESOURCES),
    (Section::Service, "IOReadBandwidthMax", RESOURCES),
    (Section::Service, "IOReadIOPSMax", RESOURCES),
    (Section::Service, "IOSchedulingClass", Implemented),
    (Section::Service, "IOSchedulingPriority", Implemented),
    (Section::Service, "IOWeight", Implemented),
    (Section::Service, "IOWriteBandwidthMax", RESOURCES),
    (Section::Service, "IOWriteIOPSMax", RESOURCES),
    (Section::Service, "IPAccounting", Implemented),
    (Section::Service, "IPAddressAllow", Implemented),
    (Section::Service, "IPAddressDeny", Implemented),
    (Section::Service, "IPCNamespacePath", SANDBOX),
    (Section::Service, "IPEgressFilterPath", FILTERS),
    (Section::Service, "IPIngressFilterPath", FILTERS),
    (Section::Service, "IgnoreSIGPIPE", Implemented),
    (Section::Service, "InaccessibleDirectories", Implemented),
    (Section::Service, "InaccessiblePaths", Implemented),
    (Section::Service, "KeyringMode", KEYRING),
    (Section::Service, "KillMode", Implemented),
    (Section::Service, "KillSignal", Implemented),
    (Section::Service, "LimitAS", Implemented),
    (Section::Service, "LimitCORE", Implemented),
    (Section::Service, "LimitCPU", Implemented),
    (Section::Service, "LimitDATA", Implemented),
    (Section::Service, "LimitFSIZE", Implemented),
    (Section::Service, "LimitLOCKS", Implemented),
    (Section::Service, "LimitMEMLOCK", Implemented),
    (Section::Service, "LimitMSGQUEUE", Implemented),
    (Section::Service, "LimitNICE", Implemented),
    (Section::Service, "LimitNOFILE", Implemented),
    (Section::Service, "LimitNPROC", Implemented),
    (Section::Service, "LimitRSS", Implemented),
    (Section::Service, "LimitRTPRIO", Implemented),
    (Section::Service, "LimitRTTIME", Implemented),
    (Section::Service, "LimitSIGPENDING", Implemented),
    (Section::Service, "LimitSTACK", Implemented),
    (Section::Service, "LoadCredential", Implemented),
    (Section::Service, "LoadCredentialEncrypted", CREDENTIALS),
    (Section::Service, "LockPersonality", Implemented),
    (Section::Service, "LogExtraFields", LOGGING),
    (Section::Service, "LogLevelMax", LOGGING),
    (Section::Service, "LogNamespace", LOGGING),
    (Section::Service, "LogRateLimitBurst", LOGGING),
    (Section::Service, "LogRateLimitIntervalSec", LOGGING),
    (Section::Service, "LogsDirectory", Implemented),
    (Section::Service, "LogsDirectoryMode", Implemented),
    (Section::Service, "ManagedOOMMemoryPressure", RESOURCES),
    (Section::Service, "ManagedOOMMemoryPressureLimit", RESOURCES),
    (Section::Service, "ManagedOOMPreference", RESOURCES),
    (Section::Service, "ManagedOOMSwap", RESOURCES),
    (Section::Service, "MemoryAccounting", ACCOUNTING),
    (Section::Service, "MemoryDenyWriteExecute", Implemented),
    (Section::Service, "MemoryHigh", Implemented),
    (Section::Service, "MemoryLimit", RESOURCES),
    (Section::Service, "MemoryLow", RESOURCES),
    (Section::Service, "MemoryMax", Implemented),
    (Section::Service, "MemoryMin", RESOURCES),
    (Section::Service, "MemorySwapMax", Implemented),
    (Section::Service, "MountAPIVFS", SANDBOX),
    (Section::Service, "MountFlags", SANDBOX),
    (Section::Service, "MountImages", SANDBOX),
    (Section::Service, "NUMAMask", PROCESS),
    (Section::Service, "NUMAPolicy", PROCESS),
    (Section::Service, "NetClass", FILTERS),
    (Section::Service, "NetworkNamespacePath", SANDBOX),
    (Section::Service, "Nice", Implemented),
    (Section::Service, "NoExecPaths", Implemented),
    (Section::Service, "NoNewPrivileges", Implemented),
    (Section::Service, "NonBlocking", SOCKETS),
    (Section::Service, "NotifyAccess", Implemented),
    (Section::Service, "OOMPolicy", Implemented),
    (Section::Service, "OOMScoreAdjust", Implemented),
    (Section::Service, "PAMName", LOGIN),
    (Section::Service, "PIDFile", Implemented),
    (Section::Service, "PassEnvironment", PROCESS),
    (Section::Service, "PermissionsStartOnly", Implemented),
    (Section::Service, "Personality", PROCESS),
    (Section::Service, "PrivateDevices", Implemented),
    (Section::Service, "PrivateIPC", Implemented),
    (Section::Service, "PrivateMounts", Implemented),
    (Section::Service, "PrivateNetwork", Implemented),
    (Section::Service, "PrivateTmp", Implemented),
    (Section::Service, "PrivateUsers", Implemented),
    (Section::Service, "ProcSubset", Implemented),
    (Section::Service, "ProtectClock", Implemented),
    (Section::Service, "ProtectControlGroups", Implemented),
    (Section::Service, "ProtectHome", Implemented),
    (Section::Service, "ProtectHostname", Implemented),
    (Section::Service, "ProtectKernelLogs", Implemented),
    (Section::Service, "ProtectKernelModules", Implemented),
    (Section::Service, "ProtectKernelTunables", Implemented),
    (Section::Service, "ProtectProc", Implemented),
    (Section::Service, "ProtectSystem", Implemented),
    (Section::Service, "ReadOnlyDirectories", Implemented),
    (Section::Service, "ReadOnlyPaths", Implemented),
    (Section::Service, "ReadWriteDirectories", Implemented),
    (Section::Service, "ReadWritePaths", Implemented),
    (Section::Service, "RebootArgument", REBOOT),
    (Section::Service, "RemainAfterExit", Implemented),
    (Section::Service, "RemoveIPC", Implemented),
    (Section::Service, "Restart", Implemented),
    (Section::Service, "RestartForceExitStatus", Implemented),
    (Section::Service, "RestartKillSignal", Implemented),
    (Section::Service, "RestartPreventExitStatus", Implemented),
    (Section::Service, "RestartSec", Implemented),
    (Section::Service, "RestrictAddressFamilies", Implemented),
    (Section::Service, "RestrictFileSystems", FILTERS),
    (Section::Service, "RestrictNamespaces", Implemented),
    (Section::Service, "RestrictNetworkInterfaces", FILTERS),
    (Section::Service, "RestrictRealtime", Implemented),
    (Section::Service, "RestrictSUIDSGID", Implemented),
    (Section::Service, "RootDirectory", SANDBOX),
    (Section::Service, "RootDirectoryStartOnly", ENGINE),
    (Section::Service, "RootHash", SANDBOX),
    (Section::Service, "RootHashSignature", SANDBOX),
    (Section::Service, "RootImage", SANDBOX),
    (Section::Service, "RootImageOptions", SANDBOX),
    (Section::Service, "RootVerity", SANDBOX),
    (Section::Service, "RuntimeDirectory", Implemented),
    (Section::Service, "RuntimeDirectoryMode", Implemented),
    (Section::Service, "RuntimeDirectoryPreserve", Implemented),
    (Section::Service, "RuntimeMaxSec", Implemented),
    (Section::Service, "RuntimeRandomizedExtraSec", Implemented),
    (Section::Service, "SELinuxContext", LSM),
    (Section::Service, "SecureBits", PROCESS),
    (Section::Service, "SendSIGHUP", Implemented),
    (Section::Service, "SendSIGKILL", Implemented),
    (Section::Service, "SetCredential", Implemented),
    (Section::Service, "SetCredentialEncrypted", CREDENTIALS),
    (Section::Service, "Slice", SLICE),
    (Section::Service, "SmackProcessLabel", LSM),
    (Section::Service, "SocketBindAllow", FILTERS),
    (Section::Service, "SocketBindDeny", FILTERS),
    (Section::Service, "Sockets", SOCKETS),
    (Section::Service, "StandardError", Implemented),
    (Section::Service, "StandardInput", Implemented),
    (Section::Service, "StandardInputData", PROCESS),
    (Section::Service, "StandardInputText", PROCESS),
    (Section::Service, "StandardOutput", Implemented),
    (Section::Service, "StartLimitAction", Implemented),
    (Section::Service, "StartLimitBurst", Implemented),
    (Section::Service, "StartLimitInterval", Implemented),
    (Section::Service, "StartupAllowedCPUs", RESOURCES),
    (Section::Service, "StartupAllowedMemoryNodes", RESOURCES),
    (Section::Service, "StartupBlockIOWeight", RESOURCES),
    (Section::Service, "StartupCPUShares", RESOURCES),
    (Section::Service, "StartupCPUWeight", RESOURCES),
    (Section::Service, "StartupIOWeight", RESOURCES),
    (Section::Service, "StateDirectory", Implemented),
    (Section::Service, "StateDirectoryMode", Implemented),
    (Section::Service, "SuccessExitStatus", Implemented),
    (Section::Service, "SupplementaryGroups", Implemented),
    (Section::Service, "SysVStartPriority", OBSOLETE),
    (Section::Service, "SyslogFacility", LOGGING),
    (Section::Service, "SyslogIdentifier", JOURNAL),
    (Section::Service, "SyslogLevel", LOGGING),
    (Section::Service, "SyslogLevelPrefix", LOGGING),
    (Section::Service, "SystemCallArchitectures", Implemented),
    (Section::Service, "SystemCallErrorNumber", Implemented),
    (Section::Service, "SystemCallFilter", Implemented),
    (Section::Service, "SystemCallLog", Implemented),
    (Section::Service, "TTYColumns", CONSOLE),
    (Section::Service, "TTYPath", CONSOLE),
    (Section::Service, "TTYReset", CONSOLE),
    (Section::Service, "TTYRows", CONSOLE),
    (Section::Service, "TTYVHangup", CONSOLE),
    (Section::Service, "TTYVTDisallocate", CONSOLE),
    (Section::Service, "TasksAccounting", ACCOUNTING),
    (Section::Service, "TasksMax", Implemented),
    (Section::Service, "TemporaryFileSystem", Implemented),
    (Section::Service, "TimeoutAbortSec", Implemented),
    (Section::Service, "TimeoutCleanSec", PROCESS),
    (Section::Service, "TimeoutSec", Implemented),
    (Section::Service, "TimeoutStartFailureMode", Implemented),
    (Section::Service, "TimeoutStartSec", Implemented),
    (Section::Service, "TimeoutStopFailureMode", Implemented),
    (Section::Service, "TimeoutStopSec", Implemented),
    (Section::Service, "TimerSlackNSec", PROCESS),
    (Section::Service, "Type", Implemented),
    (Section::Service, "UMask", Implemented),
    (Section::Service, "USBFunctionDescriptors", HOST),
    (Section::Service, "USBFunctionStrings", HOST),
    (Section::Service, "UnsetEnvironment", Implemented),
    (Section::Service, "User", Implemented),
    (Section::Service, "UtmpIdentifier", LOGIN),
    (Section::Service, "UtmpMode", LOGIN),
    (Section::Service, "WatchdogSec", Implemented),
    (Section::Service, "WatchdogSignal", Implemented),
    (Section::Service, "WorkingDirectory", Implemented),
    (Section::Service, "ReadyCheck", Implemented),
    (Section::Service, "LogMaxFileSize", Implemented),
    (Section::Service, "LogMaxFiles", Implemented),
    (Section::Service, "LogCompress", Implemented),
    (Section::Service, "StartLimitIntervalSec", Implemented),
    (Section::Service, "RestartSteps", Implemented),
    (Section::Service, "RestartMaxDelaySec", Implemented),
    (Section::Service, "RestartMode", Implemented),
    (Section::Service, "FileDescriptorStorePreserve", SOCKETS),
    (Section::Service, "OpenFile", SOCKETS),
    (Section::Service, "ReloadSignal", Implemented),
    (Section::Service, "SetLoginEnvironment", LOGIN),
    (Section::Service, "MemoryKSM", SANDBOX),
    (Section::Service, "PrivatePIDs", SANDBOX),
    (Section::Service, "LogFilterPatterns", LOGGING),
    (Section::Service, "ImportCredential", CREDENTIALS),
    (Section::Service, "MemoryZSwapMax", RESOURCES),
    (Section::Service, "DelegateSubgroup", RESOURCES),
    (Section::Install, "Alias", Implemented),
    (Section::Install, "Also", Implemented),
    (Section::Install, "DefaultInstance", Implemented),
    (Section::Install, "RequiredBy", Implemented),
    (Section::Install, "WantedBy", Implemented),
    (Section::Install, "UpheldBy", Implemented),
];

const INSTANCE_KEYS: &[&str] = &[
    "Blueprint",
    "GPUs",
    "Port",
    "Autostart",
    "ActiveSlot",
    "PersistentMode",
    "Public",
    "StallAfterSec",
    "OutputDir",
    "DrainCheck",
    "DrainTimeoutSec",
    "IdleStopSec",
    "GPUMemoryMin",
    "MemoryRestartAbove",
    "GPUMemoryRestartAbove",
    "RestartAboveSec",
];

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
    "Type",
    "RemainAfterExit",
    "WatchdogSec",
    "LogMaxFileSize",
    "LogMaxFiles",
    "LogCompress",
    "StartLimitIntervalSec",
    "StartLimitBurst",
    // Resource limits only restrict (units/exec.rs INSTANCE_SERVICE_KEYS, issue 14).
    "MemoryHigh",
    "MemorySwapMax",
    "CPUWeight",
    "CPUQuota",
    "AllowedCPUs",
    "TasksMax",
    "IOWeight",
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
    /// The keys of this section and what aikore does with each.
    fn keys(self) -> impl Iterator<Item = (&'static str, Support)> + Clone {
        let instance = INSTANCE_KEYS.iter().map(|k| (*k, Implemented));
        let systemd = SYSTEMD_KEYS.iter().filter(move |(s, _, _)| *s == self).map(|(_, k, sup)| (*k, *sup));
        let instance = if self == Section::Instance { Some(instance) } else { None };
        systemd.chain(instance.into_iter().flatten())
    }

    fn support(self, key: &str) -> Option<Support> {
        self.keys().find(|(k, _)| *k == key).map(|(_, s)| s)
    }

    pub fn name(self) -> &'static str {
        match self {
            Section::Unit => "Unit",
            Section::Service => "Service",
            Section::Instance => "Instance",
            Section::Install => "Install",
        }
    }

    pub const ALL: [Section; 4] = [Section::Unit, Section::Service, Section::Instance, Section::Install];
}

/// Every key of systemd's sections with its support, in table order (docs/units.md, the corpus count).
pub fn systemd_keys() -> impl Iterator<Item = (Section, &'static str, Support)> {
    SYSTEMD_KEYS.iter().copied()
}

/// What aikore does with `key` in `section`; None for a key it does not know.
pub fn support(section: Section, key: &str) -> Option<Support> {
    section.support(key)
}

/// The table of docs/units.md between its markers: every systemd key, what
/// aikore does with it and why.
pub fn doc_table() -> String {
    let mut out = String::from("| section | key | aikore | why |\n|---|---|---|---|\n");
    for (section, key, support) in systemd_keys() {
        let (what, why) = match support {
            Implemented => ("implemented", ""),
            Meaningless(why) => ("ignored: meaningless in a container", why),
            NotYet(why) => ("ignored: not implemented yet", why),
        };
        out.push_str(&format!("| [{}] | `{key}=` | {what} | {why} |\n", section.name()));
    }
    for key in INSTANCE_KEYS {
        out.push_str(&format!("| [Instance] | `{key}=` | implemented | aikore's own (instances) |\n"));
    }
    out
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
    match section.support(key) {
        Some(Implemented) => return KeyClass::Implemented,
        Some(Meaningless(why)) => {
            return KeyClass::Ignored(Some(format!("{key}= is ignored: it has no meaning in a container ({why})")))
        }
        Some(NotYet(why)) => {
            return KeyClass::Ignored(Some(format!("{key}= is not implemented by aikore yet and is ignored ({why})")))
        }
        None => {}
    }
    if key.starts_with("X-") {
        return KeyClass::Ignored(None);
    }
    if let Some(home) = Section::ALL.iter().find(|s| s.support(key).is_some()) {
        return KeyClass::Unknown(format!("{key}= belongs in [{}], not [{}]", home.name(), section.name()));
    }
    let candidates = section.keys().map(|(k, _)| k);
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
        assert!(matches!(
            classify_key(Section::Service, "RootImage"),
            KeyClass::Ignored(Some(m)) if m.starts_with("RootImage= is not implemented by aikore yet and is ignored (")
        ));
        assert!(matches!(
            classify_key(Section::Service, "TTYPath"),
            KeyClass::Ignored(Some(m)) if m.starts_with("TTYPath= is ignored: it has no meaning in a container (")
        ));
        assert_eq!(classify_key(Section::Install, "WantedBy"), KeyClass::Implemented);
        assert_eq!(classify_key(Section::Service, "TimeoutSec"), KeyClass::Implemented);
        assert_eq!(classify_key(Section::Unit, "ConditionPathIsDirectory"), KeyClass::Implemented);
        assert_eq!(classify_key(Section::Unit, "ConditionPathExistsGlob"), KeyClass::Implemented);
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
    fn the_table_has_no_duplicates() {
        let mut seen = std::collections::BTreeSet::new();
        for (section, key, _) in systemd_keys() {
            assert!(seen.insert((section.name(), key)), "{key} twice in [{}]", section.name());
        }
    }

    /// docs/units.md carries the table between two markers; `AIKORE_UPDATE_DOCS=1`
    /// rewrites it after a change to the table.
    #[test]
    fn the_doc_matches_the_table() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/units.md");
        let doc = std::fs::read_to_string(&path).expect("docs/units.md");
        let (begin, end) = ("<!-- keys:begin -->\n", "<!-- keys:end -->");
        let start = doc.find(begin).expect("begin marker") + begin.len();
        let stop = doc.find(end).expect("end marker");
        let table = doc_table();
        if std::env::var_os("AIKORE_UPDATE_DOCS").is_some() {
            let updated = format!("{}{table}{}", &doc[..start], &doc[stop..]);
            std::fs::write(&path, updated).expect("write docs/units.md");
            return;
        }
        assert!(
            doc[start..stop] == table,
            "docs/units.md's key table differs from src/units/keys.rs: run AIKORE_UPDATE_DOCS=1 cargo test --lib the_doc_matches_the_table"
        );
    }

    #[test]
    fn distances() {
        assert_eq!(edit_distance("ExecStrat", "ExecStart"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
