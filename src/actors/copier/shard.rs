//! The Copier: one actor per source shard (a replica set is one shard), with a mailbox of
//! range assignments. Each [`CopyRanges`] message is one range to copy; the copier copies
//! up to its share of ranges at a time, one batch at a time, reading through the router
//! (a shard-key range with `min`/`max` on the shard key index, so the router's ownership
//! filter leaves orphans out), and checkpoints each acknowledged batch.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bson::{Bson, Document, RawDocumentBuf};
use tokio::sync::{watch, OnceCell, Semaphore};
use tracing::Instrument;

use super::{wait_unpaused, CopyError};
use crate::actors::SharedEngine;
use crate::checkpoint::{CheckpointError, CopyRange};
use crate::cluster::documents::{self, CopyInsert, IndexRange, ReadSize};
use crate::cluster::{ownership, Cluster, Side};

/// Times a copy insert that failed with a transient error is sent again before its range
/// fails (and is restarted from its checkpoint by the supervisor).
const INSERT_RETRIES: u32 = 3;
/// Pause before the first resend of an insert; doubled for each further one.
const INSERT_RETRY_PAUSE: Duration = Duration::from_millis(200);

/// One range for a shard's copier; answered when the range is copied.
#[derive(Message)]
#[rtype(result = "Result<(), CopyError>")]
pub struct CopyRanges {
    pub range: CopyRange,
    /// The collection's UUID when planned (the copy follows a renamed collection by it).
    pub uuid: Option<bson::Binary>,
}

/// The copier of one source shard.
pub struct Copier {
    shard: String,
    engine: SharedEngine,
    paused: watch::Receiver<bool>,
    /// Ranges of this shard copied at a time.
    ranges: Arc<Semaphore>,
    /// Inserts in flight over every copier (each range also reads its next batch meanwhile).
    inserts: Arc<Semaphore>,
    /// The workers' generation this copier belongs to: it stops once a restart superseded it.
    generation: u64,
    /// The destination without the driver's write retries, for the copy inserts (Ferry
    /// resends them itself, and counts each resend); connected on the first insert.
    inserts_to: Arc<OnceCell<Cluster>>,
}

impl Copier {
    /// One copier per source shard (one for a replica set, named `""`), sharing the
    /// insert budget. Started by the supervisor.
    pub fn per_shard(
        engine: &SharedEngine,
        paused: &watch::Receiver<bool>,
    ) -> Vec<(String, Addr<Copier>)> {
        let shards: Vec<String> = match &engine.source_topology {
            crate::cluster::topology::TopologyKind::Sharded { shards } if !shards.is_empty() => {
                shards.iter().map(|s| s.id.clone()).collect()
            }
            _ => vec![String::new()],
        };
        let inserts = Arc::new(Semaphore::new(engine.config.copy.insert_workers.max(1)));
        let per_copier = (engine.config.copy.parallel_collections
            * engine.config.copy.parallel_ranges_per_collection)
            .max(1);
        let generation = engine.generation.current();
        let inserts_to = Arc::new(OnceCell::new());
        shards
            .into_iter()
            .map(|shard| {
                let copier = Copier {
                    shard: shard.clone(),
                    engine: engine.clone(),
                    paused: paused.clone(),
                    ranges: Arc::new(Semaphore::new(per_copier)),
                    inserts: inserts.clone(),
                    generation,
                    inserts_to: inserts_to.clone(),
                };
                (shard, copier.start())
            })
            .collect()
    }
}

impl Actor for Copier {
    type Context = Context<Self>;
    fn started(&mut self, _: &mut Self::Context) {
        // Each message is handed to its own future at once (waiting there for one of the
        // shard's range slots), so the mailbox's bound only paces the planner's sending.
        tracing::debug!(shard = %self.shard, "copier started");
    }
}

