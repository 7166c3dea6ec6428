//! End-to-end tests of log capture with real pipes and real child processes.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use nix::fcntl::OFlag;
use tokio::sync::broadcast::error::TryRecvError;

use super::*;

fn hub(dir: &Path, config: LogConfig) -> Arc<LogHub> {
    LogHub::new(dir.to_path_buf(), config).unwrap()
}

/// Runs `script` under sh with stdout and stderr on one pipe; returns the
/// read end. EOF on the pipe, not the exit, is what the tests wait for; the
/// child is reaped on the side, and an error there (a test elsewhere in the
/// crate may reap with waitpid(-1)) doesn't matter.
fn spawn_sh(script: &str) -> OwnedFd {
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(script).stdin(Stdio::null()).stdout(Stdio::from(w.try_clone().unwrap())).stderr(Stdio::from(w));
    let mut child = cmd.spawn().unwrap();
    std::thread::spawn(move || {
        let _ = child.wait();
    });
    // The Command holds the parent's copies of the write end until dropped;
    // only then can EOF arrive.
    drop(cmd);
    r
}

async fn capture(hub: &LogHub, unit: &str, script: &str) {
    let task = hub.attach(unit, spawn_sh(script));
    tokio::time::timeout(Duration::from_secs(60), task).await.unwrap().unwrap();
}

fn file_lines(path: &Path) -> Vec<String> {
    match std::fs::read(path) {
        Ok(bytes) => {
            assert!(bytes.is_empty() || bytes.ends_with(b"\n"), "file must end in a newline");
            String::from_utf8_lossy(&bytes).lines().map(str::to_owned).collect()
        }
        Err(_) => Vec::new(),
    }
}

fn texts(lines: &[LogLine]) -> Vec<String> {
    lines.iter().map(|l| l.text.clone()).collect()
}

#[tokio::test]
async fn order_kept_across_stdout_and_stderr() {
    let d = tempfile::tempdir().unwrap();
    let h = hub(d.path(), LogConfig::default());
    capture(&h, "web", "for i in $(seq 1 2000); do echo line $i; echo err $i >&2; done").await;
    let expected: Vec<String> = (1..=2000).flat_map(|i| [format!("line {i}"), format!("err {i}")]).collect();
    assert_eq!(file_lines(&d.path().join("web.log")), expected);
    // The ring holds the last 1000; the rest comes from the file, in order.
    let tail = h.tail("web", 4000);
    assert_eq!(texts(&tail), expected);
    assert_eq!(texts(&h.tail("web", 3)), expected[3997..]);
    let bytes = std::fs::metadata(d.path().join("web.log")).unwrap().len();
    assert_eq!(h.bytes_written("web"), bytes);
    // Ring seqs are contiguous and file lines sit below them.
    assert!(tail.windows(2).all(|w| w[0].seq < w[1].seq || w[0].seq == 0));
}

#[tokio::test]
async fn partial_lines_crlf_and_last_line_without_newline() {
    let d = tempfile::tempdir().unwrap();
    let h = hub(d.path(), LogConfig::default());
    capture(&h, "u", "printf 'par'; sleep 0.1; printf 'tial\\r'; sleep 0.1; printf '\\nsecond\\n\\nlast'").await;
    assert_eq!(texts(&h.tail("u", 10)), ["partial", "second", "", "last"]);
    assert_eq!(std::fs::read(d.path().join("u.log")).unwrap(), b"partial\nsecond\n\nlast\n");
}

#[tokio::test]
async fn long_line_is_split() {
    let d = tempfile::tempdir().unwrap();
    let config = LogConfig { max_line_bytes: 100, ..LogConfig::default() };
    let h = hub(d.path(), config);
    capture(&h, "u", "head -c 250 /dev/zero | tr '\\0' x; echo; echo short").await;
    let x = |n| "x".repeat(n);
    assert_eq!(texts(&h.tail("u", 10)), [x(100), x(100), x(50), "short".to_owned()]);
}

#[tokio::test]
async fn rotation_keeps_every_line() {
    let d = tempfile::tempdir().unwrap();
    // 1000 lines of 10 bytes: exactly one rotation.
    let config =
        LogConfig { retention: Retention { max_file_bytes: 8000, ..Retention::default() }, ..LogConfig::default() };
    let h = hub(d.path(), config);
    capture(&h, "u", "for i in $(seq 1001 2000); do echo line $i; done").await;
    let old = file_lines(&d.path().join("u.log.1"));
    let new = file_lines(&d.path().join("u.log"));
    assert!(!old.is_empty() && !new.is_empty());
    assert!(std::fs::metadata(d.path().join("u.log.1")).unwrap().len() <= 8000);
    let all: Vec<String> = old.into_iter().chain(new).collect();
    let expected: Vec<String> = (1001..=2000).map(|i| format!("line {i}")).collect();
    assert_eq!(all, expected);
    assert_eq!(h.bytes_written("u"), 10_000);
    // The ring and followers don't notice rotation.
    assert_eq!(texts(&h.tail("u", 1000)), expected);
}

