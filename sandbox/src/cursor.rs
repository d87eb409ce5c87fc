//! Open cursors keyed by their Int64 id, reaped after an idle timeout.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bson::Document;
use parking_lot::Mutex;

use crate::changestream::ChangeStream;

/// How long an unused cursor lives (the server's default is 10 minutes).
pub const CURSOR_IDLE_TIMEOUT: Duration = Duration::from_secs(600);

pub enum CursorState {
    /// Remaining documents of a query (shared with the collection until sent).
    Documents(VecDeque<Arc<Document>>),
    ChangeStream(Box<ChangeStream>),
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
