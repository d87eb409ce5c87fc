//! Aggregation pipelines over an in-memory list of documents.

use bson::{Bson, Document};
use rand::seq::SliceRandom;

use super::expr::evaluate;
use super::matcher::{type_name, Matcher};
use super::numeric::{add, as_f64, is_number};
use super::order::{compare, values_equal, OrdBson};
use super::projection::Projection;
use super::sort::SortSpec;
use super::write_path::{remove_parts, set_parts, split_path};
use crate::error::{codes, CmdResult, CommandError};

/// Runs `stages` over `input` and returns the resulting documents.
pub fn run_pipeline(input: Vec<Document>, stages: &[Document]) -> CmdResult<Vec<Document>> {
    let mut docs = input;
    for stage in stages {
        docs = run_stage(docs, stage)?;
    }
    Ok(docs)
}

fn stage_parts(stage: &Document) -> CmdResult<(&str, &Bson)> {
    if stage.len() != 1 {
        return Err(CommandError::new(
            40323,
            "A pipeline stage specification object must contain exactly one field.",
        ));
    }
    match stage.iter().next() {
        Some((name, arg)) => Ok((name.as_str(), arg)),
        None => Err(CommandError::new(
            40323,
            "A pipeline stage specification object must contain exactly one field.",
        )),
    }
}

fn unrecognized(name: &str) -> CommandError {
    CommandError::new(
        codes::LOCATION40324,
        format!("Unrecognized pipeline stage name: '{name}'"),
    )
}

fn doc_arg<'a>(name: &str, arg: &'a Bson) -> CmdResult<&'a Document> {
    match arg {
        Bson::Document(d) => Ok(d),
        other => Err(CommandError::new(
            15976,
            format!(
                "{name} specification must be an object, not {}",
                type_name(other)
            ),
        )),
    }
}

fn run_stage(docs: Vec<Document>, stage: &Document) -> CmdResult<Vec<Document>> {
    let (name, arg) = stage_parts(stage)?;
    match name {
        "$match" => {
            let m = Matcher::new(doc_arg(name, arg)?)?;
            Ok(docs.into_iter().filter(|d| m.matches(d)).collect())
        }
        "$sort" => {
            let spec = SortSpec::new(doc_arg(name, arg)?)?;
            let mut docs = docs;
            docs.sort_by(|a, b| spec.compare(a, b));
            Ok(docs)
        }
        "$limit" => {
            let n = count_arg(name, arg)?;
            if n == 0 {
                return Err(CommandError::new(15958, "the limit must be positive"));
            }
            Ok(docs.into_iter().take(n).collect())
        }
        "$skip" => {
            let n = count_arg(name, arg)?;
            Ok(docs.into_iter().skip(n).collect())
        }
        "$count" => count_stage(docs, arg),
        "$group" => group(docs, doc_arg(name, arg)?),
        "$unwind" => unwind(docs, arg),
        "$sample" => {
            let spec = doc_arg(name, arg)?;
            let size = spec
                .get("size")
                .map(|s| count_arg("$sample size", s))
                .transpose()?
                .ok_or_else(|| CommandError::new(28749, "$sample stage must specify a size"))?;
            let mut docs = docs;
            docs.shuffle(&mut rand::thread_rng());
            docs.truncate(size);
            Ok(docs)
        }
        "$set" | "$addFields" | "$unset" | "$project" | "$replaceRoot" | "$replaceWith" => docs
            .iter()
            .map(|d| apply_document_stage(d, stage))
            .collect(),
        _ => Err(unrecognized(name)),
    }
}

fn count_arg(name: &str, arg: &Bson) -> CmdResult<usize> {
    match as_f64(arg) {
        Some(f) if f >= 0.0 && f.fract() == 0.0 => Ok(f as usize),
        _ => Err(CommandError::new(
            15957,
            format!("the {name} must be specified as a non-negative number"),
        )),
    }
}

