//! The sharding catalog and its commands, through a cluster's router: which collections
//! are sharded and on what key (`config.collections`), their chunks (`config.chunks`,
//! keyed by collection uuid since 5.0), and `enableSharding`, `shardCollection`, `split`
//! and `moveRange`.

use bson::{doc, Bson, Document};

use super::{Cluster, ClusterError};

/// `AlreadyInitialized`: `shardCollection` on a collection sharded with other options.
pub const ALREADY_INITIALIZED: i32 = 23;

/// A sharded collection's catalog entry.
#[derive(Clone, Debug, PartialEq)]
pub struct ShardedCollection {
    /// `db.coll`.
    pub ns: String,
    pub uuid: Option<bson::Binary>,
    /// The key pattern, fields in order (`1` or `"hashed"`).
    pub key: Document,
    pub unique: bool,
}

impl ShardedCollection {
    fn from_document(d: &Document) -> Option<ShardedCollection> {
        if d.get_bool("dropped").unwrap_or(false) {
            return None;
        }
        Some(ShardedCollection {
            ns: d.get_str("_id").ok()?.to_string(),
            uuid: match d.get("uuid") {
                Some(Bson::Binary(b)) => Some(b.clone()),
                _ => None,
            },
            key: d.get_document("key").ok()?.clone(),
            unique: d.get_bool("unique").unwrap_or(false),
        })
    }

    /// Whether the key's first field is hashed (the server pre-splits such a collection
    /// over every shard when it is sharded empty).
    pub fn hashed_prefix(&self) -> bool {
        is_hashed_prefix(&self.key)
    }
}

/// Whether a key pattern starts with a hashed field.
pub fn is_hashed_prefix(key: &Document) -> bool {
    key.iter().next().is_some_and(|(_, v)| is_hashed(v))
}

/// Whether a key pattern value means hashed.
pub fn is_hashed(v: &Bson) -> bool {
    v.as_str() == Some("hashed")
}

/// Whether two key patterns are the same key (1, 1.0 and Int64(1) are one direction).
pub fn same_key(a: &Document, b: &Document) -> bool {
    a.len() == b.len()
        && a.iter().zip(b.iter()).all(|((fa, va), (fb, vb))| {
            fa == fb
                && match (va.as_str(), vb.as_str()) {
                    (Some(x), Some(y)) => x == y,
                    (None, None) => as_number(va) == as_number(vb),
                    _ => false,
                }
        })
}

/// Whether `prefix`'s fields (and kinds) begin `key`: an index on `key` supports a shard
/// key `prefix`.
pub fn is_prefix(prefix: &Document, key: &Document) -> bool {
    prefix.len() <= key.len()
        && prefix.iter().zip(key.iter()).all(|((fa, va), (fb, vb))| {
            fa == fb
                && match (va.as_str(), vb.as_str()) {
                    (Some(x), Some(y)) => x == y,
                    (None, None) => as_number(va) == as_number(vb),
                    _ => false,
                }
        })
}

fn as_number(v: &Bson) -> Option<f64> {
    match v {
        Bson::Int32(i) => Some(*i as f64),
        Bson::Int64(i) => Some(*i as f64),
        Bson::Double(d) => Some(*d),
        _ => None,
    }
}

/// The name the server gives an index on `key` when none is given (`a_1_b_hashed`).
pub fn default_index_name(key: &Document) -> String {
    key.iter()
        .map(|(field, v)| match v {
            Bson::String(s) => format!("{field}_{s}"),
            Bson::Int32(i) => format!("{field}_{i}"),
            Bson::Int64(i) => format!("{field}_{i}"),
            Bson::Double(d) => format!("{field}_{d}"),
            other => format!("{field}_{other}"),
        })
        .collect::<Vec<_>>()
        .join("_")
}

/// The name of a supporting index Ferry creates: the server's default, or, on a collection
/// with a non-simple default collation, that name with `_simple` (the default name is
/// usually taken there by an index on the same key with the collection's collation).
pub fn supporting_index_name(key: &Document, collated: bool) -> String {
    let name = default_index_name(key);
    if collated {
        format!("{name}_simple")
    } else {
        name
    }
}

