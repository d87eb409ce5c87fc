//! Coordinator: holds the destination lease (renewing it, and telling the supervisor when
//! it is lost: the lease's fence has by then stopped every destination write, see
//! [`crate::checkpoint::lease`]), stops the balancers of sharded deployments and restores
//! them, blocks source writes at cutover when asked and gives them back in every ending,
//! and finalizes the destination (unique and TTL index options made effective).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use bson::{doc, Bson, Document};

use super::{ActorFailure, SharedEngine};
use crate::checkpoint::{CheckpointError, FenceError};
use crate::cluster::topology::{balancer_start, balancer_state, balancer_stop};
use crate::cluster::ClusterError;

/// The lease was lost: it was changed or deleted by someone else, and this process has
/// stopped writing.
#[derive(Message)]
#[rtype(result = "()")]
pub struct LockLost(pub ActorFailure);

pub struct Coordinator {
    engine: SharedEngine,
    lost: Recipient<LockLost>,
    /// A renewal is under way (a slow destination must not pile them up).
    renewing: bool,
}

impl Coordinator {
    pub fn new(engine: SharedEngine, lost: Recipient<LockLost>) -> Coordinator {
        Coordinator {
            engine,
            lost,
            renewing: false,
        }
    }

    fn renew(&mut self, ctx: &mut Context<Self>) {
        if self.renewing {
            return;
        }
        self.renewing = true;
        let engine = self.engine.clone();
        ctx.spawn(
            async move { engine.checkpoints.renew_lease().await }
                .into_actor(self)
                .map(|result, act, _| {
                    act.renewing = false;
                    let Err(e) = result else {
                        return;
                    };
                    let fence = act.engine.checkpoints.fence().check();
                    match (&e, fence) {
                        (CheckpointError::LeaseLost { .. }, _)
                        | (CheckpointError::Fenced(FenceError::Lost), _) => {
                            tracing::error!(error = %super::error_chain(&e), "the destination lease was lost; every destination write stopped");
                            act.lost
                                .do_send(LockLost(ActorFailure::new("coordinator", &e, false)));
                        }
                        (_, Err(closed)) => {
                            tracing::error!(error = %super::error_chain(&e), fence = %closed, "the destination lease could not be renewed; destination writes are stopped until it is");
                        }
                        (_, Ok(())) => {
                            tracing::warn!(error = %super::error_chain(&e), "could not renew the destination lease; will retry");
                        }
                    }
                }),
        );
    }
}

impl Actor for Coordinator {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Self::Context) {
        let every = self.engine.checkpoints.lease_terms().renew_every();
        ctx.run_interval(every, |act, ctx| act.renew(ctx));
    }
}

/// Transient failures of a write-block command tried before giving up with a message.
const WRITE_BLOCK_ATTEMPTS: u32 = 10;

/// Orders the source write-block commands of cutover attempts and endings, so that an
/// ending's "unblock" can never be overtaken by the "block" of an attempt it ended: each
/// command runs under one lock, and a block of an attempt that is no longer current is
/// skipped.
#[derive(Clone, Default)]
pub struct SourceWriteBlock {
    ops: Arc<tokio::sync::Mutex<()>>,
    /// The current cutover attempt (0: none may block).
    current: Arc<AtomicU64>,
}

