//! Change streams through the router: events of every shard merged in cluster-time
//! order, held back by an idle shard until it reports past them (its periodic no-op, or
//! `appendOplogNote` sent to the router), resume tokens that resume on the router,
//! `documentKey` with the shard key, a shard-key update as delete + insert (both
//! orders), migrations not reported, and `shardCollection` as an expanded event.

mod common;

use std::time::{Duration, Instant};

use common::{client_for, poll, run};
use ferry_sandbox::{SandboxOptions, ShardKeyMoveOrder, ShardedCluster, ShardedOptions};
use futures_util::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};
use mongodb::Client;

fn start(noop: Duration, order: ShardKeyMoveOrder) -> ShardedCluster {
    ShardedCluster::start(ShardedOptions {
        shards: 2,
        periodic_noop_interval: noop,
        balancer_interval: Duration::from_secs(3600),
        orphan_cleanup_delay: Duration::from_secs(3600),
        shard_key_move_order: order,
        ..Default::default()
    })
    .expect("cluster starts")
}

/// `app.items` sharded on `{k: 1}`: negative keys on shard0, the rest on shard1.
async fn split_over_two_shards(router: &Client) {
    common::shard_items(router, 0..0, &[0]).await;
    run(
        router,
        "admin",
        doc! {"moveChunk": "app.items", "find": {"k": 0}, "to": "shard1", "_waitForDelete": true},
    )
    .await
    .unwrap();
}

/// A raw change stream on `app.items` through the router.
struct Stream<'a> {
    client: &'a Client,
    id: i64,
}

impl<'a> Stream<'a> {
    async fn open(client: &'a Client, spec: Document) -> (Stream<'a>, Vec<Document>) {
        let reply = run(
            client,
            "app",
            doc! {"aggregate": "items", "pipeline": [{"$changeStream": spec}], "cursor": {}},
        )
        .await
        .expect("change stream opens");
        let cursor = reply.get_document("cursor").unwrap();
        assert!(cursor.get_document("postBatchResumeToken").is_ok());
        let first = batch(cursor, "firstBatch");
        (
            Stream {
                client,
                id: cursor.get_i64("id").unwrap(),
            },
            first,
        )
    }

    /// One getMore waiting up to `wait`: its events and postBatchResumeToken.
    async fn get_more(&self, wait: Duration) -> (Vec<Document>, Document) {
        let reply = run(
            self.client,
            "app",
            doc! {"getMore": self.id, "collection": "items", "maxTimeMS": wait.as_millis() as i64},
        )
        .await
        .expect("getMore succeeds");
        let cursor = reply.get_document("cursor").unwrap();
        let token = cursor
            .get_document("postBatchResumeToken")
            .expect("every batch has a postBatchResumeToken")
            .clone();
        (batch(cursor, "nextBatch"), token)
    }

    /// Events until there are `n`, failing after ten seconds.
    async fn events(&self, n: usize) -> Vec<Document> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut out = Vec::new();
        while out.len() < n {
            assert!(
                Instant::now() < deadline,
                "only {} of {n} events arrived: {out:?}",
                out.len()
            );
            out.extend(self.get_more(Duration::from_millis(500)).await.0);
        }
        out
    }
}

fn batch(cursor: &Document, field: &str) -> Vec<Document> {
    cursor
        .get_array(field)
        .unwrap()
        .iter()
        .map(|e| e.as_document().unwrap().clone())
        .collect()
}

fn ids(events: &[Document]) -> Vec<i32> {
    events
        .iter()
        .map(|e| {
            e.get_document("documentKey")
                .unwrap()
                .get_i32("_id")
                .unwrap()
        })
        .collect()
}

async fn insert(router: &Client, id: i32, k: i32) {
    router
        .database("app")
        .collection::<Document>("items")
        .insert_one(doc! {"_id": id, "k": k})
        .await
        .unwrap();
}

/// Makes every shard write a no-op, through the router.
async fn tick(router: &Client) {
    run(
        router,
        "admin",
        doc! {"appendOplogNote": 1, "data": {"msg": "tick"}},
    )
    .await
    .unwrap();
}

