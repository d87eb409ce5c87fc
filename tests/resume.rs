//! Resume after a crash of the migration host, proven by what the destination and the
//! source hold rather than by Ferry's own checkpoints: a restarted run neither copies a
//! finished range again nor needs change history older than its sync checkpoint.

mod common;

use std::time::Duration;

use bson::{doc, Bson, Document, Timestamp};
use common::*;
use ferry::control::ControlRequest;
use ferry::progress::Phase;
use futures_util::TryStreamExt;
use mongodb::Client;

/// A finished copy range: its namespace and `_id` bounds (None: unbounded).
struct FinishedRange {
    ns: String,
    min: Option<Bson>,
    max: Option<Bson>,
}

/// The finished ranges that hold documents, from `__ferry.ranges`.
async fn finished_ranges(dst: &Client) -> Vec<FinishedRange> {
    let docs: Vec<Document> = dst
        .database("__ferry")
        .collection::<Document>("ranges")
        .find(doc! {"done": true})
        .await
        .expect("read the ranges")
        .try_collect()
        .await
        .expect("read the ranges");
    docs.into_iter()
        .filter(|d| match d.get("documents") {
            Some(Bson::Int64(n)) => *n > 0,
            Some(Bson::Int32(n)) => *n > 0,
            Some(Bson::Double(n)) => *n > 0.0,
            _ => false,
        })
        .map(|d| FinishedRange {
            ns: d.get_str("ns").unwrap_or_default().to_string(),
            min: d.get("min").filter(|b| **b != Bson::Null).cloned(),
            max: d.get("max").filter(|b| **b != Bson::Null).cloned(),
        })
        .collect()
}

/// One destination document inside a finished range: (db, coll, the document). Any
/// document a bounded `_id` query matches lies inside the range.
async fn document_of_a_finished_range(dst: &Client) -> (String, String, Document) {
    for range in finished_ranges(dst).await {
        let Some((db, coll)) = range.ns.split_once('.') else {
            continue;
        };
        let mut bounds = Document::new();
        if let Some(min) = &range.min {
            bounds.insert("$gte", min.clone());
        }
        if let Some(max) = &range.max {
            bounds.insert("$lt", max.clone());
        }
        let filter = if bounds.is_empty() {
            doc! {}
        } else {
            doc! {"_id": bounds}
        };
        let found = dst
            .database(db)
            .collection::<Document>(coll)
            .find_one(filter)
            .await
            .expect("read the destination");
        if let Some(document) = found {
            return (db.to_string(), coll.to_string(), document);
        }
    }
    panic!("no finished copy range holds a document on the destination");
}

/// Pins: a restart never copies a finished range again (correctness rule 3), shown by
/// the destination itself. A document of a finished range, deleted on the destination
/// while Ferry is down, is still missing when the restarted run reaches
/// ready_for_cutover (a run that recopied finished ranges would bring it back). The
/// cutover's verification then refuses, naming the namespace and the document.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_range_is_not_copied_again_after_a_crash() {
    let pair = Pair::start().await;
    seed(&pair.src, "app", 4000).await;
    let cfg = pair.config(
        "[copy]\nbatch_max_documents = 500\nparallel_collections = 1\nparallel_ranges_per_collection = 1\n",
    );
    // A slow destination keeps the copy in progress long enough to interrupt it.
    pair.destination.set_latency(Duration::from_millis(20));
    let m = start(cfg.clone()).await;
    // Wait for a finished range on the destination, then crash mid-copy.
    let deadline = std::time::Instant::now() + DEADLINE;
    while finished_ranges(&pair.dst).await.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "no copy range finished"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        m.progress.phase(),
        Phase::Copying,
        "the copy ended before the test could interrupt it"
    );
    abort(m).await;
    pair.destination.set_latency(Duration::ZERO);

    let (db, coll, victim) = document_of_a_finished_range(&pair.dst).await;
    let id = victim.get("_id").cloned().expect("the document has an _id");
    let deleted = pair
        .dst
        .database(&db)
        .collection::<Document>(&coll)
        .delete_one(doc! {"_id": id.clone()})
        .await
        .expect("delete on the destination");
    assert_eq!(deleted.deleted_count, 1);

    let m = start(cfg).await;
    wait_phase(&m.progress, Phase::ReadyForCutover).await;
    let back = pair
        .dst
        .database(&db)
        .collection::<Document>(&coll)
        .find_one(doc! {"_id": id.clone()})
        .await
        .expect("read the destination");
    assert!(
        back.is_none(),
        "{db}.{coll} _id {id} came back: the finished range was copied again"
    );
    let error = cutover_refused_by_verification(&m).await;
    assert!(error.contains(&format!("{db}.{coll}")), "{error}");
    let shown = match &id {
        Bson::Int64(n) => n.to_string(),
        Bson::Int32(n) => n.to_string(),
        other => other.to_string(),
    };
    assert!(
        error.contains(&shown),
        "the missing _id {shown} is named: {error}"
    );
    let reply = m.control.request(ControlRequest::Cancel).await;
    assert!(reply.is_ok(), "{reply:?}");
    assert_eq!(wait(m).await.phase, Phase::Cancelled);
}

/// The cluster time of the sync checkpoint (`applied_ts` in `__ferry.state`).
async fn sync_checkpoint(dst: &Client) -> Option<Timestamp> {
    let state = dst
        .database("__ferry")
        .collection::<Document>("state")
        .find_one(doc! {"_id": "state"})
        .await
        .expect("read the run state")
        .expect("the run state exists");
    state.get_timestamp("applied_ts").ok()
}

/// Pins: a restarted run needs no change history before its sync checkpoint (it resumes
/// after the checkpoint, not from the start time or an older position). After a crash
/// while syncing under writes, more writes while Ferry is down, and the source's oplog
/// truncated to the entries after the checkpoint (older history is gone, as on a source
/// whose oplog rolled over), the run still resumes, and the destination converges
/// exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_needs_no_history_before_its_sync_checkpoint() {
    let pair = Pair::start().await;
    seed(&pair.src, "app", 1500).await;
    let load = Workload::start(pair.src.clone(), "app", 1500);
    let cfg = pair.config("");
    let m = start(cfg.clone()).await;
    wait_phase(&m.progress, Phase::ReadyForCutover).await;
    let before = applied(&m.progress);
    poll("events to be applied while syncing", || {
        applied(&m.progress) > before + 200
    })
    .await;
    // A checkpoint past the start time, then a crash.
    let start_ts = {
        let state = pair
            .dst
            .database("__ferry")
            .collection::<Document>("state")
            .find_one(doc! {"_id": "state"})
            .await
            .expect("state")
            .expect("state exists");
        state.get_timestamp("start_ts").expect("start time")
    };
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        if let Some(c) = sync_checkpoint(&pair.dst).await {
            if (c.time, c.increment) > (start_ts.time, start_ts.increment) {
                break;
            }
        }
        assert!(std::time::Instant::now() < deadline, "no sync checkpoint");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    abort(m).await;
    load.advance(100).await;
    load.stop().await;

    let checkpoint = sync_checkpoint(&pair.dst)
        .await
        .expect("the sync checkpoint survives the crash");
    let keep = {
        let storage = pair.source.server().storage.lock();
        storage.oplog.entries.len() - storage.oplog.position_after(checkpoint)
    };
    assert!(keep > 0, "writes happened after the checkpoint");
    pair.source.truncate_oplog(keep);

    let m = start(cfg).await;
    wait_phase(&m.progress, Phase::ReadyForCutover).await;
    cutover_and_complete(m).await;
    assert_same(&pair.src, &pair.dst).await;
}
