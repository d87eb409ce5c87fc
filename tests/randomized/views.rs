//! Materialized-view refreshes the workload runs (feature `views`): an `aggregate`
//! ending with `$out` (the 6.0/7.0 server fills a `tmp.agg_out.<uuid>` collection and
//! renames it over the target) or with `$merge` (documents inserted, replaced, merged or
//! kept one by one), from an in-scope collection, or from a collection outside the
//! run's namespace filter into an in-scope target.

use bson::{doc, Document};
use mongodb::Client;
use rand::Rng;

use super::super::requests::command;
use super::super::updates;
use super::{Namespace, Workload};

/// How many view collections each database gets (few: a refresh replaces a view that
/// earlier refreshes wrote, which is the interesting case).
const VIEWS_PER_DB: usize = 2;

/// The database outside the run's namespace filter (`[filter] exclude_namespaces`).
pub const OUTSIDE_DB: &str = "staging";
/// Its collection, which views may be computed from.
pub const OUTSIDE_COLL: &str = "raw";

impl Workload {
    /// One refresh: `$out` or `$merge` into `mv<k>` of the source collection's database
    /// (or, from the collection outside the filter, of an in-scope database).
    pub(super) async fn refresh_view(
        &mut self,
        client: &Client,
        ns: &Namespace,
    ) -> Result<(), String> {
        let outside = self.outside_views && self.rng.gen_ratio(1, 4);
        let (from, into_db) = if outside {
            let from = Namespace {
                db: OUTSIDE_DB.into(),
                coll: OUTSIDE_COLL.into(),
            };
            (from, ns.db.clone())
        } else {
            // The sandbox router runs `$out`/`$merge` from unsharded collections only
            // (as the workload does: it sources views from unsharded collections).
            if self.sharded.contains(&Self::key(ns)) {
                return Ok(());
            }
            (ns.clone(), ns.db.clone())
        };
        let target = format!("mv{}", self.rng.gen_range(0..VIEWS_PER_DB));
        let mut pipeline = updates::view_pipeline(&mut self.rng);
        let stage = if self.rng.gen_bool(0.5) {
            doc! {"$out": {"db": &into_db, "coll": &target}}
        } else {
            let mut stage = updates::merge_stage(&mut self.rng, &target);
            if from.db != into_db {
                if let Ok(spec) = stage.get_document_mut("$merge") {
                    spec.insert("into", doc! {"db": &into_db, "coll": &target});
                }
            }
            stage
        };
        pipeline.push(stage);
        let cmd: Document = doc! {"aggregate": &from.coll, "pipeline": pipeline, "cursor": {}};
        command(client, &from.db, cmd)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Fills the collection outside the filter that views may read (only when the run
    /// has a filter: `outside_filter`).
    pub async fn seed_outside(&mut self, client: &Client, docs: usize) {
        if !self.outside_filter {
            return;
        }
        let ns = Namespace {
            db: OUTSIDE_DB.into(),
            coll: OUTSIDE_COLL.into(),
        };
        let batch: Vec<Document> = (0..docs).map(|_| self.new_document(&ns)).collect();
        if let Err(e) = command(
            client,
            OUTSIDE_DB,
            doc! {"insert": OUTSIDE_COLL, "documents": batch},
        )
        .await
        {
            panic!("seeding {OUTSIDE_DB}.{OUTSIDE_COLL} failed: {e}");
        }
    }
}
