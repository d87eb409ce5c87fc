//! Indexes: createIndexes/listIndexes/dropIndexes, unique enforcement with keyPattern and
//! keyValue, options (compound, sparse, partial, TTL) kept.

mod common;

use common::*;
use futures_util::TryStreamExt;
use mongodb::bson::{doc, Document};
use mongodb::options::IndexOptions;
use mongodb::IndexModel;

#[tokio::test]
async fn create_list_drop_indexes() {
    let sb = start();
    let client = client(&sb).await;
    let coll = client.database("t").collection::<Document>("c");
    coll.insert_one(doc! {"_id": 1, "a": 1, "b": 1})
        .await
        .unwrap();
    let names = coll
        .create_indexes(vec![
            IndexModel::builder().keys(doc! {"a": 1, "b": -1}).build(),
            IndexModel::builder()
                .keys(doc! {"s": 1})
                .options(
                    IndexOptions::builder()
                        .sparse(true)
                        .name("sparse_s".to_string())
                        .build(),
                )
                .build(),
            IndexModel::builder()
                .keys(doc! {"p": 1})
                .options(
                    IndexOptions::builder()
                        .partial_filter_expression(doc! {"p": {"$gt": 5}})
                        .build(),
                )
                .build(),
            IndexModel::builder()
                .keys(doc! {"t": 1})
                .options(
                    IndexOptions::builder()
                        .expire_after(std::time::Duration::from_secs(3600))
                        .build(),
                )
                .build(),
        ])
        .await
        .unwrap()
        .index_names;
    assert_eq!(names, vec!["a_1_b_-1", "sparse_s", "p_1", "t_1"]);
    let listed: Vec<Document> = run(&client, "t", doc! {"listIndexes": "c"})
        .await
        .unwrap()
        .get_document("cursor")
        .unwrap()
        .get_array("firstBatch")
        .unwrap()
        .iter()
        .map(|b| b.as_document().unwrap().clone())
        .collect();
    assert_eq!(listed.len(), 5);
    assert_eq!(listed[0].get_str("name"), Ok("_id_"));
    assert_eq!(listed[0].get_document("key").unwrap(), &doc! {"_id": 1});
    assert_eq!(as_i64(listed[0].get("v")), 2);
    let by_name = |n: &str| {
        listed
            .iter()
            .find(|d| d.get_str("name") == Ok(n))
            .unwrap()
            .clone()
    };
    assert_eq!(
        by_name("a_1_b_-1").get_document("key").unwrap(),
        &doc! {"a": 1, "b": -1}
    );
    assert_eq!(by_name("sparse_s").get_bool("sparse"), Ok(true));
    assert_eq!(
        by_name("p_1")
            .get_document("partialFilterExpression")
            .unwrap(),
        &doc! {"p": {"$gt": 5}}
    );
    assert_eq!(as_i64(by_name("t_1").get("expireAfterSeconds")), 3600);
    // Same spec again is a no-op; same name with other keys is 86 IndexKeySpecsConflict.
    let again = run(
        &client,
        "t",
        doc! {"createIndexes": "c", "indexes": [{"key": {"a": 1, "b": -1}, "name": "a_1_b_-1"}]},
    )
    .await
    .unwrap();
    assert_eq!(
        as_i64(again.get("numIndexesBefore")),
        as_i64(again.get("numIndexesAfter"))
    );
    expect_code(
        run(
            &client,
            "t",
            doc! {"createIndexes": "c", "indexes": [{"key": {"z": 1}, "name": "a_1_b_-1"}]},
        )
        .await,
        86,
    )
    .await;
    // Same keys and options under another name: 85 IndexOptionsConflict.
    expect_code(
        run(
            &client,
            "t",
            doc! {"createIndexes": "c", "indexes": [{"key": {"a": 1, "b": -1}, "name": "other"}]},
        )
        .await,
        85,
    )
    .await;
    coll.drop_index("sparse_s").await.unwrap();
    run(&client, "t", doc! {"dropIndexes": "c", "index": {"p": 1}})
        .await
        .unwrap();
    let names: Vec<String> = coll.list_index_names().await.unwrap();
    assert_eq!(names, vec!["_id_", "a_1_b_-1", "t_1"]);
    // Missing index: 27 IndexNotFound; _id_ cannot be dropped: 72 InvalidOptions.
    expect_code(coll.drop_index("nope").await, 27).await;
    expect_code(coll.drop_index("_id_").await, 72).await;
    coll.drop_indexes().await.unwrap();
    assert_eq!(coll.list_index_names().await.unwrap(), vec!["_id_"]);
    // listIndexes on a missing collection: 26.
    expect_code(run(&client, "t", doc! {"listIndexes": "missing"}).await, 26).await;
    // createIndexes creates the collection implicitly.
    let fresh = client.database("t").collection::<Document>("fresh");
    fresh
        .create_index(IndexModel::builder().keys(doc! {"q": 1}).build())
        .await
        .unwrap();
    let colls = client.database("t").list_collection_names().await.unwrap();
    assert!(colls.contains(&"fresh".to_string()));
}

