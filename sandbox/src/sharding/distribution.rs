//! `$shardedDataDistribution` on the router: per sharded collection and shard, the
//! documents the shard owns and the orphans it still holds.

use bson::{doc, Bson, Document};

use crate::error::{codes, CmdResult, CommandError};

use super::{catalog, migration, Router};

/// Whether an `aggregate` starts with `$shardedDataDistribution`.
pub fn is_distribution(cmd: &Document) -> bool {
    cmd.get_array("pipeline")
        .ok()
        .and_then(|p| p.first())
        .and_then(|s| s.as_document())
        .is_some_and(|s| s.contains_key("$shardedDataDistribution"))
}

/// `aggregate: 1` on `admin` with `[{$shardedDataDistribution: {}}, ...]`: one document
/// per sharded collection, `{ns, shards: [{shardName, numOrphanedDocs,
/// numOwnedDocuments, ownedSizeBytes, orphanedSizeBytes}]}`; later stages run on them.
pub fn aggregate(router: &Router, db: &str, cmd: &Document) -> CmdResult<crate::wire::Reply> {
    if db != "admin"
        || !matches!(
            cmd.get("aggregate"),
            Some(Bson::Int32(1) | Bson::Int64(1) | Bson::Double(_))
        )
    {
        return Err(CommandError::new(
            codes::INVALID_NAMESPACE,
            "$shardedDataDistribution must be run against the 'admin' database with {aggregate: 1}",
        ));
    }
    let pipeline: Vec<Document> = cmd
        .get_array("pipeline")
        .map_err(|_| CommandError::type_mismatch("'pipeline' must be an array"))?
        .iter()
        .filter_map(|s| s.as_document().cloned())
        .collect();
    let (collections, chunks) = {
        let config = router.config.storage.lock();
        let collections = catalog::collections(&config);
        let chunks: Vec<_> = collections
            .iter()
            .map(|c| catalog::chunks(&config, &c.uuid))
            .collect();
        (collections, chunks)
    };
    let shards = router.shard_list();
    let mut out = Vec::new();
    for (entry, chunks) in collections.iter().zip(&chunks) {
        let mut per_shard = Vec::new();
        for shard in &shards {
            let storage = shard.server.storage.lock();
            let (owned, owned_bytes, orphans, orphan_bytes) =
                migration::ownership_counts(&storage, entry, chunks, &shard.name);
            let holds_chunks = chunks.iter().any(|c| c.shard == shard.name);
            if owned + orphans == 0 && !holds_chunks {
                continue;
            }
            per_shard.push(Bson::Document(doc! {
                "shardName": &shard.name,
                "numOrphanedDocs": orphans,
                "numOwnedDocuments": owned,
                "ownedSizeBytes": owned_bytes,
                "orphanedSizeBytes": orphan_bytes,
            }));
        }
        out.push(doc! {"ns": &entry.ns, "shards": per_shard});
    }
    let out = if pipeline.len() > 1 {
        crate::query::aggregate::run_pipeline(out, &pipeline[1..])?
    } else {
        out
    };
    let mut batch = crate::cursor::EncodedBatch::default();
    for d in &out {
        batch.push(d)?;
    }
    Ok(crate::wire::Reply {
        cursor: Some(crate::cursor::CursorReply {
            first: true,
            batch,
            post_batch_resume_token: None,
            id: 0,
            ns: "admin.$cmd.aggregate".into(),
            at_cluster_time: None,
        }),
        fields: Document::new(),
    })
}
