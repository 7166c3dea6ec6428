//! Install as a job (docs/operations.md): a blueprint's install phase
//! against a local git repository and a local wheel dir, through the real
//! daemon: `installing` with progress, the stamp, a changed pin, a failing
//! pip install classified `network`.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::Daemon;

/// Generous: a venv and a pip install on a busy 2-core CI box.
const INSTALL_PATIENCE: Duration = Duration::from_secs(120);

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("run");
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A repo with release tags v1.0.0 and v1.1.0 (and a non-release tag), each
/// asking for the `aikoredemo` package.
fn app_repo(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let git = |args: &[&str]| {
        run(Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"])
            .args(args)
            .current_dir(dir))
    };
    git(&["init", "-q"]);
    for version in ["1.0.0", "1.1.0"] {
        std::fs::write(dir.join("requirements.txt"), "aikoredemo\n").unwrap();
        std::fs::write(dir.join("VERSION"), version).unwrap();
        git(&["add", "-A"]);
        git(&["commit", "-qm", version]);
        git(&["tag", &format!("v{version}")]);
    }
    git(&["tag", "nightly"]);
}

/// A wheel dir holding `aikoredemo` 1.0 (made by hand: no build tools offline).
fn wheel_dir(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let script = r#"
import sys, zipfile
path = sys.argv[1] + "/aikoredemo-1.0-py3-none-any.whl"
files = {
    "aikoredemo/__init__.py": "VALUE = 42\n",
    "aikoredemo-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: aikoredemo\nVersion: 1.0\n",
    "aikoredemo-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
record = "".join(f"{name},,\n" for name in files) + "aikoredemo-1.0.dist-info/RECORD,,\n"
with zipfile.ZipFile(path, "w") as z:
    for name, text in files.items():
        z.writestr(name, text)
    z.writestr("aikoredemo-1.0.dist-info/RECORD", record)
"#;
    run(Command::new("python3").arg("-c").arg(script).arg(dir));
}

const BLUEPRINT: &str = r#"#!/usr/bin/env bash
### AIKORE-METADATA-START ###
# aikore.name = Install demo
# aikore.category = Testing
### AIKORE-METADATA-END ###
set -euo pipefail
source "$AIKORE_BLUEPRINTS_DIR/functions.sh"
require_instance_env
APP_REF=${APP_REF:-latest}
VERSION=$(release_ref "$APP_REPO" "$APP_REF")
install() {
    install_step "checkout $VERSION"
    clone_or_update "$APP_REPO" ./app "$VERSION"
    sleep 1
    install_step "Python env"
    ensure_venv ./env python3
    sleep 1
    install_step "requirements"
    read -r -a pip_args <<<"$PIP_ARGS"
    pip install --disable-pip-version-check "${pip_args[@]}" -r ./app/requirements.txt
    sleep 1
}
run_install 3 "$VERSION" "$APP_REPO"
ensure_venv ./env python3
python -c 'import aikoredemo; print("aikoredemo", aikoredemo.VALUE)'
echo "app $(cat ./app/VERSION) starting"
exec python3 -m http.server "$WEBUI_PORT" --bind 127.0.0.1 --directory ./app
"#;

fn instance(d: &Daemon, name: &str) -> Value {
    d.get(&format!("/api/v1/instances/{name}")).1
}

/// Polls the instance until `done` holds; every view seen goes to `seen`.
fn watch(d: &Daemon, name: &str, what: &str, seen: &mut Vec<Value>, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + INSTALL_PATIENCE;
    while Instant::now() < deadline {
        let v = instance(d, name);
        seen.push(v.clone());
        if done(&v) {
            return v;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}: {}\n{}", instance(d, name), d.unit_log(name));
}

fn setup() -> (Daemon, String, String) {
    let d = Daemon::start(&[]);
    let repo = d.dir.path().join("app-repo");
    let wheels = d.dir.path().join("wheels");
    app_repo(&repo);
    wheel_dir(&wheels);
    let custom = d.data_dir.join("blueprints");
    std::fs::create_dir_all(&custom).unwrap();
    std::fs::write(custom.join("installdemo.sh"), BLUEPRINT).unwrap();
    (d, repo.display().to_string(), wheels.display().to_string())
}

#[test]
fn the_install_runs_as_a_job_with_progress_once_per_pin_and_starts_the_app() {
    let (d, repo, wheels) = setup();
    let env = json!({ "APP_REPO": repo, "PIP_ARGS": format!("--no-index --find-links {wheels}") });
    let (code, body) =
        d.post_json("/api/v1/instances", json!({ "name": "inst", "blueprint": "installdemo", "environment": env }));
    assert_eq!(code, 201, "{body}");
    d.post("/api/v1/instances/inst/start");

    let mut seen = Vec::new();
    let v = watch(&d, "inst", "the first install and start", &mut seen, |v| v["status"] == "started");
    let installing: Vec<&Value> = seen.iter().filter(|v| v["status"] == "installing").collect();
    assert!(!installing.is_empty(), "never shown installing: {seen:?}");
    let steps: Vec<u64> = installing.iter().filter_map(|v| v["install"]["step"].as_u64()).collect();
    assert!(steps.windows(2).all(|w| w[0] <= w[1]), "progress went back: {steps:?}");
    assert!(steps.iter().collect::<std::collections::BTreeSet<_>>().len() >= 2, "one step only: {steps:?}");
    assert!(installing.iter().all(|v| v["install"]["steps"] == 3), "{installing:?}");
    assert!(installing.iter().any(|v| v["detail"].as_str().unwrap_or("").contains("step ")), "{installing:?}");
    // The newest release tag, recorded and shown; the app from it.
    assert_eq!(v["app_version"], "v1.1.0", "{v}");
    assert_eq!(v["install"]["state"], "done", "{v}");
    let log = d.unit_output("inst");
    assert!(log.contains("aikoredemo 42") && log.contains("app 1.1.0 starting"), "{log}");
    assert!(d.data_dir.join("instances/inst/install.log").is_file(), "the install has its own log");

    // A second start: the stamp matches, no install.
    d.post("/api/v1/instances/inst/stop");
    d.wait_until("inst stopped", |d| instance(d, "inst")["status"] == "stopped");
    d.post("/api/v1/instances/inst/start");
    let mut seen = Vec::new();
    let v = watch(&d, "inst", "the second start", &mut seen, |v| v["status"] == "started");
    assert!(seen.iter().all(|v| v["status"] != "installing"), "installed again: {seen:?}");
    assert_eq!(v["install"]["state"], "skipped", "{v}\n{}", d.daemon_log());
    assert_eq!(v["app_version"], "v1.1.0", "{v}");

    // A changed pin: the install runs again, for that ref.
    let env = json!({ "APP_REPO": repo, "APP_REF": "v1.0.0", "PIP_ARGS": format!("--no-index --find-links {wheels}") });
    let (code, body) = d.patch_json("/api/v1/instances/inst?restart=true", json!({ "environment": env }));
    assert_eq!(code, 200, "{body}");
    let mut seen = Vec::new();
    let v = watch(&d, "inst", "the install of the new pin", &mut seen, |v| {
        v["status"] == "started" && v["app_version"] == "v1.0.0"
    });
    assert_eq!(v["install"]["state"], "done", "{v}");
    assert!(d.unit_output("inst").contains("app 1.0.0 starting"), "{}", d.unit_output("inst"));

    // "Update" goes back to the newest release: pinned refs stay possible, `latest` follows releases.
    let env = json!({ "APP_REPO": repo, "PIP_ARGS": format!("--no-index --find-links {wheels}") });
    d.patch_json("/api/v1/instances/inst", json!({ "environment": env }));
    let (code, body) = d.post("/api/v1/instances/inst/update");
    assert_eq!(code, 200, "{body}");
    let mut seen = Vec::new();
    watch(&d, "inst", "the update", &mut seen, |v| v["status"] == "started" && v["app_version"] == "v1.1.0");
}

#[test]
fn a_pip_install_that_cannot_reach_its_index_ends_failed_with_class_network() {
    let (d, repo, _) = setup();
    // Nothing listens on port 9 (discard): pip's connection is refused.
    let env = json!({ "APP_REPO": repo, "PIP_ARGS": "--index-url http://127.0.0.1:9/simple --retries 1 --timeout 2" });
    let (code, body) =
        d.post_json("/api/v1/instances", json!({ "name": "offline", "blueprint": "installdemo", "environment": env }));
    assert_eq!(code, 201, "{body}");
    d.post("/api/v1/instances/offline/start");
    let mut seen = Vec::new();
    let v = watch(&d, "offline", "the failed install", &mut seen, |v| v["status"] == "failed");
    assert_eq!(v["failure"]["class"], "network", "{v}");
    assert_eq!(v["install"]["state"], "failed", "{v}");
    assert_eq!(v["install"]["step"], 3, "{v}");
    assert!(v["detail"].as_str().unwrap_or("").contains("install failed at"), "{v}");
    assert!(seen.iter().any(|v| v["status"] == "installing"), "{seen:?}");
}