/// Applies a per-document stage (`$set`/`$addFields`, `$unset`, `$project`,
/// `$replaceRoot`/`$replaceWith`) to one document; pipeline updates use these.
pub(crate) fn apply_document_stage(doc: &Document, stage: &Document) -> CmdResult<Document> {
    let (name, arg) = stage_parts(stage)?;
    match name {
        "$set" | "$addFields" => {
            let mut out = doc.clone();
            for (path, expr) in doc_arg(name, arg)? {
                let parts = split_path(path);
                match evaluate(expr, doc)? {
                    Some(v) => set_parts(&mut out, &parts, v)?,
                    None => remove_parts(&mut out, &parts),
                }
            }
            Ok(out)
        }
        "$unset" => {
            let fields: Vec<&str> = match arg {
                Bson::String(s) => vec![s.as_str()],
                Bson::Array(items) => items
                    .iter()
                    .map(|i| match i {
                        Bson::String(s) => Ok(s.as_str()),
                        _ => Err(CommandError::new(31120, "$unset specification must be a string or an array containing only string values")),
                    })
                    .collect::<CmdResult<_>>()?,
                _ => return Err(CommandError::new(31002, "$unset specification must be a string or an array")),
            };
            let mut out = doc.clone();
            for f in fields {
                remove_parts(&mut out, &split_path(f));
            }
            Ok(out)
        }
        "$project" => Projection::new(doc_arg(name, arg)?)?.try_apply(doc),
        "$replaceRoot" | "$replaceWith" => {
            let expr = if name == "$replaceRoot" {
                doc_arg(name, arg)?.get("newRoot").ok_or_else(|| {
                    CommandError::new(40231, "no newRoot specified for the $replaceRoot stage")
                })?
            } else {
                arg
            };
            match evaluate(expr, doc)? {
                Some(Bson::Document(d)) => Ok(d),
                other => Err(CommandError::new(
                    40228,
                    format!(
                        "'newRoot' expression must evaluate to an object, but resulting value was: {}. Type of resulting value: '{}'.",
                        other.as_ref().map_or("MISSING".to_string(), |v| v.to_string()),
                        other.as_ref().map_or("missing", type_name)
                    ),
                )),
            }
        }
        _ => Err(unrecognized(name)),
    }
}

fn count_stage(docs: Vec<Document>, arg: &Bson) -> CmdResult<Vec<Document>> {
    let Bson::String(field) = arg else {
        return Err(CommandError::new(
            40156,
            "the count field must be a non-empty string",
        ));
    };
    if field.is_empty() || field.starts_with('$') || field.contains('.') {
        return Err(CommandError::new(
            40158,
            "the count field must be a non-empty string, not start with '$' and not contain '.'",
        ));
    }
    if docs.is_empty() {
        return Ok(Vec::new());
    }
    let mut out = Document::new();
    out.insert(field.clone(), Bson::Int32(docs.len() as i32));
    Ok(vec![out])
}

fn unwind(docs: Vec<Document>, arg: &Bson) -> CmdResult<Vec<Document>> {
    let (path, index_field, preserve) = match arg {
        Bson::String(p) => (p.as_str(), None, false),
        Bson::Document(d) => {
            let Some(Bson::String(p)) = d.get("path") else {
                return Err(CommandError::new(
                    28812,
                    "no path specified to $unwind stage",
                ));
            };
            let index = match d.get("includeArrayIndex") {
                Some(Bson::String(s)) => Some(s.clone()),
                _ => None,
            };
            let preserve = matches!(
                d.get("preserveNullAndEmptyArrays"),
                Some(Bson::Boolean(true))
            );
            (p.as_str(), index, preserve)
        }
        _ => {
            return Err(CommandError::new(
                15981,
                "expected either a string or an object as specification for $unwind stage",
            ))
        }
    };
    let Some(field) = path.strip_prefix('$') else {
        return Err(CommandError::new(
            28818,
            "path option to $unwind stage should be prefixed with a '$'",
        ));
    };
    let parts = split_path(field);
    let mut out = Vec::new();
    for doc in docs {
        let value = super::write_path::get_parts(&doc, &parts).cloned();
        match value {
            Some(Bson::Array(items)) if !items.is_empty() => {
                for (i, item) in items.into_iter().enumerate() {
                    let mut d = doc.clone();
                    set_parts(&mut d, &parts, item)?;
                    if let Some(f) = &index_field {
                        d.insert(f.clone(), Bson::Int64(i as i64));
                    }
                    out.push(d);
                }
            }
            Some(Bson::Array(_)) | Some(Bson::Null) | None => {
                if preserve {
                    let mut d = doc;
                    if let Some(f) = &index_field {
                        d.insert(f.clone(), Bson::Null);
                    }
                    if matches!(value, Some(Bson::Array(_))) {
                        remove_parts(&mut d, &parts);
                    }
                    out.push(d);
                }
            }
            Some(_) => {
                let mut d = doc;
                if let Some(f) = &index_field {
                    d.insert(f.clone(), Bson::Null);
                }
                out.push(d);
            }
        }
    }
    Ok(out)
}

