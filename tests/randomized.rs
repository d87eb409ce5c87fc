//! Seeded randomized convergence: for each seed, a source and a destination sandbox, a
//! workload drawn from the seed running against the source while Ferry copies and syncs,
//! faults drawn from the seed, a cutover, and then the suite's own comparison of every
//! document (raw BSON bytes, keyed by the raw `_id` bytes) and every index and
//! collection definition — independent of Ferry's verifier. A failure names the seed;
//! `FERRY_RANDOMIZED_SEED=N cargo test --test randomized` replays exactly that seed.
//!
//! Environment:
//! - `FERRY_RANDOMIZED_SEED=N`: run only seed N.
//! - `FERRY_RANDOMIZED_SEEDS=N`: run N seeds (from `FERRY_RANDOMIZED_FIRST`, default 1);
//!   `cargo test` runs [`DEFAULT_SEEDS`].
//! - `FERRY_RANDOMIZED_SIZE=large`: more documents and ops per seed.
//! - `FERRY_RANDOMIZED_KEEP_GOING=1`: run every seed and list the failing ones at the
//!   end, instead of stopping at the first.
//! - `FERRY_RANDOMIZED_TRACE=1`: print every command the workload sends, and each
//!   fault and crash as it happens (to minimise a failing seed).
//! - `FERRY_RANDOMIZED_FEATURES=a,b,...` (or `all`): switch on ingredients, listed
//!   below (all but `topologies` are on by default; `none,<name>` isolates one).
//! - `FERRY_RANDOMIZED_TOPOLOGIES=1` (the same as the feature `topologies`): each seed
//!   also draws its topology — source and destination each a replica set or a
//!   two-shard sandbox cluster. `cargo test` runs one two-shard → two-shard seed
//!   ([`SHARDED_SEED`]) besides the replica-set seeds.
//!
//! Workload (weights drawn per seed): inserts, bulk inserts, updates mixing every
//! operator kind (`$set`, `$unset`, `$inc`, `$mul`, `$min`, `$max`, `$rename`, `$push`
//! with `$each`/`$slice`/`$position`, `$pull`, `$pullAll`, `$addToSet`, `$pop`,
//! `$currentDate`, `$bit`), array index paths (`objs.3.b`, `arr.2`), multi updates,
//! replaces, deletes, upserts, documents near 16 MB, DDL during sync (create, drop,
//! rename within and across databases, createIndexes, dropIndexes, collMod); `_id`s of
//! every BSON type that may be an `_id`, unicode keys and strings, nesting up to 90
//! levels, dotted top-level field names.
//! Materialized-view refreshes (`views`): `aggregate` ending with `$out` (a
//! `tmp.agg_out.<uuid>` collection renamed over the target) or `$merge` (`on: "_id"`,
//! whenMatched replace/keepExisting/merge, whenNotMatched insert/discard) into `mv0` /
//! `mv1` of the collection's database; with a namespace filter drawn for some seeds
//! (`[filter] exclude_namespaces = ["staging"]`), also `$out`/`$merge` from the
//! excluded `staging.raw` into an in-scope database (replica-set sources). Pipeline
//! updates include the capped list (`$concatArrays` + `$slice` + `$isArray`, then
//! `$reverseArray`).
//! Topologies (`topologies`): on a sharded source, each seeded collection is sharded
//! with probability 0.6 — on `_id` (hashed or ranged) or, two times in five, on `g`
//! (ranged, alone or with `_id`) or a hashed `s` (which documents lose when the workload
//! renames it) — split at one document's chunk and that chunk moved to the other shard;
//! transactions there span both shards (the sandbox commits on each in turn), and views
//! read unsharded collections only (the sandbox router runs `$out`/`$merge` from those
//! only). On a sharded destination, unsharded source
//! collections get a `[sharding]` entry on `_id` (ranged or hashed) with probability
//! 0.5; DDL keeps those collections' names (a restarted run checks the entries). A
//! stepdown of a sharded side steps down one shard's primary; dropped connections and
//! latency hit its router. The comparison reads both sides through their routers; the
//! hashed supporting index Ferry creates for an entry is the one index difference it
//! allows.
//! Faults (drawn per seed, each checked to have fired): stepdowns and dropped
//! connections on either side (`sandboxFault`), latency spikes, pause/resume through the
//! control API, a crash of Ferry at one of copy / plan save / sync / DDL replay / cutover
//! followed by a restart (in process, or SIGKILL of a `ferry run` child), a cutover
//! refused by verification (a planted difference) then retried once it is removed.
//!
//! Switches for ingredients that each reproduced an engine bug when this suite was
//! written. The fixed ones are on by default ([`DEFAULT_ON`]) as regression guards;
//! `FERRY_RANDOMIZED_FEATURES=none,<name>` isolates one. The seed after each name
//! reproduced its failure before the fix (`FERRY_RANDOMIZED_FEATURES=<name>
//! FERRY_RANDOMIZED_SEED=<seed> cargo test --test randomized seeded`):
//! - `push_storm` (seed 1, fixed, on): hundreds of `$push` to one document; the tailer
//!   sent one oversized `update` command ("Message length 87234784 over maximum 48000000").
//! - `equal_ids` (seed 1, fixed, on): numerically equal `_id`s of different types,
//!   Decimal128 included, deleted and re-inserted as another type (66 ImmutableField).
//! - `dollar_fields` (seed 1, fixed, on): top-level `$`-prefixed field names, then
//!   updated (52 DollarPrefixedFieldName from the replacement fallback).
//! - `rename_during_copy` (seed 4, fixed, on): renameCollection while the copy runs.
//!   Renames within a database: the copy follows the collection's UUID. Renames into
//!   another database (seeds 1 and 3 lost documents): the sandbox now carries them out
//!   as a real server does (a temporary collection with a new UUID filled by inserts,
//!   renamed onto the target, the source dropped), and Ferry replays those events. A
//!   rename between the start time and the copy plan's listing (seeds 94, 209, 282, 317
//!   and 385, some runs of each: `app.renamed490` 22 of 130 documents and no TTL index)
//!   had the plan name the collection by its new name; the replayed rename then replaced
//!   the copy with what the replayed writes under the old name had put there. The plan
//!   now names each collection as the start time did.
//! - `retried_cutover` (seed 1, fixed, on): a cutover refused by verification (a planted
//!   difference), then retried once the difference is removed: the second cutover
//!   stayed in `cutting_over` for good.
//! - `rename_race` (seed 1003 of `kill_9`, `FERRY_RANDOMIZED_CRASH=DdlReplay`; fixed,
//!   on): renameCollection while Ferry still had updates of that collection to apply by
//!   re-reading the source document; the read looked under the old name and dropped the
//!   update. Without the switch a rename first waits until the destination holds the
//!   collection's documents.
//! - `slow_plan_save` (seed 67 of `kill_9`, `FERRY_RANDOMIZED_CRASH=PlanSave`; fixed,
//!   on): a crash between saving the copy plan's namespaces and its ranges; the restarted
//!   run called the copy finished and the documents never reached the destination.
//!
//! Sandbox features, probed at run time (a seed skips one, saying so, when the sandbox
//! does not support it): `txn` (multi-document transactions, on) and `array_filters`
//! (`arrayFilters` and `$[]`, on); `pipeline` (pipeline updates with a computed `$set`,
//! a field moved by `$set` + `$unset`, and a `$replaceWith` putting a field ahead of the
//! others, on: an update that may move fields is applied by reading the source's
//! document; before that, seeds 2 and 4 of `FERRY_RANDOMIZED_FEATURES=none,pipeline`
//! ended with fields in another order on the destination) and `reorder` (`$set` of a subdocument with its fields reordered, on).

