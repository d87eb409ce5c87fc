//! Pipeline-style updates (`u` as an array of `$set`/`$addFields`, `$unset`, `$project`,
//! `$replaceWith`/`$replaceRoot` stages) in update and findAndModify, and how a real server
//! records them: a delta computed by comparing the documents (a moved field is
//! re-inserted, a shortened array is truncated), or the whole document, as a `replace`
//! event, when the delta would not be smaller.

mod common;

use std::time::Duration;

use common::*;
use mongodb::bson::{doc, Bson, Document};
use mongodb::change_stream::event::ChangeStreamEvent;
use mongodb::change_stream::ChangeStream;
use mongodb::options::ReturnDocument;
use mongodb::Collection;

async fn next_event(stream: &mut ChangeStream<ChangeStreamEvent<Document>>) -> Document {
    let ev = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(e) = stream.next_if_any().await.expect("stream") {
                return e;
            }
        }
    })
    .await
    .expect("event within deadline");
    mongodb::bson::to_document(&ev).expect("event encodes")
}

async fn stored(coll: &Collection<Document>, id: i32) -> Document {
    coll.find_one(doc! {"_id": id})
        .await
        .expect("find")
        .expect("document exists")
}

fn keys(d: &Document) -> Vec<&str> {
    d.keys().map(String::as_str).collect()
}

/// A field long enough that deltas of small changes are smaller than the document.
fn padding() -> String {
    "p".repeat(300)
}

#[tokio::test]
async fn pipeline_stages_in_update_and_find_and_modify() {
    let sb = start();
    let client = client(&sb).await;
    let coll = client.database("t").collection::<Document>("c");
    coll.insert_one(doc! {"_id": 1, "a": 2, "b": 3, "o": {"x": 1}})
        .await
        .unwrap();
    coll.update_one(
        doc! {"_id": 1},
        vec![
            doc! {"$set": {"c": {"$add": ["$a", "$b"]}}},
            doc! {"$addFields": {"o": {"$mergeObjects": ["$o", {"y": 2}]}}},
            doc! {"$unset": "a"},
        ],
    )
    .await
    .unwrap();
    assert_eq!(
        stored(&coll, 1).await,
        doc! {"_id": 1, "b": 3, "o": {"x": 1, "y": 2}, "c": 5}
    );
    coll.update_one(doc! {"_id": 1}, vec![doc! {"$project": {"b": 1, "c": 1}}])
        .await
        .unwrap();
    assert_eq!(stored(&coll, 1).await, doc! {"_id": 1, "b": 3, "c": 5});
    let after = coll
        .find_one_and_update(
            doc! {"_id": 1},
            vec![doc! {"$replaceRoot": {"newRoot": {"$mergeObjects": [{"z": 0}, "$$ROOT"]}}}],
        )
        .return_document(ReturnDocument::After)
        .await
        .unwrap()
        .expect("document");
    assert_eq!(keys(&after), ["_id", "z", "b", "c"]);
    // $getField/$setField reach field names with dots and dollars.
    coll.update_one(
        doc! {"_id": 1},
        vec![doc! {"$replaceWith": {"$setField": {
            "field": {"$literal": "$price"},
            "input": "$$ROOT",
            "value": {"$getField": "b"},
        }}}],
    )
    .await
    .unwrap();
    assert_eq!(stored(&coll, 1).await.get_i32("$price"), Ok(3));
    // A stage outside the allowed set is refused.
    expect_code(
        coll.update_one(doc! {"_id": 1}, vec![doc! {"$match": {}}])
            .await,
        72,
    )
    .await;
}

/// Guards what Ferry relies on to write documents with `$`-prefixed top-level fields
/// (legal since 5.0): `$replaceWith: {$literal: <document>}` stores them as given, while a
/// replacement document cannot carry them. (This already worked before this change.)
#[tokio::test]
async fn replace_with_literal_writes_dollar_prefixed_fields() {
    let sb = start();
    let client = client(&sb).await;
    let coll = client.database("t").collection::<Document>("c");
    coll.insert_one(doc! {"_id": 1, "old": true}).await.unwrap();
    let wanted = doc! {"_id": 1, "$price": 5, "a.b": 1, "n": {"$x": 1}};
    let r = coll
        .update_one(
            doc! {"_id": 1},
            vec![doc! {"$replaceWith": {"$literal": wanted.clone()}}],
        )
        .await
        .unwrap();
    assert_eq!(r.modified_count, 1);
    let got = stored(&coll, 1).await;
    assert_eq!(got, wanted);
    assert_eq!(keys(&got), ["_id", "$price", "a.b", "n"]);
    // An upsert through the same pipeline inserts it.
    let r = coll
        .update_one(
            doc! {"_id": 2},
            vec![doc! {"$replaceWith": {"$literal": {"_id": 2, "$v": 1}}}],
        )
        .upsert(true)
        .await
        .unwrap();
    assert_eq!(r.upserted_id, Some(Bson::Int32(2)));
    assert_eq!(stored(&coll, 2).await, doc! {"_id": 2, "$v": 1});
    // A replacement document with a `$` field still fails as on the server.
    let reply = run(
        &client,
        "t",
        doc! {"update": "c", "updates": [{"q": {"_id": 1}, "u": {"a": 1, "$price": 1}}]},
    )
    .await
    .unwrap();
    let errors = reply.get_array("writeErrors").unwrap();
    assert_eq!(
        errors[0].as_document().unwrap().get_i32("code"),
        Ok(52),
        "{reply}"
    );
}

