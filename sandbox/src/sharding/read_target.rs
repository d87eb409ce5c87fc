//! Targeting of reads through the router, as a mongos targets them: which shards a read
//! of a sharded collection must ask, from its filter and the chunk map, and which of a
//! shard's documents it has to look at.
//!
//! - An equality (or `$in`) on every shard key field pins down keys: only the shards
//!   owning those keys are asked (a hashed field is hashed first).
//! - A range (or equality) on the first field of a ranged shard key asks only the shards
//!   owning a chunk that overlaps it.
//! - Anything else asks every shard owning a chunk of the collection.
//!
//! On each shard asked, an `_id` equality or `$in` is answered by lookups in the `_id`
//! index, an `_id` range by a range of it, and every other filter by a scan that keeps
//! only matching documents: the router never copies a whole collection to answer a
//! query.

use std::cmp::Ordering;
use std::collections::BTreeSet;
use std::ops::Bound;
use std::sync::Arc;

use bson::{Bson, Document};

use crate::query::matcher::{is_operator_doc, Matcher};
use crate::query::order::{compare, OrdBson};
use crate::storage::Collection;

use super::catalog::{owning_shard, Chunk};
use super::shard_key::{hash_value, ShardKey};

/// The most keys an `$in` (or a product of them on a compound key) is turned into for
/// targeting; beyond that the read asks every owning shard, as a mongos gives up
/// targeting very large `$in` lists.
const MAX_TARGET_KEYS: usize = 10_000;

/// The filter a read command applies to the collection's documents before anything
/// else: `filter` of `find`, `query` of `count` and `distinct`, and the first `$match`
/// of an `aggregate` pipeline. An empty filter when there is none.
pub fn read_filter(cmd: &Document, name: &str) -> Document {
    let field = match name {
        "find" => "filter",
        "count" | "distinct" => "query",
        "aggregate" => {
            return cmd
                .get_array("pipeline")
                .ok()
                .and_then(|p| p.first())
                .and_then(Bson::as_document)
                .and_then(|s| s.get_document("$match").ok())
                .cloned()
                .unwrap_or_default();
        }
        _ => return Document::new(),
    };
    cmd.get_document(field).cloned().unwrap_or_default()
}

/// The shards a read with `filter` must ask: a subset of the shards owning `chunks`.
pub fn target_shards(key: &ShardKey, chunks: &[Chunk], filter: &Document) -> BTreeSet<String> {
    if let Some(keys) = point_keys(key, filter) {
        return keys
            .iter()
            .filter_map(|k| owning_shard(chunks, k))
            .collect();
    }
    if let Some(first) = key.fields.first().filter(|f| !f.hashed) {
        let (lo, hi) = interval(filter, &first.path);
        return chunks
            .iter()
            .filter(|c| {
                let min = c.min.get(&first.path).unwrap_or(&Bson::MinKey);
                let max = c.max.get(&first.path).unwrap_or(&Bson::MaxKey);
                // Inclusive on both sides: a compound key's chunk may end at `hi` in its
                // first field and still hold keys equal to it there.
                compare(min, &hi) != Ordering::Greater && compare(max, &lo) != Ordering::Less
            })
            .map(|c| c.shard.clone())
            .collect();
    }
    chunks.iter().map(|c| c.shard.clone()).collect()
}

/// The full shard keys a filter pins down by equality or `$in` on every key field, or
/// None when it does not pin them (or pins too many).
fn point_keys(key: &ShardKey, filter: &Document) -> Option<Vec<Document>> {
    let mut keys = vec![Document::new()];
    for field in &key.fields {
        let values = point_values(filter, &field.path)?;
        if keys.len() * values.len() > MAX_TARGET_KEYS {
            return None;
        }
        keys = keys
            .into_iter()
            .flat_map(|k| {
                values.iter().map(move |v| {
                    let mut k = k.clone();
                    let v = if field.hashed {
                        Bson::Int64(hash_value(v))
                    } else {
                        v.clone()
                    };
                    k.insert(field.path.clone(), v);
                    k
                })
            })
            .collect();
    }
    Some(keys)
}

/// The values a filter restricts `path` to: `{p: v}`, `{p: {$eq: v}}`, `{p: {$in: [...]}}`
/// (other operators beside `$eq`/`$in` only narrow the match further), also inside a
/// top-level `$and`. None when the filter does not restrict `path` to a list of plain
/// values (a regular expression or an array matches in other ways).
fn point_values(filter: &Document, path: &str) -> Option<Vec<Bson>> {
    let plain = |v: &Bson| !matches!(v, Bson::RegularExpression(_) | Bson::Array(_));
    if let Some(value) = filter.get(path) {
        let values = match value {
            Bson::Document(ops) if is_operator_doc(value) => {
                if let Some(v) = ops.get("$eq") {
                    vec![v.clone()]
                } else if let Ok(list) = ops.get_array("$in") {
                    list.clone()
                } else {
                    return and_values(filter, path);
                }
            }
            v => vec![v.clone()],
        };
        if values.iter().all(plain) {
            return Some(values);
        }
        return and_values(filter, path);
    }
    and_values(filter, path)
}

