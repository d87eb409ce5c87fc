//! `sharding entries`: the `[sharding]` entries (and the shard keys a sharded source
//! brings) fit both clusters. An entry must name a collection that exists on the source,
//! the key's index must exist there when `create_supporting_indexes = false`, the source
//! may have no other unique index (a sharded collection can only enforce uniqueness on a
//! key that starts with its shard key), the supporting index Ferry creates must fit under
//! the 64 indexes a collection may have, and the destination must not hold the collection
//! sharded differently.

use bson::Document;

use super::{describe, Check, Probe};
use crate::actors::copier::destination::has_unique_index_on;
use crate::cluster::namespaces::{self, Namespace, NamespaceKind};
use crate::cluster::sharding::{self, is_prefix, same_key};
use crate::cluster::{Cluster, ClusterError};
use crate::config::Config;

const NAME: &str = "sharding entries";
/// Most indexes a collection may have, `_id` included.
const MAX_INDEXES: usize = 64;

/// The check, as one report line.
/// When `resuming`, an entry whose collection is gone from the source is no problem: it
/// was dropped or renamed during the run, the change stream carries that, and a
/// collection created again under the name is sharded per its entry.
pub(super) async fn check(
    config: &Config,
    source: &Probe,
    destination: &Probe,
    resuming: bool,
) -> Check {
    let entries = &config.sharding.resolved;
    let destination_sharded = destination
        .topology
        .as_ref()
        .is_some_and(|t| t.is_sharded());
    let source_sharded = source.topology.as_ref().is_some_and(|t| t.is_sharded());
    if !destination_sharded {
        return if entries.is_empty() {
            Check::pass(NAME, "none needed: the destination is not sharded")
        } else {
            Check::warn(
                NAME,
                format!(
                    "{} [sharding] entries, but the destination is not a sharded cluster: they are not used",
                    entries.len()
                ),
                Some("remove [sharding] or point [destination] uri at the destination's mongos".into()),
            )
        };
    }
    let (src, dst) = match (source.usable(), destination.usable()) {
        (Ok(s), Ok(d)) => (s, d),
        (Err(reason), _) | (_, Err(reason)) => return Check::not_run(NAME, &reason),
    };
    match problems(config, src, dst, source_sharded, resuming).await {
        Ok(found) if found.is_empty() => Check::pass(
            NAME,
            if entries.is_empty() && !source_sharded {
                "no [sharding] entries: every collection stays unsharded on its database's primary shard".to_string()
            } else {
                format!(
                    "{} entries fit the source and the destination",
                    entries.len()
                )
            },
        ),
        Ok(found) => Check::fail(
            NAME,
            found.join("; "),
            "fix the [sharding] entries (or the collections) named above, then validate again",
        ),
        Err(e) => Check::fail(
            NAME,
            format!(
                "cannot read the collections, indexes or sharding catalog: {}",
                describe(&e)
            ),
            "grant the users read access to every migrated database and to the config database (clusterMonitor on a sharded cluster)",
        ),
    }
}

