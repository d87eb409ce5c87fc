//! Sharded destinations: a replica set migrated into a sharded cluster with the
//! `[sharding]` entries (ranged, hashed and compound keys, with and without supporting
//! indexes on the source), a two-shard source into three shards keeping its keys and
//! chunk boundaries, a `shardCollection` on the source during sync, and a restart in the
//! middle of the copy. Each run ends with every document and index compared, the
//! destination's catalog checked (key, unique) and documents found on more than one
//! destination shard (the collections were pre-split and spread before the copy).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use bson::{doc, Bson, Document};
use common::sharded::{shard_collection, shard_key, split_and_move, Deployment, Topologies};
use common::*;
use ferry::preflight::Status;
use ferry::progress::Phase;
use futures_util::TryStreamExt;
use mongodb::options::IndexOptions;
use mongodb::{Client, IndexModel};

/// The destination's `config.collections` entry of `ns`.
async fn catalog_entry(client: &Client, ns: &str) -> Option<Document> {
    client
        .database("config")
        .collection::<Document>("collections")
        .find_one(doc! {"_id": ns})
        .await
        .expect("read config.collections")
}

/// Documents each shard owns of `ns`, from `$shardedDataDistribution`.
async fn owned_by_shard(client: &Client, ns: &str) -> BTreeMap<String, i64> {
    let rows: Vec<Document> = client
        .database("admin")
        .aggregate(vec![
            doc! {"$shardedDataDistribution": {}},
            doc! {"$match": {"ns": ns}},
        ])
        .await
        .expect("$shardedDataDistribution")
        .try_collect()
        .await
        .expect("distribution rows");
    let mut out = BTreeMap::new();
    for row in rows {
        for shard in row.get_array("shards").cloned().unwrap_or_default() {
            let Some(shard) = shard.as_document() else {
                continue;
            };
            let owned = match shard.get("numOwnedDocuments") {
                Some(Bson::Int32(n)) => *n as i64,
                Some(Bson::Int64(n)) => *n,
                _ => 0,
            };
            out.insert(
                shard.get_str("shardName").unwrap_or_default().to_string(),
                owned,
            );
        }
    }
    out
}

/// Asserts `ns` is sharded on the destination on `key` (with `unique`) and that more than
/// one destination shard owns its documents.
async fn assert_sharded_and_spread(dst: &Client, ns: &str, key: Document, unique: bool) {
    let entry = catalog_entry(dst, ns)
        .await
        .unwrap_or_else(|| panic!("{ns} is not sharded on the destination"));
    let got = entry.get_document("key").cloned().unwrap_or_default();
    assert_eq!(
        got.iter().collect::<Vec<_>>(),
        key.iter().collect::<Vec<_>>(),
        "{ns}: destination shard key"
    );
    assert_eq!(
        entry.get_bool("unique").unwrap_or(false),
        unique,
        "{ns}: destination unique"
    );
    let owned = owned_by_shard(dst, ns).await;
    let loaded = owned.values().filter(|n| **n > 0).count();
    assert!(
        loaded > 1,
        "{ns}: only {loaded} destination shard(s) hold documents: {owned:?}"
    );
}

/// Creates on the source an index Ferry created on the destination only (the shard key's
/// supporting index), so that comparing every index then shows nothing else differs.
async fn add_to_source(src: &Client, db: &str, coll: &str, key: Document) {
    src.database(db)
        .collection::<Document>(coll)
        .create_index(IndexModel::builder().keys(key).build())
        .await
        .expect("create the supporting index on the source for the comparison");
}

const RS_TO_SHARDED_ENTRIES: &str = "[sharding]\ncreate_supporting_indexes = true\n[[sharding.entries]]\ndatabase = \"app\"\ncollection = \"mixed\"\nkey = [{email = 1}]\n[[sharding.entries]]\ndatabase = \"app\"\ncollection = \"events\"\nkey = [{kind = 1}, {at = 1}]\n[[sharding.entries]]\ndatabase = \"app\"\ncollection = \"counters\"\nkey = [{_id = \"hashed\"}]\n";