impl SourceWriteBlock {
    /// A new cutover attempt: its number, which [`SourceWriteBlock::block`] checks.
    pub fn begin_attempt(&self) -> u64 {
        self.current.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// No attempt may block any more (the cutover ended, the run ends).
    pub fn end_attempts(&self) {
        self.current.fetch_add(1, Ordering::SeqCst);
    }

    /// Blocks the source's user writes for `attempt`, unless it is no longer current.
    /// Returns whether it blocked.
    pub async fn block(&self, engine: &SharedEngine, attempt: u64) -> Result<bool, ClusterError> {
        let _turn = self.ops.lock().await;
        if self.current.load(Ordering::SeqCst) != attempt {
            return Ok(false);
        }
        set_source_write_block(engine, true).await?;
        Ok(true)
    }

    /// Gives the source its writes back, retrying transient errors, after any block
    /// under way.
    pub async fn lift(&self, engine: &SharedEngine) -> Result<(), ClusterError> {
        let _turn = self.ops.lock().await;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match set_source_write_block(engine, false).await {
                Ok(()) => return Ok(()),
                Err(e) if e.is_transient() && attempt < WRITE_BLOCK_ATTEMPTS => {
                    tracing::warn!(error = %super::error_chain(&e), attempt, "could not lift the source's write block; retrying");
                    tokio::time::sleep(Duration::from_millis(250 * attempt as u64)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Blocks (or unblocks) user writes on the source with setUserWriteBlockMode.
async fn set_source_write_block(engine: &SharedEngine, blocked: bool) -> Result<(), ClusterError> {
    // Recorded before blocking and after unblocking: a run that crashes in between
    // knows, when restarted, that the source may still be blocked. Not blocking is
    // better than blocking without a record of it.
    let record = |blocked: bool| async move {
        engine
            .checkpoints
            .set_state(doc! {"source_write_blocked": blocked})
            .await
    };
    if blocked {
        if let Err(e) = record(true).await {
            return Err(ClusterError::Command {
                side: engine.destination.side,
                action: "record the source's write block before setting it".into(),
                source: mongodb::error::Error::custom(super::error_chain(&e)),
            });
        }
    }
    engine
        .source
        .run(
            "admin",
            doc! {"setUserWriteBlockMode": 1, "global": blocked},
        )
        .await?;
    if !blocked {
        if let Err(e) = record(false).await {
            tracing::warn!(error = %super::error_chain(&e), "could not record that the source's writes are back");
        }
    }
    Ok(())
}

/// Makes unique and TTL index options effective on the destination, as on the source.
/// Returns how many indexes were changed.
pub async fn finalize_indexes(engine: &SharedEngine) -> Result<u64, ClusterError> {
    if let Err(e) = engine.checkpoints.fence().check() {
        return Err(ClusterError::Command {
            side: engine.destination.side,
            action: "finalize the destination's indexes".into(),
            source: mongodb::error::Error::custom(e.to_string()),
        });
    }
    let mut changed = 0;
    let source = &engine.source;
    for namespace in crate::cluster::namespaces::in_scope(source, &engine.filter).await? {
        if !namespace.is_collection() {
            continue;
        }
        let (db, name) = (namespace.db.clone(), namespace.coll.as_str());
        let dest_indexes: Vec<Document> = engine.destination.index_specs(&db, name).await?;
        for index in source.index_specs(&db, name).await? {
            let Ok(index_name) = index.get_str("name") else {
                continue;
            };
            let Some(dest) = dest_indexes
                .iter()
                .find(|d| d.get_str("name") == Ok(index_name))
            else {
                continue;
            };
            if index.get_bool("unique").unwrap_or(false)
                && !dest.get_bool("unique").unwrap_or(false)
            {
                engine
                    .destination
                    .run(&db, doc! {"collMod": name, "index": {"name": index_name, "prepareUnique": true}})
                    .await?;
                engine
                    .destination
                    .run(
                        &db,
                        doc! {"collMod": name, "index": {"name": index_name, "unique": true}},
                    )
                    .await?;
                changed += 1;
            }
            if let Some(ttl) = index.get("expireAfterSeconds") {
                if dest.get("expireAfterSeconds") != Some(ttl) {
                    let ttl = match ttl {
                        Bson::Int32(i) => Bson::Int64(*i as i64),
                        other => other.clone(),
                    };
                    engine
                        .destination
                        .run(&db, doc! {"collMod": name, "index": {"name": index_name, "expireAfterSeconds": ttl}})
                        .await?;
                    changed += 1;
                }
            }
        }
    }
    Ok(changed)
}

/// Stops the balancer of each sharded side that has it enabled, and records that Ferry
/// did, so it is restarted even after a crash and restart.
pub async fn stop_balancers(engine: &SharedEngine) -> Result<(), CheckpointError> {
    let mut stopped = engine
        .checkpoints
        .load_state()
        .await?
        .unwrap_or_default()
        .balancers_stopped;
    for cluster in [&engine.source, &engine.destination] {
        let side = cluster.side.to_string();
        if balancer_state(cluster).await? == Some(true) {
            balancer_stop(cluster).await?;
            tracing::info!(side = %side, "balancer stopped for the migration");
            if !stopped.contains(&side) {
                stopped.push(side);
            }
        }
    }
    engine
        .checkpoints
        .set_state(doc! {"balancers_stopped": stopped})
        .await
}

/// Restarts the balancers Ferry stopped (completion, cancel, failure, expiry).
pub async fn restore_balancers(engine: &SharedEngine) -> Result<(), CheckpointError> {
    let stopped = engine
        .checkpoints
        .load_state()
        .await?
        .unwrap_or_default()
        .balancers_stopped;
    for cluster in [&engine.source, &engine.destination] {
        let side = cluster.side.to_string();
        if stopped.contains(&side) {
            balancer_start(cluster).await?;
            tracing::info!(side = %side, "balancer restarted");
        }
    }
    engine
        .checkpoints
        .set_state(doc! {"balancers_stopped": Vec::<String>::new()})
        .await
}
