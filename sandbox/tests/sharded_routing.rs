//! Routing through the sandbox router: inserts by shard key, targeted and broadcast
//! updates and deletes, the 6.0/7.0 refusal of untargeted single-document writes,
//! shard-key updates as delete + insert, merged reads, and the ownership filter that
//! keeps orphans out of reads through the router.

mod common;

use common::{as_i64, client_for, code, run, split_at_100};
use ferry_sandbox::{ShardKeyMoveOrder, ShardedCluster, ShardedOptions};
use futures_util::TryStreamExt;
use mongodb::bson::{doc, Bson, Document, Timestamp};
use mongodb::options::FindOptions;
use mongodb::Client;

fn start_with(order: ShardKeyMoveOrder) -> ShardedCluster {
    ShardedCluster::start(ShardedOptions {
        shards: 2,
        shard_key_move_order: order,
        ..Default::default()
    })
    .expect("cluster starts")
}

fn start() -> ShardedCluster {
    start_with(ShardKeyMoveOrder::DeleteFirst)
}

async fn direct(cluster: &ShardedCluster, shard: &str) -> Client {
    client_for(&cluster.shard(shard).unwrap().uri()).await
}

async fn ids(client: &Client, filter: Document) -> Vec<i32> {
    let docs: Vec<Document> = client
        .database("app")
        .collection::<Document>("items")
        .find(filter)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let mut ids: Vec<i32> = docs.iter().map(|d| d.get_i32("_id").unwrap()).collect();
    ids.sort();
    ids
}

/// `app.items` sharded on a hashed `_id` (pre-split over both shards), through `router`.
async fn hashed_items(router: &Client) -> mongodb::Collection<Document> {
    run(router, "admin", doc! {"enableSharding": "app"})
        .await
        .unwrap();
    run(
        router,
        "admin",
        doc! {"shardCollection": "app.items", "key": {"_id": "hashed"}},
    )
    .await
    .unwrap();
    router.database("app").collection::<Document>("items")
}

#[tokio::test]
async fn inserts_go_to_the_shard_owning_their_key() {
    let cluster = start();
    let router = client_for(&cluster.router_uri()).await;
    split_at_100(&cluster, &router).await;
    let coll = router.database("app").collection::<Document>("items");
    coll.insert_many(vec![
        doc! {"_id": 1, "k": 5},
        doc! {"_id": 2, "k": 150},
        doc! {"_id": 3},
        doc! {"_id": 4, "k": 99},
        doc! {"_id": 5, "k": 100},
    ])
    .await
    .unwrap();
    // A missing key counts as null, which sorts before numbers: shard0.
    assert_eq!(
        ids(&direct(&cluster, "shard0").await, doc! {}).await,
        [1, 3, 4]
    );
    assert_eq!(
        ids(&direct(&cluster, "shard1").await, doc! {}).await,
        [2, 5]
    );
    assert_eq!(ids(&router, doc! {}).await, [1, 2, 3, 4, 5]);
}

#[tokio::test]
async fn find_merges_sort_skip_limit_and_batches_across_shards() {
    let cluster = start();
    let router = client_for(&cluster.router_uri()).await;
    split_at_100(&cluster, &router).await;
    let coll = router.database("app").collection::<Document>("items");
    coll.insert_many((0..200).map(|i| doc! {"_id": i, "k": (i * 7) % 200}))
        .await
        .unwrap();
    let docs: Vec<Document> = coll
        .find(doc! {"k": {"$gte": 50}})
        .with_options(
            FindOptions::builder()
                .sort(doc! {"k": -1})
                .skip(10)
                .limit(100)
                .batch_size(7)
                .build(),
        )
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let keys: Vec<i32> = docs.iter().map(|d| d.get_i32("k").unwrap()).collect();
    let expected: Vec<i32> = (50..190).rev().take(100).collect();
    assert_eq!(keys, expected);
}

#[tokio::test]
async fn aggregation_and_count_merge_over_shards() {
    let cluster = start();
    let router = client_for(&cluster.router_uri()).await;
    split_at_100(&cluster, &router).await;
    let coll = router.database("app").collection::<Document>("items");
    coll.insert_many((0..200).map(|i| doc! {"_id": i, "k": i, "g": i % 2}))
        .await
        .unwrap();
    let groups: Vec<Document> = coll
        .aggregate(vec![
            doc! {"$group": {"_id": "$g", "n": {"$sum": 1}}},
            doc! {"$sort": {"_id": 1}},
        ])
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(
        groups,
        vec![doc! {"_id": 0, "n": 100}, doc! {"_id": 1, "n": 100}]
    );
    assert_eq!(
        coll.count_documents(doc! {"k": {"$gte": 150}})
            .await
            .unwrap(),
        50
    );
}

/// Pins the ownership filter: a document on a shard outside that shard's chunks (an
/// orphan) is visible on the shard directly, never in finds or aggregation counts
/// through the router; the `count` command without a filter sums each shard's fast
/// count, so it includes the orphan, as a real router's does.
#[tokio::test]
async fn orphans_are_hidden_from_router_reads_but_counted_by_fast_count() {
    let cluster = start();
    let router = client_for(&cluster.router_uri()).await;
    split_at_100(&cluster, &router).await;
    let coll = router.database("app").collection::<Document>("items");
    coll.insert_many(vec![doc! {"_id": 1, "k": 5}, doc! {"_id": 2, "k": 150}])
        .await
        .unwrap();
    // k = 160 belongs to shard1's chunk: on shard0 it is an orphan.
    let shard0 = direct(&cluster, "shard0").await;
    shard0
        .database("app")
        .collection::<Document>("items")
        .insert_one(doc! {"_id": 3, "k": 160})
        .await
        .unwrap();
    assert_eq!(ids(&shard0, doc! {}).await, [1, 3]);
    assert_eq!(ids(&router, doc! {}).await, [1, 2]);
    assert_eq!(coll.count_documents(doc! {}).await.unwrap(), 2);
    let count = run(&router, "app", doc! {"count": "items"}).await.unwrap();
    assert_eq!(as_i64(count.get("n")), 3);
}

