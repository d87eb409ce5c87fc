//! Multi-document transactions on the replica set: sessions (`lsid` + `txnNumber`,
//! `autocommit: false`, `startTransaction` on the first statement), snapshot isolation,
//! write conflicts, commit as `applyOps` oplog entries, abort without a trace.
//!
//! A transaction works on a private [`Storage`] (its workspace): each collection it
//! touches is copied into it as of the transaction's snapshot (the cluster time of its
//! first statement, read through [`crate::versions`]), and its statements run there with
//! the ordinary handlers, so its reads see the snapshot plus its own writes and its
//! workspace oplog lists its operations in order. Each document it writes is locked in the
//! shared storage: another transaction writing it, or a document written by someone else
//! after the snapshot, fails with 112 WriteConflict (the transaction is aborted); a
//! non-transactional write to it waits until the transaction ends. Commit installs the
//! final documents and appends the operations as `applyOps` entries of at most 16 MB each
//! (all but the last carrying `partialTxn: true`, each linked to the previous one by
//! `prevOpTime`), as the real server writes them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bson::{doc, spec::BinarySubtype, Binary, Bson, DateTime, Document, Timestamp};
use sha2::{Digest, Sha256};

use crate::error::{codes, CmdResult, CommandError};
use crate::query::order::OrdBson;
use crate::server::Server;
use crate::storage::{encoded_size, EventKind, OplogEntry, Storage, TxnStamp};

/// 112 WriteConflict.
pub const WRITE_CONFLICT: i32 = 112;
/// 251 NoSuchTransaction.
pub const NO_SUCH_TRANSACTION: i32 = 251;
/// 256 TransactionCommitted.
pub const TRANSACTION_COMMITTED: i32 = 256;
/// 263 OperationNotSupportedInTransaction.
pub const OPERATION_NOT_SUPPORTED_IN_TRANSACTION: i32 = 263;
/// Label a handler puts on a non-transactional write that must wait for a transaction
/// holding one of its documents; the dispatcher waits and runs the command again. Never
/// sent to a client.
pub const WAIT_FOR_TRANSACTION: &str = "SandboxWaitForTransaction";

/// Budget of operations in one `applyOps` entry: the 16 MB BSON limit less room for the
/// entry's own fields.
const APPLY_OPS_MAX_BYTES: usize = 16 * 1024 * 1024 - 16 * 1024;
/// The server's `transactionLifetimeLimitSeconds` default: an older transaction is
/// aborted when a write waits for it.
const TRANSACTION_LIFETIME: Duration = Duration::from_secs(60);

/// Commands a transaction may run; any other fails with 263.
const ALLOWED_IN_TRANSACTION: &[&str] = &[
    "find",
    "aggregate",
    "distinct",
    "insert",
    "update",
    "delete",
    "findAndModify",
    "findandmodify",
    "getMore",
    "killCursors",
    "commitTransaction",
    "abortTransaction",
];

/// Documents held by open transactions: (db, coll, `_id`) -> transaction id.
#[derive(Debug, Default)]
pub struct Locks {
    held: BTreeMap<(String, String, OrdBson), u64>,
}

impl Locks {
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
    pub fn holder(&self, db: &str, coll: &str, id: &OrdBson) -> Option<u64> {
        if self.held.is_empty() {
            return None;
        }
        self.held
            .get(&(db.to_string(), coll.to_string(), id.clone()))
            .copied()
    }
    fn release(&mut self, keys: &BTreeSet<(String, String, OrdBson)>) {
        for k in keys {
            self.held.remove(k);
        }
    }
}

/// One open transaction's private state.
pub struct Workspace {
    id: u64,
    lsid: Arc<Document>,
    txn_number: i64,
    snapshot: Timestamp,
    /// The touched collections as of the snapshot, with the transaction's writes.
    pub storage: Storage,
    /// Collections already copied into the workspace (or found missing).
    copied: BTreeSet<(String, String)>,
    locked: BTreeSet<(String, String, OrdBson)>,
    started: Instant,
}

enum State {
    /// Open, its workspace here between statements.
    Open(Box<Workspace>),
    /// Open, a statement running on its workspace.
    Running,
    Committed,
    Aborted,
}

struct Session {
    txn_number: i64,
    state: State,
}

