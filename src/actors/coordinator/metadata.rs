//! The coordinator's watch of a sharded source's `config` metadata: a snapshot when the
//! run starts, compared every [`CHECK_EVERY`] while data moves, and a change Ferry cannot
//! follow (see [`crate::cluster::metadata::unfollowable_changes`]) ends the run with a
//! message naming the namespace and what to do — never a silent divergence.
//!
//! The snapshot is recorded in `__ferry` when the run first starts, and a later process
//! compares with that record, so a change made while no Ferry process ran is seen too.

use std::time::Duration;

use actix::prelude::*;
use tracing::Instrument;

use super::{Alert, Coordinator};
use crate::actors::{error_chain, SharedEngine};
use crate::cluster::metadata::{self, ShardingMetadata};
use crate::progress::Phase;

/// How often the source's metadata is read again.
pub const CHECK_EVERY: Duration = Duration::from_secs(2);

/// The watch's state in the coordinator.
#[derive(Debug, Default)]
pub struct MetadataWatch {
    /// The metadata when the watch began.
    baseline: Option<ShardingMetadata>,
    /// A read is under way.
    checking: bool,
    /// A change was reported: the run is ending.
    reported: bool,
}

/// The snapshot the watch compares with: the one recorded when the run first started,
/// or, on a first start, the source's metadata now (recorded for later processes).
/// None when it cannot be read: the first check takes it then.
pub async fn first_snapshot(engine: &SharedEngine) -> Option<ShardingMetadata> {
    match engine.checkpoints.load_state().await {
        Ok(Some(state)) if state.source_metadata.is_some() => return state.source_metadata,
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(error = %error_chain(&e), "could not read the recorded sharding metadata of the source; comparing with the metadata now");
        }
    }
    let now = match metadata::read(&engine.source).await {
        Ok(now) => now,
        Err(e) => {
            tracing::warn!(error = %error_chain(&e), "could not read the source's sharding metadata; the watch takes its snapshot later");
            return None;
        }
    };
    if let Err(e) = engine.checkpoints.record_source_metadata(&now).await {
        tracing::warn!(error = %error_chain(&e), "could not record the source's sharding metadata; a restarted run compares with the metadata it finds");
    }
    Some(now)
}

impl MetadataWatch {
    /// Begins from `snapshot` (None: the first check takes it).
    pub fn start_from(&mut self, snapshot: Option<ShardingMetadata>) {
        if self.baseline.is_none() {
            self.baseline = snapshot;
        }
    }
}

impl Coordinator {
    pub(super) fn check_metadata(&mut self, ctx: &mut Context<Self>) {
        let phase = self.engine.progress.phase();
        let watching = matches!(
            phase,
            Phase::Copying | Phase::Syncing | Phase::ReadyForCutover | Phase::Paused
        );
        if !self.engine.source_topology.is_sharded()
            || !watching
            || self.metadata.checking
            || self.metadata.reported
        {
            return;
        }
        self.metadata.checking = true;
        let engine = self.engine.clone();
        ctx.spawn(
            async move { metadata::read(&engine.source).await }
                .instrument(tracing::info_span!("coordinator", role = "metadata"))
                .into_actor(self)
                .map(|result, act, _| {
                    act.metadata.checking = false;
                    let now = match result {
                        Ok(now) => now,
                        Err(e) => {
                            tracing::warn!(error = %error_chain(&e), "could not read the source's sharding metadata; will try again");
                            return;
                        }
                    };
                    let Some(before) = &act.metadata.baseline else {
                        act.metadata.baseline = Some(now);
                        return;
                    };
                    let changes = metadata::unfollowable_changes(before, &now, &act.engine.filter);
                    if changes.is_empty() || act.engine.progress.phase().is_terminal() {
                        return;
                    }
                    act.metadata.reported = true;
                    let message = changes.join("; ");
                    tracing::error!(change = %message, "the source's sharding metadata changed; stopping the migration");
                    act.alerts.do_send(Alert::MetadataChanged(format!("source: {message}")));
                }),
        );
    }
}
