//! A router's change stream: one shard stream per shard, merged in cluster-time order.
//!
//! Like the real mongos, the router returns an event only once every shard has reported
//! a time past it (its newest oplog entry, no-ops included): until then an older event
//! of another shard could still arrive. So an idle shard holds the stream back until it
//! writes something, which its periodic no-op writer or `appendOplogNote` does.
//!
//! Resume tokens are the shard tokens' position (cluster time, txnOpIndex, fragment,
//! kind) followed by a tie rank and the ordinal of the shard the event came from, which
//! order events of several shards at one cluster time (a document moving shard is a
//! delete and an insert at one cluster time, in the order the router wrote them); byte
//! order is still stream order, and a token resumes on the router.
//! Events are merged as documents; the stages after `$changeStream` run on the router,
//! after the merge, as the real router runs them.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;

use bson::{doc, Bson, Document, Timestamp};

use crate::changestream::{
    decode_token, encode_fragment_token, encode_token, ChangeStream, Scope, Token,
};
use crate::error::{codes, CmdResult, CommandError};
use crate::query::matcher::Matcher;
use crate::server::Server;
use crate::storage::OplogPosition;

/// Kind byte of a shard token for an invalidate (see `changestream`).
const TOKEN_INVALIDATE: u8 = 1;
/// The shard ordinal of a high-water-mark token: after every shard's events at its
/// position.
const ALL_SHARDS: u16 = u16::MAX;
/// The tie rank of a high-water-mark token.
const LAST_TIE: u8 = u8::MAX;
/// Length of a shard token's `_data`; a router token adds six hex digits (tie rank and
/// shard ordinal).
const SHARD_TOKEN_LEN: usize = 32;

/// A decoded router resume token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct RouterToken {
    pub position: OplogPosition,
    pub fragment: u16,
    pub kind: u8,
    /// Among events of several shards at one position: 0 for the operation type the
    /// router writes first (see [`RouterStream::open`]), 1 for others.
    pub tie: u8,
    /// Ordinal of the shard the event came from ([`ALL_SHARDS`] on high-water marks).
    pub shard: u16,
}

impl RouterToken {
    fn high_water(position: OplogPosition) -> RouterToken {
        RouterToken {
            position,
            fragment: 0,
            kind: 0,
            tie: LAST_TIE,
            shard: ALL_SHARDS,
        }
    }

    /// `{_data: "<shard token hex><shard ordinal hex>"}`.
    pub fn encode(&self) -> Document {
        let shard_token = encode_fragment_token(self.position, self.fragment, self.kind);
        let data = shard_token.get_str("_data").unwrap_or_default();
        doc! {"_data": format!("{data}{:02X}{:04X}", self.tie, self.shard)}
    }

    /// Decodes a router token; a shard token (no ordinal) stands for every shard's events
    /// at its position.
    pub fn decode(token: &Document) -> CmdResult<RouterToken> {
        let bad = || CommandError::new(codes::INVALID_RESUME_TOKEN, "invalid resume token");
        let data = token.get_str("_data").map_err(|_| bad())?;
        if !data.is_ascii() {
            return Err(bad());
        }
        let (shard_part, tie, shard) = match data.len() {
            SHARD_TOKEN_LEN => (data, LAST_TIE, ALL_SHARDS),
            n if n == SHARD_TOKEN_LEN + 6 => (
                &data[..SHARD_TOKEN_LEN],
                u8::from_str_radix(&data[SHARD_TOKEN_LEN..SHARD_TOKEN_LEN + 2], 16)
                    .map_err(|_| bad())?,
                u16::from_str_radix(&data[SHARD_TOKEN_LEN + 2..], 16).map_err(|_| bad())?,
            ),
            _ => return Err(bad()),
        };
        let Token {
            position,
            fragment,
            kind,
        } = decode_token(&doc! {"_data": shard_part})?;
        Ok(RouterToken {
            position,
            fragment,
            kind,
            tie,
            shard,
        })
    }
}