#[tokio::test]
async fn single_document_writes_need_the_shard_key_or_id() {
    let cluster = start();
    let router = client_for(&cluster.router_uri()).await;
    split_at_100(&cluster, &router).await;
    let coll = router.database("app").collection::<Document>("items");
    coll.insert_many((0..200).map(|i| doc! {"_id": i, "k": i, "tag": i % 3}))
        .await
        .unwrap();
    let err = coll
        .update_one(doc! {"tag": 1}, doc! {"$set": {"x": 1}})
        .await
        .unwrap_err();
    assert_eq!(code(&err), 61, "{err:?}");
    let err = coll.delete_one(doc! {"tag": 1}).await.unwrap_err();
    assert_eq!(code(&err), 61, "{err:?}");
    // The router's own write error has the form a shard's has, `codeName` included.
    let reply = run(
        &router,
        "app",
        doc! {"delete": "items", "deletes": [{"q": {"tag": 1}, "limit": 1}]},
    )
    .await
    .unwrap();
    let entry = reply.get_array("writeErrors").unwrap()[0]
        .as_document()
        .unwrap()
        .clone();
    assert_eq!(entry.get_str("codeName"), Ok("ShardKeyNotFound"), "{entry}");
    let err = coll
        .find_one_and_update(doc! {"tag": 1}, doc! {"$set": {"x": 1}})
        .await
        .unwrap_err();
    assert_eq!(code(&err), 61, "{err:?}");
    // By `_id`, by shard key, or within one shard's range: accepted.
    let r = coll
        .update_one(doc! {"_id": 150}, doc! {"$set": {"x": 1}})
        .await
        .unwrap();
    assert_eq!(r.modified_count, 1);
    let r = coll
        .update_one(doc! {"k": 7}, doc! {"$set": {"x": 1}})
        .await
        .unwrap();
    assert_eq!(r.modified_count, 1);
    let r = coll.delete_one(doc! {"k": 8}).await.unwrap();
    assert_eq!(r.deleted_count, 1);
    // A range inside one shard's chunks targets that shard alone.
    let r = coll
        .update_one(doc! {"k": {"$lt": 50}, "tag": 1}, doc! {"$set": {"x": 2}})
        .await
        .unwrap();
    assert_eq!(r.modified_count, 1);
    // Multi writes go to every shard.
    let r = coll
        .update_many(doc! {"tag": 0}, doc! {"$set": {"y": 1}})
        .await
        .unwrap();
    assert_eq!(r.modified_count, 67);
    // 66 documents had tag 2; `{k: 8}` was one of them and is gone already.
    let r = coll.delete_many(doc! {"tag": 2}).await.unwrap();
    assert_eq!(r.deleted_count, 65);
}

/// The oplog entries of `app.items` on a shard, as (op, ts).
async fn oplog(cluster: &ShardedCluster, shard: &str) -> Vec<(String, Timestamp)> {
    let client = direct(cluster, shard).await;
    let entries: Vec<Document> = client
        .database("local")
        .collection::<Document>("oplog.rs")
        .find(doc! {"ns": "app.items"})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    entries
        .iter()
        .map(|e| {
            (
                e.get_str("op").unwrap().to_string(),
                e.get_timestamp("ts").unwrap(),
            )
        })
        .collect()
}

async fn shard_key_move(order: ShardKeyMoveOrder) -> (Timestamp, Timestamp) {
    let cluster = start_with(order);
    let router = client_for(&cluster.router_uri()).await;
    split_at_100(&cluster, &router).await;
    let coll = router.database("app").collection::<Document>("items");
    coll.insert_one(doc! {"_id": 1, "k": 5}).await.unwrap();
    // Retryable writes are the driver's default: the key update is allowed.
    let r = coll
        .update_one(doc! {"k": 5}, doc! {"$set": {"k": 150}})
        .await
        .unwrap();
    assert_eq!(r.modified_count, 1);
    assert_eq!(
        ids(&direct(&cluster, "shard0").await, doc! {}).await,
        Vec::<i32>::new()
    );
    let moved: Vec<Document> = coll
        .find(doc! {})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(moved, vec![doc! {"_id": 1, "k": 150}]);
    let delete = oplog(&cluster, "shard0").await;
    let insert = oplog(&cluster, "shard1").await;
    let (op, deleted_at) = delete.last().cloned().unwrap();
    assert_eq!(op, "d");
    let (op, inserted_at) = insert.last().cloned().unwrap();
    assert_eq!(op, "i");
    (deleted_at, inserted_at)
}

/// Pins: a shard key update that moves the document shows as a delete on the old shard
/// and an insert on the new one, at one cluster time.
#[tokio::test]
async fn shard_key_update_is_a_delete_and_an_insert_at_one_time() {
    let (deleted, inserted) = shard_key_move(ShardKeyMoveOrder::DeleteFirst).await;
    assert_eq!(deleted, inserted);
    let (deleted, inserted) = shard_key_move(ShardKeyMoveOrder::InsertFirst).await;
    assert_eq!(deleted, inserted);
}

