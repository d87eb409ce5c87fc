//! The checks of the data a sharded source holds, all read through the router: orphaned
//! documents, indexes that differ between the shards of one collection, zones, shard
//! keys other than `_id` towards a replica set, non-simple default collations.

use std::collections::{BTreeMap, BTreeSet};

use bson::{doc, Bson, Document};

use crate::cluster::{Cluster, ClusterError, Side};

use super::{describe, named, Check, NamespaceFilter, Probe};

/// Index options that say nothing about what the index holds, left out when the shards'
/// copies of an index are compared.
const IGNORED_INDEX_FIELDS: [&str; 3] = ["v", "ns", "background"];

/// The sharded collections the router's catalog lists (dropped ones left out), with
/// their `_id` (namespace) and `key`.
async fn sharded_collections(router: &Cluster) -> Result<Vec<Document>, ClusterError> {
    router
        .cursor(
            "config",
            doc! {"find": "collections", "filter": {"dropped": {"$ne": true}}},
        )
        .await
}

fn in_scope(filter: &NamespaceFilter, ns: &str) -> bool {
    ns.split_once('.')
        .is_some_and(|(db, coll)| filter.allows(db, coll))
}

fn number(v: Option<&Bson>) -> u64 {
    crate::cluster::number(v)
}

pub(super) async fn orphans(filter: &NamespaceFilter, source: &Probe) -> Check {
    let name = named("orphaned documents", Side::Source);
    let router = match source.usable() {
        Ok(c) => c,
        Err(reason) => return Check::not_run(name, &reason),
    };
    let distribution = router
        .cursor(
            "admin",
            doc! {"aggregate": 1, "pipeline": [{"$shardedDataDistribution": {}}], "cursor": {}},
        )
        .await;
    let entries = match distribution {
        Ok(d) => d,
        Err(e) => {
            return Check::warn(
                name,
                format!("cannot read $shardedDataDistribution through the router: {}", describe(&e)),
                Some("grant the source user clusterMonitor (shardedDataDistribution); orphans are never copied either way".into()),
            )
        }
    };
    let mut found = Vec::new();
    for entry in &entries {
        let ns = entry.get_str("ns").unwrap_or_default();
        if !in_scope(filter, ns) {
            continue;
        }
        let per_shard: Vec<String> = entry
            .get_array("shards")
            .map(|a| {
                a.iter()
                    .filter_map(Bson::as_document)
                    .filter_map(|s| {
                        let n = number(s.get("numOrphanedDocs"));
                        (n > 0)
                            .then(|| format!("{} on {}", n, s.get_str("shardName").unwrap_or("?")))
                    })
                    .collect()
            })
            .unwrap_or_default();
        if !per_shard.is_empty() {
            found.push(format!("{ns} ({})", per_shard.join(", ")));
        }
    }
    if found.is_empty() {
        Check::pass(name, "no orphaned documents in the migrated collections")
    } else {
        Check::warn(
            name,
            format!(
                "orphaned documents (left on a shard by a chunk migration, not owned by it): {}; they are never copied",
                found.join("; ")
            ),
            Some("nothing to do: Ferry copies only the documents each shard owns; to remove the orphans, run cleanupOrphaned on the shard's primary".into()),
        )
    }
}

/// An index as compared between shards: its options without [`IGNORED_INDEX_FIELDS`],
/// sorted by name (the key keeps its field order, which matters).
fn index_shape(spec: &Document) -> String {
    let mut fields: Vec<(&String, &Bson)> = spec
        .iter()
        .filter(|(k, _)| !IGNORED_INDEX_FIELDS.contains(&k.as_str()))
        .collect();
    fields.sort_by(|a, b| a.0.cmp(b.0));
    let doc: Document = fields
        .into_iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    doc.to_string()
}

/// The differences between the shards' index sets of one collection, from its
/// `$indexStats` entries (one per index and shard that owns chunks of it).
fn index_differences(ns: &str, stats: &[Document]) -> Vec<String> {
    // shard -> index name -> shape
    let mut by_shard: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for s in stats {
        let (Ok(shard), Ok(index)) = (s.get_str("shard"), s.get_str("name")) else {
            continue;
        };
        let shape = s
            .get_document("spec")
            .map(index_shape)
            .unwrap_or_else(|_| s.get("key").map(|k| k.to_string()).unwrap_or_default());
        by_shard
            .entry(shard.to_string())
            .or_default()
            .insert(index.to_string(), shape);
    }
    let names: BTreeSet<&String> = by_shard.values().flat_map(|m| m.keys()).collect();
    let mut out = Vec::new();
    for index in names {
        let missing: Vec<&str> = by_shard
            .iter()
            .filter(|(_, m)| !m.contains_key(index))
            .map(|(s, _)| s.as_str())
            .collect();
        if !missing.is_empty() {
            out.push(format!(
                "{ns}: index {index} is missing on {}",
                missing.join(", ")
            ));
            continue;
        }
        let shapes: BTreeSet<&String> = by_shard.values().filter_map(|m| m.get(index)).collect();
        if shapes.len() > 1 {
            let per_shard: Vec<String> = by_shard
                .iter()
                .filter_map(|(s, m)| m.get(index).map(|shape| format!("{s}: {shape}")))
                .collect();
            out.push(format!(
                "{ns}: index {index} differs between shards ({})",
                per_shard.join("; ")
            ));
        }
    }
    out
}

