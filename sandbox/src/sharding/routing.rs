//! Writes through the router. Writes to an unsharded collection go to its database's
//! primary shard as they are. Writes to a sharded collection are targeted by shard key:
//! inserts by each document's key (a missing field counts as null), single-document
//! updates, deletes and findAndModify by an equality on the full shard key (or `_id`,
//! tried on each shard), multi writes on every shard. A single-document write that
//! targets neither fails as a 6.0/7.0 router fails it. An update that changes a
//! document's shard key so that it belongs to another shard becomes a delete on the old
//! shard and an insert on the new one, both at one cluster time.

use std::cmp::Ordering;
use std::sync::Arc;

use bson::{doc, oid::ObjectId, Bson, Document};

use crate::dispatch::Connection;
use crate::error::{codes, CmdResult, CommandError};
use crate::query::matcher::Matcher;
use crate::query::order::compare;
use crate::query::update::UpdateSpec;
use crate::query::ArrayFilters;
use crate::wire::Reply;

use super::catalog::{self, Chunk, CollectionEntry};
use super::forward::{self, error_code};
use super::router::home_shard;
use super::shard_key::equality_value;
use super::{Router, Shard};

/// Code 61 ShardKeyNotFound.
pub const SHARD_KEY_NOT_FOUND: i32 = 61;

/// Fields of a write command that are not its statements and go with each part sent to
/// a shard. The session fields stay on the router, which records retryable writes itself
/// (one client statement can become several shard commands).
const CARRIED: &[&str] = &[
    "ordered",
    "writeConcern",
    "bypassDocumentValidation",
    "let",
    "comment",
    "$db",
];

/// Fields of a transaction's statement that each shard part keeps.
const TRANSACTION_FIELDS: &[&str] = &[
    "lsid",
    "txnNumber",
    "autocommit",
    "startTransaction",
    "readConcern",
];

pub async fn write(
    server: &Arc<crate::server::Server>,
    router: &Router,
    conn: &Connection,
    db: &str,
    cmd: Document,
    name: &str,
) -> CmdResult<Reply> {
    let coll = cmd
        .get_str(name)
        .map_err(|_| {
            CommandError::new(codes::INVALID_NAMESPACE, "collection name must be a string")
        })?
        .to_string();
    let entry = catalog::collection(&router.config.storage.lock(), &format!("{db}.{coll}"));
    let Some(entry) = entry else {
        let Some(shard) = home_shard(router, db, true)? else {
            return super::router::to_config(router, conn, cmd).await;
        };
        return Ok(forward::to_shard(router, &shard, conn, cmd).await);
    };
    let retry_key = retry_key(&cmd);
    if let Some((lsid, txn)) = &retry_key {
        if let Some((done, reply)) = server.retry_cache.lock().get(lsid) {
            if done == txn {
                return Ok(reply.clone());
            }
        }
    }
    let target = Target {
        router,
        conn,
        entry: &entry,
        chunks: catalog::chunks(&router.config.storage.lock(), &entry.uuid),
        db,
        coll: &coll,
        cmd: &cmd,
        retryable: retry_key.is_some() || cmd.contains_key("autocommit"),
    };
    let reply = match name {
        "insert" => target.insert().await?,
        "update" => target.statements("updates").await?,
        "delete" => target.statements("deletes").await?,
        _ => target.find_and_modify().await?,
    };
    if let (Some((lsid, txn)), None) = (retry_key, error_code(&reply)) {
        server.retry_cache.lock().insert(lsid, (txn, reply.clone()));
    }
    Ok(reply)
}

fn retry_key(cmd: &Document) -> Option<(Vec<u8>, i64)> {
    if cmd.contains_key("autocommit") {
        return None;
    }
    let txn = match cmd.get("txnNumber")? {
        Bson::Int64(n) => *n,
        Bson::Int32(n) => *n as i64,
        _ => return None,
    };
    let lsid = cmd.get_document("lsid").ok()?;
    Some((bson::to_vec(lsid).ok()?, txn))
}

/// One write command on a sharded collection being split over its shards.
pub(super) struct Target<'a> {
    pub(super) router: &'a Router,
    pub(super) conn: &'a Connection,
    pub(super) entry: &'a CollectionEntry,
    pub(super) chunks: Vec<Chunk>,
    pub(super) db: &'a str,
    pub(super) coll: &'a str,
    pub(super) cmd: &'a Document,
    /// Sent as a retryable write or in a transaction (shard key values may change).
    pub(super) retryable: bool,
}

/// Sums of the per-shard replies of one client command.
#[derive(Default)]
struct Totals {
    n: i64,
    modified: i64,
    upserted: Vec<Bson>,
    errors: Vec<Document>,
    write_concern_error: Option<Bson>,
}

