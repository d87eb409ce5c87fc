//! Sharded sources: a two-shard source migrated to a replica set and to a two-shard
//! cluster under a live workload, orphans left on a donor shard never copied, an idle
//! shard beside a busy one, shard-key updates in both orders, a crash mid-copy, and a
//! duplicate `_id` across shards refused for a replica set destination. Every run ends
//! with the destination compared document by document and index by index.

mod common;

use std::time::Duration;

use bson::{doc, Bson, Document};
use common::sharded::{shard_collection, split_and_move, Deployment, Topologies};
use common::*;
use ferry::progress::Phase;
use ferry_sandbox::{ShardKeyMoveOrder, ShardedOptions};
use futures_util::TryStreamExt;
use mongodb::Client;

/// A two-shard source whose donors keep orphans (long cleanup delay), whose balancer
/// stays idle, whose shards tick their oplogs only as often as `noop`, and that moves a
/// document between shards in `order` when its shard key changes.
fn sharded_source(noop: Duration, order: ShardKeyMoveOrder) -> Deployment {
    Deployment::start_sharded(ShardedOptions {
        shards: 2,
        balancer_interval: Duration::from_secs(3600),
        orphan_cleanup_delay: Duration::from_secs(3600),
        periodic_noop_interval: noop,
        shard_key_move_order: order,
        ..Default::default()
    })
}

/// The shard that is not `db`'s primary.
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

/// `app` seeded (see `common::seed`) with `events` sharded on `{kind: 1}` (the "view"
/// chunk moved to the other shard, its orphans left on the donor) and `counters` on a
/// hashed `_id`; `mixed` stays unsharded on the primary shard.
async fn seed_sharded(router: &Client, n: usize) {
    shard_collection(router, "app.events", doc! {"kind": 1}).await;
    shard_collection(router, "app.counters", doc! {"_id": "hashed"}).await;
    seed(router, "app", n).await;
    let to = other_shard(router, "app").await;
    split_and_move(router, "app.events", doc! {"kind": "view"}, &to).await;
}

/// Orphaned documents of `ns` as `$shardedDataDistribution` reports them.
async fn orphans(router: &Client, ns: &str) -> i64 {
    let rows: Vec<Document> = router
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
    rows.iter()
        .flat_map(|r| r.get_array("shards").cloned().unwrap_or_default())
        .filter_map(|s| match s {
            Bson::Document(s) => Some(match s.get("numOrphanedDocs") {
                Some(Bson::Int32(n)) => *n as i64,
                Some(Bson::Int64(n)) => *n,
                _ => 0,
            }),
            _ => None,
        })
        .sum()
}

/// Documents of `db.coll` as the client reads them (through a router: owned ones only).
async fn count(client: &Client, db: &str, coll: &str) -> usize {
    documents(client, db, coll).await.len()
}

/// Runs a migration from `t`'s source while the workload (and some DDL) goes on, cuts
/// over and checks the destination equals the source.
async fn migrate_under_workload(t: &Topologies) {
    let m = start(t.config("")).await;
    let workload = Workload::start(t.src.clone(), "app", 1000);
    wait_copied(&m).await;
    workload.advance(30).await;
    // DDL during sync: a new index and a new collection.
    t.src
        .database("app")
        .collection::<Document>("mixed")
        .create_index(
            mongodb::IndexModel::builder()
                .keys(doc! {"name": 1})
                .build(),
        )
        .await
        .expect("createIndex during sync");
    t.src
        .database("app")
        .collection::<Document>("late")
        .insert_one(doc! {"_id": 1, "x": "created during sync"})
        .await
        .expect("new collection during sync");
    workload.advance(30).await;
    workload.stop().await;
    let outcome = cutover_and_complete(m).await;
    assert_eq!(outcome.phase, Phase::Completed, "{:?}", outcome.error);
    assert!(assert_same(&t.src, &t.dst).await > 0);
}

/// A two-shard source reaches a replica set whole: the sharded collections' chunks
/// are read from both shards and the live workload converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_shards_to_a_replica_set_under_a_live_workload() {
    let t = Topologies::from(
        sharded_source(Duration::from_secs(1), ShardKeyMoveOrder::DeleteFirst),
        Deployment::start("dst", 0),
    )
    .await;
    seed_sharded(&t.src, 1000).await;
    migrate_under_workload(&t).await;
}

