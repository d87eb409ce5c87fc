//! Aggregation expressions: field paths (`"$a.b"`), `$$ROOT`/`$$REMOVE`, literals, object
//! and array expressions, and a handful of operators.

use std::cmp::Ordering;

use bson::{Bson, Document};

use super::matcher::{is_truthy, type_name};
use super::numeric::{add, as_f64, is_number, multiply, subtract};
use super::order::compare;
use crate::error::{CmdResult, CommandError};

/// Evaluates `expr` against `root`; `None` means "missing" (the field is left out).
pub fn evaluate(expr: &Bson, root: &Document) -> CmdResult<Option<Bson>> {
    match expr {
        Bson::String(s) if s.starts_with("$$") => variable(&s[2..], root),
        Bson::String(s) if s.starts_with('$') => Ok(field_path(root, &s[1..])),
        Bson::Document(d) => match d.keys().next() {
            Some(k) if k.starts_with('$') => {
                if d.len() > 1 {
                    return Err(CommandError::new(
                        15983,
                        format!("an expression specification must contain exactly one field, the name of the expression. Found {} fields", d.len()),
                    ));
                }
                let arg = d.get(k).unwrap_or(&Bson::Null);
                operator(k, arg, root)
            }
            _ => {
                let mut out = Document::new();
                for (k, v) in d {
                    if let Some(value) = evaluate(v, root)? {
                        out.insert(k.clone(), value);
                    }
                }
                Ok(Some(Bson::Document(out)))
            }
        },
        Bson::Array(items) => {
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                out.push(evaluate(item, root)?.unwrap_or(Bson::Null));
            }
            Ok(Some(Bson::Array(out)))
        }
        other => Ok(Some(other.clone())),
    }
}

fn variable(name: &str, root: &Document) -> CmdResult<Option<Bson>> {
    let (var, rest) = match name.split_once('.') {
        Some((v, r)) => (v, Some(r)),
        None => (name, None),
    };
    match var {
        "ROOT" | "CURRENT" => Ok(match rest {
            Some(path) => field_path(root, path),
            None => Some(Bson::Document(root.clone())),
        }),
        "REMOVE" => Ok(None),
        _ => Err(CommandError::new(
            17276,
            format!("Use of undefined variable: {var}"),
        )),
    }
}

/// The value of an aggregation field path: arrays along the way map over their elements.
pub(crate) fn field_path(root: &Document, path: &str) -> Option<Bson> {
    let mut parts = path.split('.');
    let first = root.get(parts.next()?)?;
    let rest: Vec<&str> = parts.collect();
    descend(first, &rest)
}

fn descend(value: &Bson, parts: &[&str]) -> Option<Bson> {
    let Some((part, rest)) = parts.split_first() else {
        return Some(value.clone());
    };
    match value {
        Bson::Document(d) => descend(d.get(*part)?, rest),
        Bson::Array(items) => {
            let mapped: Vec<Bson> = items
                .iter()
                .filter(|item| matches!(item, Bson::Document(_) | Bson::Array(_)))
                .filter_map(|item| descend(item, parts))
                .collect();
            Some(Bson::Array(mapped))
        }
        _ => None,
    }
}

fn args(arg: &Bson) -> Vec<&Bson> {
    match arg {
        Bson::Array(items) => items.iter().collect(),
        other => vec![other],
    }
}

fn eval_args(op: &str, arg: &Bson, root: &Document, count: Option<usize>) -> CmdResult<Vec<Bson>> {
    let raw = args(arg);
    if let Some(n) = count {
        if raw.len() != n {
            return Err(CommandError::new(
                16020,
                format!(
                    "Expression {op} takes exactly {n} arguments. {} were passed in.",
                    raw.len()
                ),
            ));
        }
    }
    raw.into_iter()
        .map(|a| Ok(evaluate(a, root)?.unwrap_or(Bson::Null)))
        .collect()
}

fn is_nullish(v: &Bson) -> bool {
    matches!(v, Bson::Null | Bson::Undefined)
}

