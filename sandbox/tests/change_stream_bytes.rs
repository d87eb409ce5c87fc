//! Change events are written straight from the oplog into a batch's bytes when a stream
//! has no `$match` and no later stages, and built as documents (then encoded) otherwise.
//! Both forms must be the same bytes: same fields, same order, same values.

mod common;

use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use mongodb::bson::spec::BinarySubtype;
use mongodb::bson::{
    doc, oid::ObjectId, Binary, Bson, DateTime, Decimal128, Document, RawDocumentBuf, Regex,
    Timestamp,
};
use mongodb::change_stream::ChangeStream;
use mongodb::options::{
    ChangeStreamOptions, FullDocumentBeforeChangeType, FullDocumentType, UpdateModifications,
};
use mongodb::{Client, Database};

/// Reads a stream to its end (the invalidate closes it), each event as raw bytes.
async fn read_to_end(mut stream: ChangeStream<RawDocumentBuf>) -> Vec<RawDocumentBuf> {
    let mut events = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.next()).await {
            Ok(Some(Ok(ev))) => events.push(ev),
            Ok(Some(Err(e))) => panic!("change stream: {e}"),
            Ok(None) => return events,
            Err(_) => panic!("stream did not end; {} events so far", events.len()),
        }
    }
}

/// Every kind of event: inserts of documents with many BSON types, updates with removed
/// fields, truncated arrays and disambiguated paths, a replacement, a delete, and DDL,
/// ending with dropDatabase (which invalidates a database stream).
async fn history(client: &Client) -> Timestamp {
    let db = client.database("t");
    let start = db
        .run_command(doc! {"ping": 1})
        .await
        .expect("ping")
        .get_timestamp("operationTime")
        .expect("operationTime");
    db.run_command(doc! {"create": "c", "changeStreamPreAndPostImages": {"enabled": true}})
        .await
        .expect("create");
    db.run_command(doc! {"createIndexes": "c", "indexes": [{"key": {"n": 1}, "name": "n_1"}]})
        .await
        .expect("createIndexes");
    let c = db.collection::<Document>("c");
    c.insert_many([
        doc! {"_id": 1, "tags": ["a", "b", "c"], "m": {"0": "x", "k": {"1": [1, 2]}}, "n": 1.5,
        "uuid": Binary {subtype: BinarySubtype::Uuid, bytes: vec![7; 16]},
        "old": Binary {subtype: BinarySubtype::BinaryOld, bytes: vec![1, 2]},
        "dec": Decimal128::from_bytes([3; 16]), "re": Regex {pattern: "^a".into(), options: "mi".into()},
        "ts": Timestamp {time: 5, increment: 6}, "at": DateTime::from_millis(1_700_000_000_000),
        "nothing": Bson::Null, "big": i64::MAX, "min": Bson::MinKey, "max": Bson::MaxKey},
        doc! {"_id": ObjectId::from_bytes([1; 12]), "s": "héllo", "nested": [[1], {"a": []}]},
    ])
    .await
    .expect("insert");
    for update in [
        UpdateModifications::Document(doc! {"$push": {"tags": "d"}}),
        UpdateModifications::Document(doc! {"$set": {"m.0": "y", "m.k.1": "z"}}),
        // A pipeline update that shortens an array: the event has truncatedArrays.
        UpdateModifications::Pipeline(vec![doc! {"$set": {"tags": ["a", "b", "c"]}}]),
        UpdateModifications::Document(doc! {"$set": {"tags": ["a"]}}),
        UpdateModifications::Document(doc! {"$unset": {"n": ""}, "$inc": {"big": -1i64}}),
    ] {
        c.update_one(doc! {"_id": 1}, update).await.expect("update");
    }
    c.replace_one(
        doc! {"_id": ObjectId::from_bytes([1; 12])},
        doc! {"replaced": true},
    )
    .await
    .expect("replace");
    c.delete_one(doc! {"_id": 1}).await.expect("delete");
    let d = db.collection::<Document>("d");
    d.insert_one(doc! {"_id": "k", "v": 1})
        .await
        .expect("insert d");
    d.update_one(doc! {"_id": "k"}, doc! {"$set": {"v": 2}})
        .await
        .expect("update d");
    db.run_command(doc! {"collMod": "c", "validator": {}})
        .await
        .expect("collMod");
    db.run_command(doc! {"dropIndexes": "c", "index": "n_1"})
        .await
        .expect("dropIndexes");
    client
        .database("admin")
        .run_command(doc! {"renameCollection": "t.c", "to": "t.e"})
        .await
        .expect("rename");
    d.drop().await.expect("drop");
    db.drop().await.expect("dropDatabase");
    start
}

