//! `ferry demo`: a whole migration with no MongoDB at hand. Starts a sandbox source and
//! destination (replica sets, or sharded clusters with `--source-shards` /
//! `--destination-shards`), seeds a realistic data set, keeps writing to the source while
//! Ferry copies and syncs, stops the writes, cuts over, verifies and prints the report.
//!
//! The seeding and the live workload are the application being migrated, not Ferry: they
//! use the driver directly, as an application would. Ferry's own driver calls all go
//! through `crate::cluster`.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bson::{doc, oid::ObjectId, Binary, Bson, DateTime, Decimal128, Document};
use ferry_sandbox::{Sandbox, SandboxOptions, ShardedCluster, ShardedOptions};
use mongodb::Client;

use crate::control::ControlRequest;
use crate::progress::{BaselineState, Phase, Progress};
use crate::run::{Migration, RunOptions};

/// Sizes of the seeded collections (about 115k documents in all).
pub struct DemoSizes {
    pub customers: usize,
    pub orders: usize,
    pub products: usize,
    pub events: usize,
    pub sessions: usize,
}

impl Default for DemoSizes {
    fn default() -> Self {
        DemoSizes {
            customers: 20_000,
            orders: 50_000,
            products: 10_000,
            events: 30_000,
            sessions: 5_000,
        }
    }
}

/// `ferry demo`'s options: the shape of each side.
#[derive(clap::Args, Clone, Copy, Debug, Default)]
pub struct DemoArgs {
    /// Shards of the source cluster (0: a replica set).
    #[arg(long, default_value_t = 0)]
    pub source_shards: usize,
    /// Shards of the destination cluster (0: a replica set).
    #[arg(long, default_value_t = 0)]
    pub destination_shards: usize,
}

/// One side of the demo: an in-memory replica set or sharded cluster.
enum DemoSide {
    ReplicaSet(Sandbox),
    Sharded(Box<ShardedCluster>),
}

impl DemoSide {
    /// A sharded source keeps its balancer running (Ferry stops it for the migration and
    /// restores it at the end); chunks move between shards until then.
    fn start(name: &str, shards: usize, balancer: Duration) -> Result<DemoSide, DemoError> {
        if shards == 0 {
            return Ok(DemoSide::ReplicaSet(Sandbox::start(SandboxOptions {
                set_name: name.into(),
                ..Default::default()
            })?));
        }
        Ok(DemoSide::Sharded(Box::new(ShardedCluster::start(
            ShardedOptions {
                shards,
                balancer_interval: balancer,
                ..Default::default()
            },
        )?)))
    }

    fn uri(&self) -> String {
        match self {
            DemoSide::ReplicaSet(s) => s.uri(),
            DemoSide::Sharded(c) => c.router_uri(),
        }
    }

    fn describe(&self) -> String {
        match self {
            DemoSide::ReplicaSet(s) => format!("replica set {}", s.uri()),
            DemoSide::Sharded(c) => format!(
                "sharded cluster, {} shards, router {}",
                c.shards().count(),
                c.router_uri()
            ),
        }
    }
}

