//! Worker generations: which restart of the workers is the current one, and which
//! destination writes of earlier ones are still in flight.
//!
//! # A restart never overlaps the writes of the attempt it replaces
//!
//! A worker (copier range, applier, the tailer's DDL replay) remembers the generation it
//! was started in. The supervisor advances the generation when an attempt fails (and when
//! the run ends), then starts the next attempt from the checkpoints. Without more, a write
//! the failed attempt had already sent could land *after* the next attempt's writes: a copy
//! insert of a document's old version arriving after the new attempt's applier deleted the
//! document brings it back, and the destination diverges for good.
//!
//! So every destination write of a worker is registered here, right before it is sent, by
//! [`WorkerGeneration::begin_write`], which refuses (and the write is not sent) once the
//! worker's generation is superseded; registration and the check are one step under one
//! lock, so a write either is counted before the supervisor advances, or sees that it did.
//! The registration ([`InFlightWrite`]) is held until the driver returns, and the write runs
//! in a task of its own, so stopping the worker meanwhile does not drop the request halfway
//! (a dropped request may still be executed by the server). Before it starts the next
//! attempt, the supervisor waits in [`WorkerGeneration::superseded_writes_returned`] until
//! no write of an earlier generation is in flight: each one then has either landed or
//! failed, and none can land among the new attempt's writes.
//!
//! The wait has no deadline of its own: the Rust driver has no socket timeout, and a write
//! whose reply has not come back may still be applied, so giving up on it and restarting
//! anyway would bring back the very race this closes. A write to a server that answers
//! returns when it is done; one to a server that vanished fails when the connection does
//! (the driver's TCP keepalive starts probing after 120 s, and the operating system then
//! reports the peer gone). The supervisor logs the writes it still waits for every
//! [`WAIT_REPORT_EVERY`], and cancelling the run does not wait for them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::Notify;

/// How often a restart that waits for the writes of the failed attempt says so.
pub const WAIT_REPORT_EVERY: Duration = Duration::from_secs(30);

/// The current generation and the destination writes in flight per generation.
#[derive(Debug, Default, Clone)]
pub struct WorkerGeneration(Arc<Shared>);

#[derive(Debug, Default)]
struct Shared {
    writes: Mutex<Writes>,
    /// Woken whenever a write returns.
    returned: Notify,
}

#[derive(Debug, Default)]
struct Writes {
    current: u64,
    /// Writes in flight, by the generation that sent them (no entry when none).
    in_flight: BTreeMap<u64, usize>,
}

impl Writes {
    fn superseded_in_flight(&self) -> usize {
        self.in_flight.range(..self.current).map(|(_, n)| n).sum()
    }
}

/// One destination write in flight, registered under its generation until dropped (when
/// the driver has returned).
#[derive(Debug)]
#[must_use = "the write counts as in flight only while this is held"]
pub struct InFlightWrite {
    shared: Arc<Shared>,
    generation: u64,
}

impl Drop for InFlightWrite {
    fn drop(&mut self) {
        let mut writes = self.shared.writes.lock();
        if let Some(n) = writes.in_flight.get_mut(&self.generation) {
            *n -= 1;
            if *n == 0 {
                writes.in_flight.remove(&self.generation);
            }
        }
        drop(writes);
        self.shared.returned.notify_waiters();
    }
}

impl WorkerGeneration {
    pub fn current(&self) -> u64 {
        self.0.writes.lock().current
    }

    /// The running workers are superseded: none of them starts a destination write again.
    pub fn advance(&self) {
        self.0.writes.lock().current += 1;
    }

    /// Registers a destination write of a worker of `generation` that is about to be sent;
    /// `None` (send nothing) when that generation is superseded. Hold the answer until the
    /// driver returns.
    pub fn begin_write(&self, generation: u64) -> Option<InFlightWrite> {
        let mut writes = self.0.writes.lock();
        if writes.current != generation {
            return None;
        }
        *writes.in_flight.entry(generation).or_default() += 1;
        Some(InFlightWrite {
            shared: self.0.clone(),
            generation,
        })
    }

    /// Writes of superseded generations still in flight.
    pub fn superseded_in_flight(&self) -> usize {
        self.0.writes.lock().superseded_in_flight()
    }

    /// Returns once no write of a superseded generation is in flight (at once when none
    /// is), or after `limit` when one is given; says whether they all returned. Logs the
    /// writes it still waits for every [`WAIT_REPORT_EVERY`].
    pub async fn superseded_writes_returned(&self, limit: Option<Duration>) -> bool {
        let started = Instant::now();
        let mut reported = started;
        loop {
            let returned = self.0.returned.notified();
            tokio::pin!(returned);
            // Registered before looking, so a write returning in between still wakes us.
            returned.as_mut().enable();
            let left = self.superseded_in_flight();
            if left == 0 {
                return true;
            }
            let mut wait = WAIT_REPORT_EVERY.saturating_sub(reported.elapsed());
            if let Some(limit) = limit {
                let remaining = limit.saturating_sub(started.elapsed());
                if remaining.is_zero() {
                    return false;
                }
                wait = wait.min(remaining);
            }
            if tokio::time::timeout(wait, returned).await.is_err()
                && reported.elapsed() >= WAIT_REPORT_EVERY
            {
                reported = Instant::now();
                tracing::warn!(
                    writes = left,
                    waited_s = started.elapsed().as_secs(),
                    "destination writes of the failed attempt have not returned yet; the restart waits for them, since one landing after the restart's own writes could bring back an older version of a document"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_superseded_generation_sends_nothing_more() {
        let g = WorkerGeneration::default();
        let first = g.current();
        assert!(g.begin_write(first).is_some());
        g.advance();
        assert!(g.begin_write(first).is_none());
        assert!(g.begin_write(g.current()).is_some());
    }

    #[tokio::test]
    async fn the_restart_waits_for_the_writes_of_the_failed_attempt() {
        let g = WorkerGeneration::default();
        let old = g.begin_write(g.current()).expect("current generation");
        g.advance();
        let new = g.begin_write(g.current()).expect("current generation");
        assert_eq!(g.superseded_in_flight(), 1);
        assert!(
            !g.superseded_writes_returned(Some(Duration::from_millis(20)))
                .await
        );
        let waiter = {
            let g = g.clone();
            tokio::spawn(async move { g.superseded_writes_returned(None).await })
        };
        drop(old);
        assert!(waiter.await.expect("waiter"));
        // The new attempt's own writes are not waited for.
        assert!(g.superseded_writes_returned(Some(Duration::ZERO)).await);
        drop(new);
    }
}
