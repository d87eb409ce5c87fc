//! Tailer: reads the source's change stream (showExpandedEvents, updateLookup) from the
//! start time or the last checkpoint, routes events to one applier per namespace, applies
//! DDL at a barrier, checkpoints only what every applier has acknowledged, measures lag,
//! writes a no-op on an idle source so lag reaches zero, and drains to the cutover optime.

pub mod split_events;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bson::{doc, Bson, Document, RawDocument, RawDocumentBuf, Timestamp};
use tokio::sync::watch;
use tracing::Instrument;

use self::split_events::{Joining, NextError};
use super::applier::{apply_ddl, is_ddl, Applier, ApplyError, ApplyEvents};
use super::{ActorFailure, SharedEngine};
use crate::checkpoint::CheckpointError;
use crate::cluster::streams::{self, ChangeStream, StreamOptions, StreamStart};
use crate::cluster::ClusterError;

/// How often the source's cluster time is read to compute lag.
const CLUSTER_TIME_INTERVAL: Duration = Duration::from_millis(500);
/// Batches applied at once while behind: the destination always has the next one
/// queued while Ferry reads and routes the one after (per-document order holds: each
/// applier takes its batches in order).
const MAX_FLIGHTS: usize = 3;
/// How long a getMore waits on an idle stream before returning an empty batch.
const MAX_AWAIT: Duration = Duration::from_millis(250);

#[derive(Debug, thiserror::Error)]
pub enum TailError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error("source: change stream failed")]
    Stream(#[source] ClusterError),
    #[error("source: the change stream history needed to resume is gone (the oplog rolled over); the migration must start over: drop the destination's __ferry database and run again")]
    HistoryLost(#[source] ClusterError),
    #[error("no start time: the copy has not recorded one")]
    NoStart,
    #[error("applier stopped")]
    ApplierGone,
    #[error("source: undecodable change event: {0}")]
    Decode(String),
    #[error(transparent)]
    Spool(#[from] crate::spool::SpoolError),
}

impl TailError {
    pub fn is_transient(&self) -> bool {
        match self {
            TailError::Cluster(e) => e.is_transient(),
            TailError::Checkpoint(e) => e.is_transient(),
            TailError::Apply(e) => e.is_transient(),
            TailError::Stream(e) => e.is_transient(),
            TailError::ApplierGone => true,
            _ => false,
        }
    }
}

/// Progress report to the supervisor after each applied batch.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct SyncStatus {
    pub lag_seconds: f64,
    pub applied_ts: Timestamp,
}

/// What the tailer drains to at cutover: applying everything up to `to` (then it reports
/// [`Drained`]), and counting every data event after `writes_stopped_at` as a late write.
/// One cutover attempt may drain twice (to the cutover optime, then, once verified, to
/// the source's optime at completion): its writes stopped at the first target all along.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DrainTarget {
    pub to: Timestamp,
    /// When the operator said the source's writes had stopped (the attempt's cutover
    /// optime).
    pub writes_stopped_at: Timestamp,
}

/// The tailer has applied everything up to this drain target (the cutover optime of one
/// cutover attempt; the supervisor ignores a target that is no longer its own).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Drained(pub Timestamp);

#[derive(Message)]
#[rtype(result = "()")]
pub struct TailerStopped(pub ActorFailure);

/// Where the supervisor reaches the tailer's owner.
#[derive(Clone)]
pub struct TailerPeers {
    pub status: Recipient<SyncStatus>,
    pub drained: Recipient<Drained>,
    pub stopped: Recipient<TailerStopped>,
}

pub struct Tailer {
    engine: SharedEngine,
    peers: TailerPeers,
    paused: watch::Receiver<bool>,
    drain_to: watch::Receiver<Option<DrainTarget>>,
    copy_done: watch::Receiver<bool>,
    /// The worker generation this tailer belongs to (its DDL replays are destination
    /// writes; see [`crate::actors::generation`]).
    generation: u64,
}

impl Tailer {
    pub fn new(
        engine: SharedEngine,
        peers: TailerPeers,
        paused: watch::Receiver<bool>,
        drain_to: watch::Receiver<Option<DrainTarget>>,
        copy_done: watch::Receiver<bool>,
    ) -> Tailer {
        let generation = engine.generation.current();
        Tailer {
            engine,
            peers,
            paused,
            drain_to,
            copy_done,
            generation,
        }
    }
}

