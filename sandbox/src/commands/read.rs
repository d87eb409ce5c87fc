//! Cursor-returning reads: find, aggregate (including $changeStream and $collStats),
//! getMore and killCursors.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bson::{doc, Bson, DateTime, Document};

use crate::auth::roles::Action;
use crate::changestream::{ChangeStream, Scope};
use crate::commands::ddl::as_usize;
use crate::commands::index_scan::{index_paths, IdBounds, IndexBounds};
use crate::cursor::{session_of, Cursor, CursorReply, CursorState, EncodedBatch, ReadCollection};
use crate::dispatch::{unauthorized, Connection, Ctx};
use crate::error::{codes, CmdResult, CommandError};
use crate::query::matcher::Matcher;
use crate::query::projection::Projection;
use crate::query::sort::SortSpec;
use crate::server::Server;
use crate::storage::Storage;
use crate::wire::Reply;

/// Documents in a first batch when the client gives no batchSize.
const DEFAULT_FIRST_BATCH: usize = 101;
/// Reply budget for one batch.
const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024 - 64 * 1024;
/// How long a change-stream getMore waits for events when the client gives no maxTimeMS.
const DEFAULT_AWAIT: Duration = Duration::from_secs(1);

/// Takes up to `limit` documents (and the byte budget) off the front of `docs`, encoding
/// each where it is: a document still shared with the collection is never copied.
fn take_batch(docs: &mut VecDeque<Arc<Document>>, limit: usize) -> CmdResult<EncodedBatch> {
    let mut batch = EncodedBatch::default();
    while batch.len() < limit {
        let Some(d) = docs.pop_front() else { break };
        batch.push(&d)?;
        if batch.doc_bytes() >= MAX_BATCH_BYTES {
            break;
        }
    }
    Ok(batch)
}

/// [`take_batch`] as documents, for replies built as a [`Document`].
fn take_documents(docs: &mut VecDeque<Arc<Document>>, limit: usize) -> Vec<Bson> {
    let mut out = Vec::new();
    let mut bytes = 0;
    while out.len() < limit {
        let Some(d) = docs.pop_front() else { break };
        bytes += crate::storage::encoded_size(&d);
        out.push(Bson::Document(Arc::unwrap_or_clone(d)));
        if bytes >= MAX_BATCH_BYTES {
            break;
        }
    }
    out
}

fn owner(conn: &Connection) -> Vec<String> {
    conn.users
        .iter()
        .map(|u| format!("{}.{}", u.db, u.user))
        .collect()
}

/// Replies with a first batch, opening a cursor when documents remain.
pub fn cursor_reply(
    ctx: &Ctx<'_>,
    ns: String,
    docs: Vec<Document>,
    batch_size: Option<usize>,
) -> Document {
    cursor_reply_over(ctx, ns, docs, batch_size, None)
}

/// Documents left after a first batch: a cursor holds them, or 0 when none are left.
/// `over` is the collection they were read from, whose drop or rename kills the cursor.
fn open_documents_cursor(
    ctx: &Ctx<'_>,
    ns: &str,
    docs: VecDeque<Arc<Document>>,
    over: Option<ReadCollection>,
) -> i64 {
    if docs.is_empty() {
        return 0;
    }
    ctx.server.cursors.open(Cursor {
        ns: ns.to_string(),
        state: CursorState::Documents(docs, over),
        last_used: Instant::now(),
        owner: owner(ctx.conn),
        session: session_of(ctx.cmd),
    })
}

/// [`cursor_reply`] for documents read from collection `over`: the cursor dies with it.
fn cursor_reply_over(
    ctx: &Ctx<'_>,
    ns: String,
    docs: Vec<Document>,
    batch_size: Option<usize>,
    over: Option<ReadCollection>,
) -> Document {
    let mut docs: VecDeque<Arc<Document>> = docs.into_iter().map(Arc::new).collect();
    let first = take_documents(&mut docs, batch_size.unwrap_or(DEFAULT_FIRST_BATCH));
    let id = open_documents_cursor(ctx, &ns, docs, over);
    let mut cursor = doc! {"firstBatch": first, "id": id, "ns": ns};
    if let Some(ts) = snapshot_time(ctx) {
        cursor.insert("atClusterTime", ts);
    }
    doc! {"cursor": cursor}
}

