//! How an update is recorded: the oplog's `$v: 2` delta (or the whole new document when
//! the delta would not be smaller), and the change stream's `updateDescription`, which is
//! read off that delta as a real server reads it off its oplog entry.
//!
//! Two producers, as on a real server:
//! - operator updates log exactly the paths their operators wrote ([`operator_delta`]):
//!   `$set` of an existing subdocument is one updated field, an array element changed in
//!   place is a numeric-index path (`a.1.b`), a `$push` that appends logs the new
//!   elements, other array operators (`$pull`, `$pop`, `$addToSet`, sorted or positioned
//!   `$push`) the whole array;
//! - pipeline updates diff the old document against the new one ([`pipeline_log`]):
//!   fields are compared in order, and from the first field whose position changed every
//!   following field of the new document is re-inserted at the end (that is how a delta
//!   expresses a new field order); arrays are compared element by element and truncated;
//!   a nested delta larger than the value it describes logs the value instead; a delta
//!   larger than the document logs the document, and the event is a `replace`.

use bson::{Bson, Document};

use super::order::binary_equal;
use super::path::array_index;
use super::write_path::get_parts;
use crate::storage::encoded_size;

/// What changed between two versions of a document, in change-stream form.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct UpdateDescription {
    pub updated_fields: Document,
    pub removed_fields: Vec<String>,
    pub truncated_arrays: Vec<(String, i32)>,
    /// Paths whose dotted form is ambiguous (a numeric component, an array index or a
    /// field name with a dot) -> their components (strings for field names, ints for
    /// array indices), as change streams report them with `showExpandedEvents` (6.1+).
    pub disambiguated_paths: Document,
}

/// How one update of one document is written to the oplog.
#[derive(Clone, Debug, PartialEq)]
pub enum UpdateLog {
    /// The whole new document (`o` is the document; the event is a `replace`).
    Replacement,
    /// A `$v: 2` delta (the event is an `update` with this description).
    Delta {
        /// The oplog's `diff` document.
        diff: Document,
        description: Box<UpdateDescription>,
    },
}

impl UpdateLog {
    fn from_delta(delta: &ObjectDelta) -> UpdateLog {
        let mut description = UpdateDescription::default();
        delta.describe("", &mut Vec::new(), &mut description);
        UpdateLog::Delta {
            diff: delta.to_document(),
            description: Box::new(description),
        }
    }
}

/// A path an update operator wrote, and how the server logs a change there.
#[derive(Clone, Debug)]
pub(crate) struct WrittenPath {
    pub parts: Vec<String>,
    /// The operator only appended to the array at this path (a plain `$push`): the new
    /// elements are logged one by one instead of the whole array.
    pub append_only: bool,
}

/// The change-stream description of a delta, for tests and callers that only need it.
pub fn diff(before: &Document, after: &Document) -> UpdateDescription {
    match pipeline_log(before, after) {
        UpdateLog::Delta { description, .. } => *description,
        UpdateLog::Replacement => UpdateDescription::default(),
    }
}

/// One level of a delta over a document: deleted fields, fields updated in place, fields
/// (re-)inserted at the end, and nested deltas, serialized in that order (`d`, `u`, `i`,
/// `s<field>`).
#[derive(Clone, Debug, Default)]
struct ObjectDelta {
    deletes: Vec<String>,
    updates: Vec<(String, Bson)>,
    inserts: Vec<(String, Bson)>,
    nested: Vec<(String, Nested)>,
}

/// One level of a delta over an array: an optional new (smaller) length, then per index an
/// update or a nested delta (`a: true, l, u<i>, s<i>`).
#[derive(Clone, Debug, Default)]
struct ArrayDelta {
    resize: Option<usize>,
    entries: Vec<(usize, ArrayEntry)>,
}

#[derive(Clone, Debug)]
enum ArrayEntry {
    Update(Bson),
    Nested(Nested),
}

#[derive(Clone, Debug)]
enum Nested {
    Object(ObjectDelta),
    Array(ArrayDelta),
}

impl Nested {
    fn to_document(&self) -> Document {
        match self {
            Nested::Object(d) => d.to_document(),
            Nested::Array(d) => d.to_document(),
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            Nested::Object(d) => d.is_empty(),
            Nested::Array(d) => d.resize.is_none() && d.entries.is_empty(),
        }
    }

    fn describe(&self, path: &str, components: &mut Vec<Bson>, desc: &mut UpdateDescription) {
        match self {
            Nested::Object(d) => d.describe(path, components, desc),
            Nested::Array(d) => d.describe(path, components, desc),
        }
    }
}

