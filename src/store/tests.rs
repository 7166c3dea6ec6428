use std::path::PathBuf;

use super::*;

fn db_path(dir: &tempfile::TempDir) -> PathBuf {
    // A nested path also checks that open creates parent directories.
    dir.path().join("state").join("aikore.db")
}

fn defs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter().map(|(n, k)| (n.to_string(), k.to_string())).collect()
}

fn running(name: &str, pid: i32) -> StateUpdate {
    StateUpdate {
        name: name.into(),
        kind: "instance".into(),
        status: "running".into(),
        status_detail: Some("ready".into()),
        pid: Some(pid),
        pgid: Some(pid),
        restarts: 2,
        last_exit: Some("exit 1".into()),
        since_ms: 500,
        started_ms: Some(400),
    }
}

#[test]
fn migrates_fresh_file_and_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    {
        let store = Store::open(&path).unwrap();
        assert_eq!(schema::user_version(&store.conn).unwrap(), 2);
        let mode: String = store.conn.pragma_query_value(None, "journal_mode", |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");
        let fk: i64 = store.conn.pragma_query_value(None, "foreign_keys", |r| r.get(0)).unwrap();
        assert_eq!(fk, 1);
    }
    let mut store = Store::open(&path).unwrap();
    assert_eq!(schema::user_version(&store.conn).unwrap(), 2);
    // Reopening must not re-run migrations (they would fail on existing tables).
    store.set_setting("k", "v").unwrap();
    drop(store);
    let store = Store::open(&path).unwrap();
    assert_eq!(store.setting("k").unwrap().as_deref(), Some("v"));
}

#[test]
fn too_new_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    drop(Store::open(&path).unwrap());
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", 7).unwrap();
    }
    let err = Store::open(&path).err().unwrap();
    assert!(matches!(err, StoreError::SchemaTooNew { found: 7, supported: 2 }));
    assert_eq!(err.to_string(), "database schema version 7 is newer than this aikore supports (2)");
}

#[test]
fn settings_roundtrip_and_overwrite() {
    let mut store = Store::open_in_memory().unwrap();
    assert_eq!(store.setting("theme").unwrap(), None);
    store.set_setting("theme", "dark").unwrap();
    store.set_setting("theme", "light").unwrap();
    assert_eq!(store.setting("theme").unwrap().as_deref(), Some("light"));
}

#[test]
fn reconcile_inserts_archives_unarchives_and_resets() {
    let mut store = Store::open_in_memory().unwrap();
    let first = store.reconcile(&defs(&[("nginx", "service"), ("comfy", "instance")]), 100).unwrap();
    assert_eq!(first.added, vec!["nginx", "comfy"]);
    assert!(first.archived.is_empty());
    assert!(first.leftovers.is_empty());
    let nginx = store.unit("nginx").unwrap().unwrap();
    assert_eq!(nginx.status, "stopped");
    assert_eq!(nginx.since_ms, Some(100));
    assert!(!nginx.archived);

    // A previous life left comfy running; then its file disappears.
    store.record_state(&running("comfy", 4242)).unwrap();
    let second = store.reconcile(&defs(&[("nginx", "service")]), 200).unwrap();
    assert!(second.added.is_empty());
    assert_eq!(second.archived, vec!["comfy"]);
    assert_eq!(second.leftovers.len(), 1);
    let left = &second.leftovers[0];
    assert_eq!((left.name.as_str(), left.pid, left.status.as_str()), ("comfy", Some(4242), "running"));

    let comfy = store.unit("comfy").unwrap().unwrap();
    assert!(comfy.archived);
    assert_eq!(comfy.status, "stopped");
    assert_eq!((comfy.pid, comfy.pgid, comfy.status_detail.clone()), (None, None, None));
    assert_eq!(comfy.since_ms, Some(200));
    // History survives the reset.
    assert_eq!(comfy.restarts, 2);
    assert_eq!(comfy.last_exit.as_deref(), Some("exit 1"));

    let live: Vec<_> = store.units(false).unwrap().into_iter().map(|u| u.name).collect();
    assert_eq!(live, vec!["nginx"]);
    let all: Vec<_> = store.units(true).unwrap().into_iter().map(|u| u.name).collect();
    assert_eq!(all, vec!["comfy", "nginx"]);

    // The file comes back: un-archived, not "added", nothing left over.
    let third = store.reconcile(&defs(&[("nginx", "service"), ("comfy", "instance")]), 300).unwrap();
    assert!(third.added.is_empty());
    assert!(third.archived.is_empty());
    assert!(third.leftovers.is_empty());
    assert!(!store.unit("comfy").unwrap().unwrap().archived);
}

