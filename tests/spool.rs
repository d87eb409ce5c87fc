//! Change events during the initial copy and the source's oplog window.
//!
//! Without `runtime.spool_dir` the change stream is read from the start time after the
//! copy, so history that rolls off the source's oplog during the copy fails the run with
//! a "start over" message. With a spool directory the tailer reads the stream while the
//! copy runs and keeps the events on local disk, so the same rollover is survived — also
//! across a crash of the migration host.

mod common;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bson::{doc, Document, Timestamp};
use common::*;
use ferry::progress::Phase;
use mongodb::Client;

/// A fresh spool directory for one test.
fn spool_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ferry-test-spool-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn spool_files(dir: &PathBuf) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// A copy slow enough (one range, small batches, a destination with latency) that the
/// test acts while it runs.
fn slow_copy_config(pair: &Pair, spool: Option<&PathBuf>) -> ferry::config::Config {
    let mut cfg = pair.config(
        "[copy]\nbatch_max_documents = 50\nparallel_collections = 1\nparallel_ranges_per_collection = 1\n",
    );
    cfg.runtime.spool_dir = spool.cloned();
    pair.destination.set_latency(Duration::from_millis(40));
    cfg
}

/// Writes to the source during the copy: updates, deletes and new documents. Returns the
/// cluster time of the last write.
async fn writes_during_copy(src: &Client, round: i32) -> Timestamp {
    let db = src.database("app");
    let counters = db.collection::<Document>("counters");
    for i in 0..40i64 {
        counters
            .update_one(
                doc! {"_id": i},
                doc! {"$inc": {"value": 1i64}, "$set": {"round": round}},
            )
            .await
            .expect("update");
    }
    counters
        .delete_many(doc! {"_id": {"$gte": 40i64, "$lt": 60i64}})
        .await
        .expect("delete");
    let reply = db
        .run_command(doc! {"insert": "late", "documents": (0..30).map(|i| doc! {"_id": format!("r{round}-{i}"), "round": round}).collect::<Vec<_>>()})
        .await
        .expect("insert");
    reply
        .get_timestamp("operationTime")
        .expect("the reply carries operationTime")
}