/// A two-shard source reaches a two-shard destination whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_shards_to_two_shards_under_a_live_workload() {
    let t = Topologies::from(
        sharded_source(Duration::from_secs(1), ShardKeyMoveOrder::DeleteFirst),
        Deployment::start("dst", 2),
    )
    .await;
    seed_sharded(&t.src, 1000).await;
    migrate_under_workload(&t).await;
}

/// Orphans a chunk migration left on the donor are not copied: the destination holds
/// exactly what the router shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphans_on_a_donor_shard_never_reach_the_destination() {
    let t = Topologies::from(
        sharded_source(Duration::from_secs(1), ShardKeyMoveOrder::DeleteFirst),
        Deployment::start("dst", 0),
    )
    .await;
    seed_sharded(&t.src, 1000).await;
    let left = orphans(&t.src, "app.events").await;
    assert!(left > 0, "the move left orphans on the donor");
    let m = start(t.config("")).await;
    let outcome = cutover_and_complete(m).await;
    assert_eq!(outcome.phase, Phase::Completed, "{:?}", outcome.error);
    assert_eq!(count(&t.dst, "app", "events").await, 1000);
    assert_eq!(
        orphans(&t.src, "app.events").await,
        left,
        "orphans still there"
    );
    assert_same(&t.src, &t.dst).await;
}

/// An idle shard does not hold the lag above zero while the other shard takes writes:
/// Ferry's no-op ticks through the router move every shard's stream on. The shards'
/// own periodic no-op is an hour here. Pins: without the ticks the busy shard's writes
/// never reach the destination (and the cutover's drain never ends).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_shard_lets_the_lag_reach_zero() {
    let t = Topologies::from(
        sharded_source(Duration::from_secs(3600), ShardKeyMoveOrder::DeleteFirst),
        Deployment::start("dst", 0),
    )
    .await;
    shard_collection(&t.src, "app.items", doc! {"k": 1}).await;
    let to = other_shard(&t.src, "app").await;
    split_and_move(&t.src, "app.items", doc! {"k": 1000}, &to).await;
    let items = t.src.database("app").collection::<Document>("items");
    items
        .insert_many((0..50).map(|i| doc! {"_id": i, "k": i}))
        .await
        .expect("seed");
    let m = start(t.config("")).await;
    wait_copied(&m).await;
    // Writes only below 1000: the primary shard takes them, the other stays idle.
    for i in 50..80 {
        items
            .insert_one(doc! {"_id": i, "k": i})
            .await
            .expect("write on the busy shard");
    }
    // A router's stream returns the busy shard's events only once every shard's time
    // has passed them: the idle shard moves on only by Ferry's ticks.
    poll_async(
        "the busy shard's writes to reach the destination",
        || async { count(&t.dst, "app", "items").await == 80 },
    )
    .await;
    let progress = m.progress.clone();
    poll("the lag to reach zero with one idle shard", || {
        progress.lag_seconds() == Some(0.0)
    })
    .await;
    let outcome = cutover_and_complete(m).await;
    assert_eq!(outcome.phase, Phase::Completed, "{:?}", outcome.error);
    assert_same(&t.src, &t.dst).await;
}

/// Shard-key updates that move documents between shards during sync (a delete and an
/// insert at one cluster time, in `order`) converge on a replica set and on a sharded
/// destination.
async fn shard_key_updates_converge(order: ShardKeyMoveOrder, destination_shards: usize) {
    let t = Topologies::from(
        sharded_source(Duration::from_secs(1), order),
        Deployment::start("dst", destination_shards),
    )
    .await;
    shard_collection(&t.src, "app.items", doc! {"k": 1}).await;
    let to = other_shard(&t.src, "app").await;
    split_and_move(&t.src, "app.items", doc! {"k": 1000}, &to).await;
    let items = t.src.database("app").collection::<Document>("items");
    items
        .insert_many((0..100).map(|i| doc! {"_id": i, "k": i, "v": 0}))
        .await
        .expect("seed");
    let m = start(t.config("")).await;
    wait_copied(&m).await;
    for i in 0..40 {
        // Over to the other shard, and (for some) back again.
        items
            .update_one(
                doc! {"_id": i, "k": i},
                doc! {"$set": {"k": 2000 + i, "v": 1}},
            )
            .await
            .expect("shard-key update across shards");
        if i % 4 == 0 {
            items
                .update_one(
                    doc! {"_id": i, "k": 2000 + i},
                    doc! {"$set": {"k": 500 + i, "v": 2}},
                )
                .await
                .expect("shard-key update back");
        }
    }
    let outcome = cutover_and_complete(m).await;
    assert_eq!(outcome.phase, Phase::Completed, "{:?}", outcome.error);
    assert_eq!(assert_same(&t.src, &t.dst).await, 100);
}