/// Sessions' transactions, keyed by the `lsid` bytes.
#[derive(Default)]
pub struct Transactions {
    sessions: parking_lot::Mutex<HashMap<Vec<u8>, Session>>,
    next_id: std::sync::atomic::AtomicU64,
    /// Woken whenever a transaction commits or aborts (writes waiting on its documents).
    pub ended: tokio::sync::Notify,
}

/// The transaction fields of a command.
pub struct TxnArgs {
    key: Vec<u8>,
    lsid: Document,
    txn_number: i64,
    start: bool,
}

impl TxnArgs {
    /// The transaction fields, or None for a command outside a transaction.
    pub fn parse(cmd: &Document) -> CmdResult<Option<TxnArgs>> {
        let Some(autocommit) = cmd.get("autocommit") else {
            return Ok(None);
        };
        if autocommit != &Bson::Boolean(false) {
            return Err(CommandError::new(
                codes::INVALID_OPTIONS,
                "Specifying autocommit=true is not allowed.",
            ));
        }
        let lsid = cmd.get_document("lsid").map_err(|_| {
            CommandError::new(
                codes::INVALID_OPTIONS,
                "Transaction requires a session ID (lsid)",
            )
        })?;
        let txn_number = match cmd.get("txnNumber") {
            Some(Bson::Int64(n)) => *n,
            Some(Bson::Int32(n)) => i64::from(*n),
            _ => {
                return Err(CommandError::new(
                    codes::INVALID_OPTIONS,
                    "'autocommit' field requires a transaction number to also be specified",
                ))
            }
        };
        let start = match cmd.get("startTransaction") {
            None => false,
            Some(Bson::Boolean(true)) => true,
            Some(_) => {
                return Err(CommandError::new(
                    codes::INVALID_OPTIONS,
                    "Specifying startTransaction=false is not allowed.",
                ))
            }
        };
        let id = lsid.get("id").cloned().unwrap_or(Bson::Null);
        let key = bson::to_vec(&doc! {"id": id})
            .map_err(|e| CommandError::bad_value(format!("lsid cannot be encoded: {e}")))?;
        Ok(Some(TxnArgs {
            key,
            lsid: lsid.clone(),
            txn_number,
            start,
        }))
    }
}

/// `{id, uid}` as the oplog and change events show a session: `uid` is the SHA-256 of
/// the authenticated user's name (empty without authentication).
fn session_document(lsid: &Document) -> Document {
    let uid = Sha256::digest(b"").to_vec();
    doc! {
        "id": lsid.get("id").cloned().unwrap_or(Bson::Null),
        "uid": Binary { subtype: BinarySubtype::Generic, bytes: uid },
    }
}

fn no_such_transaction(txn_number: i64) -> CommandError {
    CommandError::new(
        NO_SUCH_TRANSACTION,
        format!("Transaction with {{ txnNumber: {txn_number} }} has been aborted or does not exist; start a new transaction"),
    )
    .with_label("TransientTransactionError")
}

fn write_conflict() -> CommandError {
    CommandError::new(
        WRITE_CONFLICT,
        "Write conflict during plan execution and yielding is disabled. :: Please retry your operation or multi-document transaction.",
    )
    .with_label("TransientTransactionError")
}

/// Whether the command may run in a transaction.
pub fn check_allowed(name: &str) -> CmdResult<()> {
    if ALLOWED_IN_TRANSACTION.contains(&name) {
        return Ok(());
    }
    Err(CommandError::new(
        OPERATION_NOT_SUPPORTED_IN_TRANSACTION,
        format!("Cannot run '{name}' in a multi-document transaction."),
    ))
}