#[tokio::test]
async fn unique_index_enforced() {
    let sb = start();
    let client = client(&sb).await;
    let coll = client.database("t").collection::<Document>("c");
    coll.create_index(
        IndexModel::builder()
            .keys(doc! {"email": 1})
            .options(IndexOptions::builder().unique(true).build())
            .build(),
    )
    .await
    .unwrap();
    coll.insert_one(doc! {"_id": 1, "email": "a@x"})
        .await
        .unwrap();
    let reply = run(
        &client,
        "t",
        doc! {"insert": "c", "documents": [{"_id": 2, "email": "a@x"}]},
    )
    .await
    .unwrap();
    let e = reply.get_array("writeErrors").unwrap()[0]
        .as_document()
        .unwrap()
        .clone();
    assert_eq!(as_i64(e.get("code")), 11000);
    assert_eq!(e.get_document("keyPattern").unwrap(), &doc! {"email": 1});
    assert_eq!(e.get_document("keyValue").unwrap(), &doc! {"email": "a@x"});
    assert!(e.get_str("errmsg").unwrap().contains("email_1"), "{e}");
    // Updates into a duplicate are refused too.
    coll.insert_one(doc! {"_id": 3, "email": "b@x"})
        .await
        .unwrap();
    expect_code(
        coll.update_one(doc! {"_id": 3}, doc! {"$set": {"email": "a@x"}})
            .await,
        11000,
    )
    .await;
    // Missing field counts as null: one document without email allowed, a second is a dup.
    coll.insert_one(doc! {"_id": 4}).await.unwrap();
    expect_code(coll.insert_one(doc! {"_id": 5}).await, 11000).await;
    // Building a unique index over duplicates fails.
    coll.insert_one(doc! {"_id": 6, "email": "c@x", "d": 1})
        .await
        .unwrap();
    coll.insert_one(doc! {"_id": 7, "email": "d@x", "d": 1})
        .await
        .unwrap();
    expect_code(
        coll.create_index(
            IndexModel::builder()
                .keys(doc! {"d": 1})
                .options(IndexOptions::builder().unique(true).build())
                .build(),
        )
        .await,
        11000,
    )
    .await;
    let docs: Vec<Document> = coll
        .find(doc! {})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(docs.len(), 5);
}

#[tokio::test]
async fn unique_compound_and_partial_sparse() {
    let sb = start();
    let client = client(&sb).await;
    let coll = client.database("t").collection::<Document>("c");
    coll.create_index(
        IndexModel::builder()
            .keys(doc! {"a": 1, "b": 1})
            .options(IndexOptions::builder().unique(true).build())
            .build(),
    )
    .await
    .unwrap();
    coll.insert_one(doc! {"a": 1, "b": 1}).await.unwrap();
    coll.insert_one(doc! {"a": 1, "b": 2}).await.unwrap();
    let err = expect_code(coll.insert_one(doc! {"a": 1, "b": 1}).await, 11000).await;
    let _ = err;
    coll.create_index(
        IndexModel::builder()
            .keys(doc! {"s": 1})
            .options(IndexOptions::builder().unique(true).sparse(true).build())
            .build(),
    )
    .await
    .unwrap();
    // Sparse unique: many documents without the field are fine.
    coll.insert_one(doc! {"a": 2}).await.unwrap();
    coll.insert_one(doc! {"a": 3}).await.unwrap();
    coll.create_index(
        IndexModel::builder()
            .keys(doc! {"p": 1})
            .options(
                IndexOptions::builder()
                    .unique(true)
                    .partial_filter_expression(doc! {"live": true})
                    .build(),
            )
            .build(),
    )
    .await
    .unwrap();
    coll.insert_one(doc! {"a": 4, "p": 1, "live": false})
        .await
        .unwrap();
    coll.insert_one(doc! {"a": 5, "p": 1, "live": true})
        .await
        .unwrap();
    expect_code(
        coll.insert_one(doc! {"a": 6, "p": 1, "live": true}).await,
        11000,
    )
    .await;
}

