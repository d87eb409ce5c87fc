//! In-memory data: databases, collections (ordered maps `_id` -> document), unique
//! indexes, and the oplog. Every change goes through [`Storage`] methods that append the
//! oplog entry in the same call, so the data and its history can never disagree.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use bson::{doc, oid::ObjectId, spec::BinarySubtype, Binary, Bson, DateTime, Document, Timestamp};

use crate::error::{codes, CmdResult, CommandError};
use crate::query::matcher::Matcher;
use crate::query::order::OrdBson;
use crate::query::path::get_path;
use crate::query::update::UpdateDescription;
use crate::query::UpdateLog;

/// Databases whose collections the sandbox never lists as user data.
pub const INTERNAL_DBS: &[&str] = &["admin", "local", "config"];

/// What a change did, as a change stream reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventKind {
    Insert,
    Update,
    Replace,
    Delete,
    Create,
    CreateIndexes,
    DropIndexes,
    Modify,
    Rename,
    Drop,
    DropDatabase,
    /// A no-op (appendOplogNote): moves cluster time, emits no event.
    Noop,
    /// A collection became sharded: a no-op entry on its primary shard, reported as an
    /// expanded event.
    ShardCollection,
    /// A sharded collection's key was extended (`refineCollectionShardKey`, 6.1+): a
    /// no-op entry on its primary shard, reported as an expanded event.
    RefineCollectionShardKey,
    /// A sharded collection was resharded on a new key (`reshardCollection`, 6.0.14+):
    /// a no-op entry on its primary shard, reported as an expanded event.
    ReshardCollection,
}

impl EventKind {
    pub fn operation_type(&self) -> &'static str {
        match self {
            EventKind::Insert => "insert",
            EventKind::Update => "update",
            EventKind::Replace => "replace",
            EventKind::Delete => "delete",
            EventKind::Create => "create",
            EventKind::CreateIndexes => "createIndexes",
            EventKind::DropIndexes => "dropIndexes",
            EventKind::Modify => "modify",
            EventKind::Rename => "rename",
            EventKind::Drop => "drop",
            EventKind::DropDatabase => "dropDatabase",
            EventKind::Noop => "noop",
            EventKind::ShardCollection => "shardCollection",
            EventKind::RefineCollectionShardKey => "refineCollectionShardKey",
            EventKind::ReshardCollection => "reshardCollection",
        }
    }
    /// Events only shown with `showExpandedEvents`.
    pub fn is_expanded(&self) -> bool {
        matches!(
            self,
            EventKind::Create
                | EventKind::CreateIndexes
                | EventKind::DropIndexes
                | EventKind::Modify
                | EventKind::ShardCollection
                | EventKind::RefineCollectionShardKey
                | EventKind::ReshardCollection
        )
    }
}

/// One oplog entry plus what change streams need to render its event.
#[derive(Clone, Debug)]
pub struct OplogEntry {
    pub ts: Timestamp,
    pub wall: DateTime,
    pub kind: EventKind,
    pub db: String,
    /// Empty for database-level entries (dropDatabase, noop).
    pub coll: String,
    pub uuid: Option<Binary>,
    pub document_key: Option<Document>,
    /// Inserted or replacing document; for updates the post-image.
    pub full_document: Option<Arc<Document>>,
    /// Pre-image, kept only when the collection has changeStreamPreAndPostImages enabled.
    pub pre_image: Option<Document>,
    pub update_description: Option<UpdateDescription>,
    /// Rename target.
    pub to: Option<(String, String)>,
    /// `operationDescription` of expanded events.
    pub operation_description: Option<Document>,
    /// The `o` field as `local.oplog.rs` shows it.
    pub o: Document,
    pub o2: Option<Document>,
    /// Set on the operations of a committed transaction: which transaction, and where the
    /// operation sits in it (entries of one `applyOps` share `ts`).
    pub txn: Option<TxnStamp>,
    /// Written by a chunk migration (the recipient's copies, the donor's range deletion),
    /// as the real server's `fromMigrate`: change streams do not report it.
    pub from_migrate: bool,
}

/// Where an operation of a committed transaction sits: its session and number, its index
/// in the transaction, and the `applyOps` oplog entry that holds it.
#[derive(Clone, Debug)]
pub struct TxnStamp {
    /// `{id, uid}` as the oplog and change events show it.
    pub lsid: Arc<Document>,
    pub txn_number: i64,
    /// Index of the operation in the whole transaction (the resume token's txnOpIndex).
    pub op_index: u32,
    /// True on every `applyOps` entry but the last of a transaction.
    pub partial: bool,
    /// The previous `applyOps` entry of the transaction (None on the first).
    pub prev: Option<Timestamp>,
    /// Number of operations of the whole transaction (reported on the last entry of a
    /// transaction that spans several).
    pub count: u32,
    /// Number of `applyOps` entries of the transaction.
    pub entries: u32,
}

/// A position in the oplog: an entry's timestamp and, inside one `applyOps` entry, the
/// operation's index. Totally ordered, as resume tokens are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OplogPosition {
    pub ts: Timestamp,
    pub op: u32,
}

impl OplogPosition {
    pub fn at(ts: Timestamp) -> OplogPosition {
        OplogPosition { ts, op: 0 }
    }
    /// After every operation at `ts`.
    pub fn end_of(ts: Timestamp) -> OplogPosition {
        OplogPosition { ts, op: u32::MAX }
    }
    fn key(&self) -> (u32, u32, u32) {
        (self.ts.time, self.ts.increment, self.op)
    }
}

impl PartialOrd for OplogPosition {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for OplogPosition {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key().cmp(&other.key())
    }
}

impl OplogEntry {
    /// This entry's position in the oplog.
    pub fn position(&self) -> OplogPosition {
        OplogPosition {
            ts: self.ts,
            op: self.txn.as_ref().map_or(0, |t| t.op_index),
        }
    }

    /// `{op, ns, ui, o, o2}`: the operation as an `applyOps` array lists it.
    pub fn op_document(&self) -> Document {
        let op = match self.kind {
            EventKind::Insert => "i",
            EventKind::Update | EventKind::Replace => "u",
            EventKind::Delete => "d",
            EventKind::Noop
            | EventKind::ShardCollection
            | EventKind::RefineCollectionShardKey
            | EventKind::ReshardCollection => "n",
            _ => "c",
        };
        let ns = match self.kind {
            EventKind::Insert | EventKind::Update | EventKind::Replace | EventKind::Delete => {
                format!("{}.{}", self.db, self.coll)
            }
            EventKind::Noop => String::new(),
            EventKind::ShardCollection
            | EventKind::RefineCollectionShardKey
            | EventKind::ReshardCollection => format!("{}.{}", self.db, self.coll),
            _ => format!("{}.$cmd", self.db),
        };
        let mut d = doc! { "op": op, "ns": ns };
        if let Some(ui) = &self.uuid {
            d.insert("ui", ui.clone());
        }
        // Inserts keep the document once, as their full document.
        let o = match (&self.kind, &self.full_document) {
            (EventKind::Insert | EventKind::Replace, Some(full)) if self.o.is_empty() => {
                Document::clone(full)
            }
            _ => self.o.clone(),
        };
        d.insert("o", o);
        if let Some(o2) = &self.o2 {
            d.insert("o2", o2.clone());
        }
        if self.from_migrate {
            d.insert("fromMigrate", true);
        }
        d
    }

    /// The document `local.oplog.rs` returns for this entry (outside a transaction).
    pub fn to_oplog_document(&self) -> Document {
        let mut d = self.op_document();
        d.insert("ts", self.ts);
        d.insert("t", 1i64);
        d.insert("v", 2i64);
        d.insert("wall", self.wall);
        d
    }
}

/// The oplog: bounded history of every change, in timestamp order.
#[derive(Debug, Default)]
pub struct Oplog {
    pub entries: VecDeque<OplogEntry>,
    /// Keep at most this many entries (None: unbounded).
    pub max_entries: Option<usize>,
    /// Timestamp of the newest entry dropped by truncation; history at or before it is lost.
    pub truncated_through: Option<Timestamp>,
}

