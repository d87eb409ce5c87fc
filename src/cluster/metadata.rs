//! A sharded deployment's routing metadata as the migration depends on it, read from the
//! `config` database through the router: which shard is each database's primary, which
//! shards exist (and whether one is draining), and each sharded collection's key. Two
//! snapshots compared name what changed in a way the change stream does not carry
//! (`movePrimary` and shard membership have no change event; a refined key's event is
//! 6.1+).

use std::collections::BTreeMap;

use bson::{doc, Binary, Bson, Document};
use serde::{Deserialize, Serialize};

use super::{Cluster, ClusterError};
use crate::config::NamespaceFilter;

/// One database's entry in `config.databases`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DatabaseEntry {
    pub primary: String,
    /// `version.uuid`: a database dropped and created again has a new one.
    pub uuid: Option<Binary>,
}

/// One sharded collection's entry in `config.collections`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CollectionEntry {
    /// The shard key's fields in order (a list, so dotted paths are never stored as
    /// field names).
    #[serde(with = "key_fields")]
    pub key: Document,
    /// A collection dropped and created again (or resharded) has a new one.
    pub uuid: Option<Binary>,
    /// `reshardingFields` is present: a `reshardCollection` is under way.
    pub resharding: bool,
}

/// The metadata of one moment. Stored (in `__ferry`) as lists of pairs: database and
/// collection names contain dots, which are not stored as field names.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ShardingMetadata {
    #[serde(with = "pairs")]
    pub databases: BTreeMap<String, DatabaseEntry>,
    /// Shard name -> draining.
    #[serde(with = "pairs")]
    pub shards: BTreeMap<String, bool>,
    #[serde(with = "pairs")]
    pub collections: BTreeMap<String, CollectionEntry>,
}

/// A map stored as a list of `[key, value]` pairs.
mod pairs {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<V: Serialize, S: Serializer>(
        map: &BTreeMap<String, V>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(map.iter())
    }

    pub fn deserialize<'de, V: Deserialize<'de>, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<String, V>, D::Error> {
        Ok(Vec::<(String, V)>::deserialize(d)?.into_iter().collect())
    }
}

