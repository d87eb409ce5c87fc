//! Reads of `local.oplog.rs` in natural order, as a preflight or tailer reads the newest
//! (or oldest) entry.

mod common;

use common::*;
use mongodb::bson::{doc, Document};

/// Pins: a `find` with `sort: {$natural: -1}` and a limit materialized and sorted the whole
/// oplog (seconds per preflight at 200k entries); it must read only as many entries as it
/// returns. Proven by the sandbox's count of oplog entries read, not by timing.
#[tokio::test]
async fn natural_order_reads_with_a_limit_read_only_what_they_return() {
    let sb = start();
    let client = client(&sb).await;
    let coll = client.database("t").collection::<Document>("c");
    let docs: Vec<Document> = (0..3000).map(|i| doc! {"_id": i}).collect();
    coll.insert_many(docs).await.unwrap();
    coll.insert_one(doc! {"_id": "last"}).await.unwrap();
    let oplog = client.database("local").collection::<Document>("oplog.rs");

    // The newest insert: entries after it can only be the idle primary's periodic no-ops,
    // so the read stops within a few entries of the end.
    let before = sb.oplog_entries_read();
    let newest = oplog
        .find_one(doc! {"op": "i"})
        .sort(doc! {"$natural": -1})
        .await
        .unwrap()
        .expect("newest insert");
    assert_eq!(
        newest.get_document("o").unwrap().get("_id"),
        Some(&mongodb::bson::Bson::String("last".into()))
    );
    assert!(sb.oplog_entries_read() - before < 10);

    let before = sb.oplog_entries_read();
    oplog
        .find_one(doc! {})
        .sort(doc! {"$natural": -1})
        .await
        .unwrap()
        .expect("newest entry");
    assert_eq!(sb.oplog_entries_read() - before, 1);

    let before = sb.oplog_entries_read();
    let newest_two: Vec<Document> = run(
        &client,
        "local",
        doc! {"find": "oplog.rs", "filter": {}, "sort": {"$natural": -1}, "limit": 2},
    )
    .await
    .unwrap()
    .get_document("cursor")
    .unwrap()
    .get_array("firstBatch")
    .unwrap()
    .iter()
    .filter_map(|d| d.as_document().cloned())
    .collect();
    assert_eq!(newest_two.len(), 2);
    assert!(
        newest_two[0].get_timestamp("ts").unwrap() > newest_two[1].get_timestamp("ts").unwrap()
    );
    assert_eq!(sb.oplog_entries_read() - before, 2);

    // The oldest entry in natural order.
    let before = sb.oplog_entries_read();
    let oldest = oplog
        .find_one(doc! {})
        .sort(doc! {"$natural": 1})
        .await
        .unwrap()
        .expect("oldest entry");
    assert!(oldest.get_timestamp("ts").unwrap() < newest.get_timestamp("ts").unwrap());
    assert_eq!(sb.oplog_entries_read() - before, 1);
}