/// One shard's part of a router stream.
struct ShardFeed {
    server: Arc<Server>,
    stream: ChangeStream,
    /// Events read from the shard and not yet returned, oldest first, with their token.
    pending: VecDeque<(RouterToken, Document)>,
    /// Everything this shard logged up to here has been read.
    reported: OplogPosition,
    /// Events at or before this token were returned before the stream resumed.
    floor: Option<RouterToken>,
    /// The operation type ranked first among events at one position.
    first_at_tie: &'static str,
}

/// An open change stream on a router.
pub struct RouterStream {
    feeds: Vec<ShardFeed>,
    /// `$match` (first stage after `$changeStream`) and the stages after it, run on the
    /// merged events.
    filter: Option<Matcher>,
    stages: Vec<Document>,
    /// The token of the last event returned (or where the stream started).
    last: RouterToken,
    pub finished: bool,
}

impl RouterStream {
    /// Opens a stream over `shards` (in their fixed order: the ordinal in tokens) from a
    /// `$changeStream` spec and the stages after it. Events of several shards at one
    /// cluster time come with `first_at_tie` (an operation type, e.g. "delete") first:
    /// the order in which the router writes a document that changes shard.
    pub fn open(
        shards: &[Arc<Server>],
        scope: Scope,
        spec: &Document,
        rest: &[Document],
        first_at_tie: &'static str,
    ) -> CmdResult<RouterStream> {
        let resume_key = ["resumeAfter", "startAfter"]
            .into_iter()
            .find(|k| spec.contains_key(*k));
        let resume = match resume_key {
            Some(k) => Some((
                k,
                RouterToken::decode(spec.get_document(k).map_err(|_| {
                    CommandError::type_mismatch(format!("$changeStream.{k} must be an object"))
                })?)?,
            )),
            None => None,
        };
        let start_at = spec.get("startAtOperationTime").is_some();
        // Without a start, the stream starts at the cluster time, on every shard alike.
        let now = shards
            .iter()
            .map(|s| s.storage.lock().cluster_time())
            .max_by(|a, b| crate::storage::ts_cmp(*a, *b))
            .unwrap_or(Timestamp {
                time: 0,
                increment: 0,
            });
        let split = rest
            .last()
            .is_some_and(|s| s.contains_key("$changeStreamSplitLargeEvent"));
        let (router_stages, shard_stages) = if split {
            (&rest[..rest.len() - 1], &rest[rest.len() - 1..])
        } else {
            (rest, &rest[..0])
        };
        let mut feeds = Vec::with_capacity(shards.len());
        for (ordinal, server) in shards.iter().enumerate() {
            let mut shard_spec = spec.clone();
            let ordinal = ordinal as u16;
            match resume {
                Some((key, token)) => {
                    shard_spec.remove(key);
                    match shard_resume(token, ordinal) {
                        ShardStart::After(t) => {
                            shard_spec.insert(key, t);
                        }
                        ShardStart::At(ts) => {
                            shard_spec.insert("startAtOperationTime", ts);
                        }
                    }
                }
                None if !start_at => {
                    shard_spec.insert("resumeAfter", encode_token(OplogPosition::end_of(now), 0));
                }
                None => {}
            }
            let mut storage = server.storage.lock();
            let mut stream =
                ChangeStream::open(&mut storage, scope.clone(), &shard_spec, shard_stages)?;
            stream.disambiguate = server.version_parts() >= (6, 1, 0);
            drop(storage);
            feeds.push(ShardFeed {
                server: server.clone(),
                stream,
                pending: VecDeque::new(),
                reported: OplogPosition::at(Timestamp {
                    time: 0,
                    increment: 0,
                }),
                floor: resume.map(|(_, token)| token),
                first_at_tie,
            });
        }
        let mut filter = None;
        let mut stages = Vec::new();
        for stage in router_stages {
            match stage.get_document("$match") {
                Ok(m) if filter.is_none() && stages.is_empty() => filter = Some(Matcher::new(m)?),
                _ => stages.push(stage.clone()),
            }
        }
        let last = match resume {
            Some((_, token)) => token,
            None => match spec.get("startAtOperationTime") {
                Some(Bson::Timestamp(ts)) => RouterToken {
                    position: OplogPosition::at(*ts),
                    fragment: 0,
                    kind: 0,
                    tie: 0,
                    shard: 0,
                },
                _ => RouterToken::high_water(OplogPosition::end_of(now)),
            },
        };
        Ok(RouterStream {
            feeds,
            filter,
            stages,
            last,
            finished: false,
        })
    }

