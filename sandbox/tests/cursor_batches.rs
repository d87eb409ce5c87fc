//! find and getMore batches are encoded straight from the stored documents: what a client
//! reads back must be the bytes it wrote, in replies laid out as the server lays them out.

mod common;

use common::*;
use futures_util::TryStreamExt;
use mongodb::bson::spec::BinarySubtype;
use mongodb::bson::{
    doc, oid::ObjectId, Binary, Bson, DateTime, Decimal128, Document, RawDocumentBuf, Regex,
    Timestamp,
};

fn stored(i: i32) -> Document {
    doc! {"_id": i, "s": format!("doc-{i}"), "o": ObjectId::from_bytes([i as u8; 12]),
    "b": Binary {subtype: BinarySubtype::Uuid, bytes: vec![i as u8; 16]},
    "old": Binary {subtype: BinarySubtype::BinaryOld, bytes: vec![1, 2, 3]},
    "d": Decimal128::from_bytes([i as u8; 16]), "re": Regex {pattern: "x".into(), options: "i".into()},
    "t": Timestamp {time: 1, increment: i as u32}, "at": DateTime::from_millis(i64::from(i)),
    "n": Bson::Null, "a": [1, {"x": [2.5, "y"]}, []], "min": Bson::MinKey}
}

fn keys(d: &Document) -> Vec<&str> {
    d.keys().map(String::as_str).collect()
}

#[tokio::test]
async fn find_and_get_more_return_the_stored_bytes() {
    let sb = start();
    let client = client(&sb).await;
    let db = client.database("t");
    let docs: Vec<Document> = (0..7).map(stored).collect();
    db.collection::<Document>("c")
        .insert_many(docs.clone())
        .await
        .expect("insert");

    let read: Vec<RawDocumentBuf> = db
        .collection::<RawDocumentBuf>("c")
        .find(doc! {})
        .batch_size(3)
        .await
        .expect("find")
        .try_collect()
        .await
        .expect("cursor");
    assert_eq!(read.len(), docs.len());
    for (raw, doc) in read.iter().zip(&docs) {
        assert_eq!(raw.as_bytes(), mongodb::bson::to_vec(doc).expect("encode"));
    }

    let first = db
        .run_command(doc! {"find": "c", "filter": {"_id": {"$gte": 2}}, "batchSize": 2})
        .await
        .expect("find");
    assert_eq!(
        keys(&first),
        ["cursor", "ok", "$clusterTime", "operationTime"]
    );
    let cursor = first.get_document("cursor").expect("cursor");
    assert_eq!(keys(cursor), ["firstBatch", "id", "ns"]);
    assert_eq!(cursor.get_str("ns").expect("ns"), "t.c");
    assert_eq!(
        cursor.get_array("firstBatch").expect("batch"),
        &vec![Bson::Document(stored(2)), Bson::Document(stored(3))]
    );
    let id = cursor.get_i64("id").expect("id");
    assert_ne!(id, 0);
    let more = db
        .run_command(doc! {"getMore": id, "collection": "c", "batchSize": 10})
        .await
        .expect("getMore");
    assert_eq!(
        keys(&more),
        ["cursor", "ok", "$clusterTime", "operationTime"]
    );
    let cursor = more.get_document("cursor").expect("cursor");
    assert_eq!(keys(cursor), ["nextBatch", "id", "ns"]);
    assert_eq!(cursor.get_i64("id").expect("id"), 0, "exhausted");
    let rest: Vec<Bson> = (4..7).map(|i| Bson::Document(stored(i))).collect();
    assert_eq!(cursor.get_array("nextBatch").expect("batch"), &rest);

    let single = db
        .run_command(doc! {"find": "c", "projection": {"s": 1}, "limit": -2})
        .await
        .expect("find");
    let cursor = single.get_document("cursor").expect("cursor");
    assert_eq!(cursor.get_i64("id").expect("id"), 0);
    assert_eq!(
        cursor.get_array("firstBatch").expect("batch"),
        &vec![
            Bson::Document(doc! {"_id": 0, "s": "doc-0"}),
            Bson::Document(doc! {"_id": 1, "s": "doc-1"})
        ]
    );
}
