//! The one place every command passes through: lookup in the command table, then auth,
//! stepdown, user write blocking, retryable-write replay and error labels, applied once,
//! so each handler is only about its own command.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bson::{doc, Bson, Document, Timestamp};

use crate::auth::roles::{is_authorized, Action};
use crate::auth::scram::ScramConversation;
use crate::auth::users::AuthenticatedUser;
use crate::commands::{self, CommandSpec, Effect, OnSecondary};
use crate::cursor::CursorReply;
use crate::error::{codes, CmdResult, CommandError};
use crate::failpoint::Injected;
use crate::server::Server;
use crate::storage::Storage;
use crate::transaction::{self, TxnArgs};
use crate::wire::Reply;
use parking_lot::{Mutex, MutexGuard};

/// Per-connection state.
pub struct Connection {
    pub id: i64,
    pub users: Vec<AuthenticatedUser>,
    pub conversation: Option<ScramConversation>,
    /// Set by a handler to close the connection once its reply is written.
    pub close_after_reply: bool,
    /// The router's connection to a shard, acting for the client whose `users` it
    /// carries: the router has checked authentication and privileges already (as a real
    /// mongos does before it forwards with the user's identity).
    pub routed: bool,
    /// Set by the `closeConnection` fail point: close the connection and send no reply.
    pub close_without_reply: bool,
}

impl Connection {
    pub fn new(id: i64) -> Connection {
        Connection {
            id,
            users: Vec::new(),
            conversation: None,
            close_after_reply: false,
            routed: false,
            close_without_reply: false,
        }
    }
}

/// What a handler sees: the server, its connection, the database and the command.
pub struct Ctx<'a> {
    pub server: &'a Arc<Server>,
    pub conn: &'a mut Connection,
    pub db: String,
    pub cmd: &'a Document,
    pub name: &'a str,
    /// An insert's documents or an update's statements, moved out of the command so
    /// their documents are stored without a copy.
    pub documents: Option<Vec<Bson>>,
    /// Set by a cursor-returning handler that encoded its batch as it took it: the reply
    /// is then this `cursor` followed by the fields the handler returns.
    pub cursor: Option<CursorReply>,
    /// The workspace of the transaction this statement belongs to, if any.
    pub txn_storage: Option<Mutex<Storage>>,
}

impl Ctx<'_> {
    /// The data this command reads and writes: its transaction's workspace, or the
    /// server's storage.
    pub fn storage(&self) -> MutexGuard<'_, Storage> {
        match &self.txn_storage {
            Some(ws) => ws.lock(),
            None => self.server.storage.lock(),
        }
    }
    /// The command's first value as a collection name.
    pub fn collection(&self) -> CmdResult<String> {
        match self.cmd.get(self.name) {
            Some(Bson::String(s)) => Ok(s.clone()),
            _ => Err(CommandError::new(
                codes::INVALID_NAMESPACE,
                format!(
                    "collection name has invalid type {}",
                    self.cmd
                        .get(self.name)
                        .map(crate::storage::type_name)
                        .unwrap_or("missing")
                ),
            )),
        }
    }
    pub fn ns(&self, coll: &str) -> String {
        format!("{}.{}", self.db, coll)
    }
    pub fn roles(&self) -> Vec<crate::auth::users::RoleRef> {
        self.conn
            .users
            .iter()
            .flat_map(|u| u.roles.iter().cloned())
            .collect()
    }
    /// Whether authorization is enforced (users exist).
    pub fn auth_enabled(&self) -> bool {
        !self.server.users.is_empty()
    }
    pub fn allowed(&self, action: Action, db: &str, coll: &str) -> bool {
        !self.auth_enabled() || is_authorized(&self.roles(), action, db, coll)
    }
    pub fn require(&self, action: Action, db: &str, coll: &str) -> CmdResult<()> {
        if self.allowed(action, db, coll) {
            Ok(())
        } else {
            Err(unauthorized(self.name, db))
        }
    }
}

pub fn unauthorized(command: &str, db: &str) -> CommandError {
    CommandError::unauthorized(format!(
        "not authorized on {db} to execute command {{ {command}: ... }}"
    ))
}