/// Replica set -> two shards, with a live workload during the copy and the sync: a
/// ranged key backed by a unique source index (sharded unique), a compound ranged key
/// and a hashed key, both without an index on the source (created on the destination).
/// Every document and index arrives, each collection is sharded as configured and
/// spread over both shards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_set_to_sharded_with_ranged_compound_and_hashed_keys_under_writes() {
    let t = Topologies::start(0, 2).await;
    seed(&t.src, "app", 1500).await;
    let load = Workload::start(t.src.clone(), "app", 1500);
    let m = start(t.config(RS_TO_SHARDED_ENTRIES)).await;
    poll("the copy to start", || copied(&m.progress) > 0).await;
    load.advance(20).await;
    wait_phase(&m.progress, Phase::ReadyForCutover).await;
    load.advance(40).await;
    load.stop().await;
    // Shard key changes on the source (which knows nothing of shard keys): an update
    // and a replacement move documents to other destination chunks.
    let mixed = t.src.database("app").collection::<Document>("mixed");
    for (i, email) in [
        (12usize, "aaa-first@example.com"),
        (13, "zzz-last@example.com"),
    ] {
        mixed
            .update_one(doc! {"_id": mixed_id(i)}, doc! {"$set": {"email": email}})
            .await
            .expect("update of the shard key field");
    }
    mixed
        .replace_one(
            doc! {"_id": mixed_id(14)},
            doc! {"email": "mmm-middle@example.com", "replaced": true},
        )
        .await
        .expect("replacement with another shard key");
    cutover_and_complete(m).await;

    assert_sharded_and_spread(&t.dst, "app.mixed", doc! {"email": 1}, true).await;
    assert_sharded_and_spread(&t.dst, "app.events", doc! {"kind": 1, "at": 1}, false).await;
    assert_sharded_and_spread(&t.dst, "app.counters", doc! {"_id": "hashed"}, false).await;
    add_to_source(&t.src, "app", "events", doc! {"kind": 1, "at": 1}).await;
    add_to_source(&t.src, "app", "counters", doc! {"_id": "hashed"}).await;
    let compared = assert_same(&t.src, &t.dst).await;
    assert!(compared >= 4500, "compared only {compared} documents");
}

/// With `create_supporting_indexes = false`, a shard key without an index on the source
/// is refused before anything is copied, naming the collection, the key and the fix.
/// Once the index exists on the source, the same config migrates, and the destination's
/// indexes are exactly the source's (nothing was added).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_supporting_indexes_the_source_index_is_required() {
    let t = Topologies::start(0, 2).await;
    let orders = t.src.database("shop").collection::<Document>("orders");
    orders
        .insert_many((0..600).map(|i| {
            doc! {"_id": i as i32, "region": (["eu", "us", "ap"][i % 3]), "customer": format!("c{:04}", i % 97), "total": i as f64}
        }))
        .await
        .expect("seed orders");
    let cfg = t.config("[sharding]\ncreate_supporting_indexes = false\n[[sharding.entries]]\ndatabase = \"shop\"\ncollection = \"orders\"\nkey = [{region = 1}, {customer = 1}]\n");

    let report = ferry::preflight::run_checks(&cfg).await;
    let check = report
        .check("sharding entries")
        .expect("the report has a sharding entries line");
    assert_eq!(check.status, Status::Fail, "{check:?}");
    assert!(
        check.message.contains("shop.orders")
            && check.message.contains("region")
            && check.message.contains("create_supporting_indexes = false"),
        "the failure names the collection, the key and the setting: {}",
        check.message
    );

    orders
        .create_index(
            IndexModel::builder()
                .keys(doc! {"region": 1, "customer": 1, "total": -1})
                .options(
                    IndexOptions::builder()
                        .name("by_region".to_string())
                        .build(),
                )
                .build(),
        )
        .await
        .expect("index on the source");
    let report = ferry::preflight::run_checks(&cfg).await;
    assert_eq!(
        report.check("sharding entries").map(|c| c.status),
        Some(Status::Pass),
        "{report}"
    );
    let m = start(cfg).await;
    cutover_and_complete(m).await;
    assert_sharded_and_spread(
        &t.dst,
        "shop.orders",
        doc! {"region": 1, "customer": 1},
        false,
    )
    .await;
    assert_same(&t.src, &t.dst).await;
}

