//! The coordinator's balancers: at the start, each sharded side's balancer is recorded in
//! `__ferry` (mode, `activeWindow`, per-collection `noBalance`) and then stopped, waiting
//! for a round in progress to end; while the run goes on, one that someone re-enables is
//! stopped again and reported; in every ending (completion, cancel, failure, expiry) it
//! is restored exactly as recorded — from the record, so an ending reached by a later
//! process after a crash restores what the first one found. A restore that fails is said
//! in the log, in the progress (`balancer_warnings`), in the webhook
//! (`balancer_restore_failed`) and in the report, with the commands to run.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tracing::Instrument;

use super::Coordinator;
use crate::actors::{error_chain, SharedEngine};
use crate::checkpoint::CheckpointError;
use crate::cluster::balancer::{self, BalancerSettings};
use crate::cluster::{Cluster, ClusterError, Side};

/// How often the stopped balancers are checked for someone having started them again.
pub const CHECK_EVERY: Duration = Duration::from_secs(2);
/// Tries of one side's restore when its errors are transient (an election, a dropped
/// connection).
const RESTORE_ATTEMPTS: u32 = 5;

/// The balancers' state in the coordinator.
#[derive(Debug, Default)]
pub struct BalancerWatch {
    /// Sides whose balancer Ferry keeps stopped (watched for re-enabling).
    held: Vec<Side>,
    /// A check is under way.
    checking: bool,
    /// Serializes the stop at the start, the checks and the restore at the end, so none
    /// acts on a balancer after the restore; true once the run concluded (nothing stops
    /// a balancer any more).
    gate: BalancerGate,
}

/// See [`BalancerWatch::gate`].
pub type BalancerGate = Arc<tokio::sync::Mutex<bool>>;

impl BalancerWatch {
    pub fn gate(&self) -> BalancerGate {
        self.gate.clone()
    }
}

/// The sharded sides of the engine, with their clusters.
fn sharded_sides(engine: &SharedEngine) -> Vec<(Side, &Cluster)> {
    let mut sides = Vec::new();
    if engine.source_topology.is_sharded() {
        sides.push((Side::Source, &engine.source));
    }
    if engine.destination_topology.is_sharded() {
        sides.push((Side::Destination, &engine.destination));
    }
    sides
}

/// Why the balancers could not be stopped at the start.
#[derive(Debug, thiserror::Error)]
pub enum StopError {
    #[error("{side}: could not read or record its balancer's state before stopping it; nothing was stopped on it: {source}")]
    Record {
        side: Side,
        #[source]
        source: CheckpointError,
    },
    #[error("could not stop the balancer; start the migration again once balancerStop works on the router (the recorded state is restored when the run ends)")]
    Stop(#[from] ClusterError),
}

impl StopError {
    pub fn is_transient(&self) -> bool {
        match self {
            StopError::Record { source, .. } => source.is_transient(),
            StopError::Stop(e) => e.is_transient(),
        }
    }
}

/// Records each sharded side's balancer (unless an earlier process recorded it) and stops
/// it. Returns the sides now held stopped.
pub async fn stop_all(engine: &SharedEngine, gate: &BalancerGate) -> Result<Vec<Side>, StopError> {
    let concluded = gate.lock().await;
    let mut held = Vec::new();
    if *concluded {
        return Ok(held);
    }
    for (side, cluster) in sharded_sides(engine) {
        let record = |source| StopError::Record { side, source };
        let recorded = engine
            .checkpoints
            .load_state()
            .await
            .map_err(record)?
            .unwrap_or_default()
            .balancers_before
            .contains_key(&side.to_string());
        if !recorded {
            let before = balancer::read(cluster)
                .await
                .map_err(|e| record(e.into()))?;
            engine
                .checkpoints
                .record_balancer(side, &before)
                .await
                .map_err(record)?;
            tracing::info!(side = %side, mode = %before.mode, active_window = ?before.active_window, no_balance = ?before.no_balance, "recorded the balancer's settings");
        }
        balancer::stop(cluster).await?;
        tracing::info!(side = %side, "balancer stopped for the migration");
        held.push(side);
    }
    Ok(held)
}

/// Restores every recorded balancer; returns a warning per side that could not be
/// restored (already logged, announced and counted).
pub async fn restore_all(engine: &SharedEngine, gate: &BalancerGate) -> Vec<String> {
    let mut concluded = gate.lock().await;
    *concluded = true;
    let recorded = match engine.checkpoints.load_state().await {
        Ok(state) => state.unwrap_or_default().balancers_before,
        Err(e) => {
            let warning = format!(
                "could not read the balancers' recorded settings ({}): restore each sharded side's balancer as recorded in the destination's __ferry.state document (balancers_before)",
                error_chain(&e)
            );
            announce_failure(engine, &warning);
            return vec![warning];
        }
    };
    let mut warnings = Vec::new();
    for (side, cluster) in sharded_sides(engine) {
        let Some(before) = recorded.get(&side.to_string()) else {
            continue;
        };
        match restore_side(cluster, before).await {
            Ok(()) => {
                tracing::info!(side = %side, mode = %before.mode, "balancer restored as it was before the migration");
                if let Err(e) = engine.checkpoints.forget_balancer(side).await {
                    tracing::warn!(side = %side, error = %error_chain(&e), "could not clear the balancer's record; a later run restores it again, which changes nothing");
                }
            }
            Err(e) => {
                let warning = format!(
                    "{side}: could not restore the balancer as it was before the migration ({}): on the {side}'s router run: {}",
                    error_chain(&e),
                    before.restore_commands()
                );
                announce_failure(engine, &warning);
                warnings.push(warning);
            }
        }
    }
    warnings
}

async fn restore_side(cluster: &Cluster, before: &BalancerSettings) -> Result<(), ClusterError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match balancer::restore(cluster, before).await {
            Err(e) if e.is_transient() && attempt < RESTORE_ATTEMPTS => {
                tracing::warn!(error = %error_chain(&e), attempt, "could not restore the balancer; retrying");
                tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
            }
            other => return other,
        }
    }
}

