//! Query filters: `Matcher::new` parses a filter document once, `matches` tests documents.

use std::cmp::Ordering;

use bson::{Bson, Document};
use regex::Regex;

use super::order::{compare, type_rank, values_equal, Number};
use super::path::leaf_candidates;
use crate::error::{CmdResult, CommandError};

/// A parsed query filter.
#[derive(Clone, Debug)]
pub struct Matcher {
    root: Expr,
    id_set: Option<Vec<Bson>>,
}

#[derive(Clone, Debug)]
enum Expr {
    And(Vec<Expr>),
    Or(Vec<Expr>),
    Nor(Vec<Expr>),
    Const(bool),
    Path(String, Pred),
    /// `$expr`: an aggregation expression, true when its value is truthy.
    Aggregate(Bson),
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum CmpOp {
    Gt,
    Gte,
    Lt,
    Lte,
}

/// A predicate on the values found at one path.
#[derive(Clone, Debug)]
enum Pred {
    Eq(Bson),
    Cmp(CmpOp, Bson),
    In(Vec<Bson>, Vec<Regex>),
    Regex(Regex),
    Exists(bool),
    Type(Vec<TypeSel>),
    Size(i64),
    Mod(i64, i64),
    ElemMatchValue(Vec<Pred>),
    ElemMatchDoc(Box<Matcher>),
    And(Vec<Pred>),
    Not(Box<Pred>),
}

#[derive(Clone, Copy, Debug)]
enum TypeSel {
    Code(i32),
    AnyNumber,
}

impl Matcher {
    /// Parses a filter. Unknown or malformed operators fail with `BadValue` as the server.
    pub fn new(filter: &Document) -> CmdResult<Matcher> {
        let root = parse_document(filter)?;
        let id_set = Self::ids_of(filter);
        Ok(Matcher { root, id_set })
    }

    /// Whether `doc` satisfies the filter.
    pub fn matches(&self, doc: &Document) -> bool {
        eval_expr(&self.root, doc)
    }

    /// See [`Matcher::ids_of`].
    pub fn id_set(&self) -> Option<&[Bson]> {
        self.id_set.as_deref()
    }