pub(super) async fn shard_indexes(filter: &NamespaceFilter, source: &Probe) -> Check {
    let name = named("shard indexes", Side::Source);
    let router = match source.usable() {
        Ok(c) => c,
        Err(reason) => return Check::not_run(name, &reason),
    };
    let found = async {
        let mut found = Vec::new();
        for c in sharded_collections(router).await? {
            let ns = c.get_str("_id").unwrap_or_default();
            let Some((db, coll)) = ns.split_once('.') else {
                continue;
            };
            if !filter.allows(db, coll) {
                continue;
            }
            let stats = router
                .cursor(
                    db,
                    doc! {"aggregate": coll, "pipeline": [{"$indexStats": {}}], "cursor": {}},
                )
                .await?;
            found.extend(index_differences(ns, &stats));
        }
        Ok::<_, ClusterError>(found)
    };
    match found.await {
        Ok(found) if found.is_empty() => Check::pass(
            name,
            "every sharded collection has the same indexes on each of its shards",
        ),
        Ok(found) => Check::fail(
            name,
            format!(
                "indexes differ between shards of one collection: {}; the destination cannot be built to match",
                found.join("; ")
            ),
            "make the shards agree through the router: create each missing index again with createIndexes (it is built on the shards that lack it) or drop the stray one with dropIndexes, then validate again",
        ),
        Err(e) => Check::fail(
            name,
            format!("cannot compare the shards' indexes: {}", describe(&e)),
            "grant the source user clusterMonitor ($indexStats and read on the config database)",
        ),
    }
}

pub(super) async fn zones(filter: &NamespaceFilter, source: &Probe) -> Check {
    let name = named("zones", Side::Source);
    let router = match source.usable() {
        Ok(c) => c,
        Err(reason) => return Check::not_run(name, &reason),
    };
    let tags = match router
        .cursor("config", doc! {"find": "tags", "filter": {}})
        .await
    {
        Ok(t) => t,
        Err(e) => {
            return Check::warn(
                name,
                format!(
                    "cannot read the source's zones (config.tags): {}",
                    describe(&e)
                ),
                Some("grant the source user clusterMonitor (read on the config database)".into()),
            )
        }
    };
    let mut found: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for t in &tags {
        let ns = t.get_str("ns").unwrap_or_default();
        if in_scope(filter, ns) {
            found
                .entry(ns.to_string())
                .or_default()
                .insert(t.get_str("tag").unwrap_or("?").to_string());
        }
    }
    if found.is_empty() {
        return Check::pass(name, "no zone ranges on the migrated collections");
    }
    let listed: Vec<String> = found
        .iter()
        .map(|(ns, zones)| {
            format!(
                "{ns} (zones {})",
                zones.iter().cloned().collect::<Vec<_>>().join(", ")
            )
        })
        .collect();
    Check::warn(
        name,
        format!(
            "zone ranges on {}; zones are not copied",
            listed.join("; ")
        ),
        Some("after the migration, define the zones on the destination (sh.addShardToZone, sh.updateZoneKeyRange) if you need them".into()),
    )
}

/// Whether a shard key is `_id` alone (ranged or hashed), which keeps `_id` unique
/// across shards.
fn keyed_on_id(key: &Document) -> bool {
    key.len() == 1 && key.contains_key("_id")
}

pub(super) async fn shard_keys(filter: &NamespaceFilter, source: &Probe) -> Check {
    let name = named("shard keys", Side::Source);
    let router = match source.usable() {
        Ok(c) => c,
        Err(reason) => return Check::not_run(name, &reason),
    };
    let collections = match sharded_collections(router).await {
        Ok(c) => c,
        Err(e) => {
            return Check::fail(
                name,
                format!(
                    "cannot read the source's sharded collections: {}",
                    describe(&e)
                ),
                "grant the source user clusterMonitor (read on the config database)",
            )
        }
    };
    let found: Vec<String> = collections
        .iter()
        .filter(|c| in_scope(filter, c.get_str("_id").unwrap_or_default()))
        .filter_map(|c| {
            let key = c.get_document("key").ok()?;
            (!keyed_on_id(key)).then(|| format!("{} (key {key})", c.get_str("_id").unwrap_or("?")))
        })
        .collect();
    if found.is_empty() {
        return Check::pass(
            name,
            "every migrated sharded collection is sharded on _id, which is unique across shards",
        );
    }
    Check::warn(
        name,
        format!(
            "sharded on a key other than _id: {}; a sharded cluster keeps _id unique per shard only, but the replica set destination needs it unique across shards: the copy stops at the first duplicate _id and names it",
            found.join("; ")
        ),
        Some("make sure the applications never give two documents of these collections the same _id (an ObjectId default does), or leave them out with [filter] exclude_namespaces".into()),
    )
}