impl Oplog {
    fn push(&mut self, entry: OplogEntry) {
        self.entries.push_back(entry);
        if let Some(max) = self.max_entries {
            while self.entries.len() > max {
                self.drop_oldest();
            }
        }
    }
    fn drop_oldest(&mut self) {
        if let Some(e) = self.entries.pop_front() {
            self.truncated_through = Some(e.ts);
        }
    }
    /// Drops all history up to and including `through` (all of it when None).
    pub fn truncate(&mut self, keep_last: usize) {
        while self.entries.len() > keep_last {
            self.drop_oldest();
        }
    }
    /// Index of the first entry with ts > `after`.
    pub fn position_after(&self, after: Timestamp) -> usize {
        self.entries.partition_point(|e| ts_le(e.ts, after))
    }
    /// Index of the first entry past `after`.
    pub fn index_after(&self, after: OplogPosition) -> usize {
        self.entries.partition_point(|e| e.position() <= after)
    }
    /// Index of the first entry at or past `at`.
    pub fn index_at(&self, at: OplogPosition) -> usize {
        self.entries.partition_point(|e| e.position() < at)
    }
    /// The documents `local.oplog.rs` holds, oldest first: one per entry, and one
    /// `applyOps` command per transaction entry (the operations sharing its `ts`).
    pub fn documents(&self) -> Vec<Document> {
        let mut out = Vec::with_capacity(self.entries.len());
        self.visit_documents(false, |d| {
            out.push(d);
            true
        });
        out
    }

    /// Visits the documents of `local.oplog.rs` in natural order (newest first when
    /// `reverse`), rendering each only when reached, until `visit` returns false: a read
    /// of the newest entries costs what it returns, not the whole oplog. Returns how many
    /// documents were rendered.
    pub fn visit_documents(&self, reverse: bool, mut visit: impl FnMut(Document) -> bool) -> u64 {
        let entries = &self.entries;
        let group_end = |start: usize| {
            let e = &entries[start];
            let mut end = start + 1;
            if e.txn.is_some() {
                while end < entries.len() && entries[end].ts == e.ts && entries[end].txn.is_some() {
                    end += 1;
                }
            }
            end
        };
        let group_start = |end: usize| {
            let e = &entries[end - 1];
            let mut start = end - 1;
            if e.txn.is_some() {
                while start > 0 && entries[start - 1].ts == e.ts && entries[start - 1].txn.is_some()
                {
                    start -= 1;
                }
            }
            start
        };
        let render = |start: usize, end: usize| {
            let e = &entries[start];
            match &e.txn {
                None => e.to_oplog_document(),
                Some(txn) => {
                    let ops = (start..end)
                        .map(|k| Bson::Document(entries[k].op_document()))
                        .collect();
                    crate::transaction::apply_ops_document(e, txn, ops)
                }
            }
        };
        let mut rendered = 0;
        if reverse {
            let mut end = entries.len();
            while end > 0 {
                let start = group_start(end);
                rendered += 1;
                if !visit(render(start, end)) {
                    break;
                }
                end = start;
            }
        } else {
            let mut start = 0;
            while start < entries.len() {
                let end = group_end(start);
                rendered += 1;
                if !visit(render(start, end)) {
                    break;
                }
                start = end;
            }
        }
        rendered
    }
    /// True when entries after `after` may have been dropped.
    pub fn lost_after(&self, after: Timestamp) -> bool {
        match self.truncated_through {
            Some(t) => ts_lt(after, t),
            None => false,
        }
    }
}

pub fn ts_cmp(a: Timestamp, b: Timestamp) -> std::cmp::Ordering {
    (a.time, a.increment).cmp(&(b.time, b.increment))
}
pub fn ts_lt(a: Timestamp, b: Timestamp) -> bool {
    ts_cmp(a, b) == std::cmp::Ordering::Less
}
pub fn ts_le(a: Timestamp, b: Timestamp) -> bool {
    ts_cmp(a, b) != std::cmp::Ordering::Greater
}

/// One index. Unique indexes keep their key entries so duplicates are refused.
#[derive(Debug, Clone)]
pub struct Index {
    pub name: String,
    pub key: Document,
    /// The full definition as listIndexes reports it.
    pub spec: Document,
    pub unique: bool,
    pub sparse: bool,
    partial: Option<PartialFilter>,
    /// key values -> `_id`s holding them (only maintained for unique indexes).
    entries: BTreeMap<Vec<OrdBson>, BTreeSet<OrdBson>>,
}

#[derive(Debug, Clone)]
struct PartialFilter(Document);

impl Index {
    /// Whether the shard key `key` can use this index: its key starts with the shard
    /// key's fields, each the same kind (ascending, or hashed), and it is neither sparse
    /// nor partial nor collated.
    pub fn supports_shard_key(&self, key: &Document) -> bool {
        Index::key_starts_with(&self.key, key)
            && !self.sparse
            && self.partial.is_none()
            && !self.spec.contains_key("collation")
    }

    /// Whether index key `index` starts with `prefix`'s fields, each of the same kind
    /// (a hashed field only as hashed, an ordered one as ordered).
    pub fn key_starts_with(index: &Document, prefix: &Document) -> bool {
        prefix.len() <= index.len()
            && prefix.iter().zip(index.iter()).all(|((a, av), (b, bv))| {
                a == b
                    && match (av, bv) {
                        (Bson::String(x), Bson::String(y)) => x == y,
                        (Bson::String(_), _) | (_, Bson::String(_)) => false,
                        _ => true,
                    }
            })
    }

    /// This index's definition without its entries.
    fn definition(&self) -> Index {
        Index {
            name: self.name.clone(),
            key: self.key.clone(),
            spec: self.spec.clone(),
            unique: self.unique,
            sparse: self.sparse,
            partial: self.partial.clone(),
            entries: BTreeMap::new(),
        }
    }

    pub fn from_spec(spec: Document) -> CmdResult<Index> {
        let spec = crate::commands::text_index::normalize(spec);
        let key = spec
            .get_document("key")
            .map_err(|_| {
                CommandError::failed_to_parse("index specification must have a 'key' document")
            })?
            .clone();
        if key.is_empty() {
            return Err(CommandError::new(
                codes::CANNOT_CREATE_INDEX,
                "index keys cannot be empty",
            ));
        }
        let name = match spec.get_str("name") {
            Ok(n) => n.to_string(),
            Err(_) => default_index_name(&key),
        };
        let unique = spec.get_bool("unique").unwrap_or(false);
        let sparse = spec.get_bool("sparse").unwrap_or(false);
        let partial = match spec.get("partialFilterExpression") {
            Some(Bson::Document(d)) => {
                Matcher::new(d)?;
                Some(PartialFilter(d.clone()))
            }
            Some(_) => {
                return Err(CommandError::type_mismatch(
                    "partialFilterExpression must be an object",
                ))
            }
            None => None,
        };
        let mut full = doc! { "v": 2, "key": key.clone(), "name": name.clone() };
        for (k, v) in &spec {
            if k != "v" && k != "key" && k != "name" && k != "ns" {
                full.insert(k.clone(), v.clone());
            }
        }
        Ok(Index {
            name,
            key,
            spec: full,
            unique,
            sparse,
            partial,
            entries: BTreeMap::new(),
        })
    }

    pub fn id_index() -> Index {
        Index {
            name: "_id_".into(),
            key: doc! {"_id": 1},
            spec: doc! {"v": 2, "key": {"_id": 1}, "name": "_id_"},
            unique: true,
            sparse: false,
            partial: None,
            entries: BTreeMap::new(),
        }
    }

    fn is_id(&self) -> bool {
        self.name == "_id_"
    }

    /// The key this document has in the index, or None when the index skips it.
    fn key_of(&self, doc: &Document) -> Option<Vec<OrdBson>> {
        let mut present = false;
        let values: Vec<OrdBson> = self
            .key
            .keys()
            .map(|path| match get_path(doc, path) {
                Some(v) => {
                    present = true;
                    OrdBson(v.clone())
                }
                None => OrdBson(Bson::Null),
            })
            .collect();
        if self.sparse && !present {
            return None;
        }
        if let Some(PartialFilter(f)) = &self.partial {
            let m = Matcher::new(f).ok()?;
            if !m.matches(doc) {
                return None;
            }
        }
        Some(values)
    }

