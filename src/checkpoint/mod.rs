//! Run state persisted in the destination's `__ferry` database, so a restarted `ferry run`
//! with the same config resumes where the last one stopped:
//! - `lock`: the lease that keeps a second migration off this destination;
//! - `state`: phase, start time, the change-stream resume point, the cutover window;
//! - `namespaces`: the copy plan (collections, views, their options and indexes);
//! - `ranges`: per `_id` range of each collection, whether it is copied and how far.

use bson::{doc, Bson, DateTime, Document, Timestamp};
use serde::{Deserialize, Serialize};

use crate::cluster::{Cluster, ClusterError};
use crate::progress::Phase;

/// The database Ferry owns on the destination.
pub const DB: &str = "__ferry";
pub const LOCK: &str = "lock";
pub const STATE: &str = "state";
pub const NAMESPACES: &str = "namespaces";
pub const RANGES: &str = "ranges";
/// Holds `{_id: "plan", saved: true}` once the whole copy plan is saved.
pub const PLAN: &str = "plan";

/// How long a lock lease lasts without renewal; a crashed holder blocks others this long.
pub const LOCK_LEASE_SECONDS: i64 = 60;

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
    /// Sides whose balancer Ferry stopped and must restart ("source", "destination").
    #[serde(default)]
    pub balancers_stopped: Vec<String>,
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

/// One `_id` range of a collection: [min, max) in index order; None = unbounded.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CopyRange {
    #[serde(rename = "_id")]
    pub id: String,
    pub ns: String,
    pub index: u32,
    pub min: Option<Bson>,
    pub max: Option<Bson>,
    pub done: bool,
    /// Last `_id` inserted, so a restart continues after it.
    pub last_id: Option<Bson>,
    pub documents: u64,
    pub bytes: u64,
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
    #[error("destination: another migration ({owner}) holds the lock until {until}; wait for it to finish or cancel it")]
    Locked { owner: String, until: String },
}

/// Reads and writes the checkpoint documents.
#[derive(Clone, Debug)]
pub struct Checkpoints {
    dest: Cluster,
    /// Identity of this migration in the lock document.
    pub owner: String,
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Checkpoints {
    pub fn new(dest: Cluster, owner: String) -> Checkpoints {
        Checkpoints { dest, owner }
    }

    fn coll(&self, name: &str) -> mongodb::Collection<Document> {
        self.dest.client.database(DB).collection(name)
    }

    fn err(&self, action: &str) -> impl FnOnce(mongodb::error::Error) -> CheckpointError + '_ {
        let action = action.to_string();
        move |source| {
            CheckpointError::Cluster(ClusterError::Command {
                side: self.dest.side,
                action,
                source,
            })
        }
    }

