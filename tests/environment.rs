//! [Service] environment and process setup: Environment=, EnvironmentFile=,
//! WorkingDirectory=, UMask=, Nice=, User=, ExecStartPre=, AIKORE_UNIT, and
//! that aikore's own secrets never reach a unit.

use crate::harness::{Daemon, Options};

#[test]
fn the_process_gets_its_configured_environment_and_setup() {
    let dir = tempfile::tempdir().unwrap();
    let env_file = dir.path().join("extra.env");
    std::fs::write(&env_file, "# comment\nFROM_FILE=file value\nOVERRIDDEN=file\n").unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let unit = format!(
        "[Service]\n\
         EnvironmentFile={}\nEnvironmentFile=-/nonexistent/optional.env\n\
         Environment=\"GREETING=hello world\" OVERRIDDEN=unit\nEnvironment=PORT=8188\n\
         WorkingDirectory={}\nUMask=0077\nNice=5\n\
         ExecStartPre=/bin/sh -c 'echo pre ran > pre.txt'\n\
         ExecStart=/bin/sh -c 'echo \"g=$GREETING f=$FROM_FILE o=$OVERRIDDEN u=$AIKORE_UNIT p=${{PORT}} arg=$1 pw=${{AIKORE_PASSWORD:-unset}} cwd=$(pwd) umask=$(umask) nice=$(nice)\"; cat pre.txt; exec sleep 1000' sh ${{PORT}}\n",
        env_file.display(),
        work.display()
    );
    let mut options = Options::default();
    options.env.push(("AIKORE_PASSWORD".into(), "secret".into()));
    let d = Daemon::start_with(&[("envy.service", &unit)], options);
    d.wait_until("the line", |d| d.unit_log("envy").contains("\npre ran"));
    let log = d.unit_log("envy");
    for want in [
        "g=hello world",
        "f=file value",
        "o=unit",
        "u=envy",
        "p=8188",
        "arg=8188",
        "pw=unset",
        &format!("cwd={}", work.display()),
        "umask=0077",
        "nice=5",
    ] {
        assert!(log.contains(want), "{want:?} missing in {log}");
    }
}

#[test]
fn user_and_group_drop_privileges() {
    let d = Daemon::start(&[(
        "nobody.service",
        "[Service]\nUser=nobody\nGroup=nogroup\nExecStart=/bin/sh -c 'echo ids $(id -u):$(id -g) home=$HOME; exec sleep 1000'\n",
    )]);
    // aikore's own "[aikore] started ..." line quotes the command: wait for the output.
    d.wait_until("the ids", |d| d.unit_log("nobody").contains("\nids "));
    let log = d.unit_log("nobody");
    assert!(log.contains("ids 65534:65534"), "{log}");
}

#[test]
fn a_missing_executable_is_an_error_that_says_so() {
    let d = Daemon::start(&[("ghost.service", "[Service]\nExecStart=no-such-program-anywhere --flag\n")]);
    let u = d.wait_status("ghost", "error");
    assert!(u["detail"].as_str().unwrap().contains("not found"), "{u}");
}

#[test]
fn a_failing_exec_start_pre_prevents_the_main_process() {
    let d = Daemon::start(&[(
        "guarded.service",
        "[Service]\nExecStartPre=/bin/false\nExecStart=/bin/sh -c 'echo main ran; exec sleep 1000'\n",
    )]);
    let u = d.wait_status("guarded", "error");
    assert!(u["detail"].as_str().unwrap().contains("ExecStartPre"), "{u}");
    assert!(!d.unit_output("guarded").contains("main ran"));
}

#[test]
fn exec_reload_runs_with_mainpid() {
    let d = Daemon::start(&[(
        "reloadable.service",
        "[Service]\nExecStart=/bin/sh -c 'trap \"echo reloaded\" HUP; echo trapped; while :; do sleep 0.05; done'\nExecReload=/bin/kill -HUP $MAINPID\n",
    )]);
    d.wait_status("reloadable", "started");
    // A HUP before the shell's trap would end it (HUP's default).
    d.wait_until("the trap", |d| d.unit_log("reloadable").contains("\ntrapped"));
    let (code, body) = d.post("/api/v1/units/reloadable/reload");
    assert_eq!(code, 200, "{body}");
    d.wait_until("the HUP", |d| d.unit_log("reloadable").contains("\nreloaded"));
}

#[test]
fn an_unmet_condition_skips_the_start_without_failing() {
    let d = Daemon::start(&[(
        "conditional.service",
        "[Unit]\nConditionPathExists=/nonexistent/aikore-test\n[Service]\nExecStart=/bin/sh -c 'echo ran; exec sleep 1000'\n",
    )]);
    let u = d.wait_status("conditional", "stopped");
    assert!(u["detail"].as_str().unwrap().contains("skipped: ConditionPathExists"), "{u}");
    assert!(!d.unit_output("conditional").contains("ran"));
}

#[test]
fn puid_pgid_run_instances_and_own_only_their_dirs() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mut options = Options::default();
    options.env.push(("PUID".into(), "65534".into()));
    options.env.push(("PGID".into(), "65534".into()));
    let d = Daemon::start_with(
        &[
            (
                "plain.service",
                "[Service]\nExecStart=/bin/sh -c 'echo ids $(id -u):$(id -g) home=$HOME; exec sleep 1000'\n",
            ),
            ("nobodys.service", "[Service]\nUser=nobody\nExecStart=/bin/sh -c 'echo ids $(id -u); exec sleep 1000'\n"),
        ],
        options,
    );
    // The temp dir above the data dir is root's 0700; the container's /config has no such parent.
    std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    d.wait_until("the ids", |d| d.unit_log("plain").contains("\nids ") && d.unit_log("nobodys").contains("\nids "));
    // A service without User= runs as root, as under systemd; User= still wins.
    assert!(d.unit_log("plain").contains("ids 0:0"), "{}", d.unit_log("plain"));
    assert!(d.unit_log("nobodys").contains("ids 65534"), "User= still wins");
    let (code, body) = d.post_json(
        "/api/v1/instances",
        serde_json::json!({ "name": "owned", "blueprint": "test-http", "start": true }),
    );
    assert_eq!(code, 201, "{body}");
    let u = d.wait_status("owned", "started");
    let status = std::fs::read_to_string(format!("/proc/{}/status", u["pid"])).unwrap();
    assert!(status.lines().any(|l| l.starts_with("Uid:") && l.contains("65534")), "instances run as PUID: {status}");
    // aikore's own state is root's (docs/security.md); the instance dir is PUID's.
    for path in
        ["", "units", "logs", "logs/plain.log", "aikore.db", "nginx/nginx.conf", "units/owned.instance", "instances"]
    {
        let meta = std::fs::metadata(d.data_dir.join(path)).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (0, 0), "{path} belongs to the daemon");
    }
    for path in ["instances/owned", "instances/owned/launch.sh", "instances/owned/outputs"] {
        let meta = std::fs::metadata(d.data_dir.join(path)).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (65534, 65534), "{path} belongs to PUID/PGID");
    }
}