/// Pins the merge: inserts alternating between the shards come out in the order they
/// were written (cluster time), with the shard key in `documentKey`, and a resume token
/// of the router resumes right after its event.
#[tokio::test]
async fn events_of_all_shards_come_in_cluster_time_order() {
    let cluster = start(Duration::ZERO, ShardKeyMoveOrder::DeleteFirst);
    let router = client_for(&cluster.router_uri()).await;
    split_over_two_shards(&router).await;
    let (stream, _) = Stream::open(&router, doc! {}).await;
    for i in 1..=6 {
        let k = if i % 2 == 0 { i } else { -i };
        insert(&router, i, k).await;
    }
    tick(&router).await;
    let events = stream.events(6).await;
    assert_eq!(ids(&events), vec![1, 2, 3, 4, 5, 6]);
    assert_eq!(
        events[0].get_document("documentKey").unwrap(),
        &doc! {"k": -1, "_id": 1}
    );
    let times: Vec<_> = events
        .iter()
        .map(|e| e.get_timestamp("clusterTime").unwrap())
        .collect();
    assert!(times
        .windows(2)
        .all(|w| (w[0].time, w[0].increment) < (w[1].time, w[1].increment)));
    let token = events[2].get_document("_id").unwrap().clone();
    let (resumed, first) = Stream::open(&router, doc! {"resumeAfter": token}).await;
    let mut rest = first;
    if rest.len() < 3 {
        rest.extend(resumed.events(3 - rest.len()).await);
    }
    assert_eq!(ids(&rest), vec![4, 5, 6]);
}

/// Pins the hold-back and `appendOplogNote` through the router: an event of shard0 is
/// not returned while shard1 (no periodic no-op) has logged nothing after it; the
/// no-op the router has every shard write releases it.
#[tokio::test]
async fn an_idle_shard_holds_events_back_until_append_oplog_note() {
    let cluster = start(Duration::ZERO, ShardKeyMoveOrder::DeleteFirst);
    let router = client_for(&cluster.router_uri()).await;
    split_over_two_shards(&router).await;
    let (stream, _) = Stream::open(&router, doc! {}).await;
    insert(&router, 1, -1).await;
    let (held, _) = stream.get_more(Duration::from_millis(300)).await;
    assert!(held.is_empty(), "returned before shard1 reported: {held:?}");
    tick(&router).await;
    assert_eq!(ids(&stream.events(1).await), vec![1]);
}

/// Pins the periodic no-op writer: an idle shard's no-op releases the held event
/// without any other write.
#[tokio::test]
async fn an_idle_shards_periodic_noop_releases_events() {
    let cluster = start(Duration::from_millis(200), ShardKeyMoveOrder::DeleteFirst);
    let router = client_for(&cluster.router_uri()).await;
    split_over_two_shards(&router).await;
    let (stream, _) = Stream::open(&router, doc! {}).await;
    insert(&router, 1, -1).await;
    assert_eq!(ids(&stream.events(1).await), vec![1]);
}

async fn shard_key_update(order: ShardKeyMoveOrder) -> Vec<Document> {
    let cluster = start(Duration::ZERO, order);
    let router = client_for(&cluster.router_uri()).await;
    split_over_two_shards(&router).await;
    let (stream, _) = Stream::open(&router, doc! {}).await;
    insert(&router, 1, -5).await;
    // A retryable write (the driver's default) may change the shard key value.
    router
        .database("app")
        .collection::<Document>("items")
        .update_one(doc! {"_id": 1, "k": -5}, doc! {"$set": {"k": 5}})
        .await
        .unwrap();
    tick(&router).await;
    stream.events(3).await
}

fn kinds(events: &[Document]) -> Vec<&str> {
    events
        .iter()
        .map(|e| e.get_str("operationType").unwrap())
        .collect()
}

/// Pins a shard-key update through the router's stream: a delete (old key) and an
/// insert (new key) at one cluster time, delete first by default.
#[tokio::test]
async fn a_shard_key_update_is_a_delete_then_an_insert() {
    let events = shard_key_update(ShardKeyMoveOrder::DeleteFirst).await;
    assert_eq!(kinds(&events), vec!["insert", "delete", "insert"]);
    assert_eq!(
        events[1].get_document("documentKey").unwrap(),
        &doc! {"k": -5, "_id": 1}
    );
    assert_eq!(
        events[2].get_document("documentKey").unwrap(),
        &doc! {"k": 5, "_id": 1}
    );
    assert_eq!(
        events[1].get_timestamp("clusterTime").unwrap(),
        events[2].get_timestamp("clusterTime").unwrap()
    );
}

/// Pins the reverse order the sandbox can be told to use: insert, then delete.
#[tokio::test]
async fn a_shard_key_update_can_come_as_an_insert_then_a_delete() {
    let events = shard_key_update(ShardKeyMoveOrder::InsertFirst).await;
    assert_eq!(kinds(&events), vec!["insert", "insert", "delete"]);
    assert_eq!(
        events[1].get_document("documentKey").unwrap(),
        &doc! {"k": 5, "_id": 1}
    );
}