mod common;
#[path = "randomized/compare.rs"]
mod compare;
#[path = "randomized/daemon.rs"]
mod daemon;
#[path = "randomized/requests.rs"]
mod requests;
#[path = "randomized/scenario.rs"]
mod scenario;
#[path = "randomized/topology.rs"]
mod topology;
#[path = "randomized/updates.rs"]
mod updates;
#[path = "randomized/values.rs"]
mod values;
#[path = "randomized/workload.rs"]
mod workload;

use std::collections::BTreeSet;

/// The tests of this file run one seed at a time: the machine is small, and the
/// fault checks read per-server counters.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Seeds `cargo test` runs (kept few: the whole file should take about a minute on a
/// loaded two-core machine).
pub const DEFAULT_SEEDS: u64 = 3;

/// Whether `FERRY_RANDOMIZED_TRACE` asks for every command and fault to be printed.
pub fn trace() -> bool {
    std::env::var("FERRY_RANDOMIZED_TRACE").is_ok_and(|v| v == "1")
}

/// Ingredients a run can switch on or off (see the header).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Feature {
    PushStorm,
    EqualIds,
    DollarFields,
    RenameDuringCopy,
    RetriedCutover,
    RenameRace,
    SlowPlanSave,
    Txn,
    Pipeline,
    ArrayFilters,
    Reorder,
    Views,
    Topologies,
}