/// Takes the workspace of the transaction a statement belongs to (starting it on
/// `startTransaction`); the caller runs the statement on it and hands it back with
/// [`finish_statement`].
pub fn begin_statement(server: &Server, args: &TxnArgs) -> CmdResult<Box<Workspace>> {
    let mut sessions = server.transactions.sessions.lock();
    let session = sessions.get_mut(&args.key);
    if args.start {
        if let Some(s) = &session {
            if s.txn_number > args.txn_number {
                return Err(CommandError::new(
                    codes::TRANSACTION_TOO_OLD,
                    format!("Cannot start transaction {} on session because a newer transaction {} has already started", args.txn_number, s.txn_number),
                ));
            }
            if s.txn_number == args.txn_number {
                return Err(CommandError::new(
                    codes::CONFLICTING_OPERATION_IN_PROGRESS,
                    format!(
                        "Cannot start transaction {} on session because it has already been used",
                        args.txn_number
                    ),
                ));
            }
        }
        // A newer transaction on the session aborts the open one.
        if let Some(old) = sessions.remove(&args.key) {
            if let State::Open(ws) = old.state {
                release(server, &ws);
            }
        }
        let snapshot = {
            let mut storage = server.storage.lock();
            let ts = storage.cluster_time();
            storage.versions.pin(ts);
            ts
        };
        let id = server
            .transactions
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        sessions.insert(
            args.key.clone(),
            Session {
                txn_number: args.txn_number,
                state: State::Running,
            },
        );
        return Ok(Box::new(Workspace {
            id,
            lsid: Arc::new(session_document(&args.lsid)),
            txn_number: args.txn_number,
            snapshot,
            storage: Storage::workspace(),
            copied: BTreeSet::new(),
            locked: BTreeSet::new(),
            started: Instant::now(),
        }));
    }
    let Some(session) = session else {
        return Err(no_such_transaction(args.txn_number));
    };
    if session.txn_number != args.txn_number {
        return Err(no_such_transaction(args.txn_number));
    }
    match std::mem::replace(&mut session.state, State::Running) {
        State::Open(ws) => Ok(ws),
        other => {
            let busy = matches!(other, State::Running);
            session.state = other;
            if busy {
                return Err(CommandError::new(
                    codes::CONFLICTING_OPERATION_IN_PROGRESS,
                    "Cannot run a statement while another one of the same transaction is running",
                ));
            }
            Err(no_such_transaction(args.txn_number))
        }
    }
}

/// Copies `db.coll` into the workspace as of its snapshot, once.
pub fn copy_collection(server: &Server, ws: &mut Workspace, db: &str, coll: &str) {
    if !ws.copied.insert((db.to_string(), coll.to_string())) {
        return;
    }
    let shared = server.storage.lock();
    let Some(c) = shared.collection(db, coll) else {
        return;
    };
    let docs = shared
        .versions
        .docs_at(db, coll, &c.docs, ws.snapshot)
        .unwrap_or_else(|| c.docs.clone());
    let snapshot = c.with_docs(docs);
    ws.storage
        .dbs
        .entry(db.to_string())
        .or_default()
        .collections
        .insert(coll.to_string(), snapshot);
}

/// After a statement ran on the workspace: locks the documents it wrote (failing with
/// WriteConflict when another transaction holds one, or one was written after the
/// snapshot), then puts the workspace back, or aborts the transaction when the statement
/// failed.
pub fn finish_statement(
    server: &Server,
    args: &TxnArgs,
    mut ws: Box<Workspace>,
    ops_before: usize,
    failed: bool,
) -> CmdResult<()> {
    let conflict = if failed {
        false
    } else {
        let mut shared = server.storage.lock();
        let mut conflict = false;
        for e in ws.storage.oplog.entries.iter().skip(ops_before) {
            let Some(id) = e.document_key.as_ref().and_then(|k| k.get("_id")) else {
                continue;
            };
            let key = (e.db.clone(), e.coll.clone(), OrdBson(id.clone()));
            if ws.locked.contains(&key) {
                continue;
            }
            let held_by_other = shared
                .locks
                .holder(&key.0, &key.1, &key.2)
                .is_some_and(|h| h != ws.id);
            if held_by_other
                || shared
                    .versions
                    .written_after(&key.0, &key.1, &key.2, ws.snapshot)
            {
                conflict = true;
                break;
            }
            shared.locks.held.insert(key.clone(), ws.id);
            ws.locked.insert(key);
        }
        conflict
    };
    let mut sessions = server.transactions.sessions.lock();
    let session = sessions.get_mut(&args.key);
    if failed || conflict {
        release(server, &ws);
        if let Some(s) = session {
            s.state = State::Aborted;
        }
        drop(sessions);
        server.transactions.ended.notify_waiters();
        return if conflict {
            Err(write_conflict())
        } else {
            Ok(())
        };
    }
    match session {
        Some(s) if s.txn_number == args.txn_number => s.state = State::Open(ws),
        // The session moved on meanwhile (a newer transaction started): drop this one.
        _ => release(server, &ws),
    }
    Ok(())
}