/// Keeps the smallest (`Less`) or largest (`Greater`) non-null value seen.
fn keep_extreme(best: &mut Option<Bson>, value: Option<Bson>, want: std::cmp::Ordering) {
    let Some(v) = value.filter(|v| !matches!(v, Bson::Null | Bson::Undefined)) else {
        return;
    };
    if best.as_ref().is_none_or(|b| compare(&v, b) == want) {
        *best = Some(v);
    }
}

/// A running accumulator of `$group`.
enum Acc {
    Sum(Bson),
    Avg(f64, u64),
    First(Option<Bson>),
    Last(Bson),
    Min(Option<Bson>),
    Max(Option<Bson>),
    Push(Vec<Bson>),
    AddToSet(Vec<Bson>),
    Count(i64),
}

impl Acc {
    fn new(op: &str) -> CmdResult<Acc> {
        Ok(match op {
            "$sum" => Acc::Sum(Bson::Int32(0)),
            "$avg" => Acc::Avg(0.0, 0),
            "$first" => Acc::First(None),
            "$last" => Acc::Last(Bson::Null),
            "$min" => Acc::Min(None),
            "$max" => Acc::Max(None),
            "$push" => Acc::Push(Vec::new()),
            "$addToSet" => Acc::AddToSet(Vec::new()),
            "$count" => Acc::Count(0),
            _ => {
                return Err(CommandError::new(
                    15952,
                    format!("unknown group operator '{op}'"),
                ))
            }
        })
    }

    fn feed(&mut self, value: Option<Bson>) {
        match self {
            Acc::Sum(total) => {
                if let Some(v) = value.filter(is_number) {
                    if let Some(t) = add(total, &v) {
                        *total = t;
                    }
                }
            }
            Acc::Avg(sum, n) => {
                if let Some(f) = value.as_ref().and_then(as_f64) {
                    *sum += f;
                    *n += 1;
                }
            }
            Acc::First(first) => {
                if first.is_none() {
                    *first = Some(value.unwrap_or(Bson::Null));
                }
            }
            Acc::Last(last) => *last = value.unwrap_or(Bson::Null),
            Acc::Min(best) => keep_extreme(best, value, std::cmp::Ordering::Less),
            Acc::Max(best) => keep_extreme(best, value, std::cmp::Ordering::Greater),
            Acc::Push(items) => {
                if let Some(v) = value {
                    items.push(v);
                }
            }
            Acc::AddToSet(items) => {
                if let Some(v) = value {
                    if !items.iter().any(|i| values_equal(i, &v)) {
                        items.push(v);
                    }
                }
            }
            Acc::Count(n) => *n += 1,
        }
    }

    fn finish(self) -> Bson {
        match self {
            Acc::Sum(t) => t,
            Acc::Avg(_, 0) => Bson::Null,
            Acc::Avg(sum, n) => Bson::Double(sum / n as f64),
            Acc::First(v) => v.unwrap_or(Bson::Null),
            Acc::Last(v) => v,
            Acc::Min(v) | Acc::Max(v) => v.unwrap_or(Bson::Null),
            Acc::Push(items) | Acc::AddToSet(items) => Bson::Array(items),
            Acc::Count(n) => i32::try_from(n).map(Bson::Int32).unwrap_or(Bson::Int64(n)),
        }
    }
}

