//! Chunk migrations through the router and the orphans they leave: visible on the donor
//! when read directly, never through the router, counted by `$shardedDataDistribution`,
//! and deleted by the donor's range deletion (after the cleanup delay, which
//! `cleanupOrphaned` waits for, or at once with `_waitForDelete`).

mod common;

use std::time::Duration;

use common::{as_i64, client_for, code, run};
use ferry_sandbox::{ShardedCluster, ShardedOptions};
use futures_util::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};
use mongodb::Client;

/// A two-shard cluster whose donors keep orphans for `cleanup_delay`; the balancer
/// never runs on its own during a test.
fn start(cleanup_delay: Duration) -> ShardedCluster {
    ShardedCluster::start(ShardedOptions {
        shards: 2,
        orphan_cleanup_delay: cleanup_delay,
        balancer_interval: Duration::from_secs(3600),
        ..Default::default()
    })
    .expect("cluster starts")
}

/// `app.items` sharded on `{k: 1}` on shard0 with documents k = 0..100, split at 50.
async fn items(router: &Client) {
    common::shard_items(router, 0..100, &[50]).await;
}

async fn move_upper_half(router: &Client, wait_for_delete: bool) {
    run(
        router,
        "admin",
        doc! {"moveChunk": "app.items", "find": {"k": 75}, "to": "shard1", "_waitForDelete": wait_for_delete},
    )
    .await
    .unwrap();
}

async fn direct(cluster: &ShardedCluster, shard: &str) -> Client {
    client_for(&cluster.shard(shard).unwrap().uri()).await
}

async fn count(client: &Client) -> u64 {
    let docs: Vec<Document> = client
        .database("app")
        .collection::<Document>("items")
        .find(doc! {})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    docs.len() as u64
}

async fn chunk_shards(router: &Client) -> Vec<String> {
    let config = router.database("config");
    let coll: Document = config
        .collection::<Document>("collections")
        .find_one(doc! {"_id": "app.items"})
        .await
        .unwrap()
        .expect("app.items is in config.collections");
    let uuid = coll.get("uuid").unwrap().clone();
    let chunks: Vec<Document> = config
        .collection::<Document>("chunks")
        .find(doc! {"uuid": uuid})
        .sort(doc! {"min": 1})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    chunks
        .iter()
        .map(|c| c.get_str("shard").unwrap().to_string())
        .collect()
}

/// Pins the ownership filter after a migration: the donor still holds the moved
/// documents (orphans, as a direct read shows), but reads through the router return
/// each document once.
#[tokio::test]
async fn orphans_are_visible_on_the_donor_but_never_through_the_router() {
    let cluster = start(Duration::from_secs(3600));
    let router = client_for(&cluster.router_uri()).await;
    items(&router).await;
    move_upper_half(&router, false).await;
    assert_eq!(chunk_shards(&router).await, vec!["shard0", "shard1"]);
    assert_eq!(
        count(&direct(&cluster, "shard0").await).await,
        100,
        "donor keeps orphans"
    );
    assert_eq!(count(&direct(&cluster, "shard1").await).await, 50);
    assert_eq!(count(&router).await, 100, "the router returns no orphan");
    let upper: Vec<Document> = router
        .database("app")
        .collection::<Document>("items")
        .find(doc! {"k": {"$gte": 50}})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(upper.len(), 50);
}

/// Pins `$shardedDataDistribution`: owned and orphaned documents per shard.
#[tokio::test]
async fn data_distribution_reports_owned_and_orphaned_documents() {
    let cluster = start(Duration::from_secs(3600));
    let router = client_for(&cluster.router_uri()).await;
    items(&router).await;
    move_upper_half(&router, false).await;
    let reply = run(
        &router,
        "admin",
        doc! {"aggregate": 1, "pipeline": [{"$shardedDataDistribution": {}}, {"$match": {"ns": "app.items"}}], "cursor": {}},
    )
    .await
    .unwrap();
    let batch = reply
        .get_document("cursor")
        .unwrap()
        .get_array("firstBatch")
        .unwrap();
    assert_eq!(batch.len(), 1);
    let shards = batch[0].as_document().unwrap().get_array("shards").unwrap();
    let of = |name: &str| {
        shards
            .iter()
            .filter_map(|s| s.as_document())
            .find(|s| s.get_str("shardName") == Ok(name))
            .cloned()
            .unwrap_or_else(|| panic!("{name} is reported: {shards:?}"))
    };
    let donor = of("shard0");
    assert_eq!(as_i64(donor.get("numOwnedDocuments")), 50);
    assert_eq!(as_i64(donor.get("numOrphanedDocs")), 50);
    let recipient = of("shard1");
    assert_eq!(as_i64(recipient.get("numOwnedDocuments")), 50);
    assert_eq!(as_i64(recipient.get("numOrphanedDocs")), 0);
}

/// Pins `_waitForDelete`: the donor's orphans are gone when `moveChunk` returns.
#[tokio::test]
async fn wait_for_delete_removes_orphans_before_move_chunk_returns() {
    let cluster = start(Duration::from_secs(3600));
    let router = client_for(&cluster.router_uri()).await;
    items(&router).await;
    move_upper_half(&router, true).await;
    assert_eq!(count(&direct(&cluster, "shard0").await).await, 50);
    assert_eq!(count(&direct(&cluster, "shard1").await).await, 50);
    assert_eq!(count(&router).await, 100);
}

