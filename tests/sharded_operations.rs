//! What operators do around a migration between sharded clusters, tried as they do it:
//! a cutover with the source's writes blocked through its router, refused by verification
//! and retried; a second `ferry run` pointed at the same sharded destination; the
//! destination lease taken away from a running migration whose data lives on two
//! destination shards (the fencing needs no multi-document transaction).

mod common;

use bson::{doc, DateTime, Document};
use common::sharded::*;
use common::*;
use ferry::checkpoint::lease::{host_name, process_owner};
use ferry::progress::Phase;

/// Two shards → two shards: `app.items` sharded on a hashed `_id` (spread over both
/// source shards), and the collections the [`Workload`] writes to (on the primary shard).
async fn two_to_two() -> Topologies {
    let t = Topologies::start(2, 2).await;
    seed(&t.src, "app", 300).await;
    shard_collection(&t.src, "app.items", doc! {"_id": "hashed"}).await;
    t.src
        .database("app")
        .collection::<Document>("items")
        .insert_many((0..600).map(|i| doc! {"_id": i, "v": i}))
        .await
        .expect("seed the source");
    t
}

/// A refused cutover with `enforce_write_block` between sharded clusters gives the
/// source's router its writes back, and the retried cutover completes with the source
/// writable again: the write block is set and lifted cluster-wide through the mongos.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_cutover_between_sharded_clusters_is_retried_with_the_write_block() {
    let t = two_to_two().await;
    let load = Workload::start(t.src.clone(), "app", 200);
    let m = start(t.config("[cutover]\nenforce_write_block = true\n")).await;
    wait_phase(&m.progress, Phase::ReadyForCutover).await;
    let planted = t.dst.database("app").collection::<Document>("counters");
    planted
        .insert_one(doc! {"_id": "planted", "value": 1i64})
        .await
        .expect("plant a difference on the destination");
    load.stop().await;
    // A probe writing through the router sees the block while the cutover runs (a slow
    // destination router keeps the cutover going for a while).
    let dst_router = t
        .destination
        .sharded()
        .expect("a sharded destination")
        .router();
    dst_router.set_latency(std::time::Duration::from_millis(100));
    let blocked = tokio::spawn({
        let src = t.src.clone();
        async move { wait_source_blocked(&src).await }
    });
    let error = cutover_refused_by_verification(&m).await;
    blocked
        .await
        .expect("the router refused writes during the cutover");
    dst_router.set_latency(std::time::Duration::ZERO);
    assert!(error.contains("app.counters"), "{error}");
    assert_source_writable(&t.src, "refused its cutover").await;
    // Writes go on through the router between the two attempts, on both shards.
    let items = t.src.database("app").collection::<Document>("items");
    items
        .insert_many((600..700).map(|i| doc! {"_id": i, "v": i}))
        .await
        .expect("the applications write again after the refusal");
    items
        .update_many(doc! {"_id": {"$lt": 50}}, doc! {"$set": {"v": "after"}})
        .await
        .expect("the applications update again after the refusal");
    planted
        .delete_one(doc! {"_id": "planted"})
        .await
        .expect("remove the planted difference");
    let outcome = cutover_and_complete(m).await;
    assert_eq!(outcome.phase, Phase::Completed);
    assert_same(&t.src, &t.dst).await;
    assert_source_writable(&t.src, "completed after a refused cutover").await;
}

/// A second `ferry run` on the same sharded destination (the lease lives in the
/// destination's `__ferry` database, on its primary shard) refuses to start and names the
/// holder; the first run goes on to complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_on_a_sharded_destination_refuses_to_start() {
    let t = two_to_two().await;
    let m = start(t.config("")).await;
    wait_phase(&m.progress, Phase::ReadyForCutover).await;
    let path = config_file(
        &t.source.uri(),
        &t.destination.uri(),
        free_port(),
        "[runtime]\nidle_noop_interval_seconds = 1\n",
    );
    let (status, output) = wait_child(spawn_ferry_run(&path)).await;
    assert_eq!(
        status.code(),
        Some(ferry::exit::DESTINATION_HELD.into()),
        "exit code of a destination held by another migration: {output}"
    );
    for expected in [
        format!("pid {}", std::process::id()),
        format!("host {}", host_name()),
    ] {
        assert!(output.contains(&expected), "{expected:?} not in: {output}");
    }
    assert_eq!(
        lock(&t.dst)
            .await
            .and_then(|l| l.get_str("owner").ok().map(String::from)),
        Some(process_owner().to_string()),
        "the first run still holds the destination"
    );
    cutover_and_complete(m).await;
    assert_same(&t.src, &t.dst).await;
    let _ = std::fs::remove_dir_all(path.parent().expect("config directory"));
}

/// A holder whose lease on a sharded destination is handed to another process while the
/// applications write stops writing to every destination shard and fails, leaving the
/// other holder's lease alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_whose_lease_on_a_sharded_destination_changes_hands_stops_writing() {
    let t = two_to_two().await;
    let load = Workload::start(t.src.clone(), "app", 300);
    let m = start(config_with_runtime(
        &t.source.uri(),
        &t.destination.uri(),
        "lease_seconds = 3\n",
        "",
    ))
    .await;
    wait_phase(&m.progress, Phase::ReadyForCutover).await;
    let in_an_hour = DateTime::from_millis(DateTime::now().timestamp_millis() + 3_600_000);
    t.dst
        .database("__ferry")
        .collection::<Document>("lock")
        .update_one(
            doc! {"_id": "lock"},
            doc! {"$set": {"owner": "ferry-00000000000000ff", "host": "other", "pid": 1i64, "expires_at": in_an_hour}},
        )
        .await
        .expect("hand the lease to another process");
    poll("the run to stop after losing its lease", || m.is_finished()).await;
    let outcome = wait(m).await;
    assert_eq!(outcome.phase, Phase::Failed);
    let error = outcome.error.unwrap_or_default();
    assert!(error.contains("pid 1 on host other"), "{error}");
    // Nothing writes to the destination once the run has ended: its shards hold what
    // they held, while the applications keep writing to the source.
    let before = documents(&t.dst, "app", "mixed").await;
    load.advance(200).await;
    assert_eq!(
        documents(&t.dst, "app", "mixed").await,
        before,
        "the destination changed after the run lost its lease"
    );
    let lease = lock(&t.dst).await.expect("the other holder's lease");
    assert_eq!(lease.get_str("owner"), Ok("ferry-00000000000000ff"));
    load.stop().await;
}
