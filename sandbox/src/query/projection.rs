//! Find projections: inclusion or exclusion of (dotted) fields, `_id` handling, computed
//! fields, `$slice` and `$elemMatch`.

use bson::{Bson, Document};

use super::expr::evaluate;
use super::matcher::{is_truthy, Matcher};
use super::numeric::as_f64;
use crate::error::{CmdResult, CommandError};

/// Code of "Cannot do inclusion on field .. in exclusion projection".
const INCLUSION_IN_EXCLUSION: i32 = 31253;
/// Code of "Cannot do exclusion on field .. in inclusion projection".
const EXCLUSION_IN_INCLUSION: i32 = 31254;
/// Code of "Path collision at ..".
const PATH_COLLISION: i32 = 31250;

/// A parsed projection.
#[derive(Clone, Debug)]
pub struct Projection {
    fields: Vec<(String, Node)>,
    inclusion: bool,
    include_id: bool,
    identity: bool,
}

#[derive(Clone, Debug)]
enum Node {
    Include,
    Exclude,
    Computed(Bson),
    Slice(i64, Option<i64>),
    ElemMatch(Box<Matcher>),
    Children(Vec<(String, Node)>),
}

#[derive(PartialEq, Clone, Copy)]
enum Kind {
    Inclusion,
    Exclusion,
    Neutral,
}

impl Projection {
    /// Parses a projection; mixing inclusion and exclusion fails as on the server.
    pub fn new(spec: &Document) -> CmdResult<Projection> {
        let mut fields = Vec::new();
        let mut mode: Option<bool> = None;
        let mut include_id = true;
        let mut explicit_id_inclusion = false;
        for (key, value) in spec {
            let (node, kind) = parse_value(key, value)?;
            let is_id = key == "_id";
            if is_id && matches!(node, Node::Include | Node::Exclude) {
                include_id = matches!(node, Node::Include);
                explicit_id_inclusion = include_id;
                continue;
            }
            match (kind, mode) {
                (Kind::Inclusion, Some(false)) => {
                    return Err(CommandError::new(
                        INCLUSION_IN_EXCLUSION,
                        format!("Cannot do inclusion on field {key} in exclusion projection"),
                    ))
                }
                (Kind::Exclusion, Some(true)) => {
                    return Err(CommandError::new(
                        EXCLUSION_IN_INCLUSION,
                        format!("Cannot do exclusion on field {key} in inclusion projection"),
                    ))
                }
                (Kind::Inclusion, None) => mode = Some(true),
                (Kind::Exclusion, None) => mode = Some(false),
                _ => {}
            }
            let path = key.strip_suffix(".$").unwrap_or(key);
            insert_path(&mut fields, path, node, key)?;
        }
        Ok(Projection {
            identity: spec.is_empty(),
            // `{_id: 1}` alone is an inclusion projection returning only `_id`.
            inclusion: mode.unwrap_or(explicit_id_inclusion && !has_slice_or_elem_match(&fields)),
            include_id,
            fields,
        })
    }

    /// Projects one document, failing as the server does when a computed field's
    /// expression fails on it (`{$multiply: [2, "$x"]}` with a string `x`).
    pub fn try_apply(&self, doc: &Document) -> CmdResult<Document> {
        check_computed(&self.fields, doc)?;
        Ok(self.apply(doc))
    }

    /// Projects one document.
    pub fn apply(&self, doc: &Document) -> Document {
        if self.identity {
            return doc.clone();
        }
        let mut out = if self.inclusion {
            let mut out = Document::new();
            if self.include_id {
                if let Some(id) = doc.get("_id") {
                    out.insert("_id", id.clone());
                }
            }
            out.extend(include_fields(&self.fields, doc, doc));
            out
        } else {
            exclude_fields(&self.fields, doc)
        };
        if !self.include_id {
            out.remove("_id");
        }
        out
    }
}

fn has_slice_or_elem_match(fields: &[(String, Node)]) -> bool {
    !fields.is_empty()
}

