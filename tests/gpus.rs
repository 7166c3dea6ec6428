//! GPUs through the real daemon with fake readings (`AIKORE_GPU_FAKE`, a
//! JSON file in NVML's shape that the test rewrites): `GPUs=auto`
//! placement and two starts at once, `GPUMemoryMin=` refusal, health gating
//! on an Xid 79 and on new uncorrected ECC errors, and a leak restart on a
//! growing VRAM reading. The real driver is checked by tests/gpu/check.sh.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::harness::{Daemon, Options};

const GIB: u64 = 1 << 30;

/// Four 80 GiB GPUs with 10, 60, 30 and 50 GiB in use (70, 20, 50, 30 free).
fn four_gpus() -> Value {
    let gpus: Vec<Value> = [10u64, 60, 30, 50]
        .iter()
        .enumerate()
        .map(|(i, used)| {
            json!({
                "index": i, "uuid": format!("GPU-fake-{i}"), "name": "NVIDIA H100 80GB HBM3",
                "memory_total_bytes": 80 * GIB, "memory_used_bytes": used * GIB,
                "fan_speed_percent": "InvalidArg", "ecc_uncorrected_total": 0,
                "retired_pages_pending": "NotSupported", "remapped_rows_pending": false,
                "process_utilization": "NotFound", "xid_events": [], "processes": []
            })
        })
        .collect();
    json!({ "_about": "test machine", "gpus": gpus })
}

fn write(path: &Path, machine: &Value) {
    // Whole-file replace: the daemon never reads half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(machine).unwrap()).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn daemon_with(machine: &Value) -> (Daemon, PathBuf) {
    let dir = tempfile::tempdir().unwrap().keep();
    let file = dir.join("gpus.json");
    write(&file, machine);
    let mut options = Options::default();
    options.env.push(("AIKORE_GPU_FAKE".into(), file.display().to_string()));
    options.env.push(("AIKORE_WATCH_INTERVAL_MS".into(), "200".into()));
    (Daemon::start_with(&[], options), file)
}

fn create(d: &Daemon, name: &str, gpus: &str) {
    let (code, body) =
        d.post_json("/api/v1/instances", json!({ "name": name, "blueprint": "test-http", "gpus": gpus }));
    assert_eq!(code, 201, "{body}");
}

/// Sets `[Instance]` keys the API does not set (replacing earlier values), then reloads.
fn add_instance_keys(d: &Daemon, name: &str, keys: &str) {
    let path = d.data_dir.join(format!("units/{name}.instance"));
    let text = std::fs::read_to_string(&path).unwrap();
    let set: Vec<&str> = keys.lines().filter_map(|l| l.split_once('=').map(|(k, _)| k)).collect();
    let kept: String = text
        .lines()
        .filter(|l| !set.iter().any(|k| l.starts_with(&format!("{k}="))))
        .map(|l| format!("{l}\n"))
        .collect();
    let text = kept.replace("[Instance]\n", &format!("[Instance]\n{keys}"));
    std::fs::write(&path, text).unwrap();
    let (code, body) = d.post("/api/v1/reload");
    assert_eq!(code, 200, "{body}");
}

fn visible_devices(d: &Daemon, name: &str) -> String {
    let log = d.unit_log(name);
    log.lines().rev().find_map(|l| l.strip_prefix("CUDA_VISIBLE_DEVICES=")).unwrap_or("<none>").to_string()
}

fn metrics(d: &Daemon) -> String {
    match d.get("/metrics").1 {
        Value::String(s) => s,
        other => other.to_string(),
    }
}

