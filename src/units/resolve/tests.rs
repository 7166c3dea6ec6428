use super::*;
use proptest::prelude::*;

fn parse(name: &str, text: &str) -> Result<(Unit, Vec<Diagnostic>), Vec<Diagnostic>> {
    parse_unit_str(Path::new(name), text)
}

fn ok(name: &str, text: &str) -> (Unit, Vec<Diagnostic>) {
    match parse(name, text) {
        Ok(r) => r,
        Err(d) => panic!("unexpected errors: {d:#?}"),
    }
}

/// The error lines and messages, as `line: message`.
fn errors(name: &str, text: &str) -> Vec<String> {
    match parse(name, text) {
        Ok((_, w)) => panic!("expected errors, got a unit with warnings {w:?}"),
        Err(d) => {
            d.iter().filter(|d| d.severity == Severity::Error).map(|d| format!("{}: {}", d.line, d.message)).collect()
        }
    }
}

fn warnings(diags: &[Diagnostic]) -> Vec<String> {
    diags.iter().map(|d| format!("{}: {}", d.line, d.message)).collect()
}

#[test]
fn full_service() {
    let text = "\
[Unit]
Description=Web front end
Documentation=https://example.com man:nginx(8)
After=network.target db.service
After=cache
Requires=db
Wants=cache
StartLimitBurst=3

[Service]
ExecStartPre=/bin/mkdir -p /run/x
ExecStartPre=-/bin/rm /run/x/pid
ExecStart=/usr/sbin/nginx -g \"daemon off;\"
ExecReload=/bin/kill -HUP $MAINPID
ExecStop=/usr/sbin/nginx -s quit
Restart=on-failure
RestartSec=2s
TimeoutStartSec=infinity
TimeoutStopSec=0
KillSignal=SIGQUIT
KillMode=mixed
Environment=A=1 \"B=two words\"
Environment=C=3
EnvironmentFile=-/etc/default/nginx
EnvironmentFile=/etc/nginx.env
WorkingDirectory=/srv
User=www-data
Group=www-data
UMask=0027
Nice=-5
ReadyCheck=http://127.0.0.1:8080/health
StartLimitIntervalSec=1min
";
    let (u, w) = ok("/etc/aikore/nginx.service", text);
    assert!(w.is_empty(), "targets are dropped without a word: {w:?}");
    assert_eq!(u.name, "nginx");
    assert_eq!(u.kind, UnitKind::Service);
    assert_eq!(u.description, "Web front end");
    assert_eq!(u.documentation, ["https://example.com", "man:nginx(8)"]);
    assert_eq!(u.after, ["db", "cache"]);
    assert_eq!(u.requires, ["db"]);
    assert_eq!(u.wants, ["cache"]);
    assert_eq!(u.start_limit_burst, 3);
    assert_eq!(u.start_limit_interval, Duration::from_secs(60));
    let s = &u.service;
    assert_eq!(s.exec_start_pre.len(), 2);
    assert!(s.exec_start_pre[1].ignore_failure);
    let start = s.exec_start.as_ref().expect("ExecStart");
    assert_eq!(start.argv, ["/usr/sbin/nginx", "-g", "daemon off;"]);
    assert_eq!(s.exec_reload[0].argv, ["/bin/kill", "-HUP", "$MAINPID"]);
    assert_eq!(s.exec_stop.len(), 1);
    assert_eq!(s.restart, RestartPolicy::OnFailure);
    assert_eq!(s.restart_sec, Duration::from_secs(2));
    assert_eq!(s.timeout_start, None);
    assert_eq!(s.timeout_stop, None);
    assert_eq!(s.kill_signal, libc::SIGQUIT);
    assert_eq!(s.kill_mode, KillMode::Mixed);
    assert_eq!(s.environment, [("A".into(), "1".into()), ("B".into(), "two words".into()), ("C".into(), "3".into())]);
    assert_eq!(
        s.environment_files,
        [
            EnvironmentFile { path: "/etc/default/nginx".into(), optional: true },
            EnvironmentFile { path: "/etc/nginx.env".into(), optional: false },
        ]
    );
    assert_eq!(s.working_directory, Some(PathBuf::from("/srv")));
    assert_eq!(s.user.as_deref(), Some("www-data"));
    assert_eq!(s.group.as_deref(), Some("www-data"));
    assert_eq!(s.umask, Some(0o027));
    assert_eq!(s.nice, Some(-5));
    assert_eq!(s.ready_check, ReadyCheck::Http { host: "127.0.0.1".into(), port: 8080, path: "/health".into() });
    assert!(u.instance.is_none());
}

