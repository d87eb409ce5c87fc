//! The cutover keeps its promise to the source (issue 8, part 4): with
//! `cutover.enforce_write_block = true`, the source's write block is lifted in every
//! ending of a run — completed, refused, cancelled, failed, and crashed then restarted
//! then cancelled — and a plain client can write to the source afterwards. Also: a
//! refused cutover can be retried, and a completed run started again does nothing.

mod common;

use std::time::Duration;

use bson::{doc, Document};
use common::*;
use ferry::control::ControlRequest;
use ferry::progress::Phase;

const WRITE_BLOCK: &str = "[cutover]\nenforce_write_block = true\n";

/// Requests the cutover against a slow destination (so it stays in cutting_over for a
/// while) and waits until the source refuses writes.
async fn cutover_until_source_blocked(pair: &Pair, m: &ferry::run::Migration) {
    pair.destination.set_latency(Duration::from_millis(200));
    let reply = request_until_accepted(
        m,
        ControlRequest::Cutover {
            writes_stopped: true,
        },
    )
    .await;
    assert!(reply.is_ok(), "{reply:?}");
    wait_source_blocked(&pair.src).await;
    assert_eq!(m.progress.phase(), Phase::CuttingOver);
}

/// Pins: a cutover refused by verification, then retried once the difference is gone,
/// stayed in cutting_over for good with the source write-blocked (the tailer reported
/// "drained" once per run, never for the second attempt). Now the refusal gives the
/// source its writes back, and the second cutover completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_cutover_gives_writes_back_and_a_retry_completes() {
    let pair = Pair::start().await;
    seed(&pair.src, "app", 1000).await;
    let m = start(pair.config(WRITE_BLOCK)).await;
    wait_phase(&m.progress, Phase::ReadyForCutover).await;
    let planted = pair.dst.database("app").collection::<Document>("counters");
    planted
        .insert_one(doc! {"_id": "planted", "value": 1i64})
        .await
        .expect("plant a difference on the destination");
    let error = cutover_refused_by_verification(&m).await;
    assert!(error.contains("app.counters"), "{error}");
    assert_source_writable(&pair.src, "refused its cutover").await;
    // The refused comparison is served as such, not as a completion (it read
    // `ending: completed` before).
    let refused = m
        .progress
        .report
        .read()
        .clone()
        .expect("the refused comparison");
    assert_eq!(refused.ending, "cutover_refused");
    assert!(!refused.completed() && !refused.verification.passed);
    planted
        .delete_one(doc! {"_id": "planted"})
        .await
        .expect("remove the planted difference");
    cutover_and_complete(m).await;
    assert_same(&pair.src, &pair.dst).await;
    assert_source_writable(&pair.src, "completed after a refused cutover").await;
}

/// Pins: a completed run left the source write-blocked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completed_run_gives_the_source_its_writes_back() {
    let pair = Pair::start().await;
    seed(&pair.src, "app", 500).await;
    let m = start(pair.config(WRITE_BLOCK)).await;
    cutover_and_complete(m).await;
    assert_same(&pair.src, &pair.dst).await;
    assert_source_writable(&pair.src, "completed").await;
}

/// Cancel during a write-blocked cutover: the run ends cancelled and the source takes
/// writes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_cutover_gives_the_source_its_writes_back() {
    let pair = Pair::start().await;
    seed(&pair.src, "app", 500).await;
    let m = start(pair.config(WRITE_BLOCK)).await;
    wait_phase(&m.progress, Phase::ReadyForCutover).await;
    cutover_until_source_blocked(&pair, &m).await;
    let reply = m.control.request(ControlRequest::Cancel).await;
    assert!(reply.is_ok(), "{reply:?}");
    pair.destination.set_latency(Duration::ZERO);
    assert_eq!(wait(m).await.phase, Phase::Cancelled);
    assert_source_writable(&pair.src, "was cancelled during its cutover").await;
}

/// Pins: a cancel while the cutover handshake was still on its way (the destination slow
/// to record the block) lifted the write block before the handshake set it, so the
/// cancelled run left the source blocked. Block and unblock are now ordered, and a
/// block of an ended attempt is skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_during_the_handshake_gives_the_source_its_writes_back() {
    let pair = Pair::start().await;
    seed(&pair.src, "app", 300).await;
    let m = start(pair.config(WRITE_BLOCK)).await;
    wait_phase(&m.progress, Phase::ReadyForCutover).await;
    pair.destination.set_latency(Duration::from_millis(300));
    let reply = request_until_accepted(
        &m,
        ControlRequest::Cutover {
            writes_stopped: true,
        },
    )
    .await;
    assert!(reply.is_ok(), "{reply:?}");
    let reply = m.control.request(ControlRequest::Cancel).await;
    assert!(reply.is_ok(), "{reply:?}");
    assert_eq!(wait(m).await.phase, Phase::Cancelled);
    pair.destination.set_latency(Duration::ZERO);
    assert_source_writable(&pair.src, "was cancelled during its cutover handshake").await;
}