/// `$slice: [array, n]` (the first n, or the last -n) or `[array, position, n]` (n > 0
/// from position; a negative position counts from the end). A null or missing array
/// gives null.
fn slice(arg: &Bson, root: &Document) -> CmdResult<Bson> {
    let vals = eval_args("$slice", arg, root, None)?;
    if !(2..=3).contains(&vals.len()) {
        return Err(CommandError::new(
            28667,
            format!(
                "Expression $slice takes at least 2 arguments, and at most 3, but {} were passed in.",
                vals.len()
            ),
        ));
    }
    let items = match &vals[0] {
        Bson::Array(items) => items,
        v if is_nullish(v) => return Ok(Bson::Null),
        v => {
            return Err(CommandError::new(
                28724,
                format!(
                    "First argument to $slice must be an array, but is of type: {}",
                    type_name(v)
                ),
            ))
        }
    };
    let integer = |v: &Bson, which: &str, code: i32| -> CmdResult<i64> {
        match as_f64(v) {
            Some(f) if f.fract() == 0.0 => Ok(f as i64),
            _ => Err(CommandError::new(
                code,
                format!(
                    "{which} argument to $slice must be numeric, but is of type: {}",
                    type_name(v)
                ),
            )),
        }
    };
    let len = items.len() as i64;
    let (start, count) = if vals.len() == 2 {
        let n = integer(&vals[1], "Second", 28725)?;
        if n >= 0 {
            (0, n)
        } else {
            ((len + n).max(0), -n)
        }
    } else {
        let position = integer(&vals[1], "Second", 28725)?;
        let n = integer(&vals[2], "Third", 28727)?;
        if n <= 0 {
            return Err(CommandError::new(
                28729,
                format!("Third argument to $slice must be positive: {n}"),
            ));
        }
        let start = if position < 0 {
            (len + position).max(0)
        } else {
            position.min(len)
        };
        (start, n)
    };
    let end = start.saturating_add(count).min(len);
    Ok(Bson::Array(
        items[start as usize..end.max(start) as usize].to_vec(),
    ))
}

