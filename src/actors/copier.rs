//! Copier: plans the copy (namespaces, options, indexes, `_id` ranges), prepares the
//! destination, then copies every range in batches of unordered bulk inserts. Each
//! acknowledged batch moves the range's checkpoint, so a restart neither re-copies a
//! finished range nor skips an unfinished one.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bson::{doc, Bson, Document, RawDocumentBuf, Timestamp};
use futures_util::{StreamExt, TryStreamExt};
use tokio::sync::watch;

use super::applier::relaxed_index;
use super::{ActorFailure, SharedEngine};
use crate::checkpoint::{CheckpointError, CopyRange, PlannedNamespace};
use crate::cluster::{error_code, ClusterError};

/// Sample size per wanted range when choosing split points.
const SAMPLES_PER_RANGE: u64 = 20;

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("{side}: {action} on {ns} failed")]
    Driver {
        side: crate::cluster::Side,
        action: &'static str,
        ns: String,
        #[source]
        source: mongodb::error::Error,
    },
    #[error("stopped")]
    Stopped,
    #[error("source: the change stream history since the start time is gone (the oplog rolled over); the migration must start over: drop the destination's __ferry database and run again")]
    HistoryLost(#[source] mongodb::error::Error),
    /// Waited too long on the source; planning again may pass.
    #[error("{0}")]
    Stalled(String),
    #[error("{0}")]
    Unsupported(String),
}

