//! The router's chunk commands: `moveChunk`, `moveRange` (both with `_waitForDelete`),
//! `split` and `mergeChunks`, checked as the real router checks them, carried out by
//! [`migration`] and the catalog.

use std::time::Instant;

use bson::{doc, Bson, Document};

use crate::error::{codes, CmdResult, CommandError};

use super::catalog::{self, Chunk, CollectionEntry};
use super::migration;
use super::shard_key::{compare_keys, in_range};
use super::Router;

fn namespace<'a>(cmd: &'a Document, name: &str) -> CmdResult<&'a str> {
    let ns = cmd.get_str(name).map_err(|_| {
        CommandError::type_mismatch(format!("{name} takes a namespace string, e.g. \"db.coll\""))
    })?;
    if !ns.contains('.') {
        return Err(CommandError::new(
            codes::INVALID_NAMESPACE,
            format!("Invalid namespace specified '{ns}'"),
        ));
    }
    Ok(ns)
}

fn required_str<'a>(cmd: &'a Document, command: &str, field: &str) -> CmdResult<&'a str> {
    cmd.get_str(field).map_err(|_| {
        CommandError::new(
            codes::MISSING_REQUIRED_FIELD,
            format!("BSON field '{command}.{field}' is missing but a required field"),
        )
    })
}

/// `bounds: [min, max]` of a command, if given.
fn bounds(cmd: &Document) -> CmdResult<Option<(Document, Document)>> {
    let Some(b) = cmd.get("bounds") else {
        return Ok(None);
    };
    match b {
        Bson::Array(a) => match (a.first(), a.get(1), a.len()) {
            (Some(Bson::Document(min)), Some(Bson::Document(max)), 2) => {
                Ok(Some((min.clone(), max.clone())))
            }
            _ => Err(CommandError::bad_value(
                "bounds must be an array of two documents: [min, max]",
            )),
        },
        _ => Err(CommandError::type_mismatch(
            "bounds must be an array of two documents: [min, max]",
        )),
    }
}

/// The chunk a `find` (a document with the shard key) or `bounds` (exactly a chunk's
/// range) names.
fn chunk_of(
    router: &Router,
    entry: &CollectionEntry,
    cmd: &Document,
    command: &str,
) -> CmdResult<Chunk> {
    let find = cmd.get_document("find").ok();
    match (find, bounds(cmd)?) {
        (Some(_), Some(_)) => Err(CommandError::bad_value(format!(
            "{command}: give either 'find' or 'bounds', not both"
        ))),
        (None, None) => Err(CommandError::bad_value(format!(
            "{command}: give 'find' (a document with the shard key) or 'bounds' ([min, max] of a chunk)"
        ))),
        (Some(find), None) => {
            let key = entry.key.key_from_equality(find).ok_or_else(|| {
                CommandError::new(
                    codes::BAD_VALUE,
                    format!(
                        "no shard key found in chunk query {find}; give every field of the shard key {}",
                        entry.key.pattern
                    ),
                )
            })?;
            migration::chunk_holding(router, entry, &key)
        }
        (None, Some((min, max))) => {
            let chunks = catalog::chunks(&router.config.storage.lock(), &entry.uuid);
            chunks
                .into_iter()
                .find(|c| compare_keys(&c.min, &min).is_eq() && compare_keys(&c.max, &max).is_eq())
                .ok_or_else(|| {
                    CommandError::bad_value(format!(
                        "no chunk of {} has the bounds [{min}, {max}); config.chunks lists them",
                        entry.ns
                    ))
                })
        }
    }
}

/// `moveChunk: ns, find | bounds, to, _waitForDelete?` -> `{millis}`.
pub async fn move_chunk(router: &Router, cmd: &Document) -> CmdResult<Document> {
    let started = Instant::now();
    let ns = namespace(cmd, "moveChunk")?;
    let to = required_str(cmd, "moveChunk", "to")?;
    let entry = migration::sharded_collection(router, ns)?;
    let to = migration::shard_named(router, to)?;
    let chunk = chunk_of(router, &entry, cmd, "moveChunk")?;
    let wait_for_delete = cmd.get_bool("_waitForDelete").unwrap_or(false);
    migration::move_chunk(router, &entry, &chunk, &to, wait_for_delete).await?;
    Ok(doc! {"millis": started.elapsed().as_millis() as i64})
}

