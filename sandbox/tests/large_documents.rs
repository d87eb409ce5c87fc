//! Documents up to the 16 MiB BSON limit, the errors past it, change events over 16 MB
//! (10334 BSONObjectTooLarge) and `$changeStreamSplitLargeEvent` fragments and resume.

mod common;

use common::*;
use mongodb::bson::{doc, Bson, Document};

const LIMIT: usize = 16 * 1024 * 1024;

/// `{_id, pad}` of exactly `size` bytes.
fn doc_of_size(id: i32, size: usize) -> Document {
    let d = doc! {"_id": id, "pad": ""};
    let base = mongodb::bson::to_vec(&d).unwrap().len();
    let d = doc! {"_id": id, "pad": "p".repeat(size - base)};
    assert_eq!(mongodb::bson::to_vec(&d).unwrap().len(), size);
    d
}

/// A document of exactly 16 MiB is stored and read back byte for byte.
#[tokio::test]
async fn sixteen_mib_document_round_trips() {
    let sb = start();
    let client = client(&sb).await;
    let c = client.database("t").collection::<Document>("c");
    let d = doc_of_size(1, LIMIT);
    c.insert_one(d.clone()).await.unwrap();
    let back = c.find_one(doc! {"_id": 1}).await.unwrap().unwrap();
    assert_eq!(back, d);
}

/// One byte over: the insert fails with 2 BadValue "object to insert too large", and an
/// update that grows a document past 16 MiB fails with 17419; nothing is stored.
#[tokio::test]
async fn over_limit_documents_are_refused() {
    let sb = start();
    let client = client(&sb).await;
    let big = doc_of_size(1, LIMIT + 1);
    let reply = run(&client, "t", doc! {"insert": "c", "documents": [big]})
        .await
        .unwrap();
    let errors = reply.get_array("writeErrors").unwrap();
    let e = errors[0].as_document().unwrap();
    assert_eq!(e.get_i32("code"), Ok(2), "{e}");
    assert!(e
        .get_str("errmsg")
        .unwrap()
        .contains("object to insert too large"));
    let c = client.database("t").collection::<Document>("c");
    assert_eq!(c.count_documents(doc! {}).await.unwrap(), 0);
    c.insert_one(doc_of_size(2, LIMIT - 100)).await.unwrap();
    let err = c
        .update_one(doc! {"_id": 2}, doc! {"$set": {"more": "x".repeat(200)}})
        .await
        .unwrap_err();
    assert_eq!(code(&err), 17419, "{err:?}");
}

/// A 7 MB document with pre- and post-images, updated with a 3 MB field: the update's
/// event is about 20 MB.
async fn large_update_event(client: &mongodb::Client) -> mongodb::bson::Timestamp {
    let db = client.database("t");
    db.create_collection("big")
        .change_stream_pre_and_post_images(
            mongodb::options::ChangeStreamPreAndPostImages::builder()
                .enabled(true)
                .build(),
        )
        .await
        .unwrap();
    let c = db.collection::<Document>("big");
    c.insert_one(doc! {"_id": 1, "a": "a".repeat(7 * 1024 * 1024)})
        .await
        .unwrap();
    // A no-op after the insert: streams start there, at the update.
    let start = run(
        client,
        "admin",
        doc! {"appendOplogNote": 1, "data": {"mark": 1}},
    )
    .await
    .unwrap()
    .get_timestamp("operationTime")
    .unwrap();
    c.update_one(
        doc! {"_id": 1},
        doc! {"$set": {"b": "b".repeat(3 * 1024 * 1024)}},
    )
    .await
    .unwrap();
    c.insert_one(doc! {"_id": 2}).await.unwrap();
    start
}

fn stream_spec(start: Option<mongodb::bson::Timestamp>, resume: Option<Document>) -> Document {
    let mut spec = doc! {"fullDocument": "required", "fullDocumentBeforeChange": "required"};
    if let Some(ts) = start {
        spec.insert("startAtOperationTime", ts);
    }
    if let Some(token) = resume {
        spec.insert("resumeAfter", token);
    }
    spec
}