/// Shards the demo's big collections on a sharded source before they are seeded: ranged
/// on `_id` for customers (the balancer spreads its chunks), hashed for orders and events.
async fn shard_source(client: &Client) -> Result<(), DemoError> {
    let admin = client.database("admin");
    for db in ["shop", "analytics"] {
        admin.run_command(doc! {"enableSharding": db}).await?;
    }
    admin
        .run_command(doc! {"shardCollection": "shop.customers", "key": {"_id": 1}})
        .await?;
    for at in [5_000i64, 10_000, 15_000] {
        admin
            .run_command(doc! {"split": "shop.customers", "middle": {"_id": at}})
            .await?;
    }
    admin
        .run_command(doc! {"shardCollection": "shop.orders", "key": {"customer": "hashed"}})
        .await?;
    admin
        .run_command(doc! {"shardCollection": "analytics.events", "key": {"_id": "hashed"}})
        .await?;
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("sandbox: {0}")]
    Sandbox(#[from] ferry_sandbox::StartError),
    #[error("driver: {0}")]
    Driver(#[from] mongodb::error::Error),
    #[error("config: {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("run: {0}")]
    Run(#[from] crate::run::RunError),
    #[error("{0}")]
    Other(String),
}

/// Inserts `n` documents made by `make` in batches.
async fn seed<F: Fn(usize) -> Document>(
    client: &Client,
    db: &str,
    coll: &str,
    n: usize,
    make: F,
) -> Result<(), DemoError> {
    let c = client.database(db).collection::<Document>(coll);
    let mut i = 0;
    while i < n {
        let end = (i + 2000).min(n);
        c.insert_many((i..end).map(&make).collect::<Vec<_>>())
            .await?;
        i = end;
    }
    Ok(())
}

/// Seeds several databases with unique, compound and TTL indexes, varied BSON types and
/// ObjectId, integer, string and document `_id`s.
pub async fn seed_source(client: &Client, sizes: &DemoSizes) -> Result<u64, DemoError> {
    let shop = client.database("shop");
    shop.run_command(doc! {"createIndexes": "customers", "indexes": [{"key": {"email": 1}, "name": "email_1", "unique": true}]}).await?;
    shop.run_command(doc! {"createIndexes": "orders", "indexes": [{"key": {"customer": 1, "created": -1}, "name": "customer_1_created_-1"}]}).await?;
    shop.run_command(doc! {"createIndexes": "sessions", "indexes": [{"key": {"last_seen": 1}, "name": "last_seen_ttl", "expireAfterSeconds": 86400}]}).await?;
    shop.run_command(doc! {"create": "vip_customers", "viewOn": "customers", "pipeline": [{"$match": {"tier": "gold"}}]}).await?;
    let now = DateTime::now().timestamp_millis();
    seed(client, "shop", "customers", sizes.customers, |i| {
        doc! {
            "_id": i as i64,
            "email": format!("user{i}@example.com"),
            "name": format!("Customer {i}"),
            "tier": (["bronze", "silver", "gold"][i % 3]),
            "balance": Decimal128::from_bytes(((i as u128) * 100).to_le_bytes()),
            "signed_up": DateTime::from_millis(now - (i as i64) * 60_000),
            "tags": ["demo", if i.is_multiple_of(2) { "even" } else { "odd" }],
            "address": {"city": (["Lyon", "Oslo", "Lima", "Pune"][i % 4]), "zip": format!("{:05}", i % 99_999)},
        }
    })
    .await?;
    seed(client, "shop", "orders", sizes.orders, |i| {
        doc! {
            "_id": ObjectId::new(),
            "customer": (i % sizes.customers.max(1)) as i64,
            "created": DateTime::from_millis(now - (i as i64) * 1000),
            "total": (i % 500) as f64 + 0.99,
            "items": [{"sku": format!("sku-{}", i % 1000), "qty": (i % 5 + 1) as i32}],
            "paid": i % 7 != 0,
            "note": if i.is_multiple_of(11) { Bson::Null } else { Bson::String("leave at door".into()) },
            "padding": "x".repeat(200),
        }
    })
    .await?;
    seed(client, "shop", "sessions", sizes.sessions, |i| {
        doc! {"_id": format!("sess-{i:06}"), "last_seen": DateTime::from_millis(now), "token": Binary { subtype: bson::spec::BinarySubtype::Generic, bytes: (i as u64).to_le_bytes().to_vec() }}
    })
    .await?;
    seed(client, "inventory", "products", sizes.products, |i| {
        let id = if i.is_multiple_of(2) { Bson::String(format!("sku-{i}")) } else { Bson::Int32(i as i32) };
        doc! {"_id": id, "name": format!("Product {i}"), "price": (i % 100) as f64 * 1.5, "stock": (i % 50) as i64, "dims": [1.0, 2.5, (i % 10) as f64]}
    })
    .await?;
    seed(client, "analytics", "events", sizes.events, |i| {
        doc! {"_id": {"day": (i / 1000) as i32, "seq": (i % 1000) as i32}, "kind": (["view", "click", "buy"][i % 3]), "at": DateTime::from_millis(now - i as i64), "props": {"page": format!("/p/{}", i % 37), "ms": (i % 900) as i32}}
    })
    .await?;
    Ok((sizes.customers + sizes.orders + sizes.sessions + sizes.products + sizes.events) as u64)
}

/// Writes to the source until stopped: inserts, updates, replacements and deletes.
pub async fn workload(
    client: Client,
    stop: Arc<AtomicBool>,
    ops: Arc<AtomicU64>,
    customers: usize,
) {
    let shop = client.database("shop");
    let orders = shop.collection::<Document>("orders");
    let customers_coll = shop.collection::<Document>("customers");
    let products = client
        .database("inventory")
        .collection::<Document>("products");
    let mut i: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let step = async {
            orders.insert_one(doc! {"customer": (i % customers.max(1) as u64) as i64, "created": DateTime::now(), "total": 10.0, "items": [], "paid": false, "live": true}).await?;
            customers_coll
                .update_one(
                    doc! {"_id": (i % customers.max(1) as u64) as i64},
                    doc! {"$inc": {"visits": 1}, "$set": {"last_visit": DateTime::now()}},
                )
                .await?;
            if i.is_multiple_of(3) {
                products
                    .replace_one(
                        doc! {"_id": format!("sku-{}", (i * 2) % 1000)},
                        doc! {"name": "replaced", "price": 1.0, "stock": 0i64},
                    )
                    .await?;
            }
            if i.is_multiple_of(5) {
                orders.delete_one(doc! {"live": true}).await?;
            }
            Ok::<_, mongodb::error::Error>(())
        };
        match step.await {
            Ok(()) => {
                ops.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => tracing::debug!(error = %e, "demo workload write failed; retrying"),
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// How a replica-set source's collections are sharded on a sharded destination: the
/// `[sharding]` entries an operator writes (a sharded source's keys carry over by
/// themselves).
const DEMO_SHARDING_ENTRIES: &str = "[sharding]\n\
[[sharding.entries]]\ndatabase = \"shop\"\ncollection = \"orders\"\nkey = [{customer = \"hashed\"}]\n\
[[sharding.entries]]\ndatabase = \"shop\"\ncollection = \"customers\"\nkey = [{email = 1}]\n\
[[sharding.entries]]\ndatabase = \"analytics\"\ncollection = \"events\"\nkey = [{kind = 1}, {at = 1}]\n";

fn demo_config(
    source: &str,
    destination: &str,
    entries: bool,
) -> Result<crate::config::Config, DemoError> {
    let mut text = format!(
        "[source]\nuri = \"{source}\"\n[destination]\nuri = \"{destination}\"\n[api]\nlisten = \"127.0.0.1:0\"\n[runtime]\nidle_noop_interval_seconds = 1\ncheckpoint_interval_seconds = 1\n"
    );
    if entries {
        text.push_str(DEMO_SHARDING_ENTRIES);
    }
    let mut config = crate::config::from_toml_str(&text, &|_| None)?;
    // Changes made during the copy are spooled on local disk, as on a production run.
    config.runtime.spool_dir =
        Some(std::env::temp_dir().join(format!("ferry-demo-spool-{}", std::process::id())));
    Ok(config)
}

/// Runs the demo; prints progress and the report.
pub async fn run_demo(
    sizes: DemoSizes,
    shape: DemoArgs,
) -> Result<crate::report::Report, DemoError> {
    let started = Instant::now();
    let source = DemoSide::start("source", shape.source_shards, Duration::from_millis(300))?;
    let destination = DemoSide::start(
        "destination",
        shape.destination_shards,
        Duration::from_secs(10),
    )?;
    println!("source:      {}", source.describe());
    println!("destination: {}", destination.describe());
    let client = Client::with_uri_str(source.uri()).await?;
    if matches!(source, DemoSide::Sharded(_)) {
        shard_source(&client).await?;
    }
    let seeded = seed_source(&client, &sizes).await?;
    println!(
        "seeded {seeded} documents in 3 databases ({:.1} s)",
        started.elapsed().as_secs_f64()
    );
    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let load = tokio::spawn(workload(
        client.clone(),
        stop.clone(),
        ops.clone(),
        sizes.customers,
    ));
    let entries =
        matches!(source, DemoSide::ReplicaSet(_)) && matches!(destination, DemoSide::Sharded(_));
    let config = demo_config(&source.uri(), &destination.uri(), entries)?;
    if entries {
        println!("sharding on the destination: shop.orders on a hashed customer, shop.customers on email, analytics.events on (kind, at)");
    }
    if matches!(source, DemoSide::Sharded(_)) {
        println!(
            "source balancer running; chunks per shard: {} (Ferry stops the balancer for the migration and restores it at the end)",
            chunk_spread(&client).await
        );
    }
    let spool_dir = config.runtime.spool_dir.clone();
    let migration =
        tokio::task::spawn_blocking(move || Migration::start(config, RunOptions::default()))
            .await
            .map_err(|e| DemoError::Other(e.to_string()))??;
    if let Some(addr) = migration.api_addr() {
        println!("ferry API:           http://{addr}/api/v1/progress");
    }
    let progress = migration.progress.clone();
    wait_ready_for_cutover(&progress, Duration::from_secs(110)).await?;
    let mut last_print = Instant::now();
    // Applications keep writing while Ferry compares both sides in the background (the
    // baseline verification); once it is done, the cutover only re-reads what changed.
    println!("in sync; comparing both sides in the background while the workload goes on");
    let baseline_deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let view = progress.baseline.read().clone();
        match view.state {
            BaselineState::Done => {
                println!(
                    "baseline verification done: {} documents compared, {} chunks differed (the live workload), {} documents changed since",
                    view.documents_compared,
                    view.chunks_differing,
                    progress.baseline_changed.load(Ordering::Relaxed)
                );
                break;
            }
            BaselineState::Failed => {
                println!(
                    "baseline verification not usable ({}); the cutover compares every document",
                    view.detail.unwrap_or_default()
                );
                break;
            }
            _ if Instant::now() > baseline_deadline => {
                println!("baseline verification still running; cutting over anyway");
                break;
            }
            _ => {}
        }
        if last_print.elapsed() > Duration::from_secs(1) {
            last_print = Instant::now();
            println!(
                "  baseline           compared {:>7} docs, lag {}",
                view.documents_compared,
                progress
                    .lag_seconds()
                    .map(|l| format!("{l:.0} s"))
                    .unwrap_or_else(|| "-".into()),
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let _ = load.await;
    // The workload's last writes may have put the run back to syncing (lag above the
    // threshold): the cutover is asked for only once it is ready again.
    wait_ready_for_cutover(&progress, Duration::from_secs(60)).await?;
    println!(
        "ready for cutover; application writes stopped after {} workload rounds",
        ops.load(Ordering::Relaxed)
    );
    let reply = migration
        .control
        .request(ControlRequest::Cutover {
            writes_stopped: true,
        })
        .await;
    if let Err(e) = reply {
        return Err(DemoError::Other(format!("cutover refused: {}", e.message)));
    }
    let outcome = tokio::task::spawn_blocking(move || migration.wait())
        .await
        .map_err(|e| DemoError::Other(e.to_string()))??;
    if let Some(dir) = spool_dir {
        // Empty once the spooled changes are applied.
        let _ = std::fs::remove_dir(dir);
    }
    match (outcome.phase, outcome.report) {
        (Phase::Completed, Some(report)) => {
            println!("demo finished in {:.1} s", started.elapsed().as_secs_f64());
            Ok(report)
        }
        (phase, _) => Err(DemoError::Other(format!(
            "migration ended {} ({})",
            phase.as_str(),
            outcome.error.unwrap_or_default()
        ))),
    }
}

/// Chunks per shard on a sharded side ("shard0 5, shard1 4"), for the demo's
/// narration; empty when unreadable.
async fn chunk_spread(client: &Client) -> String {
    let chunks = client.database("config").collection::<Document>("chunks");
    let mut per_shard = std::collections::BTreeMap::<String, u64>::new();
    if let Ok(mut cursor) = chunks.find(doc! {}).await {
        use futures_util::TryStreamExt;
        while let Ok(Some(chunk)) = cursor.try_next().await {
            if let Ok(shard) = chunk.get_str("shard") {
                *per_shard.entry(shard.to_string()).or_default() += 1;
            }
        }
    }
    per_shard
        .iter()
        .map(|(shard, n)| format!("{shard} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `ferry demo` entry point.
pub fn demo_command(shape: DemoArgs) -> ExitCode {
    crate::logging::init("warn", false);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run_demo(DemoSizes::default(), shape)) {
        Ok(report) if report.verification.passed => ExitCode::SUCCESS,
        Ok(_) => {
            eprintln!("verification failed");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("demo failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Waits until the run is ready for cutover, printing its progress each second; fails when
/// the run ended or `within` passed.
async fn wait_ready_for_cutover(progress: &Progress, within: Duration) -> Result<(), DemoError> {
    let deadline = Instant::now() + within;
    let mut last_print = Instant::now();
    loop {
        let phase = progress.phase();
        if phase == Phase::ReadyForCutover {
            return Ok(());
        }
        if phase.is_terminal() || Instant::now() > deadline {
            return Err(DemoError::Other(format!(
                "migration stopped in phase {} ({:?})",
                phase.as_str(),
                progress.last_error.read().clone()
            )));
        }
        if last_print.elapsed() > Duration::from_secs(1) {
            last_print = Instant::now();
            println!(
                "  {:<18} copied {:>7}/{:<7} docs, applied {:>6} events, lag {}",
                phase.as_str(),
                progress.documents_copied.load(Ordering::Relaxed),
                progress.documents_estimated.load(Ordering::Relaxed),
                progress.events_applied.load(Ordering::Relaxed),
                progress
                    .lag_seconds()
                    .map(|l| format!("{l:.0} s"))
                    .unwrap_or_else(|| "-".into()),
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
