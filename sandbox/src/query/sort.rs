//! Sort specifications (`{a: 1, "b.c": -1}`) and the document order they define.

use std::cmp::Ordering;

use bson::{Bson, Document};

use super::order::{compare, Number};
use super::path::leaf_candidates;
use crate::error::{CmdResult, CommandError};

/// A parsed sort specification.
#[derive(Clone, Debug, Default)]
pub struct SortSpec {
    keys: Vec<(String, bool)>,
}

impl SortSpec {
    /// Parses `{field: 1 | -1, ...}`; `{$meta: ...}` keys are accepted and ignored.
    pub fn new(spec: &Document) -> CmdResult<SortSpec> {
        let mut keys = Vec::with_capacity(spec.len());
        for (field, dir) in spec {
            if field.is_empty() {
                return Err(CommandError::bad_value(
                    "FieldPath cannot be constructed with empty string",
                ));
            }
            if let Bson::Document(meta) = dir {
                if meta.contains_key("$meta") {
                    continue;
                }
            }
            let ascending = match Number::of(dir).map(Number::as_f64) {
                Some(1.0) => true,
                Some(-1.0) => false,
                _ => {
                    return Err(CommandError::bad_value(
                        "$sort key ordering must be 1 (for ascending) or -1 (for descending)",
                    ))
                }
            };
            keys.push((field.clone(), ascending));
        }
        Ok(SortSpec { keys })
    }

    /// Whether the spec has no keys (any order is acceptable).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Orders two documents by the spec.
    pub fn compare(&self, a: &Document, b: &Document) -> Ordering {
        for (path, ascending) in &self.keys {
            let ka = sort_key(a, path, *ascending);
            let kb = sort_key(b, path, *ascending);
            let ord = compare(&ka, &kb);
            let ord = if *ascending { ord } else { ord.reverse() };
            if ord != Ordering::Equal {
                return ord;
            }
        }
        Ordering::Equal
    }
}

/// The value a document sorts by at `path`: missing is null; arrays contribute their
/// smallest element ascending and largest descending (an empty array sorts like undefined).
pub(crate) fn sort_key(doc: &Document, path: &str, ascending: bool) -> Bson {
    let mut best: Option<Bson> = None;
    let mut consider = |v: &Bson| {
        let better = match &best {
            None => true,
            Some(cur) => {
                let ord = compare(v, cur);
                if ascending {
                    ord == Ordering::Less
                } else {
                    ord == Ordering::Greater
                }
            }
        };
        if better {
            best = Some(v.clone());
        }
    };
    for candidate in leaf_candidates(doc, path) {
        match candidate {
            None => consider(&Bson::Null),
            Some(Bson::Array(items)) if items.is_empty() => consider(&Bson::Undefined),
            Some(Bson::Array(items)) => items.iter().for_each(&mut consider),
            Some(v) => consider(v),
        }
    }
    best.unwrap_or(Bson::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    fn sorted(spec: Document, mut docs: Vec<Document>) -> Vec<Bson> {
        let s = SortSpec::new(&spec).expect("valid sort");
        docs.sort_by(|a, b| s.compare(a, b));
        docs.iter()
            .map(|d| d.get("_id").cloned().unwrap_or(Bson::Null))
            .collect()
    }

    #[test]
    fn sorts_ascending_and_descending_across_types() {
        let docs = vec![
            doc! {"_id": 1, "a": "s"},
            doc! {"_id": 2, "a": 5},
            doc! {"_id": 3},
            doc! {"_id": 4, "a": 1.5},
        ];
        assert_eq!(
            sorted(doc! {"a": 1}, docs.clone()),
            vec![Bson::Int32(3), 4.into(), 2.into(), 1.into()]
        );
        assert_eq!(
            sorted(doc! {"a": -1}, docs),
            vec![Bson::Int32(1), 2.into(), 4.into(), 3.into()]
        );
    }

    #[test]
    fn arrays_sort_by_min_ascending_and_max_descending() {
        let docs = vec![doc! {"_id": 1, "a": [1, 10]}, doc! {"_id": 2, "a": [5]}];
        assert_eq!(
            sorted(doc! {"a": 1}, docs.clone()),
            vec![Bson::Int32(1), 2.into()]
        );
        assert_eq!(sorted(doc! {"a": -1}, docs), vec![Bson::Int32(1), 2.into()]);
    }

    #[test]
    fn compound_and_dotted_keys() {
        let docs = vec![
            doc! {"_id": 1, "x": {"y": 2}, "z": 1},
            doc! {"_id": 2, "x": {"y": 1}, "z": 1},
            doc! {"_id": 3, "x": {"y": 1}, "z": 2},
        ];
        assert_eq!(
            sorted(doc! {"z": -1, "x.y": 1}, docs),
            vec![Bson::Int32(3), 2.into(), 1.into()]
        );
    }

    #[test]
    fn invalid_direction_is_bad_value() {
        let err = SortSpec::new(&doc! {"a": 2}).expect_err("bad dir");
        assert_eq!(err.code, 2);
        assert!(SortSpec::new(&doc! {"a": "asc"}).is_err());
    }
}