/// Two source shards -> three destination shards: each sharded collection keeps its key,
/// `unique` and hashed setting; the ranged one gets the source's chunk boundaries and is
/// spread over the destination's shards; an unsharded collection stays unsharded. A live
/// workload writes to the source throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_shards_to_three_keep_keys_and_boundaries() {
    let t = Topologies::start(2, 3).await;
    seed(&t.src, "app", 1000).await;
    // counters: ranged on _id, split at 300 and 700, chunks on both source shards.
    shard_collection(&t.src, "app.counters", doc! {"_id": 1}).await;
    split_and_move(&t.src, "app.counters", doc! {"_id": 300i64}, "shard1").await;
    split_and_move(&t.src, "app.counters", doc! {"_id": 700i64}, "shard0").await;
    // tokens: hashed, sharded empty (pre-split over the source's shards), then filled.
    shard_collection(&t.src, "app.tokens", doc! {"owner": "hashed"}).await;
    t.src
        .database("app")
        .collection::<Document>("tokens")
        .insert_many((0..400).map(|i| doc! {"_id": i, "owner": format!("u{i}")}))
        .await
        .expect("seed tokens");
    let load = Workload::start(t.src.clone(), "app", 1000);
    let m = start(t.config("")).await;
    poll("the copy to start", || copied(&m.progress) > 0).await;
    wait_phase(&m.progress, Phase::ReadyForCutover).await;
    load.advance(30).await;
    load.stop().await;
    cutover_and_complete(m).await;

    assert_sharded_and_spread(&t.dst, "app.counters", doc! {"_id": 1}, false).await;
    assert_sharded_and_spread(&t.dst, "app.tokens", doc! {"owner": "hashed"}, false).await;
    assert_eq!(
        shard_key(&t.dst, "app.mixed").await,
        None,
        "a collection unsharded on the source stays unsharded"
    );
    // The destination's chunks start where the source's do.
    let uuid = catalog_entry(&t.dst, "app.counters")
        .await
        .and_then(|e| e.get("uuid").cloned())
        .expect("destination uuid");
    let mins: Vec<Document> = t
        .dst
        .database("config")
        .collection::<Document>("chunks")
        .find(doc! {"uuid": uuid})
        .await
        .expect("chunks")
        .try_collect::<Vec<Document>>()
        .await
        .expect("chunk batch")
        .into_iter()
        .filter_map(|c| c.get_document("min").ok().cloned())
        .collect();
    for bound in [doc! {"_id": 300i64}, doc! {"_id": 700i64}] {
        assert!(
            mins.contains(&bound),
            "no chunk starts at {bound}: {mins:?}"
        );
    }
    assert_same(&t.src, &t.dst).await;
}

/// A collection sharded on the source during sync is sharded the same way on a sharded
/// destination (it holds documents by then, so the source's supporting index comes
/// along), and writes after it converge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shard_collection_during_sync_shards_the_destination() {
    let t = Topologies::start(2, 2).await;
    let late = t.src.database("app").collection::<Document>("late");
    late.create_index(IndexModel::builder().keys(doc! {"g": 1}).build())
        .await
        .expect("index");
    late.insert_many((0..300).map(|i| doc! {"_id": i, "g": i % 10, "v": 0}))
        .await
        .expect("seed late");
    let m = start(t.config("")).await;
    wait_phase(&m.progress, Phase::ReadyForCutover).await;
    assert_eq!(shard_key(&t.dst, "app.late").await, None);
    shard_collection(&t.src, "app.late", doc! {"g": 1}).await;
    late.insert_many((300..400).map(|i| doc! {"_id": i, "g": i % 10, "v": 1}))
        .await
        .expect("writes after sharding");
    late.update_many(doc! {"g": 3}, doc! {"$set": {"v": 2}})
        .await
        .expect("update after sharding");
    let deadline = std::time::Instant::now() + DEADLINE;
    while shard_key(&t.dst, "app.late").await.is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the destination never sharded app.late"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cutover_and_complete(m).await;
    let entry = catalog_entry(&t.dst, "app.late").await.expect("sharded");
    assert_eq!(entry.get_document("key").ok(), Some(&doc! {"g": 1}));
    assert_same(&t.src, &t.dst).await;
}

