//! Change streams rendered from the oplog: scope (collection, database, cluster), the
//! fullDocument and fullDocumentBeforeChange modes, expanded events, invalidation, and
//! opaque, totally ordered resume tokens.

use bson::{doc, Bson, Document, Timestamp};

use crate::error::{codes, CmdResult, CommandError};
use crate::query::matcher::Matcher;
use crate::query::order::OrdBson;
use crate::storage::{ts_lt, EventKind, OplogEntry, Storage};

/// Largest batch returned, in bytes (the server's 16 MiB reply budget, less headroom).
const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024 - 64 * 1024;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    Cluster,
    Database(String),
    Collection(String, String),
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

/// Encodes a resume token: hex of (time, increment, kind), so byte order is time order.
pub fn encode_token(ts: Timestamp, kind: u8) -> Document {
    doc! {"_data": format!("82{:08X}{:08X}{:02X}", ts.time, ts.increment, kind)}
}

fn decode_token(token: &Document) -> CmdResult<(Timestamp, u8)> {
    let bad = || CommandError::new(codes::INVALID_RESUME_TOKEN, "invalid resume token");
    let data = token.get_str("_data").map_err(|_| bad())?;
    if data.len() != 20 || !data.starts_with("82") {
        return Err(bad());
    }
    let time = u32::from_str_radix(&data[2..10], 16).map_err(|_| bad())?;
    let increment = u32::from_str_radix(&data[10..18], 16).map_err(|_| bad())?;
    let kind = u8::from_str_radix(&data[18..20], 16).map_err(|_| bad())?;
    Ok((Timestamp { time, increment }, kind))
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
    /// Entries with ts <= after (or < after when `inclusive`) have been consumed.
    after: Timestamp,
    inclusive: bool,
    /// Set after an invalidating event; the next batch carries the invalidate.
    pending_invalidate: Option<(Timestamp, bson::DateTime)>,
    pub finished: bool,
    filter: Option<Matcher>,
    /// Stages after the `$match` (projection-like stages), applied per event.
    stages: Vec<Document>,
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
            let (ts, kind) = decode_token(token)?;
            if kind == TOKEN_INVALIDATE {
                return Err(CommandError::new(
                    codes::INVALID_RESUME_TOKEN,
                    "Attempting to resume a change stream using 'resumeAfter' is not allowed from an invalidate notification.",
                ));
            }
            (ts, false, None)
        } else if let Ok(token) = spec.get_document("startAfter") {
            let (ts, _) = decode_token(token)?;
            (ts, false, None)
        } else if let Some(v) = spec.get("startAtOperationTime") {
            match v {
                Bson::Timestamp(ts) => (*ts, true, None),
                _ => {
                    return Err(CommandError::type_mismatch(
                        "startAtOperationTime must be a timestamp",
                    ))
                }
            }
        } else {
            (storage.cluster_time(), false, None)
        };
        let lost = if inclusive {
            storage
                .oplog
                .truncated_through
                .is_some_and(|t| !ts_lt(t, after))
        } else {
            storage.oplog.lost_after(after)
        };
        if lost {
            return Err(history_lost());
        }
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
            stages,
        })
    }

    /// The resume token of the current position (postBatchResumeToken of an empty batch).
    fn position_token(&self, storage: &mut Storage) -> Document {
        // Everything up to the cluster time has been examined once a batch ends empty.
        let now = storage.cluster_time();
        let ts = if ts_lt(self.after, now) {
            now
        } else {
            self.after
        };
        encode_token(ts, TOKEN_EVENT)
    }

    /// Next events (up to `max`), with the postBatchResumeToken to report.
    pub fn next_batch(
        &mut self,
        storage: &mut Storage,
        max: usize,
    ) -> CmdResult<(Vec<Document>, Document)> {
        if self.finished {
            return Ok((Vec::new(), encode_token(self.after, TOKEN_INVALIDATE)));
        }
        if let Some((ts, wall)) = self.pending_invalidate.take() {
            self.finished = true;
            let token = encode_token(ts, TOKEN_INVALIDATE);
            let event = doc! {"_id": token.clone(), "operationType": "invalidate", "clusterTime": ts, "wallTime": wall};
            return Ok((vec![event], token));
        }
        let lost = if self.inclusive {
            storage
                .oplog
                .truncated_through
                .is_some_and(|t| !ts_lt(t, self.after))
        } else {
            storage.oplog.lost_after(self.after)
        };
        if lost {
            return Err(history_lost());
        }
        let start = if self.inclusive {
            storage
                .oplog
                .entries
                .partition_point(|e| ts_lt(e.ts, self.after))
        } else {
            storage.oplog.position_after(self.after)
        };
        let mut events = Vec::new();
        let mut bytes = 0usize;
        // Only the last event's token is reported; it is encoded once, at the end.
        let mut last_ts = None;
        let end = storage.oplog.entries.len();
        let mut i = start;
        while i < end && events.len() < max {
            let entry = &storage.oplog.entries[i];
            i += 1;
            self.after = entry.ts;
            self.inclusive = false;
            let Some(event) = self.render(storage, entry)? else {
                continue;
            };
            let invalidates = self.invalidated_by(entry);
            last_ts = Some(entry.ts);
            if self.filter.as_ref().is_none_or(|m| m.matches(&event)) {
                let event = self.apply_stages(event)?;
                bytes += crate::storage::encoded_size(&event);
                events.push(event);
            }
            if invalidates {
                self.pending_invalidate = Some((entry.ts, entry.wall));
                break;
            }
            if bytes > MAX_BATCH_BYTES {
                break;
            }
        }
        let token = if i >= end && self.pending_invalidate.is_none() {
            self.position_token(storage)
        } else {
            encode_token(last_ts.unwrap_or(self.after), TOKEN_EVENT)
        };
        if i >= end && self.pending_invalidate.is_none() {
            // Caught up: everything up to the cluster time is consumed.
            let now = storage.cluster_time();
            if ts_lt(self.after, now) {
                self.after = now;
            }
        }
        Ok((events, token))
    }

    fn apply_stages(&self, event: Document) -> CmdResult<Document> {
        if self.stages.is_empty() {
            return Ok(event);
        }
        let out = crate::query::aggregate::run_pipeline(vec![event], &self.stages)?;
        Ok(out.into_iter().next().unwrap_or_default())
    }

    fn in_scope(&self, entry: &OplogEntry) -> bool {
        if entry.kind == EventKind::Noop {
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

    /// The event document for an entry, or None when this stream does not show it.
    fn render(&self, storage: &Storage, entry: &OplogEntry) -> CmdResult<Option<Document>> {
        if !self.in_scope(entry) {
            return Ok(None);
        }
        if entry.kind.is_expanded() && !self.show_expanded {
            return Ok(None);
        }
        if let Scope::Collection(..) = self.scope {
            if entry.kind == EventKind::DropDatabase {
                // The collection's own drop entry came first and invalidated the stream.
                return Ok(None);
            }
        }
        let mut ev = doc! {
            "_id": encode_token(entry.ts, TOKEN_EVENT),
            "operationType": entry.kind.operation_type(),
            "clusterTime": entry.ts,
            "wallTime": entry.wall,
        };
        if self.show_expanded {
            if let Some(uuid) = &entry.uuid {
                ev.insert("collectionUUID", uuid.clone());
            }
        }
        if entry.kind == EventKind::DropDatabase {
            ev.insert("ns", doc! {"db": entry.db.clone()});
        } else {
            ev.insert(
                "ns",
                doc! {"db": entry.db.clone(), "coll": entry.coll.clone()},
            );
        }
        if let Some(key) = &entry.document_key {
            ev.insert("documentKey", key.clone());
        }
        let images_enabled = entry.pre_image.is_some();
        match entry.kind {
            EventKind::Insert | EventKind::Replace => {
                ev.insert(
                    "fullDocument",
                    entry
                        .full_document
                        .as_deref()
                        .map(|d| Bson::Document(d.clone()))
                        .unwrap_or(Bson::Null),
                );
            }
            EventKind::Update => {
                if let Some(d) = &entry.update_description {
                    let truncated: Vec<Bson> = d
                        .truncated_arrays
                        .iter()
                        .map(|(f, n)| Bson::Document(doc! {"field": f.clone(), "newSize": *n}))
                        .collect();
                    let mut description = doc! {"updatedFields": d.updated_fields.clone(), "removedFields": d.removed_fields.clone(), "truncatedArrays": truncated};
                    if self.show_expanded && self.disambiguate && !d.disambiguated_paths.is_empty()
                    {
                        description.insert("disambiguatedPaths", d.disambiguated_paths.clone());
                    }
                    ev.insert("updateDescription", description);
                }
                match self.full_document {
                    FullDocument::Default => {}
                    FullDocument::UpdateLookup => {
                        let current = entry
                            .document_key
                            .as_ref()
                            .and_then(|k| k.get("_id"))
                            .and_then(|id| {
                                storage
                                    .collection(&entry.db, &entry.coll)
                                    .and_then(|c| c.docs.get(&OrdBson(id.clone())))
                            });
                        ev.insert(
                            "fullDocument",
                            current
                                .map(|d| Bson::Document(Document::clone(d)))
                                .unwrap_or(Bson::Null),
                        );
                    }
                    FullDocument::WhenAvailable | FullDocument::Required => {
                        let post = if images_enabled {
                            entry.full_document.clone()
                        } else {
                            None
                        };
                        if post.is_none() && self.full_document == FullDocument::Required {
                            return Err(missing_image("post", entry));
                        }
                        ev.insert(
                            "fullDocument",
                            post.map(|d| Bson::Document(Document::clone(&d)))
                                .unwrap_or(Bson::Null),
                        );
                    }
                }
            }
            EventKind::Rename => {
                if let Some((db, coll)) = &entry.to {
                    ev.insert("to", doc! {"db": db.clone(), "coll": coll.clone()});
                }
            }
            _ => {}
        }
        if matches!(
            entry.kind,
            EventKind::Update | EventKind::Replace | EventKind::Delete
        ) {
            match self.before_change {
                BeforeChange::Off => {}
                BeforeChange::WhenAvailable => {
                    ev.insert(
                        "fullDocumentBeforeChange",
                        entry
                            .pre_image
                            .clone()
                            .map(Bson::Document)
                            .unwrap_or(Bson::Null),
                    );
                }
                BeforeChange::Required => match &entry.pre_image {
                    Some(d) => {
                        ev.insert("fullDocumentBeforeChange", d.clone());
                    }
                    None => return Err(missing_image("pre", entry)),
                },
            }
        }
        if self.show_expanded {
            if let Some(desc) = &entry.operation_description {
                ev.insert("operationDescription", desc.clone());
            }
        }
        Ok(Some(ev))
    }
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