/// A shard key stored as a list of `[field, direction]` pairs.
mod key_fields {
    use bson::{Bson, Document};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(key: &Document, s: S) -> Result<S::Ok, S::Error> {
        let fields: Vec<(&String, &Bson)> = key.iter().collect();
        fields.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Document, D::Error> {
        Ok(Vec::<(String, Bson)>::deserialize(d)?.into_iter().collect())
    }
}

fn binary(d: &Document, key: &str) -> Option<Binary> {
    match d.get(key) {
        Some(Bson::Binary(b)) => Some(b.clone()),
        _ => None,
    }
}

/// Reads the metadata through the router.
pub async fn read(cluster: &Cluster) -> Result<ShardingMetadata, ClusterError> {
    let mut metadata = ShardingMetadata::default();
    for d in cluster
        .cursor("config", doc! {"find": "databases", "filter": {}})
        .await?
    {
        let (Ok(name), Ok(primary)) = (d.get_str("_id"), d.get_str("primary")) else {
            continue;
        };
        let uuid = d
            .get_document("version")
            .ok()
            .and_then(|v| binary(v, "uuid"));
        metadata.databases.insert(
            name.to_string(),
            DatabaseEntry {
                primary: primary.to_string(),
                uuid,
            },
        );
    }
    for d in cluster
        .cursor("config", doc! {"find": "shards", "filter": {}})
        .await?
    {
        if let Ok(name) = d.get_str("_id") {
            metadata
                .shards
                .insert(name.to_string(), d.get_bool("draining").unwrap_or(false));
        }
    }
    for d in cluster
        .cursor("config", doc! {"find": "collections", "filter": {}})
        .await?
    {
        let (Ok(ns), Ok(key)) = (d.get_str("_id"), d.get_document("key")) else {
            continue;
        };
        metadata.collections.insert(
            ns.to_string(),
            CollectionEntry {
                key: key.clone(),
                uuid: binary(&d, "uuid"),
                resharding: d.contains_key("reshardingFields"),
            },
        );
    }
    Ok(metadata)
}

/// What changed between `before` and `after` that the migration cannot follow, for the
/// namespaces `filter` migrates, each said with what to do. Databases and collections
/// created or dropped are not listed: the change stream carries those.
pub fn unfollowable_changes(
    before: &ShardingMetadata,
    after: &ShardingMetadata,
    filter: &NamespaceFilter,
) -> Vec<String> {
    const START_OVER: &str = "the run stops here; once the change is done, start the migration over with destination.clear_destination = true and `ferry run` (resuming would leave the destination missing or keeping documents)";
    let mut changes = Vec::new();
    for (db, was) in &before.databases {
        if !filter.may_allow_database(db) || NamespaceFilter::is_never_migrated_db(db) {
            continue;
        }
        if let Some(now) = after.databases.get(db) {
            if now.uuid == was.uuid && now.primary != was.primary {
                changes.push(format!(
                    "the primary shard of database {db} moved from {} to {} (movePrimary) during the migration: its unsharded collections were moved without change events; {START_OVER}",
                    was.primary, now.primary
                ));
            }
        }
    }
    for name in after
        .shards
        .keys()
        .filter(|s| !before.shards.contains_key(*s))
    {
        changes.push(format!(
            "shard {name} was added to the source during the migration: chunks moving to it are not followed; {START_OVER}"
        ));
    }
    for (name, was_draining) in &before.shards {
        match after.shards.get(name) {
            None => changes.push(format!(
                "shard {name} was removed from the source during the migration; {START_OVER}"
            )),
            Some(true) if !was_draining => changes.push(format!(
                "shard {name} of the source started draining (removeShard) during the migration; {START_OVER}"
            )),
            _ => {}
        }
    }
    for (ns, was) in &before.collections {
        let Some((db, coll)) = ns.split_once('.') else {
            continue;
        };
        if !filter.allows(db, coll) {
            continue;
        }
        let Some(now) = after.collections.get(ns) else {
            continue;
        };
        if now.resharding && !was.resharding {
            changes.push(format!(
                "collection {ns} is being resharded (reshardCollection) during the migration; {START_OVER}"
            ));
        } else if now.uuid == was.uuid && now.key != was.key {
            changes.push(format!(
                "the shard key of {ns} changed from {} to {} (refineCollectionShardKey) during the migration; {START_OVER}",
                was.key, now.key
            ));
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uuid(n: u8) -> Option<Binary> {
        Some(Binary {
            subtype: bson::spec::BinarySubtype::Uuid,
            bytes: vec![n; 16],
        })
    }

    fn metadata(primary: &str, key: Document, shards: &[(&str, bool)]) -> ShardingMetadata {
        ShardingMetadata {
            databases: BTreeMap::from([(
                "shop".to_string(),
                DatabaseEntry {
                    primary: primary.into(),
                    uuid: uuid(1),
                },
            )]),
            shards: shards.iter().map(|(s, d)| (s.to_string(), *d)).collect(),
            collections: BTreeMap::from([(
                "shop.orders".to_string(),
                CollectionEntry {
                    key,
                    uuid: uuid(2),
                    resharding: false,
                },
            )]),
        }
    }

    #[test]
    fn move_primary_shard_changes_and_refined_keys_are_named() {
        let all = NamespaceFilter::allow_all();
        let shards = [("s0", false), ("s1", false)];
        let before = metadata("s0", doc! {"a": 1}, &shards);
        assert!(unfollowable_changes(&before, &before, &all).is_empty());
        let moved = metadata("s1", doc! {"a": 1}, &shards);
        let changes = unfollowable_changes(&before, &moved, &all);
        assert_eq!(changes.len(), 1);
        assert!(
            changes[0].contains("database shop moved from s0 to s1"),
            "{changes:?}"
        );
        let refined = metadata("s0", doc! {"a": 1, "b": 1}, &shards);
        let changes = unfollowable_changes(&before, &refined, &all);
        assert!(
            changes[0].contains("shard key of shop.orders"),
            "{changes:?}"
        );
        let grown = metadata(
            "s0",
            doc! {"a": 1},
            &[("s0", false), ("s1", false), ("s2", false)],
        );
        assert!(unfollowable_changes(&before, &grown, &all)[0].contains("shard s2 was added"));
        let draining = metadata("s0", doc! {"a": 1}, &[("s0", false), ("s1", true)]);
        assert!(unfollowable_changes(&before, &draining, &all)[0]
            .contains("s1 of the source started draining"));
    }

    #[test]
    fn a_snapshot_reads_back_from_its_stored_form() {
        let mut before = metadata("s0", doc! {"user.id": 1, "at": -1}, &[("s0", true)]);
        before.collections.insert(
            "shop.a.b".into(),
            CollectionEntry {
                key: doc! {"_id": "hashed"},
                uuid: None,
                resharding: true,
            },
        );
        let stored = bson::to_document(&before).expect("stored form");
        assert!(!stored.keys().any(|k| k.contains('.')));
        let back: ShardingMetadata = bson::from_document(stored).expect("read back");
        assert_eq!(back, before);
    }

    #[test]
    fn a_database_dropped_and_created_again_is_not_a_move() {
        let all = NamespaceFilter::allow_all();
        let before = metadata("s0", doc! {"a": 1}, &[("s0", false)]);
        let mut after = metadata("s1", doc! {"a": 1}, &[("s0", false)]);
        if let Some(db) = after.databases.get_mut("shop") {
            db.uuid = uuid(9);
        }
        assert!(unfollowable_changes(&before, &after, &all).is_empty());
    }
}
