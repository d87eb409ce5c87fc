//! Every metric Ferry exports: names and label keys as constants, each described once
//! with its unit. Names follow `ferry_<subsystem>_<name>_<unit>`; counters end in
//! `_total`; label values stay bounded (namespace yes, document id never).

use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Unit,
};

use crate::progress::{Phase, Progress};

pub const COPY_DOCUMENTS_TOTAL: &str = "ferry_copy_documents_total";
pub const COPY_BYTES_TOTAL: &str = "ferry_copy_bytes_total";
pub const APPLY_EVENTS_TOTAL: &str = "ferry_apply_events_total";
pub const LAG_SECONDS: &str = "ferry_sync_lag_seconds";
pub const BATCH_LATENCY_SECONDS: &str = "ferry_batch_latency_seconds";
pub const ERRORS_TOTAL: &str = "ferry_errors_total";
pub const RETRIES_TOTAL: &str = "ferry_retries_total";
pub const STATE: &str = "ferry_state";
pub const BASELINE_DOCUMENTS_TOTAL: &str = "ferry_baseline_documents_compared_total";
pub const BASELINE_CHANGED_TOTAL: &str = "ferry_baseline_documents_changed_total";
pub const WINDOW_REMAINING_SECONDS: &str = "ferry_window_remaining_seconds";
pub const DOCUMENTS_ESTIMATED: &str = "ferry_copy_documents_estimated";

/// Label: the namespace ("db.coll").
pub const LABEL_NAMESPACE: &str = "namespace";
/// Label: what the batch did ("copy" or "apply").
pub const LABEL_STAGE: &str = "stage";
/// Label: the component that failed.
pub const LABEL_COMPONENT: &str = "component";
/// Label: the phase name of the state gauge.
pub const LABEL_PHASE: &str = "phase";

/// Describes every metric once (call at start).
pub fn describe() {
    describe_counter!(
        COPY_DOCUMENTS_TOTAL,
        Unit::Count,
        "documents copied to the destination during the initial copy"
    );
    describe_counter!(
        COPY_BYTES_TOTAL,
        Unit::Bytes,
        "BSON bytes copied to the destination during the initial copy"
    );
    describe_counter!(
        APPLY_EVENTS_TOTAL,
        Unit::Count,
        "change events applied to the destination"
    );
    describe_gauge!(
        LAG_SECONDS,
        Unit::Seconds,
        "source cluster time minus the time of the newest fully applied event"
    );
    describe_histogram!(
        BATCH_LATENCY_SECONDS,
        Unit::Seconds,
        "time to write one batch to the destination"
    );
    describe_counter!(
        ERRORS_TOTAL,
        Unit::Count,
        "errors seen, retried or not, by component"
    );
    describe_counter!(
        RETRIES_TOTAL,
        Unit::Count,
        "transient failures retried, by component (a restart from the checkpoint, a command sent again)"
    );
    describe_counter!(
        BASELINE_DOCUMENTS_TOTAL,
        Unit::Count,
        "source documents compared with the destination by the baseline verification"
    );
    describe_counter!(
        BASELINE_CHANGED_TOTAL,
        Unit::Count,
        "documents changed on either side since the baseline began (read again at cutover)"
    );
    describe_gauge!(
        STATE,
        Unit::Count,
        "1 for the current phase of the migration, 0 for the others"
    );
    describe_gauge!(
        WINDOW_REMAINING_SECONDS,
        Unit::Seconds,
        "seconds left in the cutover window (negative once passed; absent before it opens)"
    );
    describe_gauge!(
        DOCUMENTS_ESTIMATED,
        Unit::Count,
        "documents the initial copy expects to copy, from collection statistics"
    );
}

/// Gauges derived from the progress registry, refreshed when /metrics is scraped: the
/// progress registry is the state, this module only exports it (progress knows nothing
/// of metrics).
pub fn record_scrape_time(progress: &Progress, now_unix: i64) {
    use std::sync::atomic::Ordering;
    record_phase(progress.phase());
    let expires = progress.window_expires_at.load(Ordering::Relaxed);
    if expires > 0 {
        gauge!(WINDOW_REMAINING_SECONDS).set((expires - now_unix) as f64);
    }
    gauge!(DOCUMENTS_ESTIMATED).set(progress.documents_estimated.load(Ordering::Relaxed) as f64);
}

fn record_phase(phase: Phase) {
    for p in Phase::ALL {
        gauge!(STATE, LABEL_PHASE => p.as_str()).set(if p == phase { 1.0 } else { 0.0 });
    }
}

pub fn record_copy(namespace: &str, documents: u64, bytes: u64) {
    counter!(COPY_DOCUMENTS_TOTAL, LABEL_NAMESPACE => namespace.to_string()).increment(documents);
    counter!(COPY_BYTES_TOTAL, LABEL_NAMESPACE => namespace.to_string()).increment(bytes);
}

pub fn record_applied(namespace: &str, events: u64) {
    counter!(APPLY_EVENTS_TOTAL, LABEL_NAMESPACE => namespace.to_string()).increment(events);
}

pub fn record_lag(seconds: f64) {
    gauge!(LAG_SECONDS).set(seconds);
}

pub fn record_batch(stage: &'static str, seconds: f64) {
    histogram!(BATCH_LATENCY_SECONDS, LABEL_STAGE => stage).record(seconds);
}

pub fn record_error(component: &'static str) {
    counter!(ERRORS_TOTAL, LABEL_COMPONENT => component).increment(1);
}

pub fn record_retry(component: &'static str) {
    counter!(RETRIES_TOTAL, LABEL_COMPONENT => component).increment(1);
}

pub fn record_baseline_compared(documents: u64) {
    counter!(BASELINE_DOCUMENTS_TOTAL).increment(documents);
}

pub fn record_baseline_changed() {
    counter!(BASELINE_CHANGED_TOTAL).increment(1);
}
