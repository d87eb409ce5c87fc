//! The seeded workload: what an application does to the source while Ferry migrates it.
//! Each op is drawn with the seed's weights and sent as a plain command over TCP, the way
//! a driver sends it, so the sandbox sees exactly what a real server would.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bson::{doc, Bson, Document};
use mongodb::Client;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;

use super::values::{self, Shape};
use super::{Feature, Settings};

/// Op kinds; each seed gives every kind its own weight (some zero).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Insert,
    InsertMany,
    Update,
    UpdateMany,
    ArrayPathUpdate,
    Replace,
    Delete,
    DeleteMany,
    Upsert,
    BigDocument,
    Ddl,
    PushStorm,
    EqualIds,
    DollarUpdate,
    Transaction,
    PipelineUpdate,
    ArrayFilters,
    Reorder,
}

const ALWAYS: [Kind; 11] = [
    Kind::Insert,
    Kind::InsertMany,
    Kind::Update,
    Kind::UpdateMany,
    Kind::ArrayPathUpdate,
    Kind::Replace,
    Kind::Delete,
    Kind::DeleteMany,
    Kind::Upsert,
    Kind::BigDocument,
    Kind::Ddl,
];

/// A collection the workload writes to.
#[derive(Clone, Debug)]
pub struct Namespace {
    pub db: String,
    pub coll: String,
}

/// The workload's picture of the source: live namespaces and some `_id`s in each. It
/// may be stale after a failed op; that only makes later ops miss, never wrong.
pub struct Workload {
    pub rng: StdRng,
    pub namespaces: Vec<Namespace>,
    ids: BTreeMap<String, Vec<Bson>>,
    seq: u64,
    weights: Vec<(Kind, u32)>,
    shape: Shape,
    /// Whether renames may run now (during the copy only with `rename_during_copy`).
    pub renames_allowed: bool,
    /// Wait for the destination to catch up on a collection before renaming it (set
    /// while syncing unless the switch `rename_race` is on).
    pub wait_before_rename: bool,
    /// The destination, to see that it caught up before a rename.
    pub destination: Option<Client>,
    /// Ops done and failed, per kind, for the report of a seed.
    pub done: BTreeMap<Kind, (u64, u64)>,
    /// The first error of each kind, to tell a generator bug from a fault.
    pub first_error: BTreeMap<Kind, String>,
}

impl Workload {
    pub fn new(mut rng: StdRng, settings: &Settings) -> Workload {
        let mut weights = Vec::new();
        let mut kinds: Vec<Kind> = ALWAYS.to_vec();
        for (feature, kind) in [
            (Feature::PushStorm, Kind::PushStorm),
            (Feature::EqualIds, Kind::EqualIds),
            (Feature::DollarFields, Kind::DollarUpdate),
            (Feature::Txn, Kind::Transaction),
            (Feature::Pipeline, Kind::PipelineUpdate),
            (Feature::ArrayFilters, Kind::ArrayFilters),
            (Feature::Reorder, Kind::Reorder),
        ] {
            if settings.has(feature) {
                kinds.push(kind);
            }
        }
        for kind in kinds {
            let w = match kind {
                Kind::BigDocument => rng.gen_range(0..2),
                Kind::Ddl | Kind::PushStorm | Kind::EqualIds => rng.gen_range(1..4),
                _ if rng.gen_ratio(1, 6) => 0,
                _ => rng.gen_range(1..10),
            };
            weights.push((kind, w));
        }
        let shape = Shape {
            dotted: rng.gen_bool(0.5),
            dollar: settings.has(Feature::DollarFields),
            pad: if settings.large { 512 } else { 0 },
        };
        Workload {
            rng,
            namespaces: Vec::new(),
            ids: BTreeMap::new(),
            seq: 0,
            weights,
            shape,
            renames_allowed: false,
            wait_before_rename: false,
            destination: None,
            done: BTreeMap::new(),
            first_error: BTreeMap::new(),
        }
    }

    fn key(ns: &Namespace) -> String {
        format!("{}.{}", ns.db, ns.coll)
    }

    fn next_id(&mut self) -> Bson {
        self.seq += 1;
        let seq = self.seq;
        values::id(&mut self.rng, seq)
    }

    fn new_document(&mut self, ns: &Namespace) -> Document {
        let id = self.next_id();
        self.ids.entry(Self::key(ns)).or_default().push(id.clone());
        values::document(&mut self.rng, id, self.shape)
    }

