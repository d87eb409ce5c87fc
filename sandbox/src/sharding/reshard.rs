//! The router's shard key changes: `refineCollectionShardKey` (the key extended by suffix
//! fields, the data where it was) and `reshardCollection` (a new key, a new collection
//! uuid, the data redistributed).
//!
//! What a real cluster shows of them, and the sandbox shows too:
//! - refine: `config.collections` gets the new key, a new `lastmodEpoch` and
//!   `timestamp`; every chunk bound is extended with `MinKey` in the new fields (the
//!   global maximum with `MaxKey`), so each chunk keeps its documents. An index that
//!   starts with the new key must exist (unique when the collection is sharded unique).
//!   The primary shard logs a `refineCollectionShardKey` event (`operationDescription:
//!   {shardKey, oldShardKey}`, shown with `showExpandedEvents`) from 6.1 on.
//! - reshard: the collection gets a new uuid and key, new chunks, and its owned
//!   documents (orphans are not cloned) on the recipient shards, copied without change
//!   events; the primary shard logs a `reshardCollection` event (`operationDescription:
//!   {reshardUUID, shardKey, oldShardKey, unique, numInitialChunks}`) from 6.0.14 on.
//!
//! Simplifications (the sandbox's resharding is instantaneous): the one recipient is the
//! database's primary shard, holding one chunk over the whole new key range; a missing
//! index on the new key is created with an ordinary `createIndexes` (its event shows),
//! where the real server builds it in its hidden temporary collection.

use bson::{doc, oid::ObjectId, Bson, DateTime, Document};

use crate::auth::roles::Action;
use crate::error::{codes, CmdResult, CommandError};
use crate::query::UpdateLog;
use crate::server::Server;
use crate::storage::{split_ns, EventKind, Storage};
use crate::wire::Reply;

use super::catalog::{self, CollectionEntry, CHUNKS, COLLECTIONS, CONFIG_DB};
use super::migration::{sharded_collection, RANGE_DELETIONS};
use super::router::home_shard;
use super::shard_key::ShardKey;
use super::Router;

/// This module's commands with their privileges. The sandbox's role model has no
/// separate `refineCollectionShardKey`/`reshardCollection` actions; the built-in roles
/// that hold them (`clusterManager`, `root`) hold `shardCollection` as well.
pub static COMMANDS: &[(&str, Action)] = &[
    ("refineCollectionShardKey", Action::ShardCollection),
    ("reshardCollection", Action::ShardCollection),
];

/// The privilege of one of this module's commands, if `name` is one.
pub fn action(name: &str) -> Option<Action> {
    super::command_action(COMMANDS, name)
}

/// Runs one of this module's commands (on `admin` only, as on the real router).
pub async fn run(router: &Router, db: &str, cmd: &Document, name: &str) -> CmdResult<Reply> {
    if db != "admin" {
        return Err(CommandError::unauthorized(format!(
            "{name} may only be run against the admin database."
        )));
    }
    let ns = cmd.get_str(name).map_err(|_| {
        CommandError::type_mismatch(format!("{name} must be a namespace string \"db.coll\""))
    })?;
    let key = cmd.get_document("key").map_err(|_| {
        CommandError::new(
            codes::MISSING_REQUIRED_FIELD,
            format!("BSON field '{name}.key' is missing but a required field"),
        )
    })?;
    let key = ShardKey::parse(key)?;
    let entry = sharded_collection(router, ns)?;
    // No routed read or write in flight while the catalog and the data change.
    let _gate = router.balancer.gate.write().await;
    match name {
        "refineCollectionShardKey" => refine(router, &entry, key)?,
        _ => reshard(router, &entry, key, cmd)?,
    }
    Ok(Reply::from(doc! {}))
}

/// Whether index key `index` starts with the fields (and kinds) of `key`.
fn supports(key: &ShardKey, index: &Document) -> bool {
    key.fields.len() <= index.len()
        && key
            .fields
            .iter()
            .zip(index.iter())
            .all(|(f, (path, kind))| {
                f.path == *path && f.hashed == matches!(kind, Bson::String(s) if s == "hashed")
            })
}

/// Whether the version reports change events added in `major.minor.patch`.
fn has_event(server: &Server, since: (i32, i32, i32)) -> bool {
    server.version_parts() >= since
}

