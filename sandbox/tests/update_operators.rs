//! Update operators as applications write them: `arrayFilters` with `$[<identifier>]` and
//! the all-positional `$[]` (update, updateMany, findAndModify), their errors, the change
//! events they produce, and `$set` of a subdocument whose fields only changed order.

mod common;

use std::time::Duration;

use common::*;
use mongodb::bson::{doc, Bson, Document};
use mongodb::change_stream::event::ChangeStreamEvent;
use mongodb::change_stream::ChangeStream;
use mongodb::options::ReturnDocument;
use mongodb::Collection;

/// The next change event as a document, within a deadline.
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

fn updated_fields(ev: &Document) -> &Document {
    ev.get_document("updateDescription")
        .and_then(|d| d.get_document("updatedFields"))
        .expect("updatedFields")
}

async fn stored(coll: &Collection<Document>, id: i32) -> Document {
    coll.find_one(doc! {"_id": id})
        .await
        .expect("find")
        .expect("document exists")
}

/// Pins: `arrayFilters` was ignored and `$[<identifier>]` always failed with "No array
/// filter found", so applications using filtered positional updates could not run.
#[tokio::test]
async fn array_filters_select_elements_in_update_many_and_find_and_modify() {
    let sb = start();
    let client = client(&sb).await;
    let coll = client.database("t").collection::<Document>("c");
    coll.insert_many([
        doc! {"_id": 1, "grades": [{"g": 80, "n": 1}, {"g": 95, "n": 2}, {"g": 60, "n": 3}], "m": [[1, 5], [7, 2]]},
        doc! {"_id": 2, "grades": [{"g": 99, "n": 1}, {"g": 10, "n": 2}], "m": []},
    ])
    .await
    .unwrap();

    let r = coll
        .update_many(doc! {}, doc! {"$set": {"grades.$[low].n": 0}})
        .array_filters(vec![doc! {"low.g": {"$lt": 90}}])
        .await
        .unwrap();
    assert_eq!((r.matched_count, r.modified_count), (2, 2));
    assert_eq!(
        stored(&coll, 1).await.get_array("grades").unwrap(),
        &vec![
            Bson::Document(doc! {"g": 80, "n": 0}),
            Bson::Document(doc! {"g": 95, "n": 2}),
            Bson::Document(doc! {"g": 60, "n": 0}),
        ]
    );
    assert_eq!(
        stored(&coll, 2).await.get_array("grades").unwrap(),
        &vec![
            Bson::Document(doc! {"g": 99, "n": 1}),
            Bson::Document(doc! {"g": 10, "n": 0}),
        ]
    );

    // Nested: every inner array, only its elements >= 5.
    coll.update_one(doc! {"_id": 1}, doc! {"$inc": {"m.$[].$[big]": 100}})
        .array_filters(vec![doc! {"big": {"$gte": 5}}])
        .await
        .unwrap();
    assert_eq!(
        stored(&coll, 1).await.get_array("m").unwrap(),
        &vec![
            Bson::Array(vec![Bson::Int32(1), Bson::Int32(105)]),
            Bson::Array(vec![Bson::Int32(107), Bson::Int32(2)]),
        ]
    );

    // findAndModify with arrayFilters, returning the new document.
    let after = coll
        .find_one_and_update(doc! {"_id": 2}, doc! {"$mul": {"grades.$[x].g": 2}})
        .array_filters(vec![doc! {"x.n": {"$in": [0, 5]}}])
        .return_document(ReturnDocument::After)
        .await
        .unwrap()
        .expect("document");
    assert_eq!(
        after.get_array("grades").unwrap()[1],
        Bson::Document(doc! {"g": 20, "n": 0})
    );

    // A filter that matches nothing leaves the document unmodified.
    let r = coll
        .update_one(doc! {"_id": 2}, doc! {"$set": {"grades.$[x].n": 7}})
        .array_filters(vec![doc! {"x.g": {"$gt": 1000}}])
        .await
        .unwrap();
    assert_eq!((r.matched_count, r.modified_count), (1, 0));
}

/// Pins: the server's parse errors for array filters (codes and messages as a real
/// mongod 6.0/7.0 reports them), checked before any document is touched.
#[tokio::test]
async fn array_filter_errors_match_the_server() {
    let sb = start();
    let client = client(&sb).await;
    let coll = client.database("t").collection::<Document>("c");
    coll.insert_one(doc! {"_id": 1, "a": [1, 2], "s": 5})
        .await
        .unwrap();
    let err = expect_code(
        coll.update_one(doc! {"_id": 1}, doc! {"$set": {"a.$[x]": 0}})
            .await,
        2,
    )
    .await;
    assert!(
        format!("{err:?}").contains("No array filter found for identifier 'x' in path 'a.$[x]'"),
        "{err:?}"
    );
    let err = expect_code(
        coll.update_one(doc! {"_id": 1}, doc! {"$set": {"a.$[x]": 0}})
            .array_filters(vec![doc! {"x": 1}, doc! {"y": 2}])
            .await,
        9,
    )
    .await;
    assert!(
        format!("{err:?}")
            .contains("The array filter for identifier 'y' was not used in the update"),
        "{err:?}"
    );
    expect_code(
        coll.update_one(doc! {"_id": 1}, doc! {"$set": {"a.$[x]": 0}})
            .array_filters(vec![doc! {"x": 1}, doc! {"x": 2}])
            .await,
        9,
    )
    .await;
    expect_code(
        coll.update_one(doc! {"_id": 1}, doc! {"$set": {"a.$[X]": 0}})
            .array_filters(vec![doc! {"X": 1}])
            .await,
        2,
    )
    .await;
    expect_code(
        coll.update_one(doc! {"_id": 1}, doc! {"$set": {"a.$[x]": 0}})
            .array_filters(vec![doc! {"x": 1, "y": 1}])
            .await,
        9,
    )
    .await;
    let err = expect_code(
        coll.update_one(doc! {"_id": 1}, doc! {"$set": {"s.$[]": 0}})
            .await,
        2,
    )
    .await;
    assert!(
        format!("{err:?}").contains("Cannot apply array updates to non-array element s: 5"),
        "{err:?}"
    );
    expect_code(
        coll.update_one(doc! {"_id": 1}, doc! {"$set": {"missing.$[]": 0}})
            .await,
        2,
    )
    .await;
    expect_code(
        coll.update_one(doc! {"_id": 1}, vec![doc! {"$set": {"b": 1}}])
            .array_filters(vec![doc! {"x": 1}])
            .await,
        9,
    )
    .await;
    // Nothing was written by the failed statements.
    assert_eq!(stored(&coll, 1).await, doc! {"_id": 1, "a": [1, 2], "s": 5});
}