fn operator(op: &str, arg: &Bson, root: &Document) -> CmdResult<Option<Bson>> {
    let value = match op {
        "$literal" => arg.clone(),
        "$mergeObjects" => merge_objects(arg, root)?,
        "$getField" => return get_field(arg, root),
        "$setField" => set_field(arg, root)?,
        "$add" | "$multiply" => {
            let vals = eval_args(op, arg, root, None)?;
            arithmetic_fold(op, &vals)?
        }
        "$subtract" => {
            let vals = eval_args(op, arg, root, Some(2))?;
            if vals.iter().any(is_nullish) {
                Bson::Null
            } else if let (Bson::DateTime(a), Some(b)) = (&vals[0], as_f64(&vals[1])) {
                Bson::DateTime(bson::DateTime::from_millis(a.timestamp_millis() - b as i64))
            } else if let (Bson::DateTime(a), Bson::DateTime(b)) = (&vals[0], &vals[1]) {
                Bson::Int64(a.timestamp_millis() - b.timestamp_millis())
            } else {
                subtract(&vals[0], &vals[1]).ok_or_else(|| {
                    CommandError::type_mismatch(format!(
                        "can't $subtract {} from {}",
                        type_name(&vals[1]),
                        type_name(&vals[0])
                    ))
                })?
            }
        }
        "$divide" => {
            let vals = eval_args(op, arg, root, Some(2))?;
            if vals.iter().any(is_nullish) {
                Bson::Null
            } else {
                match (as_f64(&vals[0]), as_f64(&vals[1])) {
                    (Some(_), Some(0.0)) => {
                        return Err(CommandError::bad_value("can't $divide by zero"))
                    }
                    (Some(n), Some(d)) => Bson::Double(n / d),
                    _ => {
                        return Err(CommandError::type_mismatch(
                            "$divide only supports numeric types",
                        ))
                    }
                }
            }
        }
        "$eq" | "$ne" | "$gt" | "$gte" | "$lt" | "$lte" | "$cmp" => {
            let vals = eval_args(op, arg, root, Some(2))?;
            let ord = compare(&vals[0], &vals[1]);
            match op {
                "$eq" => Bson::Boolean(ord == Ordering::Equal),
                "$ne" => Bson::Boolean(ord != Ordering::Equal),
                "$gt" => Bson::Boolean(ord == Ordering::Greater),
                "$gte" => Bson::Boolean(ord != Ordering::Less),
                "$lt" => Bson::Boolean(ord == Ordering::Less),
                "$lte" => Bson::Boolean(ord != Ordering::Greater),
                _ => Bson::Int32(ord as i32),
            }
        }
        "$and" => Bson::Boolean(eval_args(op, arg, root, None)?.iter().all(is_truthy)),
        "$or" => Bson::Boolean(eval_args(op, arg, root, None)?.iter().any(is_truthy)),
        "$not" => Bson::Boolean(!is_truthy(&eval_args(op, arg, root, Some(1))?[0])),
        "$cond" => return conditional(arg, root),
        "$ifNull" => {
            let raw = args(arg);
            for candidate in &raw[..raw.len().saturating_sub(1)] {
                match evaluate(candidate, root)? {
                    Some(v) if !is_nullish(&v) => return Ok(Some(v)),
                    _ => {}
                }
            }
            match raw.last() {
                Some(last) => return evaluate(last, root),
                None => Bson::Null,
            }
        }
        "$concat" => {
            let vals = eval_args(op, arg, root, None)?;
            let mut out = String::new();
            for v in &vals {
                match v {
                    Bson::String(s) => out.push_str(s),
                    v if is_nullish(v) => return Ok(Some(Bson::Null)),
                    v => {
                        return Err(CommandError::new(
                            16702,
                            format!("$concat only supports strings, not {}", type_name(v)),
                        ))
                    }
                }
            }
            Bson::String(out)
        }
        "$toString" => {
            let v = &eval_args(op, arg, root, Some(1))?[0];
            to_string(v)
        }
        "$toUpper" | "$toLower" => {
            let v = &eval_args(op, arg, root, Some(1))?[0];
            let s = match to_string(v) {
                Bson::String(s) => s,
                _ => String::new(),
            };
            Bson::String(if op == "$toUpper" {
                s.to_uppercase()
            } else {
                s.to_lowercase()
            })
        }
        "$size" => match &eval_args(op, arg, root, Some(1))?[0] {
            Bson::Array(items) => Bson::Int32(items.len() as i32),
            v => {
                return Err(CommandError::new(
                    17124,
                    format!(
                        "The argument to $size must be an array. Type of argument: {}",
                        {
                            if is_nullish(v) {
                                "missing"
                            } else {
                                type_name(v)
                            }
                        }
                    ),
                ))
            }
        },
        "$type" => {
            let raw = args(arg);
            match raw.first() {
                Some(a) => match evaluate(a, root)? {
                    Some(v) => Bson::String(type_name(&v).to_string()),
                    None => Bson::String("missing".to_string()),
                },
                None => Bson::String("missing".to_string()),
            }
        }
        "$in" => {
            let vals = eval_args(op, arg, root, Some(2))?;
            match &vals[1] {
                Bson::Array(items) => Bson::Boolean(
                    items
                        .iter()
                        .any(|i| compare(i, &vals[0]) == Ordering::Equal),
                ),
                _ => {
                    return Err(CommandError::new(
                        40081,
                        "$in requires an array as a second argument",
                    ))
                }
            }
        }
        "$arrayElemAt" => {
            let vals = eval_args(op, arg, root, Some(2))?;
            match (&vals[0], as_f64(&vals[1])) {
                (Bson::Array(items), Some(i)) => {
                    let idx = if i < 0.0 {
                        items.len() as i64 + i as i64
                    } else {
                        i as i64
                    };
                    return Ok(usize::try_from(idx)
                        .ok()
                        .and_then(|i| items.get(i))
                        .cloned());
                }
                _ => Bson::Null,
            }
        }
        "$concatArrays" => {
            let vals = eval_args(op, arg, root, None)?;
            let mut out = Vec::new();
            for v in vals {
                match v {
                    Bson::Array(items) => out.extend(items),
                    v if is_nullish(&v) => return Ok(Some(Bson::Null)),
                    v => {
                        return Err(CommandError::new(
                            28664,
                            format!("$concatArrays only supports arrays, not {}", type_name(&v)),
                        ))
                    }
                }
            }
            Bson::Array(out)
        }
        "$slice" => slice(arg, root)?,
        "$isArray" => Bson::Boolean(matches!(
            eval_args(op, arg, root, Some(1))?[0],
            Bson::Array(_)
        )),
        "$reverseArray" => match eval_args(op, arg, root, Some(1))?.remove(0) {
            Bson::Array(mut items) => {
                items.reverse();
                Bson::Array(items)
            }
            v if is_nullish(&v) => Bson::Null,
            v => {
                return Err(CommandError::new(
                    34435,
                    format!(
                        "The argument to $reverseArray must be an array, but was of type: {}",
                        type_name(&v)
                    ),
                ))
            }
        },
        "$max" | "$min" => {
            let vals = eval_args(op, arg, root, None)?;
            let flat: Vec<Bson> = match vals.as_slice() {
                [Bson::Array(items)] => items.clone(),
                _ => vals,
            };
            let mut best: Option<Bson> = None;
            for v in flat.into_iter().filter(|v| !is_nullish(v)) {
                let replace = match &best {
                    None => true,
                    Some(b) => (compare(&v, b) == Ordering::Greater) == (op == "$max"),
                };
                if replace {
                    best = Some(v);
                }
            }
            best.unwrap_or(Bson::Null)
        }
        _ => {
            return Err(CommandError::new(
                168,
                format!("Invalid $project :: caused by :: Unrecognized expression '{op}'"),
            ))
        }
    };
    Ok(Some(value))
}