impl Actor for Tailer {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Self::Context) {
        let engine = self.engine.clone();
        let peers = self.peers.clone();
        let paused = self.paused.clone();
        let drain_to = self.drain_to.clone();
        let copy_done = self.copy_done.clone();
        let generation = self.generation;
        ctx.spawn(
            async move { tail(engine, peers, paused, drain_to, copy_done, generation).await }
                .instrument(tracing::info_span!("tailer"))
                .into_actor(self)
                .map(|result, act, ctx| {
                    if let Err(e) = result {
                        let transient = e.is_transient();
                        act.peers
                            .stopped
                            .do_send(TailerStopped(ActorFailure::new("tailer", &e, transient)));
                    }
                    ctx.stop();
                }),
        );
    }
}

/// The cluster time of a resume token the tailer recorded (tests read it by this name).
pub use crate::cluster::streams::token_timestamp;

/// A raw document decoded: a (rare) DDL event, or a resume token when a batch is cut.
fn decode_event(event: &RawDocument) -> Result<Document, TailError> {
    Document::try_from(event).map_err(|e| TailError::Decode(e.to_string()))
}

fn ts_after(a: Timestamp, b: Timestamp) -> bool {
    (a.time, a.increment) > (b.time, b.increment)
}

/// One applier per (namespace, partition): events of one document always reach the same
/// applier, so they stay in order, while a busy namespace is applied by several.
struct Routing {
    appliers: HashMap<(String, String, usize), Addr<Applier>>,
}

/// Which applier of its namespace takes an event: a hash of the document's `_id`, with
/// numbers hashed by value, because the server treats int32 1, int64 1 and double 1.0
/// as one `_id` (a document deleted as one type and inserted again as another must not
/// race with itself on two appliers).
fn partition_of_id(id: bson::RawBsonRef<'_>, partitions: usize) -> usize {
    if partitions <= 1 {
        return 0;
    }
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    hash_value(&mut hasher, id);
    (hasher.digest() % partitions as u64) as usize
}

fn hash_value(h: &mut xxhash_rust::xxh3::Xxh3, v: bson::RawBsonRef<'_>) {
    use bson::RawBsonRef as R;
    let number = |h: &mut xxhash_rust::xxh3::Xxh3, f: f64| {
        h.update(b"n");
        // -0.0 == 0.0 as keys, and every NaN is one key.
        let f = if f == 0.0 {
            0.0f64
        } else if f.is_nan() {
            f64::NAN
        } else {
            f
        };
        h.update(&f.to_bits().to_le_bytes());
    };
    match v {
        R::Int32(i) => number(h, i as f64),
        R::Int64(i) => number(h, i as f64),
        R::Double(f) => number(h, f),
        R::Document(d) => {
            h.update(b"d");
            for (k, v) in d.iter().flatten() {
                h.update(k.as_bytes());
                hash_value(h, v);
            }
        }
        R::Array(a) => {
            h.update(b"a");
            for v in a.into_iter().flatten() {
                hash_value(h, v);
            }
        }
        // The common `_id` types, hashed without encoding them again.
        R::String(v) => {
            h.update(b"s");
            h.update(v.as_bytes());
        }
        R::ObjectId(oid) => {
            h.update(b"o");
            h.update(&oid.bytes());
        }
        // Decimal128 by value too: Decimal128("1") is the same `_id` as int32 1. Two
        // equal values parse to the same nearest double, which is all hashing needs.
        R::Decimal128(d) => match d.to_string().parse::<f64>() {
            Ok(f) => number(h, f),
            Err(_) => h.update(&d.bytes()),
        },
        other => {
            let mut d = RawDocumentBuf::new();
            d.append_ref("", other);
            h.update(d.as_bytes());
        }
    }
}

/// Events handed to the appliers and not yet acknowledged.
type Flight = std::pin::Pin<Box<dyn std::future::Future<Output = Result<u64, TailError>>>>;

/// The fields of a change event the tailer routes by, read in one pass.
struct EventView<'a> {
    op: &'a str,
    db: &'a str,
    coll: &'a str,
    /// `documentKey._id`.
    id: Option<bson::RawBsonRef<'a>>,
    ts: Option<Timestamp>,
    /// A rename's target (`to.db`, `to.coll`).
    to: Option<(&'a str, &'a str)>,
}

