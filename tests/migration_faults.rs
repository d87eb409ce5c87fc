//! Crashes, graceful restarts and injected faults (stepdowns, dropped connections) during
//! copy and sync: the run resumes from its checkpoints and the destination still equals
//! the source exactly, with nothing duplicated or skipped.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bson::{doc, Document};
use common::*;
use ferry::progress::Phase;
use futures_util::TryStreamExt;
use mongodb::Client;

/// `__ferry.ranges`: id -> (done, documents).
async fn ranges(dst: &Client) -> BTreeMap<String, (bool, u64)> {
    let docs: Vec<Document> = dst
        .database("__ferry")
        .collection::<Document>("ranges")
        .find(doc! {})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    docs.into_iter()
        .map(|d| {
            let id = match d.get("_id") {
                Some(bson::Bson::String(s)) => s.clone(),
                other => format!("{other:?}"),
            };
            let documents = match d.get("documents") {
                Some(bson::Bson::Int64(n)) => *n as u64,
                Some(bson::Bson::Int32(n)) => *n as u64,
                Some(bson::Bson::Double(n)) => *n as u64,
                _ => 0,
            };
            (id, (d.get_bool("done").unwrap_or(false), documents))
        })
        .collect()
}

/// Transient failures the run retried so far.
fn retries(progress: &ferry::progress::SharedProgress) -> u64 {
    progress.retries.load(Ordering::Relaxed)
}

/// Configures the destination's `failCommand` fail point to fail the next `times`
/// `command`s on `ns` with `code`.
async fn fail_destination(dst: &Client, command: &str, ns: &str, code: i32, times: i32) {
    dst.database("admin")
        .run_command(doc! {
            "configureFailPoint": "failCommand",
            "mode": {"times": times},
            "data": {"failCommands": [command], "namespace": ns, "errorCode": code},
        })
        .await
        .expect("fail point");
}

/// Turns the destination's fail point off; returns how many commands it failed in all.
async fn fail_point_count(dst: &Client) -> i64 {
    dst.database("admin")
        .run_command(doc! {"configureFailPoint": "failCommand", "mode": "off"})
        .await
        .expect("fail point off")
        .get_i64("count")
        .expect("the reply counts the failed commands")
}

/// Waits until between 10% and 90% of the estimated documents are copied.
async fn mid_copy(m: &ferry::run::Migration) -> (u64, u64) {
    let p = m.progress.clone();
    poll("10% of the copy", || {
        let est = p.documents_estimated.load(Ordering::Relaxed);
        est > 0 && copied(&p) * 10 >= est
    })
    .await;
    let est = p.documents_estimated.load(Ordering::Relaxed);
    let now = copied(&p);
    assert!(
        now * 10 <= est * 9,
        "copy ran past 90% ({now}/{est}) before the test could interrupt it"
    );
    (now, est)
}

/// A crash mid-copy, then a new run with the same config: finished ranges are not copied
/// again, unfinished ones complete, and the destination equals the source exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_mid_copy_resumes_without_recopying() {
    let pair = Pair::start().await;
    let total = seed(&pair.src, "app", 5000).await;
    let cfg = pair.config(
        "[copy]\nbatch_max_documents = 500\nparallel_collections = 1\nparallel_ranges_per_collection = 1\n",
    );
    // A slow destination keeps the copy in progress long enough to interrupt it.
    pair.destination.set_latency(Duration::from_millis(20));
    let m = start(cfg.clone()).await;
    mid_copy(&m).await;
    abort(m).await;
    pair.destination.set_latency(Duration::ZERO);
    let before = ranges(&pair.dst).await;
    let done_before: BTreeMap<_, _> = before.iter().filter(|(_, (d, _))| *d).collect();
    let checkpointed: u64 = before.values().map(|(_, n)| n).sum();
    let unfinished = before.values().filter(|(d, _)| !d).count() as u64;
    assert!(unfinished > 0, "the crash came after the copy finished");
    assert!(checkpointed < total, "{checkpointed} of {total}");
    assert!(
        lock(&pair.dst).await.is_some(),
        "a crash leaves the lease behind"
    );

    // Same owner: the new run takes over the lease at once and resumes.
    let m = start(cfg).await;
    wait_phase(&m.progress, Phase::ReadyForCutover).await;
    let after = ranges(&pair.dst).await;
    for (id, (_, n)) in &done_before {
        assert_eq!(
            after[*id],
            (true, *n),
            "finished range {id} was copied again"
        );
    }
    let final_copied: u64 = after.values().map(|(_, n)| n).sum();
    let newly = final_copied - checkpointed;
    let left = total - checkpointed;
    // At most the one batch per range that was in flight at the crash is sent again.
    assert!(
        newly >= left && newly <= left + unfinished * 500,
        "second run copied {newly} documents; {left} were left in {unfinished} ranges"
    );
    assert_eq!(copied(&m.progress), final_copied);
    cutover_and_complete(m).await;
    assert_eq!(assert_same(&pair.src, &pair.dst).await as u64, total);
}

