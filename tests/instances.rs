//! Instances end to end: created from the stock `test-http` blueprint (no
//! internet, no GPU), started, watched through the state machine, edited,
//! trashed and restored, all through the API.

use std::time::Duration;

use serde_json::json;

use crate::harness::{free_port, Daemon, Options};

fn create(d: &Daemon, body: serde_json::Value) -> serde_json::Value {
    let (code, created) = d.post_json("/api/v1/instances", body);
    assert_eq!(code, 201, "{created}");
    created
}

#[test]
fn an_instance_goes_from_creation_to_started_when_its_port_answers() {
    let d = Daemon::start(&[]);
    let created = create(&d, json!({ "name": "comfy-a", "blueprint": "test-http", "gpus": "0" }));
    assert_eq!(created["status"], "stopped");
    assert_eq!(created["url"], format!("{}/app/comfy-a/", d.apps_origin()));
    assert_eq!(created["port"], "auto");
    let dir = d.data_dir.join("instances/comfy-a");
    assert!(dir.join("launch.sh").is_file() && dir.join("outputs").is_dir());
    assert!(d.data_dir.join("units/comfy-a.instance").is_file());

    d.post("/api/v1/instances/comfy-a/start");
    let started = d.wait_status("comfy-a", "started");
    let port = d.get("/api/v1/instances/comfy-a").1["current_port"].as_u64().expect("a leased port");
    let log = d.unit_log("comfy-a");
    assert!(log.contains(&format!("WEBUI_PORT={port}")), "{log}");
    assert!(log.contains("CUDA_VISIBLE_DEVICES=0"), "{log}");
    assert!(log.contains("INSTANCE_NAME=comfy-a"), "{log}");
    assert!(started["pid"].as_i64().is_some());
    // Instances show up among the units too.
    let (_, units) = d.get("/api/v1/units");
    assert!(units.as_array().unwrap().iter().any(|u| u["name"] == "comfy-a" && u["kind"] == "instance"));

    d.post("/api/v1/instances/comfy-a/stop");
    d.wait_status("comfy-a", "stopped");
    assert!(d.marked_processes().is_empty(), "stop leaves no process of the instance");
}

#[test]
fn a_silent_instance_stalls_then_still_becomes_started() {
    let d = Daemon::start(&[]);
    create(
        &d,
        json!({ "name": "slow", "blueprint": "test-http", "stall_after_sec": 1, "environment": { "TEST_DELAY_SEC": "2" } }),
    );
    d.post("/api/v1/instances/slow/start");
    d.wait_status("slow", "stalled");
    d.wait_status("slow", "started");
    let (_, journal) = d.get("/api/v1/journal?unit=slow&limit=100");
    let states: Vec<String> = journal
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "state")
        .map(|e| e["detail"].as_str().unwrap().split(':').next().unwrap().to_string())
        .collect();
    let stalled = states.iter().position(|s| s == "stalled").expect("stalled journaled");
    let started = states.iter().position(|s| s == "started").expect("started journaled");
    assert!(stalled < started, "{states:?}");
}

#[test]
fn a_non_zero_exit_is_an_error() {
    let d = Daemon::start(&[]);
    create(&d, json!({ "name": "broken", "blueprint": "test-http", "environment": { "TEST_EXIT_CODE": "7" } }));
    d.post("/api/v1/instances/broken/start");
    let u = d.wait_status("broken", "error");
    assert_eq!(u["detail"], "exited with code 7");
}

#[test]
fn two_instances_on_different_gpus_see_different_cuda_visible_devices() {
    let d = Daemon::start(&[]);
    create(&d, json!({ "name": "on-gpu0", "blueprint": "test-http", "gpus": "0", "start": true }));
    create(&d, json!({ "name": "on-gpu1", "blueprint": "test-http", "gpus": [1], "start": true }));
    d.wait_status("on-gpu0", "started");
    d.wait_status("on-gpu1", "started");
    assert!(d.unit_log("on-gpu0").contains("CUDA_VISIBLE_DEVICES=0\n"));
    assert!(d.unit_log("on-gpu1").contains("CUDA_VISIBLE_DEVICES=1\n"));
    assert!(d.unit_log("on-gpu1").contains("CUDA_DEVICE_ORDER=PCI_BUS_ID"));
}