/// The time a `readConcern: {level: "snapshot"}` read outside a transaction reads at,
/// which its first reply reports as `cursor.atClusterTime` (`atClusterTime` for distinct) (the one asked for, else the
/// majority commit point), so a client can read again at the same point.
pub fn snapshot_time(ctx: &Ctx<'_>) -> Option<bson::Timestamp> {
    let rc = ctx.cmd.get_document("readConcern").ok()?;
    if rc.get_str("level") != Ok("snapshot") || ctx.cmd.contains_key("txnNumber") {
        return None;
    }
    Some(match rc.get_timestamp("atClusterTime") {
        Ok(ts) => ts,
        Err(_) => ctx.server.storage.lock().majority_point(),
    })
}

/// Replies with a first batch encoded straight from documents shared with storage,
/// opening a cursor when documents remain.
fn encoded_cursor_reply(
    ctx: &mut Ctx<'_>,
    ns: String,
    mut docs: VecDeque<Arc<Document>>,
    limit: usize,
    single_batch: bool,
    over: Option<ReadCollection>,
) -> CmdResult<Document> {
    let first = take_batch(&mut docs, limit)?;
    let id = if single_batch {
        0
    } else {
        open_documents_cursor(ctx, &ns, docs, over)
    };
    let at_cluster_time = snapshot_time(ctx);
    ctx.cursor = Some(CursorReply {
        first: true,
        batch: first,
        post_batch_resume_token: None,
        id,
        ns,
        at_cluster_time,
    });
    Ok(Document::new())
}

fn oplog_documents(storage: &Storage) -> Vec<Document> {
    storage.oplog.documents()
}

/// Oplog entries matching `matcher` in natural order (newest first when `reverse`), at
/// most `wanted` of them; also returns how many entries were read to find them.
fn oplog_natural(
    storage: &Storage,
    matcher: &Matcher,
    reverse: bool,
    wanted: Option<usize>,
) -> (Vec<Arc<Document>>, u64) {
    let wanted = wanted.unwrap_or(usize::MAX);
    let mut out = Vec::new();
    let read = storage.oplog.visit_documents(reverse, |d| {
        if matcher.matches(&d) {
            out.push(Arc::new(d));
        }
        out.len() < wanted
    });
    (out, read)
}

/// Documents of a namespace as a query sees them (views resolved, the oplog virtualized).
fn source_documents(
    storage: &Storage,
    db: &str,
    coll: &str,
    matcher: &Matcher,
) -> CmdResult<Vec<Document>> {
    Ok(
        source_documents_in(storage, db, coll, matcher, &IdBounds::default())?
            .into_iter()
            .map(Arc::unwrap_or_clone)
            .collect(),
    )
}

/// [`source_documents`] within `_id` bounds; a collection's documents stay shared with it.
fn source_documents_in(
    storage: &Storage,
    db: &str,
    coll: &str,
    matcher: &Matcher,
    bounds: &IdBounds,
) -> CmdResult<Vec<Arc<Document>>> {
    if db == "local" && coll == "oplog.rs" {
        return Ok(oplog_documents(storage)
            .into_iter()
            .filter(|d| matcher.matches(d))
            .map(Arc::new)
            .collect());
    }
    match storage.collection(db, coll) {
        None => Ok(Vec::new()),
        Some(c) if c.is_view() => {
            let on = c.options.get_str("viewOn").unwrap_or_default().to_string();
            let pipeline: Vec<Document> = c
                .options
                .get_array("pipeline")
                .map(|a| a.iter().filter_map(|s| s.as_document().cloned()).collect())
                .unwrap_or_default();
            let base = source_documents(storage, db, &on, &Matcher::new(&Document::new())?)?;
            let out = crate::query::aggregate::run_pipeline(base, &pipeline)?;
            Ok(out
                .into_iter()
                .filter(|d| matcher.matches(d))
                .map(Arc::new)
                .collect())
        }
        Some(c) if bounds.is_set() => {
            use crate::query::order::OrdBson;
            use std::ops::Bound;
            let lo = bounds
                .min
                .clone()
                .map_or(Bound::Unbounded, |v| Bound::Included(OrdBson(v)));
            let hi = bounds
                .max
                .clone()
                .map_or(Bound::Unbounded, |v| Bound::Excluded(OrdBson(v)));
            if let (Bound::Included(a), Bound::Excluded(b)) = (&lo, &hi) {
                if a >= b {
                    return Ok(Vec::new());
                }
            }
            Ok(c.docs
                .range((lo, hi))
                .map(|(_, d)| d)
                .filter(|d| matcher.matches(d))
                .cloned()
                .collect())
        }
        Some(c) => {
            if let Some(ids) = matcher.id_set() {
                return Ok(crate::commands::crud::lookup_ids(c, ids)
                    .filter(|d| matcher.matches(d))
                    .cloned()
                    .collect());
            }
            Ok(c.docs
                .values()
                .filter(|d| matcher.matches(d))
                .cloned()
                .collect())
        }
    }
}

