//! Tailer: reads the source's change stream (showExpandedEvents, updateLookup) from the
//! start time or the last checkpoint, routes events to one applier per namespace, applies
//! DDL at a barrier, checkpoints only what every applier has acknowledged, measures lag,
//! writes a no-op on an idle source so lag reaches zero, and drains to the cutover optime.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bson::{doc, Bson, Document, RawDocument, RawDocumentBuf, Timestamp};
use mongodb::change_stream::event::ResumeToken;
use mongodb::options::FullDocumentType;
use tokio::sync::watch;

use super::applier::{apply_ddl, is_ddl, Applier, ApplyError, ApplyEvents};
use super::{ActorFailure, SharedEngine};
use crate::checkpoint::CheckpointError;
use crate::cluster::ClusterError;

/// How often the source's cluster time is read to compute lag.
const CLUSTER_TIME_INTERVAL: Duration = Duration::from_millis(500);
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
    Stream(#[source] mongodb::error::Error),
    #[error("source: the change stream history needed to resume is gone (the oplog rolled over); the migration must start over: drop the destination's __ferry database and run again")]
    HistoryLost(#[source] mongodb::error::Error),
    #[error("no start time: the copy has not recorded one")]
    NoStart,
    #[error("applier stopped")]
    ApplierGone,
    #[error("cannot encode resume token: {0}")]
    Token(String),
    #[error("source: undecodable change event: {0}")]
    Decode(String),
}

impl TailError {
    pub fn is_transient(&self) -> bool {
        match self {
            TailError::Cluster(e) => e.is_transient(),
            TailError::Checkpoint(CheckpointError::Cluster(e)) => e.is_transient(),
            TailError::Apply(e) => e.is_transient(),
            TailError::Stream(e) => crate::cluster::is_transient(e),
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

/// The tailer has applied everything up to the drain target.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Drained;

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
    drain_to: watch::Receiver<Option<Timestamp>>,
}

impl Tailer {
    pub fn new(
        engine: SharedEngine,
        peers: TailerPeers,
        paused: watch::Receiver<bool>,
        drain_to: watch::Receiver<Option<Timestamp>>,
    ) -> Tailer {
        Tailer {
            engine,
            peers,
            paused,
            drain_to,
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
        ctx.spawn(
            async move { tail(engine, peers, paused, drain_to).await }
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

/// The cluster time inside a resume token: `_data` starts with the timestamp's
/// type byte (0x82) and its 8 bytes, big-endian, as hex.
pub fn token_timestamp(token: &Document) -> Option<Timestamp> {
    let data = token.get_str("_data").ok()?;
    if data.len() < 18 || !data[..2].eq_ignore_ascii_case("82") {
        return None;
    }
    let time = u32::from_str_radix(&data[2..10], 16).ok()?;
    let increment = u32::from_str_radix(&data[10..18], 16).ok()?;
    Some(Timestamp { time, increment })
}

fn token_document(token: &ResumeToken) -> Result<Document, TailError> {
    match bson::to_bson(token) {
        Ok(Bson::Document(d)) => Ok(d),
        Ok(other) => Err(TailError::Token(format!("unexpected token {other}"))),
        Err(e) => Err(TailError::Token(e.to_string())),
    }
}

/// The database and collection an event is about (empty when it has none).
fn event_namespace(event: &RawDocument) -> (&str, &str) {
    let ns = event.get_document("ns").ok();
    let field = |name| ns.and_then(|ns| ns.get_str(name).ok()).unwrap_or_default();
    (field("db"), field("coll"))
}

/// A (rare) DDL event decoded for inspection.
fn decode_event(event: &RawDocument) -> Result<Document, TailError> {
    Document::try_from(event).map_err(|e| TailError::Decode(e.to_string()))
}

fn ts_after(a: Timestamp, b: Timestamp) -> bool {
    (a.time, a.increment) > (b.time, b.increment)
}

struct Routing {
    appliers: HashMap<String, Addr<Applier>>,
}

/// Events handed to the appliers and not yet acknowledged.
type Flight = std::pin::Pin<Box<dyn std::future::Future<Output = Result<u64, TailError>>>>;

/// Hands each namespace's events to its applier now (mailboxes keep per-namespace order)
/// and returns the future of their acknowledgements, so the next batch can be read while
/// these are applied.
fn dispatch(
    engine: &SharedEngine,
    routing: &mut Routing,
    pending: &mut Vec<RawDocumentBuf>,
) -> Flight {
    if pending.is_empty() {
        return Box::pin(async { Ok(0) });
    }
    let mut by_ns: HashMap<(String, String), Vec<RawDocumentBuf>> = HashMap::new();
    let mut order: Vec<(String, String)> = Vec::new();
    for ev in pending.drain(..) {
        let (db, coll) = event_namespace(&ev);
        let key = (db.to_string(), coll.to_string());
        if !by_ns.contains_key(&key) {
            order.push(key.clone());
        }
        by_ns.entry(key).or_default().push(ev);
    }
    let mut requests = Vec::new();
    for key in order {
        let events = by_ns.remove(&key).unwrap_or_default();
        let name = format!("{}.{}", key.0, key.1);
        let addr = routing
            .appliers
            .entry(name.clone())
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
    pending: &mut Vec<RawDocumentBuf>,
) -> Result<u64, TailError> {
    dispatch(engine, routing, pending).await
}

fn is_history_lost(e: &mongodb::error::Error) -> bool {
    crate::cluster::error_code(e) == Some(286)
        || e.contains_label("NonResumableChangeStreamError")
            && crate::cluster::error_code(e) == Some(280)
}

async fn tail(
    engine: SharedEngine,
    peers: TailerPeers,
    mut paused: watch::Receiver<bool>,
    drain_to: watch::Receiver<Option<Timestamp>>,
) -> Result<(), TailError> {
    let state = engine.checkpoints.load_state().await?.unwrap_or_default();
    let start_ts = state.start_ts.ok_or(TailError::NoStart)?;
    let mut applied_ts = state.applied_ts.unwrap_or(start_ts);
    let mut events_applied = state.events_applied;
    let mut watch = engine
        .source
        .client
        .watch()
        .full_document(FullDocumentType::UpdateLookup)
        .show_expanded_events(true)
        .max_await_time(MAX_AWAIT);
    match &state.resume_token {
        Some(token) => {
            let token: ResumeToken = bson::from_bson(Bson::Document(token.clone()))
                .map_err(|e| TailError::Token(e.to_string()))?;
            watch = watch.resume_after(token);
        }
        None => watch = watch.start_at_operation_time(start_ts),
    }
    let mut stream = watch
        .await
        .map_err(|e| {
            if is_history_lost(&e) {
                TailError::HistoryLost(e)
            } else {
                TailError::Stream(e)
            }
        })?
        .with_type::<RawDocumentBuf>();
    tracing::info!(
        resume = state.resume_token.is_some(),
        "tailing the source change stream"
    );
    let mut routing = Routing {
        appliers: HashMap::new(),
    };
    let mut pending: Vec<RawDocumentBuf> = Vec::new();
    let batch_max = engine.config.apply.batch_max_events.max(1);
    let checkpoint_every = engine.config.runtime.checkpoint_interval();
    let idle_noop = engine.config.runtime.idle_noop_interval();
    let mut last_checkpoint = Instant::now();
    let mut last_event = Instant::now();
    let mut source_now: Option<(Timestamp, Instant)> = None;
    let mut drained_sent = false;
    let mut dirty = false;
    let mut in_flight: Option<(Flight, Option<Document>)> = None;
    loop {
        if *paused.borrow() {
            if let Some((previous, _)) = in_flight.take() {
                events_applied += previous.await?;
            }
            events_applied += flush(&engine, &mut routing, &mut pending).await?;
            while *paused.borrow() {
                if paused.changed().await.is_err() {
                    return Ok(());
                }
            }
        }
        let next = stream.next_if_any().await.map_err(|e| {
            if is_history_lost(&e) {
                TailError::HistoryLost(e)
            } else {
                TailError::Stream(e)
            }
        })?;
        let caught_up = next.is_none();
        if let Some(event) = next {
            last_event = Instant::now();
            let op = event
                .get_str("operationType")
                .unwrap_or_default()
                .to_string();
            let (db, coll) = event_namespace(&event);
            let event_ts = event.get_timestamp("clusterTime").ok();
            let wanted = if op == "dropDatabase" {
                engine.filter.may_allow_database(db)
                    && !crate::config::NamespaceFilter::is_never_migrated_db(db)
            } else {
                engine.filter.allows(db, coll) && !coll.starts_with("system.")
            };
            if let (Some(target), Some(ts)) = (*drain_to.borrow(), event_ts) {
                if wanted && ts_after(ts, target) && !is_ddl(&op) {
                    engine.progress.late_writes.fetch_add(1, Ordering::Relaxed);
                }
            }
            if wanted {
                if is_ddl(&op) {
                    if let Some((previous, _)) = in_flight.take() {
                        events_applied += previous.await?;
                    }
                    events_applied += flush(&engine, &mut routing, &mut pending).await?;
                    apply_ddl(&engine, &decode_event(&event)?).await?;
                    events_applied += 1;
                    engine
                        .progress
                        .events_applied
                        .fetch_add(1, Ordering::Relaxed);
                    if matches!(op.as_str(), "drop" | "rename" | "dropDatabase") {
                        routing.appliers.clear();
                    }
                    last_checkpoint = Instant::now() - checkpoint_every;
                } else if op != "invalidate" {
                    pending.push(event);
                }
            }
            dirty = true;
            if pending.len() < batch_max && last_checkpoint.elapsed() < checkpoint_every {
                continue;
            }
        }
        // Cut here. While behind, the next batch is read while this one is applied, so
        // the checkpoint and lag move with the previous, acknowledged batch; once caught
        // up, everything is acknowledged before the position is recorded.
        let token = stream
            .resume_token()
            .as_ref()
            .map(token_document)
            .transpose()?;
        let flight = dispatch(&engine, &mut routing, &mut pending);
        let acknowledged = if caught_up {
            if let Some((previous, _)) = in_flight.take() {
                events_applied += previous.await?;
            }
            events_applied += flight.await?;
            token
        } else {
            match in_flight.replace((flight, token)) {
                Some((previous, previous_token)) => {
                    events_applied += previous.await?;
                    previous_token
                }
                None => None,
            }
        };
        if let Some(t) = acknowledged {
            if let Some(ts) = token_timestamp(&t) {
                if ts_after(ts, applied_ts) || ts == applied_ts {
                    applied_ts = ts;
                }
            }
            if dirty && (last_checkpoint.elapsed() >= checkpoint_every || caught_up) {
                engine
                    .checkpoints
                    .set_state(doc! {"resume_token": t, "applied_ts": applied_ts, "events_applied": events_applied as i64})
                    .await?;
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
        if let Some(target) = *drain_to.borrow() {
            if !drained_sent && caught_up && !ts_after(target, applied_ts) {
                engine
                    .checkpoints
                    .set_state(
                        doc! {"applied_ts": applied_ts, "events_applied": events_applied as i64},
                    )
                    .await?;
                drained_sent = true;
                peers.drained.do_send(Drained);
            }
        }
    }
}