fn and_values(filter: &Document, path: &str) -> Option<Vec<Bson>> {
    filter
        .get_array("$and")
        .ok()?
        .iter()
        .filter_map(Bson::as_document)
        .find_map(|c| point_values(c, path))
}

/// The closed interval of values a filter allows at `path`, from equality, `$in` and
/// `$gt`/`$gte`/`$lt`/`$lte` (strictness is ignored: the interval only has to contain
/// every match). `[MinKey, MaxKey]` when the filter does not bound `path`.
fn interval(filter: &Document, path: &str) -> (Bson, Bson) {
    let mut lo = Bson::MinKey;
    let mut hi = Bson::MaxKey;
    let mut narrow = |l: &Bson, h: &Bson| {
        if compare(l, &lo) == Ordering::Greater {
            lo = l.clone();
        }
        if compare(h, &hi) == Ordering::Less {
            hi = h.clone();
        }
    };
    if let Some(values) = point_values(filter, path) {
        let min = values.iter().min_by(|a, b| compare(a, b));
        let max = values.iter().max_by(|a, b| compare(a, b));
        match (min, max) {
            (Some(min), Some(max)) => narrow(min, max),
            // `$in: []` matches nothing: an empty interval.
            _ => narrow(&Bson::MaxKey, &Bson::MinKey),
        }
    }
    let mut clauses = vec![filter];
    if let Ok(and) = filter.get_array("$and") {
        clauses.extend(and.iter().filter_map(Bson::as_document));
    }
    for clause in clauses {
        let Some(Bson::Document(ops)) = clause.get(path) else {
            continue;
        };
        for (op, v) in ops {
            if matches!(v, Bson::RegularExpression(_) | Bson::Array(_)) {
                continue;
            }
            match op.as_str() {
                "$gt" | "$gte" => narrow(v, &Bson::MaxKey),
                "$lt" | "$lte" => narrow(&Bson::MinKey, v),
                _ => {}
            }
        }
    }
    (lo, hi)
}

/// The documents of one shard's collection a read with `matcher` has to look at, with
/// their `_id`s: found by `_id` lookups or an `_id` range when the filter allows it, and
/// only those the filter matches. Without a matcher (a filter the router cannot
/// evaluate on its own), every document.
pub fn matching_documents<'a>(
    c: &'a Collection,
    filter: &Document,
    matcher: Option<&Matcher>,
    id_min_max: &(Option<Bson>, Option<Bson>),
) -> Vec<(&'a OrdBson, &'a Arc<Document>)> {
    let Some(matcher) = matcher else {
        let (lo, hi) = id_min_max.clone();
        return id_range(c, lo, hi).collect();
    };
    if let Some(ids) = matcher.id_set() {
        let keys: BTreeSet<OrdBson> = ids.iter().map(|id| OrdBson(id.clone())).collect();
        return keys
            .iter()
            .filter_map(|k| c.docs.get_key_value(k))
            .filter(|(_, d)| matcher.matches(d))
            .collect();
    }
    let (mut lo, mut hi) = id_bounds(filter);
    if let Some(min) = &id_min_max.0 {
        if lo
            .as_ref()
            .is_none_or(|l| compare(min, l) == Ordering::Greater)
        {
            lo = Some(min.clone());
        }
    }
    if let Some(max) = &id_min_max.1 {
        if hi
            .as_ref()
            .is_none_or(|h| compare(max, h) == Ordering::Less)
        {
            hi = Some(max.clone());
        }
    }
    id_range(c, lo, hi)
        .filter(|(_, d)| matcher.matches(d))
        .collect()
}

/// The documents whose `_id` lies in `[lo, hi]` (both inclusive; None is unbounded).
fn id_range(
    c: &Collection,
    lo: Option<Bson>,
    hi: Option<Bson>,
) -> Box<dyn Iterator<Item = (&OrdBson, &Arc<Document>)> + '_> {
    if lo.is_some() || hi.is_some() {
        let lo = lo.map_or(Bound::Unbounded, |v| Bound::Included(OrdBson(v)));
        let hi = hi.map_or(Bound::Unbounded, |v| Bound::Included(OrdBson(v)));
        if let (Bound::Included(a), Bound::Included(b)) = (&lo, &hi) {
            if a > b {
                return Box::new(std::iter::empty());
            }
        }
        return Box::new(c.docs.range((lo, hi)));
    }
    Box::new(c.docs.iter())
}