/// Pins `cleanupOrphaned`: on the donor it waits for the pending range deletion (here
/// a short cleanup delay) and returns once the orphans are gone.
#[tokio::test]
async fn cleanup_orphaned_waits_for_the_cleanup_delay() {
    let cluster = start(Duration::from_millis(300));
    let router = client_for(&cluster.router_uri()).await;
    items(&router).await;
    move_upper_half(&router, false).await;
    let donor = direct(&cluster, "shard0").await;
    run(&donor, "admin", doc! {"cleanupOrphaned": "app.items"})
        .await
        .unwrap();
    assert_eq!(count(&donor).await, 50);
    assert_eq!(count(&router).await, 100);
}

/// Pins that `cleanupOrphaned` really waits: with a long cleanup delay it outlasts its
/// `maxTimeMS` (50 MaxTimeMSExpired) and the orphans stay.
#[tokio::test]
async fn cleanup_orphaned_does_not_return_before_the_delay() {
    let cluster = start(Duration::from_secs(3600));
    let router = client_for(&cluster.router_uri()).await;
    items(&router).await;
    move_upper_half(&router, false).await;
    let donor = direct(&cluster, "shard0").await;
    let err = run(
        &donor,
        "admin",
        doc! {"cleanupOrphaned": "app.items", "maxTimeMS": 200},
    )
    .await
    .unwrap_err();
    assert_eq!(code(&err), 50);
    assert_eq!(count(&donor).await, 100);
}

/// Pins that a chunk moved back to its old donor is not deleted there by the old range
/// deletion: the returning range replaces the orphans.
#[tokio::test]
async fn a_chunk_moved_back_keeps_its_documents() {
    let cluster = start(Duration::from_millis(300));
    let router = client_for(&cluster.router_uri()).await;
    items(&router).await;
    move_upper_half(&router, false).await;
    run(
        &router,
        "admin",
        doc! {"moveChunk": "app.items", "find": {"k": 75}, "to": "shard0"},
    )
    .await
    .unwrap();
    let old_donor = direct(&cluster, "shard0").await;
    run(&old_donor, "admin", doc! {"cleanupOrphaned": "app.items"})
        .await
        .unwrap();
    let new_donor = direct(&cluster, "shard1").await;
    run(&new_donor, "admin", doc! {"cleanupOrphaned": "app.items"})
        .await
        .unwrap();
    assert_eq!(count(&old_donor).await, 100);
    assert_eq!(count(&new_donor).await, 0);
    assert_eq!(count(&router).await, 100);
}

/// Pins moveChunk's failure paths: an unknown shard (70 ShardNotFound), an unsharded
/// collection (118 NamespaceNotSharded), migrations disallowed by `setAllowMigrations`
/// (117 ConflictingOperationInProgress).
#[tokio::test]
async fn move_chunk_failures() {
    let cluster = start(Duration::from_secs(3600));
    let router = client_for(&cluster.router_uri()).await;
    items(&router).await;
    let err = run(
        &router,
        "admin",
        doc! {"moveChunk": "app.items", "find": {"k": 75}, "to": "shard9"},
    )
    .await
    .unwrap_err();
    assert_eq!(code(&err), 70);
    let err = run(
        &router,
        "admin",
        doc! {"moveChunk": "app.other", "find": {"k": 75}, "to": "shard1"},
    )
    .await
    .unwrap_err();
    assert_eq!(code(&err), 118);
    run(
        &router,
        "admin",
        doc! {"setAllowMigrations": "app.items", "allowMigrations": false},
    )
    .await
    .unwrap();
    let err = run(
        &router,
        "admin",
        doc! {"moveChunk": "app.items", "find": {"k": 75}, "to": "shard1"},
    )
    .await
    .unwrap_err();
    assert_eq!(code(&err), 117);
    assert_eq!(chunk_shards(&router).await, vec!["shard0", "shard0"]);
}

/// Pins `moveRange` and `mergeChunks`: a range inside a chunk is split off and moved;
/// merging needs the chunks on one shard.
#[tokio::test]
async fn move_range_splits_and_merge_chunks_joins() {
    let cluster = start(Duration::from_secs(3600));
    let router = client_for(&cluster.router_uri()).await;
    items(&router).await;
    run(
        &router,
        "admin",
        doc! {"moveRange": "app.items", "min": {"k": 60}, "max": {"k": 70}, "toShard": "shard1", "_waitForDelete": true},
    )
    .await
    .unwrap();
    assert_eq!(
        chunk_shards(&router).await,
        vec!["shard0", "shard0", "shard1", "shard0"]
    );
    assert_eq!(count(&direct(&cluster, "shard1").await).await, 10);
    let err = run(
        &router,
        "admin",
        doc! {"mergeChunks": "app.items", "bounds": [{"k": 50}, {"k": 70}]},
    )
    .await
    .unwrap_err();
    assert_eq!(code(&err), 20);
    run(
        &router,
        "admin",
        doc! {"mergeChunks": "app.items", "bounds": [{"k": Bson::MinKey}, {"k": 60}]},
    )
    .await
    .unwrap();
    assert_eq!(
        chunk_shards(&router).await,
        vec!["shard0", "shard1", "shard0"]
    );
    assert_eq!(count(&router).await, 100);
}
