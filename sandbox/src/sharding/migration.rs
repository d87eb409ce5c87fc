//! Chunk migrations and orphans.
//!
//! A migration copies a chunk's documents from the donor shard to the recipient (logged
//! `fromMigrate`, so change streams do not report them), then moves the chunk in the
//! catalog. From then on the donor's copies are orphans: reads through the router never
//! return them (its ownership filter), direct reads of the donor do. The donor records a
//! range deletion in its `config.rangeDeletions` and deletes the orphans once the
//! cleanup delay (`--orphan-cleanup-delay-ms`) has passed, or at once for a `moveChunk`
//! with `_waitForDelete`; `cleanupOrphaned` on the donor waits for its pending range
//! deletions. A shard receiving a range first deletes its own orphans in it, as the real
//! recipient waits for an overlapping range deletion to finish.
//!
//! The whole copy and the catalog change happen under the router's migration gate and the
//! donor's lock, so no routed write interleaves with them (the real server's critical
//! section).

use std::sync::Arc;
use std::time::Duration;

use bson::{doc, oid::ObjectId, Bson, DateTime, Document};

use crate::error::{codes, CmdResult, CommandError};
use crate::query::order::OrdBson;
use crate::server::Server;
use crate::storage::{split_ns, Storage};

use super::catalog::{self, Chunk, CollectionEntry};
use super::shard_key::{compare_keys, in_range, ShardKey};
use super::{Router, Shard};

/// Where a shard records the ranges it still has to clean up, as the real shard does.
pub const RANGE_DELETIONS: &str = "rangeDeletions";

/// The sharded collection `ns` as the catalog has it, or 118 NamespaceNotSharded.
pub fn sharded_collection(router: &Router, ns: &str) -> CmdResult<CollectionEntry> {
    let config = router.config.storage.lock();
    catalog::collection(&config, ns).ok_or_else(|| {
        CommandError::new(
            codes::NAMESPACE_NOT_SHARDED,
            format!("Collection {ns} is not sharded; shard it first with shardCollection"),
        )
    })
}

/// The shard named `name`, or 70 ShardNotFound.
pub fn shard_named(router: &Router, name: &str) -> CmdResult<Shard> {
    router.shard(name).ok_or_else(|| {
        CommandError::new(
            codes::SHARD_NOT_FOUND,
            format!("Shard {name} not found; listShards names the cluster's shards"),
        )
    })
}

/// The chunk of `entry` holding `key` (a key as [`ShardKey::key_of`] computes it).
pub fn chunk_holding(router: &Router, entry: &CollectionEntry, key: &Document) -> CmdResult<Chunk> {
    let chunks = catalog::chunks(&router.config.storage.lock(), &entry.uuid);
    chunks
        .into_iter()
        .find(|c| in_range(key, &c.min, &c.max))
        .ok_or_else(|| {
            CommandError::new(
                codes::BAD_VALUE,
                format!("no chunk of {} holds the key {key}", entry.ns),
            )
        })
}

/// Whether migrations of the collection are allowed (`setAllowMigrations`).
pub fn migrations_allowed(router: &Router, ns: &str) -> bool {
    let config = router.config.storage.lock();
    config
        .collection(catalog::CONFIG_DB, catalog::COLLECTIONS)
        .and_then(|c| c.docs.get(&OrdBson(Bson::String(ns.to_string()))))
        .is_none_or(|d| d.get_bool("permitMigrations").unwrap_or(true))
}

/// What one migration did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Moved {
    /// Documents copied to the recipient (and left on the donor as orphans).
    pub documents: usize,
}

/// Moves `chunk` of `entry` to `to`. The donor keeps the documents as orphans until its
/// range deletion runs: at once when `wait_for_delete`, else after the router's orphan
/// cleanup delay. Moving a chunk to the shard that owns it does nothing.
pub async fn move_chunk(
    router: &Router,
    entry: &CollectionEntry,
    chunk: &Chunk,
    to: &Shard,
    wait_for_delete: bool,
) -> CmdResult<Moved> {
    if chunk.shard == to.name {
        return Ok(Moved::default());
    }
    if !migrations_allowed(router, &entry.ns) {
        return Err(CommandError::new(
            codes::CONFLICTING_OPERATION_IN_PROGRESS,
            format!(
                "Collection {} is undergoing changes or has migrations disabled (setAllowMigrations), so moveChunk is not allowed",
                entry.ns
            ),
        ));
    }
    let donor = shard_named(router, &chunk.shard)?;
    // One migration at a time, and no routed read or write in flight while it commits.
    let _gate = router.balancer.gate.write().await;
    let (db, coll) = split_ns(&entry.ns);
    let moved = {
        // Both shards locked in shard-name order, as every two-shard write locks them.
        let (mut donor_storage, mut recipient_storage) = if donor.name < to.name {
            let d = donor.server.storage.lock();
            (d, to.server.storage.lock())
        } else {
            let r = to.server.storage.lock();
            (donor.server.storage.lock(), r)
        };
        let moved = copy_range(
            &donor_storage,
            &mut recipient_storage,
            entry,
            &chunk.min,
            &chunk.max,
        )?;
        drop(recipient_storage);
        catalog::set_chunk_shard(&mut router.config.storage.lock(), &chunk.id, &to.name)?;
        if wait_for_delete {
            delete_range(
                &mut donor_storage,
                db,
                coll,
                &entry.key,
                &chunk.min,
                &chunk.max,
            );
        } else {
            let task = record_range_deletion(&mut donor_storage, entry, chunk, &donor.name)?;
            let delay = router.settings.read().orphan_cleanup_delay;
            schedule_range_deletion(donor.server.clone(), task, delay);
        }
        moved
    };
    for server in [&donor.server, &to.server, &router.config] {
        server.oplog_appended.notify_waiters();
    }
    Ok(moved)
}

