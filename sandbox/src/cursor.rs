//! Open cursors keyed by their Int64 id, reaped after an idle timeout, killed with their
//! session or with the collection they read; and the `cursor` field of a reply, whose
//! batch is encoded as it is taken so no copy of a stored or oplog document is ever built
//! just to be serialized and dropped.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bson::spec::ElementType;
use bson::{Binary, Document};
use parking_lot::Mutex;

use crate::changestream::ChangeStream;
use crate::encode::{self, EncodeError};
use crate::error::{codes, CommandError};
use crate::storage::Storage;

/// How long an unused cursor lives (the server's default is 10 minutes).
pub const CURSOR_IDLE_TIMEOUT: Duration = Duration::from_secs(600);

pub enum CursorState {
    /// Remaining documents of a query (shared with the collection until sent), and the
    /// collection the query read, if it read one (not a view, the oplog or a command's
    /// listing).
    Documents(VecDeque<Arc<Document>>, Option<ReadCollection>),
    ChangeStream(Box<ChangeStream>),
    /// A router's change stream over its shards.
    RouterChangeStream(Box<crate::sharding::stream::RouterStream>),
}

pub struct Cursor {
    /// "db.coll" as replies report it.
    pub ns: String,
    pub state: CursorState,
    pub last_used: Instant,
    /// Connection-independent owner: the authenticated user names, if any.
    pub owner: Vec<String>,
    /// The `lsid.id` of the session the cursor was opened in: killing the session kills
    /// the cursor.
    pub session: Option<Binary>,
}

/// The session a command runs in: its `lsid.id`.
pub fn session_of(cmd: &Document) -> Option<Binary> {
    match cmd.get_document("lsid").ok()?.get("id")? {
        bson::Bson::Binary(id) => Some(id.clone()),
        _ => None,
    }
}

/// The collection a query cursor reads, as it was when the cursor opened. A real server
/// kills such a cursor when the collection is dropped (alone or with its database) or
/// renamed, and the next getMore fails with 175 QueryPlanKilled; the sandbox finds out at
/// that getMore: the name no longer holds the collection with this UUID.
///
/// Not seen: a collection renamed away and back before the getMore (same name, same UUID),
/// which a real server would have killed too.
#[derive(Clone, Debug)]
pub struct ReadCollection {
    pub db: String,
    pub coll: String,
    pub uuid: Binary,
    /// A router's read of a sharded collection: the collection is looked up in the
    /// cluster's catalog (`config.collections`), not in the router's own storage.
    pub sharded: bool,
}

impl ReadCollection {
    /// The collection `db.coll` now holds, unless it is a view or does not exist.
    pub fn current(storage: &Storage, db: &str, coll: &str) -> Option<ReadCollection> {
        let c = storage.collection(db, coll).filter(|c| !c.is_view())?;
        Some(ReadCollection {
            db: db.to_string(),
            coll: coll.to_string(),
            uuid: c.uuid.clone(),
            sharded: false,
        })
    }

    /// A router's read of the sharded collection `entry` of the cluster's catalog.
    pub fn sharded(entry: &crate::sharding::catalog::CollectionEntry) -> ReadCollection {
        let (db, coll) = entry.ns.split_once('.').unwrap_or((&entry.ns, ""));
        ReadCollection {
            db: db.to_string(),
            coll: coll.to_string(),
            uuid: entry.uuid.clone(),
            sharded: true,
        }
    }

    /// [`ReadCollection::killed`] for a router's read of a sharded collection, against
    /// the cluster's catalog (the config server's storage): the shards kill their
    /// cursors when the collection is dropped or renamed, and the router's getMore fails
    /// with their error.
    pub fn killed_in_catalog(&self, config: &Storage) -> Option<CommandError> {
        let ns = format!("{}.{}", self.db, self.coll);
        let entries = crate::sharding::catalog::collections(config);
        if entries.iter().any(|e| e.ns == ns && e.uuid == self.uuid) {
            return None;
        }
        let what = match entries.iter().find(|e| e.uuid == self.uuid) {
            Some(to) => format!("collection renamed from '{ns}' to '{}'", to.ns),
            None => format!("collection '{ns}' dropped"),
        };
        Some(CommandError::new(
            codes::QUERY_PLAN_KILLED,
            format!(
                "Executor error during getMore :: caused by :: {what} while the cursor was open; run the query again"
            ),
        ))
    }

