//! A `shardCollection` event from the source during sync: the collection is sharded the
//! same way on a sharded destination; a replica-set destination has nothing to shard.

use bson::Document;

use super::ApplyError;
use crate::actors::copier::destination::{self, ShardingError};
use crate::actors::SharedEngine;

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
        .map_err(|e| match e {
            ShardingError::Cluster(e) => ApplyError::Cluster(e),
            ShardingError::Refused(message) => ApplyError::Refused(message),
        })
}
