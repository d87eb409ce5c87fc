//! The destination lease: one writer per destination (correctness rule 6).
//!
//! One document, `__ferry.lock {_id: "lock"}`, names the process that may write to the
//! destination: `owner` (a random id drawn once per process, so it carries nothing of the
//! connection strings and their passwords), `host`, `pid`, `since` (when this holder took
//! it), `renewed_at` and `expires_at`. A process takes the lease when it is free, expired,
//! or already its own; any other holder makes a second `ferry run` refuse to start, naming
//! that holder. A run restarted on the same host after its holder crashed waits for the
//! dead holder's lease to expire, saying how long, and then takes it over.
//!
//! # Fencing: the holder stops writing well before its lease can expire
//!
//! Ferry does not make every destination write conditional on the lease: a write batch
//! spans many documents, and on a sharded destination only a multi-document transaction
//! could tie them to the lease document atomically, which Ferry does not require. The
//! lease's expiry is instead longer than any write the holder can still have in flight:
//!
//! - the holder renews every [`LeaseTerms::renew_every`] (a sixth of the lease), each
//!   renewal only matching a document that still names it (a changed or deleted lease is
//!   lost for good, never silently taken back);
//! - the [`Fence`] closes [`LeaseTerms::fence_after`] (half the lease) after the *sending*
//!   of the last acknowledged renewal, measured on the holder's monotonic clock; every
//!   writer and every checkpoint write checks it before each batch, so once it is closed
//!   no new destination write starts — even if the coordinator itself is stuck;
//! - the lease expires on the destination a full lease after that renewal's wall time.
//!
//! The margin between the fence closing and the lease expiring is therefore half the
//! lease (30 s with the default `runtime.lease_seconds = 60`). It must cover the longest
//! write batch already sent when the fence closes (batches are bounded by
//! `copy.batch_max_bytes` / `apply.batch_max_bytes`, and a majority write that takes
//! 30 s means the destination is unusable anyway) plus the wall-clock skew between the
//! holder's and a successor's host (keep hosts on NTP). This works unchanged on a sharded
//! destination, and scales to several Ferry processes each holding a lease of its own.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bson::{DateTime, Document};
use parking_lot::Mutex;

/// How long the holder's rights last without renewal, and what follows from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseTerms {
    /// Lifetime of the lease on the destination after each renewal.
    pub duration: Duration,
}

impl LeaseTerms {
    pub fn new(duration: Duration) -> LeaseTerms {
        LeaseTerms { duration }
    }

    /// How often the holder renews: several renewals may fail before the fence closes.
    pub fn renew_every(&self) -> Duration {
        self.duration / 6
    }

    /// How long after the last acknowledged renewal the holder keeps writing.
    pub fn fence_after(&self) -> Duration {
        self.duration / 2
    }
}

/// The identity of this process in the lease: drawn at random once per process.
pub fn process_owner() -> &'static str {
    static OWNER: OnceLock<String> = OnceLock::new();
    OWNER.get_or_init(|| format!("ferry-{:016x}", rand::random::<u64>()))
}

/// The name of this host, as the lease records it.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
        .unwrap_or_else(|| "unknown-host".into())
}

/// Whether process `pid` of this host is gone (only knowable on Linux; elsewhere it is
/// assumed alive, so Ferry never takes over a lease it cannot prove abandoned).
fn process_is_gone(pid: i64) -> bool {
    if !cfg!(target_os = "linux") || pid <= 0 {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // "pid (comm) S ...": a zombie (Z) or dead (X) process writes nothing more.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
        Err(_) => true,
    }
}

/// A lease document as read from the destination.
#[derive(Clone, Debug, PartialEq)]
pub struct LeaseRecord {
    pub owner: String,
    pub host: String,
    pub pid: i64,
    pub since: Option<DateTime>,
    pub expires_at: Option<DateTime>,
}

fn rfc3339(t: Option<DateTime>) -> String {
    t.map(|t| t.try_to_rfc3339_string().unwrap_or_else(|_| t.to_string()))
        .unwrap_or_else(|| "an unknown time".into())
}

impl LeaseRecord {
    pub fn from_document(d: &Document) -> LeaseRecord {
        LeaseRecord {
            owner: d.get_str("owner").unwrap_or("an unknown owner").to_string(),
            host: d.get_str("host").unwrap_or("an unknown host").to_string(),
            pid: match d.get("pid") {
                Some(bson::Bson::Int64(p)) => *p,
                Some(bson::Bson::Int32(p)) => *p as i64,
                _ => 0,
            },
            since: d.get_datetime("since").ok().copied(),
            expires_at: d.get_datetime("expires_at").ok().copied(),
        }
    }

    /// "pid 4242 on host db-mig-1 since 2026-11-30T18:00:00Z".
    pub fn holder(&self) -> String {
        format!(
            "pid {} on host {} since {}",
            self.pid,
            self.host,
            rfc3339(self.since)
        )
    }

    pub fn expires(&self) -> String {
        rfc3339(self.expires_at)
    }

