//! Sharded clusters while changes flow: a sharded source's cutover drains at once (not at
//! an idle shard's next periodic no-op), collections that appear during sync under a
//! `[sharding]` entry's name land sharded on a sharded destination, and a shard key
//! changed on the source during sync (`refineCollectionShardKey`, `reshardCollection`)
//! stops the run naming the namespace, with the balancers and the write block restored.

mod common;

use std::time::Duration;

use bson::{doc, Document};
use common::sharded::{shard_collection, shard_key, split_and_move, Deployment, Topologies};
use common::*;
use ferry::progress::Phase;
use ferry_sandbox::ShardedOptions;
use mongodb::{Client, IndexModel};

/// A two-shard cluster whose shards log their periodic no-op only once an hour and whose
/// balancer stays idle: nothing but Ferry's own writes moves an idle shard's oplog on.
fn quiet_sharded_cluster() -> Deployment {
    Deployment::start_sharded(ShardedOptions {
        shards: 2,
        balancer_interval: Duration::from_secs(3600),
        periodic_noop_interval: Duration::from_secs(3600),
        ..Default::default()
    })
}

/// A config whose idle tick (Ferry's no-op on an idle source) is an hour: only the
/// cutover's own writes can move an idle shard's stream.
fn config_without_idle_ticks(t: &Topologies) -> ferry::config::Config {
    let text = format!(
        "[source]\nuri = \"{}\"\n[destination]\nuri = \"{}\"\n[api]\nlisten = \"127.0.0.1:0\"\n[runtime]\nidle_noop_interval_seconds = 3600\ncheckpoint_interval_seconds = 1\n[copy]\nbatch_max_documents = 500\n",
        t.source.uri(),
        t.destination.uri()
    );
    ferry::config::from_toml_str(&text, &|_| None).expect("test config is valid")
}

/// The shard of `router`'s cluster that is not `db`'s primary shard.
async fn other_shard(router: &Client, db: &str) -> String {
    let primary = router
        .database("config")
        .collection::<Document>("databases")
        .find_one(doc! {"_id": db})
        .await
        .expect("read config.databases")
        .and_then(|d| d.get_str("primary").ok().map(String::from))
        .expect("the database has a primary shard");
    if primary == "shard0" {
        "shard1".into()
    } else {
        "shard0".into()
    }
}

/// The cutover between two sharded clusters whose shards are idle (no periodic no-op for
/// an hour, no idle tick from Ferry) completes well before either would come, with the
/// writes made just before it on one source shard applied, and verifies from the
/// baseline. Pins two waits on an idle shard, each 10 s with the server's default no-op
/// interval: the drain waited until every source shard's position on the router's
/// stream passed the cutover optime (with neither no-op, it never ended), and the
/// verification waited for the destination router's stream to reach the destination's
/// time before using the baseline (30 s, then a comparison of every document).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sharded_cutover_waits_for_no_idle_shard() {
    let t = Topologies::from(quiet_sharded_cluster(), quiet_sharded_cluster()).await;
    shard_collection(&t.src, "app.items", doc! {"k": 1}).await;
    let to = other_shard(&t.src, "app").await;
    split_and_move(&t.src, "app.items", doc! {"k": 1000}, &to).await;
    let items = t.src.database("app").collection::<Document>("items");
    items
        .insert_many((0..40).map(|i| doc! {"_id": i, "k": i * 50}))
        .await
        .expect("seed both shards");
    let m = start(config_without_idle_ticks(&t)).await;
    wait_phase(&m.progress, Phase::ReadyForCutover).await;
    let progress = m.progress.clone();
    poll("the baseline verification to finish", || {
        progress.baseline.read().state == ferry::progress::BaselineState::Done
    })
    .await;
    // Writes on the primary shard only, after the copy: they reach the destination only
    // by the cutover's drain.
    for i in 40..60 {
        items
            .insert_one(doc! {"_id": i, "k": i})
            .await
            .expect("write on one shard");
    }
    let outcome = tokio::time::timeout(Duration::from_secs(25), cutover_and_complete(m))
        .await
        .expect("the cutover waited for no shard's periodic no-op");
    assert_eq!(outcome.phase, Phase::Completed, "{:?}", outcome.error);
    let v = outcome.report.expect("report").verification;
    assert_eq!(
        v.namespaces_rechecked, 1,
        "verified from the baseline: {v:?}"
    );
    assert_eq!(assert_same(&t.src, &t.dst).await, 60);
}