impl<'a> EventView<'a> {
    fn parse(event: &'a RawDocument) -> EventView<'a> {
        let mut view = EventView {
            op: "",
            db: "",
            coll: "",
            id: None,
            ts: None,
            to: None,
        };
        for (key, value) in event.iter().flatten() {
            match (key, value) {
                ("operationType", bson::RawBsonRef::String(op)) => view.op = op,
                ("clusterTime", bson::RawBsonRef::Timestamp(ts)) => view.ts = Some(ts),
                ("ns", bson::RawBsonRef::Document(ns)) => {
                    view.db = ns.get_str("db").unwrap_or_default();
                    view.coll = ns.get_str("coll").unwrap_or_default();
                }
                ("documentKey", bson::RawBsonRef::Document(k)) => {
                    view.id = k.get("_id").ok().flatten();
                }
                ("to", bson::RawBsonRef::Document(to)) => {
                    view.to = Some((
                        to.get_str("db").unwrap_or_default(),
                        to.get_str("coll").unwrap_or_default(),
                    ));
                }
                _ => {}
            }
        }
        view
    }

    /// Whether the migration wants this event (namespace filter, system collections).
    fn is_wanted(&self, engine: &SharedEngine) -> bool {
        let into_scope = self.to.is_some_and(|(db, coll)| {
            engine.filter.allows(db, coll)
                && !crate::cluster::namespaces::is_system_collection(coll)
        });
        if self.op == "dropDatabase" {
            engine.filter.may_allow_database(self.db)
                && !crate::config::NamespaceFilter::is_never_migrated_db(self.db)
        } else if self.op == "rename" && into_scope {
            // A collection renamed onto a migrated name replaces it, whether or not its
            // old name was migrated: the replay brings the new contents over.
            true
        } else if crate::cluster::namespaces::is_rename_staging(self.coll) {
            // A rename into another database fills a temporary collection whose name no
            // filter lists, then renames it onto the target: its events are taken
            // wherever the database may hold migrated collections, and the rename's
            // replay drops it again when the target is out of scope.
            engine.filter.may_allow_database(self.db)
        } else {
            engine.filter.allows(self.db, self.coll) && !self.coll.starts_with("system.")
        }
    }
}

/// Applier of an event: (database, collection, partition).
type ApplierKey = (String, String, usize);

/// Events waiting to be handed to the appliers, grouped by applier in first-seen order.
#[derive(Default)]
struct Pending {
    groups: Vec<(ApplierKey, Vec<RawDocumentBuf>)>,
    events: usize,
    bytes: usize,
}

impl Pending {
    /// The group of the applier this event goes to (created when new).
    fn slot(&mut self, view: &EventView<'_>, partitions: usize) -> usize {
        let partition = view.id.map_or(0, |id| partition_of_id(id, partitions));
        let found = self
            .groups
            .iter()
            .rposition(|((db, coll, p), _)| *p == partition && db == view.db && coll == view.coll);
        found.unwrap_or_else(|| {
            self.groups.push((
                (view.db.to_string(), view.coll.to_string(), partition),
                Vec::new(),
            ));
            self.groups.len() - 1
        })
    }

    fn push(&mut self, slot: usize, event: RawDocumentBuf) {
        self.events += 1;
        self.bytes += event.as_bytes().len();
        self.groups[slot].1.push(event);
    }

    fn len(&self) -> usize {
        self.events
    }

    fn is_empty(&self) -> bool {
        self.events == 0
    }