    fn pick_ns(&mut self) -> Option<Namespace> {
        self.namespaces.choose(&mut self.rng).cloned()
    }

    fn pick_id(&mut self, ns: &Namespace) -> Option<Bson> {
        let ids = self.ids.get(&Self::key(ns))?;
        ids.choose(&mut self.rng).cloned()
    }

    /// Creates the initial collections (with indexes) and `docs` documents in each.
    pub async fn seed(&mut self, client: &Client, docs: usize) {
        let dbs = ["app", "crm", "ünïcode_db"];
        let n_db = self.rng.gen_range(1..=2);
        for db in &dbs[..n_db] {
            for c in 0..self.rng.gen_range(1..=3) {
                let ns = Namespace {
                    db: db.to_string(),
                    coll: format!("c{c}"),
                };
                self.namespaces.push(ns.clone());
                let mut batch = Vec::new();
                for _ in 0..docs {
                    batch.push(self.new_document(&ns));
                }
                for chunk in batch.chunks(200) {
                    let reply = command(
                        client,
                        &ns.db,
                        doc! {"insert": &ns.coll, "documents": chunk.to_vec()},
                    )
                    .await;
                    if let Err(e) = reply {
                        panic!("seeding {}.{} failed: {e}", ns.db, ns.coll);
                    }
                }
                for _ in 0..self.rng.gen_range(0..3) {
                    let spec = self.index_spec();
                    let _ = command(
                        client,
                        &ns.db,
                        doc! {"createIndexes": &ns.coll, "indexes": [spec]},
                    )
                    .await;
                }
            }
        }
    }

    fn index_spec(&mut self) -> Document {
        let n = self.rng.gen_range(0..1000);
        match self.rng.gen_range(0..6) {
            0 => doc! {"key": {"g": 1, "cnt": -1}, "name": format!("g_cnt_{n}")},
            1 => doc! {"key": {"s": 1}, "name": format!("s_sparse_{n}"), "sparse": true},
            2 => {
                doc! {"key": {"at": 1}, "name": format!("ttl_{n}"), "expireAfterSeconds": 86_400 * 365}
            }
            3 => {
                doc! {"key": {"tags": 1}, "name": format!("tags_partial_{n}"), "partialFilterExpression": {"g": {"$gt": 2}}}
            }
            4 => doc! {"key": {"objs.b": -1}, "name": format!("objs_b_{n}")},
            _ => doc! {"key": {"sub.a": 1, "g": 1}, "name": format!("sub_a_{n}")},
        }
    }

    pub fn pick_kind(&mut self) -> Kind {
        let total: u32 = self.weights.iter().map(|(_, w)| w).sum();
        if total == 0 {
            return Kind::Insert;
        }
        let mut r = self.rng.gen_range(0..total);
        for (kind, w) in &self.weights {
            if r < *w {
                return *kind;
            }
            r -= w;
        }
        Kind::Insert
    }

    /// Runs `count` ops against the source.
    pub async fn run(&mut self, client: &Client, count: usize) {
        for _ in 0..count {
            let kind = self.pick_kind();
            self.run_kind(client, kind).await;
        }
    }

    /// Runs one op of `kind`, counted like the others.
    pub async fn run_kind(&mut self, client: &Client, kind: Kind) {
        let result = self.op(client, kind).await;
        self.count(kind, result);
    }

    /// A DDL op that certainly reaches the server (a crash point follows it): renames
    /// the collection when renames are allowed, else creates an index.
    pub async fn certain_ddl(&mut self, client: &Client) {
        let Some(ns) = self.pick_ns() else {
            return;
        };
        if self.renames_allowed {
            let result = self.ddl_arm(client, &ns, 2).await;
            self.count(Kind::Ddl, result);
            let renamed = !self
                .namespaces
                .iter()
                .any(|n| n.db == ns.db && n.coll == ns.coll);
            if renamed {
                return;
            }
        }
        let result = self.ddl_arm(client, &ns, 3).await;
        self.count(Kind::Ddl, result);
    }

    fn count(&mut self, kind: Kind, result: Result<(), String>) {
        let entry = self.done.entry(kind).or_default();
        entry.0 += 1;
        if let Err(e) = result {
            entry.1 += 1;
            self.first_error.entry(kind).or_insert(e);
        }
    }

