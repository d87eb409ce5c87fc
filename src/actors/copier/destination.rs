//! Shards collections on a sharded destination before their first document is copied,
//! and pre-splits them over every destination shard so the copy loads all shards from
//! the start instead of filling one and leaving the balancer to move the rest.
//!
//! What a collection is sharded on:
//! - sharded on the source: the same key and `unique`, chunk boundaries from the
//!   source's `config.chunks` (spread round-robin over however many destination shards);
//! - unsharded on the source but named in `[sharding]`: the entry's key, `unique` when
//!   the source has a unique index on exactly that key (never for a hashed key), chunk
//!   boundaries from a sorted `$sample` of the source's keys;
//! - otherwise unsharded (it lands on its database's primary shard).
//!
//! A key whose first field is hashed is pre-split by `shardCollection` itself (an empty
//! collection gets chunks on every shard). Preparing is idempotent: a collection already
//! sharded the same way is only pre-split again while it is still empty (a crash during
//! the preparation), and one sharded differently is refused, by name.

use std::collections::HashMap;

use bson::{doc, Document};

use super::SharedEngine;
use crate::checkpoint::PlannedNamespace;
use crate::cluster::sharding::{self, is_hashed_prefix, same_key, ShardedCollection};
use crate::cluster::topology::TopologyKind;
use crate::cluster::ClusterError;
use crate::config::Config;

/// Chunks per destination shard when splitting from a sample (the real server pre-splits
/// an empty hashed collection into two chunks per shard as well).
const SAMPLED_CHUNKS_PER_SHARD: usize = 2;

/// Sampled keys per wanted chunk: enough for even quantiles, cheap to read.
const SAMPLES_PER_CHUNK: usize = 50;

/// Why a destination collection could not be sharded.
#[derive(Debug, thiserror::Error)]
pub enum ShardingError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// The destination cannot be sharded as the migration needs; retrying cannot help.
    #[error("{0}")]
    Refused(String),
}

impl ShardingError {
    pub fn is_transient(&self) -> bool {
        match self {
            ShardingError::Cluster(e) => e.is_transient(),
            ShardingError::Refused(_) => false,
        }
    }
}

impl From<ShardingError> for super::CopyError {
    fn from(e: ShardingError) -> Self {
        match e {
            ShardingError::Cluster(e) => super::CopyError::Cluster(e),
            ShardingError::Refused(message) => super::CopyError::Unsupported(message),
        }
    }
}

/// Where a collection's initial chunk boundaries come from.
#[derive(Clone, Debug)]
enum Splits {
    /// The source's chunk boundaries (each chunk's `min`, the first left out).
    Boundaries(Vec<Document>),
    /// Quantiles of a sorted sample of the source's keys.
    Sample,
    /// `shardCollection` pre-splits an empty collection on a hashed first field.
    Server,
}

/// How one destination collection is sharded.
#[derive(Clone, Debug)]
struct Target {
    db: String,
    coll: String,
    key: Document,
    unique: bool,
    splits: Splits,
}

impl Target {
    fn ns(&self) -> String {
        format!("{}.{}", self.db, self.coll)
    }
}

