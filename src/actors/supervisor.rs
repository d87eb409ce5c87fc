//! Supervisor: owns the run's phase, starts the other actors, restarts a failed one from
//! its checkpoint with backoff, answers operator requests (cutover, extend, pause, resume,
//! cancel), runs the cutover window and the cutover handshake, and reports the outcome.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bson::{doc, Timestamp};
use tokio::sync::{oneshot, watch};

use super::coordinator::{finalize_indexes, Coordinator, LockLost, SourceWriteBlock};
use super::copier::{Copier, CopyOutcome, CopyPlanner, CopySummary};
use super::tailer::{Drained, SyncStatus, Tailer, TailerPeers, TailerStopped};
use super::{error_chain, verifier, ActorFailure, SharedEngine};
use crate::checkpoint::{unix_now, RunState};
use crate::control::{ControlError, ControlReply, ControlRequest};
use crate::progress::Phase;
use crate::report::{Report, Verification};

/// Longest pause between restarts of a failing actor.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Consecutive failures after which the run fails instead of retrying.
const MAX_CONSECUTIVE_FAILURES: u32 = 30;
/// A failure counts as consecutive with the next one unless the workers ran this long
/// without failing: a worker that fails again soon after each restart (even one that
/// reports progress in between) is not retried forever.
const FAILURE_MEMORY: Duration = Duration::from_secs(300);
/// Failed baseline verifications after which none is started again (the cutover then
/// compares every document, as with `cutover.baseline_verification = false`).
const MAX_BASELINE_ATTEMPTS: u32 = 10;
/// How often the cutover window is checked.
const WINDOW_CHECK: Duration = Duration::from_secs(1);
/// Wait before a failed baseline verification starts again.
const BASELINE_RETRY: Duration = Duration::from_secs(30);
/// Tries of the cutover handshake (write block, cutover optime) on transient errors.
const CUTOVER_ATTEMPTS: u32 = 10;

/// The cutover window's length in whole seconds (at least one).
fn window_seconds(hours: f64) -> i64 {
    ((hours * 3600.0).round() as i64).max(1)
}

/// How the run ended.
#[derive(Clone, Debug)]
pub struct RunOutcome {
    pub phase: Phase,
    pub report: Option<Report>,
    pub error: Option<String>,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Control(pub ControlRequest, pub oneshot::Sender<ControlReply>);

/// Stop syncing now and leave the checkpoints for the next run (SIGTERM).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown;

/// The verification of cutover attempt `attempt` ended.
#[derive(Message)]
#[rtype(result = "()")]
struct Verified {
    attempt: u64,
    result: Result<(Verification, Verification), String>,
}

/// The handshake of cutover attempt `attempt` (write block, cutover optime) ended.
#[derive(Message)]
#[rtype(result = "()")]
struct CutoverStarted {
    attempt: u64,
    result: Result<Timestamp, String>,
}

pub struct Supervisor {
    engine: SharedEngine,
    state: RunState,
    copier: Option<Addr<CopyPlanner>>,
    tailer: Option<Addr<Tailer>>,
    coordinator: Option<Addr<Coordinator>>,
    paused_tx: watch::Sender<bool>,
    drain_tx: watch::Sender<Option<Timestamp>>,
    /// Tells a tailer that started with the copy (spooling) that the copy is done.
    copy_done_tx: watch::Sender<bool>,
    /// Phase to return to on resume.
    paused_from: Option<Phase>,
    failures: u32,
    /// Failures since the workers last made progress: sets the backoff.
    failures_since_progress: u32,
    /// When the last worker failure happened.
    last_failure: Option<Instant>,
    /// Baseline verifications started so far.
    baseline_attempts: u32,
    copy_summary: CopySummary,
    run_started: Instant,
    cutover_confirmed: Option<Instant>,
    /// The source's writes may be blocked by Ferry (a cutover asked for it, or a crashed
    /// run left it so): every ending gives them back.
    write_blocked: bool,
    /// Orders the block and unblock commands of cutover attempts and endings.
    write_block: SourceWriteBlock,
    /// The current cutover attempt: messages of an earlier one are ignored.
    cutover_attempt: u64,
    /// The optime the current attempt drains to, until its `Drained` arrives.
    drain_target: Option<Timestamp>,
    warned_hours: Vec<f64>,
    /// The baseline verification, once the destination is first in sync.
    baseline: Option<SpawnHandle>,
    done: Option<oneshot::Sender<RunOutcome>>,
}

impl Supervisor {
    pub fn new(
        engine: SharedEngine,
        state: RunState,
        done: oneshot::Sender<RunOutcome>,
    ) -> Supervisor {
        let (paused_tx, _) = watch::channel(false);
        let (drain_tx, _) = watch::channel(None);
        let (copy_done_tx, _) = watch::channel(state.copy_complete);
        let write_blocked = state.source_write_blocked;
        Supervisor {
            engine,
            state,
            copier: None,
            tailer: None,
            coordinator: None,
            paused_tx,
            drain_tx,
            copy_done_tx,
            paused_from: None,
            failures: 0,
            failures_since_progress: 0,
            last_failure: None,
            baseline_attempts: 0,
            copy_summary: CopySummary::default(),
            run_started: Instant::now(),
            cutover_confirmed: None,
            write_blocked,
            write_block: SourceWriteBlock::default(),
            cutover_attempt: 0,
            drain_target: None,
            warned_hours: Vec::new(),
            baseline: None,
            done: Some(done),
        }
    }

