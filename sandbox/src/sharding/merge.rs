//! Reads through the router. An unsharded collection is read on its database's primary
//! shard (the router's cursor stands for the shard's). A sharded collection is read on
//! the shards the read targets ([`super::read_target`]: by shard key equality, `$in` or
//! range, else every shard owning chunks of it): each contributes the documents its
//! filter matches whose key lies in a chunk it owns (the ownership filter, which keeps
//! orphans out), and the ordinary `find`, `aggregate`, `count` and `distinct` handlers
//! run on the router over the union, so sort, skip, limit, projection, batch size,
//! cursors and every pipeline stage behave as on a replica set.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use bson::{doc, Bson, Document};
use parking_lot::Mutex;

use crate::commands;
use crate::dispatch::{Connection, Ctx};
use crate::error::{codes, CmdResult, CommandError};
use crate::failpoint::Injected;
use crate::query::matcher::Matcher;
use crate::query::order::OrdBson;
use crate::server::Server;
use crate::storage::Storage;
use crate::wire::Reply;

use super::catalog::{self, CollectionEntry};
use super::forward::{self, PRIMARY_WAIT};
use super::read_target;
use super::router::{home_shard, to_config};
use super::shard_key::{hash_value, in_range};
use super::Router;

pub async fn read(
    server: &Arc<Server>,
    router: &Router,
    conn: &mut Connection,
    db: &str,
    cmd: Document,
    name: &str,
) -> CmdResult<Reply> {
    let coll = match cmd.get(name) {
        Some(Bson::String(c)) => Some(c.clone()),
        _ => None,
    };
    let entry = coll
        .as_ref()
        .and_then(|c| catalog::collection(&router.config.storage.lock(), &format!("{db}.{c}")));
    let (Some(coll), Some(entry)) = (coll, entry) else {
        return unsharded(router, conn, db, cmd).await;
    };
    if name == "aggregate" && is_change_stream(&cmd) {
        return Err(CommandError::new(
            115,
            "change streams on a sharded collection through the sandbox router are not available yet; open the stream on each shard",
        ));
    }
    if name == "count" && is_fast_count(&cmd) {
        return fast_count(router, db, &coll).await;
    }
    let mut cmd = cmd;
    let hashed = hashed_bounds(&entry, &mut cmd)?;
    let view = owned_documents(router, &entry, db, &coll, &cmd, name).await?;
    let view = match hashed {
        Some((path, min, max)) => within_hashed_bounds(view, db, &coll, &path, min, max),
        None => view,
    };
    let spec = commands::lookup(name).ok_or_else(|| {
        CommandError::new(
            codes::COMMAND_NOT_FOUND,
            format!("no such command: '{name}'"),
        )
    })?;
    let mut ctx = Ctx {
        server,
        conn,
        db: db.to_string(),
        cmd: &cmd,
        name,
        documents: None,
        cursor: None,
        txn_storage: Some(Mutex::new(view)),
    };
    let fields = (spec.handler)(&mut ctx)?;
    Ok(Reply {
        cursor: ctx.cursor.take(),
        fields,
    })
}

/// A read of an unsharded collection (or of a database as a whole): the database's
/// primary shard answers; `admin` and `config` are read on the config server.
async fn unsharded(
    router: &Router,
    conn: &Connection,
    db: &str,
    cmd: Document,
) -> CmdResult<Reply> {
    match home_shard(router, db, false)? {
        Some(shard) => {
            let mut reply = forward::to_shard(router, &shard, conn, cmd).await;
            router.proxied_cursors.adopt(&shard.name, &mut reply);
            Ok(reply)
        }
        None => {
            let mut reply = to_config(router, conn, cmd).await?;
            router.proxied_cursors.adopt("config", &mut reply);
            Ok(reply)
        }
    }
}

/// `collStats` of a sharded collection through the router: each shard's statistics
/// (orphans included, as on a real cluster), summed, with `sharded: true`.
pub async fn coll_stats(
    router: &Router,
    conn: &Connection,
    db: &str,
    cmd: Document,
) -> CmdResult<Reply> {
    let coll = cmd.get_str("collStats").unwrap_or_default().to_string();
    let ns = format!("{db}.{coll}");
    let Some(entry) = catalog::collection(&router.config.storage.lock(), &ns) else {
        return unsharded(router, conn, db, cmd).await;
    };
    let chunks = catalog::chunks(&router.config.storage.lock(), &entry.uuid);
    let mut totals =
        doc! {"count": 0i64, "size": 0i64, "storageSize": 0i64, "totalIndexSize": 0i64};
    let mut per_shard = Document::new();
    let mut nindexes = 0;
    for shard in router.shard_list() {
        if shard.server.storage.lock().collection(db, &coll).is_none() {
            continue;
        }
        let reply = forward::to_shard(router, &shard, conn, cmd.clone()).await;
        if forward::error_code(&reply).is_some() {
            return Ok(reply);
        }
        for key in ["count", "size", "storageSize", "totalIndexSize"] {
            let add = match reply.fields.get(key) {
                Some(Bson::Int64(n)) => *n,
                Some(Bson::Int32(n)) => *n as i64,
                Some(Bson::Double(f)) => *f as i64,
                _ => 0,
            };
            let sum = totals.get_i64(key).unwrap_or(0) + add;
            totals.insert(key, sum);
        }
        nindexes = reply.fields.get_i32("nindexes").unwrap_or(nindexes);
        let mut fields = reply.fields.clone();
        fields.remove("ok");
        per_shard.insert(shard.name.clone(), fields);
    }
    let count = totals.get_i64("count").unwrap_or(0);
    let size = totals.get_i64("size").unwrap_or(0);
    let mut fields = doc! {"sharded": true, "ns": ns};
    fields.extend(totals);
    fields.insert("avgObjSize", if count > 0 { size / count } else { 0 });
    fields.insert("nindexes", nindexes);
    fields.insert("nchunks", chunks.len() as i32);
    fields.insert("shards", per_shard);
    Ok(Reply::from(fields))
}

