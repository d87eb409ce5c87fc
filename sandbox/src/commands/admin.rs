//! Server-wide commands: ping, buildInfo, parameters and FCV, status, sessions, users,
//! write blocking, oplog notes, statistics and fault injection.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bson::{doc, Bson, DateTime, Document};
use md5::{Digest, Md5};

use crate::auth::roles::Action;
use crate::auth::scram::Mechanism;
use crate::auth::users::parse_roles;
use crate::dispatch::{unauthorized, Ctx};
use crate::error::{codes, CmdResult, CommandError};
use crate::storage::{Collection, INTERNAL_DBS};

pub fn ping(_ctx: &mut Ctx<'_>) -> CmdResult<Document> {
    Ok(doc! {})
}

pub fn build_info(ctx: &mut Ctx<'_>) -> CmdResult<Document> {
    let (a, b, c) = ctx.server.version_parts();
    Ok(doc! {
        "version": ctx.server.options.version.clone(),
        "gitVersion": "ferry-sandbox",
        "versionArray": [a, b, c, 0],
        "bits": 64,
        "debug": false,
        "maxBsonObjectSize": crate::wire::MAX_BSON_SIZE as i32,
        "storageEngines": ["inMemory"],
        "modules": [],
        "sandbox": true,
    })
}

pub fn end_sessions(_ctx: &mut Ctx<'_>) -> CmdResult<Document> {
    Ok(doc! {})
}

/// `killSessions: [{id}, ...]` kills the cursors opened in those sessions (an empty list:
/// in every session), so their next getMore fails with 43 CursorNotFound.
pub fn kill_sessions(ctx: &mut Ctx<'_>) -> CmdResult<Document> {
    let sessions = ctx.cmd.get_array("killSessions").map_err(|_| {
        CommandError::type_mismatch("'killSessions' must be an array of {id: UUID}")
    })?;
    let ids: Vec<bson::Binary> = sessions
        .iter()
        .filter_map(|s| match s.as_document()?.get("id")? {
            Bson::Binary(id) => Some(id.clone()),
            _ => None,
        })
        .collect();
    let killed = if sessions.is_empty() {
        None
    } else {
        Some(&ids[..])
    };
    ctx.server.cursors.kill_sessions(killed);
    Ok(doc! {})
}

pub fn set_fcv(ctx: &mut Ctx<'_>) -> CmdResult<Document> {
    if ctx.db != "admin" {
        return Err(CommandError::unauthorized(
            "setFeatureCompatibilityVersion may only be run against the admin database.",
        ));
    }
    let target = ctx
        .cmd
        .get_str("setFeatureCompatibilityVersion")
        .map_err(|_| {
            CommandError::type_mismatch("setFeatureCompatibilityVersion must be a string")
        })?;
    let (major, minor, _) = ctx.server.version_parts();
    let current = format!("{major}.{minor}");
    let previous = match (major, minor) {
        (7, 0) => "6.0".to_string(),
        (8, 0) => "7.0".to_string(),
        (6, 0) => "5.0".to_string(),
        (m, n) => format!("{m}.{}", n.saturating_sub(1)),
    };
    if target != current && target != previous {
        return Err(CommandError::bad_value(format!(
            "Invalid feature compatibility version value '{target}'; expected '{previous}' or '{current}'"
        )));
    }
    if major >= 7 && !ctx.cmd.get_bool("confirm").unwrap_or(false) {
        return Err(CommandError::new(
            7369100,
            "Once you have upgraded to the new FCV, you will not be able to downgrade without support assistance. Please re-run this command with 'confirm: true'",
        ));
    }
    *ctx.server.fcv.lock() = target.to_string();
    Ok(doc! {})
}

pub fn server_status(ctx: &mut Ctx<'_>) -> CmdResult<Document> {
    let server = ctx.server;
    let uptime = server.started.elapsed();
    let primary = server.is_primary();
    let (entries, ts) = {
        let mut s = server.storage.lock();
        (s.oplog.entries.len(), s.cluster_time())
    };
    Ok(doc! {
        "host": server.address.clone(),
        "version": server.options.version.clone(),
        "process": "mongod",
        "pid": std::process::id() as i64,
        "uptime": uptime.as_secs_f64(),
        "uptimeMillis": uptime.as_millis() as i64,
        "localTime": DateTime::now(),
        "connections": {"current": 0, "available": 51200, "totalCreated": server.next_connection_id.load(Ordering::SeqCst) - 1},
        "repl": {"setName": server.options.set_name.clone(), "isWritablePrimary": primary, "secondary": !primary,
                 "hosts": [server.address.clone()], "me": server.address.clone(), "lastWrite": {"opTime": {"ts": ts, "t": server.term.load(Ordering::SeqCst)}}},
        "storageEngine": {"name": "inMemory", "supportsCommittedReads": true, "persistent": false},
        "oplog": {"entries": entries as i64},
        "metrics": {"cursor": {"open": {"total": server.cursors.len() as i64}}},
    })
}