/// Opens the same stream twice, without and with a `$match` that matches everything.
async fn both_forms(
    db: &Database,
    coll: Option<&str>,
    start: Timestamp,
    expanded: bool,
    full_document: Option<FullDocumentType>,
    before: Option<FullDocumentBeforeChangeType>,
) -> (Vec<RawDocumentBuf>, Vec<RawDocumentBuf>) {
    let mut out = Vec::new();
    let mut options = ChangeStreamOptions::default();
    options.show_expanded_events = Some(expanded);
    options.start_at_operation_time = Some(start);
    options.full_document = full_document;
    options.full_document_before_change = before;
    for pipeline in [vec![], vec![doc! {"$match": {}}]] {
        let stream = match coll {
            Some(coll) => {
                db.collection::<Document>(coll)
                    .watch()
                    .pipeline(pipeline)
                    .with_options(options.clone())
                    .await
            }
            None => {
                db.watch()
                    .pipeline(pipeline)
                    .with_options(options.clone())
                    .await
            }
        };
        let stream = stream.expect("watch").with_type::<RawDocumentBuf>();
        out.push(read_to_end(stream).await);
    }
    let filtered = out.pop().unwrap_or_default();
    let direct = out.pop().unwrap_or_default();
    (direct, filtered)
}

fn operation_types(events: &[RawDocumentBuf]) -> Vec<String> {
    events
        .iter()
        .map(|e| {
            e.get_str("operationType")
                .expect("operationType")
                .to_string()
        })
        .collect()
}

#[tokio::test]
async fn events_written_directly_equal_events_built_as_documents() {
    let sb = start();
    let client = client(&sb).await;
    let start = history(&client).await;
    let db = client.database("t");
    let variants = [
        (None, true, None, None),
        (
            None,
            true,
            Some(FullDocumentType::UpdateLookup),
            Some(FullDocumentBeforeChangeType::WhenAvailable),
        ),
        (
            None,
            false,
            Some(FullDocumentType::WhenAvailable),
            Some(FullDocumentBeforeChangeType::Off),
        ),
        (Some("d"), true, Some(FullDocumentType::WhenAvailable), None),
    ];
    for (coll, expanded, full_document, before) in variants {
        let label = format!("{coll:?} expanded={expanded} {full_document:?} {before:?}");
        let (direct, filtered) =
            both_forms(&db, coll, start, expanded, full_document, before).await;
        assert_eq!(direct.len(), filtered.len(), "{label}");
        for (a, b) in direct.iter().zip(&filtered) {
            assert_eq!(a.as_bytes(), b.as_bytes(), "{label}: {a:?} vs {b:?}");
        }
        let kinds = operation_types(&direct);
        let expected: &[&str] = match (coll, expanded) {
            (None, true) => &[
                "create",
                "createIndexes",
                "insert",
                "insert",
                "update",
                "update",
                "update",
                "update",
                "update",
                "replace",
                "delete",
                "create",
                "insert",
                "update",
                "modify",
                "dropIndexes",
                "rename",
                "drop",
                "drop",
                "dropDatabase",
                "invalidate",
            ],
            (None, false) => &[
                "insert",
                "insert",
                "update",
                "update",
                "update",
                "update",
                "update",
                "replace",
                "delete",
                "insert",
                "update",
                "rename",
                "drop",
                "drop",
                "dropDatabase",
                "invalidate",
            ],
            _ => &["create", "insert", "update", "drop", "invalidate"],
        };
        assert_eq!(kinds, expected, "{label}");
    }
}

