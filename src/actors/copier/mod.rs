//! The copy: a [`CopyPlanner`] plans it (namespaces, options, indexes, ranges; see
//! [`plan`]), prepares the destination, then hands each range to the [`Copier`] of the
//! source shard it belongs to (one per shard, see [`shard`]) and reports to the
//! supervisor once every copier has copied its ranges. Each acknowledged batch moves
//! its range's checkpoint, so a restart neither re-copies a finished range nor skips an
//! unfinished one.

mod plan;
mod renames;
mod shard;

pub use shard::{Copier, CopyRanges};

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use actix::prelude::*;
use bson::{doc, Bson, Document};
use futures_util::{StreamExt, TryStreamExt};
use tokio::sync::watch;
use tracing::Instrument;

pub mod destination;

use super::applier::relaxed_index;
use super::{ActorFailure, SharedEngine};
use crate::checkpoint::{CheckpointError, CopyRange, PlannedNamespace};
use crate::cluster::{ClusterError, Refusal};

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// Reading a range's documents or inserting them failed.
    #[error(transparent)]
    Documents(ClusterError),
    #[error("stopped")]
    Stopped,
    #[error("source: the change stream history since the start time is gone (the oplog rolled over); the migration must start over: drop the destination's __ferry database and run again")]
    HistoryLost(#[source] ClusterError),
    /// Waited too long on the source; planning again may pass.
    #[error("{0}")]
    Stalled(String),
    #[error("{0}")]
    Unsupported(String),
    /// Two source documents with one `_id` (on different shards) for one destination.
    #[error("{0}")]
    DuplicateId(String),
    #[error(
        "the copier of source shard {shard} is gone; the copy starts again from its checkpoints"
    )]
    CopierGone { shard: String },
}

impl CopyError {
    pub fn is_transient(&self) -> bool {
        match self {
            // A source collection renamed or dropped while the plan read it (its `_id`
            // sample cursor killed, 175; its indexes gone, 26): planning again finds it
            // under its new name, or not at all. The supervisor bounds the retries.
            CopyError::Cluster(e) => {
                e.is_transient()
                    || (e.side() == crate::cluster::Side::Source
                        && matches!(e.code(), Some(175 | 26)))
            }
            CopyError::Checkpoint(e) => e.is_transient(),
            // A collection renamed or dropped under an open cursor (175 QueryPlanKilled,
            // 26 NamespaceNotFound): the range starts again from its checkpoint and
            // finds the collection by UUID.
            CopyError::Documents(e) => e.is_transient() || e.is_collection_moved(),
            CopyError::CopierGone { .. } => true,
            CopyError::Stalled(_) => true,
            CopyError::Stopped
            | CopyError::Unsupported(_)
            | CopyError::DuplicateId(_)
            | CopyError::HistoryLost(_) => false,
        }
    }
}

/// Sent to the supervisor when the copy ends.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CopyOutcome(pub Result<CopySummary, ActorFailure>);

#[derive(Clone, Debug, Default)]
pub struct CopySummary {
    pub collections: u64,
    pub views: u64,
    pub indexes: u64,
}

/// Plans the copy and hands its ranges to the copiers of the source shards; tells the
/// supervisor how the copy ended.
pub struct CopyPlanner {
    engine: SharedEngine,
    supervisor: Recipient<CopyOutcome>,
    paused: watch::Receiver<bool>,
    /// The copier of each source shard (`""` for a replica set), started by the supervisor.
    copiers: Vec<(String, Addr<Copier>)>,
}

impl CopyPlanner {
    pub fn new(
        engine: SharedEngine,
        supervisor: Recipient<CopyOutcome>,
        paused: watch::Receiver<bool>,
        copiers: Vec<(String, Addr<Copier>)>,
    ) -> CopyPlanner {
        CopyPlanner {
            engine,
            supervisor,
            paused,
            copiers,
        }
    }
}

impl Actor for CopyPlanner {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Self::Context) {
        let engine = self.engine.clone();
        let paused = self.paused.clone();
        let copiers = self.copiers.clone();
        ctx.spawn(
            async move { run_copy(engine, paused, copiers).await }
                .instrument(tracing::info_span!("planner"))
                .into_actor(self)
                .map(|result, act, ctx| {
                    let outcome = result.map_err(|e| {
                        let transient = e.is_transient();
                        ActorFailure::new("copier", &e, transient)
                    });
                    act.supervisor.do_send(CopyOutcome(outcome));
                    ctx.stop();
                }),
        );
    }
}

/// Waits while the run is paused.
pub async fn wait_unpaused(paused: &mut watch::Receiver<bool>) -> Result<(), CopyError> {
    while *paused.borrow() {
        if paused.changed().await.is_err() {
            return Err(CopyError::Stopped);
        }
    }
    Ok(())
}