/// Shards (and pre-splits) every planned collection that is sharded on the source or
/// named in `[sharding]`, when the destination is sharded. Collections must exist on the
/// destination with their (relaxed) indexes. Returns how many collections are sharded.
pub async fn shard_collections(
    engine: &SharedEngine,
    plan: &[PlannedNamespace],
) -> Result<u64, ShardingError> {
    let TopologyKind::Sharded { shards } = &engine.destination_topology else {
        if !engine.config.sharding.resolved.is_empty() {
            tracing::warn!("the destination is a replica set: the [sharding] entries are not used");
        }
        return Ok(0);
    };
    let shard_ids: Vec<String> = shards.iter().map(|s| s.id.clone()).collect();
    let on_source: HashMap<String, ShardedCollection> = if engine.source_topology.is_sharded() {
        sharding::sharded_collections(&engine.source)
            .await?
            .into_iter()
            .map(|c| (c.ns.clone(), c))
            .collect()
    } else {
        HashMap::new()
    };
    // Found by the planned UUID: a collection renamed on the source since the plan
    // (5.0+ renames sharded collections) is in the source's catalog under its new name,
    // and another collection may hold the planned name by now.
    let by_uuid: HashMap<Vec<u8>, &ShardedCollection> = on_source
        .values()
        .filter_map(|c| c.uuid.as_ref().map(|u| (u.bytes.clone(), c)))
        .collect();
    let mut sharded = 0;
    for ns in plan.iter().filter(|n| !n.is_view) {
        let source_entry = match &ns.uuid {
            Some(uuid) => by_uuid.get(&uuid.bytes).copied(),
            None => on_source.get(&ns.ns),
        };
        let Some(target) = target(engine, ns, source_entry).await? else {
            continue;
        };
        prepare(engine, &target, ns.documents_estimated, &shard_ids).await?;
        sharded += 1;
    }
    if sharded > 0 {
        tracing::info!(
            collections = sharded,
            shards = shard_ids.len(),
            "destination collections sharded and pre-split"
        );
    }
    Ok(sharded)
}

/// What `ns` is sharded on at the destination, if it is sharded there at all.
async fn target(
    engine: &SharedEngine,
    ns: &PlannedNamespace,
    on_source: Option<&ShardedCollection>,
) -> Result<Option<Target>, ShardingError> {
    if let Some(source) = on_source {
        let splits = if source.hashed_prefix() {
            Splits::Server
        } else {
            let uuid = source.uuid.as_ref().ok_or_else(|| {
                ShardingError::Refused(format!(
                    "{}: the source's config.collections entry has no uuid, so its chunks cannot be read; is the source 5.0 or later?",
                    ns.ns
                ))
            })?;
            let chunks = sharding::chunks(&engine.source, uuid).await?;
            Splits::Boundaries(chunks.into_iter().skip(1).map(|c| c.min).collect())
        };
        return Ok(Some(Target {
            db: ns.db.clone(),
            coll: ns.coll.clone(),
            key: source.key.clone(),
            unique: source.unique,
            splits,
        }));
    }
    let Some(entry) = engine.config.sharding.entry(&ns.db, &ns.coll) else {
        return Ok(None);
    };
    let key = entry.key.to_document();
    let unique = !entry.key.is_hashed() && has_unique_index_on(&ns.indexes, &key);
    let splits = if is_hashed_prefix(&key) {
        Splits::Server
    } else {
        Splits::Sample
    };
    Ok(Some(Target {
        db: ns.db.clone(),
        coll: ns.coll.clone(),
        key,
        unique,
        splits,
    }))
}

/// Whether one of `indexes` (source index specs) is unique on exactly `key`.
pub fn has_unique_index_on(indexes: &[Document], key: &Document) -> bool {
    indexes.iter().any(|i| {
        i.get_bool("unique").unwrap_or(false)
            && i.get_document("key").is_ok_and(|k| same_key(k, key))
    })
}

/// Shards one collection (unless already sharded the same way) and pre-splits it while
/// it is empty.
async fn prepare(
    engine: &SharedEngine,
    target: &Target,
    documents: u64,
    shards: &[String],
) -> Result<(), ShardingError> {
    let dest = &engine.destination;
    let ns = target.ns();
    match sharding::sharded_collection(dest, &ns).await? {
        Some(existing) => {
            check_same(&ns, &existing, &target.key, target.unique)?;
            if !sharding::is_empty(dest, &target.db, &target.coll).await? {
                return Ok(());
            }
        }
        None => {
            ensure_supporting_index(
                engine,
                &target.db,
                &target.coll,
                &target.key,
                target.unique,
                engine.config.sharding.create_supporting_indexes,
            )
            .await?;
            sharding::enable_sharding(dest, &target.db).await?;
            sharding::shard_collection(dest, &ns, &target.key, target.unique).await?;
            engine.destination_keys.set(&ns, &target.key);
            tracing::info!(ns = %ns, key = %target.key, unique = target.unique, "sharded on the destination");
        }
    }
    let points = match &target.splits {
        Splits::Server => return Ok(()),
        Splits::Boundaries(points) => points.clone(),
        Splits::Sample => sampled_points(engine, target, documents, shards.len()).await?,
    };
    pre_split(engine, &ns, &points, shards).await
}

