//! Baseline verification: keeps the cutover short whatever the data size.
//!
//! Once the destination is in sync, both sides are compared in the background, chunk by
//! chunk of up to [`CHUNK`] documents in `_id` order (the source decides the bounds, the
//! destination is read between the same bounds), while every document that changes on
//! either side from then on is remembered by `_id`: the source's changes as the tailer
//! reads them, the destination's from its own change stream (writes Ferry did not make
//! included). At cutover only the chunks that differed and the changed documents are read
//! again.
//!
//! Why that proves the same as a full comparison: a document that changed on neither
//! side since the baseline began held the same value on each side during its chunk's
//! comparison and at cutover; if the two differ, so did that chunk's digests, and the
//! chunk is read again. Every other document is in the changed set. DDL that moves data
//! (drop, rename, dropDatabase) sends the affected namespaces back to a full comparison,
//! as does a namespace created after the baseline began.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bson::{doc, Bson, Document, RawBsonRef, RawDocument, RawDocumentBuf, Timestamp};
use futures_util::{StreamExt, TryStreamExt};
use parking_lot::Mutex;
use tokio::sync::watch;

use super::digest::Digest;
use crate::actors::SharedEngine;
use crate::cluster::documents::{self, DocumentCursor, IndexRange, ReadSize};
use crate::cluster::streams::{self, token_timestamp, StreamOptions, StreamStart};
use crate::cluster::{Cluster, ClusterError};
use crate::progress::{BaselineState, SharedProgress};

/// Documents per compared chunk.
pub const CHUNK: usize = 1000;
/// How long the cutover waits for the destination's change stream to reach the present.
const CATCH_UP: Duration = Duration::from_secs(30);
/// How long an idle destination change stream waits per getMore.
const MAX_AWAIT: Duration = Duration::from_secs(1);
/// Consecutive failures of the destination change stream before the baseline is given up.
const WATCH_ATTEMPTS: u32 = 10;

/// `_id` bounds of a chunk: `min` inclusive, `max` exclusive, `None` unbounded.
#[derive(Clone, Debug, PartialEq)]
pub struct Chunk {
    pub min: Option<Bson>,
    pub max: Option<Bson>,
}

/// What the cutover reads again in one namespace.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Recheck {
    pub chunks: Vec<Chunk>,
    pub ids: Vec<Bson>,
}

/// The namespaces the cutover may check incrementally; the others are compared in full.
#[derive(Clone, Debug, Default)]
pub struct CutoverPlan {
    pub namespaces: HashMap<String, Recheck>,
    /// Documents compared by the baseline in those namespaces.
    pub baseline_documents: u64,
}

/// A remembered `_id`: its element type, the empty key's terminator, then its value.
type IdKey = Vec<u8>;

fn id_key(id: RawBsonRef<'_>) -> IdKey {
    let mut d = RawDocumentBuf::new();
    d.append_ref("", id);
    // The document's bytes without its length prefix and terminator, in place.
    let mut bytes = d.into_bytes();
    bytes.pop();
    bytes.drain(..4);
    bytes
}

fn id_value(key: &IdKey) -> Option<Bson> {
    let mut bytes = Vec::with_capacity(key.len() + 5);
    bytes.extend_from_slice(&((key.len() + 5) as i32).to_le_bytes());
    bytes.extend_from_slice(key);
    bytes.push(0);
    let doc = RawDocumentBuf::from_bytes(bytes).ok()?;
    let value = doc.get("").ok()??;
    Bson::try_from(value.to_raw_bson()).ok()
}

#[derive(Default)]
struct Tracked {
    /// Generation of the baseline these belong to; 0 while none runs.
    generation: u64,
    /// Source cluster time from which source changes are remembered.
    source_since: Option<Timestamp>,
    /// Compared namespaces and their differing chunks.
    scanned: HashMap<String, Vec<Chunk>>,
    baseline_documents: HashMap<String, u64>,
    changed: HashMap<String, HashSet<IdKey>>,
    /// Namespaces, and whole databases, compared in full at cutover.
    full: HashSet<String>,
    full_databases: HashSet<String>,
    /// A rename happened: its target may be anywhere, so everything is compared in full.
    everything: bool,
    /// Why the baseline cannot be used (the destination's changes are not all known).
    failed: Option<String>,
}

/// The shared record of the running baseline. Cheap when none runs: one atomic load per
/// event.
pub struct Tracker {
    active: AtomicBool,
    max_per_namespace: usize,
    progress: SharedProgress,
    inner: Mutex<Tracked>,
    /// How far the destination's change stream has been read.
    destination_seen: watch::Sender<Option<Timestamp>>,
}