/// Plans (first run) or loads the plan, prepares the destination, copies what is left.
async fn run_copy(
    engine: SharedEngine,
    mut paused: watch::Receiver<bool>,
    copiers: Vec<(String, Addr<Copier>)>,
) -> Result<CopySummary, CopyError> {
    let (plan, ranges) = engine.checkpoints.load_plan().await?;
    let (plan, mut ranges) = if plan.is_empty() && ranges.is_empty() {
        let (mut plan, mut ranges) = plan::make_plan(&engine).await?;
        let start = engine
            .checkpoints
            .load_state()
            .await?
            .and_then(|s| s.start_ts);
        if let Some(start) = start {
            let renames = renames::renames_since(&engine, start).await?;
            renames::name_as_at_start(&mut plan, &mut ranges, &renames);
        }
        engine.checkpoints.save_plan(&plan, &ranges).await?;
        (plan, ranges)
    } else {
        (plan, ranges)
    };
    // An unfinished shard-key range is copied again from its start: what it copied
    // before counts once, when copied again.
    for r in ranges.iter_mut().filter(|r| !r.done && r.key.is_some()) {
        r.documents = 0;
        r.bytes = 0;
    }
    let summary = prepare_destination(&engine, &plan).await?;
    let progress = &engine.progress;
    let mut docs_est = 0;
    let mut bytes_est = 0;
    for ns in &plan {
        let mut p = progress.namespace_mut(&ns.ns);
        p.documents_estimated = ns.documents_estimated;
        p.bytes_estimated = ns.bytes_estimated;
        p.indexes = ns.indexes.len() as u64;
        p.status = if ns.is_view {
            "view".into()
        } else {
            "pending".into()
        };
        docs_est += ns.documents_estimated;
        bytes_est += ns.bytes_estimated;
    }
    progress
        .documents_estimated
        .store(docs_est, Ordering::Relaxed);
    progress.bytes_estimated.store(bytes_est, Ordering::Relaxed);
    let (mut copied_docs, mut copied_bytes) = (0, 0);
    for r in &ranges {
        copied_docs += r.documents;
        copied_bytes += r.bytes;
        let mut p = progress.namespace_mut(&r.ns);
        p.documents_copied += r.documents;
        p.bytes_copied += r.bytes;
    }
    progress
        .documents_copied
        .store(copied_docs, Ordering::Relaxed);
    progress.bytes_copied.store(copied_bytes, Ordering::Relaxed);
    let todo: Vec<CopyRange> = ranges.into_iter().filter(|r| !r.done).collect();
    tracing::info!(
        namespaces = plan.len(),
        ranges_left = todo.len(),
        shards = copiers.len(),
        "copying"
    );
    wait_unpaused(&mut paused).await?;
    let uuids: HashMap<String, bson::Binary> = plan
        .iter()
        .filter_map(|n| Some((n.ns.clone(), n.uuid.clone()?)))
        .collect();
    let by_shard: HashMap<&str, &Addr<Copier>> =
        copiers.iter().map(|(s, a)| (s.as_str(), a)).collect();
    // A range whose shard has no copier (a shard added since the plan) is read by any
    // copier: the router finds its documents wherever they are.
    let Some((_, fallback)) = copiers.first() else {
        return Err(CopyError::CopierGone {
            shard: "(none started)".into(),
        });
    };
    // Every range is assigned at once: each copier bounds how many it copies at a time,
    // so all shards are read in parallel.
    futures_util::stream::iter(todo.into_iter().map(|r| {
        let shard = r.shard.clone();
        let copier = by_shard
            .get(shard.as_str())
            .copied()
            .unwrap_or(fallback)
            .clone();
        let uuid = uuids.get(&r.ns).cloned();
        async move {
            copier
                .send(CopyRanges { range: r, uuid })
                .await
                .map_err(|_| CopyError::CopierGone { shard })?
        }
    }))
    .buffer_unordered(usize::MAX)
    .try_collect::<Vec<()>>()
    .await?;
    for ns in &plan {
        if !ns.is_view {
            progress.namespace_mut(&ns.ns).status = "copied".into();
        }
    }
    Ok(summary)
}

/// Creates collections (with their options), relaxed indexes, then views. Idempotent.
async fn prepare_destination(
    engine: &SharedEngine,
    plan: &[PlannedNamespace],
) -> Result<CopySummary, CopyError> {
    let dest = &engine.destination;
    let mut summary = CopySummary::default();
    let allow = |r: Result<Document, ClusterError>, refusals: &[Refusal]| match r {
        Ok(_) => Ok(()),
        Err(e) if e.is_any(refusals) => Ok(()),
        Err(e) => Err(e),
    };
    for ns in plan.iter().filter(|n| !n.is_view) {
        let mut cmd = doc! {"create": &ns.coll};
        cmd.extend(ns.options.clone());
        allow(dest.run(&ns.db, cmd).await, &[Refusal::NamespaceExists])?;
        let indexes: Vec<Bson> = ns
            .indexes
            .iter()
            .filter(|i| i.get_str("name") != Ok("_id_"))
            .map(|i| Bson::Document(relaxed_index(i)))
            .collect();
        summary.indexes += ns.indexes.len() as u64;
        if !indexes.is_empty() {
            let all = dest
                .run(
                    &ns.db,
                    doc! {"createIndexes": &ns.coll, "indexes": indexes.clone()},
                )
                .await;
            if all.as_ref().is_err_and(|e| e.is(Refusal::IndexConflict)) {
                // One index conflicts with one already there (a restart after a partial
                // run): the command creates none, so each is created on its own and only
                // the conflicting one is left (the verifier compares definitions).
                for index in indexes {
                    if let Err(e) = dest
                        .run(
                            &ns.db,
                            doc! {"createIndexes": &ns.coll, "indexes": [index.clone()]},
                        )
                        .await
                    {
                        if !e.is(Refusal::IndexConflict) {
                            return Err(e.into());
                        }
                        tracing::warn!(ns = %ns.ns, index = %index, error = %e, "an index conflicts with one already on the destination; left as it is");
                    }
                }
            } else {
                all?;
            }
        }
        summary.collections += 1;
    }
    destination::shard_collections(engine, plan).await?;
    for ns in plan.iter().filter(|n| n.is_view) {
        let mut cmd = doc! {"create": &ns.coll};
        cmd.extend(ns.options.clone());
        allow(dest.run(&ns.db, cmd).await, &[Refusal::NamespaceExists])?;
        summary.views += 1;
    }
    Ok(summary)
}
