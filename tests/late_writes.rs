//! Late writes: source writes after the operator said writes stopped are counted, up to
//! the run's completion.

mod common;

use bson::{doc, Document};
use common::*;
use ferry::progress::Phase;

/// Pins: late writes were counted only while the tailer happened to read them before the
/// run completed; a write made after the drain to the cutover optime, while the cutover
/// verification ran, was lost from the count once completion stopped the tailer. Here
/// the source's change stream answers slowly (every getMore held 5 s: a cluster-wide
/// stream's getMore names `admin.$cmd.aggregate`, which failCommand matches) and the
/// verification is held 2 s: a write made meanwhile must still be counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_during_the_cutover_verification_counts_as_late() {
    let pair = Pair::start().await;
    let items = pair.src.database("app").collection::<Document>("items");
    items
        .insert_many((0..20).map(|i| doc! {"_id": i}))
        .await
        .expect("seed the source");
    let m = start(pair.config("[cutover]\nbaseline_verification = false\n")).await;
    wait_phase(&m.progress, Phase::ReadyForCutover).await;
    pair.src
        .database("admin")
        .run_command(doc! {
            "configureFailPoint": "failCommand",
            "mode": "alwaysOn",
            "data": {"failCommands": ["getMore"], "namespace": "admin.$cmd.aggregate", "blockConnection": true, "blockTimeMS": 5_000},
        })
        .await
        .expect("source fail point");
    pair.dst
        .database("admin")
        .run_command(doc! {
            "configureFailPoint": "failCommand",
            "mode": {"times": 1},
            "data": {"failCommands": ["aggregate", "find"], "namespace": "app.items", "blockConnection": true, "blockTimeMS": 2_000},
        })
        .await
        .expect("destination fail point");
    let reply = request_until_accepted(
        &m,
        ferry::control::ControlRequest::Cutover {
            writes_stopped: true,
        },
    )
    .await;
    assert!(reply.is_ok(), "cutover refused: {reply:?}");
    let dst = pair.dst.clone();
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let fired = dst
            .database("admin")
            .run_command(doc! {"configureFailPoint": "maxTimeAlwaysTimeOut", "mode": "off"})
            .await
            .expect("fail point count")
            .get_i64("count")
            .expect("count");
        if fired >= 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the verification never started"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // The drain is over and the verification is held: an application writes anyway.
    items
        .insert_one(doc! {"_id": "late"})
        .await
        .expect("late write");
    // With a deadline: a cutover refused by the late write would otherwise wait forever.
    wait_phase(&m.progress, Phase::Completed).await;
    let outcome = wait(m).await;
    assert_eq!(outcome.phase, Phase::Completed, "{:?}", outcome.error);
    let report = outcome.report.expect("a completed run has a report");
    assert_eq!(report.late_writes_detected, 1, "the late write is counted");
}