    /// The error a getMore on a cursor over this collection fails with when the
    /// collection is no longer there under its name (dropped, renamed, or dropped and
    /// created again); `None` while it is.
    pub fn killed(&self, storage: &Storage) -> Option<CommandError> {
        if storage
            .collection(&self.db, &self.coll)
            .is_some_and(|c| c.uuid == self.uuid && !c.is_view())
        {
            return None;
        }
        let renamed_to = storage.dbs.iter().find_map(|(db, d)| {
            d.collections
                .iter()
                .find(|(_, c)| c.uuid == self.uuid && !c.is_view())
                .map(|(name, _)| format!("{db}.{name}"))
        });
        let what = match renamed_to {
            Some(to) => format!(
                "collection renamed from '{}.{}' to '{to}'",
                self.db, self.coll
            ),
            None if !storage.dbs.contains_key(&self.db) => {
                format!(
                    "collection '{}.{}' dropped (or its database)",
                    self.db, self.coll
                )
            }
            None => format!("collection '{}.{}' dropped", self.db, self.coll),
        };
        Some(CommandError::new(
            codes::QUERY_PLAN_KILLED,
            format!(
                "Executor error during getMore :: caused by :: {what} while the cursor was open; run the query again"
            ),
        ))
    }
}

#[derive(Default)]
pub struct CursorRegistry {
    next_id: AtomicI64,
    cursors: Mutex<HashMap<i64, Cursor>>,
    /// getMores failed with 175 QueryPlanKilled so far (a test asserts its DDL hit a cursor).
    plans_killed: AtomicU64,
}