/// Pins: indexes of a collection with a default collation did not take it (listIndexes
/// showed none, `_id_` included), so a client could not see that they compare with that
/// collation; and an index created with the simple collation showed it, where the
/// server stores the simple collation as none.
#[tokio::test]
async fn indexes_take_the_collections_default_collation() {
    let sb = start();
    let client = client(&sb).await;
    let db = client.database("t");
    run(
        &client,
        "t",
        doc! {"create": "p", "collation": {"locale": "en", "strength": 2}},
    )
    .await
    .unwrap();
    run(
        &client,
        "t",
        doc! {"createIndexes": "p", "indexes": [
            {"key": {"name": 1}, "name": "name_1"},
            {"key": {"x": 1}, "name": "x_1", "collation": {"locale": "simple"}},
            {"key": {"y": 1}, "name": "y_1", "collation": {"locale": "fr"}},
        ]},
    )
    .await
    .unwrap();
    let mut collations = std::collections::BTreeMap::new();
    let mut cursor = db
        .collection::<mongodb::bson::Document>("p")
        .list_indexes()
        .await
        .unwrap();
    while cursor.advance().await.unwrap() {
        let index = cursor.deserialize_current().unwrap();
        let name = index.options.as_ref().and_then(|o| o.name.clone()).unwrap();
        let locale = index
            .options
            .as_ref()
            .and_then(|o| o.collation.as_ref())
            .map(|c| c.locale.clone());
        collations.insert(name, locale);
    }
    assert_eq!(collations["_id_"].as_deref(), Some("en"));
    assert_eq!(collations["name_1"].as_deref(), Some("en"));
    assert_eq!(collations["x_1"], None);
    assert_eq!(collations["y_1"].as_deref(), Some("fr"));
}

/// Names of the indexes of `t.c`, sorted.
async fn index_names(coll: &mongodb::Collection<Document>) -> Vec<String> {
    let mut names = coll.list_index_names().await.unwrap();
    names.sort();
    names
}

/// Pins: the sandbox accepted any number of indexes, and a createIndexes whose second
/// index failed kept its first. The server allows 64 per collection (`_id` included),
/// refusing the 65th with 67 CannotCreateIndex, and one command's indexes are built
/// together: all of them or none.
#[tokio::test]
async fn a_collection_holds_at_most_64_indexes_and_a_failed_command_adds_none() {
    let sb = start();
    let client = client(&sb).await;
    let coll = client.database("t").collection::<Document>("c");
    coll.insert_many(vec![doc! {"_id": 1, "d": 1}, doc! {"_id": 2, "d": 1}])
        .await
        .unwrap();
    // One good index, then a unique one the documents break: neither is built.
    expect_code(
        coll.create_indexes(vec![
            IndexModel::builder().keys(doc! {"a": 1}).build(),
            IndexModel::builder()
                .keys(doc! {"d": 1})
                .options(IndexOptions::builder().unique(true).build())
                .build(),
        ])
        .await,
        11000,
    )
    .await;
    assert_eq!(index_names(&coll).await, vec!["_id_".to_string()]);
    // 63 more fill the collection up.
    coll.create_indexes((0..63).map(|i| {
        IndexModel::builder()
            .keys(doc! {format!("f{i}"): 1})
            .build()
    }))
    .await
    .unwrap();
    assert_eq!(index_names(&coll).await.len(), 64);
    let error = run(
        &client,
        "t",
        doc! {"createIndexes": "c", "indexes": [{"key": {"g": 1}, "name": "g_1"}]},
    )
    .await
    .unwrap_err();
    let mongodb::error::ErrorKind::Command(e) = error.kind.as_ref() else {
        panic!("not a command error: {error:?}");
    };
    assert_eq!((e.code, e.code_name.as_str()), (67, "CannotCreateIndex"));
    assert!(e.message.contains("too many indexes for t.c"), "{e:?}");
    // Asking again for an index that exists is still fine at the limit.
    coll.create_index(IndexModel::builder().keys(doc! {"f0": 1}).build())
        .await
        .unwrap();
    // A dropped index makes room for one more.
    coll.drop_index("f0_1").await.unwrap();
    coll.create_index(IndexModel::builder().keys(doc! {"g": 1}).build())
        .await
        .unwrap();
    assert_eq!(index_names(&coll).await.len(), 64);
}
