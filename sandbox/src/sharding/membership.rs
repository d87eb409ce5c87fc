//! Which shards make up the cluster and hold what, beyond chunks: `addShard` (of a shard
//! replica set started in this process), `removeShard` (draining: the balancer moves the
//! shard's chunks away, `movePrimary` its databases, then it leaves the cluster) and
//! `movePrimary` (a database's unsharded collections move to another shard).

use bson::{doc, Bson, Document};

use crate::error::{codes, CmdResult, CommandError};
use crate::query::order::OrdBson;

use super::balancer::draining_shards;
use super::catalog;
use super::migration::shard_named;
use super::Router;

/// `addShard: "setName/host:port"` (or `"host:port"`), `name?`: adds a shard replica set
/// started in this process ([`super::ShardedCluster::start_shard`]); the sandbox cannot
/// reach any other host.
pub fn add_shard(router: &Router, cmd: &Document) -> CmdResult<Document> {
    let spec = cmd.get_str("addShard").map_err(|_| {
        CommandError::type_mismatch("addShard takes a connection string, e.g. \"shard2/host:port\"")
    })?;
    let (set_name, host) = match spec.split_once('/') {
        Some((set, host)) => (Some(set), host),
        None => (None, spec),
    };
    let position = router.spares.read().iter().position(|s| {
        s.server.address == host && set_name.is_none_or(|n| n == s.server.options.set_name)
    });
    let Some(position) = position else {
        if let Some(member) = router
            .shard_list()
            .into_iter()
            .find(|s| s.server.address == host)
        {
            return Ok(doc! {"shardAdded": member.name});
        }
        return Err(CommandError::new(
            codes::OPERATION_FAILED,
            format!("couldn't connect to new shard {spec}: the sandbox router adds only shard replica sets started in its process (ShardedCluster::start_shard)"),
        ));
    };
    let spare = router.spares.write().remove(position);
    let name = cmd
        .get_str("name")
        .map(str::to_string)
        .unwrap_or_else(|_| spare.name.clone());
    if router.shard(&name).is_some() {
        router.spares.write().insert(position, spare);
        return Err(CommandError::bad_value(format!(
            "A shard named {name} already exists; give addShard another 'name'"
        )));
    }
    let host = format!("{}/{}", spare.server.options.set_name, spare.server.address);
    catalog::add_shard(&mut router.config.storage.lock(), &name, &host)?;
    router.shards.write().push(super::Shard {
        name: name.clone(),
        server: spare.server,
    });
    router.config.oplog_appended.notify_waiters();
    Ok(doc! {"shardAdded": name})
}

/// `movePrimary: db, to: shard`: copies the database's unsharded collections to `to`,
/// makes it the primary shard, and drops them on the old one.
pub async fn move_primary(router: &Router, cmd: &Document) -> CmdResult<Document> {
    let db = cmd
        .get_str("movePrimary")
        .map_err(|_| CommandError::type_mismatch("movePrimary takes a database name"))?;
    let to = cmd.get_str("to").map_err(|_| {
        CommandError::new(
            codes::MISSING_REQUIRED_FIELD,
            "BSON field 'movePrimary.to' is missing but a required field",
        )
    })?;
    if matches!(db, "admin" | "config" | "local") {
        return Err(CommandError::new(
            codes::INVALID_OPTIONS,
            format!("Can't move primary for {db} database"),
        ));
    }
    let to = shard_named(router, to)?;
    let entry = catalog::database(&router.config.storage.lock(), db)
        .ok_or_else(|| CommandError::ns_not_found(format!("Database {db} not found")))?;
    if entry.primary == to.name {
        return Ok(doc! {"primary": format!("{}:{}", to.name, to.server.address)});
    }
    let from = shard_named(router, &entry.primary)?;
    // No routed write to the database's collections in flight while they move.
    let _gate = router.balancer.gate.write().await;
    let sharded: Vec<String> = catalog::collections(&router.config.storage.lock())
        .into_iter()
        .map(|c| c.ns)
        .collect();
    {
        let mut source = from.server.storage.lock();
        let mut target = to.server.storage.lock();
        let names: Vec<String> = source
            .dbs
            .get(db)
            .map(|d| d.collections.keys().cloned().collect())
            .unwrap_or_default();
        for coll in names {
            if sharded.contains(&format!("{db}.{coll}")) {
                continue;
            }
            let Some(c) = source.collection(db, &coll) else {
                continue;
            };
            if target.collection(db, &coll).is_some() {
                return Err(CommandError::new(
                    codes::NAMESPACE_EXISTS,
                    format!(
                        "movePrimary: {db}.{coll} already exists on {}; drop it there first",
                        to.name
                    ),
                ));
            }
            let docs: Vec<Document> = c.docs.values().map(|d| Document::clone(d)).collect();
            target.create_for_migration(db, &coll, c);
            for d in docs {
                target.insert_from_migrate(db, &coll, d)?;
            }
            source.drop_collection(db, &coll);
        }
        catalog::set_database_primary(&mut router.config.storage.lock(), db, &to.name)?;
    }
    for server in [&from.server, &to.server, &router.config] {
        server.oplog_appended.notify_waiters();
    }
    Ok(doc! {"primary": format!("{}:{}", to.name, to.server.address)})
}