impl Tracker {
    pub fn new(max_per_namespace: u64, progress: SharedProgress) -> Tracker {
        Tracker {
            active: AtomicBool::new(false),
            max_per_namespace: max_per_namespace.max(1) as usize,
            progress,
            inner: Mutex::new(Tracked::default()),
            destination_seen: watch::channel(None).0,
        }
    }

    /// Starts remembering changes made after these cluster times; forgets earlier ones.
    fn begin(&self, source: Timestamp) -> u64 {
        let mut t = self.inner.lock();
        let generation = t.generation + 1;
        *t = Tracked {
            generation,
            source_since: Some(source),
            ..Tracked::default()
        };
        self.destination_seen.send_replace(None);
        self.progress.baseline_changed.store(0, Ordering::Relaxed);
        self.active.store(true, Ordering::Release);
        generation
    }

    /// Stops tracking (the run ends, or the baseline is abandoned).
    pub fn stop(&self) {
        self.active.store(false, Ordering::Release);
        let mut t = self.inner.lock();
        t.generation += 1;
        t.scanned.clear();
        t.changed.clear();
    }

    /// Whether this baseline still counts (not failed, not replaced, not stopped).
    fn is_current(&self, generation: u64) -> bool {
        let t = self.inner.lock();
        t.generation == generation && t.failed.is_none()
    }

    fn fail(&self, generation: u64, reason: String) {
        let mut t = self.inner.lock();
        if t.generation == generation && t.failed.is_none() {
            tracing::warn!(reason = %reason, "baseline verification abandoned; cutover will compare every document");
            t.failed = Some(reason.clone());
            let mut view = self.progress.baseline.write();
            view.state = BaselineState::Failed;
            view.detail = Some(reason);
        }
    }

    /// A source change event read by the tailer.
    pub fn record_source(
        &self,
        op: &str,
        db: &str,
        coll: &str,
        id: Option<RawBsonRef<'_>>,
        ts: Option<Timestamp>,
    ) {
        if !self.active.load(Ordering::Acquire) {
            return;
        }
        let mut t = self.inner.lock();
        let after_start = match (t.source_since, ts) {
            (Some(since), Some(ts)) => (ts.time, ts.increment) >= (since.time, since.increment),
            _ => true,
        };
        if after_start {
            self.record(&mut t, op, db, coll, id);
        }
    }

    fn record(&self, t: &mut Tracked, op: &str, db: &str, coll: &str, id: Option<RawBsonRef<'_>>) {
        match op {
            "insert" | "update" | "replace" | "delete" => {
                if t.everything || t.full_databases.contains(db) {
                    return;
                }
                let ns = format!("{db}.{coll}");
                if t.full.contains(&ns) {
                    return;
                }
                let Some(id) = id else {
                    t.full.insert(ns);
                    return;
                };
                let set = t.changed.entry(ns.clone()).or_default();
                if set.insert(id_key(id)) {
                    self.progress
                        .baseline_changed
                        .fetch_add(1, Ordering::Relaxed);
                    crate::metrics::record_baseline_changed();
                    if set.len() > self.max_per_namespace {
                        tracing::info!(namespace = %ns, limit = self.max_per_namespace, "more changed documents than cutover.recheck_max_documents: this namespace is compared in full at cutover");
                        t.changed.remove(&ns);
                        t.full.insert(ns);
                    }
                }
            }
            "drop" | "dropDatabase" => {
                t.full_databases.insert(db.to_string());
            }
            "rename" => t.everything = true,
            // Index and option changes move no data; definitions are compared anyway.
            _ => {}
        }
    }

    fn scanned(&self, generation: u64, ns: String, differing: Vec<Chunk>, documents: u64) {
        let mut t = self.inner.lock();
        if t.generation != generation {
            return;
        }
        t.baseline_documents.insert(ns.clone(), documents);
        t.scanned.insert(ns, differing);
    }

