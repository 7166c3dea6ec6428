//! The exposition as a whole: names, types, labels, one-hot states, and the
//! unit label never being Prometheus's reserved `instance`.

use std::path::Path;
use std::sync::Arc;

use tokio::sync::{broadcast, mpsc};

use super::*;
use crate::logs::LogConfig;
use crate::units::parse_unit_str;

fn snapshot(name: &str, file: &str, status: Status, pid: Option<i32>) -> UnitSnapshot {
    let text = if file.ends_with(".instance") {
        "[Instance]\nBlueprint=test\n"
    } else {
        "[Service]\nExecStart=/bin/sleep 1000\n"
    };
    let (unit, _) = parse_unit_str(Path::new(file), text).expect("valid unit");
    UnitSnapshot {
        name: name.into(),
        kind: unit.kind,
        description: String::new(),
        status,
        detail: None,
        pid,
        restarts: 2,
        since_ms: 0,
        started_ms: Some(1_700_000_000_000),
        last_exit: None,
        failure: None,
        path: file.into(),
        port: None,
        app_port: None,
        vnc_port: None,
        seq: 0,
        unit: Arc::new(unit),
    }
}

fn metrics(dir: &Path) -> Arc<Metrics> {
    let (commands, _) = mpsc::channel(1);
    let (events, _) = broadcast::channel(1);
    let logs = LogHub::new(dir.join("logs"), LogConfig::default()).unwrap();
    let config = MetricsConfig { cgroup_root: None, data_dir: dir.to_path_buf(), nvml: false, gpus: None };
    Metrics::new(SupervisorHandle::new(commands, events), logs, config).unwrap()
}

/// `# TYPE name type` lines as (name, type).
fn types(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' ').map(|(n, t)| (n.to_string(), t.to_string())))
        .collect()
}

#[test]
fn exposition_has_every_family_with_its_type() {
    let dir = tempfile::tempdir().unwrap();
    let m = metrics(dir.path());
    let me = std::process::id() as i32;
    let units = [
        snapshot("web", "web.service", Status::Started, Some(me)),
        snapshot("sd", "sd.instance", Status::Stopped, None),
    ];
    let text = m.render_blocking(&units).unwrap();
    let types = types(&text);
    for (name, kind) in [
        ("aikore_build_info", "gauge"),
        ("process_cpu_seconds_total", "counter"),
        ("process_resident_memory_bytes", "gauge"),
        ("aikore_reaped_children_total", "counter"),
        ("aikore_reaped_orphans_total", "counter"),
        ("aikore_unit_state", "gauge"),
        ("aikore_unit_restarts_total", "counter"),
        ("aikore_unit_last_start_timestamp_seconds", "gauge"),
        ("aikore_unit_cpu_seconds_total", "counter"),
        ("aikore_unit_memory_bytes", "gauge"),
        ("aikore_unit_processes", "gauge"),
        ("aikore_unit_log_bytes_total", "counter"),
        ("aikore_host_cpu_usage_ratio", "gauge"),
        ("aikore_host_cpu_core_usage_ratio", "gauge"),
        ("aikore_host_memory_total_bytes", "gauge"),
        ("aikore_host_memory_available_bytes", "gauge"),
        ("aikore_host_swap_total_bytes", "gauge"),
        ("aikore_host_swap_free_bytes", "gauge"),
        ("aikore_host_load1", "gauge"),
        ("aikore_host_load5", "gauge"),
        ("aikore_host_load15", "gauge"),
        ("aikore_host_disk_total_bytes", "gauge"),
        ("aikore_host_disk_available_bytes", "gauge"),
        ("aikore_host_uptime_seconds", "gauge"),
    ] {
        assert!(types.contains(&(name.to_string(), kind.to_string())), "{name} as {kind} missing:\n{text}");
    }
    // Counters end in _total and nothing else does (promtool's rule).
    for (name, kind) in &types {
        assert_eq!(kind == "counter", name.ends_with("_total"), "{name} is a {kind}");
    }
    assert!(text.contains(&format!("aikore_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"))));
    // NVML off: no GPU series at all, and the note says why.
    assert!(!text.contains("aikore_gpu_"), "{text}");
    assert!(m.gpu_note().is_some_and(|n| n.contains("NVML")));
}

#[test]
fn unit_state_is_one_hot_and_labels_are_unit_and_kind() {
    let dir = tempfile::tempdir().unwrap();
    let m = metrics(dir.path());
    let units = [snapshot("sd", "sd.instance", Status::Stalled, None)];
    let text = m.render_blocking(&units).unwrap();
    let states: Vec<&str> = text.lines().filter(|l| l.starts_with("aikore_unit_state{")).collect();
    assert_eq!(states.len(), STATUSES.len(), "{states:?}");
    let ones: Vec<&&str> = states.iter().filter(|l| l.ends_with(" 1")).collect();
    assert_eq!(ones.len(), 1, "{states:?}");
    assert!(
        ones[0].contains("state=\"stalled\"")
            && ones[0].contains("unit=\"sd\"")
            && ones[0].contains("kind=\"instance\"")
    );
    for line in text.lines().filter(|l| l.starts_with("aikore_unit_")) {
        assert!(!line.contains("instance=\""), "reserved label: {line}");
        assert!(line.contains("unit=\"sd\""), "{line}");
    }
    assert!(text.contains("aikore_unit_restarts_total{unit=\"sd\",kind=\"instance\"} 2"), "{text}");
    assert!(text.contains("aikore_unit_processes{unit=\"sd\",kind=\"instance\"} 0"), "{text}");
    assert!(
        text.contains("aikore_unit_last_start_timestamp_seconds{unit=\"sd\",kind=\"instance\"} 1700000000"),
        "{text}"
    );
}