    /// The `_id` values when the filter only selects documents by `_id` from a list:
    /// `{_id: v}`, `{_id: {$in: [...]}}` or `{$or: [{_id: a}, {_id: b}, ...]}`. Like the
    /// server's `_id` index, these are answered by lookups, not a collection scan.
    fn ids_of(filter: &Document) -> Option<Vec<Bson>> {
        fn plain(v: &Bson) -> bool {
            !is_operator_doc(v) && !matches!(v, Bson::RegularExpression(_) | Bson::Array(_))
        }
        if filter.len() != 1 {
            return None;
        }
        match filter.iter().next()? {
            (k, v) if k == "_id" => match v {
                v if plain(v) => Some(vec![v.clone()]),
                Bson::Document(d) if d.len() == 1 => match d.get("$in")? {
                    Bson::Array(values) if values.iter().all(plain) => Some(values.clone()),
                    _ => None,
                },
                _ => None,
            },
            (k, Bson::Array(clauses)) if k == "$or" && !clauses.is_empty() => clauses
                .iter()
                .map(|c| match c {
                    Bson::Document(c) if c.len() == 1 => match c.get("_id") {
                        Some(v) if plain(v) => Some(v.clone()),
                        _ => None,
                    },
                    _ => None,
                })
                .collect(),
            _ => None,
        }
    }
}

/// Whether a value is an operator document like `{$gt: 1}` (its first key starts with `$`).
pub(crate) fn is_operator_doc(v: &Bson) -> bool {
    match v {
        Bson::Document(d) => d.keys().next().is_some_and(|k| k.starts_with('$')),
        _ => false,
    }
}

fn parse_document(filter: &Document) -> CmdResult<Expr> {
    let mut parts = Vec::with_capacity(filter.len());
    for (key, value) in filter {
        if let Some(op) = key.strip_prefix('$') {
            parts.push(parse_top_level(op, value)?);
        } else {
            parts.push(Expr::Path(key.clone(), parse_field_value(value)?));
        }
    }
    Ok(if parts.len() == 1 {
        parts.remove(0)
    } else {
        Expr::And(parts)
    })
}

fn parse_top_level(op: &str, value: &Bson) -> CmdResult<Expr> {
    match op {
        "and" | "or" | "nor" => {
            let Bson::Array(items) = value else {
                return Err(CommandError::bad_value(format!("${op} must be an array")));
            };
            if items.is_empty() {
                return Err(CommandError::bad_value(
                    "$and/$or/$nor must be a nonempty array",
                ));
            }
            let mut exprs = Vec::with_capacity(items.len());
            for item in items {
                let Bson::Document(d) = item else {
                    return Err(CommandError::bad_value(
                        "$or/$and/$nor entries need to be full objects",
                    ));
                };
                exprs.push(parse_document(d)?);
            }
            Ok(match op {
                "and" => Expr::And(exprs),
                "or" => Expr::Or(exprs),
                _ => Expr::Nor(exprs),
            })
        }
        "comment" => Ok(Expr::Const(true)),
        "alwaysTrue" => Ok(Expr::Const(true)),
        "alwaysFalse" => Ok(Expr::Const(false)),
        "expr" => Ok(Expr::Aggregate(value.clone())),
        "where" | "text" | "jsonSchema" | "sampleRate" => Err(CommandError::bad_value(format!(
            "${op} is not supported by the sandbox"
        ))),
        _ => Err(CommandError::bad_value(format!(
            "unknown top level operator: ${op}"
        ))),
    }
}

/// The predicate for `{path: value}`: an operator document or an implicit equality.
fn parse_field_value(value: &Bson) -> CmdResult<Pred> {
    match value {
        Bson::Document(d) if is_operator_doc(value) => parse_operators(d),
        Bson::RegularExpression(re) => Ok(Pred::Regex(compile_regex(&re.pattern, &re.options)?)),
        _ => Ok(Pred::Eq(value.clone())),
    }
}

fn parse_operators(ops: &Document) -> CmdResult<Pred> {
    let mut preds = Vec::with_capacity(ops.len());
    let regex_options = match ops.get("$options") {
        None => None,
        Some(Bson::String(s)) => Some(s.clone()),
        Some(_) => return Err(CommandError::bad_value("$options has to be a string")),
    };
    if regex_options.is_some() && !ops.contains_key("$regex") {
        return Err(CommandError::bad_value("$options needs a $regex"));
    }
    for (key, arg) in ops {
        match key.as_str() {
            "$options" => {}
            "$regex" => preds.push(parse_regex_operator(arg, regex_options.as_deref())?),
            _ => preds.push(parse_operator(key, arg)?),
        }
    }
    Ok(if preds.len() == 1 {
        preds.remove(0)
    } else {
        Pred::And(preds)
    })
}

fn parse_regex_operator(arg: &Bson, options: Option<&str>) -> CmdResult<Pred> {
    match arg {
        Bson::String(pattern) => Ok(Pred::Regex(compile_regex(pattern, options.unwrap_or(""))?)),
        Bson::RegularExpression(re) => {
            let opts = options.unwrap_or(&re.options);
            Ok(Pred::Regex(compile_regex(&re.pattern, opts)?))
        }
        _ => Err(CommandError::bad_value("$regex has to be a string")),
    }
}

/// Translates a server-style pattern with option letters (`imsx`) into a Rust regex.
pub(crate) fn compile_regex(pattern: &str, options: &str) -> CmdResult<Regex> {
    let mut flags = String::new();
    for c in options.chars() {
        match c {
            'i' | 'm' | 's' | 'x' => flags.push(c),
            'u' => {}
            _ => {
                return Err(CommandError::bad_value(format!(
                    "invalid flag in regex options: {c}"
                )))
            }
        }
    }
    let full = if flags.is_empty() {
        pattern.to_string()
    } else {
        format!("(?{flags}){pattern}")
    };
    Regex::new(&full)
        .map_err(|e| CommandError::bad_value(format!("Regular expression is invalid: {e}")))
}

fn operand_regex(v: &Bson) -> CmdResult<Option<Regex>> {
    match v {
        Bson::RegularExpression(re) => Ok(Some(compile_regex(&re.pattern, &re.options)?)),
        _ => Ok(None),
    }
}

fn parse_operator(key: &str, arg: &Bson) -> CmdResult<Pred> {
    Ok(match key {
        "$eq" => Pred::Eq(arg.clone()),
        "$ne" => Pred::Not(Box::new(Pred::Eq(arg.clone()))),
        "$gt" => Pred::Cmp(CmpOp::Gt, arg.clone()),
        "$gte" => Pred::Cmp(CmpOp::Gte, arg.clone()),
        "$lt" => Pred::Cmp(CmpOp::Lt, arg.clone()),
        "$lte" => Pred::Cmp(CmpOp::Lte, arg.clone()),
        "$in" => parse_in(arg, "$in")?,
        "$nin" => Pred::Not(Box::new(parse_in(arg, "$nin")?)),
        "$exists" => Pred::Exists(is_truthy(arg)),
        "$type" => Pred::Type(parse_types(arg)?),
        "$size" => Pred::Size(parse_size(arg)?),
        "$mod" => parse_mod(arg)?,
        "$all" => parse_all(arg)?,
        "$elemMatch" => parse_elem_match(arg)?,
        "$not" => parse_not(arg)?,
        "$comment" => Pred::And(Vec::new()),
        _ => return Err(CommandError::bad_value(format!("unknown operator: {key}"))),
    })
}

fn parse_in(arg: &Bson, op: &str) -> CmdResult<Pred> {
    let Bson::Array(items) = arg else {
        return Err(CommandError::bad_value(format!("{op} needs an array")));
    };
    let mut values = Vec::with_capacity(items.len());
    let mut regexes = Vec::new();
    for item in items {
        if is_operator_doc(item) {
            return Err(CommandError::bad_value("cannot nest $ under $in"));
        }
        match operand_regex(item)? {
            Some(re) => regexes.push(re),
            None => values.push(item.clone()),
        }
    }
    Ok(Pred::In(values, regexes))
}

/// Truthiness as the server reads `$exists` and projection flags.
pub(crate) fn is_truthy(v: &Bson) -> bool {
    match v {
        Bson::Boolean(b) => *b,
        Bson::Null | Bson::Undefined => false,
        _ => match Number::of(v) {
            Some(n) => n.as_f64() != 0.0,
            None => true,
        },
    }
}

/// The `$type` code of a value (the numbers accepted by `$type`).
pub(crate) fn type_code(v: &Bson) -> i32 {
    match v {
        Bson::Double(_) => 1,
        Bson::String(_) => 2,
        Bson::Document(_) => 3,
        Bson::Array(_) => 4,
        Bson::Binary(_) => 5,
        Bson::Undefined => 6,
        Bson::ObjectId(_) => 7,
        Bson::Boolean(_) => 8,
        Bson::DateTime(_) => 9,
        Bson::Null => 10,
        Bson::RegularExpression(_) => 11,
        Bson::DbPointer(_) => 12,
        Bson::JavaScriptCode(_) => 13,
        Bson::Symbol(_) => 14,
        Bson::JavaScriptCodeWithScope(_) => 15,
        Bson::Int32(_) => 16,
        Bson::Timestamp(_) => 17,
        Bson::Int64(_) => 18,
        Bson::Decimal128(_) => 19,
        Bson::MinKey => -1,
        Bson::MaxKey => 127,
    }
}

/// The `$type` alias of a value ("double", "string", ...), as `$type` in aggregation names it.
pub(crate) fn type_name(v: &Bson) -> &'static str {
    TYPE_ALIASES
        .iter()
        .find(|(_, code)| *code == type_code(v))
        .map_or("unknown", |(n, _)| n)
}

