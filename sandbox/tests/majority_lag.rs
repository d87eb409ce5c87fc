//! The `majorityLagMs` fault: the majority commit point trails the last write, as on a
//! replica set with a slow secondary. Majority reads and change streams see only
//! majority-committed writes, `w: "majority"` waits for the commit point, local reads see
//! everything, and `hello` / `replSetGetStatus` report both optimes.

mod common;

use std::time::Duration;

use common::*;
use mongodb::bson::{doc, Document, Timestamp};
use mongodb::options::{Acknowledgment, ReadConcern, WriteConcern};

fn ts_lt(a: Timestamp, b: Timestamp) -> bool {
    (a.time, a.increment) < (b.time, b.increment)
}

async fn optimes(client: &mongodb::Client) -> (Timestamp, Timestamp) {
    let hello = run(client, "admin", doc! {"hello": 1}).await.unwrap();
    let last = hello.get_document("lastWrite").unwrap();
    (
        last.get_document("opTime")
            .unwrap()
            .get_timestamp("ts")
            .unwrap(),
        last.get_document("majorityOpTime")
            .unwrap()
            .get_timestamp("ts")
            .unwrap(),
    )
}

/// A write is visible to local reads at once and to majority reads only once the commit
/// point passes it; hello and replSetGetStatus show the commit point trailing.
/// (Pins: majority reads saw every write at once, so a start time recorded with a
/// non-majority write could not be shown to be missed by majority reads.)
#[tokio::test]
async fn majority_reads_trail_local_reads() {
    let sb = start();
    let client = client(&sb).await;
    let c = client.database("t").collection::<Document>("c");
    c.insert_one(doc! {"_id": 0, "v": 0}).await.unwrap();
    run(
        &client,
        "admin",
        doc! {"sandboxFault": 1, "majorityLagMs": 60_000},
    )
    .await
    .unwrap();
    c.insert_one(doc! {"_id": 1})
        .write_concern(WriteConcern::builder().w(Acknowledgment::Nodes(1)).build())
        .await
        .unwrap();
    c.update_one(doc! {"_id": 0}, doc! {"$set": {"v": 1}})
        .write_concern(WriteConcern::builder().w(Acknowledgment::Nodes(1)).build())
        .await
        .unwrap();
    assert_eq!(c.count_documents(doc! {}).await.unwrap(), 2);
    let majority = client.database("t").collection_with_options::<Document>(
        "c",
        mongodb::options::CollectionOptions::builder()
            .read_concern(ReadConcern::majority())
            .build(),
    );
    let seen: Vec<Document> = {
        use futures_util::TryStreamExt;
        majority
            .find(doc! {})
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap()
    };
    assert_eq!(seen, vec![doc! {"_id": 0, "v": 0}]);
    let (op, maj) = optimes(&client).await;
    assert!(ts_lt(maj, op), "majority {maj:?} should trail {op:?}");
    let status = run(&client, "admin", doc! {"replSetGetStatus": 1})
        .await
        .unwrap();
    let times = status.get_document("optimes").unwrap();
    let committed = times
        .get_document("lastCommittedOpTime")
        .unwrap()
        .get_timestamp("ts")
        .unwrap();
    let applied = times
        .get_document("appliedOpTime")
        .unwrap()
        .get_timestamp("ts")
        .unwrap();
    assert!(ts_lt(committed, applied));
    // Lifting the fault makes everything majority-committed.
    sb.set_majority_lag(Duration::ZERO);
    let found = majority.find_one(doc! {"_id": 1}).await.unwrap();
    assert!(found.is_some());
    let (op, maj) = optimes(&client).await;
    assert_eq!(op, maj);
}

/// With `w: "majority"`, the write returns only once it is majority-committed: a majority
/// read right after it sees it.
#[tokio::test]
async fn majority_write_concern_waits_for_commit_point() {
    let sb = start();
    sb.set_majority_lag(Duration::from_millis(300));
    let client = client(&sb).await;
    let c = client.database("t").collection::<Document>("c");
    c.insert_one(doc! {"_id": 1})
        .write_concern(WriteConcern::majority())
        .await
        .unwrap();
    let majority = client.database("t").collection_with_options::<Document>(
        "c",
        mongodb::options::CollectionOptions::builder()
            .read_concern(ReadConcern::majority())
            .build(),
    );
    assert!(majority.find_one(doc! {"_id": 1}).await.unwrap().is_some());
}

/// A change stream delivers an event only once the commit point has passed it.
#[tokio::test]
async fn change_streams_see_only_majority_committed_events() {
    let sb = start();
    let client = client(&sb).await;
    let c = client.database("t").collection::<Document>("c");
    let mut stream = c.watch().await.unwrap().with_type::<Document>();
    sb.set_majority_lag(Duration::from_millis(400));
    c.insert_one(doc! {"_id": 1})
        .write_concern(WriteConcern::builder().w(Acknowledgment::Nodes(1)).build())
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let event = loop {
        if let Some(e) = stream.next_if_any().await.unwrap() {
            break e;
        }
        assert!(std::time::Instant::now() < deadline, "no event within 10 s");
    };
    let at = event.get_timestamp("clusterTime").unwrap();
    let (_, maj) = optimes(&client).await;
    assert!(
        !ts_lt(maj, at),
        "event at {at:?} delivered before majority {maj:?}"
    );
}