/// The `_id` bounds a `find` gives as `min`/`max` with a `hint` of the `_id` index
/// (`min` inclusive, `max` exclusive; returned as a closed range the handler narrows).
pub fn id_min_max(cmd: &Document, name: &str) -> (Option<Bson>, Option<Bson>) {
    let on_id = match cmd.get("hint") {
        Some(Bson::Document(h)) => h.len() == 1 && h.contains_key("_id"),
        Some(Bson::String(n)) => n == "_id_",
        _ => false,
    };
    if name != "find" || !on_id {
        return (None, None);
    }
    let bound = |which: &str| {
        cmd.get_document(which)
            .ok()
            .filter(|d| d.len() == 1)
            .and_then(|d| d.get("_id"))
            .cloned()
    };
    (bound("min"), bound("max"))
}

/// Bounds on `_id` from `$gt`/`$gte`/`$lt`/`$lte` at the top level of the filter (or in
/// a top-level `$and`), both inclusive (the matcher applies strictness).
fn id_bounds(filter: &Document) -> (Option<Bson>, Option<Bson>) {
    let (lo, hi) = interval(filter, "_id");
    let lo = (!matches!(lo, Bson::MinKey)).then_some(lo);
    let hi = (!matches!(hi, Bson::MaxKey)).then_some(hi);
    (lo, hi)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    fn chunk(min: Bson, max: Bson, shard: &str) -> Chunk {
        Chunk {
            id: Bson::Null,
            min: doc! {"k": min},
            max: doc! {"k": max},
            shard: shard.into(),
        }
    }

    fn split_at_100() -> Vec<Chunk> {
        vec![
            chunk(Bson::MinKey, Bson::Int32(100), "shard0"),
            chunk(Bson::Int32(100), Bson::MaxKey, "shard1"),
        ]
    }

    fn targets(filter: Document) -> Vec<String> {
        let key = ShardKey::parse(&doc! {"k": 1}).unwrap();
        target_shards(&key, &split_at_100(), &filter)
            .into_iter()
            .collect()
    }

    #[test]
    fn equality_and_in_on_the_key_target_the_owning_shards() {
        assert_eq!(targets(doc! {"k": 5}), ["shard0"]);
        assert_eq!(targets(doc! {"k": {"$eq": 150}}), ["shard1"]);
        assert_eq!(targets(doc! {"k": {"$in": [1, 2]}}), ["shard0"]);
        assert_eq!(targets(doc! {"k": {"$in": [1, 200]}}), ["shard0", "shard1"]);
        assert_eq!(targets(doc! {"$and": [{"x": 1}, {"k": 120}]}), ["shard1"]);
    }

    #[test]
    fn ranges_target_overlapping_chunks_and_other_filters_broadcast() {
        assert_eq!(targets(doc! {"k": {"$gte": 120, "$lt": 130}}), ["shard1"]);
        assert_eq!(targets(doc! {"k": {"$lt": 50}}), ["shard0"]);
        assert_eq!(targets(doc! {"k": {"$gt": 50}}), ["shard0", "shard1"]);
        assert_eq!(targets(doc! {"x": 1}), ["shard0", "shard1"]);
        assert_eq!(targets(doc! {"k": {"$regex": "a"}}), ["shard0", "shard1"]);
        assert!(targets(doc! {"k": {"$in": []}}).is_empty());
    }

    #[test]
    fn a_hashed_key_is_targeted_by_the_hash_of_the_value() {
        let key = ShardKey::parse(&doc! {"_id": "hashed"}).unwrap();
        let h = hash_value(&Bson::Int32(7));
        let chunks = vec![
            Chunk {
                id: Bson::Null,
                min: doc! {"_id": Bson::MinKey},
                max: doc! {"_id": h},
                shard: "shard0".into(),
            },
            Chunk {
                id: Bson::Null,
                min: doc! {"_id": h},
                max: doc! {"_id": Bson::MaxKey},
                shard: "shard1".into(),
            },
        ];
        let t: Vec<String> = target_shards(&key, &chunks, &doc! {"_id": 7})
            .into_iter()
            .collect();
        assert_eq!(t, ["shard1"]);
        let all = target_shards(&key, &chunks, &doc! {"_id": {"$gt": 7}});
        assert_eq!(all.len(), 2, "a range on a hashed key asks every shard");
    }
}