#[test]
fn a_running_unit_reports_its_processes_and_memory() {
    let dir = tempfile::tempdir().unwrap();
    let m = metrics(dir.path());
    // This test process stands in for a unit's main process: it is alive and has memory.
    let units = [snapshot("me", "me.service", Status::Started, Some(std::process::id() as i32))];
    let text = m.render_blocking(&units).unwrap();
    let value = |name: &str| -> f64 {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{name}{{unit=\"me\"")))
            .unwrap_or_else(|| panic!("{name}: {text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert!(value("aikore_unit_processes") >= 1.0);
    assert!(value("aikore_unit_memory_bytes") > 1e6);
    assert!(value("aikore_unit_cpu_seconds_total") >= 0.0);
}

fn fake_gpu(index: u32, processes: &[(u32, u64)]) -> GpuSample {
    GpuSample {
        index,
        uuid: format!("GPU-{index}"),
        name: "Test GPU".into(),
        utilization_ratio: Some(0.5),
        memory_utilization_ratio: Some(0.25),
        memory_used_bytes: Some(10 << 30),
        memory_total_bytes: Some(80 << 30),
        temperature_celsius: Some(60.0),
        power_draw_watts: Some(250.0),
        power_limit_watts: Some(700.0),
        sm_clock_hertz: Some(1.98e9),
        // A board without fans or ECC reports none: those series are simply absent.
        fans: Vec::new(),
        ecc_corrected_total: None,
        ecc_uncorrected_total: Some(0),
        processes: processes.iter().copied().collect(),
        ..GpuSample::default()
    }
}

fn encode(families: &[Written]) -> String {
    families.iter().map(|f| f.text.as_str()).collect()
}

#[test]
fn gpu_memory_is_attributed_to_the_units_processes() {
    let dir = tempfile::tempdir().unwrap();
    let m = metrics(dir.path());
    let me = std::process::id();
    // Our process uses 3 GiB on GPU 1; pid 1 (not a unit's) uses 2 GiB there.
    let gpus = [fake_gpu(0, &[]), fake_gpu(1, &[(me, 3 << 30), (1, 2 << 30)])];
    let units = [snapshot("me", "me.service", Status::Started, Some(me as i32))];
    let mut families = Vec::new();
    let mut sampler = UnitSampler::new(None);
    m.unit_families(&mut sampler, &units, &gpus, &mut families);
    gpu_families(&gpus, &mut families);
    families.sort_by(|a, b| a.name().cmp(b.name()));
    let text = encode(&families);
    assert!(
        text.contains(&format!(
            "aikore_unit_gpu_memory_bytes{{unit=\"me\",kind=\"service\",gpu=\"1\"}} {}",
            3u64 << 30
        )),
        "{text}"
    );
    assert!(!text.contains("aikore_unit_gpu_memory_bytes{unit=\"me\",kind=\"service\",gpu=\"0\"}"), "{text}");
    assert!(
        text.contains(&format!("aikore_gpu_unattributed_memory_bytes{{gpu=\"1\"}} {}", (10u64 << 30) - (3 << 30))),
        "{text}"
    );
    assert!(text.contains(&format!("aikore_gpu_unattributed_memory_bytes{{gpu=\"0\"}} {}", 10u64 << 30)), "{text}");
    assert!(text.contains("aikore_gpu_power_draw_watts{gpu=\"0\",uuid=\"GPU-0\",name=\"Test GPU\"} 250"), "{text}");
    assert!(
        text.contains("aikore_gpu_sm_clock_hertz{gpu=\"1\",uuid=\"GPU-1\",name=\"Test GPU\"} 1980000000"),
        "{text}"
    );
    assert!(!text.contains("aikore_gpu_fan_speed_ratio") && !text.contains("aikore_gpu_ecc_corrected"), "{text}");
    for (name, kind) in types(&text) {
        assert_eq!(kind == "counter", name.ends_with("_total"), "{name} is a {kind}");
    }
}

#[tokio::test]
async fn system_view_carries_a_bounded_history_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    let m = metrics(dir.path());
    assert!(m.system().await.unwrap().history.is_empty(), "no samples before the history task runs");
    for _ in 0..super::HISTORY_POINTS + 5 {
        m.record_point();
    }
    let view = m.system().await.unwrap();
    assert_eq!(view.history.len(), super::HISTORY_POINTS, "the ring keeps the last HISTORY_POINTS samples");
    assert!(view.history.windows(2).all(|w| w[0].ts_ms <= w[1].ts_ms), "oldest first");
    let p = &view.history[0];
    assert!((0.0..=1.0).contains(&p.cpu_ratio) && p.memory_ratio > 0.0 && p.memory_ratio <= 1.0);
    assert!(p.disk_ratio.is_some_and(|d| (0.0..=1.0).contains(&d)));
}