    pub(crate) fn check(&self, ns: &str, doc: &Document, id: &OrdBson) -> CmdResult<()> {
        if !self.unique || self.is_id() {
            return Ok(());
        }
        if let Some(key) = self.key_of(doc) {
            if let Some(ids) = self.entries.get(&key) {
                if ids.iter().any(|other| other != id) {
                    return Err(duplicate_key_error(ns, &self.name, &self.key, &key));
                }
            }
        }
        Ok(())
    }

    pub(crate) fn add(&mut self, doc: &Document, id: &OrdBson) {
        if !self.unique || self.is_id() {
            return;
        }
        if let Some(key) = self.key_of(doc) {
            self.entries.entry(key).or_default().insert(id.clone());
        }
    }

    pub(crate) fn remove(&mut self, doc: &Document, id: &OrdBson) {
        if !self.unique || self.is_id() {
            return;
        }
        if let Some(key) = self.key_of(doc) {
            if let Some(ids) = self.entries.get_mut(&key) {
                ids.remove(id);
                if ids.is_empty() {
                    self.entries.remove(&key);
                }
            }
        }
    }
}

pub fn default_index_name(key: &Document) -> String {
    key.iter()
        .map(|(k, v)| {
            let dir = match v {
                Bson::String(s) => s.clone(),
                Bson::Int32(i) => i.to_string(),
                Bson::Int64(i) => i.to_string(),
                Bson::Double(d) => (*d as i64).to_string(),
                other => other.to_string(),
            };
            format!("{k}_{dir}")
        })
        .collect::<Vec<_>>()
        .join("_")
}

pub fn duplicate_key_error(
    ns: &str,
    index: &str,
    pattern: &Document,
    key: &[OrdBson],
) -> CommandError {
    let mut key_value = Document::new();
    for ((field, _), value) in pattern.iter().zip(key) {
        key_value.insert(field.clone(), value.0.clone());
    }
    let shown = key_value
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join(", ");
    CommandError::new(
        codes::DUPLICATE_KEY,
        format!(
            "E11000 duplicate key error collection: {ns} index: {index} dup key: {{ {shown} }}"
        ),
    )
    .with_extra("keyPattern", pattern.clone())
    .with_extra("keyValue", key_value)
}

/// A collection or view.
#[derive(Debug, Clone)]
pub struct Collection {
    pub uuid: Binary,
    /// Options as given to create (and changed by collMod), reported by listCollections.
    pub options: Document,
    pub docs: BTreeMap<OrdBson, Arc<Document>>,
    pub indexes: Vec<Index>,
    /// The shard key pattern when this collection is sharded (set on each shard's copy),
    /// so its oplog's document keys carry the shard key fields, as a shard's do.
    pub shard_key: Option<Document>,
}

impl Collection {
    pub(crate) fn new(options: Document) -> Collection {
        let indexes = if options.contains_key("viewOn") {
            Vec::new()
        } else {
            let mut id = Index::id_index();
            // The `_id` index takes the collection's default collation, as every index
            // created without one does.
            if let Ok(collation) = options.get_document("collation") {
                if !is_simple_collation(collation) {
                    id.spec.insert("collation", collation.clone());
                }
            }
            vec![id]
        };
        Collection {
            uuid: new_uuid(),
            options,
            docs: BTreeMap::new(),
            indexes,
            shard_key: None,
        }
    }
    /// This collection (options, indexes) holding `docs` instead: a snapshot of it.
    pub(crate) fn with_docs(&self, docs: BTreeMap<OrdBson, Arc<Document>>) -> Collection {
        // The definitions only: cloning the entries to clear them cost a copy of every
        // unique index of the source collection per snapshot.
        let mut indexes: Vec<Index> = self.indexes.iter().map(Index::definition).collect();
        for index in &mut indexes {
            for (id, d) in &docs {
                index.add(d, id);
            }
        }
        Collection {
            uuid: self.uuid.clone(),
            options: self.options.clone(),
            docs,
            indexes,
            shard_key: self.shard_key.clone(),
        }
    }

    /// The document key the oplog and change streams report for `doc`: the shard key
    /// fields (those present), then `_id` unless the shard key holds it; `{_id}` when
    /// the collection is not sharded.
    pub fn document_key(&self, doc: &Document) -> Document {
        let id = doc.get("_id").cloned().unwrap_or(Bson::Null);
        let Some(pattern) = &self.shard_key else {
            return doc! {"_id": id};
        };
        let mut key = Document::new();
        for field in pattern.keys() {
            if let Some(v) = get_path(doc, field) {
                key.insert(field.clone(), v.clone());
            }
        }
        if !key.contains_key("_id") {
            key.insert("_id", id);
        }
        key
    }

    /// Sets (or removes) one document, keeping indexes; refuses a unique-key duplicate.
    pub(crate) fn install(
        &mut self,
        ns: &str,
        id: &OrdBson,
        new: Option<Arc<Document>>,
    ) -> CmdResult<Option<Arc<Document>>> {
        let old = self.docs.get(id).cloned();
        if let Some(old) = &old {
            for index in &mut self.indexes {
                index.remove(old, id);
            }
        }
        if let Some(doc) = &new {
            if let Some(err) = self.indexes.iter().find_map(|i| i.check(ns, doc, id).err()) {
                if let Some(old) = &old {
                    for index in &mut self.indexes {
                        index.add(old, id);
                    }
                }
                return Err(err);
            }
            for index in &mut self.indexes {
                index.add(doc, id);
            }
            self.docs.insert(id.clone(), doc.clone());
        } else {
            self.docs.remove(id);
        }
        Ok(old)
    }

    pub fn is_view(&self) -> bool {
        self.options.contains_key("viewOn")
    }
    pub fn pre_and_post_images(&self) -> bool {
        self.options
            .get_document("changeStreamPreAndPostImages")
            .ok()
            .and_then(|d| d.get_bool("enabled").ok())
            .unwrap_or(false)
    }
    pub fn index(&self, name: &str) -> Option<&Index> {
        self.indexes.iter().find(|i| i.name == name)
    }
    /// Sum of the BSON sizes of all documents.
    pub fn data_size(&self) -> u64 {
        self.docs.values().map(|d| encoded_size(d) as u64).sum()
    }
}

/// The BSON size of a document, computed without encoding it.
pub fn encoded_size(doc: &Document) -> usize {
    5 + doc
        .iter()
        .map(|(k, v)| 2 + k.len() + value_size(v))
        .sum::<usize>()
}

fn value_size(v: &Bson) -> usize {
    let string = |s: &str| 5 + s.len();
    match v {
        Bson::Double(_) | Bson::DateTime(_) | Bson::Timestamp(_) | Bson::Int64(_) => 8,
        Bson::String(s) | Bson::JavaScriptCode(s) | Bson::Symbol(s) => string(s),
        Bson::Document(d) => encoded_size(d),
        Bson::Array(a) => {
            5 + a
                .iter()
                .enumerate()
                .map(|(i, v)| 2 + decimal_digits(i) + value_size(v))
                .sum::<usize>()
        }
        Bson::Binary(b) if b.subtype == BinarySubtype::BinaryOld => 9 + b.bytes.len(),
        Bson::Binary(b) => 5 + b.bytes.len(),
        Bson::ObjectId(_) => 12,
        Bson::Boolean(_) => 1,
        Bson::RegularExpression(r) => r.pattern.len() + r.options.len() + 2,
        Bson::DbPointer(_) => bson::to_vec(&doc! {"": v.clone()}).map_or(0, |b| b.len() - 7),
        Bson::JavaScriptCodeWithScope(c) => 4 + string(&c.code) + encoded_size(&c.scope),
        Bson::Int32(_) => 4,
        Bson::Decimal128(_) => 16,
        Bson::Null | Bson::Undefined | Bson::MaxKey | Bson::MinKey => 0,
    }
}

fn decimal_digits(mut i: usize) -> usize {
    let mut n = 1;
    while i >= 10 {
        i /= 10;
        n += 1;
    }
    n
}