impl Handler<CopyRanges> for Copier {
    type Result = ResponseFuture<Result<(), CopyError>>;
    fn handle(&mut self, msg: CopyRanges, _: &mut Self::Context) -> Self::Result {
        let engine = self.engine.clone();
        let paused = self.paused.clone();
        let ranges = self.ranges.clone();
        let inserts = self.inserts.clone();
        let generation = self.generation;
        let inserts_to = self.inserts_to.clone();
        let span = tracing::info_span!(
            "copier",
            shard = %self.shard,
            ns = %msg.range.ns,
            range = %msg.range.id
        );
        Box::pin(
            async move {
                let _turn = ranges
                    .acquire_owned()
                    .await
                    .map_err(|_| CopyError::Stopped)?;
                if engine.generation.current() != generation {
                    return Err(CopyError::Stopped);
                }
                let connection = engine.config.destination.connection();
                let destination = inserts_to
                    .get_or_try_init(|| {
                        Cluster::connect_without_write_retries(Side::Destination, &connection)
                    })
                    .await?
                    .clone();
                let range = Range {
                    range: msg.range,
                    uuid: msg.uuid,
                    generation,
                    destination,
                };
                copy_range(engine, range, paused, inserts).await
            }
            .instrument(span),
        )
    }
}

fn raw_id(doc: &RawDocumentBuf) -> Option<Bson> {
    let v = doc.get("_id").ok()??;
    Bson::try_from(v.to_raw_bson()).ok()
}

/// Copies one range from its checkpoint on, one batch at a time, with one insert in
/// flight while the next batch is read (and at most `copy.insert_workers` inserts in
/// flight over all ranges).
///
/// The source is read under the collection's current name (found by its planned UUID)
/// and written under the planned name: a collection renamed since the plan is copied
/// where the stream's replayed rename will find it. A collection gone from its database
/// (dropped, or renamed into another database, which the server carries out as a new
/// collection filled by inserts) has nothing left to copy here; its events rebuild it.
async fn copy_range(
    engine: SharedEngine,
    range: Range,
    mut paused: watch::Receiver<bool>,
    inserts: Arc<Semaphore>,
) -> Result<(), CopyError> {
    let Range {
        mut range,
        uuid,
        generation,
        destination,
    } = range;
    let (db, coll) = range
        .ns
        .split_once('.')
        .map(|(d, c)| (d.to_string(), c.to_string()))
        .unwrap_or_default();
    let source_coll = match &uuid {
        None => coll.clone(),
        Some(uuid) => match engine.source.collection_name_by_uuid(&db, uuid).await? {
            Some(name) => name,
            None => {
                tracing::info!(ns = %range.ns, "collection gone from the source since the plan; its change events carry what happened to it");
                range.done = true;
                engine.checkpoints.save_range(&range).await?;
                return Ok(());
            }
        },
    };
    if source_coll != coll {
        tracing::info!(ns = %range.ns, now = %source_coll, "collection renamed on the source since the plan; copying it from its new name");
    }
    let (bounds, resuming) = match range.key.clone() {
        // A shard-key range: bounds are shard-key documents, read on the shard key
        // index. Documents with one key value are in no particular order there, so an
        // unfinished range starts again from `min` (what is there already is recognised
        // as such on insert).
        Some(key) => (
            IndexRange {
                index: key,
                min: match &range.min {
                    Some(Bson::Document(min)) => Some(min.clone()),
                    _ => None,
                },
                max: match &range.max {
                    Some(Bson::Document(max)) => Some(max.clone()),
                    _ => None,
                },
            },
            None,
        ),
        None => {
            let start = range.last_id.clone().or_else(|| range.min.clone());
            (
                IndexRange::ids(start.as_ref(), range.max.as_ref()),
                range.last_id.clone(),
            )
        }
    };
    let shard_key = range.key.clone();
    let batch_docs = engine.config.copy.batch_max_documents.max(1);
    let batch_bytes = engine.config.copy.batch_max_bytes.max(1) as usize;
    let size = ReadSize {
        batch: Some(batch_docs.min(10_000) as u32),
        limit: None,
    };
    let mut cursor = documents::read_index_range(&engine.source, &db, &source_coll, &bounds, size)
        .await
        .map_err(CopyError::Documents)?;
    engine.progress.namespace_mut(&range.ns).status = "copying".into();
    let mut batch: Vec<RawDocumentBuf> = Vec::with_capacity(batch_docs);
    let mut bytes = 0usize;
    let mut in_flight: Option<tokio::task::JoinHandle<Result<InsertedBatch, CopyError>>> = None;
    loop {
        let next = cursor.next().await.map_err(CopyError::Documents)?;
        let finished = next.is_none();
        if let Some(doc) = next {
            if resuming.is_some()
                && batch.is_empty()
                && in_flight.is_none()
                && raw_id(&doc) == resuming
            {
                continue;
            }
            bytes += doc.as_bytes().len();
            batch.push(doc);
        }
        if !batch.is_empty() && (finished || batch.len() >= batch_docs || bytes >= batch_bytes) {
            if let Some(previous) = in_flight.take() {
                let done = previous.await.map_err(|_| CopyError::Stopped)??;
                record_batch(&engine, &mut range, done).await?;
            }
            wait_unpaused(&mut paused).await?;
            if engine.generation.current() != generation {
                return Err(CopyError::Stopped);
            }
            let docs = std::mem::take(&mut batch);
            let n_bytes = std::mem::take(&mut bytes);
            let permit = inserts
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| CopyError::Stopped)?;
            let insert = insert_batch(
                engine.clone(),
                Target {
                    db: db.clone(),
                    coll: coll.clone(),
                    source_coll: source_coll.clone(),
                    shard_key: shard_key.clone(),
                    destination: destination.clone(),
                },
                docs,
                n_bytes,
                generation,
            );
            // The insert runs on another thread: it keeps the range's span. It is a task
            // of its own, so it runs to its end even when this range is stopped meanwhile
            // (see `insert_batch`).
            in_flight = Some(tokio::spawn(
                async move {
                    let done = insert.await;
                    drop(permit);
                    done
                }
                .instrument(tracing::Span::current()),
            ));
        }
        if finished {
            break;
        }
    }
    if let Some(previous) = in_flight.take() {
        let done = previous.await.map_err(|_| CopyError::Stopped)??;
        record_batch(&engine, &mut range, done).await?;
    }
    range.done = true;
    engine.checkpoints.save_range(&range).await?;
    Ok(())
}