#[test]
fn gpus_auto_takes_the_freest_gpus_and_two_starts_at_once_never_share_one() {
    let (d, _file) = daemon_with(&four_gpus());
    create(&d, "a", "auto");
    create(&d, "b", "auto");
    std::thread::scope(|s| {
        s.spawn(|| d.post("/api/v1/instances/a/start"));
        s.spawn(|| d.post("/api/v1/instances/b/start"));
    });
    d.wait_status("a", "started");
    d.wait_status("b", "started");
    let mut chosen = [visible_devices(&d, "a"), visible_devices(&d, "b")];
    chosen.sort();
    // GPU 0 (70 GiB free) and GPU 2 (50): never both on 0.
    assert_eq!(chosen, ["0", "2"]);
    for name in ["a", "b"] {
        let (_, view) = d.get(&format!("/api/v1/instances/{name}"));
        let placed = view["placed_gpus"][0].as_u64().expect("placed_gpus in the API").to_string();
        assert_eq!(placed, visible_devices(&d, name));
        assert_eq!(view["gpus"], "auto");
        assert!(metrics(&d).contains(&format!("aikore_unit_gpu_pinned{{unit=\"{name}\",gpu=\"{placed}\"}} 1")));
    }
    let (_, system) = d.get("/api/v1/system");
    let placed_on_0 = &system["gpus"][0]["placed"];
    assert_eq!(placed_on_0.as_array().map(Vec::len), Some(1), "{system}");
    // auto:2 takes the two freest left after those: GPU 3 (30 GiB) and GPU 1 (20).
    create(&d, "pair", "auto:2");
    d.post("/api/v1/instances/pair/start");
    d.wait_status("pair", "started");
    assert_eq!(visible_devices(&d, "pair"), "1,3");
}

#[test]
fn gpu_memory_min_refuses_a_start_with_the_reason_and_survives_an_api_edit() {
    let (d, _file) = daemon_with(&four_gpus());
    create(&d, "big", "auto");
    add_instance_keys(&d, "big", "GPUMemoryMin=75G\n");
    d.post("/api/v1/instances/big/start");
    d.wait_until("big to fail to start", |d| {
        let u = d.unit("big");
        u["status"] == "failed" || u["status"] == "error"
    });
    let u = d.unit("big");
    let detail = u["detail"].as_str().unwrap_or_default().to_string();
    assert!(detail.contains("GPUMemoryMin=75.0 GiB") && detail.contains("GPU 0: 70.0 GiB free"), "{u}");
    // An API edit keeps the key (the [Instance] section is rendered from the spec).
    let (code, body) = d.patch_json("/api/v1/instances/big", json!({ "description": "edited" }));
    assert_eq!(code, 200, "{body}");
    let text = std::fs::read_to_string(d.data_dir.join("units/big.instance")).unwrap();
    assert!(text.contains(&format!("GPUMemoryMin={}", 75 * GIB)), "{text}");
    // 60 GiB fits on GPU 0.
    add_instance_keys(&d, "big", "GPUMemoryMin=60G\n");
    d.post("/api/v1/instances/big/start");
    d.wait_status("big", "started");
    assert_eq!(visible_devices(&d, "big"), "0");
}