pub(super) async fn collations(
    filter: &NamespaceFilter,
    source: &Probe,
    source_sharded: bool,
    destination_sharded: bool,
) -> Check {
    let name = named("default collations", Side::Source);
    let cluster = match source.usable() {
        Ok(c) => c,
        Err(reason) => return Check::not_run(name, &reason),
    };
    let found = async {
        let mut found = Vec::new();
        for namespace in crate::cluster::namespaces::in_scope(cluster, filter).await? {
            let locale = namespace
                .options
                .get_document("collation")
                .and_then(|c| c.get_str("locale"));
            if let Ok(locale) = locale {
                if locale != "simple" {
                    found.push((namespace.full_name(), locale.to_string()));
                }
            }
        }
        Ok::<_, ClusterError>(found)
    };
    let found =
        match found.await {
            Ok(f) => f,
            Err(e) => return Check::fail(
                name,
                format!("cannot list the source's collections: {}", describe(&e)),
                "grant the source user listCollections on every database (readAnyDatabase has it)",
            ),
        };
    if found.is_empty() {
        return Check::pass(
            name,
            "no migrated collection has a non-simple default collation",
        );
    }
    let listed = found
        .iter()
        .map(|(ns, locale)| format!("{ns} ({locale})"))
        .collect::<Vec<_>>()
        .join(", ");
    if !destination_sharded {
        return Check::pass(
            name,
            format!(
                "non-simple default collation on {listed}; they keep it on the replica set destination"
            ),
        );
    }
    // From a sharded source, only its sharded collections are sharded on the destination.
    let (affected, unsharded) = if source_sharded {
        let sharded: BTreeSet<String> = match sharded_collections(cluster).await {
            Ok(c) => c
                .iter()
                .filter_map(|c| c.get_str("_id").ok().map(String::from))
                .collect(),
            Err(e) => {
                return Check::fail(
                    name,
                    format!(
                        "cannot read the source's sharded collections: {}",
                        describe(&e)
                    ),
                    "grant the source user clusterMonitor (read on the config database)",
                )
            }
        };
        found.into_iter().partition(|(ns, _)| sharded.contains(ns))
    } else {
        (found, Vec::new())
    };
    let list = |v: &[(String, String)]| {
        v.iter()
            .map(|(ns, locale)| format!("{ns} ({locale})"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let unsharded_note = if unsharded.is_empty() {
        String::new()
    } else {
        format!("; unsharded, they keep it: {}", list(&unsharded))
    };
    if affected.is_empty() {
        return Check::pass(
            name,
            format!("no sharded collection has a non-simple default collation{unsharded_note}"),
        );
    }
    let how = if source_sharded {
        "they are sharded on the destination with the simple collation, as on the source, and keep their default collation"
    } else {
        "a collection sharded on the destination must be sharded with the simple collation and needs a shard key index with the simple collation"
    };
    Check::warn(
        name,
        format!(
            "non-simple default collation on {}: {how}{unsharded_note}",
            list(&affected)
        ),
        Some("queries that target one shard by its key must use the simple collation; check the applications' queries on these collections".into()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_missing_and_differing_indexes() {
        let stat = |shard: &str, name: &str, spec: Document| {
            doc! {"shard": shard, "name": name, "spec": spec}
        };
        let stats = vec![
            stat(
                "sh0",
                "_id_",
                doc! {"v": 2, "key": {"_id": 1}, "name": "_id_"},
            ),
            stat(
                "sh1",
                "_id_",
                doc! {"key": {"_id": 1}, "name": "_id_", "v": 1},
            ),
            stat("sh0", "a_1", doc! {"v": 2, "key": {"a": 1}, "name": "a_1"}),
            stat("sh0", "b_1", doc! {"v": 2, "key": {"b": 1}, "name": "b_1"}),
            stat(
                "sh1",
                "b_1",
                doc! {"v": 2, "key": {"b": 1}, "name": "b_1", "unique": true},
            ),
        ];
        let found = index_differences("db.c", &stats);
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(found[0], "db.c: index a_1 is missing on sh1");
        assert!(found[1].starts_with("db.c: index b_1 differs between shards"));
        assert!(keyed_on_id(&doc! {"_id": "hashed"}));
        assert!(!keyed_on_id(&doc! {"_id": 1, "a": 1}));
    }
}