/// Pins: an insert-first shard-key move met the document's old version (same `_id`,
/// old shard key) on the destination.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shard_key_updates_insert_first_converge_on_a_replica_set() {
    shard_key_updates_converge(ShardKeyMoveOrder::InsertFirst, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shard_key_updates_delete_first_converge_on_a_replica_set() {
    shard_key_updates_converge(ShardKeyMoveOrder::DeleteFirst, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shard_key_updates_insert_first_converge_on_two_shards() {
    shard_key_updates_converge(ShardKeyMoveOrder::InsertFirst, 2).await;
}

/// Pins: the copy inserted with duplicates counted as "already there", so of two
/// documents sharing an `_id` on different shards one was silently not copied; now
/// the copy fails and names the namespace and the `_id`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_id_across_shards_is_refused_for_a_replica_set() {
    let t = Topologies::from(
        sharded_source(Duration::from_secs(1), ShardKeyMoveOrder::DeleteFirst),
        Deployment::start("dst", 0),
    )
    .await;
    shard_collection(&t.src, "app.items", doc! {"k": 1}).await;
    let to = other_shard(&t.src, "app").await;
    split_and_move(&t.src, "app.items", doc! {"k": 1000}, &to).await;
    let items = t.src.database("app").collection::<Document>("items");
    items
        .insert_many((0..20).map(|i| doc! {"_id": i, "k": i}))
        .await
        .expect("seed");
    items
        .insert_one(doc! {"_id": 7, "k": 1500})
        .await
        .expect("the same _id on the other shard");
    assert_eq!(count(&t.src, "app", "items").await, 21);
    let m = start(t.config("")).await;
    let progress = m.progress.clone();
    poll("the run to fail", || {
        assert_ne!(
            progress.phase(),
            Phase::ReadyForCutover,
            "the copy went on with one of the two documents"
        );
        m.is_finished()
    })
    .await;
    let outcome = wait(m).await;
    assert_eq!(outcome.phase, Phase::Failed);
    let error = outcome.error.unwrap_or_default();
    assert!(
        error.contains("app.items") && error.contains("_id 7"),
        "the failure names the namespace and the _id: {error}"
    );
}

/// A crash (kill -9) in the middle of copying a two-shard source, then a restart:
/// the copy resumes from its per-shard range checkpoints and the destination converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_mid_copy_of_two_shards_resumes_and_converges() {
    let t = Topologies::from(
        sharded_source(Duration::from_secs(1), ShardKeyMoveOrder::DeleteFirst),
        Deployment::start("dst", 0),
    )
    .await;
    seed_sharded(&t.src, 3000).await;
    let port = free_port();
    let path = config_file(
        &t.source.uri(),
        &t.destination.uri(),
        port,
        "[runtime]\nidle_noop_interval_seconds = 1\ncheckpoint_interval_seconds = 1\n[copy]\nbatch_max_documents = 50\ninsert_workers = 1\nparallel_collections = 1\nparallel_ranges_per_collection = 1\n",
    );
    let mut child = spawn_ferry_run(&path);
    let ranges = t.dst.database("__ferry").collection::<Document>("ranges");
    poll_async("some ranges to be copied partly", || async {
        ranges
            .count_documents(doc! {"documents": {"$gt": 0}})
            .await
            .unwrap_or(0)
            > 0
    })
    .await;
    child.kill().expect("kill -9 the ferry process");
    let _ = child.wait();
    let shards: Vec<String> = ranges
        .distinct("shard", doc! {})
        .await
        .expect("range checkpoints")
        .into_iter()
        .filter_map(|s| s.as_str().map(String::from))
        .collect();
    assert!(
        shards.iter().any(|s| s == "shard0") && shards.iter().any(|s| s == "shard1"),
        "range checkpoints carry their shard: {shards:?}"
    );
    let child = spawn_ferry_run(&path);
    let api = ferry::api::client::ApiClient::new(&format!("http://127.0.0.1:{port}"))
        .expect("api client");
    wait_child_phase(&api, "ready_for_cutover").await;
    child_cutover(&api).await;
    let (status, output) = wait_child(child).await;
    assert!(status.success(), "second run ends completed: {output}");
    assert_same(&t.src, &t.dst).await;
}

/// Waits until the copy is over (syncing, or already ready for the cutover).
async fn wait_copied(m: &ferry::run::Migration) {
    let progress = m.progress.clone();
    poll("the copy to finish", || {
        assert!(
            !progress.phase().is_terminal(),
            "the run ended: {:?}",
            progress.last_error.read().clone()
        );
        matches!(progress.phase(), Phase::Syncing | Phase::ReadyForCutover)
    })
    .await;
}

/// Polls an async condition every 50 ms until it holds; panics with `what` after the
/// common deadline.
async fn poll_async<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + DEADLINE;
    while !cond().await {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The source's shards (a two-shard sandbox cluster).
fn shards(t: &Topologies) -> &ferry_sandbox::ShardedCluster {
    t.source.sharded().expect("a sharded source")
}

/// Each shard's primary stepping down while its ranges are copied: the copy goes on
/// (ranges started again from their checkpoints) and the destination converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shard_primaries_stepping_down_during_the_copy_are_survived() {
    let t = Topologies::from(
        sharded_source(Duration::from_secs(1), ShardKeyMoveOrder::DeleteFirst),
        Deployment::start("dst", 0),
    )
    .await;
    seed_sharded(&t.src, 3000).await;
    let config = t.config(
        "[copy]\nbatch_max_documents = 100\ninsert_workers = 1\nparallel_collections = 1\nparallel_ranges_per_collection = 1\n",
    );
    let workload = Workload::start(t.src.clone(), "app", 3000);
    let m = start(config).await;
    let p = m.progress.clone();
    poll("the copy to start", || copied(&p) > 0).await;
    for shard in ["shard0", "shard1"] {
        if p.phase() != Phase::Copying {
            break;
        }
        let before = copied(&p);
        shards(&t)
            .shard(shard)
            .expect("the shard exists")
            .step_down(Duration::from_secs(1));
        poll(
            &format!("the copy to go on after {shard} stepped down"),
            || copied(&p) > before || p.phase() != Phase::Copying,
        )
        .await;
    }
    wait_copied(&m).await;
    workload.stop().await;
    let outcome = cutover_and_complete(m).await;
    assert_eq!(outcome.phase, Phase::Completed, "{:?}", outcome.error);
    assert_same(&t.src, &t.dst).await;
}

/// Each shard's primary stepping down while changes are applied: the router's change
/// stream resumes and the destination converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shard_primaries_stepping_down_during_sync_are_survived() {
    let t = Topologies::from(
        sharded_source(Duration::from_secs(1), ShardKeyMoveOrder::DeleteFirst),
        Deployment::start("dst", 0),
    )
    .await;
    seed_sharded(&t.src, 1000).await;
    let workload = Workload::start(t.src.clone(), "app", 1000);
    let m = start(t.config("")).await;
    wait_copied(&m).await;
    let p = m.progress.clone();
    for shard in ["shard0", "shard1"] {
        let before = applied(&p);
        shards(&t)
            .shard(shard)
            .expect("the shard exists")
            .step_down(Duration::from_secs(1));
        poll(
            &format!("applying to go on after {shard} stepped down"),
            || applied(&p) > before + 20,
        )
        .await;
        assert!(!p.phase().is_terminal(), "{:?}", p.last_error.read());
    }
    workload.stop().await;
    let outcome = cutover_and_complete(m).await;
    assert_eq!(outcome.phase, Phase::Completed, "{:?}", outcome.error);
    assert_same(&t.src, &t.dst).await;
}

