//! Who processes run as (instances, their terminal, NGINX's workers) and
//! processes left behind by a killed daemon.

use std::io::{BufReader, Read, Write};
use std::time::Duration;

use serde_json::json;

use super::{ids_of, options, terminal, tree_of, writable_state, Target, EVIL};
use crate::harness::{free_port, process_state, read_head};

/// GET through NGINX's apps origin with the daemon's bearer; (status, body).
fn through_nginx(t: &Target, path: &str) -> (u16, String) {
    get_via(t.d.apps_port, &t.d.token, path)
}

/// GET on NGINX's `port` with a bearer; (status, body), (0, "") when nothing answers.
fn get_via(port: u16, token: &str, path: &str) -> (u16, String) {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return (0, String::new()) };
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reader = BufReader::new(s);
    let Ok((status, _)) = read_head(&mut reader) else { return (0, String::new()) };
    let mut body = String::new();
    let _ = reader.read_to_string(&mut body);
    (status, body)
}

fn worker_pids(master: i32) -> Vec<i32> {
    tree_of(master).into_iter().filter(|p| *p != master).collect()
}

/// Issue 12, 3: the terminal was a root shell even with PUID set. It is the
/// instance user's, in the instance dir, unless the operator sets
/// AIKORE_TERMINAL_ROOT=1.
#[test]
fn the_terminal_is_the_instance_users() {
    let t = Target::start(false);
    let dir = t.instance("term", "sleeper");
    let seen = terminal(&t.d, "term", "echo \"ids=$(id -u):$(id -g) cwd=$(pwd)\"; exit\n", "cwd=/");
    assert!(seen.contains(&format!("ids={EVIL}:{EVIL} cwd={}", dir.display())), "{seen}");
    let touched = terminal(
        &t.d,
        "term",
        // Quoted apart so the PTY's echo of the typed line never matches "rc=".
        &format!("touch {}/units/x.service 2>/dev/null; echo \"r\"\"c=$?\"; exit\n", t.d.data_dir.display()),
        "rc=",
    );
    assert!(touched.contains("rc=1"), "{touched}");
    t.assert_intact();

    let mut rooted = options(free_port());
    rooted.env.push(("AIKORE_TERMINAL_ROOT".into(), "1".into()));
    let r = Target::start_with(false, rooted);
    r.instance("term", "sleeper");
    let seen = terminal(&r.d, "term", "echo \"ids=$(id -u):$(id -g)\"; exit\n", "ids=0");
    assert!(seen.contains("ids=0:0"), "the operator's explicit choice: {seen}");
}

/// Issue 12, 8: with PUID/PGID = nobody/nogroup, `user nobody;` made every
/// `nginx -t` fail and no route went live. NGINX's workers here are told to
/// run as nobody (AIKORE_NGINX_USER) to replay exactly that: the directive
/// names the real group and the instance's route goes live.
#[test]
fn nginx_workers_as_nobody_nogroup_serve_routes() {
    let mut opts = options(free_port());
    opts.env.push(("AIKORE_NGINX_USER".into(), "nobody".into()));
    let t = Target::start_with(true, opts);
    let conf = std::fs::read_to_string(t.d.data_dir.join("nginx/nginx.conf")).unwrap();
    assert!(conf.contains("user nobody nogroup;"), "{conf}");
    t.instance("web", "test-http");
    t.d.wait_status("web", "started");
    // The app's own listing (its dir has launch.sh), not just any 200 on the path.
    t.d.wait_until("the app's listing through NGINX", |_| {
        let (code, body) = through_nginx(&t, "/app/web/");
        code == 200 && body.contains("launch.sh")
    });
    t.assert_intact();
}

