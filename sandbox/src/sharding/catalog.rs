//! The sharding catalog, kept where the real cluster keeps it: in the config server's
//! `config` database. `config.shards`, `config.databases`, `config.collections` and
//! `config.chunks` (keyed by collection `uuid`, not `ns`, as since 5.0) are the source of
//! truth; the router reads them on every routed command, so a change (a migrated chunk, a
//! new shard) is seen at once. Writes go through the config server's storage, so they are
//! in its oplog like any write.

use bson::{doc, oid::ObjectId, Binary, Bson, DateTime, Document, Timestamp};

use crate::error::{codes, CmdResult, CommandError};
use crate::storage::Storage;

use super::shard_key::{compare_keys, in_range, ShardKey};

pub const CONFIG_DB: &str = "config";
pub const SHARDS: &str = "shards";
pub const DATABASES: &str = "databases";
pub const COLLECTIONS: &str = "collections";
pub const CHUNKS: &str = "chunks";
pub const SETTINGS: &str = "settings";
pub const VERSION: &str = "version";

/// A database's catalog entry.
#[derive(Clone, Debug)]
pub struct DatabaseEntry {
    pub name: String,
    /// The shard holding its unsharded collections.
    pub primary: String,
}

/// A sharded collection's catalog entry.
#[derive(Clone, Debug)]
pub struct CollectionEntry {
    pub ns: String,
    pub uuid: Binary,
    pub key: ShardKey,
    pub unique: bool,
}

/// One chunk: the keys in `[min, max)` live on `shard`.
#[derive(Clone, Debug)]
pub struct Chunk {
    pub id: Bson,
    pub min: Document,
    pub max: Document,
    pub shard: String,
}

fn documents<'a>(storage: &'a Storage, coll: &str) -> impl Iterator<Item = &'a Document> + 'a {
    storage
        .collection(CONFIG_DB, coll)
        .into_iter()
        .flat_map(|c| c.docs.values().map(|d| d.as_ref()))
}

/// Writes the documents a new cluster's config server starts with: the cluster id in
/// `config.version`, one `config.shards` entry per shard, the balancer settings.
pub fn initialize(storage: &mut Storage, shards: &[(String, String)]) -> CmdResult<()> {
    storage.insert(
        CONFIG_DB,
        VERSION,
        doc! {"_id": 1, "clusterId": ObjectId::new()},
    )?;
    for (name, host) in shards {
        add_shard(storage, name, host)?;
    }
    storage.insert(
        CONFIG_DB,
        SETTINGS,
        doc! {"_id": "balancer", "mode": "full", "stopped": false},
    )?;
    Ok(())
}

/// Adds a `config.shards` entry (`host` is `setName/host:port`).
pub fn add_shard(storage: &mut Storage, name: &str, host: &str) -> CmdResult<()> {
    let time = storage.cluster_time();
    storage.insert(
        CONFIG_DB,
        SHARDS,
        doc! {"_id": name, "host": host, "state": 1, "topologyTime": time},
    )?;
    Ok(())
}

/// Every `config.shards` document, in `_id` order.
pub fn shard_documents(storage: &Storage) -> Vec<Document> {
    documents(storage, SHARDS).cloned().collect()
}

pub fn database(storage: &Storage, db: &str) -> Option<DatabaseEntry> {
    documents(storage, DATABASES)
        .find(|d| d.get_str("_id") == Ok(db))
        .map(|d| DatabaseEntry {
            name: db.to_string(),
            primary: d.get_str("primary").unwrap_or_default().to_string(),
        })
}

/// Creates the database's entry with `primary` as its primary shard.
pub fn create_database(storage: &mut Storage, db: &str, primary: &str) -> CmdResult<DatabaseEntry> {
    let time = storage.cluster_time();
    storage.insert(
        CONFIG_DB,
        DATABASES,
        doc! {
            "_id": db,
            "primary": primary,
            "partitioned": false,
            "version": {"uuid": crate::storage::new_uuid(), "timestamp": time, "lastMod": 1},
        },
    )?;
    Ok(DatabaseEntry {
        name: db.to_string(),
        primary: primary.to_string(),
    })
}

/// Sets a database's primary shard (`movePrimary`).
pub fn set_database_primary(storage: &mut Storage, db: &str, primary: &str) -> CmdResult<()> {
    let Some(mut entry) = documents(storage, DATABASES)
        .find(|d| d.get_str("_id") == Ok(db))
        .cloned()
    else {
        return Err(CommandError::ns_not_found(format!(
            "database {db} not found"
        )));
    };
    entry.insert("primary", primary);
    replace(storage, DATABASES, entry)
}