/// Waits until the checkpoint records a spool that reaches `ts`: those events are on the
/// migration host's disk.
async fn spooled_through(dst: &Client, ts: Timestamp) {
    let state = dst.database("__ferry").collection::<Document>("state");
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let doc = state.find_one(doc! {"_id": "state"}).await.expect("state");
        let reached = doc
            .as_ref()
            .and_then(|d| d.get_document("spool_token").ok())
            .and_then(ferry::actors::tailer::token_timestamp)
            .is_some_and(|t| (t.time, t.increment) >= (ts.time, ts.increment));
        if reached {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the spool never reached the writes (state: {doc:?})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn assert_copying(m: &ferry::run::Migration) {
    assert_eq!(
        m.progress.phase(),
        Phase::Copying,
        "the copy ended before the test could roll the oplog over"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oplog_rollover_during_the_copy_fails_with_start_over_without_a_spool() {
    let pair = Pair::start().await;
    seed(&pair.src, "app", 1000).await;
    let m = start(slow_copy_config(&pair, None)).await;
    wait_phase(&m.progress, Phase::Copying).await;
    writes_during_copy(&pair.src, 1).await;
    assert_copying(&m);
    // The source's oplog loses the history since the start time.
    pair.source.truncate_oplog(1);
    pair.destination.set_latency(Duration::ZERO);
    let outcome = wait(m).await;
    assert_eq!(outcome.phase, Phase::Failed);
    let error = outcome.error.unwrap_or_default();
    assert!(
        error.contains("history") && error.contains("start over"),
        "the failure says what happened and what to do: {error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spool_survives_oplog_rollover_during_the_copy() {
    let pair = Pair::start().await;
    let dir = spool_dir("rollover");
    seed(&pair.src, "app", 1000).await;
    let m = start(slow_copy_config(&pair, Some(&dir))).await;
    wait_phase(&m.progress, Phase::Copying).await;
    let last = writes_during_copy(&pair.src, 1).await;
    spooled_through(&pair.dst, last).await;
    assert_copying(&m);
    assert_eq!(spool_files(&dir).len(), 1, "one spool file while copying");
    assert!(m.progress.spooled_bytes.load(Ordering::Relaxed) > 0);
    pair.source.truncate_oplog(1);
    // More changes after the rollover, still during the copy, then after it.
    writes_during_copy(&pair.src, 2).await;
    pair.destination.set_latency(Duration::ZERO);
    wait_phase(&m.progress, Phase::ReadyForCutover).await;
    writes_during_copy(&pair.src, 3).await;
    cutover_and_complete(m).await;
    assert_same(&pair.src, &pair.dst).await;
    assert!(
        spool_files(&dir).is_empty(),
        "the spool is removed once applied: {:?}",
        spool_files(&dir)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_while_spooling_resumes_from_the_spool() {
    let pair = Pair::start().await;
    let dir = spool_dir("crash");
    seed(&pair.src, "app", 1000).await;
    let cfg = slow_copy_config(&pair, Some(&dir));
    let m = start(cfg.clone()).await;
    wait_phase(&m.progress, Phase::Copying).await;
    let last = writes_during_copy(&pair.src, 1).await;
    spooled_through(&pair.dst, last).await;
    assert_copying(&m);
    abort(m).await;
    // Only the spool on the migration host still has those changes.
    pair.source.truncate_oplog(1);
    writes_during_copy(&pair.src, 2).await;
    pair.destination.set_latency(Duration::ZERO);

    let m = start(cfg).await;
    wait_phase(&m.progress, Phase::ReadyForCutover).await;
    writes_during_copy(&pair.src, 3).await;
    cutover_and_complete(m).await;
    assert_same(&pair.src, &pair.dst).await;
    assert!(spool_files(&dir).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_while_spooling_removes_the_spool() {
    let pair = Pair::start().await;
    let dir = spool_dir("cancel");
    seed(&pair.src, "app", 1000).await;
    let m = start(slow_copy_config(&pair, Some(&dir))).await;
    wait_phase(&m.progress, Phase::Copying).await;
    let last = writes_during_copy(&pair.src, 1).await;
    spooled_through(&pair.dst, last).await;
    assert_eq!(spool_files(&dir).len(), 1);
    let reply = m
        .control
        .request(ferry::control::ControlRequest::Cancel)
        .await;
    assert!(reply.is_ok(), "cancel refused: {reply:?}");
    let outcome = wait(m).await;
    assert_eq!(outcome.phase, Phase::Cancelled);
    assert!(
        spool_files(&dir).is_empty(),
        "a cancelled run leaves no spool behind: {:?}",
        spool_files(&dir)
    );
    pair.destination.set_latency(Duration::ZERO);
}

/// The spool file lost with the migration host's disk: the restarted run warns and
/// reads those changes from the source again (its oplog still has them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_spool_file_is_read_again_from_the_source() {
    let pair = Pair::start().await;
    let dir = spool_dir("lost");
    seed(&pair.src, "app", 1000).await;
    let cfg = slow_copy_config(&pair, Some(&dir));
    let m = start(cfg.clone()).await;
    wait_phase(&m.progress, Phase::Copying).await;
    let last = writes_during_copy(&pair.src, 1).await;
    spooled_through(&pair.dst, last).await;
    assert_copying(&m);
    abort(m).await;
    std::fs::remove_dir_all(&dir).expect("remove the spool");
    writes_during_copy(&pair.src, 2).await;
    pair.destination.set_latency(Duration::ZERO);

    let m = start(cfg).await;
    wait_phase(&m.progress, Phase::ReadyForCutover).await;
    cutover_and_complete(m).await;
    assert_same(&pair.src, &pair.dst).await;
    assert!(spool_files(&dir).is_empty());
}

/// Pins: a full spool (`runtime.spool_max_bytes`) loses nothing. The operator sees it in
/// the status (`spool_full`, and `ferry status` says reading waits for the copy); the
/// changes past it are read from the source's oplog once the copy ends, and the
/// destination converges exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_waits_for_the_copy_and_loses_nothing() {
    let pair = Pair::start().await;
    let dir = spool_dir("full");
    seed(&pair.src, "app", 1000).await;
    let mut cfg = slow_copy_config(&pair, Some(&dir));
    cfg.runtime.spool_max_bytes = 2048;
    let m = start(cfg).await;
    wait_phase(&m.progress, Phase::Copying).await;
    writes_during_copy(&pair.src, 1).await;
    poll("the spool to fill", || {
        m.progress.spool_full.load(Ordering::Relaxed)
    })
    .await;
    assert_copying(&m);
    let view = ferry::api::StatusView::capture(&m.progress, ferry::checkpoint::unix_now());
    assert!(view.spool_full, "{view:?}");
    assert!(view.spooled_bytes >= 2048, "{view:?}");
    // More changes while the spool is full: they stay on the source until the copy ends.
    writes_during_copy(&pair.src, 2).await;
    assert_copying(&m);
    pair.destination.set_latency(Duration::ZERO);
    wait_phase(&m.progress, Phase::ReadyForCutover).await;
    assert!(
        !m.progress.spool_full.load(Ordering::Relaxed),
        "the spool is no longer full once the copy ended"
    );
    cutover_and_complete(m).await;
    assert_same(&pair.src, &pair.dst).await;
}
