//! One seed from start to finish: the plan drawn from the seed, the workload and faults
//! interleaved with Ferry's phases, the cutover, and the exact comparison.

use std::fmt;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bson::{doc, Document};
use ferry::control::ControlRequest;
use ferry::progress::Phase;
use mongodb::Client;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::common::sharded::Topologies;
use super::compare::Scope;
use super::daemon::{config_text, Daemon};
use super::requests;
use super::topology::{self, Topology};
use super::workload::{self, Kind, Workload, OUTSIDE_DB};
use super::{common, compare, Feature, Settings};

/// Where a crash of Ferry lands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Crash {
    /// As soon as the run leaves validation: the copy plan is being made and saved.
    PlanSave,
    Copy,
    Sync,
    /// Right after DDL on the source, while its event is being replayed.
    DdlReplay,
    Cutover,
}

/// A fault injected during the copy or the sync.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    SourceStepdown,
    DestinationStepdown,
    SourceDrop,
    DestinationDrop,
    SourceLatency,
    DestinationLatency,
    PauseResume,
}

const FAULTS: [Fault; 7] = [
    Fault::SourceStepdown,
    Fault::DestinationStepdown,
    Fault::SourceDrop,
    Fault::DestinationDrop,
    Fault::SourceLatency,
    Fault::DestinationLatency,
    Fault::PauseResume,
];

/// Everything a seed decides up front (the workload draws the rest as it goes).
#[derive(Debug)]
struct Plan {
    docs: usize,
    ops_copy: usize,
    ops_sync: usize,
    copy_faults: Vec<(usize, Fault)>,
    sync_faults: Vec<(usize, Fault)>,
    crash: Option<(Crash, bool, usize)>,
    refused_cutover: bool,
    enforce_write_block: bool,
    copy_latency_ms: u64,
    extra: String,
}

impl Plan {
    fn draw(rng: &mut StdRng, settings: &Settings) -> Plan {
        let scale = if settings.large { 10 } else { 1 };
        let docs = rng.gen_range(20..120) * scale;
        let ops_copy = rng.gen_range(20..60) * scale;
        let ops_sync = rng.gen_range(30..90) * scale;
        let faults = |n: usize, rng: &mut StdRng| {
            let mut out = Vec::new();
            for f in FAULTS {
                if rng.gen_bool(0.3) {
                    out.push((rng.gen_range(0..n), f));
                }
            }
            out.sort_by_key(|(at, _)| *at);
            out
        };
        let mut copy_faults = faults(ops_copy, rng);
        // Pausing during the copy is covered by the sync stage.
        copy_faults.retain(|(_, f)| *f != Fault::PauseResume);
        let sync_faults = faults(ops_sync, rng);
        let crash = if rng.gen_bool(0.4) {
            let at = [
                Crash::PlanSave,
                Crash::Copy,
                Crash::Sync,
                Crash::DdlReplay,
                Crash::Cutover,
            ][rng.gen_range(0..5)];
            let child = rng.gen_bool(0.5);
            let op = rng.gen_range(0..ops_copy.min(ops_sync));
            Some((at, child, op))
        } else {
            None
        };
        let refused_cutover = rng.gen_bool(0.3) && settings.has(Feature::RetriedCutover);
        let enforce_write_block = rng.gen_bool(0.5);
        let mut extra = format!(
            "[copy]\nbatch_max_documents = {}\nparallel_collections = {}\nparallel_ranges_per_collection = {}\n",
            rng.gen_range(10..300),
            rng.gen_range(1..3),
            rng.gen_range(1..4)
        );
        if enforce_write_block {
            extra.push_str("[cutover]\nenforce_write_block = true\n");
        }
        Plan {
            docs,
            ops_copy,
            ops_sync,
            copy_faults,
            sync_faults,
            crash,
            refused_cutover,
            enforce_write_block,
            copy_latency_ms: rng.gen_range(0..8),
            extra,
        }
    }
}

/// What a converged seed did, for the log.
pub struct Summary {
    compared: usize,
    applied: u64,
    fired: Vec<String>,
    ops: String,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} documents compared, {} events applied; faults fired: [{}]; ops (done/failed): {}",
            self.compared,
            self.applied,
            self.fired.join(", "),
            self.ops
        )
    }
}

/// The node of a side that clients (and Ferry) talk to, with a client on it: the
/// replica set's primary or the router. Dropped connections and latency land there.
fn side(pair: &Topologies, source: bool) -> (&ferry_sandbox::Sandbox, &Client) {
    if source {
        (topology::front(&pair.source), &pair.src)
    } else {
        (topology::front(&pair.destination), &pair.dst)
    }
}