#[tokio::test]
async fn shard_key_update_needs_a_retryable_write() {
    let cluster = start();
    let uri = format!("{}/?retryWrites=false", cluster.router_uri());
    let router = client_for(&uri).await;
    split_at_100(&cluster, &router).await;
    let coll = router.database("app").collection::<Document>("items");
    coll.insert_one(doc! {"_id": 1, "k": 5}).await.unwrap();
    let err = coll
        .update_one(doc! {"k": 5}, doc! {"$set": {"k": 150}})
        .await
        .unwrap_err();
    assert_eq!(code(&err), 20, "{err:?}");
    // So does a change that would keep the document on its shard.
    let err = coll
        .update_one(doc! {"k": 5}, doc! {"$set": {"k": 6}})
        .await
        .unwrap_err();
    assert_eq!(code(&err), 20, "{err:?}");
    // As a retryable write it is an ordinary update on that shard.
    let retrying = client_for(&cluster.router_uri()).await;
    let items = retrying.database("app").collection::<Document>("items");
    items
        .update_one(doc! {"k": 5}, doc! {"$set": {"k": 6}})
        .await
        .unwrap();
    assert_eq!(
        ids(&direct(&cluster, "shard0").await, doc! {"k": 6}).await,
        [1]
    );
    // A multi update may not change shard keys at all.
    let err = items
        .update_many(doc! {}, doc! {"$inc": {"k": 1}})
        .await
        .unwrap_err();
    assert_eq!(code(&err), 72, "{err:?}");
    // Nor may a single update that names the document by `_id` without its full shard
    // key (before, the sandbox changed the key in place, on the old shard).
    let err = items
        .update_one(doc! {"_id": 1}, doc! {"$set": {"k": 150}})
        .await
        .unwrap_err();
    assert_eq!(code(&err), 31025, "{err:?}");
    items
        .update_one(doc! {"_id": 1}, doc! {"$set": {"other": true}})
        .await
        .unwrap();
    assert_eq!(
        ids(&direct(&cluster, "shard0").await, doc! {"k": 6}).await,
        [1]
    );
}

#[tokio::test]
async fn unsharded_collections_live_on_the_primary_shard_with_cursors() {
    let cluster = start();
    let router = client_for(&cluster.router_uri()).await;
    let coll = router.database("plain").collection::<Document>("c");
    coll.insert_many((0..250).map(|i| doc! {"_id": i}))
        .await
        .unwrap();
    let docs: Vec<Document> = coll
        .find(doc! {})
        .with_options(FindOptions::builder().batch_size(10).build())
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(docs.len(), 250);
    let found = docs.first().and_then(|d| d.get("_id")).cloned();
    assert_eq!(found, Some(Bson::Int32(0)));
    // Pins: an aggregate's cursor (a plain `cursor` field, unlike find's) was passed on
    // with the shard's id, so its first getMore failed with 43 CursorNotFound (a
    // migration sampling split points of an unsharded collection retried forever).
    let sampled: Vec<Document> = coll
        .aggregate(vec![
            doc! {"$sample": {"size": 200}},
            doc! {"$sort": {"_id": 1}},
        ])
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(sampled.len(), 200);
    // listCollections answers the same way.
    let db = router.database("plain");
    for i in 0..30 {
        db.create_collection(format!("more{i}")).await.unwrap();
    }
    let names: Vec<_> = db
        .list_collections()
        .batch_size(10)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(names.len(), 31);
}

/// Pins: a router's cursor over a sharded collection went on serving the dropped
/// collection's documents. The shards kill their cursors when the collection is dropped
/// or renamed, and the router's next getMore fails with 175 QueryPlanKilled (then 43),
/// as a replica set's does.
#[tokio::test]
async fn a_router_cursor_over_a_sharded_collection_dies_with_its_drop_or_rename() {
    let cluster = start();
    let router = client_for(&cluster.router_uri()).await;
    let items = hashed_items(&router).await;
    items
        .insert_many((0..100).map(|i| doc! {"_id": i}))
        .await
        .unwrap();
    let open = |coll: &'static str| {
        let router = router.clone();
        async move {
            let reply = run(
                &router,
                "app",
                doc! {"find": coll, "filter": {}, "batchSize": 10},
            )
            .await
            .unwrap();
            reply.get_document("cursor").unwrap().get_i64("id").unwrap()
        }
    };
    let get_more = |id: i64, coll: &'static str| {
        let router = router.clone();
        async move {
            run(
                &router,
                "app",
                doc! {"getMore": id, "collection": coll, "batchSize": 10},
            )
            .await
        }
    };
    // A getMore while the collection stands is served.
    let id = open("items").await;
    get_more(id, "items").await.unwrap();
    run(
        &router,
        "admin",
        doc! {"renameCollection": "app.items", "to": "app.renamed"},
    )
    .await
    .unwrap();
    let error = get_more(id, "items").await.unwrap_err();
    assert_eq!(code(&error), 175, "{error:?}");
    assert!(error.to_string().contains("renamed"), "{error}");
    assert_eq!(code(&get_more(id, "items").await.unwrap_err()), 43);
    let id = open("renamed").await;
    router
        .database("app")
        .collection::<Document>("renamed")
        .drop()
        .await
        .unwrap();
    let error = get_more(id, "renamed").await.unwrap_err();
    assert_eq!(code(&error), 175, "{error:?}");
    assert!(error.to_string().contains("dropped"), "{error}");
}

#[tokio::test]
async fn find_and_modify_moves_a_document_by_its_new_shard_key() {
    let cluster = start();
    let router = client_for(&cluster.router_uri()).await;
    split_at_100(&cluster, &router).await;
    let coll = router.database("app").collection::<Document>("items");
    coll.insert_one(doc! {"_id": 1, "k": 5, "v": "a"})
        .await
        .unwrap();
    let before = coll
        .find_one_and_update(doc! {"k": 5}, doc! {"$set": {"k": 120}})
        .await
        .unwrap();
    assert_eq!(before, Some(doc! {"_id": 1, "k": 5, "v": "a"}));
    assert_eq!(
        ids(&direct(&cluster, "shard1").await, doc! {"k": 120}).await,
        [1]
    );
    assert!(ids(&direct(&cluster, "shard0").await, doc! {})
        .await
        .is_empty());
}