    /// What the cutover must read again; `None` when it must compare everything.
    /// Waits (bounded) until the destination's changes up to now are known.
    pub async fn plan(&self, destination: &Cluster, sharded: bool) -> Option<CutoverPlan> {
        if !self.active.load(Ordering::Acquire) || self.inner.lock().failed.is_some() {
            return None;
        }
        // Through a router, a time its stream reaches without waiting for an idle
        // destination shard's periodic no-op (the cutover would wait that long).
        let now = if sharded {
            crate::cluster::sharding::stream_time(destination, "ferry cutover verification").await
        } else {
            destination.cluster_time().await
        };
        let now = match now {
            Ok(ts) => ts,
            Err(e) => {
                tracing::warn!(error = %crate::cluster::describe_error(&e), "cannot read the destination's time; comparing every document");
                return None;
            }
        };
        let mut seen = self.destination_seen.subscribe();
        let reached = tokio::time::timeout(
            CATCH_UP,
            seen.wait_for(|s| {
                s.is_some_and(|s| (s.time, s.increment) >= (now.time, now.increment))
            }),
        )
        .await;
        if !matches!(reached, Ok(Ok(_))) {
            tracing::warn!("the destination's change stream did not catch up in time; comparing every document");
            return None;
        }
        let t = self.inner.lock();
        if t.failed.is_some() || t.everything {
            return None;
        }
        let mut plan = CutoverPlan::default();
        for (ns, chunks) in &t.scanned {
            let db = ns.split_once('.').map_or(ns.as_str(), |(d, _)| d);
            if t.full.contains(ns) || t.full_databases.contains(db) {
                continue;
            }
            let ids = t
                .changed
                .get(ns)
                .map(|set| set.iter().filter_map(id_value).collect())
                .unwrap_or_default();
            plan.baseline_documents += t.baseline_documents.get(ns).copied().unwrap_or(0);
            plan.namespaces.insert(
                ns.clone(),
                Recheck {
                    chunks: chunks.clone(),
                    ids,
                },
            );
        }
        Some(plan)
    }
}

/// Runs the baseline: the comparison of every namespace, and the destination's change
/// stream (until cancelled). Both start from the cluster times read first. Returns only
/// when the baseline failed (the caller may start a new one later).
pub async fn run(engine: SharedEngine, paused: watch::Receiver<bool>) {
    // Changes are tracked from these times on, and the comparison reads at majority: it
    // must not start before each side's majority commit point has reached its time, or a
    // write between the two (on a replica set whose majority lags) would be in neither
    // the comparison nor the tracked changes.
    let times = async {
        let source = engine.source.cluster_time().await?;
        let destination = engine.destination.cluster_time().await?;
        engine.source.wait_majority_committed(source).await?;
        engine
            .destination
            .wait_majority_committed(destination)
            .await?;
        Ok::<_, ClusterError>((source, destination))
    };
    let (source_since, destination_since) = match times.await {
        Ok(t) => t,
        Err(e) => {
            let mut view = engine.progress.baseline.write();
            view.state = BaselineState::Failed;
            view.detail = Some(crate::cluster::describe_error(&e));
            return;
        }
    };
    let generation = engine.baseline.begin(source_since);
    {
        let mut view = engine.progress.baseline.write();
        *view = crate::progress::BaselineView {
            state: BaselineState::Running,
            ..Default::default()
        };
    }
    tracing::info!("baseline verification started: comparing both sides in the background");
    let compare = async {
        match compare_all(&engine, generation, paused).await {
            Ok(documents) => {
                let mut view = engine.progress.baseline.write();
                if view.state == BaselineState::Running {
                    view.state = BaselineState::Done;
                    tracing::info!(
                        documents,
                        chunks_differing = view.chunks_differing,
                        "baseline verification done: cutover re-reads only what changes from now on"
                    );
                }
            }
            Err(e) => engine
                .baseline
                .fail(generation, crate::cluster::describe_error(&e)),
        }
    };
    let watch = watch_destination(&engine, generation, destination_since);
    futures_util::future::join(compare, watch).await;
}

/// Compares every namespace, `copy.parallel_collections` at a time; the documents
/// compared.
async fn compare_all(
    engine: &SharedEngine,
    generation: u64,
    paused: watch::Receiver<bool>,
) -> Result<u64, ClusterError> {
    let mut namespaces = Vec::new();
    for namespace in crate::cluster::namespaces::in_scope(&engine.source, &engine.filter).await? {
        if namespace.is_collection() {
            namespaces.push((namespace.db, namespace.coll));
        }
    }
    let parallel = engine.config.copy.parallel_collections.max(1);
    let mut compared = futures_util::stream::iter(
        namespaces
            .iter()
            .map(|(db, coll)| compare_namespace(engine, generation, db, coll, paused.clone())),
    )
    .buffer_unordered(parallel);
    let mut total = 0;
    while let Some(documents) = compared.try_next().await? {
        total += documents;
    }
    Ok(total)
}