async fn sandbox_fault(client: &Client, cmd: Document) {
    requests::command(client, "admin", cmd.clone())
        .await
        .unwrap_or_else(|e| panic!("sandboxFault {cmd} refused: {e}"));
}

/// Injects a fault through `sandboxFault` and checks that it took effect; returns a
/// description for the summary. Latency stays on until [`clear_latency`].
async fn inject(pair: &Topologies, ferry: &mut Daemon, fault: Fault, rng: &mut StdRng) -> String {
    match fault {
        Fault::SourceStepdown | Fault::DestinationStepdown => {
            let deployment = if fault == Fault::SourceStepdown {
                &pair.source
            } else {
                &pair.destination
            };
            // A replica set's primary, or one shard's primary.
            let sandbox = topology::stepdown_node(deployment, rng);
            let client = Client::with_uri_str(sandbox.uri())
                .await
                .expect("a client on the node to step down");
            let term = sandbox.server().term.load(Ordering::SeqCst);
            let secs = rng.gen_range(0.2..1.5);
            sandbox_fault(&client, doc! {"sandboxFault": 1, "stepDownSecs": secs}).await;
            common::poll("the stepdown to happen", || {
                sandbox.server().term.load(Ordering::SeqCst) > term
            })
            .await;
            format!("{fault:?}({secs:.1}s)")
        }
        Fault::SourceDrop | Fault::DestinationDrop => {
            let (sandbox, client) = side(pair, fault == Fault::SourceDrop);
            let before = *sandbox.server().disconnect.borrow();
            let connections = sandbox.server().next_connection_id.load(Ordering::SeqCst);
            sandbox_fault(client, doc! {"sandboxFault": 1, "dropConnections": true}).await;
            common::poll("the connections to be dropped", || {
                *sandbox.server().disconnect.borrow() > before
            })
            .await;
            // Someone (Ferry or the workload) had to connect again.
            let _ = ferry.status().await;
            let _ = requests::command(client, "admin", doc! {"ping": 1}).await;
            common::poll("a reconnection after the drop", || {
                sandbox.server().next_connection_id.load(Ordering::SeqCst) > connections
            })
            .await;
            format!("{fault:?}")
        }
        Fault::SourceLatency | Fault::DestinationLatency => {
            let (sandbox, client) = side(pair, fault == Fault::SourceLatency);
            let ms = rng.gen_range(20..120);
            sandbox_fault(client, doc! {"sandboxFault": 1, "latencyMs": ms}).await;
            assert_eq!(
                sandbox.server().faults.latency_us.load(Ordering::SeqCst),
                ms as u64 * 1000,
                "the latency was not set"
            );
            format!("{fault:?}({ms}ms)")
        }
        Fault::PauseResume => {
            // Pause is accepted while copying or syncing; retry a conflict while the
            // phase flips between syncing and ready_for_cutover.
            ferry.request_until_accepted(ControlRequest::Pause).await;
            ferry.wait_phase(Phase::Paused).await;
            "PauseResume".into()
        }
    }
}

async fn clear_latency(pair: &Topologies) {
    for client in [&pair.src, &pair.dst] {
        sandbox_fault(client, doc! {"sandboxFault": 1, "latencyMs": 0}).await;
    }
}

/// Runs the workload's `count` ops with the faults at their op index, a crash at its
/// op index when it belongs to this stage, resuming a paused run after a few ops.
#[allow(clippy::too_many_arguments)]
async fn stage(
    pair: &Topologies,
    ferry: &mut Daemon,
    load: &mut Workload,
    count: usize,
    faults: &[(usize, Fault)],
    crash_at: Option<(usize, bool)>,
    text: &str,
    fired: &mut Vec<String>,
) {
    let mut paused_until = None;
    let mut faults = faults.iter().peekable();
    for i in 0..count {
        while let Some((_, fault)) = faults.next_if(|(at, _)| *at == i) {
            let mut rng = StdRng::seed_from_u64(load.rng.gen());
            let what = inject(pair, ferry, *fault, &mut rng).await;
            if super::trace() {
                eprintln!("randomized: trace: fault {what}");
            }
            fired.push(what);
            if *fault == Fault::PauseResume {
                paused_until = Some(i + 5);
            }
        }
        if paused_until == Some(i) {
            ferry.request_until_paused_resumed().await;
            paused_until = None;
        }
        if let Some((at, after_ddl)) = crash_at {
            if at == i {
                if after_ddl {
                    // A DDL event for the run to replay when it dies.
                    load.certain_ddl(&pair.src).await;
                }
                if super::trace() {
                    eprintln!("randomized: trace: crash");
                }
                ferry.crash().await;
                fired.push(format!(
                    "crash at op {i}{}",
                    if after_ddl { " after DDL" } else { "" }
                ));
                load.run(&pair.src, 5).await;
                if super::trace() {
                    eprintln!("randomized: trace: restart");
                }
                ferry.restart(text).await;
            }
        }
        load.run(&pair.src, 1).await;
    }
    if paused_until.is_some() {
        ferry.request_until_paused_resumed().await;
    }
}