/// `$mergeObjects`: later documents' fields win; null and missing inputs are skipped.
fn merge_objects(arg: &Bson, root: &Document) -> CmdResult<Bson> {
    let mut out = Document::new();
    for input in args(arg) {
        match evaluate(input, root)? {
            None | Some(Bson::Null) | Some(Bson::Undefined) => {}
            Some(Bson::Document(d)) => out.extend(d),
            Some(other) => {
                return Err(CommandError::new(
                    40400,
                    format!(
                        "$mergeObjects requires object inputs, but input {other} is of type {}",
                        type_name(&other)
                    ),
                ))
            }
        }
    }
    Ok(Bson::Document(out))
}

/// The `field` argument of `$getField`/`$setField`: a string, possibly as `$literal`
/// (which is how a `$`-prefixed or dotted field name is named).
fn field_name<'a>(op: &str, field: Option<&'a Bson>) -> CmdResult<&'a str> {
    match field {
        Some(Bson::String(s)) if !s.starts_with('$') => Ok(s),
        Some(Bson::Document(d)) if d.len() == 1 => match d.get("$literal") {
            Some(Bson::String(s)) => Ok(s),
            _ => Err(field_not_constant(op)),
        },
        _ => Err(field_not_constant(op)),
    }
}

fn field_not_constant(op: &str) -> CommandError {
    let code = if op == "$getField" { 5654602 } else { 4161106 };
    CommandError::new(
        code,
        format!("{op} requires 'field' to evaluate to a constant, but got a non-constant argument"),
    )
}

/// `$getField: "name"` or `{field, input}`: the field of a document by its exact name
/// (dots and `$` included); missing when the input is not a document or lacks it.
fn get_field(arg: &Bson, root: &Document) -> CmdResult<Option<Bson>> {
    let (field, input) = match arg {
        Bson::Document(d) if d.contains_key("field") => {
            (field_name("$getField", d.get("field"))?, d.get("input"))
        }
        other => (field_name("$getField", Some(other))?, None),
    };
    let input = match input {
        Some(expr) => evaluate(expr, root)?,
        None => Some(Bson::Document(root.clone())),
    };
    Ok(match input {
        Some(Bson::Document(d)) => d.get(field).cloned(),
        Some(Bson::Null) | Some(Bson::Undefined) => Some(Bson::Null),
        _ => None,
    })
}

