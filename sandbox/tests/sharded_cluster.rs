//! The sandbox sharded cluster as drivers see it: a mongos router, a config server
//! replica set, shard replica sets, one cluster clock, one oplog per shard, and the
//! cluster-wide commands a router answers.

mod common;

use std::time::Duration;

use common::{as_i64, client_for, code, run};
use ferry_sandbox::{ShardedCluster, ShardedOptions};
use futures_util::TryStreamExt;
use mongodb::bson::{doc, Document, Timestamp};

pub fn start(shards: usize) -> ShardedCluster {
    ShardedCluster::start(ShardedOptions {
        shards,
        ..Default::default()
    })
    .expect("cluster starts")
}

#[tokio::test]
async fn router_answers_hello_as_a_mongos() {
    let cluster = start(2);
    let client = client_for(&cluster.router_uri()).await;
    let hello = run(&client, "admin", doc! {"hello": 1}).await.unwrap();
    assert_eq!(hello.get_str("msg"), Ok("isdbgrid"));
    assert!(!hello.contains_key("setName"), "{hello}");
    assert!(!hello.contains_key("hosts"), "{hello}");
    assert!(hello.get_document("$clusterTime").is_ok(), "{hello}");
    let legacy = run(&client, "admin", doc! {"isMaster": 1}).await.unwrap();
    assert_eq!(legacy.get_bool("ismaster"), Ok(true));
    assert_eq!(legacy.get_str("msg"), Ok("isdbgrid"));
    assert!(!cluster.router_uri().contains("replicaSet"));
}

#[tokio::test]
async fn config_server_and_shards_are_replica_sets_with_their_names() {
    let cluster = start(3);
    let config = client_for(&cluster.config_uri()).await;
    let hello = run(&config, "admin", doc! {"hello": 1}).await.unwrap();
    assert_eq!(as_i64(hello.get("configsvr")), 2);
    let names: Vec<String> = cluster.shard_uris().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["shard0", "shard1", "shard2"]);
    for (name, uri) in cluster.shard_uris() {
        let shard = client_for(&uri).await;
        let hello = run(&shard, "admin", doc! {"hello": 1}).await.unwrap();
        assert_eq!(hello.get_str("setName"), Ok(name.as_str()));
        assert!(!hello.contains_key("configsvr"));
    }
}

/// Documents inserted one after another through the router land on different shards;
/// their oplog timestamps follow the insertion order across shards (one cluster clock),
/// and each shard's oplog holds only its own documents.
#[tokio::test]
async fn one_cluster_clock_and_one_oplog_per_shard() {
    let cluster = start(2);
    let client = client_for(&cluster.router_uri()).await;
    run(
        &client,
        "admin",
        doc! {"shardCollection": "app.events", "key": {"_id": "hashed"}},
    )
    .await
    .unwrap();
    let coll = client.database("app").collection::<Document>("events");
    for i in 0..40 {
        coll.insert_one(doc! {"_id": i}).await.unwrap();
    }
    let mut stamps: Vec<(Timestamp, i32)> = Vec::new();
    let mut per_shard = Vec::new();
    for (_, uri) in cluster.shard_uris() {
        let shard = client_for(&uri).await;
        let oplog = shard.database("local").collection::<Document>("oplog.rs");
        let entries: Vec<Document> = oplog
            .find(doc! {"ns": "app.events", "op": "i"})
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        per_shard.push(entries.len());
        for e in entries {
            let ts = e.get_timestamp("ts").unwrap();
            let id = e.get_document("o").unwrap().get_i32("_id").unwrap();
            stamps.push((ts, id));
        }
    }
    assert_eq!(per_shard.iter().sum::<usize>(), 40);
    assert!(per_shard.iter().all(|n| *n > 0), "{per_shard:?}");
    stamps.sort_by_key(|(ts, _)| (ts.time, ts.increment));
    let order: Vec<i32> = stamps.iter().map(|(_, id)| *id).collect();
    assert_eq!(order, (0..40).collect::<Vec<_>>());
}

#[tokio::test]
async fn replica_set_commands_are_refused_by_the_router() {
    let cluster = start(1);
    let client = client_for(&cluster.router_uri()).await;
    let err = run(&client, "admin", doc! {"replSetGetStatus": 1})
        .await
        .unwrap_err();
    // A real mongos answers without an error code, which the Rust driver reports as an
    // invalid reply carrying the server's response.
    let reply = server_response(&format!("{err:?}"));
    assert_eq!(reply.get_str("info"), Ok("mongos"), "{reply}");
    assert_eq!(
        reply.get_str("errmsg"),
        Ok("replSetGetStatus is not supported through mongos")
    );
    let err = run(&client, "admin", doc! {"replSetStepDown": 10})
        .await
        .unwrap_err();
    assert_eq!(code(&err), 59);
    let status = run(&client, "admin", doc! {"serverStatus": 1})
        .await
        .unwrap();
    assert_eq!(status.get_str("process"), Ok("mongos"));
    let build = run(&client, "admin", doc! {"buildInfo": 1}).await.unwrap();
    assert_eq!(build.get_str("version"), Ok("7.0.13"));
}