/// One chunk: shard keys in `[min, max)` live on `shard`.
#[derive(Clone, Debug, PartialEq)]
pub struct ChunkRange {
    pub min: Document,
    pub max: Document,
    pub shard: String,
}

/// Every sharded collection the router's catalog lists (`config.collections`).
pub async fn sharded_collections(
    cluster: &Cluster,
) -> Result<Vec<ShardedCollection>, ClusterError> {
    let docs = cluster
        .cursor(
            "config",
            doc! {"find": "collections", "filter": {}, "batchSize": 10_000},
        )
        .await?;
    Ok(docs
        .iter()
        .filter_map(ShardedCollection::from_document)
        .collect())
}

/// The catalog entry of `ns`, if it is sharded.
pub async fn sharded_collection(
    cluster: &Cluster,
    ns: &str,
) -> Result<Option<ShardedCollection>, ClusterError> {
    let docs = cluster
        .cursor(
            "config",
            doc! {"find": "collections", "filter": {"_id": ns}, "limit": 1},
        )
        .await?;
    Ok(docs.iter().find_map(ShardedCollection::from_document))
}

/// The chunks of the collection with `uuid`, in key order.
pub async fn chunks(
    cluster: &Cluster,
    uuid: &bson::Binary,
) -> Result<Vec<ChunkRange>, ClusterError> {
    let docs = cluster
        .cursor(
            "config",
            doc! {"find": "chunks", "filter": {"uuid": uuid.clone()}, "sort": {"min": 1}, "batchSize": 10_000},
        )
        .await?;
    Ok(docs
        .iter()
        .filter_map(|d| {
            Some(ChunkRange {
                min: d.get_document("min").ok()?.clone(),
                max: d.get_document("max").ok()?.clone(),
                shard: d.get_str("shard").ok()?.to_string(),
            })
        })
        .collect())
}

/// `enableSharding` for `db` (a no-op when it is already enabled; since 6.0 it only
/// makes sure the database exists with a primary shard).
pub async fn enable_sharding(cluster: &Cluster, db: &str) -> Result<(), ClusterError> {
    cluster.run("admin", doc! {"enableSharding": db}).await?;
    Ok(())
}

/// `shardCollection`. Sharding a collection again with the same key and `unique` is a
/// no-op on the server; with other options it fails with [`ALREADY_INITIALIZED`].
///
/// Always with the simple collation: shard keys compare with it, and the server refuses
/// to shard a collection whose default collation is not simple unless it is named.
pub async fn shard_collection(
    cluster: &Cluster,
    ns: &str,
    key: &Document,
    unique: bool,
) -> Result<(), ClusterError> {
    cluster
        .run(
            "admin",
            doc! {
                "shardCollection": ns,
                "key": key.clone(),
                "unique": unique,
                "collation": {"locale": "simple"},
            },
        )
        .await?;
    Ok(())
}

/// A time that the router's cluster-wide change stream reaches at once, after every
/// change made before this call: a no-op through the router (one on every shard; its
/// `operationTime` is the latest of them), then a second one, which every shard logs
/// after that time (the router's cluster time reaches each shard with the command and
/// orders the shard's next entry after it).
///
/// A router's stream passes a time only once every shard has logged something after
/// it, and an idle shard logs nothing until its periodic no-op (10 s on a real server):
/// a wait for the stream to reach a time read any other way waits for that.
pub async fn stream_time(
    cluster: &Cluster,
    purpose: &str,
) -> Result<bson::Timestamp, ClusterError> {
    let time = cluster.append_noop(purpose).await?;
    cluster
        .append_noop(&format!("{purpose}: every shard past it"))
        .await?;
    Ok(time)
}

/// Splits the chunk holding `middle` (a full shard key) at `middle`.
pub async fn split_at(cluster: &Cluster, ns: &str, middle: &Document) -> Result<(), ClusterError> {
    cluster
        .run("admin", doc! {"split": ns, "middle": middle.clone()})
        .await?;
    Ok(())
}

/// Moves the chunk `[min, max)` to shard `to` (`moveRange`, 6.0+), without waiting for
/// the donor's range deletion.
pub async fn move_range(
    cluster: &Cluster,
    ns: &str,
    min: &Document,
    max: &Document,
    to: &str,
) -> Result<(), ClusterError> {
    cluster
        .run(
            "admin",
            doc! {"moveRange": ns, "min": min.clone(), "max": max.clone(), "toShard": to},
        )
        .await?;
    Ok(())
}

