//! Logs: one pipe for stdout and stderr, the file, the tail, live follow.

use std::io::{BufRead, BufReader};
use std::time::Duration;

use crate::harness::Daemon;

#[test]
fn stdout_and_stderr_keep_their_order_in_the_file_and_the_tail() {
    let d = Daemon::start(&[(
        "chatty.service",
        "[Service]\nExecStart=/bin/sh -c 'for i in 1 2 3 4 5; do echo out $i; echo err $i >&2; done; exec sleep 1000'\n",
    )]);
    d.wait_until("ten lines", |d| d.unit_log("chatty").contains("err 5"));
    let log = d.unit_log("chatty");
    let ours: Vec<&str> = log.lines().filter(|l| !l.starts_with("[aikore]")).collect();
    let expected: Vec<String> = (1..=5).flat_map(|i| [format!("out {i}"), format!("err {i}")]).collect();
    assert_eq!(ours, expected);

    let (code, body) = d.get("/api/v1/units/chatty/logs?tail=4");
    assert_eq!(code, 200);
    let texts: Vec<&str> = body["lines"].as_array().unwrap().iter().map(|l| l["text"].as_str().unwrap()).collect();
    assert_eq!(texts, ["out 4", "err 4", "out 5", "err 5"]);

    let out = d.cli(&["logs", "chatty", "-n", "2"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out 5\nerr 5\n");
}

#[test]
fn follow_streams_new_lines_over_sse_and_the_cli() {
    let d = Daemon::start(&[(
        "ticker.service",
        "[Service]\nExecStart=/bin/sh -c 'i=0; while :; do i=$((i+1)); echo tick $i; sleep 0.05; done'\n",
    )]);
    d.wait_status("ticker", "started");
    // The CLI's -f: read lines as they come, then stop it.
    let mut child = std::process::Command::new(crate::harness::BIN)
        .args(["logs", "ticker", "-f", "-n", "1"])
        .env("AIKORE_URL", &d.url)
        .env("AIKORE_API_TOKEN", &d.token)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut seen = Vec::new();
    while seen.len() < 5 {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        seen.push(line.trim().to_string());
    }
    let _ = child.kill();
    let _ = child.wait();
    let numbers: Vec<u64> = seen.iter().filter_map(|l| l.strip_prefix("tick ")?.parse().ok()).collect();
    assert!(numbers.len() >= 4, "{seen:?}");
    assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "consecutive, no gap: {seen:?}");
}

#[test]
fn a_restart_keeps_the_previous_run_as_dot_1() {
    let d = Daemon::start(&[("runs.service", "[Service]\nExecStart=/bin/sh -c 'echo run at $$$$; exec sleep 1000'\n")]);
    d.wait_until("first run logged", |d| d.unit_output("runs").contains("run at"));
    let first_line = d.unit_output("runs").lines().find(|l| l.starts_with("run at")).unwrap().to_string();
    d.post("/api/v1/units/runs/restart");
    let rotated = d.data_dir.join("logs/runs.log.1");
    d.wait_until("the second run's line in a fresh log", |d| {
        rotated.exists() && d.unit_output("runs").lines().any(|l| l.starts_with("run at") && l != first_line)
    });
    let previous = std::fs::read_to_string(&rotated).unwrap();
    assert!(previous.contains(&first_line), "{previous}");
    assert!(!d.unit_log("runs").contains(&first_line), "the new log starts fresh");
    std::thread::sleep(Duration::from_millis(50));
}

/// Retention: the global AIKORE_LOG_* setting, and a unit's own keys over it.
#[test]
fn retention_global_setting_and_unit_keys() {
    use crate::harness::Options;
    let mut options = Options::default();
    options.env.push(("AIKORE_LOG_MAX_FILE_SIZE".into(), "4K".into()));
    options.env.push(("AIKORE_LOG_MAX_FILES".into(), "3".into()));
    // 4000 lines of 7 bytes (28 KB): six 4 KiB rotations.
    let flood = "ExecStart=/bin/sh -c 'seq 100001 104000; exec sleep 1000'\n";
    let d = Daemon::start_with(
        &[
            ("global.service", &format!("[Service]\n{flood}")),
            ("own.service", &format!("[Service]\n{flood}LogMaxFiles=5\nLogCompress=yes\n")),
        ],
        options,
    );
    let logs = d.data_dir.join("logs");
    let names = || -> Vec<String> {
        let mut n: Vec<String> =
            std::fs::read_dir(&logs).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        n.sort();
        n
    };
    d.wait_until("both logs rotated to the end", |d| {
        let n = names();
        d.unit_log("global").contains("104000")
            && d.unit_log("own").contains("104000")
            && n.contains(&"own.log.4.gz".to_string())
            && !n.iter().any(|f| f.starts_with('.') || f.ends_with(".tmp") || f == "own.log.1")
    });
    let n = names();
    assert!(n.contains(&"global.log.2".to_string()) && !n.iter().any(|f| f.starts_with("global.log.3")), "{n:?}");
    assert!(!n.iter().any(|f| f.starts_with("own.log.5")), "{n:?}");
    for f in n.iter().filter(|f| f.starts_with("global.log")) {
        let len = std::fs::metadata(logs.join(f)).unwrap().len();
        assert!(len <= 4096, "{f}: {len} bytes");
    }
    // The tail still reads across the rotated files.
    let (code, body) = d.get("/api/v1/units/own/logs?tail=5");
    assert_eq!(code, 200);
    let last = body["lines"].as_array().unwrap().last().unwrap()["text"].as_str().unwrap().to_string();
    assert_eq!(last, "104000");
}

#[test]
fn a_bad_global_retention_setting_stops_serve_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(crate::harness::BIN)
        .args(["serve", "--data-dir"])
        .arg(dir.path())
        .args(["--units-dir"])
        .arg(dir.path())
        .args(["--listen", "127.0.0.1:0"])
        .env("AIKORE_LOG_MAX_FILES", "0")
        .env("AIKORE_API_TOKEN", "t")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("AIKORE_LOG_MAX_FILES") && err.contains("1 to 100"), "{err}");
}