#[test]
fn defaults() {
    let (u, w) = ok("a.service", "[Service]\nExecStart=app\n");
    assert!(w.is_empty());
    assert_eq!(u.start_limit_interval, Duration::from_secs(10));
    assert_eq!(u.start_limit_burst, 5);
    assert_eq!(u.service.timeout_start, Some(Duration::from_secs(90)));
    assert_eq!(u.service.restart_sec, Duration::from_millis(100));
    assert_eq!(u.service.kill_signal, libc::SIGTERM);
    assert_eq!(u.service.exec_start.map(|c| c.argv), Some(vec!["app".to_string()]));
}

#[test]
fn repeated_and_empty_assignments() {
    let text = "\
[Unit]
After=x
After=
After=y
Description=first
Description=second
[Service]
Environment=A=1
Environment=
Environment=B=2
ExecStartPre=/bin/a
ExecStartPre=
ExecStartPre=/bin/b
ExecStart=/bin/old
ExecStart=
ExecStart=/bin/new
User=root
User=
Restart=always
Restart=no
";
    let (u, _) = ok("r.service", text);
    assert_eq!(u.after, ["y"]);
    assert_eq!(u.description, "second");
    assert_eq!(u.service.environment, [("B".to_string(), "2".to_string())]);
    assert_eq!(u.service.exec_start_pre.len(), 1);
    assert_eq!(u.service.exec_start_pre[0].argv, ["/bin/b"]);
    assert_eq!(u.service.exec_start.map(|c| c.argv), Some(vec!["/bin/new".to_string()]));
    assert_eq!(u.service.user, None);
    assert_eq!(u.service.restart, RestartPolicy::No);
}

#[test]
fn second_exec_start_without_reset_is_an_error() {
    assert_eq!(
        errors("d.service", "[Service]\nExecStart=/bin/a\nExecStart=/bin/b\n"),
        ["2: 2 ExecStart= commands: only a Type=oneshot service runs several (write an empty ExecStart= first to replace the command)"]
    );
}

#[test]
fn continuation_in_exec_start() {
    let (u, _) = ok("c.service", "[Service]\nExecStart=/bin/echo \\\n  one \\\n  # note\n  two\n");
    assert_eq!(u.service.exec_start.map(|c| c.argv), Some(vec!["/bin/echo".into(), "one".into(), "two".into()]));
}

#[test]
fn unknown_key_error_has_the_right_line() {
    assert_eq!(
        errors("t.service", "# header\n[Service]\n\nExecStrat=/bin/true\n"),
        [
            "2: a .service unit needs ExecStart= (a oneshot may do without one if it has ExecStop=, RemainAfterExit=yes or SuccessAction=)",
            "4: unknown key ExecStrat= in [Service]; did you mean ExecStart=?",
        ]
    );
}