#[test]
fn a_daemon_restart_brings_back_autostart_instances_on_the_same_ports() {
    let options = Options::default();
    let mut d = Daemon::start_with(&[], options.clone());
    create(&d, json!({ "name": "auto-on", "blueprint": "test-http", "autostart": true, "start": true }));
    create(&d, json!({ "name": "manual", "blueprint": "test-http", "start": true }));
    d.wait_status("auto-on", "started");
    d.wait_status("manual", "started");
    let port_auto = d.get("/api/v1/instances/auto-on").1["current_port"].clone();
    let port_manual = d.get("/api/v1/instances/manual").1["current_port"].clone();
    assert_eq!(d.terminate().code(), Some(0));

    // Same AIKORE_PORT_RANGE as before, as a real deployment has.
    d.spawn(options);
    d.wait_status("auto-on", "started");
    assert_eq!(d.get("/api/v1/instances/auto-on").1["current_port"], port_auto);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(d.unit("manual")["status"], "stopped");
    d.post("/api/v1/instances/manual/start");
    d.wait_status("manual", "started");
    assert_eq!(d.get("/api/v1/instances/manual").1["current_port"], port_manual, "leases are stable");
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let d = Daemon::start(&[]);
    create(&d, json!({ "name": "taken", "blueprint": "test-http", "port": 40123 }));
    let units_before = std::fs::read_dir(d.data_dir.join("units")).unwrap().count();
    let instances_before = std::fs::read_dir(d.data_dir.join("instances")).unwrap().count();
    for (body, want) in [
        (json!({ "name": "../x", "blueprint": "test-http" }), 400),
        (json!({ "name": "<img src=x onerror=alert(1)>", "blueprint": "test-http" }), 400),
        (json!({ "name": "Upper", "blueprint": "test-http" }), 400),
        (json!({ "name": "taken", "blueprint": "test-http" }), 409),
        (json!({ "name": "nobp", "blueprint": "no-such-blueprint" }), 400),
        (json!({ "name": "badport", "blueprint": "test-http", "port": 70000 }), 400),
        (json!({ "name": "badport2", "blueprint": "test-http", "port": "soon" }), 400),
        (json!({ "name": "heldport", "blueprint": "test-http", "port": 40123 }), 409),
        (json!({ "name": "badgpu", "blueprint": "test-http", "gpus": "zero" }), 400),
        (json!({ "name": "badgpu2", "blueprint": "test-http", "gpus": { "a": 1 } }), 400),
        (json!({ "name": "badenv", "blueprint": "test-http", "environment": { "A B": "x" } }), 400),
        (
            json!({ "name": "inject", "blueprint": "test-http", "environment": { "A": "x\n[Service]\nExecStart=/bin/evil" } }),
            400,
        ),
        (json!({ "name": "badslot", "blueprint": "test-http", "active_slot": "forge" }), 400),
        (json!({ "name": "extra", "blueprint": "test-http", "colour": "red" }), 400),
        (json!({ "blueprint": "test-http" }), 400),
    ] {
        let (code, reply) = d.post_json("/api/v1/instances", body.clone());
        assert_eq!(code, want, "{body} -> {reply}");
        assert!(reply["error"].as_str().is_some(), "{reply}");
    }
    let (code, reply) =
        d.post_json("/api/v1/instances", json!({ "name": "heldport", "blueprint": "test-http", "port": 40123 }));
    assert!(reply["error"].as_str().unwrap().contains("taken"), "names the holder: {code} {reply}");
    assert_eq!(std::fs::read_dir(d.data_dir.join("units")).unwrap().count(), units_before);
    assert_eq!(std::fs::read_dir(d.data_dir.join("instances")).unwrap().count(), instances_before);
    let (code, _) = d.patch_json("/api/v1/instances/taken", json!({ "gpus": "0,0" }));
    assert_eq!(code, 400);
    let (code, _) = d.patch_json("/api/v1/instances/ghost", json!({ "gpus": "0" }));
    assert_eq!(code, 404);
}

#[test]
fn update_rename_and_pending_restart() {
    let d = Daemon::start(&[]);
    create(&d, json!({ "name": "edit-me", "blueprint": "test-http", "start": true }));
    d.wait_status("edit-me", "started");
    let (code, reply) = d.patch_json("/api/v1/instances/edit-me", json!({ "gpus": "1", "environment": { "X": "1" } }));
    assert_eq!(code, 200, "{reply}");
    assert_eq!(reply["restart_pending"], true);
    let (code, reply) = d.patch_json("/api/v1/instances/edit-me?restart=true", json!({ "gpus": "2" }));
    assert_eq!(code, 200, "{reply}");
    assert_eq!(reply["restarted"], true);
    d.wait_until("the new GPU", |d| d.unit_log("edit-me").contains("CUDA_VISIBLE_DEVICES=2"));

    // A running instance is renamed only when the caller accepts the restart.
    let (code, _) = d.patch_json("/api/v1/instances/edit-me", json!({ "name": "renamed" }));
    assert_eq!(code, 409);
    let (code, reply) = d.patch_json("/api/v1/instances/edit-me?restart=true", json!({ "name": "renamed" }));
    assert_eq!(code, 200, "{reply}");
    d.wait_status("renamed", "started");
    assert!(d.data_dir.join("instances/renamed/launch.sh").is_file());
    assert!(!d.data_dir.join("instances/edit-me").exists());
    assert!(!d.data_dir.join("units/edit-me.instance").exists());
    assert_eq!(d.get("/api/v1/instances/edit-me").0, 404);
    assert!(d.unit_log("renamed").contains("INSTANCE_NAME=renamed"));
}