fn refine(router: &Router, entry: &CollectionEntry, key: ShardKey) -> CmdResult<()> {
    let old = &entry.key;
    let extends = key.fields.len() >= old.fields.len()
        && old.fields.iter().zip(&key.fields).all(|(a, b)| a == b);
    if !extends {
        return Err(CommandError::new(
            codes::INVALID_OPTIONS,
            format!(
                "refineCollectionShardKey: the proposed shard key {} does not start with the current shard key {} of {}; a refined key only adds suffix fields",
                key.pattern, old.pattern, entry.ns
            ),
        ));
    }
    if key.fields.len() == old.fields.len() {
        return Ok(());
    }
    let (db, coll) = split_ns(&entry.ns);
    for shard in router.shard_list() {
        let storage = shard.server.storage.lock();
        let Some(c) = storage.collection(db, coll) else {
            continue;
        };
        let supported = c
            .indexes
            .iter()
            .any(|i| supports(&key, &i.key) && (!entry.unique || i.unique) && !i.sparse);
        if !supported {
            return Err(CommandError::new(
                codes::INVALID_OPTIONS,
                format!(
                    "refineCollectionShardKey: {} has no index that starts with the proposed shard key {}{}; create it first",
                    entry.ns,
                    key.pattern,
                    if entry.unique { " and is unique" } else { "" }
                ),
            ));
        }
    }
    {
        let mut config = router.config.storage.lock();
        let time = config.cluster_time();
        update_collection_entry(
            &mut config,
            &entry.ns,
            doc! {"key": key.pattern.clone(), "lastmodEpoch": ObjectId::new(), "lastmod": DateTime::now(), "timestamp": time},
        )?;
        let max = key.global_max();
        for chunk in catalog::chunks(&config, &entry.uuid) {
            let extend = |bound: &Document| -> Document {
                let is_max = old
                    .fields
                    .iter()
                    .all(|f| bound.get(&f.path) == Some(&Bson::MaxKey));
                let mut out = bound.clone();
                for f in &key.fields[old.fields.len()..] {
                    out.insert(
                        f.path.clone(),
                        if is_max { Bson::MaxKey } else { Bson::MinKey },
                    );
                }
                out
            };
            let Some(mut document) = config_document(&config, CHUNKS, &chunk.id) else {
                continue;
            };
            document.insert("min", extend(&chunk.min));
            let upper = extend(&chunk.max);
            document.insert("max", if upper == max { max.clone() } else { upper });
            config.update(
                CONFIG_DB,
                CHUNKS,
                &chunk.id,
                document,
                UpdateLog::Replacement,
            )?;
        }
    }
    for shard in router.shard_list() {
        let mut storage = shard.server.storage.lock();
        if let Some(c) = storage.collection_mut(db, coll) {
            c.shard_key = Some(key.pattern.clone());
        }
    }
    if let Some(primary) = home_shard(router, db, false)? {
        if has_event(&primary.server, (6, 1, 0)) {
            primary.server.storage.lock().announce_shard_key_change(
                EventKind::RefineCollectionShardKey,
                db,
                coll,
                entry.uuid.clone(),
                doc! {"shardKey": key.pattern.clone(), "oldShardKey": old.pattern.clone()},
            );
            primary.server.oplog_appended.notify_waiters();
        }
    }
    Ok(())
}