/// Releases a transaction's locks and snapshot.
fn release(server: &Server, ws: &Workspace) {
    let mut shared = server.storage.lock();
    shared.locks.release(&ws.locked);
    shared.versions.unpin(ws.snapshot);
}

/// commitTransaction: installs the transaction's writes and appends its `applyOps`
/// entries; a retried commit of a committed transaction succeeds again.
pub fn commit(server: &Server, args: &TxnArgs) -> CmdResult<Document> {
    let ws = {
        let mut sessions = server.transactions.sessions.lock();
        let Some(session) = sessions.get_mut(&args.key) else {
            return Err(no_such_transaction(args.txn_number));
        };
        if session.txn_number != args.txn_number {
            return Err(no_such_transaction(args.txn_number));
        }
        match std::mem::replace(&mut session.state, State::Running) {
            State::Open(ws) => ws,
            State::Committed => {
                session.state = State::Committed;
                return Ok(Document::new());
            }
            other => {
                session.state = other;
                return Err(no_such_transaction(args.txn_number));
            }
        }
    };
    let result = install(server, &ws);
    release(server, &ws);
    if let Some(s) = server.transactions.sessions.lock().get_mut(&args.key) {
        s.state = if result.is_ok() {
            State::Committed
        } else {
            State::Aborted
        };
    }
    server.transactions.ended.notify_waiters();
    result.map(|()| Document::new())
}

/// abortTransaction: drops the workspace; nothing of the transaction remains.
pub fn abort(server: &Server, args: &TxnArgs) -> CmdResult<Document> {
    let mut sessions = server.transactions.sessions.lock();
    let Some(session) = sessions.get_mut(&args.key) else {
        return Err(no_such_transaction(args.txn_number));
    };
    if session.txn_number != args.txn_number {
        return Err(no_such_transaction(args.txn_number));
    }
    match std::mem::replace(&mut session.state, State::Aborted) {
        State::Open(ws) => {
            drop(sessions);
            release(server, &ws);
            server.transactions.ended.notify_waiters();
            Ok(Document::new())
        }
        State::Committed => {
            session.state = State::Committed;
            Err(CommandError::new(
                TRANSACTION_COMMITTED,
                "Transaction has been committed and cannot be aborted",
            ))
        }
        State::Running => {
            session.state = State::Running;
            Err(CommandError::new(
                codes::CONFLICTING_OPERATION_IN_PROGRESS,
                "Cannot abort a transaction while one of its statements is running",
            ))
        }
        State::Aborted => Err(no_such_transaction(args.txn_number)),
    }
}

/// Aborts open transactions older than the lifetime limit (as the server's reaper does).
pub fn abort_expired(server: &Server) {
    let mut expired = Vec::new();
    {
        let mut sessions = server.transactions.sessions.lock();
        for s in sessions.values_mut() {
            if matches!(&s.state, State::Open(ws) if ws.started.elapsed() > TRANSACTION_LIFETIME) {
                if let State::Open(ws) = std::mem::replace(&mut s.state, State::Aborted) {
                    expired.push(ws);
                }
            }
        }
    }
    for ws in &expired {
        release(server, ws);
    }
    if !expired.is_empty() {
        server.transactions.ended.notify_waiters();
    }
}