const FEATURES: [(&str, Feature); 13] = [
    ("push_storm", Feature::PushStorm),
    ("equal_ids", Feature::EqualIds),
    ("dollar_fields", Feature::DollarFields),
    ("rename_during_copy", Feature::RenameDuringCopy),
    ("retried_cutover", Feature::RetriedCutover),
    ("rename_race", Feature::RenameRace),
    ("slow_plan_save", Feature::SlowPlanSave),
    ("txn", Feature::Txn),
    ("pipeline", Feature::Pipeline),
    ("array_filters", Feature::ArrayFilters),
    ("reorder", Feature::Reorder),
    ("views", Feature::Views),
    ("topologies", Feature::Topologies),
];

/// Ingredients on unless the environment says otherwise: each once failed on a known
/// engine bug that is fixed now, so they stay in every run as regressions guards.
/// `FERRY_RANDOMIZED_FEATURES=none` turns them off (to isolate a failure).
const DEFAULT_ON: [Feature; 12] = [
    Feature::PushStorm,
    Feature::EqualIds,
    Feature::DollarFields,
    Feature::RenameDuringCopy,
    Feature::RetriedCutover,
    Feature::RenameRace,
    Feature::SlowPlanSave,
    Feature::Txn,
    Feature::Pipeline,
    Feature::ArrayFilters,
    Feature::Reorder,
    Feature::Views,
];

/// What to run, from the environment.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    pub seeds: Vec<u64>,
    pub large: bool,
    pub features: BTreeSet<Feature>,
}

impl Settings {
    pub fn from_env() -> Settings {
        let number = |name: &str| {
            std::env::var(name).ok().map(|v| {
                v.trim()
                    .parse::<u64>()
                    .unwrap_or_else(|_| panic!("{name}={v:?}: expected a whole number"))
            })
        };
        let seeds = match number("FERRY_RANDOMIZED_SEED") {
            Some(seed) => vec![seed],
            None => {
                let first = number("FERRY_RANDOMIZED_FIRST").unwrap_or(1);
                let count = number("FERRY_RANDOMIZED_SEEDS").unwrap_or(DEFAULT_SEEDS);
                (first..first + count).collect()
            }
        };
        let large = std::env::var("FERRY_RANDOMIZED_SIZE").is_ok_and(|v| v == "large");
        let mut features: BTreeSet<Feature> = DEFAULT_ON.iter().copied().collect();
        if std::env::var("FERRY_RANDOMIZED_TOPOLOGIES").is_ok_and(|v| v == "1") {
            features.insert(Feature::Topologies);
        }
        if let Ok(list) = std::env::var("FERRY_RANDOMIZED_FEATURES") {
            for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                if name == "none" {
                    features.clear();
                    continue;
                }
                if name == "all" {
                    features.extend(FEATURES.iter().map(|(_, f)| *f));
                    continue;
                }
                match FEATURES.iter().find(|(n, _)| *n == name) {
                    Some((_, f)) => {
                        features.insert(*f);
                    }
                    None => panic!(
                        "FERRY_RANDOMIZED_FEATURES: unknown {name:?}; known: all, {}",
                        FEATURES.map(|(n, _)| n).join(", ")
                    ),
                }
            }
        }
        Settings {
            seeds,
            large,
            features,
        }
    }

    pub fn has(&self, feature: Feature) -> bool {
        self.features.contains(&feature)
    }
}

