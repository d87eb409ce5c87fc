//! The router's dispatcher. It reuses the one command table for each command's required
//! privilege and kind, checks authentication against the users stored on the config
//! server (where a mongos keeps them), and picks a route: the router itself (handshake,
//! cluster-wide admin), the config server (users, `config`/`admin` data), the database's
//! primary shard (unsharded collections), or every owning shard (sharded collections).

use std::sync::Arc;

use bson::{doc, Bson, Document};

use crate::auth::roles::{is_authorized, Action};
use crate::commands::{self, CommandSpec, Effect, OnSecondary};
use crate::dispatch::{self, unauthorized, Connection, Ctx};
use crate::error::{codes, CmdResult, CommandError};
use crate::failpoint::Injected;
use crate::server::Server;
use crate::wire::{Reply, MAX_BSON_SIZE, MAX_MESSAGE_SIZE};

use super::forward::{self, error_code};
use super::{
    catalog, cluster_admin, ddl, distribution, index_stats, merge, pipeline_write, reshard,
    routing, sharding_admin, stream_command, Router, Shard,
};

/// Commands only a router has, with the privilege each requires.
static ROUTER_COMMANDS: &[(&str, Action)] = &[
    ("enableSharding", Action::EnableSharding),
    ("enablesharding", Action::EnableSharding),
    ("shardCollection", Action::ShardCollection),
    ("shardcollection", Action::ShardCollection),
    ("listShards", Action::ListShards),
    ("listshards", Action::ListShards),
    ("getShardMap", Action::ListShards),
];

/// Replica-set commands a router does not have: it answers them as unknown commands, as
/// a real mongos does (`replSetGetStatus` has its own reply, see [`route`]).
const REPLICA_SET_ONLY: &[&str] = &[
    "replSetStepDown",
    "replSetGetConfig",
    "replSetReconfig",
    "replSetInitiate",
    "replSetFreeze",
];

/// Commands the config server answers for the router: authentication and users.
const ON_CONFIG_SERVER: &[&str] = &[
    "saslStart",
    "saslContinue",
    "logout",
    "connectionStatus",
    "createUser",
    "dropUser",
    "usersInfo",
];

/// Commands the router answers itself with the ordinary handler.
const ON_ROUTER: &[&str] = &[
    "ping",
    "buildInfo",
    "buildinfo",
    "endSessions",
    "killSessions",
    "getParameter",
    "getCmdLineOpts",
    "sandboxFault",
    "configureFailPoint",
];

/// The spec standing for every router-only command: it needs authentication; the
/// privilege comes from [`ROUTER_COMMANDS`].
static ROUTER_ONLY: CommandSpec = CommandSpec {
    name: "routerOnly",
    handler: routed_elsewhere,
    action: None,
    effect: Effect::Admin,
    no_auth: false,
    on_secondary: OnSecondary::Always,
};

/// Handler of [`ROUTER_ONLY`]: never called, the router runs these commands itself.
fn routed_elsewhere(ctx: &mut Ctx<'_>) -> CmdResult<Document> {
    Err(CommandError::new(
        codes::INTERNAL_ERROR,
        format!("{} is run by the router's own dispatcher", ctx.name),
    ))
}

/// The spec of a command the router knows: the shared table, or a router-only command.
fn lookup(name: &str) -> Option<(&'static CommandSpec, Option<Action>)> {
    if let Some(action) = cluster_admin::action(name) {
        let spec = commands::lookup("ping")?;
        return Some((spec, Some(action)));
    }
    if let Some((_, action)) = ROUTER_COMMANDS.iter().find(|(n, _)| *n == name) {
        return Some((&ROUTER_ONLY, Some(*action)));
    }
    if let Some(action) = reshard::action(name) {
        return Some((&ROUTER_ONLY, Some(action)));
    }
    if REPLICA_SET_ONLY.contains(&name) {
        return None;
    }
    commands::lookup(name).map(|spec| (spec, spec.action))
}

/// Runs one client command on the router.
pub async fn run_command(
    server: &Arc<Server>,
    router: &Arc<Router>,
    conn: &mut Connection,
    cmd: Document,
) -> Reply {
    let result = route(server, router, conn, cmd).await;
    dispatch::finish(server, result)
}

