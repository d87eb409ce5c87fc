//! Shard key changes through the router: `refineCollectionShardKey` (suffix fields, a
//! supporting index required, a new epoch, chunk bounds extended, its expanded event from
//! 6.1 on) and `reshardCollection` (new key and uuid, owned documents only, its expanded
//! event, no insert or delete events for the moved data), with the real server's errors.
//! Also `renameCollection` onto a sharded target with `dropTarget`.

mod common;

use std::time::{Duration, Instant};

use common::{client_for, code, run};
use ferry_sandbox::{ShardedCluster, ShardedOptions};
use futures_util::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};
use mongodb::Client;

fn start(version: &str) -> ShardedCluster {
    ShardedCluster::start(ShardedOptions {
        shards: 2,
        version: version.into(),
        periodic_noop_interval: Duration::from_millis(200),
        balancer_interval: Duration::from_secs(3600),
        orphan_cleanup_delay: Duration::from_secs(3600),
        ..Default::default()
    })
    .expect("cluster starts")
}

/// `app.items` on `{k: 1}` with `{_id: k, k, region}` for k in 0..200, chunks [MinKey,
/// 100) on shard0 and [100, MaxKey) on shard1 (moved, leaving orphans on shard0).
async fn items_on_two_shards(router: &Client) {
    common::shard_items(router, 0..0, &[100]).await;
    let docs: Vec<Document> = (0..200)
        .map(|k| doc! {"_id": k, "k": k, "region": if k % 2 == 0 { "eu" } else { "us" }})
        .collect();
    router
        .database("app")
        .collection::<Document>("items")
        .insert_many(docs)
        .await
        .expect("insert");
    run(
        router,
        "admin",
        doc! {"moveChunk": "app.items", "find": {"k": 100}, "to": "shard1", "_waitForDelete": false},
    )
    .await
    .expect("moveChunk");
}

async fn catalog_entry(router: &Client) -> Document {
    router
        .database("config")
        .collection::<Document>("collections")
        .find_one(doc! {"_id": "app.items"})
        .await
        .expect("read config.collections")
        .expect("app.items is sharded")
}

async fn chunk_docs(router: &Client, uuid: &Bson) -> Vec<Document> {
    router
        .database("config")
        .collection::<Document>("chunks")
        .find(doc! {"uuid": uuid.clone()})
        .sort(doc! {"min": 1})
        .await
        .expect("read config.chunks")
        .try_collect()
        .await
        .expect("chunks")
}

async fn item_ids(router: &Client) -> Vec<i32> {
    let docs: Vec<Document> = router
        .database("app")
        .collection::<Document>("items")
        .find(doc! {})
        .sort(doc! {"_id": 1})
        .await
        .expect("find")
        .try_collect()
        .await
        .expect("documents");
    docs.iter().map(|d| d.get_i32("_id").unwrap()).collect()
}

/// A cluster-wide change stream with expanded events, opened now: its cursor id.
async fn open_stream(router: &Client) -> i64 {
    let reply = run(
        router,
        "admin",
        doc! {"aggregate": 1, "pipeline": [{"$changeStream": {"showExpandedEvents": true, "allChangesForCluster": true}}], "cursor": {}},
    )
    .await
    .expect("change stream opens");
    reply.get_document("cursor").unwrap().get_i64("id").unwrap()
}

/// Reads the stream until an event of `operation_type` arrives (panics after 10 s);
/// returns every event read.
async fn events_until(router: &Client, id: i64, operation_type: &str) -> Vec<Document> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    loop {
        assert!(
            Instant::now() < deadline,
            "no {operation_type} event; saw {seen:?}"
        );
        let reply = run(
            router,
            "admin",
            doc! {"getMore": id, "collection": "$cmd.aggregate", "maxTimeMS": 500},
        )
        .await
        .expect("getMore");
        let batch = reply
            .get_document("cursor")
            .unwrap()
            .get_array("nextBatch")
            .unwrap()
            .clone();
        for event in batch {
            let event = event.as_document().unwrap().clone();
            let done = event.get_str("operationType") == Ok(operation_type);
            seen.push(event);
            if done {
                return seen;
            }
        }
    }
}

