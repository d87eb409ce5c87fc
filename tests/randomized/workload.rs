//! The seeded workload: what an application does to the source while Ferry migrates it.
//! Each op is drawn with the seed's weights and sent as a plain command over TCP, the way
//! a driver sends it, so the sandbox sees exactly what a real server would.

use std::collections::{BTreeMap, BTreeSet};

use bson::{doc, Bson, Document};
use mongodb::Client;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;

use super::requests::{command, write};
use super::updates;
use super::values::{self, Shape};
use super::{Feature, Settings};

#[path = "ddl.rs"]
mod ddl;
#[path = "probes.rs"]
mod probes;
#[path = "views.rs"]
mod views;

pub use probes::unsupported;
pub use views::OUTSIDE_DB;

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
    CappedList,
    View,
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
    /// Collections sharded on the source ("db.coll").
    pub sharded: BTreeSet<String>,
    /// Collections DDL must not drop or rename ("db.coll"): those a `[sharding]` entry
    /// of the config names (a restarted run checks that they exist).
    pub pinned: BTreeSet<String>,
    /// Whether the run excludes [`OUTSIDE_DB`] by its namespace filter, so views may
    /// be computed from there.
    pub outside_filter: bool,
    /// Whether views may be computed from [`OUTSIDE_DB`] into in-scope databases.
    pub outside_views: bool,
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
            (Feature::Pipeline, Kind::CappedList),
            (Feature::Views, Kind::View),
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
            sharded: BTreeSet::new(),
            pinned: BTreeSet::new(),
            outside_filter: false,
            outside_views: false,
        }
    }

    pub fn key(ns: &Namespace) -> String {
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
                    let spec = updates::index_spec(&mut self.rng);
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
                    updates::operators(&mut self.rng)
                } else {
                    updates::array_path(&mut self.rng)
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
                    let mut u = updates::operators(&mut self.rng);
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
                let u = updates::operators(&mut self.rng);
                write(
                    client,
                    &db,
                    doc! {"update": &coll, "updates": [{"q": {"_id": id}, "u": u}]},
                )
                .await
            }
            Kind::Transaction => {
                let new = self.new_document(&ns);
                let existing = self.pick_id(&ns);
                transaction(client, &ns, new, existing).await
            }
            Kind::PipelineUpdate => {
                let Some(id) = self.pick_id(&ns) else {
                    return Ok(());
                };
                let pipeline = updates::pipeline(&values::word(&mut self.rng));
                write(
                    client,
                    &db,
                    doc! {"update": &coll, "updates": [{"q": {"_id": id}, "u": pipeline}]},
                )
                .await
            }
            Kind::CappedList => {
                let Some(id) = self.pick_id(&ns) else {
                    return Ok(());
                };
                let keep = self.rng.gen_range(1..6);
                let pipeline = updates::capped_list(&values::word(&mut self.rng), keep);
                write(
                    client,
                    &db,
                    doc! {"update": &coll, "updates": [{"q": {"_id": id}, "u": pipeline}]},
                )
                .await
            }
            Kind::View => self.refresh_view(client, &ns).await,
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
}

/// A multi-document transaction (feature `txn`): inserts `new` and increments the
/// counter of `existing`, then commits.
pub async fn transaction(
    client: &Client,
    ns: &Namespace,
    new: Document,
    existing: Option<Bson>,
) -> Result<(), String> {
    let mut session = client.start_session().await.map_err(|e| e.to_string())?;
    session
        .start_transaction()
        .await
        .map_err(|e| e.to_string())?;
    let coll = client.database(&ns.db).collection::<Document>(&ns.coll);
    let body = async {
        coll.insert_one(new).session(&mut session).await?;
        if let Some(id) = existing {
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