impl Totals {
    /// Adds a shard's reply to the statements starting at client index `first`.
    fn add(&mut self, reply: &Reply, first: usize) -> CmdResult<()> {
        if let Some(code) = error_code(reply) {
            let msg = reply.fields.get_str("errmsg").unwrap_or("shard error");
            return Err(CommandError::new(code, msg.to_string()));
        }
        self.n += int(reply.fields.get("n"));
        self.modified += int(reply.fields.get("nModified"));
        if let Ok(ups) = reply.fields.get_array("upserted") {
            for u in ups.iter().filter_map(Bson::as_document) {
                let mut u = u.clone();
                u.insert("index", (first as i64 + int(u.get("index"))) as i32);
                self.upserted.push(Bson::Document(u));
            }
        }
        if let Ok(errors) = reply.fields.get_array("writeErrors") {
            for e in errors.iter().filter_map(Bson::as_document) {
                let mut e = e.clone();
                e.insert("index", (first as i64 + int(e.get("index"))) as i32);
                self.errors.push(e);
            }
        }
        if let Some(wce) = reply.fields.get("writeConcernError") {
            self.write_concern_error = Some(wce.clone());
        }
        Ok(())
    }
    /// A statement the router itself refused, in the form a shard reports its own
    /// (with `codeName` and any extra fields).
    fn error(&mut self, index: usize, e: CommandError) {
        self.errors.push(e.to_write_error(index));
    }
    fn reply(self, with_modified: bool) -> Reply {
        let mut fields = doc! {"n": self.n as i32};
        if with_modified {
            fields.insert("nModified", self.modified as i32);
            if !self.upserted.is_empty() {
                fields.insert("upserted", self.upserted);
            }
        }
        if !self.errors.is_empty() {
            fields.insert("writeErrors", self.errors);
        }
        if let Some(wce) = self.write_concern_error {
            fields.insert("writeConcernError", wce);
        }
        Reply::from(fields)
    }
}

fn int(v: Option<&Bson>) -> i64 {
    match v {
        Some(Bson::Int32(n)) => *n as i64,
        Some(Bson::Int64(n)) => *n,
        Some(Bson::Double(f)) => *f as i64,
        _ => 0,
    }
}

