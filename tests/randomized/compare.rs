//! The suite's own comparison, independent of Ferry's verifier: every database,
//! collection (type and options), index definition and document of the source against
//! the destination, documents keyed by the raw bytes of their `_id` (type included) and
//! compared as raw BSON bytes (field order and numeric types count).

use std::collections::BTreeMap;
use std::fmt::Write;

use bson::{doc, Document, RawDocumentBuf};
use futures_util::TryStreamExt;
use mongodb::Client;

use super::common;

/// How many differing documents a failure report shows.
const SHOW: usize = 8;
/// How many characters of a document a failure report shows.
const TRUNCATE: usize = 400;

pub async fn index_specs(
    client: &Client,
    db: &str,
    coll: &str,
) -> mongodb::error::Result<Vec<Document>> {
    client
        .database(db)
        .run_cursor_command(doc! {"listIndexes": coll})
        .await?
        .try_collect()
        .await
}

/// `_id` element bytes (type byte + value) -> raw document bytes.
pub async fn documents(client: &Client, db: &str, coll: &str) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let c = client.database(db).collection::<RawDocumentBuf>(coll);
    let docs: Vec<RawDocumentBuf> = c
        .find(doc! {})
        .await
        .expect("find every document")
        .try_collect()
        .await
        .unwrap_or_default();
    let mut out = BTreeMap::new();
    for d in docs {
        let key = id_key(&d);
        let previous = out.insert(key, d.into_bytes());
        assert!(previous.is_none(), "{db}.{coll}: one _id returned twice");
    }
    out
}

/// The `_id` element as stored: its BSON type byte then its value bytes.
fn id_key(d: &RawDocumentBuf) -> Vec<u8> {
    match d.get("_id") {
        Ok(Some(v)) => {
            let mut key = vec![v.element_type() as u8];
            let value = bson::Bson::try_from(v)
                .map(|b| bson::to_vec(&doc! {"": b}).unwrap_or_default())
                .unwrap_or_default();
            key.extend_from_slice(&value);
            key
        }
        _ => Vec::new(),
    }
}

fn show(bytes: Option<&Vec<u8>>) -> String {
    let Some(bytes) = bytes else {
        return "(missing)".into();
    };
    let text = RawDocumentBuf::from_bytes(bytes.clone())
        .ok()
        .and_then(|r| r.to_document().ok())
        .map(|d| format!("{d}"))
        .unwrap_or_else(|| "(unreadable)".into());
    let mut t: String = text.chars().take(TRUNCATE).collect();
    if t.len() < text.len() {
        write!(t, "… ({} bytes)", bytes.len()).ok();
    }
    t
}

/// The first top-level field (in source order) whose value or position differs, for
/// documents too long to show whole.
fn first_difference(a: Option<&Vec<u8>>, b: Option<&Vec<u8>>) -> String {
    let decode = |bytes: Option<&Vec<u8>>| bytes.and_then(|b| bson::from_slice::<Document>(b).ok());
    let (Some(a), Some(b)) = (decode(a), decode(b)) else {
        return String::new();
    };
    let (ak, bk): (Vec<&String>, Vec<&String>) = (a.keys().collect(), b.keys().collect());
    for (i, key) in ak.iter().enumerate() {
        if bk.get(i) != Some(key) || a.get(*key) != b.get(*key) {
            let cut = |v: Option<&bson::Bson>| -> String {
                v.map(|v| format!("{v}").chars().take(TRUNCATE).collect())
                    .unwrap_or_else(|| "(missing)".into())
            };
            return format!(
                "\n  first difference at field {key:?} (#{i}): source {} / destination {} (destination field #{i}: {:?})",
                cut(a.get(*key)),
                cut(b.get(*key)),
                bk.get(i)
            );
        }
    }
    format!(
        "\n  the destination has extra fields: {:?}",
        &bk[ak.len().min(bk.len())..]
    )
}

fn show_id(key: &[u8]) -> String {
    match key.split_first() {
        Some((kind, rest)) => {
            let value = bson::from_slice::<Document>(rest)
                .ok()
                .and_then(|d| d.get("").cloned())
                .map(|b| format!("{b:?}"))
                .unwrap_or_else(|| "?".into());
            format!("{value} (type 0x{kind:02x})")
        }
        None => "(no _id)".into(),
    }
}

/// What the comparison leaves out, each for a stated reason.
#[derive(Clone, Debug, Default)]
pub struct Scope {
    /// Databases outside the run's namespace filter (on the source only).
    pub skip_dbs: Vec<String>,
    /// ("db.coll", key): the supporting index of a `[sharding]` entry's key that Ferry
    /// created on the destination (`create_supporting_indexes = true`) where the source
    /// has none; any other index difference counts.
    pub supporting_indexes: Vec<(String, Document)>,
}

/// Compares both sides; returns the differences (empty when equal) and the number of
/// documents compared.
pub async fn differences(src: &Client, dst: &Client, scope: &Scope) -> (Vec<String>, usize) {
    let mut diffs = Vec::new();
    let mut compared = 0;
    let mut dbs = common::user_databases(src).await;
    dbs.retain(|db| !scope.skip_dbs.contains(db));
    let dst_dbs = common::user_databases(dst).await;
    if dbs != dst_dbs {
        diffs.push(format!(
            "databases differ: source {dbs:?}, destination {dst_dbs:?}"
        ));
    }
    for db in &dbs {
        if !dst_dbs.contains(db) {
            continue;
        }
        let s = common::collections(src, db).await;
        let d = common::collections(dst, db).await;
        if s.keys().ne(d.keys()) {
            diffs.push(format!(
                "{db}: collections differ: source {:?}, destination {:?}",
                s.keys().collect::<Vec<_>>(),
                d.keys().collect::<Vec<_>>()
            ));
        }
        for (name, (kind, options)) in &s {
            let Some((dkind, doptions)) = d.get(name) else {
                continue;
            };
            let ns = format!("{db}.{name}");
            if (kind, options) != (dkind, doptions) {
                diffs.push(format!(
                    "{ns}: type/options differ: source {kind} {options}, destination {dkind} {doptions}"
                ));
            }
            if kind != "collection" {
                continue;
            }
            let si = common::indexes(src, db, name).await;
            let mut di = common::indexes(dst, db, name).await;
            di.retain(|index, (key, _)| {
                si.contains_key(index)
                    || !scope.supporting_indexes.iter().any(|(n, k)| {
                        *n == ns
                            && k.iter()
                                .map(|(f, v)| (f.clone(), v.clone()))
                                .eq(key.iter().cloned())
                    })
            });
            if si != di {
                diffs.push(format!(
                    "{ns}: indexes differ:\n  source      {si:?}\n  destination {di:?}"
                ));
            }
            let sd = documents(src, db, name).await;
            let dd = documents(dst, db, name).await;
            compared += sd.len();
            let mut shown = 0;
            let mut differing = 0;
            for key in sd.keys().chain(dd.keys().filter(|k| !sd.contains_key(*k))) {
                let (a, b) = (sd.get(key), dd.get(key));
                if a == b {
                    continue;
                }
                differing += 1;
                if shown < SHOW {
                    shown += 1;
                    diffs.push(format!(
                        "{ns}: _id {}\n  source      {}\n  destination {}{}",
                        show_id(key),
                        show(a),
                        show(b),
                        first_difference(a, b)
                    ));
                }
            }
            if differing > shown {
                diffs.push(format!(
                    "{ns}: {} more differing documents (source {}, destination {})",
                    differing - shown,
                    sd.len(),
                    dd.len()
                ));
            }
        }
    }
    (diffs, compared)
}