#[tokio::test]
async fn direct_events_carry_truncated_arrays_and_disambiguated_paths() {
    let sb = start();
    let client = client(&sb).await;
    let start = history(&client).await;
    let (direct, _) = both_forms(
        &client.database("t"),
        None,
        start,
        true,
        Some(FullDocumentType::UpdateLookup),
        Some(FullDocumentBeforeChangeType::WhenAvailable),
    )
    .await;
    let updates: Vec<Document> = direct
        .iter()
        .filter(|e| e.get_str("operationType").ok() == Some("update"))
        .map(|e| Document::try_from(e.as_ref()).expect("event decodes"))
        .collect();
    let desc = |i: usize| {
        updates[i]
            .get_document("updateDescription")
            .expect("updateDescription")
    };
    assert_eq!(
        desc(0).get_document("disambiguatedPaths").expect("paths"),
        &doc! {"tags.3": ["tags", 3]}
    );
    assert_eq!(
        desc(1).get_document("disambiguatedPaths").expect("paths"),
        &doc! {"m.0": ["m", "0"], "m.k.1": ["m", "k", "1"]}
    );
    assert_eq!(
        desc(2).get_array("truncatedArrays").expect("truncated"),
        &vec![Bson::Document(doc! {"field": "tags", "newSize": 3})]
    );
    assert_eq!(
        desc(4).get_array("removedFields").expect("removed"),
        &vec![Bson::String("n".into())]
    );
    assert!(updates[4].get_document("fullDocumentBeforeChange").is_ok());
}

#[tokio::test]
async fn encoded_batches_keep_the_reply_layout() {
    let sb = start();
    let client = client(&sb).await;
    let db = client.database("t");
    let first = db
        .run_command(doc! {"aggregate": "c", "pipeline": [{"$changeStream": {}}], "cursor": {}})
        .await
        .expect("aggregate");
    let keys: Vec<&str> = first.keys().map(String::as_str).collect();
    assert_eq!(keys, ["cursor", "ok", "$clusterTime", "operationTime"]);
    let cursor = first.get_document("cursor").expect("cursor");
    let keys: Vec<&str> = cursor.keys().map(String::as_str).collect();
    assert_eq!(keys, ["firstBatch", "postBatchResumeToken", "id", "ns"]);
    let id = cursor.get_i64("id").expect("id");
    db.collection::<Document>("c")
        .insert_one(doc! {"_id": 1})
        .await
        .expect("insert");
    let more = db
        .run_command(doc! {"getMore": id, "collection": "c", "maxTimeMS": 1000})
        .await
        .expect("getMore");
    let keys: Vec<&str> = more.keys().map(String::as_str).collect();
    assert_eq!(keys, ["cursor", "ok", "$clusterTime", "operationTime"]);
    let cursor = more.get_document("cursor").expect("cursor");
    let keys: Vec<&str> = cursor.keys().map(String::as_str).collect();
    assert_eq!(keys, ["nextBatch", "postBatchResumeToken", "id", "ns"]);
    let batch = cursor.get_array("nextBatch").expect("nextBatch");
    assert_eq!(batch.len(), 1);
    let event = batch[0].as_document().expect("event");
    assert_eq!(
        event.get_document("fullDocument").expect("doc"),
        &doc! {"_id": 1}
    );
    assert_eq!(
        cursor.get_document("postBatchResumeToken").expect("token"),
        event.get_document("_id").expect("_id")
    );
}

/// A stream whose only stage includes some top-level fields (what a reader that only
/// needs each event's kind and key asks for) is written directly too, and equals the
/// same projection applied to events built as documents.
#[tokio::test]
async fn projected_events_written_directly_equal_projected_documents() {
    let sb = start();
    let client = client(&sb).await;
    let start = history(&client).await;
    let project = doc! {"$project": {"operationType": 1, "ns": 1, "documentKey": 1, "clusterTime": true, "updateDescription": 1}};
    let mut options = ChangeStreamOptions::default();
    options.show_expanded_events = Some(true);
    options.start_at_operation_time = Some(start);
    let mut out = Vec::new();
    for pipeline in [
        vec![project.clone()],
        vec![doc! {"$match": {}}, project.clone()],
    ] {
        let stream = client
            .watch()
            .pipeline(pipeline)
            .with_options(options.clone())
            .await
            .expect("watch")
            .with_type::<RawDocumentBuf>();
        let mut events = Vec::new();
        let mut stream = stream;
        // A cluster-wide stream is not invalidated by dropDatabase: read up to it.
        while let Ok(Some(Ok(ev))) =
            tokio::time::timeout(Duration::from_secs(10), stream.next()).await
        {
            let last = ev.get_str("operationType").ok() == Some("dropDatabase");
            events.push(ev);
            if last {
                break;
            }
        }
        out.push(events);
    }
    let (direct, built) = (&out[0], &out[1]);
    assert!(direct.len() > 10, "{} events", direct.len());
    assert_eq!(direct.len(), built.len());
    for (a, b) in direct.iter().zip(built) {
        assert_eq!(a.as_bytes(), b.as_bytes(), "{a:?} vs {b:?}");
        assert!(a.get("fullDocument").ok().flatten().is_none(), "{a:?}");
    }
}