pub fn repl_set_get_status(ctx: &mut Ctx<'_>) -> CmdResult<Document> {
    let server = ctx.server;
    let primary = server.is_primary();
    let term = server.term.load(Ordering::SeqCst);
    let (ts, majority) = {
        let mut storage = server.storage.lock();
        (storage.cluster_time(), storage.majority_point())
    };
    let optime = doc! {"ts": ts, "t": term};
    let committed = doc! {"ts": majority, "t": term};
    let now = DateTime::now();
    Ok(doc! {
        "set": server.options.set_name.clone(),
        "date": now,
        "myState": if primary { 1 } else { 2 },
        "term": term,
        "heartbeatIntervalMillis": 2000i64,
        "optimes": {"lastCommittedOpTime": committed.clone(), "readConcernMajorityOpTime": committed, "appliedOpTime": optime.clone(), "durableOpTime": optime.clone()},
        "members": [{
            "_id": 0, "name": server.address.clone(), "health": 1.0, "state": if primary { 1 } else { 2 },
            "stateStr": if primary { "PRIMARY" } else { "SECONDARY" }, "uptime": server.started.elapsed().as_secs() as i64,
            "optime": optime, "optimeDate": now, "self": true, "electionId": server.election_id(),
        }],
    })
}

fn database_size(colls: &std::collections::BTreeMap<String, Collection>) -> i64 {
    colls.values().map(|c| c.data_size() as i64).sum()
}

pub fn list_databases(ctx: &mut Ctx<'_>) -> CmdResult<Document> {
    if ctx.db != "admin" {
        return Err(CommandError::unauthorized(
            "listDatabases may only be run against the admin database.",
        ));
    }
    let all = ctx.allowed(Action::ListDatabases, "admin", "");
    let name_only = ctx.cmd.get_bool("nameOnly").unwrap_or(false);
    let filter = match ctx.cmd.get_document("filter") {
        Ok(f) => Some(crate::query::matcher::Matcher::new(f)?),
        Err(_) => None,
    };
    let storage = ctx.server.storage.lock();
    let mut names: Vec<String> = storage.dbs.keys().cloned().collect();
    for internal in INTERNAL_DBS {
        if !names.iter().any(|n| n == internal) {
            names.push(internal.to_string());
        }
    }
    names.sort();
    let mut dbs = Vec::new();
    let mut total = 0i64;
    for name in names {
        if !all && !ctx.allowed(Action::Find, &name, "") {
            continue;
        }
        let (size, empty) = match storage.dbs.get(&name) {
            Some(d) => (
                database_size(&d.collections),
                d.collections.values().all(|c| c.docs.is_empty()),
            ),
            None => (if name == "local" { 4096 } else { 0 }, name != "local"),
        };
        let entry = if name_only {
            doc! {"name": name}
        } else {
            doc! {"name": name, "sizeOnDisk": size, "empty": empty}
        };
        if let Some(m) = &filter {
            if !m.matches(&entry) {
                continue;
            }
        }
        total += size;
        dbs.push(entry);
    }
    if name_only {
        return Ok(doc! {"databases": dbs});
    }
    Ok(doc! {"databases": dbs, "totalSize": total, "totalSizeMb": total / (1024 * 1024)})
}

fn md5_hex(parts: impl Iterator<Item = Vec<u8>>) -> String {
    let mut h = Md5::new();
    for p in parts {
        h.update(&p);
    }
    hex::encode(h.finalize())
}

pub fn db_hash(ctx: &mut Ctx<'_>) -> CmdResult<Document> {
    let wanted: Option<Vec<String>> = ctx.cmd.get_array("collections").ok().map(|a| {
        a.iter()
            .filter_map(|v| v.as_str().map(String::from))
            .collect()
    });
    let storage = ctx.server.storage.lock();
    let mut collections = Document::new();
    let mut uuids = Document::new();
    if let Some(db) = storage.dbs.get(&ctx.db) {
        for (name, c) in &db.collections {
            if c.is_view() || wanted.as_ref().is_some_and(|w| !w.contains(name)) {
                continue;
            }
            let hash = md5_hex(
                c.docs
                    .values()
                    .map(|d| bson::to_vec(&**d).unwrap_or_default()),
            );
            collections.insert(name.clone(), hash);
            uuids.insert(name.clone(), c.uuid.clone());
        }
    }
    let all = md5_hex(
        collections
            .iter()
            .map(|(k, v)| format!("{k}{v}").into_bytes()),
    );
    Ok(
        doc! {"host": ctx.server.address.clone(), "collections": collections, "capped": [], "uuids": uuids, "md5": all},
    )
}

