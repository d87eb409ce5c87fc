//! `aggregate` ending in `$out` or `$merge` through the router.
//!
//! - From an unsharded collection into an unsharded one: the database's primary shard
//!   runs the whole command, as a replica set would (its `$out` temporary collection and
//!   rename included).
//! - `$out` into a sharded collection: refused as a real router refuses it (28769).
//! - Otherwise (a sharded source, or `$merge` into a sharded target): the router runs
//!   the pipeline up to the writing stage over the source's documents (a sharded
//!   source's targeted, owned documents; an unsharded one's on its primary shard), then
//!   each output document is written by the shard that owns it: the owning shard of its
//!   shard key for a sharded target, the target database's primary shard otherwise. The
//!   stage's own semantics (`on`, `whenMatched`, `whenNotMatched`, `$out`'s temporary
//!   collection) are the shard's, as on a replica set.

use std::collections::BTreeMap;
use std::sync::Arc;

use bson::{doc, Bson, Document};

use crate::commands::aggregate_write;
use crate::dispatch::{Connection, Ctx};
use crate::error::{CmdResult, CommandError};
use crate::server::Server;
use crate::wire::Reply;

use super::catalog::{self, CollectionEntry};
use super::forward::internal_connection;
use super::merge::owned_documents;
use super::router::home_shard;
use super::{Router, Shard};

/// Code 28769: `$out` to a sharded collection.
const OUT_TO_SHARDED: i32 = 28769;

/// Whether an `aggregate` ends with `$out` or `$merge`.
pub fn is_writing(cmd: &Document) -> bool {
    stages(cmd).is_some_and(|s| aggregate_write::writing_stage(&s).is_some())
}

fn stages(cmd: &Document) -> Option<Vec<Document>> {
    cmd.get_array("pipeline")
        .ok()
        .map(|p| p.iter().filter_map(Bson::as_document).cloned().collect())
}

pub async fn aggregate(
    server: &Arc<Server>,
    router: &Router,
    conn: &mut Connection,
    db: &str,
    cmd: Document,
) -> CmdResult<Reply> {
    let stages = stages(&cmd).unwrap_or_default();
    aggregate_write::check_placement(&stages)?;
    let Some(stage) = aggregate_write::writing_stage(&stages).cloned() else {
        return super::merge::read(server, router, conn, db, cmd, "aggregate").await;
    };
    let Some(Bson::String(coll)) = cmd.get("aggregate").cloned() else {
        return super::merge::read(server, router, conn, db, cmd, "aggregate").await;
    };
    let (target_db, target_coll) = target(db, &stage);
    let target_ns = format!("{target_db}.{target_coll}");
    let (source, target) = {
        let config = router.config.storage.lock();
        (
            catalog::collection(&config, &format!("{db}.{coll}")),
            catalog::collection(&config, &target_ns),
        )
    };
    if stage.contains_key("$out") && target.is_some() {
        return Err(CommandError::new(
            OUT_TO_SHARDED,
            format!("$out cannot write to {target_ns}: it is sharded; use $merge to write into a sharded collection"),
        ));
    }
    if source.is_none() && target.is_none() {
        return super::merge::read(server, router, conn, db, cmd, "aggregate").await;
    }
    let input = match &source {
        Some(entry) => {
            let view = owned_documents(router, entry, db, &coll, &cmd, "aggregate").await?;
            view.collection(db, &coll)
                .map(|c| c.docs.values().map(|d| (**d).clone()).collect())
                .unwrap_or_default()
        }
        None => match home_shard(router, db, false)? {
            Some(shard) => shard
                .server
                .storage
                .lock()
                .collection(db, &coll)
                .map(|c| c.docs.values().map(|d| (**d).clone()).collect())
                .unwrap_or_default(),
            None => Vec::new(),
        },
    };
    let output = crate::query::aggregate::run_pipeline(input, &stages[..stages.len() - 1])?;
    let parts = match &target {
        Some(entry) => by_owning_shard(router, entry, output)?,
        None => {
            let shard = home_shard(router, &target_db, true)?.ok_or_else(|| {
                CommandError::new(
                    crate::error::codes::ILLEGAL_OPERATION,
                    format!("{target_ns} cannot be written through the router: write admin and config collections on the config server"),
                )
            })?;
            vec![(shard, output)]
        }
    };
    for (shard, docs) in parts {
        write_on(&shard, conn, db, &cmd, &stage, docs)?;
    }
    Ok(Reply::from(doc! {
        "cursor": {"firstBatch": [], "id": 0i64, "ns": format!("{db}.{coll}")},
    }))
}

