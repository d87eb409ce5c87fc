//! Writes and simple reads: insert, update, delete, findAndModify, count, distinct.

use bson::{doc, Bson, Document};
use std::sync::Arc;

use crate::dispatch::Ctx;
use crate::error::{codes, CmdResult, CommandError};
use crate::query::matcher::Matcher;
use crate::query::order::OrdBson;
use crate::query::projection::Projection;
use crate::query::sort::SortSpec;
use crate::query::update::{upsert_seed, UpdateSpec};
use crate::query::ArrayFilters;
use crate::storage::{Collection, Storage};
use crate::transaction::{holds_any, wait_for_transaction};

/// Whether a statement with this filter could touch a document an open transaction
/// holds (then the write waits for the transaction, as on the server).
fn filter_hits_lock(storage: &Storage, db: &str, coll: &str, q: &Document) -> bool {
    if storage.locks.is_empty() {
        return false;
    }
    let Ok(m) = Matcher::new(q) else {
        return false;
    };
    if m.id_set()
        .is_some_and(|ids| holds_any(storage, db, coll, ids))
    {
        return true;
    }
    storage
        .collection(db, coll)
        .is_some_and(|c| holds_any(storage, db, coll, &matching_ids(c, &m, None, None)))
}

fn statements<'a>(ctx: &'a Ctx<'_>, field: &str) -> CmdResult<Vec<&'a Document>> {
    ctx.cmd
        .get_array(field)
        .map_err(|_| {
            CommandError::new(
                codes::MISSING_REQUIRED_FIELD,
                format!(
                    "BSON field '{}.{field}' is missing but a required field",
                    ctx.name
                ),
            )
        })?
        .iter()
        .map(|v| {
            v.as_document().ok_or_else(|| {
                CommandError::type_mismatch(format!("{field} entries must be documents"))
            })
        })
        .collect()
}

fn refuse_view(storage: &Storage, db: &str, coll: &str) -> CmdResult<()> {
    if storage.collection(db, coll).is_some_and(|c| c.is_view()) {
        return Err(CommandError::new(
            codes::COMMAND_NOT_SUPPORTED_ON_VIEW,
            format!("Namespace {db}.{coll} is a view, not a collection"),
        ));
    }
    Ok(())
}

/// Builds the write reply: `n`, optional extra counters, `writeErrors`.
fn write_reply(mut reply: Document, errors: Vec<Document>) -> Document {
    if !errors.is_empty() {
        reply.insert("writeErrors", errors);
    }
    reply
}

/// Enforces the collection's validator (validationLevel/validationAction honoured)
/// unless the command set `bypassDocumentValidation`. `old` is the pre-update document.
fn validate(
    storage: &Storage,
    db: &str,
    coll: &str,
    doc: &Document,
    old: Option<&Document>,
    bypass: bool,
) -> CmdResult<()> {
    let Some(c) = storage.collection(db, coll) else {
        return Ok(());
    };
    let Ok(validator) = c.options.get_document("validator") else {
        return Ok(());
    };
    let level = c.options.get_str("validationLevel").unwrap_or("strict");
    if bypass
        || validator.is_empty()
        || level == "off"
        || c.options.get_str("validationAction") == Ok("warn")
    {
        return Ok(());
    }
    let matcher = Matcher::new(validator)?;
    if matcher.matches(doc) || (level == "moderate" && old.is_some_and(|o| !matcher.matches(o))) {
        return Ok(());
    }
    Err(CommandError::new(
        codes::DOCUMENT_VALIDATION_FAILURE,
        "Document failed validation",
    ))
}

/// The largest document a user may store (16 MiB).
const MAX_USER_DOCUMENT: usize = crate::wire::MAX_BSON_SIZE;

/// An inserted document over 16 MiB fails as on the server: 2 BadValue.
fn check_insert_size(doc: &Document) -> CmdResult<()> {
    let size = crate::storage::encoded_size(doc);
    if size > MAX_USER_DOCUMENT {
        return Err(CommandError::bad_value(format!(
            "object to insert too large. size in bytes: {size}, max size: {MAX_USER_DOCUMENT}"
        )));
    }
    Ok(())
}

/// A document grown over 16 MiB by an update fails as on the server: 17419.
fn check_update_size(doc: &Document) -> CmdResult<()> {
    let size = crate::storage::encoded_size(doc);
    if size > MAX_USER_DOCUMENT {
        return Err(CommandError::new(
            17419,
            format!("Resulting document after update is larger than {MAX_USER_DOCUMENT}"),
        ));
    }
    Ok(())
}