fn reshard(
    router: &Router,
    entry: &CollectionEntry,
    key: ShardKey,
    cmd: &Document,
) -> CmdResult<()> {
    let unique = cmd.get_bool("unique").unwrap_or(false);
    if unique {
        return Err(CommandError::new(
            codes::INVALID_OPTIONS,
            "reshardCollection: only unique: false is supported; enforce uniqueness with a separate unique index",
        ));
    }
    if key.pattern == entry.key.pattern {
        return Ok(());
    }
    let (db, coll) = split_ns(&entry.ns);
    let Some(recipient) = home_shard(router, db, false)? else {
        return Err(CommandError::new(
            codes::NAMESPACE_NOT_FOUND,
            format!("database {db} has no primary shard"),
        ));
    };
    let chunks = catalog::chunks(&router.config.storage.lock(), &entry.uuid);
    // Each shard's owned documents leave it (logged fromMigrate: no change event), to be
    // cloned onto the recipient.
    let mut owned = Vec::new();
    for shard in router.shard_list() {
        let mut storage = shard.server.storage.lock();
        let Some(c) = storage.collection(db, coll) else {
            continue;
        };
        let mine: Vec<Document> = c
            .docs
            .values()
            .filter(|d| {
                catalog::owning_shard(&chunks, &entry.key.key_of(d)).as_deref()
                    == Some(shard.name.as_str())
            })
            .map(|d| Document::clone(d))
            .collect();
        let every: Vec<Bson> = c
            .docs
            .values()
            .filter_map(|d| d.get("_id").cloned())
            .collect();
        for id in &every {
            storage.delete_from_migrate(db, coll, id);
        }
        // The old collection's pending range deletions went with its documents (a real
        // shard keys them by collection uuid, so they never touch the new collection).
        let tasks: Vec<Bson> = storage
            .collection(CONFIG_DB, RANGE_DELETIONS)
            .map(|c| {
                c.docs
                    .iter()
                    .filter(|(_, d)| d.get_str("nss") == Ok(entry.ns.as_str()))
                    .map(|(id, _)| id.0.clone())
                    .collect()
            })
            .unwrap_or_default();
        for task in &tasks {
            storage.delete(CONFIG_DB, RANGE_DELETIONS, task);
        }
        owned.extend(mine);
    }
    let new_uuid = crate::storage::new_uuid();
    {
        let mut storage = recipient.server.storage.lock();
        ensure_index(&mut storage, db, coll, &key)?;
        for document in owned {
            storage.insert_from_migrate(db, coll, document)?;
        }
    }
    for shard in router.shard_list() {
        let mut storage = shard.server.storage.lock();
        if let Some(c) = storage.collection_mut(db, coll) {
            c.uuid = new_uuid.clone();
            c.shard_key = Some(key.pattern.clone());
        }
    }
    let resharded = CollectionEntry {
        ns: entry.ns.clone(),
        uuid: new_uuid.clone(),
        key: key.clone(),
        unique,
    };
    {
        let mut config = router.config.storage.lock();
        catalog::drop_collection(&mut config, &entry.ns);
        catalog::create_collection(
            &mut config,
            &resharded,
            &[key.global_min(), key.global_max()],
            std::slice::from_ref(&recipient.name),
        )?;
    }
    if has_event(&recipient.server, (6, 0, 14)) {
        let chunks_per_shard = cmd
            .get_i64("numInitialChunks")
            .or_else(|_| cmd.get_i32("numInitialChunks").map(i64::from))
            .unwrap_or(1);
        recipient.server.storage.lock().announce_shard_key_change(
            EventKind::ReshardCollection,
            db,
            coll,
            entry.uuid.clone(),
            doc! {
                "reshardUUID": new_uuid,
                "shardKey": key.pattern.clone(),
                "oldShardKey": entry.key.pattern.clone(),
                "unique": unique,
                "numInitialChunks": chunks_per_shard,
            },
        );
    }
    for shard in router.shard_list() {
        shard.server.oplog_appended.notify_waiters();
    }
    Ok(())
}

/// Creates an index on `key` on the recipient when none starts with it.
fn ensure_index(storage: &mut Storage, db: &str, coll: &str, key: &ShardKey) -> CmdResult<()> {
    let supported = storage
        .collection(db, coll)
        .is_some_and(|c| c.indexes.iter().any(|i| supports(key, &i.key)));
    if !supported {
        let spec = doc! {"key": key.pattern.clone(), "name": crate::storage::default_index_name(&key.pattern)};
        storage.create_indexes(db, coll, vec![spec])?;
    }
    Ok(())
}

/// The config document `id` of `config.<coll>`.
fn config_document(config: &Storage, coll: &str, id: &Bson) -> Option<Document> {
    config
        .collection(CONFIG_DB, coll)?
        .docs
        .get(&crate::query::order::OrdBson(id.clone()))
        .map(|d| Document::clone(d))
}

/// Sets `fields` in the `config.collections` entry of `ns`.
fn update_collection_entry(config: &mut Storage, ns: &str, fields: Document) -> CmdResult<()> {
    let id = Bson::String(ns.to_string());
    let Some(mut document) = config_document(config, COLLECTIONS, &id) else {
        return Err(CommandError::new(
            codes::NAMESPACE_NOT_SHARDED,
            format!("{ns} is not sharded"),
        ));
    };
    document.extend(fields);
    config.update(
        CONFIG_DB,
        COLLECTIONS,
        &id,
        document,
        UpdateLog::Replacement,
    )?;
    Ok(())
}