/// Every problem found, one sentence each.
async fn problems(
    config: &Config,
    source: &Cluster,
    destination: &Cluster,
    source_sharded: bool,
    resuming: bool,
) -> Result<Vec<String>, ClusterError> {
    let filter = config.namespace_filter().unwrap_or_default();
    let in_scope = namespaces::in_scope(source, &filter).await?;
    let on_source = if source_sharded {
        sharding::sharded_collections(source).await?
    } else {
        Vec::new()
    };
    let mut found = Vec::new();
    for entry in &config.sharding.resolved {
        let ns = entry.namespace();
        let key = entry.key.to_document();
        let Some(namespace) = in_scope
            .iter()
            .find(|n| n.db == entry.database && n.coll == entry.collection)
        else {
            if !resuming {
                found.push(format!(
                    "{ns} is named in [sharding] but is not a collection on the source; check the database and collection names"
                ));
            }
            continue;
        };
        if namespace.kind != NamespaceKind::Collection {
            found.push(format!(
                "{ns} is a {} on the source, which cannot be sharded; remove its [sharding] entry",
                kind_name(namespace)
            ));
            continue;
        }
        if let Some(sharded) = on_source.iter().find(|c| c.ns == ns) {
            if !same_key(&sharded.key, &key) {
                found.push(format!(
                    "{ns} is sharded on the source with key {}, but its [sharding] entry says {key}: a migration keeps the source's key; remove the entry",
                    sharded.key
                ));
            }
            continue;
        }
        let indexes = source
            .index_specs(&entry.database, &entry.collection)
            .await?;
        found.extend(index_problems(config, &ns, &key, &indexes));
        let unique = !entry.key.is_hashed() && has_unique_index_on(&indexes, &key);
        found.extend(destination_problem(destination, &ns, &key, unique).await?);
    }
    for sharded in &on_source {
        let Some((db, coll)) = sharded.ns.split_once('.') else {
            continue;
        };
        if !in_scope.iter().any(|n| n.db == db && n.coll == coll) {
            continue;
        }
        found.extend(
            destination_problem(destination, &sharded.ns, &sharded.key, sharded.unique).await?,
        );
    }
    Ok(found)
}

fn kind_name(namespace: &Namespace) -> &'static str {
    match namespace.kind {
        NamespaceKind::View => "view",
        NamespaceKind::TimeSeries => "time-series collection",
        NamespaceKind::Collection => "collection",
    }
}

/// The source's indexes against an entry's key.
fn index_problems(config: &Config, ns: &str, key: &Document, indexes: &[Document]) -> Vec<String> {
    let mut found = Vec::new();
    let key_of = |i: &Document| i.get_document("key").cloned().unwrap_or_default();
    for index in indexes {
        let name = index.get_str("name").unwrap_or_default();
        if name != "_id_"
            && index.get_bool("unique").unwrap_or(false)
            && !is_prefix(key, &key_of(index))
        {
            found.push(format!(
                "{ns} has the unique index {name} on {}, which does not start with the shard key {key}: a sharded collection cannot enforce it; shard on a key that prefixes it, or drop the uniqueness",
                key_of(index)
            ));
        }
    }
    let supported = indexes
        .iter()
        .any(|i| is_prefix(key, &key_of(i)) && sharding::has_simple_collation(i));
    if !supported && config.sharding.create_supporting_indexes && indexes.len() >= MAX_INDEXES {
        found.push(format!(
            "{ns} has {} indexes on the source, the most a collection may have, and none starts with the shard key {key} with the simple collation: the supporting index Ferry would create is one too many (the copy would fail with CannotCreateIndex); drop an index on the source, or shard on a key an existing index starts with",
            indexes.len()
        ));
    }
    if !supported && !config.sharding.create_supporting_indexes {
        let (db, coll) = ns.split_once('.').unwrap_or((ns, ""));
        // On a collection with a default collation (its indexes carry it), the default
        // name is usually taken by an index on the key with that collation.
        let collated = indexes.iter().any(|i| !sharding::has_simple_collation(i));
        let name = sharding::supporting_index_name(key, collated);
        found.push(format!(
            "{ns} has no index starting with the shard key {key} with the simple collation on the source, and [sharding] create_supporting_indexes = false: create it (db.getSiblingDB(\"{db}\").{coll}.createIndex({key}, {{name: \"{name}\", collation: {{locale: \"simple\"}}}})) or set create_supporting_indexes = true"
        ));
    }
    found
}

/// A destination collection already sharded another way.
async fn destination_problem(
    destination: &Cluster,
    ns: &str,
    key: &Document,
    unique: bool,
) -> Result<Option<String>, ClusterError> {
    let Some(existing) = sharding::sharded_collection(destination, ns).await? else {
        return Ok(None);
    };
    if same_key(&existing.key, key) && existing.unique == unique {
        return Ok(None);
    }
    Ok(Some(format!(
        "{ns} is already sharded on the destination with key {} (unique: {}), but the migration shards it with key {key} (unique: {unique}); drop it on the destination or set clear_destination",
        existing.key, existing.unique
    )))
}