/// One range to copy, as its copier hands it over.
struct Range {
    range: CopyRange,
    /// The collection's UUID when planned (the copy follows a renamed collection by it).
    uuid: Option<bson::Binary>,
    /// The worker generation of the copier.
    generation: u64,
    /// Where the inserts go (see [`Copier::inserts_to`]).
    destination: Cluster,
}

struct InsertedBatch {
    last_id: Option<Bson>,
    documents: u64,
    bytes: u64,
}

/// Where one batch goes, and how to tell a document that is there already from another
/// document with its `_id`.
struct Target {
    db: String,
    coll: String,
    /// The collection's current name on the source.
    source_coll: String,
    /// The source's shard key when the batch is of a shard-key range.
    shard_key: Option<Document>,
    /// The destination, without the driver's write retries.
    destination: Cluster,
}

/// Inserts one batch, unless the worker generation of the range is superseded.
///
/// The insert is registered as in flight under the range's generation right before it is
/// sent, and stays so until the driver returns: a restart after a failure waits for it
/// (see [`crate::actors::generation`]), so an old version of a document can never land
/// after the new attempt's writes.
async fn insert_batch(
    engine: SharedEngine,
    target: Target,
    docs: Vec<RawDocumentBuf>,
    bytes: usize,
    generation: u64,
) -> Result<InsertedBatch, CopyError> {
    let started = Instant::now();
    let last_id = docs.last().and_then(raw_id);
    let documents = docs.len() as u64;
    let ns = format!("{}.{}", target.db, target.coll);
    // A shard-key range's duplicates are looked at (see `refuse_repeated_ids`).
    let ids: Vec<Option<Bson>> = match target.shard_key {
        Some(_) => docs.iter().map(raw_id).collect(),
        None => Vec::new(),
    };
    let mut resends = 0;
    loop {
        // No destination write once this process may not hold the lease.
        engine
            .checkpoints
            .fence()
            .check()
            .map_err(CheckpointError::from)?;
        let Some(in_flight) = engine.generation.begin_write(generation) else {
            return Err(CopyError::Stopped);
        };
        let sent =
            documents::insert_copy_batch(&target.destination, &target.db, &target.coll, &docs)
                .await;
        drop(in_flight);
        match sent {
            Ok(CopyInsert::Inserted) => break,
            Ok(CopyInsert::Duplicates(positions)) => {
                if let Some(key) = &target.shard_key {
                    let repeated: Vec<Bson> = positions
                        .into_iter()
                        .filter_map(|i| ids.get(i).cloned().flatten())
                        .collect();
                    refuse_repeated_ids(&engine, &target, &ns, key, repeated).await?;
                }
                break;
            }
            // Sending the batch again is harmless: what landed the first time is
            // recognised as there already (duplicates).
            Err(e) if resends < INSERT_RETRIES && e.is_transient() => {
                resends += 1;
                engine.progress.retries.fetch_add(1, Ordering::Relaxed);
                crate::metrics::record_error("copier");
                crate::metrics::record_retry("copier");
                tracing::warn!(ns = %ns, resend = resends, error = %crate::cluster::describe_error(&e), "copy insert failed; sending the batch again");
                tokio::time::sleep(INSERT_RETRY_PAUSE * 2u32.pow(resends - 1)).await;
            }
            Err(e) => return Err(CopyError::Documents(e)),
        }
    }
    crate::metrics::record_batch("copy", started.elapsed().as_secs_f64());
    Ok(InsertedBatch {
        last_id,
        documents,
        bytes: bytes as u64,
    })
}