/// Writes the transaction into the shared storage: collections it created, its final
/// documents, and its operations as `applyOps` entries.
fn install(server: &Server, ws: &Workspace) -> CmdResult<()> {
    let ops: Vec<&OplogEntry> = ws
        .storage
        .oplog
        .entries
        .iter()
        .filter(|e| {
            matches!(
                e.kind,
                EventKind::Insert | EventKind::Update | EventKind::Replace | EventKind::Delete
            )
        })
        .collect();
    let mut shared = server.storage.lock();
    for e in &ws.storage.oplog.entries {
        if e.kind == EventKind::Create && shared.collection(&e.db, &e.coll).is_none() {
            if let Some(c) = ws.storage.collection(&e.db, &e.coll) {
                shared.adopt_collection(&e.db, &e.coll, c.with_docs(Default::default()));
            }
        }
    }
    if ops.is_empty() {
        return Ok(());
    }
    // Group the operations into entries of at most 16 MB.
    let mut groups: Vec<Vec<&OplogEntry>> = vec![Vec::new()];
    let mut bytes = 0;
    for e in &ops {
        let size = encoded_size(&e.op_document());
        if bytes + size > APPLY_OPS_MAX_BYTES && groups.last().is_some_and(|g| !g.is_empty()) {
            groups.push(Vec::new());
            bytes = 0;
        }
        bytes += size;
        if let Some(g) = groups.last_mut() {
            g.push(e);
        }
    }
    let stamps: Vec<Timestamp> = groups.iter().map(|_| shared.next_timestamp()).collect();
    let Some(commit_ts) = stamps.last().copied() else {
        return Ok(());
    };
    // Final documents, once per key, in the order first written.
    let mut seen = BTreeSet::new();
    for e in &ops {
        let Some(id) = e.document_key.as_ref().and_then(|k| k.get("_id")) else {
            continue;
        };
        let key = OrdBson(id.clone());
        if !seen.insert((e.db.clone(), e.coll.clone(), key.clone())) {
            continue;
        }
        let fin = ws
            .storage
            .collection(&e.db, &e.coll)
            .and_then(|c| c.docs.get(&key).cloned());
        let ns = format!("{}.{}", e.db, e.coll);
        let Some(c) = shared.collection_mut(&e.db, &e.coll) else {
            continue;
        };
        let before = c.install(&ns, &key, fin)?;
        if shared.versions.recording() {
            shared
                .versions
                .record(&e.db, &e.coll, key, commit_ts, before);
        }
    }
    let entries = groups.len() as u32;
    let count = ops.len() as u32;
    let wall = DateTime::now();
    let mut op_index = 0u32;
    let mut prev = None;
    for (i, (group, ts)) in groups.into_iter().zip(stamps).enumerate() {
        let partial = i + 1 < entries as usize;
        for e in group {
            let mut entry = e.clone();
            entry.ts = ts;
            entry.wall = wall;
            entry.txn = Some(TxnStamp {
                lsid: ws.lsid.clone(),
                txn_number: ws.txn_number,
                op_index,
                partial,
                prev,
                count,
                entries,
            });
            op_index += 1;
            shared.push_entry(entry);
        }
        prev = Some(ts);
    }
    Ok(())
}

/// The `local.oplog.rs` document of one `applyOps` entry: `first` is its first operation
/// (carrying the transaction stamp), `ops` the operations it holds.
pub fn apply_ops_document(first: &OplogEntry, txn: &TxnStamp, ops: Vec<Bson>) -> Document {
    let mut o = doc! {"applyOps": ops};
    if txn.partial {
        o.insert("partialTxn", true);
    } else if txn.entries > 1 {
        o.insert("count", i64::from(txn.count));
    }
    let prev = match txn.prev {
        Some(ts) => doc! {"ts": ts, "t": 1i64},
        None => doc! {"ts": Timestamp { time: 0, increment: 0 }, "t": -1i64},
    };
    doc! {
        "lsid": (*txn.lsid).clone(),
        "txnNumber": txn.txn_number,
        "op": "c",
        "ns": "admin.$cmd",
        "o": o,
        "ts": first.ts,
        "t": 1i64,
        "v": 2i64,
        "wall": first.wall,
        "prevOpTime": prev,
    }
}

/// Whether a non-transactional write to these `_id`s of `db.coll` must wait for a
/// transaction holding one of them.
pub fn holds_any<'a>(
    storage: &Storage,
    db: &str,
    coll: &str,
    ids: impl IntoIterator<Item = &'a Bson>,
) -> bool {
    if storage.locks.is_empty() {
        return false;
    }
    ids.into_iter().any(|id| {
        storage
            .locks
            .holder(db, coll, &OrdBson(id.clone()))
            .is_some()
    })
}

/// The error that makes the dispatcher wait for a transaction and run the write again.
pub fn wait_for_transaction() -> CommandError {
    CommandError::new(
        WRITE_CONFLICT,
        "a document this write touches is held by an open transaction",
    )
    .with_label(WAIT_FOR_TRANSACTION)
}