/// The five random letters and digits of a temporary collection's name, as a real
/// server names the collection a rename between databases fills.
fn temp_suffix() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut rng = rand::thread_rng();
    (0..5)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

pub fn new_uuid() -> Binary {
    let bytes: [u8; 16] = rand::random();
    Binary {
        subtype: BinarySubtype::Uuid,
        bytes: bytes.to_vec(),
    }
}

#[derive(Debug, Default, Clone)]
pub struct Database {
    pub collections: BTreeMap<String, Collection>,
}

/// Hands out strictly increasing cluster timestamps (seconds, increment). Cloning shares
/// it: every node of a sandbox sharded cluster holds one clone, so cluster time is one
/// monotonic sequence across the config server, the shards and the router.
#[derive(Debug, Clone, Default)]
pub struct ClusterClock {
    /// The last timestamp handed out, as `time << 32 | increment` (0: none yet).
    last: Arc<std::sync::atomic::AtomicU64>,
}

impl ClusterClock {
    fn pack(ts: Timestamp) -> u64 {
        ((ts.time as u64) << 32) | ts.increment as u64
    }
    fn unpack(v: u64) -> Timestamp {
        Timestamp {
            time: (v >> 32) as u32,
            increment: v as u32,
        }
    }
    /// The next timestamp: after every one handed out before, on any node sharing it.
    pub fn tick(&self) -> Timestamp {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as u32)
            .unwrap_or(0);
        let step = |last: u64| {
            let last = Self::unpack(last);
            let next = if last.time >= now {
                Timestamp {
                    time: last.time,
                    increment: last.increment + 1,
                }
            } else {
                Timestamp {
                    time: now,
                    increment: 1,
                }
            };
            Self::pack(next)
        };
        let order = std::sync::atomic::Ordering::SeqCst;
        let previous = match self.last.fetch_update(order, order, |v| Some(step(v))) {
            Ok(v) | Err(v) => v,
        };
        Self::unpack(step(previous))
    }
    /// The newest timestamp handed out, if any.
    pub fn last(&self) -> Option<Timestamp> {
        match self.last.load(std::sync::atomic::Ordering::SeqCst) {
            0 => None,
            v => Some(Self::unpack(v)),
        }
    }
}

/// All data of one server.
#[derive(Debug, Default)]
pub struct Storage {
    pub dbs: BTreeMap<String, Database>,
    pub oplog: Oplog,
    clock: ClusterClock,
    /// Prior versions of documents, kept while a snapshot may read them.
    pub versions: crate::versions::Versions,
    /// Documents held by open transactions.
    pub locks: crate::transaction::Locks,
    /// Set by the `majorityLagMs` fault: how far the majority commit point trails the
    /// last write, and the cluster time when the fault was set (everything written before
    /// it counts as majority-committed).
    pub majority_lag: Option<(std::time::Duration, Timestamp)>,
    /// While set, writes are logged at this cluster time instead of a fresh one: a
    /// document that changes shard is deleted on one shard and inserted on the other at
    /// one cluster time, as the real cluster's cross-shard commit does.
    pub pinned_time: Option<Timestamp>,
}

/// A pending change for [`Storage::append`].
struct Change {
    kind: EventKind,
    db: String,
    coll: String,
    uuid: Option<Binary>,
    document_key: Option<Document>,
    full_document: Option<Arc<Document>>,
    pre_image: Option<Document>,
    update_description: Option<UpdateDescription>,
    to: Option<(String, String)>,
    operation_description: Option<Document>,
    o: Document,
    o2: Option<Document>,
    from_migrate: bool,
}

impl Change {
    fn new(kind: EventKind, db: &str, coll: &str, o: Document) -> Change {
        Change {
            kind,
            db: db.into(),
            coll: coll.into(),
            uuid: None,
            document_key: None,
            full_document: None,
            pre_image: None,
            update_description: None,
            to: None,
            operation_description: None,
            o,
            o2: None,
            from_migrate: false,
        }
    }
}

pub fn split_ns(ns: &str) -> (&str, &str) {
    match ns.split_once('.') {
        Some((d, c)) => (d, c),
        None => (ns, ""),
    }
}

pub fn validate_collection_name(db: &str, coll: &str) -> CmdResult<()> {
    if db.is_empty() || db.contains(['/', '\\', '.', ' ', '"', '$', '\0']) {
        return Err(CommandError::new(
            codes::INVALID_NAMESPACE,
            format!("Invalid database name: '{db}'"),
        ));
    }
    if coll.is_empty() || coll.contains('\0') || coll.contains('$') {
        return Err(CommandError::new(
            codes::INVALID_NAMESPACE,
            format!("Invalid collection name: {coll}"),
        ));
    }
    Ok(())
}

impl Storage {
    /// A new member's data: empty, with the oplog's first entry written at replica-set
    /// initiation, as on a real member.
    pub fn new(max_oplog_entries: Option<usize>) -> Storage {
        Storage::with_clock(max_oplog_entries, ClusterClock::default())
    }

    /// A new member's data whose timestamps come from `clock` (shared by the nodes of a
    /// sharded cluster).
    pub fn with_clock(max_oplog_entries: Option<usize>, clock: ClusterClock) -> Storage {
        let mut storage = Storage {
            clock,
            oplog: Oplog {
                max_entries: max_oplog_entries,
                ..Default::default()
            },
            ..Default::default()
        };
        storage.append_noop(doc! {"msg": "initiating set"});
        storage
    }

    /// The newest timestamp handed out (the cluster time).
    pub fn cluster_time(&mut self) -> Timestamp {
        match self.clock.last() {
            Some(t) => t,
            None => self.clock.tick(),
        }
    }

    fn append(&mut self, c: Change) -> Timestamp {
        let ts = match self.pinned_time {
            Some(ts) => ts,
            None => self.clock.tick(),
        };
        self.oplog.push(OplogEntry {
            ts,
            wall: DateTime::now(),
            kind: c.kind,
            db: c.db,
            coll: c.coll,
            uuid: c.uuid,
            document_key: c.document_key,
            full_document: c.full_document,
            pre_image: c.pre_image,
            update_description: c.update_description,
            to: c.to,
            operation_description: c.operation_description,
            o: c.o,
            o2: c.o2,
            txn: None,
            from_migrate: c.from_migrate,
        });
        ts
    }

    /// A transaction's private copy of the data it touches: no oplog history, its own
    /// clock; its oplog collects the transaction's operations.
    pub fn workspace() -> Storage {
        Storage::default()
    }

    /// Appends already-built entries (a committed transaction's operations), stamping
    /// each with a fresh timestamp per `applyOps` group. Returns the last timestamp.
    pub fn next_timestamp(&mut self) -> Timestamp {
        self.clock.tick()
    }

    /// The clock this storage takes its timestamps from.
    pub fn clock(&self) -> &ClusterClock {
        &self.clock
    }

    /// Appends an entry whose timestamp was taken with [`Self::next_timestamp`].
    pub fn push_entry(&mut self, entry: OplogEntry) {
        self.oplog.push(entry);
    }

    /// Sets (or clears, with zero) the majority lag fault.
    pub fn set_majority_lag(&mut self, lag: std::time::Duration) {
        if lag.is_zero() {
            self.majority_lag = None;
            self.versions.majority_floor = None;
            self.versions.prune();
            return;
        }
        let since = match self.majority_lag {
            Some((_, since)) => since,
            None => self.cluster_time(),
        };
        self.majority_lag = Some((lag, since));
        self.versions.majority_floor = Some(self.majority_point());
    }

    /// The majority commit point: the cluster time, or under the majority lag fault the
    /// newest entry written at least the lag ago. Keeps history after it readable.
    pub fn majority_point(&mut self) -> Timestamp {
        let Some((lag, since)) = self.majority_lag else {
            return self.cluster_time();
        };
        let cutoff = DateTime::now().timestamp_millis() - lag.as_millis() as i64;
        let n = self
            .oplog
            .entries
            .partition_point(|e| e.wall.timestamp_millis() <= cutoff);
        let point = match n.checked_sub(1).map(|i| self.oplog.entries[i].ts) {
            Some(ts) if ts_lt(since, ts) => ts,
            _ => since,
        };
        self.versions.majority_floor = Some(point);
        point
    }