fn parse_value(key: &str, value: &Bson) -> CmdResult<(Node, Kind)> {
    match value {
        Bson::Boolean(_)
        | Bson::Int32(_)
        | Bson::Int64(_)
        | Bson::Double(_)
        | Bson::Decimal128(_) => {
            if is_truthy(value) {
                Ok((Node::Include, Kind::Inclusion))
            } else {
                Ok((Node::Exclude, Kind::Exclusion))
            }
        }
        Bson::Document(d) => match d.keys().next().map(String::as_str) {
            Some("$slice") => Ok((
                parse_slice(d.get("$slice").unwrap_or(&Bson::Null))?,
                Kind::Neutral,
            )),
            Some("$elemMatch") => match d.get("$elemMatch") {
                Some(Bson::Document(q)) => {
                    if key.contains('.') {
                        return Err(CommandError::bad_value(
                            "Cannot use $elemMatch projection on a nested field.",
                        ));
                    }
                    Ok((Node::ElemMatch(Box::new(Matcher::new(q)?)), Kind::Neutral))
                }
                _ => Err(CommandError::bad_value(
                    "elemMatch: Invalid argument, object required.",
                )),
            },
            Some("$meta") => Ok((Node::Computed(Bson::Null), Kind::Neutral)),
            Some(k) if k.starts_with('$') => Ok((Node::Computed(value.clone()), Kind::Inclusion)),
            _ => {
                let mut children = Vec::new();
                let mut kind = Kind::Neutral;
                for (k, v) in d {
                    let (node, child_kind) = parse_value(k, v)?;
                    if child_kind != Kind::Neutral {
                        if kind != Kind::Neutral && kind != child_kind {
                            let code = if kind == Kind::Inclusion {
                                EXCLUSION_IN_INCLUSION
                            } else {
                                INCLUSION_IN_EXCLUSION
                            };
                            return Err(CommandError::new(
                                code,
                                format!("Cannot mix inclusion and exclusion in field {key}.{k}"),
                            ));
                        }
                        kind = child_kind;
                    }
                    insert_path(&mut children, k, node, k)?;
                }
                Ok((Node::Children(children), kind))
            }
        },
        _ => Ok((Node::Computed(value.clone()), Kind::Inclusion)),
    }
}

fn slice_int(v: &Bson) -> CmdResult<i64> {
    as_f64(v).map(|f| f as i64).ok_or_else(|| {
        CommandError::bad_value("$slice only supports numbers and [skip, limit] arrays")
    })
}

fn parse_slice(arg: &Bson) -> CmdResult<Node> {
    match arg {
        Bson::Array(items) if items.len() == 2 => {
            let limit = slice_int(&items[1])?;
            if limit <= 0 {
                return Err(CommandError::bad_value("$slice limit must be positive"));
            }
            Ok(Node::Slice(slice_int(&items[0])?, Some(limit)))
        }
        Bson::Array(_) => Err(CommandError::bad_value(
            "$slice array argument must be of the form [skip, limit]",
        )),
        _ => Ok(Node::Slice(slice_int(arg)?, None)),
    }
}

fn insert_path(
    fields: &mut Vec<(String, Node)>,
    path: &str,
    node: Node,
    full: &str,
) -> CmdResult<()> {
    let collision = || CommandError::new(PATH_COLLISION, format!("Path collision at {full}"));
    match path.split_once('.') {
        None => {
            if fields.iter().any(|(k, _)| k == path) {
                return Err(collision());
            }
            fields.push((path.to_string(), node));
            Ok(())
        }
        Some((head, rest)) => {
            if let Some((_, existing)) = fields.iter_mut().find(|(k, _)| k == head) {
                match existing {
                    Node::Children(children) => insert_path(children, rest, node, full),
                    _ => Err(collision()),
                }
            } else {
                let mut children = Vec::new();
                insert_path(&mut children, rest, node, full)?;
                fields.push((head.to_string(), Node::Children(children)));
                Ok(())
            }
        }
    }
}

fn find<'a>(fields: &'a [(String, Node)], key: &str) -> Option<&'a Node> {
    fields.iter().find(|(k, _)| k == key).map(|(_, n)| n)
}