/// The collection a query on `coll` reads, as the server's own catalog holds it: its drop
/// or rename kills the query's cursor. A transaction's or a majority snapshot's read
/// still dies with the live collection; a router's merged read of a sharded collection
/// (whose documents live on the shards) dies with the cluster catalog's entry.
fn read_collection(ctx: &Ctx<'_>, coll: &str) -> Option<ReadCollection> {
    if let Some(router) = ctx.server.options.role.router() {
        let ns = format!("{}.{coll}", ctx.db);
        let entry = crate::sharding::catalog::collection(&router.config.storage.lock(), &ns);
        return entry.map(|e| ReadCollection::sharded(&e));
    }
    ReadCollection::current(&ctx.server.storage.lock(), &ctx.db, coll)
}

pub fn find(ctx: &mut Ctx<'_>) -> CmdResult<Document> {
    let coll = ctx.collection()?;
    let filter =
        match ctx.cmd.get("filter") {
            Some(Bson::Document(f)) => f.clone(),
            None | Some(Bson::Null) => Document::new(),
            Some(_) => return Err(CommandError::type_mismatch(
                "BSON field 'FindCommandRequest.filter' is the wrong type, expected type 'object'",
            )),
        };
    let matcher = Matcher::new(&filter)?;
    // `{$natural: -1}` as sort or hint: storage order reversed (tailers read the newest
    // oplog entry this way); `$natural: 1` is storage order.
    let natural_of = |d: &Document| match (d.len(), d.get("$natural")) {
        (1, Some(Bson::Int32(n))) => Some(*n < 0),
        (1, Some(Bson::Int64(n))) => Some(*n < 0),
        (1, Some(Bson::Double(n))) => Some(*n < 0.0),
        (1, Some(_)) => Some(false),
        _ => None,
    };
    let mut natural_reverse = ctx
        .cmd
        .get_document("hint")
        .ok()
        .and_then(natural_of)
        .unwrap_or(false);
    let sort = match ctx.cmd.get_document("sort") {
        Ok(s) if natural_of(s).is_some() => {
            natural_reverse = natural_of(s).unwrap_or(false);
            None
        }
        Ok(s) if !s.is_empty() => Some(SortSpec::new(s)?),
        _ => None,
    };
    let projection = match ctx.cmd.get_document("projection") {
        Ok(p) if !p.is_empty() => Some(Projection::new(p)?),
        _ => None,
    };
    let skip = ctx
        .cmd
        .get("skip")
        .map(|v| {
            as_usize(v).ok_or_else(|| CommandError::bad_value("skip must be a non-negative number"))
        })
        .transpose()?
        .unwrap_or(0);
    let (limit, single_batch) = match ctx.cmd.get("limit") {
        Some(Bson::Int32(n)) if *n < 0 => (Some(n.unsigned_abs() as usize), true),
        Some(Bson::Int64(n)) if *n < 0 => (Some(n.unsigned_abs() as usize), true),
        Some(v) => (as_usize(v).filter(|n| *n > 0), false),
        None => (None, false),
    };
    let single_batch = single_batch || ctx.cmd.get_bool("singleBatch").unwrap_or(false);
    let batch_size = ctx.cmd.get("batchSize").and_then(as_usize);
    if let Ok(hint) = ctx.cmd.get_document("hint") {
        let storage = ctx.storage();
        if let Some(c) = storage.collection(&ctx.db, &coll) {
            if !hint.is_empty()
                && !hint.contains_key("$natural")
                && !c.indexes.iter().any(|i| &i.key == hint)
            {
                return Err(CommandError::bad_value(
                    "hint provided does not correspond to an existing index",
                ));
            }
        }
    }
    if let Ok(name) = ctx.cmd.get_str("hint") {
        let storage = ctx.storage();
        if let Some(c) = storage.collection(&ctx.db, &coll) {
            if c.index(name).is_none() {
                return Err(CommandError::bad_value(
                    "hint provided does not correspond to an existing index",
                ));
            }
        }
    }
    // The key pattern of the hinted index (a hint by pattern or by name).
    let hinted: Option<Document> = match ctx.cmd.get("hint") {
        Some(Bson::Document(h)) if !h.is_empty() && !h.contains_key("$natural") => Some(h.clone()),
        Some(Bson::String(name)) => ctx
            .storage()
            .collection(&ctx.db, &coll)
            .and_then(|c| c.index(name))
            .map(|i| i.key.clone()),
        _ => None,
    };
    let id_bounds = IdBounds::parse(ctx.cmd, hinted.as_ref())?;
    let index_bounds = match (&id_bounds, &hinted) {
        (None, Some(key)) => Some(IndexBounds::parse(ctx.cmd, key)?),
        _ => None,
    };
    let bounds = id_bounds.unwrap_or_default();
    // A hinted secondary index is scanned in its key order, which a query without a sort
    // returns (an `_id` hint is the collection's own order).
    let index_order = match &index_bounds {
        Some(b) => Some(b.order.clone()),
        None => hinted
            .as_ref()
            .filter(|key| !key.keys().eq(["_id"].iter()) && index_paths(key).is_some())
            .map(SortSpec::new)
            .transpose()?,
    };
    let over = read_collection(ctx, &coll);
    let (mut docs, over) = {
        let storage = ctx.storage();
        let docs = if ctx.db == "local" && coll == "oplog.rs" && sort.is_none() {
            // Natural order over the oplog: read entries in that order and stop once
            // skip + limit have matched, as a capped collection's scan does.
            let wanted = limit.map(|n| n.saturating_add(skip));
            let (docs, read) = oplog_natural(&storage, &matcher, natural_reverse, wanted);
            ctx.server
                .oplog_entries_read
                .fetch_add(read, std::sync::atomic::Ordering::Relaxed);
            docs
        } else {
            source_documents_in(&storage, &ctx.db, &coll, &matcher, &bounds)?
        };
        (docs, over)
    };
    if let Some(b) = &index_bounds {
        docs.retain(|d| b.contains(d));
    }
    if let Some(s) = sort.as_ref().or(index_order.as_ref()) {
        docs.sort_by(|a, b| s.compare(a, b));
    } else if natural_reverse && !(ctx.db == "local" && coll == "oplog.rs") {
        docs.reverse();
    }
    let docs: VecDeque<Arc<Document>> = docs
        .into_iter()
        .skip(skip)
        .take(limit.unwrap_or(usize::MAX))
        .map(|d| match &projection {
            Some(p) => Arc::new(p.apply(&d)),
            None => d,
        })
        .collect();
    let ns = ctx.ns(&coll);
    if single_batch {
        let limit = batch_size
            .unwrap_or(usize::MAX)
            .min(limit.unwrap_or(usize::MAX));
        return encoded_cursor_reply(ctx, ns, docs, limit, true, None);
    }
    let limit = batch_size.unwrap_or(DEFAULT_FIRST_BATCH);
    encoded_cursor_reply(ctx, ns, docs, limit, false, over)
}

