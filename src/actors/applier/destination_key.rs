//! Writes to a collection sharded on the destination whose source events do not carry
//! its shard key (a replica-set source, or a collection unsharded on the source): their
//! `documentKey` is only `_id`.
//!
//! A router refuses an upsert whose filter lacks the shard key, so a replacement's filter
//! gets the key's fields from the replacement itself. The key may have changed since the
//! destination's copy was written (the source knows nothing of shard keys), so any copy
//! of the `_id` under another key is deleted first (a single delete by exact `_id` may
//! reach every shard), and only the last replacement of an `_id` in a batch is sent. An
//! update that sets or removes a shard key field is replaced by the source's document.

use bson::raw::{RawBsonRef, RawDocument};
use bson::{rawdoc, Document, RawBson, RawDocumentBuf};
use dashmap::DashMap;

use super::{replacement_of, ApplyError, Target};
use crate::cluster::sharding;
use crate::cluster::{Cluster, ClusterError};

/// The destination's shard key fields per namespace (`None`: not sharded), read once
/// per namespace from its `config.collections` and set when Ferry shards one.
#[derive(Debug, Default)]
pub struct DestinationKeys(DashMap<String, Option<Vec<String>>>);

impl DestinationKeys {
    /// Records that `ns` is sharded on `key` on the destination.
    pub fn set(&self, ns: &str, key: &Document) {
        self.0
            .insert(ns.to_string(), Some(key.keys().cloned().collect()));
    }

    /// The shard key fields of `ns` on the destination, if it is sharded there.
    async fn fields(
        &self,
        destination: &Cluster,
        ns: &str,
    ) -> Result<Option<Vec<String>>, ClusterError> {
        if let Some(known) = self.0.get(ns) {
            return Ok(known.clone());
        }
        let fields = sharding::sharded_collection(destination, ns)
            .await?
            .map(|c| c.key.keys().cloned().collect::<Vec<_>>());
        self.0.insert(ns.to_string(), fields.clone());
        Ok(fields)
    }
}

/// The value at a dotted path (`null` when missing, as the server reads a missing shard
/// key field).
fn value_at(doc: &RawDocument, path: &str) -> RawBson {
    let mut current = doc;
    let mut parts = path.split('.').peekable();
    while let Some(part) = parts.next() {
        match current.get(part) {
            Ok(Some(RawBsonRef::Document(d))) if parts.peek().is_some() => current = d,
            Ok(Some(v)) if parts.peek().is_none() => return v.to_raw_bson(),
            _ => return RawBson::Null,
        }
    }
    RawBson::Null
}

/// Whether `path` (an updated or removed field) reaches shard key field `field`.
fn reaches(path: &str, field: &str) -> bool {
    path == field
        || path
            .strip_prefix(field)
            .is_some_and(|rest| rest.starts_with('.'))
        || field
            .strip_prefix(path)
            .is_some_and(|rest| rest.starts_with('.'))
}

/// Whether an update (`{$set: .., $unset: ..}` or a pipeline of such stages) may change
/// a shard key field; anything not understood counts as yes.
fn touches_key(update: RawBsonRef<'_>, fields: &[String]) -> bool {
    let operators: Vec<&RawDocument> = match update {
        RawBsonRef::Document(d) => vec![d],
        RawBsonRef::Array(stages) => {
            let mut out = Vec::new();
            for stage in stages {
                match stage {
                    Ok(RawBsonRef::Document(d)) => out.push(d),
                    _ => return true,
                }
            }
            out
        }
        _ => return true,
    };
    for operator in operators {
        for entry in operator {
            let Ok((_, value)) = entry else {
                return true;
            };
            let paths: Vec<String> = match value {
                RawBsonRef::Document(d) => d.iter().flatten().map(|(k, _)| k.to_string()).collect(),
                RawBsonRef::Array(a) => a
                    .into_iter()
                    .flatten()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect(),
                RawBsonRef::String(s) => vec![s.to_string()],
                _ => return true,
            };
            if paths.iter().any(|p| fields.iter().any(|f| reaches(p, f))) {
                return true;
            }
        }
    }
    false
}

/// Replacements keyed for the destination, and the deletes of stale copies to send first.
struct Keyed {
    upserts: Vec<RawDocumentBuf>,
    stale: Vec<RawDocumentBuf>,
}