async fn route(
    server: &Arc<Server>,
    router: &Arc<Router>,
    conn: &mut Connection,
    cmd: Document,
) -> CmdResult<Reply> {
    let Some(name) = cmd.keys().next().cloned() else {
        return Err(CommandError::failed_to_parse("empty command"));
    };
    let db = match cmd.get("$db") {
        Some(Bson::String(s)) => s.clone(),
        _ => {
            return Err(CommandError::failed_to_parse(
                "OP_MSG requests require a $db argument",
            ))
        }
    };
    let Some((spec, action)) = lookup(&name) else {
        return Err(CommandError::new(
            codes::COMMAND_NOT_FOUND,
            format!("no such command: '{name}'"),
        ));
    };
    if name == "replSetGetStatus" {
        // A real mongos answers this one itself, with `info: "mongos"` and no error code
        // (as observed from 4.0 through 6.0 routers).
        return Ok(Reply::from(doc! {
            "info": "mongos",
            "ok": 0.0,
            "errmsg": "replSetGetStatus is not supported through mongos",
        }));
    }
    if matches!(name.as_str(), "hello" | "isMaster" | "ismaster") {
        return local(server, conn, &db, &cmd, &name, |ctx| hello(ctx, router));
    }
    if ON_CONFIG_SERVER.contains(&name.as_str()) {
        // The client's connection itself authenticates against the config server's users.
        let reply = dispatch::run_command(&router.config, conn, cmd).await;
        return Ok(reply);
    }
    // `$indexStats` needs its own privilege (clusterMonitor, dbAdmin), not `find`.
    let action = if name == "aggregate" && index_stats::is_index_stats(&cmd) {
        Some(Action::IndexStats)
    } else {
        action
    };
    check_privileges(router, conn, &db, &cmd, &name, spec, action)?;
    if name != "configureFailPoint" {
        injected_fault(server, conn, &db, &cmd, &name).await?;
    }
    // What error labelling needs to know of the command, kept before it moves.
    let label_fields: Document = cmd
        .iter()
        .filter(|(k, _)| matches!(k.as_str(), "txnNumber" | "autocommit" | "pipeline"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let result = match name.as_str() {
        n if ON_ROUTER.contains(&n) => local(server, conn, &db, &cmd, &name, spec.handler),
        "serverStatus" => local(server, conn, &db, &cmd, &name, server_status),
        n if cluster_admin::action(n).is_some() => cluster_admin::run(router, &db, &cmd, n).await,
        n if reshard::action(n).is_some() => reshard::run(router, &db, &cmd, n).await,
        "aggregate" if stream_command::is_change_stream(&cmd) => {
            let side = stream_command::RouterSide {
                shards: router.shard_list().into_iter().map(|s| s.server).collect(),
                membership: {
                    let router = router.clone();
                    std::sync::Arc::new(move || {
                        router.shard_list().into_iter().map(|s| s.server).collect()
                    })
                },
                users: &router.config.users,
                first_at_tie: match router.settings.read().shard_key_move_order {
                    super::ShardKeyMoveOrder::DeleteFirst => "delete",
                    super::ShardKeyMoveOrder::InsertFirst => "insert",
                },
            };
            stream_command::aggregate(server, side, conn, &db, &cmd)
        }
        "aggregate" if distribution::is_distribution(&cmd) => {
            distribution::aggregate(router, &db, &cmd)
        }
        "aggregate" if index_stats::is_index_stats(&cmd) => {
            index_stats::aggregate(router, &db, &cmd)
        }
        n if ROUTER_COMMANDS.iter().any(|(c, _)| *c == n) => {
            sharding_admin::run(router, conn, &db, &cmd, &name).await
        }
        "setUserWriteBlockMode" | "appendOplogNote" => broadcast(router, conn, &cmd, false).await,
        "setFeatureCompatibilityVersion" => broadcast(router, conn, &cmd, true).await,
        "insert" | "update" | "delete" | "findAndModify" | "findandmodify" => {
            // Held until the reply: a migration never commits between the choice of
            // shards and the write (see `balancer::Balancer::gate`).
            let _gate = router.balancer.gate.read().await;
            routing::write(server, router, conn, &db, cmd, &name).await
        }
        "aggregate" if pipeline_write::is_writing(&cmd) => {
            let _gate = router.balancer.gate.read().await;
            pipeline_write::aggregate(server, router, conn, &db, cmd).await
        }
        "find" | "aggregate" | "count" | "distinct" => {
            let _gate = router.balancer.gate.read().await;
            merge::read(server, router, conn, &db, cmd, &name).await
        }
        "getMore" => {
            match stream_command::get_more(server, &router.config.users, conn, &db, &cmd).await {
                Some(result) => result,
                None => get_more(server, router, conn, &db, cmd).await,
            }
        }
        "killCursors" => kill_cursors(server, router, conn, &db, cmd).await,
        "listDatabases" => merge::list_databases(router, conn, cmd).await,
        "collStats" => merge::coll_stats(router, conn, &db, cmd).await,
        "drop" | "dropDatabase" | "createIndexes" | "dropIndexes" | "deleteIndexes" | "collMod" => {
            ddl::run(router, conn, &db, cmd, &name).await
        }
        "renameCollection" => ddl::rename(router, conn, cmd).await,
        "commitTransaction" | "abortTransaction" => end_transaction(router, conn, cmd).await,
        _ => {
            let shard = home_shard(router, &db, spec.effect == Effect::Write)?;
            match shard {
                Some(shard) => {
                    let mut reply = forward::to_shard(router, &shard, conn, cmd).await;
                    router.proxied_cursors.adopt(&shard.name, &mut reply);
                    Ok(reply)
                }
                None => to_config(router, conn, cmd).await,
            }
        }
    };
    result.map_err(|e| dispatch::label(e, &label_fields, &name, spec))
}

/// The router's own `failCommand` fail point (a real mongos started with test commands
/// enabled has one, configured on the router with `configureFailPoint`): it fails, delays
/// or cuts the connection of the named commands the router receives, before it routes
/// them. Write concern errors are the shards' to inject.
async fn injected_fault(
    server: &Arc<Server>,
    conn: &mut Connection,
    db: &str,
    cmd: &Document,
    name: &str,
) -> CmdResult<()> {
    let target = crate::failpoint::command_namespace(db, name, cmd);
    let mut injected = server.faults.fail_points.check(name, &target, cmd);
    if let Some(Injected::Block(period, then)) = injected {
        tokio::time::sleep(period).await;
        injected = then.map(|i| *i);
    }
    match injected {
        Some(Injected::Error(e)) => Err(e),
        Some(Injected::CloseConnection) => {
            conn.close_without_reply = true;
            Err(CommandError::new(
                codes::HOST_UNREACHABLE,
                "connection closed by the closeConnection fail point",
            ))
        }
        _ => Ok(()),
    }
}

/// Commits or aborts a transaction on every shard it wrote to or read from. The sandbox
/// commits shard by shard (no two-phase commit): a transaction spanning shards is atomic
/// on each shard, not across them.
async fn end_transaction(router: &Router, conn: &Connection, cmd: Document) -> CmdResult<Reply> {
    let participants = router.transactions.finish(&cmd);
    let mut reply = Reply::from(doc! {});
    for name in participants {
        let Some(shard) = router.shard(&name) else {
            continue;
        };
        reply = forward::to_shard(router, &shard, conn, cmd.clone()).await;
        if error_code(&reply).is_some() {
            return Ok(reply);
        }
    }
    Ok(reply)
}

/// Authentication and the command's privilege, checked against the users and roles the
/// client authenticated with on the router.
fn check_privileges(
    router: &Router,
    conn: &Connection,
    db: &str,
    cmd: &Document,
    name: &str,
    spec: &CommandSpec,
    action: Option<Action>,
) -> CmdResult<()> {
    let auth_enabled = !router.config.users.is_empty();
    if !auth_enabled || spec.no_auth {
        return Ok(());
    }
    if conn.users.is_empty() {
        return Err(CommandError::unauthorized(format!(
            "Command {name} requires authentication"
        )));
    }
    if let Some(action) = action {
        let coll = match cmd.get(name) {
            Some(Bson::String(s)) => s.as_str(),
            _ => "",
        };
        let roles: Vec<_> = conn
            .users
            .iter()
            .flat_map(|u| u.roles.iter().cloned())
            .collect();
        if !is_authorized(&roles, action, db, coll) {
            return Err(unauthorized(name, db));
        }
    }
    Ok(())
}

/// Runs an ordinary handler on the router itself.
fn local(
    server: &Arc<Server>,
    conn: &mut Connection,
    db: &str,
    cmd: &Document,
    name: &str,
    handler: impl FnOnce(&mut Ctx<'_>) -> CmdResult<Document>,
) -> CmdResult<Reply> {
    let mut ctx = Ctx {
        server,
        conn,
        db: db.to_string(),
        cmd,
        name,
        documents: None,
        cursor: None,
        txn_storage: None,
    };
    let fields = handler(&mut ctx)?;
    Ok(Reply {
        cursor: ctx.cursor.take(),
        fields,
    })
}

/// The shard holding a database's unsharded collections. `admin` and `config` live on the
/// config server (None). A database without an entry gets one when `create` is set (a
/// write creates the database, with the next primary shard in round-robin order).
pub fn home_shard(router: &Router, db: &str, create: bool) -> CmdResult<Option<Shard>> {
    if matches!(db, "admin" | "config" | "local") {
        return Ok(None);
    }
    let shards = router.shard_list();
    let mut storage = router.config.storage.lock();
    let entry = match catalog::database(&storage, db) {
        Some(entry) => entry,
        None if create => {
            crate::storage::validate_collection_name(db, "x")?;
            let existing = storage
                .collection(catalog::CONFIG_DB, catalog::DATABASES)
                .map_or(0, |c| c.docs.len());
            let Some(primary) = shards.get(existing % shards.len().max(1)) else {
                return Err(CommandError::new(
                    codes::ILLEGAL_OPERATION,
                    "the cluster has no shards: add one with addShard",
                ));
            };
            catalog::create_database(&mut storage, db, &primary.name)?
        }
        None => return Ok(shards.first().cloned()),
    };
    drop(storage);
    Ok(router
        .shard(&entry.primary)
        .or_else(|| shards.first().cloned()))
}

/// Before a rename into another database: the target database is created when missing,
/// with the source database's primary shard, and refused (5448802) when it exists with
/// another primary shard, as a real router does; the collection never leaves its shard.
pub(super) fn rename_target_database(
    router: &Router,
    source_db: &str,
    target_db: &str,
) -> CmdResult<()> {
    if source_db == target_db || matches!(target_db, "" | "admin" | "config" | "local") {
        return Ok(());
    }
    let mut storage = router.config.storage.lock();
    let Some(source) = catalog::database(&storage, source_db) else {
        return Ok(());
    };
    match catalog::database(&storage, target_db) {
        None => {
            crate::storage::validate_collection_name(target_db, "x")?;
            catalog::create_database(&mut storage, target_db, &source.primary)?;
            Ok(())
        }
        Some(target) if target.primary != source.primary => Err(CommandError::new(
            5448802,
            format!(
                "Source and destination collections must be on same shard: {source_db} has primary shard {}, {target_db} has {}",
                source.primary, target.primary
            ),
        )),
        Some(_) => Ok(()),
    }
}

/// Runs a command on the config server for the client.
pub async fn to_config(router: &Router, conn: &Connection, cmd: Document) -> CmdResult<Reply> {
    let shard = Shard {
        name: "config".into(),
        server: router.config.clone(),
    };
    Ok(forward::to_shard(router, &shard, conn, cmd).await)
}

/// Sends a cluster-wide command to every shard (and the config server when
/// `with_config`); the first failure is the reply.
async fn broadcast(
    router: &Router,
    conn: &Connection,
    cmd: &Document,
    with_config: bool,
) -> CmdResult<Reply> {
    let mut targets = router.shard_list();
    if with_config {
        targets.insert(
            0,
            Shard {
                name: "config".into(),
                server: router.config.clone(),
            },
        );
    }
    for shard in &targets {
        let reply = forward::to_shard(router, shard, conn, cmd.clone()).await;
        if error_code(&reply).is_some() {
            return Ok(reply);
        }
    }
    Ok(Reply::from(doc! {}))
}

async fn get_more(
    server: &Arc<Server>,
    router: &Router,
    conn: &mut Connection,
    db: &str,
    mut cmd: Document,
) -> CmdResult<Reply> {
    let id = match cmd.get("getMore") {
        Some(Bson::Int64(i)) => *i,
        Some(Bson::Int32(i)) => *i as i64,
        _ => {
            return Err(CommandError::type_mismatch(
                "getMore must be an Int64 cursor id",
            ))
        }
    };
    if let Some((shard_name, shard_id)) = router.proxied_cursors.get(id) {
        let shard = match shard_name.as_str() {
            "config" => Some(Shard {
                name: "config".into(),
                server: router.config.clone(),
            }),
            name => router.shard(name),
        };
        let Some(shard) = shard else {
            router.proxied_cursors.remove(id);
            return Err(CommandError::new(
                codes::CURSOR_NOT_FOUND,
                format!("cursor id {id} not found: its shard {shard_name} was removed"),
            ));
        };
        cmd.insert("getMore", shard_id);
        let mut reply = forward::to_shard(router, &shard, conn, cmd).await;
        router.proxied_cursors.follow(id, &mut reply);
        return Ok(reply);
    }
    commands::read::get_more(server, conn, db, &cmd).await
}

async fn kill_cursors(
    server: &Arc<Server>,
    router: &Router,
    conn: &mut Connection,
    db: &str,
    cmd: Document,
) -> CmdResult<Reply> {
    let ids: Vec<i64> = cmd
        .get_array("cursors")
        .map(|a| a.iter().filter_map(|v| v.as_i64()).collect())
        .unwrap_or_default();
    let mut killed = Vec::new();
    let mut local_ids = Vec::new();
    for id in ids {
        match router.proxied_cursors.get(id) {
            Some((shard_name, shard_id)) => {
                router.proxied_cursors.remove(id);
                if let Some(shard) = router.shard(&shard_name) {
                    let mut kill = cmd.clone();
                    kill.insert("cursors", vec![Bson::Int64(shard_id)]);
                    forward::to_shard(router, &shard, conn, kill).await;
                }
                killed.push(Bson::Int64(id));
            }
            None => local_ids.push(Bson::Int64(id)),
        }
    }
    let mut local_cmd = cmd.clone();
    local_cmd.insert("cursors", local_ids);
    let name = "killCursors";
    let mut reply = local(
        server,
        conn,
        db,
        &local_cmd,
        name,
        commands::read::kill_cursors,
    )?;
    if let Ok(list) = reply.fields.get_array_mut("cursorsKilled") {
        list.extend(killed);
    }
    Ok(reply)
}

/// `hello` as a mongos answers it: `msg: "isdbgrid"`, no replica set fields.
fn hello(ctx: &mut Ctx<'_>, router: &Router) -> CmdResult<Document> {
    let mut reply = doc! {};
    if ctx.cmd.get_bool("helloOk").is_ok() {
        reply.insert("helloOk", true);
    }
    if ctx.name == "hello" {
        reply.insert("isWritablePrimary", true);
    } else {
        reply.insert("ismaster", true);
    }
    reply.insert("msg", "isdbgrid");
    reply.insert("maxBsonObjectSize", MAX_BSON_SIZE as i32);
    reply.insert("maxMessageSizeBytes", MAX_MESSAGE_SIZE as i32);
    reply.insert("maxWriteBatchSize", 100_000);
    reply.insert("localTime", bson::DateTime::now());
    reply.insert("logicalSessionTimeoutMinutes", 30);
    reply.insert("connectionId", ctx.conn.id as i32);
    reply.insert("minWireVersion", 0);
    reply.insert("maxWireVersion", ctx.server.max_wire_version());
    reply.insert("readOnly", false);
    if let Ok(user) = ctx.cmd.get_str("saslSupportedMechs") {
        let (db, name) = user.split_once('.').unwrap_or(("admin", user));
        if let Some(mechs) = router.config.users.lookup(db, name).map(|u| u.mechanisms()) {
            reply.insert(
                "saslSupportedMechs",
                mechs.iter().map(|m| m.name()).collect::<Vec<_>>(),
            );
        }
    }
    if let Ok(spec) = ctx.cmd.get_document("speculativeAuthenticate") {
        // The conversation runs against the config server's users.
        let spec = spec.clone();
        let db = spec.get_str("db").unwrap_or("admin").to_string();
        let mut config_ctx = Ctx {
            server: &router.config,
            conn: &mut *ctx.conn,
            db: db.clone(),
            cmd: &spec,
            name: "saslStart",
            documents: None,
            cursor: None,
            txn_storage: None,
        };
        if let Ok(start) = commands::handshake::sasl_start(&mut config_ctx) {
            reply.insert("speculativeAuthenticate", start);
        }
    }
    Ok(reply)
}

/// `serverStatus` of a mongos: `process: "mongos"`, no `repl` section.
fn server_status(ctx: &mut Ctx<'_>) -> CmdResult<Document> {
    let server = ctx.server;
    let uptime = server.started.elapsed();
    Ok(doc! {
        "host": server.address.clone(),
        "version": server.options.version.clone(),
        "process": "mongos",
        "pid": std::process::id() as i64,
        "uptime": uptime.as_secs_f64(),
        "uptimeMillis": uptime.as_millis() as i64,
        "localTime": bson::DateTime::now(),
        "connections": {"current": 0, "available": 51200, "totalCreated": server.next_connection_id.load(std::sync::atomic::Ordering::SeqCst) - 1},
        "sharding": {"configsvrConnectionString": format!("{}/{}", super::cluster::CONFIG_SET_NAME, ctx_config_address(ctx))},
        "metrics": {"cursor": {"open": {"total": server.cursors.len() as i64}}},
    })
}

fn ctx_config_address(ctx: &Ctx<'_>) -> String {
    ctx.server
        .options
        .role
        .router()
        .map(|r| r.config.address.clone())
        .unwrap_or_default()
}

/// The legacy OP_QUERY handshake on the router.
pub async fn run_legacy_query(
    server: &Arc<Server>,
    router: &Arc<Router>,
    conn: &mut Connection,
    collection: &str,
    query: Document,
) -> Reply {
    match crate::dispatch::legacy_query_command(collection, query) {
        Ok(command) => run_command(server, router, conn, command).await,
        Err(refused) => refused,
    }
}
