//! Attacks on aikore's own state: unit files, the trash can, the database,
//! and a data dir left by an older version (where all of it was PUID's).

use std::os::unix::fs::MetadataExt;

use serde_json::json;

use super::{as_evil, evil_count, ids_of, Target, EVIL};

/// Issue 12, 1a: a new `units/*.service` with `User=root` ran as root at the next start.
#[test]
fn instance_user_cannot_add_a_root_service() {
    let t = Target::start(false);
    let dir = t.instance("t1", "sleeper");
    let units = t.d.data_dir.join("units");
    let planted = format!(
        "printf '[Service]\\nUser=root\\nExecStart=/bin/sh -c \"touch {victim}/pwned\"\\n' > {units}/evil.service && echo planted; \
         mkdir {units}/x 2>/dev/null && echo made-dir; \
         mv {units} {data}/units.old 2>/dev/null && echo moved; \
         ln -s {inst} {data}/units2 2>/dev/null && echo linked; echo 0",
        victim = t.victim.display(),
        units = units.display(),
        data = t.d.data_dir.display(),
        inst = dir.display(),
    );
    let out = as_evil(&planted);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.trim(), "0", "the attacker wrote into aikore's state: {text}");
    let (code, report) = t.d.post("/api/v1/reload");
    assert_eq!(code, 200, "{report}");
    assert_eq!(t.d.get("/api/v1/units/evil").0, 404);
    assert!(!t.victim.join("pwned").exists());
    t.assert_intact();
}

/// Issue 12, 1b: `User=root` appended to the instance's own `.instance` was
/// kept, and the instance ran as root after a restart. Now the file is not
/// the instance user's to write, and even a file that says so (an operator's
/// copy, an older data dir) is refused by the .instance allow-list.
#[test]
fn an_instance_cannot_make_itself_root() {
    let t = Target::start(false);
    t.instance("t2", "sleeper");
    let file = t.d.data_dir.join("units/t2.instance");
    let appended = as_evil(&format!("printf 'User=root\\n' >> {} && echo appended; echo 0", file.display()));
    assert_eq!(String::from_utf8_lossy(&appended.stdout).trim(), "0");
    assert!(!std::fs::read_to_string(&file).unwrap().contains("User=root"));

    // As if the line got there anyway: the definition is refused with file:line.
    let original = std::fs::read_to_string(&file).unwrap();
    let pwned = t.victim.join("pwned");
    let forged = format!("{original}\n[Service]\nUser=root\nExecStartPre=/bin/touch {}\n", pwned.display());
    std::fs::write(&file, &forged).unwrap();
    let (code, report) = t.d.post("/api/v1/reload");
    assert_eq!(code, 200, "{report}");
    let diagnostics = report["diagnostics"].to_string();
    assert!(diagnostics.contains("t2.instance:") && diagnostics.contains("User= is not allowed"), "{report}");
    assert!(diagnostics.contains("ExecStartPre= is not allowed"), "{report}");
    // The refused definition replaces nothing: the running instance is stopped and dropped.
    t.d.wait_until("t2 to be dropped", |d| d.get("/api/v1/units/t2").0 == 404);
    let (code, _) = t.d.post("/api/v1/instances/t2/restart");
    assert_eq!(code, 404, "a refused definition is not run");
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(!pwned.exists());

    // Put back as the daemon wrote it: the instance runs again, as 65534.
    std::fs::write(&file, &original).unwrap();
    assert_eq!(t.d.post("/api/v1/reload").0, 200);
    assert_eq!(t.d.post("/api/v1/instances/t2/start").0, 200);
    let mut pid = 0;
    t.d.wait_until("t2 to run", |d| {
        pid = d.get("/api/v1/units/t2").1["pid"].as_i64().unwrap_or(0);
        pid > 0
    });
    assert_eq!(ids_of(pid as i32), Some((EVIL, EVIL)));
    t.assert_intact();
}

