//! DDL through the router: collection and index commands on their collection's shards,
//! `dropDatabase` on every shard, with the catalog kept in step.

use bson::{doc, Document};

use crate::dispatch::Connection;
use crate::error::CmdResult;
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