/// A restart after a crash in the middle of the copy finds its collections already
/// sharded with the same keys (by the first run, before it copied them): preparing the
/// destination again accepts them instead of failing, and the copy converges with the
/// keys the first run gave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_mid_copy_finds_its_collections_already_sharded() {
    let t = Topologies::start(0, 2).await;
    seed(&t.src, "app", 2000).await;
    let cfg = t.config(&format!(
        "{RS_TO_SHARDED_ENTRIES}[copy]\nbatch_max_documents = 100\nparallel_collections = 1\nparallel_ranges_per_collection = 1\n"
    ));
    let router = match &t.destination {
        Deployment::Sharded(c) => c.router(),
        Deployment::ReplicaSet(_) => unreachable!("the destination is sharded"),
    };
    router.set_latency(Duration::from_millis(25));
    let m = start(cfg.clone()).await;
    poll("the copy to start", || copied(&m.progress) > 0).await;
    assert_eq!(
        m.progress.phase(),
        Phase::Copying,
        "the copy ended too soon"
    );
    abort(m).await;
    assert!(
        catalog_entry(&t.dst, "app.mixed").await.is_some(),
        "the first run sharded app.mixed before copying it"
    );
    router.set_latency(Duration::ZERO);
    let m = start(cfg).await;
    cutover_and_complete(m).await;
    assert_sharded_and_spread(&t.dst, "app.mixed", doc! {"email": 1}, true).await;
    assert_sharded_and_spread(&t.dst, "app.counters", doc! {"_id": "hashed"}, false).await;
    add_to_source(&t.src, "app", "events", doc! {"kind": 1, "at": 1}).await;
    add_to_source(&t.src, "app", "counters", doc! {"_id": "hashed"}).await;
    assert_same(&t.src, &t.dst).await;
}

/// On a replica-set destination a `shardCollection` on the source has nothing to follow:
/// it is logged and the migration converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shard_collection_during_sync_is_ignored_by_a_replica_set_destination() {
    let t = Topologies::start(2, 0).await;
    let late = t.src.database("app").collection::<Document>("late");
    late.create_index(IndexModel::builder().keys(doc! {"g": 1}).build())
        .await
        .expect("index");
    late.insert_many((0..200).map(|i| doc! {"_id": i, "g": i % 10}))
        .await
        .expect("seed late");
    let m = start(t.config("")).await;
    wait_phase(&m.progress, Phase::ReadyForCutover).await;
    shard_collection(&t.src, "app.late", doc! {"g": 1}).await;
    late.insert_many((200..260).map(|i| doc! {"_id": i, "g": i % 10}))
        .await
        .expect("writes after sharding");
    let target = applied(&m.progress) + 60;
    poll("the writes after sharding to be applied", || {
        applied(&m.progress) >= target
    })
    .await;
    cutover_and_complete(m).await;
    assert_same(&t.src, &t.dst).await;
}

/// A destination collection already sharded on another key is refused before the run
/// starts, naming it and both keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_sharded_on_another_key_is_refused() {
    let t = Topologies::start(0, 2).await;
    seed(&t.src, "app", 100).await;
    shard_collection(&t.dst, "app.counters", doc! {"value": 1}).await;
    let report = ferry::preflight::run_checks(&t.config(RS_TO_SHARDED_ENTRIES)).await;
    let check = report
        .check("sharding entries")
        .expect("sharding entries line");
    assert_eq!(check.status, Status::Fail, "{check:?}");
    assert!(
        check.message.contains("app.counters") && check.message.contains("already sharded"),
        "{}",
        check.message
    );
}

/// Pins: a collection whose default collation is not simple could not be sharded on a
/// sharded destination. `shardCollection` went without `collation: {locale: "simple"}`,
/// and a supporting index created without a collation takes the collection's, which
/// cannot support a shard key: a real mongos refuses both (BadValue).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collection_with_a_default_collation_is_sharded_with_the_simple_one() {
    let t = Topologies::start(0, 2).await;
    let db = t.src.database("app");
    db.run_command(doc! {"create": "people", "collation": {"locale": "en", "strength": 2}})
        .await
        .expect("create a collection with a default collation on the source");
    let people = db.collection::<Document>("people");
    people
        .insert_many((0..1000).map(|i| doc! {"_id": i, "name": format!("Name{i:04}")}))
        .await
        .expect("seed app.people");
    let entries = "[sharding]\ncreate_supporting_indexes = true\n[[sharding.entries]]\ndatabase = \"app\"\ncollection = \"people\"\nkey = [{name = 1}]\n";
    let m = start(t.config(entries)).await;
    wait_phase(&m.progress, Phase::ReadyForCutover).await;
    people
        .insert_one(doc! {"_id": 5000, "name": "name written during sync"})
        .await
        .expect("write during sync");
    cutover_and_complete(m).await;

    assert_sharded_and_spread(&t.dst, "app.people", doc! {"name": 1}, false).await;
    // The supporting index Ferry added (named apart from the collection's collation's
    // default name), made on the source too for the comparison.
    db.run_command(doc! {"createIndexes": "people", "indexes": [{"key": {"name": 1}, "name": "name_1_simple", "collation": {"locale": "simple"}}]})
        .await
        .expect("create the supporting index on the source for the comparison");
    assert_same(&t.src, &t.dst).await;
}