    /// Whether reads at majority see an older state than local reads.
    pub fn majority_lags(&self) -> bool {
        self.majority_lag.is_some()
    }

    /// A private copy of `db.coll` as of `ts` (for reads at the majority commit point).
    pub fn snapshot_of(&self, db: &str, coll: &str, ts: Timestamp) -> Storage {
        let mut out = Storage::workspace();
        if let Some(c) = self.collection(db, coll) {
            let docs = self
                .versions
                .docs_at(db, coll, &c.docs, ts)
                .unwrap_or_else(|| c.docs.clone());
            out.dbs
                .entry(db.to_string())
                .or_default()
                .collections
                .insert(coll.to_string(), c.with_docs(docs));
        }
        out
    }

    /// Appends a no-op entry (appendOplogNote), moving cluster time forward.
    pub fn append_noop(&mut self, data: Document) -> Timestamp {
        self.append(Change::new(EventKind::Noop, "", "", data))
    }

    /// Marks `db.coll` sharded on `key` on this shard (creating the collection when
    /// missing), so its document keys carry the shard key; when `announce`, as on the
    /// collection's primary shard, logs the `shardCollection` no-op that change streams
    /// report with `showExpandedEvents`.
    pub fn shard_collection(
        &mut self,
        db: &str,
        coll: &str,
        key: &Document,
        unique: bool,
        announce: bool,
    ) -> CmdResult<()> {
        self.ensure_collection(db, coll)?;
        let c = self
            .collection_mut(db, coll)
            .ok_or_else(|| CommandError::ns_not_found(format!("ns not found {db}.{coll}")))?;
        c.shard_key = Some(key.clone());
        let uuid = c.uuid.clone();
        if announce {
            let ns = format!("{db}.{coll}");
            let mut change = Change::new(
                EventKind::ShardCollection,
                db,
                coll,
                doc! {"msg": {"shardCollection": &ns}},
            );
            change.uuid = Some(uuid);
            change.o2 = Some(doc! {"shardCollection": &ns, "key": key.clone(), "unique": unique});
            change.operation_description = Some(
                doc! {"shardKey": key.clone(), "unique": unique, "presplitHashedZones": false},
            );
            self.append(change);
        }
        Ok(())
    }

    /// Logs the no-op of a shard key change of `db.coll` (`kind` is
    /// [`EventKind::RefineCollectionShardKey`] or [`EventKind::ReshardCollection`]), as
    /// the collection's primary shard does: `o2` names the command, and
    /// `description` is the event's `operationDescription`.
    pub fn announce_shard_key_change(
        &mut self,
        kind: EventKind,
        db: &str,
        coll: &str,
        uuid: Binary,
        description: Document,
    ) -> Timestamp {
        let ns = format!("{db}.{coll}");
        let command = kind.operation_type();
        let mut change = Change::new(kind, db, coll, doc! {"msg": {command: &ns}});
        change.uuid = Some(uuid);
        let mut o2 = doc! {command: &ns};
        o2.extend(description.clone());
        change.o2 = Some(o2);
        change.operation_description = Some(description);
        self.append(change)
    }

    pub fn collection(&self, db: &str, coll: &str) -> Option<&Collection> {
        self.dbs.get(db).and_then(|d| d.collections.get(coll))
    }

    pub fn collection_mut(&mut self, db: &str, coll: &str) -> Option<&mut Collection> {
        self.dbs
            .get_mut(db)
            .and_then(|d| d.collections.get_mut(coll))
    }

    /// Creates a collection (or view). Fails with 48 if it exists.
    pub fn create_collection(&mut self, db: &str, coll: &str, options: Document) -> CmdResult<()> {
        validate_collection_name(db, coll)?;
        if self.collection(db, coll).is_some() {
            return Err(CommandError::new(
                codes::NAMESPACE_EXISTS,
                format!("Collection {db}.{coll} already exists."),
            ));
        }
        self.adopt_collection(db, coll, Collection::new(options));
        Ok(())
    }

    /// Adds a collection built elsewhere (a transaction's implicitly created one keeps its
    /// uuid) and writes its create entry.
    pub fn adopt_collection(&mut self, db: &str, coll: &str, c: Collection) {
        self.adopt_collection_marked(db, coll, c, false);
    }

    /// Creates, on a shard receiving its first chunk of a sharded collection, the
    /// collection as the donor has it (uuid, options, indexes, shard key), without data;
    /// logged `fromMigrate`. Does nothing when the collection exists.
    pub fn create_for_migration(&mut self, db: &str, coll: &str, donor: &Collection) {
        if self.collection(db, coll).is_some() {
            return;
        }
        let c = donor.with_docs(BTreeMap::new());
        self.adopt_collection_marked(db, coll, c, true);
    }

    fn adopt_collection_marked(&mut self, db: &str, coll: &str, c: Collection, from_migrate: bool) {
        let options = c.options.clone();
        let uuid = c.uuid.clone();
        let is_view = c.is_view();
        let id_index = c.index("_id_").map(|i| i.spec.clone());
        self.dbs
            .entry(db.to_string())
            .or_default()
            .collections
            .insert(coll.to_string(), c);
        let mut o = doc! {"create": coll};
        o.extend(options.clone());
        let mut change = Change::new(EventKind::Create, db, coll, o);
        change.uuid = if is_view { None } else { Some(uuid) };
        let mut desc = Document::new();
        if is_view {
            desc.insert(
                "viewOn",
                options.get("viewOn").cloned().unwrap_or(Bson::Null),
            );
            desc.insert(
                "pipeline",
                options
                    .get("pipeline")
                    .cloned()
                    .unwrap_or(Bson::Array(vec![])),
            );
        } else {
            desc.insert("idIndex", id_index.unwrap_or_default());
            for (k, v) in &options {
                desc.insert(k.clone(), v.clone());
            }
        }
        change.operation_description = Some(desc);
        change.from_migrate = from_migrate;
        self.append(change);
    }

    /// The collection, created implicitly (as an insert or createIndexes would) if missing.
    fn ensure_collection(&mut self, db: &str, coll: &str) -> CmdResult<()> {
        if self.collection(db, coll).is_none() {
            self.create_collection(db, coll, Document::new())?;
        }
        if self.collection(db, coll).is_some_and(|c| c.is_view()) {
            return Err(CommandError::new(
                codes::COMMAND_NOT_SUPPORTED_ON_VIEW,
                format!("Namespace {db}.{coll} is a view, not a collection"),
            ));
        }
        Ok(())
    }

    /// Inserts one document; adds `_id` first when missing. Returns the stored document.
    pub fn insert(&mut self, db: &str, coll: &str, doc: Document) -> CmdResult<Bson> {
        self.insert_marked(db, coll, doc, false)
    }

    /// Inserts a document a chunk migration copies to this shard: logged `fromMigrate`,
    /// so change streams do not report it.
    pub fn insert_from_migrate(&mut self, db: &str, coll: &str, doc: Document) -> CmdResult<Bson> {
        self.insert_marked(db, coll, doc, true)
    }

