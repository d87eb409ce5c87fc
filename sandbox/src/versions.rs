//! Prior versions of documents, so that a read can see the data as of a timestamp: a
//! transaction's snapshot, or the majority commit point when majority lags.
//!
//! The current documents stay where they are ([`crate::storage::Collection::docs`]); each
//! write made while some reader may need the past also records the value it replaced,
//! with the write's timestamp. Nothing is recorded while no snapshot is open and majority
//! does not lag, so the normal write path pays one branch.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bson::{Document, Timestamp};

use crate::query::order::OrdBson;
use crate::storage::{ts_le, ts_lt};

/// Values a document had before the writes made since the oldest open snapshot.
type History = BTreeMap<OrdBson, Vec<(Timestamp, Option<Arc<Document>>)>>;

#[derive(Debug, Default)]
pub struct Versions {
    /// (db, coll) -> `_id` -> (timestamp of a write, value before it), oldest first.
    by_ns: HashMap<(String, String), History>,
    /// Snapshot timestamps of open transactions, with how many hold each.
    pins: BTreeMap<(u32, u32), usize>,
    /// The majority commit point while majority lags: history after it is kept.
    pub majority_floor: Option<Timestamp>,
    /// Records since the last pruning.
    since_prune: usize,
}

impl Versions {
    /// Whether writes must record what they replace.
    pub fn recording(&self) -> bool {
        !self.pins.is_empty() || self.majority_floor.is_some()
    }

    /// Records that the write at `ts` replaced `before` (None: the document did not exist).
    pub fn record(
        &mut self,
        db: &str,
        coll: &str,
        id: OrdBson,
        ts: Timestamp,
        before: Option<Arc<Document>>,
    ) {
        self.by_ns
            .entry((db.to_string(), coll.to_string()))
            .or_default()
            .entry(id)
            .or_default()
            .push((ts, before));
        self.since_prune += 1;
        if self.since_prune >= 1024 {
            self.prune();
        }
    }

    /// Whether the document was written after `ts`.
    pub fn written_after(&self, db: &str, coll: &str, id: &OrdBson, ts: Timestamp) -> bool {
        self.by_ns
            .get(&(db.to_string(), coll.to_string()))
            .and_then(|h| h.get(id))
            .is_some_and(|writes| writes.iter().any(|(w, _)| ts_lt(ts, *w)))
    }

    /// The collection's documents as of `ts`, from its current documents; None when no
    /// write after `ts` is recorded (the current documents are that state).
    pub fn docs_at(
        &self,
        db: &str,
        coll: &str,
        current: &BTreeMap<OrdBson, Arc<Document>>,
        ts: Timestamp,
    ) -> Option<BTreeMap<OrdBson, Arc<Document>>> {
        let history = self.by_ns.get(&(db.to_string(), coll.to_string()))?;
        let mut out: Option<BTreeMap<OrdBson, Arc<Document>>> = None;
        for (id, writes) in history {
            // The value as of `ts` is the one replaced by the first write after it.
            let Some((_, before)) = writes.iter().find(|(w, _)| ts_lt(ts, *w)) else {
                continue;
            };
            let docs = out.get_or_insert_with(|| current.clone());
            match before {
                Some(d) => {
                    docs.insert(id.clone(), d.clone());
                }
                None => {
                    docs.remove(id);
                }
            }
        }
        out
    }

    /// Keeps history after `ts` until [`Self::unpin`].
    pub fn pin(&mut self, ts: Timestamp) {
        *self.pins.entry((ts.time, ts.increment)).or_default() += 1;
    }

    pub fn unpin(&mut self, ts: Timestamp) {
        let key = (ts.time, ts.increment);
        if let Some(n) = self.pins.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                self.pins.remove(&key);
            }
        }
        self.prune();
    }

    /// Forgets a dropped or renamed collection's history.
    pub fn forget(&mut self, db: &str, coll: &str) {
        self.by_ns.remove(&(db.to_string(), coll.to_string()));
    }

    /// Drops the history no reader can need: writes at or before the oldest snapshot.
    pub fn prune(&mut self) {
        self.since_prune = 0;
        let oldest_pin = self.pins.keys().next().map(|(time, increment)| Timestamp {
            time: *time,
            increment: *increment,
        });
        let oldest = match (oldest_pin, self.majority_floor) {
            (Some(a), Some(b)) => Some(if ts_lt(a, b) { a } else { b }),
            (a, b) => a.or(b),
        };
        let Some(oldest) = oldest else {
            self.by_ns.clear();
            return;
        };
        self.by_ns.retain(|_, history| {
            history.retain(|_, writes| {
                writes.retain(|(w, _)| !ts_le(*w, oldest));
                !writes.is_empty()
            });
            !history.is_empty()
        });
    }
}