/// `$setField: {field, input, value}`: the input document with the field set (in place
/// when present, appended otherwise) or removed when `value` is `$$REMOVE`.
fn set_field(arg: &Bson, root: &Document) -> CmdResult<Bson> {
    let Bson::Document(spec) = arg else {
        return Err(CommandError::new(
            4161100,
            "$setField only supports an object as its argument",
        ));
    };
    let field = field_name("$setField", spec.get("field"))?;
    let input = match spec.get("input") {
        Some(expr) => evaluate(expr, root)?,
        None => {
            return Err(CommandError::new(
                4161103,
                "$setField requires 'input' to be specified",
            ))
        }
    };
    let Some(value_expr) = spec.get("value") else {
        return Err(CommandError::new(
            4161104,
            "$setField requires 'value' to be specified",
        ));
    };
    let value = evaluate(value_expr, root)?;
    let mut out = match input {
        Some(Bson::Document(d)) => d,
        None | Some(Bson::Null) | Some(Bson::Undefined) => return Ok(Bson::Null),
        Some(other) => {
            return Err(CommandError::new(
                4161105,
                format!(
                    "$setField requires 'input' to evaluate to type Object, but got {}",
                    type_name(&other)
                ),
            ))
        }
    };
    match value {
        Some(v) => {
            out.insert(field, v);
        }
        None => {
            out.remove(field);
        }
    }
    Ok(Bson::Document(out))
}

fn arithmetic_fold(op: &str, vals: &[Bson]) -> CmdResult<Bson> {
    if vals.iter().any(is_nullish) {
        return Ok(Bson::Null);
    }
    let mut date_millis: Option<i64> = None;
    let mut acc = Bson::Int32(if op == "$add" { 0 } else { 1 });
    for v in vals {
        if let (Bson::DateTime(d), "$add") = (v, op) {
            date_millis = Some(d.timestamp_millis());
            continue;
        }
        let next = if op == "$add" {
            add(&acc, v)
        } else {
            multiply(&acc, v)
        };
        acc = next.ok_or_else(|| {
            CommandError::type_mismatch(format!(
                "{op} only supports numeric or date types, not {}",
                type_name(v)
            ))
        })?;
    }
    Ok(match date_millis {
        Some(ms) => Bson::DateTime(bson::DateTime::from_millis(
            ms + as_f64(&acc).unwrap_or(0.0) as i64,
        )),
        None => acc,
    })
}

fn conditional(arg: &Bson, root: &Document) -> CmdResult<Option<Bson>> {
    let (cond, then, otherwise) = match arg {
        Bson::Array(items) if items.len() == 3 => (&items[0], &items[1], &items[2]),
        Bson::Document(d) => match (d.get("if"), d.get("then"), d.get("else")) {
            (Some(i), Some(t), Some(e)) => (i, t, e),
            _ => return Err(CommandError::new(17080, "Missing 'if' parameter to $cond")),
        },
        _ => {
            return Err(CommandError::new(
                16020,
                "Expression $cond takes exactly 3 arguments.",
            ))
        }
    };
    let truth = evaluate(cond, root)?.is_some_and(|v| is_truthy(&v));
    evaluate(if truth { then } else { otherwise }, root)
}