impl ObjectDelta {
    fn is_empty(&self) -> bool {
        self.deletes.is_empty()
            && self.updates.is_empty()
            && self.inserts.is_empty()
            && self.nested.is_empty()
    }

    fn to_document(&self) -> Document {
        let mut out = Document::new();
        if !self.deletes.is_empty() {
            let d: Document = self
                .deletes
                .iter()
                .map(|f| (f.clone(), Bson::Boolean(false)))
                .collect();
            out.insert("d", d);
        }
        if !self.updates.is_empty() {
            out.insert("u", self.updates.iter().cloned().collect::<Document>());
        }
        if !self.inserts.is_empty() {
            out.insert("i", self.inserts.iter().cloned().collect::<Document>());
        }
        for (field, nested) in &self.nested {
            out.insert(format!("s{field}"), nested.to_document());
        }
        out
    }

    fn describe(&self, prefix: &str, components: &mut Vec<Bson>, desc: &mut UpdateDescription) {
        for field in &self.deletes {
            components.push(Bson::String(field.clone()));
            let path = dotted(prefix, field);
            note_path(&path, components, desc);
            desc.removed_fields.push(path);
            components.pop();
        }
        for (field, value) in self.updates.iter().chain(&self.inserts) {
            components.push(Bson::String(field.clone()));
            let path = dotted(prefix, field);
            note_path(&path, components, desc);
            desc.updated_fields.insert(path, value.clone());
            components.pop();
        }
        for (field, nested) in &self.nested {
            components.push(Bson::String(field.clone()));
            nested.describe(&dotted(prefix, field), components, desc);
            components.pop();
        }
    }

    /// The nested delta under `field`, created (of the given kind) when missing.
    fn nested_mut(&mut self, field: &str, array: bool) -> &mut Nested {
        let pos = match self.nested.iter().position(|(f, _)| f == field) {
            Some(pos) => pos,
            None => {
                let fresh = if array {
                    Nested::Array(ArrayDelta::default())
                } else {
                    Nested::Object(ObjectDelta::default())
                };
                self.nested.push((field.to_string(), fresh));
                self.nested.len() - 1
            }
        };
        &mut self.nested[pos].1
    }
}

impl ArrayDelta {
    fn to_document(&self) -> Document {
        let mut out = Document::new();
        out.insert("a", true);
        if let Some(n) = self.resize {
            out.insert("l", n as i32);
        }
        for (i, entry) in &self.entries {
            match entry {
                ArrayEntry::Update(v) => out.insert(format!("u{i}"), v.clone()),
                ArrayEntry::Nested(n) => out.insert(format!("s{i}"), n.to_document()),
            };
        }
        out
    }

    fn describe(&self, path: &str, components: &mut Vec<Bson>, desc: &mut UpdateDescription) {
        if let Some(n) = self.resize {
            note_path(path, components, desc);
            desc.truncated_arrays.push((path.to_string(), n as i32));
        }
        for (i, entry) in &self.entries {
            components.push(Bson::Int32(*i as i32));
            let element = format!("{path}.{i}");
            match entry {
                ArrayEntry::Update(v) => {
                    note_path(&element, components, desc);
                    desc.updated_fields.insert(element, v.clone());
                }
                ArrayEntry::Nested(n) => n.describe(&element, components, desc),
            }
            components.pop();
        }
    }

    /// The nested delta at index `i`, created (of the given kind) when missing.
    fn nested_mut(&mut self, i: usize, array: bool) -> Option<&mut Nested> {
        let pos = match self.entries.iter().position(|(j, _)| *j == i) {
            Some(pos) => pos,
            None => {
                let fresh = if array {
                    Nested::Array(ArrayDelta::default())
                } else {
                    Nested::Object(ObjectDelta::default())
                };
                self.entries.push((i, ArrayEntry::Nested(fresh)));
                self.entries.len() - 1
            }
        };
        match &mut self.entries[pos].1 {
            ArrayEntry::Nested(n) => Some(n),
            ArrayEntry::Update(_) => None,
        }
    }

    fn set(&mut self, i: usize, value: Bson) {
        self.entries.retain(|(j, _)| *j != i);
        self.entries.push((i, ArrayEntry::Update(value)));
    }
}

