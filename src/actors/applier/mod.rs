//! Applier: one actor per namespace applying change events in stream order, idempotently.
//! Events stay raw BSON from the source cursor to the destination command: nothing is
//! decoded that is only passed on.
//! - insert -> insert; a duplicate key means the document is already there (copied, or
//!   applied before a restart), so it is replaced by key with upsert instead;
//! - replace/update -> replace by key with upsert (update events carry the looked-up
//!   document);
//! - delete -> delete by key.
//!
//! Consecutive statements of one kind go in one command; a change of kind ends it, so
//! the events of one document are applied in order.
//!
//! Transactions: their events (which carry `lsid`/`txnNumber` and share the cluster time
//! of their `applyOps` oplog entry) are applied event by event like any other, not as
//! one destination transaction. The guarantee: every event of a committed transaction is
//! applied, in order per document, and the checkpoint never passes an unapplied one, so
//! the destination converges; while syncing, a reader of the destination may see part of
//! a transaction. Nobody reads the destination as the system of record before the
//! cutover, and at the cutover every transaction is applied whole. (Per-transaction
//! atomicity would need destination transactions, unavailable for the same guarantees
//! on a sharded destination, and would serialise the appliers.) DDL events are applied by
//! [`apply_ddl`] at a barrier, when every applier is idle.

use std::time::Instant;

use actix::prelude::*;
use bson::raw::{RawArray, RawArrayBuf, RawBsonRef, RawDocument};
use bson::{doc, rawdoc, Bson, Document, RawDocumentBuf};
use tracing::Instrument;

mod destination_key;
mod shard_collection;

pub use destination_key::DestinationKeys;

use super::SharedEngine;
use crate::cluster::documents::{self, ReadSize};
use crate::cluster::{ClusterError, Refusal};

/// Largest write command Ferry sends: below the 16 MiB BSON limit with headroom.
const MAX_COMMAND_BYTES: usize = 8 * 1024 * 1024;
/// Most statements in one write command (the server allows 100k).
const MAX_STATEMENTS: usize = 10_000;
/// Most documents read again from the source in one query.
const REFETCH_CHUNK: usize = 1000;
/// How often a document read again from the source follows its collection to a new
/// name when renames keep coming between finding the name and reading under it.
const RENAME_CHASE_LIMIT: usize = 8;
/// The server's error for a write that would change a document's `_id`.
const IMMUTABLE_FIELD: i32 = 66;
/// The server's duplicate key error.
const DUPLICATE_KEY: i32 = 11000;

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("destination: {command} on {ns} reported write errors: {detail}")]
    WriteErrors {
        command: &'static str,
        ns: String,
        detail: String,
    },
    #[error(transparent)]
    Fenced(#[from] crate::checkpoint::FenceError),
    #[error("events for {ns} dropped: the workers that read them were superseded by a restart")]
    Superseded { ns: String },
    #[error("destination: {command} on {ns} was not acknowledged by a majority: {detail}")]
    WriteConcern {
        command: &'static str,
        ns: String,
        detail: String,
        /// A stepdown or a timeout: applying again (idempotent) may pass.
        transient: bool,
    },
    /// The destination cannot follow a change (e.g. a collection sharded differently);
    /// retrying cannot help.
    #[error("{0}")]
    Refused(String),
    /// Two source documents with one `_id` on different shards, for one destination.
    #[error("source: {ns} holds {n} different documents with _id {id} on different shards (it is sharded on another key, so _id is unique only per shard), and the destination can hold only one: give each of them a distinct _id on the source and run `ferry run` again (the failed run resumes), or exclude {ns} with [filter] exclude_namespaces and start over with destination.clear_destination = true")]
    DuplicateId { ns: String, id: String, n: u64 },
    /// A source collection's shard key changed under the migration.
    #[error("source: {operation} on {ns} during the migration changes its shard key, which Ferry cannot replay on the destination: cancel this migration (ferry cancel), drop what it wrote to the destination, and start again once the {operation} has finished on the source (or run it on the destination after the cutover)")]
    ShardKeyChanged { ns: String, operation: String },
    #[error("change event without {field} on {ns}: {event}")]
    Malformed {
        ns: String,
        field: &'static str,
        event: String,
    },
}

impl ApplyError {
    pub fn is_transient(&self) -> bool {
        match self {
            ApplyError::Cluster(e) => e.is_transient(),
            ApplyError::Fenced(e) => e.is_transient(),
            ApplyError::Superseded { .. } => true,
            ApplyError::WriteConcern { transient, .. } => *transient,
            _ => false,
        }
    }
}

/// Events of one namespace, in stream order, as raw BSON. Replies with how many were
/// applied.
#[derive(Message)]
#[rtype(result = "Result<u64, ApplyError>")]
pub struct ApplyEvents(pub Vec<RawDocumentBuf>);

pub struct Applier {
    engine: SharedEngine,
    db: String,
    coll: String,
    /// The worker generation this applier belongs to (see [`super::WorkerGeneration`]).
    generation: u64,
}

impl Applier {
    pub fn new(engine: SharedEngine, db: String, coll: String) -> Applier {
        let generation = engine.generation.current();
        Applier {
            engine,
            db,
            coll,
            generation,
        }
    }
}

impl Actor for Applier {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.engine.config.runtime.mailbox_capacity.max(1));
    }
}