fn to_string(v: &Bson) -> Bson {
    match v {
        Bson::String(s) => Bson::String(s.clone()),
        Bson::Int32(i) => Bson::String(i.to_string()),
        Bson::Int64(i) => Bson::String(i.to_string()),
        Bson::Double(d) => Bson::String(d.to_string()),
        Bson::Decimal128(d) => Bson::String(d.to_string()),
        Bson::Boolean(b) => Bson::String(b.to_string()),
        Bson::ObjectId(o) => Bson::String(o.to_hex()),
        Bson::DateTime(d) => Bson::String(d.try_to_rfc3339_string().unwrap_or_default()),
        v if is_number(v) => Bson::String(format!("{v}")),
        _ => Bson::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    fn eval(expr: Bson, root: &Document) -> Option<Bson> {
        evaluate(&expr, root).expect("valid expression")
    }

    #[test]
    fn field_paths_and_literals() {
        let root = doc! {"a": {"b": 3}, "arr": [{"x": 1}, {"x": 2}]};
        assert_eq!(
            eval(Bson::String("$a.b".into()), &root),
            Some(Bson::Int32(3))
        );
        assert_eq!(
            eval(Bson::String("$arr.x".into()), &root),
            Some(Bson::Array(vec![1.into(), 2.into()]))
        );
        assert_eq!(eval(Bson::String("$nope".into()), &root), None);
        assert_eq!(
            eval(Bson::Document(doc! {"$literal": "$a"}), &root),
            Some(Bson::String("$a".into()))
        );
        assert_eq!(eval(Bson::String("$$REMOVE".into()), &root), None);
    }

    #[test]
    fn arithmetic_comparison_and_conditionals() {
        let root = doc! {"a": 2, "b": 3.5, "s": "x"};
        assert_eq!(
            eval(Bson::Document(doc! {"$add": ["$a", 1]}), &root),
            Some(Bson::Int32(3))
        );
        assert_eq!(
            eval(Bson::Document(doc! {"$multiply": ["$a", "$b"]}), &root),
            Some(Bson::Double(7.0))
        );
        assert_eq!(
            eval(Bson::Document(doc! {"$subtract": ["$a", 5]}), &root),
            Some(Bson::Int32(-3))
        );
        assert_eq!(
            eval(Bson::Document(doc! {"$gt": ["$b", "$a"]}), &root),
            Some(Bson::Boolean(true))
        );
        let cond = doc! {"$cond": {"if": {"$eq": ["$a", 2]}, "then": "yes", "else": "no"}};
        assert_eq!(
            eval(Bson::Document(cond), &root),
            Some(Bson::String("yes".into()))
        );
        assert_eq!(
            eval(Bson::Document(doc! {"$ifNull": ["$zz", "dflt"]}), &root),
            Some(Bson::String("dflt".into()))
        );
        assert_eq!(
            eval(
                Bson::Document(doc! {"$concat": ["$s", "-", {"$toString": "$a"}]}),
                &root
            ),
            Some(Bson::String("x-2".into()))
        );
        assert_eq!(
            eval(Bson::Document(doc! {"$size": [[1, 2, 3]]}), &root),
            Some(Bson::Int32(3))
        );
    }

    #[test]
    fn array_expressions() {
        let root = doc! {"a": [1, 2, 3, 4], "n": Bson::Null};
        let e = |x: Document| eval(Bson::Document(x), &root);
        assert_eq!(
            e(doc! {"$concatArrays": ["$a", [5]]}),
            Some(Bson::Array(vec![
                1.into(),
                2.into(),
                3.into(),
                4.into(),
                5.into()
            ]))
        );
        assert_eq!(
            e(doc! {"$concatArrays": ["$a", "$missing"]}),
            Some(Bson::Null)
        );
        assert_eq!(
            e(doc! {"$slice": ["$a", -2]}),
            Some(Bson::Array(vec![3.into(), 4.into()]))
        );
        assert_eq!(
            e(doc! {"$slice": ["$a", 1, 2]}),
            Some(Bson::Array(vec![2.into(), 3.into()]))
        );
        assert_eq!(
            e(doc! {"$slice": ["$a", -10, 2]}),
            Some(Bson::Array(vec![1.into(), 2.into()]))
        );
        assert_eq!(e(doc! {"$slice": ["$a", 9, 2]}), Some(Bson::Array(vec![])));
        assert_eq!(e(doc! {"$slice": ["$n", 1]}), Some(Bson::Null));
        assert_eq!(e(doc! {"$isArray": ["$a"]}), Some(Bson::Boolean(true)));
        assert_eq!(
            e(doc! {"$reverseArray": "$a"}),
            Some(Bson::Array(vec![4.into(), 3.into(), 2.into(), 1.into()]))
        );
        let code = |x: Document| evaluate(&Bson::Document(x), &root).unwrap_err().code;
        assert_eq!(code(doc! {"$concatArrays": ["$a", 1]}), 28664);
        assert_eq!(code(doc! {"$slice": [1, 1]}), 28724);
        assert_eq!(code(doc! {"$slice": ["$a", 0, 0]}), 28729);
    }

    #[test]
    fn unknown_operator_is_an_error() {
        assert!(evaluate(&Bson::Document(doc! {"$nope": 1}), &doc! {}).is_err());
        assert!(evaluate(&Bson::Document(doc! {"$add": ["x", 1]}), &doc! {}).is_err());
    }
}