impl CursorRegistry {
    pub fn open(&self, cursor: Cursor) -> i64 {
        let id = self.next_id.fetch_add(1, Ordering::SeqCst) + 1_000_000_007;
        self.cursors.lock().insert(id, cursor);
        id
    }
    /// Takes the cursor out while a getMore runs on it.
    pub fn take(&self, id: i64) -> Option<Cursor> {
        self.cursors.lock().remove(&id)
    }
    pub fn put_back(&self, id: i64, mut cursor: Cursor) {
        cursor.last_used = Instant::now();
        self.cursors.lock().insert(id, cursor);
    }
    pub fn kill(&self, id: i64) -> bool {
        self.cursors.lock().remove(&id).is_some()
    }
    /// Kills the cursors opened in the given sessions (every session's when `sessions`
    /// is `None`), as killSessions does; returns how many.
    pub fn kill_sessions(&self, sessions: Option<&[Binary]>) -> usize {
        let mut cursors = self.cursors.lock();
        let before = cursors.len();
        cursors.retain(|_, c| match (&c.session, sessions) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(id), Some(killed)) => !killed.contains(id),
        });
        before - cursors.len()
    }
    pub fn reap_idle(&self) {
        self.cursors
            .lock()
            .retain(|_, c| c.last_used.elapsed() < CURSOR_IDLE_TIMEOUT);
    }
    /// Counts one getMore failed with 175 QueryPlanKilled.
    pub fn count_plan_killed(&self) {
        self.plans_killed.fetch_add(1, Ordering::Relaxed);
    }
    /// getMores failed with 175 QueryPlanKilled since the server started.
    pub fn plans_killed(&self) -> u64 {
        self.plans_killed.load(Ordering::Relaxed)
    }
    pub fn len(&self) -> usize {
        self.cursors.lock().len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The documents of one cursor batch, already encoded: the body of the batch array.
#[derive(Clone, Debug, Default)]
pub struct EncodedBatch {
    /// For each document: its element header (type, index key), then the document.
    bytes: Vec<u8>,
    count: usize,
    /// Sum of the documents' sizes, which the batch byte budget counts.
    doc_bytes: usize,
}

impl EncodedBatch {
    /// Appends one document.
    pub fn push(&mut self, doc: &Document) -> Result<(), EncodeError> {
        self.push_with(|buf| encode::document(buf, doc))
    }

    /// Appends the one document `write` appends to the buffer; on error nothing is kept.
    pub fn push_with<E>(
        &mut self,
        write: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
    ) -> Result<(), E> {
        let mark = self.bytes.len();
        encode::index_header(&mut self.bytes, ElementType::EmbeddedDocument, self.count);
        let start = self.bytes.len();
        match write(&mut self.bytes) {
            Ok(()) => {
                self.count += 1;
                self.doc_bytes += self.bytes.len() - start;
                Ok(())
            }
            Err(e) => {
                self.bytes.truncate(mark);
                Err(e)
            }
        }
    }

    /// Number of documents.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Total size of the documents, as the batch byte budget counts it.
    pub fn doc_bytes(&self) -> usize {
        self.doc_bytes
    }

    /// The documents, decoded again (a router merging its shards' batches reads them).
    pub fn documents(&self) -> Result<Vec<Document>, bson::de::Error> {
        let mut out = Vec::with_capacity(self.count);
        let mut rest = &self.bytes[..];
        while let Some((_, after_type)) = rest.split_first() {
            // Skip the element's index key (a C string).
            let key_end = after_type
                .iter()
                .position(|b| *b == 0)
                .map_or(after_type.len(), |i| i + 1);
            let body = &after_type[key_end..];
            let len = body.get(..4).map_or(0, |b| {
                i32::from_le_bytes([b[0], b[1], b[2], b[3]]).max(0) as usize
            });
            let (doc, next) = body.split_at(len.min(body.len()));
            out.push(Document::from_reader(doc)?);
            rest = next;
        }
        Ok(out)
    }

    /// Size of the batch as an array value.
    pub fn encoded_len(&self) -> usize {
        self.bytes.len() + 5
    }

    /// Appends the batch as an array value.
    fn write_array(&self, buf: &mut Vec<u8>) {
        let start = encode::open(buf);
        buf.extend_from_slice(&self.bytes);
        encode::end(buf, start);
    }
}

/// A reply's `cursor` field with its batch already encoded: `{firstBatch|nextBatch: [...],
/// postBatchResumeToken (change streams), id, ns}`, in the server's order.
#[derive(Clone, Debug)]
pub struct CursorReply {
    /// `firstBatch` (find, aggregate) or `nextBatch` (getMore).
    pub first: bool,
    pub batch: EncodedBatch,
    pub post_batch_resume_token: Option<Document>,
    /// 0 once the cursor is exhausted.
    pub id: i64,
    pub ns: String,
    /// The snapshot a `readConcern: snapshot` read ran at (first batch only).
    pub at_cluster_time: Option<bson::Timestamp>,
}

impl CursorReply {
    /// Appends the whole `cursor` element.
    pub fn write_element(&self, buf: &mut Vec<u8>) -> Result<(), EncodeError> {
        encode::element_header(buf, ElementType::EmbeddedDocument, "cursor")?;
        let start = encode::open(buf);
        let field = if self.first {
            "firstBatch"
        } else {
            "nextBatch"
        };
        encode::element_header(buf, ElementType::Array, field)?;
        self.batch.write_array(buf);
        if let Some(token) = &self.post_batch_resume_token {
            encode::element_header(buf, ElementType::EmbeddedDocument, "postBatchResumeToken")?;
            encode::document(buf, token)?;
        }
        encode::element_header(buf, ElementType::Int64, "id")?;
        buf.extend_from_slice(&self.id.to_le_bytes());
        encode::element_header(buf, ElementType::String, "ns")?;
        encode::string(buf, &self.ns);
        if let Some(ts) = self.at_cluster_time {
            encode::element_header(buf, ElementType::Timestamp, "atClusterTime")?;
            buf.extend_from_slice(&ts.increment.to_le_bytes());
            buf.extend_from_slice(&ts.time.to_le_bytes());
        }
        encode::end(buf, start);
        Ok(())
    }

    /// The element's size, about (a capacity hint).
    pub fn size_hint(&self) -> usize {
        128 + self.ns.len() + self.batch.encoded_len()
    }
}
