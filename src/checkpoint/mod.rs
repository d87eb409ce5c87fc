//! Run state persisted in the destination's `__ferry` database, so a restarted `ferry run`
//! with the same config resumes where the last one stopped:
//! - `lock`: the lease that keeps a second writer off this destination ([`lease`]);
//! - `state`: phase, start time, the change-stream resume point, the cutover window;
//! - `namespaces`: the copy plan (collections, views, their options and indexes);
//! - `ranges`: per `_id` range of each collection, whether it is copied and how far.

pub mod lease;

use std::sync::Arc;
use std::time::Instant;

use bson::{doc, Bson, DateTime, Document, Timestamp};
use serde::{Deserialize, Serialize};

pub use lease::{Fence, FenceError, LeaseRecord, LeaseTerms};

use crate::cluster::balancer::BalancerSettings;
use crate::cluster::records::{Records, Updated};
use crate::cluster::{Cluster, ClusterError, Side};
use crate::progress::Phase;

/// The database Ferry owns on the destination.
pub const DB: &str = "__ferry";
pub const LOCK: &str = "lock";
pub const STATE: &str = "state";
pub const NAMESPACES: &str = "namespaces";
pub const RANGES: &str = "ranges";
/// Holds `{_id: "plan", saved: true}` once the whole copy plan is saved.
pub const PLAN: &str = "plan";

/// Durable state of the run.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct RunState {
    /// Cluster time captured before the first document was copied.
    pub start_ts: Option<Timestamp>,
    /// Every range of every planned collection is copied.
    pub copy_complete: bool,
    /// Resume token after the last fully applied batch (None: start at `start_ts`).
    pub resume_token: Option<Document>,
    /// Cluster time of that token.
    pub applied_ts: Option<Timestamp>,
    pub events_applied: u64,
    pub phase: Option<Phase>,
    /// Unix seconds when the cutover window ends (set when ready_for_cutover is first reached).
    pub window_expires_at: Option<i64>,
    /// Unix seconds when the run began (first start).
    pub started_at: Option<i64>,
    /// Per sharded side ("source", "destination"): its balancer as it was before Ferry
    /// stopped it, recorded before stopping and kept until it is restored, so every
    /// ending — also one reached by a later process after a crash — puts back exactly
    /// that. See [`Checkpoints::record_balancer`].
    #[serde(default)]
    pub balancers_before: std::collections::BTreeMap<String, BalancerSettings>,
    /// A sharded source's sharding metadata when the run first started: a later process
    /// compares with it, so a change made while no Ferry process ran is noticed too.
    #[serde(default)]
    pub source_metadata: Option<crate::cluster::metadata::ShardingMetadata>,
    /// File name (in `runtime.spool_dir`) of the events read during the copy.
    pub spool_file: Option<String>,
    /// Stream position through which events are in the spool file.
    pub spool_token: Option<Document>,
    /// Durable length of the spool file at `spool_token`.
    #[serde(default)]
    pub spool_bytes: u64,
    /// Ferry blocked the source's writes for a cutover (`cutover.enforce_write_block`)
    /// and has not given them back: a restarted run must, if it does not complete.
    #[serde(default)]
    pub source_write_blocked: bool,
    /// The final report, stored when the run completes, so `ferry run` started again,
    /// `ferry report` and the API can show it after the daemon is gone.
    #[serde(default)]
    pub report: Option<crate::report::Report>,
}

/// A planned namespace.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PlannedNamespace {
    #[serde(rename = "_id")]
    pub ns: String,
    pub db: String,
    pub coll: String,
    pub is_view: bool,
    pub options: Document,
    pub indexes: Vec<Document>,
    pub documents_estimated: u64,
    pub bytes_estimated: u64,
    /// The source collection's UUID when planned: the copy follows the collection by it,
    /// so one renamed while the copy runs is still read (under its new name).
    #[serde(default)]
    pub uuid: Option<bson::Binary>,
}

