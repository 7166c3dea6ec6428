//! `aikore check`: validation like systemd-analyze verify.

use std::process::Command;

use crate::harness::BIN;

#[test]
fn unknown_key_is_reported_with_file_and_line_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("typo.service");
    std::fs::write(&path, "[Unit]\nDescription=x\n\n[Service]\nExecStart=/bin/true\nRestartz=always\n").unwrap();
    let out = Command::new(BIN).arg("check").arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("{}:6:", path.display())), "{stderr}");
    assert!(stderr.contains("Restartz"), "{stderr}");
}

#[test]
fn ignored_systemd_key_is_a_warning_and_exit_0() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("brought.service");
    std::fs::write(
        &path,
        "[Service]\nExecStart=/bin/true\nRootImage=/x.raw\n\n[Install]\nWantedBy=multi-user.target\n",
    )
    .unwrap();
    let out = Command::new(BIN).arg("check").arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains(&format!("{}:3: warning:", path.display())), "{stderr}");
}

#[test]
fn every_error_is_reported_not_just_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("many.service");
    std::fs::write(&path, "[Service]\nExecStart=/bin/true\nRestart=sometimes\nRestartSec=soon\nNice=99\n").unwrap();
    let out = Command::new(BIN).arg("check").arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    for line in [3, 4, 5] {
        assert!(stderr.contains(&format!("{}:{line}:", path.display())), "line {line} missing: {stderr}");
    }
}

#[test]
fn the_stock_units_pass() {
    let stock = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("units");
    let files: Vec<_> = std::fs::read_dir(&stock)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("service" | "instance")))
        .collect();
    assert!(!files.is_empty(), "units/ ships at least one stock unit");
    let out = Command::new(BIN).arg("check").args(&files).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn an_ordering_cycle_is_an_error_naming_the_units() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.service");
    let b = dir.path().join("b.service");
    std::fs::write(&a, "[Unit]\nAfter=b.service\n[Service]\nExecStart=/bin/true\n").unwrap();
    std::fs::write(&b, "[Unit]\nAfter=a.service\n[Service]\nExecStart=/bin/true\n").unwrap();
    let out = Command::new(BIN).arg("check").arg(&a).arg(&b).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains('a') && stderr.contains('b') && stderr.to_lowercase().contains("cycle"), "{stderr}");
}