/// `removeShard: name`: the first call starts draining (the balancer moves its chunks
/// away while it runs); later calls report progress, and once no chunk and no database
/// is left on it, remove it from the catalog and the router.
pub fn remove_shard(router: &Router, cmd: &Document) -> CmdResult<Document> {
    let name = cmd.get_str("removeShard").map_err(|_| {
        CommandError::type_mismatch("removeShard takes a shard name, e.g. \"shard1\"")
    })?;
    let shard = shard_named(router, name)?;
    let mut config = router.config.storage.lock();
    let id = Bson::String(shard.name.clone());
    let shards = catalog::shard_documents(&config);
    if shards.len() <= 1 {
        return Err(CommandError::new(
            codes::ILLEGAL_OPERATION,
            "Operation not allowed because it would remove the last shard",
        ));
    }
    let draining = draining_shards(&config);
    if !draining.contains(&shard.name) {
        if !draining.is_empty() {
            return Err(CommandError::new(
                codes::ILLEGAL_OPERATION,
                format!(
                    "Can't have more than one draining shard at a time; wait for {} to finish",
                    draining.join(", ")
                ),
            ));
        }
        let Some(mut entry) = shards.into_iter().find(|d| d.get("_id") == Some(&id)) else {
            return Err(CommandError::new(
                codes::SHARD_NOT_FOUND,
                format!("Shard {name} not found"),
            ));
        };
        entry.insert("draining", true);
        config.update(
            catalog::CONFIG_DB,
            catalog::SHARDS,
            &id,
            entry,
            crate::query::UpdateLog::Replacement,
        )?;
        let dbs = primary_databases(&config, &shard.name);
        return Ok(doc! {
            "msg": "draining started successfully",
            "state": "started",
            "shard": &shard.name,
            "note": "you need to call movePrimary for the databases in dbsToMove",
            "dbsToMove": dbs,
        });
    }
    let chunks = catalog::collections(&config)
        .iter()
        .map(|c| {
            catalog::chunks(&config, &c.uuid)
                .into_iter()
                .filter(|k| k.shard == shard.name)
                .count() as i64
        })
        .sum::<i64>();
    let dbs = primary_databases(&config, &shard.name);
    if chunks > 0 || !dbs.is_empty() {
        return Ok(doc! {
            "msg": "draining ongoing",
            "state": "ongoing",
            "remaining": {"chunks": chunks, "dbs": dbs.len() as i64, "jumboChunks": 0i64},
            "note": "you need to call movePrimary for the databases in dbsToMove",
            "dbsToMove": dbs,
        });
    }
    config.delete(catalog::CONFIG_DB, catalog::SHARDS, &id);
    drop(config);
    router.shards.write().retain(|s| s.name != shard.name);
    router.config.oplog_appended.notify_waiters();
    Ok(doc! {
        "msg": "removeshard completed successfully",
        "state": "completed",
        "shard": &shard.name,
    })
}

/// Databases whose primary shard is `shard`.
fn primary_databases(config: &crate::storage::Storage, shard: &str) -> Vec<String> {
    config
        .collection(catalog::CONFIG_DB, catalog::DATABASES)
        .map(|c| {
            c.docs
                .values()
                .filter(|d| d.get_str("primary") == Ok(shard))
                .filter_map(|d| d.get_str("_id").ok().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `shard` is draining.
pub fn is_draining(router: &Router, shard: &str) -> bool {
    let config = router.config.storage.lock();
    config
        .collection(catalog::CONFIG_DB, catalog::SHARDS)
        .and_then(|c| c.docs.get(&OrdBson(Bson::String(shard.to_string()))))
        .is_some_and(|d| d.get_bool("draining").unwrap_or(false))
}