    /// Takes `kind` out of the mix (a feature the sandbox lacks).
    pub fn disable(&mut self, kind: Kind) {
        for (k, w) in self.weights.iter_mut() {
            if *k == kind {
                *w = 0;
            }
        }
    }

    /// Ops done/failed per kind, with the first error of each kind that failed.
    pub fn report(&self) -> String {
        let mut out: Vec<String> = self
            .done
            .iter()
            .map(|(k, (n, failed))| format!("{k:?} {n}/{failed}"))
            .collect();
        for (k, e) in &self.first_error {
            let e: String = e.chars().take(160).collect();
            out.push(format!("first {k:?} error: {e}"));
        }
        out.join("; ")
    }

    /// One op of `kind`; an error is returned as text (counted, not fatal: faults make
    /// some ops fail, and the comparison is of what the source ended up holding).
    async fn op(&mut self, client: &Client, kind: Kind) -> Result<(), String> {
        let Some(ns) = self.pick_ns() else {
            return Ok(());
        };
        let db = ns.db.clone();
        let coll = ns.coll.clone();
        match kind {
            Kind::Insert => {
                let d = self.new_document(&ns);
                write(client, &db, doc! {"insert": &coll, "documents": [d]}).await
            }
            Kind::InsertMany => {
                let docs: Vec<Document> = (0..self.rng.gen_range(2..20))
                    .map(|_| self.new_document(&ns))
                    .collect();
                write(
                    client,
                    &db,
                    doc! {"insert": &coll, "documents": docs, "ordered": false},
                )
                .await
            }
            Kind::Update | Kind::ArrayPathUpdate => {
                let Some(id) = self.pick_id(&ns) else {
                    return Ok(());
                };
                let u = if kind == Kind::Update {
                    self.update_operators()
                } else {
                    self.array_path_update()
                };
                write(
                    client,
                    &db,
                    doc! {"update": &coll, "updates": [{"q": {"_id": id}, "u": u}]},
                )
                .await
            }
            Kind::UpdateMany => {
                let g = self.rng.gen_range(0..8i32);
                let u = doc! {"$inc": {"cnt": 1}, "$set": {"many": values::word(&mut self.rng)}};
                write(
                    client,
                    &db,
                    doc! {"update": &coll, "updates": [{"q": {"g": g}, "u": u, "multi": true}]},
                )
                .await
            }
            Kind::Replace => {
                let Some(id) = self.pick_id(&ns) else {
                    return Ok(());
                };
                let mut d = values::document(&mut self.rng, id.clone(), self.shape);
                d.remove("_id");
                d.insert("replaced", true);
                write(
                    client,
                    &db,
                    doc! {"update": &coll, "updates": [{"q": {"_id": id}, "u": d}]},
                )
                .await
            }
            Kind::Delete => {
                let Some(id) = self.pick_id(&ns) else {
                    return Ok(());
                };
                write(
                    client,
                    &db,
                    doc! {"delete": &coll, "deletes": [{"q": {"_id": id}, "limit": 1}]},
                )
                .await
            }
            Kind::DeleteMany => {
                let g = self.rng.gen_range(0..8i32);
                let s = values::word(&mut self.rng);
                write(
                    client,
                    &db,
                    doc! {"delete": &coll, "deletes": [{"q": {"g": g, "s": s}, "limit": 0}]},
                )
                .await
            }
            Kind::Upsert => {
                let id = self.next_id();
                self.ids.entry(Self::key(&ns)).or_default().push(id.clone());
                let u = if self.rng.gen_bool(0.5) {
                    let mut u = self.update_operators();
                    u.insert("$setOnInsert", doc! {"born": values::word(&mut self.rng)});
                    u
                } else {
                    let mut d = values::document(&mut self.rng, id.clone(), self.shape);
                    d.remove("_id");
                    d
                };
                write(
                    client,
                    &db,
                    doc! {"update": &coll, "updates": [{"q": {"_id": id}, "u": u, "upsert": true}]},
                )
                .await
            }
            Kind::BigDocument => self.big_document(client, &ns).await,
            Kind::Ddl => self.ddl(client, &ns).await,
            Kind::PushStorm => {
                let Some(id) = self.pick_id(&ns) else {
                    return Ok(());
                };
                for i in 0..self.rng.gen_range(200..400) {
                    let pad = "s".repeat(self.rng.gen_range(10..2000));
                    write(
                        client,
                        &db,
                        doc! {"update": &coll, "updates": [{"q": {"_id": id.clone()}, "u": {"$push": {"storm": {"i": i, "pad": pad}}}}]},
                    )
                    .await?;
                }
                Ok(())
            }
            Kind::EqualIds => {
                let n = self.rng.gen_range(1..5);
                let mut ids = values::equal_ids(n).to_vec();
                ids.shuffle(&mut self.rng);
                let first = values::document(&mut self.rng, ids[0].clone(), self.shape);
                let second = values::document(&mut self.rng, ids[1].clone(), self.shape);
                // Whichever numerically equal _id holds the key now, replace it by another type.
                write(
                    client,
                    &db,
                    doc! {"delete": &coll, "deletes": [{"q": {"_id": ids[0].clone()}, "limit": 1}]},
                )
                .await?;
                write(client, &db, doc! {"insert": &coll, "documents": [first]}).await?;
                write(
                    client,
                    &db,
                    doc! {"update": &coll, "updates": [{"q": {"_id": ids[0].clone()}, "u": {"$inc": {"cnt": 1}}}]},
                )
                .await?;
                write(
                    client,
                    &db,
                    doc! {"delete": &coll, "deletes": [{"q": {"_id": ids[0].clone()}, "limit": 1}]},
                )
                .await?;
                write(client, &db, doc! {"insert": &coll, "documents": [second]}).await
            }
            Kind::DollarUpdate => {
                let id = self.next_id();
                let mut d = values::document(&mut self.rng, id.clone(), self.shape);
                d.insert("$price", 10);
                write(client, &db, doc! {"insert": &coll, "documents": [d]}).await?;
                let u = self.update_operators();
                write(
                    client,
                    &db,
                    doc! {"update": &coll, "updates": [{"q": {"_id": id}, "u": u}]},
                )
                .await
            }
            Kind::Transaction => self.transaction(client, &ns).await,
            Kind::PipelineUpdate => {
                let Some(id) = self.pick_id(&ns) else {
                    return Ok(());
                };
                let pipeline = vec![
                    doc! {"$set": {"piped": values::word(&mut self.rng), "cnt": {"$add": [{"$ifNull": ["$cnt", 0]}, 1]}}},
                    doc! {"$unset": ["s"]},
                    doc! {"$replaceWith": {"$mergeDocuments": [{"moved": "$sub"}, "$$ROOT"]}},
                ];
                write(
                    client,
                    &db,
                    doc! {"update": &coll, "updates": [{"q": {"_id": id}, "u": pipeline}]},
                )
                .await
            }
            Kind::ArrayFilters => {
                let Some(id) = self.pick_id(&ns) else {
                    return Ok(());
                };
                let k = self.rng.gen_range(0..4i32);
                write(
                    client,
                    &db,
                    doc! {"update": &coll, "updates": [{"q": {"_id": id}, "u": {"$set": {"objs.$[o].c": "filtered"}, "$inc": {"arr.$[]": 1}}, "arrayFilters": [{"o.b": {"$gte": k}}]}]},
                )
                .await
            }
            Kind::Reorder => {
                let Some(id) = self.pick_id(&ns) else {
                    return Ok(());
                };
                // Same fields and values in another order: a real server stores the new order.
                write(
                    client,
                    &db,
                    doc! {"update": &coll, "updates": [{"q": {"_id": id.clone()}, "u": {"$set": {"pair": {"x": 1, "y": 2}}}}]},
                )
                .await?;
                write(
                    client,
                    &db,
                    doc! {"update": &coll, "updates": [{"q": {"_id": id}, "u": {"$set": {"pair": {"y": 2, "x": 1}}}}]},
                )
                .await
            }
        }
    }