impl Handler<ApplyEvents> for Applier {
    type Result = AtomicResponse<Self, Result<u64, ApplyError>>;
    fn handle(&mut self, msg: ApplyEvents, _ctx: &mut Self::Context) -> Self::Result {
        let engine = self.engine.clone();
        let (db, coll) = (self.db.clone(), self.coll.clone());
        let generation = self.generation;
        let span = tracing::info_span!("applier", ns = %format!("{}.{}", self.db, self.coll));
        AtomicResponse::new(Box::pin(
            async move {
                if engine.generation.current() != generation {
                    return Err(ApplyError::Superseded {
                        ns: format!("{db}.{coll}"),
                    });
                }
                apply_events(&engine, &db, &coll, msg.0, generation).await
            }
            .instrument(span)
            .into_actor(self),
        ))
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Insert,
    Upsert,
    /// An update's changed fields as `$set`/`$unset`/`$push`; no upsert.
    Delta,
    /// An update whose changes cannot be replayed as operators: read the document from
    /// the source and replace it.
    Refetch,
    Delete,
}

/// One write statement: for inserts the document (with its key, for the fallback), for
/// the others the statement itself.
struct Statement {
    kind: Kind,
    body: RawDocumentBuf,
    key: Option<RawDocumentBuf>,
}

/// Replaces the keyed document with `full`, inserting it when missing.
///
/// A document with a top-level `$`-prefixed field (legal since 5.0) cannot be sent as a
/// replacement: the server refuses it with 52 DollarPrefixedFieldName once the filter
/// matches an existing document. It goes as a pipeline replacing the whole document with
/// the literal, which the server accepts for any field names.
fn upsert_statement(key: &RawDocument, full: &RawDocument) -> RawDocumentBuf {
    let dollar_prefixed = full.iter().flatten().any(|(k, _)| k.starts_with('$'));
    if dollar_prefixed {
        let stage = rawdoc! {"$replaceWith": {"$literal": full.to_raw_document_buf()}};
        let mut pipeline = RawArrayBuf::new();
        pipeline.push(stage);
        rawdoc! {"q": key.to_raw_document_buf(), "u": pipeline, "upsert": true}
    } else {
        rawdoc! {"q": key.to_raw_document_buf(), "u": full.to_raw_document_buf(), "upsert": true}
    }
}

/// The write statements replaying one event, in order (none for an event that changes
/// nothing; two for an update that truncates an array it also changes inside).
fn statement_of(ns: &str, event: &RawDocument) -> Result<Vec<Statement>, ApplyError> {
    let malformed = |field| ApplyError::Malformed {
        ns: ns.to_string(),
        field,
        event: short(event),
    };
    // One pass over the event's fields.
    let (mut op, mut key, mut full, mut desc) = (None, None, None, None);
    for (name, value) in event.iter().flatten() {
        match (name, value) {
            ("operationType", RawBsonRef::String(o)) => op = Some(o),
            ("documentKey", RawBsonRef::Document(k)) => key = Some(k),
            ("fullDocument", RawBsonRef::Document(d)) => full = Some(d),
            ("updateDescription", RawBsonRef::Document(d)) => desc = Some(d),
            _ => {}
        }
    }
    let op = op.ok_or_else(|| malformed("operationType"))?;
    let key = key.ok_or_else(|| malformed("documentKey"))?;
    match (op, full) {
        ("insert", Some(full)) => Ok(vec![Statement {
            kind: Kind::Insert,
            body: full.to_raw_document_buf(),
            key: Some(key.to_raw_document_buf()),
        }]),
        ("replace" | "update", Some(full)) => Ok(vec![Statement {
            kind: Kind::Upsert,
            body: upsert_statement(key, full),
            key: None,
        }]),
        // Without the looked-up document (delta mode, or the document is gone by the
        // time of the lookup): apply the changed fields.
        ("update", None) => {
            let desc = desc.ok_or_else(|| malformed("updateDescription"))?;
            Ok(match delta_of(desc) {
                None => Vec::new(),
                Some(Some(updates)) => updates
                    .into_iter()
                    .map(|u| Statement {
                        kind: Kind::Delta,
                        body: rawdoc! {"q": key.to_raw_document_buf(), "u": u, "upsert": false},
                        key: Some(key.to_raw_document_buf()),
                    })
                    .collect(),
                Some(None) => vec![Statement {
                    kind: Kind::Refetch,
                    body: key.to_raw_document_buf(),
                    key: Some(key.to_raw_document_buf()),
                }],
            })
        }
        ("insert" | "replace", None) => Err(malformed("fullDocument")),
        ("delete", _) => Ok(vec![Statement {
            kind: Kind::Delete,
            body: rawdoc! {"q": key.to_raw_document_buf(), "limit": 1},
            key: None,
        }]),
        _ => Ok(Vec::new()),
    }
}

/// The components of a dotted path (the caller has refused names holding dots).
fn components(path: &str) -> Vec<&str> {
    path.split('.').collect()
}

/// Whether two paths may not be written by one update (40 ConflictingUpdateOperators):
/// one is the other or lies inside it.
fn paths_conflict(a: &[&str], b: &[&str]) -> bool {
    a.iter().zip(b).all(|(x, y)| x == y)
}

/// The update operators replaying an `updateDescription`, as update documents to apply
/// in order: `Some(None)` when they cannot replay it exactly (ambiguous paths,
/// `$`-prefixed or empty field names, a possible change of field order), `None` when
/// nothing changed.
///
/// Field order: a server logs a field that moved (a pipeline update or `$replaceWith`
/// that reorders, or puts a new field ahead of old ones) by inserting it again at the
/// end of its document, and a change stream reports that insertion among
/// `updatedFields` like a change in place, which `$set` replays in place: the
/// destination would keep the old order. Such a reinsertion always names at least two
/// fields of one document (the first moved field and each one after it), so an update
/// that changes two or more fields of one document (not array elements) is replayed
/// by reading the source's document instead. A single changed field is unambiguous: it
/// is either changed in place or new (appended either way).
///
/// Conflicts: an array truncated (`truncatedArrays`, replayed as `$push` with `$slice`)
/// whose elements are also changed (`arr.4`, `arr.1.x`) cannot be one update (40
/// ConflictingUpdateOperators). Truncating first and then setting gives the same
/// document, because the changed indices lie below the new size: the truncations go
/// first (outer arrays before inner ones), each update holding no two conflicting
/// paths, then the `$set`/`$unset`.
fn delta_of(desc: &RawDocument) -> Option<Option<Vec<RawDocumentBuf>>> {
    // A path is ambiguous when a component is numeric (array index or numeric field
    // name) or holds a dot. Numeric components replay the same either way (`$set` of
    // `a.5` sets index 5 of an array and field "5" of a document, whichever the
    // destination's version has, and a conflict falls back to the source's document), so
    // only components with dots, `$` or no name make the operators unusable. Every `$push`
    // to an array is such a numeric path: reading the document again for each one made
    // bursts of pushes re-read, and resend, one large document hundreds of times.
    let mut array_elements = std::collections::HashSet::new();
    let disambiguated = match desc.get("disambiguatedPaths") {
        Ok(Some(RawBsonRef::Document(d))) => Some(d),
        _ => None,
    };
    if let Some(d) = disambiguated {
        for entry in d.iter() {
            let Ok((path, RawBsonRef::Array(components))) = entry else {
                return Some(None);
            };
            let mut last_is_index = false;
            for c in components {
                match c {
                    Ok(RawBsonRef::Int32(_) | RawBsonRef::Int64(_)) => last_is_index = true,
                    Ok(RawBsonRef::String(name))
                        if !name.is_empty() && !name.contains('.') && !name.starts_with('$') =>
                    {
                        last_is_index = false
                    }
                    _ => return Some(None),
                }
            }
            if last_is_index {
                array_elements.insert(path.to_string());
            }
        }
    }
    // Without `disambiguatedPaths` (a source before 6.1), a numeric last component is
    // taken for an array index.
    let is_array_element = |path: &str| match disambiguated {
        Some(_) => array_elements.contains(path),
        None => path
            .rsplit('.')
            .next()
            .is_some_and(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_digit())),
    };
    let operator_safe = |path: &str| !path.split('.').any(|c| c.starts_with('$') || c.is_empty());
    let mut set = RawDocumentBuf::new();
    let mut written: Vec<&str> = Vec::new();
    let mut parents = std::collections::HashSet::new();
    if let Ok(Some(RawBsonRef::Document(updated))) = desc.get("updatedFields") {
        for (path, value) in updated.iter().flatten() {
            if !operator_safe(path) {
                return Some(None);
            }
            if !is_array_element(path) {
                let parent = path.rsplit_once('.').map_or("", |(p, _)| p);
                if !parents.insert(parent) {
                    return Some(None);
                }
            }
            set.append_ref(path, value);
            written.push(path);
        }
    }
    let mut unset = RawDocumentBuf::new();
    if let Ok(Some(RawBsonRef::Array(removed))) = desc.get("removedFields") {
        for field in removed.into_iter().flatten() {
            match field {
                RawBsonRef::String(f) if operator_safe(f) => {
                    unset.append(f, "");
                    written.push(f);
                }
                _ => return Some(None),
            }
        }
    }
    let written: Vec<Vec<&str>> = written.iter().map(|p| components(p)).collect();
    for (i, a) in written.iter().enumerate() {
        if written[i + 1..].iter().any(|b| paths_conflict(a, b)) {
            // Not something a server reports; the source's document is certain.
            return Some(None);
        }
    }
    let mut truncated: Vec<(&str, i32)> = Vec::new();
    if let Ok(Some(RawBsonRef::Array(arrays))) = desc.get("truncatedArrays") {
        for t in arrays.into_iter().flatten() {
            let RawBsonRef::Document(t) = t else {
                return Some(None);
            };
            match (t.get_str("field"), t.get_i32("newSize")) {
                (Ok(f), Ok(n)) if operator_safe(f) => truncated.push((f, n)),
                _ => return Some(None),
            }
        }
    }
    truncated.sort_by_key(|(f, _)| f.split('.').count());
    // Truncations, in updates holding no two conflicting paths; the changed fields go
    // with the last one unless they conflict with it.
    let mut truncations: Vec<(RawDocumentBuf, Vec<Vec<&str>>)> = Vec::new();
    for (field, size) in truncated {
        let path = components(field);
        let fits = truncations
            .last()
            .is_some_and(|(_, paths)| !paths.iter().any(|p| paths_conflict(p, &path)));
        if !fits {
            truncations.push((RawDocumentBuf::new(), Vec::new()));
        }
        if let Some((push, paths)) = truncations.last_mut() {
            push.append(field, rawdoc! {"$each": [], "$slice": size});
            paths.push(path);
        }
    }
    let changes_fit_last = truncations.last().is_none_or(|(_, paths)| {
        !paths
            .iter()
            .any(|p| written.iter().any(|w| paths_conflict(p, w)))
    });
    let mut updates: Vec<RawDocumentBuf> = Vec::new();
    let count = truncations.len();
    let mut changes = RawDocumentBuf::new();
    if !set.is_empty() {
        changes.append("$set", set);
    }
    if !unset.is_empty() {
        changes.append("$unset", unset);
    }
    for (i, (push, _)) in truncations.into_iter().enumerate() {
        if i + 1 == count && changes_fit_last && !changes.is_empty() {
            let mut u = std::mem::take(&mut changes);
            u.append("$push", push);
            updates.push(u);
        } else {
            updates.push(rawdoc! {"$push": push});
        }
    }
    if !changes.is_empty() {
        updates.push(changes);
    }
    if updates.is_empty() {
        None
    } else {
        Some(Some(updates))
    }
}