/// `[sharding]` entries for the collections the sync test recreates or renames onto.
const ENTRIES: &str = "[sharding]\ncreate_supporting_indexes = true\n[[sharding.entries]]\ndatabase = \"app\"\ncollection = \"created\"\nkey = [{region = 1}]\n[[sharding.entries]]\ndatabase = \"app\"\ncollection = \"implicit\"\nkey = [{_id = \"hashed\"}]\n[[sharding.entries]]\ndatabase = \"app\"\ncollection = \"renamed\"\nkey = [{region = 1}, {n = 1}]\n";

fn row(i: i32) -> Document {
    let region = ["eu", "us", "ap"][i as usize % 3];
    doc! {"_id": i, "region": region, "n": i}
}

/// The destination's `config.collections` entry of `ns` has `key` (fields in order).
async fn assert_sharded_on(dst: &Client, ns: &str, key: Document) {
    let got = shard_key(dst, ns)
        .await
        .unwrap_or_else(|| panic!("{ns} is not sharded on the destination"));
    assert_eq!(
        got.iter().collect::<Vec<_>>(),
        key.iter().collect::<Vec<_>>(),
        "{ns}: destination shard key"
    );
}

/// Replica set -> two shards: collections with a `[sharding]` entry that appear during
/// sync — created again after a drop (with the source's own index on the key), created
/// implicitly by an insert after a drop (hashed key, index created on the destination),
/// and renamed onto the entry's name (compound key, index created on the destination) —
/// are sharded on the destination per their entry, and every document arrives. Pins:
/// only `shardCollection` events sharded during sync, so these landed unsharded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collections_appearing_during_sync_are_sharded_per_their_entry() {
    let t = Topologies::start(0, 2).await;
    let app = t.src.database("app");
    for name in ["created", "implicit", "renamed"] {
        app.collection::<Document>(name)
            .insert_many((0..30).map(row))
            .await
            .expect("seed");
    }
    let m = start(t.config(ENTRIES)).await;
    wait_phase(&m.progress, Phase::ReadyForCutover).await;

    let created = app.collection::<Document>("created");
    created.drop().await.expect("drop created");
    app.create_collection("created")
        .await
        .expect("create created again");
    created
        .create_index(IndexModel::builder().keys(doc! {"region": 1}).build())
        .await
        .expect("the key's index on the source");
    created
        .insert_many((100..140).map(row))
        .await
        .expect("documents in the new collection");

    let implicit = app.collection::<Document>("implicit");
    implicit.drop().await.expect("drop implicit");
    implicit
        .insert_many((200..240).map(row))
        .await
        .expect("documents creating the collection");

    let staging = app.collection::<Document>("staging");
    staging
        .insert_many((300..340).map(row))
        .await
        .expect("documents of the staging collection");
    t.src
        .database("admin")
        .run_command(
            doc! {"renameCollection": "app.staging", "to": "app.renamed", "dropTarget": true},
        )
        .await
        .expect("rename onto the entry's name");
    app.collection::<Document>("renamed")
        .insert_many((400..410).map(row))
        .await
        .expect("documents after the rename");

    let outcome = cutover_and_complete(m).await;
    assert_eq!(outcome.phase, Phase::Completed, "{:?}", outcome.error);
    assert_sharded_on(&t.dst, "app.created", doc! {"region": 1}).await;
    assert_sharded_on(&t.dst, "app.implicit", doc! {"_id": "hashed"}).await;
    assert_sharded_on(&t.dst, "app.renamed", doc! {"region": 1, "n": 1}).await;
    // The supporting indexes Ferry created on the destination only, made on the source
    // too, so that comparing every index shows nothing else differs.
    implicit
        .create_index(IndexModel::builder().keys(doc! {"_id": "hashed"}).build())
        .await
        .expect("hashed index on the source");
    app.collection::<Document>("renamed")
        .create_index(
            IndexModel::builder()
                .keys(doc! {"region": 1, "n": 1})
                .build(),
        )
        .await
        .expect("compound index on the source");
    assert_eq!(assert_same(&t.src, &t.dst).await, 40 + 40 + 50);
}

/// Two-shard source and destination (`version`), both with a running balancer, with the
/// source's `app.items` sharded on `{k: 1}` over both shards.
async fn sharded_pair_with_items(version: &str) -> Topologies {
    let side = || {
        Deployment::start_sharded(ShardedOptions {
            shards: 2,
            version: version.into(),
            balancer_interval: Duration::from_secs(3600),
            periodic_noop_interval: Duration::from_secs(1),
            ..Default::default()
        })
    };
    let t = Topologies::from(side(), side()).await;
    shard_collection(&t.src, "app.items", doc! {"k": 1}).await;
    let to = other_shard(&t.src, "app").await;
    split_and_move(&t.src, "app.items", doc! {"k": 100}, &to).await;
    t.src
        .database("app")
        .collection::<Document>("items")
        .insert_many((0..200).map(row))
        .await
        .expect("seed");
    t
}