/// Pins: a collection named in `[sharding]` and dropped on the source during sync made
/// the run refuse to resume after a crash ("is named in [sharding] but is not a
/// collection on the source"), although the run had started with it and its drop is in
/// the change stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_after_an_entrys_collection_was_dropped_resumes() {
    let t = Topologies::start(0, 2).await;
    seed(&t.src, "app", 300).await;
    let cfg = t.config(RS_TO_SHARDED_ENTRIES);
    let m = start(cfg.clone()).await;
    wait_phase(&m.progress, Phase::ReadyForCutover).await;
    t.src
        .database("app")
        .collection::<Document>("counters")
        .drop()
        .await
        .expect("drop app.counters on the source");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while t
        .dst
        .database("app")
        .list_collection_names()
        .await
        .expect("list the destination's collections")
        .iter()
        .any(|c| c == "counters")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the drop never reached the destination"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    abort(m).await;
    let m = start(cfg).await;
    cutover_and_complete(m).await;
    add_to_source(&t.src, "app", "events", doc! {"kind": 1, "at": 1}).await;
    assert_same(&t.src, &t.dst).await;
}

/// Pins: on a collection with a default collation whose source already has an index on
/// the shard key (it takes the collection's collation, under the default name
/// `name_1`), the supporting index Ferry created under that same name conflicted (85
/// IndexOptionsConflict) and the run failed. It is created as `name_1_simple`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collated_index_on_the_key_leaves_room_for_the_supporting_one() {
    let t = Topologies::start(0, 2).await;
    let db = t.src.database("app");
    db.run_command(doc! {"create": "people", "collation": {"locale": "en", "strength": 2}})
        .await
        .expect("create a collection with a default collation on the source");
    let people = db.collection::<Document>("people");
    people
        .create_index(IndexModel::builder().keys(doc! {"name": 1}).build())
        .await
        .expect("an index on the key, with the collection's collation");
    people
        .insert_many((0..1000).map(|i| doc! {"_id": i, "name": format!("Name{i:04}")}))
        .await
        .expect("seed app.people");
    let entries = "[sharding]\ncreate_supporting_indexes = true\n[[sharding.entries]]\ndatabase = \"app\"\ncollection = \"people\"\nkey = [{name = 1}]\n";
    let m = start(t.config(entries)).await;
    wait_phase(&m.progress, Phase::ReadyForCutover).await;
    cutover_and_complete(m).await;
    assert_sharded_and_spread(&t.dst, "app.people", doc! {"name": 1}, false).await;
    db.run_command(doc! {"createIndexes": "people", "indexes": [{"key": {"name": 1}, "name": "name_1_simple", "collation": {"locale": "simple"}}]})
        .await
        .expect("create the supporting index on the source for the comparison");
    assert_same(&t.src, &t.dst).await;
}

/// Pins: a sharded source collection renamed while the run saved its copy plan was
/// looked up by its planned name in the source's catalog, found missing there, and left
/// unsharded on the destination (5.0+ renames sharded collections). It is now found by
/// the planned UUID: the destination collection, renamed in turn, is sharded on the
/// source's key and spread over the destination's shards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sharded_collection_renamed_as_the_plan_is_saved_stays_sharded() {
    let t = Topologies::start(2, 2).await;
    seed(&t.src, "app", 600).await;
    shard_collection(&t.src, "app.counters", doc! {"_id": 1}).await;
    split_and_move(&t.src, "app.counters", doc! {"_id": 300i64}, "shard1").await;
    // The plan's marker is written last: hold it while the source renames.
    t.dst
        .database("admin")
        .run_command(doc! {
            "configureFailPoint": "failCommand",
            "mode": {"times": 1},
            "data": {"failCommands": ["update"], "namespace": "__ferry.plan", "blockConnection": true, "blockTimeMS": 3000},
        })
        .await
        .expect("hold the plan's save on the destination");
    let m = start(t.config("")).await;
    let planned = t
        .dst
        .database("__ferry")
        .collection::<Document>("namespaces");
    let deadline = std::time::Instant::now() + DEADLINE;
    while planned
        .find_one(doc! {"_id": "app.counters"})
        .await
        .ok()
        .flatten()
        .is_none()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for the plan to name app.counters"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    t.src
        .database("admin")
        .run_command(doc! {"renameCollection": "app.counters", "to": "app.tallies"})
        .await
        .expect("rename the sharded collection on the source");
    cutover_and_complete(m).await;
    assert_sharded_and_spread(&t.dst, "app.tallies", doc! {"_id": 1}, false).await;
    assert_same(&t.src, &t.dst).await;
}