    fn take(&mut self) -> Vec<(ApplierKey, Vec<RawDocumentBuf>)> {
        self.events = 0;
        self.bytes = 0;
        std::mem::take(&mut self.groups)
    }
}

/// Hands each namespace's events to its appliers now (mailboxes keep per-document
/// order) and returns the future of their acknowledgements, so the next batch can be
/// read while these are applied.
fn dispatch(engine: &SharedEngine, routing: &mut Routing, pending: &mut Pending) -> Flight {
    if pending.is_empty() {
        return Box::pin(async { Ok(0) });
    }
    let mut requests = Vec::new();
    for (key, events) in pending.take() {
        let name = format!("{}.{}", key.0, key.1);
        let addr = routing
            .appliers
            .entry(key.clone())
            .or_insert_with(|| Applier::new(engine.clone(), key.0.clone(), key.1.clone()).start())
            .clone();
        let n = events.len() as u64;
        // `send` enqueues now; awaiting only collects the reply.
        let request = addr.send(ApplyEvents(events));
        requests.push(async move { (name, n, request.await) });
    }
    let engine = engine.clone();
    Box::pin(async move {
        let mut applied = 0;
        for (name, n, r) in futures_util::future::join_all(requests).await {
            match r {
                Ok(Ok(_)) => {
                    applied += n;
                    engine.progress.namespace_mut(&name).events_applied += n;
                }
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => return Err(TailError::ApplierGone),
            }
        }
        engine
            .progress
            .events_applied
            .fetch_add(applied, Ordering::Relaxed);
        Ok(applied)
    })
}

/// Sends everything pending and waits until every applier has acknowledged it.
async fn flush(
    engine: &SharedEngine,
    routing: &mut Routing,
    pending: &mut Pending,
) -> Result<u64, TailError> {
    dispatch(engine, routing, pending).await
}

fn stream_error(e: ClusterError) -> TailError {
    if e.is_history_lost() {
        TailError::HistoryLost(e)
    } else {
        TailError::Stream(e)
    }
}

/// The `_data` string of a resume token, which orders tokens.
fn token_data(token: &Document) -> Option<&str> {
    token.get_str("_data").ok()
}

/// The spool of this run, as the checkpoint records it: which file, how much of it is
/// durable, and the stream position it reaches.
struct SpoolPlan {
    dir: Option<std::path::PathBuf>,
    /// (file, durable length, stream position) when a usable spool exists.
    durable: Option<(std::path::PathBuf, u64, Document)>,
}

impl SpoolPlan {
    fn load(engine: &SharedEngine, state: &crate::checkpoint::RunState) -> SpoolPlan {
        let dir = engine.config.runtime.spool_dir.clone();
        let recorded = match (&dir, &state.spool_file, &state.spool_token) {
            (Some(dir), Some(file), Some(token)) => Some((dir.join(file), token.clone())),
            _ => None,
        };
        let durable = recorded.and_then(|(path, token)| {
            let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            if len >= state.spool_bytes {
                Some((path, state.spool_bytes, token))
            } else {
                tracing::warn!(path = %path.display(), expected_bytes = state.spool_bytes, found_bytes = len, "the spool file is missing or shorter than recorded; reading those changes from the source again");
                None
            }
        });
        if durable.is_none() && state.spool_file.is_some() && dir.is_none() {
            tracing::warn!(
                "runtime.spool_dir is no longer set; reading spooled changes from the source again"
            );
        }
        SpoolPlan { dir, durable }
    }

    /// Where the stream resumes: after the spool, else after the last applied batch.
    fn stream_from(&self, state: &crate::checkpoint::RunState) -> Option<Document> {
        match &self.durable {
            Some((_, _, token)) => Some(token.clone()),
            None => state.resume_token.clone(),
        }
    }