fn slice(value: &Bson, skip: i64, limit: Option<i64>) -> Bson {
    let Bson::Array(items) = value else {
        return value.clone();
    };
    let len = items.len() as i64;
    let (start, count) = match limit {
        None if skip >= 0 => (0, skip),
        None => ((len + skip).max(0), len),
        Some(l) if skip >= 0 => (skip.min(len), l),
        Some(l) => ((len + skip).max(0), l),
    };
    let start = start as usize;
    let end = (start as i64 + count).min(len).max(start as i64) as usize;
    Bson::Array(items[start..end].to_vec())
}

fn first_match(value: &Bson, m: &Matcher) -> Option<Bson> {
    let Bson::Array(items) = value else {
        return None;
    };
    items
        .iter()
        .find(|item| match item {
            Bson::Document(d) => m.matches(d),
            other => {
                let mut wrapper = Document::new();
                wrapper.insert("", (*other).clone());
                m.matches(&wrapper)
            }
        })
        .map(|item| Bson::Array(vec![item.clone()]))
}

fn include_fields(fields: &[(String, Node)], doc: &Document, root: &Document) -> Document {
    let mut out = Document::new();
    for (key, value) in doc {
        let Some(node) = find(fields, key) else {
            continue;
        };
        match node {
            Node::Include => {
                out.insert(key.clone(), value.clone());
            }
            Node::Children(children) => {
                if let Some(v) = include_value(children, value, root) {
                    out.insert(key.clone(), v);
                }
            }
            Node::Slice(skip, limit) => {
                out.insert(key.clone(), slice(value, *skip, *limit));
            }
            Node::ElemMatch(m) => {
                if let Some(v) = first_match(value, m) {
                    out.insert(key.clone(), v);
                }
            }
            Node::Exclude | Node::Computed(_) => {}
        }
    }
    for (key, node) in fields {
        match node {
            Node::Computed(expr) => {
                if let Ok(Some(v)) = evaluate(expr, root) {
                    out.insert(key.clone(), v);
                }
            }
            Node::Children(children) if !doc.contains_key(key) && has_computed(children) => {
                out.insert(
                    key.clone(),
                    include_fields(children, &Document::new(), root),
                );
            }
            _ => {}
        }
    }
    out
}

/// Evaluates every computed field against `root`, returning the first error.
fn check_computed(fields: &[(String, Node)], root: &Document) -> CmdResult<()> {
    for (_, node) in fields {
        match node {
            Node::Computed(expr) => {
                evaluate(expr, root)?;
            }
            Node::Children(children) => check_computed(children, root)?,
            _ => {}
        }
    }
    Ok(())
}

fn has_computed(fields: &[(String, Node)]) -> bool {
    fields.iter().any(|(_, n)| match n {
        Node::Computed(_) => true,
        Node::Children(c) => has_computed(c),
        _ => false,
    })
}

fn include_value(children: &[(String, Node)], value: &Bson, root: &Document) -> Option<Bson> {
    match value {
        Bson::Document(d) => Some(Bson::Document(include_fields(children, d, root))),
        Bson::Array(items) => Some(Bson::Array(
            items
                .iter()
                .filter_map(|item| include_value(children, item, root))
                .collect(),
        )),
        _ if has_computed(children) => Some(Bson::Document(include_fields(
            children,
            &Document::new(),
            root,
        ))),
        _ => None,
    }
}

fn exclude_fields(fields: &[(String, Node)], doc: &Document) -> Document {
    let mut out = Document::new();
    for (key, value) in doc {
        match find(fields, key) {
            None | Some(Node::Include) | Some(Node::Computed(_)) => {
                out.insert(key.clone(), value.clone());
            }
            Some(Node::Exclude) => {}
            Some(Node::Children(children)) => {
                out.insert(key.clone(), exclude_value(children, value));
            }
            Some(Node::Slice(skip, limit)) => {
                out.insert(key.clone(), slice(value, *skip, *limit));
            }
            Some(Node::ElemMatch(m)) => {
                if let Some(v) = first_match(value, m) {
                    out.insert(key.clone(), v);
                }
            }
        }
    }
    out
}

