//! Seeded update documents: every update operator kind, array index paths, and index
//! definitions, drawn from the seed's generator.

use bson::{doc, Bson, Document};
use rand::rngs::StdRng;
use rand::Rng;

use super::values;

/// One update document mixing one to three operator kinds on distinct fields.
pub fn operators(rng: &mut StdRng) -> Document {
    let mut u = Document::new();
    let mut used = std::collections::BTreeSet::new();
    for _ in 0..rng.gen_range(1..=3) {
        let (op, field, arg): (&str, &str, Bson) = match rng.gen_range(0..16) {
            0 => ("$set", "s", Bson::String(values::word(rng))),
            1 => ("$set", "sub.a", values::value(rng, 2)),
            2 => ("$unset", "sub.b", Bson::String(String::new())),
            3 => ("$inc", "cnt", number(rng)),
            4 => ("$mul", "cnt", number(rng)),
            5 => ("$min", "cnt", number(rng)),
            6 => ("$max", "cnt", number(rng)),
            7 => ("$rename", "s", Bson::String("s_renamed".into())),
            8 => {
                let each: Vec<Bson> = (0..rng.gen_range(0..5))
                    .map(|_| Bson::Int32(rng.gen_range(0..20)))
                    .collect();
                let mut spec = doc! {"$each": each};
                if rng.gen_bool(0.5) {
                    spec.insert("$slice", rng.gen_range(-6..6i32));
                }
                if rng.gen_bool(0.5) {
                    spec.insert("$position", rng.gen_range(0..4i32));
                }
                ("$push", "arr", Bson::Document(spec))
            }
            9 => (
                "$pull",
                "arr",
                Bson::Document(doc! {"$gte": rng.gen_range(0..20i32)}),
            ),
            10 => ("$pullAll", "arr", bson::bson!([1, 2, 3])),
            11 => (
                "$addToSet",
                "tags",
                Bson::Document(doc! {"$each": ["café", "new", values::word(rng)]}),
            ),
            12 => (
                "$pop",
                "arr",
                Bson::Int32(if rng.gen_bool(0.5) { 1 } else { -1 }),
            ),
            13 => (
                "$currentDate",
                "touched",
                if rng.gen_bool(0.5) {
                    Bson::Boolean(true)
                } else {
                    Bson::Document(doc! {"$type": "timestamp"})
                },
            ),
            14 => ("$bit", "bits", Bson::Document(doc! {"xor": 5})),
            _ => (
                "$set",
                "new_field",
                Bson::Document(doc! {"k": values::unicode_key(rng)}),
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
pub fn array_path(rng: &mut StdRng) -> Document {
    let i = rng.gen_range(0..6);
    match rng.gen_range(0..5) {
        0 => doc! {"$set": {format!("objs.{i}.b"): rng.gen_range(0..100i32)}},
        1 => doc! {"$inc": {format!("arr.{i}"): 1}},
        2 => doc! {"$unset": {format!("objs.{i}.c"): ""}},
        3 => doc! {"$set": {format!("objs.{i}"): {"b": -1, "c": "whole"}}},
        _ => {
            doc! {"$set": {format!("arr.{}", i + 8): 7}, "$push": {"tags": {"$each": ["x"], "$slice": -2}}}
        }
    }
}

fn number(rng: &mut StdRng) -> Bson {
    match rng.gen_range(0..4) {
        0 => Bson::Int32(rng.gen_range(-3..4)),
        1 => Bson::Int64(rng.gen_range(-3..4)),
        2 => Bson::Double(rng.gen_range(-2.0..2.0)),
        _ => values::decimal("1.5"),
    }
}

/// An index of one of the kinds applications build (compound, sparse, TTL,
/// partial, multikey, nested path), with a unique name.
pub fn index_spec(rng: &mut StdRng) -> Document {
    let n = rng.gen_range(0..1000);
    match rng.gen_range(0..6) {
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

/// A pipeline update (feature `pipeline`): a computed `$set`, a field moved with
/// `$set` + `$unset`, and a `$replaceWith` that puts a copy of a subdocument ahead of
/// the other fields (a new field order, which a server logs as fields inserted again).
pub fn pipeline(word: &str) -> Vec<Document> {
    vec![
        doc! {"$set": {"piped": word, "cnt": {"$add": [{"$ifNull": ["$cnt", 0]}, 1]}}},
        doc! {"$set": {"s_moved": "$s"}},
        doc! {"$unset": ["s"]},
        doc! {"$replaceWith": {"$mergeObjects": [{"_id": "$_id", "moved": "$sub"}, "$$ROOT"]}},
    ]
}

/// The capped-list idiom as a pipeline update (feature `pipeline`): append to an array
/// that may be missing or not an array yet, keep the last `keep` entries, and store a
/// newest-first copy beside it (`$concatArrays`, `$isArray`, `$slice`, `$reverseArray`).
pub fn capped_list(word: &str, keep: i32) -> Vec<Document> {
    vec![
        doc! {"$set": {"recent": {"$slice": [
            {"$concatArrays": [
                {"$cond": [{"$isArray": "$recent"}, "$recent", []]},
                [{"w": word}],
            ]},
            -keep,
        ]}}},
        doc! {"$set": {"newest_first": {"$reverseArray": "$recent"}}},
    ]
}

/// A materialized-view refresh (feature `views`): a pipeline over the source
/// collection that an application reruns to rebuild a summary or a projection. The
/// writing stage (`$out` or `$merge`) is added by the caller.
pub fn view_pipeline(rng: &mut StdRng) -> Vec<Document> {
    match rng.gen_range(0..3) {
        0 => vec![doc! {"$group": {"_id": "$g", "n": {"$sum": 1}, "words": {"$addToSet": "$s"}}}],
        1 => vec![
            doc! {"$match": {"g": {"$lt": rng.gen_range(1..8i32)}}},
            doc! {"$project": {"g": 1, "s": 1, "tags": 1}},
        ],
        _ => vec![
            doc! {"$match": {"cnt": {"$exists": true}}},
            doc! {"$set": {"refreshed": values::word(rng)}},
            doc! {"$project": {"big": 0, "storm": 0}},
        ],
    }
}

/// A `$merge` stage into `coll`, on `_id`, with drawn matched/not-matched actions.
pub fn merge_stage(rng: &mut StdRng, coll: &str) -> Document {
    let matched = ["replace", "keepExisting", "merge"][rng.gen_range(0..3)];
    let not_matched = ["insert", "discard"][rng.gen_range(0..2)];
    doc! {"$merge": {"into": coll, "on": "_id", "whenMatched": matched, "whenNotMatched": not_matched}}
}
