//! /metrics against the real tools: promtool must find nothing to say about a
//! scrape, and a real Prometheus scraping a real aikore must answer every
//! query of the Grafana dashboard with data.
//!
//! promtool and prometheus come from Debian's `prometheus` package, which CI
//! installs; without them these tests fail, they never skip.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{free_port, Daemon, Options};

/// A small process tree (sh and two sleeps) and a single process.
const TREE: &str = "[Service]\nExecStart=/bin/sh -c 'sleep 1000 & sleep 1000'\n";
const SINGLE: &str = "[Service]\nExecStart=/bin/sleep 1000\n";
/// Exits with code 3 after a moment and is restarted: exits, starts and
/// ready times get data. RestartSec keeps it well under the start limit.
const CRASHER: &str = "[Service]\nExecStart=/bin/sh -c 'sleep 0.5; exit 3'\nRestart=always\nRestartSec=1s\n";

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .new_agent()
}

/// GET `url`: (status, Content-Type, body).
fn fetch(url: &str) -> (u16, String, String) {
    match agent().get(url).call() {
        Ok(mut r) => {
            let ct = r.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
            (r.status().as_u16(), ct, r.body_mut().read_to_string().unwrap_or_default())
        }
        Err(e) => (0, String::new(), e.to_string()),
    }
}

/// The value of the one series `name{labels...}` whose label text contains every `want`.
fn series_value(text: &str, name: &str, want: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| want.iter().all(|w| l.contains(w)))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

fn tool(name: &str) -> PathBuf {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file());
    found.unwrap_or_else(|| panic!("{name} is not installed: .ci/run must install Debian's `prometheus` package"))
}

/// `promtool check metrics` must have nothing to say about `text`.
fn promtool_check(text: &str) {
    let mut promtool = Command::new(tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    std::io::Write::write_all(promtool.stdin.as_mut().unwrap(), text.as_bytes()).unwrap();
    let out = promtool.wait_with_output().unwrap();
    let findings = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success() && findings.trim().is_empty(),
        "promtool check metrics:\n{findings}\n--- scrape ---\n{text}"
    );
}

fn check_scrape(d: &Daemon) {
    d.wait_status("tree", "started");
    d.wait_status("single", "started");
    let url = format!("{}/metrics", d.url);
    let mut text = String::new();
    // The tree's two sleeps appear a moment after sh starts.
    d.wait_until("tree to have 3 processes in /metrics", |_| {
        let (code, ct, body) = fetch(&url);
        assert_eq!(code, 200, "{body}");
        assert_eq!(ct, "text/plain; version=0.0.4; charset=utf-8");
        text = body;
        series_value(&text, "aikore_unit_processes", &["unit=\"tree\""]) == Some(3.0)
    });
    assert_eq!(series_value(&text, "aikore_unit_processes", &["unit=\"single\""]), Some(1.0), "{text}");
    for unit in ["tree", "single"] {
        let u = format!("unit=\"{unit}\"");
        let memory = series_value(&text, "aikore_unit_memory_bytes", &[&u, "kind=\"service\""]).unwrap_or(0.0);
        assert!(memory > 0.0, "{unit} memory: {text}");
        assert_eq!(series_value(&text, "aikore_unit_state", &[&u, "state=\"started\""]), Some(1.0), "{text}");
        assert_eq!(series_value(&text, "aikore_unit_state", &[&u, "state=\"stopped\""]), Some(0.0), "{text}");
        assert!(series_value(&text, "aikore_unit_cpu_seconds_total", &[&u]).is_some(), "{text}");
        assert_eq!(series_value(&text, "aikore_unit_starts_total", &[&u]), Some(1.0), "{text}");
    }
    assert!(!text.contains("instance=\""), "the unit label must not be Prometheus's reserved `instance`");
    for name in [
        "aikore_build_info",
        "process_resident_memory_bytes",
        "aikore_reaped_orphans_total",
        "aikore_host_cpu_usage_ratio",
    ] {
        assert!(text.lines().any(|l| l.starts_with(name)), "{name} missing:\n{text}");
    }

    promtool_check(&text);
}