    fn phase(&self) -> Phase {
        self.engine.progress.phase()
    }

    fn set_phase(&mut self, ctx: &mut Context<Self>, phase: Phase) {
        // An ended run stays ended, whatever late message arrives.
        if self.phase() == phase || self.phase().is_terminal() {
            return;
        }
        tracing::info!(phase = phase.as_str(), "phase");
        self.engine.progress.set_phase(phase);
        if phase == Phase::ReadyForCutover {
            self.start_baseline(ctx);
        }
        self.state.phase = Some(phase);
        let engine = self.engine.clone();
        ctx.spawn(
            async move {
                if let Err(e) = engine
                    .checkpoints
                    .set_state(doc! {"phase": phase.as_str()})
                    .await
                {
                    tracing::warn!(error = %error_chain(&e), "could not record the phase");
                }
            }
            .into_actor(self),
        );
    }

    /// Starts the baseline verification unless it runs or is disabled. One that fails
    /// (its comparison or the destination's change stream hit an error) is started
    /// again after a while; until then the cutover compares every document.
    fn start_baseline(&mut self, ctx: &mut Context<Self>) {
        if self.baseline.is_some() || !self.engine.config.cutover.baseline_verification {
            return;
        }
        if self.baseline_attempts >= MAX_BASELINE_ATTEMPTS {
            tracing::warn!(attempts = self.baseline_attempts, "the baseline verification failed every time; not starting it again: the cutover compares every document");
            return;
        }
        self.baseline_attempts += 1;
        let run = super::verifier::baseline::run(self.engine.clone(), self.paused_tx.subscribe());
        self.baseline = Some(ctx.spawn(run.into_actor(self).map(|(), act, ctx| {
            act.baseline = None;
            ctx.run_later(BASELINE_RETRY, |act, ctx| {
                if matches!(act.phase(), Phase::ReadyForCutover | Phase::Syncing) {
                    act.start_baseline(ctx);
                }
            });
        })));
    }

    fn start_copier(&mut self, ctx: &mut Context<Self>) {
        self.set_phase(ctx, Phase::Copying);
        // One copier per source shard; the planner hands each its ranges.
        let paused = self.paused_tx.subscribe();
        let copiers = Copier::per_shard(&self.engine, &paused);
        let planner = CopyPlanner::new(
            self.engine.clone(),
            ctx.address().recipient(),
            paused,
            copiers,
        );
        self.copier = Some(planner.start());
    }