/// The baseline verification on a sharded source: it compares what the router shows
/// (orphans on the donor left out), and the cutover reads again only the documents
/// changed since.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_baseline_on_a_sharded_source_rechecks_only_what_changed() {
    let t = Topologies::from(
        sharded_source(Duration::from_secs(1), ShardKeyMoveOrder::DeleteFirst),
        Deployment::start("dst", 0),
    )
    .await;
    seed_sharded(&t.src, 1000).await;
    assert!(orphans(&t.src, "app.events").await > 0);
    let m = start(t.config("")).await;
    wait_phase(&m.progress, Phase::ReadyForCutover).await;
    let progress = m.progress.clone();
    poll("the baseline verification to finish", || {
        let view = progress.baseline.read();
        assert_ne!(
            view.state,
            ferry::progress::BaselineState::Failed,
            "baseline failed: {:?}",
            view.detail
        );
        view.state == ferry::progress::BaselineState::Done
    })
    .await;
    {
        let view = progress.baseline.read();
        assert_eq!(view.documents_compared, 3000, "orphans are not compared");
        assert_eq!(view.chunks_differing, 0, "{view:?}");
    }
    let counters = t.src.database("app").collection::<Document>("counters");
    for i in 0..20i64 {
        counters
            .update_one(doc! {"_id": i * 10}, doc! {"$inc": {"value": 1i64}})
            .await
            .expect("update");
    }
    for i in 0..5i64 {
        counters
            .insert_one(doc! {"_id": 10_000 + i, "value": i})
            .await
            .expect("insert");
        counters
            .delete_one(doc! {"_id": i * 10 + 1})
            .await
            .expect("delete");
    }
    let outcome = cutover_and_complete(m).await;
    assert_eq!(outcome.phase, Phase::Completed, "{:?}", outcome.error);
    let v = outcome.report.expect("report").verification;
    assert_eq!(v.baseline_documents, 3000, "{v:?}");
    assert_eq!(v.documents_checked, 25, "{v:?}");
    assert_same(&t.src, &t.dst).await;
}