/// Copies the documents of `[min, max)` from the donor to the recipient, creating the
/// collection there as the donor has it. The recipient's own orphans in the range (left
/// by an earlier migration away) are deleted first, with their pending range deletion.
fn copy_range(
    donor: &Storage,
    recipient: &mut Storage,
    entry: &CollectionEntry,
    min: &Document,
    max: &Document,
) -> CmdResult<Moved> {
    let (db, coll) = split_ns(&entry.ns);
    delete_range(recipient, db, coll, &entry.key, min, max);
    forget_range_deletions(recipient, &entry.ns, min, max);
    let Some(template) = donor.collection(db, coll) else {
        return Ok(Moved::default());
    };
    recipient.create_for_migration(db, coll, template);
    let mut moved = Moved::default();
    for doc in template.docs.values() {
        if in_range(&entry.key.key_of(doc), min, max) {
            recipient.insert_from_migrate(db, coll, Document::clone(doc))?;
            moved.documents += 1;
        }
    }
    Ok(moved)
}

/// Deletes (as `fromMigrate`) the shard's documents of `db.coll` whose key lies in
/// `[min, max)`; returns how many.
fn delete_range(
    storage: &mut Storage,
    db: &str,
    coll: &str,
    key: &ShardKey,
    min: &Document,
    max: &Document,
) -> usize {
    let ids: Vec<Bson> = storage
        .collection(db, coll)
        .map(|c| {
            c.docs
                .iter()
                .filter(|(_, d)| in_range(&key.key_of(d), min, max))
                .map(|(id, _)| id.0.clone())
                .collect()
        })
        .unwrap_or_default();
    for id in &ids {
        storage.delete_from_migrate(db, coll, id);
    }
    ids.len()
}

/// Records on the donor that `chunk`'s range is to be cleaned up (its
/// `config.rangeDeletions`); returns the task's `_id`.
fn record_range_deletion(
    storage: &mut Storage,
    entry: &CollectionEntry,
    chunk: &Chunk,
    donor: &str,
) -> CmdResult<Bson> {
    let id = Bson::ObjectId(ObjectId::new());
    let orphans = {
        let (db, coll) = split_ns(&entry.ns);
        storage.collection(db, coll).map_or(0, |c| {
            c.docs
                .values()
                .filter(|d| in_range(&entry.key.key_of(d), &chunk.min, &chunk.max))
                .count()
        })
    };
    let time = storage.cluster_time();
    storage.insert(
        catalog::CONFIG_DB,
        RANGE_DELETIONS,
        doc! {
            "_id": id.clone(),
            "nss": &entry.ns,
            "collectionUuid": entry.uuid.clone(),
            "donorShardId": donor,
            "range": {"min": chunk.min.clone(), "max": chunk.max.clone()},
            "whenToClean": "delayed",
            "pending": false,
            "numOrphanDocs": orphans as i64,
            "keyPattern": entry.key.pattern.clone(),
            "timestamp": time,
            "registered": DateTime::now(),
        },
    )?;
    Ok(id)
}

/// Removes the shard's pending range deletions of `ns` overlapping `[min, max)` (their
/// documents are gone: the shard is receiving the range again).
fn forget_range_deletions(storage: &mut Storage, ns: &str, min: &Document, max: &Document) {
    let ids: Vec<Bson> = range_deletions(storage, Some(ns))
        .into_iter()
        .filter(|(_, task)| {
            compare_keys(&task.min, max).is_lt() && compare_keys(min, &task.max).is_lt()
        })
        .map(|(id, _)| id)
        .collect();
    for id in ids {
        storage.delete(catalog::CONFIG_DB, RANGE_DELETIONS, &id);
    }
}

