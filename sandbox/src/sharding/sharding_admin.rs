//! The router's sharding catalog commands: `enableSharding`, `shardCollection`,
//! `listShards`, `getShardMap`.

use std::collections::BTreeMap;

use bson::{doc, Bson, Document};

use crate::dispatch::Connection;
use crate::error::{codes, CmdResult, CommandError};
use crate::server::Server;
use crate::storage::split_ns;
use crate::wire::Reply;

use super::catalog::{self, CollectionEntry};
use super::router::home_shard;
use super::shard_key::ShardKey;
use super::{Router, Shard};

/// Chunks per shard of an empty collection sharded on a hashed key (the real server's
/// default `numInitialChunks` is two per shard).
const INITIAL_HASHED_CHUNKS_PER_SHARD: usize = 2;

/// Code 23 AlreadyInitialized.
const ALREADY_INITIALIZED: i32 = 23;

pub async fn run(
    router: &Router,
    _conn: &Connection,
    db: &str,
    cmd: &Document,
    name: &str,
) -> CmdResult<Reply> {
    let admin_only = |what: &str| {
        if db != "admin" {
            Err(CommandError::unauthorized(format!(
                "{what} may only be run against the admin database."
            )))
        } else {
            Ok(())
        }
    };
    let fields = match name {
        "enableSharding" | "enablesharding" => {
            admin_only(name)?;
            enable_sharding(router, cmd, name)?
        }
        "shardCollection" | "shardcollection" => {
            admin_only(name)?;
            shard_collection(router, cmd, name)?
        }
        "listShards" | "listshards" => {
            admin_only(name)?;
            let shards = catalog::shard_documents(&router.config.storage.lock());
            doc! {"shards": shards}
        }
        "getShardMap" => {
            admin_only(name)?;
            shard_map(router)
        }
        other => {
            return Err(CommandError::new(
                codes::COMMAND_NOT_FOUND,
                format!("no such command: '{other}'"),
            ))
        }
    };
    Ok(Reply::from(fields))
}

fn enable_sharding(router: &Router, cmd: &Document, name: &str) -> CmdResult<Document> {
    let db = cmd
        .get_str(name)
        .map_err(|_| CommandError::type_mismatch(format!("{name} must be a database name")))?;
    if matches!(db, "admin" | "config" | "local") {
        return Err(CommandError::new(
            codes::INVALID_OPTIONS,
            format!("Cannot enable sharding on the '{db}' database"),
        ));
    }
    if let Ok(primary) = cmd.get_str("primaryShard") {
        if router.shard(primary).is_none() {
            return Err(CommandError::new(
                codes::SHARD_NOT_FOUND,
                format!("Shard {primary} not found: give one of listShards' names"),
            ));
        }
        let mut config = router.config.storage.lock();
        if catalog::database(&config, db).is_none() {
            catalog::create_database(&mut config, db, primary)?;
        }
        return Ok(doc! {});
    }
    home_shard(router, db, true)?;
    Ok(doc! {})
}