pub fn aggregate(ctx: &mut Ctx<'_>) -> CmdResult<Document> {
    let pipeline: Vec<Document> = ctx
        .cmd
        .get_array("pipeline")
        .map_err(|_| CommandError::type_mismatch("'pipeline' must be an array"))?
        .iter()
        .map(|s| {
            s.as_document()
                .cloned()
                .ok_or_else(|| CommandError::type_mismatch("each pipeline stage must be an object"))
        })
        .collect::<CmdResult<_>>()?;
    let coll = match ctx.cmd.get("aggregate") {
        Some(Bson::String(s)) => Some(s.clone()),
        Some(Bson::Int32(1)) | Some(Bson::Int64(1)) | Some(Bson::Double(_)) => None,
        _ => {
            return Err(CommandError::type_mismatch(
                "aggregate must be a collection name or 1",
            ))
        }
    };
    let batch_size = ctx
        .cmd
        .get_document("cursor")
        .ok()
        .and_then(|c| c.get("batchSize"))
        .and_then(as_usize);
    if !ctx.cmd.contains_key("cursor") && !ctx.cmd.get_bool("explain").unwrap_or(false) {
        return Err(CommandError::new(
            codes::FAILED_TO_PARSE,
            "The 'cursor' option is required, except for aggregate with the explain argument",
        ));
    }
    if let Some(first) = pipeline.first() {
        if let Ok(spec) = first.get_document("$changeStream") {
            return open_change_stream(ctx, coll, spec.clone(), &pipeline[1..], batch_size);
        }
        if let Ok(spec) = first.get_document("$collStats") {
            let coll = coll.ok_or_else(|| {
                CommandError::new(
                    codes::INVALID_NAMESPACE,
                    "$collStats must be run against a collection",
                )
            })?;
            ctx.require(Action::CollStats, &ctx.db.clone(), &coll)?;
            let stats = crate::commands::admin::collection_stats(ctx, &coll)?;
            let mut out = doc! {"ns": ctx.ns(&coll), "host": ctx.server.address.clone(), "localTime": DateTime::now()};
            if spec.contains_key("storageStats") {
                out.insert("storageStats", stats.clone());
            }
            if spec.contains_key("count") {
                out.insert(
                    "count",
                    stats.get("count").cloned().unwrap_or(Bson::Int64(0)),
                );
            }
            let rest = crate::query::aggregate::run_pipeline(vec![out], &pipeline[1..])?;
            let ns = ctx.ns(&coll);
            return Ok(cursor_reply(ctx, ns, rest, batch_size));
        }
    }
    let coll = coll.ok_or_else(|| {
        CommandError::new(
            codes::INVALID_NAMESPACE,
            "{aggregate: 1} is not valid for this pipeline",
        )
    })?;
    ctx.require(Action::Find, &ctx.db.clone(), &coll)?;
    let over = read_collection(ctx, &coll);
    let (input, stages, over) = {
        let storage = ctx.storage();
        let (input, stages) = match sample_first(&storage, &ctx.db, &coll, &pipeline)? {
            Some(sampled) => (sampled, &pipeline[1..]),
            None => (
                source_documents(&storage, &ctx.db, &coll, &Matcher::new(&Document::new())?)?,
                &pipeline[..],
            ),
        };
        (input, stages, over)
    };
    crate::commands::aggregate_write::check_placement(stages)?;
    if let Some(stage) = crate::commands::aggregate_write::writing_stage(stages) {
        let stage = stage.clone();
        let out = crate::query::aggregate::run_pipeline(input, &stages[..stages.len() - 1])?;
        crate::commands::aggregate_write::write(ctx, &stage, out)?;
        let ns = ctx.ns(&coll);
        return Ok(cursor_reply(ctx, ns, Vec::new(), batch_size));
    }
    let out = crate::query::aggregate::run_pipeline(input, stages)?;
    let ns = ctx.ns(&coll);
    Ok(cursor_reply_over(ctx, ns, out, batch_size, over))
}