/// An application drops, during the migration, the source index a `[sharding]` entry's
/// key uses (the replica set allows it; the destination, sharded on that key, refuses
/// with 370 CannotDropShardKeyIndex). Pins: the replayed dropIndexes failed the run.
/// Now the destination keeps the index (its shard key needs it), the run completes
/// and the verification accepts that one index, with or without supporting indexes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_source_index_a_sharding_entry_uses_keeps_it_on_the_destination() {
    for create_supporting in [false, true] {
        let t = Topologies::start(0, 2).await;
        let orders = t.src.database("shop").collection::<Document>("orders");
        orders
            .insert_many(
                (0..300).map(|i| doc! {"_id": i, "region": (["eu", "us", "ap"][i as usize % 3])}),
            )
            .await
            .expect("seed orders");
        orders
            .create_index(IndexModel::builder().keys(doc! {"region": 1}).build())
            .await
            .expect("the key's index on the source");
        let m = start(t.config(&format!(
            "[sharding]\ncreate_supporting_indexes = {create_supporting}\n[[sharding.entries]]\ndatabase = \"shop\"\ncollection = \"orders\"\nkey = [{{region = 1}}]\n"
        )))
        .await;
        wait_phase(&m.progress, Phase::ReadyForCutover).await;
        orders
            .drop_index("region_1")
            .await
            .expect("the application drops the index on the source");
        orders
            .insert_one(doc! {"_id": 1000, "region": "eu"})
            .await
            .expect("a write after the drop");
        let outcome = cutover_and_complete(m).await;
        assert_eq!(outcome.phase, Phase::Completed, "{:?}", outcome.error);
        let names = t
            .dst
            .database("shop")
            .collection::<Document>("orders")
            .list_index_names()
            .await
            .expect("destination indexes");
        assert!(
            names.contains(&"region_1".to_string()),
            "create_supporting_indexes = {create_supporting}: {names:?}"
        );
        assert_eq!(
            documents(&t.src, "shop", "orders").await,
            documents(&t.dst, "shop", "orders").await
        );
    }
}

/// Pins: a source collection with 64 indexes (the most a collection may have), none on
/// an entry's key, passed validation, and the run failed once the copy created the
/// supporting index, the 65th. Now validation refuses it, naming the collection, the count
/// and the fix; with one index dropped on the source the same config migrates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_supporting_index_beyond_the_64_index_limit_is_refused_by_validation() {
    let t = Topologies::start(0, 2).await;
    let orders = t.src.database("shop").collection::<Document>("orders");
    orders
        .insert_many(
            (0..300).map(|i| doc! {"_id": i as i32, "region": (["eu", "us", "ap"][i % 3])}),
        )
        .await
        .expect("seed orders");
    orders
        .create_indexes((0..63).map(|i| {
            IndexModel::builder()
                .keys(doc! {format!("f{i}"): 1})
                .build()
        }))
        .await
        .expect("63 indexes besides _id");
    let cfg = t.config("[sharding]\ncreate_supporting_indexes = true\n[[sharding.entries]]\ndatabase = \"shop\"\ncollection = \"orders\"\nkey = [{region = 1}]\n");
    let report = ferry::preflight::run_checks(&cfg).await;
    let check = report
        .check("sharding entries")
        .expect("the report has a sharding entries line");
    assert_eq!(check.status, Status::Fail, "{check:?}");
    assert!(
        check.message.contains("shop.orders has 64 indexes")
            && check.message.contains("drop an index"),
        "{}",
        check.message
    );
    orders.drop_index("f62_1").await.expect("make room");
    let report = ferry::preflight::run_checks(&cfg).await;
    assert_eq!(
        report.check("sharding entries").map(|c| c.status),
        Some(Status::Pass),
        "{report}"
    );
    let m = start(cfg).await;
    cutover_and_complete(m).await;
    assert_sharded_and_spread(&t.dst, "shop.orders", doc! {"region": 1}, false).await;
}