pub fn db_stats(ctx: &mut Ctx<'_>) -> CmdResult<Document> {
    let storage = ctx.server.storage.lock();
    let (mut colls, mut views, mut objects, mut size, mut indexes) = (0i64, 0i64, 0i64, 0i64, 0i64);
    if let Some(db) = storage.dbs.get(&ctx.db) {
        for c in db.collections.values() {
            if c.is_view() {
                views += 1;
                continue;
            }
            colls += 1;
            objects += c.docs.len() as i64;
            size += c.data_size() as i64;
            indexes += c.indexes.len() as i64;
        }
    }
    Ok(
        doc! {"db": ctx.db.clone(), "collections": colls, "views": views, "objects": objects,
        "avgObjSize": if objects > 0 { size as f64 / objects as f64 } else { 0.0 },
        "dataSize": size as f64, "storageSize": size as f64, "indexes": indexes, "indexSize": 0.0, "totalSize": size as f64},
    )
}

/// Storage statistics of one collection, shared by collStats and the $collStats stage.
pub fn collection_stats(ctx: &Ctx<'_>, coll: &str) -> CmdResult<Document> {
    let storage = ctx.server.storage.lock();
    let c = storage.collection(&ctx.db, coll).ok_or_else(|| {
        CommandError::ns_not_found(format!("Collection [{}.{}] not found.", ctx.db, coll))
    })?;
    if c.is_view() {
        return Err(CommandError::new(
            codes::COMMAND_NOT_SUPPORTED_ON_VIEW,
            format!("Namespace {}.{coll} is a view, not a collection", ctx.db),
        ));
    }
    let count = c.docs.len() as i64;
    let size = c.data_size() as i64;
    let mut index_sizes = Document::new();
    for i in &c.indexes {
        index_sizes.insert(i.name.clone(), 4096i64);
    }
    Ok(doc! {
        "ns": format!("{}.{}", ctx.db, coll),
        "size": size,
        "count": count,
        "avgObjSize": if count > 0 { size / count } else { 0 },
        "storageSize": size,
        "capped": c.options.get_bool("capped").unwrap_or(false),
        "nindexes": c.indexes.len() as i32,
        "totalIndexSize": 4096 * c.indexes.len() as i64,
        "indexSizes": index_sizes,
    })
}

pub fn coll_stats(ctx: &mut Ctx<'_>) -> CmdResult<Document> {
    let coll = ctx.collection()?;
    collection_stats(ctx, &coll)
}

pub fn users_info(ctx: &mut Ctx<'_>) -> CmdResult<Document> {
    let users = match ctx.cmd.get("usersInfo") {
        Some(Bson::String(name)) => ctx.server.users.users_info(&ctx.db, Some(name)),
        Some(Bson::Document(d)) if d.get_bool("forAllDBs") == Ok(true) => {
            if ctx.db != "admin" {
                return Err(CommandError::unauthorized(
                    "'usersInfo: {forAllDBs: true}' is only supported on the admin database",
                ));
            }
            ctx.server.users.all_users_info()
        }
        Some(Bson::Document(d)) => {
            let db = d.get_str("db").unwrap_or(&ctx.db).to_string();
            let user = d.get_str("user").ok();
            ctx.server.users.users_info(&db, user)
        }
        _ => ctx.server.users.users_info(&ctx.db, None),
    };
    Ok(doc! {"users": users})
}

pub fn create_user(ctx: &mut Ctx<'_>) -> CmdResult<Document> {
    let name = ctx.collection()?;
    let pwd = ctx
        .cmd
        .get_str("pwd")
        .map_err(|_| CommandError::bad_value("Must provide a 'pwd' field for all user documents, except those with '$external' as the user's source db"))?;
    let roles = parse_roles(
        ctx.cmd.get("roles").unwrap_or(&Bson::Array(vec![])),
        &ctx.db,
    )?;
    let mechanisms = match ctx.cmd.get_array("mechanisms") {
        Ok(list) => list
            .iter()
            .filter_map(|m| m.as_str())
            .map(Mechanism::parse)
            .collect::<CmdResult<Vec<_>>>()?,
        Err(_) => vec![Mechanism::ScramSha1, Mechanism::ScramSha256],
    };
    ctx.server
        .users
        .create_user(&ctx.db, &name, pwd, roles, &mechanisms)?;
    Ok(doc! {})
}