/// Every seed converges exactly: after the cutover, the destination holds the source's
/// databases, collections, options, indexes and documents, byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_workloads_and_faults_converge_exactly() {
    let settings = Settings::from_env();
    eprintln!(
        "randomized: seeds {:?}, size {}, features {:?}",
        settings.seeds,
        if settings.large { "large" } else { "small" },
        settings.features
    );
    let keep_going = std::env::var("FERRY_RANDOMIZED_KEEP_GOING").is_ok_and(|v| v == "1");
    let mut failed = Vec::new();
    for &seed in &settings.seeds {
        if let Err(message) = run_seed(seed, &settings, None, None).await {
            if !keep_going {
                panic!("{message}");
            }
            eprintln!("randomized: FAILED {message}");
            failed.push(seed);
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} seeds failed: {failed:?}",
        failed.len(),
        settings.seeds.len()
    );
}

/// A SIGKILL of `ferry run` at each crash point (plan save, copy, sync, DDL replay,
/// cutover), then a restart with the same config: every seed still converges exactly.
/// Runs seeds `1000 + i` unless `FERRY_RANDOMIZED_SEED` picks one for every point;
/// `FERRY_RANDOMIZED_CRASH=DdlReplay` (a point's name) runs only that point.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_every_crash_point_converges() {
    let settings = Settings::from_env();
    let single = std::env::var("FERRY_RANDOMIZED_SEED").is_ok();
    let only = std::env::var("FERRY_RANDOMIZED_CRASH").ok();
    for (i, at) in scenario::CRASHES.iter().enumerate() {
        if only.as_deref().is_some_and(|o| o != format!("{at:?}")) {
            continue;
        }
        let seed = if single {
            settings.seeds[0]
        } else {
            1000 + i as u64
        };
        eprintln!("randomized: SIGKILL at {at:?} with seed {seed}");
        if let Err(message) = run_seed(seed, &settings, Some(*at), None).await {
            panic!("{message}");
        }
    }
}

/// The seed [`two_shard_source_and_destination_converge`] runs.
pub const SHARDED_SEED: u64 = 7;

/// One seed with a two-shard source (collections sharded on `_id`, hashed or ranged,
/// split and spread over both shards) and a two-shard destination, converging exactly
/// through the routers. `FERRY_RANDOMIZED_SEED=N` runs seed N on this topology instead;
/// `FERRY_RANDOMIZED_TOPOLOGIES=1` draws a topology per seed in the other tests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_shard_source_and_destination_converge() {
    let settings = Settings::from_env();
    let seed = if std::env::var("FERRY_RANDOMIZED_SEED").is_ok() {
        settings.seeds[0]
    } else {
        SHARDED_SEED
    };
    let topology = topology::Topology {
        source_shards: 2,
        destination_shards: 2,
    };
    if let Err(message) = run_seed(seed, &settings, None, Some(topology)).await {
        panic!("{message}");
    }
}

/// Runs one seed on its own task, so that a failure is reported with its seed and the
/// command that replays it.
async fn run_seed(
    seed: u64,
    settings: &Settings,
    kill: Option<scenario::Crash>,
    topology: Option<topology::Topology>,
) -> Result<(), String> {
    let _serial = SERIAL.lock().await;
    let outcome = tokio::spawn(scenario::run(seed, settings.clone(), kill, topology)).await;
    match outcome {
        Ok(summary) => {
            eprintln!("randomized: seed {seed} converged: {summary}");
            Ok(())
        }
        Err(e) => {
            let message = match e.try_into_panic() {
                Ok(p) => p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "(no message)".into()),
                Err(e) => e.to_string(),
            };
            let features: Vec<&str> = FEATURES
                .iter()
                .filter(|(_, f)| settings.has(*f))
                .map(|(n, _)| *n)
                .collect();
            let test = match (kill, topology) {
                (Some(at), _) => format!("kill_9 with FERRY_RANDOMIZED_CRASH={at:?}"),
                (None, Some(_)) => "two_shard".into(),
                (None, None) => "seeded".into(),
            };
            Err(format!(
                "seed {seed} failed; replay: FERRY_RANDOMIZED_SEED={seed} \
                 FERRY_RANDOMIZED_FEATURES={} cargo test --test randomized {test}\n{message}",
                features.join(",")
            ))
        }
    }
}