/// A transaction through the router writes on each shard it touches and commits there.
#[tokio::test]
async fn transactions_through_the_router_commit_on_every_participant() {
    let cluster = start();
    let router = client_for(&cluster.router_uri()).await;
    split_at_100(&cluster, &router).await;
    let coll = router.database("app").collection::<Document>("items");
    let plain = router.database("app").collection::<Document>("plain");
    plain.insert_one(doc! {"_id": 0}).await.unwrap();
    let mut session = router.start_session().await.unwrap();
    session.start_transaction().await.unwrap();
    coll.insert_one(doc! {"_id": 1, "k": 5})
        .session(&mut session)
        .await
        .unwrap();
    coll.insert_one(doc! {"_id": 2, "k": 150})
        .session(&mut session)
        .await
        .unwrap();
    plain
        .insert_one(doc! {"_id": 1})
        .session(&mut session)
        .await
        .unwrap();
    // Not visible outside the transaction before it commits.
    assert!(ids(&direct(&cluster, "shard1").await, doc! {})
        .await
        .is_empty());
    session.commit_transaction().await.unwrap();
    assert_eq!(ids(&router, doc! {}).await, [1, 2]);
    assert_eq!(plain.count_documents(doc! {}).await.unwrap(), 2);
}

#[tokio::test]
async fn coll_stats_of_a_sharded_collection_sums_its_shards() {
    let cluster = start();
    let router = client_for(&cluster.router_uri()).await;
    split_at_100(&cluster, &router).await;
    let coll = router.database("app").collection::<Document>("items");
    coll.insert_many(vec![doc! {"_id": 1, "k": 5}, doc! {"_id": 2, "k": 150}])
        .await
        .unwrap();
    let stats = run(&router, "app", doc! {"collStats": "items"})
        .await
        .unwrap();
    assert_eq!(stats.get_bool("sharded"), Ok(true));
    assert_eq!(as_i64(stats.get("count")), 2);
    assert_eq!(as_i64(stats.get("nchunks")), 2);
}

/// Fails every `find` that reaches `shard` (directly or from the router) with code 2
/// until [`allow_finds`]: a read through the router that asks the shard fails, one
/// targeted elsewhere does not.
async fn fail_finds(cluster: &ShardedCluster, shard: &str) {
    run(
        &direct(cluster, shard).await,
        "admin",
        doc! {
            "configureFailPoint": "failCommand",
            "mode": "alwaysOn",
            "data": {"failCommands": ["find"], "errorCode": 2},
        },
    )
    .await
    .expect("failCommand on the shard");
}

async fn allow_finds(cluster: &ShardedCluster, shard: &str) {
    run(
        &direct(cluster, shard).await,
        "admin",
        doc! {"configureFailPoint": "failCommand", "mode": "off"},
    )
    .await
    .expect("turn the shard's failCommand off");
}

async fn try_ids(client: &Client, filter: Document) -> mongodb::error::Result<Vec<i32>> {
    let docs: Vec<Document> = client
        .database("app")
        .collection::<Document>("items")
        .find(filter)
        .await?
        .try_collect()
        .await?;
    let mut ids: Vec<i32> = docs.iter().map(|d| d.get_i32("_id").unwrap()).collect();
    ids.sort();
    Ok(ids)
}

/// Pins read targeting: every read of a sharded collection through the router gathered
/// the documents of every shard, so a `find` by shard key asked a shard that owns none of
/// its keys (and cost a scan of the whole collection). Equality, `$in` and ranges on the
/// shard key ask only the owning shards: with `find` failing on shard1, reads whose keys
/// all lie in shard0's chunk succeed, and those that need shard1 (or every shard) fail
/// with the shard's error.
#[tokio::test]
async fn reads_by_shard_key_ask_only_the_owning_shards() {
    let cluster = start();
    let router = client_for(&cluster.router_uri()).await;
    split_at_100(&cluster, &router).await;
    let coll = router.database("app").collection::<Document>("items");
    coll.insert_many((0..200).map(|i| doc! {"_id": i, "k": i}))
        .await
        .unwrap();
    fail_finds(&cluster, "shard1").await;
    assert_eq!(try_ids(&router, doc! {"k": 5}).await.unwrap(), [5]);
    assert_eq!(
        try_ids(&router, doc! {"k": {"$in": [3, 7, 99]}})
            .await
            .unwrap(),
        [3, 7, 99]
    );
    assert_eq!(
        try_ids(&router, doc! {"k": {"$gte": 10, "$lt": 13}})
            .await
            .unwrap(),
        [10, 11, 12]
    );
    assert_eq!(
        try_ids(
            &router,
            doc! {"$and": [{"k": {"$lte": 2}}, {"_id": {"$gte": 1}}]}
        )
        .await
        .unwrap(),
        [1, 2]
    );
    for untargeted in [
        doc! {"k": {"$in": [5, 150]}},
        doc! {"k": {"$gte": 90}},
        doc! {"_id": 5},
        doc! {},
    ] {
        let failed = try_ids(&router, untargeted.clone())
            .await
            .expect_err("a read that needs shard1 asks it");
        assert_eq!(code(&failed), 2, "{untargeted}");
    }
    allow_finds(&cluster, "shard1").await;
    assert_eq!(
        try_ids(&router, doc! {"k": {"$in": [5, 150]}})
            .await
            .unwrap(),
        [5, 150]
    );
}