/// Pins: change events of operator updates must list what the operators wrote, as a real
/// server's oplog delta does: array elements changed in place as numeric-index paths
/// (`grades.0.n`), a whole subdocument set as one field, `$pop`/`$pull` as the whole array,
/// a plain `$push` as its new elements. (Before, an in-place element change reported the
/// whole array and a `$set` subdocument was split into its inner fields.)
#[tokio::test]
async fn change_events_of_array_updates_use_index_paths() {
    let sb = start();
    let client = client(&sb).await;
    let coll = client.database("t").collection::<Document>("c");
    coll.insert_one(doc! {
        "_id": 1,
        "grades": [{"g": 80, "n": 1}, {"g": 95, "n": 2}, {"g": 60, "n": 3}],
        "sub": {"x": 1, "y": 1},
        "arr": [1, 2, 3],
    })
    .await
    .unwrap();
    let mut stream = coll.watch().await.unwrap();

    coll.update_one(doc! {"_id": 1}, doc! {"$set": {"grades.$[low].n": 9}})
        .array_filters(vec![doc! {"low.g": {"$lt": 90}}])
        .await
        .unwrap();
    let ev = next_event(&mut stream).await;
    assert_eq!(ev.get_str("operationType"), Ok("update"));
    assert_eq!(
        updated_fields(&ev),
        &doc! {"grades.0.n": 9, "grades.2.n": 9}
    );

    coll.update_one(doc! {"_id": 1}, doc! {"$inc": {"grades.$[].g": 1}})
        .await
        .unwrap();
    let ev = next_event(&mut stream).await;
    assert_eq!(
        updated_fields(&ev),
        &doc! {"grades.0.g": 81, "grades.1.g": 96, "grades.2.g": 61}
    );

    coll.update_one(
        doc! {"_id": 1},
        doc! {"$set": {"sub": {"x": 1, "y": 2}}, "$pop": {"arr": 1}},
    )
    .await
    .unwrap();
    let ev = next_event(&mut stream).await;
    assert_eq!(
        updated_fields(&ev),
        &doc! {"arr": [1, 2], "sub": {"x": 1, "y": 2}}
    );
    let truncated = ev
        .get_document("updateDescription")
        .unwrap()
        .get_array("truncatedArrays")
        .unwrap();
    assert!(truncated.is_empty(), "{truncated:?}");

    coll.update_one(doc! {"_id": 1}, doc! {"$push": {"arr": {"$each": [7, 8]}}})
        .await
        .unwrap();
    let ev = next_event(&mut stream).await;
    assert_eq!(updated_fields(&ev), &doc! {"arr.2": 7, "arr.3": 8});
}

/// Pins: `$set` of a subdocument with the same fields in another order was treated as no
/// change (nModified 0, nothing stored, no event); a real server stores the new order and
/// records the update.
#[tokio::test]
async fn set_of_a_reordered_subdocument_stores_the_new_order() {
    let sb = start();
    let client = client(&sb).await;
    let coll = client.database("t").collection::<Document>("c");
    coll.insert_one(doc! {"_id": 1, "sub": {"a": 1, "b": 2}})
        .await
        .unwrap();
    let mut stream = coll.watch().await.unwrap();
    let r = coll
        .update_one(doc! {"_id": 1}, doc! {"$set": {"sub": {"b": 2, "a": 1}}})
        .await
        .unwrap();
    assert_eq!((r.matched_count, r.modified_count), (1, 1));
    let sub = stored(&coll, 1).await.get_document("sub").unwrap().clone();
    let keys: Vec<&str> = sub.keys().map(String::as_str).collect();
    assert_eq!(keys, ["b", "a"]);
    let ev = next_event(&mut stream).await;
    assert_eq!(ev.get_str("operationType"), Ok("update"));
    let fields = updated_fields(&ev).get_document("sub").unwrap();
    let keys: Vec<&str> = fields.keys().map(String::as_str).collect();
    assert_eq!(keys, ["b", "a"]);

    // The same bytes again is a no-op, as on a real server.
    let r = coll
        .update_one(doc! {"_id": 1}, doc! {"$set": {"sub": {"b": 2, "a": 1}}})
        .await
        .unwrap();
    assert_eq!((r.matched_count, r.modified_count), (1, 0));
    // An int32 replaced by an equal int64 is a change too.
    let r = coll
        .update_one(doc! {"_id": 1}, doc! {"$set": {"sub.a": 1i64}})
        .await
        .unwrap();
    assert_eq!(r.modified_count, 1);
}
