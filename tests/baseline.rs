//! Baseline verification: once in sync, both sides are compared in the background and
//! the cutover reads again only what changed since — and still refuses a cutover when
//! the destination was changed behind Ferry's back.

mod common;

use bson::{doc, Document};
use common::*;
use ferry::control::ControlRequest;
use ferry::progress::{BaselineState, Phase, SharedProgress};

async fn wait_baseline_done(progress: &SharedProgress) {
    poll("the baseline verification to finish", || {
        let view = progress.baseline.read();
        assert_ne!(
            view.state,
            BaselineState::Failed,
            "baseline failed: {:?}",
            view.detail
        );
        view.state == BaselineState::Done
    })
    .await;
}

/// Changes made after the baseline are all the cutover reads again: 20 updated and 5
/// inserted documents (5 deleted ones are absent on both sides).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cutover_after_the_baseline_reads_only_what_changed() {
    let pair = Pair::start().await;
    let seeded = seed(&pair.src, "app", 3000).await;
    let m = start(pair.config("")).await;
    wait_phase(&m.progress, Phase::ReadyForCutover).await;
    wait_baseline_done(&m.progress).await;
    {
        let view = m.progress.baseline.read();
        assert_eq!(view.documents_compared, seeded);
        assert_eq!(view.chunks_differing, 0, "nothing was written: {view:?}");
    }
    let counters = pair.src.database("app").collection::<Document>("counters");
    for i in 0..20i64 {
        counters
            .update_one(doc! {"_id": i * 100}, doc! {"$inc": {"value": 1i64}})
            .await
            .expect("update");
    }
    for i in 0..5i64 {
        counters
            .insert_one(doc! {"_id": 10_000 + i, "value": i})
            .await
            .expect("insert");
        counters
            .delete_one(doc! {"_id": i * 100 + 1})
            .await
            .expect("delete");
    }
    let outcome = cutover_and_complete(m).await;
    let v = outcome.report.expect("report").verification;
    assert_eq!(v.namespaces_rechecked, 3, "{v:?}");
    assert_eq!(v.baseline_documents, seeded, "{v:?}");
    assert_eq!(v.documents_checked, 25, "{v:?}");
    assert_same(&pair.src, &pair.dst).await;
}

/// An application writing through the baseline and after it: the destination matches
/// exactly, and the cutover reads no more than the differing chunks and the changed
/// documents the baseline reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_during_the_baseline_converge() {
    let pair = Pair::start().await;
    let seeded = seed(&pair.src, "app", 3000).await;
    let m = start(pair.config("")).await;
    wait_phase(&m.progress, Phase::ReadyForCutover).await;
    let workload = Workload::start(pair.src.clone(), "app", 3000);
    workload.advance(50).await;
    wait_baseline_done(&m.progress).await;
    workload.advance(50).await;
    workload.stop().await;
    let progress = m.progress.clone();
    let outcome = cutover_and_complete(m).await;
    let v = outcome.report.expect("report").verification;
    let view = progress.baseline.read().clone();
    let changed = progress
        .baseline_changed
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(view.documents_compared >= seeded, "{view:?}");
    assert_eq!(v.namespaces_rechecked, 3, "{v:?}");
    assert!(
        v.documents_checked <= view.chunks_differing * 1000 + changed,
        "read {} documents again; the baseline reported {view:?} and {changed} changed",
        v.documents_checked
    );
    assert_same(&pair.src, &pair.dst).await;
}

/// A destination document changed by someone else after the baseline compared it is
/// caught by the destination's change stream: the cutover is refused and names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_write_after_the_baseline_refuses_cutover() {
    let pair = Pair::start().await;
    seed(&pair.src, "app", 1500).await;
    let m = start(pair.config("")).await;
    wait_phase(&m.progress, Phase::ReadyForCutover).await;
    wait_baseline_done(&m.progress).await;
    assert_eq!(m.progress.baseline.read().chunks_differing, 0);
    pair.dst
        .database("app")
        .collection::<Document>("counters")
        .update_one(doc! {"_id": 1200i64}, doc! {"$set": {"value": 99i64}})
        .await
        .expect("out-of-band write");
    let error = cutover_refused_by_verification(&m).await;
    assert!(error.contains("app.counters"), "{error}");
    assert!(
        error.contains("1200"),
        "the differing _id is named: {error}"
    );
    let reply = m.control.request(ControlRequest::Cancel).await;
    assert!(reply.is_ok(), "{reply:?}");
    assert_eq!(wait(m).await.phase, Phase::Cancelled);
}

/// A collection dropped on the source after the baseline sends its database back to a
/// full comparison; the cutover still completes and matches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drop_after_the_baseline_is_compared_in_full() {
    let pair = Pair::start().await;
    seed(&pair.src, "app", 1000).await;
    seed(&pair.src, "shop", 1000).await;
    let m = start(pair.config("")).await;
    wait_phase(&m.progress, Phase::ReadyForCutover).await;
    wait_baseline_done(&m.progress).await;
    pair.src
        .database("app")
        .collection::<Document>("events")
        .drop()
        .await
        .expect("drop");
    pair.src
        .database("shop")
        .collection::<Document>("counters")
        .insert_one(doc! {"_id": 5000i64, "value": 1i64})
        .await
        .expect("insert");
    let outcome = cutover_and_complete(m).await;
    let v = outcome.report.expect("report").verification;
    // shop's three collections from the baseline; app's two remaining ones in full.
    assert_eq!(v.namespaces_rechecked, 3, "{v:?}");
    assert!(v.documents_checked >= 2000, "app read in full: {v:?}");
    assert_same(&pair.src, &pair.dst).await;
}