/// One range of a collection: [min, max) in index order; None = unbounded. An `_id`
/// range (a replica set source, or an unsharded collection of a sharded one) holds `_id`
/// values; a shard-key range (a chunk of a sharded source collection, `key` set) holds
/// shard-key documents as `config.chunks` gives them.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CopyRange {
    #[serde(rename = "_id")]
    pub id: String,
    pub ns: String,
    pub index: u32,
    pub min: Option<Bson>,
    pub max: Option<Bson>,
    pub done: bool,
    /// Last `_id` inserted, so a restart continues after it (`_id` ranges only: a
    /// shard-key range starts again from `min`, its documents already there skipped).
    pub last_id: Option<Bson>,
    pub documents: u64,
    pub bytes: u64,
    /// The source shard whose copier reads this range: the shard that owned it when the
    /// copy was planned (its database's primary shard for an unsharded collection). Empty
    /// for a replica set source (and for checkpoints written before shards existed). The
    /// router finds the range's documents wherever they live now, so a chunk that moved
    /// since the plan is still copied whole, once.
    #[serde(default)]
    pub shard: String,
    /// The shard key pattern when `min`/`max` are shard-key bounds.
    #[serde(default)]
    pub key: Option<bson::Document>,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("destination: checkpoint document in {DB}.{collection} is unreadable: {message}; drop the {DB} database to start over")]
    Corrupt {
        collection: &'static str,
        message: String,
    },
    #[error("destination: another ferry process ({holder}) holds the destination lease until {until}; only one process may write to a destination: stop that one (ferry cancel on its host), or if it died, start again after {until}")]
    Locked { holder: String, until: String },
    #[error("destination: the lease was taken away from this process (now held by {now_held}); it stopped writing")]
    LeaseLost { now_held: String },
    #[error(transparent)]
    Fenced(#[from] FenceError),
}

impl CheckpointError {
    /// Whether a retry (a restart from the checkpoint) may help.
    pub fn is_transient(&self) -> bool {
        match self {
            CheckpointError::Cluster(e) => e.is_transient(),
            CheckpointError::Fenced(e) => e.is_transient(),
            _ => false,
        }
    }
}

/// Reads and writes the checkpoint documents, and holds this process's destination lease
/// (see [`lease`]): every checkpoint write checks the lease's [`Fence`] first.
#[derive(Clone, Debug)]
pub struct Checkpoints {
    dest: Cluster,
    terms: LeaseTerms,
    fence: Arc<Fence>,
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// What [`Checkpoints::acquire_lease`] found.
#[derive(Debug)]
pub enum LeaseAttempt {
    /// This process holds the lease now.
    Taken,
    /// Another process holds it.
    Held(LeaseRecord),
}

impl Checkpoints {
    pub fn new(dest: Cluster, terms: LeaseTerms) -> Checkpoints {
        Checkpoints {
            dest,
            terms,
            fence: Fence::new(),
        }
    }

    /// The identity of this process in the lease document.
    pub fn owner(&self) -> &'static str {
        lease::process_owner()
    }

    pub fn lease_terms(&self) -> LeaseTerms {
        self.terms
    }

    /// The write gate every destination writer checks before each batch.
    pub fn fence(&self) -> &Fence {
        &self.fence
    }

