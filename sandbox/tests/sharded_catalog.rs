//! The sharding catalog through the router and on the config server: enableSharding,
//! shardCollection (ranged, hashed, compound, unique, the supporting index), primary
//! shards, listShards, getShardMap, and `config.*` as the real cluster keeps it.

mod common;

use common::{as_i64, client_for, code, run};
use ferry_sandbox::{ShardedCluster, ShardedOptions};
use futures_util::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};
use mongodb::Client;

fn start(shards: usize) -> ShardedCluster {
    ShardedCluster::start(ShardedOptions {
        shards,
        ..Default::default()
    })
    .expect("cluster starts")
}

async fn all(client: &Client, db: &str, coll: &str, filter: Document) -> Vec<Document> {
    client
        .database(db)
        .collection::<Document>(coll)
        .find(filter)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap()
}

#[tokio::test]
async fn shard_collection_records_the_collection_and_its_chunk_by_uuid() {
    let cluster = start(2);
    let router = client_for(&cluster.router_uri()).await;
    run(&router, "admin", doc! {"enableSharding": "app"})
        .await
        .unwrap();
    let reply = run(
        &router,
        "admin",
        doc! {"shardCollection": "app.users", "key": {"tenant": 1, "user": 1}},
    )
    .await
    .unwrap();
    assert_eq!(reply.get_str("collectionsharded"), Ok("app.users"));
    let config = client_for(&cluster.config_uri()).await;
    for client in [&router, &config] {
        let colls = all(client, "config", "collections", doc! {"_id": "app.users"}).await;
        assert_eq!(colls.len(), 1);
        assert_eq!(
            colls[0].get_document("key").unwrap(),
            &doc! {"tenant": 1, "user": 1}
        );
        let uuid = colls[0].get("uuid").cloned().unwrap();
        let chunks = all(client, "config", "chunks", doc! {"uuid": uuid}).await;
        assert_eq!(chunks.len(), 1);
        assert!(!chunks[0].contains_key("ns"), "{}", chunks[0]);
        assert_eq!(
            chunks[0].get_document("min").unwrap(),
            &doc! {"tenant": Bson::MinKey, "user": Bson::MinKey}
        );
        let dbs = all(client, "config", "databases", doc! {"_id": "app"}).await;
        assert_eq!(chunks[0].get_str("shard"), dbs[0].get_str("primary"));
    }
    // The supporting index was created on the empty collection.
    let indexes: Vec<String> = router
        .database("app")
        .collection::<Document>("users")
        .list_index_names()
        .await
        .unwrap();
    assert!(
        indexes.contains(&"tenant_1_user_1".to_string()),
        "{indexes:?}"
    );
    for name in ["shards", "settings", "version"] {
        assert!(
            !all(&router, "config", name, doc! {}).await.is_empty(),
            "config.{name}"
        );
    }
}

#[tokio::test]
async fn an_empty_collection_on_a_hashed_key_is_split_over_every_shard() {
    let cluster = start(3);
    let router = client_for(&cluster.router_uri()).await;
    let reply = run(
        &router,
        "admin",
        doc! {"shardCollection": "app.events", "key": {"deviceId": "hashed"}},
    )
    .await
    .unwrap();
    let uuid = reply.get("collectionUUID").cloned().unwrap();
    let chunks = all(&router, "config", "chunks", doc! {"uuid": uuid}).await;
    assert_eq!(chunks.len(), 6);
    let mut owners: Vec<&str> = chunks.iter().map(|c| c.get_str("shard").unwrap()).collect();
    owners.sort();
    owners.dedup();
    assert_eq!(owners, ["shard0", "shard1", "shard2"]);
}