    /// Starts the tailer unless one runs (a restart scheduled after a failure may find
    /// that the copy's end already started one).
    fn start_tailer(&mut self, ctx: &mut Context<Self>) {
        if self.tailer.is_some() {
            return;
        }
        if self.state.copy_complete
            && (self.phase() == Phase::Copying || self.phase() == Phase::Initializing)
        {
            self.set_phase(ctx, Phase::Syncing);
        }
        let me = ctx.address();
        let peers = TailerPeers {
            status: me.clone().recipient(),
            drained: me.clone().recipient(),
            stopped: me.recipient(),
        };
        let tailer = Tailer::new(
            self.engine.clone(),
            peers,
            self.paused_tx.subscribe(),
            self.drain_tx.subscribe(),
            self.copy_done_tx.subscribe(),
        );
        self.tailer = Some(tailer.start());
    }

    /// The workers made progress: forget earlier failures once they are old enough.
    fn healthy(&mut self) {
        self.failures_since_progress = 0;
        if self
            .last_failure
            .is_none_or(|at| at.elapsed() >= FAILURE_MEMORY)
        {
            self.failures = 0;
        }
    }

    fn backoff(&self) -> Duration {
        let secs = 1u64 << self.failures_since_progress.min(5);
        Duration::from_secs(secs).min(MAX_BACKOFF)
    }

    /// Records a failure: restart after backoff when it may pass, else fail the run.
    fn on_failure(
        &mut self,
        ctx: &mut Context<Self>,
        failure: ActorFailure,
        restart: fn(&mut Supervisor, &mut Context<Supervisor>),
    ) {
        crate::metrics::record_error(failure.component);
        self.engine
            .progress
            .set_error(format!("{}: {}", failure.component, failure.message));
        if self.phase().is_terminal() {
            return;
        }
        self.failures += 1;
        self.failures_since_progress += 1;
        self.last_failure = Some(Instant::now());
        // Whatever the failed worker left queued must not be written after the restart.
        self.engine.generation.advance();
        if !failure.transient || self.failures > MAX_CONSECUTIVE_FAILURES {
            let message = if failure.transient {
                format!(
                    "{}: {} (failed {} times in a row, each retried from the last checkpoint; fix the cause, then run again to resume)",
                    failure.component, failure.message, self.failures
                )
            } else {
                format!("{}: {}", failure.component, failure.message)
            };
            tracing::error!(component = failure.component, error = %message, "the migration cannot continue");
            self.finish(ctx, Phase::Failed, Some(message));
            return;
        }
        let delay = self.backoff();
        crate::metrics::record_retry(failure.component);
        self.engine.progress.retries.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(component = failure.component, error = %failure.message, retry_in_s = delay.as_secs(), "restarting from the last checkpoint");
        ctx.run_later(delay, move |act, ctx| {
            if !act.phase().is_terminal() {
                restart(act, ctx);
            }
        });
    }