/// `moveRange: ns, min, max?, toShard, _waitForDelete?`: moves `[min, max)` (up to the
/// end of the chunk holding `min` when `max` is missing), splitting the chunk first when
/// the range is only part of it.
pub async fn move_range(router: &Router, cmd: &Document) -> CmdResult<Document> {
    let ns = namespace(cmd, "moveRange")?;
    let to = required_str(cmd, "moveRange", "toShard")?;
    let min = cmd.get_document("min").map_err(|_| {
        CommandError::new(
            codes::MISSING_REQUIRED_FIELD,
            "moveRange: give 'min' (the range's lower bound, a full shard key)",
        )
    })?;
    let entry = migration::sharded_collection(router, ns)?;
    let to = migration::shard_named(router, to)?;
    check_full_key(&entry, min)?;
    let mut chunk = migration::chunk_holding(router, &entry, min)?;
    if !compare_keys(&chunk.min, min).is_eq() {
        split_at(router, &entry, &chunk, min)?;
        chunk = migration::chunk_holding(router, &entry, min)?;
    }
    if let Ok(max) = cmd.get_document("max") {
        check_full_key(&entry, max)?;
        if compare_keys(max, &chunk.max).is_gt() {
            return Err(CommandError::bad_value(format!(
                "moveRange: [{min}, {max}) spans several chunks; move one chunk's range at a time"
            )));
        }
        if compare_keys(max, &chunk.max).is_lt() {
            split_at(router, &entry, &chunk, max)?;
            chunk = migration::chunk_holding(router, &entry, min)?;
        }
    }
    let wait_for_delete = cmd.get_bool("_waitForDelete").unwrap_or(false);
    migration::move_chunk(router, &entry, &chunk, &to, wait_for_delete).await?;
    Ok(doc! {})
}

fn check_full_key(entry: &CollectionEntry, key: &Document) -> CmdResult<()> {
    let same_fields = key.len() == entry.key.pattern.len()
        && key
            .keys()
            .zip(entry.key.pattern.keys())
            .all(|(a, b)| a == b);
    if same_fields {
        Ok(())
    } else {
        Err(CommandError::bad_value(format!(
            "{key} is not a full shard key of {}: give every field of {} in order",
            entry.ns, entry.key.pattern
        )))
    }
}

/// Splits `chunk` at `at` (a key strictly inside it).
fn split_at(
    router: &Router,
    entry: &CollectionEntry,
    chunk: &Chunk,
    at: &Document,
) -> CmdResult<()> {
    if !in_range(at, &chunk.min, &chunk.max) || compare_keys(at, &chunk.min).is_eq() {
        return Err(CommandError::bad_value(format!(
            "split point {at} is not inside the chunk [{}, {}) of {}",
            chunk.min, chunk.max, entry.ns
        )));
    }
    catalog::split_chunk(
        &mut router.config.storage.lock(),
        &chunk.id,
        at.clone(),
        &chunk.shard,
    )?;
    router.config.oplog_appended.notify_waiters();
    Ok(())
}

/// `splitChunk` sent to a shard primary (what the router's `split` does on a real
/// cluster): `{splitChunk: ns, from: <this shard>, keyPattern, min, max, splitKeys}`
/// splits the chunk `[min, max)`, which this shard must own, at each split key.
pub fn split_chunk_on_shard(
    server: &std::sync::Arc<crate::server::Server>,
    cmd: &Document,
) -> CmdResult<Document> {
    let router = server
        .cluster
        .get()
        .and_then(std::sync::Weak::upgrade)
        .ok_or_else(|| {
            CommandError::new(
                codes::ILLEGAL_OPERATION,
                "splitChunk is only allowed on a shard of a sharded cluster",
            )
        })?;
    let ns = namespace(cmd, "splitChunk")?;
    let entry = migration::sharded_collection(&router, ns)?;
    let (Ok(min), Ok(max)) = (cmd.get_document("min"), cmd.get_document("max")) else {
        return Err(CommandError::new(
            codes::FAILED_TO_PARSE,
            "splitChunk needs the chunk's 'min' and 'max'",
        ));
    };
    let keys: Vec<Document> = cmd
        .get_array("splitKeys")
        .map_err(|_| {
            CommandError::new(
                codes::FAILED_TO_PARSE,
                "splitChunk needs 'splitKeys', an array of shard keys",
            )
        })?
        .iter()
        .map(|k| {
            k.as_document().cloned().ok_or_else(|| {
                CommandError::type_mismatch("each of splitKeys must be a shard key document")
            })
        })
        .collect::<CmdResult<_>>()?;
    let this_shard = router
        .shard_list()
        .into_iter()
        .find(|s| std::sync::Arc::ptr_eq(&s.server, server))
        .map(|s| s.name)
        .unwrap_or_default();
    if let Ok(from) = cmd.get_str("from") {
        if from != this_shard {
            return Err(CommandError::bad_value(format!(
                "splitChunk was sent to {this_shard} but names {from} in 'from'"
            )));
        }
    }
    let chunk = migration::chunk_holding(&router, &entry, min)?;
    if chunk.shard != this_shard
        || !compare_keys(&chunk.min, min).is_eq()
        || !compare_keys(&chunk.max, max).is_eq()
    {
        return Err(CommandError::new(
            codes::STALE_CONFIG,
            format!(
                "splitChunk of {ns} [{min}, {max}) on {this_shard}: this shard owns no such chunk (it is [{}, {}) on {})",
                chunk.min, chunk.max, chunk.shard
            ),
        ));
    }
    let mut keys = keys;
    keys.sort_by(compare_keys);
    let mut current = chunk;
    for key in &keys {
        check_full_key(&entry, key)?;
        split_at(&router, &entry, &current, key)?;
        current = migration::chunk_holding(&router, &entry, key)?;
    }
    Ok(doc! {})
}