/// Pins the ownership filter on targeted reads: a read by shard key or `_id` that is
/// answered by lookups on each shard still leaves out a shard's orphans, whether the
/// owning shard has the document too or not.
#[tokio::test]
async fn targeted_reads_never_return_orphans() {
    let cluster = start();
    let router = client_for(&cluster.router_uri()).await;
    split_at_100(&cluster, &router).await;
    let coll = router.database("app").collection::<Document>("items");
    coll.insert_many(vec![doc! {"_id": 1, "k": 5}, doc! {"_id": 2, "k": 150}])
        .await
        .unwrap();
    // On shard0, k = 150 and k = 170 lie in shard1's chunk: orphans. shard1 has its own
    // copy of _id 2, none of _id 3.
    let shard0 = direct(&cluster, "shard0").await;
    shard0
        .database("app")
        .collection::<Document>("items")
        .insert_many(vec![doc! {"_id": 2, "k": 150}, doc! {"_id": 3, "k": 170}])
        .await
        .unwrap();
    assert_eq!(ids(&shard0, doc! {}).await, [1, 2, 3]);
    assert_eq!(ids(&router, doc! {"k": 150}).await, [2]);
    assert_eq!(ids(&router, doc! {"_id": 2}).await, [2]);
    assert!(ids(&router, doc! {"k": 170}).await.is_empty());
    assert!(ids(&router, doc! {"_id": 3}).await.is_empty());
    assert!(ids(&router, doc! {"_id": {"$in": [3]}}).await.is_empty());
    assert_eq!(ids(&router, doc! {"_id": {"$in": [1, 2, 3]}}).await, [1, 2]);
    assert_eq!(ids(&router, doc! {"_id": {"$gte": 2}}).await, [2]);
    assert_eq!(
        coll.count_documents(doc! {"k": {"$in": [150, 170]}})
            .await
            .unwrap(),
        1
    );
}

/// Pins the results of filtered reads of a collection sharded on a hashed `_id`, where
/// `_id` lookups and ranges are answered on each shard before the merge: the same
/// documents, sort, skip, limit, projection and batches as over the whole collection.
#[tokio::test]
async fn filtered_reads_of_a_hashed_collection_keep_their_results() {
    let cluster = start();
    let router = client_for(&cluster.router_uri()).await;
    let coll = hashed_items(&router).await;
    coll.insert_many((0..300).map(|i| doc! {"_id": i, "g": i % 3}))
        .await
        .unwrap();
    for shard in ["shard0", "shard1"] {
        assert!(
            !ids(&direct(&cluster, shard).await, doc! {})
                .await
                .is_empty(),
            "{shard} holds part of the collection"
        );
    }
    assert_eq!(ids(&router, doc! {"_id": 42}).await, [42]);
    assert_eq!(
        ids(&router, doc! {"_id": {"$in": [299, 0, 150, 1000]}}).await,
        [0, 150, 299]
    );
    let found: Vec<Document> = coll
        .find(doc! {"_id": {"$gte": 100, "$lt": 200}, "g": 0})
        .sort(doc! {"_id": -1})
        .skip(2)
        .limit(5)
        .projection(doc! {"g": 0})
        .batch_size(2)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(
        found,
        [192, 189, 186, 183, 180].map(|i| doc! {"_id": i}).to_vec()
    );
    assert_eq!(
        coll.count_documents(doc! {"_id": {"$gt": 290}})
            .await
            .unwrap(),
        9
    );
    let distinct = run(
        &router,
        "app",
        doc! {"distinct": "items", "key": "g", "query": {"_id": {"$lt": 2}}},
    )
    .await
    .unwrap();
    assert_eq!(
        distinct.get_array("values").unwrap(),
        &vec![Bson::Int32(0), Bson::Int32(1)]
    );
}

async fn aggregate(
    router: &Client,
    coll: &str,
    pipeline: Vec<Document>,
) -> mongodb::error::Result<Document> {
    run(
        router,
        "app",
        doc! {"aggregate": coll, "pipeline": pipeline, "cursor": {}},
    )
    .await
}

