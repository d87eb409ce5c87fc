//! DDL the workload runs while Ferry migrates: create, drop, rename (within and across
//! databases), createIndexes, dropIndexes, collMod.

use std::time::{Duration, Instant};

use bson::{doc, Document};
use mongodb::Client;
use rand::seq::SliceRandom;
use rand::Rng;

use super::super::requests::{command, write};
use super::super::updates;
use super::{Kind, Namespace, Workload};

/// How long a rename waits for the destination to catch up on its collection.
const CATCH_UP: Duration = Duration::from_secs(10);

impl Workload {
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

    pub(super) async fn ddl(&mut self, client: &Client, ns: &Namespace) -> Result<(), String> {
        let arm = self.rng.gen_range(0..7);
        self.ddl_arm(client, ns, arm).await
    }

    async fn ddl_arm(&mut self, client: &Client, ns: &Namespace, arm: u32) -> Result<(), String> {
        // A collection a `[sharding]` entry names keeps its name: index DDL instead.
        let arm = if matches!(arm, 1 | 2) && self.pinned.contains(&Self::key(ns)) {
            3
        } else {
            arm
        };
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
                let spec = updates::index_spec(&mut self.rng);
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

    /// Waits (up to [`CATCH_UP`]) until the destination holds exactly the source's
    /// documents of `ns`: an update Ferry re-reads from the source is lost when the
    /// collection is renamed before it is applied (see `rename_race`).
    async fn caught_up(&self, client: &Client, ns: &Namespace) -> bool {
        let Some(dst) = &self.destination else {
            return true;
        };
        let deadline = Instant::now() + CATCH_UP;
        while Instant::now() < deadline {
            let s = super::super::compare::documents(client, &ns.db, &ns.coll).await;
            if s == super::super::compare::documents(dst, &ns.db, &ns.coll).await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }
}

/// Non-`_id` index names of a collection.
async fn index_names(client: &Client, ns: &Namespace) -> Vec<String> {
    match super::super::compare::index_specs(client, &ns.db, &ns.coll).await {
        Ok(specs) => specs
            .into_iter()
            .filter_map(|s| s.get_str("name").ok().map(str::to_string))
            .filter(|n| n != "_id_")
            .collect(),
        Err(_) => Vec::new(),
    }
}