const TYPE_ALIASES: &[(&str, i32)] = &[
    ("double", 1),
    ("string", 2),
    ("object", 3),
    ("array", 4),
    ("binData", 5),
    ("undefined", 6),
    ("objectId", 7),
    ("bool", 8),
    ("date", 9),
    ("null", 10),
    ("regex", 11),
    ("dbPointer", 12),
    ("javascript", 13),
    ("symbol", 14),
    ("javascriptWithScope", 15),
    ("int", 16),
    ("timestamp", 17),
    ("long", 18),
    ("decimal", 19),
    ("minKey", -1),
    ("maxKey", 127),
];

fn parse_type_selector(v: &Bson) -> CmdResult<TypeSel> {
    match v {
        Bson::String(s) if s == "number" => Ok(TypeSel::AnyNumber),
        Bson::String(s) => TYPE_ALIASES
            .iter()
            .find(|(name, _)| name == s)
            .map(|(_, code)| TypeSel::Code(*code))
            .ok_or_else(|| CommandError::bad_value(format!("Unknown type name alias: {s}"))),
        _ => match Number::of(v) {
            Some(n) => {
                let f = n.as_f64();
                let code = f as i32;
                if f.fract() != 0.0 || !TYPE_ALIASES.iter().any(|(_, c)| *c == code) {
                    return Err(CommandError::bad_value(format!(
                        "Invalid numerical type code: {f}"
                    )));
                }
                Ok(TypeSel::Code(code))
            }
            None => Err(CommandError::type_mismatch(
                "type must be represented as a number or a string",
            )),
        },
    }
}

