//! The copy plan: what to migrate (the one namespace list), each collection's options
//! and indexes, and its ranges. A replica set source's collections are split into `_id`
//! ranges from a sample. A sharded source's sharded collections are split into their
//! chunks (`config.chunks`), each range read by the copier of the shard that owns it;
//! its unsharded collections into `_id` ranges read by their database's primary shard's
//! copier.
//!
//! Ranges are key ranges, not shards: a range is read through the router with its bounds,
//! and the router's ownership filter gives each document of it exactly once wherever it
//! lives at the time of the read, orphans left out. A chunk that a migration moves
//! between the plan and the read is copied whole from its new shard; the shard in the
//! range only spreads the reading.

use bson::{doc, Bson};

use super::CopyError;
use crate::actors::SharedEngine;
use crate::checkpoint::{CopyRange, PlannedNamespace};
use crate::cluster::namespaces::{self, NamespaceKind};
use crate::cluster::ownership;

/// Sample size per wanted range when choosing split points.
const SAMPLES_PER_RANGE: u64 = 20;

/// Lists what to migrate and splits each collection into `_id` ranges.
pub(super) async fn make_plan(
    engine: &SharedEngine,
) -> Result<(Vec<PlannedNamespace>, Vec<CopyRange>), CopyError> {
    let source = &engine.source;
    let mut plan = Vec::new();
    let mut ranges = Vec::new();
    for namespace in namespaces::in_scope(source, &engine.filter).await? {
        let (db, name) = (&namespace.db, namespace.coll.as_str());
        if namespace.kind == NamespaceKind::TimeSeries {
            // The preflight refuses time-series collections in scope; one created
            // since is refused here rather than left out.
            return Err(CopyError::Unsupported(format!(
                "{db}.{name} is a time-series collection, which Ferry cannot keep in sync: exclude it with [filter] exclude_namespaces and move it separately"
            )));
        }
        let is_view = namespace.kind == NamespaceKind::View;
        let options = namespace.options.clone();
        let ns = namespace.full_name();
        let (indexes, (count, size)) = if is_view {
            (Vec::new(), (0, 0))
        } else {
            (
                source.index_specs(db, name).await?,
                source.collection_size(db, name).await?,
            )
        };
        if !is_view {
            ranges.extend(collection_ranges(engine, db, name, &ns, count).await?);
        }
        plan.push(PlannedNamespace {
            uuid: namespace.uuid.clone(),
            ns,
            db: db.clone(),
            coll: name.to_string(),
            is_view,
            options,
            indexes,
            documents_estimated: count,
            bytes_estimated: size,
        });
    }
    Ok((plan, ranges))
}

/// The ranges of one collection: its chunks on a sharded source (sharded collections),
/// otherwise `_id` ranges (for an unsharded collection of a sharded source, all read by
/// its database's primary shard's copier).
async fn collection_ranges(
    engine: &SharedEngine,
    db: &str,
    coll: &str,
    ns: &str,
    count: u64,
) -> Result<Vec<CopyRange>, CopyError> {
    let range = |index: usize, shard: &str, min, max, key| CopyRange {
        id: if shard.is_empty() {
            format!("{ns}#{index}")
        } else {
            format!("{ns}#{shard}#{index}")
        },
        ns: ns.to_string(),
        index: index as u32,
        min,
        max,
        done: false,
        last_id: None,
        documents: 0,
        bytes: 0,
        shard: shard.to_string(),
        key,
    };
    let source = &engine.source;
    let mut shard = String::new();
    if engine.source_topology.is_sharded() {
        if let Some(sharded) = ownership::sharded_collection(source, db, coll).await? {
            let uuid = sharded.uuid.clone().ok_or_else(|| {
                CopyError::Unsupported(format!(
                    "source: config.collections has no uuid for {ns}; Ferry finds its chunks by uuid (MongoDB 5.0 and later)"
                ))
            })?;
            let chunks = ownership::chunks(source, &uuid).await?;
            if !chunks.is_empty() {
                return Ok(chunks
                    .into_iter()
                    .enumerate()
                    .map(|(index, chunk)| {
                        range(
                            index,
                            &chunk.shard,
                            Some(Bson::Document(chunk.min)),
                            Some(Bson::Document(chunk.max)),
                            Some(sharded.key.clone()),
                        )
                    })
                    .collect());
            }
        }
        shard = ownership::primary_shard(source, db)
            .await?
            .unwrap_or_default();
    }
    Ok(split_points(engine, db, coll, count)
        .await?
        .into_iter()
        .enumerate()
        .map(|(index, (min, max))| range(index, &shard, min, max, None))
        .collect())
}

/// Range bounds in `_id` index order, from a sorted sample of `_id`s.
async fn split_points(
    engine: &SharedEngine,
    db: &str,
    coll: &str,
    count: u64,
) -> Result<Vec<(Option<Bson>, Option<Bson>)>, CopyError> {
    let wanted = engine.config.copy.parallel_ranges_per_collection.max(1) as u64;
    let batch = engine.config.copy.batch_max_documents.max(1) as u64;
    if wanted == 1 || count < 2 * batch {
        return Ok(vec![(None, None)]);
    }
    let wanted = wanted.min(count / batch).max(1);
    let sample_size = (wanted * SAMPLES_PER_RANGE).min(count) as i64;
    let sample = engine
        .source
        .cursor(
            db,
            doc! {"aggregate": coll, "pipeline": [{"$sample": {"size": sample_size}}, {"$project": {"_id": 1}}, {"$sort": {"_id": 1}}], "cursor": {}},
        )
        .await?;
    let ids: Vec<Bson> = sample
        .into_iter()
        .filter_map(|d| d.get("_id").cloned())
        .collect();
    if ids.is_empty() {
        return Ok(vec![(None, None)]);
    }
    let mut bounds: Vec<Bson> = Vec::new();
    for i in 1..wanted {
        let b = ids[(i as usize * ids.len()) / wanted as usize].clone();
        if bounds.last() != Some(&b) {
            bounds.push(b);
        }
    }
    let mut out = Vec::new();
    let mut lo = None;
    for b in bounds {
        out.push((lo, Some(b.clone())));
        lo = Some(b);
    }
    out.push((lo, None));
    Ok(out)
}
