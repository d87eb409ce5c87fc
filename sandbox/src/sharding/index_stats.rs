//! `$indexStats` through the router: one document per index and per shard that holds the
//! collection's data (the shards owning its chunks, or the database's primary shard for
//! an unsharded collection), each naming its `shard`, so a client can see indexes that
//! differ between shards without connecting to them. Access counters are not tracked by
//! the sandbox: `accesses.ops` is always 0.

use bson::{doc, Bson, DateTime, Document};

use crate::error::{codes, CmdResult, CommandError};
use crate::storage::split_ns;

use super::router::home_shard;
use super::{catalog, Router, Shard};

/// Whether an `aggregate` starts with `$indexStats`.
pub fn is_index_stats(cmd: &Document) -> bool {
    cmd.get_array("pipeline")
        .ok()
        .and_then(|p| p.first())
        .and_then(|s| s.as_document())
        .is_some_and(|s| s.contains_key("$indexStats"))
}

/// `aggregate: <coll>` with `[{$indexStats: {}}, ...]`: `{name, key, host, accesses: {ops,
/// since}, shard, spec}` per index and shard; later stages run on them.
pub fn aggregate(router: &Router, db: &str, cmd: &Document) -> CmdResult<crate::wire::Reply> {
    let coll = match cmd.get("aggregate") {
        Some(Bson::String(c)) => c.clone(),
        _ => {
            return Err(CommandError::new(
                codes::INVALID_NAMESPACE,
                "$indexStats must be run against a collection: {aggregate: \"<collection>\", pipeline: [{$indexStats: {}}]}",
            ))
        }
    };
    let pipeline: Vec<Document> = cmd
        .get_array("pipeline")
        .map_err(|_| CommandError::type_mismatch("'pipeline' must be an array"))?
        .iter()
        .filter_map(|s| s.as_document().cloned())
        .collect();
    let ns = format!("{db}.{coll}");
    let owners: Vec<Shard> = {
        let config = router.config.storage.lock();
        match catalog::collection(&config, &ns) {
            Some(entry) => {
                let chunks = catalog::chunks(&config, &entry.uuid);
                router
                    .shard_list()
                    .into_iter()
                    .filter(|s| chunks.iter().any(|c| c.shard == s.name))
                    .collect()
            }
            None => Vec::new(),
        }
    };
    let owners = if owners.is_empty() {
        home_shard(router, split_ns(&ns).0, false)?
            .into_iter()
            .collect()
    } else {
        owners
    };
    let since = DateTime::now();
    let mut out = Vec::new();
    for shard in &owners {
        let storage = shard.server.storage.lock();
        let Some(c) = storage.collection(db, &coll) else {
            continue;
        };
        for index in &c.indexes {
            let spec = &index.spec;
            out.push(doc! {
                "name": spec.get_str("name").unwrap_or_default(),
                "key": spec.get_document("key").cloned().unwrap_or_default(),
                "host": &shard.server.address,
                "accesses": {"ops": 0i64, "since": since},
                "shard": &shard.name,
                "spec": spec.clone(),
            });
        }
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
            ns,
            at_cluster_time: None,
        }),
        fields: Document::new(),
    })
}