    /// Time left until the lease expires (zero when expired; None when it never does).
    pub fn remaining(&self, now: DateTime) -> Option<Duration> {
        let at = self.expires_at?;
        let ms = at.timestamp_millis() - now.timestamp_millis();
        Some(Duration::from_millis(ms.max(0) as u64))
    }

    pub fn is_expired(&self, now: DateTime) -> bool {
        self.remaining(now).is_some_and(|d| d.is_zero())
    }

    pub fn is_ours(&self) -> bool {
        self.owner == process_owner()
    }

    /// The holder was a process of this host that no longer runs (a crash): its lease can
    /// be taken over once it expires, without asking the operator.
    pub fn holder_is_gone(&self) -> bool {
        self.host == host_name() && process_is_gone(self.pid)
    }
}

/// The write gate of this process: open while the lease is known to be held.
#[derive(Debug, Default)]
pub struct Fence {
    /// Monotonic deadline after which no new destination write may start.
    open_until: Mutex<Option<Instant>>,
    /// The lease was taken away: the gate never opens again in this run.
    lost: AtomicBool,
}

/// Why a destination write may not start.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum FenceError {
    #[error("destination: this process does not hold the destination lease; it writes nothing until it takes the lease")]
    NotHeld,
    #[error("destination: the lease could not be renewed for {0:?}; writes stop until a renewal succeeds, so that no other process can take over while this one still writes")]
    Lapsed(Duration),
    #[error("destination: the lease was taken away from this process; it writes nothing more")]
    Lost,
}

impl FenceError {
    /// A lapsed lease may be renewed again; a lost one never comes back.
    pub fn is_transient(&self) -> bool {
        matches!(self, FenceError::Lapsed(_))
    }
}

impl Fence {
    pub fn new() -> Arc<Fence> {
        Arc::new(Fence::default())
    }

    /// A renewal sent at `sent` was acknowledged: writes may go on until `sent + fence_after`.
    pub fn renewed(&self, sent: Instant, terms: &LeaseTerms) {
        if self.lost.load(Ordering::SeqCst) {
            return;
        }
        let until = sent + terms.fence_after();
        let mut open = self.open_until.lock();
        if open.is_none_or(|u| u < until) {
            *open = Some(until);
        }
    }

    /// The lease is gone for good: close the gate now.
    pub fn lose(&self) {
        self.lost.store(true, Ordering::SeqCst);
        *self.open_until.lock() = None;
    }

    /// Given back on purpose (end of the run): close the gate.
    pub fn close(&self) {
        *self.open_until.lock() = None;
    }

    /// Ok while a destination write may start.
    pub fn check(&self) -> Result<(), FenceError> {
        if self.lost.load(Ordering::SeqCst) {
            return Err(FenceError::Lost);
        }
        match *self.open_until.lock() {
            None => Err(FenceError::NotHeld),
            Some(until) => {
                let now = Instant::now();
                if now < until {
                    Ok(())
                } else {
                    Err(FenceError::Lapsed(now - until))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fence_closes_half_a_lease_after_the_last_renewal() {
        let terms = LeaseTerms::new(Duration::from_secs(60));
        let fence = Fence::new();
        assert_eq!(fence.check(), Err(FenceError::NotHeld));
        let sent = Instant::now();
        fence.renewed(sent, &terms);
        assert_eq!(fence.check(), Ok(()));
        // A renewal sent 31 s ago and none since: no write may start.
        let old = Instant::now() - Duration::from_secs(31);
        let stale = Fence::new();
        stale.renewed(old, &terms);
        assert!(matches!(stale.check(), Err(FenceError::Lapsed(_))));
        assert!(stale.check().unwrap_err().is_transient());
    }

    #[test]
    fn a_lost_lease_never_opens_again() {
        let terms = LeaseTerms::new(Duration::from_secs(60));
        let fence = Fence::new();
        fence.renewed(Instant::now(), &terms);
        fence.lose();
        fence.renewed(Instant::now(), &terms);
        assert_eq!(fence.check(), Err(FenceError::Lost));
    }

    #[test]
    fn the_owner_is_per_process_and_carries_no_uri() {
        assert_eq!(process_owner(), process_owner());
        assert!(process_owner().starts_with("ferry-"));
        assert_eq!(process_owner().len(), "ferry-".len() + 16);
    }

    #[test]
    fn this_process_is_alive_and_a_record_reads_back() {
        assert!(!process_is_gone(std::process::id() as i64));
        let d = bson::doc! {"owner": "x", "host": "h", "pid": 7i64, "since": DateTime::from_millis(0), "expires_at": DateTime::from_millis(1000)};
        let r = LeaseRecord::from_document(&d);
        assert_eq!(r.pid, 7);
        assert!(r
            .holder()
            .contains("pid 7 on host h since 1970-01-01T00:00:00"));
        assert!(r.is_expired(DateTime::from_millis(2000)));
        assert!(!r.is_expired(DateTime::from_millis(500)));
    }
}