/// Pins `$out` and `$merge` through the router: the router refused both from a sharded
/// collection and let a shard write `$merge` output into its own copy of a sharded
/// target, whatever the owning shard. Now an unsharded pipeline works as on a replica
/// set, a sharded source's output lands on the database's primary shard, `$merge` into
/// a sharded collection writes each document on the shard owning its key, and `$out`
/// into a sharded collection is refused with the real router's code 28769.
#[tokio::test]
async fn out_and_merge_write_through_the_router() {
    let cluster = start();
    let router = client_for(&cluster.router_uri()).await;
    split_at_100(&cluster, &router).await;
    let items = router.database("app").collection::<Document>("items");
    items
        .insert_many((0..200).map(|i| doc! {"_id": i, "k": i}))
        .await
        .unwrap();
    let plain = router.database("app").collection::<Document>("plain");
    plain
        .insert_many((0..10).map(|i| doc! {"_id": 1000 + i, "k": i * 30, "from": "plain"}))
        .await
        .unwrap();

    aggregate(
        &router,
        "plain",
        vec![doc! {"$match": {"k": {"$lt": 90}}}, doc! {"$out": "copy"}],
    )
    .await
    .expect("$out between unsharded collections");
    let copy = router.database("app").collection::<Document>("copy");
    assert_eq!(copy.count_documents(doc! {}).await.unwrap(), 3);

    aggregate(
        &router,
        "items",
        vec![doc! {"$match": {"k": {"$gte": 150}}}, doc! {"$out": "high"}],
    )
    .await
    .expect("$out from a sharded collection into an unsharded one");
    let shard0 = direct(&cluster, "shard0").await;
    assert_eq!(
        shard0
            .database("app")
            .collection::<Document>("high")
            .count_documents(doc! {})
            .await
            .unwrap(),
        50,
        "the output lives on the database's primary shard"
    );

    let refused = aggregate(&router, "plain", vec![doc! {"$out": "items"}])
        .await
        .expect_err("$out into a sharded collection");
    assert_eq!(code(&refused), 28769, "{refused}");

    aggregate(
        &router,
        "plain",
        vec![
            doc! {"$merge": {"into": "items", "whenMatched": "merge", "whenNotMatched": "insert"}},
        ],
    )
    .await
    .expect("$merge into a sharded collection");
    let shard1 = direct(&cluster, "shard1").await;
    assert_eq!(
        ids(&shard0, doc! {"from": "plain"}).await,
        [1000, 1001, 1002, 1003],
        "keys below 100 are written on shard0"
    );
    assert_eq!(
        ids(&shard1, doc! {"from": "plain"}).await,
        [1004, 1005, 1006, 1007, 1008, 1009],
        "keys from 100 on are written on shard1"
    );
    aggregate(
        &router,
        "items",
        vec![
            doc! {"$match": {"_id": {"$in": [5, 150]}}},
            doc! {"$set": {"seen": true}},
            doc! {"$merge": {"into": "items"}},
        ],
    )
    .await
    .expect("$merge from a sharded collection into itself");
    assert_eq!(ids(&router, doc! {"seen": true}).await, [5, 150]);
    assert_eq!(items.count_documents(doc! {}).await.unwrap(), 210);
}

/// Pins `find` with `min`/`max` on the `_id` index through the router (how a baseline
/// verification reads a chunk of `_id`s), now answered by a range of each shard's `_id`
/// index: exactly the `_id`s in `[min, max)`, in `_id` order, from every shard.
#[tokio::test]
async fn min_max_on_the_id_index_reads_that_range_from_every_shard() {
    let cluster = start();
    let router = client_for(&cluster.router_uri()).await;
    let coll = hashed_items(&router).await;
    coll.insert_many((0..300).map(|i| doc! {"_id": i}))
        .await
        .unwrap();
    let found: Vec<Document> = coll
        .find(doc! {})
        .hint(mongodb::options::Hint::Keys(doc! {"_id": 1}))
        .min(doc! {"_id": 100})
        .max(doc! {"_id": 110})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let ids: Vec<i32> = found.iter().map(|d| d.get_i32("_id").unwrap()).collect();
    assert_eq!(ids, (100..110).collect::<Vec<_>>());
}

/// An update with `arrayFilters` through the router, targeted by the full shard key (the
/// router checks whether the update moves the document's key), applies like on a
/// replica set. Pins: the router computed the new key without the statement's
/// `arrayFilters` and refused every such update with 2 BadValue "No array filter found
/// for identifier 'o'" (found by the randomized suite's two-shard seeds); findAndModify
/// the same.
#[tokio::test]
async fn array_filters_pass_through_the_router_on_a_shard_key_equality() {
    let cluster = start();
    let router = client_for(&cluster.router_uri()).await;
    split_at_100(&cluster, &router).await;
    let coll = router.database("app").collection::<Document>("items");
    coll.insert_many(vec![
        doc! {"_id": 1, "k": 5, "objs": [{"b": 1}, {"b": 2}], "arr": [1, 2]},
        doc! {"_id": 2, "k": 150, "objs": [{"b": 1}, {"b": 2}]},
    ])
    .await
    .unwrap();
    let reply = run(
        &router,
        "app",
        doc! {"update": "items", "updates": [{
            "q": {"k": 5},
            "u": {"$set": {"objs.$[o].c": "x"}, "$inc": {"arr.$[]": 1}},
            "arrayFilters": [{"o.b": {"$gte": 2}}],
        }]},
    )
    .await
    .unwrap();
    assert!(
        reply.get_array("writeErrors").is_err(),
        "the update was refused: {reply}"
    );
    assert_eq!(as_i64(reply.get("nModified")), 1, "{reply}");
    let reply = run(
        &router,
        "app",
        doc! {"findAndModify": "items", "query": {"k": 150}, "new": true,
        "update": {"$set": {"objs.$[o].c": "y"}}, "arrayFilters": [{"o.b": 1}]},
    )
    .await
    .unwrap();
    assert_eq!(
        reply
            .get_document("value")
            .unwrap()
            .get_array("objs")
            .unwrap(),
        &vec![
            Bson::Document(doc! {"b": 1, "c": "y"}),
            Bson::Document(doc! {"b": 2})
        ],
        "{reply}"
    );
    let one = coll.find_one(doc! {"_id": 1}).await.unwrap().unwrap();
    assert_eq!(
        one,
        doc! {"_id": 1, "k": 5, "objs": [{"b": 1}, {"b": 2, "c": "x"}], "arr": [2, 3]}
    );
}