    /// Waits (up to [`CATCH_UP`]) until the destination holds exactly the source's
    /// documents of `ns`: an update Ferry re-reads from the source is lost when the
    /// collection is renamed before it is applied (see `rename_race`).
    async fn caught_up(&self, client: &Client, ns: &Namespace) -> bool {
        let Some(dst) = &self.destination else {
            return true;
        };
        let deadline = Instant::now() + CATCH_UP;
        while Instant::now() < deadline {
            let s = super::compare::documents(client, &ns.db, &ns.coll).await;
            if s == super::compare::documents(dst, &ns.db, &ns.coll).await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// One update document mixing one to three operator kinds on distinct fields.
    fn update_operators(&mut self) -> Document {
        let mut u = Document::new();
        let mut used = std::collections::BTreeSet::new();
        for _ in 0..self.rng.gen_range(1..=3) {
            let (op, field, arg): (&str, &str, Bson) = match self.rng.gen_range(0..16) {
                0 => ("$set", "s", Bson::String(values::word(&mut self.rng))),
                1 => ("$set", "sub.a", values::value(&mut self.rng, 2)),
                2 => ("$unset", "sub.b", Bson::String(String::new())),
                3 => ("$inc", "cnt", self.number()),
                4 => ("$mul", "cnt", self.number()),
                5 => ("$min", "cnt", self.number()),
                6 => ("$max", "cnt", self.number()),
                7 => ("$rename", "s", Bson::String("s_renamed".into())),
                8 => {
                    let each: Vec<Bson> = (0..self.rng.gen_range(0..5))
                        .map(|_| Bson::Int32(self.rng.gen_range(0..20)))
                        .collect();
                    let mut spec = doc! {"$each": each};
                    if self.rng.gen_bool(0.5) {
                        spec.insert("$slice", self.rng.gen_range(-6..6i32));
                    }
                    if self.rng.gen_bool(0.5) {
                        spec.insert("$position", self.rng.gen_range(0..4i32));
                    }
                    ("$push", "arr", Bson::Document(spec))
                }
                9 => (
                    "$pull",
                    "arr",
                    Bson::Document(doc! {"$gte": self.rng.gen_range(0..20i32)}),
                ),
                10 => ("$pullAll", "arr", bson::bson!([1, 2, 3])),
                11 => (
                    "$addToSet",
                    "tags",
                    Bson::Document(doc! {"$each": ["café", "new", values::word(&mut self.rng)]}),
                ),
                12 => (
                    "$pop",
                    "arr",
                    Bson::Int32(if self.rng.gen_bool(0.5) { 1 } else { -1 }),
                ),
                13 => (
                    "$currentDate",
                    "touched",
                    if self.rng.gen_bool(0.5) {
                        Bson::Boolean(true)
                    } else {
                        Bson::Document(doc! {"$type": "timestamp"})
                    },
                ),
                14 => ("$bit", "bits", Bson::Document(doc! {"xor": 5})),
                _ => (
                    "$set",
                    "new_field",
                    Bson::Document(doc! {"k": values::unicode_key(&mut self.rng)}),
                ),
            };
            // One path per update: two operators on one field conflict (code 40).
            let root = field.split('.').next().unwrap_or(field);
            let target_root = match &arg {
                Bson::String(s) if op == "$rename" => s.clone(),
                _ => root.to_string(),
            };
            if !used.insert(root.to_string()) || !used.insert(target_root) {
                continue;
            }
            let entry = u
                .entry(op.to_string())
                .or_insert_with(|| Bson::Document(Document::new()));
            if let Bson::Document(d) = entry {
                d.insert(field, arg);
            }
        }
        if u.is_empty() {
            u.insert("$set", doc! {"s": "fallback"});
        }
        u
    }

    /// Updates through array index paths (`objs.3.b`, `arr.2`), which a change event
    /// reports as dotted paths that a `$set` may not be able to replay as is.
    fn array_path_update(&mut self) -> Document {
        let i = self.rng.gen_range(0..6);
        match self.rng.gen_range(0..5) {
            0 => doc! {"$set": {format!("objs.{i}.b"): self.rng.gen_range(0..100i32)}},
            1 => doc! {"$inc": {format!("arr.{i}"): 1}},
            2 => doc! {"$unset": {format!("objs.{i}.c"): ""}},
            3 => doc! {"$set": {format!("objs.{i}"): {"b": -1, "c": "whole"}}},
            _ => {
                doc! {"$set": {format!("arr.{}", i + 8): 7}, "$push": {"tags": {"$each": ["x"], "$slice": -2}}}
            }
        }
    }

    fn number(&mut self) -> Bson {
        match self.rng.gen_range(0..4) {
            0 => Bson::Int32(self.rng.gen_range(-3..4)),
            1 => Bson::Int64(self.rng.gen_range(-3..4)),
            2 => Bson::Double(self.rng.gen_range(-2.0..2.0)),
            _ => values::decimal("1.5"),
        }
    }

    /// A document close to the 16 MB limit, inserted then updated.
    async fn big_document(&mut self, client: &Client, ns: &Namespace) -> Result<(), String> {
        let id = self.next_id();
        let pad = 16 * 1024 * 1024 - self.rng.gen_range(64 * 1024..512 * 1024);
        let d = doc! {"_id": id.clone(), "big": "b".repeat(pad), "cnt": 1};
        let coll = client.database(&ns.db).collection::<Document>(&ns.coll);
        coll.insert_one(d).await.map_err(|e| e.to_string())?;
        self.ids.entry(Self::key(ns)).or_default().push(id.clone());
        coll.update_one(doc! {"_id": id}, doc! {"$inc": {"cnt": 1}})
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    async fn ddl(&mut self, client: &Client, ns: &Namespace) -> Result<(), String> {
        let arm = self.rng.gen_range(0..7);
        self.ddl_arm(client, ns, arm).await
    }

    async fn ddl_arm(&mut self, client: &Client, ns: &Namespace, arm: u32) -> Result<(), String> {
        let db = ns.db.clone();
        let coll = ns.coll.clone();
        match arm {
            0 => {
                self.seq += 1;
                let new = Namespace {
                    db: db.clone(),
                    coll: format!("created{}", self.seq),
                };
                command(client, &db, doc! {"create": &new.coll})
                    .await
                    .map_err(|e| e.to_string())?;
                self.namespaces.push(new.clone());
                let docs: Vec<Document> = (0..self.rng.gen_range(1..20))
                    .map(|_| self.new_document(&new))
                    .collect();
                write(client, &db, doc! {"insert": &new.coll, "documents": docs}).await
            }
            1 if self.namespaces.len() > 1 => {
                self.namespaces
                    .retain(|n| !(n.db == ns.db && n.coll == ns.coll));
                command(client, &db, doc! {"drop": &coll})
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
            2 if self.renames_allowed => {
                if self.wait_before_rename && !self.caught_up(client, ns).await {
                    // Not caught up in time (a paused run): no rename this time.
                    return Ok(());
                }
                self.seq += 1;
                let to_db = if self.rng.gen_bool(0.3) {
                    "moved".to_string()
                } else {
                    db.clone()
                };
                let to = Namespace {
                    db: to_db,
                    coll: format!("renamed{}", self.seq),
                };
                command(
                    client,
                    "admin",
                    doc! {"renameCollection": format!("{db}.{coll}"), "to": format!("{}.{}", to.db, to.coll)},
                )
                .await
                .map_err(|e| e.to_string())?;
                for n in self.namespaces.iter_mut() {
                    if n.db == ns.db && n.coll == ns.coll {
                        *n = to.clone();
                    }
                }
                if let Some(ids) = self.ids.remove(&Self::key(ns)) {
                    self.ids.insert(Self::key(&to), ids);
                }
                Ok(())
            }
            3 | 4 => {
                let spec = self.index_spec();
                command(
                    client,
                    &db,
                    doc! {"createIndexes": &coll, "indexes": [spec]},
                )
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
            }
            5 => {
                let names = index_names(client, ns).await;
                let Some(name) = names.choose(&mut self.rng).cloned() else {
                    return Ok(());
                };
                command(client, &db, doc! {"dropIndexes": &coll, "index": name})
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
            _ => {
                let level = ["moderate", "off", "strict"][self.rng.gen_range(0..3)];
                command(
                    client,
                    &db,
                    doc! {"collMod": &coll, "validator": {"cnt": {"$exists": true}}, "validationLevel": level, "validationAction": "warn"},
                )
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
            }
        }
    }

    /// A multi-document transaction over two documents (feature `txn`).
    async fn transaction(&mut self, client: &Client, ns: &Namespace) -> Result<(), String> {
        let mut session = client.start_session().await.map_err(|e| e.to_string())?;
        session
            .start_transaction()
            .await
            .map_err(|e| e.to_string())?;
        let coll = client.database(&ns.db).collection::<Document>(&ns.coll);
        let d = self.new_document(ns);
        let body = async {
            coll.insert_one(d).session(&mut session).await?;
            if let Some(id) = self.pick_id(ns) {
                coll.update_one(doc! {"_id": id}, doc! {"$inc": {"cnt": 1}})
                    .session(&mut session)
                    .await?;
            }
            Ok::<_, mongodb::error::Error>(())
        };
        match body.await {
            Ok(()) => session
                .commit_transaction()
                .await
                .map_err(|e| e.to_string()),
            Err(e) => {
                let _ = session.abort_transaction().await;
                Err(e.to_string())
            }
        }
    }
}

/// Non-`_id` index names of a collection.
async fn index_names(client: &Client, ns: &Namespace) -> Vec<String> {
    match super::compare::index_specs(client, &ns.db, &ns.coll).await {
        Ok(specs) => specs
            .into_iter()
            .filter_map(|s| s.get_str("name").ok().map(str::to_string))
            .filter(|n| n != "_id_")
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// How long a rename waits for the destination to catch up on its collection.
const CATCH_UP: Duration = Duration::from_secs(10);

/// How long a command is retried while the server is stepped down or unreachable.
const RETRY_FOR: Duration = Duration::from_secs(20);

fn state_change(code: Option<i32>) -> bool {
    matches!(code, Some(10107 | 13435 | 11602 | 189 | 91 | 11600))
}

/// Runs a command, retrying while the server is between primaries or the connection
/// was dropped (a fault), as an application would.
pub async fn command(client: &Client, db: &str, cmd: Document) -> mongodb::error::Result<Document> {
    if super::trace() {
        let text: String = cmd.to_string().chars().take(300).collect();
        eprintln!("randomized: trace: {db}: {text}");
    }
    let deadline = Instant::now() + RETRY_FOR;
    loop {
        match client.database(db).run_command(cmd.clone()).await {
            Err(e)
                if Instant::now() < deadline
                    && (state_change(ferry::cluster::error_code(&e))
                        || matches!(*e.kind, mongodb::error::ErrorKind::Io(_))
                        || e.contains_label("RetryableWriteError")) =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => return other,
        }
    }
}

/// A write command; write errors in an ok reply (duplicate key, type mismatch) count as
/// a failed op.
async fn write(client: &Client, db: &str, cmd: Document) -> Result<(), String> {
    let reply = command(client, db, cmd).await.map_err(|e| e.to_string())?;
    match reply.get_array("writeErrors") {
        Ok(errors) if !errors.is_empty() => Err(format!("{errors:?}")),
        _ => Ok(()),
    }
}

/// Whether the source supports a feature's commands: probes them on a scratch
/// collection. Returns why not, when it does not.
pub async fn unsupported(client: &Client, kind: Kind) -> Option<String> {
    let db = "rand_probe";
    let _ = command(
        client,
        db,
        doc! {"insert": "p", "documents": [{"_id": 1, "objs": [{"b": 1}], "arr": [1]}]},
    )
    .await;
    let outcome = match kind {
        Kind::Transaction => {
            let mut w = Workload {
                rng: rand::SeedableRng::seed_from_u64(0),
                namespaces: Vec::new(),
                ids: BTreeMap::new(),
                seq: 1_000_000,
                weights: Vec::new(),
                shape: Shape {
                    dotted: false,
                    dollar: false,
                    pad: 0,
                },
                renames_allowed: false,
                wait_before_rename: false,
                destination: None,
                done: BTreeMap::new(),
                first_error: BTreeMap::new(),
            };
            let ns = Namespace {
                db: db.into(),
                coll: "p".into(),
            };
            w.transaction(client, &ns).await
        }
        Kind::PipelineUpdate => {
            write(client, db, doc! {"update": "p", "updates": [{"q": {"_id": 1}, "u": [{"$set": {"x": 1}}]}]}).await
        }
        Kind::ArrayFilters => {
            write(client, db, doc! {"update": "p", "updates": [{"q": {"_id": 1}, "u": {"$set": {"objs.$[o].c": 1}}, "arrayFilters": [{"o.b": 1}]}]}).await
        }
        Kind::Reorder => {
            let _ = write(client, db, doc! {"update": "p", "updates": [{"q": {"_id": 1}, "u": {"$set": {"pair": {"x": 1, "y": 2}}}}]}).await;
            let _ = write(client, db, doc! {"update": "p", "updates": [{"q": {"_id": 1}, "u": {"$set": {"pair": {"y": 2, "x": 1}}}}]}).await;
            let found = client
                .database(db)
                .collection::<Document>("p")
                .find_one(doc! {"_id": 1})
                .await
                .ok()
                .flatten();
            let order: Vec<String> = found
                .and_then(|d| d.get_document("pair").ok().cloned())
                .map(|p| p.keys().cloned().collect())
                .unwrap_or_default();
            if order == ["y", "x"] {
                Ok(())
            } else {
                Err(format!("a reordering $set left the fields as {order:?}"))
            }
        }
        _ => Ok(()),
    };
    let _ = command(client, db, doc! {"dropDatabase": 1}).await;
    outcome.err()
}
