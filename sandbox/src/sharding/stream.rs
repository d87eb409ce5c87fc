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

/// Bytes of events one reply carries at most (16 MB less room for the reply's fields).
const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024 - 64 * 1024;

fn encoded_len(event: &Document) -> usize {
    bson::to_vec(event).map_or(0, |v| v.len())
}
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

/// The shards of the cluster as they are now (the router's list).
pub type Membership = Arc<dyn Fn() -> Vec<Arc<Server>> + Send + Sync>;

/// An open change stream on a router.
pub struct RouterStream {
    feeds: Vec<ShardFeed>,
    /// Where shards added since the stream opened are found, and how their feed opens:
    /// like the real router, which opens a cursor on a new shard from the time it joined.
    membership: Option<Membership>,
    scope: Scope,
    spec: Document,
    shard_stages: Vec<Document>,
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
            membership: None,
            scope,
            spec: spec.clone(),
            shard_stages: shard_stages.to_vec(),
            filter,
            stages,
            last,
            finished: false,
        })
    }

    /// Follows the cluster's membership: a shard added later joins the stream.
    pub fn follow_membership(&mut self, membership: Membership) {
        self.membership = Some(membership);
    }

    /// Opens a feed on every shard that joined the cluster since the stream opened, from
    /// the stream's position (nothing before it is due to this stream).
    fn adopt_new_shards(&mut self) -> CmdResult<()> {
        let Some(membership) = &self.membership else {
            return Ok(());
        };
        let joined: Vec<Arc<Server>> = membership()
            .into_iter()
            .filter(|s| !self.feeds.iter().any(|f| Arc::ptr_eq(&f.server, s)))
            .collect();
        for server in joined {
            let mut shard_spec = self.spec.clone();
            for key in ["resumeAfter", "startAfter", "startAtOperationTime"] {
                shard_spec.remove(key);
            }
            shard_spec.insert("startAtOperationTime", self.last.position.ts);
            let mut storage = server.storage.lock();
            let mut stream = ChangeStream::open(
                &mut storage,
                self.scope.clone(),
                &shard_spec,
                &self.shard_stages,
            )?;
            stream.disambiguate = server.version_parts() >= (6, 1, 0);
            drop(storage);
            let first_at_tie = self.feeds.first().map_or("delete", |f| f.first_at_tie);
            self.feeds.push(ShardFeed {
                server,
                stream,
                pending: VecDeque::new(),
                reported: OplogPosition::at(Timestamp {
                    time: 0,
                    increment: 0,
                }),
                floor: Some(self.last),
                first_at_tie,
            });
        }
        Ok(())
    }

    /// Reads what every shard has logged since the last call, then returns (up to `max`)
    /// the events every shard has reported past, in cluster-time order, with the
    /// postBatchResumeToken to report.
    pub fn next_batch(&mut self, max: usize) -> CmdResult<(Vec<Document>, Document)> {
        if self.finished {
            return Ok((Vec::new(), self.last.encode()));
        }
        self.adopt_new_shards()?;
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
        let mut bytes = 0usize;
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
            // A reply holds at most 16 MB of events, as the real router's does: the next
            // event waits for the next getMore when it would not fit.
            let next_bytes = self.feeds[i]
                .pending
                .front()
                .map_or(0, |(_, e)| encoded_len(e));
            if out.len() >= max || (!out.is_empty() && bytes + next_bytes > MAX_BATCH_BYTES) {
                more_ready = true;
                break;
            }
            let Some((_, event)) = self.feeds[i].pending.pop_front() else {
                break;
            };
            self.last = token;
            let invalidate = token.kind == TOKEN_INVALIDATE;
            if let Some(event) = self.apply_stages(event)? {
                // Counted at its size as logged (one encoding per event); a stage
                // that adds fields can make the reply somewhat larger than the budget.
                bytes += next_bytes;
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