fn short(event: &RawDocument) -> String {
    let mut s = Document::try_from(event)
        .map(|d| d.to_string())
        .unwrap_or_else(|e| format!("<undecodable event: {e}>"));
    s.truncate(300);
    s
}

/// Statements of one kind waiting to be sent as one command.
struct Run {
    kind: Kind,
    bodies: Vec<RawDocumentBuf>,
    keys: Vec<RawDocumentBuf>,
    bytes: usize,
}

/// Applies CRUD events of one namespace in order, as a worker of `generation` (nothing
/// more is written once it is superseded). Returns how many events were applied.
pub async fn apply_events(
    engine: &SharedEngine,
    db: &str,
    coll: &str,
    events: Vec<RawDocumentBuf>,
    generation: u64,
) -> Result<u64, ApplyError> {
    let ns = format!("{db}.{coll}");
    let started = Instant::now();
    let count = events.len() as u64;
    // DDL events are barriers and a drop or rename ends the namespace's appliers, so the
    // events of one call are all of one collection: its UUID is the first one given.
    let uuid = events.iter().find_map(|e| match e.get("collectionUUID") {
        Ok(Some(RawBsonRef::Binary(b))) => Some(bson::Binary {
            subtype: b.subtype,
            bytes: b.bytes.to_vec(),
        }),
        _ => None,
    });
    let target = Target {
        engine,
        db,
        coll,
        ns: &ns,
        uuid,
        generation,
    };
    let mut run = Run {
        kind: Kind::Upsert,
        bodies: Vec::new(),
        keys: Vec::new(),
        bytes: 0,
    };
    for event in &events {
        for stmt in statement_of(&ns, event)? {
            let size = stmt.body.as_bytes().len();
            if !run.bodies.is_empty()
                && (stmt.kind != run.kind
                    || run.bodies.len() >= MAX_STATEMENTS
                    || run.bytes + size > MAX_COMMAND_BYTES)
            {
                target.flush(&mut run).await?;
            }
            run.kind = stmt.kind;
            run.bytes += size;
            run.bodies.push(stmt.body);
            if let Some(key) = stmt.key {
                run.keys.push(key);
            }
        }
    }
    target.flush(&mut run).await?;
    crate::metrics::record_batch("apply", started.elapsed().as_secs_f64());
    crate::metrics::record_applied(&ns, count);
    Ok(count)
}

/// Statements as the array of a write command.
fn array_of(statements: Vec<RawDocumentBuf>) -> RawArrayBuf {
    statements.into_iter().collect()
}

/// The statement a write error is about.
fn write_error_index(error: &Document) -> Option<usize> {
    match error.get("index") {
        Some(Bson::Int32(i)) => usize::try_from(*i).ok(),
        Some(Bson::Int64(i)) => usize::try_from(*i).ok(),
        _ => None,
    }
}

/// The whole document a replace-by-key statement writes (its replacement, or the
/// literal of its `$replaceWith` pipeline).
fn replacement_of(statement: &RawDocument) -> Option<RawDocumentBuf> {
    match statement.get("u").ok()?? {
        RawBsonRef::Document(d) => Some(d.to_raw_document_buf()),
        RawBsonRef::Array(stages) => {
            let RawBsonRef::Document(stage) = stages.into_iter().next()?.ok()? else {
                return None;
            };
            let literal = stage.get_document("$replaceWith").ok()?;
            Some(literal.get_document("$literal").ok()?.to_raw_document_buf())
        }
        _ => None,
    }
}