/// A collection already sharded on the destination must be sharded as the migration
/// needs; any other key would keep documents apart that the source keeps together.
pub fn check_same(
    ns: &str,
    existing: &ShardedCollection,
    key: &Document,
    unique: bool,
) -> Result<(), ShardingError> {
    if same_key(&existing.key, key) && existing.unique == unique {
        return Ok(());
    }
    Err(ShardingError::Refused(format!(
        "{ns} is already sharded on the destination with key {} (unique: {}), but the migration shards it with key {key} (unique: {unique}): drop {ns} on the destination (or set [destination] clear_destination = true) and run again, or change its [sharding] entry",
        existing.key, existing.unique
    )))
}

/// Makes sure an index supports the shard key on the destination: with `unique`, an
/// index unique on exactly the key (the copied one is made unique, the collection being
/// empty); otherwise any index that starts with the key, created when `create` allows.
pub async fn ensure_supporting_index(
    engine: &SharedEngine,
    db: &str,
    coll: &str,
    key: &Document,
    unique: bool,
    create: bool,
) -> Result<(), ShardingError> {
    let dest = &engine.destination;
    let indexes = dest.index_specs(db, coll).await?;
    let key_of = |i: &Document| i.get_document("key").cloned().unwrap_or_default();
    // Only an index with the simple collation supports a shard key (a collection with
    // another default collation gives it to every index created without one).
    let indexes: Vec<&Document> = indexes
        .iter()
        .filter(|i| sharding::has_simple_collation(i))
        .collect();
    if unique {
        if let Some(index) = indexes.iter().find(|i| same_key(&key_of(i), key)) {
            if !index.get_bool("unique").unwrap_or(false) {
                let name = index.get_str("name").unwrap_or_default();
                sharding::make_index_unique(dest, db, coll, name).await?;
            }
            return Ok(());
        }
    } else if indexes.iter().any(|i| sharding::is_prefix(key, &key_of(i))) {
        return Ok(());
    }
    if !create {
        return Err(ShardingError::Refused(format!(
            "{db}.{coll}: no index starts with the shard key {key}, and [sharding] create_supporting_indexes = false: create the index on the source (db.{coll}.createIndex({key})) or set create_supporting_indexes = true"
        )));
    }
    // Read only when an index is to be created: a collection with a default collation
    // would give it to the new index, so the simple one is named.
    let collated = dest
        .collection_specs(db)
        .await?
        .iter()
        .filter(|c| c.get_str("name") == Ok(coll))
        .filter_map(|c| c.get_document("options").ok())
        .any(|options| !sharding::has_simple_collation(options));
    let mut spec =
        doc! {"key": key.clone(), "name": sharding::supporting_index_name(key, collated)};
    if collated {
        spec.insert("collation", doc! {"locale": "simple"});
    }
    if unique {
        spec.insert("unique", true);
    }
    sharding::create_index(dest, db, coll, spec).await?;
    Ok(())
}

/// Whether `spec` (an index on the destination's `ns`, missing on the source) is one the
/// destination keeps for a `[sharding]` entry's key: the supporting index Ferry created
/// because the source had none, or the source's own index the key used, dropped on the
/// source during the run (the destination refuses to drop the last index its shard key
/// can use, 370). Either starts with the key and is neither sparse nor partial.
pub fn is_added_supporting_index(config: &Config, ns: &str, spec: &Document) -> bool {
    let Some((db, coll)) = ns.split_once('.') else {
        return false;
    };
    let Some(entry) = config.sharding.entry(db, coll) else {
        return false;
    };
    let key = entry.key.to_document();
    spec.get_document("key")
        .is_ok_and(|k| sharding::is_prefix(&key, k))
        && !spec.get_bool("sparse").unwrap_or(false)
        && !spec.contains_key("partialFilterExpression")
}

