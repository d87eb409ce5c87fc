//! Coordinator: holds the destination lock (renewing its lease), stops the balancers of
//! sharded deployments and restores them, blocks source writes at cutover when asked,
//! and finalizes the destination (unique and TTL index options made effective).

use std::time::Duration;

use actix::prelude::*;
use bson::{doc, Bson, Document};

use super::{ActorFailure, SharedEngine};
use crate::checkpoint::{CheckpointError, LOCK_LEASE_SECONDS};
use crate::cluster::topology::{balancer_start, balancer_state, balancer_stop};
use crate::cluster::ClusterError;

/// The lock was lost: another migration took it after our lease lapsed.
#[derive(Message)]
#[rtype(result = "()")]
pub struct LockLost(pub ActorFailure);

pub struct Coordinator {
    engine: SharedEngine,
    lost: Recipient<LockLost>,
}

impl Coordinator {
    pub fn new(engine: SharedEngine, lost: Recipient<LockLost>) -> Coordinator {
        Coordinator { engine, lost }
    }
}

impl Actor for Coordinator {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Self::Context) {
        let every = Duration::from_secs((LOCK_LEASE_SECONDS / 3).max(1) as u64);
        ctx.run_interval(every, |act, ctx| {
            let engine = act.engine.clone();
            let lost = act.lost.clone();
            ctx.spawn(
                async move {
                    match engine.checkpoints.acquire_lock().await {
                        Ok(()) => {}
                        Err(e @ CheckpointError::Locked { .. }) => lost.do_send(LockLost(ActorFailure::new("coordinator", &e, false))),
                        Err(e) => tracing::warn!(error = %super::error_chain(&e), "could not renew the destination lock; will retry"),
                    }
                }
                .into_actor(act),
            );
        });
    }
}

/// Blocks (or unblocks) user writes on the source with setUserWriteBlockMode.
pub async fn set_source_write_block(
    engine: &SharedEngine,
    blocked: bool,
) -> Result<(), ClusterError> {
    // Recorded before blocking and after unblocking: a run that crashes in between
    // knows, when restarted, that the source may still be blocked.
    let record = |blocked: bool| async move {
        if let Err(e) = engine
            .checkpoints
            .set_state(doc! {"source_write_blocked": blocked})
            .await
        {
            tracing::warn!(error = %super::error_chain(&e), "could not record the source's write block");
        }
    };
    if blocked {
        record(true).await;
    }
    engine
        .source
        .run(
            "admin",
            doc! {"setUserWriteBlockMode": 1, "global": blocked},
        )
        .await?;
    if !blocked {
        record(false).await;
    }
    Ok(())
}

/// Makes unique and TTL index options effective on the destination, as on the source.
/// Returns how many indexes were changed.
pub async fn finalize_indexes(engine: &SharedEngine) -> Result<u64, ClusterError> {
    let mut changed = 0;
    let source = &engine.source;
    for db in source.database_names(&engine.filter).await? {
        for spec in source.collection_specs(&db).await? {
            let Ok(name) = spec.get_str("name") else {
                continue;
            };
            if name.starts_with("system.")
                || !engine.filter.allows(&db, name)
                || spec.get_str("type") != Ok("collection")
            {
                continue;
            }
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