fn bypasses_validation(cmd: &Document) -> bool {
    cmd.get_bool("bypassDocumentValidation").unwrap_or(false)
}

pub fn insert(ctx: &mut Ctx<'_>) -> CmdResult<Document> {
    let coll = ctx.collection()?;
    let docs: Vec<Document> = match ctx.documents.take() {
        Some(docs) => docs
            .into_iter()
            .map(|v| match v {
                Bson::Document(d) => Ok(d),
                _ => Err(CommandError::type_mismatch(
                    "documents entries must be documents",
                )),
            })
            .collect::<CmdResult<_>>()?,
        None => statements(ctx, "documents")?.into_iter().cloned().collect(),
    };
    let ordered = ctx.cmd.get_bool("ordered").unwrap_or(true);
    let mut storage = ctx.storage();
    refuse_view(&storage, &ctx.db, &coll)?;
    if holds_any(
        &storage,
        &ctx.db,
        &coll,
        docs.iter().filter_map(|d| d.get("_id")),
    ) {
        drop(storage);
        ctx.documents = Some(docs.into_iter().map(Bson::Document).collect());
        return Err(wait_for_transaction());
    }
    let mut n = 0;
    let mut errors = Vec::new();
    let bypass = bypasses_validation(ctx.cmd);
    for (i, d) in docs.into_iter().enumerate() {
        let inserted = check_insert_size(&d)
            .and_then(|()| validate(&storage, &ctx.db, &coll, &d, None, bypass))
            .and_then(|()| storage.insert(&ctx.db, &coll, d));
        match inserted {
            Ok(_) => n += 1,
            Err(e) => {
                errors.push(e.to_write_error(i));
                if ordered {
                    break;
                }
            }
        }
    }
    Ok(write_reply(doc! {"n": n}, errors))
}

/// `_id`s of the documents matching `filter`, in `sort` order (else `_id` order), at most `limit`.
pub fn matching_ids(
    c: &Collection,
    matcher: &Matcher,
    sort: Option<&SortSpec>,
    limit: Option<usize>,
) -> Vec<Bson> {
    if let Some(ids) = matcher.id_set() {
        let mut found: Vec<&Arc<Document>> =
            lookup_ids(c, ids).filter(|d| matcher.matches(d)).collect();
        if let Some(s) = sort {
            found.sort_by(|a, b| s.compare(a, b));
        }
        return found
            .into_iter()
            .take(limit.unwrap_or(usize::MAX))
            .map(|d| d.get("_id").cloned().unwrap_or(Bson::Null))
            .collect();
    }
    match sort {
        None => c
            .docs
            .values()
            .filter(|d| matcher.matches(d))
            .take(limit.unwrap_or(usize::MAX))
            .map(|d| d.get("_id").cloned().unwrap_or(Bson::Null))
            .collect(),
        Some(s) => {
            let mut docs: Vec<&Document> = c
                .docs
                .values()
                .map(|d| &**d)
                .filter(|d| matcher.matches(d))
                .collect();
            docs.sort_by(|a, b| s.compare(a, b));
            docs.into_iter()
                .take(limit.unwrap_or(usize::MAX))
                .map(|d| d.get("_id").cloned().unwrap_or(Bson::Null))
                .collect()
        }
    }
}

/// The documents with these `_id`s, in `_id` order and each once, as an `_id` index
/// scan returns them.
pub fn lookup_ids<'a>(
    c: &'a Collection,
    ids: &[Bson],
) -> impl Iterator<Item = &'a Arc<Document>> + 'a {
    // One `_id` (every update and delete by key): no set to build.
    let keys: Vec<OrdBson> = match ids {
        [id] => vec![OrdBson(id.clone())],
        _ => ids
            .iter()
            .map(|id| OrdBson(id.clone()))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect(),
    };
    keys.into_iter().filter_map(move |k| c.docs.get(&k))
}

fn get_doc(storage: &Storage, db: &str, coll: &str, id: &Bson) -> Option<Document> {
    storage
        .collection(db, coll)
        .and_then(|c| c.docs.get(&OrdBson(id.clone())).map(|d| Document::clone(d)))
}

/// Outcome of one update statement.
struct UpdateOutcome {
    matched: i64,
    modified: i64,
    upserted: Option<Bson>,
    /// Pre- and post-images of the first document touched (for findAndModify).
    first: Option<(Option<Document>, Document)>,
}

