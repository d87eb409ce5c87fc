//! Write concerns a one-member replica set cannot satisfy: the write is applied and the
//! reply carries `writeConcernError` 100 UnsatisfiableWriteConcern, as on a real primary.

mod common;

use common::*;
use mongodb::bson::{doc, Document};

fn wce_code(reply: &Document) -> Option<i64> {
    reply
        .get_document("writeConcernError")
        .ok()
        .map(|w| as_i64(w.get("code")))
}

/// Pins: a write with `w` above the set's members was acknowledged as if replicated
/// (pymongo's test_create_index, test_rename, test_drop_collection,
/// test_find_one_and_write_concern expected a WriteConcernError and got none), so a
/// client could not learn that its durability request was impossible.
#[tokio::test]
async fn w_above_member_count_is_applied_and_reported_unsatisfiable() {
    let sb = start();
    let client = client(&sb).await;
    let reply = run(
        &client,
        "t",
        doc! {"insert": "c", "documents": [{"_id": 1}], "writeConcern": {"w": 2}},
    )
    .await
    .unwrap();
    assert_eq!(as_i64(reply.get("n")), 1);
    let wce = reply.get_document("writeConcernError").unwrap();
    assert_eq!(as_i64(wce.get("code")), 100);
    assert_eq!(wce.get_str("codeName"), Ok("UnsatisfiableWriteConcern"));
    // The write itself happened.
    let found = client
        .database("t")
        .collection::<Document>("c")
        .count_documents(doc! {"_id": 1})
        .await
        .unwrap();
    assert_eq!(found, 1);

    // DDL and findAndModify report it too.
    for (db, cmd) in [
        (
            "t",
            doc! {"createIndexes": "c", "indexes": [{"key": {"a": 1}, "name": "a_1"}], "writeConcern": {"w": 3}},
        ),
        (
            "t",
            doc! {"findAndModify": "c", "query": {"_id": 1}, "update": {"$set": {"x": 1}}, "writeConcern": {"w": 50}},
        ),
        (
            "admin",
            doc! {"renameCollection": "t.c", "to": "t.d", "writeConcern": {"w": 2}},
        ),
        // Aggregations that write (pymongo's test_aggregate expected it for `$out`).
        (
            "t",
            doc! {"aggregate": "d", "pipeline": [{"$out": "e"}], "cursor": {}, "writeConcern": {"w": 2}},
        ),
        (
            "t",
            doc! {"aggregate": "e", "pipeline": [{"$merge": {"into": "f"}}], "cursor": {}, "writeConcern": {"w": 2}},
        ),
        ("t", doc! {"drop": "d", "writeConcern": {"w": 2}}),
        ("t", doc! {"drop": "e", "writeConcern": {"w": 2}}),
        ("t", doc! {"drop": "f", "writeConcern": {"w": 2}}),
    ] {
        let reply = run(&client, db, cmd.clone()).await.unwrap();
        assert_eq!(wce_code(&reply), Some(100), "{cmd}: {reply}");
    }
    let names = client.database("t").list_collection_names().await.unwrap();
    assert!(names.is_empty(), "the drop was applied: {names:?}");
}

/// What the set can satisfy is acknowledged without an error.
#[tokio::test]
async fn satisfiable_write_concerns_have_no_error() {
    let sb = start();
    let client = client(&sb).await;
    for (i, wc) in [
        doc! {"w": 1},
        doc! {"w": "majority"},
        doc! {"w": 0i64},
        doc! {},
    ]
    .into_iter()
    .enumerate()
    {
        let reply = run(
            &client,
            "t",
            doc! {"insert": "c", "documents": [{"_id": i as i32}], "writeConcern": wc.clone()},
        )
        .await
        .unwrap();
        assert_eq!(wce_code(&reply), None, "{wc}: {reply}");
    }
}