impl Target<'_> {
    fn ordered(&self) -> bool {
        self.cmd.get_bool("ordered").unwrap_or(true)
    }

    /// The command's common fields with `field` holding `statements`.
    fn part(&self, name: &str, field: &str, statements: Vec<Bson>) -> Document {
        let mut part = doc! {name: self.coll, field: statements};
        for key in CARRIED {
            if let Some(v) = self.cmd.get(*key) {
                part.insert(*key, v.clone());
            }
        }
        if self.cmd.contains_key("autocommit") {
            // A transaction's statement: each shard runs its part in the transaction.
            for key in TRANSACTION_FIELDS {
                if let Some(v) = self.cmd.get(*key) {
                    part.insert(*key, v.clone());
                }
            }
        }
        part
    }

    pub(super) fn shard_of_key(&self, key: &Document) -> CmdResult<Shard> {
        let name = catalog::owning_shard(&self.chunks, key).ok_or_else(|| {
            CommandError::new(
                codes::INTERNAL_ERROR,
                format!("no chunk of {}.{} holds key {key}", self.db, self.coll),
            )
        })?;
        self.router.shard(&name).ok_or_else(|| {
            CommandError::new(
                codes::INTERNAL_ERROR,
                format!("chunk owner {name} is not a shard of this cluster"),
            )
        })
    }

    /// Shards owning at least one chunk of the collection.
    pub(super) fn owning_shards(&self) -> Vec<Shard> {
        self.router
            .shard_list()
            .into_iter()
            .filter(|s| self.chunks.iter().any(|c| c.shard == s.name))
            .collect()
    }

    /// The one shard a filter targets by equality on the full shard key.
    fn shard_of_filter(&self, filter: &Document) -> CmdResult<Option<Shard>> {
        match self.entry.key.key_from_equality(filter) {
            Some(key) => self.shard_of_key(&key).map(Some),
            None => Ok(None),
        }
    }

    async fn insert(&self) -> CmdResult<Reply> {
        let documents = self.cmd.get_array("documents").cloned().unwrap_or_default();
        let mut totals = Totals::default();
        // Consecutive documents for one shard go in one shard command.
        let mut run: Vec<Bson> = Vec::new();
        let mut run_shard: Option<Shard> = None;
        let mut run_first = 0;
        let mut routed = Vec::with_capacity(documents.len());
        for (i, d) in documents.into_iter().enumerate() {
            let Bson::Document(mut d) = d else {
                return Err(CommandError::type_mismatch(
                    "insert documents must be objects",
                ));
            };
            if !d.contains_key("_id") {
                let mut with_id = doc! {"_id": ObjectId::new()};
                with_id.extend(d);
                d = with_id;
            }
            let shard = self.shard_of_key(&self.entry.key.key_of(&d))?;
            routed.push((i, shard, d));
        }
        let ordered = self.ordered();
        for (i, shard, d) in routed {
            if run_shard.as_ref().is_some_and(|s| s.name != shard.name) {
                let before = totals.errors.len();
                self.send_inserts(
                    &mut totals,
                    run_shard.take(),
                    std::mem::take(&mut run),
                    run_first,
                )
                .await?;
                if ordered && totals.errors.len() > before {
                    return Ok(totals.reply(false));
                }
            }
            if run.is_empty() {
                run_first = i;
            }
            run_shard = Some(shard);
            run.push(Bson::Document(d));
        }
        self.send_inserts(&mut totals, run_shard, run, run_first)
            .await?;
        Ok(totals.reply(false))
    }

    async fn send_inserts(
        &self,
        totals: &mut Totals,
        shard: Option<Shard>,
        docs: Vec<Bson>,
        first: usize,
    ) -> CmdResult<()> {
        let Some(shard) = shard else {
            return Ok(());
        };
        let part = self.part("insert", "documents", docs);
        let reply = forward::to_shard(self.router, &shard, self.conn, part).await;
        totals.add(&reply, first)
    }

    /// `update` (`updates`) or `delete` (`deletes`): each statement routed on its own.
    async fn statements(&self, field: &str) -> CmdResult<Reply> {
        let name = if field == "updates" {
            "update"
        } else {
            "delete"
        };
        let statements = self.cmd.get_array(field).cloned().unwrap_or_default();
        let mut totals = Totals::default();
        for (i, stmt) in statements.into_iter().enumerate() {
            let Bson::Document(stmt) = stmt else {
                return Err(CommandError::type_mismatch(format!(
                    "{field} must hold objects"
                )));
            };
            let before = totals.errors.len();
            if let Err(e) = self.statement(name, field, &stmt, i, &mut totals).await {
                totals.error(i, e);
            }
            if self.ordered() && totals.errors.len() > before {
                break;
            }
        }
        Ok(totals.reply(name == "update"))
    }

    async fn statement(
        &self,
        name: &str,
        field: &str,
        stmt: &Document,
        index: usize,
        totals: &mut Totals,
    ) -> CmdResult<()> {
        let filter = stmt.get_document("q").cloned().unwrap_or_default();
        let multi = if name == "update" {
            stmt.get_bool("multi").unwrap_or(false)
        } else {
            !matches!(
                stmt.get("limit"),
                Some(Bson::Int32(1)) | Some(Bson::Int64(1))
            ) && !matches!(stmt.get("limit"), Some(Bson::Double(f)) if *f == 1.0)
        };
        let send = |shard: Shard| {
            let part = self.part(name, field, vec![Bson::Document(stmt.clone())]);
            async move { forward::to_shard(self.router, &shard, self.conn, part).await }
        };
        if multi {
            if name == "update" {
                self.refuse_multi_key_change(&filter, stmt)?;
            }
            for shard in self.owning_shards() {
                totals.add(&send(shard).await, index)?;
            }
            return Ok(());
        }
        if let Some(shard) = self.shard_of_filter(&filter)? {
            if name == "update" {
                if let Some(moved) = self.shard_key_move(&shard, &filter, stmt).await? {
                    totals.n += moved;
                    totals.modified += moved;
                    return Ok(());
                }
            }
            return totals.add(&send(shard).await, index);
        }
        if equality_value(&filter, "_id").is_some() && !stmt.get_bool("upsert").unwrap_or(false) {
            if name == "update" {
                self.refuse_key_change_without_full_key(&filter, stmt)?;
            }
            // `_id` is unique in practice: try each shard until one matched.
            for shard in self.owning_shards() {
                let reply = send(shard).await;
                let matched = int(reply.fields.get("n")) > 0;
                totals.add(&reply, index)?;
                if matched {
                    break;
                }
            }
            return Ok(());
        }
        let targets = self.targeted_by_ranges(&filter);
        if let [shard] = targets.as_slice() {
            return totals.add(&send(shard.clone()).await, index);
        }
        Err(single_write_error(name, &filter, self.entry, targets.len()))
    }

    /// Shards a filter can reach: the owner of a full key equality, else the owners of
    /// chunks whose range on the (ranged) first key field meets the filter's bounds on it.
    fn targeted_by_ranges(&self, filter: &Document) -> Vec<Shard> {
        if let Ok(Some(shard)) = self.shard_of_filter(filter) {
            return vec![shard];
        }
        let Some(first) = self.entry.key.fields.first().filter(|f| !f.hashed) else {
            return self.owning_shards();
        };
        let (low, high) = first_field_bounds(filter, &first.path);
        let reaches = |chunk: &Chunk| {
            let min = chunk.min.get(&first.path).unwrap_or(&Bson::MinKey);
            let max = chunk.max.get(&first.path).unwrap_or(&Bson::MaxKey);
            let below_high = high
                .as_ref()
                .is_none_or(|h| compare(min, h) != Ordering::Greater);
            let above_low = low
                .as_ref()
                .is_none_or(|l| compare(max, l) != Ordering::Less);
            below_high && above_low
        };
        self.router
            .shard_list()
            .into_iter()
            .filter(|s| self.chunks.iter().any(|c| c.shard == s.name && reaches(c)))
            .collect()
    }

    async fn find_and_modify(&self) -> CmdResult<Reply> {
        let filter = self.cmd.get_document("query").cloned().unwrap_or_default();
        let Some(shard) = self.shard_of_filter(&filter)? else {
            let targets = self.targeted_by_ranges(&filter);
            if let [shard] = targets.as_slice() {
                return Ok(
                    forward::to_shard(self.router, shard, self.conn, self.carried_whole()).await,
                );
            }
            return Err(CommandError::new(
                SHARD_KEY_NOT_FOUND,
                format!(
                    "Query for sharded findAndModify must contain the shard key. Query: {filter}, shard key pattern: {}",
                    self.entry.key.pattern
                ),
            ));
        };
        if let Some(update) = self.cmd.get("update") {
            let mut stmt = doc! {"q": filter.clone(), "u": update.clone()};
            if let Some(filters) = self.cmd.get("arrayFilters") {
                stmt.insert("arrayFilters", filters.clone());
            }
            let before = self.current(&shard, &filter);
            if self.shard_key_move(&shard, &filter, &stmt).await?.is_some() {
                let new = self.cmd.get_bool("new").unwrap_or(false);
                let value = match (new, before) {
                    (false, Some(old)) => Bson::Document(old),
                    (true, Some(old)) => {
                        let spec = UpdateSpec::parse(update)?;
                        let filters = ArrayFilters::parse(stmt.get("arrayFilters"))?;
                        Bson::Document(spec.apply_logged(&old, &filter, &filters, false)?.0)
                    }
                    _ => Bson::Null,
                };
                return Ok(Reply::from(doc! {
                    "lastErrorObject": {"n": 1, "updatedExisting": true},
                    "value": value,
                }));
            }
        }
        Ok(forward::to_shard(self.router, &shard, self.conn, self.carried_whole()).await)
    }

    fn current(&self, shard: &Shard, filter: &Document) -> Option<Document> {
        let matcher = Matcher::new(filter).ok()?;
        let storage = shard.server.storage.lock();
        let c = storage.collection(self.db, self.coll)?;
        c.docs
            .values()
            .find(|d| matcher.matches(d))
            .map(|d| d.as_ref().clone())
    }

    /// The whole command without its session fields (the router records retries).
    fn carried_whole(&self) -> Document {
        let mut cmd = self.cmd.clone();
        if !cmd.contains_key("autocommit") {
            cmd.remove("lsid");
            cmd.remove("txnNumber");
        }
        cmd
    }
}