    /// Ends the run: stops actors, restores the balancers, releases the lock, reports.
    fn finish(&mut self, ctx: &mut Context<Self>, phase: Phase, error: Option<String>) {
        if self.done.is_none() {
            return;
        }
        self.set_phase(ctx, phase);
        self.stop_workers(ctx);
        let engine = self.engine.clone();
        // Every ending, completion included, gives the source its writes back.
        self.write_block.end_attempts();
        let unblock = self.write_blocked.then(|| self.write_block.clone());
        self.write_blocked = false;
        let done = self.done.take();
        let report = self.engine.progress.report.read().clone();
        if phase == Phase::Failed {
            crate::notify::send(
                &self.engine,
                "failed",
                &format!(
                    "the migration failed: {}",
                    error.as_deref().unwrap_or("see the log")
                ),
            );
        }
        ctx.spawn(
            async move {
                if let Some(write_block) = unblock {
                    match write_block.lift(&engine).await {
                        Ok(()) => tracing::info!("the source takes writes again"),
                        Err(e) => tracing::error!(error = %error_chain(&e), "could not lift the write block on the source: run setUserWriteBlockMode {{global: false}} on it"),
                    }
                }
                if let Err(e) = super::coordinator::restore_balancers(&engine).await {
                    crate::metrics::record_error("balancer");
                    crate::notify::send(
                        &engine,
                        "balancer_restore_failed",
                        &format!("could not restart the balancers ({}): run balancerStart on the sharded deployments", error_chain(&e)),
                    );
                    tracing::error!(error = %error_chain(&e), "could not restart the balancers: run balancerStart on the sharded deployments");
                }
                let mut ending = doc! {"phase": phase.as_str()};
                if let Some(stored) = report.as_ref().and_then(|r| bson::to_bson(r).ok()) {
                    ending.insert("report", stored);
                }
                if let Err(e) = engine.checkpoints.set_state(ending).await {
                    tracing::warn!(error = %error_chain(&e), "could not record the final phase and report");
                }
                if matches!(phase, Phase::Cancelled | Phase::Expired) {
                    // The run is over for good: its spooled changes will never be applied.
                    if let (Ok(Some(state)), Some(dir)) = (
                        engine.checkpoints.load_state().await,
                        engine.config.runtime.spool_dir.as_ref(),
                    ) {
                        if let Some(file) = state.spool_file {
                            crate::spool::remove(&dir.join(file));
                        }
                    }
                }
                if let Err(e) = engine.checkpoints.release_lease().await {
                    tracing::warn!(error = %error_chain(&e), "could not release the destination lock; it expires on its own");
                }
                if let Some(done) = done {
                    let _ = done.send(RunOutcome { phase, report, error });
                }
            }
            .into_actor(self),
        );
    }

    fn stop_workers(&mut self, ctx: &mut Context<Self>) {
        if let Some(handle) = self.baseline.take() {
            ctx.cancel_future(handle);
            self.engine.baseline.stop();
        }
        self.engine.generation.advance();
        self.copier.take();
        self.tailer.take();
        self.coordinator.take();
        // Dropping the addresses stops the actors; cancel what they are running now.
        self.paused_tx.send_replace(false);
    }

    /// While copying, no change is applied yet: the destination is as far behind as the
    /// start time, so that is the lag shown.
    fn report_copy_lag(&self) {
        if self.phase() != Phase::Copying {
            return;
        }
        if let Some(start) = self.state.start_ts {
            let lag = (unix_now() - start.time as i64).max(0);
            self.engine
                .progress
                .lag_ms
                .store(lag * 1000, Ordering::Relaxed);
            crate::metrics::record_lag(lag as f64);
        }
    }

    fn check_window(&mut self, ctx: &mut Context<Self>) {
        let Some(expires) = self.state.window_expires_at else {
            return;
        };
        if self.phase().is_terminal() || self.phase() == Phase::CuttingOver {
            return;
        }
        let left = expires - unix_now();
        if left <= 0 {
            tracing::error!("the cutover window expired: syncing stopped, the source is untouched; start a new migration to try again");
            self.finish(ctx, Phase::Expired, Some("cutover window expired".into()));
            crate::notify::send(
                &self.engine,
                "expired",
                "the cutover window expired; syncing stopped",
            );
            return;
        }
        for &hours in &self.engine.config.cutover.warn_before_expiry_hours.clone() {
            if left as f64 <= hours * 3600.0 && !self.warned_hours.contains(&hours) {
                self.warned_hours.push(hours);
                tracing::warn!(hours_left = left as f64 / 3600.0, "the cutover window expires soon: cut over or extend it (ferry extend --hours N)");
                *self.engine.progress.window_warning.write() = Some(format!(
                    "the cutover window expires in {:.2} hours: cut over or extend it (ferry extend --hours N)",
                    left as f64 / 3600.0
                ));
                crate::notify::send(
                    &self.engine,
                    "window_expiring",
                    &format!(
                        "the cutover window expires in {:.1} hours",
                        left as f64 / 3600.0
                    ),
                );
            }
        }
    }