fn parse_types(arg: &Bson) -> CmdResult<Vec<TypeSel>> {
    match arg {
        Bson::Array(items) => items.iter().map(parse_type_selector).collect(),
        _ => Ok(vec![parse_type_selector(arg)?]),
    }
}

fn parse_size(arg: &Bson) -> CmdResult<i64> {
    let Some(n) = Number::of(arg) else {
        return Err(CommandError::bad_value("$size needs a number"));
    };
    let f = n.as_f64();
    if f.fract() != 0.0 {
        return Err(CommandError::bad_value(format!(
            "Failed to parse $size. Expected an integer: $size: {f}"
        )));
    }
    if f < 0.0 {
        return Err(CommandError::bad_value(format!(
            "Failed to parse $size. Expected a non-negative number in: $size: {f}"
        )));
    }
    Ok(f as i64)
}

fn parse_mod(arg: &Bson) -> CmdResult<Pred> {
    let Bson::Array(items) = arg else {
        return Err(CommandError::bad_value(
            "malformed mod, needs to be an array",
        ));
    };
    if items.len() < 2 {
        return Err(CommandError::bad_value(
            "malformed mod, not enough elements",
        ));
    }
    if items.len() > 2 {
        return Err(CommandError::bad_value("malformed mod, too many elements"));
    }
    let (Some(d), Some(r)) = (Number::of(&items[0]), Number::of(&items[1])) else {
        return Err(CommandError::bad_value(
            "malformed mod, divisor and remainder must be numbers",
        ));
    };
    let divisor = d.as_f64().trunc() as i64;
    if divisor == 0 {
        return Err(CommandError::bad_value("divisor cannot be 0"));
    }
    Ok(Pred::Mod(divisor, r.as_f64().trunc() as i64))
}

fn parse_all(arg: &Bson) -> CmdResult<Pred> {
    let Bson::Array(items) = arg else {
        return Err(CommandError::bad_value("$all needs an array"));
    };
    if items.is_empty() {
        // The server: an empty $all matches nothing.
        return Ok(Pred::In(Vec::new(), Vec::new()));
    }
    let mut preds = Vec::with_capacity(items.len());
    for item in items {
        match item {
            Bson::Document(d) if d.keys().next().map(String::as_str) == Some("$elemMatch") => {
                preds.push(parse_operators(d)?)
            }
            _ if is_operator_doc(item) => {
                return Err(CommandError::bad_value("no $ expressions in $all"))
            }
            Bson::RegularExpression(re) => {
                preds.push(Pred::Regex(compile_regex(&re.pattern, &re.options)?))
            }
            _ => preds.push(Pred::Eq(item.clone())),
        }
    }
    Ok(Pred::And(preds))
}

fn parse_elem_match(arg: &Bson) -> CmdResult<Pred> {
    let Bson::Document(d) = arg else {
        return Err(CommandError::bad_value("$elemMatch needs an Object"));
    };
    let value_form = d.keys().next().is_some_and(|k| {
        k.starts_with('$') && !matches!(k.as_str(), "$and" | "$or" | "$nor" | "$expr" | "$where")
    });
    if value_form {
        let mut preds = Vec::new();
        match parse_operators(d)? {
            Pred::And(ps) => preds.extend(ps),
            p => preds.push(p),
        }
        Ok(Pred::ElemMatchValue(preds))
    } else {
        Ok(Pred::ElemMatchDoc(Box::new(Matcher::new(d)?)))
    }
}

