//! The shared, read-mostly view of a running migration: phase, lag, per-namespace copy
//! progress, counters. Actors write it; the API and metrics read it without messaging
//! any actor.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

/// The run's phase, as the API and metrics report it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Validating,
    Initializing,
    Copying,
    Syncing,
    ReadyForCutover,
    CuttingOver,
    Completed,
    Paused,
    Cancelled,
    Failed,
    Expired,
}

impl Phase {
    pub const ALL: [Phase; 11] = [
        Phase::Validating,
        Phase::Initializing,
        Phase::Copying,
        Phase::Syncing,
        Phase::ReadyForCutover,
        Phase::CuttingOver,
        Phase::Completed,
        Phase::Paused,
        Phase::Cancelled,
        Phase::Failed,
        Phase::Expired,
    ];
    pub fn as_str(&self) -> &'static str {
        match self {
            Phase::Validating => "validating",
            Phase::Initializing => "initializing",
            Phase::Copying => "copying",
            Phase::Syncing => "syncing",
            Phase::ReadyForCutover => "ready_for_cutover",
            Phase::CuttingOver => "cutting_over",
            Phase::Completed => "completed",
            Phase::Paused => "paused",
            Phase::Cancelled => "cancelled",
            Phase::Failed => "failed",
            Phase::Expired => "expired",
        }
    }
    /// A phase the run never leaves.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Phase::Completed | Phase::Cancelled | Phase::Failed | Phase::Expired
        )
    }
}

/// Copy state of one namespace.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct NamespaceProgress {
    /// "pending", "copying", "copied", "syncing", "dropped".
    pub status: String,
    pub documents_copied: u64,
    pub bytes_copied: u64,
    pub documents_estimated: u64,
    pub bytes_estimated: u64,
    pub indexes: u64,
    pub events_applied: u64,
}

/// Where the background comparison of both sides (baseline verification) stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BaselineState {
    /// Not started: the destination is not in sync yet, or it is disabled.
    #[default]
    Pending,
    Running,
    /// Every namespace compared; cutover re-reads only what changed since.
    Done,
    /// Cutover compares every document (the reason is in `detail`).
    Failed,
}

/// The baseline verification, as `GET /api/v1/progress` shows it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BaselineView {
    pub state: BaselineState,
    /// Source documents compared so far.
    pub documents_compared: u64,
    /// Chunks (of up to 1000 documents) that differed; re-read at cutover.
    pub chunks_differing: u64,
    /// Documents changed on either side since the baseline began; re-read at cutover.
    pub documents_changed: u64,
    pub detail: Option<String>,
}

/// Everything the API shows, shared between actors and readers.
#[derive(Default)]
pub struct Progress {
    pub phase: RwLock<Option<Phase>>,
    /// Copy and apply progress per namespace ("db.coll").
    pub namespaces: DashMap<String, NamespaceProgress>,
    pub documents_copied: AtomicU64,
    pub bytes_copied: AtomicU64,
    pub documents_estimated: AtomicU64,
    pub bytes_estimated: AtomicU64,
    pub events_applied: AtomicU64,
    /// Bytes of change events written to the spool while copying.
    pub spooled_bytes: AtomicU64,
    /// Data events on the source after the cutover optime (writes that should not happen),
    /// read up to the completion.
    pub late_writes: AtomicU64,
    /// Transient failures Ferry retried: a worker restarted from its checkpoint, a copy
    /// insert or a cutover handshake sent again. Shows that faults happened and were recovered from.
    pub retries: AtomicU64,
    /// Whether the spool (`runtime.spool_max_bytes`) is full: reading changes waits for
    /// the copy to end, and the source's oplog must still hold them then.
    pub spool_full: std::sync::atomic::AtomicBool,
    /// The cutover window's expiry warning, once given (cleared by `extend`).
    pub window_warning: RwLock<Option<String>>,
    /// Balancers found started again mid-run, or that could not be restored, each with
    /// the command to run.
    pub balancer_warnings: RwLock<Vec<String>>,
    pub baseline: RwLock<BaselineView>,
    /// How update events are applied: "delta" (their changed fields) or "lookup" (the
    /// source's whole document); unset until the tailer starts.
    pub update_events: RwLock<Option<&'static str>>,
    /// Documents changed since the baseline began (kept apart: updated per event).
    pub baseline_changed: AtomicU64,
    /// Lag in milliseconds; -1 while unknown (before syncing starts).
    pub lag_ms: AtomicI64,
    /// Unix seconds when the cutover window expires (0: not started).
    pub window_expires_at: AtomicI64,
    pub last_error: RwLock<Option<String>>,
    /// Final report once completed.
    pub report: RwLock<Option<crate::report::Report>>,
}

pub type SharedProgress = Arc<Progress>;

impl Progress {
    pub fn new() -> SharedProgress {
        let p = Progress::default();
        p.lag_ms.store(-1, Ordering::Relaxed);
        Arc::new(p)
    }
    pub fn phase(&self) -> Phase {
        self.phase.read().unwrap_or(Phase::Validating)
    }
    pub fn set_phase(&self, phase: Phase) {
        *self.phase.write() = Some(phase);
    }
    pub fn set_error(&self, message: impl Into<String>) {
        *self.last_error.write() = Some(message.into());
    }
    pub fn lag_seconds(&self) -> Option<f64> {
        let ms = self.lag_ms.load(Ordering::Relaxed);
        (ms >= 0).then(|| ms as f64 / 1000.0)
    }
    pub fn namespace_mut(
        &self,
        ns: &str,
    ) -> dashmap::mapref::one::RefMut<'_, String, NamespaceProgress> {
        self.namespaces.entry(ns.to_string()).or_default()
    }
}