    fn insert_marked(
        &mut self,
        db: &str,
        coll: &str,
        mut doc: Document,
        from_migrate: bool,
    ) -> CmdResult<Bson> {
        if !doc.contains_key("_id") {
            let mut with_id = doc! {"_id": ObjectId::new()};
            with_id.extend(doc);
            doc = with_id;
        } else if doc.keys().next().map(|k| k.as_str()) != Some("_id") {
            let mut with_id = doc! {"_id": doc.get("_id").cloned().unwrap_or(Bson::Null)};
            for (k, v) in doc {
                if k != "_id" {
                    with_id.insert(k, v);
                }
            }
            doc = with_id;
        }
        let id_value = doc.get("_id").cloned().unwrap_or(Bson::Null);
        if matches!(id_value, Bson::Array(_) | Bson::RegularExpression(_)) {
            return Err(CommandError::new(
                codes::INVALID_ID_FIELD,
                format!("The '_id' value cannot be of type {}", type_name(&id_value)),
            ));
        }
        self.ensure_collection(db, coll)?;
        let ns = format!("{db}.{coll}");
        let id = OrdBson(id_value.clone());
        let c = self
            .collection_mut(db, coll)
            .ok_or_else(|| CommandError::ns_not_found("collection vanished"))?;
        if c.docs.contains_key(&id) {
            return Err(duplicate_key_error(&ns, "_id_", &doc! {"_id": 1}, &[id]));
        }
        for index in &c.indexes {
            index.check(&ns, &doc, &id)?;
        }
        for index in &mut c.indexes {
            index.add(&doc, &id);
        }
        // The collection and the oplog share the one copy.
        let key = c.document_key(&doc);
        let doc = Arc::new(doc);
        c.docs.insert(id, doc.clone());
        let uuid = c.uuid.clone();
        let mut change = Change::new(EventKind::Insert, db, coll, Document::new());
        change.uuid = Some(uuid);
        change.o2 = Some(key.clone());
        change.document_key = Some(key);
        change.full_document = Some(doc);
        change.from_migrate = from_migrate;
        let ts = self.append(change);
        if self.versions.recording() {
            self.versions
                .record(db, coll, OrdBson(id_value.clone()), ts, None);
        }
        Ok(id_value)
    }

    /// Replaces the document with `_id` = `id` by `new_doc` (an update or a replacement),
    /// logged as `log` says. Returns false (and writes nothing) when the new document has
    /// the same bytes as the old one (a reordered subdocument is a change).
    pub fn update(
        &mut self,
        db: &str,
        coll: &str,
        id: &Bson,
        new_doc: Document,
        log: UpdateLog,
    ) -> CmdResult<bool> {
        let ns = format!("{db}.{coll}");
        let key = OrdBson(id.clone());
        let c = self
            .collection_mut(db, coll)
            .ok_or_else(|| CommandError::ns_not_found(format!("ns not found {ns}")))?;
        let old = c
            .docs
            .get(&key)
            .cloned()
            .ok_or_else(|| CommandError::new(codes::NO_SUCH_KEY, "document vanished"))?;
        if crate::query::order::documents_binary_equal(&old, &new_doc) {
            return Ok(false);
        }
        if let Some(new_id) = new_doc.get("_id") {
            if new_id != id {
                return Err(CommandError::new(
                    codes::IMMUTABLE_FIELD,
                    "Performing an update on the path '_id' would modify the immutable field '_id'",
                ));
            }
        }
        for index in &mut c.indexes {
            index.remove(&old, &key);
        }
        if let Some(err) = c
            .indexes
            .iter()
            .find_map(|i| i.check(&ns, &new_doc, &key).err())
        {
            for index in &mut c.indexes {
                index.add(&old, &key);
            }
            return Err(err);
        }
        for index in &mut c.indexes {
            index.add(&new_doc, &key);
        }
        let new_doc = Arc::new(new_doc);
        c.docs.insert(key, new_doc.clone());
        let images = c.pre_and_post_images();
        let uuid = c.uuid.clone();
        let key = c.document_key(&new_doc);
        let replacement = matches!(log, UpdateLog::Replacement);
        let (kind, o, description) = match log {
            // The replacement is kept once, as the event's full document.
            UpdateLog::Replacement => (EventKind::Replace, Document::new(), None),
            UpdateLog::Delta { diff, description } => (
                EventKind::Update,
                doc! {"$v": 2, "diff": diff},
                Some(*description),
            ),
        };
        let mut change = Change::new(kind, db, coll, o);
        change.uuid = Some(uuid);
        change.o2 = Some(key.clone());
        change.document_key = Some(key);
        change.update_description = description;
        // An update's post-image is kept only where change streams may show it
        // (changeStreamPreAndPostImages); updateLookup reads the current document.
        if replacement || images {
            change.full_document = Some(new_doc);
        }
        let recording = self.versions.recording();
        let before = recording.then(|| old.clone());
        if images {
            change.pre_image = Some(Arc::unwrap_or_clone(old));
        }
        let ts = self.append(change);
        if let Some(before) = before {
            self.versions
                .record(db, coll, OrdBson(id.clone()), ts, Some(before));
        }
        Ok(true)
    }

    /// Deletes the document with this `_id`; returns whether one existed.
    pub fn delete(&mut self, db: &str, coll: &str, id: &Bson) -> bool {
        self.delete_marked(db, coll, id, false)
    }

    /// Deletes a document a chunk migration moved away (the donor's range deletion of
    /// orphans): logged `fromMigrate`, so change streams do not report it.
    pub fn delete_from_migrate(&mut self, db: &str, coll: &str, id: &Bson) -> bool {
        self.delete_marked(db, coll, id, true)
    }

    fn delete_marked(&mut self, db: &str, coll: &str, id: &Bson, from_migrate: bool) -> bool {
        let key = OrdBson(id.clone());
        let Some(c) = self.collection_mut(db, coll) else {
            return false;
        };
        let Some(old) = c.docs.remove(&key) else {
            return false;
        };
        for index in &mut c.indexes {
            index.remove(&old, &key);
        }
        let images = c.pre_and_post_images();
        let uuid = c.uuid.clone();
        let document_key = c.document_key(&old);
        let mut change = Change::new(EventKind::Delete, db, coll, document_key.clone());
        change.uuid = Some(uuid);
        change.document_key = Some(document_key);
        change.from_migrate = from_migrate;
        let recording = self.versions.recording();
        let before = recording.then(|| old.clone());
        if images {
            change.pre_image = Some(Arc::unwrap_or_clone(old));
        }
        let ts = self.append(change);
        if let Some(before) = before {
            self.versions.record(db, coll, key, ts, Some(before));
        }
        true
    }

    /// Drops a collection or view; returns false when it did not exist.
    pub fn drop_collection(&mut self, db: &str, coll: &str) -> bool {
        let Some(d) = self.dbs.get_mut(db) else {
            return false;
        };
        let Some(c) = d.collections.remove(coll) else {
            return false;
        };
        if d.collections.is_empty() {
            self.dbs.remove(db);
        }
        self.versions.forget(db, coll);
        let mut change = Change::new(EventKind::Drop, db, coll, doc! {"drop": coll});
        change.uuid = if c.is_view() { None } else { Some(c.uuid) };
        self.append(change);
        true
    }

    /// Drops every collection of a database, then the database itself.
    pub fn drop_database(&mut self, db: &str) -> bool {
        let Some(d) = self.dbs.get(db) else {
            return false;
        };
        let names: Vec<String> = d.collections.keys().cloned().collect();
        for name in names {
            self.drop_collection(db, &name);
        }
        self.dbs.remove(db);
        self.append(Change::new(
            EventKind::DropDatabase,
            db,
            "",
            doc! {"dropDatabase": 1},
        ));
        true
    }

    pub fn rename_collection(
        &mut self,
        from: (&str, &str),
        to: (&str, &str),
        drop_target: bool,
    ) -> CmdResult<()> {
        self.rename_collection_marked(from, to, drop_target, false)
    }

    /// A rename within one database that a shard other than the database's primary
    /// carries out for a sharded collection's rename: logged `fromMigrate`, so change
    /// streams report the rename once (from the primary shard), as on a real cluster.
    pub fn rename_collection_from_migrate(
        &mut self,
        from: (&str, &str),
        to: (&str, &str),
        drop_target: bool,
    ) -> CmdResult<()> {
        self.rename_collection_marked(from, to, drop_target, true)
    }