/// The raw reply a driver error's debug output carries (`server_response`, hex BSON).
fn server_response(debug: &str) -> Document {
    let start = debug.find("data: \"").expect("raw reply in the error") + 7;
    let end = start + debug[start..].find('"').expect("end of the raw reply");
    let bytes = hex::decode(&debug[start..end]).expect("hex");
    Document::from_reader(bytes.as_slice()).expect("bson")
}

#[tokio::test]
async fn user_write_block_mode_blocks_writes_on_every_shard() {
    let cluster = start(2);
    let client = client_for(&cluster.router_uri()).await;
    run(
        &client,
        "admin",
        doc! {"setUserWriteBlockMode": 1, "global": true},
    )
    .await
    .unwrap();
    let err = client
        .database("app")
        .collection::<Document>("c")
        .insert_one(doc! {"x": 1})
        .await
        .unwrap_err();
    assert_eq!(code(&err), 371);
    for (_, uri) in cluster.shard_uris() {
        let shard = client_for(&uri).await;
        let err = shard
            .database("app")
            .collection::<Document>("direct")
            .insert_one(doc! {"x": 1})
            .await
            .unwrap_err();
        assert_eq!(code(&err), 371, "shard {uri}");
    }
    run(
        &client,
        "admin",
        doc! {"setUserWriteBlockMode": 1, "global": false},
    )
    .await
    .unwrap();
    client
        .database("app")
        .collection::<Document>("c")
        .insert_one(doc! {"x": 1})
        .await
        .unwrap();
}

#[tokio::test]
async fn feature_compatibility_version_is_set_on_every_node() {
    let cluster = start(2);
    let client = client_for(&cluster.router_uri()).await;
    run(
        &client,
        "admin",
        doc! {"setFeatureCompatibilityVersion": "6.0", "confirm": true},
    )
    .await
    .unwrap();
    let mut uris: Vec<String> = cluster.shard_uris().into_iter().map(|(_, u)| u).collect();
    uris.push(cluster.config_uri());
    for uri in uris {
        let node = client_for(&uri).await;
        let fcv = run(
            &node,
            "admin",
            doc! {"getParameter": 1, "featureCompatibilityVersion": 1},
        )
        .await
        .unwrap();
        let version = fcv
            .get_document("featureCompatibilityVersion")
            .and_then(|d| d.get_str("version"))
            .unwrap();
        assert_eq!(version, "6.0", "{uri}");
    }
}

/// Pins: a shard primary stepping down while writes go through the router. The router
/// waits for the shard's new primary and retries, so no write through it fails.
#[tokio::test]
async fn writes_through_the_router_survive_a_shard_stepdown() {
    let cluster = start(2);
    let client = client_for(&cluster.router_uri()).await;
    run(
        &client,
        "admin",
        doc! {"shardCollection": "app.orders", "key": {"_id": "hashed"}},
    )
    .await
    .unwrap();
    let coll = client.database("app").collection::<Document>("orders");
    for i in 0..20 {
        coll.insert_one(doc! {"_id": i}).await.unwrap();
    }
    let shard = cluster.shard("shard1").expect("shard1");
    shard.step_down(Duration::from_millis(300));
    for i in 20..60 {
        coll.insert_one(doc! {"_id": i}).await.unwrap();
    }
    // The same through the fault command on the shard's own port.
    let direct = client_for(&shard.uri()).await;
    run(
        &direct,
        "admin",
        doc! {"sandboxFault": 1, "stepDownSecs": 1},
    )
    .await
    .unwrap();
    for i in 60..80 {
        coll.insert_one(doc! {"_id": i}).await.unwrap();
    }
    assert_eq!(coll.count_documents(doc! {}).await.unwrap(), 80);
}

/// Dropping the router's connections: the driver reconnects and retries its writes, as
/// against a real mongos.
#[tokio::test]
async fn dropped_router_connections_are_retried_by_the_driver() {
    let cluster = start(2);
    let client = client_for(&cluster.router_uri()).await;
    let coll = client.database("app").collection::<Document>("c");
    coll.insert_one(doc! {"_id": 0}).await.unwrap();
    cluster.router().drop_connections();
    coll.insert_one(doc! {"_id": 1}).await.unwrap();
    assert_eq!(coll.count_documents(doc! {}).await.unwrap(), 2);
}