/// A balancer warning, everywhere the operator may look: log, progress, webhook.
fn announce_failure(engine: &SharedEngine, warning: &str) {
    crate::metrics::record_error("balancer");
    tracing::error!("{warning}");
    engine
        .progress
        .balancer_warnings
        .write()
        .push(warning.to_string());
    crate::notify::send(engine, "balancer_restore_failed", warning);
}

impl Coordinator {
    pub(super) fn hold_balancers(&mut self, held: Vec<Side>) {
        self.balancers.held = held;
    }

    /// The run is ending: stop watching, the restore follows.
    pub(super) fn release_balancers(&mut self) {
        self.balancers.held.clear();
    }

    /// Stops again a held balancer that someone started, and says so.
    pub(super) fn check_balancers(&mut self, ctx: &mut Context<Self>) {
        if self.balancers.held.is_empty()
            || self.balancers.checking
            || self.engine.progress.phase().is_terminal()
        {
            return;
        }
        self.balancers.checking = true;
        let engine = self.engine.clone();
        let held = self.balancers.held.clone();
        let gate = self.balancers.gate();
        ctx.spawn(
            async move {
                let concluded = gate.lock().await;
                if *concluded {
                    return;
                }
                for (side, cluster) in sharded_sides(&engine) {
                    if !held.contains(&side) {
                        continue;
                    }
                    let restarted = match balancer::mode(cluster).await {
                        Ok(mode) => mode != "off",
                        Err(e) => {
                            tracing::warn!(side = %side, error = %error_chain(&e), "could not check the balancer; will try again");
                            continue;
                        }
                    };
                    if !restarted {
                        continue;
                    }
                    let warning = match balancer::stop(cluster).await {
                        Ok(()) => format!("{side}: someone started the balancer during the migration; Ferry stopped it again (it is restored as it was before the migration when the migration ends)"),
                        Err(e) => format!("{side}: someone started the balancer during the migration and Ferry could not stop it again ({}): run sh.stopBalancer() on the {side}'s router; chunk migrations during the copy can leave orphaned or missing documents", error_chain(&e)),
                    };
                    tracing::warn!("{warning}");
                    engine.progress.balancer_warnings.write().push(warning.clone());
                    crate::notify::send(&engine, "balancer_restarted", &warning);
                }
            }
            .instrument(tracing::info_span!("coordinator", role = "balancers"))
            .into_actor(self)
            .map(|(), act, _| act.balancers.checking = false),
        );
    }
}