    fn rename_collection_marked(
        &mut self,
        from: (&str, &str),
        to: (&str, &str),
        drop_target: bool,
        from_migrate: bool,
    ) -> CmdResult<()> {
        validate_collection_name(to.0, to.1)?;
        let Some(source) = self.collection(from.0, from.1) else {
            return Err(CommandError::ns_not_found(
                "source namespace does not exist",
            ));
        };
        let is_view = source.is_view();
        if self.collection(to.0, to.1).is_some() && !drop_target {
            return Err(CommandError::new(
                codes::NAMESPACE_EXISTS,
                "target namespace exists",
            ));
        }
        if from.0 != to.0 && !is_view {
            return self.rename_between_databases(from, to);
        }
        // An existing target (dropTarget) goes with the rename's own oplog entry, which
        // names its UUID: change streams show one `rename` event, no `drop`.
        let dropped_target = self
            .dbs
            .get_mut(to.0)
            .and_then(|d| d.collections.remove(to.1));
        if dropped_target.is_some() {
            self.versions.forget(to.0, to.1);
        }
        let dropped_target = dropped_target.filter(|c| !c.is_view()).map(|c| c.uuid);
        let Some(c) = self
            .dbs
            .get_mut(from.0)
            .and_then(|d| d.collections.remove(from.1))
        else {
            return Err(CommandError::ns_not_found(
                "source namespace does not exist",
            ));
        };
        if self
            .dbs
            .get(from.0)
            .is_some_and(|d| d.collections.is_empty())
        {
            self.dbs.remove(from.0);
        }
        self.versions.forget(from.0, from.1);
        let uuid = c.uuid.clone();
        self.dbs
            .entry(to.0.to_string())
            .or_default()
            .collections
            .insert(to.1.to_string(), c);
        let mut o = doc! {"renameCollection": format!("{}.{}", from.0, from.1), "to": format!("{}.{}", to.0, to.1), "stayTemp": false};
        let mut description = doc! {"to": {"db": to.0, "coll": to.1}};
        if let Some(target) = dropped_target {
            o.insert("dropTarget", target.clone());
            description.insert("dropTarget", target);
        }
        let mut change = Change::new(EventKind::Rename, from.0, from.1, o);
        change.uuid = Some(uuid);
        change.to = Some((to.0.to_string(), to.1.to_string()));
        change.operation_description = Some(description);
        change.from_migrate = from_migrate;
        self.append(change);
        Ok(())
    }

    /// A rename into another database, carried out as a real server does: the documents
    /// are copied into a new temporary collection of the target database
    /// (`tmpXXXXX.renameCollection`, a new UUID), which is then renamed onto the target
    /// within its database (dropping an existing target), and the source is dropped. The
    /// oplog and change streams show each step: `create` and `createIndexes` of the
    /// temporary collection, one `insert` per document, `rename` from the temporary
    /// name to the target, `drop` of the source. The target therefore has another UUID
    /// than the source had.
    fn rename_between_databases(&mut self, from: (&str, &str), to: (&str, &str)) -> CmdResult<()> {
        let (options, secondary, docs) = {
            let Some(source) = self.collection(from.0, from.1) else {
                return Err(CommandError::ns_not_found(
                    "source namespace does not exist",
                ));
            };
            let secondary: Vec<Document> = source
                .indexes
                .iter()
                .filter(|i| i.name != "_id_")
                .map(|i| i.spec.clone())
                .collect();
            let docs: Vec<Document> = source.docs.values().map(|d| Document::clone(d)).collect();
            (source.options.clone(), secondary, docs)
        };
        let temp = loop {
            let name = format!("tmp{}.renameCollection", temp_suffix());
            if self.collection(to.0, &name).is_none() {
                break name;
            }
        };
        self.create_collection(to.0, &temp, options)?;
        for spec in secondary {
            self.create_indexes(to.0, &temp, vec![spec])?;
        }
        for doc in docs {
            self.insert(to.0, &temp, doc)?;
        }
        self.rename_collection((to.0, &temp), to, true)?;
        self.drop_collection(from.0, from.1);
        Ok(())
    }

    /// Creates indexes (implicitly creating the collection). Returns how many were new.
    pub fn create_indexes(
        &mut self,
        db: &str,
        coll: &str,
        specs: Vec<Document>,
    ) -> CmdResult<usize> {
        self.ensure_collection(db, coll)?;
        let ns = format!("{db}.{coll}");
        let mut created = Vec::new();
        {
            let c = self
                .collection_mut(db, coll)
                .ok_or_else(|| CommandError::ns_not_found(ns.clone()))?;
            let default_collation = c
                .options
                .get_document("collation")
                .ok()
                .filter(|collation| !is_simple_collation(collation))
                .cloned();
            // The command is all or nothing: an index the command built before one of
            // its specs failed is removed again, as the server builds them together.
            let before = c.indexes.len();
            let outcome = add_indexes(c, &ns, specs, default_collation.as_ref(), &mut created);
            if let Err(e) = outcome {
                c.indexes.truncate(before);
                return Err(e);
            }
        }
        let uuid = self.collection(db, coll).map(|c| c.uuid.clone());
        for spec in &created {
            let mut change = Change::new(
                EventKind::CreateIndexes,
                db,
                coll,
                doc! {"createIndexes": coll, "spec": spec.clone()},
            );
            change.uuid = uuid.clone();
            change.operation_description = Some(doc! {"indexes": [spec.clone()]});
            self.append(change);
        }
        Ok(created.len())
    }

    /// Drops indexes by name (`"*"` drops all but `_id_`).
    pub fn drop_indexes(&mut self, db: &str, coll: &str, names: &[String]) -> CmdResult<()> {
        let ns = format!("{db}.{coll}");
        let c = self
            .collection_mut(db, coll)
            .ok_or_else(|| CommandError::ns_not_found(format!("ns not found {ns}")))?;
        let targets: Vec<String> = if names.iter().any(|n| n == "*") {
            c.indexes
                .iter()
                .filter(|i| i.name != "_id_")
                .map(|i| i.name.clone())
                .collect()
        } else {
            for n in names {
                if n == "_id_" {
                    return Err(CommandError::new(
                        codes::INVALID_OPTIONS,
                        "cannot drop _id index",
                    ));
                }
                if c.index(n).is_none() {
                    return Err(CommandError::new(
                        codes::INDEX_NOT_FOUND,
                        format!("index not found with name [{n}]"),
                    ));
                }
            }
            names.to_vec()
        };
        // A sharded collection keeps one index its shard key can use: dropping the last
        // one by name fails with 370, and `*` leaves it.
        let targets = match &c.shard_key {
            Some(key) => {
                let compatible: Vec<&str> = c
                    .indexes
                    .iter()
                    .filter(|i| i.supports_shard_key(key))
                    .map(|i| i.name.as_str())
                    .collect();
                let kept = compatible.iter().any(|n| !targets.iter().any(|t| t == n));
                if kept || compatible.is_empty() {
                    targets
                } else if names.iter().any(|n| n == "*") {
                    targets
                        .into_iter()
                        .filter(|t| !compatible.contains(&t.as_str()))
                        .collect()
                } else {
                    return Err(CommandError::new(
                        codes::CANNOT_DROP_SHARD_KEY_INDEX,
                        "Cannot drop the only compatible index for this collection's shard key",
                    ));
                }
            }
            None => targets,
        };
        let mut dropped = Vec::new();
        c.indexes.retain(|i| {
            if targets.contains(&i.name) {
                dropped.push(i.spec.clone());
                false
            } else {
                true
            }
        });
        let uuid = c.uuid.clone();
        for spec in dropped {
            let name = spec.get_str("name").unwrap_or_default().to_string();
            let mut change = Change::new(
                EventKind::DropIndexes,
                db,
                coll,
                doc! {"dropIndexes": coll, "index": name},
            );
            change.uuid = Some(uuid.clone());
            change.operation_description = Some(doc! {"indexes": [spec]});
            self.append(change);
        }
        Ok(())
    }