/// A leading `$sample` on a collection picks its documents straight from storage, as the
/// server's random cursor does, instead of materializing the whole collection first.
fn sample_first(
    storage: &Storage,
    db: &str,
    coll: &str,
    pipeline: &[Document],
) -> CmdResult<Option<Vec<Document>>> {
    let Some(spec) = pipeline
        .first()
        .and_then(|s| s.get_document("$sample").ok())
    else {
        return Ok(None);
    };
    let Some(c) = storage.collection(db, coll).filter(|c| !c.is_view()) else {
        return Ok(None);
    };
    let Some(size) = spec.get("size").and_then(as_usize) else {
        // Let the pipeline report the bad argument.
        return Ok(None);
    };
    use rand::{seq::SliceRandom, Rng};
    let mut rng = rand::thread_rng();
    let mut chosen: Vec<&Arc<Document>> = Vec::with_capacity(size.min(c.docs.len()));
    for (seen, d) in c.docs.values().enumerate() {
        if chosen.len() < size {
            chosen.push(d);
        } else {
            let j = rng.gen_range(0..=seen);
            if j < size {
                chosen[j] = d;
            }
        }
    }
    chosen.shuffle(&mut rng);
    Ok(Some(
        chosen.into_iter().map(|d| Document::clone(d)).collect(),
    ))
}