    fn coll(&self, name: &str) -> Records<'_> {
        Records::of(&self.dest, DB, name)
    }

    /// The lease document, if any.
    pub async fn read_lease(&self) -> Result<Option<LeaseRecord>, CheckpointError> {
        Ok(self
            .coll(LOCK)
            .find_one(doc! {"_id": "lock"}, "read the destination lease")
            .await?
            .map(|d| LeaseRecord::from_document(&d)))
    }

    /// Takes the destination lease when it is free, expired or already this process's.
    pub async fn acquire_lease(&self) -> Result<LeaseAttempt, CheckpointError> {
        let sent = Instant::now();
        let now = DateTime::now();
        let expires =
            DateTime::from_millis(now.timestamp_millis() + self.terms.duration.as_millis() as i64);
        let result = self
            .coll(LOCK)
            .update_one(
                doc! {"_id": "lock", "$or": [{"owner": self.owner()}, {"expires_at": {"$lt": now}}]},
                doc! {"$set": {
                    "owner": self.owner(),
                    "host": lease::host_name(),
                    "pid": std::process::id() as i64,
                    "since": now,
                    "renewed_at": now,
                    "expires_at": expires,
                }},
                true,
                "take the destination lease",
            )
            .await;
        match result {
            Ok(_) => {
                self.fence.renewed(sent, &self.terms);
                Ok(LeaseAttempt::Taken)
            }
            Err(e) if e.is_duplicate_key() => {
                match self.read_lease().await? {
                    Some(held) => Ok(LeaseAttempt::Held(held)),
                    // Released between the two commands: try again next time.
                    None => Err(CheckpointError::Cluster(
                        e.during("take the destination lease (it changed hands meanwhile)"),
                    )),
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Extends the lease this process holds. Only a document that still names this
    /// process is renewed: one changed or deleted out-of-band is lost, the fence closes
    /// for good and [`CheckpointError::LeaseLost`] says who holds it now.
    pub async fn renew_lease(&self) -> Result<(), CheckpointError> {
        if let Err(e @ FenceError::Lost) = self.fence.check() {
            return Err(e.into());
        }
        let sent = Instant::now();
        let now = DateTime::now();
        let expires =
            DateTime::from_millis(now.timestamp_millis() + self.terms.duration.as_millis() as i64);
        let result = self
            .coll(LOCK)
            .update_one(
                doc! {"_id": "lock", "owner": self.owner()},
                doc! {"$set": {"renewed_at": now, "expires_at": expires}},
                false,
                "renew the destination lease",
            )
            .await?;
        if result == Updated::Matched {
            self.fence.renewed(sent, &self.terms);
            return Ok(());
        }
        self.fence.lose();
        let now_held = match self.read_lease().await {
            Ok(Some(held)) => held.holder(),
            Ok(None) => "nobody (the lease document was deleted)".into(),
            Err(_) => "unknown".into(),
        };
        Err(CheckpointError::LeaseLost { now_held })
    }

    /// Releases the lease if this process holds it, and closes the fence.
    pub async fn release_lease(&self) -> Result<(), CheckpointError> {
        self.fence.close();
        self.coll(LOCK)
            .delete_one(
                doc! {"_id": "lock", "owner": self.owner()},
                "release the destination lease",
            )
            .await?;
        Ok(())
    }

    pub async fn load_state(&self) -> Result<Option<RunState>, CheckpointError> {
        let Some(mut d) = self
            .coll(STATE)
            .find_one(doc! {"_id": "state"}, "read state")
            .await?
        else {
            return Ok(None);
        };
        d.remove("_id");
        bson::from_document(d)
            .map(Some)
            .map_err(|e| CheckpointError::Corrupt {
                collection: STATE,
                message: e.to_string(),
            })
    }

    pub async fn save_state(&self, state: &RunState) -> Result<(), CheckpointError> {
        self.fence.check()?;
        let mut d = bson::to_document(state).map_err(|e| CheckpointError::Corrupt {
            collection: STATE,
            message: e.to_string(),
        })?;
        d.insert("_id", "state");
        d.insert("saved_at", DateTime::now());
        self.coll(STATE)
            .put(doc! {"_id": "state"}, d, "save state")
            .await?;
        Ok(())
    }

    /// Sets some fields of the state document, leaving the others as they are (the
    /// tailer and the supervisor each own different fields).
    pub async fn set_state(&self, fields: Document) -> Result<(), CheckpointError> {
        self.fence.check()?;
        let mut fields = fields;
        fields.insert("saved_at", DateTime::now());
        self.coll(STATE)
            .update_one(
                doc! {"_id": "state"},
                doc! {"$set": fields},
                true,
                "save state",
            )
            .await?;
        Ok(())
    }

    /// Records a side's balancer as it is before Ferry stops it. A record already there
    /// is kept: it holds the state from before the first stop, while the balancer may
    /// now be off because Ferry stopped it (a restart after a crash).
    pub async fn record_balancer(
        &self,
        side: Side,
        before: &BalancerSettings,
    ) -> Result<(), CheckpointError> {
        self.fence.check()?;
        let field = format!("balancers_before.{side}");
        let value = bson::to_bson(before).map_err(|e| CheckpointError::Corrupt {
            collection: STATE,
            message: e.to_string(),
        })?;
        let result = self
            .coll(STATE)
            .update_one(
                doc! {"_id": "state", field.as_str(): {"$exists": false}},
                doc! {"$set": {field.as_str(): value, "saved_at": DateTime::now()}},
                false,
                "record the balancer's state",
            )
            .await?;
        if result == Updated::NoMatch && self.load_state().await?.is_none() {
            return Err(CheckpointError::Corrupt {
                collection: STATE,
                message: "the run's state document is missing".into(),
            });
        }
        Ok(())
    }

    /// Records a sharded source's metadata when the run first starts; a record already
    /// there (an earlier process's) is kept.
    pub async fn record_source_metadata(
        &self,
        metadata: &crate::cluster::metadata::ShardingMetadata,
    ) -> Result<(), CheckpointError> {
        self.fence.check()?;
        let value = bson::to_bson(metadata).map_err(|e| CheckpointError::Corrupt {
            collection: STATE,
            message: e.to_string(),
        })?;
        self.coll(STATE)
            .update_one(
                doc! {"_id": "state", "source_metadata": {"$exists": false}},
                doc! {"$set": {"source_metadata": value, "saved_at": DateTime::now()}},
                false,
                "record the source's sharding metadata",
            )
            .await?;
        Ok(())
    }

    /// The side's balancer is back as it was: forget its record.
    pub async fn forget_balancer(&self, side: Side) -> Result<(), CheckpointError> {
        self.fence.check()?;
        self.coll(STATE)
            .update_one(
                doc! {"_id": "state"},
                doc! {"$unset": {format!("balancers_before.{side}"): 1}},
                false,
                "forget the balancer's recorded state",
            )
            .await?;
        Ok(())
    }

    /// Saves a new copy plan. The plan counts only once its [`PLAN`] marker is written,
    /// after every namespace and range is written: a crash in between leaves a partial
    /// plan that [`Checkpoints::load_plan`] ignores (a collection with no ranges would
    /// otherwise pass for copied), and the next run plans again from scratch.
    pub async fn save_plan(
        &self,
        namespaces: &[PlannedNamespace],
        ranges: &[CopyRange],
    ) -> Result<(), CheckpointError> {
        self.fence.check()?;
        for c in [PLAN, NAMESPACES, RANGES] {
            self.coll(c)
                .delete_all(doc! {}, "clear a partial plan")
                .await?;
        }
        for ns in namespaces {
            let d = bson::to_document(ns).map_err(|e| CheckpointError::Corrupt {
                collection: NAMESPACES,
                message: e.to_string(),
            })?;
            self.coll(NAMESPACES)
                .put(doc! {"_id": &ns.ns}, d, "save plan")
                .await?;
        }
        for r in ranges {
            self.save_range(r).await?;
        }
        self.coll(PLAN)
            .put(
                doc! {"_id": "plan"},
                doc! {"_id": "plan", "saved": true},
                "save plan",
            )
            .await?;
        Ok(())
    }

    pub async fn load_plan(
        &self,
    ) -> Result<(Vec<PlannedNamespace>, Vec<CopyRange>), CheckpointError> {
        let saved = self
            .coll(PLAN)
            .find_one(doc! {"_id": "plan"}, "read plan")
            .await?
            .is_some_and(|d| d.get_bool("saved").unwrap_or(false));
        if !saved {
            return Ok((Vec::new(), Vec::new()));
        }
        let nss: Vec<Document> = self
            .coll(NAMESPACES)
            .find_all(doc! {}, None, "read plan")
            .await?;
        let ranges: Vec<Document> = self
            .coll(RANGES)
            .find_all(doc! {}, Some(doc! {"ns": 1, "index": 1}), "read ranges")
            .await?;
        let nss = nss
            .into_iter()
            .map(|d| {
                bson::from_document(d).map_err(|e| CheckpointError::Corrupt {
                    collection: NAMESPACES,
                    message: e.to_string(),
                })
            })
            .collect::<Result<Vec<PlannedNamespace>, _>>()?;
        let ranges = ranges
            .into_iter()
            .map(|d| {
                bson::from_document(d).map_err(|e| CheckpointError::Corrupt {
                    collection: RANGES,
                    message: e.to_string(),
                })
            })
            .collect::<Result<Vec<CopyRange>, _>>()?;
        Ok((nss, ranges))
    }

    /// Records a range's progress (called after each batch is acknowledged).
    pub async fn save_range(&self, r: &CopyRange) -> Result<(), CheckpointError> {
        self.fence.check()?;
        let d = bson::to_document(r).map_err(|e| CheckpointError::Corrupt {
            collection: RANGES,
            message: e.to_string(),
        })?;
        self.coll(RANGES)
            .put(doc! {"_id": &r.id}, d, "save range")
            .await?;
        Ok(())
    }

    /// Drops all checkpoint data except the lock (used by clear_destination).
    ///
    /// The balancers' recorded states (see [`Checkpoints::record_balancer`]) outlive the
    /// reset: an earlier run that could not restore a balancer left it stopped, and a
    /// run starting over would otherwise record "stopped" as the state to restore. They
    /// are returned, for the new run's first state write to carry.
    pub async fn reset(&self) -> Result<Option<Bson>, CheckpointError> {
        self.fence.check()?;
        let kept = self
            .coll(STATE)
            .find_one(doc! {"_id": "state"}, "read state")
            .await?
            .and_then(|mut state| state.remove("balancers_before"))
            .filter(|b| matches!(b, Bson::Document(d) if !d.is_empty()));
        for c in [STATE, PLAN, NAMESPACES, RANGES] {
            self.coll(c).drop_all("reset checkpoints").await?;
        }
        Ok(kept)
    }
}

pub fn unix_now() -> i64 {
    now_secs()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A range checkpointed before ranges carried their shard reads as a replica set
    /// source's `_id` range.
    #[test]
    fn an_old_range_checkpoint_has_no_shard_and_no_key() {
        let old = bson::doc! {
            "_id": "app.items#0", "ns": "app.items", "index": 0, "min": null, "max": 10,
            "done": false, "last_id": 4, "documents": 5i64, "bytes": 100i64,
        };
        let range: CopyRange = bson::from_document(old).expect("an old checkpoint reads");
        assert_eq!(range.shard, "");
        assert_eq!(range.key, None);
        assert_eq!(range.last_id, Some(Bson::Int32(4)));
    }

    /// A shard-key range keeps its shard and key pattern through a save and a load.
    #[test]
    fn a_shard_key_range_round_trips_with_its_shard() {
        let range = CopyRange {
            id: "app.items#shard1#2".into(),
            ns: "app.items".into(),
            index: 2,
            min: Some(Bson::Document(bson::doc! {"k": 100})),
            max: Some(Bson::Document(bson::doc! {"k": Bson::MaxKey})),
            done: false,
            last_id: None,
            documents: 0,
            bytes: 0,
            shard: "shard1".into(),
            key: Some(bson::doc! {"k": 1}),
        };
        let stored = bson::to_document(&range).expect("serializes");
        let loaded: CopyRange = bson::from_document(stored).expect("deserializes");
        assert_eq!(loaded, range);
    }
}
