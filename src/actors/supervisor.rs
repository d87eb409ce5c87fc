//! Supervisor: owns the run's phase, starts the other actors, restarts a failed one from
//! its checkpoint with backoff, answers operator requests (cutover, extend, pause, resume,
//! cancel) — forwarding to the coordinator what it owns (the window, the cutover
//! handshake, the balancers) — and reports the outcome.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bson::{doc, Timestamp};
use tokio::sync::{oneshot, watch};

use super::coordinator::cutover::{BeginCutover, LiftWriteBlock, VerifyCutover};
use super::coordinator::window::{ExtendWindow, OpenWindow};
use super::coordinator::{Alert, Conclude, Coordinator, StartRun};
use super::copier::{Copier, CopyOutcome, CopyPlanner, CopySummary};
use super::tailer::{DrainTarget, Drained, SyncStatus, Tailer, TailerPeers, TailerStopped};
use super::{error_chain, ActorFailure, SharedEngine};
use crate::checkpoint::{unix_now, RunState};
use crate::control::{ControlError, ControlReply, ControlRequest};
use crate::progress::Phase;
use crate::report::{Report, Verification};

/// The `ending` of the report a refused cutover leaves until the run ends (it syncs
/// again, and a later cutover can complete).
pub const REFUSED_ENDING: &str = "cutover_refused";

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
/// How often the lag shown while copying is updated.
const COPY_LAG_EVERY: Duration = Duration::from_secs(1);
/// Wait before a failed baseline verification starts again.
const BASELINE_RETRY: Duration = Duration::from_secs(30);

/// How long an ending waits for destination writes still in flight before it gives the
/// lease back; past it, the lease is left to expire on its own.
const LEASE_RELEASE_WAIT: Duration = Duration::from_secs(30);