#[test]
fn record_state_upserts() {
    let mut store = Store::open_in_memory().unwrap();
    store.record_state(&running("a", 10)).unwrap();
    let mut update = running("a", 11);
    update.status = "stopping".into();
    update.restarts = 3;
    store.record_state(&update).unwrap();
    let row = store.unit("a").unwrap().unwrap();
    assert_eq!(row.status, "stopping");
    assert_eq!(row.pid, Some(11));
    assert_eq!(row.restarts, 3);
    assert_eq!(row.started_ms, Some(400));
    assert_eq!(store.unit("missing").unwrap(), None);
}

#[test]
fn events_list_in_order_filter_and_page() {
    let mut store = Store::open_in_memory().unwrap();
    let mut ids = Vec::new();
    for i in 0..6 {
        let unit = if i % 2 == 0 { Some("a") } else { Some("b") };
        ids.push(store.append_event(i, unit, "state", &format!("e{i}")).unwrap());
    }
    ids.push(store.append_event(6, None, "boot", "aikore").unwrap());
    assert!(ids.windows(2).all(|w| w[0] < w[1]));

    let newest: Vec<_> = store.events(None, None, 3).unwrap().into_iter().map(|e| e.ts_ms).collect();
    assert_eq!(newest, vec![4, 5, 6], "newest N, oldest first");

    let a: Vec<_> = store.events(Some("a"), None, 10).unwrap().into_iter().map(|e| e.detail).collect();
    assert_eq!(a, vec!["e0", "e2", "e4"]);

    let after: Vec<_> = store.events(None, Some(ids[1]), 2).unwrap().into_iter().map(|e| e.id).collect();
    assert_eq!(after, vec![ids[2], ids[3]], "first N after the cursor");

    let b_after: Vec<_> = store.events(Some("b"), Some(ids[1]), 10).unwrap().into_iter().map(|e| e.detail).collect();
    assert_eq!(b_after, vec!["e3", "e5"]);
    let boot = store.events(None, Some(ids[5]), 10).unwrap();
    assert_eq!(boot.len(), 1);
    assert_eq!(boot[0].unit, None);
}

#[test]
fn prune_keeps_newest_and_ids_keep_growing() {
    let mut store = Store::open_in_memory().unwrap();
    for i in 0..10 {
        store.append_event(i, Some("u"), "k", "d").unwrap();
    }
    assert_eq!(store.prune_events(4).unwrap(), 6);
    let left: Vec<_> = store.events(None, None, 100).unwrap().into_iter().map(|e| e.ts_ms).collect();
    assert_eq!(left, vec![6, 7, 8, 9]);
    assert_eq!(store.prune_events(4).unwrap(), 0);
    assert_eq!(store.prune_events(100).unwrap(), 0);

    store.prune_events(0).unwrap();
    assert!(store.events(None, None, 100).unwrap().is_empty());
    // AUTOINCREMENT: a follower's cursor never sees an id reused.
    let id = store.append_event(11, None, "k", "d").unwrap();
    assert_eq!(id, 11);
}

#[test]
fn append_prunes_automatically() {
    let mut store = Store::open_in_memory().unwrap();
    store.set_event_retention(10);
    for i in 0..1000 {
        store.append_event(i, None, "k", "d").unwrap();
    }
    let left = store.events(None, None, 10_000).unwrap();
    assert_eq!(left.len(), 10);
    assert_eq!(left[0].ts_ms, 990);
}

#[test]
fn port_leases_are_stable_and_skip_busy_and_taken() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let range = 8000..=8010;
    {
        let mut store = Store::open(&path).unwrap();
        // 8000 is in use by something outside aikore.
        let a = store.lease_port("a", range.clone(), |p| p != 8000, 1).unwrap();
        assert_eq!(a, 8001);
        let b = store.lease_port("b", range.clone(), |_| true, 1).unwrap();
        assert_eq!(b, 8000, "lowest port the callback accepts");
        let c = store.lease_port("c", range.clone(), |_| true, 1).unwrap();
        assert_eq!(c, 8002, "skips ports leased by others");
    }
    let mut store = Store::open(&path).unwrap();
    // Stable across reopen even when the probe says busy (its own old process).
    assert_eq!(store.lease_port("a", range.clone(), |_| false, 2).unwrap(), 8001);
    assert_eq!(store.port_holder(8002).unwrap().as_deref(), Some("c"));
    assert_eq!(store.port_holder(8009).unwrap(), None);

    store.release_port("b").unwrap();
    assert_eq!(store.port_holder(8000).unwrap(), None);
    assert_eq!(store.lease_port("d", range.clone(), |_| true, 3).unwrap(), 8000);

    // A lease outside the pool is exchanged for a pool port.
    store.claim_port("e", 9999).unwrap();
    assert_eq!(store.lease_port("e", range, |_| true, 4).unwrap(), 8003);
    assert_eq!(store.port_holder(9999).unwrap(), None);
}