/// A run that fails during a write-blocked cutover (its destination lease is taken away)
/// gives the source its writes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_cutover_gives_the_source_its_writes_back() {
    let pair = Pair::start().await;
    seed(&pair.src, "app", 500).await;
    let m = start(pair.config_with_lease(3, WRITE_BLOCK)).await;
    wait_phase(&m.progress, Phase::ReadyForCutover).await;
    cutover_until_source_blocked(&pair, &m).await;
    pair.dst
        .database("__ferry")
        .collection::<Document>("lock")
        .delete_one(doc! {"_id": "lock"})
        .await
        .expect("take the lease away");
    poll("the run to end after losing its lease", || m.is_finished()).await;
    pair.destination.set_latency(Duration::ZERO);
    let outcome = wait(m).await;
    assert_eq!(outcome.phase, Phase::Failed, "{:?}", outcome.error);
    assert_source_writable(&pair.src, "failed during its cutover").await;
}

/// Pins: a `ferry run` killed (SIGKILL) during a write-blocked cutover left the source
/// blocked, and the run restarted (by another process: the dead one's lease is waited
/// for) and then cancelled must give the writes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_then_restarted_then_cancelled_gives_the_source_its_writes_back() {
    let pair = Pair::start().await;
    seed(&pair.src, "app", 500).await;
    let port = free_port();
    let path = config_file(
        &pair.source.uri(),
        &pair.destination.uri(),
        port,
        &format!("[runtime]\nidle_noop_interval_seconds = 1\ncheckpoint_interval_seconds = 1\nlease_seconds = 3\n{WRITE_BLOCK}"),
    );
    let mut child = spawn_ferry_run(&path);
    let api = ferry::api::client::ApiClient::new(&format!("http://127.0.0.1:{port}"))
        .expect("API client");
    wait_child_phase(&api, "ready_for_cutover").await;
    pair.destination.set_latency(Duration::from_millis(200));
    child_cutover(&api).await;
    wait_source_blocked(&pair.src).await;
    child.kill().expect("kill -9 the ferry run");
    child.wait().expect("reap the killed ferry run");
    pair.destination.set_latency(Duration::ZERO);
    assert!(
        !source_takes_writes(&pair.src, "app", "probes").await,
        "the crash should have left the source blocked"
    );
    // Another process (this test's) restarts the run: it waits for the dead holder's
    // lease to expire, then knows the source is blocked.
    let m = start(pair.config_with_lease(3, WRITE_BLOCK)).await;
    wait_phase(&m.progress, Phase::ReadyForCutover).await;
    let reply = m.control.request(ControlRequest::Cancel).await;
    assert!(reply.is_ok(), "{reply:?}");
    assert_eq!(wait(m).await.phase, Phase::Cancelled);
    assert_source_writable(&pair.src, "was restarted after a crash and cancelled").await;
    let _ = std::fs::remove_dir_all(path.parent().expect("config directory"));
}

/// Pins: a completed run started again took the lease (and left it held), stopped the
/// balancers and never restarted them. Now it reports completion and touches nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completed_run_started_again_does_nothing() {
    let pair = Pair::start().await;
    seed(&pair.src, "app", 300).await;
    let cfg = pair.config("");
    cutover_and_complete(start(cfg.clone()).await).await;
    let state_before = pair
        .dst
        .database("__ferry")
        .collection::<Document>("state")
        .find_one(doc! {"_id": "state"})
        .await
        .expect("read state");
    pair.src
        .database("app")
        .collection::<Document>("counters")
        .insert_one(doc! {"_id": "after-completion"})
        .await
        .expect("write to the source after completion");
    let outcome = wait(start(cfg).await).await;
    assert_eq!(outcome.phase, Phase::Completed);
    assert!(
        lock(&pair.dst).await.is_none(),
        "a completed run started again took the lease"
    );
    let state_after = pair
        .dst
        .database("__ferry")
        .collection::<Document>("state")
        .find_one(doc! {"_id": "state"})
        .await
        .expect("read state");
    assert_eq!(
        state_before, state_after,
        "the completed run's state changed"
    );
    let copied = pair
        .dst
        .database("app")
        .collection::<Document>("counters")
        .find_one(doc! {"_id": "after-completion"})
        .await
        .expect("read destination");
    assert!(copied.is_none(), "a completed run did work again");
}

/// A cancelled run has a report too: what was copied and synced before the ending, the
/// ending and its reason, no verification claimed; `ferry report` prints it from the
/// destination without a daemon. Before, only a completed run had a report ("no report
/// yet" for every other ending).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_run_reports_what_it_did_and_why_it_ended() {
    let pair = Pair::start().await;
    seed(&pair.src, "app", 300).await;
    let m = start(pair.config("")).await;
    wait_phase(&m.progress, Phase::ReadyForCutover).await;
    let reply = m.control.request(ControlRequest::Cancel).await;
    assert!(reply.is_ok(), "{reply:?}");
    let outcome = wait(m).await;
    assert_eq!(outcome.phase, Phase::Cancelled);
    let report = outcome.report.expect("a cancelled run has a report");
    assert_eq!(report.ending, "cancelled");
    assert!(report.reason.is_some(), "{report:?}");
    assert!(report.documents_copied >= 300, "{report:?}");
    assert!(!report.completed());
    let path = config_file(&pair.source.uri(), &pair.destination.uri(), free_port(), "");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(["report", "--config"])
            .arg(&path)
            .output()
            .expect("ferry report")
    })
    .await
    .expect("join");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("the migration cancelled"), "{text}");
    assert!(text.contains("verification:        not run"), "{text}");
}