/// Gives the destination lease back once no write of this run is in flight. A write that
/// has not returned may still land, so while one is out the lease is kept and expires on
/// its own: a successor taking it over waits a full lease, as after a crash.
async fn release_lease_after_writes(engine: &SharedEngine) {
    let in_flight = engine.generation.superseded_in_flight();
    if !engine
        .generation
        .superseded_writes_returned(Some(LEASE_RELEASE_WAIT))
        .await
    {
        tracing::warn!(
            writes = in_flight,
            "destination writes of this run have not returned; the destination lock is not released but left to expire, so that no other run writes while they may still land"
        );
        return;
    }
    if let Err(e) = engine.checkpoints.release_lease().await {
        tracing::warn!(error = %error_chain(&e), "could not release the destination lock; it expires on its own");
    }
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
    drain_tx: watch::Sender<Option<DrainTarget>>,
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
    /// The cutover window was opened (the destination was in sync once).
    window_open: bool,
    /// The current cutover attempt: messages of an earlier one are ignored.
    cutover_attempt: u64,
    /// The optime the current attempt drains to, until its `Drained` arrives.
    drain_target: Option<Timestamp>,
    /// The passed verification of the current attempt, while the tailer drains to the
    /// source's optime at completion (late writes up to there are counted).
    completing: Option<Verification>,
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
        let window_open = state.window_expires_at.is_some();
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
            window_open,
            cutover_attempt: 0,
            drain_target: None,
            completing: None,
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
        let run = tracing::Instrument::instrument(
            super::verifier::baseline::run(self.engine.clone(), self.paused_tx.subscribe()),
            tracing::info_span!("baseline"),
        );
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
        // The next attempt starts only once every destination write of the failed one has
        // returned: one still in flight could land after the new attempt's writes (see
        // `actors::generation` for why this wait has no deadline of its own).
        let generation = self.engine.generation.clone();
        ctx.spawn(
            async move {
                tokio::time::sleep(delay).await;
                generation.superseded_writes_returned(None).await;
            }
            .into_actor(self)
            .map(move |_, act, ctx| {
                if !act.phase().is_terminal() {
                    restart(act, ctx);
                }
            }),
        );
    }

    /// Ends the run: stops actors, restores the balancers, releases the lock, reports.
    fn finish(&mut self, ctx: &mut Context<Self>, phase: Phase, error: Option<String>) {
        if self.done.is_none() {
            return;
        }
        self.set_phase(ctx, phase);
        // The coordinator outlives the workers: it concludes the run below.
        let coordinator = self.coordinator.clone();
        self.stop_workers(ctx);
        let engine = self.engine.clone();
        let done = self.done.take();
        let mut report = self.engine.progress.report.read().clone();
        let reports_this_ending = report.as_ref().is_some_and(|r| r.ending == phase.as_str());
        if !reports_this_ending && phase != Phase::Completed && phase.is_terminal() {
            // What was done before the ending, for the API, `ferry report` and a later
            // `ferry run`: a cancelled, failed or expired run has its report too. A
            // refused cutover's report (ending "cutover_refused") is replaced by the
            // ending's.
            let mut ended = self.build_report(Verification::default());
            ended.ending = phase.as_str().to_string();
            ended.reason = error.clone().or_else(|| match phase {
                Phase::Cancelled => Some("cancelled by the operator".into()),
                Phase::Expired => Some("the cutover window expired".into()),
                _ => None,
            });
            *self.engine.progress.report.write() = Some(ended.clone());
            report = Some(ended);
        }
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
                // Every ending, completion included, gives the source its writes back
                // and the balancers their settings.
                let warnings = match coordinator {
                    Some(coordinator) => coordinator.send(Conclude).await.unwrap_or_else(|e| {
                        let warning = format!("the coordinator stopped before it restored the balancers ({e}): run `ferry run` again to restore them, or restore them as recorded in the destination's __ferry.state document (balancers_before)");
                        tracing::error!("{warning}");
                        vec![warning]
                    }),
                    None => Vec::new(),
                };
                let all_warnings = engine.progress.balancer_warnings.read().clone();
                if let Some(report) = report.as_mut().filter(|_| !all_warnings.is_empty()) {
                    report.balancer_warnings = all_warnings;
                    for warning in &warnings {
                        println!("  balancer:            {warning}");
                    }
                    *engine.progress.report.write() = Some(report.clone());
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
                release_lease_after_writes(&engine).await;
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
    /// Has the coordinator record and stop the balancers, then starts moving data; a
    /// failure to stop them is retried (or fails the run) like a worker's.
    fn start_run(&mut self, ctx: &mut Context<Self>) {
        let Some(coordinator) = self.coordinator.clone() else {
            return;
        };
        ctx.spawn(
            coordinator
                .send(StartRun)
                .into_actor(self)
                .map(|result, act, ctx| {
                    let failure = match result {
                        Ok(Ok(())) => return act.begin(ctx),
                        Ok(Err(failure)) => failure,
                        Err(e) => ActorFailure::new("coordinator", &e, false),
                    };
                    act.on_failure(ctx, failure, |act, ctx| act.start_run(ctx));
                }),
        );
    }

    /// Starts copying, or applying changes when the copy is done.
    fn begin(&mut self, ctx: &mut Context<Self>) {
        if self.phase().is_terminal() {
            return;
        }
        if self.state.copy_complete {
            self.start_tailer(ctx);
        } else {
            self.start_copier(ctx);
            if self.engine.config.runtime.spool_dir.is_some() {
                // Read changes into the spool while the copy runs.
                self.start_tailer(ctx);
            }
        }
    }

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
                let block = self.engine.config.cutover.enforce_write_block;
                self.cutover_attempt += 1;
                let cutover = self.cutover_attempt;
                self.drain_target = None;
                if let Some(coordinator) = self.coordinator.clone() {
                    ctx.spawn(
                        async move {
                            coordinator
                                .send(BeginCutover)
                                .await
                                .unwrap_or_else(|e| Err(format!("the coordinator stopped: {e}")))
                        }
                        .into_actor(self)
                        .map(move |result, _, ctx| {
                            ctx.notify(CutoverStarted {
                                attempt: cutover,
                                result,
                            })
                        }),
                    );
                }
                Ok(
                    serde_json::json!({"accepted": true, "phase": "cutting_over", "write_block": block}),
                )
            }
            ControlRequest::Extend { .. } => Err(ControlError::conflict(
                "extend is answered by the coordinator; this request did not reach it",
            )),
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

    /// Forwards an extension of the cutover window to the coordinator, which owns it.
    fn extend_window(
        &mut self,
        ctx: &mut Context<Self>,
        hours: f64,
        reply_to: oneshot::Sender<ControlReply>,
    ) {
        let phase = self.phase();
        let refusal = if phase.is_terminal() {
            Some(ControlError::conflict(format!(
                "the migration is {}; nothing more to do",
                phase.as_str()
            )))
        } else if !(hours.is_finite() && hours > 0.0) {
            Some(ControlError::bad_request("hours must be a positive number"))
        } else {
            None
        };
        if let Some(refusal) = refusal {
            let _ = reply_to.send(Err(refusal));
            return;
        }
        let Some(coordinator) = self.coordinator.clone() else {
            let _ = reply_to.send(Err(ControlError::conflict("the migration is ending")));
            return;
        };
        ctx.spawn(
            async move {
                let reply = match coordinator.send(ExtendWindow { hours }).await {
                    // RFC 3339, as `window_expires_at` in `/api/v1/progress`.
                    Ok(expires) => Ok(serde_json::json!({
                        "window_expires_at": crate::api::format_rfc3339(expires),
                    })),
                    Err(_) => Err(ControlError::conflict("the migration is ending")),
                };
                let _ = reply_to.send(reply);
            }
            .into_actor(self),
        );
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
            ending: Phase::Completed.as_str().to_string(),
            reason: None,
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
            balancer_warnings: p.balancer_warnings.read().clone(),
        }
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.coordinator = Some(
            Coordinator::new(self.engine.clone(), &self.state, ctx.address().recipient()).start(),
        );
        self.engine
            .progress
            .events_applied
            .store(self.state.events_applied, Ordering::Relaxed);
        ctx.run_interval(COPY_LAG_EVERY, |act, _| act.report_copy_lag());
        if self.state.source_write_blocked {
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
        }
        self.start_run(ctx);
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
                if !self.window_open {
                    self.window_open = true;
                    if let Some(coordinator) = &self.coordinator {
                        coordinator.do_send(OpenWindow);
                    }
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

impl Handler<Alert> for Supervisor {
    type Result = ();
    fn handle(&mut self, msg: Alert, ctx: &mut Self::Context) {
        match msg {
            Alert::LockLost(failure) => self.finish(ctx, Phase::Failed, Some(failure.message)),
            Alert::WindowExpired => {
                if self.phase().is_terminal() || self.phase() == Phase::CuttingOver {
                    return;
                }
                self.finish(ctx, Phase::Expired, Some("cutover window expired".into()));
                crate::notify::send(
                    &self.engine,
                    "expired",
                    "the cutover window expired; syncing stopped",
                );
            }
            Alert::MetadataChanged(message) => {
                crate::metrics::record_error("coordinator");
                self.engine.progress.set_error(message.clone());
                self.finish(ctx, Phase::Failed, Some(message));
            }
        }
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
                self.drain_tx.send_replace(Some(DrainTarget {
                    to: optime,
                    writes_stopped_at: optime,
                }));
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
        if let Some(verification) = self.completing.take() {
            return self.complete(ctx, verification);
        }
        tracing::info!("drained; verifying");
        let attempt = self.cutover_attempt;
        let Some(coordinator) = self.coordinator.clone() else {
            return;
        };
        ctx.spawn(
            async move {
                coordinator
                    .send(VerifyCutover)
                    .await
                    .unwrap_or_else(|e| Err(format!("the coordinator stopped: {e}")))
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
                self.drain_to_completion(ctx, strict)
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
                self.engine.progress.set_error(msg.clone());
                let mut refused = self.build_report(failed);
                refused.ending = REFUSED_ENDING.to_string();
                refused.reason = Some(msg);
                *self.engine.progress.report.write() = Some(refused);
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
    /// The verification passed: before completing, the tailer drains once more, to the
    /// source's optime now, so that every source write since the operator said writes
    /// stopped — during the drain, the verification or up to this point — is read and
    /// counted as a late write (and applied), not only those read before the verification.
    fn drain_to_completion(&mut self, ctx: &mut Context<Self>, verification: Verification) {
        let Some(writes_stopped_at) = self.drain_tx.borrow().map(|d| d.writes_stopped_at) else {
            return self.complete(ctx, verification);
        };
        let engine = self.engine.clone();
        let attempt = self.cutover_attempt;
        ctx.spawn(
            async move {
                super::coordinator::cutover::source_drain_point(&engine, "ferry completion").await
            }
                .into_actor(self)
                .map(move |marked, act, ctx| {
                    if attempt != act.cutover_attempt || act.phase() != Phase::CuttingOver {
                        return;
                    }
                    match marked {
                        Ok(to) => {
                            act.completing = Some(verification);
                            act.drain_target = Some(to);
                            act.drain_tx.send_replace(Some(DrainTarget {
                                to,
                                writes_stopped_at,
                            }));
                        }
                        Err(e) => {
                            tracing::warn!(error = %error_chain(&e), "could not mark the source's optime at completion: source writes since the verification are not counted as late writes");
                            act.complete(ctx, verification);
                        }
                    }
                }),
        );
    }

    fn complete(&mut self, ctx: &mut Context<Self>, verification: Verification) {
        let report = self.build_report(verification);
        println!("{report}");
        *self.engine.progress.report.write() = Some(report);
        self.finish(ctx, Phase::Completed, None);
        crate::notify::send(
            &self.engine,
            "completed",
            "migration completed; verification passed",
        );
    }

    /// Back to ready_for_cutover after a refused cutover: stop draining and give the
    /// source its writes back if Ferry blocked them.
    fn refuse_cutover(&mut self, ctx: &mut Context<Self>) {
        self.drain_tx.send_replace(None);
        self.drain_target = None;
        self.completing = None;
        self.cutover_confirmed = None;
        if let Some(coordinator) = self.coordinator.clone() {
            ctx.spawn(
                async move {
                    match coordinator.send(LiftWriteBlock).await {
                        Ok(Ok(true)) => tracing::info!("cutover refused; the source takes writes again"),
                        Ok(Ok(false)) => {}
                        Ok(Err(e)) => tracing::error!(error = %e, "could not lift the write block on the source: run setUserWriteBlockMode {{global: false}} on it, or cancel the migration"),
                        Err(e) => tracing::error!(error = %e, "could not lift the write block on the source: run setUserWriteBlockMode {{global: false}} on it, or cancel the migration"),
                    }
                }
                .into_actor(self),
            );
        }
        self.set_phase(ctx, Phase::ReadyForCutover);
    }
}

impl Handler<Control> for Supervisor {
    type Result = ();
    fn handle(&mut self, msg: Control, ctx: &mut Self::Context) {
        let Control(request, reply_to) = msg;
        if let ControlRequest::Extend { hours } = request {
            return self.extend_window(ctx, hours, reply_to);
        }
        let reply = self.handle_control(request, ctx);
        let _ = reply_to.send(reply);
    }
}

impl Handler<Shutdown> for Supervisor {
    type Result = ();
    fn handle(&mut self, _msg: Shutdown, ctx: &mut Self::Context) {
        tracing::info!("shutting down; the next `ferry run` resumes from the checkpoints");
        let coordinator = self.coordinator.clone();
        self.stop_workers(ctx);
        let engine = self.engine.clone();
        let done = self.done.take();
        let phase = self.phase();
        ctx.spawn(
            async move {
                // A stopped Ferry must not leave the source without writes; its balancers
                // stay stopped until the run that resumes this one ends.
                if let Some(coordinator) = coordinator {
                    let lifted = coordinator.send(LiftWriteBlock).await;
                    if !matches!(lifted, Ok(Ok(_))) {
                        tracing::error!(outcome = ?lifted, "could not lift the write block on the source: run setUserWriteBlockMode {{global: false}} on it");
                    }
                }
                release_lease_after_writes(&engine).await;
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
