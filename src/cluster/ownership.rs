//! Who owns what on a sharded deployment, read from its `config` database through the
//! router: a collection's shard key (`config.collections`), its chunks and the shard
//! owning each (`config.chunks`, keyed by the collection's `uuid` since 5.0), and the
//! primary shard of a database (`config.databases`), which holds its unsharded
//! collections.

use bson::{doc, Binary, Bson, Document};

use super::{Cluster, ClusterError};

/// A sharded collection as `config.collections` describes it.
#[derive(Clone, Debug, PartialEq)]
pub struct ShardedCollection {
    pub uuid: Option<Binary>,
    /// The shard key pattern (`{region: 1, _id: 1}`, `{h: "hashed"}`).
    pub key: Document,
    pub unique: bool,
}

/// One chunk: the shard-key values in `[min, max)` belong to `shard`.
#[derive(Clone, Debug, PartialEq)]
pub struct Chunk {
    pub min: Document,
    pub max: Document,
    pub shard: String,
}

/// The shard key of `db.coll` if it is sharded (a dropped entry counts as unsharded).
pub async fn sharded_collection(
    cluster: &Cluster,
    db: &str,
    coll: &str,
) -> Result<Option<ShardedCollection>, ClusterError> {
    let ns = format!("{db}.{coll}");
    let found = cluster
        .cursor(
            "config",
            doc! {"find": "collections", "filter": {"_id": &ns}, "limit": 1},
        )
        .await?;
    Ok(found
        .into_iter()
        .find(|d| !d.get_bool("dropped").unwrap_or(false))
        .and_then(|d| {
            Some(ShardedCollection {
                uuid: match d.get("uuid") {
                    Some(Bson::Binary(b)) => Some(b.clone()),
                    _ => None,
                },
                key: d.get_document("key").ok()?.clone(),
                unique: d.get_bool("unique").unwrap_or(false),
            })
        }))
}

/// The chunks of the sharded collection with this `uuid`, in shard-key order.
pub async fn chunks(cluster: &Cluster, uuid: &Binary) -> Result<Vec<Chunk>, ClusterError> {
    let found = cluster
        .cursor(
            "config",
            doc! {"find": "chunks", "filter": {"uuid": uuid.clone()}, "sort": {"min": 1}},
        )
        .await?;
    Ok(found
        .into_iter()
        .filter_map(|d| {
            Some(Chunk {
                min: d.get_document("min").ok()?.clone(),
                max: d.get_document("max").ok()?.clone(),
                shard: d.get_str("shard").ok()?.to_string(),
            })
        })
        .collect())
}

/// The primary shard of `db` (`config.databases.primary`), which holds its unsharded
/// collections; `None` when the database has no entry.
pub async fn primary_shard(cluster: &Cluster, db: &str) -> Result<Option<String>, ClusterError> {
    let found = cluster
        .cursor(
            "config",
            doc! {"find": "databases", "filter": {"_id": db}, "limit": 1},
        )
        .await?;
    Ok(found
        .first()
        .and_then(|d| d.get_str("primary").ok())
        .map(String::from))
}

/// How many documents with each of these `_id`s the deployment holds, for the `_id`s it
/// holds more than once. Counted by aggregation through the router, whose ownership
/// filter leaves orphans out: on a collection sharded on another key than `_id`, two
/// shards may each hold a different document with one `_id`.
pub async fn repeated_ids(
    cluster: &Cluster,
    db: &str,
    coll: &str,
    ids: Vec<Bson>,
) -> Result<Vec<(Bson, u64)>, ClusterError> {
    let found = cluster
        .cursor(
            db,
            doc! {
                "aggregate": coll,
                "pipeline": [
                    {"$match": {"_id": {"$in": ids}}},
                    {"$group": {"_id": "$_id", "n": {"$sum": 1}}},
                    {"$match": {"n": {"$gt": 1}}},
                ],
                "cursor": {},
            },
        )
        .await?;
    Ok(found
        .into_iter()
        .filter_map(|d| {
            let n = match d.get("n") {
                Some(Bson::Int32(n)) => *n as u64,
                Some(Bson::Int64(n)) => *n as u64,
                _ => return None,
            };
            Some((d.get("_id")?.clone(), n))
        })
        .collect())
}