/// Runs one OP_MSG command and returns its reply (success or error).
pub async fn run_command(server: &Arc<Server>, conn: &mut Connection, cmd: Document) -> Reply {
    let Some(name) = cmd.keys().next().cloned() else {
        return finish(server, Err(CommandError::failed_to_parse("empty command")));
    };
    let db = match cmd.get("$db") {
        Some(Bson::String(s)) => s.clone(),
        _ => {
            return finish(
                server,
                Err(CommandError::failed_to_parse(
                    "OP_MSG requests require a $db argument",
                )),
            )
        }
    };
    let Some(spec) = commands::lookup(&name) else {
        return finish(
            server,
            Err(CommandError::new(
                codes::COMMAND_NOT_FOUND,
                format!("no such command: '{name}'"),
            )),
        );
    };
    let mut cmd = cmd;
    let mut documents = match cmd.remove("documents") {
        Some(Bson::Array(docs)) if name == "insert" => Some(docs),
        Some(other) => {
            cmd.insert("documents", other);
            None
        }
        None => None,
    };
    if name == "update" && matches!(cmd.get("updates"), Some(Bson::Array(_))) {
        if let Some(Bson::Array(stmts)) = cmd.remove("updates") {
            documents = Some(stmts);
        }
    }
    let retry_key = retry_key(&cmd, spec);
    // Auth, primary state and write blocking apply to a retried write too; only then may
    // the stored result of its first execution be returned.
    let result = match preflight(server, conn, &db, &cmd, &name, spec) {
        Err(e) => Err(e),
        Ok(()) => {
            let replay = match &retry_key {
                Some((lsid, txn)) => match server.retry_cache.lock().get(lsid) {
                    Some((done, reply)) if done == txn => Some(Ok(reply.clone())),
                    Some((done, _)) if done > txn => Some(Err(CommandError::new(
                        codes::TRANSACTION_TOO_OLD,
                        format!("Retryable write with txnNumber {txn} is prohibited on session because a newer retryable write with txnNumber {done} has already started on this session."),
                    ))),
                    _ => None,
                },
                None => None,
            };
            let target = crate::failpoint::command_namespace(&db, &name, &cmd);
            let mut injected = server.faults.fail_points.check(&name, &target, &cmd);
            if let Some(Injected::Block(period, then)) = injected {
                tokio::time::sleep(period).await;
                injected = then.map(|i| *i);
            }
            if matches!(injected, Some(Injected::CloseConnection)) {
                conn.close_without_reply = true;
                return finish(
                    server,
                    Err(CommandError::new(
                        codes::HOST_UNREACHABLE,
                        "connection closed by the closeConnection fail point",
                    )),
                );
            }
            let txn = match TxnArgs::parse(&cmd) {
                Ok(txn) => txn,
                Err(e) => return finish(server, Err(e)),
            };
            match (replay, injected, txn) {
                (_, Some(Injected::Error(e)), _) => Err(e),
                (Some(previous), _, _) => return finish(server, previous),
                (None, _, Some(args)) => {
                    run_in_transaction(server, conn, &db, &cmd, &name, spec, documents, args).await
                }
                (None, _, None) if name == "getMore" => {
                    commands::read::get_more(server, conn, &db, &cmd).await
                }
                (None, _, None) if name == "splitChunk" => {
                    crate::sharding::chunk_admin::split_chunk_on_shard(server, &cmd)
                        .map(Reply::from)
                }
                (None, _, None) if name == "cleanupOrphaned" => {
                    crate::sharding::migration::cleanup_orphaned(server, &cmd)
                        .await
                        .map(Reply::from)
                }
                (None, injected, None) => {
                    wait_after_cluster_time(server, &cmd).await;
                    let mut ctx = Ctx {
                        server,
                        conn,
                        db: db.clone(),
                        cmd: &cmd,
                        name: &name,
                        documents: documents.take(),
                        cursor: None,
                        txn_storage: majority_snapshot(server, &db, &cmd, &name, spec),
                    };
                    run_waiting_for_transactions(&mut ctx, spec)
                        .await
                        .map(|mut reply| {
                            if let Some(Injected::WriteConcernError(wce)) = injected {
                                reply.fields.insert("writeConcernError", wce);
                            }
                            reply
                        })
                }
            }
        }
    };
    if spec.effect != Effect::Read && result.is_ok() {
        server.oplog_appended.notify_waiters();
        wait_for_majority(server, &cmd).await;
    }
    let mut result = result.map_err(|e| label(e, &cmd, &name, spec));
    if let Ok(reply) = &mut result {
        if (spec.effect == Effect::Write || writes_through_pipeline(&name, &cmd))
            && !reply.fields.contains_key("writeConcernError")
        {
            if let Some(wce) = commands::write_concern::unsatisfiable(&cmd) {
                reply.fields.insert("writeConcernError", wce);
            }
        }
    }
    if let (Some((lsid, txn)), Ok(reply)) = (retry_key, &result) {
        server.retry_cache.lock().insert(lsid, (txn, reply.clone()));
    }
    finish(server, result)
}