/// A crash while syncing under a write workload, then a restart: every event after the
/// checkpoint is applied (none skipped), the destination converges exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_mid_sync_resumes_from_the_checkpoint() {
    let pair = Pair::start().await;
    seed(&pair.src, "app", 2000).await;
    let load = Workload::start(pair.src.clone(), "app", 2000);
    let cfg = pair.config("");
    let m = start(cfg.clone()).await;
    wait_phase(&m.progress, Phase::ReadyForCutover).await;
    // Let some checkpoints pass with the workload running, then crash between them.
    let p = m.progress.clone();
    let applied_before = applied(&p);
    poll("events to be applied while syncing", || {
        applied(&p) > applied_before + 200
    })
    .await;
    abort(m).await;
    // Writes go on while Ferry is down.
    load.advance(100).await;
    let m = start(cfg).await;
    wait_phase(&m.progress, Phase::ReadyForCutover).await;
    load.advance(50).await;
    load.stop().await;
    cutover_and_complete(m).await;
    assert_same(&pair.src, &pair.dst).await;
}

/// SIGTERM-like shutdown mid-copy keeps the checkpoints and releases the lock; the next
/// run resumes the copy instead of starting over, and later a shutdown while syncing
/// resumes the sync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_then_restart_resumes() {
    let pair = Pair::start().await;
    let total = seed(&pair.src, "app", 4000).await;
    let cfg = pair.config(
        "[copy]\nbatch_max_documents = 500\nparallel_collections = 1\nparallel_ranges_per_collection = 1\n",
    );
    pair.destination.set_latency(Duration::from_millis(20));
    let mut m = start(cfg.clone()).await;
    mid_copy(&m).await;
    m.shutdown();
    let outcome = wait(m).await;
    assert!(!outcome.phase.is_terminal(), "{:?}", outcome.phase);
    pair.destination.set_latency(Duration::ZERO);
    assert!(lock(&pair.dst).await.is_none(), "shutdown keeps the lock");
    let checkpointed: u64 = ranges(&pair.dst).await.values().map(|(_, n)| n).sum();
    assert!(checkpointed > 0 && checkpointed < total);

    let load = Workload::start(pair.src.clone(), "app", 4000);
    let mut m = start(cfg.clone()).await;
    // The resumed run starts from the checkpointed count, not from zero.
    poll("the resumed copy to report its progress", || {
        copied(&m.progress) >= checkpointed
    })
    .await;
    wait_phase(&m.progress, Phase::ReadyForCutover).await;
    load.advance(30).await;
    m.shutdown();
    wait(m).await;
    load.advance(30).await;
    let m = start(cfg).await;
    wait_phase(&m.progress, Phase::ReadyForCutover).await;
    load.stop().await;
    cutover_and_complete(m).await;
    assert_same(&pair.src, &pair.dst).await;
}

