//! Shared pieces of the end-to-end migration tests: sandbox pairs, configs, a seeded data
//! set with varied `_id` types and indexes, an independent write workload, polling with a
//! deadline, and the exact source == destination comparison an operator cares about.

#![allow(dead_code)]

pub mod certs;
pub mod sharded;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bson::{doc, oid::ObjectId, Bson, DateTime, Document, RawDocumentBuf};
use ferry::actors::supervisor::RunOutcome;
use ferry::progress::{Phase, SharedProgress};
use ferry::run::{Migration, RunOptions};
use ferry_sandbox::{Sandbox, SandboxOptions};
use futures_util::TryStreamExt;
use mongodb::options::IndexOptions;
use mongodb::{Client, IndexModel};

/// Generous: the machine running the suite is small and loaded.
pub const DEADLINE: Duration = Duration::from_secs(120);

/// Databases that are never migrated.
const SYSTEM_DBS: [&str; 4] = ["admin", "local", "config", "__ferry"];

pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FERRY_TEST_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off")),
        )
        .with_test_writer()
        .try_init();
}

/// A source and a destination sandbox on port 0, with a client on each.
pub struct Pair {
    pub source: Sandbox,
    pub destination: Sandbox,
    pub src: Client,
    pub dst: Client,
}

impl Pair {
    pub async fn start() -> Pair {
        init_logging();
        let source = Sandbox::start(SandboxOptions {
            set_name: "src".into(),
            ..Default::default()
        })
        .expect("source sandbox starts");
        let destination = Sandbox::start(SandboxOptions {
            set_name: "dst".into(),
            ..Default::default()
        })
        .expect("destination sandbox starts");
        let src = Client::with_uri_str(source.uri())
            .await
            .expect("source client");
        let dst = Client::with_uri_str(destination.uri())
            .await
            .expect("destination client");
        Pair {
            source,
            destination,
            src,
            dst,
        }
    }

    pub fn config(&self, extra: &str) -> ferry::config::Config {
        config(&self.source.uri(), &self.destination.uri(), extra)
    }

    /// [`Pair::config`] with a destination lease of `lease_seconds` (renewed every sixth
    /// of it), so lease tests see a lost or expired lease quickly.
    pub fn config_with_lease(&self, lease_seconds: u64, extra: &str) -> ferry::config::Config {
        config_with_runtime(
            &self.source.uri(),
            &self.destination.uri(),
            &format!("lease_seconds = {lease_seconds}\n"),
            extra,
        )
    }
}

/// The users of [`sandbox_with_users`]: a root administrator, and the migrator Ferry
/// logs in as.
pub const ADMIN: (&str, &str) = ("admin", "admin-pw");
pub const MIGRATOR: (&str, &str) = ("ferry", "ferry-pw");

/// A sandbox with authentication: [`ADMIN`] with root, [`MIGRATOR`] with these roles.
pub fn sandbox_with_users(set_name: &str, version: &str, migrator_roles: &[&str]) -> Sandbox {
    Sandbox::start(SandboxOptions {
        set_name: set_name.into(),
        version: version.into(),
        users: vec![
            (ADMIN.0.into(), ADMIN.1.into(), vec!["root".into()]),
            (
                MIGRATOR.0.into(),
                MIGRATOR.1.into(),
                migrator_roles.iter().map(|r| r.to_string()).collect(),
            ),
        ],
        ..Default::default()
    })
    .expect("sandbox starts")
}

/// A config for a test run: fast checkpoints and no-op ticks, small copy batches, plus
/// `extra` TOML (whole sections, e.g. "[cutover]\nenforce_write_block = true").
pub fn config(source: &str, destination: &str, extra: &str) -> ferry::config::Config {
    config_with_runtime(source, destination, "", extra)
}

/// [`config`] with more `[runtime]` keys (`runtime`, one `key = value` per line).
pub fn config_with_runtime(
    source: &str,
    destination: &str,
    runtime: &str,
    extra: &str,
) -> ferry::config::Config {
    let mut text = format!(
        "[source]\nuri = \"{source}\"\n[destination]\nuri = \"{destination}\"\n[api]\nlisten = \"127.0.0.1:0\"\n[runtime]\nidle_noop_interval_seconds = 1\ncheckpoint_interval_seconds = 1\n{runtime}"
    );
    if !extra.contains("[copy]") {
        text.push_str("[copy]\nbatch_max_documents = 500\n");
    }
    text.push_str(extra);
    ferry::config::from_toml_str(&text, &|_| None).expect("test config is valid")
}