#[allow(clippy::too_many_arguments)]
fn update_statement(
    storage: &mut Storage,
    db: &str,
    coll: &str,
    query: &Document,
    update: Bson,
    filters: Option<&Bson>,
    upsert: bool,
    multi: bool,
    sort: Option<&SortSpec>,
    bypass: bool,
    images: bool,
) -> CmdResult<UpdateOutcome> {
    let mut spec = UpdateSpec::parse_owned(update)?;
    let filters = ArrayFilters::parse(filters)?;
    spec.check_array_filters(&filters)?;
    let replacement = matches!(spec, UpdateSpec::Replacement(_));
    if multi && replacement {
        return Err(CommandError::new(
            codes::FAILED_TO_PARSE,
            "multi update is not supported for replacement-style update",
        ));
    }
    let matcher = Matcher::new(query)?;
    let ids = match storage.collection(db, coll) {
        Some(c) => matching_ids(c, &matcher, sort, if multi { None } else { Some(1) }),
        None => Vec::new(),
    };
    let mut out = UpdateOutcome {
        matched: 0,
        modified: 0,
        upserted: None,
        first: None,
    };
    for id in ids {
        let (new, old) = {
            let Some(old) = storage
                .collection(db, coll)
                .and_then(|c| c.docs.get(&OrdBson(id.clone())))
            else {
                continue;
            };
            // A replacement touches at most one document (multi is refused above), and once
            // it has, no upsert follows: its document can be moved instead of copied.
            let (new, log) = if replacement {
                spec.apply_last(old, query, &filters, false)?
            } else {
                spec.apply_logged(old, query, &filters, false)?
            };
            check_update_size(&new)?;
            validate(storage, db, coll, &new, Some(old), bypass)?;
            let keep = images && out.first.is_none();
            ((new, log), keep.then(|| Document::clone(old)))
        };
        let (new, log) = new;
        let first = old.map(|old| (Some(old), new.clone()));
        let changed = storage.update(db, coll, &id, new, log)?;
        out.matched += 1;
        if changed {
            out.modified += 1;
        }
        if first.is_some() {
            out.first = first;
        }
    }
    if out.matched == 0 && upsert {
        refuse_view(storage, db, coll)?;
        let seed = if replacement {
            Document::new()
        } else {
            upsert_seed(query)
        };
        let (mut new, _) = spec.apply_last(&seed, query, &filters, true)?;
        if !new.contains_key("_id") {
            // The query's equality on `_id` (a plain value, an embedded document, `$eq`,
            // a one-element `$in`, inside `$and`) gives the new document its `_id`, for a
            // replacement too; only without one is an ObjectId generated.
            new = match upsert_seed(query).remove("_id") {
                Some(id) => {
                    let mut d = doc! {"_id": id};
                    d.extend(new);
                    d
                }
                None => with_generated_id(new),
            };
        }
        check_update_size(&new)?;
        validate(storage, db, coll, &new, None, bypass)?;
        let id = storage.insert(db, coll, new)?;
        out.matched = 0;
        out.upserted = Some(id.clone());
        if images {
            out.first = get_doc(storage, db, coll, &id).map(|stored| (None, stored));
        }
    }
    Ok(out)
}

fn with_generated_id(d: Document) -> Document {
    let mut with_id = doc! {"_id": bson::oid::ObjectId::new()};
    with_id.extend(d);
    with_id
}