/// Stepdowns and dropped connections on both sides during the copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_during_copy_are_survived() {
    let pair = Pair::start().await;
    seed(&pair.src, "app", 4000).await;
    let load = Workload::start(pair.src.clone(), "app", 4000);
    let cfg = pair.config(
        "[copy]\nbatch_max_documents = 500\nparallel_collections = 1\nparallel_ranges_per_collection = 2\n",
    );
    pair.destination.set_latency(Duration::from_millis(10));
    let m = start(cfg).await;
    let p = m.progress.clone();
    poll("the copy to start", || copied(&p) > 0).await;
    let faults: [(&str, &dyn Fn()); 4] = [
        ("source stepdown", &|| {
            pair.source.step_down(Duration::from_secs(1))
        }),
        ("destination drop", &|| pair.destination.drop_connections()),
        ("destination stepdown", &|| {
            pair.destination.step_down(Duration::from_secs(1))
        }),
        ("source drop", &|| pair.source.drop_connections()),
    ];
    for (what, fault) in faults {
        if m.progress.phase() != Phase::Copying {
            break;
        }
        let before = copied(&p);
        fault();
        poll(&format!("the copy to go on after {what}"), || {
            copied(&p) > before || p.phase() != Phase::Copying
        })
        .await;
    }
    pair.destination.set_latency(Duration::ZERO);
    wait_phase(&m.progress, Phase::ReadyForCutover).await;
    load.stop().await;
    cutover_and_complete(m).await;
    assert_same(&pair.src, &pair.dst).await;
}

/// Stepdowns and dropped connections on both sides while syncing under writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_during_sync_are_survived() {
    let pair = Pair::start().await;
    seed(&pair.src, "app", 1500).await;
    let load = Workload::start(pair.src.clone(), "app", 1500);
    let m = start(pair.config("")).await;
    wait_phase(&m.progress, Phase::ReadyForCutover).await;
    let p = m.progress.clone();
    let faults: [(&str, &dyn Fn()); 4] = [
        ("source stepdown", &|| {
            pair.source.step_down(Duration::from_secs(1))
        }),
        ("destination drop", &|| pair.destination.drop_connections()),
        ("destination stepdown", &|| {
            pair.destination.step_down(Duration::from_secs(1))
        }),
        ("source drop", &|| pair.source.drop_connections()),
    ];
    for (what, fault) in faults {
        let before = applied(&p);
        fault();
        poll(&format!("applying to go on after {what}"), || {
            applied(&p) > before + 20
        })
        .await;
        assert!(!p.phase().is_terminal(), "{:?}", p.last_error.read());
    }
    load.stop().await;
    cutover_and_complete(m).await;
    assert_same(&pair.src, &pair.dst).await;
}

/// Starts a run with `enforce_write_block`, requests the cutover against a slow
/// destination, and crashes once the source refuses writes (the cutover under way).
async fn crash_during_cutover(pair: &Pair, cfg: &ferry::config::Config) {
    let m = start(cfg.clone()).await;
    wait_phase(&m.progress, Phase::ReadyForCutover).await;
    // A slow destination keeps the drain and the verification going for a while.
    pair.destination.set_latency(Duration::from_millis(200));
    let reply = request_until_accepted(
        &m,
        ferry::control::ControlRequest::Cutover {
            writes_stopped: true,
        },
    )
    .await;
    assert!(reply.is_ok(), "{reply:?}");
    let counters = pair.src.database("app").collection::<Document>("counters");
    let deadline = std::time::Instant::now() + DEADLINE;
    let mut attempt = 0i64;
    loop {
        attempt += 1;
        let write = counters
            .insert_one(doc! {"_id": format!("probe-{attempt}")})
            .await;
        if let Err(e) = write {
            assert_eq!(ferry::cluster::error_code(&e), Some(371), "{e}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the source was never write-blocked"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(m.progress.phase(), Phase::CuttingOver);
    abort(m).await;
    pair.destination.set_latency(Duration::ZERO);
    let still = counters.insert_one(doc! {"_id": "after-crash"}).await;
    assert!(still.is_err(), "the crash left the source blocked");
}

/// A crash during a cutover that blocked the source's writes: the restarted run knows
/// the source is blocked, and cancelling it gives the source its writes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_after_a_crash_during_cutover_unblocks_the_source() {
    let pair = Pair::start().await;
    seed(&pair.src, "app", 1000).await;
    let cfg = pair.config("[cutover]\nenforce_write_block = true\n");
    crash_during_cutover(&pair, &cfg).await;
    let m = start(cfg).await;
    wait_phase(&m.progress, Phase::ReadyForCutover).await;
    let reply = m
        .control
        .request(ferry::control::ControlRequest::Cancel)
        .await;
    assert!(reply.is_ok(), "{reply:?}");
    assert_eq!(wait(m).await.phase, Phase::Cancelled);
    pair.src
        .database("app")
        .collection::<Document>("counters")
        .insert_one(doc! {"_id": "after-cancel"})
        .await
        .expect("the source takes writes again after cancel");
}

/// A crash during a cutover, then a restart: the cutover requested again completes and
/// the destination equals the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cutover_after_a_crash_during_cutover_completes() {
    let pair = Pair::start().await;
    seed(&pair.src, "app", 1000).await;
    let cfg = pair.config("[cutover]\nenforce_write_block = true\n");
    crash_during_cutover(&pair, &cfg).await;
    let m = start(cfg).await;
    cutover_and_complete(m).await;
    assert_same(&pair.src, &pair.dst).await;
}

/// Pins: an election on the source as `ferry run` records its start time made the run
/// exit with "appendOplogNote failed: NotPrimaryNoSecondaryOk" instead of waiting for the
/// new primary. The source's `appendOplogNote` fails three times, first as a secondary
/// answers it (10107 NotWritablePrimary), then as a member mid-transition (11602,
/// 13435): the run waits, records the start time, and migrates everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_election_while_the_start_time_is_recorded_is_waited_out() {
    let pair = Pair::start().await;
    let seeded = seed(&pair.src, "app", 500).await as usize;
    let admin = pair.src.database("admin");
    for code in [10107, 11602, 13435] {
        admin
            .run_command(doc! {
                "configureFailPoint": "failCommand",
                "mode": {"times": 1},
                "data": {"failCommands": ["appendOplogNote"], "errorCode": code},
            })
            .await
            .expect("fail point");
        let m = start(pair.config("")).await;
        wait_phase(&m.progress, Phase::ReadyForCutover).await;
        cutover_and_complete(m).await;
        assert_eq!(assert_same(&pair.src, &pair.dst).await, seeded);
        pair.dst.database("__ferry").drop().await.expect("reset");
        pair.dst.database("app").drop().await.expect("reset");
    }
    let fired = admin
        .run_command(doc! {"configureFailPoint": "failCommand", "mode": "off"})
        .await
        .expect("fail point off");
    assert_eq!(
        fired.get_i64("count"),
        Ok(3),
        "each injected election fired"
    );
}

