//! Change streams rendered from the oplog: scope (collection, database, cluster), the
//! fullDocument and fullDocumentBeforeChange modes, expanded events, invalidation, and
//! opaque, totally ordered resume tokens.
//!
//! Events are rendered straight into a batch's BSON bytes, reading the oplog entry's
//! documents in place; only a stream with a `$match` or later stages builds each event as
//! a [`Document`] first. One `render` drives both forms, so they are the same bytes.

use bson::spec::ElementType;
use bson::{doc, Binary, Bson, Document, Timestamp};

use crate::cursor::EncodedBatch;
use crate::encode;
use crate::error::{codes, CmdResult, CommandError};
use crate::query::matcher::Matcher;
use crate::query::order::OrdBson;
use crate::query::update::UpdateDescription;
use crate::storage::{ts_lt, EventKind, OplogEntry, OplogPosition, Storage};

/// Largest batch returned, in bytes (the server's 16 MiB reply budget, less headroom).
const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024 - 64 * 1024;
/// Largest event a stream can return (the server's internal BSON limit, 16 MB + 16 KB);
/// a larger one fails the stream with 10334 BSONObjectTooLarge unless it is split.
const MAX_EVENT_BYTES: usize = 16 * 1024 * 1024 + 16 * 1024;
/// 10334 BSONObjectTooLarge.
const BSON_OBJECT_TOO_LARGE: i32 = 10334;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    Cluster,
    Database(String),
    Collection(String, String),
}

impl Scope {
    /// The scope of a `$changeStream` opened by `aggregate` on `db`: on a collection, on
    /// the database (`aggregate: 1`), or on the whole cluster (`admin` with
    /// `allChangesForCluster: true`).
    pub fn of_request(db: &str, coll: Option<&str>, spec: &Document) -> CmdResult<Scope> {
        let all = spec.get_bool("allChangesForCluster").unwrap_or(false);
        match (coll, all) {
            (Some(c), _) => Ok(Scope::Collection(db.to_string(), c.to_string())),
            (None, true) if db != "admin" => Err(CommandError::new(
                codes::INVALID_NAMESPACE,
                "A $changeStream with 'allChangesForCluster:true' may only be opened on the 'admin' database",
            )),
            (None, true) => Ok(Scope::Cluster),
            (None, false) if db == "admin" => Err(CommandError::new(
                codes::INVALID_NAMESPACE,
                "$changeStream on the admin database requires allChangesForCluster: true",
            )),
            (None, false) => Ok(Scope::Database(db.to_string())),
        }
    }

