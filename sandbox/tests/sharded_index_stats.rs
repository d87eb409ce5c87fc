//! What a client learns about a sharded cluster's nodes without reading their data:
//! `$indexStats` through the router (one entry per index and per shard owning chunks,
//! naming the shard) and each node's sharding role in `getCmdLineOpts`.

mod common;

use std::time::Duration;

use common::{client_for, run};
use ferry_sandbox::{ShardedCluster, ShardedOptions};
use futures_util::TryStreamExt;
use mongodb::bson::{doc, Document};

fn start() -> ShardedCluster {
    ShardedCluster::start(ShardedOptions {
        shards: 2,
        balancer_interval: Duration::from_secs(3600),
        ..Default::default()
    })
    .expect("cluster starts")
}

/// Pins `$indexStats` through the router: an index built directly on one shard shows
/// for that shard only, so a client can find indexes that differ between shards.
#[tokio::test]
async fn index_stats_lists_each_shards_indexes() {
    let cluster = start();
    let router = client_for(&cluster.router_uri()).await;
    common::shard_items(&router, 0..10, &[5]).await;
    run(
        &router,
        "admin",
        doc! {"moveChunk": "app.items", "find": {"k": 7}, "to": "shard1", "_waitForDelete": true},
    )
    .await
    .unwrap();
    let shard0 = client_for(&cluster.shard("shard0").unwrap().uri()).await;
    run(
        &shard0,
        "app",
        doc! {"createIndexes": "items", "indexes": [{"key": {"extra": 1}, "name": "extra_1"}]},
    )
    .await
    .unwrap();
    let stats: Vec<Document> = router
        .database("app")
        .collection::<Document>("items")
        .aggregate(vec![
            doc! {"$indexStats": {}},
            doc! {"$sort": {"name": 1, "shard": 1}},
        ])
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let seen: Vec<(String, String)> = stats
        .iter()
        .map(|s| {
            (
                s.get_str("name").unwrap().to_string(),
                s.get_str("shard").unwrap().to_string(),
            )
        })
        .collect();
    let expected: Vec<(String, String)> = [
        ("_id_", "shard0"),
        ("_id_", "shard1"),
        ("extra_1", "shard0"),
        ("k_1", "shard0"),
        ("k_1", "shard1"),
    ]
    .iter()
    .map(|(n, s)| (n.to_string(), s.to_string()))
    .collect();
    assert_eq!(seen, expected, "{stats:?}");
    let extra = &stats[2];
    assert_eq!(extra.get_document("key").unwrap(), &doc! {"extra": 1});
    assert_eq!(
        extra.get_document("spec").unwrap().get_str("name").unwrap(),
        "extra_1"
    );
    assert!(extra.get_str("host").unwrap().contains(':'));
}

/// Pins `parsed.sharding.clusterRole`: `shardsvr` on a shard, `configsvr` on the config
/// servers, absent on the router (a mongos has no cluster role).
#[tokio::test]
async fn cmd_line_opts_carry_the_cluster_role() {
    let cluster = start();
    let role = |reply: Document| {
        reply
            .get_document("parsed")
            .ok()
            .and_then(|p| p.get_document("sharding").ok())
            .and_then(|s| s.get_str("clusterRole").ok())
            .map(String::from)
    };
    let shard = client_for(&cluster.shard("shard0").unwrap().uri()).await;
    let reply = run(&shard, "admin", doc! {"getCmdLineOpts": 1})
        .await
        .unwrap();
    assert_eq!(role(reply).as_deref(), Some("shardsvr"));
    let config = client_for(&cluster.config_uri()).await;
    let reply = run(&config, "admin", doc! {"getCmdLineOpts": 1})
        .await
        .unwrap();
    assert_eq!(role(reply).as_deref(), Some("configsvr"));
    let router = client_for(&cluster.router_uri()).await;
    let reply = run(&router, "admin", doc! {"getCmdLineOpts": 1})
        .await
        .unwrap();
    assert_eq!(role(reply), None);
}

/// Pins the privilege of `$indexStats`: `indexStats` (clusterMonitor has it), not
/// `find` — a user holding only `readAnyDatabase` is refused with 13 Unauthorized.
#[tokio::test]
async fn index_stats_needs_the_index_stats_privilege() {
    let cluster = ShardedCluster::start(ShardedOptions {
        shards: 2,
        balancer_interval: Duration::from_secs(3600),
        users: vec![
            ("admin".into(), "pw".into(), vec!["root".into()]),
            ("reader".into(), "pw".into(), vec!["readAnyDatabase".into()]),
            ("monitor".into(), "pw".into(), vec!["clusterMonitor".into()]),
        ],
        ..Default::default()
    })
    .expect("cluster starts");
    let admin = client_for(&cluster.router_uri_with_user("admin", "pw")).await;
    common::shard_items(&admin, 0..4, &[]).await;
    let index_stats = |user: &'static str| {
        let uri = cluster.router_uri_with_user(user, "pw");
        async move {
            let client = client_for(&uri).await;
            run(
                &client,
                "app",
                doc! {"aggregate": "items", "pipeline": [{"$indexStats": {}}], "cursor": {}},
            )
            .await
        }
    };
    let err = index_stats("reader").await.unwrap_err();
    assert_eq!(common::code(&err), 13, "{err:?}");
    let reply = index_stats("monitor").await.unwrap();
    let batch = reply
        .get_document("cursor")
        .unwrap()
        .get_array("firstBatch")
        .unwrap();
    assert_eq!(batch.len(), 2, "_id_ and k_1 on shard0: {reply}");
}