/// A chunk that moves to the other shard after the plan and before (or while) its range
/// is copied: the range is a key range read through the router, so its documents are
/// found on their new shard, the donor's orphans are left out, and nothing is lost or
/// copied twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_moving_during_the_copy_is_copied_whole_once() {
    let t = Topologies::from(
        sharded_source(Duration::from_secs(1), ShardKeyMoveOrder::DeleteFirst),
        Deployment::start("dst", 0),
    )
    .await;
    shard_collection(&t.src, "app.items", doc! {"k": 1}).await;
    let items = t.src.database("app").collection::<Document>("items");
    items
        .insert_many((0..3000).map(|i| doc! {"_id": i, "k": i, "pad": "x".repeat(100)}))
        .await
        .expect("seed");
    for at in [1000, 2000] {
        t.src
            .database("admin")
            .run_command(doc! {"split": "app.items", "middle": {"k": at}})
            .await
            .expect("split");
    }
    let Deployment::ReplicaSet(destination) = &t.destination else {
        panic!("a replica set destination");
    };
    // A slow destination keeps the copy going while the chunk moves.
    destination.set_latency(Duration::from_millis(20));
    let m = start(t.config(
        "[copy]\nbatch_max_documents = 50\ninsert_workers = 1\nparallel_collections = 1\nparallel_ranges_per_collection = 1\n",
    ))
    .await;
    let p = m.progress.clone();
    poll("the copy to start", || copied(&p) > 0).await;
    let to = other_shard(&t.src, "app").await;
    t.src
        .database("admin")
        .run_command(
            doc! {"moveChunk": "app.items", "find": {"k": 2500}, "to": &to, "_waitForDelete": false},
        )
        .await
        .expect("moveChunk during the copy");
    assert!(
        orphans(&t.src, "app.items").await > 0,
        "the donor kept orphans"
    );
    destination.set_latency(Duration::ZERO);
    let outcome = cutover_and_complete(m).await;
    assert_eq!(outcome.phase, Phase::Completed, "{:?}", outcome.error);
    assert_eq!(assert_same(&t.src, &t.dst).await, 3000);
}