/// Starts a migration (with preflight, without the HTTP API) off the async threads.
pub async fn start(config: ferry::config::Config) -> Migration {
    start_with(config, false).await
}

pub async fn start_with(config: ferry::config::Config, serve_api: bool) -> Migration {
    tokio::task::spawn_blocking(move || {
        Migration::start(
            config,
            RunOptions {
                serve_api,
                preflight: true,
            },
        )
    })
    .await
    .expect("start task")
    .expect("migration starts")
}

/// Waits for the run to end, off the async threads.
pub async fn wait(m: Migration) -> RunOutcome {
    tokio::task::spawn_blocking(move || m.wait())
        .await
        .expect("wait task")
        .expect("the run ends with an outcome")
}

/// Simulates a crash of the migration host.
pub async fn abort(m: Migration) {
    tokio::task::spawn_blocking(move || m.abort())
        .await
        .expect("abort task");
}

/// Polls `cond` every 50 ms until it holds; panics with `what` after `DEADLINE`.
pub async fn poll<F: FnMut() -> bool>(what: &str, mut cond: F) {
    let deadline = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits for `phase`; panics early when the run ends in another terminal phase.
pub async fn wait_phase(progress: &SharedProgress, phase: Phase) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let now = progress.phase();
        if now == phase {
            return;
        }
        assert!(
            !now.is_terminal(),
            "run ended {} while waiting for {} (last error: {:?})",
            now.as_str(),
            phase.as_str(),
            progress.last_error.read().clone()
        );
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {} (phase {}, last error: {:?})",
            phase.as_str(),
            now.as_str(),
            progress.last_error.read().clone()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn copied(progress: &SharedProgress) -> u64 {
    progress.documents_copied.load(Ordering::Relaxed)
}

pub fn applied(progress: &SharedProgress) -> u64 {
    progress.events_applied.load(Ordering::Relaxed)
}

/// Requests cutover (the caller has stopped writes) and waits for a completed run whose
/// verification passed. A cutover that goes back to ready_for_cutover fails the test with
/// its reason: the first attempt must succeed.
pub async fn cutover_and_complete(m: Migration) -> RunOutcome {
    cutover_and_complete_retrying(m, 0).await
}

/// [`cutover_and_complete`] for tests that inject faults at cutover time (opt-in): a
/// handshake or verification that could not run is requested again, as an operator
/// would, up to `retries` times. Any other bounce fails the test.
pub async fn cutover_and_complete_retrying(m: Migration, retries: u32) -> RunOutcome {
    wait_phase(&m.progress, Phase::ReadyForCutover).await;
    let reply = request_until_accepted(
        &m,
        ferry::control::ControlRequest::Cutover {
            writes_stopped: true,
        },
    )
    .await;
    assert!(reply.is_ok(), "cutover refused: {reply:?}");
    let progress = m.progress.clone();
    // Poll rather than block, so a cutover that bounces back to ready_for_cutover fails
    // the test with its reason instead of hanging it.
    let deadline = Instant::now() + DEADLINE;
    let mut retried = 0;
    while !m.is_finished() {
        let phase = progress.phase();
        let error = progress.last_error.read().clone().unwrap_or_default();
        if phase == Phase::ReadyForCutover {
            let retryable =
                error.starts_with("cutover:") || error.starts_with("verification could not run");
            assert!(
                retryable && retried < retries,
                "the cutover went back to ready_for_cutover: {error}"
            );
            retried += 1;
            let reply = request_until_accepted(
                &m,
                ferry::control::ControlRequest::Cutover {
                    writes_stopped: true,
                },
            )
            .await;
            assert!(reply.is_ok(), "cutover refused: {reply:?}");
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for the cutover to complete (phase {}, last error {error:?})",
            phase.as_str()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let outcome = wait(m).await;
    assert_eq!(
        outcome.phase,
        Phase::Completed,
        "run ended {} ({:?}; last error {:?})",
        outcome.phase.as_str(),
        outcome.error,
        progress.last_error.read().clone()
    );
    let report = outcome
        .report
        .clone()
        .expect("a completed run has a report");
    assert!(report.verification.passed, "verification failed: {report}");
    outcome
}

/// Requests cutover and waits until verification refuses it (the run is back in
/// ready_for_cutover); returns the error it reports.
pub async fn cutover_refused_by_verification(m: &Migration) -> String {
    let reply = request_until_accepted(
        m,
        ferry::control::ControlRequest::Cutover {
            writes_stopped: true,
        },
    )
    .await;
    assert!(reply.is_ok(), "{reply:?}");
    poll("verification to refuse the cutover", || {
        m.progress.phase() == Phase::ReadyForCutover
            && m.progress
                .last_error
                .read()
                .as_deref()
                .is_some_and(|e| e.contains("verification failed"))
    })
    .await;
    let error = m.progress.last_error.read().clone();
    error.unwrap_or_default()
}

/// Cutover is only accepted in ready_for_cutover, and the phase may flip back to syncing
/// for a moment on a loaded machine: retry a conflict until the deadline.
pub async fn request_until_accepted(
    m: &Migration,
    request: ferry::control::ControlRequest,
) -> ferry::control::ControlReply {
    let deadline = Instant::now() + DEADLINE;
    loop {
        wait_phase(&m.progress, Phase::ReadyForCutover).await;
        let reply = m.control.request(request.clone()).await;
        match &reply {
            Err(e) if e.status == 409 && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            _ => return reply,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Data set

/// The `_id` of document `i` in a collection with mixed `_id` types.
pub fn mixed_id(i: usize) -> Bson {
    match i % 6 {
        0 => Bson::Int32(i as i32),
        1 => Bson::Int64(i as i64 + 1_000_000_000_000),
        2 => Bson::Double(i as f64 + 0.5),
        3 => Bson::String(format!("id-{i:06}")),
        4 => Bson::ObjectId(ObjectId::from_bytes({
            let mut b = [0u8; 12];
            b[4..12].copy_from_slice(&(i as u64).to_be_bytes());
            b
        })),
        _ => Bson::Document(doc! {"k": i as i32, "s": format!("{i}")}),
    }
}

/// Seeds `db`: `mixed` (mixed `_id` types, unique index on `email`, compound index),
/// `events` (ObjectId `_id`s, TTL index), `counters` (int64 `_id`s). `n` documents per
/// collection. Returns the number of documents written.
pub async fn seed(client: &Client, db: &str, n: usize) -> u64 {
    let d = client.database(db);
    let mixed = d.collection::<Document>("mixed");
    mixed
        .create_index(
            IndexModel::builder()
                .keys(doc! {"email": 1})
                .options(
                    IndexOptions::builder()
                        .unique(true)
                        .name("email_unique".to_string())
                        .build(),
                )
                .build(),
        )
        .await
        .expect("unique index");
    mixed
        .create_index(
            IndexModel::builder()
                .keys(doc! {"group": 1, "rank": -1})
                .build(),
        )
        .await
        .expect("compound index");
    let events = d.collection::<Document>("events");
    events
        .create_index(
            IndexModel::builder()
                .keys(doc! {"at": 1})
                .options(
                    IndexOptions::builder()
                        .expire_after(Duration::from_secs(86_400 * 365))
                        .build(),
                )
                .build(),
        )
        .await
        .expect("ttl index");
    let counters = d.collection::<Document>("counters");
    let now = DateTime::now().timestamp_millis();
    for start in (0..n).step_by(1000) {
        let end = (start + 1000).min(n);
        mixed
            .insert_many((start..end).map(|i| {
                doc! {"_id": mixed_id(i), "email": format!("user{i}@example.com"), "group": (i % 17) as i32, "rank": i as i64, "name": format!("name {i}"), "tags": ["a", "b"]}
            }))
            .await
            .expect("seed mixed");
        events
            .insert_many((start..end).map(|i| {
                doc! {"_id": ObjectId::new(), "at": DateTime::from_millis(now - i as i64), "kind": (["view", "click"][i % 2]), "n": i as i32}
            }))
            .await
            .expect("seed events");
        counters
            .insert_many(
                (start..end).map(|i| doc! {"_id": i as i64, "value": 0i64, "pad": "x".repeat(64)}),
            )
            .await
            .expect("seed counters");
    }
    3 * n as u64
}

/// An independent client writing inserts, updates, replaces and deletes to the
/// collections `seed` made, until stopped. Failed writes (stepdowns, write blocks) are
/// counted, not fatal.
pub struct Workload {
    stop: Arc<AtomicBool>,
    pub ops: Arc<AtomicU64>,
    pub errors: Arc<AtomicU64>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Workload {
    pub fn start(client: Client, db: &str, n: usize) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let ops = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let (s, o, e) = (stop.clone(), ops.clone(), errors.clone());
        let db = client.database(db);
        let task = tokio::spawn(async move {
            let mixed = db.collection::<Document>("mixed");
            let events = db.collection::<Document>("events");
            let counters = db.collection::<Document>("counters");
            let mut i: usize = 0;
            while !s.load(Ordering::Relaxed) {
                i += 1;
                let step = async {
                    // New documents of every _id type, beyond the seeded ones.
                    let new = n + i;
                    mixed
                        .insert_one(doc! {"_id": mixed_id(new), "email": format!("user{new}@example.com"), "group": (new % 17) as i32, "rank": new as i64, "name": "live"})
                        .await?;
                    let k = (i * 7919) % n;
                    mixed
                        .update_one(doc! {"_id": mixed_id(k)}, doc! {"$inc": {"visits": 1}, "$set": {"seen": DateTime::now()}, "$push": {"tags": "t"}})
                        .await?;
                    counters
                        .update_one(
                            doc! {"_id": ((i * 31) % n) as i64},
                            doc! {"$inc": {"value": 1i64}},
                        )
                        .await?;
                    if i.is_multiple_of(3) {
                        let r = (i * 104_729) % n;
                        mixed
                            .replace_one(doc! {"_id": mixed_id(r)}, doc! {"email": format!("user{r}@example.com"), "replaced": true, "rank": Bson::Double(r as f64)})
                            .await?;
                    }
                    if i.is_multiple_of(4) {
                        events
                            .insert_one(doc! {"at": DateTime::now(), "kind": "live", "n": i as i32})
                            .await?;
                    }
                    if i.is_multiple_of(5) {
                        let d = (i * 7) % n;
                        mixed.delete_one(doc! {"_id": mixed_id(d)}).await?;
                        counters
                            .delete_one(doc! {"_id": ((i * 13) % n) as i64})
                            .await?;
                        events.delete_one(doc! {"kind": "click"}).await?;
                    }
                    // A document that lives and dies during the run.
                    if i.is_multiple_of(7) {
                        let id = Bson::String(format!("ephemeral-{i}"));
                        counters
                            .insert_one(doc! {"_id": id.clone(), "value": 1i64})
                            .await?;
                        counters
                            .update_one(doc! {"_id": id.clone()}, doc! {"$set": {"value": 2i64}})
                            .await?;
                        counters.delete_one(doc! {"_id": id}).await?;
                    }
                    Ok::<_, mongodb::error::Error>(())
                };
                match step.await {
                    Ok(()) => o.fetch_add(1, Ordering::Relaxed),
                    Err(_) => e.fetch_add(1, Ordering::Relaxed),
                };
                // Pacing only.
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        });
        Workload {
            stop,
            ops,
            errors,
            task: Some(task),
        }
    }

    pub fn ops(&self) -> u64 {
        self.ops.load(Ordering::Relaxed)
    }

    /// Waits until the workload has done `more` further rounds.
    pub async fn advance(&self, more: u64) {
        let target = self.ops() + more;
        poll("the workload to make progress", || self.ops() >= target).await;
    }

    pub async fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.task.take() {
            t.await.expect("workload task");
        }
        self.ops()
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

// ---------------------------------------------------------------------------------------
// Comparison

/// User databases of a deployment, sorted.
pub async fn user_databases(client: &Client) -> Vec<String> {
    let mut names: Vec<String> = client
        .list_database_names()
        .await
        .expect("listDatabases")
        .into_iter()
        .filter(|n| !SYSTEM_DBS.contains(&n.as_str()))
        .collect();
    names.sort();
    names
}

/// name -> (type, options) of the collections and views of `db`, without system.*.
pub async fn collections(client: &Client, db: &str) -> BTreeMap<String, (String, Document)> {
    let mut out = BTreeMap::new();
    let specs: Vec<Document> = client
        .database(db)
        .run_cursor_command(doc! {"listCollections": 1})
        .await
        .expect("listCollections")
        .try_collect()
        .await
        .expect("listCollections batch");
    for spec in specs {
        let name = spec.get_str("name").unwrap_or_default().to_string();
        if name.starts_with("system.") {
            continue;
        }
        let kind = spec.get_str("type").unwrap_or("collection").to_string();
        let options = spec.get_document("options").cloned().unwrap_or_default();
        out.insert(name, (kind, options));
    }
    out
}

/// Index definitions by name, normalised: `v` and `ns` dropped; `key` kept in order.
pub async fn indexes(
    client: &Client,
    db: &str,
    coll: &str,
) -> BTreeMap<String, (Vec<(String, Bson)>, Document)> {
    let specs: Vec<Document> = client
        .database(db)
        .run_cursor_command(doc! {"listIndexes": coll})
        .await
        .expect("listIndexes")
        .try_collect()
        .await
        .expect("listIndexes batch");
    specs
        .into_iter()
        .map(|mut s| {
            let name = s.get_str("name").unwrap_or_default().to_string();
            let key: Vec<(String, Bson)> = s
                .get_document("key")
                .map(|k| k.iter().map(|(a, b)| (a.clone(), b.clone())).collect())
                .unwrap_or_default();
            s.remove("v");
            s.remove("ns");
            s.remove("key");
            // Restoring a TTL goes through collMod, which stores expireAfterSeconds as a
            // 64-bit integer (as the real server does); the value is what matters.
            if let Some(ttl) = s.get("expireAfterSeconds").cloned() {
                let secs = match ttl {
                    Bson::Int32(n) => Bson::Int64(n as i64),
                    Bson::Double(f) if f.fract() == 0.0 => Bson::Int64(f as i64),
                    other => other,
                };
                s.insert("expireAfterSeconds", secs);
            }
            (name, (key, s))
        })
        .collect()
}

/// Every document of a collection, sorted by `_id`, as raw bytes.
pub async fn documents(client: &Client, db: &str, coll: &str) -> Vec<Vec<u8>> {
    let c = client.database(db).collection::<RawDocumentBuf>(coll);
    let docs: Vec<RawDocumentBuf> = c
        .find(doc! {})
        .sort(doc! {"_id": 1})
        .await
        .expect("find")
        .try_collect()
        .await
        .expect("find batch");
    docs.into_iter().map(|d| d.into_bytes()).collect()
}

/// The destination equals the source: the same databases, collections, views and their
/// options, index definitions, and every document byte for byte. Returns the number of
/// documents compared.
pub async fn assert_same(src: &Client, dst: &Client) -> usize {
    let dbs = user_databases(src).await;
    assert_eq!(dbs, user_databases(dst).await, "databases differ");
    let mut compared = 0;
    for db in &dbs {
        let s = collections(src, db).await;
        let d = collections(dst, db).await;
        assert_eq!(
            s.keys().collect::<Vec<_>>(),
            d.keys().collect::<Vec<_>>(),
            "collections of {db} differ"
        );
        for (name, (kind, options)) in &s {
            let (dkind, doptions) = &d[name];
            assert_eq!(kind, dkind, "{db}.{name}: type differs");
            assert_eq!(options, doptions, "{db}.{name}: options differ");
            if kind != "collection" {
                continue;
            }
            let si = indexes(src, db, name).await;
            let di = indexes(dst, db, name).await;
            assert_eq!(si, di, "{db}.{name}: indexes differ");
            let sd = documents(src, db, name).await;
            let dd = documents(dst, db, name).await;
            if sd != dd {
                let first = sd
                    .iter()
                    .zip(dd.iter())
                    .position(|(a, b)| a != b)
                    .unwrap_or(sd.len().min(dd.len()));
                let show = |v: &Vec<Vec<u8>>| {
                    v.get(first)
                        .and_then(|b| RawDocumentBuf::from_bytes(b.clone()).ok())
                        .and_then(|r| r.to_document().ok())
                };
                panic!(
                    "{db}.{name}: documents differ (source {}, destination {}); first difference at #{first}: source {:?} destination {:?}",
                    sd.len(),
                    dd.len(),
                    show(&sd),
                    show(&dd)
                );
            }
            compared += sd.len();
        }
    }
    compared
}

/// The lock document on the destination, if any.
pub async fn lock(dst: &Client) -> Option<Document> {
    dst.database("__ferry")
        .collection::<Document>("lock")
        .find_one(doc! {"_id": "lock"})
        .await
        .expect("read lock")
}

/// Whether a plain client's insert into `db.coll` of the source is accepted (false while
/// the source's user writes are blocked, 371 UserWritesBlocked).
pub async fn source_takes_writes(src: &Client, db: &str, coll: &str) -> bool {
    let id = ObjectId::new();
    match src
        .database(db)
        .collection::<Document>(coll)
        .insert_one(doc! {"_id": id, "probe": true})
        .await
    {
        Ok(_) => true,
        Err(e) => {
            assert_eq!(
                ferry::cluster::error_code(&e),
                Some(371),
                "a write to the source failed for another reason than the write block: {e}"
            );
            false
        }
    }
}

/// Waits until the source takes writes again; panics with `ending` after `DEADLINE`.
pub async fn assert_source_writable(src: &Client, ending: &str) {
    let deadline = Instant::now() + DEADLINE;
    while !source_takes_writes(src, "app", "probes").await {
        assert!(
            Instant::now() < deadline,
            "the source is still write-blocked after the run {ending}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the source refuses writes (a cutover blocked them).
pub async fn wait_source_blocked(src: &Client) {
    let deadline = Instant::now() + DEADLINE;
    while source_takes_writes(src, "app", "probes").await {
        assert!(
            Instant::now() < deadline,
            "the source was never write-blocked"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------
// `ferry run` as a child process

/// A free local port (bound, read and released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free local port")
}

/// A config file for `ferry run` in a fresh temporary directory, with its API on `port`.
pub fn config_file(source: &str, destination: &str, port: u16, extra: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ferry-test-{}", ObjectId::new().to_hex()));
    std::fs::create_dir_all(&dir).expect("temporary directory");
    let path = dir.join("ferry.toml");
    let mut text = format!(
        "[source]\nuri = \"{source}\"\n[destination]\nuri = \"{destination}\"\n[api]\nlisten = \"127.0.0.1:{port}\"\n"
    );
    text.push_str(extra);
    std::fs::write(&path, text).expect("write the config file");
    path
}

/// Starts `ferry run --exit-when-finished --config <path>` with its output captured.
pub fn spawn_ferry_run(path: &std::path::Path) -> std::process::Child {
    spawn_ferry_run_with(path, true)
}

/// Starts `ferry run --config <path>` with its output captured; with
/// `exit_when_finished` false it keeps serving after the ending until SIGTERM.
pub fn spawn_ferry_run_with(
    path: &std::path::Path,
    exit_when_finished: bool,
) -> std::process::Child {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"));
    command.arg("run");
    if exit_when_finished {
        command.arg("--exit-when-finished");
    }
    command
        .arg("--config")
        .arg(path)
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("ferry run starts")
}

/// Waits for a child to exit (polling, so a child that never exits fails the test);
/// returns its status and everything it printed.
pub async fn wait_child(mut child: std::process::Child) -> (std::process::ExitStatus, String) {
    use std::io::Read;
    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().expect("child status") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ferry run did not exit");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut out = String::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut out);
    }
    (status, out)
}

/// The phase a child's API reports, if it answers.
pub async fn child_phase(api: &ferry::api::client::ApiClient) -> Option<String> {
    let progress: serde_json::Value = api.get_json("/api/v1/progress").await.ok()?;
    progress
        .get("phase")
        .and_then(|p| p.as_str())
        .map(String::from)
}

/// Waits until a child's API reports `phase`.
pub async fn wait_child_phase(api: &ferry::api::client::ApiClient, phase: &str) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let now = child_phase(api).await;
        if now.as_deref() == Some(phase) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for the child's phase {phase} (now {now:?})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Requests the cutover through a child's API until it is accepted.
pub async fn child_cutover(api: &ferry::api::client::ApiClient) {
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let reply = api
            .post_json(
                "/api/v1/cutover",
                &serde_json::json!({"writes_stopped": true}),
            )
            .await
            .expect("the child's API answers");
        if reply.is_success() {
            return;
        }
        // 409 while the phase flips back to syncing for a moment.
        assert!(
            reply.status == 409 && std::time::Instant::now() < deadline,
            "cutover refused: {}",
            reply.text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