/// An `aggregate` ending in `$out` or `$merge` writes, and answers for its write concern
/// as any write does.
fn writes_through_pipeline(name: &str, cmd: &Document) -> bool {
    name == "aggregate"
        && cmd
            .get_array("pipeline")
            .ok()
            .and_then(|stages| stages.last())
            .and_then(Bson::as_document)
            .is_some_and(|last| last.contains_key("$out") || last.contains_key("$merge"))
}

/// Under the majority lag fault, a read with readConcern majority or snapshot (outside a
/// transaction) reads its collection as of the majority commit point.
fn majority_snapshot(
    server: &Arc<Server>,
    db: &str,
    cmd: &Document,
    name: &str,
    spec: &CommandSpec,
) -> Option<Mutex<Storage>> {
    if server.faults.majority_lag_ms.load(Ordering::SeqCst) == 0
        || spec.effect != Effect::Read
        || db == "local"
    {
        return None;
    }
    let level = cmd
        .get_document("readConcern")
        .ok()
        .and_then(|rc| rc.get_str("level").ok());
    if !matches!(level, Some("majority" | "snapshot")) {
        return None;
    }
    let is_change_stream = cmd
        .get_array("pipeline")
        .ok()
        .and_then(|p| p.first())
        .and_then(|s| s.as_document())
        .is_some_and(|s| s.contains_key("$changeStream"));
    let coll = cmd.get_str(name).ok()?;
    if is_change_stream {
        return None;
    }
    let mut storage = server.storage.lock();
    let point = storage.majority_point();
    Some(Mutex::new(storage.snapshot_of(db, coll, point)))
}

