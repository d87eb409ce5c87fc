//! A restart after a failure never overlaps the destination writes of the attempt it
//! replaces: a write the failed attempt had already sent lands before the new attempt's
//! writes, or not at all (see `src/actors/generation.rs`).

mod common;

use std::sync::atomic::Ordering;

use bson::{doc, Document};
use common::*;
use ferry::progress::Phase;
use futures_util::TryStreamExt;
use mongodb::Client;

/// How many commands the fail points of `client` have acted on so far (read through a
/// fail point that is left off, so the configured one is not disturbed).
async fn fail_points_fired(client: &Client) -> i64 {
    client
        .database("admin")
        .run_command(doc! {"configureFailPoint": "maxTimeAlwaysTimeOut", "mode": "off"})
        .await
        .expect("fail point count")
        .get_i64("count")
        .expect("the reply counts the commands the fail points acted on")
}

/// The destination's oplog entries of `op` (`"i"`, `"d"`) on `app.items` for `_id: id`.
async fn oplog_entries(dst: &Client, op: &str, id: i32) -> Vec<Document> {
    dst.database("local")
        .collection::<Document>("oplog.rs")
        .find(doc! {"ns": "app.items", "op": op})
        .await
        .expect("read the destination's oplog")
        .try_collect::<Vec<Document>>()
        .await
        .expect("read the destination's oplog")
        .into_iter()
        .filter(|e| {
            e.get_document("o")
                .ok()
                .and_then(|o| o.get("_id"))
                .is_some_and(|v| v == &bson::Bson::Int32(id))
        })
        .collect()
}

/// Pins: a copy insert already sent when its attempt failed landed on the destination
/// after the supervisor had restarted the workers. The restart copied again without the
/// document (deleted on the source meanwhile) and applied its delete; then the held insert
/// of the old attempt brought the deleted document back, and the cutover was refused for
/// good. Here the first copy insert is held 10 s on the destination, the copy's next read
/// fails on the source meanwhile, and a document of the held batch is deleted on the
/// source: it must be absent at the end, and the held insert must precede the delete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_insert_of_a_failed_attempt_never_lands_after_the_restart() {
    let pair = Pair::start().await;
    let items = pair.src.database("app").collection::<Document>("items");
    items
        .insert_many((0..100).map(|i| doc! {"_id": i, "v": "first"}))
        .await
        .expect("seed the source");
    // The first copy insert into app.items is held, then carried out.
    pair.dst
        .database("admin")
        .run_command(doc! {
            "configureFailPoint": "failCommand",
            "mode": {"times": 1},
            "data": {"failCommands": ["insert"], "namespace": "app.items", "blockConnection": true, "blockTimeMS": 10_000},
        })
        .await
        .expect("destination fail point");
    // The copy's second read fails (91 ShutdownInProgress, transient): its attempt fails
    // while its first insert is held.
    pair.src
        .database("admin")
        .run_command(doc! {
            "configureFailPoint": "failCommand",
            "mode": {"times": 1},
            "data": {"failCommands": ["getMore"], "namespace": "app.items", "errorCode": 91},
        })
        .await
        .expect("source fail point");
    // One range, so the held insert is the range's first batch (documents 0 to 9): with
    // several ranges copied at once, another range's insert could be the held one, and
    // the attempt could fail before the range holding document 5 had read anything.
    let m = start(
        pair.config("[copy]\nbatch_max_documents = 10\nparallel_ranges_per_collection = 1\n"),
    )
    .await;
    let dst = pair.dst.clone();
    poll_async("the first copy insert to be held", || {
        let dst = dst.clone();
        async move { fail_points_fired(&dst).await >= 1 }
    })
    .await;
    // Document 5 is in the held batch; it goes before the restart copies again.
    items
        .delete_one(doc! {"_id": 5})
        .await
        .expect("delete on the source");
    let progress = m.progress.clone();
    poll("the copy attempt to fail and be retried", || {
        progress.retries.load(Ordering::Relaxed) >= 1
    })
    .await;
    assert_eq!(
        fail_points_fired(&pair.src).await,
        1,
        "the source fault fired"
    );
    poll_async("the held insert to land", || {
        let dst = dst.clone();
        async move { !oplog_entries(&dst, "i", 5).await.is_empty() }
    })
    .await;
    wait_phase(&m.progress, Phase::ReadyForCutover).await;
    cutover_and_complete(m).await;
    assert_eq!(assert_same(&pair.src, &pair.dst).await, 99);
    // The held insert came first, the restart's delete after it.
    let inserted = oplog_entries(&pair.dst, "i", 5).await;
    let deleted = oplog_entries(&pair.dst, "d", 5).await;
    assert_eq!(
        inserted.len(),
        1,
        "document 5 was inserted once: {inserted:?}"
    );
    assert_eq!(deleted.len(), 1, "document 5 was deleted once: {deleted:?}");
    let ts = |e: &Document| e.get_timestamp("ts").expect("oplog entries have ts");
    let (i, d) = (ts(&inserted[0]), ts(&deleted[0]));
    assert!(
        (i.time, i.increment) < (d.time, d.increment),
        "the old attempt's insert landed after the restart's delete"
    );
}

/// Polls an async condition every 50 ms until it holds; panics with `what` after the
/// suite's deadline.
async fn poll_async<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + DEADLINE;
    while !cond().await {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Pins: the copier's inserts were retried by the driver (retryable writes), invisibly:
/// a transient insert failure on the destination left the `retries` counter at 0, so a
/// fault test could not tell that its fault fired and was recovered from. Now Ferry sends
/// the batch again itself and counts it, as GET /api/v1/progress shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_copy_insert_failure_is_counted_as_a_retry() {
    let pair = Pair::start().await;
    let items = pair.src.database("app").collection::<Document>("items");
    items
        .insert_many((0..50).map(|i| doc! {"_id": i}))
        .await
        .expect("seed the source");
    // One copy insert fails as on a primary shutting down, labelled retryable.
    pair.dst
        .database("admin")
        .run_command(doc! {
            "configureFailPoint": "failCommand",
            "mode": {"times": 1},
            "data": {"failCommands": ["insert"], "namespace": "app.items", "errorCode": 91, "errorLabels": ["RetryableWriteError"]},
        })
        .await
        .expect("destination fail point");
    let m = start_with(pair.config(""), true).await;
    wait_phase(&m.progress, Phase::ReadyForCutover).await;
    assert_eq!(fail_points_fired(&pair.dst).await, 1, "the fault fired");
    let api = ferry::api::client::ApiClient::new(&format!(
        "http://{}",
        m.api_addr().expect("the API listens")
    ))
    .expect("api client");
    let view: serde_json::Value = api.get_json("/api/v1/progress").await.expect("progress");
    let retries = view
        .get("retries")
        .and_then(serde_json::Value::as_u64)
        .expect("the progress shows retries");
    assert!(retries >= 1, "the resent insert is counted: {view}");
    cutover_and_complete(m).await;
    assert_eq!(assert_same(&pair.src, &pair.dst).await, 50);
}