async fn balancer_mode(router: &Client) -> String {
    router
        .database("admin")
        .run_command(doc! {"balancerStatus": 1})
        .await
        .expect("balancerStatus")
        .get_str("mode")
        .expect("balancerStatus.mode")
        .to_string()
}

/// Runs a migration of `t` to ready_for_cutover, changes `app.items`'s shard key on the
/// source with `change`, and checks the run stops by itself, failed, with a message that
/// names the namespace and the operation, and that both balancers run again and the
/// source takes writes.
async fn a_shard_key_change_stops_the_run(t: &Topologies, change: Document, operation: &str) {
    assert_eq!(balancer_mode(&t.src).await, "full");
    assert_eq!(balancer_mode(&t.dst).await, "full");
    let m = start(t.config("")).await;
    wait_phase(&m.progress, Phase::ReadyForCutover).await;
    assert_eq!(balancer_mode(&t.src).await, "off", "stopped during the run");
    t.src
        .database("app")
        .collection::<Document>("items")
        .create_index(
            IndexModel::builder()
                .keys(doc! {"k": 1, "region": 1})
                .build(),
        )
        .await
        .expect("the refined key's index");
    t.src
        .database("admin")
        .run_command(change.clone())
        .await
        .unwrap_or_else(|e| panic!("{change}: {e}"));
    let outcome = tokio::time::timeout(DEADLINE, wait(m))
        .await
        .expect("the run stops by itself");
    assert_eq!(outcome.phase, Phase::Failed, "{:?}", outcome.error);
    let error = outcome.error.unwrap_or_default();
    assert!(
        error.contains("app.items") && error.contains(operation),
        "the message names the namespace and the operation: {error}"
    );
    assert_eq!(
        balancer_mode(&t.src).await,
        "full",
        "source balancer restored"
    );
    assert_eq!(
        balancer_mode(&t.dst).await,
        "full",
        "destination balancer restored"
    );
    assert_source_writable(&t.src, "failed").await;
}

/// `refineCollectionShardKey` on the source during sync (7.0: its change event) stops
/// the run naming the collection. Pins: nothing on the destination follows a refined key,
/// so carrying on would diverge silently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refined_shard_key_during_sync_stops_the_run() {
    let t = sharded_pair_with_items("7.0.13").await;
    a_shard_key_change_stops_the_run(
        &t,
        doc! {"refineCollectionShardKey": "app.items", "key": {"k": 1, "region": 1}},
        "refineCollectionShardKey",
    )
    .await;
}

/// On 6.0 a refine has no change event: the coordinator's watch of the source's
/// `config.collections` sees the key change and stops the run naming the collection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refined_shard_key_without_an_event_stops_the_run() {
    let t = sharded_pair_with_items("6.0.17").await;
    a_shard_key_change_stops_the_run(
        &t,
        doc! {"refineCollectionShardKey": "app.items", "key": {"k": 1, "region": 1}},
        "refineCollectionShardKey",
    )
    .await;
}

/// `reshardCollection` on the source during sync stops the run naming the collection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resharded_collection_during_sync_stops_the_run() {
    let t = sharded_pair_with_items("7.0.13").await;
    a_shard_key_change_stops_the_run(
        &t,
        doc! {"reshardCollection": "app.items", "key": {"region": 1}},
        "reshardCollection",
    )
    .await;
}

/// With `create_supporting_indexes = false`, a collection created again during sync is
/// sharded on the source's own index on the key (created with it), and the destination
/// ends with exactly the source's indexes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collection_created_during_sync_is_sharded_on_the_source_index() {
    let t = Topologies::start(0, 2).await;
    let created = t.src.database("app").collection::<Document>("created");
    let region_index = || IndexModel::builder().keys(doc! {"region": 1}).build();
    created
        .create_index(region_index())
        .await
        .expect("the key's index on the source");
    created.insert_many((0..30).map(row)).await.expect("seed");
    let m = start(t.config(
        "[sharding]\ncreate_supporting_indexes = false\n[[sharding.entries]]\ndatabase = \"app\"\ncollection = \"created\"\nkey = [{region = 1}]\n",
    ))
    .await;
    wait_phase(&m.progress, Phase::ReadyForCutover).await;
    created.drop().await.expect("drop");
    created
        .create_index(region_index())
        .await
        .expect("the collection created again by its index");
    created
        .insert_many((100..150).map(row))
        .await
        .expect("documents in the new collection");
    let outcome = cutover_and_complete(m).await;
    assert_eq!(outcome.phase, Phase::Completed, "{:?}", outcome.error);
    assert_sharded_on(&t.dst, "app.created", doc! {"region": 1}).await;
    assert_eq!(assert_same(&t.src, &t.dst).await, 50);
}