    /// Takes or renews the destination lease; fails when another owner holds it.
    pub async fn acquire_lock(&self) -> Result<(), CheckpointError> {
        let now = DateTime::now();
        let expires = DateTime::from_millis(now.timestamp_millis() + LOCK_LEASE_SECONDS * 1000);
        let host = std::env::var("HOSTNAME").unwrap_or_default();
        let result = self
            .coll(LOCK)
            .update_one(
                doc! {"_id": "lock", "$or": [{"owner": &self.owner}, {"expires_at": {"$lt": now}}]},
                doc! {"$set": {"owner": &self.owner, "expires_at": expires, "host": host, "pid": std::process::id() as i64}},
            )
            .upsert(true)
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if crate::cluster::error_code(&e) == Some(11000) => {
                let held = self
                    .coll(LOCK)
                    .find_one(doc! {"_id": "lock"})
                    .await
                    .map_err(self.err("read lock"))?;
                let (owner, until) = held
                    .map(|d| {
                        (
                            d.get_str("owner").unwrap_or("unknown").to_string(),
                            d.get_datetime("expires_at")
                                .map(|t| t.to_string())
                                .unwrap_or_default(),
                        )
                    })
                    .unwrap_or_default();
                Err(CheckpointError::Locked { owner, until })
            }
            Err(e) => Err(self.err("take lock")(e)),
        }
    }

    /// Releases the lease if this owner holds it.
    pub async fn release_lock(&self) -> Result<(), CheckpointError> {
        self.coll(LOCK)
            .delete_one(doc! {"_id": "lock", "owner": &self.owner})
            .await
            .map_err(self.err("release lock"))?;
        Ok(())
    }

    pub async fn load_state(&self) -> Result<Option<RunState>, CheckpointError> {
        let Some(mut d) = self
            .coll(STATE)
            .find_one(doc! {"_id": "state"})
            .await
            .map_err(self.err("read state"))?
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
        let mut d = bson::to_document(state).map_err(|e| CheckpointError::Corrupt {
            collection: STATE,
            message: e.to_string(),
        })?;
        d.insert("_id", "state");
        d.insert("saved_at", DateTime::now());
        self.coll(STATE)
            .replace_one(doc! {"_id": "state"}, d)
            .upsert(true)
            .await
            .map_err(self.err("save state"))?;
        Ok(())
    }

    /// Sets some fields of the state document, leaving the others as they are (the
    /// tailer and the supervisor each own different fields).
    pub async fn set_state(&self, fields: Document) -> Result<(), CheckpointError> {
        let mut fields = fields;
        fields.insert("saved_at", DateTime::now());
        self.coll(STATE)
            .update_one(doc! {"_id": "state"}, doc! {"$set": fields})
            .upsert(true)
            .await
            .map_err(self.err("save state"))?;
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
        for c in [PLAN, NAMESPACES, RANGES] {
            self.coll(c)
                .delete_many(doc! {})
                .await
                .map_err(self.err("clear a partial plan"))?;
        }
        for ns in namespaces {
            let d = bson::to_document(ns).map_err(|e| CheckpointError::Corrupt {
                collection: NAMESPACES,
                message: e.to_string(),
            })?;
            self.coll(NAMESPACES)
                .replace_one(doc! {"_id": &ns.ns}, d)
                .upsert(true)
                .await
                .map_err(self.err("save plan"))?;
        }
        for r in ranges {
            self.save_range(r).await?;
        }
        self.coll(PLAN)
            .replace_one(doc! {"_id": "plan"}, doc! {"_id": "plan", "saved": true})
            .upsert(true)
            .await
            .map_err(self.err("save plan"))?;
        Ok(())
    }

    pub async fn load_plan(
        &self,
    ) -> Result<(Vec<PlannedNamespace>, Vec<CopyRange>), CheckpointError> {
        use futures_util::TryStreamExt;
        let saved = self
            .coll(PLAN)
            .find_one(doc! {"_id": "plan"})
            .await
            .map_err(self.err("read plan"))?
            .is_some_and(|d| d.get_bool("saved").unwrap_or(false));
        if !saved {
            return Ok((Vec::new(), Vec::new()));
        }
        let nss: Vec<Document> = self
            .coll(NAMESPACES)
            .find(doc! {})
            .await
            .map_err(self.err("read plan"))?
            .try_collect()
            .await
            .map_err(self.err("read plan"))?;
        let ranges: Vec<Document> = self
            .coll(RANGES)
            .find(doc! {})
            .sort(doc! {"ns": 1, "index": 1})
            .await
            .map_err(self.err("read ranges"))?
            .try_collect()
            .await
            .map_err(self.err("read ranges"))?;
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
        let d = bson::to_document(r).map_err(|e| CheckpointError::Corrupt {
            collection: RANGES,
            message: e.to_string(),
        })?;
        self.coll(RANGES)
            .replace_one(doc! {"_id": &r.id}, d)
            .upsert(true)
            .await
            .map_err(self.err("save range"))?;
        Ok(())
    }

    /// Drops all checkpoint data except the lock (used by clear_destination).
    pub async fn reset(&self) -> Result<(), CheckpointError> {
        for c in [STATE, PLAN, NAMESPACES, RANGES] {
            self.coll(c)
                .drop()
                .await
                .map_err(self.err("reset checkpoints"))?;
        }
        Ok(())
    }
}

pub fn unix_now() -> i64 {
    now_secs()
}
