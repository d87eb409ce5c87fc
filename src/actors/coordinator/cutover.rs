//! The cutover handshake, as messages of the coordinator: block the source's user writes
//! when `cutover.enforce_write_block` asks for it, mark the source's optime the tailer
//! drains to ([`BeginCutover`]), verify both sides and finalize the destination's indexes
//! ([`VerifyCutover`]), and give the source its writes back after a refused cutover or in
//! any ending ([`LiftWriteBlock`]). The supervisor decides what each outcome means for the
//! phase, and asks again when the operator retries after a refusal.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use bson::{doc, Bson, Document, Timestamp};
use tracing::Instrument;

use super::Coordinator;
use crate::actors::{error_chain, verifier, SharedEngine};
use crate::cluster::{sharding, ClusterError};
use crate::report::Verification;

/// Tries of the cutover handshake (write block, cutover optime) on transient errors.
const CUTOVER_ATTEMPTS: u32 = 10;

/// The handshake's state in the coordinator.
#[derive(Default)]
pub struct Handshake {
    /// Orders the block and unblock commands of cutover attempts and endings.
    write_block: SourceWriteBlock,
    /// The source's writes may be blocked by Ferry (a cutover asked for it, or a crashed
    /// run left it so): a refusal and every ending give them back.
    blocked: bool,
}

impl Handshake {
    pub fn new(blocked: bool) -> Handshake {
        Handshake {
            blocked,
            ..Default::default()
        }
    }

    pub fn is_blocked(&self) -> bool {
        self.blocked
    }
}

/// Starts a cutover attempt: blocks the source's writes when configured to, then answers
/// the source's optime that the tailer must drain to. Transient errors are retried: a
/// stepdown right now must not bounce the cutover the operator asked for.
#[derive(Message)]
#[rtype(result = "Result<Timestamp, String>")]
pub struct BeginCutover;

/// The tailer drained to the cutover optime: compare both sides and, when they match,
/// finalize the destination's indexes and compare their definitions again. Answers
/// (data comparison, strict comparison after finalizing).
#[derive(Message)]
#[rtype(result = "Result<(Verification, Verification), String>")]
pub struct VerifyCutover;

/// No cutover attempt may block the source any more; gives its writes back if Ferry
/// blocked them. Answers whether there was a block to lift; an error means the source
/// is still blocked (the run's ending tries again).
#[derive(Message)]
#[rtype(result = "Result<bool, String>")]
pub struct LiftWriteBlock;

impl Handler<BeginCutover> for Coordinator {
    type Result = ResponseFuture<Result<Timestamp, String>>;
    fn handle(&mut self, _: BeginCutover, _: &mut Self::Context) -> Self::Result {
        let engine = self.engine.clone();
        let block = engine.config.cutover.enforce_write_block;
        let cutover = self.cutover.write_block.begin_attempt();
        self.cutover.blocked |= block;
        let write_block = self.cutover.write_block.clone();
        Box::pin(
            async move {
            let mut attempt = 0;
            loop {
                attempt += 1;
                let step = async {
                    if block && !write_block.block(&engine, cutover).await? {
                        return Ok(None);
                    }
                    source_drain_point(&engine, "ferry cutover").await.map(Some)
                };
                match step.await {
                    Ok(Some(ts)) => return Ok(ts),
                    Ok(None) => return Err("the cutover attempt was superseded".to_string()),
                    Err(e) if e.is_transient() && attempt < CUTOVER_ATTEMPTS => {
                        crate::metrics::record_retry("cutover");
                        engine.progress.retries.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(error = %error_chain(&e), attempt, "cutover handshake failed; retrying");
                        tokio::time::sleep(Duration::from_millis(500 * attempt as u64)).await;
                    }
                    Err(e) => return Err(error_chain(&e)),
                }
            }
            }
            .instrument(tracing::info_span!("coordinator", role = "cutover")),
        )
    }
}

impl Handler<VerifyCutover> for Coordinator {
    type Result = ResponseFuture<Result<(Verification, Verification), String>>;
    fn handle(&mut self, _: VerifyCutover, _: &mut Self::Context) -> Self::Result {
        let engine = self.engine.clone();
        Box::pin(
            async move {
                let data = verifier::verify_at_cutover(&engine)
                    .await
                    .map_err(|e| error_chain(&e))?;
                if !data.passed {
                    return Ok((data, Verification::default()));
                }
                finalize_indexes(&engine)
                    .await
                    .map_err(|e| error_chain(&e))?;
                // Finalize changed index options, not data: compare definitions again
                // without a second scan of every document (it would double downtime).
                let mut strict = verifier::verify_definitions(&engine, true)
                    .await
                    .map_err(|e| error_chain(&e))?;
                strict.documents_checked = data.documents_checked;
                strict.baseline_documents = data.baseline_documents;
                strict.namespaces_rechecked = data.namespaces_rechecked;
                Ok((data, strict))
            }
            .instrument(tracing::info_span!("coordinator", role = "cutover")),
        )
    }
}

impl Handler<LiftWriteBlock> for Coordinator {
    type Result = ResponseActFuture<Self, Result<bool, String>>;
    fn handle(&mut self, _: LiftWriteBlock, _: &mut Self::Context) -> Self::Result {
        self.cutover.write_block.end_attempts();
        if !self.cutover.blocked {
            return Box::pin(fut::ready(Ok(false)));
        }
        self.cutover.blocked = false;
        let engine = self.engine.clone();
        let write_block = self.cutover.write_block.clone();
        Box::pin(
            async move { write_block.lift(&engine).await }
                .instrument(tracing::info_span!("coordinator", role = "cutover"))
                .into_actor(self)
                .map(|result, act, _| match result {
                    Ok(()) => Ok(true),
                    Err(e) => {
                        // Still blocked: the run's ending tries again.
                        act.cutover.blocked = true;
                        Err(error_chain(&e))
                    }
                }),
        )
    }
}

/// A source optime for the tailer to drain to: a no-op written now (after the write
/// block, or at completion). On a sharded source, written so that every shard logs an
/// entry after it (see [`sharding::stream_time`]): the router's stream would otherwise
/// reach it only at an idle shard's next periodic no-op or Ferry's idle tick, seconds of
/// downtime.
pub(crate) async fn source_drain_point(
    engine: &SharedEngine,
    label: &str,
) -> Result<Timestamp, ClusterError> {
    if engine.source_topology.is_sharded() {
        sharding::stream_time(&engine.source, label).await
    } else {
        engine.source.append_noop(label).await
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
                    tracing::warn!(error = %error_chain(&e), attempt, "could not lift the source's write block; retrying");
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
            return Err(ClusterError::failed(
                engine.destination.side,
                "record the source's write block before setting it",
                error_chain(&e),
            ));
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
            tracing::warn!(error = %error_chain(&e), "could not record that the source's writes are back");
        }
    }
    Ok(())
}

/// Makes unique and TTL index options effective on the destination, as on the source.
/// Returns how many indexes were changed.
pub async fn finalize_indexes(engine: &SharedEngine) -> Result<u64, ClusterError> {
    if let Err(e) = engine.checkpoints.fence().check() {
        return Err(ClusterError::failed(
            engine.destination.side,
            "finalize the destination's indexes",
            e.to_string(),
        ));
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