impl Daemon {
    /// Resumes a paused run and checks it left `paused`.
    async fn request_until_paused_resumed(&mut self) {
        self.request_until_accepted(ControlRequest::Resume).await;
        self.wait_for("the run to resume", |s| s.phase != Phase::Paused)
            .await;
    }
}

/// Requests the cutover and waits for the run to end or bounce back to
/// `ready_for_cutover`; returns the error of a bounce.
async fn cutover(ferry: &mut Daemon) -> Option<String> {
    let before = ferry.wait_phase(Phase::ReadyForCutover).await.last_error;
    ferry
        .request_until_accepted(ControlRequest::Cutover {
            writes_stopped: true,
        })
        .await;
    let deadline = Instant::now() + common::DEADLINE;
    let mut left_ready = false;
    loop {
        if ferry.finished() {
            return None;
        }
        if let Some(s) = ferry.status().await {
            if s.phase.is_terminal() {
                return None;
            }
            left_ready |= s.phase != Phase::ReadyForCutover;
            let new_error = s.last_error.is_some() && s.last_error != before;
            if s.phase == Phase::ReadyForCutover && (left_ready || new_error) {
                return Some(s.last_error.unwrap_or_default());
            }
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for the cutover ({:?})",
            ferry.status().await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every crash point, for the test that forces each one with SIGKILL.
pub const CRASHES: [Crash; 5] = [
    Crash::PlanSave,
    Crash::Copy,
    Crash::Sync,
    Crash::DdlReplay,
    Crash::Cutover,
];

/// Runs `seed`; `kill` forces a SIGKILL of a `ferry run` child at that point instead of
/// the crash the seed would draw.
pub async fn run(
    seed: u64,
    settings: Settings,
    kill: Option<Crash>,
    topology: Option<Topology>,
) -> Summary {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut plan = Plan::draw(&mut rng, &settings);
    let topology = topology.unwrap_or(if settings.has(Feature::Topologies) {
        Topology::draw(seed)
    } else {
        Topology::REPLICA_SETS
    });
    // Draws added after the plan's own, from their own generator (earlier seeds keep
    // their plans).
    let mut more = StdRng::seed_from_u64(seed ^ 0x0ff5_1de5);
    if let Some(at) = kill {
        let op = plan.crash.map(|(_, _, op)| op).unwrap_or(0);
        // FERRY_RANDOMIZED_IN_PROCESS=1 crashes an in-process run instead (to minimise).
        let child = std::env::var("FERRY_RANDOMIZED_IN_PROCESS").map_or(true, |v| v != "1");
        plan.crash = Some((at, child, op));
    }
    eprintln!("randomized: seed {seed}: {topology:?} {plan:?}");
    let pair = Topologies::start(topology.source_shards, topology.destination_shards).await;
    let mut load = Workload::new(StdRng::seed_from_u64(rng.gen()), &settings);
    load.destination = Some(pair.dst.clone());
    for (feature, kind) in [
        (Feature::Txn, Kind::Transaction),
        (Feature::Pipeline, Kind::PipelineUpdate),
        (Feature::ArrayFilters, Kind::ArrayFilters),
        (Feature::Reorder, Kind::Reorder),
        (Feature::Pipeline, Kind::CappedList),
        (Feature::Views, Kind::View),
    ] {
        if settings.has(feature) {
            if let Some(why) = workload::unsupported(&pair.src, kind).await {
                eprintln!("randomized: seed {seed}: skipping {feature:?}: the sandbox does not support it yet ({why})");
                load.disable(kind);
            }
        }
    }
    load.seed(&pair.src, plan.docs).await;
    let mut fired = Vec::new();
    // A namespace filter leaving a database out, which views may be computed from.
    load.outside_filter = settings.has(Feature::Views) && more.gen_bool(0.3);
    // Views from outside into another database are run on replica-set sources only:
    // the sandbox router sends `$out`/`$merge` of an unsharded collection to the
    // source database's primary shard, whatever the target database.
    load.outside_views = load.outside_filter && !topology.sharded_source();
    load.seed_outside(&pair.src, plan.docs.min(40)).await;
    let mut scope = Scope::default();
    let mut extra = plan.extra.clone();
    if load.outside_filter {
        extra.push_str(&format!(
            "[filter]\nexclude_namespaces = [\"{OUTSIDE_DB}\"]\n"
        ));
        scope.skip_dbs.push(OUTSIDE_DB.into());
        eprintln!(
            "randomized: seed {seed}: namespace filter excludes {OUTSIDE_DB} (views from it: {})",
            load.outside_views
        );
    }
    if topology.sharded_source() {
        let sharded = topology::shard_source(&pair.src, &mut load, &mut more).await;
        eprintln!("randomized: seed {seed}: sharded on the source: {sharded:?}");
    }
    if topology.sharded_destination() {
        let entries = topology::draw_entries(&mut load, &mut more);
        for e in entries.iter().filter(|e| e.hashed) {
            scope
                .supporting_indexes
                .push((workload::Workload::key(&e.ns), e.key()));
        }
        extra.push_str(&topology::sharding_config(&entries));
        eprintln!(
            "randomized: seed {seed}: sharding entries: {:?}",
            entries
                .iter()
                .map(|e| format!("{} {}", Workload::key(&e.ns), e.key()))
                .collect::<Vec<_>>()
        );
    }

    if plan.copy_latency_ms > 0 {
        sandbox_fault(
            &pair.dst,
            doc! {"sandboxFault": 1, "latencyMs": plan.copy_latency_ms as i64},
        )
        .await;
    }
    let (src_uri, dst_uri) = (pair.source.uri(), pair.destination.uri());
    let text = config_text(&src_uri, &dst_uri, "127.0.0.1:0", &extra);
    // With `slow_plan_save`, a slow source keeps the run making and saving its copy
    // plan long enough for the crash to land there.
    let slow_plan = settings.has(Feature::SlowPlanSave)
        && plan.crash.is_some_and(|(at, _, _)| at == Crash::PlanSave);
    if slow_plan {
        for client in [&pair.src, &pair.dst] {
            sandbox_fault(client, doc! {"sandboxFault": 1, "latencyMs": 150}).await;
        }
    }
    let child = plan.crash.is_some_and(|(_, child, _)| child);
    let mut ferry = if child {
        Daemon::start_child(&src_uri, &dst_uri, &extra, &seed.to_string()).await
    } else {
        Daemon::start_in_process(&text).await
    };
    let crash = plan.crash.map(|(at, _, _)| at);
    let crash_op = plan.crash.map(|(_, _, op)| op).unwrap_or(0);

    if crash == Some(Crash::PlanSave) {
        let s = ferry
            .wait_for("the run to leave validation", |s| {
                s.phase != Phase::Validating && (!slow_plan || s.phase == Phase::Copying)
            })
            .await;
        if slow_plan {
            // Once the plan's first namespace is saved (its ranges are saved after all
            // the namespaces, one write each), before any range is copied.
            let saved = pair
                .dst
                .database("__ferry")
                .collection::<Document>("namespaces");
            let deadline = Instant::now() + common::DEADLINE;
            while saved.count_documents(doc! {}).await.unwrap_or(0) == 0 {
                assert!(Instant::now() < deadline, "no copy plan was saved");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        ferry.crash().await;
        fired.push(format!("crash at plan save ({} copied)", s.copied));
        if slow_plan {
            clear_latency(&pair).await;
        }
        ferry.restart(&text).await;
    }

    // During the copy (a small copy may be over before the first op).
    load.renames_allowed = settings.has(Feature::RenameDuringCopy);
    ferry
        .wait_for("the copy to start", |s| {
            s.copied > 0 || !matches!(s.phase, Phase::Validating | Phase::Initializing)
        })
        .await;
    if settings.has(Feature::RenameDuringCopy) {
        // At least one rename while the copy still runs (a slow destination keeps it
        // going), not left to the draw.
        sandbox_fault(&pair.dst, doc! {"sandboxFault": 1, "latencyMs": 30}).await;
        let copying = ferry.status().await.map(|s| s.phase) == Some(Phase::Copying);
        load.certain_ddl(&pair.src).await;
        fired.push(format!("rename (copying: {copying})"));
    }
    let copy_crash = (crash == Some(Crash::Copy)).then_some((crash_op, false));
    stage(
        &pair,
        &mut ferry,
        &mut load,
        plan.ops_copy,
        &plan.copy_faults,
        copy_crash,
        &text,
        &mut fired,
    )
    .await;
    clear_latency(&pair).await;

    // While syncing.
    ferry.wait_phase(Phase::ReadyForCutover).await;
    load.renames_allowed = true;
    load.wait_before_rename = !settings.has(Feature::RenameRace);
    let sync_crash = match crash {
        Some(Crash::Sync) => Some((crash_op, false)),
        Some(Crash::DdlReplay) => Some((crash_op, true)),
        _ => None,
    };
    stage(
        &pair,
        &mut ferry,
        &mut load,
        plan.ops_sync,
        &plan.sync_faults,
        sync_crash,
        &text,
        &mut fired,
    )
    .await;
    clear_latency(&pair).await;
    let applied = ferry.status().await.map(|s| s.applied).unwrap_or(0);
    // Application writes stop here: the workload is sequential and done.

    if plan.refused_cutover {
        let (db, coll) = planted_namespace(&pair.dst, &load).await;
        let planted = pair.dst.database(&db).collection::<Document>(&coll);
        planted
            .insert_one(doc! {"_id": "planted-difference", "by": "randomized"})
            .await
            .expect("plant a difference on the destination");
        let error = cutover(&mut ferry).await;
        let error = error.unwrap_or_else(|| {
            panic!("a cutover with a planted difference in {db}.{coll} was not refused")
        });
        assert!(
            error.contains("verification failed"),
            "the planted difference was refused for another reason: {error}"
        );
        if db == "planted" {
            // A namespace the destination did not have: remove it whole, as the difference
            // is the collection too.
            pair.dst
                .database(&db)
                .drop()
                .await
                .expect("remove the planted difference");
        } else {
            planted
                .delete_one(doc! {"_id": "planted-difference"})
                .await
                .expect("remove the planted difference");
        }
        fired.push("refused cutover".into());
    }

    if crash == Some(Crash::Cutover) {
        ferry.wait_phase(Phase::ReadyForCutover).await;
        ferry
            .request_until_accepted(ControlRequest::Cutover {
                writes_stopped: true,
            })
            .await;
        ferry
            .wait_for("the cutover to start", |s| {
                s.phase != Phase::ReadyForCutover
            })
            .await;
        ferry.crash().await;
        fired.push("crash at cutover".into());
        ferry.restart(&text).await;
        let s = ferry
            .wait_for("the restarted run to settle", |s| {
                matches!(s.phase, Phase::ReadyForCutover | Phase::Completed)
            })
            .await;
        if s.phase == Phase::ReadyForCutover {
            if let Some(error) = cutover(&mut ferry).await {
                let (diffs, _) = compare::differences(&pair.src, &pair.dst, &scope).await;
                panic!(
                    "the cutover after a crash during cutover bounced: {error}\n\
                     differences seen by the suite:\n{}",
                    diffs.join("\n")
                );
            }
        }
    } else if let Some(error) = cutover(&mut ferry).await {
        // Writes have stopped: what differs now is what Ferry got wrong.
        let (diffs, _) = compare::differences(&pair.src, &pair.dst, &scope).await;
        panic!(
            "the cutover went back to ready_for_cutover: {error}\nfaults fired: {fired:?}\n\
             differences seen by the suite:\n{}",
            diffs.join("\n")
        );
    }
    let (phase, error) = ferry.wait_end().await;
    assert_eq!(
        phase,
        Phase::Completed,
        "the run ended {} ({error:?})",
        phase.as_str()
    );

    let (diffs, compared) = compare::differences(&pair.src, &pair.dst, &scope).await;
    assert!(
        diffs.is_empty(),
        "the destination differs from the source ({} differences; faults fired: {fired:?}; ops: {}):\n{}",
        diffs.len(),
        load.report(),
        diffs.join("\n")
    );
    if plan.enforce_write_block {
        fired.push("enforce_write_block configured".into());
    }
    Summary {
        compared,
        applied,
        fired,
        ops: load.report(),
    }
}

/// A namespace that exists on the destination, for a planted difference.
async fn planted_namespace(dst: &Client, load: &Workload) -> (String, String) {
    for ns in &load.namespaces {
        let names = dst
            .database(&ns.db)
            .list_collection_names()
            .await
            .unwrap_or_default();
        if names.contains(&ns.coll) {
            return (ns.db.clone(), ns.coll.clone());
        }
    }
    ("planted".into(), "difference".into())
}