async fn first_batch(
    client: &mongodb::Client,
    pipeline: Vec<Document>,
) -> mongodb::error::Result<Vec<Document>> {
    let reply = run(
        client,
        "t",
        doc! {"aggregate": "big", "pipeline": pipeline, "cursor": {}},
    )
    .await?;
    Ok(reply
        .get_document("cursor")
        .unwrap()
        .get_array("firstBatch")
        .unwrap()
        .iter()
        .map(|e| e.as_document().unwrap().clone())
        .collect())
}

/// An event over 16 MB fails the stream with 10334 BSONObjectTooLarge.
#[tokio::test]
async fn over_limit_event_fails_the_stream() {
    let sb = start();
    let client = client(&sb).await;
    let start = large_update_event(&client).await;
    let err = first_batch(
        &client,
        vec![doc! {"$changeStream": stream_spec(Some(start), None)}],
    )
    .await
    .unwrap_err();
    assert_eq!(code(&err), 10334, "{err:?}");
}

/// With `$changeStreamSplitLargeEvent` last, the event comes as fragments under the limit,
/// each with `splitEvent: {fragment, of}`, together holding every field of the event;
/// resuming from a fragment's token continues with the next fragment, and from the last
/// fragment's token with the next event.
#[tokio::test]
async fn split_large_event_fragments_and_resume() {
    let sb = start();
    let client = client(&sb).await;
    let start = large_update_event(&client).await;
    let split = doc! {"$changeStreamSplitLargeEvent": {}};
    let batch = first_batch(
        &client,
        vec![
            doc! {"$changeStream": stream_spec(Some(start), None)},
            split.clone(),
        ],
    )
    .await
    .unwrap();
    let fragments: Vec<&Document> = batch
        .iter()
        .filter(|e| e.contains_key("splitEvent"))
        .collect();
    assert!(fragments.len() >= 2, "{} fragments", fragments.len());
    let of = fragments.len() as i32;
    let mut fields = Vec::new();
    for (i, f) in fragments.iter().enumerate() {
        let se = f.get_document("splitEvent").unwrap();
        assert_eq!(se.get_i32("fragment"), Ok(i as i32 + 1));
        assert_eq!(se.get_i32("of"), Ok(of));
        assert!(mongodb::bson::to_vec(f).unwrap().len() <= LIMIT + 16 * 1024);
        fields.extend(
            f.keys()
                .filter(|k| *k != "_id" && *k != "splitEvent")
                .cloned(),
        );
    }
    for wanted in [
        "operationType",
        "clusterTime",
        "ns",
        "documentKey",
        "updateDescription",
        "fullDocument",
        "fullDocumentBeforeChange",
    ] {
        assert_eq!(
            fields.iter().filter(|f| *f == wanted).count(),
            1,
            "{wanted}: {fields:?}"
        );
    }
    let full = fragments
        .iter()
        .find_map(|f| f.get_document("fullDocument").ok())
        .unwrap();
    assert_eq!(full.get_str("b").unwrap().len(), 3 * 1024 * 1024);

    // Resume after fragment 1: fragments 2.. of the same event.
    let token1 = fragments[0].get_document("_id").unwrap().clone();
    let rest = first_batch(
        &client,
        vec![
            doc! {"$changeStream": stream_spec(None, Some(token1))},
            split.clone(),
        ],
    )
    .await
    .unwrap();
    assert_eq!(
        rest[0]
            .get_document("splitEvent")
            .unwrap()
            .get_i32("fragment"),
        Ok(2)
    );
    // Resume after the last fragment: the next event (the insert of _id 2).
    let last = fragments[fragments.len() - 1]
        .get_document("_id")
        .unwrap()
        .clone();
    let next = first_batch(
        &client,
        vec![doc! {"$changeStream": stream_spec(None, Some(last))}, split],
    )
    .await
    .unwrap();
    assert_eq!(next[0].get_str("operationType"), Ok("insert"));
    assert_eq!(
        next[0].get_document("documentKey").unwrap().get("_id"),
        Some(&Bson::Int32(2))
    );
}