fn shard_collection(router: &Router, cmd: &Document, name: &str) -> CmdResult<Document> {
    let ns = cmd.get_str(name).map_err(|_| {
        CommandError::type_mismatch(format!("{name} must be a namespace string \"db.coll\""))
    })?;
    let (db, coll) = split_ns(ns);
    crate::storage::validate_collection_name(db, coll)?;
    if matches!(db, "admin" | "config" | "local") || coll.starts_with("system.") {
        return Err(CommandError::new(
            codes::ILLEGAL_OPERATION,
            format!("can't shard {ns}: system and internal namespaces cannot be sharded"),
        ));
    }
    let pattern = cmd.get_document("key").map_err(|_| {
        CommandError::new(
            codes::NO_SUCH_KEY,
            "the shardCollection command needs a 'key' document, e.g. {key: {customerId: 1}}",
        )
    })?;
    let key = ShardKey::parse(pattern)?;
    let unique = cmd.get_bool("unique").unwrap_or(false);
    if unique && key.hashed_field().is_some() {
        return Err(CommandError::new(
            codes::INVALID_OPTIONS,
            "hashed shard keys cannot be declared unique. It's possible to ensure uniqueness on the hashed field by declaring an additional (non-hashed) unique index on the field.",
        ));
    }
    let simple_collation = requested_collation(cmd)?;
    if let Some(existing) = catalog::collection(&router.config.storage.lock(), ns) {
        if existing.key.pattern == key.pattern && existing.unique == unique {
            return Ok(doc! {"collectionsharded": ns, "collectionUUID": existing.uuid});
        }
        return Err(CommandError::new(
            ALREADY_INITIALIZED,
            format!(
                "sharding already enabled for collection {ns} with options {{ key: {}, unique: {} }}",
                existing.key.pattern, existing.unique
            ),
        ));
    }
    let Some(primary) = home_shard(router, db, true)? else {
        return Err(CommandError::new(
            codes::ILLEGAL_OPERATION,
            format!("can't shard {ns}"),
        ));
    };
    let (uuid, empty) =
        prepare_on_primary(&primary.server, db, coll, &key, unique, simple_collation)?;
    // The primary shard now keys the collection's oplog entries by shard key (copied to
    // every shard with the collection's shape) and logs the `shardCollection` event.
    primary
        .server
        .storage
        .lock()
        .shard_collection(db, coll, &key.pattern, unique, true)?;
    let shards = router.shard_list();
    let hashed_prefix = key.fields.first().is_some_and(|f| f.hashed);
    let (bounds, owners) = if hashed_prefix && empty {
        hashed_split(&key, &shards)
    } else {
        (
            vec![key.global_min(), key.global_max()],
            vec![primary.name.clone()],
        )
    };
    for owner in &owners {
        if let Some(shard) = router.shard(owner) {
            clone_collection_shape(&primary.server, &shard.server, db, coll);
        }
    }
    let entry = CollectionEntry {
        ns: ns.to_string(),
        uuid: uuid.clone(),
        key,
        unique,
    };
    let mut config = router.config.storage.lock();
    catalog::create_collection(&mut config, &entry, &bounds, &owners)?;
    Ok(doc! {"collectionsharded": ns, "collectionUUID": uuid})
}

/// Checks or creates the shard key's supporting index on the primary shard, as the real
/// server does: an empty (or missing) collection gets the index; a collection with
/// documents must already have one whose key starts with the shard key. Returns the
/// collection's uuid and whether it was empty.
fn prepare_on_primary(
    primary: &Server,
    db: &str,
    coll: &str,
    key: &ShardKey,
    unique: bool,
    simple_collation: bool,
) -> CmdResult<(bson::Binary, bool)> {
    let mut storage = primary.storage.lock();
    if storage.collection(db, coll).is_some_and(|c| c.is_view()) {
        return Err(CommandError::new(
            codes::COMMAND_NOT_SUPPORTED_ON_VIEW,
            format!("Namespace {db}.{coll} is a view, not a collection"),
        ));
    }
    if storage.collection(db, coll).is_none() {
        // Sharding a collection that does not exist creates it, with its `_id` index
        // (which supports an `{_id: 1}` key: no second index on the same key).
        storage.create_collection(db, coll, Document::new())?;
    }
    let empty = storage
        .collection(db, coll)
        .is_none_or(|c| c.docs.is_empty());
    let default_collation = storage
        .collection(db, coll)
        .and_then(|c| c.options.get_document("collation").ok())
        .filter(|c| !is_simple(c))
        .cloned();
    if let Some(collation) = &default_collation {
        if !simple_collation {
            return Err(CommandError::bad_value(format!(
                "Collection {db}.{coll} has default collation: {collation}. Must specify collation {{locale: 'simple'}} to shard it: the shard key always compares with the simple collation"
            )));
        }
    }
    // Only a simple-collation index supports a shard key. Indexes carry their collation
    // (one created without takes the collection's default); none means simple.
    let simple_index = |i: &crate::storage::Index| {
        i.spec.get_document("collation").is_ok_and(is_simple) || !i.spec.contains_key("collation")
    };
    let supporting = storage.collection(db, coll).and_then(|c| {
        c.indexes
            .iter()
            .find(|i| {
                crate::storage::Index::key_starts_with(&i.key, &key.pattern)
                    && (!unique || i.unique || i.name == "_id_")
                    && simple_index(i)
            })
            .map(|i| i.name.clone())
    });
    if let Some(c) = storage.collection(db, coll) {
        if let Some(index) = c.indexes.iter().find(|i| {
            i.unique
                && i.name != "_id_"
                && !crate::storage::Index::key_starts_with(&i.key, &key.pattern)
        }) {
            return Err(CommandError::new(
                codes::INVALID_OPTIONS,
                format!(
                    "can't shard collection '{db}.{coll}' with unique index on {} and proposed shard key {}. Uniqueness can't be maintained unless shard key is a prefix",
                    index.key, key.pattern
                ),
            ));
        }
    }
    if supporting.is_none() {
        if !empty {
            return Err(CommandError::new(
                codes::INVALID_OPTIONS,
                format!(
                    "Please create an index that starts with the proposed shard key and has the simple collation before sharding the collection. Proposed shard key: {}",
                    key.pattern
                ),
            ));
        }
        let mut spec = doc! {"key": key.pattern.clone(), "name": crate::storage::default_index_name(&key.pattern)};
        if unique {
            spec.insert("unique", true);
        }
        if default_collation.is_some() {
            spec.insert("collation", doc! {"locale": "simple"});
        }
        storage.create_indexes(db, coll, vec![spec])?;
    }
    let uuid = storage
        .collection(db, coll)
        .map(|c| c.uuid.clone())
        .ok_or_else(|| CommandError::ns_not_found(format!("{db}.{coll} vanished")))?;
    Ok((uuid, empty))
}