fn is_change_stream(cmd: &Document) -> bool {
    cmd.get_array("pipeline")
        .ok()
        .and_then(|p| p.first())
        .and_then(|s| s.as_document())
        .is_some_and(|s| s.contains_key("$changeStream"))
}

/// `count` without a filter, skip or limit: each shard's collection count, summed, as a
/// real router does (so orphans are counted).
fn is_fast_count(cmd: &Document) -> bool {
    let no_query = match cmd.get("query") {
        None | Some(Bson::Null) => true,
        Some(Bson::Document(q)) => q.is_empty(),
        _ => false,
    };
    no_query && !cmd.contains_key("skip") && !cmd.contains_key("limit")
}

async fn fast_count(router: &Router, db: &str, coll: &str) -> CmdResult<Reply> {
    let mut n: i64 = 0;
    for shard in router.shard_list() {
        wait_for_primary(&shard.server).await;
        n += shard
            .server
            .storage
            .lock()
            .collection(db, coll)
            .map_or(0, |c| c.docs.len() as i64);
    }
    Ok(Reply::from(doc! {"n": n as i32}))
}

/// Waits (up to [`PRIMARY_WAIT`]) while a shard has no primary, as the router does before
/// it reads from one.
async fn wait_for_primary(server: &Server) {
    let deadline = Instant::now() + PRIMARY_WAIT;
    while !server.is_primary() && Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// The documents of a sharded collection a read through the router sees: from each
/// shard the read targets (see [`read_target`]), those its filter matches and that lie in
/// chunks the shard owns. Orphans (documents in a chunk owned by another shard) are left
/// out. Each shard asked runs its `failCommand` fail point for the command, as it would
/// for the command a mongos sends it.
pub async fn owned_documents(
    router: &Router,
    entry: &CollectionEntry,
    db: &str,
    coll: &str,
    cmd: &Document,
    name: &str,
) -> CmdResult<Storage> {
    let chunks = catalog::chunks(&router.config.storage.lock(), &entry.uuid);
    let filter = read_target::read_filter(cmd, name);
    // A filter the matcher refuses is the handler's to report, and one that may name
    // the command's `let` variables is the handler's to evaluate: every document then.
    let matcher = if cmd.contains_key("let") {
        None
    } else {
        Matcher::new(&filter).ok()
    };
    let targets = read_target::target_shards(&entry.key, &chunks, &filter);
    let id_min_max = read_target::id_min_max(cmd, name);
    let ns = format!("{db}.{coll}");
    let mut merged = BTreeMap::new();
    let mut shape = None;
    for shard in router.shard_list() {
        if !targets.contains(&shard.name) {
            continue;
        }
        let owned: Vec<_> = chunks.iter().filter(|c| c.shard == shard.name).collect();
        wait_for_primary(&shard.server).await;
        shard_fail_point(&shard.server, name, &ns, cmd).await?;
        let storage = shard.server.storage.lock();
        let Some(c) = storage.collection(db, coll) else {
            continue;
        };
        if shape.is_none() {
            shape = Some(c.with_docs(BTreeMap::new()));
        }
        for (id, d) in read_target::matching_documents(c, &filter, matcher.as_ref(), &id_min_max) {
            let key = entry.key.key_of(d);
            if owned.iter().any(|ch| in_range(&key, &ch.min, &ch.max)) {
                // Another shard's document with this `_id` (a collection sharded on
                // another key keeps `_id` unique per shard only): a real router returns
                // both, so the second is kept under a key of its own.
                let id = if merged.contains_key(id) {
                    OrdBson(Bson::Document(
                        doc! {"_id": id.0.clone(), "$shard": shard.name.clone()},
                    ))
                } else {
                    id.clone()
                };
                merged.insert(id, d.clone());
            }
        }
    }
    let mut view = Storage::workspace();
    if let Some(shape) = shape {
        view.dbs
            .entry(db.to_string())
            .or_default()
            .collections
            .insert(coll.to_string(), shape.with_docs(merged));
    }
    Ok(view)
}

/// The `failCommand` fail point of a shard the router asks: it fails or delays the
/// router's read there as it would the command a mongos sends.
async fn shard_fail_point(server: &Server, name: &str, ns: &str, cmd: &Document) -> CmdResult<()> {
    let mut injected = server.faults.fail_points.check(name, ns, cmd);
    if let Some(Injected::Block(period, then)) = injected {
        tokio::time::sleep(period).await;
        injected = then.map(|i| *i);
    }
    match injected {
        Some(Injected::Error(e)) => Err(e),
        Some(Injected::CloseConnection) => Err(CommandError::new(
            codes::HOST_UNREACHABLE,
            format!("the router's connection to a shard holding {ns} was closed by its closeConnection fail point"),
        )),
        _ => Ok(()),
    }
}

/// Keeps the documents whose hashed value of `path` lies in `[min, max)`.
fn within_hashed_bounds(
    mut view: Storage,
    db: &str,
    coll: &str,
    path: &str,
    min: Option<i64>,
    max: Option<i64>,
) -> Storage {
    if let Some(c) = view.collection_mut(db, coll) {
        let kept = c
            .docs
            .iter()
            .filter(|(_, d)| {
                let h = hash_value(crate::query::path::get_path(d, path).unwrap_or(&Bson::Null));
                min.is_none_or(|m| h >= m) && max.is_none_or(|m| h < m)
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        *c = c.with_docs(kept);
    }
    view
}

/// A `find` with `min`/`max` and a `hint` naming the hashed shard key index: the bounds
/// are hashed values (as `config.chunks` holds them). Returns (field, min, max) and takes
/// them out of the command, which then runs as a plain find.
#[allow(clippy::type_complexity)]
fn hashed_bounds(
    entry: &CollectionEntry,
    cmd: &mut Document,
) -> CmdResult<Option<(String, Option<i64>, Option<i64>)>> {
    if !cmd.contains_key("min") && !cmd.contains_key("max") {
        return Ok(None);
    }
    let Some(field) = entry.key.hashed_field() else {
        return Ok(None);
    };
    let hinted = match cmd.get("hint") {
        Some(Bson::Document(h)) => h == &entry.key.pattern,
        Some(Bson::String(name)) => *name == crate::storage::default_index_name(&entry.key.pattern),
        _ => false,
    };
    if !hinted {
        return Ok(None);
    }
    let bound = |cmd: &Document, which: &str| -> CmdResult<Option<i64>> {
        let Ok(d) = cmd.get_document(which) else {
            return Ok(None);
        };
        if !d.keys().eq(entry.key.pattern.keys()) {
            return Err(CommandError::new(
                51174,
                "The index chosen is not consistent with the min/max bounds",
            ));
        }
        Ok(match d.get(&field.path) {
            Some(Bson::Int64(n)) => Some(*n),
            Some(Bson::Int32(n)) => Some(*n as i64),
            Some(Bson::MinKey) => Some(i64::MIN),
            Some(Bson::MaxKey) => None,
            _ => None,
        })
    };
    let min = bound(cmd, "min")?;
    let max = bound(cmd, "max")?;
    cmd.remove("min");
    cmd.remove("max");
    cmd.remove("hint");
    Ok(Some((field.path.clone(), min, max)))
}

/// `listDatabases` through the router: every shard's databases, sizes summed, plus the
/// config server's `config` and `admin`.
pub async fn list_databases(router: &Router, conn: &Connection, cmd: Document) -> CmdResult<Reply> {
    let mut sizes: BTreeMap<String, (i64, bool)> = BTreeMap::new();
    let name_only = cmd.get_bool("nameOnly").unwrap_or(false);
    let mut targets = router.shard_list();
    targets.push(super::Shard {
        name: "config".into(),
        server: router.config.clone(),
    });
    for shard in targets {
        let reply = forward::to_shard(router, &shard, conn, cmd.clone()).await;
        if forward::error_code(&reply).is_some() {
            return Ok(reply);
        }
        let Ok(dbs) = reply.fields.get_array("databases") else {
            continue;
        };
        for d in dbs.iter().filter_map(Bson::as_document) {
            let Ok(name) = d.get_str("name") else {
                continue;
            };
            if shard.name != "config" && matches!(name, "admin" | "config" | "local") {
                continue;
            }
            if shard.name == "config" && name == "local" {
                continue;
            }
            let size = match d.get("sizeOnDisk") {
                Some(Bson::Int64(n)) => *n,
                Some(Bson::Int32(n)) => *n as i64,
                Some(Bson::Double(f)) => *f as i64,
                _ => 0,
            };
            let empty = d.get_bool("empty").unwrap_or(false);
            let e = sizes.entry(name.to_string()).or_insert((0, true));
            e.0 += size;
            e.1 &= empty;
        }
    }
    let total: i64 = sizes.values().map(|(s, _)| *s).sum();
    let databases: Vec<Bson> = sizes
        .into_iter()
        .map(|(name, (size, empty))| {
            if name_only {
                Bson::Document(doc! {"name": name})
            } else {
                Bson::Document(doc! {"name": name, "sizeOnDisk": size, "empty": empty})
            }
        })
        .collect();
    let mut fields = doc! {"databases": databases};
    if !name_only {
        fields.insert("totalSize", total);
    }
    Ok(Reply::from(fields))
}
