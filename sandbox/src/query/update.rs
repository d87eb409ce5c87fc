//! Update documents: replacements, operator updates (`$set`, `$inc`, `$push`, ..., with
//! the positional `$`, `$[]` and `$[<identifier>]` operators) and pipeline updates; upsert
//! seeding. How each kind is logged is in [`super::update_log`].

use std::cmp::Ordering;

use bson::{Bson, Document};

use super::aggregate::apply_document_stage;
use super::array_filters::{filtered_identifier, ArrayFilters};
use super::matcher::{is_operator_doc, type_name, Matcher};
use super::numeric::{add, is_number, multiply, zero_like};
use super::order::{compare, values_equal};
use super::sort::SortSpec;
use super::update_log::{operator_log, pipeline_log, UpdateLog, WrittenPath};
use super::write_path::{get_parts, remove_parts, set_parts, split_path};
use crate::error::{codes, CmdResult, CommandError};

/// Kept at its former path for the change-stream and storage code.
pub use super::update_log::UpdateDescription;

/// A parsed update argument.
#[derive(Clone, Debug)]
pub enum UpdateSpec {
    Replacement(Document),
    Operators(Document),
    Pipeline(Vec<Document>),
}

const OPERATORS: &[&str] = &[
    "$set",
    "$unset",
    "$inc",
    "$mul",
    "$min",
    "$max",
    "$rename",
    "$push",
    "$pull",
    "$pullAll",
    "$addToSet",
    "$pop",
    "$currentDate",
    "$setOnInsert",
    "$bit",
];

const PIPELINE_STAGES: &[&str] = &[
    "$set",
    "$addFields",
    "$unset",
    "$project",
    "$replaceRoot",
    "$replaceWith",
];

/// One operator applied to one (resolved) path.
struct FieldOp<'a> {
    op: &'a str,
    parts: Vec<String>,
    arg: &'a Bson,
}

impl UpdateSpec {
    /// Classifies and validates an update: `$`-keyed documents are operator updates, other
    /// documents replacements, arrays pipelines.
    pub fn parse(update: &Bson) -> CmdResult<UpdateSpec> {
        UpdateSpec::parse_owned(update.clone())
    }

    /// [`UpdateSpec::parse`] taking the update by value, so a replacement document (the
    /// whole new document) is kept without a copy.
    pub fn parse_owned(update: Bson) -> CmdResult<UpdateSpec> {
        let is_operators = is_operator_doc(&update);
        match update {
            Bson::Document(d) if is_operators => {
                for (op, arg) in &d {
                    if !OPERATORS.contains(&op.as_str()) {
                        return Err(CommandError::failed_to_parse(format!(
                            "Unknown modifier: {op}. Expected a valid update modifier or pipeline-style update specified as an array"
                        )));
                    }
                    if !matches!(arg, Bson::Document(_)) {
                        return Err(CommandError::failed_to_parse(format!(
                            "Modifiers operate on fields but we found type {} instead. For example: {{$mod: {{<field>: ...}}}} not {{{op}: {arg}}}",
                            type_name_long(arg)
                        )));
                    }
                }
                Ok(UpdateSpec::Operators(d))
            }
            Bson::Document(d) => {
                check_replacement_fields(&d)?;
                Ok(UpdateSpec::Replacement(d))
            }
            Bson::Array(items) => {
                let mut stages = Vec::with_capacity(items.len());
                for item in items {
                    let Bson::Document(stage) = item else {
                        return Err(CommandError::failed_to_parse(
                            "Each element of the 'pipeline' array must be an object",
                        ));
                    };
                    let name = stage.keys().next().map(String::as_str).unwrap_or("");
                    if !PIPELINE_STAGES.contains(&name) {
                        return Err(CommandError::new(
                            codes::INVALID_OPTIONS,
                            format!("{name} is not allowed to be used within an update"),
                        ));
                    }
                    stages.push(stage);
                }
                Ok(UpdateSpec::Pipeline(stages))
            }
            _ => Err(CommandError::failed_to_parse(
                "Update argument must be either an object or an array",
            )),
        }
    }

    /// Checks the update against its `arrayFilters` before any document is touched: every
    /// `$[<identifier>]` needs a filter and every filter must be used; pipelines take none.
    pub fn check_array_filters(&self, filters: &ArrayFilters) -> CmdResult<()> {
        match self {
            UpdateSpec::Operators(ops) => {
                let paths = ops
                    .values()
                    .filter_map(Bson::as_document)
                    .flat_map(|fields| fields.keys().map(String::as_str));
                filters.check_usage(paths, ops)
            }
            UpdateSpec::Pipeline(_) if !filters.is_empty() => Err(CommandError::failed_to_parse(
                "arrayFilters may not be specified for pipeline-style updates",
            )),
            UpdateSpec::Replacement(r) => filters.check_usage(std::iter::empty(), r),
            UpdateSpec::Pipeline(_) => Ok(()),
        }
    }

    /// Applies the update to `doc`. `query` is the filter that selected it (for the
    /// positional `$` operator); `is_upsert_insert` enables `$setOnInsert`.
    pub fn apply(
        &self,
        doc: &Document,
        query: &Document,
        is_upsert_insert: bool,
    ) -> CmdResult<Document> {
        self.apply_logged(doc, query, &ArrayFilters::none(), is_upsert_insert)
            .map(|(d, _)| d)
    }