/// Refining extends the key, keeps every document where it was, gives the collection a
/// new epoch (same uuid), extends the chunk bounds with MinKey (MaxKey at the top), and
/// reports a `refineCollectionShardKey` event with both keys on 7.0.
#[tokio::test]
async fn refine_extends_the_key_and_reports_it() {
    let cluster = start("7.0.13");
    let router = client_for(&cluster.router_uri()).await;
    items_on_two_shards(&router).await;
    let before = catalog_entry(&router).await;
    let id = open_stream(&router).await;
    router
        .database("app")
        .collection::<Document>("items")
        .create_index(
            mongodb::IndexModel::builder()
                .keys(doc! {"k": 1, "region": 1})
                .build(),
        )
        .await
        .expect("index on the refined key");
    run(
        &router,
        "admin",
        doc! {"refineCollectionShardKey": "app.items", "key": {"k": 1, "region": 1}},
    )
    .await
    .expect("refine");

    let after = catalog_entry(&router).await;
    assert_eq!(
        after.get_document("key").unwrap(),
        &doc! {"k": 1, "region": 1}
    );
    assert_eq!(
        after.get("uuid"),
        before.get("uuid"),
        "refining keeps the uuid"
    );
    assert_ne!(after.get("lastmodEpoch"), before.get("lastmodEpoch"));
    let chunks = chunk_docs(&router, after.get("uuid").unwrap()).await;
    let bounds: Vec<(Document, Document, String)> = chunks
        .iter()
        .map(|c| {
            (
                c.get_document("min").unwrap().clone(),
                c.get_document("max").unwrap().clone(),
                c.get_str("shard").unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        bounds,
        vec![
            (
                doc! {"k": Bson::MinKey, "region": Bson::MinKey},
                doc! {"k": 100, "region": Bson::MinKey},
                "shard0".to_string()
            ),
            (
                doc! {"k": 100, "region": Bson::MinKey},
                doc! {"k": Bson::MaxKey, "region": Bson::MaxKey},
                "shard1".to_string()
            ),
        ]
    );
    assert_eq!(item_ids(&router).await, (0..200).collect::<Vec<_>>());

    let events = events_until(&router, id, "refineCollectionShardKey").await;
    let event = events.last().unwrap();
    assert_eq!(
        event.get_document("ns").unwrap(),
        &doc! {"db": "app", "coll": "items"}
    );
    let description = event.get_document("operationDescription").unwrap();
    assert_eq!(
        description.get_document("shardKey").unwrap(),
        &doc! {"k": 1, "region": 1}
    );
    assert_eq!(
        description.get_document("oldShardKey").unwrap(),
        &doc! {"k": 1}
    );
    // A write after the refine carries the refined key in its documentKey.
    router
        .database("app")
        .collection::<Document>("items")
        .insert_one(doc! {"_id": 500, "k": 500, "region": "eu"})
        .await
        .expect("insert after refine");
    let events = events_until(&router, id, "insert").await;
    assert_eq!(
        events.last().unwrap().get_document("documentKey").unwrap(),
        &doc! {"k": 500, "region": "eu", "_id": 500}
    );
}

/// The real server's refusals: a key that does not start with the current one (72), a
/// key without a supporting index (72), a collection that is not sharded (118).
#[tokio::test]
async fn refine_refuses_what_the_server_refuses() {
    let cluster = start("7.0.13");
    let router = client_for(&cluster.router_uri()).await;
    items_on_two_shards(&router).await;
    let err = run(
        &router,
        "admin",
        doc! {"refineCollectionShardKey": "app.items", "key": {"region": 1, "k": 1}},
    )
    .await
    .expect_err("a key that does not extend the current one");
    assert_eq!(code(&err), 72, "{err}");
    let err = run(
        &router,
        "admin",
        doc! {"refineCollectionShardKey": "app.items", "key": {"k": 1, "region": 1}},
    )
    .await
    .expect_err("no supporting index");
    assert_eq!(code(&err), 72, "{err}");
    let err = run(
        &router,
        "admin",
        doc! {"refineCollectionShardKey": "app.plain", "key": {"k": 1, "region": 1}},
    )
    .await
    .expect_err("not sharded");
    assert_eq!(code(&err), 118, "{err}");
    assert_eq!(
        catalog_entry(&router).await.get_document("key").unwrap(),
        &doc! {"k": 1}
    );
}

/// 6.0 has no `refineCollectionShardKey` event (it is 6.1+): the refine happens, the
/// stream says nothing of it.
#[tokio::test]
async fn refine_has_no_event_on_6_0() {
    let cluster = start("6.0.17");
    let router = client_for(&cluster.router_uri()).await;
    items_on_two_shards(&router).await;
    let id = open_stream(&router).await;
    router
        .database("app")
        .collection::<Document>("items")
        .create_index(
            mongodb::IndexModel::builder()
                .keys(doc! {"k": 1, "region": 1})
                .build(),
        )
        .await
        .expect("index on the refined key");
    run(
        &router,
        "admin",
        doc! {"refineCollectionShardKey": "app.items", "key": {"k": 1, "region": 1}},
    )
    .await
    .expect("refine");
    router
        .database("app")
        .collection::<Document>("items")
        .insert_one(doc! {"_id": 500, "k": 500, "region": "eu"})
        .await
        .expect("insert after refine");
    let events = events_until(&router, id, "insert").await;
    assert!(
        events
            .iter()
            .all(|e| e.get_str("operationType") != Ok("refineCollectionShardKey")),
        "{events:?}"
    );
}

/// Resharding gives the collection a new key and uuid, keeps exactly the owned
/// documents (the donor's orphans are not cloned), reports one `reshardCollection`
/// event with both keys and the new uuid, and no insert or delete events for the data
/// it moved.
#[tokio::test]
async fn reshard_changes_key_and_uuid_and_reports_it() {
    let cluster = start("7.0.13");
    let router = client_for(&cluster.router_uri()).await;
    items_on_two_shards(&router).await;
    let before = catalog_entry(&router).await;
    let id = open_stream(&router).await;
    run(
        &router,
        "admin",
        doc! {"reshardCollection": "app.items", "key": {"region": 1}},
    )
    .await
    .expect("reshard");

    let after = catalog_entry(&router).await;
    assert_eq!(after.get_document("key").unwrap(), &doc! {"region": 1});
    assert_ne!(
        after.get("uuid"),
        before.get("uuid"),
        "a resharded collection has a new uuid"
    );
    assert!(chunk_docs(&router, before.get("uuid").unwrap())
        .await
        .is_empty());
    assert!(!chunk_docs(&router, after.get("uuid").unwrap())
        .await
        .is_empty());
    assert_eq!(item_ids(&router).await, (0..200).collect::<Vec<_>>());
    let distribution: Vec<Document> = router
        .database("admin")
        .aggregate(vec![
            doc! {"$shardedDataDistribution": {}},
            doc! {"$match": {"ns": "app.items"}},
        ])
        .await
        .expect("$shardedDataDistribution")
        .try_collect()
        .await
        .expect("rows");
    let orphans: i64 = distribution
        .iter()
        .flat_map(|r| r.get_array("shards").cloned().unwrap_or_default())
        .filter_map(|s| {
            s.as_document()
                .map(|s| common::as_i64(s.get("numOrphanedDocs")))
        })
        .sum();
    assert_eq!(orphans, 0, "resharding clones owned documents only");
    // The old collection's pending range deletion (of the moved chunk) is gone with it:
    // run later, it would delete the new collection's documents.
    let shard0 = client_for(&cluster.shard("shard0").expect("shard0").uri()).await;
    let pending = shard0
        .database("config")
        .collection::<Document>("rangeDeletions")
        .count_documents(doc! {"nss": "app.items"})
        .await
        .expect("read the shard's range deletions");
    assert_eq!(pending, 0);

    let events = events_until(&router, id, "reshardCollection").await;
    assert!(
        events
            .iter()
            .all(|e| !matches!(e.get_str("operationType"), Ok("insert" | "delete" | "drop"))),
        "the moved data is not reported: {events:?}"
    );
    let event = events.last().unwrap();
    assert_eq!(
        event.get_document("ns").unwrap(),
        &doc! {"db": "app", "coll": "items"}
    );
    let description = event.get_document("operationDescription").unwrap();
    assert_eq!(
        description.get_document("shardKey").unwrap(),
        &doc! {"region": 1}
    );
    assert_eq!(
        description.get_document("oldShardKey").unwrap(),
        &doc! {"k": 1}
    );
    assert_eq!(description.get("reshardUUID"), after.get("uuid"));
    assert_eq!(event.get("collectionUUID"), before.get("uuid"));
}

/// The real server's refusals: a collection that is not sharded (118), `unique: true`
/// (72), a command without `key` (40414).
#[tokio::test]
async fn reshard_refuses_what_the_server_refuses() {
    let cluster = start("7.0.13");
    let router = client_for(&cluster.router_uri()).await;
    items_on_two_shards(&router).await;
    for (cmd, expected) in [
        (
            doc! {"reshardCollection": "app.plain", "key": {"region": 1}},
            118,
        ),
        (
            doc! {"reshardCollection": "app.items", "key": {"region": 1}, "unique": true},
            72,
        ),
        (doc! {"reshardCollection": "app.items"}, 40414),
    ] {
        let err = run(&router, "admin", cmd.clone())
            .await
            .expect_err("refused");
        assert_eq!(code(&err), expected, "{cmd}: {err}");
    }
    assert_eq!(
        catalog_entry(&router).await.get_document("key").unwrap(),
        &doc! {"k": 1}
    );
}

/// `renameCollection` onto a sharded collection with `dropTarget` replaces it on every
/// shard and in the catalog (5.0+); without `dropTarget` it fails with 48. Pins: the
/// router renamed on the primary shard only, leaving the target's documents on the
/// other shard and its catalog entry (the renamed collection read as the old one).
#[tokio::test]
async fn rename_onto_a_sharded_target_drops_it_everywhere() {
    let cluster = start("7.0.13");
    let router = client_for(&cluster.router_uri()).await;
    items_on_two_shards(&router).await;
    let staging = router.database("app").collection::<Document>("staging");
    staging
        .insert_many((1000..1010).map(|i| doc! {"_id": i, "k": i}))
        .await
        .expect("staging documents");
    let err = run(
        &router,
        "admin",
        doc! {"renameCollection": "app.staging", "to": "app.items"},
    )
    .await
    .expect_err("the target exists");
    assert_eq!(code(&err), 48, "{err}");
    run(
        &router,
        "admin",
        doc! {"renameCollection": "app.staging", "to": "app.items", "dropTarget": true},
    )
    .await
    .expect("rename with dropTarget");
    assert_eq!(item_ids(&router).await, (1000..1010).collect::<Vec<_>>());
    let entry = router
        .database("config")
        .collection::<Document>("collections")
        .find_one(doc! {"_id": "app.items"})
        .await
        .expect("read config.collections");
    assert!(
        entry.is_none(),
        "the renamed collection is unsharded: {entry:?}"
    );
}
