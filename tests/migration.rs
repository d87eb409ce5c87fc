//! End-to-end migrations between sandbox clusters over real TCP: what an operator relies
//! on — after cutover the destination equals the source, document for document, with
//! the same indexes and options — under concurrent writes, DDL, operator requests
//! (pause, resume, extend, cancel, cutover) and verification refusing a difference.
//! Crashes, restarts and injected faults are in `migration_faults.rs`.

mod common;

use std::sync::atomic::Ordering;

use bson::{doc, Document};
use common::*;
use ferry::control::ControlRequest;
use ferry::progress::Phase;
use mongodb::options::IndexOptions;
use mongodb::{Client, IndexModel};

/// Inserts, updates, replaces and deletes by an independent client during copy and sync
/// converge exactly; unique, compound and TTL indexes arrive with their options.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_during_copy_and_sync_converge() {
    let pair = Pair::start().await;
    seed(&pair.src, "app", 3000).await;
    seed(&pair.src, "crm", 1000).await;
    let load = Workload::start(pair.src.clone(), "app", 3000);
    let load2 = Workload::start(pair.src.clone(), "crm", 1000);
    // A slow destination keeps the copy running while the workload writes.
    pair.destination
        .set_latency(std::time::Duration::from_millis(5));
    let m = start(pair.config("")).await;
    // Writes land while the copy runs ...
    poll("the copy to start", || copied(&m.progress) > 0).await;
    let during_copy = load.ops();
    load.advance(20).await;
    assert!(load.ops() > during_copy);
    pair.destination.set_latency(std::time::Duration::ZERO);
    // ... and while the change stream is applied.
    wait_phase(&m.progress, Phase::ReadyForCutover).await;
    let at_ready = load.ops();
    load.advance(50).await;
    assert!(load.ops() > at_ready);
    load.stop().await;
    load2.stop().await;
    let outcome = cutover_and_complete(m).await;
    assert!(outcome.report.as_ref().unwrap().documents_copied > 0);
    let compared = assert_same(&pair.src, &pair.dst).await;
    assert!(compared >= 10_000, "compared only {compared} documents");
    // The unique and TTL options are restored on the destination.
    let idx = indexes(&pair.dst, "app", "mixed").await;
    assert_eq!(
        idx["email_unique"].1.get_bool("unique").ok(),
        Some(true),
        "{idx:?}"
    );
    let ttl = indexes(&pair.dst, "app", "events").await;
    assert!(
        ttl.values()
            .any(|(_, o)| o.get("expireAfterSeconds").is_some()),
        "TTL index lost: {ttl:?}"
    );
    assert!(lock(&pair.dst).await.is_none(), "lock not released");
}

/// Every kind of DDL while syncing: create (collection and view), drop, rename within a
/// database and across databases, dropDatabase, createIndexes, dropIndexes, collMod.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ddl_during_sync_is_replayed() {
    let pair = Pair::start().await;
    let src = &pair.src;
    seed(src, "app", 1000).await;
    seed(src, "doomed", 200).await;
    for name in ["to_drop", "to_rename", "to_move", "to_reindex"] {
        src.database("app")
            .collection::<Document>(name)
            .insert_many((0..300).map(|i| doc! {"_id": i, "x": i, "name": name}))
            .await
            .unwrap();
    }
    src.database("app")
        .collection::<Document>("to_reindex")
        .create_index(
            IndexModel::builder()
                .keys(doc! {"x": 1})
                .options(IndexOptions::builder().name("x_1".to_string()).build())
                .build(),
        )
        .await
        .unwrap();
    let m = start(pair.config("")).await;
    wait_phase(&m.progress, Phase::ReadyForCutover).await;

    let app = src.database("app");
    app.create_collection("created").await.unwrap();
    app.collection::<Document>("created")
        .insert_many((0..50).map(|i| doc! {"_id": i, "v": "new"}))
        .await
        .unwrap();
    app.run_command(doc! {"create": "big_counters", "viewOn": "counters", "pipeline": [{"$match": {"value": {"$gt": 0}}}]})
        .await
        .unwrap();
    app.collection::<Document>("to_drop").drop().await.unwrap();
    src.database("admin")
        .run_command(doc! {"renameCollection": "app.to_rename", "to": "app.renamed"})
        .await
        .unwrap();
    src.database("admin")
        .run_command(doc! {"renameCollection": "app.to_move", "to": "archive.moved"})
        .await
        .unwrap();
    src.database("doomed").drop().await.unwrap();
    app.collection::<Document>("to_reindex")
        .create_index(
            IndexModel::builder()
                .keys(doc! {"name": 1, "x": -1})
                .build(),
        )
        .await
        .unwrap();
    app.run_command(doc! {"dropIndexes": "to_reindex", "index": "x_1"})
        .await
        .unwrap();
    app.run_command(doc! {"collMod": "created", "validator": {"v": {"$type": "string"}}, "validationLevel": "moderate"})
        .await
        .unwrap();
    // Writes after the DDL reach the renamed and new namespaces.
    app.collection::<Document>("renamed")
        .insert_one(doc! {"_id": 1000, "after": "rename"})
        .await
        .unwrap();
    src.database("archive")
        .collection::<Document>("moved")
        .update_one(doc! {"_id": 1}, doc! {"$set": {"moved": true}})
        .await
        .unwrap();
    app.collection::<Document>("created")
        .insert_one(doc! {"_id": 99, "v": "valid"})
        .await
        .unwrap();

    cutover_and_complete(m).await;
    assert_same(&pair.src, &pair.dst).await;
    let dbs = user_databases(&pair.dst).await;
    assert!(!dbs.contains(&"doomed".to_string()), "{dbs:?}");
    assert!(dbs.contains(&"archive".to_string()), "{dbs:?}");
    let colls = collections(&pair.dst, "app").await;
    assert_eq!(colls["big_counters"].0, "view");
    assert!(
        colls["created"].1.get_document("validator").is_ok(),
        "{colls:?}"
    );
    assert!(!colls.contains_key("to_drop") && !colls.contains_key("to_rename"));
}