    /// Reads what every shard has logged since the last call, then returns (up to `max`)
    /// the events every shard has reported past, in cluster-time order, with the
    /// postBatchResumeToken to report.
    pub fn next_batch(&mut self, max: usize) -> CmdResult<(Vec<Document>, Document)> {
        if self.finished {
            return Ok((Vec::new(), self.last.encode()));
        }
        for (ordinal, feed) in self.feeds.iter_mut().enumerate() {
            feed.read(ordinal as u16)?;
        }
        let watermark = self
            .feeds
            .iter()
            .map(|f| f.reported)
            .min()
            .unwrap_or(self.last.position);
        let mut out = Vec::new();
        let mut more_ready = false;
        loop {
            let next = self
                .feeds
                .iter()
                .enumerate()
                .filter_map(|(i, f)| f.pending.front().map(|(t, _)| (*t, i)))
                .filter(|(t, _)| t.position <= watermark)
                .min();
            let Some((token, i)) = next else {
                break;
            };
            if out.len() >= max {
                more_ready = true;
                break;
            }
            let Some((_, event)) = self.feeds[i].pending.pop_front() else {
                break;
            };
            self.last = token;
            let invalidate = token.kind == TOKEN_INVALIDATE;
            if let Some(event) = self.apply_stages(event)? {
                out.push(event);
            }
            if invalidate {
                self.finished = true;
                return Ok((out, token.encode()));
            }
        }
        let high_water = RouterToken::high_water(watermark);
        let token = if !more_ready && high_water > self.last {
            high_water
        } else {
            self.last
        };
        Ok((out, token.encode()))
    }

    fn apply_stages(&self, event: Document) -> CmdResult<Option<Document>> {
        if !self.filter.as_ref().is_none_or(|m| m.matches(&event)) {
            return Ok(None);
        }
        if self.stages.is_empty() {
            return Ok(Some(event));
        }
        let out = crate::query::aggregate::run_pipeline(vec![event], &self.stages)?;
        Ok(out.into_iter().next())
    }

