//! Open cursors keyed by their Int64 id, reaped after an idle timeout; and the `cursor`
//! field of a reply, whose batch is encoded as it is taken so no copy of a stored or
//! oplog document is ever built just to be serialized and dropped.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bson::spec::ElementType;
use bson::Document;
use parking_lot::Mutex;

use crate::changestream::ChangeStream;
use crate::encode::{self, EncodeError};

/// How long an unused cursor lives (the server's default is 10 minutes).
pub const CURSOR_IDLE_TIMEOUT: Duration = Duration::from_secs(600);

pub enum CursorState {
    /// Remaining documents of a query (shared with the collection until sent).
    Documents(VecDeque<Arc<Document>>),
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
}

#[derive(Default)]
pub struct CursorRegistry {
    next_id: AtomicI64,
    cursors: Mutex<HashMap<i64, Cursor>>,
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
    pub fn reap_idle(&self) {
        self.cursors
            .lock()
            .retain(|_, c| c.last_used.elapsed() < CURSOR_IDLE_TIMEOUT);
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
