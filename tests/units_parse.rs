//! Unit files on disk, through the public API of `aikore::units`.

use std::path::{Path, PathBuf};

use aikore::units::{check_paths, load_dirs, parse_unit_file, start_order, Severity, UnitKind};

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/units").join(rel)
}

#[test]
fn distro_unit_loads_with_warnings() {
    let (unit, warnings) = parse_unit_file(&fixture("stock/nginx.service")).expect("loads");
    assert_eq!(unit.name, "nginx");
    assert!(unit.after.is_empty(), "targets are dropped: {:?}", unit.after);
    let exec = unit.service.exec_start.expect("ExecStart");
    assert_eq!(exec.argv, ["/usr/sbin/nginx", "-g", "daemon on; master_process on;"]);
    assert!(unit.service.exec_stop[0].ignore_failure);
    let text: Vec<String> = warnings.iter().map(|w| w.to_string()).collect();
    assert!(warnings.iter().all(|w| w.severity == Severity::Warning));
    // Type=forking with PIDFile= is implemented since issue 14 (the engine2 step): no warning.
    for key in ["Type=", "PIDFile="] {
        assert!(!text.iter().any(|t| t.contains(key)), "a warning for {key}: {text:#?}");
    }
    assert_eq!(unit.service.service_type, aikore::units::ServiceType::Forking);
    assert_eq!(unit.service.pid_file.as_deref(), Some(Path::new("/run/nginx.pid")));
    // Implemented since issue 14: checked at each start, no warning.
    assert!(!text.iter().any(|t| t.contains("ConditionFileIsExecutable=")), "{text:#?}");
    assert_eq!(unit.checks.conditions[0].arg, "/usr/sbin/nginx");
    // [Install] is aikore's too since issue 14: WantedBy= waits for `aikore enable`.
    assert!(!text.iter().any(|t| t.contains("WantedBy=")), "{text:#?}");
    assert_eq!(unit.install.wanted_by, ["multi-user.target"]);
    assert!(!unit.starts_at_boot);
}

#[test]
fn broken_file_reports_every_error_with_lines() {
    let errs = parse_unit_file(&fixture("broken.service")).expect_err("invalid");
    let text: Vec<String> = errs.iter().map(|d| d.to_string()).collect();
    assert!(
        text.iter()
            .any(|t| t.ends_with("broken.service:6: unknown key ExecStrat= in [Service]; did you mean ExecStart=?")),
        "{text:#?}"
    );
    assert!(text.iter().any(|t| t.contains("broken.service:7: invalid Restart=sometimes")), "{text:#?}");
}

#[test]
fn user_dir_overrides_stock_and_orders_start() {
    let loaded = load_dirs(&[fixture("stock"), fixture("user"), fixture("missing")]);
    let errors: Vec<String> =
        loaded.diagnostics.iter().filter(|d| d.severity == Severity::Error).map(|d| d.to_string()).collect();
    assert!(errors.is_empty(), "{errors:#?}");
    let names: Vec<&str> = loaded.units.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(names, ["filebrowser", "nginx", "sd-gpu0"]);
    assert_eq!(loaded.units[1].description, "nginx (user override)");
    assert_eq!(loaded.units[2].kind, UnitKind::Instance);
    assert_eq!(
        loaded.units[0].service.exec_start.as_ref().map(|c| c.argv.clone()),
        Some(vec![
            "/usr/local/bin/filebrowser".into(),
            "--address".into(),
            "127.0.0.1".into(),
            "--port".into(),
            "8081".into()
        ])
    );
    assert_eq!(start_order(&loaded.units), Ok(vec!["nginx".into(), "filebrowser".into(), "sd-gpu0".into()]));
}

#[test]
fn check_flags_missing_requirements() {
    let diags = check_paths(&[fixture("stock/filebrowser.service")]);
    let text: Vec<String> = diags.iter().map(|d| d.to_string()).collect();
    // A unit that does not exist (yet) is a warning, as in systemd (issue 14).
    assert_eq!(diags.iter().filter(|d| d.severity == Severity::Error).count(), 0, "{text:#?}");
    assert!(text.iter().any(|t| t.contains("warning: Requires=nginx")), "{text:#?}");
}