/// A rename of an unsharded collection into another database through the router stays
/// on the source database's primary shard: a missing target database is created with
/// that primary, and a target database whose primary is another shard is refused with
/// 5448802, as a real 6.0/7.0 router does. Pins: the router forwarded the rename without
/// recording the target database, whose primary was then chosen at its first write
/// (another shard), so the renamed documents vanished from reads through the router
/// (found by the randomized suite's two-shard seed 2003).
#[tokio::test]
async fn rename_into_another_database_stays_on_the_primary_shard() {
    let cluster = start();
    let router = client_for(&cluster.router_uri()).await;
    run(
        &router,
        "admin",
        doc! {"enableSharding": "app", "primaryShard": "shard0"},
    )
    .await
    .unwrap();
    let docs: Vec<Document> = (0..5).map(|i| doc! {"_id": i}).collect();
    run(&router, "app", doc! {"insert": "a", "documents": docs})
        .await
        .unwrap();
    run(
        &router,
        "admin",
        doc! {"renameCollection": "app.a", "to": "fresh.b"},
    )
    .await
    .unwrap();
    let fresh = router.database("fresh").collection::<Document>("b");
    fresh.insert_one(doc! {"_id": 5}).await.unwrap();
    assert_eq!(fresh.count_documents(doc! {}).await.unwrap(), 6);
    let entry = router
        .database("config")
        .collection::<Document>("databases")
        .find_one(doc! {"_id": "fresh"})
        .await
        .unwrap()
        .expect("the rename created the target database");
    assert_eq!(entry.get_str("primary").unwrap(), "shard0");

    run(
        &router,
        "admin",
        doc! {"enableSharding": "other", "primaryShard": "shard1"},
    )
    .await
    .unwrap();
    run(
        &router,
        "app",
        doc! {"insert": "c", "documents": [{"_id": 1}]},
    )
    .await
    .unwrap();
    let err = run(
        &router,
        "admin",
        doc! {"renameCollection": "app.c", "to": "other.d"},
    )
    .await
    .unwrap_err();
    assert_eq!(code(&err), 5448802, "{err}");
    let app = router.database("app").collection::<Document>("c");
    assert_eq!(app.count_documents(doc! {}).await.unwrap(), 1);
}

/// Pins: the router hashed a NumberDecimal (and a fraction) by its bytes, not as the
/// server does (every number converted to a double and truncated to a 64-bit integer),
/// so `NumberDecimal("2")` went to another shard than `2`: a delete by `{_id: 2}` missed
/// the document and two equal `_id`s lived on two shards (a two-shard randomized seed
/// then diverged). Equal numbers of every type now reach the same document.
#[tokio::test]
async fn equal_numbers_of_any_type_reach_one_document_under_a_hashed_key() {
    let cluster = start();
    let router = client_for(&cluster.router_uri()).await;
    let coll = hashed_items(&router).await;
    for i in 0..40i32 {
        coll.insert_one(doc! {"_id": i, "v": "int"}).await.unwrap();
        let decimal: bson::Decimal128 = i.to_string().parse().unwrap();
        let found = coll
            .find_one(doc! {"_id": Bson::Decimal128(decimal)})
            .await
            .unwrap();
        assert_eq!(
            found,
            Some(doc! {"_id": i, "v": "int"}),
            "found by decimal {i}"
        );
        let duplicate = coll
            .insert_one(doc! {"_id": Bson::Decimal128(decimal), "v": "decimal"})
            .await;
        assert!(duplicate.is_err(), "a decimal {i} beside the int {i}");
        let deleted = coll
            .delete_one(doc! {"_id": Bson::Double(f64::from(i))})
            .await
            .unwrap();
        assert_eq!(deleted.deleted_count, 1, "deleted by double {i}");
    }
}

/// The last index a sharded collection's key can use cannot be dropped (370
/// CannotDropShardKeyIndex); another compatible index lets it go, and `*` keeps it.
/// Pins: the sandbox dropped it, and the next read hinting the key's index failed.
#[tokio::test]
async fn the_last_shard_key_index_cannot_be_dropped() {
    let cluster = start();
    let router = client_for(&cluster.router_uri()).await;
    run(&router, "admin", doc! {"enableSharding": "app"})
        .await
        .unwrap();
    let db = router.database("app");
    run(
        &router,
        "app",
        doc! {"createIndexes": "people", "indexes": [{"key": {"g": 1}, "name": "g_1"}]},
    )
    .await
    .unwrap();
    run(
        &router,
        "admin",
        doc! {"shardCollection": "app.people", "key": {"g": 1}},
    )
    .await
    .unwrap();
    let drop = |index: &str| doc! {"dropIndexes": "people", "index": index};
    let refused = run(&router, "app", drop("g_1")).await.unwrap_err();
    assert_eq!(code(&refused), 370, "{refused}");
    run(
        &router,
        "app",
        doc! {"createIndexes": "people", "indexes": [
            {"key": {"g": 1, "x": 1}, "name": "g_1_x_1"},
            {"key": {"g": 1, "y": 1}, "name": "g_y_sparse", "sparse": true},
            {"key": {"x": 1}, "name": "x_1"},
        ]},
    )
    .await
    .unwrap();
    run(&router, "app", drop("g_1")).await.unwrap();
    let refused = run(&router, "app", drop("g_1_x_1")).await.unwrap_err();
    assert_eq!(
        code(&refused),
        370,
        "a sparse index does not count: {refused}"
    );
    run(&router, "app", drop("*")).await.unwrap();
    let names: Vec<String> = db
        .collection::<Document>("people")
        .list_index_names()
        .await
        .unwrap();
    assert_eq!(names, ["_id_", "g_1_x_1"]);
    // The sparse one went with `*`.
}

/// The `index` of each entry of a reply's array field (`upserted`, `writeErrors`).
fn indexes(reply: &Document, field: &str) -> Vec<i32> {
    reply
        .get_array(field)
        .map(|a| {
            a.iter()
                .filter_map(Bson::as_document)
                .map(|d| d.get_i32("index").unwrap())
                .collect()
        })
        .unwrap_or_default()
}

fn error_codes(reply: &Document) -> Vec<i32> {
    reply
        .get_array("writeErrors")
        .map(|a| {
            a.iter()
                .filter_map(Bson::as_document)
                .map(|d| d.get_i32("code").unwrap())
                .collect()
        })
        .unwrap_or_default()
}

