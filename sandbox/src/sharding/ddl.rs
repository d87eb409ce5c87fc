//! DDL through the router: collection and index commands on their collection's shards,
//! `dropDatabase` on every shard, `renameCollection` (of a sharded collection too), with
//! the catalog kept in step.

use bson::{doc, Document};

use crate::dispatch::Connection;
use crate::error::{codes, CmdResult, CommandError};
use crate::storage::split_ns;
use crate::wire::Reply;

use super::catalog;
use super::forward::{self, error_code};
use super::router::home_shard;
use super::Router;

/// DDL through the router: on an unsharded collection its primary shard runs it; on a
/// sharded one every shard holding the collection does (and `drop` removes the catalog
/// entry); `dropDatabase` drops the database on every shard and in the catalog.
pub async fn run(
    router: &Router,
    conn: &Connection,
    db: &str,
    cmd: Document,
    name: &str,
) -> CmdResult<Reply> {
    if name == "dropDatabase" {
        let mut last = Reply::from(doc! {});
        for shard in router.shard_list() {
            last = forward::to_shard(router, &shard, conn, cmd.clone()).await;
            if error_code(&last).is_some() {
                return Ok(last);
            }
        }
        catalog::drop_database(&mut router.config.storage.lock(), db);
        return Ok(last);
    }
    let coll = cmd.get_str(name).unwrap_or_default().to_string();
    let ns = format!("{db}.{coll}");
    let sharded = catalog::collection(&router.config.storage.lock(), &ns).is_some();
    if !sharded {
        let Some(shard) = home_shard(router, db, name != "drop")? else {
            return super::router::to_config(router, conn, cmd).await;
        };
        return Ok(forward::to_shard(router, &shard, conn, cmd).await);
    }
    let mut first_reply = None;
    for shard in router.shard_list() {
        let has = shard.server.storage.lock().collection(db, &coll).is_some();
        if !has {
            continue;
        }
        let reply = forward::to_shard(router, &shard, conn, cmd.clone()).await;
        if error_code(&reply).is_some() {
            return Ok(reply);
        }
        first_reply.get_or_insert(reply);
    }
    if name == "drop" {
        catalog::drop_collection(&mut router.config.storage.lock(), &ns);
    }
    Ok(first_reply.unwrap_or_else(|| Reply::from(doc! {})))
}

/// Code 125 CommandFailed.
const COMMAND_FAILED: i32 = 125;

/// `renameCollection` through the router. An unsharded source is renamed by its
/// database's primary shard. A sharded source (5.0+) is renamed within its database
/// only: the primary shard renames its copy (the one `rename` event change streams
/// report), every other shard holding the collection renames its copy logged
/// `fromMigrate`, and the catalog entry moves to the new name with its uuid, so the
/// chunks follow. An existing target needs `dropTarget` (a sharded target's catalog entry
/// and chunks go with it).
pub async fn rename(router: &Router, conn: &Connection, cmd: Document) -> CmdResult<Reply> {
    let source = cmd
        .get_str("renameCollection")
        .unwrap_or_default()
        .to_string();
    let (source_db, source_coll) = split_ns(&source);
    let sharded = catalog::collection(&router.config.storage.lock(), &source).is_some();
    let primary = home_shard(router, source_db, false)?;
    let (Some(primary), true) = (primary, sharded) else {
        // An unsharded collection renamed onto a sharded one (5.0+ allows it with
        // dropTarget): the target is dropped on every shard holding it and in the catalog
        // first, as `drop` through the router does, then the primary shard renames.
        let target = cmd.get_str("to").unwrap_or_default().to_string();
        if catalog::collection(&router.config.storage.lock(), &target).is_some() {
            if !cmd.get_bool("dropTarget").unwrap_or(false) {
                return Err(CommandError::new(
                    codes::NAMESPACE_EXISTS,
                    format!(
                        "target namespace exists: {target} (pass dropTarget: true to replace it)"
                    ),
                ));
            }
            let (target_db, target_coll) = split_ns(&target);
            let dropped = run(
                router,
                conn,
                target_db,
                doc! {"drop": target_coll, "$db": target_db},
                "drop",
            )
            .await?;
            if error_code(&dropped).is_some() {
                return Ok(dropped);
            }
        }
        let (target_db, _) = split_ns(&target);
        super::router::rename_target_database(router, source_db, target_db)?;
        return match home_shard(router, source_db, false)? {
            Some(shard) => Ok(forward::to_shard(router, &shard, conn, cmd).await),
            None => super::router::to_config(router, conn, cmd).await,
        };
    };
    let target = cmd
        .get_str("to")
        .map_err(|_| CommandError::type_mismatch("'to' must be a string"))?
        .to_string();
    let (target_db, target_coll) = split_ns(&target);
    if target_db != source_db {
        return Err(CommandError::new(
            COMMAND_FAILED,
            format!("Source and destination collections must be on the same database: {source} is sharded and can only be renamed within {source_db}"),
        ));
    }
    crate::storage::validate_collection_name(target_db, target_coll)?;
    let drop_target = cmd.get_bool("dropTarget").unwrap_or(false);
    // No chunk moves between the checks and the catalog update.
    let _gate = router.balancer.gate.write().await;
    let shards = router.shard_list();
    let holds = |shard: &super::Shard, coll: &str| {
        shard
            .server
            .storage
            .lock()
            .collection(source_db, coll)
            .is_some()
    };
    let target_exists = catalog::collection(&router.config.storage.lock(), &target).is_some()
        || shards.iter().any(|s| holds(s, target_coll));
    if target_exists && !drop_target {
        return Err(CommandError::new(
            codes::NAMESPACE_EXISTS,
            format!("target namespace {target} exists: give dropTarget: true to replace it"),
        ));
    }
    // The primary shard (or, should it no longer hold the collection, the first shard
    // that does) runs the client's command: its checks, privileges and visible event.
    let visible = if holds(&primary, source_coll) {
        primary
    } else {
        shards
            .iter()
            .find(|s| holds(s, source_coll))
            .cloned()
            .unwrap_or(primary)
    };
    let reply = forward::to_shard(router, &visible, conn, cmd.clone()).await;
    if error_code(&reply).is_some() {
        return Ok(reply);
    }
    for shard in shards.iter().filter(|s| s.name != visible.name) {
        let mut storage = shard.server.storage.lock();
        if storage.collection(source_db, source_coll).is_some() {
            storage.rename_collection_from_migrate(
                (source_db, source_coll),
                (target_db, target_coll),
                drop_target,
            )?;
        } else if storage.collection(target_db, target_coll).is_some() {
            storage.drop_collection(target_db, target_coll);
        }
    }
    let mut config = router.config.storage.lock();
    catalog::drop_collection(&mut config, &target);
    catalog::rename_collection(&mut config, &source, &target)?;
    Ok(reply)
}
