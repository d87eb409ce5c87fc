//! The topology dimension (feature `topologies`): the source and the destination are
//! each a replica set or a two-shard sandbox cluster. On a sharded source, the seeded
//! collections are sharded on `_id` (hashed or ranged), split and one chunk moved to the
//! other shard before the run starts; on a sharded destination, unsharded source
//! collections may get a `[sharding]` entry. Faults land on the node that plays the
//! part: a stepdown of "the source" steps down one shard's primary, dropped connections
//! and latency hit the router Ferry talks to.

use std::fmt::Write;

use bson::{doc, Bson, Document};
use ferry_sandbox::Sandbox;
use mongodb::Client;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::common::sharded::Deployment;
use super::requests::command;
use super::workload::{Namespace, Workload};

/// Shards of a sharded side.
const SHARDS: usize = 2;

/// Each side's shape: 0 shards is a replica set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Topology {
    pub source_shards: usize,
    pub destination_shards: usize,
}

impl Topology {
    pub const REPLICA_SETS: Topology = Topology {
        source_shards: 0,
        destination_shards: 0,
    };

    /// Drawn from its own generator, so that switching the dimension on does not change
    /// the rest of a seed's plan.
    pub fn draw(seed: u64) -> Topology {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x7090_1065);
        let side = |rng: &mut StdRng| if rng.gen_bool(0.5) { SHARDS } else { 0 };
        Topology {
            source_shards: side(&mut rng),
            destination_shards: side(&mut rng),
        }
    }

    pub fn sharded_source(&self) -> bool {
        self.source_shards > 0
    }

    pub fn sharded_destination(&self) -> bool {
        self.destination_shards > 0
    }
}

/// A `[sharding]` entry the config carries, and whether the destination index it needs
/// is one the source lacks (a hashed key: Ferry creates it, the comparison allows it).
#[derive(Clone, Debug)]
pub struct Entry {
    pub ns: Namespace,
    pub hashed: bool,
}

impl Entry {
    pub fn key(&self) -> Document {
        if self.hashed {
            doc! {"_id": "hashed"}
        } else {
            doc! {"_id": 1}
        }
    }
}

/// `[sharding]` with `entries` inline, or nothing.
pub fn sharding_config(entries: &[Entry]) -> String {
    if entries.is_empty() {
        return String::new();
    }
    let mut out = String::from("[sharding]\ncreate_supporting_indexes = true\n");
    for e in entries {
        let key = if e.hashed { "\"hashed\"" } else { "1" };
        let _ = write!(
            out,
            "[[sharding.entries]]\ndatabase = \"{}\"\ncollection = \"{}\"\nkey = [{{_id = {key}}}]\n",
            e.ns.db, e.ns.coll
        );
    }
    out
}

/// The node a stepdown of this side lands on: the replica set's primary, or one shard's
/// primary.
pub fn stepdown_node<'a>(side: &'a Deployment, rng: &mut StdRng) -> &'a Sandbox {
    match side {
        Deployment::ReplicaSet(s) => s,
        Deployment::Sharded(c) => {
            let shards: Vec<&Sandbox> = c.shards().map(|(_, s)| s).collect();
            shards.choose(rng).copied().unwrap_or_else(|| c.router())
        }
    }
}

/// The node clients talk to: the replica set's primary, or the router.
pub fn front(side: &Deployment) -> &Sandbox {
    match side {
        Deployment::ReplicaSet(s) => s,
        Deployment::Sharded(c) => c.router(),
    }
}

async fn admin(router: &Client, cmd: Document) {
    if let Err(e) = command(router, "admin", cmd.clone()).await {
        panic!("setting up the sharded source: {cmd} failed: {e}");
    }
}

/// The shard that is not `db`'s primary.
async fn other_shard(router: &Client, db: &str) -> String {
    let primary = router
        .database("config")
        .collection::<Document>("databases")
        .find_one(doc! {"_id": db})
        .await
        .ok()
        .flatten()
        .and_then(|d| d.get_str("primary").ok().map(String::from))
        .unwrap_or_else(|| panic!("{db} has no primary shard in config.databases"));
    if primary == "shard0" {
        "shard1".into()
    } else {
        "shard0".into()
    }
}