pub fn update(ctx: &mut Ctx<'_>) -> CmdResult<Document> {
    let coll = ctx.collection()?;
    let stmts: Vec<Document> = match ctx.documents.take() {
        Some(stmts) => stmts
            .into_iter()
            .map(|v| match v {
                Bson::Document(d) => Ok(d),
                _ => Err(CommandError::type_mismatch(
                    "updates entries must be documents",
                )),
            })
            .collect::<CmdResult<_>>()?,
        None => statements(ctx, "updates")?.into_iter().cloned().collect(),
    };
    let ordered = ctx.cmd.get_bool("ordered").unwrap_or(true);
    let mut storage = ctx.storage();
    refuse_view(&storage, &ctx.db, &coll)?;
    if stmts.iter().any(|st| {
        st.get_document("q")
            .is_ok_and(|q| filter_hits_lock(&storage, &ctx.db, &coll, q))
    }) {
        drop(storage);
        ctx.documents = Some(stmts.into_iter().map(Bson::Document).collect());
        return Err(wait_for_transaction());
    }
    let (mut n, mut modified) = (0i64, 0i64);
    let mut upserted = Vec::new();
    let mut errors = Vec::new();
    let bypass = bypasses_validation(ctx.cmd);
    for (i, mut stmt) in stmts.into_iter().enumerate() {
        let result = (|| {
            // Moved out first so the statement's document is stored without a copy; the
            // missing-field checks keep their order (q, then u).
            let u = stmt.remove("u");
            let q = stmt.get_document("q").map_err(|_| {
                CommandError::new(
                    codes::MISSING_REQUIRED_FIELD,
                    "BSON field 'update.updates.q' is missing but a required field",
                )
            })?;
            let u = u.ok_or_else(|| {
                CommandError::new(
                    codes::MISSING_REQUIRED_FIELD,
                    "BSON field 'update.updates.u' is missing but a required field",
                )
            })?;
            update_statement(
                &mut storage,
                &ctx.db,
                &coll,
                q,
                u,
                stmt.get("arrayFilters"),
                stmt.get_bool("upsert").unwrap_or(false),
                stmt.get_bool("multi").unwrap_or(false),
                None,
                bypass,
                false,
            )
        })();
        match result {
            Ok(o) => {
                n += o.matched;
                modified += o.modified;
                if let Some(id) = o.upserted {
                    n += 1;
                    upserted.push(doc! {"index": i as i32, "_id": id});
                }
            }
            Err(e) => {
                errors.push(e.to_write_error(i));
                if ordered {
                    break;
                }
            }
        }
    }
    let mut reply = doc! {"n": n as i32, "nModified": modified as i32};
    if !upserted.is_empty() {
        reply.insert("upserted", upserted);
    }
    Ok(write_reply(reply, errors))
}

pub fn delete(ctx: &mut Ctx<'_>) -> CmdResult<Document> {
    let coll = ctx.collection()?;
    let stmts = statements(ctx, "deletes")?;
    let ordered = ctx.cmd.get_bool("ordered").unwrap_or(true);
    let mut storage = ctx.storage();
    refuse_view(&storage, &ctx.db, &coll)?;
    if stmts.iter().any(|st| {
        st.get_document("q")
            .is_ok_and(|q| filter_hits_lock(&storage, &ctx.db, &coll, q))
    }) {
        return Err(wait_for_transaction());
    }
    let mut n = 0i64;
    let mut errors = Vec::new();
    for (i, stmt) in stmts.into_iter().enumerate() {
        let result = (|| {
            let q = stmt.get_document("q").map_err(|_| {
                CommandError::new(
                    codes::MISSING_REQUIRED_FIELD,
                    "BSON field 'delete.deletes.q' is missing but a required field",
                )
            })?;
            let limit = match stmt.get("limit") {
                Some(Bson::Int32(1)) | Some(Bson::Int64(1)) => Some(1),
                Some(Bson::Double(d)) if *d == 1.0 => Some(1),
                _ => None,
            };
            let matcher = Matcher::new(q)?;
            let ids = match storage.collection(&ctx.db, &coll) {
                Some(c) => matching_ids(c, &matcher, None, limit),
                None => Vec::new(),
            };
            let mut count = 0i64;
            for id in ids {
                if storage.delete(&ctx.db, &coll, &id) {
                    count += 1;
                }
            }
            Ok::<i64, CommandError>(count)
        })();
        match result {
            Ok(c) => n += c,
            Err(e) => {
                errors.push(e.to_write_error(i));
                if ordered {
                    break;
                }
            }
        }
    }
    Ok(write_reply(doc! {"n": n as i32}, errors))
}