    /// The next batch: at once when events are ready, else when some arrive, or empty
    /// at `deadline`.
    pub async fn await_batch(
        &mut self,
        max: usize,
        deadline: Instant,
    ) -> CmdResult<(Vec<Document>, Document)> {
        let servers: Vec<Arc<Server>> = self.feeds.iter().map(|f| f.server.clone()).collect();
        loop {
            // Registered before reading, so a write in between still wakes this wait.
            let mut waits: Vec<Pin<Box<tokio::sync::futures::Notified<'_>>>> = servers
                .iter()
                .map(|s| Box::pin(s.oplog_appended.notified()))
                .collect();
            for w in &mut waits {
                w.as_mut().enable();
            }
            let batch = self.next_batch(max)?;
            if !batch.0.is_empty() || self.finished || Instant::now() >= deadline {
                return Ok(batch);
            }
            let any_write = std::future::poll_fn(|cx| {
                if waits.iter_mut().any(|w| w.as_mut().poll(cx).is_ready()) {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            });
            let _ = tokio::time::timeout_at(deadline.into(), any_write).await;
        }
    }
}

/// Where one shard's stream starts when the router resumes after `token`.
enum ShardStart {
    /// After this shard token (exclusive).
    After(Document),
    /// At this cluster time (inclusive).
    At(Timestamp),
}

/// Where shard `ordinal`'s stream starts when the router resumes after `token`: the
/// token's own shard after its event; the others at its position, inclusive (their
/// events there may order after it; the feed drops those that do not).
fn shard_resume(token: RouterToken, ordinal: u16) -> ShardStart {
    let position = token.position;
    if ordinal == token.shard {
        return ShardStart::After(encode_fragment_token(position, token.fragment, token.kind));
    }
    if token.shard == ALL_SHARDS {
        return ShardStart::After(encode_token(position, token.kind));
    }
    if position.op > 0 {
        ShardStart::After(encode_token(
            OplogPosition {
                ts: position.ts,
                op: position.op - 1,
            },
            0,
        ))
    } else {
        ShardStart::At(position.ts)
    }
}

impl ShardFeed {
    /// Reads the shard's new events into `pending` and moves `reported`.
    fn read(&mut self, ordinal: u16) -> CmdResult<()> {
        if self.stream.finished {
            return Ok(());
        }
        let mut storage = self.server.storage.lock();
        let (batch, token) = self.stream.next_batch(&mut storage, usize::MAX)?;
        let newest = storage.oplog.entries.back().map(|e| e.ts);
        drop(storage);
        let examined = decode_token(&token)?;
        for mut event in batch.documents().map_err(|e| {
            CommandError::new(
                codes::INTERNAL_ERROR,
                format!("a shard's change event could not be read back: {e}"),
            )
        })? {
            let shard_token = event
                .get_document("_id")
                .map_err(|_| CommandError::new(codes::INTERNAL_ERROR, "change event without _id"))
                .and_then(decode_token)?;
            let tie = u8::from(event.get_str("operationType") != Ok(self.first_at_tie));
            let token = RouterToken {
                position: shard_token.position,
                fragment: shard_token.fragment,
                kind: shard_token.kind,
                tie,
                shard: ordinal,
            };
            if self.floor.is_some_and(|floor| token <= floor) {
                continue;
            }
            event.insert("_id", token.encode());
            self.pending.push_back((token, event));
        }
        // A shard has reported up to its newest oplog entry (no-ops included), however
        // far the cluster clock has moved since; a finished stream holds nothing back.
        let reported = if self.stream.finished {
            OplogPosition::end_of(Timestamp {
                time: u32::MAX,
                increment: u32::MAX,
            })
        } else {
            match newest {
                Some(ts) => examined.position.min(OplogPosition::end_of(ts)),
                None => examined.position,
            }
        };
        self.reported = self.reported.max(reported);
        Ok(())
    }
}

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
    let (events, token) = stream.next_batch(batch_size.unwrap_or(DEFAULT_FIRST_BATCH))?;
    let id = if stream.finished {
        0
    } else {
        server.cursors.open(crate::cursor::Cursor {
            ns: ns.clone(),
            state: crate::cursor::CursorState::RouterChangeStream(Box::new(stream)),
            last_used: Instant::now(),
            owner: owner(conn),
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
        }),
        fields: Document::new(),
    })
}

/// getMore on a router's change stream cursor: None when `id` is not one (the caller
/// routes it on), else the next batch, waiting up to `maxTimeMS` for events.
pub async fn get_more(
    server: &Arc<Server>,
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
    if !server.users.is_empty() && cursor.owner != owner(conn) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn token(time: u32, op: u32, kind: u8, tie: u8, shard: u16) -> RouterToken {
        RouterToken {
            position: OplogPosition {
                ts: Timestamp { time, increment: 1 },
                op,
            },
            fragment: 0,
            kind,
            tie,
            shard,
        }
    }

    fn data(t: &RouterToken) -> String {
        t.encode().get_str("_data").unwrap().to_string()
    }

    #[test]
    fn token_bytes_sort_in_stream_order_and_decode_back() {
        let ordered = [
            token(5, 0, 0, 0, 1),
            token(5, 0, 0, 1, 0),
            token(5, 0, TOKEN_INVALIDATE, 1, 0),
            RouterToken::high_water(OplogPosition::end_of(Timestamp {
                time: 5,
                increment: 1,
            })),
            token(6, 0, 0, 0, 0),
        ];
        for pair in ordered.windows(2) {
            assert!(pair[0] < pair[1]);
            assert!(data(&pair[0]) < data(&pair[1]), "{pair:?}");
        }
        for t in ordered {
            assert_eq!(RouterToken::decode(&t.encode()).unwrap(), t);
        }
    }

    #[test]
    fn a_shard_token_resumes_after_every_shards_events_at_its_position() {
        let shard_token = encode_token(
            OplogPosition::at(Timestamp {
                time: 5,
                increment: 1,
            }),
            0,
        );
        let decoded = RouterToken::decode(&shard_token).unwrap();
        assert_eq!(decoded.shard, ALL_SHARDS);
        assert!(decoded > token(5, 0, 0, 1, 7));
    }
}