fn parse_not(arg: &Bson) -> CmdResult<Pred> {
    match arg {
        Bson::RegularExpression(re) => Ok(Pred::Not(Box::new(Pred::Regex(compile_regex(
            &re.pattern,
            &re.options,
        )?)))),
        Bson::Document(d) if d.is_empty() => Err(CommandError::bad_value("$not cannot be empty")),
        Bson::Document(d) if is_operator_doc(arg) => Ok(Pred::Not(Box::new(parse_operators(d)?))),
        Bson::Document(d) => {
            let first = d.keys().next().cloned().unwrap_or_default();
            Err(CommandError::bad_value(format!(
                "unknown operator: {first}"
            )))
        }
        _ => Err(CommandError::bad_value("$not needs a regex or a document")),
    }
}

fn eval_expr(expr: &Expr, doc: &Document) -> bool {
    match expr {
        Expr::And(es) => es.iter().all(|e| eval_expr(e, doc)),
        Expr::Or(es) => es.iter().any(|e| eval_expr(e, doc)),
        Expr::Nor(es) => !es.iter().any(|e| eval_expr(e, doc)),
        Expr::Const(b) => *b,
        Expr::Path(path, pred) => eval_pred(pred, &leaf_candidates(doc, path)),
        Expr::Aggregate(e) => match crate::query::expr::evaluate(e, doc) {
            Ok(Some(v)) => truthy(&v),
            Ok(None) | Err(_) => false,
        },
    }
}

/// Aggregation truthiness: false, null, undefined, missing and numeric zero are false.
fn truthy(v: &Bson) -> bool {
    match v {
        Bson::Boolean(b) => *b,
        Bson::Null | Bson::Undefined => false,
        Bson::Int32(n) => *n != 0,
        Bson::Int64(n) => *n != 0,
        Bson::Double(f) => *f != 0.0,
        Bson::Decimal128(d) => d
            .to_string()
            .trim_start_matches('-')
            .trim_start_matches('0')
            .trim_start_matches('.')
            .trim_start_matches('0')
            .chars()
            .next()
            .is_some_and(|c| c != 'E' && c != 'e'),
        _ => true,
    }
}

/// Whether any of the values found at a path satisfies `pred`.
fn eval_pred(pred: &Pred, candidates: &[Option<&Bson>]) -> bool {
    match pred {
        Pred::And(ps) => ps.iter().all(|p| eval_pred(p, candidates)),
        Pred::Not(p) => !eval_pred(p, candidates),
        Pred::Exists(want) => candidates.iter().any(Option::is_some) == *want,
        Pred::Size(n) => candidates.iter().flatten().any(|v| match v {
            Bson::Array(items) => items.len() as i64 == *n,
            _ => false,
        }),
        Pred::ElemMatchValue(ps) => arrays(candidates).any(|items| {
            items
                .iter()
                .any(|item| ps.iter().all(|p| eval_pred(p, &[Some(item)])))
        }),
        Pred::ElemMatchDoc(m) => arrays(candidates).any(|items| {
            items
                .iter()
                .any(|item| matches!(item, Bson::Document(d) if m.matches(d)))
        }),
        _ => candidates.iter().any(|c| match c {
            None => matches_value(pred, None),
            Some(Bson::Array(items)) => {
                matches_value(pred, *c) || items.iter().any(|item| matches_value(pred, Some(item)))
            }
            Some(v) => matches_value(pred, Some(v)),
        }),
    }
}

fn arrays<'a>(candidates: &'a [Option<&'a Bson>]) -> impl Iterator<Item = &'a Vec<Bson>> + 'a {
    candidates.iter().flatten().filter_map(|v| match v {
        Bson::Array(items) => Some(items),
        _ => None,
    })
}

/// A single (already expanded) value against a value predicate; `None` is a missing field.
fn matches_value(pred: &Pred, value: Option<&Bson>) -> bool {
    match pred {
        Pred::Eq(operand) => equals(operand, value),
        Pred::Cmp(op, operand) => compares(*op, operand, value),
        Pred::In(values, regexes) => {
            values.iter().any(|v| equals(v, value))
                || regexes.iter().any(|re| regex_matches(re, value))
        }
        Pred::Regex(re) => regex_matches(re, value),
        Pred::Type(sels) => value.is_some_and(|v| sels.iter().any(|s| type_selected(*s, v))),
        Pred::Mod(divisor, remainder) => value.and_then(Number::of).is_some_and(|n| {
            let x = match n {
                Number::Int(i) => i,
                Number::Float(f) if f.is_finite() => f.trunc() as i64,
                Number::Float(_) => return false,
            };
            x.wrapping_rem(*divisor) == *remainder
        }),
        _ => eval_pred(pred, &[value]),
    }
}