/// The (inclusive, conservative) bounds a filter puts on `path`: from an equality or
/// from `$gt`/`$gte`/`$lt`/`$lte`; None where it puts none.
fn first_field_bounds(filter: &Document, path: &str) -> (Option<Bson>, Option<Bson>) {
    if let Some(v) = equality_value(filter, path) {
        return (Some(v.clone()), Some(v));
    }
    let Ok(ops) = filter.get_document(path) else {
        return (None, None);
    };
    let mut low = None;
    let mut high = None;
    for (op, v) in ops {
        match op.as_str() {
            "$gt" | "$gte" => low = Some(v.clone()),
            "$lt" | "$lte" => high = Some(v.clone()),
            _ => {}
        }
    }
    (low, high)
}

/// The error a 6.0/7.0 router gives a single-document update or delete that names
/// neither the shard key nor `_id` and reaches several shards.
fn single_write_error(
    name: &str,
    filter: &Document,
    entry: &CollectionEntry,
    targeted: usize,
) -> CommandError {
    let msg = if name == "update" {
        format!(
            "A {{multi:false}} update on a sharded collection must contain an exact match on _id (and have the collection default collation) or target a single shard (and have the simple collation), but this update targeted {targeted} shards. Update request: {{ q: {filter} }}, shard key pattern: {}",
            entry.key.pattern
        )
    } else {
        format!(
            "A single delete on a sharded collection must contain an exact match on _id (and have the collection default collation) or contain the shard key (and have the simple collation). Delete request: {{ q: {filter}, limit: 1 }}, shard key pattern: {}",
            entry.key.pattern
        )
    };
    CommandError::new(SHARD_KEY_NOT_FOUND, msg)
}