    /// [`UpdateSpec::apply`] with `arrayFilters`, also returning how the server logs the
    /// change (a replacement, or a delta computed the way this kind of update computes it).
    pub fn apply_logged(
        &self,
        doc: &Document,
        query: &Document,
        filters: &ArrayFilters,
        is_upsert_insert: bool,
    ) -> CmdResult<(Document, UpdateLog)> {
        match self {
            UpdateSpec::Replacement(r) => Ok((replace(doc, r)?, UpdateLog::Replacement)),
            UpdateSpec::Operators(ops) => {
                let (after, written) = apply_operators(doc, ops, query, filters, is_upsert_insert)?;
                let after = keep_id(doc, after)?;
                let log = operator_log(doc, &after, &written);
                Ok((after, log))
            }
            UpdateSpec::Pipeline(stages) => {
                let mut cur = doc.clone();
                for stage in stages {
                    cur = apply_document_stage(&cur, stage)?;
                }
                // A pipeline whose result lacks `_id` keeps the document's own.
                if let (Some(id), false) = (doc.get("_id"), cur.contains_key("_id")) {
                    cur.insert("_id", id.clone());
                }
                let after = keep_id(doc, cur)?;
                let log = pipeline_log(doc, &after);
                Ok((after, log))
            }
        }
    }

    /// [`UpdateSpec::apply_logged`] for the last application of this spec: a
    /// replacement's document is moved into the result instead of copied (and left empty
    /// in `self`).
    pub fn apply_last(
        &mut self,
        doc: &Document,
        query: &Document,
        filters: &ArrayFilters,
        is_upsert_insert: bool,
    ) -> CmdResult<(Document, UpdateLog)> {
        match self {
            UpdateSpec::Replacement(r) => Ok((
                replace_owned(doc, std::mem::take(r))?,
                UpdateLog::Replacement,
            )),
            _ => self.apply_logged(doc, query, filters, is_upsert_insert),
        }
    }
}

fn type_name_long(v: &Bson) -> &'static str {
    match type_name(v) {
        "bool" => "bool",
        "int" => "int",
        other => other,
    }
}

fn check_replacement_fields(d: &Document) -> CmdResult<()> {
    for key in d.keys() {
        if key.starts_with('$') {
            return Err(CommandError::new(
                codes::DOLLAR_PREFIXED_FIELD_NAME,
                format!("The dollar ($) prefixed field '{key}' in '{key}' is not allowed in the context of an update's replacement document. Consider using an aggregation pipeline with $replaceWith."),
            ));
        }
    }
    Ok(())
}

fn immutable_id() -> CommandError {
    CommandError::new(
        codes::IMMUTABLE_FIELD,
        "Performing an update on the path '_id' would modify the immutable field '_id'",
    )
}

/// The replacement document with the original `_id` first.
fn replace(doc: &Document, replacement: &Document) -> CmdResult<Document> {
    let mut out = Document::new();
    match (doc.get("_id"), replacement.get("_id")) {
        (Some(old), Some(new)) if old != new => {
            return Err(CommandError::new(
                codes::IMMUTABLE_FIELD,
                format!("After applying the update, the (immutable) field '_id' was found to have been altered to _id: {new}"),
            ))
        }
        (Some(id), _) | (None, Some(id)) => {
            out.insert("_id", id.clone());
        }
        (None, None) => {}
    }
    for (k, v) in replacement {
        if k != "_id" {
            out.insert(k.clone(), v.clone());
        }
    }
    Ok(out)
}

/// [`replace`] consuming the replacement: same result, without copying its values.
fn replace_owned(doc: &Document, mut replacement: Document) -> CmdResult<Document> {
    let id = match (doc.get("_id"), replacement.get("_id")) {
        (Some(old), Some(new)) if old != new => {
            return Err(CommandError::new(
                codes::IMMUTABLE_FIELD,
                format!("After applying the update, the (immutable) field '_id' was found to have been altered to _id: {new}"),
            ))
        }
        // The original `_id` wins (values that compare equal may differ, e.g. 0.0 and -0.0).
        (Some(id), _) => Some(id.clone()),
        (None, _) => None,
    };
    if replacement.keys().next().map(String::as_str) == Some("_id") {
        if let (Some(id), Some(slot)) = (id, replacement.get_mut("_id")) {
            *slot = id;
        }
        return Ok(replacement);
    }
    let id = match id {
        Some(id) => Some(id),
        None => replacement.remove("_id"),
    };
    let mut out = Document::new();
    if let Some(id) = id {
        out.insert("_id", id);
    }
    for (k, v) in replacement {
        if k != "_id" {
            out.insert(k, v);
        }
    }
    Ok(out)
}

/// Rejects changes to an existing `_id` and moves `_id` to the front.
fn keep_id(before: &Document, mut after: Document) -> CmdResult<Document> {
    if let Some(old) = before.get("_id") {
        if after.get("_id") != Some(old) {
            return Err(immutable_id());
        }
    }
    if after.keys().next().map(String::as_str) != Some("_id") {
        if let Some(id) = after.remove("_id") {
            let mut out = Document::new();
            out.insert("_id", id);
            out.extend(after);
            return Ok(out);
        }
    }
    Ok(after)
}

/// Applies operators; returns the new document and the paths written (sorted), for the
/// log.
fn apply_operators(
    doc: &Document,
    ops: &Document,
    query: &Document,
    filters: &ArrayFilters,
    is_upsert_insert: bool,
) -> CmdResult<(Document, Vec<WrittenPath>)> {
    let mut field_ops = Vec::new();
    for (op, arg) in ops {
        let Bson::Document(fields) = arg else {
            continue;
        };
        for (path, value) in fields {
            validate_path(path)?;
            for parts in resolve_positional(doc, path, query, filters)? {
                field_ops.push(FieldOp {
                    op,
                    parts,
                    arg: value,
                });
            }
        }
    }
    check_conflicts(&field_ops)?;
    field_ops.sort_by(|a, b| a.parts.cmp(&b.parts));
    let mut out = doc.clone();
    let mut written = Vec::with_capacity(field_ops.len() + 1);
    for fop in &field_ops {
        apply_one(&mut out, fop, is_upsert_insert)?;
        if fop.op == "$rename" {
            if let Bson::String(to) = fop.arg {
                written.push(WrittenPath {
                    parts: split_path(to),
                    append_only: false,
                });
            }
        }
        written.push(WrittenPath {
            parts: fop.parts.clone(),
            append_only: fop.op == "$push" && is_plain_append(fop.arg),
        });
    }
    written.sort_by(|a, b| a.parts.cmp(&b.parts));
    Ok((out, written))
}