/// The acceptance check: with PUID/PGID = nobody/nogroup the instance, its
/// processes and the terminal run as 65534, routes go live, NGINX's workers
/// are not the instance user, and nothing of aikore's own state is writable
/// by 65534 (by owner and mode, and by trying).
#[test]
fn with_puid_nobody_only_the_instance_dir_is_the_instance_users() {
    let t = Target::start(true);
    let dir = t.instance("app", "test-http");
    let u = t.d.wait_status("app", "started");
    let pid = u["pid"].as_i64().unwrap() as i32;
    for p in tree_of(pid) {
        assert_eq!(ids_of(p), Some((EVIL, EVIL)), "instance process {p}");
    }
    let seen = terminal(&t.d, "app", "echo \"ids=$(id -u):$(id -g) cwd=$(pwd)\"; exit\n", "cwd=/");
    assert!(seen.contains(&format!("ids={EVIL}:{EVIL} cwd={}", dir.display())), "{seen}");
    t.d.wait_until("the route to go live through NGINX", |_| through_nginx(&t, "/app/app/").0 == 200);

    let nginx = t.d.unit("nginx")["pid"].as_i64().unwrap() as i32;
    assert_eq!(ids_of(nginx).map(|i| i.0), Some(0), "NGINX's master is root");
    let workers = worker_pids(nginx);
    assert!(!workers.is_empty());
    for w in workers {
        let (uid, _) = ids_of(w).unwrap();
        assert_ne!(uid, EVIL, "NGINX worker {w} runs as the instance user");
    }
    let conf = std::fs::read_to_string(t.d.data_dir.join("nginx/nginx.conf")).unwrap();
    assert!(conf.contains("user www-data www-data;"), "{conf}");

    let bad = writable_state(&t.d.data_dir);
    assert!(bad.is_empty(), "{bad:#?}");
    // And by trying: every dir of aikore's state refuses a new entry from 65534.
    let mut dirs = vec![t.d.data_dir.clone()];
    for name in ["units", "logs", "nginx", "nginx/routes", "nginx/upstreams", "blueprints", "instances"] {
        dirs.push(t.d.data_dir.join(name));
    }
    let script: String = dirs
        .iter()
        .map(|d| format!("touch {}/.probe 2>/dev/null && echo wrote {};", d.display(), d.display()))
        .collect::<String>()
        + &format!("echo x >> {}/nginx/nginx.conf 2>/dev/null && echo wrote conf; echo done", t.d.data_dir.display());
    let out = super::as_evil(&script);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "done");
    // Nor can it read the logs: another instance's (apps print tokens there) or NGINX's.
    let logs = t.d.data_dir.join("logs");
    let out = super::as_evil(&format!(
        "ls {0} 2>/dev/null && echo listed; cat {0}/app.log {0}/nginx.log 2>/dev/null && echo read; echo done",
        logs.display()
    ));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "done");
    t.assert_intact();
}

/// Issue 12, 7: with process-group tracking (AIKORE_CGROUP=off), a kill -9 of
/// aikore left NGINX's old master (setproctitle wiped its marker) and an
/// instance that set AIKORE_DATA_DIR itself; the new NGINX could not bind.
/// The restarted daemon finds them by their recorded pid and start time.
#[test]
fn leftovers_of_a_killed_daemon_are_found_by_pid_and_start_time() {
    let mut opts = options(free_port());
    opts.env.push(("AIKORE_CGROUP".into(), "off".into()));
    let mut t = Target::start_with(true, opts.clone());
    let (code, body) = t.d.post_json(
        "/api/v1/instances",
        json!({ "name": "stray", "blueprint": "sleeper", "start": true, "environment": { "AIKORE_DATA_DIR": "/elsewhere" } }),
    );
    assert_eq!(code, 201, "{body}");
    let mut instance = 0;
    t.d.wait_until("the instance to run", |d| {
        instance = d.unit("stray")["pid"].as_i64().unwrap_or(0) as i32;
        instance > 0
    });
    let nginx = t.d.unit("nginx")["pid"].as_i64().unwrap() as i32;
    let old: Vec<i32> = tree_of(nginx).into_iter().chain(tree_of(instance)).collect();
    t.d.signal(libc::SIGKILL);
    t.d.wait_exit(Duration::from_secs(10));
    assert!(old.iter().all(|p| process_state(*p).is_some_and(|s| s != 'Z')), "they outlive the daemon");

    t.d.spawn(opts);
    let u = t.d.wait_status("nginx", "started");
    assert!(u["detail"].is_null(), "{u}");
    let gone = |p: &i32| process_state(*p).is_none_or(|s| s == 'Z');
    t.d.wait_until("the old processes to be gone", |_| old.iter().all(gone));
    // The new NGINX binds the port: it serves.
    t.d.wait_until("NGINX to answer", |_| get_via(t.port, &t.d.token, "/healthz").0 == 200);
    assert!(t.d.daemon_log().contains("a process of the previous run is still alive"));
}