/// A pending range deletion, as `config.rangeDeletions` holds it.
struct RangeTask {
    ns: String,
    key: Document,
    min: Document,
    max: Document,
}

fn range_deletions(storage: &Storage, ns: Option<&str>) -> Vec<(Bson, RangeTask)> {
    let Some(c) = storage.collection(catalog::CONFIG_DB, RANGE_DELETIONS) else {
        return Vec::new();
    };
    c.docs
        .iter()
        .filter_map(|(id, d)| {
            let range = d.get_document("range").ok()?;
            let task = RangeTask {
                ns: d.get_str("nss").ok()?.to_string(),
                key: d.get_document("keyPattern").ok()?.clone(),
                min: range.get_document("min").ok()?.clone(),
                max: range.get_document("max").ok()?.clone(),
            };
            Some((id.0.clone(), task))
        })
        .filter(|(_, t)| ns.is_none_or(|ns| t.ns == ns))
        .collect()
}

/// Runs the range deletion `id` of `shard` after `delay` (unless it was dropped since,
/// because the shard received the range back).
fn schedule_range_deletion(shard: Arc<Server>, id: Bson, delay: Duration) {
    let task = async move {
        tokio::time::sleep(delay).await;
        run_range_deletion(&shard, &id);
        shard.oplog_appended.notify_waiters();
    };
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            runtime.spawn(task);
        }
        // Called from outside the cluster's runtimes (a test driving the handle): the
        // task gets a thread of its own.
        Err(_) => {
            std::thread::spawn(move || {
                if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                {
                    runtime.block_on(task);
                }
            });
        }
    }
}

/// Deletes the orphans of the range deletion `id` and the task itself.
fn run_range_deletion(shard: &Server, id: &Bson) {
    let mut storage = shard.storage.lock();
    let Some((_, task)) = range_deletions(&storage, None)
        .into_iter()
        .find(|(task_id, _)| task_id == id)
    else {
        return;
    };
    let Ok(key) = ShardKey::parse(&task.key) else {
        return;
    };
    let (db, coll) = split_ns(&task.ns);
    delete_range(&mut storage, db, coll, &key, &task.min, &task.max);
    storage.delete(catalog::CONFIG_DB, RANGE_DELETIONS, id);
}

/// `cleanupOrphaned` on a shard primary: waits until the shard's pending range
/// deletions of the namespace have run (their cleanup delay passes), as the real
/// command waits for them. Bounded by `maxTimeMS` when given (then 50
/// MaxTimeMSExpired).
pub async fn cleanup_orphaned(server: &Arc<Server>, cmd: &Document) -> CmdResult<Document> {
    let ns = cmd.get_str("cleanupOrphaned").map_err(|_| {
        CommandError::type_mismatch("cleanupOrphaned takes a namespace string, e.g. \"db.coll\"")
    })?;
    if !ns.contains('.') {
        return Err(CommandError::new(
            codes::INVALID_NAMESPACE,
            format!("Invalid namespace: {ns}; give db.collection"),
        ));
    }
    let deadline = cmd
        .get("maxTimeMS")
        .and_then(|v| match v {
            Bson::Int32(n) if *n > 0 => Some(*n as u64),
            Bson::Int64(n) if *n > 0 => Some(*n as u64),
            _ => None,
        })
        .map(|ms| std::time::Instant::now() + Duration::from_millis(ms));
    loop {
        let notified = server.oplog_appended.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if range_deletions(&server.storage.lock(), Some(ns)).is_empty() {
            return Ok(doc! {});
        }
        match deadline {
            Some(deadline) => {
                if tokio::time::timeout_at(deadline.into(), notified)
                    .await
                    .is_err()
                {
                    return Err(CommandError::new(
                        codes::MAX_TIME_MS_EXPIRED,
                        format!(
                            "operation exceeded time limit waiting for the range deletions of {ns}"
                        ),
                    ));
                }
            }
            None => notified.await,
        }
    }
}

/// The documents a shard holds of a sharded collection, split into those it owns and
/// orphans: (owned count, owned bytes, orphan count, orphan bytes).
pub fn ownership_counts(
    storage: &Storage,
    entry: &CollectionEntry,
    chunks: &[Chunk],
    shard: &str,
) -> (i64, i64, i64, i64) {
    let (db, coll) = split_ns(&entry.ns);
    let Some(c) = storage.collection(db, coll) else {
        return (0, 0, 0, 0);
    };
    let mut counts = (0, 0, 0, 0);
    for d in c.docs.values() {
        let size = crate::storage::encoded_size(d) as i64;
        let key = entry.key.key_of(d);
        if catalog::owning_shard(chunks, &key).as_deref() == Some(shard) {
            counts.0 += 1;
            counts.1 += size;
        } else {
            counts.2 += 1;
            counts.3 += size;
        }
    }
    counts
}