/// Issue 12, 1d: the `name` in `trash.json` was trusted; Restore moved a
/// directory into a root-only one (and answered 500).
#[test]
fn trash_metadata_is_out_of_reach_and_checked() {
    let t = Target::start(false);
    t.instance("t3", "sleeper");
    let (code, body) = t.d.delete("/api/v1/instances/t3?force=true");
    assert_eq!(code, 200, "{body}");
    let id = body["trashed"]["id"].as_str().unwrap().to_string();
    let meta = t.d.data_dir.join("trashcan").join(&id).join("trash.json");
    let evil_name = format!("../../{}", t.victim.strip_prefix(t.d.dir.path()).unwrap().display());
    let forged = json!({ "name": evil_name, "deleted_ms": 1 }).to_string();
    let written = evil_count(&format!(
        "n=0; printf '%s' '{forged}' > {meta} && n=$((n+1)); mkdir {trash}/forged-1 2>/dev/null && n=$((n+1)); echo $n",
        meta = meta.display(),
        trash = t.d.data_dir.join("trashcan").display(),
    ));
    assert_eq!(written, 0, "the attacker wrote into the trash can");

    // And a forged name (an older data dir, a hand edit) is never used as a path.
    std::fs::write(&meta, &forged).unwrap();
    let (code, body) = t.d.post(&format!("/api/v1/trashcan/{id}/restore"));
    assert!((400..500).contains(&code), "restore of a forged entry: {code} {body}");
    assert!(t.d.get("/api/v1/trashcan").1.as_array().unwrap().is_empty(), "the forged entry is not listed");
    t.assert_intact();
}

/// Issue 12, 1g: `aikore.db` was writable by the instance (mark any instance
/// public, replace the password hash).
#[test]
fn the_database_is_out_of_reach() {
    let t = Target::start(false);
    t.instance("t4", "sleeper");
    let db = t.d.data_dir.join("aikore.db");
    let opened = evil_count(&format!(
        "n=0; for f in {db} {db}-wal {db}-shm; do [ -e $f ] || continue; (echo x >> $f) 2>/dev/null && n=$((n+1)); cat $f >/dev/null 2>&1 && n=$((n+1)); done; \
         mv {db} {db}.old 2>/dev/null && n=$((n+1)); echo $n",
        db = db.display()
    ));
    assert_eq!(opened, 0, "the attacker read or wrote the database");
    let m = std::fs::metadata(&db).unwrap();
    assert_eq!((m.uid(), m.mode() & 0o777), (0, 0o600));
    t.assert_intact();
}

/// A data dir from an older version, everything PUID's and a symlink planted
/// in aikore's own dirs: at start the daemon takes its state back, moves the
/// symlinks to quarantine without following them, and leaves instance dirs alone.
#[test]
fn a_data_dir_from_an_older_version_is_taken_back_at_start() {
    let mut t = Target::start(false);
    t.instance("old", "sleeper");
    let data = t.d.data_dir.clone();
    t.d.terminate();
    // What older versions left: everything PUID's, and what an attacker did with that.
    std::process::Command::new("chown").args(["-R", "65534:65534"]).arg(&data).status().unwrap();
    let _ = std::fs::remove_file(data.join("logs/old.log"));
    std::os::unix::fs::symlink(t.victim.join("secret"), data.join("logs/old.log")).unwrap();
    std::os::unix::fs::symlink(&t.victim, data.join("units/evil.service")).unwrap();
    std::fs::remove_dir_all(data.join("nginx")).unwrap();
    std::os::unix::fs::symlink(&t.victim, data.join("nginx")).unwrap();
    let port = t.port;
    t.d.spawn(super::options(port));
    t.d.wait_status("old", "stopped");
    t.assert_intact();
    let quarantined: Vec<String> = std::fs::read_dir(data.join("quarantine"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into())
        .collect();
    assert_eq!(quarantined.len(), 3, "{quarantined:?}");
    assert_eq!(std::fs::metadata(data.join("instances/old")).unwrap().uid(), EVIL, "instance dirs stay PUID's");
    assert_eq!(std::fs::read_to_string(t.victim.join("secret")).unwrap(), "root only\n");
}