#[tokio::test]
async fn a_non_empty_collection_needs_a_supporting_index() {
    let cluster = start(2);
    let router = client_for(&cluster.router_uri()).await;
    let coll = router.database("shop").collection::<Document>("orders");
    coll.insert_one(doc! {"customer": 1}).await.unwrap();
    let err = run(
        &router,
        "admin",
        doc! {"shardCollection": "shop.orders", "key": {"customer": 1}},
    )
    .await
    .unwrap_err();
    assert_eq!(code(&err), 72, "{err:?}");
    coll.create_index(
        mongodb::IndexModel::builder()
            .keys(doc! {"customer": 1, "at": 1})
            .build(),
    )
    .await
    .unwrap();
    run(
        &router,
        "admin",
        doc! {"shardCollection": "shop.orders", "key": {"customer": 1}},
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn unique_and_hashed_and_resharding_rules() {
    let cluster = start(2);
    let router = client_for(&cluster.router_uri()).await;
    let err = run(
        &router,
        "admin",
        doc! {"shardCollection": "app.a", "key": {"k": "hashed"}, "unique": true},
    )
    .await
    .unwrap_err();
    assert_eq!(code(&err), 72);
    run(
        &router,
        "admin",
        doc! {"shardCollection": "app.b", "key": {"email": 1}, "unique": true},
    )
    .await
    .unwrap();
    let colls = all(&router, "config", "collections", doc! {"_id": "app.b"}).await;
    assert_eq!(colls[0].get_bool("unique"), Ok(true));
    // The same key again is accepted; another key is refused.
    run(
        &router,
        "admin",
        doc! {"shardCollection": "app.b", "key": {"email": 1}, "unique": true},
    )
    .await
    .unwrap();
    let err = run(
        &router,
        "admin",
        doc! {"shardCollection": "app.b", "key": {"name": 1}},
    )
    .await
    .unwrap_err();
    assert_eq!(code(&err), 23);
}

#[tokio::test]
async fn databases_get_primary_shards_round_robin() {
    let cluster = start(2);
    let router = client_for(&cluster.router_uri()).await;
    for db in ["one", "two", "three"] {
        router
            .database(db)
            .collection::<Document>("c")
            .insert_one(doc! {"x": 1})
            .await
            .unwrap();
    }
    let dbs = all(&router, "config", "databases", doc! {}).await;
    let primary = |name: &str| {
        dbs.iter()
            .find(|d| d.get_str("_id") == Ok(name))
            .and_then(|d| d.get_str("primary").ok())
            .unwrap()
            .to_string()
    };
    assert_ne!(primary("one"), primary("two"));
    assert_eq!(primary("one"), primary("three"));
    // The unsharded collection lives on its database's primary shard only.
    let home = cluster.shard(&primary("two")).unwrap();
    let direct = client_for(&home.uri()).await;
    assert_eq!(all(&direct, "two", "c", doc! {}).await.len(), 1);
}

#[tokio::test]
async fn list_shards_and_shard_map_name_every_shard() {
    let cluster = start(2);
    let router = client_for(&cluster.router_uri()).await;
    let reply = run(&router, "admin", doc! {"listShards": 1}).await.unwrap();
    let shards = reply.get_array("shards").unwrap();
    assert_eq!(shards.len(), 2);
    let first = shards[0].as_document().unwrap();
    assert_eq!(first.get_str("_id"), Ok("shard0"));
    assert!(first
        .get_str("host")
        .unwrap()
        .starts_with("shard0/127.0.0.1:"));
    assert_eq!(as_i64(first.get("state")), 1);
    let map = run(&router, "admin", doc! {"getShardMap": 1})
        .await
        .unwrap();
    let map = map.get_document("map").unwrap();
    assert!(
        map.contains_key("shard1") && map.contains_key("config"),
        "{map}"
    );
}

/// `find` with `min`/`max` on the hashed shard key index answers by hashed value range:
/// the ranges of all chunks together return every document exactly once.
#[tokio::test]
async fn find_with_hashed_min_max_returns_each_chunk_range() {
    let cluster = start(2);
    let router = client_for(&cluster.router_uri()).await;
    let reply = run(
        &router,
        "admin",
        doc! {"shardCollection": "app.h", "key": {"k": "hashed"}},
    )
    .await
    .unwrap();
    let uuid = reply.get("collectionUUID").cloned().unwrap();
    let coll = router.database("app").collection::<Document>("h");
    coll.insert_many((0..50).map(|i| doc! {"k": i}))
        .await
        .unwrap();
    let chunks = all(&router, "config", "chunks", doc! {"uuid": uuid}).await;
    let mut seen = Vec::new();
    for chunk in &chunks {
        let reply = run(
            &router,
            "app",
            doc! {"find": "h", "min": chunk.get_document("min").unwrap().clone(),
            "max": chunk.get_document("max").unwrap().clone(), "hint": {"k": "hashed"}},
        )
        .await
        .unwrap();
        let batch = reply
            .get_document("cursor")
            .unwrap()
            .get_array("firstBatch")
            .unwrap();
        assert!(
            batch.len() < 50,
            "one chunk's range returns only its documents"
        );
        for d in batch {
            seen.push(d.as_document().unwrap().get_i32("k").unwrap());
        }
    }
    seen.sort();
    assert_eq!(seen, (0..50).collect::<Vec<_>>());
}

#[tokio::test]
async fn dropping_a_sharded_collection_or_database_clears_the_catalog() {
    let cluster = start(2);
    let router = client_for(&cluster.router_uri()).await;
    run(
        &router,
        "admin",
        doc! {"shardCollection": "app.h", "key": {"k": "hashed"}},
    )
    .await
    .unwrap();
    let coll = router.database("app").collection::<Document>("h");
    coll.insert_many((0..20).map(|i| doc! {"k": i}))
        .await
        .unwrap();
    coll.drop().await.unwrap();
    assert!(all(&router, "config", "collections", doc! {})
        .await
        .is_empty());
    assert!(all(&router, "config", "chunks", doc! {}).await.is_empty());
    for (_, uri) in cluster.shard_uris() {
        let shard = client_for(&uri).await;
        let names = shard.database("app").list_collection_names().await.unwrap();
        assert!(!names.contains(&"h".to_string()), "{uri}: {names:?}");
    }
    router
        .database("app")
        .collection::<Document>("plain")
        .insert_one(doc! {"x": 1})
        .await
        .unwrap();
    router.database("app").drop().await.unwrap();
    assert!(all(&router, "config", "databases", doc! {"_id": "app"})
        .await
        .is_empty());
}

/// Sharding a collection that does not exist yet on `{_id: 1}` creates it; its `_id`
/// index supports the key (failed before with 85 IndexOptionsConflict: the router tried
/// to create a second index `_id_1` on the same key).
#[tokio::test]
async fn sharding_a_missing_collection_on_id_uses_its_id_index() {
    let cluster = start(2);
    let router = client_for(&cluster.router_uri()).await;
    run(&router, "admin", doc! {"enableSharding": "shop"})
        .await
        .unwrap();
    run(
        &router,
        "admin",
        doc! {"shardCollection": "shop.customers", "key": {"_id": 1}},
    )
    .await
    .unwrap();
    let names: Vec<String> = router
        .database("shop")
        .collection::<Document>("customers")
        .list_index_names()
        .await
        .unwrap();
    assert_eq!(names, vec!["_id_".to_string()]);
    run(
        &router,
        "admin",
        doc! {"shardCollection": "shop.users", "key": {"_id": 1}, "unique": true},
    )
    .await
    .unwrap();
}

/// `splitChunk` on the shard primary that owns a chunk splits it at each split key, as
/// the real shard does for the router's `split`; a shard that does not own the chunk
/// refuses with StaleConfig, and a replica set has no such command to run.
#[tokio::test]
async fn split_chunk_on_the_owning_shard_primary() {
    let cluster = start(2);
    let router = client_for(&cluster.router_uri()).await;
    common::shard_items(&router, 0..100, &[]).await;
    let shard0 = client_for(&cluster.shard("shard0").unwrap().uri()).await;
    run(
        &shard0,
        "admin",
        doc! {"splitChunk": "app.items", "from": "shard0", "keyPattern": {"k": 1},
        "min": {"k": Bson::MinKey}, "max": {"k": Bson::MaxKey}, "splitKeys": [{"k": 50}, {"k": 20}]},
    )
    .await
    .unwrap();
    let mut bounds: Vec<String> = all(&router, "config", "chunks", doc! {})
        .await
        .iter()
        .map(|c| c.get_document("min").unwrap().get("k").unwrap().to_string())
        .collect();
    bounds.sort();
    assert_eq!(bounds.len(), 3, "{bounds:?}");
    let shard1 = client_for(&cluster.shard("shard1").unwrap().uri()).await;
    let err = run(
        &shard1,
        "admin",
        doc! {"splitChunk": "app.items", "from": "shard1", "keyPattern": {"k": 1},
        "min": {"k": 50}, "max": {"k": Bson::MaxKey}, "splitKeys": [{"k": 70}]},
    )
    .await
    .unwrap_err();
    assert_eq!(code(&err), 13388, "{err:?}");
    let err = run(
        &router,
        "admin",
        doc! {"splitChunk": "app.items", "min": {"k": 50}, "max": {"k": Bson::MaxKey}, "splitKeys": [{"k": 70}]},
    )
    .await
    .unwrap_err();
    assert!(code(&err) != 0, "{err:?}");
}

/// Pins `shardCollection`'s collation rules: the sandbox ignored `collation`, so it
/// sharded a collection whose default collation is not simple (a real server refuses
/// unless `collation: {locale: "simple"}` is given, since shard keys compare binary) and
/// accepted a non-simple `collation`. Both are BadValue; with the simple collation the
/// collection is sharded and its supporting index carries the simple collation.
#[tokio::test]
async fn shard_collection_requires_the_simple_collation() {
    let cluster = start(2);
    let router = client_for(&cluster.router_uri()).await;
    run(
        &router,
        "admin",
        doc! {"enableSharding": "app", "primaryShard": "shard0"},
    )
    .await
    .unwrap();
    run(
        &router,
        "app",
        doc! {"create": "people", "collation": {"locale": "fr", "strength": 2}},
    )
    .await
    .expect("create with a default collation");
    let refused = run(
        &router,
        "admin",
        doc! {"shardCollection": "app.people", "key": {"name": 1}},
    )
    .await
    .expect_err("a non-simple default collation needs an explicit simple collation");
    assert_eq!(code(&refused), 2, "{refused}");
    let refused = run(
        &router,
        "admin",
        doc! {"shardCollection": "app.people", "key": {"name": 1}, "collation": {"locale": "fr"}},
    )
    .await
    .expect_err("only the simple collation is allowed");
    assert_eq!(code(&refused), 2, "{refused}");
    let refused = run(
        &router,
        "admin",
        doc! {"shardCollection": "app.other", "key": {"name": 1}, "collation": {"locale": "en"}},
    )
    .await
    .expect_err("only the simple collation is allowed, whatever the collection's");
    assert_eq!(code(&refused), 2, "{refused}");
    let config = client_for(&cluster.config_uri()).await;
    assert!(
        all(&config, "config", "collections", doc! {"_id": "app.people"})
            .await
            .is_empty(),
        "a refused shardCollection leaves no catalog entry"
    );
    run(
        &router,
        "admin",
        doc! {"shardCollection": "app.people", "key": {"name": 1}, "collation": {"locale": "simple"}},
    )
    .await
    .expect("sharded with the simple collation");
    let indexes = run(&router, "app", doc! {"listIndexes": "people"})
        .await
        .unwrap();
    let batch = indexes
        .get_document("cursor")
        .unwrap()
        .get_array("firstBatch")
        .unwrap();
    let supporting = batch
        .iter()
        .filter_map(Bson::as_document)
        .find(|i| i.get_document("key").ok() == Some(&doc! {"name": 1}))
        .expect("the supporting index");
    // The simple collation is stored as none (listIndexes shows no collation).
    assert!(
        !supporting.contains_key("collation"),
        "the supporting index compares with the simple collation: {supporting}"
    );
}

/// Events of a database-level change stream through the router until `until` is seen.
async fn events_until(
    router: &Client,
    cursor: i64,
    until: impl Fn(&Document) -> bool,
) -> Vec<Document> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut events = Vec::new();
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "the awaited event never came: {events:?}"
        );
        let reply = run(
            router,
            "app",
            doc! {"getMore": cursor, "collection": "$cmd.aggregate", "maxTimeMS": 300},
        )
        .await
        .unwrap();
        let batch = reply
            .get_document("cursor")
            .unwrap()
            .get_array("nextBatch")
            .unwrap();
        for e in batch.iter().filter_map(Bson::as_document) {
            events.push(e.clone());
            if until(e) {
                return events;
            }
        }
        run(
            router,
            "admin",
            doc! {"appendOplogNote": 1, "data": {"msg": "tick"}},
        )
        .await
        .unwrap();
    }
}