/// `split: ns, middle | find | bounds`: splits a chunk at `middle`, or at the median key
/// of its documents (`find` names the chunk by a document, `bounds` by its range).
pub fn split(router: &Router, cmd: &Document) -> CmdResult<Document> {
    let ns = namespace(cmd, "split")?;
    let entry = migration::sharded_collection(router, ns)?;
    if let Ok(middle) = cmd.get_document("middle") {
        if cmd.contains_key("find") || cmd.contains_key("bounds") {
            return Err(CommandError::bad_value(
                "split: give only one of 'middle', 'find' and 'bounds'",
            ));
        }
        check_full_key(&entry, middle)?;
        let chunk = migration::chunk_holding(router, &entry, middle)?;
        split_at(router, &entry, &chunk, middle)?;
        return Ok(doc! {});
    }
    let chunk = chunk_of(router, &entry, cmd, "split")?;
    let at = median_key(router, &entry, &chunk)?.ok_or_else(|| {
        CommandError::new(
            codes::OPERATION_FAILED,
            format!(
                "cannot split the chunk [{}, {}) of {}: it has fewer than two distinct keys; give 'middle'",
                chunk.min, chunk.max, entry.ns
            ),
        )
    })?;
    split_at(router, &entry, &chunk, &at)?;
    Ok(doc! {})
}

/// The median shard key of the chunk's documents on its shard, if it splits the chunk.
fn median_key(
    router: &Router,
    entry: &CollectionEntry,
    chunk: &Chunk,
) -> CmdResult<Option<Document>> {
    let shard = migration::shard_named(router, &chunk.shard)?;
    let (db, coll) = crate::storage::split_ns(&entry.ns);
    let mut keys: Vec<Document> = shard
        .server
        .storage
        .lock()
        .collection(db, coll)
        .map(|c| {
            c.docs
                .values()
                .map(|d| entry.key.key_of(d))
                .filter(|k| in_range(k, &chunk.min, &chunk.max))
                .collect()
        })
        .unwrap_or_default();
    keys.sort_by(compare_keys);
    keys.dedup_by(|a, b| compare_keys(a, b).is_eq());
    if keys.len() < 2 {
        return Ok(None);
    }
    Ok(Some(keys.swap_remove(keys.len() / 2)))
}

/// `mergeChunks: ns, bounds: [min, max]`: merges the contiguous chunks covering exactly
/// `[min, max)`, which must all be on one shard.
pub fn merge_chunks(router: &Router, cmd: &Document) -> CmdResult<Document> {
    let ns = namespace(cmd, "mergeChunks")?;
    let entry = migration::sharded_collection(router, ns)?;
    let (min, max) = bounds(cmd)?.ok_or_else(|| {
        CommandError::new(
            codes::MISSING_REQUIRED_FIELD,
            "BSON field 'mergeChunks.bounds' is missing but a required field",
        )
    })?;
    let mut config = router.config.storage.lock();
    let chunks: Vec<Chunk> = catalog::chunks(&config, &entry.uuid)
        .into_iter()
        .filter(|c| !compare_keys(&c.min, &min).is_lt() && !compare_keys(&c.max, &max).is_gt())
        .collect();
    let covers = chunks
        .first()
        .is_some_and(|c| compare_keys(&c.min, &min).is_eq())
        && chunks
            .last()
            .is_some_and(|c| compare_keys(&c.max, &max).is_eq())
        && chunks
            .windows(2)
            .all(|w| compare_keys(&w[0].max, &w[1].min).is_eq());
    if !covers {
        return Err(CommandError::new(
            codes::ILLEGAL_OPERATION,
            format!("could not merge chunks of {ns}: [{min}, {max}) is not covered by contiguous chunks; its bounds must be chunk bounds"),
        ));
    }
    if chunks.iter().any(|c| c.shard != chunks[0].shard) {
        return Err(CommandError::new(
            codes::ILLEGAL_OPERATION,
            format!("could not merge chunks of {ns}: [{min}, {max}) spans several shards; move its chunks to one shard first"),
        ));
    }
    if chunks.len() > 1 {
        catalog::merge_chunks(&mut config, &chunks)?;
    }
    drop(config);
    router.config.oplog_appended.notify_waiters();
    Ok(doc! {})
}