/// Adds the shard key (from each replacement) to filters that lack it.
fn key_replacements(statements: Vec<RawDocumentBuf>, fields: &[String]) -> Keyed {
    let lacks_key = |s: &RawDocumentBuf| {
        s.get_document("q")
            .map(|q| fields.iter().any(|f| !matches!(q.get(f), Ok(Some(_)))))
            .unwrap_or(false)
    };
    if !statements.iter().any(lacks_key) {
        return Keyed {
            upserts: statements,
            stale: Vec::new(),
        };
    }
    // The last replacement of each `_id` decides its document.
    let id_of = |s: &RawDocumentBuf| {
        s.get_document("q")
            .ok()
            .and_then(|q| q.get("_id").ok().flatten())
            .map(|id| id.to_raw_bson())
    };
    let mut last: Vec<RawDocumentBuf> = Vec::new();
    for statement in statements.into_iter().rev() {
        let id = id_of(&statement);
        if id.is_some() && last.iter().any(|s| id_of(s) == id) {
            continue;
        }
        last.push(statement);
    }
    last.reverse();
    let mut upserts = Vec::with_capacity(last.len());
    let mut stale = Vec::new();
    for statement in last {
        let (Some(id), Some(doc)) = (id_of(&statement), replacement_of(&statement)) else {
            upserts.push(statement);
            continue;
        };
        if !lacks_key(&statement) {
            upserts.push(statement);
            continue;
        }
        let mut filter = RawDocumentBuf::new();
        let mut key = RawDocumentBuf::new();
        for field in fields {
            let value = value_at(&doc, field);
            filter.append(field.as_str(), value.clone());
            key.append(field.as_str(), value);
        }
        if !fields.iter().any(|f| f == "_id") {
            filter.append("_id", id.clone());
        }
        let mut nor = bson::RawArrayBuf::new();
        nor.push(key);
        let mut not_this_key = RawDocumentBuf::new();
        not_this_key.append("_id", id);
        not_this_key.append("$nor", nor);
        stale.push(rawdoc! {"q": not_this_key, "limit": 1});
        let mut rebuilt = RawDocumentBuf::new();
        for (name, value) in statement.iter().flatten() {
            if name == "q" {
                rebuilt.append("q", filter.clone());
            } else {
                rebuilt.append(name, value.to_raw_bson());
            }
        }
        upserts.push(rebuilt);
    }
    Keyed { upserts, stale }
}

impl Target<'_> {
    /// The namespace's shard key fields on the destination, when events do not carry them.
    async fn destination_key(&self) -> Result<Option<Vec<String>>, ApplyError> {
        // A replica set has no shard keys (and its user may not read `config`).
        if !self.engine.destination_topology.is_sharded() {
            return Ok(None);
        }
        Ok(self
            .engine
            .destination_keys
            .fields(&self.engine.destination, self.ns)
            .await?)
    }

    /// Replacements ready for the destination: filters carrying its shard key, with any
    /// copy of their documents under another key deleted first.
    pub(super) async fn keyed_replacements(
        &self,
        statements: Vec<RawDocumentBuf>,
    ) -> Result<Vec<RawDocumentBuf>, ApplyError> {
        let Some(fields) = self.destination_key().await? else {
            return Ok(statements);
        };
        let keyed = key_replacements(statements, &fields);
        if !keyed.stale.is_empty() {
            let deletes: bson::RawArrayBuf = keyed.stale.into_iter().collect();
            let reply = self.write("delete", &deletes).await?;
            self.check("delete", &reply)?;
        }
        Ok(keyed.upserts)
    }

    /// Whether one of these update statements may move its document to another shard
    /// key on the destination (it is then replaced by the source's document instead).
    pub(super) async fn updates_move_key(
        &self,
        bodies: &[RawDocumentBuf],
    ) -> Result<bool, ApplyError> {
        let Some(fields) = self.destination_key().await? else {
            return Ok(false);
        };
        Ok(bodies.iter().any(|b| {
            let lacks_key = b
                .get_document("q")
                .map(|q| fields.iter().any(|f| !matches!(q.get(f), Ok(Some(_)))))
                .unwrap_or(false);
            lacks_key
                && b.get("u")
                    .ok()
                    .flatten()
                    .is_none_or(|u| touches_key(u, &fields))
        }))
    }
}

/// The `_id` of a filter, as BSON (for tests and logs).
#[cfg(test)]
fn filter_of(statement: &RawDocumentBuf) -> Document {
    statement
        .get_document("q")
        .ok()
        .and_then(|q| Document::try_from(q).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{doc, Bson};

    fn raw(d: Document) -> RawDocumentBuf {
        RawDocumentBuf::from_document(&d).expect("encodes")
    }

    #[test]
    fn replacements_get_the_key_and_delete_copies_under_another_key() {
        let fields = vec!["region".to_string(), "loc.city".to_string()];
        let statements = vec![
            raw(
                doc! {"q": {"_id": 1}, "u": {"_id": 1, "region": "eu", "loc": {"city": "x"}}, "upsert": true},
            ),
            raw(doc! {"q": {"_id": 2}, "u": {"_id": 2, "region": "us"}, "upsert": true}),
            raw(
                doc! {"q": {"_id": 1}, "u": {"_id": 1, "region": "us", "loc": {"city": "y"}}, "upsert": true},
            ),
        ];
        let keyed = key_replacements(statements, &fields);
        assert_eq!(
            keyed.upserts.len(),
            2,
            "only the last replacement of _id 1 is kept"
        );
        assert_eq!(
            filter_of(&keyed.upserts[0]),
            doc! {"region": "us", "loc.city": Bson::Null, "_id": 2}
        );
        assert_eq!(
            filter_of(&keyed.upserts[1]),
            doc! {"region": "us", "loc.city": "y", "_id": 1}
        );
        assert_eq!(
            filter_of(&keyed.stale[1]),
            doc! {"_id": 1, "$nor": [{"region": "us", "loc.city": "y"}]}
        );
    }

    #[test]
    fn updates_of_key_fields_are_recognised() {
        let fields = vec!["region".to_string()];
        let set = raw(doc! {"u": {"$set": {"region": "eu"}}});
        let nested = raw(doc! {"u": {"$unset": {"region.zone": true}}});
        let other = raw(doc! {"u": {"$set": {"name": "x"}, "$unset": {"regional": true}}});
        fn get(d: &RawDocumentBuf) -> RawBsonRef<'_> {
            d.get("u").ok().flatten().expect("u")
        }
        assert!(touches_key(get(&set), &fields));
        assert!(touches_key(get(&nested), &fields));
        assert!(!touches_key(get(&other), &fields));
    }
}
