//! The one list of namespaces a migration covers. The copier, the verifier, the baseline,
//! the index finalizer, `clear_destination` and the preflight all ask this function, so
//! they cannot disagree about what is in scope (system collections are never in it; the
//! filter decides the rest).

use bson::{Bson, Document};

use super::{Cluster, ClusterError};
use crate::config::NamespaceFilter;

/// What `listCollections` says a namespace is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NamespaceKind {
    Collection,
    View,
    TimeSeries,
}

/// One namespace in scope, with its `listCollections` entry.
#[derive(Clone, Debug)]
pub struct Namespace {
    pub db: String,
    pub coll: String,
    pub kind: NamespaceKind,
    /// The entry's `options` (validator, collation, capped, view pipeline, ...).
    pub options: Document,
    /// The collection's UUID (`info.uuid`); views have none.
    pub uuid: Option<bson::Binary>,
}

impl Namespace {
    /// `db.coll`.
    pub fn full_name(&self) -> String {
        format!("{}.{}", self.db, self.coll)
    }

    pub fn is_collection(&self) -> bool {
        self.kind == NamespaceKind::Collection
    }
}

/// Whether a collection is the server's own (`system.*`): never migrated as data.
pub fn is_system_collection(name: &str) -> bool {
    name.starts_with("system.")
}

/// Whether a collection name is a temporary collection the server fills and then renames
/// onto its target: during a rename between databases (`tmp` + five letters or digits +
/// `.renameCollection`), or for an aggregation's `$out` (`tmp.agg_out.<uuid>`).
pub fn is_rename_staging(coll: &str) -> bool {
    coll.starts_with("tmp.agg_out.")
        || coll
            .strip_prefix("tmp")
            .and_then(|rest| rest.strip_suffix(".renameCollection"))
            .is_some_and(|middle| {
                middle.len() == 5 && middle.bytes().all(|b| b.is_ascii_alphanumeric())
            })
}

/// Every namespace of `cluster` the filter lets in, sorted by database then name:
/// collections, views and time-series collections (callers decide what each kind means
/// to them); the server's own databases and `system.*` collections are never listed.
pub async fn in_scope(
    cluster: &Cluster,
    filter: &NamespaceFilter,
) -> Result<Vec<Namespace>, ClusterError> {
    let mut out = Vec::new();
    for db in cluster.database_names(filter).await? {
        let mut specs = cluster.collection_specs(&db).await?;
        specs.sort_by(|a, b| a.get_str("name").ok().cmp(&b.get_str("name").ok()));
        for spec in specs {
            let Ok(name) = spec.get_str("name") else {
                continue;
            };
            if is_system_collection(name) || !filter.allows(&db, name) {
                continue;
            }
            let kind = match spec.get_str("type").unwrap_or("collection") {
                "view" => NamespaceKind::View,
                "timeseries" => NamespaceKind::TimeSeries,
                _ => NamespaceKind::Collection,
            };
            let uuid = match spec.get_document("info").map(|i| i.get("uuid")) {
                Ok(Some(Bson::Binary(b))) => Some(b.clone()),
                _ => None,
            };
            out.push(Namespace {
                db: db.clone(),
                coll: name.to_string(),
                kind,
                options: spec.get_document("options").cloned().unwrap_or_default(),
                uuid,
            });
        }
    }
    Ok(out)
}