#[test]
fn all_errors_are_collected() {
    let text = "\
[Unit]
After=Bad!Name
[Service]
ExecStart=./relative
Restart=sometimes
RestartSec=infinity
KillSignal=SIGNOPE
KillMode=none
UMask=0999
Nice=20
ReadyCheck=http://example.com:80/
Environment=1BAD=x
EnvironmentFile=relative.env
WorkingDirectory=srv
[Bogus]
Key=v
";
    let errs = errors("many.service", text);
    let lines: Vec<&str> = errs.iter().map(|e| e.split(':').next().unwrap_or("")).collect();
    assert_eq!(lines, ["2", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15"], "{errs:#?}");
    assert!(errs[0].contains("After=Bad!Name"));
    assert!(errs[2].contains("Restart=sometimes") && errs[2].contains("on-abnormal"));
    assert!(errs[5].contains("KillMode=none") && errs[5].contains("not supported"));
    assert!(errs[12].contains("unknown section [Bogus]"));
}

#[test]
fn systemd_keys_warn() {
    let text = "\
[Unit]
Description=x
PartOf=y.service
ConditionPathExists=/etc/x
[Service]
Type=simple
ExecStart=/bin/true
RootImage=/x.raw
ExecStartPost=/bin/true
X-Mine=1
[Install]
WantedBy=multi-user.target
[X-Extra]
Anything=goes
";
    let (_, w) = ok("s.service", text);
    let lines: Vec<String> = warnings(&w).iter().map(|w| w.split(" (").next().unwrap_or("").to_string()).collect();
    assert_eq!(lines, ["8: RootImage= is not implemented by aikore yet and is ignored",]);
    assert!(w.iter().all(|d| d.severity == Severity::Warning));
}

#[test]
fn unknown_install_key_is_an_error() {
    assert_eq!(
        errors("i.service", "[Service]\nExecStart=/bin/true\n[Install]\nWantedBi=x\n"),
        ["4: unknown key WantedBi= in [Install]; did you mean WantedBy=?"]
    );
}

#[test]
fn instance_file() {
    let text = "\
[Unit]
Description=SD on GPU 1
After=nginx
[Instance]
Blueprint=stable-diffusion-webui
GPUs=0, 1 GPU-8f3c2a10-aaaa-bbbb-cccc-0123456789ab
Port=7861
Autostart=yes
ActiveSlot=comfyui
PersistentMode=on
StallAfterSec=5min
OutputDir=/data/out
[Service]
Environment=HF_HOME=/data/hf
";
    let (u, w) = ok("sd-1.instance", text);
    assert!(w.is_empty(), "{w:?}");
    assert_eq!(u.kind, UnitKind::Instance);
    assert!(u.service.exec_start.is_none());
    let i = u.instance.expect("instance config");
    assert_eq!(i.blueprint, "stable-diffusion-webui");
    assert_eq!(i.gpus.words(), ["0", "1", "GPU-8f3c2a10-aaaa-bbbb-cccc-0123456789ab"]);
    assert_eq!(i.port, PortSpec::Fixed(7861));
    assert!(i.autostart);
    assert_eq!(i.active_slot.as_deref(), Some("comfyui"));
    assert!(i.persistent_mode);
    assert_eq!(i.stall_after, Duration::from_secs(300));
    assert_eq!(i.output_dir, Some(PathBuf::from("/data/out")));
}

#[test]
fn instance_defaults_and_cpu() {
    let (u, _) = ok("cpu.instance", "[Instance]\nBlueprint=comfyui\nGPUs=\nPort=auto\nActiveSlot=\n");
    let i = u.instance.expect("instance config");
    assert!(i.gpus.is_cpu_only());
    assert_eq!(i.port, PortSpec::Auto);
    assert!(!i.autostart);
    assert_eq!(i.active_slot, None);
}

#[test]
fn instance_errors() {
    let text = "\
[Instance]
GPUs=0,gpu1
Port=0
Autostart=maybe
ActiveSlot=a1111
StallAfterSec=infinity
OutputDir=out
";
    let errs = errors("bad.instance", text);
    assert_eq!(errs.len(), 7, "{errs:#?}");
    assert_eq!(errs[0], "1: an .instance unit needs Blueprint= in [Instance]");
    assert!(errs[1].starts_with("2: invalid GPUs=0,gpu1"));
    assert!(errs[2].starts_with("3: invalid Port=0"));
}

#[test]
fn instance_section_in_service_is_an_error() {
    assert_eq!(
        errors("x.service", "[Service]\nExecStart=/bin/true\n[Instance]\nBlueprint=a\n"),
        ["3: [Instance] is only valid in *.instance files"]
    );
}

#[test]
fn service_without_exec_start() {
    assert_eq!(
        errors("n.service", "[Unit]\nDescription=x\n[Service]\nType=simple\n"),
        ["3: a .service unit needs ExecStart= (only a Type=oneshot may have none)"]
    );
    // No Type= and no ExecStart=: a oneshot, as systemd defaults it.
    assert_eq!(
        errors("n.service", "[Unit]\nDescription=x\n"),
        ["0: a .service unit needs ExecStart= (a oneshot may do without one if it has ExecStop=, RemainAfterExit=yes or SuccessAction=)"]
    );
}

#[test]
fn names_and_extensions() {
    assert!(errors("Bad!Name.service", "[Service]\nExecStart=/bin/true\n")[0].contains("invalid unit name 'Bad!Name'"));
    assert!(errors("Bad_Name.instance", "[Instance]\nBlueprint=x\n")[0].contains("invalid instance name 'Bad_Name'"));
    assert!(ok("NetworkManager.service", "[Service]\nExecStart=/bin/true\n").1.is_empty());
    assert!(errors("x.conf", "[Service]\nExecStart=/bin/true\n")[0].contains(".service or .instance"));
}

#[test]
fn what_debian_ships_loads() {
    // Each was rejected before issue 14: capitals and dots in references, a
    // oneshot with several ExecStart= or none, KillMode=process, WorkingDirectory=-.
    let text = "\
[Unit]
After=NetworkManager.service rcS.service dbus-org.freedesktop.login1.service
Wants=getty@tty1.service
Conflicts=shutdown.target rescue.service
BindsTo=dev-ttyS0.device db.service
OnFailure=notify@%n.service
[Service]
Type=oneshot
ExecStart=/bin/echo one
ExecStart=-/bin/echo two
RemainAfterExit=yes
KillMode=process
WorkingDirectory=-/root
TimeoutSec=5min
ProtectProc=invisible
[Install]
WantedBy=multi-user.target
RequiredBy=web.service
Also=helper.service
";
    let (u, w) = ok("deb.service", text);
    assert_eq!(u.after, ["NetworkManager", "rcS", "dbus-org.freedesktop.login1"]);
    assert_eq!(u.wants, ["getty@tty1"]);
    assert_eq!(u.relations.conflicts, ["rescue"]);
    assert_eq!(u.relations.binds_to, ["db"]);
    assert_eq!(u.relations.on_failure, ["notify@deb.service"]);
    assert_eq!(u.service.service_type, ServiceType::Oneshot);
    assert_eq!(u.service.exec_start.as_ref().map(|c| c.argv.clone()), Some(vec!["/bin/echo".into(), "one".into()]));
    assert_eq!(u.service.exec_start_more.len(), 1);
    assert!(u.service.exec_start_more[0].ignore_failure);
    assert!(u.service.remain_after_exit);
    assert_eq!(u.service.kill_mode, KillMode::Process);
    assert_eq!(u.service.working_directory, Some(PathBuf::from("/root")));
    assert!(u.service.exec.working_directory_optional);
    assert_eq!(u.service.timeout_start, Some(Duration::from_secs(300)));
    assert_eq!(u.service.timeout_stop, Some(Duration::from_secs(300)));
    assert_eq!(u.install.wanted_by, ["multi-user.target"]);
    assert_eq!(u.install.required_by, ["web"]);
    assert_eq!(u.install.also, ["helper"]);
    assert!(!u.starts_at_boot, "WantedBy= waits for aikore enable");
    let text: Vec<String> = warnings(&w);
    assert!(
        text.iter().any(|t| t.starts_with("12: KillMode=process: a stop signals the main process only")),
        "{text:?}"
    );
    assert!(!text.iter().any(|t| t.contains("ExecStart=")), "a oneshot runs every ExecStart=: {text:?}");
    assert!(!text.iter().any(|t| t.contains("ProtectProc=")), "implemented now: {text:?}");
    assert_eq!(u.service.exec.ns.protect_proc, crate::units::ProtectProc::Invisible);

    // systemd-exit.service: no Type=, no ExecStart=, only SuccessAction=.
    let (u, _) = ok("exit.service", "[Unit]\nSuccessAction=exit-force\n");
    assert_eq!(u.service.service_type, ServiceType::Oneshot);
    assert_eq!(u.relations.success_action.as_deref(), Some("exit-force"));
    assert!(parse("exit.service", "[Unit]\nSuccessAction=none\n").is_err(), "none is no action");
    let (u, _) = ok("setup.service", "[Service]\nType=oneshot\nRemainAfterExit=yes\n");
    assert!(u.service.exec_start.is_none());
    assert_eq!(
        errors("setup.service", "[Service]\nType=oneshot\n"),
        ["1: a .service unit needs ExecStart= (a oneshot may do without one if it has ExecStop=, RemainAfterExit=yes or SuccessAction=)"]
    );
}

#[test]
fn a_typo_in_a_systemd_file_is_still_an_error() {
    assert_eq!(
        errors("t.service", "[Service]\nExecStart=/bin/true\nProtectSytem=strict\n"),
        ["3: unknown key ProtectSytem= in [Service]; did you mean ProtectSystem=?"]
    );
    assert_eq!(
        errors("t.service", "[Service]\nType=oneshoot\nExecStart=/bin/true\n")[0],
        "2: invalid Type=oneshoot: valid values: simple, exec, forking, oneshot, dbus, notify, notify-reload, idle"
    );
}

#[test]
fn templates_and_specifiers() {
    let text = "[Unit]\nDescription=Echo %i\nAfter=prep@%i.service\n[Service]\nExecStart=/bin/echo %i %I %n %N %p %%\nEnvironment=WHO=%u\n";
    let path = Path::new("/u/echo@.service");
    let (t, w) = parse_unit_str(path, text).expect("a template parses on its own");
    assert!(w.is_empty(), "{w:?}");
    assert_eq!(t.description, "Echo ");
    let (u, _) = resolve_named(path, "echo@a-b", text);
    assert_eq!(u.name, "echo@a-b");
    assert_eq!(u.template.as_deref(), Some("echo@"));
    assert_eq!(u.description, "Echo a-b");
    assert_eq!(u.after, ["prep@a-b"]);
    let argv = u.service.exec_start.expect("ExecStart").argv;
    assert_eq!(argv, ["/bin/echo", "a-b", "a/b", "echo@a-b.service", "echo@a-b", "echo", "%"]);
    let user = crate::units::specifier::ManagerFacts::current().user.clone();
    assert_eq!(u.service.environment, [("WHO".to_string(), user)]);
    let errs = parse_unit_str(Path::new("x.service"), "[Service]\nExecStart=/bin/date +%q\n").expect_err("%q");
    assert!(errs.iter().any(|e| e.line == 2 && e.message.contains("unknown specifier %q")), "{errs:?}");
    // An .instance file is aikore's own: a % there is literal.
    let (i, _) = ok("sd.instance", "[Unit]\nDescription=100% fast\n[Instance]\nBlueprint=b\n");
    assert_eq!(i.description, "100% fast");
}

fn resolve_named(path: &Path, name: &str, text: &str) -> (Unit, Vec<Diagnostic>) {
    match parse_unit_named(path, name, text) {
        Ok(r) => r,
        Err(d) => panic!("unexpected errors: {d:#?}"),
    }
}

#[test]
fn values() {
    assert_eq!(parse_signal("TERM"), Ok(libc::SIGTERM));
    assert_eq!(parse_signal("SIGKILL"), Ok(libc::SIGKILL));
    assert_eq!(parse_signal("9"), Ok(9));
    assert!(parse_signal("0").is_err());
    assert!(parse_signal("SIGFOO").is_err());
    assert_eq!(parse_umask("0022"), Ok(0o022));
    assert!(parse_umask("8").is_err());
    assert_eq!(parse_nice("19"), Ok(19));
    assert!(parse_nice("-21").is_err());
    for (v, b) in
        [("yes", true), ("True", true), ("on", true), ("1", true), ("no", false), ("off", false), ("0", false)]
    {
        assert_eq!(parse_bool(v), Ok(b));
    }
    assert!(parse_bool("2").is_err());
    assert_eq!(parse_ready_check("none"), Ok(ReadyCheck::None));
    assert_eq!(parse_ready_check("tcp:8188"), Ok(ReadyCheck::Tcp(8188)));
    assert_eq!(
        parse_ready_check("http://localhost:80"),
        Ok(ReadyCheck::Http { host: "localhost".into(), port: 80, path: "/".into() })
    );
    assert_eq!(
        parse_ready_check("http://[::1]:9000/x?y=1"),
        Ok(ReadyCheck::Http { host: "[::1]".into(), port: 9000, path: "/x?y=1".into() })
    );
    for bad in ["tcp:0", "tcp:70000", "http://127.0.0.1/", "https://127.0.0.1:1/", "http://10.0.0.1:80/", "ping"] {
        assert!(parse_ready_check(bad).is_err(), "{bad}");
    }
    assert_eq!(
        crate::units::GpuSpec::parse("MIG-GPU-abc/1/0,2").map(|s| s.words()),
        Ok(vec!["MIG-GPU-abc/1/0".to_string(), "2".into()])
    );
    assert!(crate::units::GpuSpec::parse("0,0").is_err());
    assert!(crate::units::GpuSpec::parse("GPU-").is_err());
    assert_eq!(parse_timeout("0"), Ok(None));
    assert_eq!(parse_timeout("5s"), Ok(Some(Duration::from_secs(5))));
}

#[test]
fn diagnostics_display() {
    let errs = parse("/u/t.service", "[Service]\nExecStart=/bin/true\nNice=99\n").expect_err("invalid");
    assert_eq!(errs[0].to_string(), "/u/t.service:3: invalid Nice=99: expected a number from -20 to 19");
}

fn plausible_line() -> impl Strategy<Value = String> {
    let keys = prop::sample::select(vec![
        "Description",
        "After",
        "Before",
        "Requires",
        "Wants",
        "Documentation",
        "StartLimitIntervalSec",
        "StartLimitBurst",
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
        "Blueprint",
        "GPUs",
        "Port",
        "Autostart",
        "ActiveSlot",
        "PersistentMode",
        "StallAfterSec",
        "OutputDir",
        "ProtectSystem",
        "WantedBy",
        "ExecStrat",
        "X-Foo",
    ]);
    let values = prop_oneof![
        "[ -~]{0,30}",
        "[\\\\\"' a-z0-9=$:/.-]{0,30}\\\\?",
        Just("infinity".to_string()),
        Just("http://127.0.0.1:".to_string()),
        Just("-".to_string()),
        "\\PC{0,20}",
    ];
    prop_oneof![
        3 => (keys, values).prop_map(|(k, v)| format!("{k}={v}")),
        1 => prop::sample::select(vec!["[Unit]", "[Service]", "[Instance]", "[Install]", "[X-A]", "[Bad", "", "# c", "\\"])
            .prop_map(str::to_string),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn never_panics_on_arbitrary_text(text in "\\PC*") {
        let _ = parse("x.service", &text);
        let _ = parse("x.instance", &text);
    }

    #[test]
    fn never_panics_on_plausible_files(lines in prop::collection::vec(plausible_line(), 0..25)) {
        let text = lines.join("\n");
        for name in ["x.service", "x.instance"] {
            match parse(name, &text) {
                Ok((_, w)) => prop_assert!(w.iter().all(|d| d.severity == Severity::Warning)),
                Err(d) => prop_assert!(d.iter().any(|d| d.severity == Severity::Error)),
            }
        }
    }
}

/// Issue 12: an .instance file is an allow-list; who it runs as and what runs are not its to say.
#[test]
fn instance_files_cannot_set_identity_or_commands() {
    let text = "[Instance]\nBlueprint=a\n[Service]\nUser=root\nExecStartPre=/bin/x\nEnvironmentFile=/etc/shadow\nRestart=always\n[Unit]\nConditionPathExists=/root\nAfter=x\n";
    let errs = errors("x.instance", text);
    assert_eq!(errs.len(), 4, "{errs:?}");
    for (line, key) in [(4, "User"), (5, "ExecStartPre"), (6, "EnvironmentFile"), (9, "ConditionPathExists")] {
        assert!(
            errs.iter().any(|e| e.starts_with(&format!("{line}: {key}= is not allowed in an .instance file"))),
            "{errs:?}"
        );
    }
    // Nothing of an app outlives its stop: KillMode=process is a .service's habit only.
    let errs = errors("x.instance", "[Instance]\nBlueprint=a\n[Service]\nKillMode=process\n");
    assert_eq!(
        errs,
        ["4: KillMode=process is not allowed in an .instance file: an instance's processes all end with it"]
    );
    assert!(ok("x.instance", "[Instance]\nBlueprint=a\n[Service]\nKillMode=mixed\n").1.is_empty());
    let (unit, _) = ok("x.instance", "[Instance]\nBlueprint=a\n[Service]\nRestart=always\nEnvironment=A=1\n");
    assert_eq!(unit.service.environment, [("A".to_string(), "1".to_string())]);
    // Operator-written .service files keep full power.
    ok("x.service", "[Service]\nUser=root\nExecStartPre=/bin/x\nExecStart=/bin/y\n");
}

#[test]
fn memory_max_takes_systemd_sizes() {
    assert_eq!(parse_memory_max("64M"), Ok(Some(64 << 20)));
    assert_eq!(parse_memory_max("2G"), Ok(Some(2 << 30)));
    assert_eq!(parse_memory_max("4096"), Ok(Some(4096)));
    assert_eq!(parse_memory_max("infinity"), Ok(None));
    for bad in ["50%", "-1M", "M", "0", "99999999999T"] {
        assert!(parse_memory_max(bad).is_err(), "{bad}");
    }
}

#[test]
fn auto_gpus_and_memory_bounds() {
    let text = "[Instance]\nBlueprint=comfyui\nGPUs=auto:2\nGPUMemoryMin=20G\nMemoryRestartAbove=64G\n\
                GPUMemoryRestartAbove=70G\nRestartAboveSec=2min\n";
    let (u, w) = ok("auto.instance", text);
    assert!(w.is_empty(), "{w:?}");
    let i = u.instance.expect("instance config");
    assert_eq!(i.gpus, crate::units::GpuSpec::Auto(2));
    assert_eq!(i.limits.gpu_memory_min, Some(20 << 30));
    assert_eq!(i.limits.memory_restart_above, Some(64 << 30));
    assert_eq!(i.limits.gpu_memory_restart_above, Some(70 << 30));
    assert_eq!(i.limits.restart_above_window, Duration::from_secs(120));
    let e = errors("bad.instance", "[Instance]\nBlueprint=comfyui\nGPUs=auto:0\nGPUMemoryMin=lots\n");
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(e[0].contains("auto:N") && e[1].contains("not a size"), "{e:?}");
}

#[test]
fn a_percentage_is_not_a_specifier() {
    let (u, w) = ok("q.service", "[Service]\nExecStart=/bin/true\nCPUQuota=50%\n");
    assert!(w.is_empty(), "{w:?}");
    assert_eq!(u.name, "q");
}

#[test]
fn log_retention_keys() {
    let (unit, diags) =
        ok("x.service", "[Service]\nExecStart=/bin/x\nLogMaxFileSize=64M\nLogMaxFiles=5\nLogCompress=yes\n");
    assert!(diags.is_empty(), "{diags:?}");
    assert_eq!(unit.service.log_max_file_size, Some(64 << 20));
    assert_eq!(unit.service.log_max_files, Some(5));
    assert_eq!(unit.service.log_compress, Some(true));
    // Unset: the global setting; infinity: never rotate by size; empty resets.
    let (unit, _) =
        ok("x.service", "[Service]\nExecStart=/bin/x\nLogMaxFileSize=infinity\nLogMaxFiles=3\nLogMaxFiles=\n");
    assert_eq!(unit.service.log_max_file_size, Some(u64::MAX));
    assert_eq!(unit.service.log_max_files, None);
    assert_eq!(unit.service.log_compress, None);
    // Instances may set them too.
    let (unit, _) = ok("x.instance", "[Instance]\nBlueprint=a\n[Service]\nLogMaxFiles=4\n");
    assert_eq!(unit.service.log_max_files, Some(4));
    let errs =
        errors("x.service", "[Service]\nExecStart=/bin/x\nLogMaxFiles=0\nLogMaxFileSize=10%\nLogCompress=maybe\n");
    assert_eq!(errs.len(), 3, "{errs:?}");
    assert!(errs[0].contains("LogMaxFiles=0") && errs[0].contains("1 to 100"), "{errs:?}");
}

#[test]
fn exit_sets_take_codes_names_and_signals() {
    let set = parse_exit_set("3 DATAERR CANTCREAT SIGUSR1").unwrap();
    assert_eq!((set.codes, set.signals), (vec![3, 65, 73], vec![libc::SIGUSR1]));
    assert!(parse_exit_set("256").is_err());
    assert!(parse_exit_set("DATAERROR").is_err());
}

#[test]
fn type_dbus_takes_its_bus_name_and_needs_one() {
    let (u, w) = ok("avahi.service", "[Service]\nType=dbus\nBusName=org.freedesktop.Avahi\nExecStart=/bin/true\n");
    assert_eq!(u.service.service_type, ServiceType::Dbus);
    assert_eq!(u.service.bus_name.as_deref(), Some("org.freedesktop.Avahi"));
    assert!(warnings(&w).iter().all(|t| !t.contains("Type=") && !t.contains("BusName")), "{w:?}");
    assert_eq!(
        errors("x.service", "[Unit]\nDescription=x\n[Service]\nType=dbus\nExecStart=/bin/true\n"),
        ["4: Type=dbus needs BusName= (the name whose owner on the system bus makes it started)"]
    );
    for bad in ["org", ":1.4", "org..x", "org.1x", "org.x'y", "org.x,arg0='z'"] {
        let text = format!("[Service]\nType=dbus\nBusName={bad}\nExecStart=/bin/true\n");
        let e = errors("x.service", &text);
        let want = format!("3: invalid BusName={bad}: not a well-known D-Bus name");
        assert!(e.iter().any(|e| e.starts_with(&want)), "{e:?}");
    }
}