fn group(docs: Vec<Document>, spec: &Document) -> CmdResult<Vec<Document>> {
    let id_expr = spec
        .get("_id")
        .ok_or_else(|| CommandError::new(15955, "a group specification must include an _id"))?;
    let mut fields: Vec<(&str, &str, &Bson)> = Vec::new();
    for (name, acc) in spec {
        if name == "_id" {
            continue;
        }
        let Bson::Document(acc_doc) = acc else {
            return Err(CommandError::new(
                40234,
                format!("The field '{name}' must be an accumulator object"),
            ));
        };
        let Some((op, expr)) = acc_doc.iter().next().filter(|_| acc_doc.len() == 1) else {
            return Err(CommandError::new(
                40238,
                format!("The field '{name}' must specify one accumulator"),
            ));
        };
        Acc::new(op)?;
        fields.push((name.as_str(), op.as_str(), expr));
    }
    let mut index = std::collections::BTreeMap::new();
    let mut groups: Vec<(Bson, Vec<Acc>)> = Vec::new();
    for doc in &docs {
        let key = evaluate(id_expr, doc)?.unwrap_or(Bson::Null);
        let slot = match index.get(&OrdBson(key.clone())) {
            Some(i) => *i,
            None => {
                let accs = fields
                    .iter()
                    .map(|(_, op, _)| Acc::new(op))
                    .collect::<CmdResult<Vec<_>>>()?;
                groups.push((key.clone(), accs));
                index.insert(OrdBson(key), groups.len() - 1);
                groups.len() - 1
            }
        };
        for (i, (_, _, expr)) in fields.iter().enumerate() {
            let value = evaluate(expr, doc)?;
            groups[slot].1[i].feed(value);
        }
    }
    Ok(groups
        .into_iter()
        .map(|(key, accs)| {
            let mut out = Document::new();
            out.insert("_id", key);
            for ((name, _, _), acc) in fields.iter().zip(accs) {
                out.insert(*name, acc.finish());
            }
            out
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    fn run(input: Vec<Document>, stages: Vec<Document>) -> Vec<Document> {
        run_pipeline(input, &stages).expect("pipeline runs")
    }

    fn sample() -> Vec<Document> {
        vec![
            doc! {"_id": 1, "k": "a", "n": 1, "tags": ["x", "y"]},
            doc! {"_id": 2, "k": "b", "n": 2, "tags": []},
            doc! {"_id": 3, "k": "a", "n": 3.5},
        ]
    }

    #[test]
    fn match_sort_skip_limit_count() {
        let out = run(
            sample(),
            vec![
                doc! {"$match": {"n": {"$gte": 2}}},
                doc! {"$sort": {"n": -1}},
            ],
        );
        assert_eq!(
            out.iter()
                .map(|d| d.get("_id").cloned())
                .collect::<Vec<_>>(),
            vec![Some(Bson::Int32(3)), Some(Bson::Int32(2))]
        );
        let out = run(sample(), vec![doc! {"$skip": 1}, doc! {"$limit": 1}]);
        assert_eq!(out, vec![sample()[1].clone()]);
        assert_eq!(
            run(sample(), vec![doc! {"$count": "total"}]),
            vec![doc! {"total": 3}]
        );
        assert!(run(vec![], vec![doc! {"$count": "total"}]).is_empty());
    }

    #[test]
    fn group_with_accumulators() {
        let out = run(
            sample(),
            vec![
                doc! {"$group": {"_id": "$k", "total": {"$sum": "$n"}, "avg": {"$avg": "$n"}, "cnt": {"$count": {}},
                "first": {"$first": "$_id"}, "last": {"$last": "$_id"}, "mx": {"$max": "$n"}, "mn": {"$min": "$n"},
                "ids": {"$push": "$_id"}, "ks": {"$addToSet": "$k"}}},
                doc! {"$sort": {"_id": 1}},
            ],
        );
        assert_eq!(
            out[0],
            doc! {"_id": "a", "total": 4.5, "avg": 2.25, "cnt": 1 + 1, "first": 1, "last": 3, "mx": 3.5, "mn": 1, "ids": [1, 3], "ks": ["a"]}
        );
        let all = run(
            sample(),
            vec![doc! {"$group": {"_id": Bson::Null, "c": {"$sum": 1}}}],
        );
        assert_eq!(all, vec![doc! {"_id": Bson::Null, "c": 3}]);
    }

    #[test]
    fn unwind_project_add_fields_replace_root() {
        let out = run(
            sample(),
            vec![
                doc! {"$unwind": "$tags"},
                doc! {"$project": {"tags": 1, "_id": 0}},
            ],
        );
        assert_eq!(out, vec![doc! {"tags": "x"}, doc! {"tags": "y"}]);
        let kept = run(
            sample(),
            vec![doc! {"$unwind": {"path": "$tags", "preserveNullAndEmptyArrays": true}}],
        );
        assert_eq!(kept.len(), 4);
        let out = run(
            vec![doc! {"_id": 1, "a": {"b": 2}}],
            vec![
                doc! {"$addFields": {"c": {"$multiply": ["$a.b", 10]}}},
                doc! {"$replaceRoot": {"newRoot": {"v": "$c"}}},
            ],
        );
        assert_eq!(out, vec![doc! {"v": 20}]);
        let out = run(
            vec![doc! {"_id": 1, "a": 1, "b": 2}],
            vec![doc! {"$unset": ["a"]}, doc! {"$replaceWith": "$$ROOT"}],
        );
        assert_eq!(out, vec![doc! {"_id": 1, "b": 2}]);
    }

    #[test]
    fn sample_returns_requested_size() {
        assert_eq!(run(sample(), vec![doc! {"$sample": {"size": 2}}]).len(), 2);
    }

    #[test]
    fn unknown_stage_is_40324() {
        let err = run_pipeline(sample(), &[doc! {"$foo": {}}]).expect_err("unknown");
        assert_eq!(err.code, 40324);
        assert_eq!(err.errmsg, "Unrecognized pipeline stage name: '$foo'");
    }
}