    /// Changes collection options (validator, changeStreamPreAndPostImages, TTL of an index...).
    pub fn coll_mod(&mut self, db: &str, coll: &str, changes: Document) -> CmdResult<()> {
        let c = self
            .collection_mut(db, coll)
            .ok_or_else(|| CommandError::ns_not_found(format!("ns does not exist: {db}.{coll}")))?;
        for (k, v) in &changes {
            match k.as_str() {
                "index" => {
                    let spec = v
                        .as_document()
                        .ok_or_else(|| CommandError::type_mismatch("index must be a document"))?;
                    let position = c.indexes.iter().position(|i| {
                        match (spec.get_str("name"), spec.get_document("keyPattern")) {
                            (Ok(n), _) => i.name == n,
                            (_, Ok(kp)) => &i.key == kp,
                            _ => false,
                        }
                    });
                    let position = position.ok_or_else(|| {
                        CommandError::new(codes::INDEX_NOT_FOUND, "cannot find index for collMod")
                    })?;
                    let ns = format!("{db}.{coll}");
                    let docs = &c.docs;
                    let index = &mut c.indexes[position];
                    for (ik, iv) in spec {
                        match ik.as_str() {
                            "name" | "keyPattern" => {}
                            "expireAfterSeconds" | "hidden" | "prepareUnique" => {
                                index.spec.insert(ik.clone(), iv.clone());
                            }
                            "unique" => {
                                if iv.as_bool() != Some(true) {
                                    return Err(CommandError::bad_value(
                                        "collMod can only change an index to unique: true",
                                    ));
                                }
                                if index.unique {
                                    continue;
                                }
                                if !index.spec.get_bool("prepareUnique").unwrap_or(false) {
                                    return Err(CommandError::new(
                                        codes::INVALID_OPTIONS,
                                        "Cannot make index unique with 'prepareUnique=false'. Run collMod to set it first.",
                                    ));
                                }
                                let mut rebuilt = index.clone();
                                rebuilt.unique = true;
                                rebuilt.entries.clear();
                                for (id, doc) in docs {
                                    if rebuilt.check(&ns, doc, id).is_err() {
                                        return Err(CommandError::new(
                                            359,
                                            "Cannot convert the index to unique. Please resolve conflicting documents before running collMod again.",
                                        ));
                                    }
                                    rebuilt.add(doc, id);
                                }
                                rebuilt.spec.insert("unique", true);
                                rebuilt.spec.remove("prepareUnique");
                                *index = rebuilt;
                            }
                            other => {
                                return Err(CommandError::new(
                                    codes::INVALID_OPTIONS,
                                    format!("unknown collMod index option: {other}"),
                                ))
                            }
                        }
                    }
                }
                "validator"
                | "validationLevel"
                | "validationAction"
                | "changeStreamPreAndPostImages"
                | "expireAfterSeconds"
                | "viewOn"
                | "pipeline" => {
                    c.options.insert(k.clone(), v.clone());
                }
                other => {
                    return Err(CommandError::new(
                        codes::INVALID_OPTIONS,
                        format!("unknown option to collMod: {other}"),
                    ));
                }
            }
        }
        let uuid = c.uuid.clone();
        let mut o = doc! {"collMod": coll};
        o.extend(changes.clone());
        let mut change = Change::new(EventKind::Modify, db, coll, o);
        change.uuid = Some(uuid);
        change.operation_description = Some(changes);
        self.append(change);
        Ok(())
    }
}

/// Most indexes one collection may have, `_id` included.
const MAX_INDEXES: usize = 64;

/// Adds the indexes of one createIndexes command to `c`, building each over the
/// collection's documents; `created` gets the spec of each new one. On an error the
/// indexes added so far stay in `c` (the caller removes them).
fn add_indexes(
    c: &mut Collection,
    ns: &str,
    specs: Vec<Document>,
    default_collation: Option<&Document>,
    created: &mut Vec<Document>,
) -> CmdResult<()> {
    for mut spec in specs {
        // An index without a collation takes the collection's default; the simple
        // collation is stored as no collation at all (listIndexes shows none).
        match spec.get_document("collation") {
            Ok(collation) if is_simple_collation(collation) => {
                spec.remove("collation");
            }
            Ok(_) => {}
            Err(_) => {
                if let Some(collation) = default_collation {
                    spec.insert("collation", collation.clone());
                }
            }
        }
        let mut index = Index::from_spec(spec)?;
        if let Some(existing) = c.indexes.iter().find(|i| i.name == index.name) {
            if existing.key != index.key {
                return Err(CommandError::new(
                    codes::INDEX_KEY_SPECS_CONFLICT,
                    format!("An existing index has the same name as the requested index. Requested index: {}, existing index: {}", index.spec, existing.spec),
                ));
            }
            if strip_name(&existing.spec) != strip_name(&index.spec) {
                return Err(CommandError::new(
                    codes::INDEX_OPTIONS_CONFLICT,
                    format!(
                        "Index already exists with different options: {}",
                        existing.spec
                    ),
                ));
            }
            continue;
        }
        if let Some(existing) = c
            .indexes
            .iter()
            .find(|i| i.key == index.key && strip_name(&i.spec) == strip_name(&index.spec))
        {
            // Same keys and options under another name (same name was handled above).
            return Err(CommandError::new(
                codes::INDEX_OPTIONS_CONFLICT,
                format!(
                    "Index already exists with a different name: {}",
                    existing.name
                ),
            ));
        }
        // Indexes on one key pattern with different collations may coexist.
        if let Some(existing) = c
            .indexes
            .iter()
            .find(|i| i.key == index.key && i.spec.get("collation") == index.spec.get("collation"))
        {
            return Err(CommandError::new(
                codes::INDEX_OPTIONS_CONFLICT,
                format!("An equivalent index already exists with a different name and options. Requested index: {}, existing index: {}", index.spec, existing.spec),
            ));
        }
        if c.indexes.len() >= MAX_INDEXES {
            return Err(CommandError::new(
                codes::CANNOT_CREATE_INDEX,
                format!(
                    "add index fails, too many indexes for {ns} key:{}",
                    index.key
                ),
            ));
        }
        for (id, doc) in &c.docs {
            index.check(ns, doc, id)?;
            index.add(doc, id);
        }
        created.push(index.spec.clone());
        c.indexes.push(index);
    }
    Ok(())
}

fn strip_name(spec: &Document) -> Document {
    let mut d = spec.clone();
    d.remove("name");
    d.remove("v");
    d
}

pub fn type_name(v: &Bson) -> &'static str {
    match v {
        Bson::Double(_) => "double",
        Bson::String(_) => "string",
        Bson::Document(_) => "object",
        Bson::Array(_) => "array",
        Bson::Binary(_) => "binData",
        Bson::Undefined => "undefined",
        Bson::ObjectId(_) => "objectId",
        Bson::Boolean(_) => "bool",
        Bson::DateTime(_) => "date",
        Bson::Null => "null",
        Bson::RegularExpression(_) => "regex",
        Bson::DbPointer(_) => "dbPointer",
        Bson::JavaScriptCode(_) => "javascript",
        Bson::Symbol(_) => "symbol",
        Bson::JavaScriptCodeWithScope(_) => "javascriptWithScope",
        Bson::Int32(_) => "int",
        Bson::Timestamp(_) => "timestamp",
        Bson::Int64(_) => "long",
        Bson::Decimal128(_) => "decimal",
        Bson::MinKey => "minKey",
        Bson::MaxKey => "maxKey",
    }
}

/// Whether a collation document is the simple (binary) one.
fn is_simple_collation(collation: &Document) -> bool {
    collation.get_str("locale") == Ok("simple")
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{Decimal128, JavaScriptCodeWithScope, Regex};

    #[test]
    fn encoded_size_matches_the_encoder_for_every_type() {
        let many: Vec<Bson> = (0..120).map(Bson::Int32).collect();
        let d = doc! {
            "_id": ObjectId::new(), "d": 1.5, "s": "héllo", "doc": {"a": {"b": [1, "x"]}},
            "arr": many, "bin": Binary {subtype: BinarySubtype::Generic, bytes: vec![1, 2, 3]},
            "old": Binary {subtype: BinarySubtype::BinaryOld, bytes: vec![1, 2]},
            "t": true, "dt": DateTime::now(), "null": Bson::Null, "undef": Bson::Undefined,
            "re": Regex {pattern: "a.*b".into(), options: "i".into()},
            "js": Bson::JavaScriptCode("f()".into()), "sym": Bson::Symbol("s".into()),
            "jsw": JavaScriptCodeWithScope {code: "g()".into(), scope: doc! {"x": 1}},
            "i32": 7, "ts": Timestamp {time: 1, increment: 2}, "i64": 9i64,
            "dec": Decimal128::from_bytes([0; 16]), "min": Bson::MinKey, "max": Bson::MaxKey,
        };
        assert_eq!(encoded_size(&d), bson::to_vec(&d).unwrap().len());
        assert_eq!(encoded_size(&Document::new()), 5);
    }
}