/// A document's (or document key's) `_id` as exact bytes: documents are matched by the
/// bytes their `_id` has, since the source and the destination store it as written.
fn id_bytes(d: &RawDocument) -> Option<Vec<u8>> {
    let mut one = RawDocumentBuf::new();
    one.append_ref("", d.get("_id").ok().flatten()?);
    Some(one.into_bytes())
}

fn source_error(ns: &str, e: ClusterError) -> ApplyError {
    ApplyError::Cluster(e.during(format!(
        "read {ns} for an update that does not apply as a delta"
    )))
}

/// The destination namespace an applier writes to.
struct Target<'a> {
    engine: &'a SharedEngine,
    db: &'a str,
    coll: &'a str,
    ns: &'a str,
    /// The source collection's UUID, from the events: a document read again is looked up
    /// under the collection's current name when it was renamed since the events.
    uuid: Option<bson::Binary>,
    /// The worker generation of the applier (see [`crate::actors::generation`]).
    generation: u64,
}

impl Target<'_> {
    /// Sends the run as one command and empties it.
    async fn flush(&self, run: &mut Run) -> Result<(), ApplyError> {
        if run.bodies.is_empty() {
            return Ok(());
        }
        let bodies = std::mem::take(&mut run.bodies);
        let keys = std::mem::take(&mut run.keys);
        run.bytes = 0;
        match run.kind {
            Kind::Insert => self.insert(bodies, keys).await,
            Kind::Upsert => self.replace_all(bodies).await,
            Kind::Delete => self
                .write("delete", &array_of(bodies))
                .await
                .and_then(|r| self.check("delete", &r)),
            Kind::Delta => self.delta(bodies, keys).await,
            Kind::Refetch => self.refetch(&keys).await,
        }
    }

    /// Ordered updates; one that does not apply to the destination's version of its
    /// document (a path conflict: that version is older or newer than the event's) is
    /// replaced by the source's current document, then the rest go on.
    async fn delta(
        &self,
        bodies: Vec<RawDocumentBuf>,
        mut keys: Vec<RawDocumentBuf>,
    ) -> Result<(), ApplyError> {
        if self.updates_move_key(&bodies).await? {
            return self.refetch(&keys).await;
        }
        // Kept (one buffer) so the statements after a failed one can be sent again.
        let mut statements = array_of(bodies);
        while !keys.is_empty() {
            let reply = self.write("update", &statements).await?;
            if reply.get_document("writeConcernError").is_ok() {
                return self.check("update", &reply);
            }
            let failed = reply
                .get_array("writeErrors")
                .ok()
                .and_then(|errors| errors.first())
                .and_then(|e| e.as_document())
                .and_then(write_error_index);
            let Some(i) = failed else {
                return self.check("update", &reply);
            };
            if i >= keys.len() {
                return self.check("update", &reply);
            }
            tracing::debug!(ns = self.ns, error = ?reply.get_array("writeErrors"), "an update does not apply to the destination's document; replacing it with the source's");
            self.refetch(&keys[i..=i]).await?;
            statements = statements
                .into_iter()
                .skip(i + 1)
                .filter_map(|s| match s {
                    Ok(RawBsonRef::Document(d)) => Some(d.to_raw_document_buf()),
                    _ => None,
                })
                .collect();
            keys.drain(..=i);
        }
        Ok(())
    }

    /// Replaces each keyed document with the source's current version (a document gone
    /// from the source is left to its delete event, which follows in the stream).
    ///
    /// Each document is read once however often it is keyed (a burst of updates to one
    /// document names it hundreds of times), a bounded number at a time, and the
    /// replacements go in commands within the byte budget: a document near 16 MB read
    /// again must not become one oversized command.
    async fn refetch(&self, keys: &[RawDocumentBuf]) -> Result<(), ApplyError> {
        let mut seen = std::collections::HashSet::new();
        let unique: Vec<&RawDocumentBuf> = keys
            .iter()
            .filter(|k| id_bytes(k).is_none_or(|id| seen.insert(id)))
            .collect();
        for chunk in unique.chunks(REFETCH_CHUNK) {
            self.refetch_chunk(chunk).await?;
        }
        Ok(())
    }

    async fn refetch_chunk(&self, keys: &[&RawDocumentBuf]) -> Result<(), ApplyError> {
        let mut found = self.read_source(self.coll, keys).await?;
        // Documents not found may have been deleted (their delete event follows) or their
        // collection renamed since these events (no event will bring them back): look for
        // them under the collection's current name. They are written under this
        // namespace, where the replayed rename will find them. A rename may come between
        // finding the name and reading under it, so the name is looked up again until
        // the read was made under the name the collection still has.
        let mut read_under = self.coll.to_string();
        for _ in 0..RENAME_CHASE_LIMIT {
            let missing: Vec<&RawDocumentBuf> = keys
                .iter()
                .copied()
                .filter(|k| id_bytes(k).is_some_and(|id| !found.contains_key(&id)))
                .collect();
            let (Some(uuid), false) = (&self.uuid, missing.is_empty()) else {
                break;
            };
            let now = self
                .engine
                .source
                .collection_name_by_uuid(self.db, uuid)
                .await?;
            // Gone from this database (dropped, or renamed into another one, which the
            // server does by inserting every document again): later events carry it.
            let Some(now) = now.filter(|n| *n != read_under) else {
                break;
            };
            found.extend(self.read_source(&now, &missing).await?);
            read_under = now;
        }
        let statements = keys.iter().filter_map(|k| {
            let doc = found.get(&id_bytes(k)?)?;
            Some(upsert_statement(k, doc))
        });
        self.replace_all(statements).await
    }

    /// The keyed documents of source collection `coll` (of this database), by `_id` bytes.
    async fn read_source(
        &self,
        coll: &str,
        keys: &[&RawDocumentBuf],
    ) -> Result<std::collections::HashMap<Vec<u8>, RawDocumentBuf>, ApplyError> {
        let alternatives: Vec<Document> = keys
            .iter()
            .filter_map(|k| Document::try_from(k.as_ref()).ok())
            .collect();
        let mut cursor =
            documents::read_by_document_keys(&self.engine.source, self.db, coll, alternatives)
                .await
                .map_err(|e| source_error(self.ns, e))?;
        let mut found = std::collections::HashMap::new();
        while let Some(doc) = cursor.next().await.map_err(|e| source_error(self.ns, e))? {
            if let Some(id) = id_bytes(&doc) {
                found.insert(id, doc);
            }
        }
        Ok(found)
    }

    /// Sends replace-by-key upserts, if any, in commands within the byte budget.
    async fn replace_all(
        &self,
        statements: impl IntoIterator<Item = RawDocumentBuf>,
    ) -> Result<(), ApplyError> {
        let mut batch = Vec::new();
        let mut bytes = 0usize;
        for statement in statements {
            let size = statement.as_bytes().len();
            if !batch.is_empty()
                && (bytes + size > MAX_COMMAND_BYTES || batch.len() >= MAX_STATEMENTS)
            {
                self.replace_batch(std::mem::take(&mut batch)).await?;
                bytes = 0;
            }
            batch.push(statement);
            bytes += size;
        }
        self.replace_batch(batch).await
    }

    /// One ordered command of replace-by-key upserts. A replacement whose key matches a
    /// document stored with an `_id` of another type (int32 1 where the event has
    /// Decimal128("1"): one key to the server, other bytes) fails with 66 ImmutableField;
    /// that document is deleted by key and the event's document inserted, then the rest
    /// go on in order.
    async fn replace_batch(&self, statements: Vec<RawDocumentBuf>) -> Result<(), ApplyError> {
        let statements = self.keyed_replacements(statements).await?;
        // One buffer, sent as is; rebuilt only after the rare fallback.
        let mut left = statements.len();
        let mut statements: RawArrayBuf = statements.into_iter().collect();
        while left > 0 {
            let reply = self.write("update", &statements).await?;
            let first = reply
                .get_array("writeErrors")
                .ok()
                .and_then(|errors| errors.first())
                .and_then(|e| e.as_document());
            let code = first.and_then(|e| e.get_i32("code").ok());
            let failed = first
                .filter(|_| matches!(code, Some(IMMUTABLE_FIELD | DUPLICATE_KEY)))
                .and_then(write_error_index)
                .filter(|i| *i < left);
            let Some(i) = failed else {
                return self.check("update", &reply);
            };
            if reply.get_document("writeConcernError").is_ok() {
                return self.check("update", &reply);
            }
            let Ok(statement) = statements.get_document(i) else {
                return self.check("update", &reply);
            };
            let (Ok(key), Some(doc)) = (statement.get_document("q"), replacement_of(statement))
            else {
                return self.check("update", &reply);
            };
            let delete = if code == Some(DUPLICATE_KEY) {
                // A document key with a shard key (a sharded source): the destination
                // holds this `_id` under another shard key value. That is this
                // document before a shard-key update whose insert came first on the
                // stream (its delete follows at the same cluster time, and then
                // matches nothing), unless the source holds two documents with this
                // `_id` on different shards.
                let Some(raw_id) = key
                    .get("_id")
                    .ok()
                    .flatten()
                    .filter(|_| key.iter().count() > 1)
                else {
                    return self.check("update", &reply);
                };
                let id =
                    Bson::try_from(raw_id.to_raw_bson()).map_err(|_| ApplyError::Malformed {
                        ns: self.ns.to_string(),
                        field: "documentKey._id",
                        event: short(key),
                    })?;
                self.refuse_repeated_id(&id).await?;
                rawdoc! {"q": {"_id": raw_id.to_raw_bson()}, "limit": 1}
            } else {
                rawdoc! {"q": key.to_raw_document_buf(), "limit": 1}
            };
            let reply = self
                .write("delete", &std::iter::once(delete).collect::<RawArrayBuf>())
                .await?;
            self.check("delete", &reply)?;
            let reply = self
                .write("insert", &std::iter::once(doc).collect::<RawArrayBuf>())
                .await?;
            self.check("insert", &reply)?;
            statements = statements
                .into_iter()
                .skip(i + 1)
                .filter_map(|s| match s {
                    Ok(RawBsonRef::Document(d)) => Some(d.to_raw_document_buf()),
                    _ => None,
                })
                .collect();
            left -= i + 1;
        }
        Ok(())
    }

    /// Fails when the source holds more than one document with `id` (on different
    /// shards of a collection sharded on another key): the destination cannot hold both.
    async fn refuse_repeated_id(&self, id: &Bson) -> Result<(), ApplyError> {
        let repeated = crate::cluster::ownership::repeated_ids(
            &self.engine.source,
            self.db,
            self.coll,
            vec![id.clone()],
        )
        .await?;
        match repeated.into_iter().next() {
            None => Ok(()),
            Some((id, n)) => Err(ApplyError::DuplicateId {
                ns: self.ns.to_string(),
                id: id.to_string(),
                n,
            }),
        }
    }

    /// Unordered insert; documents that are already there are replaced instead.
    async fn insert(
        &self,
        docs: Vec<RawDocumentBuf>,
        keys: Vec<RawDocumentBuf>,
    ) -> Result<(), ApplyError> {
        // Kept (one buffer) for the documents that turn out to be there already.
        let docs = array_of(docs);
        let reply = self.write("insert", &docs).await?;
        let Ok(errors) = reply.get_array("writeErrors") else {
            return self.check("insert", &reply);
        };
        let mut again = Vec::new();
        for e in errors {
            let e = e.as_document();
            let code = e.and_then(|e| e.get_i32("code").ok());
            let index = e.and_then(write_error_index);
            match (code, index) {
                (Some(DUPLICATE_KEY), Some(i)) if i < keys.len() => {
                    let Ok(doc) = docs.get_document(i) else {
                        return self.check("insert", &reply);
                    };
                    again.push(upsert_statement(&keys[i], doc));
                }
                _ => return self.check("insert", &reply),
            }
        }
        if reply.get_document("writeConcernError").is_ok() {
            return self.check("insert", &reply);
        }
        self.replace_all(again).await
    }

    async fn write(
        &self,
        command: &'static str,
        statements: &RawArray,
    ) -> Result<Document, ApplyError> {
        // No destination write once this process may not hold the lease.
        self.engine.checkpoints.fence().check()?;
        let field = match command {
            "insert" => "documents",
            "update" => "updates",
            _ => "deletes",
        };
        let mut cmd = RawDocumentBuf::new();
        cmd.append(command, self.coll);
        cmd.append_ref(field, RawBsonRef::Array(statements));
        cmd.append("ordered", command != "insert");
        if command != "delete" {
            cmd.append("bypassDocumentValidation", true);
        }
        // Registered as in flight right before it is sent, and sent from a task of its
        // own that holds the registration until the driver returns: a stopped applier
        // does not drop it halfway, and a restart waits for it (see
        // [`crate::actors::generation`]).
        let Some(in_flight) = self.engine.generation.begin_write(self.generation) else {
            return Err(ApplyError::Superseded {
                ns: self.ns.to_string(),
            });
        };
        let (engine, db) = (self.engine.clone(), self.db.to_string());
        let sent = tokio::spawn(async move {
            let reply = engine.destination.run_raw(&db, cmd).await;
            drop(in_flight);
            reply
        });
        match sent.await {
            Ok(reply) => Ok(reply?),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // Cancelled: the runtime is shutting down.
            Err(_) => Err(ApplyError::Superseded {
                ns: self.ns.to_string(),
            }),
        }
    }

    /// Fails on write errors or a write concern error in a reply.
    fn check(&self, command: &'static str, reply: &Document) -> Result<(), ApplyError> {
        let mut problems: Vec<String> = reply
            .get_array("writeErrors")
            .map(|a| a.iter().take(3).map(|e| e.to_string()).collect())
            .unwrap_or_default();
        if let Ok(wce) = reply.get_document("writeConcernError") {
            // A retryable one means: send the whole batch again (it is idempotent); write
            // errors beside it are then met again, or handled, on that attempt.
            let transient = crate::cluster::write_concern_error_is_transient(wce);
            if problems.is_empty() || transient {
                return Err(ApplyError::WriteConcern {
                    command,
                    ns: self.ns.to_string(),
                    detail: wce.to_string(),
                    transient,
                });
            }
            problems.push(format!("write concern error: {wce}"));
        }
        if problems.is_empty() {
            return Ok(());
        }
        Err(ApplyError::WriteErrors {
            command,
            ns: self.ns.to_string(),
            detail: problems.join("; "),
        })
    }
}