/// Pins: verification compared documents and indexes only, so a destination collection
/// sharded on another key than the source's passed; now the cutover is refused naming
/// both keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_sharded_on_another_key_is_refused_at_cutover() {
    let t = Topologies::from(
        sharded_source(Duration::from_secs(1), ShardKeyMoveOrder::DeleteFirst),
        Deployment::start("dst", 2),
    )
    .await;
    shard_collection(&t.src, "app.items", doc! {"k": 1}).await;
    t.src
        .database("app")
        .collection::<Document>("items")
        .insert_many((0..100).map(|i| doc! {"_id": i, "k": i, "other": 100 - i}))
        .await
        .expect("seed");
    let m = start(t.config("")).await;
    wait_copied(&m).await;
    // Someone drops the destination's copy (Ferry sharded it on the source's key) and
    // shards it again on another key.
    t.dst
        .database("app")
        .collection::<Document>("items")
        .drop()
        .await
        .expect("drop the destination's copy");
    t.dst
        .database("app")
        .collection::<Document>("items")
        .create_index(
            mongodb::IndexModel::builder()
                .keys(doc! {"other": 1})
                .build(),
        )
        .await
        .expect("index for the other key");
    shard_collection(&t.dst, "app.items", doc! {"other": 1}).await;
    let error = cutover_refused_by_verification(&m).await;
    assert!(
        error.contains("shard key") && error.contains("other"),
        "the refusal names the differing shard keys: {error}"
    );
}

/// What applications do to a collection sharded on a field some documents lack (the
/// server reads a missing shard-key field as null, and a change event's `documentKey`
/// then has only `_id`): insert such documents, update, replace and delete them, and
/// set the field on some; plus a document whose shard key changes right after its
/// insert (PCSM PR #144 wrote it with a stale filter). Two shards to two shards, during
/// the copy and during sync; the destination ends equal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_without_shard_key_fields_converge_between_sharded_clusters() {
    let t = Topologies::from(
        sharded_source(Duration::from_secs(1), ShardKeyMoveOrder::DeleteFirst),
        Deployment::start("dst", 2),
    )
    .await;
    shard_collection(&t.src, "app.people", doc! {"region": 1}).await;
    let to = other_shard(&t.src, "app").await;
    split_and_move(&t.src, "app.people", doc! {"region": "m"}, &to).await;
    let people = t.src.database("app").collection::<Document>("people");
    people
        .insert_many((0..200).map(|i| {
            if i % 3 == 0 {
                doc! {"_id": i, "v": 0}
            } else {
                let region = if i % 2 == 0 { "eu" } else { "us" };
                doc! {"_id": i, "region": region, "v": 0}
            }
        }))
        .await
        .expect("seed");
    let writes = |round: i32| {
        let people = people.clone();
        async move {
            let base = 1000 * round;
            for i in 0..30 {
                let id = base + i;
                // Inserted without the key, updated, replaced (still without it).
                people
                    .insert_one(doc! {"_id": id, "v": 1})
                    .await
                    .expect("insert without the shard key");
                people
                    .update_one(doc! {"_id": id, "region": null}, doc! {"$inc": {"v": 1}})
                    .await
                    .expect("update without the shard key");
                people
                    .replace_one(doc! {"_id": id, "region": null}, doc! {"v": 10, "r": true})
                    .await
                    .expect("replace without the shard key");
                // Inserted with the key and moved to the other shard right away.
                people
                    .insert_one(doc! {"_id": base + 500 + i, "region": "eu", "v": 1})
                    .await
                    .expect("insert with the shard key");
                people
                    .update_one(
                        doc! {"_id": base + 500 + i, "region": "eu"},
                        doc! {"$set": {"region": "zz"}},
                    )
                    .await
                    .expect("shard key changed right after insert");
            }
            // The seeded documents without the key: some updated, some given the key,
            // some deleted.
            for i in (0..200).step_by(3) {
                let q = doc! {"_id": i, "region": null};
                match (i / 3 + round) % 3 {
                    0 => {
                        people
                            .update_one(q, doc! {"$inc": {"v": 1}})
                            .await
                            .expect("update");
                    }
                    1 if round == 1 => {
                        people
                            .update_one(q, doc! {"$set": {"region": "xx"}})
                            .await
                            .expect("set the missing key");
                    }
                    _ => {
                        people.delete_one(q).await.expect("delete");
                    }
                }
            }
        }
    };
    let m = start(t.config("")).await;
    writes(1).await;
    wait_phase(&m.progress, Phase::ReadyForCutover).await;
    writes(2).await;
    let outcome = cutover_and_complete(m).await;
    assert_eq!(outcome.phase, Phase::Completed, "{:?}", outcome.error);
    assert_same(&t.src, &t.dst).await;
}