/// Pins: change events of pipeline updates follow the server's delta: a changed field is
/// updated in place, a field whose position changed is re-inserted (with every field after
/// it in the new order), a shortened array is reported in `truncatedArrays`, and the oplog
/// entry holds the `$v: 2` delta.
#[tokio::test]
async fn pipeline_update_events_are_deltas_with_moves_and_truncations() {
    let sb = start();
    let client = client(&sb).await;
    let coll = client.database("t").collection::<Document>("c");
    coll.insert_one(doc! {"_id": 1, "pad": padding(), "a": 1, "b": 2, "arr": [1, 2, 3, 4], "o": {"p": padding(), "q": 1}})
        .await
        .unwrap();
    let mut stream = coll.watch().await.unwrap();

    coll.update_one(
        doc! {"_id": 1},
        vec![doc! {"$set": {"arr": [1, 2], "o.q": 5, "a": 10}}],
    )
    .await
    .unwrap();
    let ev = next_event(&mut stream).await;
    assert_eq!(ev.get_str("operationType"), Ok("update"));
    let desc = ev.get_document("updateDescription").unwrap();
    assert_eq!(
        desc.get_document("updatedFields").unwrap(),
        &doc! {"a": 10, "o.q": 5}
    );
    assert_eq!(
        desc.get_array("truncatedArrays").unwrap(),
        &vec![Bson::Document(doc! {"field": "arr", "newSize": 2})]
    );

    // Move `pad` after `b`: from the first field out of place on, every field of the new
    // order is re-inserted, paddings included, so the delta is as large as the document:
    // the oplog holds the document and the event is a replace.
    coll.update_one(
        doc! {"_id": 1},
        vec![doc! {"$replaceWith": {"_id": "$_id", "a": "$a", "b": "$b", "pad": "$pad", "arr": "$arr", "o": "$o"}}],
    )
    .await
    .unwrap();
    let got = stored(&coll, 1).await;
    assert_eq!(keys(&got), ["_id", "a", "b", "pad", "arr", "o"]);
    let ev = next_event(&mut stream).await;
    assert_eq!(ev.get_str("operationType"), Ok("replace"));
    assert_eq!(ev.get_document("fullDocument").unwrap(), &got);

    // A move near the end stays a delta: only the moved tail is re-inserted.
    coll.update_one(
        doc! {"_id": 1},
        vec![doc! {"$replaceWith": {"_id": "$_id", "a": "$a", "b": "$b", "pad": "$pad", "o": "$o", "arr": "$arr"}}],
    )
    .await
    .unwrap();
    let ev = next_event(&mut stream).await;
    assert_eq!(ev.get_str("operationType"), Ok("update"));
    let desc = ev.get_document("updateDescription").unwrap();
    let updated = desc.get_document("updatedFields").unwrap();
    assert_eq!(keys(updated), ["o", "arr"]);
    assert!(desc.get_array("removedFields").unwrap().is_empty());
    let entry = client
        .database("local")
        .collection::<Document>("oplog.rs")
        .find_one(doc! {})
        .sort(doc! {"$natural": -1})
        .await
        .unwrap()
        .expect("oplog entry");
    assert_eq!(entry.get_str("op"), Ok("u"));
    let o = entry.get_document("o").unwrap();
    assert_eq!(o.get_i32("$v"), Ok(2));
    assert_eq!(
        keys(o.get_document("diff").unwrap().get_document("i").unwrap()),
        ["o", "arr"]
    );
}

/// Pins: on a small document a delta is not smaller than the document itself, so a real
/// server logs the whole document and the change stream shows a `replace`.
#[tokio::test]
async fn pipeline_update_of_a_small_document_is_a_replace_event() {
    let sb = start();
    let client = client(&sb).await;
    let coll = client.database("t").collection::<Document>("c");
    coll.insert_one(doc! {"_id": 1, "a": 1}).await.unwrap();
    let mut stream = coll.watch().await.unwrap();
    coll.update_one(
        doc! {"_id": 1},
        vec![doc! {"$set": {"b": "$a"}}, doc! {"$unset": "a"}],
    )
    .await
    .unwrap();
    let ev = next_event(&mut stream).await;
    assert_eq!(ev.get_str("operationType"), Ok("replace"));
    assert_eq!(
        ev.get_document("fullDocument").unwrap(),
        &doc! {"_id": 1, "b": 1}
    );
}