/// Compares one namespace chunk by chunk and records the chunks that still differ.
async fn compare_namespace(
    engine: &SharedEngine,
    generation: u64,
    db: &str,
    name: &str,
    mut paused: watch::Receiver<bool>,
) -> Result<u64, ClusterError> {
    let mut start: Option<Bson> = None;
    let mut differing = Vec::new();
    let mut documents = 0u64;
    loop {
        while *paused.borrow() {
            if paused.changed().await.is_err() {
                return Ok(documents);
            }
        }
        if !engine.baseline.is_current(generation) {
            return Ok(documents);
        }
        let (source, next) = source_chunk(&engine.source, db, name, start.as_ref()).await?;
        let chunk = Chunk {
            min: start.take(),
            max: next,
        };
        let destination = digest_range(&engine.destination, db, name, &chunk).await?;
        documents += source.count;
        if source != destination {
            differing.push(chunk.clone());
        }
        engine.progress.baseline.write().documents_compared += source.count;
        crate::metrics::record_baseline_compared(source.count);
        match chunk.max {
            Some(next) => start = Some(next),
            None => break,
        }
    }
    // A chunk usually differs because changes to it were still on their way to the
    // destination: compare it once more now that they have had time to arrive. Any
    // comparison after the baseline began is as good as the first.
    let mut still = Vec::new();
    for chunk in differing {
        let (a, b) = futures_util::try_join!(
            digest_range(&engine.source, db, name, &chunk),
            digest_range(&engine.destination, db, name, &chunk)
        )?;
        if a != b {
            still.push(chunk);
        }
    }
    engine.progress.baseline.write().chunks_differing += still.len() as u64;
    engine
        .baseline
        .scanned(generation, format!("{db}.{name}"), still, documents);
    Ok(documents)
}

/// A failed read says which comparison it was for.
fn compare_error(db: &str, coll: &str) -> impl Fn(ClusterError) -> ClusterError {
    let action = format!("compare {db}.{coll}");
    move |e| e.during(action.clone())
}

/// Digest of the next chunk from `start` on the source, and the `_id` after it (the
/// chunk's exclusive upper bound), if any.
async fn source_chunk(
    cluster: &Cluster,
    db: &str,
    coll: &str,
    start: Option<&Bson>,
) -> Result<(Digest, Option<Bson>), ClusterError> {
    let err = compare_error(db, coll);
    let size = ReadSize {
        batch: Some(CHUNK as u32 + 1),
        limit: Some(CHUNK as i64 + 1),
    };
    let mut cursor =
        documents::read_index_range(cluster, db, coll, &IndexRange::ids(start, None), size)
            .await
            .map_err(&err)?;
    let mut digest = Digest::default();
    let mut next = None;
    while let Some(d) = cursor.next().await.map_err(&err)? {
        if digest.count as usize == CHUNK {
            next = Some(id_of(&d).ok_or_else(|| {
                ClusterError::failed(
                    cluster.side,
                    format!("compare {db}.{coll}"),
                    "a document without a readable _id",
                )
            })?);
            break;
        }
        digest.add_document(d.as_bytes());
    }
    Ok((digest, next))
}

fn id_of(d: &RawDocument) -> Option<Bson> {
    let id = d.get("_id").ok()??;
    Bson::try_from(id.to_raw_bson()).ok()
}

/// Digest of the documents between a chunk's bounds on one side.
pub async fn digest_range(
    cluster: &Cluster,
    db: &str,
    coll: &str,
    chunk: &Chunk,
) -> Result<Digest, ClusterError> {
    let err = compare_error(db, coll);
    let range = IndexRange::ids(chunk.min.as_ref(), chunk.max.as_ref());
    let size = ReadSize {
        batch: Some(CHUNK as u32),
        limit: None,
    };
    let cursor = documents::read_index_range(cluster, db, coll, &range, size)
        .await
        .map_err(&err)?;
    digest_all(cursor, err).await
}

/// Digest of every document a cursor returns.
async fn digest_all(
    mut cursor: DocumentCursor,
    err: impl Fn(ClusterError) -> ClusterError,
) -> Result<Digest, ClusterError> {
    let mut digest = Digest::default();
    while let Some(d) = cursor.next().await.map_err(&err)? {
        digest.add_document(d.as_bytes());
    }
    Ok(digest)
}

/// Digest of the documents with these `_id`s on one side.
pub async fn digest_ids(
    cluster: &Cluster,
    db: &str,
    coll: &str,
    ids: &[Bson],
) -> Result<Digest, ClusterError> {
    let err = compare_error(db, coll);
    let size = ReadSize {
        batch: Some(CHUNK as u32),
        limit: None,
    };
    let cursor = documents::read_by_ids(cluster, db, coll, ids, size)
        .await
        .map_err(&err)?;
    digest_all(cursor, err).await
}