#[test]
fn an_xid_79_or_new_ecc_errors_make_a_gpu_unhealthy_and_auto_instances_move_on_restart() {
    let mut machine = four_gpus();
    let (d, file) = daemon_with(&machine);
    d.wait_until("GPU health is reported", |d| metrics(d).contains("aikore_gpu_healthy{gpu=\"0\"} 1"));
    machine["gpus"][0]["xid_events"] = json!([79]);
    write(&file, &machine);
    d.wait_until("GPU 0 unhealthy", |d| metrics(d).contains("aikore_gpu_healthy{gpu=\"0\"} 0"));
    let (_, system) = d.get("/api/v1/system");
    assert_eq!(system["gpus"][0]["healthy"], false);
    assert_eq!(system["gpus"][0]["unhealthy_reason"], "Xid 79: fell off the bus", "{system}");
    assert!(metrics(&d).contains("aikore_gpu_unhealthy_info{gpu=\"0\",reason=\"Xid 79: fell off the bus\"} 1"));

    // The freest GPU is unhealthy: auto goes to GPU 2.
    create(&d, "mover", "auto");
    d.post("/api/v1/instances/mover/start");
    d.wait_status("mover", "started");
    assert_eq!(visible_devices(&d, "mover"), "2");
    // A pinned instance on GPU 0 is refused.
    create(&d, "pinned", "0");
    d.post("/api/v1/instances/pinned/start");
    d.wait_until("pinned refused", |d| matches!(d.unit("pinned")["status"].as_str(), Some("failed" | "error")));
    assert!(d.unit("pinned")["detail"].as_str().unwrap_or_default().contains("unhealthy (Xid 79"));

    // Two new uncorrected ECC errors on GPU 2: unhealthy; at its next restart mover goes to GPU 3.
    machine["gpus"][2]["ecc_uncorrected_total"] = json!(2);
    write(&file, &machine);
    d.wait_until("GPU 2 unhealthy", |d| metrics(d).contains("aikore_gpu_healthy{gpu=\"2\"} 0"));
    let (_, system) = d.get("/api/v1/system");
    assert_eq!(system["gpus"][2]["unhealthy_reason"], "2 new uncorrected ECC error(s)");
    assert_eq!(visible_devices(&d, "mover"), "2", "a running instance is not moved under its feet");
    d.post("/api/v1/instances/mover/restart");
    d.wait_until("mover restarted on GPU 3", |d| visible_devices(d, "mover") == "3");
    d.wait_status("mover", "started");
}

#[test]
fn vram_above_gpu_memory_restart_above_for_the_window_restarts_the_instance() {
    let mut machine = four_gpus();
    let (d, file) = daemon_with(&machine);
    create(&d, "leaky", "0");
    add_instance_keys(&d, "leaky", "GPUMemoryRestartAbove=4G\nRestartAboveSec=1s\n");
    d.post("/api/v1/instances/leaky/start");
    let first = d.wait_status("leaky", "started");
    let pid = first["pid"].as_u64().expect("pid");
    // Below the bound: attributed, no restart.
    machine["gpus"][0]["processes"] = json!([{ "pid": pid, "used_bytes": 2 * GIB }]);
    write(&file, &machine);
    d.wait_until("VRAM attributed", |d| {
        metrics(d).contains(&format!(
            "aikore_unit_gpu_memory_bytes{{unit=\"leaky\",kind=\"instance\",gpu=\"0\"}} {}",
            2 * GIB
        ))
    });
    d.wait_until("the instance's VRAM in the API", |d| d.get("/api/v1/instances/leaky").1["vram_bytes"] == 2 * GIB);
    // It grows past 4 GiB and stays there: one restart, counted, with the reason logged.
    machine["gpus"][0]["processes"] = json!([{ "pid": pid, "used_bytes": 5 * GIB }]);
    write(&file, &machine);
    d.wait_until("a leak restart", |d| metrics(d).contains("aikore_unit_leak_restarts_total{unit=\"leaky\"} 1"));
    d.wait_until("a new run", |d| d.unit("leaky")["pid"].as_u64().is_some_and(|p| p != pid));
    d.wait_status("leaky", "started");
    let log = d.daemon_log();
    assert!(log.contains("GPU memory above GPUMemoryRestartAbove=4.00GiB"), "{log}");
}

#[test]
fn memory_above_memory_restart_above_restarts_the_instance() {
    let (d, _file) = daemon_with(&four_gpus());
    create(&d, "fat", "");
    // Any live process tree is above 1 MiB (cgroup memory.current, or RSS without cgroups).
    add_instance_keys(&d, "fat", "MemoryRestartAbove=1M\nRestartAboveSec=1s\n");
    d.post("/api/v1/instances/fat/start");
    d.wait_status("fat", "started");
    d.wait_until("a leak restart", |d| metrics(d).contains("aikore_unit_leak_restarts_total{unit=\"fat\"}"));
    assert!(d.daemon_log().contains("memory above MemoryRestartAbove=1MiB"), "{}", d.daemon_log());
}