/// Pins that chunk migrations are not reported: the copies on the recipient and the
/// donor's range deletion are `fromMigrate`, so only the marker insert arrives.
#[tokio::test]
async fn chunk_migrations_are_not_reported() {
    let cluster = start(Duration::ZERO, ShardKeyMoveOrder::DeleteFirst);
    let router = client_for(&cluster.router_uri()).await;
    split_over_two_shards(&router).await;
    for i in 1..=5 {
        insert(&router, i, i).await;
    }
    let (stream, _) = Stream::open(&router, doc! {}).await;
    run(
        &router,
        "admin",
        doc! {"moveChunk": "app.items", "find": {"k": 1}, "to": "shard0", "_waitForDelete": true},
    )
    .await
    .unwrap();
    insert(&router, 100, 100).await;
    tick(&router).await;
    let events = stream.events(1).await;
    assert_eq!(ids(&events), vec![100]);
    let (after, _) = stream.get_more(Duration::from_millis(100)).await;
    assert!(
        after.is_empty(),
        "migration writes were reported: {after:?}"
    );
}

/// Pins `showExpandedEvents` through the router: sharding a collection is reported as a
/// `shardCollection` event with its key.
#[tokio::test]
async fn shard_collection_is_an_expanded_event() {
    let cluster = start(Duration::from_millis(200), ShardKeyMoveOrder::DeleteFirst);
    let router = client_for(&cluster.router_uri()).await;
    run(
        &router,
        "admin",
        doc! {"enableSharding": "app", "primaryShard": "shard0"},
    )
    .await
    .unwrap();
    let reply = run(
        &router,
        "app",
        doc! {"aggregate": 1, "pipeline": [{"$changeStream": {"showExpandedEvents": true}}], "cursor": {}},
    )
    .await
    .unwrap();
    let id = reply.get_document("cursor").unwrap().get_i64("id").unwrap();
    run(
        &router,
        "admin",
        doc! {"shardCollection": "app.items", "key": {"k": 1}},
    )
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let event = loop {
        assert!(Instant::now() < deadline, "no shardCollection event");
        let reply = run(
            &router,
            "app",
            doc! {"getMore": id, "collection": "$cmd.aggregate", "maxTimeMS": 500},
        )
        .await
        .unwrap();
        let found = batch(reply.get_document("cursor").unwrap(), "nextBatch")
            .into_iter()
            .find(|e| e.get_str("operationType") == Ok("shardCollection"));
        if let Some(e) = found {
            break e;
        }
    };
    assert_eq!(
        event.get_document("ns").unwrap(),
        &doc! {"db": "app", "coll": "items"}
    );
    let description = event.get_document("operationDescription").unwrap();
    assert_eq!(
        description.get("shardKey"),
        Some(&Bson::Document(doc! {"k": 1}))
    );
}

/// Pins the per-node periodic no-op interval (`--periodic-noop-ms`): an idle primary
/// logs a no-op on its own within a few intervals.
#[tokio::test]
async fn an_idle_primary_logs_periodic_noops() {
    let sandbox = common::start_with(SandboxOptions {
        periodic_noop_interval: Duration::from_millis(100),
        ..Default::default()
    });
    let client = common::client(&sandbox).await;
    let oplog = client.database("local").collection::<Document>("oplog.rs");
    poll(Duration::from_secs(10), || async {
        let noops: Vec<Document> = oplog
            .find(doc! {"op": "n", "o.msg": "periodic noop"})
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        (!noops.is_empty()).then_some(())
    })
    .await;
}

/// The driver's own change stream through the router: events of both shards in order,
/// and a stream the driver resumes from its cached router token continues after it.
#[tokio::test]
async fn the_drivers_change_stream_works_through_the_router() {
    use futures_util::StreamExt;
    let cluster = start(Duration::from_millis(100), ShardKeyMoveOrder::DeleteFirst);
    let router = client_for(&cluster.router_uri()).await;
    split_over_two_shards(&router).await;
    let coll = router.database("app").collection::<Document>("items");
    let mut stream = coll.watch().await.unwrap();
    insert(&router, 1, -1).await;
    insert(&router, 2, 2).await;
    let mut keys = Vec::new();
    for _ in 0..2 {
        let event = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("an event within ten seconds")
            .expect("the stream is open")
            .unwrap();
        keys.push(event.document_key.unwrap());
    }
    assert_eq!(keys, [doc! {"k": -1, "_id": 1}, doc! {"k": 2, "_id": 2}]);
    let token = stream.resume_token().expect("a resume token");
    insert(&router, 3, -3).await;
    let mut resumed = coll.watch().resume_after(token).await.unwrap();
    let next = tokio::time::timeout(Duration::from_secs(10), resumed.next())
        .await
        .expect("an event within ten seconds")
        .expect("the stream is open")
        .unwrap();
    assert_eq!(next.document_key, Some(doc! {"k": -3, "_id": 3}));
}

