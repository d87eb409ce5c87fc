//! The router's change-stream commands: `aggregate` with `$changeStream` opens a
//! [`RouterStream`] as a cursor of the router (privileges checked against the config
//! server's users), and `getMore` on it waits for the shards' events.

use std::sync::Arc;
use std::time::Instant;

use bson::{Bson, Document};

use crate::changestream::Scope;
use crate::error::{CmdResult, CommandError};
use crate::server::Server;

use super::stream::RouterStream;

/// Events in a first batch when the client names no `batchSize` (the server's 101).
const DEFAULT_FIRST_BATCH: usize = 101;
/// How long a getMore on a change stream waits for events without `maxTimeMS`.
const DEFAULT_AWAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Whether an `aggregate` opens a change stream (its first stage is `$changeStream`).
pub fn is_change_stream(cmd: &Document) -> bool {
    cmd.get_array("pipeline")
        .ok()
        .and_then(|p| p.first())
        .and_then(|s| s.as_document())
        .is_some_and(|s| s.contains_key("$changeStream"))
}

/// What a router's change stream runs over: the shards in their fixed order, the users
/// privileges are checked against (the config server's), and the operation type that
/// comes first among events of several shards at one cluster time.
pub struct RouterSide<'a> {
    pub shards: Vec<Arc<Server>>,
    /// The shards now: a shard added while the stream is open joins it.
    pub membership: super::stream::Membership,
    pub users: &'a crate::auth::users::UserStore,
    pub first_at_tie: &'static str,
}

/// `aggregate` with `$changeStream` on a router: opens a [`RouterStream`] over every
/// shard as a cursor of the router (`server`), with its first batch.
pub fn aggregate(
    server: &Arc<Server>,
    side: RouterSide<'_>,
    conn: &crate::dispatch::Connection,
    db: &str,
    cmd: &Document,
) -> CmdResult<crate::wire::Reply> {
    let pipeline: Vec<Document> = cmd
        .get_array("pipeline")
        .map_err(|_| CommandError::type_mismatch("'pipeline' must be an array"))?
        .iter()
        .map(|s| {
            s.as_document()
                .cloned()
                .ok_or_else(|| CommandError::type_mismatch("each pipeline stage must be an object"))
        })
        .collect::<CmdResult<_>>()?;
    let spec = pipeline
        .first()
        .and_then(|s| s.get_document("$changeStream").ok())
        .ok_or_else(|| CommandError::bad_value("$changeStream must be the first stage"))?;
    let coll = match cmd.get("aggregate") {
        Some(Bson::String(s)) => Some(s.as_str()),
        Some(Bson::Int32(1)) | Some(Bson::Int64(1)) | Some(Bson::Double(_)) => None,
        _ => {
            return Err(CommandError::type_mismatch(
                "aggregate must be a collection name or 1",
            ))
        }
    };
    let scope = Scope::of_request(db, coll, spec)?;
    authorize(side.users, conn, &scope)?;
    let batch_size = cmd
        .get_document("cursor")
        .ok()
        .and_then(|c| c.get("batchSize"))
        .and_then(crate::commands::ddl::as_usize);
    let ns = scope.cursor_ns();
    let mut stream =
        RouterStream::open(&side.shards, scope, spec, &pipeline[1..], side.first_at_tie)?;
    stream.follow_membership(side.membership);
    let (events, token) = stream.next_batch(batch_size.unwrap_or(DEFAULT_FIRST_BATCH))?;
    let id = if stream.finished {
        0
    } else {
        server.cursors.open(crate::cursor::Cursor {
            ns: ns.clone(),
            state: crate::cursor::CursorState::RouterChangeStream(Box::new(stream)),
            last_used: Instant::now(),
            owner: owner(conn),
            session: crate::cursor::session_of(cmd),
        })
    };
    reply(true, &events, token, id, ns)
}

/// A router cursor belongs to the users its connection authenticated as.
fn owner(conn: &crate::dispatch::Connection) -> Vec<String> {
    conn.users
        .iter()
        .map(|u| format!("{}.{}", u.db, u.user))
        .collect()
}