/// The target of a writing stage: `"coll"`, `{db, coll}` (`$out`), `{into: "coll" |
/// {db, coll}}` (`$merge`); the command's database by default. A malformed spec is the
/// shard's to refuse (the name given here then only places the write).
fn target(db: &str, stage: &Document) -> (String, String) {
    let spec = stage
        .get("$out")
        .or_else(|| stage.get("$merge"))
        .cloned()
        .unwrap_or(Bson::Null);
    let spec = match spec {
        Bson::Document(d) if d.contains_key("into") => d.get("into").cloned().unwrap_or(Bson::Null),
        other => other,
    };
    match spec {
        Bson::String(coll) => (db.to_string(), coll),
        Bson::Document(d) => (
            d.get_str("db").unwrap_or(db).to_string(),
            d.get_str("coll").unwrap_or_default().to_string(),
        ),
        _ => (db.to_string(), String::new()),
    }
}

/// Output documents grouped by the shard owning their shard key in the target.
fn by_owning_shard(
    router: &Router,
    entry: &CollectionEntry,
    docs: Vec<Document>,
) -> CmdResult<Vec<(Shard, Vec<Document>)>> {
    let chunks = catalog::chunks(&router.config.storage.lock(), &entry.uuid);
    let mut parts: BTreeMap<String, Vec<Document>> = BTreeMap::new();
    for d in docs {
        let key = entry.key.key_of(&d);
        let owner = catalog::owning_shard(&chunks, &key).ok_or_else(|| {
            CommandError::new(
                crate::error::codes::INTERNAL_ERROR,
                format!("no chunk of {} holds the key {key}", entry.ns),
            )
        })?;
        parts.entry(owner).or_default().push(d);
    }
    parts
        .into_iter()
        .map(|(name, docs)| {
            router.shard(&name).map(|s| (s, docs)).ok_or_else(|| {
                CommandError::new(
                    crate::error::codes::SHARD_NOT_FOUND,
                    format!("shard {name} of {} is not in the cluster", entry.ns),
                )
            })
        })
        .collect()
}

/// Runs the writing stage on a shard's primary over `docs`, with the client's users.
fn write_on(
    shard: &Shard,
    client: &Connection,
    db: &str,
    cmd: &Document,
    stage: &Document,
    docs: Vec<Document>,
) -> CmdResult<()> {
    let mut conn = internal_connection(client);
    let mut ctx = Ctx {
        server: &shard.server,
        conn: &mut conn,
        db: db.to_string(),
        cmd,
        name: "aggregate",
        documents: None,
        cursor: None,
        txn_storage: None,
    };
    aggregate_write::write(&mut ctx, stage, docs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_of_out_and_merge() {
        assert_eq!(
            target("app", &doc! {"$out": "t"}),
            ("app".into(), "t".into())
        );
        assert_eq!(
            target("app", &doc! {"$out": {"db": "x", "coll": "t"}}),
            ("x".into(), "t".into())
        );
        assert_eq!(
            target("app", &doc! {"$merge": {"into": "t", "on": "_id"}}),
            ("app".into(), "t".into())
        );
        assert_eq!(
            target("app", &doc! {"$merge": {"into": {"db": "x", "coll": "t"}}}),
            ("x".into(), "t".into())
        );
        assert_eq!(
            target("app", &doc! {"$merge": "t"}),
            ("app".into(), "t".into())
        );
    }
}
