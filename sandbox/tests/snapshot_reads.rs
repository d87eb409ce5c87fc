//! `readConcern: {level: "snapshot"}` outside a transaction: the first reply says which
//! cluster time the read ran at.

mod common;

use common::*;
use mongodb::bson::{doc, Document};

/// Pins: snapshot finds, aggregates and distincts answered without `atClusterTime`, so a
/// client could not read again at the same point (pymongo's snapshot-session raw-batch
/// tests failed with KeyError 'atClusterTime').
#[tokio::test]
async fn snapshot_reads_report_their_cluster_time() {
    let sb = start();
    let client = client(&sb).await;
    let inserted = run(
        &client,
        "t",
        doc! {"insert": "c", "documents": [{"_id": 1}]},
    )
    .await
    .unwrap();
    let written = inserted.get_timestamp("operationTime").unwrap();
    let snapshot = doc! {"readConcern": {"level": "snapshot"}};
    let mut find = doc! {"find": "c"};
    find.extend(snapshot.clone());
    let mut aggregate = doc! {"aggregate": "c", "pipeline": [], "cursor": {}};
    aggregate.extend(snapshot);
    for cmd in [find, aggregate] {
        let reply = run(&client, "t", cmd.clone()).await.unwrap();
        let cursor = reply.get_document("cursor").unwrap();
        let at = cursor.get_timestamp("atClusterTime").unwrap();
        assert!(
            (at.time, at.increment) >= (written.time, written.increment),
            "{cmd}: read at {at:?}, before the insert at {written:?}"
        );
        assert_eq!(cursor.get_array("firstBatch").unwrap().len(), 1);
    }
    // distinct, the first read of pymongo's snapshot sessions, reports it at the top.
    let reply = run(
        &client,
        "t",
        doc! {"distinct": "c", "key": "_id", "readConcern": {"level": "snapshot"}},
    )
    .await
    .unwrap();
    let at = reply.get_timestamp("atClusterTime").unwrap();
    assert!((at.time, at.increment) >= (written.time, written.increment));
    // Asked for a time, the reply names that time.
    let reply = run(
        &client,
        "t",
        doc! {"find": "c", "readConcern": {"level": "snapshot", "atClusterTime": written}},
    )
    .await
    .unwrap();
    assert_eq!(
        reply
            .get_document("cursor")
            .unwrap()
            .get_timestamp("atClusterTime"),
        Ok(written)
    );
    // Other read concerns report none.
    let reply: Document = run(
        &client,
        "t",
        doc! {"find": "c", "readConcern": {"level": "majority"}},
    )
    .await
    .unwrap();
    assert!(!reply
        .get_document("cursor")
        .unwrap()
        .contains_key("atClusterTime"));
}
