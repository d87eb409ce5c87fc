//! Helpers shared by the sandbox integration tests: one sandbox per test on port 0,
//! a driver client, raw commands and deadline-bounded polling.
#![allow(dead_code)]

use std::future::Future;
use std::time::{Duration, Instant};

use ferry_sandbox::{Sandbox, SandboxOptions};
use mongodb::bson::{Bson, Document};
use mongodb::options::ClientOptions;
use mongodb::Client;

pub fn start() -> Sandbox {
    start_with(SandboxOptions::default())
}

pub fn start_with(options: SandboxOptions) -> Sandbox {
    Sandbox::start(options).expect("sandbox starts")
}

pub async fn client_for(uri: &str) -> Client {
    let mut options = ClientOptions::parse(uri).await.expect("uri parses");
    options.server_selection_timeout = Some(Duration::from_secs(5));
    options.connect_timeout = Some(Duration::from_secs(5));
    Client::with_options(options).expect("client builds")
}

pub async fn client(sb: &Sandbox) -> Client {
    client_for(&sb.uri()).await
}

/// Runs a command and returns the raw reply, errors included as Err.
pub async fn run(client: &Client, db: &str, cmd: Document) -> mongodb::error::Result<Document> {
    client.database(db).run_command(cmd).await
}

/// The server error code of a failed operation.
pub fn code(err: &mongodb::error::Error) -> i32 {
    match err.kind.as_ref() {
        mongodb::error::ErrorKind::Command(c) => c.code,
        mongodb::error::ErrorKind::Write(mongodb::error::WriteFailure::WriteError(w)) => w.code,
        mongodb::error::ErrorKind::Write(mongodb::error::WriteFailure::WriteConcernError(w)) => {
            w.code
        }
        mongodb::error::ErrorKind::InsertMany(e) => e
            .write_errors
            .as_ref()
            .and_then(|w| w.first())
            .map(|w| w.code)
            .unwrap_or(-1),
        mongodb::error::ErrorKind::BulkWrite(e) => {
            e.write_errors.values().next().map(|w| w.code).unwrap_or(-1)
        }
        other => panic!("not a server error: {other:?}"),
    }
}

pub async fn expect_code<T: std::fmt::Debug>(
    result: mongodb::error::Result<T>,
    expected: i32,
) -> mongodb::error::Error {
    let err = result.expect_err("operation should fail");
    assert_eq!(code(&err), expected, "unexpected error: {err:?}");
    err
}

/// Polls `f` until it yields Some, failing after `timeout`.
pub async fn poll<T, F, Fut>(timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "condition not met within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn as_i64(b: Option<&Bson>) -> i64 {
    match b {
        Some(Bson::Int32(n)) => *n as i64,
        Some(Bson::Int64(n)) => *n,
        Some(Bson::Double(f)) => *f as i64,
        other => panic!("not a number: {other:?}"),
    }
}

/// Shards `app.items` on `{k: 1}` through `router`, with shard0 as the database's
/// primary shard, inserts documents `{_id: k, k}` for every `k` in `keys`, then splits
/// its chunk at each of `splits`.
pub async fn shard_items(router: &Client, keys: std::ops::Range<i32>, splits: &[i32]) {
    use mongodb::bson::doc;
    run(
        router,
        "admin",
        doc! {"enableSharding": "app", "primaryShard": "shard0"},
    )
    .await
    .expect("enableSharding");
    run(
        router,
        "admin",
        doc! {"shardCollection": "app.items", "key": {"k": 1}},
    )
    .await
    .expect("shardCollection");
    let docs: Vec<Document> = keys
        .map(|k| mongodb::bson::doc! {"_id": k, "k": k})
        .collect();
    if !docs.is_empty() {
        router
            .database("app")
            .collection::<Document>("items")
            .insert_many(docs)
            .await
            .expect("insert the items");
    }
    for at in splits {
        run(
            router,
            "admin",
            doc! {"split": "app.items", "middle": {"k": at}},
        )
        .await
        .expect("split");
    }
}

/// `app.items` sharded on `{k: 1}` with chunks [MinKey, 100) on shard0 and
/// [100, MaxKey) on shard1, set up in the catalog directly (chunk moves belong to the
/// balancer's own tests).
pub async fn split_at_100(cluster: &ferry_sandbox::ShardedCluster, router: &Client) {
    use mongodb::bson::doc;
    run(
        router,
        "admin",
        doc! {"enableSharding": "app", "primaryShard": "shard0"},
    )
    .await
    .unwrap();
    run(
        router,
        "admin",
        doc! {"shardCollection": "app.items", "key": {"k": 1}},
    )
    .await
    .unwrap();
    let topology = cluster.topology().unwrap();
    let mut config = topology.config.storage.lock();
    let entry = ferry_sandbox::sharding::catalog::collection(&config, "app.items").unwrap();
    let chunk = ferry_sandbox::sharding::catalog::chunks(&config, &entry.uuid)
        .pop()
        .unwrap();
    ferry_sandbox::sharding::catalog::split_chunk(
        &mut config,
        &chunk.id,
        doc! {"k": 100},
        "shard1",
    )
    .unwrap();
}