/// Split points at even quantiles of a sorted sample of the source's keys: two chunks per
/// destination shard (fewer for a small collection).
async fn sampled_points(
    engine: &SharedEngine,
    target: &Target,
    documents: u64,
    shards: usize,
) -> Result<Vec<Document>, ShardingError> {
    let wanted = (shards * SAMPLED_CHUNKS_PER_SHARD).min(documents as usize);
    if wanted < 2 {
        return Ok(Vec::new());
    }
    let keys = sharding::sampled_keys(
        &engine.source,
        &target.db,
        &target.coll,
        &target.key,
        (wanted * SAMPLES_PER_CHUNK) as i64,
    )
    .await?;
    let mut points: Vec<Document> = Vec::new();
    if keys.is_empty() {
        return Ok(points);
    }
    for i in 1..wanted {
        let point = &keys[i * keys.len() / wanted];
        if points.last() != Some(point) && keys.first() != Some(point) {
            points.push(point.clone());
        }
    }
    Ok(points)
}

/// Splits `ns` at every point not yet a chunk boundary, then spreads its chunks
/// round-robin over `shards`, moving only those not already where they belong.
async fn pre_split(
    engine: &SharedEngine,
    ns: &str,
    points: &[Document],
    shards: &[String],
) -> Result<(), ShardingError> {
    let dest = &engine.destination;
    let uuid = sharding::sharded_collection(dest, ns)
        .await?
        .and_then(|c| c.uuid)
        .ok_or_else(|| {
            ShardingError::Refused(format!(
                "{ns} is not in the destination's config.collections right after shardCollection; check the destination's config servers"
            ))
        })?;
    let existing = sharding::chunks(dest, &uuid).await?;
    for point in points {
        if existing.iter().any(|c| &c.min == point) {
            continue;
        }
        sharding::split_at(dest, ns, point).await?;
    }
    if shards.is_empty() {
        return Ok(());
    }
    let chunks = sharding::chunks(dest, &uuid).await?;
    let mut moved = 0;
    for (i, chunk) in chunks.iter().enumerate() {
        let to = &shards[i % shards.len()];
        if &chunk.shard != to {
            sharding::move_range(dest, ns, &chunk.min, &chunk.max, to).await?;
            moved += 1;
        }
    }
    tracing::info!(ns = %ns, chunks = chunks.len(), moved, "pre-split on the destination");
    Ok(())
}

/// Shards `db.coll` on the destination as a `shardCollection` event from the source says
/// (during sync the collection already holds documents, so it is not pre-split).
pub async fn shard_from_event(
    engine: &SharedEngine,
    db: &str,
    coll: &str,
    key: &Document,
    unique: bool,
) -> Result<(), ShardingError> {
    let dest = &engine.destination;
    let ns = format!("{db}.{coll}");
    if let Some(existing) = sharding::sharded_collection(dest, &ns).await? {
        return check_same(&ns, &existing, key, unique);
    }
    let indexes = dest.index_specs(db, coll).await?;
    let key_of = |i: &Document| i.get_document("key").cloned().unwrap_or_default();
    let supported = indexes.iter().any(|i| {
        if !sharding::has_simple_collation(i) {
            false
        } else if unique {
            same_key(&key_of(i), key)
        } else {
            sharding::is_prefix(key, &key_of(i))
        }
    });
    if unique || !supported {
        // The source created (or had) the index; its event may not have arrived yet.
        ensure_supporting_index(engine, db, coll, key, unique, true).await?;
    }
    sharding::enable_sharding(dest, db).await?;
    sharding::shard_collection(dest, &ns, key, unique).await?;
    engine.destination_keys.set(&ns, key);
    tracing::info!(ns = %ns, key = %key, unique, "sharded on the destination, as on the source");
    Ok(())
}