pub fn drop_database(storage: &mut Storage, db: &str) {
    storage.delete(CONFIG_DB, DATABASES, &Bson::String(db.to_string()));
    let prefix = format!("{db}.");
    let sharded: Vec<String> = documents(storage, COLLECTIONS)
        .filter_map(|d| d.get_str("_id").ok())
        .filter(|ns| ns.starts_with(&prefix))
        .map(str::to_string)
        .collect();
    for ns in sharded {
        drop_collection(storage, &ns);
    }
}

/// The sharded collection `ns`, if it is sharded.
pub fn collection(storage: &Storage, ns: &str) -> Option<CollectionEntry> {
    let d = documents(storage, COLLECTIONS).find(|d| d.get_str("_id") == Ok(ns))?;
    let uuid = match d.get("uuid") {
        Some(Bson::Binary(b)) => b.clone(),
        _ => return None,
    };
    let key = ShardKey::parse(d.get_document("key").ok()?).ok()?;
    Some(CollectionEntry {
        ns: ns.to_string(),
        uuid,
        key,
        unique: d.get_bool("unique").unwrap_or(false),
    })
}

/// Records a newly sharded collection and its initial chunks (`bounds` split the key
/// space; `owners[i]` owns `[bounds[i], bounds[i + 1])`).
pub fn create_collection(
    storage: &mut Storage,
    entry: &CollectionEntry,
    bounds: &[Document],
    owners: &[String],
) -> CmdResult<()> {
    let time = storage.cluster_time();
    storage.insert(
        CONFIG_DB,
        COLLECTIONS,
        doc! {
            "_id": entry.ns.clone(),
            "lastmodEpoch": ObjectId::new(),
            "lastmod": DateTime::now(),
            "timestamp": time,
            "uuid": entry.uuid.clone(),
            "key": entry.key.pattern.clone(),
            "unique": entry.unique,
            "noBalance": false,
        },
    )?;
    for (i, owner) in owners.iter().enumerate() {
        let (Some(min), Some(max)) = (bounds.get(i), bounds.get(i + 1)) else {
            break;
        };
        storage.insert(
            CONFIG_DB,
            CHUNKS,
            doc! {
                "_id": ObjectId::new(),
                "uuid": entry.uuid.clone(),
                "min": min.clone(),
                "max": max.clone(),
                "shard": owner.clone(),
                "lastmod": Timestamp { time: 1, increment: i as u32 },
                "onCurrentShardSince": time,
                "history": [{"validAfter": time, "shard": owner.clone()}],
            },
        )?;
    }
    Ok(())
}

/// Removes a sharded collection's entry and chunks (on `drop`).
pub fn drop_collection(storage: &mut Storage, ns: &str) {
    let Some(entry) = collection(storage, ns) else {
        return;
    };
    let ids: Vec<Bson> = chunks(storage, &entry.uuid)
        .into_iter()
        .map(|c| c.id)
        .collect();
    for id in ids {
        storage.delete(CONFIG_DB, CHUNKS, &id);
    }
    storage.delete(CONFIG_DB, COLLECTIONS, &Bson::String(ns.to_string()));
}

/// Moves a sharded collection's entry to `to` (`renameCollection`): the uuid stays, so
/// its chunks (keyed by uuid) follow it.
pub fn rename_collection(storage: &mut Storage, from: &str, to: &str) -> CmdResult<()> {
    let Some(mut entry) = documents(storage, COLLECTIONS)
        .find(|d| d.get_str("_id") == Ok(from))
        .cloned()
    else {
        return Ok(());
    };
    storage.delete(CONFIG_DB, COLLECTIONS, &Bson::String(from.to_string()));
    entry.insert("_id", to);
    entry.insert("lastmod", DateTime::now());
    storage.insert(CONFIG_DB, COLLECTIONS, entry)?;
    Ok(())
}

/// The chunks of a collection, ordered by `min`.
pub fn chunks(storage: &Storage, uuid: &Binary) -> Vec<Chunk> {
    let mut out: Vec<Chunk> = documents(storage, CHUNKS)
        .filter(|d| matches!(d.get("uuid"), Some(Bson::Binary(b)) if b == uuid))
        .filter_map(|d| {
            Some(Chunk {
                id: d.get("_id")?.clone(),
                min: d.get_document("min").ok()?.clone(),
                max: d.get_document("max").ok()?.clone(),
                shard: d.get_str("shard").ok()?.to_string(),
            })
        })
        .collect();
    out.sort_by(|a, b| compare_keys(&a.min, &b.min));
    out
}