/// Whether an event is DDL (applied at a barrier rather than by an applier).
pub fn is_ddl(operation_type: &str) -> bool {
    matches!(
        operation_type,
        "create"
            | "drop"
            | "rename"
            | "dropDatabase"
            | "createIndexes"
            | "dropIndexes"
            | "modify"
            | "shardCollection"
            | "reshardCollection"
            | "refineCollectionShardKey"
    )
}

/// Index definition as created during copy and sync: unique and TTL are applied at
/// finalize, because the destination passes through states the source never had
/// (documents copied at different times) and must not refuse or expire them.
pub fn relaxed_index(spec: &Document) -> Document {
    let mut d = Document::new();
    for (k, v) in spec {
        match k.as_str() {
            "v" | "ns" | "unique" | "expireAfterSeconds" | "prepareUnique" | "background" => {}
            _ => {
                d.insert(k.clone(), v.clone());
            }
        }
    }
    d
}

/// Largest `insertMany` batch when a collection is copied again whole.
const RECOPY_BATCH_BYTES: usize = 8 * 1024 * 1024;

/// Replaces the destination's `db.coll` with what the source holds now under that name
/// (options, indexes as during sync, every document): after a collection the migration
/// does not cover was renamed onto a migrated name. Events after the rename are applied
/// on top, as after the initial copy (applying is idempotent).
async fn replace_from_source(
    engine: &SharedEngine,
    db: &str,
    coll: &str,
) -> Result<(), ApplyError> {
    let (source, dest) = (&engine.source, &engine.destination);
    tracing::info!(db, coll, "a collection outside the migration was renamed onto a migrated name: copying it again from the source");
    match dest.run(db, doc! {"drop": coll}).await {
        Ok(_) => {}
        Err(e) if e.is(Refusal::NamespaceMissing) => {}
        Err(e) => return Err(e.into()),
    }
    let spec = source
        .collection_specs(db)
        .await?
        .into_iter()
        .find(|s| s.get_str("name") == Ok(coll));
    let Some(spec) = spec else {
        // Gone again since: its drop or rename event follows.
        return Ok(());
    };
    let mut create = doc! {"create": coll};
    if let Ok(options) = spec.get_document("options") {
        create.extend(options.clone());
    }
    match dest.run(db, create).await {
        Ok(_) => {}
        Err(e) if e.is(Refusal::NamespaceExists) => {}
        Err(e) => return Err(e.into()),
    }
    let indexes: Vec<Bson> = source
        .index_specs(db, coll)
        .await?
        .iter()
        .filter(|i| i.get_str("name") != Ok("_id_"))
        .map(|i| Bson::Document(relaxed_index(i)))
        .collect();
    if !indexes.is_empty() {
        dest.run(db, doc! {"createIndexes": coll, "indexes": indexes})
            .await?;
    }
    shard_collection::shard_new_collection(engine, db, coll).await?;
    let read_error = |e: ClusterError| e.during(format!("read {db}.{coll} again"));
    let mut cursor = documents::read_all(source, db, coll, ReadSize::default())
        .await
        .map_err(read_error)?;
    let mut batch = Vec::new();
    let mut bytes = 0;
    loop {
        let next = cursor.next().await.map_err(read_error)?;
        let full = next.is_none() || bytes >= RECOPY_BATCH_BYTES || batch.len() >= 1000;
        if full && !batch.is_empty() {
            engine.checkpoints.fence().check()?;
            documents::insert_documents(dest, db, coll, std::mem::take(&mut batch))
                .await
                .map_err(|e| e.during(format!("copy {db}.{coll} again")))?;
            bytes = 0;
        }
        match next {
            Some(d) => {
                bytes += d.as_bytes().len();
                batch.push(d);
            }
            None => return Ok(()),
        }
    }
}

