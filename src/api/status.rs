//! The `GET /api/v1/progress` document: one snapshot of the [`Progress`] registry, shaped
//! for operators and shared with the CLI so both sides agree on every field.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};

use crate::progress::{BaselineView, NamespaceProgress, Phase, Progress};

/// Whether the run is still going, coarser than the phase: lets a script wait for
/// `finished` without knowing every phase name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    Running,
    Paused,
    /// Completed, cancelled, failed or expired: the phase says which.
    Finished,
}

impl RunState {
    pub fn as_str(&self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Paused => "paused",
            RunState::Finished => "finished",
        }
    }

    pub fn of(phase: Phase) -> RunState {
        if phase.is_terminal() {
            RunState::Finished
        } else if phase == Phase::Paused {
            RunState::Paused
        } else {
            RunState::Running
        }
    }
}

/// A snapshot of a running migration, as `GET /api/v1/progress` returns it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusView {
    pub state: RunState,
    pub phase: Phase,
    /// Seconds the destination trails the source; `null` until syncing has started.
    pub lag_seconds: Option<f64>,
    /// True when the operator may stop application writes and start cutover.
    pub can_cutover: bool,
    pub documents_copied: u64,
    /// From collection statistics: approximate, and copied can exceed it.
    pub documents_estimated: u64,
    pub bytes_copied: u64,
    pub bytes_estimated: u64,
    pub events_applied: u64,
    /// Bytes of change events kept on disk while the copy runs (`runtime.spool_dir`).
    #[serde(default)]
    pub spooled_bytes: u64,
    /// The spool reached `runtime.spool_max_bytes`: reading changes waits for the copy
    /// to end (nothing is lost while the source's oplog still holds them).
    #[serde(default)]
    pub spool_full: bool,
    /// Transient failures retried so far (restarts from a checkpoint, handshakes sent
    /// again): non-zero means faults happened and were recovered from.
    #[serde(default)]
    pub retries: u64,
    /// Writes that reached the source after the operator confirmed writes had stopped.
    #[serde(default)]
    pub late_writes: u64,
    /// The cutover window's expiry warning, once given: cut over or extend.
    #[serde(default)]
    pub window_warning: Option<String>,
    /// A balancer someone started again mid-run (stopped again), or one Ferry could not
    /// restore when the run ended, each with the command to run.
    #[serde(default)]
    pub balancer_warnings: Vec<String>,
    /// How update events are applied: "delta" (their changed fields) or "lookup" (the
    /// source's whole document: sources before 6.1, or `apply.update_events`).
    #[serde(default)]
    pub update_events: Option<String>,
    /// The background comparison that keeps the cutover short.
    #[serde(default)]
    pub baseline: BaselineView,
    /// When the cutover window closes (RFC 3339, UTC); `null` before it opens.
    pub window_expires_at: Option<String>,
    /// Seconds left in the cutover window (negative once passed), so clients need no
    /// date parser or synchronised clock to show "expires in 3h 12m".
    pub window_expires_in_seconds: Option<i64>,
    /// Per namespace ("db.coll"), sorted so successive snapshots line up.
    pub namespaces: BTreeMap<String, NamespaceProgress>,
    pub last_error: Option<String>,
}

impl StatusView {
    /// Reads the registry without locking out writers for longer than one field read;
    /// counters may be a few updates apart from each other, which a progress view
    /// tolerates. `now_unix` is the current time in Unix seconds.
    pub fn capture(progress: &Progress, now_unix: i64) -> StatusView {
        let phase = progress.phase();
        let expires = progress.window_expires_at.load(Ordering::Relaxed);
        let namespaces = progress
            .namespaces
            .iter()
            .map(|entry| (entry.key().clone(), entry.value().clone()))
            .collect();
        StatusView {
            state: RunState::of(phase),
            phase,
            lag_seconds: progress.lag_seconds(),
            can_cutover: phase == Phase::ReadyForCutover,
            documents_copied: progress.documents_copied.load(Ordering::Relaxed),
            documents_estimated: progress.documents_estimated.load(Ordering::Relaxed),
            bytes_copied: progress.bytes_copied.load(Ordering::Relaxed),
            bytes_estimated: progress.bytes_estimated.load(Ordering::Relaxed),
            events_applied: progress.events_applied.load(Ordering::Relaxed),
            spooled_bytes: progress.spooled_bytes.load(Ordering::Relaxed),
            spool_full: progress.spool_full.load(Ordering::Relaxed),
            retries: progress.retries.load(Ordering::Relaxed),
            late_writes: progress.late_writes.load(Ordering::Relaxed),
            window_warning: progress.window_warning.read().clone(),
            balancer_warnings: progress.balancer_warnings.read().clone(),
            update_events: progress.update_events.read().map(str::to_string),
            baseline: BaselineView {
                documents_changed: progress.baseline_changed.load(Ordering::Relaxed),
                ..progress.baseline.read().clone()
            },
            window_expires_at: (expires > 0).then(|| format_rfc3339(expires)),
            window_expires_in_seconds: (expires > 0).then(|| expires - now_unix),
            namespaces,
            last_error: progress.last_error.read().clone(),
        }
    }
}

/// Formats Unix seconds as an RFC 3339 UTC timestamp (`2024-05-01T12:00:00Z`).
///
/// Hand-rolled (proleptic Gregorian calendar, days-from-civil inverse) because this is
/// the crate's only calendar need and does not justify a date-time dependency.
pub fn format_rfc3339(unix_seconds: i64) -> String {
    let days = unix_seconds.div_euclid(86_400);
    let secs_of_day = unix_seconds.rem_euclid(86_400);
    let (hour, minute, second) = (
        secs_of_day / 3600,
        secs_of_day % 3600 / 60,
        secs_of_day % 60,
    );
    // Shift the epoch to 0000-03-01 so leap days fall at the end of each 400-year era.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_matches_known_instants() {
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        // A leap day and the last second of a leap year.
        assert_eq!(format_rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_rfc3339(1_735_689_599), "2024-12-31T23:59:59Z");
    }

    #[test]
    fn unstarted_run_reports_unknown_lag_and_no_window() {
        let progress = Progress::new();
        let view = StatusView::capture(&progress, 1_000);
        assert_eq!(view.phase, Phase::Validating);
        assert_eq!(view.state, RunState::Running);
        assert_eq!(view.lag_seconds, None);
        assert_eq!(view.window_expires_at, None);
        assert!(!view.can_cutover);
    }

    #[test]
    fn terminal_phases_read_as_finished() {
        assert_eq!(RunState::of(Phase::Failed), RunState::Finished);
        assert_eq!(RunState::of(Phase::Paused), RunState::Paused);
        assert_eq!(RunState::of(Phase::CuttingOver), RunState::Running);
    }
}