/// Pins privileges on the router's change streams: a user without `changeStream` on
/// the namespace is refused (13 Unauthorized), and another user's cursor cannot be
/// read on.
#[tokio::test]
async fn change_streams_through_the_router_check_privileges() {
    let cluster = ShardedCluster::start(ShardedOptions {
        shards: 2,
        users: vec![
            ("admin".into(), "pw".into(), vec!["root".into()]),
            ("limited".into(), "pw".into(), vec!["readWrite".into()]),
        ],
        periodic_noop_interval: Duration::from_millis(200),
        ..Default::default()
    })
    .expect("cluster starts");
    let admin = client_for(&cluster.router_uri_with_user("admin", "pw")).await;
    let limited = client_for(&cluster.router_uri_with_user("limited", "pw")).await;
    let open = doc! {"aggregate": "items", "pipeline": [{"$changeStream": {}}], "cursor": {}};
    let err = run(&limited, "app", open.clone()).await.unwrap_err();
    assert_eq!(common::code(&err), 13);
    let reply = run(&admin, "app", open).await.unwrap();
    let id = reply.get_document("cursor").unwrap().get_i64("id").unwrap();
    let err = run(
        &limited,
        "app",
        doc! {"getMore": id, "collection": "items", "maxTimeMS": 100},
    )
    .await
    .unwrap_err();
    assert_eq!(common::code(&err), 13);
}

/// A shard added while a router stream is open joins the stream: writes routed to it
/// after a chunk moves there come out of the stream (before, the stream kept the shards
/// it opened with and never showed them).
#[tokio::test]
async fn a_shard_added_while_the_stream_is_open_joins_it() {
    let mut cluster = start(Duration::from_millis(200), ShardKeyMoveOrder::DeleteFirst);
    let router = client_for(&cluster.router_uri()).await;
    split_over_two_shards(&router).await;
    let (stream, _) = Stream::open(&router, doc! {}).await;
    insert(&router, 1, -5).await;
    assert_eq!(ids(&stream.events(1).await), vec![1]);
    let (name, host) = cluster.start_shard().expect("a new shard starts");
    run(&router, "admin", doc! {"addShard": host})
        .await
        .unwrap();
    run(
        &router,
        "admin",
        doc! {"split": "app.items", "middle": {"k": 100}},
    )
    .await
    .unwrap();
    run(
        &router,
        "admin",
        doc! {"moveChunk": "app.items", "find": {"k": 100}, "to": &name, "_waitForDelete": true},
    )
    .await
    .unwrap();
    insert(&router, 2, 150).await;
    insert(&router, 3, -7).await;
    tick(&router).await;
    assert_eq!(ids(&stream.events(2).await), vec![2, 3]);
}

/// Pins the reply size of the router's change stream: a getMore answered every pending
/// event in one reply, so four 6 MB inserts made a 24 MB reply, and with near-16 MB
/// documents one above the 48 MB message limit, which the driver refuses ("Message
/// length ... over maximum"; found by a two-shard randomized seed). A reply now holds
/// at most 16 MB of events; the rest come with the next getMore.
#[tokio::test]
async fn a_reply_holds_at_most_16_mb_of_events() {
    let cluster = start(Duration::ZERO, ShardKeyMoveOrder::DeleteFirst);
    let router = client_for(&cluster.router_uri()).await;
    split_over_two_shards(&router).await;
    let (stream, _) = Stream::open(&router, doc! {}).await;
    let big = "x".repeat(6 * 1024 * 1024);
    let items = router.database("app").collection::<Document>("items");
    for i in 1..=4 {
        let k = if i % 2 == 0 { i } else { -i };
        items
            .insert_one(doc! {"_id": i, "k": k, "big": &big})
            .await
            .expect("insert a 6 MB document");
    }
    tick(&router).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    while seen.len() < 4 {
        assert!(Instant::now() < deadline, "only {} of 4 events", seen.len());
        let (events, _) = stream.get_more(Duration::from_millis(500)).await;
        let bytes: usize = events
            .iter()
            .map(|e| mongodb::bson::to_vec(e).unwrap().len())
            .sum();
        assert!(
            bytes <= 16 * 1024 * 1024,
            "one reply carried {bytes} bytes of events"
        );
        seen.extend(events);
    }
    assert_eq!(ids(&seen), vec![1, 2, 3, 4]);
}