/// Pins: a crash while the copy plan was being saved left collections with no ranges,
/// which the next run treated as copied (their documents never reached the
/// destination). Emulated precisely: a run is killed mid-copy, then its plan is left as
/// such a crash leaves it (the namespaces written, no ranges, no completion marker).
/// The restarted run plans again and copies everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_while_the_plan_is_saved_is_planned_again() {
    let pair = Pair::start().await;
    let seeded = seed(&pair.src, "app", 2000).await as usize;
    pair.destination.set_latency(Duration::from_millis(20));
    let cfg = pair.config("[copy]\nbatch_max_documents = 50\nparallel_collections = 1\n");
    let m = start(cfg.clone()).await;
    poll("the copy to start", || copied(&m.progress) > 0).await;
    abort(m).await;
    pair.destination.set_latency(Duration::ZERO);
    let state = pair.dst.database("__ferry");
    let namespaces = state
        .collection::<Document>("namespaces")
        .count_documents(doc! {})
        .await
        .expect("count namespaces");
    assert!(namespaces > 0, "the plan was saved before the copy began");
    state
        .collection::<Document>("ranges")
        .delete_many(doc! {})
        .await
        .expect("emulate the crash");
    state
        .collection::<Document>("plan")
        .delete_many(doc! {})
        .await
        .expect("emulate the crash");
    let m = start(cfg).await;
    cutover_and_complete(m).await;
    assert_eq!(assert_same(&pair.src, &pair.dst).await, seeded);
}