pub fn drop_user(ctx: &mut Ctx<'_>) -> CmdResult<Document> {
    let name = ctx.collection()?;
    ctx.server.users.drop_user(&ctx.db, &name)?;
    Ok(doc! {})
}

pub fn set_user_write_block_mode(ctx: &mut Ctx<'_>) -> CmdResult<Document> {
    if ctx.db != "admin" {
        return Err(CommandError::unauthorized(
            "setUserWriteBlockMode may only be run against the admin database.",
        ));
    }
    let global = ctx.cmd.get_bool("global").map_err(|_| {
        CommandError::new(
            codes::MISSING_REQUIRED_FIELD,
            "BSON field 'setUserWriteBlockMode.global' is missing but a required field",
        )
    })?;
    ctx.server.write_block.store(global, Ordering::SeqCst);
    Ok(doc! {})
}

pub fn append_oplog_note(ctx: &mut Ctx<'_>) -> CmdResult<Document> {
    if ctx.db != "admin" {
        return Err(CommandError::unauthorized(
            "appendOplogNote may only be run against the admin database.",
        ));
    }
    let data = ctx
        .cmd
        .get_document("data")
        .map_err(|_| CommandError::new(codes::NO_SUCH_KEY, "Missing required field 'data'"))?
        .clone();
    ctx.server.storage.lock().append_noop(data);
    Ok(doc! {})
}

pub fn repl_set_step_down(ctx: &mut Ctx<'_>) -> CmdResult<Document> {
    let secs = ctx
        .cmd
        .get("replSetStepDown")
        .and_then(number)
        .unwrap_or(60.0);
    if !ctx.server.is_primary() {
        return Err(CommandError::new(
            codes::NOT_WRITABLE_PRIMARY,
            "not primary so can't step down",
        ));
    }
    schedule_step_down(ctx, Duration::from_secs_f64(secs.max(0.0)));
    Ok(doc! {})
}

/// Steps down just after the reply is written, so the caller sees its ok.
fn schedule_step_down(ctx: &Ctx<'_>, period: Duration) {
    let server = ctx.server.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(20)).await;
        server.step_down(period);
    });
}

fn number(v: &Bson) -> Option<f64> {
    match v {
        Bson::Int32(i) => Some(*i as f64),
        Bson::Int64(i) => Some(*i as f64),
        Bson::Double(d) => Some(*d),
        _ => None,
    }
}

/// `{sandboxFault: 1, stepDownSecs?, dropConnections?, latencyMs?, truncateOplogKeepLast?}`:
/// fault injection for out-of-process tests.
pub fn sandbox_fault(ctx: &mut Ctx<'_>) -> CmdResult<Document> {
    if ctx.db != "admin" {
        return Err(unauthorized("sandboxFault", &ctx.db));
    }
    let mut applied = Vec::new();
    if let Some(ms) = ctx.cmd.get("latencyMs").and_then(number) {
        ctx.server
            .set_latency(Duration::from_secs_f64(ms.max(0.0) / 1000.0));
        applied.push("latencyMs");
    }
    if let Some(ms) = ctx.cmd.get("majorityLagMs").and_then(number) {
        ctx.server
            .set_majority_lag(Duration::from_secs_f64(ms.max(0.0) / 1000.0));
        applied.push("majorityLagMs");
    }
    if let Some(keep) = ctx.cmd.get("truncateOplogKeepLast").and_then(number) {
        ctx.server.truncate_oplog(keep.max(0.0) as usize);
        applied.push("truncateOplogKeepLast");
    }
    if let Some(secs) = ctx.cmd.get("stepDownSecs").and_then(number) {
        schedule_step_down(ctx, Duration::from_secs_f64(secs.max(0.0)));
        applied.push("stepDownSecs");
    }
    if ctx.cmd.get_bool("dropConnections").unwrap_or(false) {
        let server = ctx.server.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            server.drop_connections();
        });
        applied.push("dropConnections");
    }
    if applied.is_empty() {
        return Err(CommandError::bad_value(
            "sandboxFault needs one of stepDownSecs, dropConnections, latencyMs, majorityLagMs, truncateOplogKeepLast",
        ));
    }
    Ok(doc! {"applied": applied})
}

/// `{configureFailPoint: "failCommand", mode, data}` (admin only), as on a real server
/// with test commands enabled.
pub fn configure_fail_point(ctx: &mut Ctx<'_>) -> CmdResult<Document> {
    if ctx.db != "admin" {
        return Err(unauthorized("configureFailPoint", &ctx.db));
    }
    ctx.server.faults.fail_points.configure(ctx.cmd)
}