/// Whether `db.coll` holds no document (read through the router, so orphans are not
/// seen).
pub async fn is_empty(cluster: &Cluster, db: &str, coll: &str) -> Result<bool, ClusterError> {
    let docs = cluster
        .cursor(
            db,
            doc! {"find": coll, "filter": {}, "projection": {"_id": 1}, "limit": 1},
        )
        .await?;
    Ok(docs.is_empty())
}

/// Up to `size` shard keys of `db.coll` sampled at random, as full keys of `key` in key
/// order (a missing field is null, as the server reads it; fields after a hashed one are
/// MinKey, so each key is a valid split point).
pub async fn sampled_keys(
    cluster: &Cluster,
    db: &str,
    coll: &str,
    key: &Document,
    size: i64,
) -> Result<Vec<Document>, ClusterError> {
    let fields: Vec<&String> = key.keys().collect();
    let mut project = doc! {"_id": 0};
    let mut sort = Document::new();
    for (i, field) in fields.iter().enumerate() {
        project.insert(format!("k{i}"), format!("${field}"));
        sort.insert(format!("k{i}"), 1);
    }
    let sample = cluster
        .cursor(
            db,
            doc! {"aggregate": coll, "pipeline": [{"$sample": {"size": size}}, {"$project": project}, {"$sort": sort}], "cursor": {}},
        )
        .await?;
    Ok(sample
        .into_iter()
        .map(|d| {
            let mut out = Document::new();
            let mut after_hashed = false;
            for (i, (field, kind)) in key.iter().enumerate() {
                let value = if after_hashed || is_hashed(kind) {
                    Bson::MinKey
                } else {
                    d.get(format!("k{i}")).cloned().unwrap_or(Bson::Null)
                };
                after_hashed |= is_hashed(kind);
                out.insert(field.clone(), value);
            }
            out
        })
        .collect())
}

/// Makes the index `name` of `db.coll` unique (`collMod` with `prepareUnique`, then
/// `unique`), as needed before sharding with `unique: true`.
pub async fn make_index_unique(
    cluster: &Cluster,
    db: &str,
    coll: &str,
    name: &str,
) -> Result<(), ClusterError> {
    cluster
        .run(
            db,
            doc! {"collMod": coll, "index": {"name": name, "prepareUnique": true}},
        )
        .await?;
    cluster
        .run(
            db,
            doc! {"collMod": coll, "index": {"name": name, "unique": true}},
        )
        .await?;
    Ok(())
}

/// Creates one index on `db.coll`.
pub async fn create_index(
    cluster: &Cluster,
    db: &str,
    coll: &str,
    spec: Document,
) -> Result<(), ClusterError> {
    cluster
        .run(db, doc! {"createIndexes": coll, "indexes": [spec]})
        .await?;
    Ok(())
}

/// Whether an index (as `listIndexes` describes it), or a collection (its `options` in
/// `listCollections`), compares with the simple collation, as an index supporting a
/// shard key must.
pub fn has_simple_collation(index: &Document) -> bool {
    match index.get_document("collation") {
        Err(_) => true,
        Ok(c) => c.get_str("locale") == Ok("simple"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_index_names_follow_the_server() {
        assert_eq!(
            default_index_name(&doc! {"location": 1, "region": "hashed"}),
            "location_1_region_hashed"
        );
    }

    #[test]
    fn keys_compare_by_field_order_and_kind() {
        assert!(same_key(
            &doc! {"a": 1, "b": 1.0},
            &doc! {"a": 1i64, "b": 1}
        ));
        assert!(!same_key(&doc! {"a": 1, "b": 1}, &doc! {"b": 1, "a": 1}));
        assert!(!same_key(&doc! {"a": "hashed"}, &doc! {"a": 1}));
        assert!(is_prefix(&doc! {"a": 1}, &doc! {"a": 1, "b": 1}));
        assert!(!is_prefix(&doc! {"b": 1}, &doc! {"a": 1, "b": 1}));
    }
}