#[test]
fn scrape_has_unit_series_and_passes_promtool() {
    let d = Daemon::start(&[("tree.service", TREE), ("single.service", SINGLE)]);
    check_scrape(&d);
    let (code, body) = d.get("/api/v1/system");
    assert_eq!(code, 200, "{body}");
    assert!(body["memory"]["total_bytes"].as_u64().unwrap_or(0) > 0, "{body}");
    assert!(body["cpu"]["per_core_ratio"].as_array().is_some_and(|c| !c.is_empty()), "{body}");
    assert!(body["disk"]["total_bytes"].as_u64().unwrap_or(0) > 0, "{body}");
    // Either GPUs or a note saying why there are none.
    assert!(body["gpus"].as_array().is_some_and(|g| !g.is_empty()) || body["gpu_note"].is_string(), "{body}");
}

#[test]
fn scrape_without_cgroups_walks_the_process_tree() {
    let mut options = Options::default();
    options.env.push(("AIKORE_CGROUP".into(), "off".into()));
    let d = Daemon::start_with(&[("tree.service", TREE), ("single.service", SINGLE)], options);
    check_scrape(&d);
}

/// A Prometheus server for one test, killed on drop.
struct Prometheus {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: &str) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        // 1 s scrapes so rate() over 1m has points within seconds.
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: aikore\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new(tool("prometheus"))
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("tsdb").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        Prometheus { child, url: format!("http://127.0.0.1:{port}"), _dir: dir }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// `/api/v1/query`: the JSON answer.
    fn query(&self, expr: &str) -> Value {
        let url = format!("{}/api/v1/query", self.url);
        match agent().get(&url).query("query", expr).call() {
            Ok(mut r) => {
                serde_json::from_str(&r.body_mut().read_to_string().unwrap_or_default()).unwrap_or(Value::Null)
            }
            Err(_) => Value::Null,
        }
    }

    fn wait_for(&self, what: &str, limit: Duration, mut check: impl FnMut(&Prometheus) -> bool) {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if check(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("timed out waiting for {what}\n--- prometheus log ---\n{}", self.log());
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every PromQL expression in the dashboard's panels.
fn dashboard_exprs(dashboard: &Value) -> Vec<(String, String)> {
    fn walk(panels: &Value, out: &mut Vec<(String, String)>) {
        for panel in panels.as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap_or("?").to_string();
            for target in panel["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = target["expr"].as_str() {
                    out.push((title.clone(), expr.to_string()));
                }
            }
            walk(&panel["panels"], out); // collapsed rows nest their panels
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// Grafana's variables as a scrape of this test would set them.
fn substitute(expr: &str, host: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$__interval", "15s")
        .replace("$__range", "5m")
        .replace("=~\"$unit\"", "=~\".*\"")
        .replace("$job", "aikore")
        .replace("$host", host)
}

fn dashboard_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("grafana/dashboards/aikore.json")
}

#[test]
fn dashboard_is_plain_and_uses_the_datasource_variable() {
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(dashboard_path()).unwrap()).unwrap();
    assert!(dashboard.get("__inputs").is_none(), "no __inputs: provisioning cannot fill them");
    let vars: Vec<&str> =
        dashboard["templating"]["list"].as_array().unwrap().iter().filter_map(|v| v["name"].as_str()).collect();
    for want in ["datasource", "job", "host", "unit"] {
        assert!(vars.contains(&want), "variable {want} missing: {vars:?}");
    }
    for panel in dashboard["panels"].as_array().unwrap() {
        let kind = panel["type"].as_str().unwrap();
        assert!(["timeseries", "stat", "table", "bargauge", "gauge"].contains(&kind), "panel type {kind}");
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{}", panel["title"]);
        for target in panel["targets"].as_array().unwrap() {
            assert_eq!(target["datasource"]["uid"], "${datasource}", "{}", panel["title"]);
            let expr = target["expr"].as_str().unwrap();
            assert!(expr.contains("job=\"$job\""), "{}: {expr} ignores $job", panel["title"]);
        }
    }
}

#[test]
fn every_dashboard_query_returns_data_from_a_real_prometheus() {
    let d = Daemon::start(&[("tree.service", TREE), ("single.service", SINGLE), ("crasher.service", CRASHER)]);
    d.wait_status("tree", "started");
    let host = d.url.trim_start_matches("http://").to_string();
    let prometheus = Prometheus::start(&host);
    let limit = Duration::from_secs(60);
    prometheus.wait_for("the aikore target to be up", limit, |p| {
        p.query("up{job=\"aikore\"}")["data"]["result"][0]["value"][1] == "1"
    });
    // rate() and increase() need two points in their window; four scrapes
    // also let the crasher exit and restart at least once.
    prometheus.wait_for("4 scrapes and a crasher exit", limit, |p| {
        let scrapes = p.query("count_over_time(up{job=\"aikore\"}[1m])")["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        let exited = !p.query("aikore_unit_exits_total")["data"]["result"].as_array().is_none_or(|r| r.is_empty());
        scrapes >= 4.0 && exited
    });
    let (_, system) = d.get("/api/v1/system");
    let has_gpu = system["gpus"].as_array().is_some_and(|g| !g.is_empty());

    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(dashboard_path()).unwrap()).unwrap();
    let exprs = dashboard_exprs(&dashboard);
    assert!(exprs.len() >= 20, "the dashboard lost queries: {exprs:?}");
    let mut failures = Vec::new();
    for (title, expr) in &exprs {
        let query = substitute(expr, &host);
        let answer = prometheus.query(&query);
        if answer["status"] != "success" {
            failures.push(format!("{title}: {query}: rejected: {answer}"));
            continue;
        }
        let gpu_only = query.contains("aikore_gpu_") || query.contains("aikore_unit_gpu_");
        let empty = answer["data"]["result"].as_array().is_none_or(|r| r.is_empty());
        if empty && (has_gpu || !gpu_only) {
            failures.push(format!("{title}: {query}: no data"));
        }
    }
    assert!(
        failures.is_empty(),
        "dashboard queries failed:\n{}\n--- scrape ---\n{}",
        failures.join("\n"),
        fetch(&format!("{}/metrics", d.url)).2
    );
}

/// GPUs nvidia-smi sees: (index, uuid). None when there is no driver.
fn nvidia_smi_gpus() -> Option<Vec<(String, String)>> {
    let out = Command::new("nvidia-smi").args(["--query-gpu=index,uuid", "--format=csv,noheader"]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let gpus: Vec<(String, String)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(", ").map(|(i, u)| (i.trim().to_string(), u.trim().to_string())))
        .collect();
    (!gpus.is_empty()).then_some(gpus)
}

/// Real NVML on a GPU machine (the `device` tool); CI has no GPU, so this one
/// skips there, saying so.
#[test]
fn gpu_series_match_nvidia_smi() {
    let Some(gpus) = nvidia_smi_gpus() else {
        eprintln!("SKIPPED gpu_series_match_nvidia_smi: no NVIDIA GPU (nvidia-smi missing or lists none)");
        return;
    };
    let d = Daemon::start(&[("single.service", SINGLE)]);
    d.wait_status("single", "started");
    let (code, _, text) = fetch(&format!("{}/metrics", d.url));
    assert_eq!(code, 200);
    for (index, uuid) in &gpus {
        let labels = [format!("gpu=\"{index}\""), format!("uuid=\"{uuid}\"")];
        let want: Vec<&str> = labels.iter().map(String::as_str).collect();
        let total = series_value(&text, "aikore_gpu_memory_total_bytes", &want);
        assert!(total.is_some_and(|t| t > 0.0), "GPU {index} total memory:\n{text}");
        assert!(series_value(&text, "aikore_gpu_memory_used_bytes", &want).is_some(), "{text}");
        assert!(series_value(&text, "aikore_gpu_unattributed_memory_bytes", &[&labels[0]]).is_some(), "{text}");
    }
    let (_, system) = d.get("/api/v1/system");
    assert_eq!(system["gpus"].as_array().map(|g| g.len()), Some(gpus.len()), "{system}");
    assert!(system["gpu_note"].is_null(), "{system}");
    promtool_check(&text);
}