/// The shard owning `key` (a key as [`ShardKey::key_of`] computes it).
pub fn owning_shard(chunks: &[Chunk], key: &Document) -> Option<String> {
    chunks
        .iter()
        .find(|c| in_range(key, &c.min, &c.max))
        .map(|c| c.shard.clone())
}

/// Moves a chunk to `shard` in the catalog (the last step of a migration).
pub fn set_chunk_shard(storage: &mut Storage, chunk_id: &Bson, shard: &str) -> CmdResult<()> {
    let Some(mut chunk) = documents(storage, CHUNKS)
        .find(|d| d.get("_id") == Some(chunk_id))
        .cloned()
    else {
        return Err(CommandError::new(
            codes::NO_SUCH_KEY,
            format!("chunk {chunk_id} not found in config.chunks"),
        ));
    };
    let time = storage.cluster_time();
    chunk.insert("shard", shard);
    chunk.insert("onCurrentShardSince", time);
    replace(storage, CHUNKS, chunk)
}

/// Every sharded collection's entry.
pub fn collections(storage: &Storage) -> Vec<CollectionEntry> {
    let names: Vec<String> = documents(storage, COLLECTIONS)
        .filter_map(|d| d.get_str("_id").ok().map(str::to_string))
        .collect();
    names
        .iter()
        .filter_map(|ns| collection(storage, ns))
        .collect()
}

fn replace(storage: &mut Storage, coll: &str, document: Document) -> CmdResult<()> {
    let id = document.get("_id").cloned().unwrap_or(Bson::Null);
    storage.update(
        CONFIG_DB,
        coll,
        &id,
        document,
        crate::query::UpdateLog::Replacement,
    )?;
    Ok(())
}

/// Splits a chunk at `at`: the chunk keeps `[min, at)` and a new chunk `[at, max)` is
/// owned by `upper_owner` (its own shard for a plain split).
pub fn split_chunk(
    storage: &mut Storage,
    chunk_id: &Bson,
    at: Document,
    upper_owner: &str,
) -> CmdResult<()> {
    let Some(mut chunk) = documents(storage, CHUNKS)
        .find(|d| d.get("_id") == Some(chunk_id))
        .cloned()
    else {
        return Err(CommandError::new(
            codes::NO_SUCH_KEY,
            format!("chunk {chunk_id} not found in config.chunks"),
        ));
    };
    let (Ok(min), Ok(max)) = (chunk.get_document("min"), chunk.get_document("max")) else {
        return Err(CommandError::new(
            codes::INTERNAL_ERROR,
            format!("chunk {chunk_id} has no min/max"),
        ));
    };
    if !in_range(&at, min, max) || compare_keys(&at, min) == std::cmp::Ordering::Equal {
        return Err(CommandError::bad_value(format!(
            "split point {at} is not inside chunk [{min}, {max})"
        )));
    }
    let max = max.clone();
    let time = storage.cluster_time();
    let mut upper = chunk.clone();
    upper.insert("_id", ObjectId::new());
    upper.insert("min", at.clone());
    upper.insert("max", max);
    upper.insert("shard", upper_owner);
    upper.insert("onCurrentShardSince", time);
    upper.insert(
        "history",
        vec![Bson::Document(
            doc! {"validAfter": time, "shard": upper_owner},
        )],
    );
    chunk.insert("max", at);
    replace(storage, CHUNKS, chunk)?;
    storage.insert(CONFIG_DB, CHUNKS, upper)?;
    Ok(())
}

/// Merges contiguous chunks (ordered by `min`, all on one shard) into the first one,
/// which then ends at the last one's `max` (`mergeChunks`).
pub fn merge_chunks(storage: &mut Storage, chunks: &[Chunk]) -> CmdResult<()> {
    let (Some(first), Some(last)) = (chunks.first(), chunks.last()) else {
        return Ok(());
    };
    let Some(mut merged) = documents(storage, CHUNKS)
        .find(|d| d.get("_id") == Some(&first.id))
        .cloned()
    else {
        return Err(CommandError::new(
            codes::NO_SUCH_KEY,
            format!("chunk {} not found in config.chunks", first.id),
        ));
    };
    merged.insert("max", last.max.clone());
    replace(storage, CHUNKS, merged)?;
    for chunk in &chunks[1..] {
        storage.delete(CONFIG_DB, CHUNKS, &chunk.id);
    }
    Ok(())
}