/// `readConcern: {afterClusterTime: T}`: the read waits until the data it reads covers T
/// (for majority and snapshot reads, until the majority commit point reaches T), as the
/// real server does. Bounded like the server's wait by the command's `maxTimeMS`, else
/// by a minute.
async fn wait_after_cluster_time(server: &Arc<Server>, cmd: &Document) {
    let Ok(rc) = cmd.get_document("readConcern") else {
        return;
    };
    let Ok(after) = rc.get_timestamp("afterClusterTime") else {
        return;
    };
    let majority = matches!(rc.get_str("level"), Ok("majority" | "snapshot"));
    let limit = cmd
        .get("maxTimeMS")
        .and_then(|v| match v {
            Bson::Int32(n) => Some(*n as u64),
            Bson::Int64(n) => Some(*n as u64),
            Bson::Double(f) => Some(*f as u64),
            _ => None,
        })
        .filter(|ms| *ms > 0)
        .unwrap_or(60_000);
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(limit);
    loop {
        let reached = {
            let mut storage = server.storage.lock();
            let point = if majority {
                storage.majority_point()
            } else {
                storage.cluster_time()
            };
            !crate::storage::ts_lt(point, after)
        };
        if reached || std::time::Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// `writeConcern: {w: "majority"}` under the majority lag fault: waits until the majority
/// commit point reaches the write.
async fn wait_for_majority(server: &Arc<Server>, cmd: &Document) {
    if server.faults.majority_lag_ms.load(Ordering::SeqCst) == 0 {
        return;
    }
    let majority = cmd
        .get_document("writeConcern")
        .ok()
        .is_some_and(|wc| wc.get_str("w") == Ok("majority"));
    if !majority {
        return;
    }
    let target = server.storage.lock().cluster_time();
    loop {
        let point = server.storage.lock().majority_point();
        if !crate::storage::ts_lt(point, target) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// Runs a handler; a write that touches a document an open transaction holds waits for
/// that transaction to end, then runs again (the handler changed nothing before asking to
/// wait).
async fn run_waiting_for_transactions(ctx: &mut Ctx<'_>, spec: &CommandSpec) -> CmdResult<Reply> {
    loop {
        match (spec.handler)(ctx) {
            Ok(fields) => {
                return Ok(Reply {
                    cursor: ctx.cursor.take(),
                    fields,
                })
            }
            Err(e)
                if e.labels
                    .iter()
                    .any(|l| l == transaction::WAIT_FOR_TRANSACTION) =>
            {
                let ended = ctx.server.transactions.ended.notified();
                // Bounded, so an end notified just before this wait is not missed for long.
                let _ = tokio::time::timeout(std::time::Duration::from_millis(50), ended).await;
                transaction::abort_expired(ctx.server);
            }
            Err(e) => return Err(e),
        }
    }
}

/// Runs a command of a multi-document transaction: commit, abort, or a statement on the
/// transaction's workspace.
#[allow(clippy::too_many_arguments)]
async fn run_in_transaction(
    server: &Arc<Server>,
    conn: &mut Connection,
    db: &str,
    cmd: &Document,
    name: &str,
    spec: &CommandSpec,
    documents: Option<Vec<Bson>>,
    args: TxnArgs,
) -> CmdResult<Reply> {
    transaction::check_allowed(name)?;
    let fields = match name {
        "commitTransaction" => transaction::commit(server, &args)?,
        "abortTransaction" => transaction::abort(server, &args)?,
        "getMore" => return commands::read::get_more(server, conn, db, cmd).await,
        _ => {
            let mut ws = transaction::begin_statement(server, &args)?;
            if let Ok(coll) = cmd.get_str(name) {
                transaction::copy_collection(server, &mut ws, db, coll);
            }
            let ops_before = ws.storage.oplog.entries.len();
            let mut ctx = Ctx {
                server,
                conn,
                db: db.to_string(),
                cmd,
                name,
                documents,
                cursor: None,
                txn_storage: Some(Mutex::new(std::mem::take(&mut ws.storage))),
            };
            let result = (spec.handler)(&mut ctx).map(|fields| Reply {
                cursor: ctx.cursor.take(),
                fields,
            });
            if let Some(storage) = ctx.txn_storage.take() {
                ws.storage = storage.into_inner();
            }
            // A failed statement aborts its transaction, as on the server.
            let failed = match &result {
                Ok(r) => r.fields.contains_key("writeErrors"),
                Err(_) => true,
            };
            transaction::finish_statement(server, &args, ws, ops_before, failed)?;
            return result;
        }
    };
    Ok(Reply {
        cursor: None,
        fields,
    })
}

/// Checks done before any handler: authentication, privileges, primary state, write blocking.
pub fn preflight(
    server: &Arc<Server>,
    conn: &Connection,
    db: &str,
    cmd: &Document,
    name: &str,
    spec: &CommandSpec,
) -> CmdResult<()> {
    let auth_enabled = !server.users.is_empty();
    if auth_enabled && !spec.no_auth && !conn.routed {
        if conn.users.is_empty() {
            return Err(CommandError::unauthorized(format!(
                "Command {name} requires authentication"
            )));
        }
        if let Some(action) = spec.action {
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
    }
    if !server.is_primary() {
        match spec.on_secondary {
            OnSecondary::Always => {}
            OnSecondary::OptIn if secondary_ok(cmd) => {}
            OnSecondary::OptIn => {
                return Err(CommandError::new(
                    codes::NOT_PRIMARY_NO_SECONDARY_OK,
                    "not primary and secondaryOk=false",
                ))
            }
            OnSecondary::Never => {
                return Err(CommandError::new(
                    codes::NOT_WRITABLE_PRIMARY,
                    "not primary",
                ))
            }
        }
    }
    if spec.effect == Effect::Write
        && server.write_block.load(Ordering::SeqCst)
        && !matches!(db, "admin" | "config" | "local")
    {
        let roles: Vec<_> = conn
            .users
            .iter()
            .flat_map(|u| u.roles.iter().cloned())
            .collect();
        let may_bypass = (auth_enabled || conn.routed)
            && is_authorized(&roles, Action::BypassWriteBlockingMode, db, "");
        if !may_bypass {
            return Err(CommandError::new(
                codes::USER_WRITES_BLOCKED,
                "User writes blocked",
            ));
        }
    }
    Ok(())
}

/// Whether the client lets a secondary answer: OP_MSG carries this as a `$readPreference`
/// whose mode is not `primary`. A `getMore` has none and follows its cursor's command.
fn secondary_ok(cmd: &Document) -> bool {
    cmd.get_document("$readPreference")
        .ok()
        .and_then(|rp| rp.get_str("mode").ok())
        .is_some_and(|mode| mode != "primary")
}

/// Key of a retryable write: (lsid.id bytes, txnNumber), only for writes outside transactions.
fn retry_key(cmd: &Document, spec: &CommandSpec) -> Option<(Vec<u8>, i64)> {
    if spec.effect != Effect::Write || cmd.contains_key("autocommit") {
        return None;
    }
    let txn = match cmd.get("txnNumber")? {
        Bson::Int64(n) => *n,
        Bson::Int32(n) => *n as i64,
        _ => return None,
    };
    let lsid = cmd.get_document("lsid").ok()?;
    let bytes = bson::to_vec(lsid).ok()?;
    Some((bytes, txn))
}

/// Adds the error labels the real server adds.
pub fn label(mut e: CommandError, cmd: &Document, name: &str, spec: &CommandSpec) -> CommandError {
    let is_retryable_write = spec.effect == Effect::Write
        && cmd.contains_key("txnNumber")
        && !cmd.contains_key("autocommit");
    if is_retryable_write && codes::is_retryable_write(e.code) {
        e = e.with_label("RetryableWriteError");
    }
    let is_change_stream = match name {
        "aggregate" => cmd
            .get_array("pipeline")
            .ok()
            .and_then(|p| p.first())
            .and_then(|s| s.as_document())
            .is_some_and(|s| s.contains_key("$changeStream")),
        "getMore" => e.labels.iter().any(|l| l == "ChangeStreamCursor"),
        _ => false,
    };
    e.labels.retain(|l| l != "ChangeStreamCursor");
    if is_change_stream
        && codes::is_resumable_change_stream(e.code)
        && e.code != codes::CURSOR_NOT_FOUND
    {
        e = e.with_label("ResumableChangeStreamError");
    }
    if matches!(
        e.code,
        codes::CHANGE_STREAM_HISTORY_LOST | codes::CHANGE_STREAM_FATAL_ERROR
    ) {
        e = e.with_label("NonResumableChangeStreamError");
    }
    e
}

/// Adds `ok`, `$clusterTime` and `operationTime` to a reply.
pub fn finish(server: &Arc<Server>, result: CmdResult<Reply>) -> Reply {
    let mut reply = match result {
        Ok(mut r) => {
            if !r.fields.contains_key("ok") {
                r.fields.insert("ok", 1.0);
            }
            r
        }
        Err(e) => e.to_reply().into(),
    };
    let ts = server.storage.lock().cluster_time();
    append_cluster_time(&mut reply.fields, ts);
    reply
}

pub fn append_cluster_time(reply: &mut Document, ts: Timestamp) {
    reply.insert(
        "$clusterTime",
        doc! {
            "clusterTime": ts,
            "signature": {"hash": bson::Binary { subtype: bson::spec::BinarySubtype::Generic, bytes: vec![0u8; 20] }, "keyId": 0i64},
        },
    );
    reply.insert("operationTime", ts);
}

/// The legacy OP_QUERY handshake (`admin.$cmd` with `ismaster`/`isMaster`/`hello`).
pub async fn run_legacy_query(
    server: &Arc<Server>,
    conn: &mut Connection,
    collection: &str,
    query: Document,
) -> Reply {
    match legacy_query_command(collection, query) {
        Ok(command) => run_command(server, conn, command).await,
        Err(refused) => refused,
    }
}

/// The command an OP_QUERY carries, with its `$db`; only the handshake is accepted
/// that way (as on 6.0+), anything else is refused with the server's reply.
pub fn legacy_query_command(collection: &str, mut query: Document) -> Result<Document, Reply> {
    if let Ok(inner) = query.get_document("$query") {
        query = inner.clone();
    }
    let name = query.keys().next().cloned().unwrap_or_default();
    if !collection.ends_with(".$cmd") || !matches!(name.as_str(), "ismaster" | "isMaster" | "hello")
    {
        return Err(CommandError::new(
            codes::UNSUPPORTED_OP_QUERY_COMMAND,
            format!(
                "Unsupported OP_QUERY command: {name}. The client driver may require an upgrade."
            ),
        )
        .to_reply()
        .into());
    }
    let db = collection.trim_end_matches(".$cmd").to_string();
    query.insert("$db", db);
    Ok(query)
}