/// A `$push` that only appends (no `$position`, `$sort` or `$slice`): the server logs
/// the new elements, not the whole array.
fn is_plain_append(arg: &Bson) -> bool {
    match arg {
        Bson::Document(d) if d.contains_key("$each") => !["$position", "$sort", "$slice"]
            .iter()
            .any(|m| d.contains_key(*m)),
        _ => true,
    }
}

fn validate_path(path: &str) -> CmdResult<()> {
    if path.is_empty() || path.split('.').any(str::is_empty) {
        return Err(CommandError::new(
            56,
            format!("The update path '{path}' contains an empty field name, which is not allowed."),
        ));
    }
    Ok(())
}

/// Expands `$` (first array element matched by the query), `$[]` (every element) and
/// `$[<identifier>]` (every element its array filter matches), at any depth.
fn resolve_positional(
    doc: &Document,
    path: &str,
    query: &Document,
    filters: &ArrayFilters,
) -> CmdResult<Vec<Vec<String>>> {
    let parts = split_path(path);
    if parts.iter().filter(|p| p.as_str() == "$").count() > 1 {
        return Err(CommandError::bad_value(format!(
            "Too many positional (i.e. '$') elements found in path '{path}'"
        )));
    }
    let mut resolved = vec![Vec::new()];
    for part in &parts {
        let mut next = Vec::new();
        for prefix in resolved {
            match part.as_str() {
                "$" => {
                    let idx = positional_index(doc, &prefix, query)?;
                    let mut p = prefix.clone();
                    p.push(idx.to_string());
                    next.push(p);
                }
                p if p == "$[]" || filtered_identifier(p).is_some() => {
                    let filter = match filtered_identifier(p) {
                        Some(id) => Some((id, filters.get(id, path)?)),
                        None => None,
                    };
                    let items = array_at(doc, &prefix)?;
                    for (i, item) in items.iter().enumerate() {
                        let selected =
                            filter.is_none_or(|(id, m)| ArrayFilters::element_matches(m, id, item));
                        if selected {
                            let mut p = prefix.clone();
                            p.push(i.to_string());
                            next.push(p);
                        }
                    }
                }
                _ => {
                    let mut p = prefix.clone();
                    p.push(part.clone());
                    next.push(p);
                }
            }
        }
        resolved = next;
    }
    Ok(resolved)
}

/// The array an all-positional or filtered-positional component applies to.
fn array_at<'a>(doc: &'a Document, prefix: &[String]) -> CmdResult<&'a [Bson]> {
    match get_parts(doc, prefix) {
        Some(Bson::Array(items)) => Ok(items),
        Some(other) => Err(CommandError::bad_value(format!(
            "Cannot apply array updates to non-array element {}: {other}",
            prefix.last().map(String::as_str).unwrap_or("")
        ))),
        None => Err(CommandError::bad_value(format!(
            "The path '{}' must exist in the document in order to apply array updates.",
            prefix.join(".")
        ))),
    }
}

fn positional_index(doc: &Document, prefix: &[String], query: &Document) -> CmdResult<usize> {
    let not_found = || {
        CommandError::bad_value(
            "The positional operator did not find the match needed from the query.",
        )
    };
    let Some(Bson::Array(items)) = get_parts(doc, prefix) else {
        return Err(not_found());
    };
    let prefix_path = prefix.join(".");
    if !query_mentions(query, &prefix_path) {
        return Err(not_found());
    }
    let matcher = Matcher::new(query)?;
    for (i, item) in items.iter().enumerate() {
        let mut probe = doc.clone();
        set_parts(&mut probe, prefix, Bson::Array(vec![item.clone()]))?;
        if matcher.matches(&probe) {
            return Ok(i);
        }
    }
    Err(not_found())
}

fn query_mentions(query: &Document, prefix: &str) -> bool {
    query.iter().any(|(k, v)| match (k.as_str(), v) {
        ("$and" | "$or" | "$nor", Bson::Array(items)) => items.iter().any(|i| match i {
            Bson::Document(d) => query_mentions(d, prefix),
            _ => false,
        }),
        _ => {
            k == prefix
                || k.strip_prefix(prefix)
                    .is_some_and(|rest| rest.starts_with('.'))
        }
    })
}

