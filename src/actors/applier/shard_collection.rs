//! Sharding on the destination during sync: a `shardCollection` event from the source
//! shards the collection the same way on a sharded destination (a replica-set destination
//! has nothing to shard), and a collection that appears during sync under a name with a
//! `[sharding]` entry (created, created implicitly by its first insert, or renamed onto
//! that name) is sharded per its entry before its first document is applied.

use bson::Document;

use super::ApplyError;
use crate::actors::copier::destination::{self, ShardingError};
use crate::actors::SharedEngine;
use crate::cluster::sharding;

/// Applies a `shardCollection` event (`operationDescription: {shardKey, unique}`).
pub async fn apply(
    engine: &SharedEngine,
    db: &str,
    coll: &str,
    description: &Document,
) -> Result<(), ApplyError> {
    let key = description
        .get_document("shardKey")
        .map_err(|_| ApplyError::Malformed {
            ns: format!("{db}.{coll}"),
            field: "operationDescription.shardKey",
            event: description.to_string(),
        })?;
    let unique = description.get_bool("unique").unwrap_or(false);
    if !engine.destination_topology.is_sharded() {
        tracing::info!(ns = %format!("{db}.{coll}"), key = %key, "collection sharded on the source; the destination is a replica set, so nothing to shard");
        return Ok(());
    }
    destination::shard_from_event(engine, db, coll, key, unique)
        .await
        .map_err(apply_error)
}

/// Shards `db.coll`, which has just appeared on the destination during sync (a `create`
/// event, which the source also logs when a first insert creates the collection, or a
/// `rename` onto this name), per its `[sharding]` entry, as the initial copy would have:
/// `unique` when the source has a unique index on exactly the key (never for a hashed
/// key), its supporting index created as `create_supporting_indexes` allows. Nothing to
/// do on a replica-set destination, without an entry, when the destination collection is
/// already sharded (a replay, or a renamed collection that keeps its sharding), or when
/// the source shards the collection itself (its `shardCollection` event decides the key,
/// as the initial copy prefers the source's key).
pub async fn shard_new_collection(
    engine: &SharedEngine,
    db: &str,
    coll: &str,
) -> Result<(), ApplyError> {
    if !engine.destination_topology.is_sharded() {
        return Ok(());
    }
    let Some(entry) = engine.config.sharding.entry(db, coll) else {
        return Ok(());
    };
    let ns = format!("{db}.{coll}");
    let dest = &engine.destination;
    if sharding::sharded_collection(dest, &ns).await?.is_some() {
        return Ok(());
    }
    if engine.source_topology.is_sharded()
        && sharding::sharded_collection(&engine.source, &ns)
            .await?
            .is_some()
    {
        return Ok(());
    }
    let on_source = engine.source.collection_specs(db).await?;
    if !on_source.iter().any(|s| s.get_str("name") == Ok(coll)) {
        // Gone from the source again (a replayed create, or one dropped right after):
        // its drop or rename event follows, so there is nothing to shard.
        return Ok(());
    }
    let key = entry.key.to_document();
    let source_indexes = engine.source.index_specs(db, coll).await?;
    let unique = !entry.key.is_hashed() && destination::has_unique_index_on(&source_indexes, &key);
    // The source's own index on the key, if it has one (its createIndexes event may come
    // later): created first, so the destination's supporting index is the source's.
    let key_of = |i: &Document| i.get_document("key").cloned().unwrap_or_default();
    let source_index = source_indexes
        .iter()
        .find(|i| sharding::same_key(&key_of(i), &key))
        .or_else(|| {
            source_indexes
                .iter()
                .find(|i| sharding::is_prefix(&key, &key_of(i)))
        })
        .filter(|i| i.get_str("name") != Ok("_id_"));
    if let Some(index) = source_index {
        match sharding::create_index(dest, db, coll, super::relaxed_index(index)).await {
            Ok(()) => {}
            // The same index under another name or options: its event will say.
            Err(e) if e.code().is_some_and(|c| c == 85 || c == 86) => {}
            Err(e) => return Err(e.into()),
        }
    }
    destination::ensure_supporting_index(
        engine,
        db,
        coll,
        &key,
        unique,
        engine.config.sharding.create_supporting_indexes,
    )
    .await
    .map_err(apply_error)?;
    sharding::enable_sharding(dest, db).await?;
    sharding::shard_collection(dest, &ns, &key, unique).await?;
    engine.destination_keys.set(&ns, &key);
    tracing::info!(ns = %ns, key = %key, unique, "collection created during sync sharded on the destination per its [sharding] entry");
    Ok(())
}

fn apply_error(e: ShardingError) -> ApplyError {
    match e {
        ShardingError::Cluster(e) => ApplyError::Cluster(e),
        ShardingError::Refused(message) => ApplyError::Refused(message),
    }
}