/// Pins: a rename replayed after a crash renamed the wrong collection. Events after the
/// rename (a new collection under the old name, written to) were applied, then the
/// checkpoint write failed and the restarted tailer replayed the rename from an older
/// position, moving the new collection onto the renamed one. Here every checkpoint
/// write fails (fail point on `__ferry.state` updates) from just before the rename until
/// the tailer has restarted several times; the destination must still equal the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rename_replayed_after_a_restart_does_not_move_a_newer_collection() {
    let pair = Pair::start().await;
    let db = pair.src.database("app");
    db.collection::<Document>("orders")
        .insert_many(
            (0..100)
                .map(|i| doc! {"_id": i, "v": "original"})
                .collect::<Vec<_>>(),
        )
        .await
        .expect("seed");
    let m = start(pair.config("")).await;
    wait_phase(&m.progress, Phase::ReadyForCutover).await;
    let reply = m
        .control
        .request(ferry::control::ControlRequest::Pause)
        .await;
    assert!(reply.is_ok(), "{reply:?}");
    wait_phase(&m.progress, Phase::Paused).await;
    pair.src
        .database("admin")
        .run_command(doc! {"renameCollection": "app.orders", "to": "app.orders_old"})
        .await
        .expect("rename");
    db.collection::<Document>("orders")
        .insert_many(
            (0..10)
                .map(|i| doc! {"_id": i, "v": "new"})
                .collect::<Vec<_>>(),
        )
        .await
        .expect("a new collection under the old name");
    let dst_admin = pair.dst.database("admin");
    let fail_point = |mode: bson::Bson| {
        dst_admin.run_command(doc! {
            "configureFailPoint": "failCommand",
            "mode": mode,
            "data": {"failCommands": ["update"], "namespace": "__ferry.state", "errorCode": 91},
        })
    };
    fail_point("alwaysOn".into()).await.expect("fail point");
    let reply = m
        .control
        .request(ferry::control::ControlRequest::Resume)
        .await;
    assert!(reply.is_ok(), "{reply:?}");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let count = fail_point("alwaysOn".into())
            .await
            .expect("fail point")
            .get_i64("count")
            .unwrap_or(0);
        if count >= 4 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "checkpoint writes were not attempted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    dst_admin
        .run_command(doc! {"configureFailPoint": "failCommand", "mode": "off"})
        .await
        .expect("fail point off");
    cutover_and_complete(m).await;
    assert_eq!(assert_same(&pair.src, &pair.dst).await, 110);
}

/// Pins: the start time was recorded with a write that was not majority-committed while
/// the copy reads at majority, so on a replica set whose majority lags, a document written
/// just before the start time was missed by both the copy (not in its majority snapshot)
/// and the change stream (which starts after it). Here the source's commit point trails
/// its writes by 4 s and documents are written right up to the start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_written_just_before_the_start_under_majority_lag_are_copied() {
    let pair = Pair::start().await;
    pair.source.set_majority_lag(Duration::from_secs(4));
    let coll = pair.src.database("app").collection::<Document>("late");
    for i in 0..20 {
        coll.insert_one(doc! {"_id": i}).await.expect("insert");
    }
    let m = start(pair.config("")).await;
    wait_phase(&m.progress, Phase::ReadyForCutover).await;
    pair.source.set_majority_lag(Duration::ZERO);
    cutover_and_complete(m).await;
    assert_eq!(assert_same(&pair.src, &pair.dst).await, 20);
}

/// Pins: a `writeConcernError` on the destination (the write applied on the primary but
/// not acknowledged by a majority in time, 64 WriteConcernFailed) failed the run as if it
/// could never pass. Now a retryable one is transient: the batch is applied again
/// (idempotently) and the run converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_concern_timeouts_on_the_destination_are_retried() {
    let pair = Pair::start().await;
    seed(&pair.src, "app", 1000).await;
    let load = Workload::start(pair.src.clone(), "app", 1000);
    let m = start(pair.config("")).await;
    wait_phase(&m.progress, Phase::ReadyForCutover).await;
    let retries_before = retries(&m.progress);
    let entered_before = pair.destination.fail_points_entered();
    pair.dst
        .database("admin")
        .run_command(doc! {
            "configureFailPoint": "failCommand",
            "mode": {"times": 5},
            "data": {
                "failCommands": ["insert", "update", "delete"],
                "writeConcernError": {
                    "code": 64,
                    "codeName": "WriteConcernFailed",
                    "errmsg": "waiting for replication timed out",
                    "errInfo": {"wtimeout": true},
                },
            },
        })
        .await
        .expect("fail point");
    poll("the injected write concern failures to fire", || {
        pair.destination.fail_points_entered() >= entered_before + 5
    })
    .await;
    poll("Ferry to retry the batches the failures hit", || {
        retries(&m.progress) > retries_before
    })
    .await;
    load.advance(50).await;
    load.stop().await;
    cutover_and_complete(m).await;
    assert_same(&pair.src, &pair.dst).await;
}