#[test]
fn delete_to_trash_restore_and_purge() {
    let d = Daemon::start(&[]);
    create(&d, json!({ "name": "doomed", "blueprint": "test-http", "start": true }));
    d.wait_status("doomed", "started");
    let (code, _) = d.delete("/api/v1/instances/doomed");
    assert_eq!(code, 409, "a running instance is not deleted without force");
    let (code, reply) = d.delete("/api/v1/instances/doomed?force=true");
    assert_eq!(code, 200, "{reply}");
    assert!(d.marked_processes().is_empty());
    assert_eq!(d.get("/api/v1/instances/doomed").0, 404);
    let id = reply["trashed"]["id"].as_str().unwrap().to_string();
    let (_, trash) = d.get("/api/v1/trashcan");
    assert_eq!(trash[0]["name"], "doomed");
    let (code, restored) = d.post(&format!("/api/v1/trashcan/{id}/restore"));
    assert_eq!(code, 200, "{restored}");
    assert_eq!(restored["name"], "doomed");
    assert!(d.data_dir.join("instances/doomed/launch.sh").is_file());
    let (_, reply) = d.delete("/api/v1/instances/doomed");
    let id = reply["trashed"]["id"].as_str().unwrap().to_string();
    assert_eq!(d.delete(&format!("/api/v1/trashcan/{id}")).0, 204);
    assert_eq!(d.get("/api/v1/trashcan").1.as_array().unwrap().len(), 0);
    assert_eq!(d.post(&format!("/api/v1/trashcan/{id}/restore")).0, 404);
}

#[test]
fn script_edit_custom_blueprint_and_rebuild() {
    let d = Daemon::start(&[]);
    create(&d, json!({ "name": "scripted", "blueprint": "test-http" }));
    let (code, script) = d.get("/api/v1/instances/scripted/script");
    assert_eq!(code, 200);
    let content = script["content"]
        .as_str()
        .unwrap()
        .replace("#!/usr/bin/env bash\n", "#!/usr/bin/env bash\necho edited-by-test\n");
    let (code, _) = d.put_json("/api/v1/instances/scripted/script", json!({ "content": content }));
    assert_eq!(code, 200);
    d.post("/api/v1/instances/scripted/start");
    d.wait_status("scripted", "started");
    assert!(d.unit_log("scripted").contains("edited-by-test"));

    let (code, bp) = d.post_json("/api/v1/blueprints", json!({ "instance": "scripted", "id": "my-http" }));
    assert_eq!(code, 201, "{bp}");
    let (_, list) = d.get("/api/v1/blueprints");
    let mine = list.as_array().unwrap().iter().find(|b| b["id"] == "my-http").expect("listed");
    assert_eq!(mine["custom"], true);
    let stock = list.as_array().unwrap().iter().find(|b| b["id"] == "test-http").expect("stock listed");
    assert_eq!(stock["category"], "Testing");
    assert_eq!(d.post_json("/api/v1/blueprints", json!({ "instance": "scripted", "id": "my-http" })).0, 409);

    let (code, _) = d.post("/api/v1/instances/scripted/rebuild");
    assert_eq!(code, 200);
    assert!(d.data_dir.join("instances/scripted/.rebuild-env").exists());
}

#[test]
fn the_comfyui_slot_has_one_holder() {
    let d = Daemon::start(&[]);
    create(&d, json!({ "name": "first", "blueprint": "test-http", "active_slot": "comfyui" }));
    assert_eq!(d.get("/api/v1/instances/first").1["url"], format!("{}/comfyui/", d.apps_origin()));
    create(&d, json!({ "name": "second", "blueprint": "test-http", "active_slot": "comfyui" }));
    assert_eq!(d.get("/api/v1/instances/second").1["active_slot"], "comfyui");
    assert!(d.get("/api/v1/instances/first").1["active_slot"].is_null(), "taken from the first");
    d.patch_json("/api/v1/instances/first", json!({ "active_slot": "comfyui" }));
    assert!(d.get("/api/v1/instances/second").1["active_slot"].is_null());
    assert_eq!(d.get("/api/v1/instances/first").1["url"], format!("{}/comfyui/", d.apps_origin()));
}

#[test]
fn an_explicit_port_in_use_by_another_process_fails_the_start_clearly() {
    let d = Daemon::start(&[]);
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    create(&d, json!({ "name": "clash", "blueprint": "test-http", "port": port }));
    d.post("/api/v1/instances/clash/start");
    let u = d.wait_status("clash", "failed");
    assert!(u["detail"].as_str().unwrap().contains("in use"), "{u}");
    let _ = free_port();
}

#[test]
fn the_openapi_document_is_served() {
    let d = Daemon::start(&[]);
    let (code, doc) = d.get("/api/v1/openapi.json");
    assert_eq!(code, 200);
    assert!(doc["paths"]["/api/v1/instances"]["post"].is_object());
}