#[tokio::test]
async fn begin_run_fresh_keeps_previous_as_dot_one() {
    let d = tempfile::tempdir().unwrap();
    let h = hub(d.path(), LogConfig::default());
    h.begin_run("u", true).unwrap();
    h.note("u", "run one");
    h.begin_run("u", false).unwrap();
    h.note("u", "restart");
    assert_eq!(file_lines(&d.path().join("u.log")), ["[aikore] run one", "[aikore] restart"]);
    h.begin_run("u", true).unwrap();
    assert_eq!(file_lines(&d.path().join("u.log.1")), ["[aikore] run one", "[aikore] restart"]);
    assert_eq!(std::fs::read(d.path().join("u.log")).unwrap(), b"");
    h.note("u", "run two");
    h.begin_run("u", true).unwrap();
    // The older .1 is replaced.
    assert_eq!(file_lines(&d.path().join("u.log.1")), ["[aikore] run two"]);
    // The ring is the live tail across runs.
    assert_eq!(texts(&h.tail("u", 10)), ["[aikore] run one", "[aikore] restart", "[aikore] run two"]);
}

#[tokio::test]
async fn tail_reads_files_after_restart_without_duplicates() {
    let d = tempfile::tempdir().unwrap();
    let config = LogConfig {
        retention: Retention { max_file_bytes: 200, ..Retention::default() },
        ring_lines: 5,
        ..LogConfig::default()
    };
    {
        let h = hub(d.path(), config.clone());
        for i in 0..30 {
            h.note("u", &format!("{i:02}"));
        }
    }
    // 30 lines of 12 bytes in 200-byte files: .log.1 has 16, .log has the rest.
    let h = hub(d.path(), config);
    let on_disk: Vec<String> =
        file_lines(&d.path().join("u.log.1")).into_iter().chain(file_lines(&d.path().join("u.log"))).collect();
    assert_eq!(texts(&h.tail("u", 1000)), on_disk);
    assert_eq!(texts(&h.tail("u", usize::MAX)), on_disk);
    assert_eq!(texts(&h.tail("u", 3)), on_disk[on_disk.len() - 3..]);
    assert!(h.tail("u", 3).iter().all(|l| l.ts_ms == 0));
    h.note("u", "new");
    h.note("u", "newer");
    let tail = h.tail("u", 4);
    let n = on_disk.len();
    assert_eq!(texts(&tail), [on_disk[n - 2].as_str(), on_disk[n - 1].as_str(), "[aikore] new", "[aikore] newer"]);
    assert!(tail.windows(2).all(|w| w[0].seq <= w[1].seq));
    assert!(tail[3].ts_ms > 0);
    assert!(h.tail("nothing", 10).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_has_no_gap_or_duplicate() {
    let d = tempfile::tempdir().unwrap();
    let h = hub(d.path(), LogConfig::default());
    const N: usize = 5000;
    let writer = {
        let h = Arc::clone(&h);
        std::thread::spawn(move || {
            for i in 0..N {
                h.note("u", &format!("{i}"));
                if i % 100 == 0 {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(10)).await;
    let (snapshot, mut rx) = h.follow("u", 50);
    let mut got = snapshot.clone();
    while got.last().map(|l| l.text.as_str()) != Some(&format!("[aikore] {}", N - 1)) {
        let line = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.unwrap().unwrap();
        got.push(line);
    }
    writer.join().unwrap();
    assert!(got.windows(2).all(|w| w[1].seq == w[0].seq + 1), "gap or duplicate");
    let first: usize = got[0].text.trim_start_matches("[aikore] ").parse().unwrap();
    for (k, line) in got.iter().enumerate() {
        assert_eq!(line.text, format!("[aikore] {}", first + k));
    }
}

#[tokio::test]
async fn follow_sees_captured_lines_after_snapshot() {
    let d = tempfile::tempdir().unwrap();
    let h = hub(d.path(), LogConfig::default());
    h.note("u", "before");
    let (snapshot, mut rx) = h.follow("u", 10);
    assert_eq!(texts(&snapshot), ["[aikore] before"]);
    capture(&h, "u", "echo one; echo two >&2").await;
    assert_eq!(rx.recv().await.unwrap().text, "one");
    assert_eq!(rx.recv().await.unwrap().text, "two");
    assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
}

#[tokio::test]
async fn unread_follower_does_not_stall_the_writer() {
    let d = tempfile::tempdir().unwrap();
    let h = hub(d.path(), LogConfig::default());
    let (_, mut rx) = h.follow("u", 0);
    capture(&h, "u", "seq 1 100000").await;
    let lines = file_lines(&d.path().join("u.log"));
    assert_eq!(lines.len(), 100_000);
    assert_eq!(lines.last().map(String::as_str), Some("100000"));
    assert!(matches!(rx.try_recv(), Err(TryRecvError::Lagged(_))));
}

/// A follower reads the ring: past it, it is told exactly how many lines it
/// missed and carries on from the oldest one the ring has, in order.
#[tokio::test]
async fn a_follower_behind_the_ring_is_told_how_many_lines_it_missed() {
    let d = tempfile::tempdir().unwrap();
    let h = hub(d.path(), LogConfig { ring_lines: 5, ..LogConfig::default() });
    h.note("u", "seen in the snapshot");
    let (snapshot, mut rx) = h.follow("u", 1);
    assert_eq!(texts(&snapshot), ["[aikore] seen in the snapshot"]);
    assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
    for i in 1..=20 {
        h.note("u", &format!("{i}"));
    }
    assert!(matches!(rx.try_recv(), Err(TryRecvError::Lagged(15))));
    let mut got = Vec::new();
    while let Ok(line) = rx.try_recv() {
        got.push(line);
    }
    assert_eq!(texts(&got), ["[aikore] 16", "[aikore] 17", "[aikore] 18", "[aikore] 19", "[aikore] 20"]);
    assert!(got.windows(2).all(|w| w[1].seq == w[0].seq + 1));
    // One capture of more lines than the ring holds, at once: the ring
    // never had the first ones, and the count says so.
    capture(&h, "u", "seq 1 12").await;
    assert!(matches!(rx.recv().await, Err(tokio::sync::broadcast::error::RecvError::Lagged(7))));
    let batch = rx.recv_many().await.unwrap();
    assert_eq!(texts(&batch), ["8", "9", "10", "11", "12"]);
}

/// A follower of a removed log ends instead of waiting forever.
#[tokio::test]
async fn a_follower_ends_when_its_log_is_removed() {
    let d = tempfile::tempdir().unwrap();
    let h = hub(d.path(), LogConfig::default());
    h.note("u", "x");
    let (_, mut rx) = h.follow("u", 0);
    let waiting = tokio::spawn(async move { rx.recv().await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    h.remove("u").unwrap();
    let end = tokio::time::timeout(Duration::from_secs(10), waiting).await.unwrap().unwrap();
    assert!(matches!(end, Err(tokio::sync::broadcast::error::RecvError::Closed)));
}

#[tokio::test]
async fn concurrent_attaches_write_whole_lines() {
    let d = tempfile::tempdir().unwrap();
    let h = hub(d.path(), LogConfig::default());
    let pad_a = "a".repeat(300);
    let pad_b = "b".repeat(300);
    let a = h.attach("u", spawn_sh(&format!("for i in $(seq 1 3000); do echo {pad_a}$i; done")));
    let b = h.attach("u", spawn_sh(&format!("for i in $(seq 1 3000); do echo {pad_b}$i; done")));
    a.await.unwrap();
    b.await.unwrap();
    let lines = file_lines(&d.path().join("u.log"));
    assert_eq!(lines.len(), 6000);
    let mut next = [1, 1];
    for line in lines {
        let (which, pad) = if line.starts_with('a') { (0, &pad_a) } else { (1, &pad_b) };
        assert_eq!(line, format!("{pad}{}", next[which]), "line torn or out of order");
        next[which] += 1;
    }
}

#[tokio::test]
async fn non_utf8_does_not_panic() {
    let d = tempfile::tempdir().unwrap();
    let h = hub(d.path(), LogConfig { max_line_bytes: 3, ..LogConfig::default() });
    capture(&h, "u", "printf 'ok\\377\\376\\n\\303'").await;
    let tail = h.tail("u", 10);
    assert_eq!(tail.len(), 3);
    assert!(tail.iter().any(|l| l.text.contains('\u{FFFD}')));
    // The file keeps the original bytes.
    assert_eq!(std::fs::read(d.path().join("u.log")).unwrap(), b"ok\xff\n\xfe\n\xc3\n");
}

#[tokio::test]
async fn names_cannot_escape_the_dir() {
    let d = tempfile::tempdir().unwrap();
    let h = hub(&d.path().join("logs"), LogConfig::default());
    for bad in ["..", ".", "a/b", "", "/etc/passwd"] {
        assert!(h.begin_run(bad, true).is_err(), "{bad:?}");
        assert!(h.tail(bad, 10).is_empty());
        h.note(bad, "x");
        let (lines, mut rx) = h.follow(bad, 10);
        assert!(lines.is_empty());
        assert!(rx.try_recv().is_err());
    }
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
    h.attach("../x", r).await.unwrap();
    drop(w);
    assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    assert_eq!(std::fs::read_dir(d.path().join("logs")).unwrap().count(), 0);
}

#[tokio::test]
async fn rename_and_remove_move_files_and_live_log() {
    let d = tempfile::tempdir().unwrap();
    let h = hub(d.path(), LogConfig::default());
    h.note("old", "one");
    h.begin_run("old", true).unwrap();
    h.note("old", "two");
    h.note("other", "x");
    assert!(h.rename("old", "other").is_err());
    h.rename("old", "new").unwrap();
    assert!(!d.path().join("old.log").exists());
    assert_eq!(file_lines(&d.path().join("new.log.1")), ["[aikore] one"]);
    h.note("new", "three");
    assert_eq!(file_lines(&d.path().join("new.log")), ["[aikore] two", "[aikore] three"]);
    assert_eq!(texts(&h.tail("new", 3)), ["[aikore] one", "[aikore] two", "[aikore] three"]);
    assert!(h.tail("old", 3).is_empty());

    h.remove("new").unwrap();
    assert!(!d.path().join("new.log").exists());
    assert!(!d.path().join("new.log.1").exists());
    assert!(h.tail("new", 3).is_empty());
    assert_eq!(h.bytes_written("new"), 0);
    // Files left by an earlier aikore are removed too.
    std::fs::write(d.path().join("stale.log"), "x\n").unwrap();
    h.remove("stale").unwrap();
    assert!(!d.path().join("stale.log").exists());
}

#[tokio::test]
async fn ring_of_raw_batches_keeps_exactly_the_last_lines() {
    let d = tempfile::tempdir().unwrap();
    // Batches of 1..=9 lines against a ring of 7 and files of 100 bytes: the
    // ring drops whole batches and parts of one, and batches cross rotations.
    let config = LogConfig {
        ring_lines: 7,
        retention: Retention { max_file_bytes: 100, ..Retention::default() },
        ..LogConfig::default()
    };
    let h = hub(d.path(), config);
    let mut all = Vec::new();
    for batch in 1..=9 {
        let lines: Vec<String> = (0..batch).map(|i| format!("b{batch}l{i}")).collect();
        h.note("u", &lines.join("\n"));
        all.extend(lines.iter().map(|l| format!("[aikore] {l}")));
        for n in [0, 1, 3, 7] {
            let want = &all[all.len().saturating_sub(n)..];
            let tail = h.tail("u", n);
            assert_eq!(texts(&tail), want, "batch {batch}, tail {n}");
            assert!(tail.iter().all(|l| l.ts_ms > 0), "from the ring");
            assert!(tail.windows(2).all(|w| w[1].seq == w[0].seq + 1));
            assert_eq!(tail.last().map(|l| l.seq), (n > 0).then_some(all.len() as u64));
        }
    }
    // What the files still hold, topped up behind the ring, in order.
    let on_disk: Vec<String> =
        file_lines(&d.path().join("u.log.1")).into_iter().chain(file_lines(&d.path().join("u.log"))).collect();
    assert!(on_disk.len() > 7 && on_disk.len() < all.len());
    assert_eq!(on_disk[..], all[all.len() - on_disk.len()..]);
    assert_eq!(texts(&h.tail("u", 1000)), on_disk);
    let bytes: u64 = all.iter().map(|l| l.len() as u64 + 1).sum();
    assert_eq!(h.bytes_written("u"), bytes);
}

#[tokio::test]
async fn a_flood_keeps_every_line_and_its_number() {
    let d = tempfile::tempdir().unwrap();
    // 2.7 MB in files of 1.5 MB: one rotation, somewhere inside a read.
    let h = hub(
        d.path(),
        LogConfig {
            retention: Retention { max_file_bytes: 1_500_000, ..Retention::default() },
            ..LogConfig::default()
        },
    );
    // Far more than a pipe holds: the busy path (bigger pipe and reads) runs.
    capture(&h, "u", "seq 1 400000").await;
    let lines: Vec<String> =
        file_lines(&d.path().join("u.log.1")).into_iter().chain(file_lines(&d.path().join("u.log"))).collect();
    assert_eq!(lines.len(), 400_000);
    assert!(lines.iter().enumerate().all(|(i, l)| *l == (i + 1).to_string()));
    let tail = h.tail("u", 1000);
    assert_eq!(tail.len(), 1000);
    for (k, line) in tail.iter().enumerate() {
        assert_eq!((line.seq, line.text.as_str()), (399_001 + k as u64, (399_001 + k).to_string().as_str()));
    }
}

#[tokio::test]
async fn retention_per_unit_keeps_its_count_and_compresses() {
    let d = tempfile::tempdir().unwrap();
    // Global: 2 plain files of 1000 bytes; unit "z" keeps 4, compressed.
    let config =
        LogConfig { retention: Retention { max_file_bytes: 1000, ..Retention::default() }, ..LogConfig::default() };
    let h = hub(d.path(), config.clone());
    h.set_retention("z", &RetentionOverride { max_files: Some(4), compress: Some(true), ..Default::default() });
    // 10-byte lines: 100 per file, 10 rotations for 1000 lines.
    capture(&h, "z", "for i in $(seq 1001 2000); do echo line $i; done").await;
    capture(&h, "p", "for i in $(seq 1001 2000); do echo line $i; done").await;
    // Waits for the last rotation's helper threads (a fresh run rotates again).
    h.begin_run("z", false).unwrap();
    h.begin_run("p", false).unwrap();
    let mut names: Vec<String> =
        std::fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names, ["p.log", "p.log.1", "z.log", "z.log.1.gz", "z.log.2.gz", "z.log.3.gz"]);
    // The compressed files hold the lines just before the current file's, in order.
    let mut kept = Vec::new();
    for k in [3, 2, 1] {
        let bytes = retention::read_gz(&d.path().join(format!("z.log.{k}.gz")), 1 << 20).unwrap();
        kept.extend(String::from_utf8(bytes).unwrap().lines().map(str::to_owned));
    }
    kept.extend(file_lines(&d.path().join("z.log")));
    let expected: Vec<String> = (1001..=2000).map(|i| format!("line {i}")).collect();
    assert_eq!(kept[..], expected[expected.len() - kept.len()..]);
    assert!(kept.len() >= 300, "three full rotated files and the current one: {}", kept.len());
    // After a restart, tails come from the compressed .1 too.
    let h = hub(d.path(), config);
    let current = file_lines(&d.path().join("z.log")).len();
    let tail = texts(&h.tail("z", current + 5));
    assert_eq!(tail[..], kept[kept.len() - current - 5..]);
    // Renaming and removing take every rotated file along.
    h.rename("z", "y").unwrap();
    assert!(d.path().join("y.log.3.gz").exists() && !d.path().join("z.log.1.gz").exists());
    h.remove("y").unwrap();
    let left: Vec<String> =
        std::fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(left.iter().all(|n| n.starts_with("p.")), "{left:?}");
}

#[tokio::test]
async fn fast_and_split_paths_mix_without_losing_a_line() {
    let d = tempfile::tempdir().unwrap();
    let h = hub(d.path(), LogConfig { max_line_bytes: 300, ..LogConfig::default() });
    // Mostly plain lines (the straight-to-file path), every 997th a CRLF one
    // and every 1999th longer than the limit (the splitter's path), across
    // many reads and partial lines.
    let script = "awk 'BEGIN { for (i = 1; i <= 60000; i++) { \
        if (i % 997 == 0) printf \"crlf %d\\r\\n\", i; \
        else if (i % 1999 == 0) { printf \"long %d \", i; for (j = 0; j < 40; j++) printf \"0123456789\"; printf \"\\n\" } \
        else printf \"line %d\\n\", i } }'";
    capture(&h, "u", script).await;
    let mut expected = Vec::new();
    for i in 1..=60000 {
        if i % 997 == 0 {
            expected.push(format!("crlf {i}"));
        } else if i % 1999 == 0 {
            let long = format!("long {i} {}", "0123456789".repeat(40));
            expected.push(long[..300].to_owned());
            expected.push(long[300..].to_owned());
        } else {
            expected.push(format!("line {i}"));
        }
    }
    assert_eq!(file_lines(&d.path().join("u.log")), expected);
    let tail = h.tail("u", 1000);
    assert_eq!(texts(&tail)[..], expected[expected.len() - 1000..]);
    assert!(tail.windows(2).all(|w| w[1].seq == w[0].seq + 1));
}