/// The privileges a change stream needs (`changeStream` and `find` on its scope), checked
/// against the users the client authenticated as on the router.
fn authorize(
    users: &crate::auth::users::UserStore,
    conn: &crate::dispatch::Connection,
    scope: &Scope,
) -> CmdResult<()> {
    use crate::auth::roles::{is_authorized, Action};
    if users.is_empty() {
        return Ok(());
    }
    let roles: Vec<_> = conn
        .users
        .iter()
        .flat_map(|u| u.roles.iter().cloned())
        .collect();
    let (db, coll) = match scope {
        Scope::Cluster => ("", ""),
        Scope::Database(db) => (db.as_str(), ""),
        Scope::Collection(db, c) => (db.as_str(), c.as_str()),
    };
    if is_authorized(&roles, Action::ChangeStream, db, coll)
        && is_authorized(&roles, Action::Find, db, coll)
    {
        Ok(())
    } else {
        Err(crate::dispatch::unauthorized("aggregate", db))
    }
}

fn reply(
    first: bool,
    events: &[Document],
    token: Document,
    id: i64,
    ns: String,
) -> CmdResult<crate::wire::Reply> {
    let mut batch = crate::cursor::EncodedBatch::default();
    for event in events {
        batch.push(event)?;
    }
    Ok(crate::wire::Reply {
        cursor: Some(crate::cursor::CursorReply {
            first,
            batch,
            post_batch_resume_token: Some(token),
            id,
            ns,
            at_cluster_time: None,
        }),
        fields: Document::new(),
    })
}

/// getMore on a router's change stream cursor: None when `id` is not one (the caller
/// routes it on), else the next batch, waiting up to `maxTimeMS` for events. `users` are
/// the ones the router authenticates against: with any, only the cursor's owner may go
/// on.
pub async fn get_more(
    server: &Arc<Server>,
    users: &crate::auth::users::UserStore,
    conn: &crate::dispatch::Connection,
    db: &str,
    cmd: &Document,
) -> Option<CmdResult<crate::wire::Reply>> {
    let id = match cmd.get("getMore") {
        Some(Bson::Int64(i)) => *i,
        Some(Bson::Int32(i)) => i64::from(*i),
        _ => return None,
    };
    let mut cursor = server.cursors.take(id)?;
    if !matches!(
        cursor.state,
        crate::cursor::CursorState::RouterChangeStream(_)
    ) {
        server.cursors.put_back(id, cursor);
        return None;
    }
    let coll = cmd.get_str("collection").unwrap_or_default();
    let expected = format!("{db}.{coll}");
    if cursor.ns != expected
        && !(cursor.ns.starts_with(&format!("{db}.$cmd")) && coll.starts_with("$cmd"))
    {
        server.cursors.put_back(id, cursor);
        return Some(Err(CommandError::unauthorized(format!(
            "Requested getMore on namespace '{expected}', but cursor belongs to a different namespace"
        ))));
    }
    if !users.is_empty() && cursor.owner != owner(conn) {
        server.cursors.put_back(id, cursor);
        return Some(Err(CommandError::unauthorized(format!(
            "cursor id {id} was not created by the authenticated user"
        ))));
    }
    let batch_size = cmd
        .get("batchSize")
        .and_then(crate::commands::ddl::as_usize)
        .filter(|n| *n > 0)
        .unwrap_or(usize::MAX);
    let wait = cmd
        .get("maxTimeMS")
        .and_then(crate::commands::ddl::as_usize)
        .map_or(DEFAULT_AWAIT, |ms| {
            std::time::Duration::from_millis(ms as u64)
        });
    let crate::cursor::CursorState::RouterChangeStream(stream) = &mut cursor.state else {
        return None;
    };
    let result = stream.await_batch(batch_size, Instant::now() + wait).await;
    let finished = stream.finished;
    let ns = cursor.ns.clone();
    Some(match result {
        Ok((events, token)) => {
            let reply_id = if finished { 0 } else { id };
            if !finished {
                server.cursors.put_back(id, cursor);
            }
            reply(false, &events, token, reply_id, ns)
        }
        Err(e) => Err(e.with_label("ChangeStreamCursor")),
    })
}