pub fn find_and_modify(ctx: &mut Ctx<'_>) -> CmdResult<Document> {
    let coll = ctx.collection()?;
    let query = ctx.cmd.get_document("query").cloned().unwrap_or_default();
    let sort = match ctx.cmd.get_document("sort") {
        Ok(s) if !s.is_empty() => Some(SortSpec::new(s)?),
        _ => None,
    };
    let fields = match ctx.cmd.get_document("fields") {
        Ok(f) if !f.is_empty() => Some(Projection::new(f)?),
        _ => None,
    };
    let remove = ctx.cmd.get_bool("remove").unwrap_or(false);
    let return_new = ctx.cmd.get_bool("new").unwrap_or(false);
    let upsert = ctx.cmd.get_bool("upsert").unwrap_or(false);
    let update = ctx.cmd.get("update").cloned();
    if remove == update.is_some() {
        return Err(CommandError::new(
            codes::FAILED_TO_PARSE,
            "Either an update or remove=true must be specified",
        ));
    }
    let project = |d: Document| match &fields {
        Some(p) => p.apply(&d),
        None => d,
    };
    let mut storage = ctx.storage();
    refuse_view(&storage, &ctx.db, &coll)?;
    if filter_hits_lock(&storage, &ctx.db, &coll, &query) {
        return Err(wait_for_transaction());
    }
    if remove {
        let matcher = Matcher::new(&query)?;
        let ids = match storage.collection(&ctx.db, &coll) {
            Some(c) => matching_ids(c, &matcher, sort.as_ref(), Some(1)),
            None => Vec::new(),
        };
        let Some(id) = ids.into_iter().next() else {
            return Ok(doc! {"lastErrorObject": {"n": 0}, "value": Bson::Null});
        };
        let old = get_doc(&storage, &ctx.db, &coll, &id);
        storage.delete(&ctx.db, &coll, &id);
        return Ok(
            doc! {"lastErrorObject": {"n": 1}, "value": old.map(|d| Bson::Document(project(d))).unwrap_or(Bson::Null)},
        );
    }
    let update = update.unwrap_or(Bson::Null);
    let o = update_statement(
        &mut storage,
        &ctx.db,
        &coll,
        &query,
        update,
        ctx.cmd.get("arrayFilters"),
        upsert,
        false,
        sort.as_ref(),
        bypasses_validation(ctx.cmd),
        true,
    )?;
    let mut last = doc! {"n": if o.upserted.is_some() { 1 } else { o.matched as i32 }, "updatedExisting": o.matched > 0};
    if let Some(id) = &o.upserted {
        last.insert("upserted", id.clone());
    }
    let value = match o.first {
        Some((old, new)) => {
            let shown = if return_new { Some(new) } else { old };
            shown
                .map(|d| Bson::Document(project(d)))
                .unwrap_or(Bson::Null)
        }
        None => Bson::Null,
    };
    Ok(doc! {"lastErrorObject": last, "value": value})
}

pub fn count(ctx: &mut Ctx<'_>) -> CmdResult<Document> {
    let coll = ctx.collection()?;
    let query = ctx.cmd.get_document("query").cloned().unwrap_or_default();
    let matcher = Matcher::new(&query)?;
    let skip = ctx
        .cmd
        .get("skip")
        .and_then(crate::commands::ddl::as_usize)
        .unwrap_or(0);
    let limit = ctx
        .cmd
        .get("limit")
        .and_then(crate::commands::ddl::as_usize)
        .filter(|l| *l > 0);
    let storage = ctx.storage();
    let n = match storage.collection(&ctx.db, &coll) {
        Some(c) if query.is_empty() => c.docs.len(),
        Some(c) => c.docs.values().filter(|d| matcher.matches(d)).count(),
        None => 0,
    };
    let n = n.saturating_sub(skip);
    let n = limit.map_or(n, |l| n.min(l));
    Ok(doc! {"n": n as i32})
}

pub fn distinct(ctx: &mut Ctx<'_>) -> CmdResult<Document> {
    let coll = ctx.collection()?;
    let key = ctx
        .cmd
        .get_str("key")
        .map_err(|_| CommandError::type_mismatch("'key' must be a string"))?
        .to_string();
    let query = ctx.cmd.get_document("query").cloned().unwrap_or_default();
    let matcher = Matcher::new(&query)?;
    let storage = ctx.storage();
    let mut values: std::collections::BTreeSet<OrdBson> = std::collections::BTreeSet::new();
    if let Some(c) = storage.collection(&ctx.db, &coll) {
        for d in c.docs.values().filter(|d| matcher.matches(d)) {
            for v in crate::query::path::lookup_values(d, &key) {
                match v {
                    Bson::Array(items) => values.extend(items.into_iter().map(OrdBson)),
                    other => {
                        values.insert(OrdBson(other));
                    }
                }
            }
        }
    }
    drop(storage);
    let mut reply = doc! {"values": values.into_iter().map(|v| v.0).collect::<Vec<_>>()};
    if let Some(ts) = crate::commands::read::snapshot_time(ctx) {
        reply.insert("atClusterTime", ts);
    }
    Ok(reply)
}