fn check_conflicts(ops: &[FieldOp]) -> CmdResult<()> {
    let mut paths: Vec<&[String]> = Vec::with_capacity(ops.len());
    let mut rename_targets = Vec::new();
    for fop in ops {
        if fop.op == "$rename" {
            if let Bson::String(to) = fop.arg {
                let target = split_path(to);
                if target != fop.parts {
                    rename_targets.push(target);
                }
            }
        }
    }
    paths.extend(ops.iter().map(|f| f.parts.as_slice()));
    paths.extend(rename_targets.iter().map(Vec::as_slice));
    for (i, a) in paths.iter().enumerate() {
        for b in &paths[i + 1..] {
            let n = a.len().min(b.len());
            if a[..n] == b[..n] {
                let (shorter, longer) = if a.len() <= b.len() { (a, b) } else { (b, a) };
                return Err(CommandError::new(
                    codes::CONFLICTING_UPDATE_OPERATORS,
                    format!(
                        "Updating the path '{}' would create a conflict at '{}'",
                        longer.join("."),
                        shorter.join(".")
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn field_doc(parts: &[String], v: &Bson) -> String {
    format!("{{{}: {}}}", parts.join("."), v)
}

fn id_desc(doc: &Document) -> String {
    match doc.get("_id") {
        Some(id) => format!("{{_id: {id}}}"),
        None => "{}".to_string(),
    }
}

fn apply_one(doc: &mut Document, fop: &FieldOp, is_upsert_insert: bool) -> CmdResult<()> {
    let parts = &fop.parts;
    let current = get_parts(doc, parts).cloned();
    let new_value = match fop.op {
        "$set" => Some(fop.arg.clone()),
        "$setOnInsert" => is_upsert_insert.then(|| fop.arg.clone()),
        "$unset" => {
            remove_parts(doc, parts);
            None
        }
        "$inc" | "$mul" => Some(arithmetic(fop, current.as_ref(), doc)?),
        "$min" | "$max" => {
            let wanted = if fop.op == "$min" {
                Ordering::Less
            } else {
                Ordering::Greater
            };
            match &current {
                Some(cur) if compare(fop.arg, cur) != wanted => None,
                _ => Some(fop.arg.clone()),
            }
        }
        "$rename" => {
            rename(doc, parts, fop.arg, current)?;
            None
        }
        "$push" => Some(push(parts, current, fop.arg, doc)?),
        "$addToSet" => Some(add_to_set(parts, current, fop.arg)?),
        "$pop" => pop(parts, current, fop.arg)?,
        "$pull" => pull(current, |item| pull_condition_matches(fop.arg, item))?,
        "$pullAll" => {
            let Bson::Array(values) = fop.arg else {
                return Err(CommandError::bad_value(format!(
                    "$pullAll requires an array argument but was given a {}",
                    type_name(fop.arg)
                )));
            };
            pull(current, |item| values.iter().any(|v| values_equal(v, item)))?
        }
        "$currentDate" => Some(current_date(parts, fop.arg)?),
        "$bit" => Some(bitwise(parts, current.as_ref(), fop.arg)?),
        other => {
            return Err(CommandError::failed_to_parse(format!(
                "Unknown modifier: {other}"
            )));
        }
    };
    match new_value {
        Some(v) => set_parts(doc, parts, v),
        None => Ok(()),
    }
}

/// A numeric combination (`add`, `multiply`) returning `None` for non-numbers.
type NumericOp = fn(&Bson, &Bson) -> Option<Bson>;

fn arithmetic(fop: &FieldOp, current: Option<&Bson>, doc: &Document) -> CmdResult<Bson> {
    let (verb, apply): (&str, NumericOp) = if fop.op == "$inc" {
        ("increment", add)
    } else {
        ("multiply", multiply)
    };
    if !is_number(fop.arg) {
        return Err(CommandError::type_mismatch(format!(
            "Cannot {verb} with non-numeric argument: {}",
            field_doc(&fop.parts, fop.arg)
        )));
    }
    match current {
        None if fop.op == "$inc" => Ok(fop.arg.clone()),
        None => Ok(zero_like(fop.arg)),
        Some(cur) => apply(cur, fop.arg).ok_or_else(|| {
            CommandError::type_mismatch(format!(
                "Cannot apply {} to a value of non-numeric type. {} has the field '{}' of non-numeric type {}",
                fop.op,
                id_desc(doc),
                fop.parts.last().map(String::as_str).unwrap_or(""),
                type_name(cur)
            ))
        }),
    }
}

fn rename(doc: &mut Document, from: &[String], to: &Bson, current: Option<Bson>) -> CmdResult<()> {
    let Bson::String(to) = to else {
        return Err(CommandError::bad_value(format!(
            "The 'to' field for $rename must be a string: {}",
            field_doc(from, to)
        )));
    };
    let to_parts = split_path(to);
    if to_parts.as_slice() == from {
        return Err(CommandError::bad_value(format!(
            "The source and target field for $rename must differ: {}: \"{to}\"",
            from.join(".")
        )));
    }
    if to.contains('$') {
        return Err(CommandError::bad_value(format!(
            "The destination field for $rename may not be dynamic: {to}"
        )));
    }
    let Some(value) = current else {
        return Ok(());
    };
    remove_parts(doc, from);
    set_parts(doc, &to_parts, value)
}

fn array_or_new(parts: &[String], current: Option<Bson>, doc: &Document) -> CmdResult<Vec<Bson>> {
    match current {
        None => Ok(Vec::new()),
        Some(Bson::Array(items)) => Ok(items),
        Some(other) => Err(CommandError::bad_value(format!(
            "The field '{}' must be an array but is of type {} in document {}",
            parts.join("."),
            type_name(&other),
            id_desc(doc)
        ))),
    }
}

fn int_arg(v: &Bson, what: &str) -> CmdResult<i64> {
    match v {
        Bson::Int32(i) => Ok(i64::from(*i)),
        Bson::Int64(i) => Ok(*i),
        Bson::Double(d) if d.fract() == 0.0 => Ok(*d as i64),
        _ => Err(CommandError::bad_value(format!(
            "The value for {what} must be an integer value but was given type: {}",
            type_name(v)
        ))),
    }
}

fn push(parts: &[String], current: Option<Bson>, arg: &Bson, doc: &Document) -> CmdResult<Bson> {
    let mut items = array_or_new(parts, current, doc)?;
    let modifiers = match arg {
        Bson::Document(d) if d.contains_key("$each") => d,
        _ => {
            items.push(arg.clone());
            return Ok(Bson::Array(items));
        }
    };
    for key in modifiers.keys() {
        if !matches!(key.as_str(), "$each" | "$slice" | "$sort" | "$position") {
            return Err(CommandError::bad_value(format!(
                "Unrecognized clause in $push: {key}"
            )));
        }
    }
    let each = match modifiers.get("$each") {
        Some(Bson::Array(each)) => each.clone(),
        Some(other) => {
            return Err(CommandError::bad_value(format!(
                "The argument to $each in $push must be an array but it was of type: {}",
                type_name(other)
            )))
        }
        None => Vec::new(),
    };
    let position = match modifiers.get("$position") {
        Some(p) => {
            let p = int_arg(p, "$position")?;
            let len = items.len() as i64;
            if p < 0 {
                (len + p).max(0) as usize
            } else {
                p.min(len) as usize
            }
        }
        None => items.len(),
    };
    items.splice(position..position, each);
    if let Some(spec) = modifiers.get("$sort") {
        sort_array(&mut items, spec)?;
    }
    if let Some(limit) = modifiers.get("$slice") {
        let n = int_arg(limit, "$slice")?;
        let len = items.len() as i64;
        if n >= 0 {
            items.truncate(n as usize);
        } else if -n < len {
            items.drain(..(len + n) as usize);
        }
    }
    Ok(Bson::Array(items))
}

fn sort_array(items: &mut [Bson], spec: &Bson) -> CmdResult<()> {
    match spec {
        Bson::Document(fields) => {
            let sort = SortSpec::new(fields)?;
            let empty = Document::new();
            items.sort_by(|a, b| {
                let da = if let Bson::Document(d) = a { d } else { &empty };
                let db = if let Bson::Document(d) = b { d } else { &empty };
                sort.compare(da, db)
            });
        }
        _ => match int_arg(spec, "$sort") {
            Ok(1) => items.sort_by(compare),
            Ok(-1) => items.sort_by(|a, b| compare(b, a)),
            _ => return Err(CommandError::bad_value("The $sort is invalid: use 1/-1 to sort the whole element, or {field:1/-1} to sort embedded fields")),
        },
    }
    Ok(())
}

fn add_to_set(parts: &[String], current: Option<Bson>, arg: &Bson) -> CmdResult<Bson> {
    let mut items = match current {
        None => Vec::new(),
        Some(Bson::Array(items)) => items,
        Some(other) => {
            return Err(CommandError::bad_value(format!(
                "Cannot apply $addToSet to non-array field. Field named '{}' has non-array type {}",
                parts.last().map(String::as_str).unwrap_or(""),
                type_name(&other)
            )))
        }
    };
    let candidates = match arg {
        Bson::Document(d) if d.keys().next().map(String::as_str) == Some("$each") => {
            match d.get("$each") {
                Some(Bson::Array(each)) => each.clone(),
                Some(other) => {
                    return Err(CommandError::type_mismatch(format!(
                        "The argument to $each in $addToSet must be an array but it was of type {}",
                        type_name(other)
                    )))
                }
                None => Vec::new(),
            }
        }
        _ => vec![arg.clone()],
    };
    for c in candidates {
        if !items.iter().any(|i| values_equal(i, &c)) {
            items.push(c);
        }
    }
    Ok(Bson::Array(items))
}

fn pop(parts: &[String], current: Option<Bson>, arg: &Bson) -> CmdResult<Option<Bson>> {
    let from_front = match super::numeric::as_f64(arg) {
        Some(1.0) => false,
        Some(-1.0) => true,
        _ => {
            return Err(CommandError::failed_to_parse(format!(
                "$pop expects 1 or -1, found: {arg}"
            )))
        }
    };
    match current {
        None => Ok(None),
        Some(Bson::Array(mut items)) => {
            if items.is_empty() {
                return Ok(None);
            }
            if from_front {
                items.remove(0);
            } else {
                items.pop();
            }
            Ok(Some(Bson::Array(items)))
        }
        Some(other) => Err(CommandError::type_mismatch(format!(
            "Path '{}' contains an element of non-array type '{}'",
            parts.join("."),
            type_name(&other)
        ))),
    }
}

fn pull(current: Option<Bson>, remove: impl Fn(&Bson) -> bool) -> CmdResult<Option<Bson>> {
    match current {
        None => Ok(None),
        Some(Bson::Array(items)) => Ok(Some(Bson::Array(
            items.into_iter().filter(|i| !remove(i)).collect(),
        ))),
        Some(_) => Err(CommandError::bad_value(
            "Cannot apply $pull to a non-array value",
        )),
    }
}

/// `$pull` conditions: operator documents test each element as a value, plain documents
/// are queries on document elements, anything else is an equality (or regex) test.
fn pull_condition_matches(cond: &Bson, item: &Bson) -> bool {
    match cond {
        Bson::Document(q) if !is_operator_doc(cond) => match (item, Matcher::new(q)) {
            (Bson::Document(d), Ok(m)) => m.matches(d),
            _ => false,
        },
        Bson::Document(_) | Bson::RegularExpression(_) => {
            let mut filter = Document::new();
            filter.insert("v", cond.clone());
            let mut probe = Document::new();
            probe.insert("v", item.clone());
            Matcher::new(&filter)
                .map(|m| m.matches(&probe))
                .unwrap_or(false)
        }
        _ => values_equal(cond, item),
    }
}

fn current_date(parts: &[String], arg: &Bson) -> CmdResult<Bson> {
    let now = bson::DateTime::now();
    let as_timestamp = match arg {
        Bson::Boolean(_) => false,
        Bson::Document(d) => match d.get("$type") {
            Some(Bson::String(t)) if t == "date" => false,
            Some(Bson::String(t)) if t == "timestamp" => true,
            _ => return Err(CommandError::bad_value("The '$type' string field is required to be 'date' or 'timestamp': {$currentDate: {field : {$type: 'date'}}}")),
        },
        _ => {
            return Err(CommandError::bad_value(format!(
                "{} is not valid type for $currentDate. Please use a boolean ('true') or a $type expression ({{$type: 'timestamp/date'}}).",
                field_doc(parts, arg)
            )))
        }
    };
    Ok(if as_timestamp {
        let secs = (now.timestamp_millis() / 1000) as u32;
        Bson::Timestamp(bson::Timestamp {
            time: secs,
            increment: 1,
        })
    } else {
        Bson::DateTime(now)
    })
}

fn bitwise(parts: &[String], current: Option<&Bson>, arg: &Bson) -> CmdResult<Bson> {
    let Bson::Document(ops) = arg else {
        return Err(CommandError::bad_value(format!(
            "The $bit modifier is not compatible with a {}.",
            type_name(arg)
        )));
    };
    let mut acc = current.cloned().unwrap_or(Bson::Int32(0));
    for (op, operand) in ops {
        let (a, b) = match (&acc, operand) {
            (Bson::Int32(x), Bson::Int32(y)) => (i64::from(*x), i64::from(*y)),
            (Bson::Int32(x), Bson::Int64(y)) => (i64::from(*x), *y),
            (Bson::Int64(x), Bson::Int32(y)) => (*x, i64::from(*y)),
            (Bson::Int64(x), Bson::Int64(y)) => (*x, *y),
            _ => {
                return Err(CommandError::bad_value(format!(
                    "Cannot apply $bit to a value of non-integral type. {} is not an integer",
                    field_doc(parts, &acc)
                )))
            }
        };
        let r = match op.as_str() {
            "and" => a & b,
            "or" => a | b,
            "xor" => a ^ b,
            _ => {
                return Err(CommandError::bad_value(format!(
                    "The $bit modifier only supports 'and', 'or', and 'xor', not '{op}'"
                )))
            }
        };
        acc = if matches!((&acc, operand), (Bson::Int32(_), Bson::Int32(_))) {
            Bson::Int32(r as i32)
        } else {
            Bson::Int64(r)
        };
    }
    Ok(acc)
}

/// The document an upsert starts from: the filter's equality conditions (including those
/// inside `$and` and `$eq`), with dotted paths expanded into sub-documents, `_id` first.
pub fn upsert_seed(query: &Document) -> Document {
    let mut out = Document::new();
    seed_from(query, &mut out);
    if let Some(id) = out.remove("_id") {
        let mut with_id = Document::new();
        with_id.insert("_id", id);
        with_id.extend(out);
        return with_id;
    }
    out
}

fn seed_from(query: &Document, out: &mut Document) {
    for (key, value) in query {
        if key == "$and" {
            if let Bson::Array(items) = value {
                for item in items {
                    if let Bson::Document(d) = item {
                        seed_from(d, out);
                    }
                }
            }
            continue;
        }
        if key.starts_with('$') {
            continue;
        }
        let seed_value = match value {
            Bson::Document(ops) if is_operator_doc(value) => match (ops.get("$eq"), ops.get("$in"))
            {
                (Some(v), _) => Some(v.clone()),
                (None, Some(Bson::Array(one))) if one.len() == 1 => Some(one[0].clone()),
                _ => None,
            },
            Bson::RegularExpression(_) => None,
            v => Some(v.clone()),
        };
        if let Some(v) = seed_value {
            // A conflicting or unviable path is simply not seeded.
            let _ = set_parts(out, &split_path(key), v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    fn update(d: Document, u: Document) -> CmdResult<Document> {
        UpdateSpec::parse(&Bson::Document(u))?.apply(&d, &doc! {}, false)
    }

    fn ok(d: Document, u: Document) -> Document {
        update(d, u).expect("update applies")
    }

    fn code(d: Document, u: Document) -> i32 {
        update(d, u).expect_err("update fails").code
    }

    #[test]
    fn parse_classifies_updates() {
        assert!(matches!(
            UpdateSpec::parse(&Bson::Document(doc! {"$set": {"a": 1}})),
            Ok(UpdateSpec::Operators(_))
        ));
        assert!(matches!(
            UpdateSpec::parse(&Bson::Document(doc! {"a": 1})),
            Ok(UpdateSpec::Replacement(_))
        ));
        assert!(matches!(
            UpdateSpec::parse(&bson::bson!([{"$set": {"a": 1}}])),
            Ok(UpdateSpec::Pipeline(_))
        ));
        let err = UpdateSpec::parse(&Bson::Document(doc! {"$foo": {"a": 1}})).expect_err("unknown");
        assert_eq!(err.code, 9);
        assert!(err.errmsg.starts_with("Unknown modifier: $foo"));
        assert_eq!(
            UpdateSpec::parse(&Bson::Document(doc! {"$set": 1}))
                .expect_err("scalar")
                .code,
            9
        );
        assert_eq!(
            UpdateSpec::parse(&Bson::Document(doc! {"a": 1, "$b": 1}))
                .expect_err("dollar")
                .code,
            52
        );
    }

    #[test]
    fn set_and_unset_on_dotted_paths() {
        let d = doc! {"_id": 1, "a": {"b": 1}, "c": 1};
        assert_eq!(
            ok(d.clone(), doc! {"$set": {"a.x.y": 2}}),
            doc! {"_id": 1, "a": {"b": 1, "x": {"y": 2}}, "c": 1}
        );
        assert_eq!(
            ok(d.clone(), doc! {"$unset": {"a.b": "", "c": 1}}),
            doc! {"_id": 1, "a": {}}
        );
        assert_eq!(
            ok(d.clone(), doc! {"$set": {"z": 1, "y": 2}}),
            doc! {"_id": 1, "a": {"b": 1}, "c": 1, "y": 2, "z": 1}
        );
        assert_eq!(code(d, doc! {"$set": {"c.d": 1}}), 28);
    }

    #[test]
    fn numeric_paths_index_arrays_and_pad_with_nulls() {
        let d = doc! {"_id": 1, "a": [1, 2]};
        assert_eq!(
            ok(d.clone(), doc! {"$set": {"a.1": 9}}),
            doc! {"_id": 1, "a": [1, 9]}
        );
        assert_eq!(
            ok(d, doc! {"$set": {"a.3": 4}}),
            doc! {"_id": 1, "a": [1, 2, Bson::Null, 4]}
        );
    }

    #[test]
    fn inc_and_mul_promote_types() {
        let d = doc! {"_id": 1, "i": i32::MAX, "d": 1.5, "s": "x"};
        assert_eq!(
            ok(d.clone(), doc! {"$inc": {"i": 1}}).get("i"),
            Some(&Bson::Int64(i64::from(i32::MAX) + 1))
        );
        assert_eq!(
            ok(d.clone(), doc! {"$inc": {"d": 1}}).get("d"),
            Some(&Bson::Double(2.5))
        );
        assert_eq!(
            ok(d.clone(), doc! {"$inc": {"new": 5}}).get("new"),
            Some(&Bson::Int32(5))
        );
        assert_eq!(
            ok(d.clone(), doc! {"$mul": {"new": 5}}).get("new"),
            Some(&Bson::Int32(0))
        );
        assert_eq!(
            ok(d.clone(), doc! {"$mul": {"d": 2}}).get("d"),
            Some(&Bson::Double(3.0))
        );
        assert_eq!(code(d.clone(), doc! {"$inc": {"s": 1}}), 14);
        assert_eq!(code(d, doc! {"$inc": {"i": "1"}}), 14);
    }

    #[test]
    fn min_max_rename() {
        let d = doc! {"_id": 1, "a": 5, "b": {"c": 1}};
        assert_eq!(
            ok(d.clone(), doc! {"$min": {"a": 3}}).get("a"),
            Some(&Bson::Int32(3))
        );
        assert_eq!(
            ok(d.clone(), doc! {"$min": {"a": 9}}).get("a"),
            Some(&Bson::Int32(5))
        );
        assert_eq!(
            ok(d.clone(), doc! {"$max": {"a": 9}}).get("a"),
            Some(&Bson::Int32(9))
        );
        assert_eq!(
            ok(d.clone(), doc! {"$rename": {"b.c": "x"}}),
            doc! {"_id": 1, "a": 5, "b": {}, "x": 1}
        );
        assert_eq!(ok(d.clone(), doc! {"$rename": {"zz": "x"}}), d.clone());
        assert_eq!(code(d, doc! {"$rename": {"a": "a"}}), 2);
    }

    #[test]
    fn push_with_modifiers() {
        let d = doc! {"_id": 1, "a": [3, 1], "s": 5};
        assert_eq!(
            ok(d.clone(), doc! {"$push": {"a": 2}}).get("a"),
            Some(&bson::bson!([3, 1, 2]))
        );
        assert_eq!(
            ok(d.clone(), doc! {"$push": {"a": [7]}}).get("a"),
            Some(&bson::bson!([3, 1, [7]]))
        );
        assert_eq!(
            ok(d.clone(), doc! {"$push": {"new": 1}}).get("new"),
            Some(&bson::bson!([1]))
        );
        let sorted = ok(
            d.clone(),
            doc! {"$push": {"a": {"$each": [5, 2], "$sort": 1, "$slice": 3}}},
        );
        assert_eq!(sorted.get("a"), Some(&bson::bson!([1, 2, 3])));
        let positioned = ok(
            d.clone(),
            doc! {"$push": {"a": {"$each": [9], "$position": 0}}},
        );
        assert_eq!(positioned.get("a"), Some(&bson::bson!([9, 3, 1])));
        let last = ok(
            d.clone(),
            doc! {"$push": {"a": {"$each": [4], "$slice": -2}}},
        );
        assert_eq!(last.get("a"), Some(&bson::bson!([1, 4])));
        let docs = doc! {"_id": 1, "a": [{"x": 2}, {"x": 1}]};
        let by_field = ok(
            docs,
            doc! {"$push": {"a": {"$each": [{"x": 0}], "$sort": {"x": -1}}}},
        );
        assert_eq!(
            by_field.get("a"),
            Some(&bson::bson!([{"x": 2}, {"x": 1}, {"x": 0}]))
        );
        assert_eq!(code(d, doc! {"$push": {"s": 1}}), 2);
    }

    #[test]
    fn add_to_set_pop_pull_pull_all() {
        let d = doc! {"_id": 1, "a": [1, 2, 3, 2], "o": [{"x": 1, "y": 1}, {"x": 2}]};
        assert_eq!(
            ok(d.clone(), doc! {"$addToSet": {"a": 2.0}}).get("a"),
            Some(&bson::bson!([1, 2, 3, 2]))
        );
        assert_eq!(
            ok(d.clone(), doc! {"$addToSet": {"a": {"$each": [4, 4, 1]}}}).get("a"),
            Some(&bson::bson!([1, 2, 3, 2, 4]))
        );
        assert_eq!(
            ok(d.clone(), doc! {"$pop": {"a": 1}}).get("a"),
            Some(&bson::bson!([1, 2, 3]))
        );
        assert_eq!(
            ok(d.clone(), doc! {"$pop": {"a": -1}}).get("a"),
            Some(&bson::bson!([2, 3, 2]))
        );
        assert_eq!(code(d.clone(), doc! {"$pop": {"a": 2}}), 9);
        assert_eq!(
            ok(d.clone(), doc! {"$pull": {"a": 2}}).get("a"),
            Some(&bson::bson!([1, 3]))
        );
        assert_eq!(
            ok(d.clone(), doc! {"$pull": {"a": {"$gte": 2}}}).get("a"),
            Some(&bson::bson!([1]))
        );
        assert_eq!(
            ok(d.clone(), doc! {"$pull": {"o": {"x": 1}}}).get("o"),
            Some(&bson::bson!([{"x": 2}]))
        );
        assert_eq!(
            ok(d, doc! {"$pullAll": {"a": [1, 3]}}).get("a"),
            Some(&bson::bson!([2, 2]))
        );
    }

    #[test]
    fn current_date_and_set_on_insert() {
        let d = doc! {"_id": 1};
        let out = ok(
            d.clone(),
            doc! {"$currentDate": {"t": true, "ts": {"$type": "timestamp"}}},
        );
        assert!(matches!(out.get("t"), Some(Bson::DateTime(_))));
        assert!(matches!(out.get("ts"), Some(Bson::Timestamp(_))));
        assert_eq!(ok(d.clone(), doc! {"$setOnInsert": {"x": 1}}), d.clone());
        let spec =
            UpdateSpec::parse(&Bson::Document(doc! {"$setOnInsert": {"x": 1}})).expect("parse");
        assert_eq!(
            spec.apply(&d, &doc! {}, true).expect("apply"),
            doc! {"_id": 1, "x": 1}
        );
    }

    #[test]
    fn id_is_immutable() {
        let d = doc! {"_id": 1, "a": 1};
        let err = update(d.clone(), doc! {"$set": {"_id": 2}}).expect_err("immutable");
        assert_eq!(err.code, 66);
        assert_eq!(
            err.errmsg,
            "Performing an update on the path '_id' would modify the immutable field '_id'"
        );
        assert_eq!(
            ok(d.clone(), doc! {"$set": {"_id": 1, "b": 1}}),
            doc! {"_id": 1, "a": 1, "b": 1}
        );
        assert_eq!(code(d.clone(), doc! {"$unset": {"_id": 1}}), 66);
        assert_eq!(code(d.clone(), doc! {"_id": 2, "x": 1}), 66);
        assert_eq!(ok(d, doc! {"x": 1, "_id": 1}), doc! {"_id": 1, "x": 1});
    }

    #[test]
    fn replacement_keeps_original_id_first() {
        assert_eq!(
            ok(doc! {"_id": 7, "a": 1}, doc! {"b": 2}),
            doc! {"_id": 7, "b": 2}
        );
    }

    #[test]
    fn conflicting_paths_are_rejected() {
        let d = doc! {"_id": 1, "a": {"b": 1}};
        let err =
            update(d.clone(), doc! {"$set": {"a": 1}, "$inc": {"a.b": 1}}).expect_err("conflict");
        assert_eq!(err.code, 40);
        assert_eq!(
            err.errmsg,
            "Updating the path 'a.b' would create a conflict at 'a'"
        );
        assert_eq!(code(d, doc! {"$set": {"x": 1}, "$rename": {"a": "x"}}), 40);
    }

    #[test]
    fn positional_operator_updates_first_matching_element() {
        let d = doc! {"_id": 1, "grades": [80, 90, 95], "items": [{"k": "a", "v": 1}, {"k": "b", "v": 2}]};
        let spec =
            UpdateSpec::parse(&Bson::Document(doc! {"$set": {"grades.$": 91}})).expect("parse");
        let out = spec.apply(&d, &doc! {"grades": 90}, false).expect("apply");
        assert_eq!(out.get("grades"), Some(&bson::bson!([80, 91, 95])));
        let spec =
            UpdateSpec::parse(&Bson::Document(doc! {"$inc": {"items.$.v": 10}})).expect("parse");
        let out = spec
            .apply(&d, &doc! {"items.k": "b"}, false)
            .expect("apply");
        assert_eq!(
            out.get("items"),
            Some(&bson::bson!([{"k": "a", "v": 1}, {"k": "b", "v": 12}]))
        );
        assert_eq!(
            spec.apply(&d, &doc! {"_id": 1}, false)
                .expect_err("no match")
                .code,
            2
        );
        let all =
            UpdateSpec::parse(&Bson::Document(doc! {"$inc": {"grades.$[]": 1}})).expect("parse");
        assert_eq!(
            all.apply(&d, &doc! {}, false).expect("apply").get("grades"),
            Some(&bson::bson!([81, 91, 96]))
        );
    }

    #[test]
    fn pipeline_updates() {
        let d = doc! {"_id": 1, "a": 2, "b": 3};
        let spec = UpdateSpec::parse(
            &bson::bson!([{"$set": {"c": {"$add": ["$a", "$b"]}}}, {"$unset": "a"}]),
        )
        .expect("parse");
        assert_eq!(
            spec.apply(&d, &doc! {}, false).expect("apply"),
            doc! {"_id": 1, "b": 3, "c": 5}
        );
        let bad = UpdateSpec::parse(&bson::bson!([{"$match": {}}])).expect_err("stage");
        assert_eq!(bad.code, 72);
    }

    #[test]
    fn upsert_seed_uses_equalities() {
        let q = doc! {"a.b": 1, "c": {"$gt": 5}, "$and": [{"d": 2}], "e": {"$eq": 3}, "_id": 9};
        assert_eq!(
            upsert_seed(&q),
            doc! {"_id": 9, "a": {"b": 1}, "d": 2, "e": 3}
        );
    }

    #[test]
    fn moving_a_replacement_gives_the_same_bytes_as_copying_it() {
        let olds = [
            doc! {},
            doc! {"_id": 1, "a": 1},
            doc! {"_id": -0.0, "a": 1},
            doc! {"a": 1, "_id": "x"},
        ];
        let replacements = [
            doc! {},
            doc! {"b": 2},
            doc! {"_id": 1, "b": 2},
            doc! {"b": 2, "_id": 1, "c": 3},
            doc! {"_id": 0.0, "b": 2},
            doc! {"b": 2, "_id": 0.0},
            doc! {"_id": 2, "b": 2},
            doc! {"_id": "x"},
        ];
        for old in &olds {
            for r in &replacements {
                let copied = replace(old, r);
                let mut spec = UpdateSpec::parse_owned(Bson::Document(r.clone())).expect("parse");
                let moved = spec
                    .apply_last(old, &doc! {}, &ArrayFilters::none(), false)
                    .map(|(d, _)| d);
                match (copied, moved) {
                    (Ok(a), Ok(b)) => assert_eq!(
                        bson::to_vec(&a).expect("encode"),
                        bson::to_vec(&b).expect("encode"),
                        "{old} <- {r}"
                    ),
                    (Err(a), Err(b)) => {
                        assert_eq!((a.code, a.errmsg), (b.code, b.errmsg), "{old} <- {r}")
                    }
                    (a, b) => panic!("{old} <- {r}: {a:?} vs {b:?}"),
                }
            }
        }
    }
}