/// Applies one DDL event to the destination as a worker of `generation`; replays after a
/// restart are harmless.
///
/// Like the appliers' writes, it is registered as in flight and runs in a task of its
/// own until it returns, so a restart waits for it (see [`crate::actors::generation`]).
pub async fn apply_ddl(
    engine: &SharedEngine,
    event: &Document,
    generation: u64,
) -> Result<(), ApplyError> {
    let superseded = || ApplyError::Superseded {
        ns: event
            .get_document("ns")
            .map(|ns| {
                format!(
                    "{}.{}",
                    ns.get_str("db").unwrap_or_default(),
                    ns.get_str("coll").unwrap_or_default()
                )
            })
            .unwrap_or_default(),
    };
    let Some(in_flight) = engine.generation.begin_write(generation) else {
        return Err(superseded());
    };
    let (engine, ddl) = (engine.clone(), event.clone());
    let replayed = tokio::spawn(async move {
        let done = replay_ddl(&engine, &ddl).await;
        drop(in_flight);
        done
    });
    match replayed.await {
        Ok(done) => done,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // Cancelled: the runtime is shutting down.
        Err(_) => Err(superseded()),
    }
}

async fn replay_ddl(engine: &SharedEngine, event: &Document) -> Result<(), ApplyError> {
    engine.checkpoints.fence().check()?;
    let dest = &engine.destination;
    let op = event.get_str("operationType").unwrap_or_default();
    let ns = event.get_document("ns").cloned().unwrap_or_default();
    let db = ns.get_str("db").unwrap_or_default().to_string();
    let coll = ns.get_str("coll").unwrap_or_default().to_string();
    let desc = event
        .get_document("operationDescription")
        .cloned()
        .unwrap_or_default();
    let ignore = |refusals: &'static [Refusal]| {
        move |r: Result<Document, ClusterError>| match r {
            Ok(_) => Ok(()),
            Err(e) if e.is_any(refusals) => Ok(()),
            Err(e) => Err(ApplyError::from(e)),
        }
    };
    tracing::info!(op, db = %db, coll = %coll, "applying ddl");
    match op {
        "create" => {
            let mut cmd = doc! {"create": &coll};
            for (k, v) in &desc {
                // `temp` marks the staging collection of a rename between databases; a
                // temporary collection on the destination would vanish at its next
                // restart, before the replayed rename makes it permanent.
                if k != "idIndex" && k != "temp" {
                    cmd.insert(k.clone(), v.clone());
                }
            }
            ignore(&[Refusal::NamespaceExists])(dest.run(&db, cmd).await)?;
            if desc.contains_key("viewOn") {
                return Ok(());
            }
            shard_collection::shard_new_collection(engine, &db, &coll).await
        }
        "drop" => ignore(&[Refusal::NamespaceMissing])(dest.run(&db, doc! {"drop": &coll}).await),
        "dropDatabase" => {
            ignore(&[Refusal::NamespaceMissing])(dest.run(&db, doc! {"dropDatabase": 1}).await)
        }
        "rename" => {
            let to = event.get_document("to").cloned().unwrap_or_default();
            let target = format!(
                "{}.{}",
                to.get_str("db").unwrap_or_default(),
                to.get_str("coll").unwrap_or_default()
            );
            let target_allowed = engine.filter.allows(
                to.get_str("db").unwrap_or_default(),
                to.get_str("coll").unwrap_or_default(),
            );
            if !target_allowed {
                return ignore(&[Refusal::NamespaceMissing])(
                    dest.run(&db, doc! {"drop": &coll}).await,
                );
            }
            let source_migrated = engine.filter.allows(&db, &coll)
                || crate::cluster::namespaces::is_rename_staging(&coll);
            if !source_migrated {
                // The renamed collection was never migrated: the destination has nothing
                // to rename. Its target now holds what the source holds under that name.
                return replace_from_source(
                    engine,
                    to.get_str("db").unwrap_or_default(),
                    to.get_str("coll").unwrap_or_default(),
                )
                .await;
            }
            ignore(&[Refusal::NamespaceMissing])(
                dest.run("admin", doc! {"renameCollection": format!("{db}.{coll}"), "to": target, "dropTarget": true}).await,
            )?;
            shard_collection::shard_new_collection(
                engine,
                to.get_str("db").unwrap_or_default(),
                to.get_str("coll").unwrap_or_default(),
            )
            .await
        }
        "createIndexes" => {
            let indexes: Vec<Bson> = desc
                .get_array("indexes")
                .map(|a| {
                    a.iter()
                        .filter_map(|i| i.as_document())
                        .map(|i| Bson::Document(relaxed_index(i)))
                        .collect()
                })
                .unwrap_or_default();
            if indexes.is_empty() {
                return Ok(());
            }
            ignore(&[Refusal::IndexConflict])(
                dest.run(&db, doc! {"createIndexes": &coll, "indexes": indexes})
                    .await,
            )
        }
        "dropIndexes" => {
            let names: Vec<Bson> = desc
                .get_array("indexes")
                .map(|a| {
                    a.iter()
                        .filter_map(|i| i.as_document())
                        .filter_map(|i| i.get_str("name").ok())
                        .map(|n| Bson::String(n.into()))
                        .collect()
                })
                .unwrap_or_default();
            for name in names {
                match dest
                    .run(&db, doc! {"dropIndexes": &coll, "index": &name})
                    .await
                {
                    // A `[sharding]` entry's key uses it on the destination (the source,
                    // a replica set or unsharded there, let it go): kept, and the
                    // verification expects it.
                    Err(e) if e.is(Refusal::ShardKeyIndex) => {
                        tracing::warn!(ns = %format!("{db}.{coll}"), index = %name, "the source dropped an index the destination's shard key needs; it stays on the destination");
                    }
                    other => ignore(&[Refusal::NamespaceMissing, Refusal::IndexMissing])(other)?,
                }
            }
            Ok(())
        }
        "modify" => {
            let mut cmd = doc! {"collMod": &coll};
            for (k, v) in &desc {
                if k == "index" {
                    // Unique and TTL settings are made effective at finalize.
                    let mut index = v.as_document().cloned().unwrap_or_default();
                    index.remove("unique");
                    index.remove("expireAfterSeconds");
                    index.remove("prepareUnique");
                    if index.keys().all(|k| k == "name" || k == "keyPattern") {
                        continue;
                    }
                    cmd.insert("index", index);
                } else {
                    cmd.insert(k.clone(), v.clone());
                }
            }
            if cmd.len() == 1 {
                return Ok(());
            }
            ignore(&[Refusal::NamespaceMissing])(dest.run(&db, cmd).await)
        }
        "shardCollection" => shard_collection::apply(engine, &db, &coll, &desc).await,
        // The destination's collection keeps the old key (or none); replaying the
        // documents' moves would not give it the new one. Stop, naming it.
        "reshardCollection" | "refineCollectionShardKey" => Err(ApplyError::ShardKeyChanged {
            ns: format!("{db}.{coll}"),
            operation: op.to_string(),
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(d: Document) -> RawDocumentBuf {
        RawDocumentBuf::from_document(&d).unwrap()
    }

    /// The one update replaying a description (panics on several).
    fn delta(d: Document) -> Option<Option<Document>> {
        deltas(d).map(|u| {
            u.map(|mut u| {
                assert_eq!(u.len(), 1, "one update expected: {u:?}");
                u.remove(0)
            })
        })
    }

    fn deltas(d: Document) -> Option<Option<Vec<Document>>> {
        delta_of(&desc(d)).map(|u| {
            u.map(|u| {
                u.iter()
                    .map(|u| Document::try_from(u.as_ref()).unwrap())
                    .collect()
            })
        })
    }

    #[test]
    fn an_update_description_becomes_set_unset_and_slice() {
        assert_eq!(
            delta(doc! {
                "updatedFields": {"n": 2, "a.b": "x"},
                "removedFields": ["gone", "c.d"],
                "truncatedArrays": [{"field": "arr", "newSize": 3}],
            }),
            Some(Some(doc! {
                "$set": {"n": 2, "a.b": "x"},
                "$unset": {"gone": "", "c.d": ""},
                "$push": {"arr": {"$each": [], "$slice": 3}},
            }))
        );
        assert_eq!(
            delta(doc! {"updatedFields": {}, "removedFields": [], "truncatedArrays": []}),
            None,
            "nothing to apply"
        );
    }

    #[test]
    fn ambiguous_or_dollar_paths_read_the_source_document() {
        let refetch = Some(None);
        assert_eq!(
            delta(
                doc! {"updatedFields": {"a.b": "t"}, "removedFields": [], "truncatedArrays": [],
                "disambiguatedPaths": {"a.b": ["a.b"]}}
            ),
            refetch,
            "a field whose name holds a dot"
        );
        assert_eq!(
            delta(doc! {"updatedFields": {"m.$x": 1}, "removedFields": [],
            "disambiguatedPaths": {"m.$x.0": ["m", "$x", 0]}}),
            refetch
        );
        assert_eq!(
            delta(doc! {"updatedFields": {"a.$b": 1}, "removedFields": []}),
            refetch
        );
        assert_eq!(
            delta(doc! {"updatedFields": {}, "removedFields": ["$x"]}),
            refetch
        );
        // The failure this pins: every `$push` (an array index path) re-read the source
        // document, and a burst of pushes to one document built a 63 MB command.
        assert_eq!(
            delta(
                doc! {"updatedFields": {"tags.3": "t", "m.7": 1}, "removedFields": [],
                "disambiguatedPaths": {"tags.3": ["tags", 3], "m.7": ["m", "7"]}}
            ),
            Some(Some(doc! {"$set": {"tags.3": "t", "m.7": 1}}))
        );
        // An empty disambiguatedPaths is no reason to read the source.
        assert_eq!(
            delta(doc! {"updatedFields": {"n": 1}, "disambiguatedPaths": {}}),
            Some(Some(doc! {"$set": {"n": 1}}))
        );
    }

    #[test]
    fn update_events_without_the_document_become_deltas() {
        let event = desc(doc! {
            "operationType": "update",
            "documentKey": {"_id": 7},
            "updateDescription": {"updatedFields": {"n": 1}, "removedFields": []},
        });
        let stmt = statement_of("d.c", &event).unwrap().remove(0);
        assert_eq!(stmt.kind, Kind::Delta);
        assert_eq!(
            Document::try_from(stmt.body.as_ref()).unwrap(),
            doc! {"q": {"_id": 7}, "u": {"$set": {"n": 1}}, "upsert": false}
        );
        let with_lookup = desc(doc! {
            "operationType": "update",
            "documentKey": {"_id": 7},
            "fullDocument": {"_id": 7, "n": 1},
            "updateDescription": {"updatedFields": {"n": 1}, "removedFields": []},
        });
        assert_eq!(
            statement_of("d.c", &with_lookup).unwrap()[0].kind,
            Kind::Upsert
        );
    }
    /// Pins: an update that truncated an array and changed an element below the new size
    /// (a pipeline update's delta, `arr.4` with `arr` truncated to 5) became one update
    /// with `$set` of `arr.4` and `$push` with `$slice` of `arr`, which a server refuses
    /// with 40 ConflictingUpdateOperators; every such event fell back to reading the
    /// source. The truncation now goes first, in its own update.
    #[test]
    fn a_truncation_and_changes_inside_the_array_are_two_updates() {
        assert_eq!(
            deltas(doc! {
                "updatedFields": {"arr.4": 9, "n": 1},
                "removedFields": ["arr.1.x"],
                "truncatedArrays": [{"field": "arr.2", "newSize": 1}, {"field": "arr", "newSize": 5}],
                "disambiguatedPaths": {"arr.4": ["arr", 4], "arr.1.x": ["arr", 1, "x"], "arr.2": ["arr", 2]},
            }),
            Some(Some(vec![
                doc! {"$push": {"arr": {"$each": [], "$slice": 5}}},
                doc! {"$set": {"arr.4": 9, "n": 1}, "$unset": {"arr.1.x": ""}, "$push": {"arr.2": {"$each": [], "$slice": 1}}},
            ]))
        );
        // No conflict: one update, as before.
        assert_eq!(
            deltas(doc! {
                "updatedFields": {"n": 1},
                "removedFields": [],
                "truncatedArrays": [{"field": "arr", "newSize": 2}, {"field": "other", "newSize": 0}],
            }),
            Some(Some(vec![doc! {
                "$set": {"n": 1},
                "$push": {"arr": {"$each": [], "$slice": 2}, "other": {"$each": [], "$slice": 0}},
            }]))
        );
        // Every update of every description holds no two conflicting paths.
        for updates in [
            deltas(
                doc! {"updatedFields": {"a.0.b": 1}, "removedFields": ["a.1.c"],
                "truncatedArrays": [{"field": "a", "newSize": 2}],
                "disambiguatedPaths": {"a.0.b": ["a", 0, "b"], "a.1.c": ["a", 1, "c"]}},
            ),
            deltas(
                doc! {"updatedFields": {"a.1": [], "b": 1}, "removedFields": [],
                "truncatedArrays": [{"field": "a.0", "newSize": 0}, {"field": "a", "newSize": 3}],
                "disambiguatedPaths": {"a.1": ["a", 1], "a.0": ["a", 0]}},
            ),
        ] {
            let updates = updates.unwrap().unwrap();
            for u in &updates {
                let paths: Vec<String> = u
                    .values()
                    .flat_map(|ops| ops.as_document().unwrap().keys().cloned())
                    .collect();
                for (i, a) in paths.iter().enumerate() {
                    for b in &paths[i + 1..] {
                        let (a, b) = (components(a), components(b));
                        assert!(!paths_conflict(&a, &b), "{u}");
                    }
                }
            }
        }
    }

    /// Pins: a pipeline update that moved fields (`$replaceWith` putting a field ahead of
    /// the others, or reordering a subdocument) is logged by the server as those fields
    /// inserted again at the end, which the change stream reports among `updatedFields`;
    /// replayed as `$set`, the destination kept the old field order and the cutover
    /// refused. Two or more changed fields of one document are read from the source.
    #[test]
    fn fields_that_may_have_moved_read_the_source_document() {
        let refetch = Some(None);
        assert_eq!(
            delta(doc! {"updatedFields": {"moved": 1, "a": 1, "b": 2}, "removedFields": []}),
            refetch,
            "top level"
        );
        assert_eq!(
            delta(doc! {"updatedFields": {"sub.y": 2, "sub.x": 1}, "removedFields": []}),
            refetch,
            "inside a subdocument"
        );
        assert_eq!(
            delta(
                doc! {"updatedFields": {"arr.1.y": 2, "arr.1.x": 1}, "removedFields": [],
                "disambiguatedPaths": {"arr.1.y": ["arr", 1, "y"], "arr.1.x": ["arr", 1, "x"]}}
            ),
            refetch,
            "inside an array element"
        );
        // One field per document, and array elements (a `$push` of several), replay.
        assert_eq!(
            delta(
                doc! {"updatedFields": {"a": 1, "sub.x": 2, "arr.5": 3, "arr.6": 4},
                "removedFields": ["b"],
                "disambiguatedPaths": {"arr.5": ["arr", 5], "arr.6": ["arr", 6]}}
            ),
            Some(Some(
                doc! {"$set": {"a": 1, "sub.x": 2, "arr.5": 3, "arr.6": 4}, "$unset": {"b": ""}}
            ))
        );
    }
}