/// The `collation` option of `shardCollection`: absent, or `{locale: "simple"}` (true),
/// as the real server requires; any other collation is refused.
fn requested_collation(cmd: &Document) -> CmdResult<bool> {
    match cmd.get("collation") {
        None => Ok(false),
        Some(Bson::Document(c)) if is_simple(c) => Ok(true),
        Some(Bson::Document(c)) => Err(CommandError::bad_value(format!(
            "The collation for shardCollection must be {{locale: 'simple'}}, but found: {c}"
        ))),
        Some(other) => Err(CommandError::type_mismatch(format!(
            "shardCollection's collation must be a document such as {{locale: 'simple'}}, not {other}"
        ))),
    }
}

/// Whether a collation document is the simple (binary) one.
fn is_simple(collation: &Document) -> bool {
    collation.get_str("locale") == Ok("simple")
}

/// Creates `db.coll` on `to` with the uuid, options and indexes it has on `from` (a shard
/// that receives chunks holds the collection under the same uuid, as on a real cluster).
pub fn clone_collection_shape(from: &Server, to: &Server, db: &str, coll: &str) {
    if std::ptr::eq(from, to) {
        return;
    }
    let shape = from
        .storage
        .lock()
        .collection(db, coll)
        .map(|c| c.with_docs(BTreeMap::new()));
    let Some(shape) = shape else {
        return;
    };
    // Logged `fromMigrate`: change streams report the collection's creation once, from
    // the shard that created it, as on a real cluster.
    to.storage.lock().create_for_migration(db, coll, &shape);
}

/// The initial chunks of an empty collection on a hashed key: the hashed value range
/// split evenly, consecutive chunks on one shard.
fn hashed_split(key: &ShardKey, shards: &[Shard]) -> (Vec<Document>, Vec<String>) {
    let total = (shards.len() * INITIAL_HASHED_CHUNKS_PER_SHARD).max(1);
    let step = (u64::MAX / total as u64) as i128;
    let mut bounds = vec![key.global_min()];
    for i in 1..total {
        let value = (i64::MIN as i128 + step * i as i128) as i64;
        let mut bound = Document::new();
        for (j, f) in key.fields.iter().enumerate() {
            if j == 0 {
                bound.insert(f.path.clone(), value);
            } else {
                bound.insert(f.path.clone(), Bson::MinKey);
            }
        }
        bounds.push(bound);
    }
    bounds.push(key.global_max());
    let owners = (0..total)
        .map(|i| shards[i * shards.len() / total].name.clone())
        .collect();
    (bounds, owners)
}

fn shard_map(router: &Router) -> Document {
    let mut map = Document::new();
    let mut hosts = Document::new();
    let mut conn_strings = Document::new();
    let config = format!(
        "{}/{}",
        super::cluster::CONFIG_SET_NAME,
        router.config.address
    );
    map.insert("config", config.clone());
    hosts.insert(router.config.address.clone(), "config");
    conn_strings.insert(config, "config");
    for shard in router.shard_list() {
        let cs = format!("{}/{}", shard.name, shard.server.address);
        map.insert(shard.name.clone(), cs.clone());
        hosts.insert(shard.server.address.clone(), shard.name.clone());
        conn_strings.insert(cs, shard.name.clone());
    }
    doc! {"map": map, "hosts": hosts, "connStrings": conn_strings}
}