    /// Replays the spooled events the checkpoint has not applied yet.
    fn replay(&self, state: &crate::checkpoint::RunState) -> Result<Option<Replay>, TailError> {
        let Some((path, len, token)) = &self.durable else {
            return Ok(None);
        };
        Ok(Some(Replay {
            reader: crate::spool::SpoolReader::open(path, *len)?,
            path: path.clone(),
            skip_through: state
                .resume_token
                .as_ref()
                .and_then(token_data)
                .map(str::to_string),
            last_token: None,
            end_token: Some(token.clone()),
        }))
    }
}

/// Spooled events read back in order after the copy.
struct Replay {
    reader: crate::spool::SpoolReader,
    path: std::path::PathBuf,
    /// Events at or before this position were applied before a restart.
    skip_through: Option<String>,
    /// Kept raw: decoded only when a batch is cut.
    last_token: Option<RawDocumentBuf>,
    /// The stream position the spool reaches.
    end_token: Option<Document>,
}

impl Replay {
    fn next_event(&mut self) -> Result<Option<RawDocumentBuf>, TailError> {
        while let Some(event) = self.reader.next_event()? {
            let token = event.get_document("_id").ok();
            let applied = match (
                &self.skip_through,
                token.and_then(|t| t.get_str("_data").ok()),
            ) {
                (Some(done), Some(data)) => data <= done.as_str(),
                _ => false,
            };
            if let Some(t) = token {
                self.last_token = Some(t.to_raw_document_buf());
            }
            if !applied {
                return Ok(Some(event));
            }
        }
        Ok(None)
    }
}

/// While the copy runs: reads the change stream into the spool file (when
/// `runtime.spool_dir` is set) and records its durable length and stream position, so
/// the source's oplog need not hold the whole copy's worth of history. Returns when the
/// copy is done. Without a spool directory it just waits: the stream is read from the
/// start time after the copy.
async fn spool_during_copy(
    engine: &SharedEngine,
    stream: &mut ChangeStream,
    joining: &mut Joining,
    spool: &mut SpoolPlan,
    paused: &mut watch::Receiver<bool>,
    copy_done: &mut watch::Receiver<bool>,
) -> Result<(), TailError> {
    let Some(dir) = spool.dir.clone() else {
        while !*copy_done.borrow() {
            if copy_done.changed().await.is_err() {
                return Ok(());
            }
        }
        return Ok(());
    };
    let (path, keep) = match &spool.durable {
        Some((path, len, _)) => (path.clone(), *len),
        None => {
            let name = format!("ferry-{:016x}.spool", rand::random::<u64>());
            engine
                .checkpoints
                .set_state(
                    doc! {"spool_file": &name, "spool_bytes": 0i64, "spool_token": Bson::Null},
                )
                .await?;
            (dir.join(name), 0)
        }
    };
    let mut writer = crate::spool::SpoolWriter::open(&path, keep)?;
    tracing::info!(path = %path.display(), bytes = keep, "spooling change events while the copy runs");
    let max_bytes = engine.config.runtime.spool_max_bytes;
    let checkpoint_every = engine.config.runtime.checkpoint_interval();
    let mut last_record = Instant::now();
    let mut recorded_len = keep;
    let mut warned_full = false;
    loop {
        let done = *copy_done.borrow();
        let full = writer.len() >= max_bytes;
        let pause = *paused.borrow();
        let due = last_record.elapsed() >= checkpoint_every;
        if done || full || pause || due {
            if let Some(token) = stream.resume_token()? {
                let len = writer.sync()?;
                if len != recorded_len || due {
                    engine
                        .checkpoints
                        .set_state(doc! {"spool_token": &token, "spool_bytes": len as i64})
                        .await?;
                    recorded_len = len;
                }
                spool.durable = Some((path.clone(), len, token));
            }
            last_record = Instant::now();
        }
        if done {
            engine
                .progress
                .spooled_bytes
                .store(writer.len(), Ordering::Relaxed);
            engine.progress.spool_full.store(false, Ordering::Relaxed);
            return Ok(());
        }
        if full || pause {
            if full && !warned_full {
                tracing::warn!(bytes = writer.len(), "the spool is full (runtime.spool_max_bytes): reading changes pauses until the copy ends");
                engine.progress.spool_full.store(true, Ordering::Relaxed);
                warned_full = true;
            }
            tokio::select! {
                r = copy_done.changed() => if r.is_err() { return Ok(()) },
                r = paused.changed(), if pause => if r.is_err() { return Ok(()) },
            }
            continue;
        }
        if let Some(event) = next_whole_event(stream, joining).await? {
            if EventView::parse(&event).is_wanted(engine) {
                writer.append(&event)?;
            }
        }
        engine
            .progress
            .spooled_bytes
            .store(writer.len(), Ordering::Relaxed);
    }
}

/// The next whole change event of the current batch (large events joined from their
/// fragments).
async fn next_whole_event(
    stream: &mut ChangeStream,
    joining: &mut Joining,
) -> Result<Option<RawDocumentBuf>, TailError> {
    split_events::next_whole(stream, joining)
        .await
        .map_err(|e| match e {
            NextError::Stream(e) => stream_error(e),
            NextError::Split(e) => TailError::Decode(e.to_string()),
        })
}

/// Whether the source can send events over 16 MB in fragments (see
/// [`split_events`]); without it such an event stops the stream for good.
async fn split_large_events(engine: &SharedEngine) -> bool {
    use crate::cluster::topology::server_version;
    match server_version(&engine.source).await {
        Ok(v) => split_events::supported((v.major, v.minor, v.patch)),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the source version; change events over 16 MB would stop the stream");
            false
        }
    }
}

