//! Sending a command to one shard in-process, through the shard's own dispatcher (so its
//! faults, write blocking and retryable-write records apply), and the router's cursors
//! that stand for a shard's cursor.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use bson::{Bson, Document};
use parking_lot::Mutex;

use crate::dispatch::{self, Connection};
use crate::error::codes;
use crate::wire::Reply;

use super::{Router, Shard};

/// How long the router waits for a shard to have a primary again before it passes the
/// shard's "not primary" error on (a mongos waits for its replica set monitor to find
/// the new primary the same way, then retries the command itself).
pub const PRIMARY_WAIT: Duration = Duration::from_secs(30);

/// The connection the router uses for a client's command on a shard: it carries the
/// client's authenticated users (their privileges decide write-block bypass there).
pub fn internal_connection(client: &Connection) -> Connection {
    let mut conn = Connection::new(0);
    conn.users = client.users.clone();
    conn.routed = true;
    conn
}

/// The error code of a reply that failed as a whole, if it did.
pub fn error_code(reply: &Reply) -> Option<i32> {
    let ok = match reply.fields.get("ok") {
        Some(Bson::Double(f)) => *f != 0.0,
        Some(Bson::Int32(n)) => *n != 0,
        Some(Bson::Int64(n)) => *n != 0,
        Some(Bson::Boolean(b)) => *b,
        _ => true,
    };
    if ok {
        return None;
    }
    match reply.fields.get("code") {
        Some(Bson::Int32(c)) => Some(*c),
        Some(Bson::Int64(c)) => Some(*c as i32),
        _ => Some(codes::INTERNAL_ERROR),
    }
}

fn is_not_primary(code: i32) -> bool {
    matches!(
        code,
        codes::NOT_WRITABLE_PRIMARY
            | codes::NOT_PRIMARY_NO_SECONDARY_OK
            | codes::PRIMARY_STEPPED_DOWN
            | codes::INTERRUPTED_DUE_TO_REPL_STATE_CHANGE
    )
}

/// Runs `cmd` on the shard's primary for the client `client`. A shard whose primary
/// stepped down refuses the command before running it; the router then waits for the
/// new primary (up to [`PRIMARY_WAIT`]) and sends it again, as a mongos does.
pub async fn to_shard(
    router: &Router,
    shard: &Shard,
    client: &Connection,
    mut cmd: Document,
) -> Reply {
    router.transactions.join(&shard.name, &mut cmd);
    let deadline = Instant::now() + PRIMARY_WAIT;
    loop {
        let mut conn = internal_connection(client);
        let reply = dispatch::run_command(&shard.server, &mut conn, cmd.clone()).await;
        match error_code(&reply) {
            Some(code) if is_not_primary(code) && Instant::now() < deadline => {
                while !shard.server.is_primary() && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            _ => return strip_gossip(reply),
        }
    }
}

/// Removes the shard's `$clusterTime`/`operationTime`: the router adds its own.
fn strip_gossip(mut reply: Reply) -> Reply {
    reply.fields.remove("$clusterTime");
    reply.fields.remove("operationTime");
    reply
}

/// First router cursor id handed to a proxied cursor; far from the ids of the router's
/// own registry.
const FIRST_PROXIED_ID: i64 = 7_000_000_000_000;

/// Router cursors that stand for one shard's cursor (reads of an unsharded collection,
/// answered by its database's primary shard).
#[derive(Default)]
pub struct ProxiedCursors {
    next: AtomicI64,
    cursors: Mutex<HashMap<i64, (String, i64)>>,
}

impl ProxiedCursors {
    /// Replaces a shard cursor id in a forwarded reply by a router cursor id.
    ///
    /// The shard's cursor is either an encoded one (`find`) or a plain `cursor` field of
    /// the reply (`aggregate`, `listIndexes`, `listCollections`); both are adopted.
    pub fn adopt(&self, shard: &str, reply: &mut Reply) {
        let shard_id = match reply.cursor.as_ref() {
            Some(cursor) => cursor.id,
            None => plain_cursor_id(reply).unwrap_or(0),
        };
        if shard_id == 0 {
            return;
        }
        let id = FIRST_PROXIED_ID + self.next.fetch_add(1, Ordering::SeqCst);
        self.cursors
            .lock()
            .insert(id, (shard.to_string(), shard_id));
        set_cursor_id(reply, id);
    }
    /// The shard and shard cursor id of a router cursor id.
    pub fn get(&self, id: i64) -> Option<(String, i64)> {
        self.cursors.lock().get(&id).cloned()
    }
    pub fn remove(&self, id: i64) {
        self.cursors.lock().remove(&id);
    }
    /// After a forwarded getMore: the router id again, or forget it once exhausted.
    pub fn follow(&self, router_id: i64, reply: &mut Reply) {
        let shard_id = match reply.cursor.as_ref() {
            Some(cursor) => cursor.id,
            None => plain_cursor_id(reply).unwrap_or(0),
        };
        if shard_id == 0 {
            self.remove(router_id);
        } else {
            set_cursor_id(reply, router_id);
        }
    }
}

/// The id of a reply's plain `cursor` field (`{cursor: {id, ...}}`).
fn plain_cursor_id(reply: &Reply) -> Option<i64> {
    match reply.fields.get_document("cursor").ok()?.get("id")? {
        Bson::Int64(id) => Some(*id),
        Bson::Int32(id) => Some(i64::from(*id)),
        _ => None,
    }
}

/// Sets the id of a reply's cursor, encoded or plain.
fn set_cursor_id(reply: &mut Reply, id: i64) {
    if let Some(cursor) = reply.cursor.as_mut() {
        cursor.id = id;
    } else if let Ok(cursor) = reply.fields.get_document_mut("cursor") {
        cursor.insert("id", id);
    }
}

/// The shards taking part in each open transaction run through the router, so that a
/// statement reaching a shard for the first time starts the transaction there and
/// `commitTransaction`/`abortTransaction` go to every participant.
#[derive(Default)]
pub struct Participants {
    open: Mutex<HashMap<TransactionKey, Vec<String>>>,
}

/// (lsid bytes, txnNumber): one transaction of one session.
type TransactionKey = (Vec<u8>, i64);

/// (lsid bytes, txnNumber) of a statement of a multi-document transaction.
fn transaction_key(cmd: &Document) -> Option<TransactionKey> {
    if !cmd.contains_key("autocommit") {
        return None;
    }
    let txn = match cmd.get("txnNumber")? {
        Bson::Int64(n) => *n,
        Bson::Int32(n) => *n as i64,
        _ => return None,
    };
    Some((bson::to_vec(cmd.get_document("lsid").ok()?).ok()?, txn))
}

impl Participants {
    /// Marks `shard` as a participant of the statement's transaction, and makes the
    /// statement start the transaction on a shard that has not seen it yet.
    pub fn join(&self, shard: &str, cmd: &mut Document) {
        let Some(key) = transaction_key(cmd) else {
            return;
        };
        let name = cmd.keys().next().cloned().unwrap_or_default();
        if matches!(name.as_str(), "commitTransaction" | "abortTransaction") {
            return;
        }
        let mut open = self.open.lock();
        let shards = open.entry(key).or_default();
        if shards.iter().any(|s| s == shard) {
            cmd.remove("startTransaction");
        } else {
            shards.push(shard.to_string());
            cmd.insert("startTransaction", true);
        }
    }
    /// The participants of the transaction `cmd` ends, forgotten from now on.
    pub fn finish(&self, cmd: &Document) -> Vec<String> {
        transaction_key(cmd)
            .and_then(|key| self.open.lock().remove(&key))
            .unwrap_or_default()
    }
}
