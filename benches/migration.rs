//! Ferry's throughput against sandbox deployments, each figure beside a baseline measured
//! in the same run (the machines are shared and noisy), for two shapes: replica set ->
//! replica set, and a two-shard sharded cluster -> a two-shard sharded cluster:
//! - initial copy documents/s vs the raw insertMany ceiling of the same destination;
//! - change apply events/s vs the same ceiling (inserts and one-field `$inc`s, then
//!   two-field `$set`s, which read each document again from the source);
//! - peak resident memory of the Ferry process (the sandboxes run as child processes).
//!
//! Run: `cargo bench --bench migration` (optionally `FERRY_BENCH_DOCS=N`,
//! `FERRY_BENCH_SHAPES=rs,sharded` (the default; either alone),
//! `FERRY_BENCH_EXTRA_TOML="[copy]\\nbatch_max_documents = 1000"`, `FERRY_BENCH_LOG=info`).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bson::{doc, Document};
use ferry::control::ControlRequest;
use ferry::progress::{BaselineState, Phase};
use ferry::run::{Migration, RunOptions};
use mongodb::Client;

struct ChildSandbox {
    child: Child,
    uri: String,
}

impl Drop for ChildSandbox {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A sandbox in a child process: a replica set named `name` (`shards == 0`) or a sharded
/// cluster whose router the URI names.
fn sandbox(name: &str, shards: usize) -> ChildSandbox {
    let mut args = vec!["sandbox".to_string(), "--port".into(), "0".into()];
    if shards == 0 {
        args.extend(["--set-name".to_string(), name.to_string()]);
    } else {
        args.extend(["--shards".to_string(), shards.to_string()]);
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start ferry sandbox");
    let stdout = child.stdout.take().expect("sandbox stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read ready line");
    let uri = line
        .trim()
        .strip_prefix("ready ")
        .expect("ready line")
        .to_string();
    ChildSandbox { child, uri }
}

fn document(i: usize) -> Document {
    // About 1 KiB of BSON.
    doc! {"_id": i as i64, "name": format!("document {i}"), "n": i as i64, "tags": ["a", "b", "c"], "payload": "x".repeat(900)}
}

/// On a sharded side, shards `db.items` on a hashed `_id` first (pre-split over every
/// shard), the way the migrated collection is spread.
async fn insert_all(client: &Client, db: &str, n: usize, sharded: bool) -> Duration {
    if sharded {
        let admin = client.database("admin");
        admin
            .run_command(doc! {"enableSharding": db})
            .await
            .expect("enableSharding");
        admin
            .run_command(doc! {"shardCollection": format!("{db}.items"), "key": {"_id": "hashed"}})
            .await
            .expect("shardCollection");
    }
    let coll = client.database(db).collection::<Document>("items");
    let started = Instant::now();
    let mut i = 0;
    while i < n {
        let end = (i + 1000).min(n);
        coll.insert_many((i..end).map(document).collect::<Vec<_>>())
            .await
            .expect("insert_many");
        i = end;
    }
    started.elapsed()
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).map(|l| {
                l.split_whitespace()
                    .nth(1)
                    .unwrap_or("0")
                    .parse::<f64>()
                    .unwrap_or(0.0)
            })
        })
        .unwrap_or(0.0)
        / 1024.0
}