/// Whether update events must carry the looked-up document: when configured so, or when
/// the source predates `disambiguatedPaths` (6.1), without which a changed field's path
/// can be ambiguous.
async fn updates_need_lookup(engine: &SharedEngine) -> bool {
    use crate::cluster::topology::{server_version, ServerVersion};
    if engine.config.apply.update_events == crate::config::UpdateEvents::Lookup {
        return true;
    }
    match server_version(&engine.source).await {
        Ok(v) => v < ServerVersion::new(6, 1, 0),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the source version; update events carry the whole document");
            true
        }
    }
}

async fn tail(
    engine: SharedEngine,
    peers: TailerPeers,
    mut paused: watch::Receiver<bool>,
    drain_to: watch::Receiver<Option<DrainTarget>>,
    mut copy_done: watch::Receiver<bool>,
    generation: u64,
) -> Result<(), TailError> {
    let state = engine.checkpoints.load_state().await?.unwrap_or_default();
    let start_ts = state.start_ts.ok_or(TailError::NoStart)?;
    let mut applied_ts = state.applied_ts.unwrap_or(start_ts);
    let mut events_applied = state.events_applied;
    let mut spool = SpoolPlan::load(&engine, &state);
    let lookup = updates_need_lookup(&engine).await;
    let split = split_large_events(&engine).await;
    *engine.progress.update_events.write() = Some(if lookup { "lookup" } else { "delta" });
    let mut options = StreamOptions {
        expanded_events: true,
        full_document_lookup: lookup,
        // getMores the size of an applied batch, so reading the next one overlaps with
        // applying this one instead of alternating with it.
        batch_size: Some(engine.config.apply.batch_max_events.clamp(1, 100_000) as u32),
        ..StreamOptions::from(StreamStart::At(start_ts), MAX_AWAIT)
    };
    if split {
        options.pipeline.push(split_events::split_stage());
    }
    if let Some(token) = spool.stream_from(&state) {
        options.start = StreamStart::After(token);
    }
    let mut stream = streams::watch_deployment(&engine.source, options)
        .await
        .map_err(stream_error)?;
    let mut joining = Joining::default();
    tracing::info!(
        resume = state.resume_token.is_some(),
        spooled = spool.durable.is_some(),
        update_lookup = lookup,
        "tailing the source change stream"
    );
    if !*copy_done.borrow() {
        spool_during_copy(
            &engine,
            &mut stream,
            &mut joining,
            &mut spool,
            &mut paused,
            &mut copy_done,
        )
        .await?;
    }
    let mut replay = spool.replay(&state)?;
    let mut replay_finished: Option<Replay> = None;
    let mut routing = Routing {
        appliers: HashMap::new(),
    };
    let mut pending = Pending::default();
    let partitions = engine.config.apply.workers.max(1);
    let batch_max = engine.config.apply.batch_max_events.max(1);
    let batch_max_bytes = engine.config.apply.batch_max_bytes.max(1) as usize;
    let flush_every = Duration::from_millis(engine.config.apply.flush_interval_ms);
    let mut last_cut = Instant::now();
    let checkpoint_every = engine.config.runtime.checkpoint_interval();
    let idle_noop = engine.config.runtime.idle_noop_interval();
    let mut last_checkpoint = Instant::now();
    let mut last_event = Instant::now();
    let mut source_now: Option<(Timestamp, Instant)> = None;
    // The drain target last reported: a later cutover attempt has a new target.
    let mut drained_sent: Option<Timestamp> = None;
    let mut dirty = false;
    // Batches handed to the appliers and not yet acknowledged, oldest first.
    let mut in_flight: VecDeque<(Flight, Option<Document>)> = VecDeque::new();
    loop {
        if *paused.borrow() {
            while let Some((previous, _)) = in_flight.pop_front() {
                events_applied += previous.await?;
            }
            events_applied += flush(&engine, &mut routing, &mut pending).await?;
            while *paused.borrow() {
                if paused.changed().await.is_err() {
                    return Ok(());
                }
            }
        }
        let next = match replay.as_mut() {
            Some(r) => {
                let next = r.next_event()?;
                if next.is_none() {
                    // Everything spooled is handed over: cut and checkpoint at the
                    // spool's stream position, then read the stream itself.
                    replay_finished = replay.take();
                    dirty = true;
                }
                next
            }
            None => next_whole_event(&mut stream, &mut joining).await?,
        };
        let caught_up = next.is_none();
        if let Some(event) = next {
            last_event = Instant::now();
            let view = EventView::parse(&event);
            let op = view.op;
            let wanted = view.is_wanted(&engine);
            let stopped_at = drain_to.borrow().map(|d| d.writes_stopped_at);
            if let (Some(stopped_at), Some(ts)) = (stopped_at, view.ts) {
                if wanted && ts_after(ts, stopped_at) && !is_ddl(op) {
                    engine.progress.late_writes.fetch_add(1, Ordering::Relaxed);
                }
            }
            if wanted {
                engine
                    .baseline
                    .record_source(op, view.db, view.coll, view.id, view.ts);
                if is_ddl(op) {
                    while let Some((previous, _)) = in_flight.pop_front() {
                        events_applied += previous.await?;
                    }
                    events_applied += flush(&engine, &mut routing, &mut pending).await?;
                    let ddl = decode_event(&event)?;
                    apply_ddl(&engine, &ddl, generation).await?;
                    events_applied += 1;
                    engine
                        .progress
                        .events_applied
                        .fetch_add(1, Ordering::Relaxed);
                    // Checkpoint at the DDL before any later event is applied. Replaying
                    // a DDL is harmless only while nothing after it has been applied: a
                    // rename of A to B replayed after a new A was created and written
                    // would move the new A onto B. With this checkpoint, a DDL is replayed
                    // only when the crash came between it and this write, and then its
                    // source is already gone (26, ignored) or its target already there.
                    if let Ok(token) = ddl.get_document("_id") {
                        if let Some(ts) = view.ts.filter(|ts| ts_after(*ts, applied_ts)) {
                            applied_ts = ts;
                        }
                        engine
                            .checkpoints
                            .set_state(doc! {"resume_token": token, "applied_ts": applied_ts, "events_applied": events_applied as i64})
                            .await?;
                    }
                    if matches!(op, "drop" | "rename" | "dropDatabase") {
                        routing.appliers.clear();
                    }
                    last_checkpoint = Instant::now() - checkpoint_every;
                } else if op != "invalidate" {
                    let slot = pending.slot(&view, partitions);
                    pending.push(slot, event);
                }
            }
            dirty = true;
            if pending.len() < batch_max
                && pending.bytes < batch_max_bytes
                && last_cut.elapsed() < flush_every
                && last_checkpoint.elapsed() < checkpoint_every
            {
                continue;
            }
        }
        // Cut here. While behind, the next batch is read while this one is applied, so
        // the checkpoint and lag move with the previous, acknowledged batch; once caught
        // up, everything is acknowledged before the position is recorded.
        let token = match (&replay, &replay_finished) {
            (Some(r), _) => r.last_token.as_deref().map(decode_event).transpose()?,
            (None, Some(done)) => done.end_token.clone(),
            (None, None) => stream.resume_token()?,
        };
        let flight = dispatch(&engine, &mut routing, &mut pending);
        last_cut = Instant::now();
        let acknowledged = if caught_up {
            while let Some((previous, _)) = in_flight.pop_front() {
                events_applied += previous.await?;
            }
            events_applied += flight.await?;
            token
        } else {
            in_flight.push_back((flight, token));
            let mut acknowledged = None;
            while in_flight.len() >= MAX_FLIGHTS {
                if let Some((previous, previous_token)) = in_flight.pop_front() {
                    events_applied += previous.await?;
                    acknowledged = previous_token.or(acknowledged);
                }
            }
            acknowledged
        };
        if let Some(t) = acknowledged {
            if let Some(ts) = token_timestamp(&t) {
                if ts_after(ts, applied_ts) || ts == applied_ts {
                    applied_ts = ts;
                }
            }
            if dirty && (last_checkpoint.elapsed() >= checkpoint_every || caught_up) {
                let mut fields = doc! {"resume_token": t, "applied_ts": applied_ts, "events_applied": events_applied as i64};
                let finished = if caught_up {
                    replay_finished.take()
                } else {
                    None
                };
                if finished.is_some() {
                    fields.extend(doc! {"spool_file": Bson::Null, "spool_token": Bson::Null, "spool_bytes": 0i64});
                }
                engine.checkpoints.set_state(fields).await?;
                if let Some(done) = finished {
                    tracing::info!(path = %done.path.display(), "spooled changes applied; spool removed");
                    crate::spool::remove(&done.path);
                }
                last_checkpoint = Instant::now();
                dirty = false;
            }
        }
        if source_now.is_none_or(|(_, at)| at.elapsed() >= CLUSTER_TIME_INTERVAL) {
            if let Ok(ts) = engine.source.cluster_time().await {
                source_now = Some((ts, Instant::now()));
            }
        }
        if let Some((now, _)) = source_now {
            let lag = if ts_after(now, applied_ts) {
                now.time.saturating_sub(applied_ts.time) as f64
            } else {
                0.0
            };
            let lag = if caught_up && !ts_after(now, applied_ts) {
                0.0
            } else {
                lag
            };
            engine
                .progress
                .lag_ms
                .store((lag * 1000.0) as i64, Ordering::Relaxed);
            crate::metrics::record_lag(lag);
            peers.status.do_send(SyncStatus {
                lag_seconds: lag,
                applied_ts,
            });
        }
        if caught_up && last_event.elapsed() >= idle_noop {
            if let Err(e) = engine.source.append_noop("ferry idle tick").await {
                tracing::debug!(error = %e, "could not write the idle no-op on the source");
            }
            last_event = Instant::now();
        }
        // Drained once everything up to the target is applied, caught up or not: an
        // application that goes on writing after the declared stop must not keep the
        // cutover waiting forever (its writes are counted as late writes).
        let target = drain_to.borrow().map(|d| d.to);
        if let Some(target) = target {
            if drained_sent != Some(target) && !ts_after(target, applied_ts) {
                engine
                    .checkpoints
                    .set_state(
                        doc! {"applied_ts": applied_ts, "events_applied": events_applied as i64},
                    )
                    .await?;
                drained_sent = Some(target);
                peers.drained.do_send(Drained(target));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::rawdoc;

    fn partition_of(event: &RawDocument, partitions: usize) -> usize {
        EventView::parse(event)
            .id
            .map_or(0, |id| partition_of_id(id, partitions))
    }

    fn event_for(id: bson::RawBson) -> RawDocumentBuf {
        rawdoc! {"operationType": "delete", "ns": {"db": "d", "coll": "c"}, "documentKey": {"_id": id}}
    }

    #[test]
    fn one_document_always_reaches_the_same_applier_whatever_its_numeric_type() {
        use bson::RawBson as R;
        for partitions in [2, 8, 64] {
            let p = |id| partition_of(&event_for(id), partitions);
            for n in [0i32, 1, 7, 123_456] {
                let same = p(R::Int32(n));
                assert_eq!(p(R::Int64(n as i64)), same);
                assert_eq!(p(R::Double(n as f64)), same);
                // The failure this pins: a Decimal128("1") document deleted and inserted
                // again as int32 1 raced with itself on two appliers (66 ImmutableField).
                for text in [format!("{n}"), format!("{n}.0"), format!("{n}0E-1")] {
                    let d: bson::Decimal128 = text.parse().expect("decimal");
                    assert_eq!(p(R::Decimal128(d)), same, "Decimal128({text})");
                }
            }
            assert_eq!(p(R::Double(-0.0)), p(R::Int32(0)));
            let nested = |v| {
                let mut d = RawDocumentBuf::new();
                d.append("k", v);
                R::Document(d)
            };
            assert_eq!(p(nested(R::Int32(5))), p(nested(R::Int64(5))));
        }
        // Different documents spread over the appliers.
        let used: std::collections::HashSet<usize> = (0..200)
            .map(|i| partition_of(&event_for(bson::RawBson::Int32(i)), 8))
            .collect();
        assert_eq!(used.len(), 8);
    }

    #[test]
    fn resume_tokens_carry_their_cluster_time() {
        let token = doc! {"_data": "8200000064000000072B"};
        assert_eq!(
            token_timestamp(&token),
            Some(Timestamp {
                time: 100,
                increment: 7
            })
        );
        assert_eq!(token_timestamp(&doc! {"_data": "00"}), None);
    }
}