fn exclude_value(children: &[(String, Node)], value: &Bson) -> Bson {
    match value {
        Bson::Document(d) => Bson::Document(exclude_fields(children, d)),
        Bson::Array(items) => {
            Bson::Array(items.iter().map(|i| exclude_value(children, i)).collect())
        }
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    fn project(spec: Document, d: Document) -> Document {
        Projection::new(&spec).expect("valid projection").apply(&d)
    }

    #[test]
    fn inclusion_keeps_id_unless_excluded() {
        let d = doc! {"_id": 1, "a": 1, "b": 2, "c": 3};
        assert_eq!(
            project(doc! {"a": 1, "c": true}, d.clone()),
            doc! {"_id": 1, "a": 1, "c": 3}
        );
        assert_eq!(project(doc! {"a": 1, "_id": 0}, d.clone()), doc! {"a": 1});
        assert_eq!(
            project(doc! {}, d.clone()),
            doc! {"_id": 1, "a": 1, "b": 2, "c": 3}
        );
        assert_eq!(project(doc! {"_id": 1}, d), doc! {"_id": 1});
    }

    #[test]
    fn exclusion_removes_fields() {
        let d = doc! {"_id": 1, "a": 1, "b": {"x": 1, "y": 2}};
        assert_eq!(
            project(doc! {"a": 0, "b.x": 0}, d.clone()),
            doc! {"_id": 1, "b": {"y": 2}}
        );
        assert_eq!(
            project(doc! {"_id": 0}, d),
            doc! {"a": 1, "b": {"x": 1, "y": 2}}
        );
    }

    #[test]
    fn dotted_inclusion_through_arrays() {
        let d = doc! {"_id": 1, "a": [{"b": 1, "c": 2}, {"c": 3}, 5], "z": 1};
        assert_eq!(
            project(doc! {"a.b": 1}, d),
            doc! {"_id": 1, "a": [{"b": 1}, {}]}
        );
    }

    #[test]
    fn mixing_inclusion_and_exclusion_is_an_error() {
        let err = Projection::new(&doc! {"a": 1, "b": 0}).expect_err("mixed");
        assert_eq!(err.code, 31254);
        assert_eq!(
            err.errmsg,
            "Cannot do exclusion on field b in inclusion projection"
        );
        let err = Projection::new(&doc! {"a": 0, "b": 1}).expect_err("mixed");
        assert_eq!(err.code, 31253);
        assert!(Projection::new(&doc! {"a": 1, "_id": 0}).is_ok());
        assert!(Projection::new(&doc! {"a": 1, "a.b": 1}).is_err());
    }

    #[test]
    fn slice_and_elem_match() {
        let d = doc! {"_id": 1, "a": [1, 2, 3, 4], "b": 1};
        assert_eq!(
            project(doc! {"a": {"$slice": 2}}, d.clone()),
            doc! {"_id": 1, "a": [1, 2], "b": 1}
        );
        assert_eq!(
            project(doc! {"a": {"$slice": -1}}, d.clone()),
            doc! {"_id": 1, "a": [4], "b": 1}
        );
        assert_eq!(
            project(doc! {"a": {"$slice": [1, 2]}, "b": 0}, d.clone()),
            doc! {"_id": 1, "a": [2, 3]}
        );
        let e = doc! {"_id": 1, "s": [{"x": 1}, {"x": 5}, {"x": 7}]};
        assert_eq!(
            project(doc! {"s": {"$elemMatch": {"x": {"$gt": 4}}}}, e),
            doc! {"_id": 1, "s": [{"x": 5}]}
        );
    }

    #[test]
    fn computed_fields() {
        let d = doc! {"_id": 1, "a": 2};
        assert_eq!(
            project(doc! {"b": "$a", "c": "lit"}, d),
            doc! {"_id": 1, "b": 2, "c": "lit"}
        );
    }
}