fn open_change_stream(
    ctx: &mut Ctx<'_>,
    coll: Option<String>,
    spec: Document,
    rest: &[Document],
    batch_size: Option<usize>,
) -> CmdResult<Document> {
    refuse_read_concern_below_majority(ctx.cmd)?;
    for stage in rest {
        if !stage.contains_key("$changeStreamSplitLargeEvent") {
            // Parses the stage: an unknown stage name fails here (40324), at open, as on
            // the server, not at the first event.
            crate::query::aggregate::run_pipeline(Vec::new(), std::slice::from_ref(stage))?;
        }
    }
    let scope = Scope::of_request(&ctx.db, coll.as_deref(), &spec)?;
    let allowed = match &scope {
        Scope::Cluster => {
            ctx.allowed(Action::ChangeStream, "", "") && ctx.allowed(Action::Find, "", "")
        }
        Scope::Database(db) => {
            ctx.allowed(Action::ChangeStream, db, "") && ctx.allowed(Action::Find, db, "")
        }
        Scope::Collection(db, c) => {
            ctx.allowed(Action::ChangeStream, db, c) && ctx.allowed(Action::Find, db, c)
        }
    };
    if !allowed {
        return Err(unauthorized("aggregate", &ctx.db));
    }
    let ns = scope.cursor_ns();
    let mut storage = ctx.server.storage.lock();
    let mut stream = ChangeStream::open(&mut storage, scope, &spec, rest)?;
    stream.disambiguate = ctx.server.version_parts() >= (6, 1, 0);
    let (events, token) =
        stream.next_batch(&mut storage, batch_size.unwrap_or(DEFAULT_FIRST_BATCH))?;
    drop(storage);
    let id = if stream.finished {
        0
    } else {
        ctx.server.cursors.open(Cursor {
            ns: ns.clone(),
            state: CursorState::ChangeStream(Box::new(stream)),
            last_used: Instant::now(),
            owner: owner(ctx.conn),
            session: session_of(ctx.cmd),
        })
    };
    ctx.cursor = Some(CursorReply {
        first: true,
        batch: events,
        post_batch_resume_token: Some(token),
        id,
        ns,
        at_cluster_time: None,
    });
    Ok(Document::new())
}

/// A change stream reads majority-committed history only: an explicit read concern level
/// other than majority is refused (72 InvalidOptions), as on the server.
fn refuse_read_concern_below_majority(cmd: &Document) -> CmdResult<()> {
    let Ok(level) = cmd
        .get_document("readConcern")
        .and_then(|rc| rc.get_str("level"))
    else {
        return Ok(());
    };
    if level == "majority" {
        return Ok(());
    }
    Err(CommandError::new(
        codes::INVALID_OPTIONS,
        format!(
            "Command aggregate does not support {{ readConcern: {{ level: \"{level}\" }} }} :: caused by :: Aggregation stage $changeStream cannot run with a readConcern other than 'majority'. Current readConcern: {level}"
        ),
    ))
}

/// Placeholder entry for the table: getMore is async and run by the dispatcher directly.
pub fn get_more_placeholder(_ctx: &mut Ctx<'_>) -> CmdResult<Document> {
    Err(CommandError::new(
        codes::INTERNAL_ERROR,
        "getMore must be dispatched asynchronously",
    ))
}