    fn handle_control(&mut self, req: ControlRequest, ctx: &mut Context<Self>) -> ControlReply {
        let phase = self.phase();
        if phase.is_terminal() {
            return Err(ControlError::conflict(format!(
                "the migration is {}; nothing more to do",
                phase.as_str()
            )));
        }
        match req {
            ControlRequest::Cutover { writes_stopped } => {
                if !writes_stopped {
                    return Err(ControlError::bad_request("stop application writes to the source first, then send {\"writes_stopped\": true}"));
                }
                if phase != Phase::ReadyForCutover {
                    return Err(ControlError::conflict(format!(
                        "cutover is possible in ready_for_cutover; the migration is {} (lag {:?} s)",
                        phase.as_str(),
                        self.engine.progress.lag_seconds()
                    )));
                }
                self.cutover_confirmed = Some(Instant::now());
                self.set_phase(ctx, Phase::CuttingOver);
                let engine = self.engine.clone();
                let block = engine.config.cutover.enforce_write_block;
                let cutover = self.write_block.begin_attempt();
                self.cutover_attempt = cutover;
                self.drain_target = None;
                self.write_blocked |= block;
                let write_block = self.write_block.clone();
                ctx.spawn(
                    async move {
                        // A stepdown or dropped connection right now must not bounce
                        // the cutover the operator asked for: retry transient errors.
                        let mut attempt = 0;
                        loop {
                            attempt += 1;
                            let step = async {
                                if block && !write_block.block(&engine, cutover).await? {
                                    return Ok(None);
                                }
                                engine.source.append_noop("ferry cutover").await.map(Some)
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
                    .into_actor(self)
                    .map(move |result, _, ctx| {
                        ctx.notify(CutoverStarted {
                            attempt: cutover,
                            result,
                        })
                    }),
                );
                Ok(
                    serde_json::json!({"accepted": true, "phase": "cutting_over", "write_block": block}),
                )
            }
            ControlRequest::Extend { hours } => {
                if !(hours.is_finite() && hours > 0.0) {
                    return Err(ControlError::bad_request("hours must be a positive number"));
                }
                let base = self.state.window_expires_at.unwrap_or_else(|| {
                    unix_now() + window_seconds(self.engine.config.cutover.window_hours)
                });
                let expires = base + (hours * 3600.0) as i64;
                self.state.window_expires_at = Some(expires);
                self.engine
                    .progress
                    .window_expires_at
                    .store(expires, Ordering::Relaxed);
                self.warned_hours.clear();
                *self.engine.progress.window_warning.write() = None;
                let engine = self.engine.clone();
                ctx.spawn(
                    async move {
                        if let Err(e) = engine.checkpoints.set_state(doc! {"window_expires_at": expires}).await {
                            tracing::warn!(error = %error_chain(&e), "could not record the extended window");
                        }
                    }
                    .into_actor(self),
                );
                Ok(serde_json::json!({"window_expires_at": expires}))
            }
            ControlRequest::Pause => {
                if phase == Phase::Paused {
                    return Err(ControlError::conflict("already paused"));
                }
                if phase == Phase::CuttingOver {
                    return Err(ControlError::conflict("cannot pause during cutover"));
                }
                self.paused_from = Some(phase);
                self.paused_tx.send_replace(true);
                self.set_phase(ctx, Phase::Paused);
                Ok(serde_json::json!({"phase": "paused"}))
            }
            ControlRequest::Resume => {
                if phase != Phase::Paused {
                    return Err(ControlError::conflict(format!(
                        "not paused (the migration is {})",
                        phase.as_str()
                    )));
                }
                let back = self.paused_from.take().unwrap_or(Phase::Syncing);
                self.paused_tx.send_replace(false);
                self.set_phase(ctx, back);
                Ok(serde_json::json!({"phase": back.as_str()}))
            }
            ControlRequest::Cancel => {
                tracing::warn!("migration cancelled by the operator; the source is left as it was");
                self.finish(
                    ctx,
                    Phase::Cancelled,
                    Some("cancelled by the operator".into()),
                );
                Ok(serde_json::json!({"phase": "cancelled"}))
            }
        }
    }

    fn build_report(&self, verification: Verification) -> Report {
        let p = &self.engine.progress;
        let downtime = self
            .cutover_confirmed
            .map(|t| t.elapsed().as_secs_f64())
            .unwrap_or(0.0);
        let duration = match self.state.started_at {
            Some(s) => (unix_now() - s).max(0) as f64,
            None => self.run_started.elapsed().as_secs_f64(),
        };
        Report {
            events_synced: p.events_applied.load(Ordering::Relaxed),
            downtime_seconds: downtime,
            duration_seconds: duration.max(self.run_started.elapsed().as_secs_f64()),
            documents_copied: p.documents_copied.load(Ordering::Relaxed),
            bytes_copied: p.bytes_copied.load(Ordering::Relaxed),
            collections_copied: self.copy_summary.collections,
            views_copied: self.copy_summary.views,
            indexes_copied: self.copy_summary.indexes,
            verification,
            late_writes_detected: p.late_writes.load(Ordering::Relaxed),
            skipped: vec![
                "users and roles (create them on the destination)".into(),
                "search indexes".into(),
                "system collections and the admin, local and config databases".into(),
            ],
        }
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.coordinator =
            Some(Coordinator::new(self.engine.clone(), ctx.address().recipient()).start());
        if let Some(expires) = self.state.window_expires_at {
            self.engine
                .progress
                .window_expires_at
                .store(expires, Ordering::Relaxed);
        }
        self.engine
            .progress
            .events_applied
            .store(self.state.events_applied, Ordering::Relaxed);
        ctx.run_interval(WINDOW_CHECK, |act, ctx| {
            act.report_copy_lag();
            act.check_window(ctx);
        });
        if self.write_blocked {
            tracing::warn!("an interrupted cutover left the source's writes blocked (cutover.enforce_write_block): request the cutover again, or cancel to give the source its writes back");
        }
        if self.state.copy_complete {
            self.engine.progress.set_phase(Phase::Syncing);
            // The plan tells the report what was copied.
            let engine = self.engine.clone();
            ctx.spawn(
                async move { engine.checkpoints.load_plan().await }
                    .into_actor(self)
                    .map(|r, act, _| {
                        if let Ok((plan, ranges)) = r {
                            act.copy_summary.collections =
                                plan.iter().filter(|n| !n.is_view).count() as u64;
                            act.copy_summary.views =
                                plan.iter().filter(|n| n.is_view).count() as u64;
                            act.copy_summary.indexes =
                                plan.iter().map(|n| n.indexes.len() as u64).sum();
                            let p = &act.engine.progress;
                            p.documents_copied
                                .store(ranges.iter().map(|r| r.documents).sum(), Ordering::Relaxed);
                            p.bytes_copied
                                .store(ranges.iter().map(|r| r.bytes).sum(), Ordering::Relaxed);
                            p.documents_estimated.store(
                                plan.iter().map(|n| n.documents_estimated).sum(),
                                Ordering::Relaxed,
                            );
                            p.bytes_estimated.store(
                                plan.iter().map(|n| n.bytes_estimated).sum(),
                                Ordering::Relaxed,
                            );
                        }
                    }),
            );
            self.start_tailer(ctx);
        } else {
            self.start_copier(ctx);
            if self.engine.config.runtime.spool_dir.is_some() {
                // Read changes into the spool while the copy runs.
                self.start_tailer(ctx);
            }
        }
    }
}

impl Handler<CopyOutcome> for Supervisor {
    type Result = ();
    fn handle(&mut self, msg: CopyOutcome, ctx: &mut Self::Context) {
        self.copier = None;
        match msg.0 {
            Ok(summary) => {
                self.healthy();
                self.copy_summary = summary;
                self.state.copy_complete = true;
                let engine = self.engine.clone();
                ctx.spawn(
                    async move { engine.checkpoints.set_state(doc! {"copy_complete": true}).await }.into_actor(self).map(|r, act, ctx| match r {
                        Ok(()) => {
                            tracing::info!("initial copy finished; applying changes");
                            act.copy_done_tx.send_replace(true);
                            if act.tailer.is_some() {
                                act.set_phase(ctx, Phase::Syncing);
                            } else {
                                act.start_tailer(ctx);
                            }
                        }
                        Err(e) => {
                            let transient = matches!(&e, crate::checkpoint::CheckpointError::Cluster(c) if c.is_transient());
                            act.on_failure(ctx, ActorFailure::new("supervisor", &e, transient), |act, ctx| act.start_copier(ctx));
                        }
                    }),
                );
            }
            Err(failure) => self.on_failure(ctx, failure, |act, ctx| act.start_copier(ctx)),
        }
    }
}

impl Handler<SyncStatus> for Supervisor {
    type Result = ();
    fn handle(&mut self, msg: SyncStatus, ctx: &mut Self::Context) {
        self.healthy();
        let threshold = self.engine.config.cutover.lag_threshold_seconds as f64;
        match self.phase() {
            Phase::Syncing if msg.lag_seconds <= threshold => {
                if self.state.window_expires_at.is_none() {
                    let expires =
                        unix_now() + window_seconds(self.engine.config.cutover.window_hours);
                    self.state.window_expires_at = Some(expires);
                    self.engine
                        .progress
                        .window_expires_at
                        .store(expires, Ordering::Relaxed);
                    let engine = self.engine.clone();
                    ctx.spawn(
                        async move {
                            if let Err(e) = engine.checkpoints.set_state(doc! {"window_expires_at": expires}).await {
                                tracing::warn!(error = %error_chain(&e), "could not record the cutover window");
                            }
                        }
                        .into_actor(self),
                    );
                    self.set_phase(ctx, Phase::ReadyForCutover);
                    crate::notify::send(
                        &self.engine,
                        "ready_for_cutover",
                        "the destination is in sync; ready for cutover",
                    );
                }
                self.set_phase(ctx, Phase::ReadyForCutover);
            }
            Phase::ReadyForCutover if msg.lag_seconds > threshold * 4.0 => {
                self.set_phase(ctx, Phase::Syncing)
            }
            _ => {}
        }
    }
}

impl Handler<TailerStopped> for Supervisor {
    type Result = ();
    fn handle(&mut self, msg: TailerStopped, ctx: &mut Self::Context) {
        self.tailer = None;
        self.on_failure(ctx, msg.0, |act, ctx| act.start_tailer(ctx));
    }
}

impl Handler<LockLost> for Supervisor {
    type Result = ();
    fn handle(&mut self, msg: LockLost, ctx: &mut Self::Context) {
        self.finish(ctx, Phase::Failed, Some(msg.0.message));
    }
}

impl Handler<CutoverStarted> for Supervisor {
    type Result = ();
    fn handle(&mut self, msg: CutoverStarted, ctx: &mut Self::Context) {
        if msg.attempt != self.cutover_attempt || self.phase() != Phase::CuttingOver {
            tracing::debug!(
                attempt = msg.attempt,
                "ignoring the handshake of an ended cutover attempt"
            );
            return;
        }
        match msg.result {
            Ok(optime) => {
                tracing::info!(optime = ?optime, "draining to the source's optime");
                self.drain_target = Some(optime);
                self.drain_tx.send_replace(Some(optime));
            }
            Err(e) => {
                self.engine.progress.set_error(format!("cutover: {e}"));
                self.refuse_cutover(ctx);
            }
        }
    }
}

impl Handler<Drained> for Supervisor {
    type Result = ();
    fn handle(&mut self, msg: Drained, ctx: &mut Self::Context) {
        // Only the first report of the current attempt's target starts a verification.
        if self.phase() != Phase::CuttingOver || self.drain_target != Some(msg.0) {
            return;
        }
        self.drain_target = None;
        tracing::info!("drained; verifying");
        let attempt = self.cutover_attempt;
        let engine = self.engine.clone();
        ctx.spawn(
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
            .into_actor(self)
            .map(move |result, _, ctx| ctx.notify(Verified { attempt, result })),
        );
    }
}

impl Handler<Verified> for Supervisor {
    type Result = ();
    fn handle(&mut self, msg: Verified, ctx: &mut Self::Context) {
        if msg.attempt != self.cutover_attempt || self.phase() != Phase::CuttingOver {
            tracing::debug!(
                attempt = msg.attempt,
                "ignoring the verification of an ended cutover attempt"
            );
            return;
        }
        match msg.result {
            Ok((data, strict)) if data.passed && strict.passed => {
                let report = self.build_report(strict);
                println!("{report}");
                *self.engine.progress.report.write() = Some(report);
                self.finish(ctx, Phase::Completed, None);
                crate::notify::send(
                    &self.engine,
                    "completed",
                    "migration completed; verification passed",
                );
            }
            Ok((data, strict)) => {
                let failed = if data.passed { strict } else { data };
                let names: Vec<String> = failed
                    .mismatches
                    .iter()
                    .map(|m| format!("{} ({}: {})", m.namespace, m.kind, m.detail))
                    .collect();
                let msg = format!("verification failed, cutover refused: {}", names.join("; "));
                tracing::error!("{msg}");
                self.engine.progress.set_error(msg);
                *self.engine.progress.report.write() = Some(self.build_report(failed));
                self.refuse_cutover(ctx);
            }
            Err(e) => {
                self.engine
                    .progress
                    .set_error(format!("verification could not run: {e}"));
                self.refuse_cutover(ctx);
            }
        }
    }
}

impl Supervisor {
    /// Back to ready_for_cutover after a refused cutover: stop draining and give the
    /// source its writes back if Ferry blocked them.
    fn refuse_cutover(&mut self, ctx: &mut Context<Self>) {
        self.write_block.end_attempts();
        self.drain_tx.send_replace(None);
        self.drain_target = None;
        self.cutover_confirmed = None;
        if self.write_blocked {
            let engine = self.engine.clone();
            let write_block = self.write_block.clone();
            self.write_blocked = false;
            ctx.spawn(
                async move { write_block.lift(&engine).await }
                    .into_actor(self)
                    .map(|result, act, _| match result {
                        Ok(()) => tracing::info!("cutover refused; the source takes writes again"),
                        Err(e) => {
                            // Still blocked: the run's ending tries again.
                            act.write_blocked = true;
                            tracing::error!(error = %error_chain(&e), "could not lift the write block on the source: run setUserWriteBlockMode {{global: false}} on it, or cancel the migration");
                        }
                    }),
            );
        }
        self.set_phase(ctx, Phase::ReadyForCutover);
    }
}

impl Handler<Control> for Supervisor {
    type Result = ();
    fn handle(&mut self, msg: Control, ctx: &mut Self::Context) {
        let reply = self.handle_control(msg.0, ctx);
        let _ = msg.1.send(reply);
    }
}

impl Handler<Shutdown> for Supervisor {
    type Result = ();
    fn handle(&mut self, _msg: Shutdown, ctx: &mut Self::Context) {
        tracing::info!("shutting down; the next `ferry run` resumes from the checkpoints");
        self.stop_workers(ctx);
        let engine = self.engine.clone();
        let done = self.done.take();
        let phase = self.phase();
        // A stopped Ferry must not leave the source without writes.
        self.write_block.end_attempts();
        let unblock = self.write_blocked.then(|| self.write_block.clone());
        self.write_blocked = false;
        ctx.spawn(
            async move {
                if let Some(write_block) = unblock {
                    if let Err(e) = write_block.lift(&engine).await {
                        tracing::error!(error = %error_chain(&e), "could not lift the write block on the source: run setUserWriteBlockMode {{global: false}} on it");
                    }
                }
                let _ = engine.checkpoints.release_lease().await;
                if let Some(done) = done {
                    let _ = done.send(RunOutcome {
                        phase,
                        report: None,
                        error: Some("stopped; run again to resume".into()),
                    });
                }
            }
            .into_actor(self),
        );
    }
}