    /// The namespace a stream's cursor reports.
    pub fn cursor_ns(&self) -> String {
        match self {
            Scope::Cluster => "admin.$cmd.aggregate".to_string(),
            Scope::Database(db) => format!("{db}.$cmd.aggregate"),
            Scope::Collection(db, c) => format!("{db}.{c}"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FullDocument {
    Default,
    UpdateLookup,
    WhenAvailable,
    Required,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BeforeChange {
    Off,
    WhenAvailable,
    Required,
}

/// Resume-token kinds; an invalidate sorts after the event that caused it.
const TOKEN_EVENT: u8 = 0;
const TOKEN_INVALIDATE: u8 = 1;

/// Length of a token's `_data`: "82", then time, increment, txnOpIndex, fragment and kind.
const TOKEN_LEN: usize = 32;

/// A decoded resume token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Token {
    /// The event's oplog position (cluster time and txnOpIndex).
    pub position: OplogPosition,
    /// Fragment of a split event (0 when the event is whole).
    pub fragment: u16,
    pub kind: u8,
}

/// Encodes a resume token: hex of (time, increment, txnOpIndex, fragment, kind), so byte
/// order is stream order.
pub fn encode_token(position: OplogPosition, kind: u8) -> Document {
    encode_fragment_token(position, 0, kind)
}

/// [`encode_token`] for one fragment of a split event.
pub fn encode_fragment_token(position: OplogPosition, fragment: u16, kind: u8) -> Document {
    let data = token_data(position, fragment, kind);
    doc! {"_data": String::from_utf8_lossy(&data).into_owned()}
}

/// The `_data` string of a token, in upper-case hex.
fn token_data(position: OplogPosition, fragment: u16, kind: u8) -> [u8; TOKEN_LEN] {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = [0u8; TOKEN_LEN];
    out[0] = b'8';
    out[1] = b'2';
    let bytes = position
        .ts
        .time
        .to_be_bytes()
        .into_iter()
        .chain(position.ts.increment.to_be_bytes())
        .chain(position.op.to_be_bytes())
        .chain(fragment.to_be_bytes())
        .chain([kind]);
    for (i, b) in bytes.enumerate() {
        out[2 + 2 * i] = HEX[usize::from(b >> 4)];
        out[3 + 2 * i] = HEX[usize::from(b & 0xf)];
    }
    out
}

pub fn decode_token(token: &Document) -> CmdResult<Token> {
    let bad = || CommandError::new(codes::INVALID_RESUME_TOKEN, "invalid resume token");
    let data = token.get_str("_data").map_err(|_| bad())?;
    if data.len() != TOKEN_LEN || !data.starts_with("82") || !data.is_ascii() {
        return Err(bad());
    }
    let hex32 = |r: std::ops::Range<usize>| u32::from_str_radix(&data[r], 16).map_err(|_| bad());
    let time = hex32(2..10)?;
    let increment = hex32(10..18)?;
    let op = hex32(18..26)?;
    let fragment = u16::from_str_radix(&data[26..30], 16).map_err(|_| bad())?;
    let kind = u8::from_str_radix(&data[30..32], 16).map_err(|_| bad())?;
    Ok(Token {
        position: OplogPosition {
            ts: Timestamp { time, increment },
            op,
        },
        fragment,
        kind,
    })
}

/// An open change stream: where it is in the oplog and how to render events.
#[derive(Debug)]
pub struct ChangeStream {
    pub scope: Scope,
    full_document: FullDocument,
    before_change: BeforeChange,
    show_expanded: bool,
    /// Whether update events carry `disambiguatedPaths` (servers 6.1+, with
    /// `showExpandedEvents`).
    pub disambiguate: bool,
    /// Entries at or before `after` (before it when `inclusive`) have been consumed.
    after: OplogPosition,
    inclusive: bool,
    /// Set after an invalidating event; the next batch carries the invalidate.
    pending_invalidate: Option<(Timestamp, bson::DateTime)>,
    pub finished: bool,
    filter: Option<Matcher>,
    /// Stages after the `$match` (projection-like stages), applied per event.
    stages: Vec<Document>,
    /// When the only stage is a `$project` including top-level fields: those fields,
    /// rendered straight to bytes like a stream without stages.
    project: Option<Vec<String>>,
    /// The pipeline ends with `$changeStreamSplitLargeEvent`: events over 16 MB come as
    /// fragments.
    split: bool,
    /// Resumed from a fragment's token: the event at this position resumes after that
    /// fragment.
    resume_fragment: Option<(OplogPosition, u16)>,
}

/// The fields of `[{$project: {a: 1, b: true, ...}}]` when it only includes top-level
/// event fields (`_id` stays, as in any inclusion projection).
fn simple_projection(stages: &[Document]) -> Option<Vec<String>> {
    let [stage] = stages else {
        return None;
    };
    if stage.len() != 1 {
        return None;
    }
    let spec = stage.get_document("$project").ok()?;
    let mut fields = vec!["_id".to_string()];
    for (k, v) in spec {
        let included = match v {
            Bson::Boolean(b) => *b,
            Bson::Int32(i) => *i != 0,
            Bson::Int64(i) => *i != 0,
            Bson::Double(d) => *d != 0.0,
            _ => return None,
        };
        if !included || k.contains('.') || k.starts_with('$') || k == "_id" {
            return None;
        }
        fields.push(k.clone());
    }
    Some(fields)
}

impl ChangeStream {
    /// Opens a stream from a `$changeStream` stage spec and the stages that follow it.
    pub fn open(
        storage: &mut Storage,
        scope: Scope,
        spec: &Document,
        rest: &[Document],
    ) -> CmdResult<ChangeStream> {
        for (k, _) in spec {
            if !matches!(
                k.as_str(),
                "fullDocument"
                    | "fullDocumentBeforeChange"
                    | "resumeAfter"
                    | "startAfter"
                    | "startAtOperationTime"
                    | "allChangesForCluster"
                    | "showExpandedEvents"
                    | "allowToRunOnConfigDB"
                    | "showSystemEvents"
            ) {
                return Err(CommandError::new(
                    40415,
                    format!("BSON field '$changeStream.{k}' is an unknown field."),
                ));
            }
        }
        let full_document = match spec.get_str("fullDocument").unwrap_or("default") {
            "default" => FullDocument::Default,
            "updateLookup" => FullDocument::UpdateLookup,
            "whenAvailable" => FullDocument::WhenAvailable,
            "required" => FullDocument::Required,
            other => {
                return Err(CommandError::bad_value(format!(
                    "unrecognized value for fullDocument: '{other}'"
                )))
            }
        };
        let before_change = match spec.get_str("fullDocumentBeforeChange").unwrap_or("off") {
            "off" => BeforeChange::Off,
            "whenAvailable" => BeforeChange::WhenAvailable,
            "required" => BeforeChange::Required,
            other => {
                return Err(CommandError::bad_value(format!(
                    "unrecognized value for fullDocumentBeforeChange: '{other}'"
                )))
            }
        };
        let starts = ["resumeAfter", "startAfter", "startAtOperationTime"]
            .iter()
            .filter(|k| spec.contains_key(**k))
            .count();
        if starts > 1 {
            return Err(CommandError::new(
                codes::BAD_VALUE,
                "Only one type of resume option is allowed, but multiple were found.",
            ));
        }
        let (after, inclusive, pending_invalidate) = if let Ok(token) =
            spec.get_document("resumeAfter")
        {
            let t = decode_token(token)?;
            if t.kind == TOKEN_INVALIDATE {
                return Err(CommandError::new(
                    codes::INVALID_RESUME_TOKEN,
                    "Attempting to resume a change stream using 'resumeAfter' is not allowed from an invalidate notification.",
                ));
            }
            (t.position, false, None)
        } else if let Ok(token) = spec.get_document("startAfter") {
            (decode_token(token)?.position, false, None)
        } else if let Some(v) = spec.get("startAtOperationTime") {
            match v {
                Bson::Timestamp(ts) => (OplogPosition::at(*ts), true, None),
                _ => {
                    return Err(CommandError::type_mismatch(
                        "startAtOperationTime must be a timestamp",
                    ))
                }
            }
        } else {
            (OplogPosition::end_of(storage.cluster_time()), false, None)
        };
        let lost = if inclusive {
            storage
                .oplog
                .truncated_through
                .is_some_and(|t| !ts_lt(t, after.ts))
        } else {
            storage.oplog.lost_after(after.ts)
        };
        if lost {
            return Err(history_lost());
        }
        let mut rest = rest;
        let mut split = false;
        if let Some((last, before)) = rest.split_last() {
            if last.contains_key("$changeStreamSplitLargeEvent") {
                split = true;
                rest = before;
            }
        }
        if rest
            .iter()
            .any(|s| s.contains_key("$changeStreamSplitLargeEvent"))
        {
            return Err(CommandError::new(
                7182802,
                "$changeStreamSplitLargeEvent must be the last stage of the pipeline",
            ));
        }
        let mut resume_fragment = None;
        if let Ok(token) = spec
            .get_document("resumeAfter")
            .or_else(|_| spec.get_document("startAfter"))
        {
            let t = decode_token(token)?;
            if t.fragment > 0 {
                if !split {
                    return Err(CommandError::new(
                        codes::CHANGE_STREAM_FATAL_ERROR,
                        "To resume from a split event, the $changeStream pipeline must end with $changeStreamSplitLargeEvent",
                    ));
                }
                resume_fragment = Some((t.position, t.fragment));
            }
        }
        // Resuming inside a split event reads that event again, for its later fragments.
        let (after, inclusive) = match resume_fragment {
            Some((position, _)) => (position, true),
            None => (after, inclusive),
        };
        let mut filter = None;
        let mut stages = Vec::new();
        for stage in rest {
            match stage.get_document("$match") {
                Ok(m) if filter.is_none() && stages.is_empty() => filter = Some(Matcher::new(m)?),
                _ => stages.push(stage.clone()),
            }
        }
        Ok(ChangeStream {
            scope,
            full_document,
            before_change,
            show_expanded: spec.get_bool("showExpandedEvents").unwrap_or(false),
            disambiguate: false,
            after,
            inclusive,
            pending_invalidate,
            finished: false,
            filter,
            project: simple_projection(&stages),
            stages,
            split,
            resume_fragment,
        })
    }

    /// The resume token of the current position (postBatchResumeToken of an empty batch).
    fn position_token(&self, storage: &mut Storage) -> Document {
        // Everything up to the cluster time has been examined once a batch ends empty.
        // At the cluster time itself the last event's own token stands for it.
        let now = storage.majority_point();
        if ts_lt(self.after.ts, now) {
            encode_token(OplogPosition::end_of(now), TOKEN_EVENT)
        } else {
            encode_token(self.after, TOKEN_EVENT)
        }
    }

    /// Next events (up to `max`), encoded, with the postBatchResumeToken to report.
    pub fn next_batch(
        &mut self,
        storage: &mut Storage,
        max: usize,
    ) -> CmdResult<(EncodedBatch, Document)> {
        let mut batch = EncodedBatch::default();
        if self.finished {
            return Ok((batch, encode_token(self.after, TOKEN_INVALIDATE)));
        }
        if let Some((ts, wall)) = self.pending_invalidate.take() {
            self.finished = true;
            let token = encode_token(OplogPosition::at(ts), TOKEN_INVALIDATE);
            let event = doc! {"_id": token.clone(), "operationType": "invalidate", "clusterTime": ts, "wallTime": wall};
            batch.push(&event)?;
            return Ok((batch, token));
        }
        let lost = if self.inclusive {
            storage
                .oplog
                .truncated_through
                .is_some_and(|t| !ts_lt(t, self.after.ts))
        } else {
            storage.oplog.lost_after(self.after.ts)
        };
        if lost {
            return Err(history_lost());
        }
        let start = if self.inclusive {
            storage.oplog.index_at(self.after)
        } else {
            storage.oplog.index_after(self.after)
        };
        // Without a filter or stages (or with only a simple inclusion `$project`), events
        // go straight to bytes.
        let raw = self.filter.is_none()
            && !self.split
            && (self.stages.is_empty() || self.project.is_some());
        // Only the last event's token is reported; it is encoded once, at the end.
        let mut last_ts = None;
        let mut last_fragment = 0u16;
        // Only majority-committed entries are shown.
        let end = if storage.majority_lags() {
            let point = storage.majority_point();
            storage.oplog.index_after(OplogPosition::end_of(point))
        } else {
            storage.oplog.entries.len()
        };
        let mut i = start;
        while i < end && batch.len() < max {
            let entry = &storage.oplog.entries[i];
            let (after_before, inclusive_before) = (self.after, self.inclusive);
            i += 1;
            self.after = entry.position();
            self.inclusive = false;
            if !self.shows(entry) {
                continue;
            }
            last_fragment = 0;
            if raw {
                let before = batch.doc_bytes();
                batch.push_with(|buf| {
                    let start = encode::open(buf);
                    match &self.project {
                        Some(fields) => self.render(
                            storage,
                            entry,
                            &mut Projected {
                                inner: EventBytes(buf),
                                fields,
                            },
                        )?,
                        None => self.render(storage, entry, &mut EventBytes(buf))?,
                    }
                    encode::end(buf, start);
                    Ok::<_, CommandError>(())
                })?;
                let size = batch.doc_bytes() - before;
                if size > MAX_EVENT_BYTES {
                    return Err(too_large(size, entry.position()));
                }
            } else {
                let mut event = EventDocument(Document::new());
                self.render(storage, entry, &mut event)?;
                if self.filter.as_ref().is_none_or(|m| m.matches(&event.0)) {
                    // Stages after the first `$match` may filter the event out too.
                    let Some(event) = self.apply_stages(event.0)? else {
                        continue;
                    };
                    let size = crate::storage::encoded_size(&event);
                    if size <= MAX_EVENT_BYTES {
                        batch.push(&event)?;
                    } else if !self.split {
                        return Err(too_large(size, entry.position()));
                    } else {
                        // A split event starts a batch of its own, so all its fragments
                        // go out together.
                        if !batch.is_empty() {
                            self.after = after_before;
                            self.inclusive = inclusive_before;
                            i -= 1;
                            break;
                        }
                        let fragments = split_event(event, entry.position())?;
                        let of = fragments.len() as u16;
                        let skip = match self.resume_fragment.take() {
                            Some((at, n)) if at == entry.position() => n,
                            _ => 0,
                        };
                        for (n, fragment) in fragments.into_iter().enumerate() {
                            let n = n as u16 + 1;
                            if n > skip {
                                batch.push(&fragment)?;
                            }
                        }
                        if skip >= of {
                            // Resumed after the last fragment: the event is done.
                            continue;
                        }
                        last_fragment = of;
                    }
                }
            }
            last_ts = Some(entry.position());
            if self.invalidated_by(entry) {
                self.pending_invalidate = Some((entry.ts, entry.wall));
                break;
            }
            if batch.doc_bytes() > MAX_BATCH_BYTES {
                break;
            }
        }
        let token = if i >= end && self.pending_invalidate.is_none() && last_fragment == 0 {
            self.position_token(storage)
        } else {
            encode_fragment_token(last_ts.unwrap_or(self.after), last_fragment, TOKEN_EVENT)
        };
        if i >= end && self.pending_invalidate.is_none() {
            // Caught up: everything up to the cluster time is consumed.
            let now = OplogPosition::end_of(storage.majority_point());
            self.after = self.after.max(now);
        }
        Ok((batch, token))
    }

    fn apply_stages(&self, event: Document) -> CmdResult<Option<Document>> {
        if self.stages.is_empty() {
            return Ok(Some(event));
        }
        let token = event.get("_id").cloned();
        let out = crate::query::aggregate::run_pipeline(vec![event], &self.stages)?;
        match out.into_iter().next() {
            // The resume token must survive the pipeline, or the stream could not resume.
            Some(d) if d.get("_id") != token.as_ref() => Err(CommandError::new(
                codes::CHANGE_STREAM_FATAL_ERROR,
                "Encountered an event whose _id field, which contains the resume token, was modified by the pipeline. Modifying the _id field of an event makes it impossible to resume the stream from that point.",
            )),
            other => Ok(other),
        }
    }

    fn in_scope(&self, entry: &OplogEntry) -> bool {
        // Chunk migrations' copies and range deletions are not changes to the data.
        if entry.kind == EventKind::Noop || entry.from_migrate {
            return false;
        }
        if entry.coll.starts_with("system.") {
            return false;
        }
        match &self.scope {
            Scope::Cluster => !matches!(entry.db.as_str(), "admin" | "local" | "config"),
            Scope::Database(db) => &entry.db == db,
            Scope::Collection(db, coll) => {
                &entry.db == db && (&entry.coll == coll || (entry.kind == EventKind::DropDatabase))
            }
        }
    }

    fn invalidated_by(&self, entry: &OplogEntry) -> bool {
        match &self.scope {
            Scope::Cluster => false,
            Scope::Database(db) => entry.kind == EventKind::DropDatabase && &entry.db == db,
            Scope::Collection(db, coll) => {
                &entry.db == db
                    && ((&entry.coll == coll
                        && matches!(entry.kind, EventKind::Drop | EventKind::Rename))
                        || entry.kind == EventKind::DropDatabase)
            }
        }
    }

    /// Whether this stream shows an event for the entry.
    fn shows(&self, entry: &OplogEntry) -> bool {
        if !self.in_scope(entry) {
            return false;
        }
        if entry.kind.is_expanded() && !self.show_expanded {
            return false;
        }
        // In a collection stream the collection's own drop entry came first and
        // invalidated the stream.
        !(matches!(self.scope, Scope::Collection(..)) && entry.kind == EventKind::DropDatabase)
    }

    /// Writes the event of an entry this stream [shows](Self::shows), field by field.
    fn render(
        &self,
        storage: &Storage,
        entry: &OplogEntry,
        ev: &mut impl EventSink,
    ) -> CmdResult<()> {
        ev.token("_id", entry.position(), TOKEN_EVENT)?;
        ev.string("operationType", entry.kind.operation_type())?;
        ev.value("clusterTime", &Bson::Timestamp(entry.ts))?;
        ev.value("wallTime", &Bson::DateTime(entry.wall))?;
        if self.show_expanded {
            if let Some(uuid) = &entry.uuid {
                ev.binary("collectionUUID", uuid)?;
            }
        }
        if entry.kind == EventKind::DropDatabase {
            ev.namespace("ns", &entry.db, None)?;
        } else {
            ev.namespace("ns", &entry.db, Some(&entry.coll))?;
        }
        if let Some(key) = &entry.document_key {
            ev.document("documentKey", key)?;
        }
        let images_enabled = entry.pre_image.is_some();
        match entry.kind {
            EventKind::Insert | EventKind::Replace => match entry.full_document.as_deref() {
                Some(d) => ev.document("fullDocument", d)?,
                None => ev.value("fullDocument", &Bson::Null)?,
            },
            EventKind::Update => {
                if let Some(d) = &entry.update_description {
                    ev.update_description(d, self.show_expanded && self.disambiguate)?;
                }
                let post = match self.full_document {
                    FullDocument::Default => None,
                    FullDocument::UpdateLookup => Some(
                        entry
                            .document_key
                            .as_ref()
                            .and_then(|k| k.get("_id"))
                            .and_then(|id| {
                                storage
                                    .collection(&entry.db, &entry.coll)
                                    .and_then(|c| c.docs.get(&OrdBson(id.clone())))
                            }),
                    ),
                    FullDocument::WhenAvailable | FullDocument::Required => {
                        let post = entry.full_document.as_ref().filter(|_| images_enabled);
                        if post.is_none() && self.full_document == FullDocument::Required {
                            return Err(missing_image("post", entry));
                        }
                        Some(post)
                    }
                };
                match post {
                    None => {}
                    Some(Some(d)) => ev.document("fullDocument", d)?,
                    Some(None) => ev.value("fullDocument", &Bson::Null)?,
                }
            }
            EventKind::Rename => {
                if let Some((db, coll)) = &entry.to {
                    ev.namespace("to", db, Some(coll))?;
                }
            }
            _ => {}
        }
        if let Some(txn) = &entry.txn {
            ev.document("lsid", &txn.lsid)?;
            ev.value("txnNumber", &Bson::Int64(txn.txn_number))?;
        }
        if matches!(
            entry.kind,
            EventKind::Update | EventKind::Replace | EventKind::Delete
        ) {
            match (self.before_change, &entry.pre_image) {
                (BeforeChange::Off, _) => {}
                (_, Some(d)) => ev.document("fullDocumentBeforeChange", d)?,
                (BeforeChange::WhenAvailable, None) => {
                    ev.value("fullDocumentBeforeChange", &Bson::Null)?
                }
                (BeforeChange::Required, None) => return Err(missing_image("pre", entry)),
            }
        }
        if self.show_expanded {
            if let Some(desc) = &entry.operation_description {
                ev.document("operationDescription", desc)?;
            }
        }
        Ok(())
    }
}

/// Receives an event's fields in order: [`EventDocument`] builds the document a `$match`
/// and later stages need, [`EventBytes`] writes BSON without copying any document.
trait EventSink {
    /// A resume token `{_data: ...}`.
    fn token(&mut self, key: &str, position: OplogPosition, kind: u8) -> CmdResult<()>;
    fn string(&mut self, key: &str, s: &str) -> CmdResult<()>;
    /// A small value (timestamps, dates, null).
    fn value(&mut self, key: &str, value: &Bson) -> CmdResult<()>;
    fn binary(&mut self, key: &str, b: &Binary) -> CmdResult<()>;
    fn document(&mut self, key: &str, d: &Document) -> CmdResult<()>;
    /// `{db}` or `{db, coll}`.
    fn namespace(&mut self, key: &str, db: &str, coll: Option<&str>) -> CmdResult<()>;
    /// `updateDescription`; `disambiguate` adds `disambiguatedPaths` when there are any.
    fn update_description(&mut self, d: &UpdateDescription, disambiguate: bool) -> CmdResult<()>;
}

/// Builds the event as a document.
struct EventDocument(Document);

impl EventSink for EventDocument {
    fn token(&mut self, key: &str, position: OplogPosition, kind: u8) -> CmdResult<()> {
        self.0.insert(key, encode_token(position, kind));
        Ok(())
    }
    fn string(&mut self, key: &str, s: &str) -> CmdResult<()> {
        self.0.insert(key, s);
        Ok(())
    }
    fn value(&mut self, key: &str, value: &Bson) -> CmdResult<()> {
        self.0.insert(key, value.clone());
        Ok(())
    }
    fn binary(&mut self, key: &str, b: &Binary) -> CmdResult<()> {
        self.0.insert(key, b.clone());
        Ok(())
    }
    fn document(&mut self, key: &str, d: &Document) -> CmdResult<()> {
        self.0.insert(key, d.clone());
        Ok(())
    }
    fn namespace(&mut self, key: &str, db: &str, coll: Option<&str>) -> CmdResult<()> {
        let ns = match coll {
            Some(coll) => doc! {"db": db, "coll": coll},
            None => doc! {"db": db},
        };
        self.0.insert(key, ns);
        Ok(())
    }
    fn update_description(&mut self, d: &UpdateDescription, disambiguate: bool) -> CmdResult<()> {
        let truncated: Vec<Bson> = d
            .truncated_arrays
            .iter()
            .map(|(f, n)| Bson::Document(doc! {"field": f.clone(), "newSize": *n}))
            .collect();
        let mut description = doc! {"updatedFields": d.updated_fields.clone(), "removedFields": d.removed_fields.clone(), "truncatedArrays": truncated};
        if disambiguate && !d.disambiguated_paths.is_empty() {
            description.insert("disambiguatedPaths", d.disambiguated_paths.clone());
        }
        self.0.insert("updateDescription", description);
        Ok(())
    }
}

/// Writes only the projected fields, in the event's order (as an inclusion `$project`
/// returns them).
struct Projected<'a, 'b> {
    inner: EventBytes<'a>,
    fields: &'b [String],
}

impl Projected<'_, '_> {
    fn keeps(&self, key: &str) -> bool {
        self.fields.iter().any(|f| f == key)
    }
}

impl EventSink for Projected<'_, '_> {
    fn token(&mut self, key: &str, position: OplogPosition, kind: u8) -> CmdResult<()> {
        if self.keeps(key) {
            self.inner.token(key, position, kind)?;
        }
        Ok(())
    }
    fn string(&mut self, key: &str, s: &str) -> CmdResult<()> {
        if self.keeps(key) {
            self.inner.string(key, s)?;
        }
        Ok(())
    }
    fn value(&mut self, key: &str, value: &Bson) -> CmdResult<()> {
        if self.keeps(key) {
            self.inner.value(key, value)?;
        }
        Ok(())
    }
    fn binary(&mut self, key: &str, b: &Binary) -> CmdResult<()> {
        if self.keeps(key) {
            self.inner.binary(key, b)?;
        }
        Ok(())
    }
    fn document(&mut self, key: &str, d: &Document) -> CmdResult<()> {
        if self.keeps(key) {
            self.inner.document(key, d)?;
        }
        Ok(())
    }
    fn namespace(&mut self, key: &str, db: &str, coll: Option<&str>) -> CmdResult<()> {
        if self.keeps(key) {
            self.inner.namespace(key, db, coll)?;
        }
        Ok(())
    }
    fn update_description(&mut self, d: &UpdateDescription, disambiguate: bool) -> CmdResult<()> {
        if self.keeps("updateDescription") {
            self.inner.update_description(d, disambiguate)?;
        }
        Ok(())
    }
}

/// Writes the event's elements into an open BSON document.
struct EventBytes<'a>(&'a mut Vec<u8>);

impl EventSink for EventBytes<'_> {
    fn token(&mut self, key: &str, position: OplogPosition, kind: u8) -> CmdResult<()> {
        encode::element_header(self.0, ElementType::EmbeddedDocument, key)?;
        let start = encode::open(self.0);
        encode::element_header(self.0, ElementType::String, "_data")?;
        let data = token_data(position, 0, kind);
        self.0
            .extend_from_slice(&(data.len() as i32 + 1).to_le_bytes());
        self.0.extend_from_slice(&data);
        self.0.push(0);
        encode::end(self.0, start);
        Ok(())
    }
    fn string(&mut self, key: &str, s: &str) -> CmdResult<()> {
        encode::element_header(self.0, ElementType::String, key)?;
        encode::string(self.0, s);
        Ok(())
    }
    fn value(&mut self, key: &str, value: &Bson) -> CmdResult<()> {
        Ok(encode::element(self.0, key, value)?)
    }
    fn binary(&mut self, key: &str, b: &Binary) -> CmdResult<()> {
        encode::element_header(self.0, ElementType::Binary, key)?;
        encode::binary(self.0, b);
        Ok(())
    }
    fn document(&mut self, key: &str, d: &Document) -> CmdResult<()> {
        encode::element_header(self.0, ElementType::EmbeddedDocument, key)?;
        Ok(encode::document(self.0, d)?)
    }
    fn namespace(&mut self, key: &str, db: &str, coll: Option<&str>) -> CmdResult<()> {
        encode::element_header(self.0, ElementType::EmbeddedDocument, key)?;
        let start = encode::open(self.0);
        self.string("db", db)?;
        if let Some(coll) = coll {
            self.string("coll", coll)?;
        }
        encode::end(self.0, start);
        Ok(())
    }
    fn update_description(&mut self, d: &UpdateDescription, disambiguate: bool) -> CmdResult<()> {
        encode::element_header(self.0, ElementType::EmbeddedDocument, "updateDescription")?;
        let start = encode::open(self.0);
        self.document("updatedFields", &d.updated_fields)?;
        encode::element_header(self.0, ElementType::Array, "removedFields")?;
        let removed = encode::open(self.0);
        for (i, field) in d.removed_fields.iter().enumerate() {
            encode::index_header(self.0, ElementType::String, i);
            encode::string(self.0, field);
        }
        encode::end(self.0, removed);
        encode::element_header(self.0, ElementType::Array, "truncatedArrays")?;
        let truncated = encode::open(self.0);
        for (i, (field, size)) in d.truncated_arrays.iter().enumerate() {
            encode::index_header(self.0, ElementType::EmbeddedDocument, i);
            let item = encode::open(self.0);
            self.string("field", field)?;
            encode::element_header(self.0, ElementType::Int32, "newSize")?;
            self.0.extend_from_slice(&size.to_le_bytes());
            encode::end(self.0, item);
        }
        encode::end(self.0, truncated);
        if disambiguate && !d.disambiguated_paths.is_empty() {
            self.document("disambiguatedPaths", &d.disambiguated_paths)?;
        }
        encode::end(self.0, start);
        Ok(())
    }
}

/// 10334 BSONObjectTooLarge for an event of `size` bytes.
fn too_large(size: usize, position: OplogPosition) -> CommandError {
    CommandError::new(
        BSON_OBJECT_TOO_LARGE,
        format!(
            "BSONObj size: {size} (0x{size:X}) is invalid. Size must be between 0 and {MAX_EVENT_BYTES}(16MB) First element: _id: {}",
            encode_token(position, TOKEN_EVENT)
        ),
    )
}

/// Splits an event over 16 MB into fragments (as `$changeStreamSplitLargeEvent`): each
/// `{_id: <fragment token>, splitEvent: {fragment, of}, ...fields}` under the limit; the
/// smallest top-level fields go first, so the first fragment carries most of the event's
/// context; fields keep their order within a fragment. A single field too large for a
/// fragment fails with BSONObjectTooLarge, as on the server.
fn split_event(event: Document, position: OplogPosition) -> CmdResult<Vec<Document>> {
    // Room for `_id` and `splitEvent` in each fragment.
    const OVERHEAD: usize = 256;
    let mut fields: Vec<(usize, String, Bson, usize)> = event
        .into_iter()
        .filter(|(k, _)| k != "_id")
        .enumerate()
        .map(|(order, (k, v))| {
            let size = crate::storage::encoded_size(&doc! {k.clone(): v.clone()});
            (order, k, v, size)
        })
        .collect();
    fields.sort_by_key(|f| f.3);
    let mut groups: Vec<Vec<(usize, String, Bson)>> = vec![Vec::new()];
    let mut bytes = OVERHEAD;
    for (order, k, v, size) in fields {
        if size + OVERHEAD > MAX_EVENT_BYTES {
            return Err(too_large(size, position));
        }
        if bytes + size > MAX_EVENT_BYTES {
            groups.push(Vec::new());
            bytes = OVERHEAD;
        }
        bytes += size;
        if let Some(g) = groups.last_mut() {
            g.push((order, k, v));
        }
    }
    let of = groups.len();
    Ok(groups
        .into_iter()
        .enumerate()
        .map(|(n, mut group)| {
            group.sort_by_key(|f| f.0);
            let mut fragment = doc! {
                "_id": encode_fragment_token(position, n as u16 + 1, TOKEN_EVENT),
                "splitEvent": {"fragment": n as i32 + 1, "of": of as i32},
            };
            for (_, k, v) in group {
                fragment.insert(k, v);
            }
            fragment
        })
        .collect())
}

fn history_lost() -> CommandError {
    CommandError::new(
        codes::CHANGE_STREAM_HISTORY_LOST,
        "Resume of change stream was not possible, as the resume point may no longer be in the oplog.",
    )
}

fn missing_image(which: &str, entry: &OplogEntry) -> CommandError {
    CommandError::new(
        codes::NO_MATCHING_DOCUMENT,
        format!(
            "Change stream was configured to require a {which}-image for all update, delete and replace events, but the {which}-image was not found for event at {:?} on {}.{}",
            entry.ts, entry.db, entry.coll
        ),
    )
}