/// The `v` of each document, by `_id`, read through the router.
async fn values(client: &Client) -> Vec<(i32, i32)> {
    let docs: Vec<Document> = client
        .database("app")
        .collection::<Document>("items")
        .find(doc! {})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let mut out: Vec<(i32, i32)> = docs
        .iter()
        .map(|d| (d.get_i32("_id").unwrap(), d.get_i32("v").unwrap_or(-1)))
        .collect();
    out.sort();
    out
}

/// Pins the reply of update and delete batches that mix statements for both shards,
/// upserts and failing statements (a duplicate `_id` on the shard, `$inc` on a string,
/// an unknown operator): `n`, `nModified`, `upserted` and `writeErrors` carry the
/// client's statement indexes, an ordered batch stops at its first error and an
/// unordered one goes on. It holds whether the router sends each statement on its own
/// or consecutive statements for one shard in one command.
#[tokio::test]
async fn update_and_delete_batches_keep_their_reply_over_both_shards() {
    let cluster = start();
    let router = client_for(&cluster.router_uri()).await;
    split_at_100(&cluster, &router).await;
    run(
        &router,
        "app",
        doc! {"insert": "items", "documents": [
            {"_id": 1, "k": 1, "v": 0},
            {"_id": 2, "k": 2, "v": 0, "s": "x"},
            {"_id": 101, "k": 101, "v": 0},
            {"_id": 102, "k": 102, "v": 0},
        ]},
    )
    .await
    .unwrap();

    let reply = run(
        &router,
        "app",
        doc! {"update": "items", "updates": [
            {"q": {"k": 1}, "u": {"$inc": {"v": 1}}},
            {"q": {"k": 3, "_id": 3}, "u": {"$set": {"v": 1}}, "upsert": true},
            {"q": {"k": 101}, "u": {"$inc": {"v": 1}}},
            {"q": {"k": 103, "_id": 103}, "u": {"$set": {"v": 1}}, "upsert": true},
            {"q": {"k": 104}, "u": {"$inc": {"v": 1}}},
            {"q": {"k": 4, "_id": 1}, "u": {"$set": {"v": 1}}, "upsert": true},
            {"q": {"k": 102}, "u": {"$inc": {"v": 1}}},
        ]},
    )
    .await
    .unwrap();
    assert_eq!(reply.get_i32("n").unwrap(), 4, "{reply}");
    assert_eq!(reply.get_i32("nModified").unwrap(), 2, "{reply}");
    assert_eq!(indexes(&reply, "upserted"), [1, 3], "{reply}");
    assert_eq!(indexes(&reply, "writeErrors"), [5], "{reply}");
    assert_eq!(error_codes(&reply), [11000], "{reply}");
    assert_eq!(
        values(&router).await,
        [(1, 1), (2, 0), (3, 1), (101, 1), (102, 0), (103, 1)]
    );

    let reply = run(
        &router,
        "app",
        doc! {"update": "items", "ordered": false, "updates": [
            {"q": {"k": 1}, "u": {"$inc": {"v": 1}}},
            {"q": {"k": 2}, "u": {"$inc": {"s": 1}}},
            {"q": {"k": 102}, "u": {"$inc": {"v": 1}}},
            {"q": {"k": 4, "_id": 1}, "u": {"$set": {"v": 9}}, "upsert": true},
            {"q": {"k": 105, "_id": 105}, "u": {"$set": {"v": 1}}, "upsert": true},
            {"q": {"k": 3}, "u": {"$inc": {"v": 1}}},
        ]},
    )
    .await
    .unwrap();
    assert_eq!(reply.get_i32("n").unwrap(), 4, "{reply}");
    assert_eq!(reply.get_i32("nModified").unwrap(), 3, "{reply}");
    assert_eq!(indexes(&reply, "upserted"), [4], "{reply}");
    assert_eq!(indexes(&reply, "writeErrors"), [1, 3], "{reply}");
    assert_eq!(error_codes(&reply), [14, 11000], "{reply}");
    assert_eq!(
        values(&router).await,
        [
            (1, 2),
            (2, 0),
            (3, 2),
            (101, 1),
            (102, 1),
            (103, 1),
            (105, 1)
        ]
    );

    let reply = run(
        &router,
        "app",
        doc! {"delete": "items", "deletes": [
            {"q": {"k": 1}, "limit": 1},
            {"q": {"k": 101}, "limit": 1},
            {"q": {"k": 3}, "limit": 1},
            {"q": {"k": 102, "v": {"$foo": 1}}, "limit": 1},
            {"q": {"k": 103}, "limit": 1},
        ]},
    )
    .await
    .unwrap();
    assert_eq!(reply.get_i32("n").unwrap(), 3, "{reply}");
    assert_eq!(indexes(&reply, "writeErrors"), [3], "{reply}");
    assert_eq!(error_codes(&reply), [2], "{reply}");
    assert_eq!(
        values(&router).await,
        [(2, 0), (102, 1), (103, 1), (105, 1)]
    );

    let reply = run(
        &router,
        "app",
        doc! {"delete": "items", "ordered": false, "deletes": [
            {"q": {"k": 103}, "limit": 1},
            {"q": {"k": 2, "v": {"$foo": 1}}, "limit": 1},
            {"q": {"k": 2}, "limit": 1},
            {"q": {"k": 105}, "limit": 1},
        ]},
    )
    .await
    .unwrap();
    assert_eq!(reply.get_i32("n").unwrap(), 3, "{reply}");
    assert_eq!(indexes(&reply, "writeErrors"), [1], "{reply}");
    assert_eq!(error_codes(&reply), [2], "{reply}");
    assert_eq!(values(&router).await, [(102, 1)]);
}