/// Sets (or, with `None`, clears) a `failCommand` point on `client` that applies `command`
/// and then answers it with `writeConcernError` of `code`; returns how often it fired.
async fn write_concern_fail_point(client: &Client, command: &str, code: Option<i32>) -> i64 {
    let admin = client.database("admin");
    let cmd = match code {
        Some(code) => doc! {
            "configureFailPoint": "failCommand",
            "mode": {"times": 1},
            "data": {
                "failCommands": [command],
                "writeConcernError": {"code": code, "errmsg": "injected by the test"},
            },
        },
        None => doc! {"configureFailPoint": "failCommand", "mode": "off"},
    };
    admin
        .run_command(cmd)
        .await
        .expect("fail point")
        .get_i64("count")
        .unwrap_or(0)
}

/// Pins: replayed DDL ignored its reply's `writeConcernError` (the driver returns `ok: 1`
/// replies as successes), so a drop applied on the destination's primary but never
/// acknowledged as asked counted as done. Now a write concern that can never be met
/// fails the run, naming the command, instead of going on as if it were durable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ddl_whose_write_concern_fails_for_good_fails_the_run() {
    let pair = Pair::start().await;
    seed(&pair.src, "app", 100).await;
    let m = start(pair.config("")).await;
    wait_phase(&m.progress, Phase::ReadyForCutover).await;
    write_concern_fail_point(&pair.dst, "drop", Some(100)).await;
    pair.src
        .database("app")
        .collection::<Document>("events")
        .drop()
        .await
        .expect("drop on the source");
    poll("the run to end", || m.progress.phase().is_terminal()).await;
    let outcome = wait(m).await;
    assert_eq!(outcome.phase, Phase::Failed, "{outcome:?}");
    let error = outcome.error.unwrap_or_default();
    assert!(
        error.contains("drop"),
        "the error names the command: {error}"
    );
}

/// Pins: a transient `writeConcernError` (64, a wtimeout) on a replayed DDL is retried,
/// and the run converges, with the fault seen to fire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ddl_whose_write_concern_times_out_is_applied_again() {
    let pair = Pair::start().await;
    seed(&pair.src, "app", 100).await;
    let m = start(pair.config("")).await;
    wait_phase(&m.progress, Phase::ReadyForCutover).await;
    write_concern_fail_point(&pair.dst, "renameCollection", Some(64)).await;
    pair.src
        .database("admin")
        .run_command(doc! {"renameCollection": "app.events", "to": "app.events_old"})
        .await
        .expect("rename on the source");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !pair
        .dst
        .database("app")
        .list_collection_names()
        .await
        .expect("list collections")
        .iter()
        .any(|n| n == "events_old")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the rename never reached the destination"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let fired = write_concern_fail_point(&pair.dst, "renameCollection", None).await;
    assert!(fired >= 1, "the injected write concern error fired");
    cutover_and_complete(m).await;
    assert_same(&pair.src, &pair.dst).await;
}

/// Pins: transient destination errors are retried, not fatal and not skipped, and the
/// test proves its faults fired. The copy's inserts into `app.counters` fail twice with
/// 50 MaxTimeMSExpired (an overloaded destination; the driver does not retry it, so
/// Ferry must), and later the sync's updates to it fail twice with 11602
/// InterruptedDueToReplStateChange: the fail point counts all four, Ferry's retry
/// counter rises after each phase's faults, and the destination converges exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_destination_errors_fire_and_are_retried() {
    let pair = Pair::start().await;
    seed(&pair.src, "app", 1000).await;
    fail_destination(&pair.dst, "insert", "app.counters", 50, 2).await;
    let m = start(pair.config("")).await;
    wait_phase(&m.progress, Phase::ReadyForCutover).await;
    assert_eq!(
        fail_point_count(&pair.dst).await,
        2,
        "the copy's faults fired"
    );
    let after_copy = retries(&m.progress);
    assert!(after_copy > 0, "the copy's failed inserts were not retried");

    let load = Workload::start(pair.src.clone(), "app", 1000);
    fail_destination(&pair.dst, "update", "app.counters", 11602, 2).await;
    poll("the sync's faults to be retried", || {
        retries(&m.progress) > after_copy
    })
    .await;
    load.advance(30).await;
    load.stop().await;
    cutover_and_complete(m).await;
    assert_eq!(
        fail_point_count(&pair.dst).await,
        4,
        "the sync's faults fired"
    );
    assert_same(&pair.src, &pair.dst).await;
}