fn dotted(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

/// Records `path` in `disambiguatedPaths` when its dotted form is ambiguous.
fn note_path(path: &str, components: &[Bson], desc: &mut UpdateDescription) {
    let ambiguous = components.iter().any(|c| match c {
        Bson::String(s) => {
            s.contains('.') || (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        }
        _ => true,
    });
    if ambiguous {
        desc.disambiguated_paths
            .insert(path.to_string(), Bson::Array(components.to_vec()));
    }
}

/// The log of an operator update from `before` to `after` that wrote `written` (sorted,
/// non-overlapping paths, as the operators' conflict check guarantees).
pub(crate) fn operator_log(
    before: &Document,
    after: &Document,
    written: &[WrittenPath],
) -> UpdateLog {
    let mut delta = ObjectDelta::default();
    for w in written {
        log_level(
            LevelDelta::Object(&mut delta),
            before,
            after,
            &w.parts,
            0,
            w.append_only,
        );
    }
    prune_and_order(&mut delta);
    UpdateLog::from_delta(&delta)
}

/// The delta level a path component is logged into.
enum LevelDelta<'a> {
    Object(&'a mut ObjectDelta),
    Array(&'a mut ArrayDelta),
}

/// Walks `full[depth..]` through the old document: the first component missing from the
/// old document is logged with its new value; a full path that existed is logged as an
/// update (or a delete when the new document lacks it).
fn log_level(
    delta: LevelDelta<'_>,
    before_root: &Document,
    after_root: &Document,
    full: &[String],
    depth: usize,
    append_only: bool,
) {
    let field = &full[depth];
    let here = &full[..=depth];
    let old = get_parts(before_root, here);
    let new = get_parts(after_root, here);
    let last = depth + 1 == full.len();
    match delta {
        LevelDelta::Object(d) => {
            let Some(old) = old else {
                if let Some(new) = new {
                    d.inserts.push((field.clone(), new.clone()));
                }
                return;
            };
            let Some(new) = new else {
                d.deletes.push(field.clone());
                return;
            };
            if last {
                log_leaf_in_object(d, field, old, new, append_only);
                return;
            }
            let is_array = matches!(old, Bson::Array(_));
            let nested = d.nested_mut(field, is_array);
            descend(
                nested,
                (old, new),
                before_root,
                after_root,
                full,
                depth,
                append_only,
            );
        }
        LevelDelta::Array(a) => {
            let Some(i) = array_index(field) else {
                return;
            };
            let (Some(old), Some(new)) = (old, new) else {
                // Written past the end: the new elements (and the null padding before
                // them) are logged one by one.
                let old_len = match get_parts(before_root, &full[..depth]) {
                    Some(Bson::Array(items)) => items.len(),
                    _ => 0,
                };
                if let Some(Bson::Array(items)) = get_parts(after_root, &full[..depth]) {
                    for (j, v) in items.iter().enumerate().skip(old_len) {
                        a.set(j, v.clone());
                    }
                }
                return;
            };
            if last {
                if !binary_equal(old, new) {
                    match (old, new, append_only) {
                        (Bson::Array(o), Bson::Array(n), true) if is_append(o, n) => {
                            if let Some(Nested::Array(inner)) = a.nested_mut(i, true) {
                                for (j, v) in n.iter().enumerate().skip(o.len()) {
                                    inner.set(j, v.clone());
                                }
                            }
                        }
                        _ => a.set(i, new.clone()),
                    }
                }
                return;
            }
            let is_array = matches!(old, Bson::Array(_));
            if let Some(nested) = a.nested_mut(i, is_array) {
                descend(
                    nested,
                    (old, new),
                    before_root,
                    after_root,
                    full,
                    depth,
                    append_only,
                );
            }
        }
    }
}

/// Continues [`log_level`] one level down, inside the container `values` (old, new).
fn descend(
    nested: &mut Nested,
    values: (&Bson, &Bson),
    before_root: &Document,
    after_root: &Document,
    full: &[String],
    depth: usize,
    append_only: bool,
) {
    match (nested, values.0, values.1) {
        (Nested::Object(d), Bson::Document(_), Bson::Document(_)) => log_level(
            LevelDelta::Object(d),
            before_root,
            after_root,
            full,
            depth + 1,
            append_only,
        ),
        (Nested::Array(a), Bson::Array(_), Bson::Array(_)) => log_level(
            LevelDelta::Array(a),
            before_root,
            after_root,
            full,
            depth + 1,
            append_only,
        ),
        // The container changed type (cannot happen for a write below it).
        _ => {}
    }
}

fn is_append(old: &[Bson], new: &[Bson]) -> bool {
    new.len() > old.len() && old.iter().zip(new).all(|(a, b)| binary_equal(a, b))
}

fn log_leaf_in_object(d: &mut ObjectDelta, field: &str, old: &Bson, new: &Bson, append_only: bool) {
    if binary_equal(old, new) {
        return;
    }
    match (old, new) {
        (Bson::Array(o), Bson::Array(n)) if append_only && is_append(o, n) => {
            if let Nested::Array(inner) = d.nested_mut(field, true) {
                for (j, v) in n.iter().enumerate().skip(o.len()) {
                    inner.set(j, v.clone());
                }
            }
        }
        _ => d.updates.push((field.to_string(), new.clone())),
    }
}

/// Drops nested levels that recorded nothing and puts array entries in index order.
fn prune_and_order(d: &mut ObjectDelta) {
    d.nested.retain(|(_, n)| !n.is_empty());
    for (_, n) in &mut d.nested {
        prune_and_order_nested(n);
    }
}

fn prune_and_order_nested(n: &mut Nested) {
    match n {
        Nested::Object(d) => prune_and_order(d),
        Nested::Array(a) => {
            a.entries.retain(|(_, e)| match e {
                ArrayEntry::Nested(n) => !n.is_empty(),
                ArrayEntry::Update(_) => true,
            });
            a.entries.sort_by_key(|(i, _)| *i);
            for (_, e) in &mut a.entries {
                if let ArrayEntry::Nested(n) = e {
                    prune_and_order_nested(n);
                }
            }
        }
    }
}

/// Bytes the oplog entry spends on `$v: 2` and the `diff` field's header, beyond the
/// delta itself; a delta is logged only when it and this framing fit in the new
/// document's size.
const DELTA_FRAMING_BYTES: usize = 8 + 6;

/// The log of a pipeline update from `before` to `after`: a delta computed by comparing
/// the two documents, or a replacement when the delta is not smaller than the document.
pub fn pipeline_log(before: &Document, after: &Document) -> UpdateLog {
    let delta = object_delta(before, after);
    if encoded_size(&delta.to_document()) + DELTA_FRAMING_BYTES > encoded_size(after) {
        return UpdateLog::Replacement;
    }
    UpdateLog::from_delta(&delta)
}

fn object_delta(before: &Document, after: &Document) -> ObjectDelta {
    let mut delta = ObjectDelta::default();
    let mut remaining = after.iter().peekable();
    let mut in_order = true;
    for (key, old) in before {
        let Some(new) = after.get(key) else {
            delta.deletes.push(key.clone());
            continue;
        };
        if !in_order {
            continue;
        }
        match remaining.peek() {
            Some((next, _)) if *next == key => {
                remaining.next();
                compare_field(&mut delta, key, old, new);
            }
            // From here on the new order differs: the rest is re-inserted in order.
            _ => in_order = false,
        }
    }
    for (key, value) in remaining {
        delta.inserts.push((key.clone(), value.clone()));
    }
    delta
}

fn compare_field(delta: &mut ObjectDelta, key: &str, old: &Bson, new: &Bson) {
    if binary_equal(old, new) {
        return;
    }
    match nested_delta(old, new) {
        Some(n) => delta.nested.push((key.to_string(), n)),
        None => delta.updates.push((key.to_string(), new.clone())),
    }
}

/// A nested delta from `old` to `new` when both are documents or both arrays and the
/// delta is smaller than `new` itself.
fn nested_delta(old: &Bson, new: &Bson) -> Option<Nested> {
    let (nested, new_size) = match (old, new) {
        (Bson::Document(o), Bson::Document(n)) => {
            (Nested::Object(object_delta(o, n)), encoded_size(n))
        }
        (Bson::Array(o), Bson::Array(n)) => (Nested::Array(array_delta(o, n)), array_size(n)),
        _ => return None,
    };
    (encoded_size(&nested.to_document()) < new_size).then_some(nested)
}

fn array_size(items: &[Bson]) -> usize {
    let as_doc: Document = items
        .iter()
        .enumerate()
        .map(|(i, v)| (i.to_string(), v.clone()))
        .collect();
    encoded_size(&as_doc)
}

fn array_delta(old: &[Bson], new: &[Bson]) -> ArrayDelta {
    let mut delta = ArrayDelta {
        resize: (new.len() < old.len()).then_some(new.len()),
        entries: Vec::new(),
    };
    for (i, value) in new.iter().enumerate() {
        match old.get(i) {
            Some(prev) if binary_equal(prev, value) => {}
            Some(prev) => match nested_delta(prev, value) {
                Some(n) => delta.entries.push((i, ArrayEntry::Nested(n))),
                None => delta.entries.push((i, ArrayEntry::Update(value.clone()))),
            },
            None => delta.entries.push((i, ArrayEntry::Update(value.clone()))),
        }
    }
    delta
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    fn pad() -> String {
        "p".repeat(200)
    }

    fn delta_of(log: UpdateLog) -> (Document, UpdateDescription) {
        match log {
            UpdateLog::Delta { diff, description } => (diff, *description),
            UpdateLog::Replacement => panic!("expected a delta"),
        }
    }

    #[test]
    fn pipeline_delta_updates_in_place_truncates_and_nests() {
        let before = doc! {"_id": 1, "pad": pad(), "a": 1, "n": {"x": 1, "y": 2, "p": pad()}, "arr": [1, 2, 3, 4, 5, 6], "gone": 1};
        let after = doc! {"_id": 1, "pad": pad(), "a": 2, "n": {"x": 1, "y": 3, "p": pad()}, "arr": [1, 2, 3, 4, 9], "new": true};
        let (diff, d) = delta_of(pipeline_log(&before, &after));
        assert_eq!(
            diff,
            doc! {"d": {"gone": false}, "u": {"a": 2}, "i": {"new": true}, "sn": {"u": {"y": 3}}, "sarr": {"a": true, "l": 5, "u4": 9}}
        );
        assert_eq!(
            d.updated_fields,
            doc! {"a": 2, "new": true, "n.y": 3, "arr.4": 9}
        );
        assert_eq!(d.removed_fields, vec!["gone".to_string()]);
        assert_eq!(d.truncated_arrays, vec![("arr".to_string(), 5)]);
        // A small array whose delta would not be smaller is logged whole.
        let (_, d) = delta_of(pipeline_log(
            &doc! {"_id": 1, "pad": pad(), "arr": [1, 2, 3]},
            &doc! {"_id": 1, "pad": pad(), "arr": [1, 9]},
        ));
        assert_eq!(d.updated_fields, doc! {"arr": [1, 9]});
    }

    #[test]
    fn pipeline_delta_reinserts_from_the_first_moved_field() {
        let before = doc! {"_id": 1, "pad": pad(), "a": 1, "b": 2, "c": 3};
        let after = doc! {"_id": 1, "pad": pad(), "b": 2, "a": 1, "c": 3};
        let (diff, d) = delta_of(pipeline_log(&before, &after));
        assert_eq!(diff, doc! {"i": {"b": 2, "a": 1, "c": 3}});
        let keys: Vec<&String> = d.updated_fields.keys().collect();
        assert_eq!(keys, ["b", "a", "c"]);
    }

    #[test]
    fn pipeline_delta_larger_than_the_document_is_a_replacement() {
        assert_eq!(
            pipeline_log(&doc! {"_id": 1, "a": 1}, &doc! {"_id": 1, "b": 1}),
            UpdateLog::Replacement
        );
    }

    #[test]
    fn operator_delta_logs_written_paths() {
        let before = doc! {"_id": 1, "s": {"x": 1}, "arr": [{"v": 1}, {"v": 2}], "t": [1]};
        let after = doc! {"_id": 1, "s": {"x": 2}, "arr": [{"v": 1}, {"v": 5}], "t": [1, 2], "new": {"deep": 1}};
        let written = [
            WrittenPath {
                parts: vec!["arr".into(), "1".into(), "v".into()],
                append_only: false,
            },
            WrittenPath {
                parts: vec!["new".into(), "deep".into()],
                append_only: false,
            },
            WrittenPath {
                parts: vec!["s".into()],
                append_only: false,
            },
            WrittenPath {
                parts: vec!["t".into()],
                append_only: true,
            },
        ];
        let (diff, d) = delta_of(operator_log(&before, &after, &written));
        assert_eq!(
            diff,
            doc! {"u": {"s": {"x": 2}}, "i": {"new": {"deep": 1}}, "sarr": {"a": true, "s1": {"u": {"v": 5}}}, "st": {"a": true, "u1": 2}}
        );
        assert_eq!(
            d.updated_fields,
            doc! {"s": {"x": 2}, "new": {"deep": 1}, "arr.1.v": 5, "t.1": 2}
        );
    }
}