impl CopyError {
    pub fn is_transient(&self) -> bool {
        match self {
            CopyError::Cluster(e) => e.is_transient(),
            CopyError::Checkpoint(e) => e.is_transient(),
            // A collection renamed or dropped under an open cursor (175 QueryPlanKilled,
            // 26 NamespaceNotFound): the range starts again from its checkpoint and
            // finds the collection by UUID.
            CopyError::Driver { source, .. } => {
                crate::cluster::is_transient(source)
                    || matches!(crate::cluster::error_code(source), Some(175 | 26))
            }
            CopyError::Stalled(_) => true,
            CopyError::Stopped | CopyError::Unsupported(_) | CopyError::HistoryLost(_) => false,
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

/// One copier per source shard (a replica set is one shard).
pub struct Copier {
    engine: SharedEngine,
    supervisor: Recipient<CopyOutcome>,
    paused: watch::Receiver<bool>,
}

impl Copier {
    pub fn new(
        engine: SharedEngine,
        supervisor: Recipient<CopyOutcome>,
        paused: watch::Receiver<bool>,
    ) -> Copier {
        Copier {
            engine,
            supervisor,
            paused,
        }
    }
}

impl Actor for Copier {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Self::Context) {
        let engine = self.engine.clone();
        let paused = self.paused.clone();
        ctx.spawn(
            async move { run_copy(engine, paused).await }
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
pub async fn run_copy(
    engine: SharedEngine,
    mut paused: watch::Receiver<bool>,
) -> Result<CopySummary, CopyError> {
    let (plan, ranges) = engine.checkpoints.load_plan().await?;
    let (plan, ranges) = if plan.is_empty() && ranges.is_empty() {
        let (mut plan, mut ranges) = make_plan(&engine).await?;
        let start = engine
            .checkpoints
            .load_state()
            .await?
            .and_then(|s| s.start_ts);
        if let Some(start) = start {
            let renames = renames_since(&engine, start).await?;
            name_as_at_start(&mut plan, &mut ranges, &renames);
        }
        engine.checkpoints.save_plan(&plan, &ranges).await?;
        (plan, ranges)
    } else {
        (plan, ranges)
    };
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
    tracing::info!(namespaces = plan.len(), ranges_left = todo.len(), "copying");
    let concurrency = (engine.config.copy.parallel_collections
        * engine.config.copy.parallel_ranges_per_collection)
        .max(1);
    wait_unpaused(&mut paused).await?;
    // Inserts in flight across all ranges (each range also reads its next batch meanwhile).
    let inserts = std::sync::Arc::new(tokio::sync::Semaphore::new(
        engine.config.copy.insert_workers.max(1),
    ));
    let uuids: std::collections::HashMap<String, bson::Binary> = plan
        .iter()
        .filter_map(|n| Some((n.ns.clone(), n.uuid.clone()?)))
        .collect();
    futures_util::stream::iter(todo.into_iter().map(|r| {
        let engine = engine.clone();
        let paused = paused.clone();
        let inserts = inserts.clone();
        let uuid = uuids.get(&r.ns).cloned();
        async move { copy_range(engine, r, uuid, paused, inserts).await }
    }))
    .buffer_unordered(concurrency)
    .try_collect::<Vec<()>>()
    .await?;
    for ns in &plan {
        if !ns.is_view {
            progress.namespace_mut(&ns.ns).status = "copied".into();
        }
    }
    Ok(summary)
}

fn is_system_collection(name: &str) -> bool {
    name.starts_with("system.")
}

/// Lists what to migrate and splits each collection into `_id` ranges.
async fn make_plan(
    engine: &SharedEngine,
) -> Result<(Vec<PlannedNamespace>, Vec<CopyRange>), CopyError> {
    let source = &engine.source;
    let mut plan = Vec::new();
    let mut ranges = Vec::new();
    for db in source.database_names(&engine.filter).await? {
        for spec in source.collection_specs(&db).await? {
            let Ok(name) = spec.get_str("name") else {
                continue;
            };
            if is_system_collection(name) {
                tracing::info!(ns = %format!("{db}.{name}"), "skipping system collection");
                continue;
            }
            if !engine.filter.allows(&db, name) {
                continue;
            }
            let kind = spec.get_str("type").unwrap_or("collection");
            if kind == "timeseries" {
                // The preflight refuses time-series collections in scope; one created
                // since is refused here rather than left out.
                return Err(CopyError::Unsupported(format!(
                    "{db}.{name} is a time-series collection, which Ferry cannot keep in sync: exclude it with [filter] exclude_namespaces and move it separately"
                )));
            }
            let is_view = kind == "view";
            let options = spec.get_document("options").cloned().unwrap_or_default();
            let ns = format!("{db}.{name}");
            let (indexes, (count, size)) = if is_view {
                (Vec::new(), (0, 0))
            } else {
                (
                    source.index_specs(&db, name).await?,
                    source.collection_size(&db, name).await?,
                )
            };
            if !is_view {
                for (index, (min, max)) in split_points(engine, &db, name, count)
                    .await?
                    .into_iter()
                    .enumerate()
                {
                    ranges.push(CopyRange {
                        id: format!("{ns}#{index}"),
                        ns: ns.clone(),
                        index: index as u32,
                        min,
                        max,
                        done: false,
                        last_id: None,
                        documents: 0,
                        bytes: 0,
                    });
                }
            }
            let uuid = match spec.get_document("info").map(|i| i.get("uuid")) {
                Ok(Some(Bson::Binary(b))) => Some(b.clone()),
                _ => None,
            };
            plan.push(PlannedNamespace {
                uuid,
                ns,
                db: db.clone(),
                coll: name.to_string(),
                is_view,
                options,
                indexes,
                documents_estimated: count,
                bytes_estimated: size,
            });
        }
    }
    Ok((plan, ranges))
}

/// How long the plan waits for the source's change stream to reach the time the plan
/// was made (moments on a healthy deployment; longer means the stream is stuck, and the
/// copy is retried from the start of planning).
const RENAMES_WAIT: Duration = Duration::from_secs(120);

/// The rename events of the source's change stream from `start` until after the plan
/// listed the collections, oldest first.
async fn renames_since(
    engine: &SharedEngine,
    start: Timestamp,
) -> Result<Vec<Document>, CopyError> {
    let source = &engine.source;
    let failed = |source| {
        if super::tailer::is_history_lost(&source) {
            return CopyError::HistoryLost(source);
        }
        CopyError::Driver {
            side: crate::cluster::Side::Source,
            action: "read the renames since the start time",
            ns: "every namespace".into(),
            source,
        }
    };
    let until = source.cluster_time().await?;
    let mut stream = source
        .client
        .watch()
        .pipeline([doc! {"$match": {"operationType": "rename"}}])
        .show_expanded_events(true)
        .start_at_operation_time(start)
        .max_await_time(Duration::from_millis(500))
        .await
        .map_err(failed)?
        .with_type::<Document>();
    let order = |ts: Timestamp| (ts.time, ts.increment);
    let deadline = Instant::now() + RENAMES_WAIT;
    let mut renames = Vec::new();
    loop {
        if let Some(event) = stream.next_if_any().await.map_err(failed)? {
            if event
                .get_timestamp("clusterTime")
                .is_ok_and(|ts| order(ts) > order(until))
            {
                break;
            }
            renames.push(event);
            continue;
        }
        let reached = stream
            .resume_token()
            .and_then(|t| match bson::to_bson(&t) {
                Ok(Bson::Document(d)) => super::tailer::token_timestamp(&d),
                _ => None,
            })
            .is_some_and(|ts| order(ts) >= order(until));
        if reached {
            break;
        }
        if Instant::now() >= deadline {
            return Err(CopyError::Stalled(format!(
                "the source's change stream did not reach the copy plan's time ({until:?}) within {}s; the copy is planned again (if this repeats, check that the source's majority commit point advances: a lagging secondary holds it back)",
                RENAMES_WAIT.as_secs()
            )));
        }
        // An idle deployment (or shard) moves its stream on with a no-op, as the tailer's
        // idle tick does.
        source.append_noop("ferry copy plan").await?;
    }
    Ok(renames)
}

/// Names each planned collection, and its ranges, as the collection was named at the
/// start time, where the change stream's first events find it: the copy lands under that
/// name and the replayed renames move it. Planned under a newer name, a collection renamed
/// between the start time and the listing was overwritten by the replayed rename with
/// the little the replayed writes under its old name had put there.
///
/// `renames` (oldest first) are walked back: each moves the collection with the event's
/// UUID from the event's target back to its source name. A rename into another database
/// (a new collection with its own UUID) matches none. A collection found under a name
/// another one had at the start time was created since: the stream carries all of it, so
/// it leaves the plan.
fn name_as_at_start(
    plan: &mut Vec<PlannedNamespace>,
    ranges: &mut Vec<CopyRange>,
    renames: &[Document],
) {
    for event in renames.iter().rev() {
        let Some(Bson::Binary(uuid)) = event.get("collectionUUID") else {
            continue;
        };
        let name = |field: &str| {
            let ns = event.get_document(field).ok()?;
            Some((ns.get_str("db").ok()?, ns.get_str("coll").ok()?))
        };
        let (Some((db, from)), Some((to_db, to))) = (name("ns"), name("to")) else {
            continue;
        };
        if db != to_db {
            continue;
        }
        let Some(moved) = plan
            .iter()
            .position(|p| p.uuid.as_ref() == Some(uuid) && p.db == db && p.coll == to)
        else {
            continue;
        };
        let (old_ns, new_ns) = (plan[moved].ns.clone(), format!("{db}.{from}"));
        if let Some(created) = plan.iter().position(|p| p.ns == new_ns) {
            tracing::info!(ns = %new_ns, "collection created since the start time; its change events carry all of it");
            plan.remove(created);
            ranges.retain(|r| r.ns != new_ns);
        }
        tracing::info!(ns = %old_ns, at_start = %new_ns, "collection renamed since the start time; copying it under its name then");
        for p in plan.iter_mut().filter(|p| p.ns == old_ns) {
            p.coll = from.to_string();
            p.ns = new_ns.clone();
        }
        for r in ranges.iter_mut().filter(|r| r.ns == old_ns) {
            r.ns = new_ns.clone();
            r.id = format!("{new_ns}#{}", r.index);
        }
    }
}

/// Range bounds in `_id` index order, from a sorted sample of `_id`s.
async fn split_points(
    engine: &SharedEngine,
    db: &str,
    coll: &str,
    count: u64,
) -> Result<Vec<(Option<Bson>, Option<Bson>)>, CopyError> {
    let wanted = engine.config.copy.parallel_ranges_per_collection.max(1) as u64;
    let batch = engine.config.copy.batch_max_documents.max(1) as u64;
    if wanted == 1 || count < 2 * batch {
        return Ok(vec![(None, None)]);
    }
    let wanted = wanted.min(count / batch).max(1);
    let sample_size = (wanted * SAMPLES_PER_RANGE).min(count) as i64;
    let sample = engine
        .source
        .cursor(
            db,
            doc! {"aggregate": coll, "pipeline": [{"$sample": {"size": sample_size}}, {"$project": {"_id": 1}}, {"$sort": {"_id": 1}}], "cursor": {}},
        )
        .await?;
    let ids: Vec<Bson> = sample
        .into_iter()
        .filter_map(|d| d.get("_id").cloned())
        .collect();
    if ids.is_empty() {
        return Ok(vec![(None, None)]);
    }
    let mut bounds: Vec<Bson> = Vec::new();
    for i in 1..wanted {
        let b = ids[(i as usize * ids.len()) / wanted as usize].clone();
        if bounds.last() != Some(&b) {
            bounds.push(b);
        }
    }
    let mut out = Vec::new();
    let mut lo = None;
    for b in bounds {
        out.push((lo, Some(b.clone())));
        lo = Some(b);
    }
    out.push((lo, None));
    Ok(out)
}

/// Creates collections (with their options), relaxed indexes, then views. Idempotent.
async fn prepare_destination(
    engine: &SharedEngine,
    plan: &[PlannedNamespace],
) -> Result<CopySummary, CopyError> {
    let dest = &engine.destination;
    let mut summary = CopySummary::default();
    let allow = |r: Result<Document, ClusterError>, codes: &[i32]| match r {
        Ok(_) => Ok(()),
        Err(e) if e.code().is_some_and(|c| codes.contains(&c)) => Ok(()),
        Err(e) => Err(e),
    };
    for ns in plan.iter().filter(|n| !n.is_view) {
        let mut cmd = doc! {"create": &ns.coll};
        cmd.extend(ns.options.clone());
        allow(dest.run(&ns.db, cmd).await, &[48])?;
        let indexes: Vec<Bson> = ns
            .indexes
            .iter()
            .filter(|i| i.get_str("name") != Ok("_id_"))
            .map(|i| Bson::Document(relaxed_index(i)))
            .collect();
        summary.indexes += ns.indexes.len() as u64;
        if !indexes.is_empty() {
            allow(
                dest.run(&ns.db, doc! {"createIndexes": &ns.coll, "indexes": indexes})
                    .await,
                &[85, 86],
            )?;
        }
        summary.collections += 1;
    }
    for ns in plan.iter().filter(|n| n.is_view) {
        let mut cmd = doc! {"create": &ns.coll};
        cmd.extend(ns.options.clone());
        allow(dest.run(&ns.db, cmd).await, &[48])?;
        summary.views += 1;
    }
    Ok(summary)
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
    mut range: CopyRange,
    uuid: Option<bson::Binary>,
    mut paused: watch::Receiver<bool>,
    inserts: std::sync::Arc<tokio::sync::Semaphore>,
) -> Result<(), CopyError> {
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
    let source = engine
        .source
        .client
        .database(&db)
        .collection::<RawDocumentBuf>(&source_coll);
    let start = range.last_id.clone().or_else(|| range.min.clone());
    let resuming = range.last_id.clone();
    let mut find = source
        .find(doc! {})
        .hint(mongodb::options::Hint::Keys(doc! {"_id": 1}));
    if let Some(min) = &start {
        find = find.min(doc! {"_id": min.clone()});
    }
    if let Some(max) = &range.max {
        find = find.max(doc! {"_id": max.clone()});
    }
    let batch_docs = engine.config.copy.batch_max_documents.max(1);
    let batch_bytes = engine.config.copy.batch_max_bytes.max(1) as usize;
    let mut cursor = find
        .batch_size(batch_docs.min(10_000) as u32)
        .await
        .map_err(|source| CopyError::Driver {
            side: crate::cluster::Side::Source,
            action: "find",
            ns: range.ns.clone(),
            source,
        })?;
    engine.progress.namespace_mut(&range.ns).status = "copying".into();
    let mut batch: Vec<RawDocumentBuf> = Vec::with_capacity(batch_docs);
    let mut bytes = 0usize;
    let mut in_flight: Option<tokio::task::JoinHandle<Result<InsertedBatch, CopyError>>> = None;
    loop {
        let next = cursor
            .try_next()
            .await
            .map_err(|source| CopyError::Driver {
                side: crate::cluster::Side::Source,
                action: "read",
                ns: range.ns.clone(),
                source,
            })?;
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
            let docs = std::mem::take(&mut batch);
            let n_bytes = std::mem::take(&mut bytes);
            let permit = inserts
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| CopyError::Stopped)?;
            let insert = insert_batch(engine.clone(), db.clone(), coll.clone(), docs, n_bytes);
            in_flight = Some(tokio::spawn(async move {
                let done = insert.await;
                drop(permit);
                done
            }));
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

struct InsertedBatch {
    last_id: Option<Bson>,
    documents: u64,
    bytes: u64,
}

async fn insert_batch(
    engine: SharedEngine,
    db: String,
    coll: String,
    docs: Vec<RawDocumentBuf>,
    bytes: usize,
) -> Result<InsertedBatch, CopyError> {
    // No destination write once this process may not hold the lease.
    engine
        .checkpoints
        .fence()
        .check()
        .map_err(CheckpointError::from)?;
    let started = Instant::now();
    let last_id = docs.last().and_then(raw_id);
    let documents = docs.len() as u64;
    let target = engine
        .destination
        .client
        .database(&db)
        .collection::<RawDocumentBuf>(&coll);
    match target
        .insert_many(docs)
        .ordered(false)
        .bypass_document_validation(true)
        .await
    {
        Ok(_) => {}
        Err(e) if only_duplicates(&e) => {}
        Err(source) => {
            return Err(CopyError::Driver {
                side: crate::cluster::Side::Destination,
                action: "insert",
                ns: format!("{db}.{coll}"),
                source,
            });
        }
    }
    crate::metrics::record_batch("copy", started.elapsed().as_secs_f64());
    Ok(InsertedBatch {
        last_id,
        documents,
        bytes: bytes as u64,
    })
}

/// A batch whose only failures are duplicate keys: those documents are already there
/// (an earlier attempt inserted them), so the batch counts as copied.
fn only_duplicates(e: &mongodb::error::Error) -> bool {
    use mongodb::error::ErrorKind;
    match e.kind.as_ref() {
        ErrorKind::InsertMany(im) => {
            im.write_concern_error.is_none()
                && im
                    .write_errors
                    .as_ref()
                    .is_some_and(|w| w.iter().all(|w| w.code == 11000))
        }
        _ => error_code(e) == Some(11000),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn uuid(n: u8) -> bson::Binary {
        bson::Binary {
            subtype: bson::spec::BinarySubtype::Uuid,
            bytes: vec![n; 16],
        }
    }

    fn planned(coll: &str, n: u8) -> PlannedNamespace {
        PlannedNamespace {
            ns: format!("app.{coll}"),
            db: "app".into(),
            coll: coll.into(),
            is_view: false,
            options: Document::new(),
            indexes: Vec::new(),
            documents_estimated: 0,
            bytes_estimated: 0,
            uuid: Some(uuid(n)),
        }
    }

    fn range(coll: &str) -> CopyRange {
        CopyRange {
            id: format!("app.{coll}#0"),
            ns: format!("app.{coll}"),
            index: 0,
            min: None,
            max: None,
            done: false,
            last_id: None,
            documents: 0,
            bytes: 0,
        }
    }

    fn rename(from: &str, to: &str, n: u8) -> Document {
        let (from_db, from) = from.split_once('.').unwrap();
        let (to_db, to) = to.split_once('.').unwrap();
        doc! {"operationType": "rename", "collectionUUID": uuid(n),
        "ns": {"db": from_db, "coll": from}, "to": {"db": to_db, "coll": to}}
    }

    fn names(plan: &[PlannedNamespace], ranges: &[CopyRange]) -> (Vec<String>, Vec<String>) {
        (
            plan.iter()
                .map(|p| format!("{}={}", p.ns, p.coll))
                .collect(),
            ranges.iter().map(|r| r.id.clone()).collect(),
        )
    }

    /// Renames after the start time are walked back, chains and swaps included; the
    /// copy plan then names each collection as the start time did.
    #[test]
    fn the_plan_names_collections_as_at_the_start_time() {
        // At the start: 1 at a, 2 at b, 3 at c. Since: b -> tmp, a -> b, tmp -> a (a
        // swap), c -> d -> e, and a rename between databases (another UUID: no match).
        let mut plan = vec![planned("b", 1), planned("a", 2), planned("e", 3)];
        let mut ranges = vec![range("b"), range("a"), range("e")];
        let renames = [
            rename("app.b", "app.tmp", 2),
            rename("app.a", "app.b", 1),
            rename("app.tmp", "app.a", 2),
            rename("app.c", "app.d", 3),
            rename("app.d", "app.e", 3),
            rename("app.e", "other.e", 3),
        ];
        name_as_at_start(&mut plan, &mut ranges, &renames);
        assert_eq!(
            names(&plan, &ranges),
            (
                vec!["app.a=a".into(), "app.b=b".into(), "app.c=c".into()],
                vec!["app.a#0".into(), "app.b#0".into(), "app.c#0".into()],
            )
        );
    }

    /// A collection renamed back before the listing keeps its name; one created since
    /// under the old name of a renamed one leaves the plan (its events carry all of it).
    #[test]
    fn a_collection_created_since_under_an_old_name_leaves_the_plan() {
        let mut plan = vec![planned("a", 1), planned("b", 2), planned("c", 3)];
        let mut ranges = vec![range("a"), range("b"), range("c")];
        let renames = [
            rename("app.a", "app.x", 1),
            rename("app.x", "app.a", 1),
            rename("app.c", "app.b", 2),
        ];
        name_as_at_start(&mut plan, &mut ranges, &renames);
        assert_eq!(
            names(&plan, &ranges),
            (
                vec!["app.a=a".into(), "app.c=c".into()],
                vec!["app.a#0".into(), "app.c#0".into()],
            )
        );
    }
}