/// Shard keys a sharded source's collection is drawn with, and their index names: on
/// `_id` (hashed, ranged), on a field every document has (`g`, ranged, alone or with
/// `_id`), and on one the workload renames away (`s`, hashed: documents then lack it and
/// the server reads it as null).
const SOURCE_KEYS: [(&str, &str); 5] = [
    ("_id", "hashed"),
    ("_id", "1"),
    ("g", "1"),
    ("g,_id", "1,1"),
    ("s", "hashed"),
];

/// The key document and its index name of [`SOURCE_KEYS`] entry `i`.
fn source_key(i: usize) -> (Document, String) {
    let (fields, kinds) = SOURCE_KEYS[i];
    let mut key = Document::new();
    let mut name = Vec::new();
    for (field, kind) in fields.split(',').zip(kinds.split(',')) {
        name.push(format!("{field}_{kind}"));
        if kind == "hashed" {
            key.insert(field, "hashed");
        } else {
            key.insert(field, 1);
        }
    }
    (key, name.join("_"))
}

/// Shards some of the seeded collections of a sharded source (on `_id` hashed or
/// ranged, or on other fields: [`SOURCE_KEYS`]), splits each at the chunk of one
/// document and moves that chunk to the other shard, so both shards hold documents of
/// it. Returns what it did, for the log.
pub async fn shard_source(router: &Client, load: &mut Workload, rng: &mut StdRng) -> Vec<String> {
    let mut done = Vec::new();
    for ns in load.namespaces.clone() {
        if !rng.gen_bool(0.6) {
            continue;
        }
        let full = Workload::key(&ns);
        // `_id` keys most often (one hashed, one ranged), another key two times in five.
        let drawn = if rng.gen_bool(0.5) { 0 } else { 1 };
        let drawn = if rng.gen_bool(0.4) {
            rng.gen_range(2..SOURCE_KEYS.len())
        } else {
            drawn
        };
        let (key, index) = source_key(drawn);
        admin(router, doc! {"enableSharding": &ns.db}).await;
        if drawn != 1 {
            let spec = doc! {"key": key.clone(), "name": &index};
            command(
                router,
                &ns.db,
                doc! {"createIndexes": &ns.coll, "indexes": [spec]},
            )
            .await
            .unwrap_or_else(|e| panic!("{full}: index {index}: {e}"));
        }
        admin(router, doc! {"shardCollection": &full, "key": key.clone()}).await;
        let one = router
            .database(&ns.db)
            .collection::<Document>(&ns.coll)
            .find_one(doc! {})
            .await
            .ok()
            .flatten();
        if let Some(one) = one {
            let mut at = Document::new();
            for field in key.keys() {
                at.insert(field, one.get(field).cloned().unwrap_or(Bson::Null));
            }
            admin(router, doc! {"split": &full, "find": at.clone()}).await;
            let to = other_shard(router, &ns.db).await;
            admin(
                router,
                doc! {"moveChunk": &full, "find": at, "to": &to, "_waitForDelete": true},
            )
            .await;
        }
        load.sharded.insert(full.clone());
        done.push(format!("{full} {key}"));
    }
    done
}

/// Draws `[sharding]` entries for a sharded destination: some of the source's unsharded
/// collections, on `_id` ranged or hashed. They are pinned (DDL keeps their names).
pub fn draw_entries(load: &mut Workload, rng: &mut StdRng) -> Vec<Entry> {
    let mut entries = Vec::new();
    for ns in load.namespaces.clone() {
        let full = Workload::key(&ns);
        if load.sharded.contains(&full) || !rng.gen_bool(0.5) {
            continue;
        }
        load.pinned.insert(full);
        entries.push(Entry {
            ns,
            hashed: rng.gen_bool(0.5),
        });
    }
    entries
}
