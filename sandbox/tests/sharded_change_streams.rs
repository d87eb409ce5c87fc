//! Change streams of a sharded cluster: the router's merge of its shards' streams in
//! cluster-time order, held back by an idle shard until it reports past an event.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use ferry_sandbox::changestream::Scope;
use ferry_sandbox::server::Server;
use ferry_sandbox::sharding::stream::RouterStream;
use ferry_sandbox::{Sandbox, SandboxOptions};
use mongodb::bson::{doc, Document};

/// A shard replica set member whose periodic no-op writer runs every `noop`.
fn shard(name: &str, noop: Duration) -> Sandbox {
    start_with(SandboxOptions {
        set_name: name.into(),
        periodic_noop_interval: noop,
        ..Default::default()
    })
}

fn servers(shards: &[&Sandbox]) -> Vec<Arc<Server>> {
    shards.iter().map(|s| s.server().clone()).collect()
}

fn ids(events: &[Document]) -> Vec<i32> {
    events
        .iter()
        .map(|e| {
            e.get_document("documentKey")
                .and_then(|k| k.get_i32("_id"))
                .expect("event has documentKey._id")
        })
        .collect()
}

/// Pins the router's hold-back: an event of a busy shard must not be returned while an
/// idle shard has not reported past it (it could still log an older one), and must be
/// returned once the idle shard's periodic no-op moves its time past the event.
#[tokio::test]
async fn idle_shard_holds_events_back_until_its_periodic_noop() {
    let busy = shard("shard0", Duration::ZERO);
    let idle = shard("shard1", Duration::from_millis(400));
    let mut stream = RouterStream::open(
        &servers(&[&busy, &idle]),
        Scope::Cluster,
        &doc! {"allChangesForCluster": true},
        &[],
    )
    .expect("stream opens");
    let client = client(&busy).await;
    // Let the idle shard's first no-op pass, so the next one is a full interval away.
    let coll = client.database("t").collection::<Document>("c");
    coll.insert_one(doc! {"_id": 1}).await.unwrap();
    let (first, _) = stream.next_batch(100).unwrap();
    assert!(
        first.is_empty(),
        "an event was returned before the idle shard reported past it: {first:?}"
    );
    let events = poll(Duration::from_secs(10), || {
        let batch = stream.next_batch(100).unwrap().0;
        async move { (!batch.is_empty()).then_some(batch) }
    })
    .await;
    assert_eq!(ids(&events), vec![1]);
}

/// Pins the merge order: events of several shards come out in cluster-time order, not
/// shard by shard, and `postBatchResumeToken` resumes on the router after the last one.
#[tokio::test]
async fn events_of_all_shards_come_in_cluster_time_order_and_resume() {
    let a = shard("shard0", Duration::ZERO);
    let b = shard("shard1", Duration::ZERO);
    let shards = servers(&[&a, &b]);
    let spec = doc! {"allChangesForCluster": true};
    let mut stream = RouterStream::open(&shards, Scope::Cluster, &spec, &[]).unwrap();
    let ca = client(&a).await;
    let cb = client(&b).await;
    for i in 0..6 {
        let target = if i % 2 == 0 { &ca } else { &cb };
        target
            .database("t")
            .collection::<Document>("c")
            .insert_one(doc! {"_id": i})
            .await
            .unwrap();
    }
    // Both shards report past the last insert.
    for c in [&ca, &cb] {
        run(c, "admin", doc! {"appendOplogNote": 1, "data": {"tick": 1}})
            .await
            .unwrap();
    }
    let (events, _) = stream
        .await_batch(3, Instant::now() + Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(ids(&events), vec![0, 1, 2]);
    let resume = events[2].get_document("_id").unwrap().clone();
    let (rest, _) = stream
        .await_batch(100, Instant::now() + Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(ids(&rest), vec![3, 4, 5]);
    let mut resumed = RouterStream::open(
        &shards,
        Scope::Cluster,
        &doc! {"allChangesForCluster": true, "resumeAfter": resume},
        &[],
    )
    .unwrap();
    let (again, _) = resumed
        .await_batch(100, Instant::now() + Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(ids(&again), vec![3, 4, 5]);
}