/// Cancel: the run ends cancelled, the destination lock is gone, and the source is
/// untouched and still writable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_releases_the_lock_and_leaves_the_source_alone() {
    let pair = Pair::start().await;
    seed(&pair.src, "app", 2000).await;
    let before = snapshot(&pair.src).await;
    let m = start(pair.config("")).await;
    poll("the lock to be taken", || {
        m.progress.phase() != Phase::Validating
    })
    .await;
    wait_phase(&m.progress, Phase::ReadyForCutover).await;
    assert!(
        lock(&pair.dst).await.is_some(),
        "a running migration holds the lock"
    );
    let reply = m.control.request(ControlRequest::Cancel).await;
    assert!(reply.is_ok(), "{reply:?}");
    let outcome = wait(m).await;
    assert_eq!(outcome.phase, Phase::Cancelled);
    assert!(
        lock(&pair.dst).await.is_none(),
        "lock still held after cancel"
    );
    assert_eq!(before, snapshot(&pair.src).await, "the source changed");
    pair.src
        .database("app")
        .collection::<Document>("counters")
        .insert_one(doc! {"_id": "after-cancel"})
        .await
        .expect("the source still takes writes");
}

/// Every document of every user collection of a deployment, for before/after checks.
async fn snapshot(client: &Client) -> Vec<(String, String, Vec<Vec<u8>>)> {
    let mut out = Vec::new();
    for db in user_databases(client).await {
        for name in collections(client, &db).await.keys() {
            out.push((db.clone(), name.clone(), documents(client, &db, name).await));
        }
    }
    out
}

/// Pause stops applying while the source keeps changing; resume catches up and converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_stops_progress_and_resume_converges() {
    let pair = Pair::start().await;
    seed(&pair.src, "app", 1500).await;
    let load = Workload::start(pair.src.clone(), "app", 1500);
    let m = start(pair.config("")).await;
    wait_phase(&m.progress, Phase::ReadyForCutover).await;
    let reply = m.control.request(ControlRequest::Pause).await;
    assert!(reply.is_ok(), "{reply:?}");
    assert_eq!(m.progress.phase(), Phase::Paused);
    // Batches in flight when pause arrived may still land; after that, nothing moves.
    let mut settled = applied(&m.progress);
    let mut stable_rounds = 0;
    poll("applying to stop while paused", || {
        let now = applied(&m.progress);
        if now == settled {
            stable_rounds += 1;
        } else {
            settled = now;
            stable_rounds = 0;
        }
        stable_rounds >= 20
    })
    .await;
    let ops_paused = load.ops();
    load.advance(100).await;
    assert!(load.ops() > ops_paused, "the source keeps taking writes");
    assert_eq!(
        applied(&m.progress),
        settled,
        "events were applied while paused"
    );
    assert_eq!(m.progress.phase(), Phase::Paused);
    let cut = m
        .control
        .request(ControlRequest::Cutover {
            writes_stopped: true,
        })
        .await;
    assert!(cut.is_err(), "cutover must be refused while paused");
    let reply = m.control.request(ControlRequest::Resume).await;
    assert!(reply.is_ok(), "{reply:?}");
    poll("applying to continue after resume", || {
        applied(&m.progress) > settled
    })
    .await;
    load.stop().await;
    cutover_and_complete(m).await;
    assert_same(&pair.src, &pair.dst).await;
}