/// getMore: the next batch of a query cursor, or of a change stream (waiting up to
/// maxTimeMS for events).
pub async fn get_more(
    server: &Arc<Server>,
    conn: &mut Connection,
    db: &str,
    cmd: &Document,
) -> CmdResult<Reply> {
    let id = match cmd.get("getMore") {
        Some(Bson::Int64(i)) => *i,
        Some(Bson::Int32(i)) => *i as i64,
        _ => {
            return Err(CommandError::type_mismatch(
                "getMore must be an Int64 cursor id",
            ))
        }
    };
    let coll = cmd
        .get_str("collection")
        .map_err(|_| CommandError::type_mismatch("'collection' must be a string"))?;
    let Some(mut cursor) = server.cursors.take(id) else {
        return Err(CommandError::new(
            codes::CURSOR_NOT_FOUND,
            format!("cursor id {id} not found"),
        ));
    };
    let expected_ns = format!("{db}.{coll}");
    if cursor.ns != expected_ns
        && !(cursor.ns.starts_with(&format!("{db}.$cmd")) && coll.starts_with("$cmd"))
    {
        server.cursors.put_back(id, cursor);
        return Err(CommandError::unauthorized(format!("Requested getMore on namespace '{expected_ns}', but cursor belongs to a different namespace")));
    }
    if !server.users.is_empty() && cursor.owner != owner(conn) {
        server.cursors.put_back(id, cursor);
        return Err(CommandError::unauthorized(format!(
            "cursor id {id} was not created by the authenticated user"
        )));
    }
    if let Some(e) = server.faults.fail_points.check_get_more() {
        // The failed getMore has taken its cursor: like any getMore error, this kills it.
        return Err(match cursor.state {
            CursorState::ChangeStream(_) | CursorState::RouterChangeStream(_) => {
                e.with_label("ChangeStreamCursor")
            }
            CursorState::Documents(..) => e,
        });
    }
    if let CursorState::Documents(_, Some(over)) = &cursor.state {
        // The collection was dropped or renamed since the last batch: the cursor is
        // dead (taken out above, it stays out), as the server kills it.
        let killed = match server.options.role.router() {
            Some(router) if over.sharded => over.killed_in_catalog(&router.config.storage.lock()),
            _ => over.killed(&server.storage.lock()),
        };
        if let Some(e) = killed {
            server.cursors.count_plan_killed();
            return Err(e);
        }
    }
    let batch_size = cmd.get("batchSize").and_then(as_usize).filter(|n| *n > 0);
    let ns = cursor.ns.clone();
    match &mut cursor.state {
        CursorState::Documents(docs, _) => {
            let batch = take_batch(docs, batch_size.unwrap_or(usize::MAX))?;
            let exhausted = docs.is_empty();
            let reply_id = if exhausted { 0 } else { id };
            if !exhausted {
                server.cursors.put_back(id, cursor);
            }
            Ok(Reply {
                cursor: Some(CursorReply {
                    first: false,
                    batch,
                    post_batch_resume_token: None,
                    id: reply_id,
                    ns,
                    at_cluster_time: None,
                }),
                fields: Document::new(),
            })
        }
        CursorState::RouterChangeStream(_) => {
            // Only a router opens these, and its own getMore reads them.
            server.cursors.put_back(id, cursor);
            Err(CommandError::new(
                codes::CURSOR_NOT_FOUND,
                format!("cursor id {id} not found"),
            ))
        }
        CursorState::ChangeStream(_) => {
            let wait = match cmd.get("maxTimeMS") {
                Some(v) => Duration::from_millis(as_usize(v).unwrap_or(1000) as u64),
                None => DEFAULT_AWAIT,
            };
            let deadline = Instant::now() + wait;
            let result = loop {
                let notified = server.oplog_appended.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let CursorState::ChangeStream(stream) = &mut cursor.state else {
                    unreachable!()
                };
                let batch = {
                    let mut storage = server.storage.lock();
                    stream.next_batch(&mut storage, batch_size.unwrap_or(usize::MAX))
                };
                match batch {
                    Ok((events, token)) => {
                        let now = Instant::now();
                        if !events.is_empty() || now >= deadline || stream.finished {
                            break Ok((events, token, stream.finished));
                        }
                        let _ = tokio::time::timeout(deadline - now, notified).await;
                    }
                    Err(e) => break Err(e),
                }
            };
            match result {
                Ok((events, token, finished)) => {
                    let reply_id = if finished { 0 } else { id };
                    if !finished {
                        server.cursors.put_back(id, cursor);
                    }
                    Ok(Reply {
                        cursor: Some(CursorReply {
                            first: false,
                            batch: events,
                            post_batch_resume_token: Some(token),
                            id: reply_id,
                            ns,
                            at_cluster_time: None,
                        }),
                        fields: Document::new(),
                    })
                }
                Err(e) => Err(e.with_label("ChangeStreamCursor")),
            }
        }
    }
}

pub fn kill_cursors(ctx: &mut Ctx<'_>) -> CmdResult<Document> {
    let ids = ctx
        .cmd
        .get_array("cursors")
        .map_err(|_| CommandError::type_mismatch("'cursors' must be an array"))?;
    let mut killed = Vec::new();
    let mut not_found = Vec::new();
    for id in ids {
        let id = match id {
            Bson::Int64(i) => *i,
            Bson::Int32(i) => *i as i64,
            _ => continue,
        };
        if ctx.server.cursors.kill(id) {
            killed.push(id);
        } else {
            not_found.push(id);
        }
    }
    Ok(
        doc! {"cursorsKilled": killed, "cursorsNotFound": not_found, "cursorsAlive": [], "cursorsUnknown": []},
    )
}