/// A duplicate `_id` while copying a shard-key range is either the same document again
/// (a range started again after a restart, or inserted by a change already applied) or
/// a different document with the same `_id` on another shard, which a collection
/// sharded on another key allows. The source tells them apart: the router holds two
/// documents with that `_id` only in the second case, and then the copy fails naming
/// them instead of keeping one and losing the other.
async fn refuse_repeated_ids(
    engine: &SharedEngine,
    target: &Target,
    ns: &str,
    key: &Document,
    ids: Vec<Bson>,
) -> Result<(), CopyError> {
    if ids.is_empty() {
        return Ok(());
    }
    let repeated =
        ownership::repeated_ids(&engine.source, &target.db, &target.source_coll, ids).await?;
    let Some((id, n)) = repeated.into_iter().next() else {
        return Ok(());
    };
    let destination = if engine.destination_topology.is_sharded() {
        "the destination collection (not sharded on that key)"
    } else {
        "a replica set destination"
    };
    Err(CopyError::DuplicateId(format!(
        "source: {ns} holds {n} different documents with _id {id} on different shards (it is sharded on {key}, so _id is unique only per shard), and {destination} can hold only one: give each of them a distinct _id on the source and run `ferry run` again (the failed run resumes), or exclude {ns} with [filter] exclude_namespaces and start over with destination.clear_destination = true"
    )))
}

async fn record_batch(
    engine: &SharedEngine,
    range: &mut CopyRange,
    done: InsertedBatch,
) -> Result<(), CopyError> {
    range.last_id = done.last_id.or(range.last_id.take());
    range.documents += done.documents;
    range.bytes += done.bytes;
    engine.checkpoints.save_range(range).await?;
    let p = &engine.progress;
    p.documents_copied
        .fetch_add(done.documents, Ordering::Relaxed);
    p.bytes_copied.fetch_add(done.bytes, Ordering::Relaxed);
    {
        let mut ns = p.namespace_mut(&range.ns);
        ns.documents_copied += done.documents;
        ns.bytes_copied += done.bytes;
    }
    crate::metrics::record_copy(&range.ns, done.documents, done.bytes);
    Ok(())
}