/// Pins `renameCollection` of a sharded collection (allowed within its database since
/// 5.0): the sandbox router refused it. Now every shard renames its copy, the catalog
/// entry moves with its uuid (so the chunks follow), reads and targeted writes work
/// under the new name, a change stream through the router shows one `rename` event,
/// renaming into another database is CommandFailed, onto an existing collection
/// NamespaceExists unless `dropTarget`.
#[tokio::test]
async fn a_sharded_collection_is_renamed_within_its_database() {
    let cluster = ShardedCluster::start(ShardedOptions {
        shards: 2,
        periodic_noop_interval: std::time::Duration::from_millis(100),
        ..Default::default()
    })
    .expect("cluster starts");
    let router = client_for(&cluster.router_uri()).await;
    common::shard_items(&router, 0..200, &[100]).await;
    run(
        &router,
        "admin",
        doc! {"moveChunk": "app.items", "find": {"k": 150}, "to": "shard1", "_waitForDelete": true},
    )
    .await
    .unwrap();
    let config = client_for(&cluster.config_uri()).await;
    let uuid = all(&config, "config", "collections", doc! {"_id": "app.items"}).await[0]
        .get("uuid")
        .cloned()
        .unwrap();
    let across = run(
        &router,
        "admin",
        doc! {"renameCollection": "app.items", "to": "elsewhere.items"},
    )
    .await
    .expect_err("a sharded collection stays in its database");
    assert_eq!(code(&across), 125, "{across}");
    let stream = run(
        &router,
        "app",
        doc! {"aggregate": 1, "pipeline": [{"$changeStream": {}}], "cursor": {}},
    )
    .await
    .unwrap();
    let cursor = stream
        .get_document("cursor")
        .unwrap()
        .get_i64("id")
        .unwrap();
    run(
        &router,
        "admin",
        doc! {"renameCollection": "app.items", "to": "app.things"},
    )
    .await
    .expect("rename a sharded collection within its database");
    let entries = all(
        &config,
        "config",
        "collections",
        doc! {"_id": {"$in": ["app.items", "app.things"]}},
    )
    .await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0].get_str("_id"), Ok("app.things"));
    assert_eq!(entries[0].get("uuid"), Some(&uuid), "the uuid stays");
    let chunks = all(&config, "config", "chunks", doc! {"uuid": uuid.clone()}).await;
    assert_eq!(chunks.len(), 2, "the chunks follow by uuid");
    for shard in ["shard0", "shard1"] {
        let direct = client_for(&cluster.shard(shard).unwrap().uri()).await;
        let names = direct
            .database("app")
            .list_collection_names()
            .await
            .unwrap();
        assert_eq!(names, ["things"], "{shard} renamed its copy");
    }
    let things = router.database("app").collection::<Document>("things");
    assert_eq!(things.count_documents(doc! {}).await.unwrap(), 200);
    things
        .insert_one(doc! {"_id": 500, "k": 500})
        .await
        .expect("insert under the new name");
    let shard1 = client_for(&cluster.shard("shard1").unwrap().uri()).await;
    assert_eq!(
        shard1
            .database("app")
            .collection::<Document>("things")
            .count_documents(doc! {"_id": 500})
            .await
            .unwrap(),
        1,
        "the insert was routed by the renamed collection's chunks"
    );
    let events = events_until(&router, cursor, |e| {
        e.get_str("operationType") == Ok("insert")
    })
    .await;
    let renames: Vec<&Document> = events
        .iter()
        .filter(|e| e.get_str("operationType") == Ok("rename"))
        .collect();
    assert_eq!(renames.len(), 1, "one rename event: {events:?}");
    assert_eq!(
        renames[0].get_document("to").unwrap(),
        &doc! {"db": "app", "coll": "things"}
    );

    router
        .database("app")
        .collection::<Document>("other")
        .insert_one(doc! {"_id": 1})
        .await
        .unwrap();
    let exists = run(
        &router,
        "admin",
        doc! {"renameCollection": "app.things", "to": "app.other"},
    )
    .await
    .expect_err("the target exists");
    assert_eq!(code(&exists), 48, "{exists}");
    run(
        &router,
        "admin",
        doc! {"renameCollection": "app.things", "to": "app.other", "dropTarget": true},
    )
    .await
    .expect("rename over an existing collection with dropTarget");
    let other = router.database("app").collection::<Document>("other");
    assert_eq!(other.count_documents(doc! {}).await.unwrap(), 201);
    assert_eq!(
        all(&config, "config", "collections", doc! {"_id": "app.other"}).await[0].get("uuid"),
        Some(&uuid)
    );
}