/// Reads the destination's change stream from the baseline's start and remembers every
/// document written there, until cancelled. A stream that cannot go on fails the
/// baseline (the cutover then compares everything).
async fn watch_destination(engine: &SharedEngine, generation: u64, since: Timestamp) {
    let mut resume: Option<Document> = None;
    let mut failures = 0u32;
    loop {
        let start = match &resume {
            Some(token) => StreamStart::After(token.clone()),
            None => StreamStart::At(since),
        };
        let options = StreamOptions {
            pipeline: vec![
                doc! {"$project": {"operationType": 1, "ns": 1, "documentKey": 1, "clusterTime": 1}},
            ],
            ..StreamOptions::from(start, MAX_AWAIT)
        };
        let error = match streams::watch_deployment(&engine.destination, options).await {
            Ok(mut stream) => loop {
                if !engine.baseline.is_current(generation) {
                    return;
                }
                match stream.next_if_any().await {
                    Ok(event) => {
                        failures = 0;
                        if let Some(event) = event {
                            record_destination(engine, &event);
                        }
                        match stream.resume_token() {
                            Ok(Some(token)) => {
                                if let Some(ts) = token_timestamp(&token) {
                                    engine.baseline.destination_seen.send_replace(Some(ts));
                                }
                                resume = Some(token);
                            }
                            Ok(None) => {}
                            Err(e) => break e,
                        }
                    }
                    Err(e) => break e,
                }
            },
            Err(e) => e,
        };
        failures += 1;
        if !error.is_transient() || failures >= WATCH_ATTEMPTS {
            engine.baseline.fail(
                generation,
                format!(
                    "the destination's change stream stopped: {}",
                    error.server_message()
                ),
            );
            return;
        }
        tracing::warn!(error = %error.server_message(), "destination change stream interrupted; resuming");
        tokio::time::sleep(Duration::from_millis(200 * u64::from(failures))).await;
    }
}

fn record_destination(engine: &SharedEngine, event: &RawDocument) {
    let mut op = "";
    let mut db = "";
    let mut coll = "";
    let mut id = None;
    for (key, value) in event.iter().flatten() {
        match (key, value) {
            ("operationType", RawBsonRef::String(v)) => op = v,
            ("ns", RawBsonRef::Document(ns)) => {
                db = ns.get_str("db").unwrap_or_default();
                coll = ns.get_str("coll").unwrap_or_default();
            }
            ("documentKey", RawBsonRef::Document(k)) => id = k.get("_id").ok().flatten(),
            _ => {}
        }
    }
    let wanted = if op == "dropDatabase" {
        engine.filter.may_allow_database(db)
    } else {
        engine.filter.allows(db, coll)
    };
    if !wanted {
        return;
    }
    let tracker = &engine.baseline;
    let mut t = tracker.inner.lock();
    tracker.record(&mut t, op, db, coll, id);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembered_ids_come_back_with_their_type() {
        for id in [
            Bson::Int32(7),
            Bson::Int64(7),
            Bson::Double(7.5),
            Bson::String("k-1".into()),
            Bson::ObjectId(bson::oid::ObjectId::new()),
            Bson::Document(doc! {"a": 1, "b": [1, "x"]}),
            Bson::Null,
        ] {
            let raw = bson::RawBson::try_from(id.clone()).expect("raw");
            assert_eq!(id_value(&id_key(raw.as_raw_bson_ref())), Some(id));
        }
    }

    #[test]
    fn changes_past_the_limit_send_a_namespace_to_a_full_comparison() {
        let tracker = Tracker::new(2, crate::progress::Progress::new());
        tracker.begin(Timestamp {
            time: 10,
            increment: 0,
        });
        let id = |i: i32| bson::RawBson::Int32(i);
        for i in 0..2 {
            tracker.record_source(
                "update",
                "d",
                "c",
                Some(id(i).as_raw_bson_ref()),
                Some(Timestamp {
                    time: 11,
                    increment: 0,
                }),
            );
        }
        // Before the baseline began: not remembered.
        tracker.record_source(
            "update",
            "d",
            "c",
            Some(id(9).as_raw_bson_ref()),
            Some(Timestamp {
                time: 9,
                increment: 0,
            }),
        );
        {
            let t = tracker.inner.lock();
            assert_eq!(t.changed["d.c"].len(), 2);
            assert!(t.full.is_empty());
        }
        tracker.record_source(
            "delete",
            "d",
            "c",
            Some(id(3).as_raw_bson_ref()),
            Some(Timestamp {
                time: 12,
                increment: 0,
            }),
        );
        let t = tracker.inner.lock();
        assert!(t.full.contains("d.c"));
        assert!(!t.changed.contains_key("d.c"));
    }
}