#[test]
fn claim_port_conflict_names_holder() {
    let mut store = Store::open_in_memory().unwrap();
    store.claim_port("a", 7860).unwrap();
    store.claim_port("a", 7860).unwrap();
    match store.claim_port("b", 7860) {
        Err(StoreError::PortTaken { port, holder }) => {
            assert_eq!((port, holder.as_str()), (7860, "a"));
        }
        other => panic!("expected PortTaken, got {other:?}"),
    }
    // Claiming another port moves the unit's lease.
    store.claim_port("a", 7861).unwrap();
    assert_eq!(store.port_holder(7860).unwrap(), None);
    assert_eq!(store.leased_port("a").unwrap(), Some(7861));
}

#[test]
fn pool_exhaustion_is_an_error() {
    let mut store = Store::open_in_memory().unwrap();
    store.lease_port("a", 9000..=9001, |_| true, 0).unwrap();
    let err = store.lease_port("b", 9000..=9001, |p| p != 9001, 0).unwrap_err();
    assert!(matches!(err, StoreError::PortPoolExhausted { start: 9000, end: 9001 }));
    // The failed attempt left nothing behind.
    assert_eq!(store.leased_port("b").unwrap(), None);
}

#[test]
fn rename_moves_row_and_lease_not_history() {
    let mut store = Store::open_in_memory().unwrap();
    store.reconcile(&defs(&[("old", "instance"), ("other", "instance")]), 1).unwrap();
    store.lease_port("old", 8000..=8010, |_| true, 1).unwrap();
    store.append_event(1, Some("old"), "state", "started").unwrap();

    store.rename_unit("old", "new").unwrap();
    assert_eq!(store.unit("old").unwrap(), None);
    assert_eq!(store.unit("new").unwrap().unwrap().kind, "instance");
    assert_eq!(store.port_holder(8000).unwrap().as_deref(), Some("new"));
    assert_eq!(store.events(Some("old"), None, 10).unwrap().len(), 1);
    assert!(store.events(Some("new"), None, 10).unwrap().is_empty());

    // Renaming onto a live unit fails and changes nothing.
    assert!(store.rename_unit("new", "other").is_err());
    assert!(store.unit("new").unwrap().is_some());
    assert_eq!(store.port_holder(8000).unwrap().as_deref(), Some("new"));
}

#[tokio::test]
async fn handle_runs_calls_on_store_thread() {
    let handle = StoreHandle::spawn(Store::open_in_memory().unwrap());
    let h2 = handle.clone();
    let id = h2.call(|s| s.append_event(1, Some("u"), "k", "d")).await.unwrap().unwrap();
    assert_eq!(id, 1);
    let n = handle.call(|s| s.events(None, None, 10).map(|e| e.len())).await.unwrap().unwrap();
    assert_eq!(n, 1);

    // A panicking call reports Closed to its caller but the store lives on.
    let err = handle.call(|_| -> () { panic!("boom") }).await.unwrap_err();
    assert!(matches!(err, StoreError::Closed));
    let blocking = handle.clone();
    let got = tokio::task::spawn_blocking(move || blocking.call_blocking(|s| s.setting("x").map(|v| v.is_none())))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(got);
}

#[test]
fn thread_exits_when_handles_drop() {
    use std::cell::RefCell;
    use std::sync::mpsc;
    use std::time::Duration;

    // Thread-local destructors run when a thread exits, so a guard parked in
    // one on the store thread reports that exit.
    struct Guard(mpsc::Sender<()>);
    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = self.0.send(());
        }
    }
    thread_local! {
        static GUARD: RefCell<Option<Guard>> = const { RefCell::new(None) };
    }

    let (tx, rx) = mpsc::channel();
    let handle = StoreHandle::spawn(Store::open_in_memory().unwrap());
    let clone = handle.clone();
    handle.call_blocking(move |_| GUARD.with(|g| *g.borrow_mut() = Some(Guard(tx)))).unwrap();
    drop(handle);
    // One handle is still alive: the thread must keep running.
    assert!(rx.recv_timeout(Duration::from_millis(100)).is_err());
    drop(clone);
    rx.recv_timeout(Duration::from_secs(5)).unwrap();
}