/// enforce_write_block: no late write is counted, and the completed run gives the source
/// its writes back (issue 8: the block is lifted in every ending; the applications have
/// moved to the destination by then). The block itself during the cutover is shown in
/// tests/cutover_endings.rs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_block_at_cutover_stops_source_writes() {
    let pair = Pair::start().await;
    seed(&pair.src, "app", 1000).await;
    let load = Workload::start(pair.src.clone(), "app", 1000);
    let m = start(pair.config("[cutover]\nenforce_write_block = true\n")).await;
    wait_phase(&m.progress, Phase::ReadyForCutover).await;
    load.advance(20).await;
    load.stop().await;
    let outcome = cutover_and_complete(m).await;
    assert_eq!(outcome.report.as_ref().unwrap().late_writes_detected, 0);
    assert_same(&pair.src, &pair.dst).await;
    assert_source_writable(&pair.src, "completed").await;
}

/// A difference the engine did not make (a document written straight to the destination)
/// makes verification refuse cutover and name the namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verification_refuses_cutover_on_a_difference() {
    let pair = Pair::start().await;
    seed(&pair.src, "app", 1000).await;
    let m = start(pair.config("")).await;
    wait_phase(&m.progress, Phase::ReadyForCutover).await;
    pair.dst
        .database("app")
        .collection::<Document>("counters")
        .insert_one(doc! {"_id": "intruder", "value": 1i64})
        .await
        .unwrap();
    // The cutover is attempted, verified, refused: back to ready_for_cutover with the
    // namespace named.
    let error = cutover_refused_by_verification(&m).await;
    assert!(error.contains("app.counters"), "{error}");
    let report = m
        .progress
        .report
        .read()
        .clone()
        .expect("a report of the failed verification");
    assert!(!report.verification.passed);
    assert!(
        report
            .verification
            .mismatches
            .iter()
            .any(|x| x.namespace == "app.counters"),
        "{report}"
    );
    assert!(!m.progress.phase().is_terminal());
    let reply = m.control.request(ControlRequest::Cancel).await;
    assert!(reply.is_ok(), "{reply:?}");
    assert_eq!(wait(m).await.phase, Phase::Cancelled);
}

/// The cutover window exists once ready, `extend` moves it, and a window that ran out
/// while Ferry was down ends the resumed run as expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cutover_window_extends_and_expires() {
    let pair = Pair::start().await;
    seed(&pair.src, "app", 500).await;
    let cfg = pair.config("[cutover]\nwindow_hours = 2\nwarn_before_expiry_hours = [1]\n");
    let mut m = start_with(cfg.clone(), true).await;
    wait_phase(&m.progress, Phase::ReadyForCutover).await;
    let expires = m.progress.window_expires_at.load(Ordering::Relaxed);
    let now = ferry::checkpoint::unix_now();
    assert!(
        expires > now + 3600 && expires <= now + 2 * 3600 + 5,
        "window ends at {expires}, now {now}"
    );
    // Through the HTTP API, as the CLI does.
    let addr = m.api_addr().expect("the API listens");
    let status = http(addr, "GET", "/api/v1/progress", "").await;
    assert!(status.contains("window"), "{status}");
    let reply = http(addr, "POST", "/api/v1/extend", "{\"hours\": 3}").await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let extended = m.progress.window_expires_at.load(Ordering::Relaxed);
    assert_eq!(extended, expires + 3 * 3600);
    // The new end, in the same form as `/api/v1/progress` shows it.
    let shown = format!(
        "\"window_expires_at\":\"{}\"",
        ferry::api::format_rfc3339(extended)
    );
    assert!(reply.contains(&shown), "{reply}");
    let reply = m
        .control
        .request(ControlRequest::Extend { hours: 1.0 })
        .await;
    assert!(reply.is_ok(), "{reply:?}");
    assert_eq!(
        m.progress.window_expires_at.load(Ordering::Relaxed),
        extended + 3600
    );
    // Ferry stops; time passes beyond the window while it is down.
    m.shutdown();
    wait(m).await;
    let state = pair.dst.database("__ferry").collection::<Document>("state");
    let past = ferry::checkpoint::unix_now() - 10;
    let r = state
        .update_many(doc! {}, doc! {"$set": {"window_expires_at": past}})
        .await
        .unwrap();
    assert!(r.matched_count >= 1);
    let m = start(cfg).await;
    let progress = m.progress.clone();
    let outcome = wait(m).await;
    assert_eq!(
        outcome.phase,
        Phase::Expired,
        "{:?} {:?}",
        outcome.error,
        progress.last_error.read()
    );
    assert!(
        lock(&pair.dst).await.is_none(),
        "lock still held after expiry"
    );
}