fn equals(operand: &Bson, value: Option<&Bson>) -> bool {
    match value {
        None => matches!(operand, Bson::Null),
        Some(v) => values_equal(operand, v),
    }
}

fn compares(op: CmpOp, operand: &Bson, value: Option<&Bson>) -> bool {
    let missing_as_null = Bson::Null;
    let v = match value {
        Some(v) => v,
        None if matches!(operand, Bson::Null) => &missing_as_null,
        None => return false,
    };
    let cross_type = matches!(operand, Bson::MinKey | Bson::MaxKey);
    if !cross_type && type_rank(v) != type_rank(operand) {
        return false;
    }
    let ord = compare(v, operand);
    match op {
        CmpOp::Gt => ord == Ordering::Greater,
        CmpOp::Gte => ord != Ordering::Less,
        CmpOp::Lt => ord == Ordering::Less,
        CmpOp::Lte => ord != Ordering::Greater,
    }
}

fn regex_matches(re: &Regex, value: Option<&Bson>) -> bool {
    match value {
        Some(Bson::String(s)) | Some(Bson::Symbol(s)) => re.is_match(s),
        Some(Bson::RegularExpression(r)) => {
            let own = if r.options.is_empty() {
                r.pattern.clone()
            } else {
                format!("(?{}){}", r.options, r.pattern)
            };
            own == re.as_str()
        }
        _ => false,
    }
}