async fn wait_for(progress: &ferry::progress::SharedProgress, what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(600);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        assert!(
            !progress.phase().is_terminal(),
            "migration ended while waiting for {what}: {:?}",
            progress.last_error.read()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    ferry::memory::tune_allocator();
    if let Ok(level) = std::env::var("FERRY_BENCH_LOG") {
        ferry::logging::init(&level, false);
    }
    let n: usize = std::env::var("FERRY_BENCH_DOCS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let shapes = std::env::var("FERRY_BENCH_SHAPES").unwrap_or_else(|_| "rs,sharded".into());
    println!(
        "documents: {n} x ~1 KiB ({:.0} MiB), sandboxes in child processes",
        n as f64 / 1024.0
    );
    for shape in shapes.split(',').map(str::trim) {
        match shape {
            "rs" => measure("replica set -> replica set", 0, n).await,
            "sharded" => measure("2 shards -> 2 shards", 2, n).await,
            other => panic!("FERRY_BENCH_SHAPES: unknown shape {other:?} (rs, sharded)"),
        }
    }
}

/// One row: a migration of `n` documents between two deployments of `shards` shards
/// (0: replica sets), with its ceilings measured on the same kind of destination.
async fn measure(label: &str, shards: usize, n: usize) {
    let sharded = shards > 0;
    let source = sandbox("source", shards);
    let destination = sandbox("destination", shards);
    let ceiling_target = sandbox("ceiling", shards);
    let src = Client::with_uri_str(&source.uri).await.expect("client");
    let ceiling_client = Client::with_uri_str(&ceiling_target.uri)
        .await
        .expect("client");

    // Baseline: raw insertMany into an identical, empty destination; measured again on
    // the migration's own destination after the run, and the best rate is the ceiling
    // (the strictest baseline on a noisy machine).
    let fresh_rate = n as f64
        / insert_all(&ceiling_client, "bench", n, sharded)
            .await
            .as_secs_f64();
    insert_all(&src, "bench", n, sharded).await;

    let config = ferry::config::from_toml_str(
        &format!(
            "[source]\nuri = \"{}\"\n[destination]\nuri = \"{}\"\n[api]\nlisten = \"127.0.0.1:0\"\n[runtime]\nidle_noop_interval_seconds = 1\ncheckpoint_interval_seconds = 1\n{}",
            source.uri,
            destination.uri,
            std::env::var("FERRY_BENCH_EXTRA_TOML").unwrap_or_default().replace("\\n", "\n")
        ),
        &|_| None,
    )
    .expect("config");
    let baseline_on = config.cutover.baseline_verification;
    let migration = tokio::task::spawn_blocking(move || {
        Migration::start(
            config,
            RunOptions {
                serve_api: false,
                preflight: false,
            },
        )
    })
    .await
    .expect("join")
    .expect("start");
    let progress = migration.progress.clone();
    wait_for(&progress, "copy start", || {
        progress.phase() == Phase::Copying
    })
    .await;
    let copy_started = Instant::now();
    wait_for(&progress, "copy end", || {
        matches!(progress.phase(), Phase::Syncing | Phase::ReadyForCutover)
    })
    .await;
    let copy = copy_started.elapsed();
    let copied = progress.documents_copied.load(Ordering::Relaxed);
    let copy_rate = copied as f64 / copy.as_secs_f64();
    let rss_after_copy = peak_rss_mib();
    wait_for(&progress, "ready", || {
        progress.phase() == Phase::ReadyForCutover
    })
    .await;

    // The baseline verification starts once in sync; the apply is measured in the steady
    // state after it (its change tracking on both sides stays on).
    let baseline_started = Instant::now();
    wait_for(&progress, "baseline verification", || {
        !baseline_on
            || matches!(
                progress.baseline.read().state,
                BaselineState::Done | BaselineState::Failed
            )
    })
    .await;
    let baseline_time = baseline_started.elapsed();
    let baseline = progress.baseline.read().clone();

    // Apply: pause, write n/2 inserts and n/2 updates to the source, resume, time the catch-up.
    migration
        .control
        .request(ControlRequest::Pause)
        .await
        .expect("pause");
    let events = n;
    let coll = src.database("bench").collection::<Document>("live");
    let mut i = 0;
    while i < events / 2 {
        let end = (i + 1000).min(events / 2);
        coll.insert_many((i..end).map(document).collect::<Vec<_>>())
            .await
            .expect("insert");
        i = end;
    }
    src.database("bench")
        .collection::<Document>("items")
        .update_many(
            doc! {"_id": {"$lt": (events / 2) as i64}},
            doc! {"$inc": {"n": 1}},
        )
        .await
        .expect("update");
    let before = progress.events_applied.load(Ordering::Relaxed);
    let apply_started = Instant::now();
    migration
        .control
        .request(ControlRequest::Resume)
        .await
        .expect("resume");
    wait_for(&progress, "apply", || {
        progress.events_applied.load(Ordering::Relaxed) >= before + events as u64
    })
    .await;
    let apply = apply_started.elapsed();
    let apply_rate = events as f64 / apply.as_secs_f64();

    // Updates that set two fields of one document: the change event cannot say whether a
    // field moved, so each such document is read again from the source (deduplicated,
    // by the thousand). Paused, n/2 of them, then the catch-up is timed.
    migration
        .control
        .request(ControlRequest::Pause)
        .await
        .expect("pause");
    let two_field = events / 2;
    src.database("bench")
        .collection::<Document>("items")
        .update_many(
            doc! {"_id": {"$lt": two_field as i64}},
            doc! {"$set": {"name": "renamed", "flag": true}},
        )
        .await
        .expect("update");
    let before = progress.events_applied.load(Ordering::Relaxed);
    let two_field_started = Instant::now();
    migration
        .control
        .request(ControlRequest::Resume)
        .await
        .expect("resume");
    wait_for(&progress, "two-field apply", || {
        progress.events_applied.load(Ordering::Relaxed) >= before + two_field as u64
    })
    .await;
    let two_field_rate = two_field as f64 / two_field_started.elapsed().as_secs_f64();
    let rss = peak_rss_mib();

    migration
        .control
        .request(ControlRequest::Cutover {
            writes_stopped: true,
        })
        .await
        .expect("cutover");
    let outcome = tokio::task::spawn_blocking(move || migration.wait())
        .await
        .expect("join")
        .expect("run");
    let report = outcome.report.expect("a completed run has a report");
    let dst = Client::with_uri_str(&destination.uri)
        .await
        .expect("client");
    let mut same_rates = Vec::new();
    for round in 0..2 {
        let took = insert_all(&dst, &format!("ceiling{round}"), n, sharded).await;
        same_rates.push(n as f64 / took.as_secs_f64());
    }
    // Copy fills an empty destination: its ceiling is the empty sandbox's. Changes are
    // applied to a destination that holds the copied data: its ceiling is that same
    // destination's, measured right after the run (the better of two rounds).
    let apply_ceiling = same_rates.iter().copied().fold(0.0, f64::max);
    let best = apply_ceiling.max(fresh_rate);

    println!("== {label}");
    println!(
        "insertMany ceiling: {fresh_rate:.0} docs/s into an empty sandbox; {:.0} and {:.0} docs/s into the migration's destination afterwards",
        same_rates[0], same_rates[1]
    );
    println!(
        "initial copy                : {copy_rate:>10.0} docs/s  ({:.0}% of the empty destination's ceiling, {:.0}% of the best)",
        100.0 * copy_rate / fresh_rate,
        100.0 * copy_rate / best
    );
    println!(
        "change apply                : {apply_rate:>10.0} events/s ({:.0}% of that destination's ceiling, {:.0}% of the best)",
        100.0 * apply_rate / apply_ceiling,
        100.0 * apply_rate / best
    );
    println!(
        "change apply, 2-field $set  : {two_field_rate:>10.0} events/s ({:.0}% of that destination's ceiling; each document read again from the source)",
        100.0 * two_field_rate / apply_ceiling
    );
    println!(
        "peak RSS of the ferry process: {rss_after_copy:.0} MiB after the copy, {rss:.0} MiB after apply"
    );
    let v = &report.verification;
    println!(
        "baseline verification       : {} documents compared in {:.1} s ({:?}, {} chunks differed)",
        baseline.documents_compared,
        baseline_time.as_secs_f64(),
        baseline.state,
        baseline.chunks_differing
    );
    println!(
        "cutover                     : downtime {:.2} s; {} documents read again on each side ({} namespaces from the baseline, {} documents compared before), verification {}",
        report.downtime_seconds,
        v.documents_checked,
        v.namespaces_rechecked,
        v.baseline_documents,
        if v.passed { "passed" } else { "FAILED" }
    );
}