/// A minimal HTTP/1.1 exchange with the API; returns the raw response.
async fn http(addr: std::net::SocketAddr, method: &str, path: &str, body: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// Test 1, reduced, against real clusters when FERRY_TEST_SOURCE_URI and
/// FERRY_TEST_DESTINATION_URI are set (the destination must be empty; the test writes
/// the database `ferry_e2e` on the source and drops it there afterwards).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_clusters_converge() {
    let (Ok(source), Ok(destination)) = (
        std::env::var("FERRY_TEST_SOURCE_URI"),
        std::env::var("FERRY_TEST_DESTINATION_URI"),
    ) else {
        println!("skipped: set FERRY_TEST_SOURCE_URI and FERRY_TEST_DESTINATION_URI");
        return;
    };
    init_logging();
    let src = Client::with_uri_str(&source).await.unwrap();
    let dst = Client::with_uri_str(&destination).await.unwrap();
    src.database("ferry_e2e").drop().await.unwrap();
    seed(&src, "ferry_e2e", 2000).await;
    let load = Workload::start(src.clone(), "ferry_e2e", 2000);
    let m = start(config(
        &source,
        &destination,
        "[filter]\ninclude_namespaces = [\"ferry_e2e\"]\n",
    ))
    .await;
    wait_phase(&m.progress, Phase::ReadyForCutover).await;
    load.advance(50).await;
    load.stop().await;
    cutover_and_complete(m).await;
    for name in ["mixed", "events", "counters"] {
        assert_eq!(
            documents(&src, "ferry_e2e", name).await,
            documents(&dst, "ferry_e2e", name).await,
            "ferry_e2e.{name} differs"
        );
        assert_eq!(
            indexes(&src, "ferry_e2e", name).await,
            indexes(&dst, "ferry_e2e", name).await
        );
    }
    let _ = src.database("ferry_e2e").drop().await;
}

/// An index already on the destination (as a restart can find it) that conflicts with one of the source's (same
/// key, another name) leaves only that index out: the others of the collection are
/// created. Before, the one `createIndexes` failed as a whole with 85 and was ignored, so
/// none of the collection's indexes existed on the destination.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflicting_index_on_the_destination_leaves_the_others_created() {
    let pair = Pair::start().await;
    let items = pair.src.database("app").collection::<Document>("items");
    items
        .insert_many((0..20).map(|i| doc! {"_id": i, "a": i, "b": i}))
        .await
        .expect("seed");
    for key in [doc! {"a": 1}, doc! {"b": 1}] {
        items
            .create_index(mongodb::IndexModel::builder().keys(key).build())
            .await
            .expect("source index");
    }
    pair.dst
        .database("app")
        .collection::<Document>("items")
        .create_index(
            mongodb::IndexModel::builder()
                .keys(doc! {"a": 1})
                .options(
                    mongodb::options::IndexOptions::builder()
                        .name("a_first".to_string())
                        .build(),
                )
                .build(),
        )
        .await
        .expect("destination index");
    // What a restart can find (preflight would refuse a fresh run on this destination).
    let config = pair.config("");
    let m = tokio::task::spawn_blocking(move || {
        ferry::run::Migration::start(
            config,
            ferry::run::RunOptions {
                serve_api: false,
                preflight: false,
            },
        )
    })
    .await
    .expect("start task")
    .expect("migration starts");
    wait_phase(&m.progress, Phase::ReadyForCutover).await;
    let names = pair
        .dst
        .database("app")
        .collection::<Document>("items")
        .list_index_names()
        .await
        .expect("indexes");
    assert!(names.contains(&"b_1".to_string()), "{names:?}");
    abort(m).await;
}