fn type_selected(sel: TypeSel, v: &Bson) -> bool {
    match sel {
        TypeSel::AnyNumber => Number::of(v).is_some(),
        TypeSel::Code(code) => type_code(v) == code,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{doc, Regex as BsonRegex};

    fn m(filter: Document) -> Matcher {
        Matcher::new(&filter).expect("valid filter")
    }

    #[test]
    fn implicit_equality_matches_scalars_array_elements_and_whole_arrays() {
        let f = m(doc! {"a": 1});
        assert!(f.matches(&doc! {"a": 1.0}));
        assert!(f.matches(&doc! {"a": [3, 1]}));
        assert!(!f.matches(&doc! {"a": "1"}));
        let whole = m(doc! {"a": [1, 2]});
        assert!(whole.matches(&doc! {"a": [1, 2]}));
        assert!(whole.matches(&doc! {"a": [[1, 2], 3]}));
        assert!(!whole.matches(&doc! {"a": [2, 1]}));
    }

    #[test]
    fn dotted_paths_traverse_arrays_of_documents() {
        let f = m(doc! {"a.b": 2});
        assert!(f.matches(&doc! {"a": [{"b": 1}, {"b": 2}]}));
        assert!(f.matches(&doc! {"a": {"b": [5, 2]}}));
        assert!(!f.matches(&doc! {"a": [{"b": 1}]}));
        assert!(m(doc! {"a.1": 5}).matches(&doc! {"a": [4, 5]}));
        assert!(m(doc! {"a.0.b": 1}).matches(&doc! {"a": [{"b": 1}]}));
    }

    #[test]
    fn null_matches_missing_and_null_but_not_values() {
        let f = m(doc! {"a": Bson::Null});
        assert!(f.matches(&doc! {}));
        assert!(f.matches(&doc! {"a": Bson::Null}));
        assert!(f.matches(&doc! {"a": [1, Bson::Null]}));
        assert!(!f.matches(&doc! {"a": 0}));
        assert!(m(doc! {"a": {"$ne": Bson::Null}}).matches(&doc! {"a": 1}));
        assert!(!m(doc! {"a": {"$ne": Bson::Null}}).matches(&doc! {"b": 1}));
    }

    #[test]
    fn comparisons_stay_within_type_bracket() {
        let f = m(doc! {"a": {"$gt": 5}});
        assert!(f.matches(&doc! {"a": 6}));
        assert!(f.matches(&doc! {"a": 5.5}));
        assert!(!f.matches(&doc! {"a": "zzz"}));
        assert!(!f.matches(&doc! {}));
        assert!(f.matches(&doc! {"a": [1, 10]}));
        let range = m(doc! {"a": {"$gte": 2, "$lt": 4}});
        assert!(range.matches(&doc! {"a": 2}));
        assert!(!range.matches(&doc! {"a": 4}));
        assert!(m(doc! {"a": {"$lte": "b"}}).matches(&doc! {"a": "a"}));
        assert!(m(doc! {"a": {"$gte": Bson::Null}}).matches(&doc! {}));
    }

    #[test]
    fn in_and_nin_including_regexes() {
        let f = m(
            doc! {"a": {"$in": [1, "x", BsonRegex { pattern: "^ab".into(), options: String::new() }]}},
        );
        assert!(f.matches(&doc! {"a": 1}));
        assert!(f.matches(&doc! {"a": "abc"}));
        assert!(f.matches(&doc! {"a": ["q", "x"]}));
        assert!(!f.matches(&doc! {"a": 2}));
        let nin = m(doc! {"a": {"$nin": [1, 2]}});
        assert!(nin.matches(&doc! {"a": 3}));
        assert!(nin.matches(&doc! {}));
        assert!(!nin.matches(&doc! {"a": [3, 2]}));
        assert!(m(doc! {"a": {"$in": [Bson::Null]}}).matches(&doc! {}));
    }

    #[test]
    fn exists_and_type() {
        assert!(m(doc! {"a": {"$exists": true}}).matches(&doc! {"a": Bson::Null}));
        assert!(!m(doc! {"a": {"$exists": true}}).matches(&doc! {}));
        assert!(m(doc! {"a.b": {"$exists": false}}).matches(&doc! {"a": 1}));
        assert!(m(doc! {"a": {"$type": "string"}}).matches(&doc! {"a": "s"}));
        assert!(m(doc! {"a": {"$type": 16}}).matches(&doc! {"a": 1}));
        assert!(!m(doc! {"a": {"$type": "long"}}).matches(&doc! {"a": 1}));
        assert!(m(doc! {"a": {"$type": "number"}}).matches(&doc! {"a": 1.5}));
        assert!(m(doc! {"a": {"$type": ["bool", "array"]}}).matches(&doc! {"a": []}));
        let err = Matcher::new(&doc! {"a": {"$type": "nope"}}).expect_err("bad alias");
        assert_eq!(err.code, 2);
    }

    #[test]
    fn logical_operators() {
        let or = m(doc! {"$or": [{"a": 1}, {"b": 2}]});
        assert!(or.matches(&doc! {"b": 2}));
        assert!(!or.matches(&doc! {"a": 2}));
        let and = m(doc! {"$and": [{"a": {"$gt": 1}}, {"a": {"$lt": 3}}]});
        assert!(and.matches(&doc! {"a": 2}));
        assert!(!and.matches(&doc! {"a": 3}));
        let nor = m(doc! {"$nor": [{"a": 1}, {"b": 1}]});
        assert!(nor.matches(&doc! {"a": 2}));
        assert!(!nor.matches(&doc! {"b": 1}));
        let not = m(doc! {"a": {"$not": {"$gt": 5}}});
        assert!(not.matches(&doc! {"a": 3}));
        assert!(not.matches(&doc! {"a": "x"}));
        assert!(!not.matches(&doc! {"a": 6}));
        assert!(m(doc! {"$comment": "hi", "a": 1}).matches(&doc! {"a": 1}));
    }

    #[test]
    fn regex_operator_and_literal() {
        let f = m(doc! {"name": {"$regex": "^al", "$options": "i"}});
        assert!(f.matches(&doc! {"name": "Alice"}));
        assert!(!f.matches(&doc! {"name": "bob"}));
        let lit = m(doc! {"name": BsonRegex { pattern: "b$".into(), options: String::new() }});
        assert!(lit.matches(&doc! {"name": ["x", "bob"]}));
        let not =
            m(doc! {"name": {"$not": BsonRegex { pattern: "^a".into(), options: String::new() }}});
        assert!(not.matches(&doc! {"name": "bob"}));
    }

    #[test]
    fn elem_match_value_and_document_forms() {
        let v = m(doc! {"a": {"$elemMatch": {"$gt": 1, "$lt": 3}}});
        assert!(v.matches(&doc! {"a": [0, 2]}));
        assert!(!v.matches(&doc! {"a": [0, 5]}));
        assert!(!v.matches(&doc! {"a": 2}));
        let d = m(doc! {"a": {"$elemMatch": {"x": 1, "y": {"$gt": 1}}}});
        assert!(d.matches(&doc! {"a": [{"x": 1, "y": 2}]}));
        assert!(!d.matches(&doc! {"a": [{"x": 1, "y": 0}, {"x": 2, "y": 2}]}));
    }

    #[test]
    fn size_all_mod() {
        assert!(m(doc! {"a": {"$size": 2}}).matches(&doc! {"a": [1, 2]}));
        assert!(!m(doc! {"a": {"$size": 2}}).matches(&doc! {"a": [1]}));
        let all = m(doc! {"a": {"$all": [1, 3]}});
        assert!(all.matches(&doc! {"a": [3, 2, 1]}));
        assert!(!all.matches(&doc! {"a": [1, 2]}));
        assert!(!m(doc! {"a": {"$all": []}}).matches(&doc! {"a": [1]}));
        let md = m(doc! {"a": {"$mod": [4, 1]}});
        assert!(md.matches(&doc! {"a": 5}));
        assert!(md.matches(&doc! {"a": 9.7}));
        assert!(!md.matches(&doc! {"a": 6}));
        assert_eq!(
            Matcher::new(&doc! {"a": {"$mod": [0, 1]}})
                .expect_err("zero")
                .code,
            2
        );
        assert_eq!(
            Matcher::new(&doc! {"a": {"$mod": [1]}})
                .expect_err("short")
                .code,
            2
        );
    }

    #[test]
    fn unknown_operators_are_bad_value() {
        let err = Matcher::new(&doc! {"a": {"$foo": 1}}).expect_err("unknown");
        assert_eq!(err.code, 2);
        assert_eq!(err.errmsg, "unknown operator: $foo");
        let err = Matcher::new(&doc! {"$foo": 1}).expect_err("unknown top");
        assert_eq!(err.errmsg, "unknown top level operator: $foo");
        assert_eq!(Matcher::new(&doc! {"$or": []}).expect_err("empty").code, 2);
        assert_eq!(
            Matcher::new(&doc! {"a": {"$in": 1}}).expect_err("in").code,
            2
        );
    }

    #[test]
    fn id_sets_are_recognised_only_when_exact() {
        let ids = |f: Document| {
            Matcher::new(&f)
                .expect("filter")
                .id_set()
                .map(<[Bson]>::to_vec)
        };
        assert_eq!(ids(doc! {"_id": 5}), Some(vec![Bson::Int32(5)]));
        assert_eq!(
            ids(doc! {"_id": {"$in": [1, "a"]}}),
            Some(vec![Bson::Int32(1), Bson::String("a".into())])
        );
        assert_eq!(
            ids(doc! {"$or": [{"_id": 1}, {"_id": {"k": 2}}]}),
            Some(vec![Bson::Int32(1), Bson::Document(doc! {"k": 2})])
        );
        assert_eq!(ids(doc! {"_id": {"$in": [1, [2]]}}), None);
        assert_eq!(ids(doc! {"_id": {"$in": [1], "$nin": [2]}}), None);
        assert_eq!(ids(doc! {"$or": [{"_id": 1}, {"a": 2}]}), None);
        assert_eq!(ids(doc! {"$or": [{"_id": {"$gt": 1}}]}), None);
        assert_eq!(ids(doc! {"_id": 1, "a": 1}), None);
    }

    #[test]
    fn id_equality_fast_path() {
        assert_eq!(m(doc! {"_id": 5}).id_set(), Some(&[Bson::Int32(5)][..]));
        assert_eq!(m(doc! {"_id": {"$gt": 5}}).id_set(), None);
        assert_eq!(m(doc! {"_id": 5, "a": 1}).id_set(), None);
        assert_eq!(
            m(doc! {"_id": {"x": 1}}).id_set(),
            Some(&[Bson::Document(doc! {"x": 1})][..])
        );
    }

    #[test]
    fn embedded_document_equality_is_exact_and_ordered() {
        let f = m(doc! {"a": {"x": 1, "y": 2}});
        assert!(f.matches(&doc! {"a": {"x": 1, "y": 2}}));
        assert!(!f.matches(&doc! {"a": {"y": 2, "x": 1}}));
        assert!(!f.matches(&doc! {"a": {"x": 1, "y": 2, "z": 3}}));
    }
}
