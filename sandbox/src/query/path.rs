//! Dotted-path lookup into documents.

use bson::{Bson, Document};

/// The value at a dotted path, descending through sub-documents and explicit numeric array
/// indexes only (no implicit traversal of array elements).
pub fn get_path<'a>(doc: &'a Document, path: &str) -> Option<&'a Bson> {
    let mut parts = path.split('.');
    let first = parts.next()?;
    let mut cur = doc.get(first)?;
    for part in parts {
        cur = child(cur, part)?;
    }
    Some(cur)
}

/// The child of a value named by one path component: a field of a document or an element
/// of an array by numeric index.
pub(crate) fn child<'a>(value: &'a Bson, part: &str) -> Option<&'a Bson> {
    match value {
        Bson::Document(d) => d.get(part),
        Bson::Array(a) => array_index(part).and_then(|i| a.get(i)),
        _ => None,
    }
}

/// A path component usable as an array index ("0", "12"; not "-1" or "01x").
pub(crate) fn array_index(part: &str) -> Option<usize> {
    if part.is_empty() || !part.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    part.parse().ok()
}

/// The values a query sees at `path`, before leaf arrays are expanded: `None` marks a
/// branch on which the path is missing (which matches `null`).
///
/// Arrays met along the way are traversed implicitly: each document element is searched for
/// the rest of the path, and a numeric component also selects the element at that index.
pub(crate) fn leaf_candidates<'a>(doc: &'a Document, path: &str) -> Vec<Option<&'a Bson>> {
    let parts: Vec<&str> = path.split('.').collect();
    let mut out = Vec::new();
    match doc.get(parts[0]) {
        Some(v) => collect(v, &parts[1..], &mut out),
        None => out.push(None),
    }
    out
}

fn collect<'a>(value: &'a Bson, parts: &[&str], out: &mut Vec<Option<&'a Bson>>) {
    let Some((part, rest)) = parts.split_first() else {
        out.push(Some(value));
        return;
    };
    match value {
        Bson::Document(d) => match d.get(*part) {
            Some(v) => collect(v, rest, out),
            None => out.push(None),
        },
        Bson::Array(items) => {
            if let Some(v) = array_index(part).and_then(|i| items.get(i)) {
                collect(v, rest, out);
            }
            for item in items {
                if let Bson::Document(_) = item {
                    collect(item, parts, out);
                }
            }
        }
        _ => out.push(None),
    }
}

/// Every value a query on `path` compares against: values reached with implicit array
/// traversal and numeric indexes; a leaf array contributes its elements followed by the
/// array itself. Missing branches contribute nothing.
pub fn lookup_values(doc: &Document, path: &str) -> Vec<Bson> {
    let mut out = Vec::new();
    for candidate in leaf_candidates(doc, path).into_iter().flatten() {
        if let Bson::Array(items) = candidate {
            out.extend(items.iter().cloned());
        }
        out.push(candidate.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    #[test]
    fn get_path_descends_documents_and_indexes() {
        let d = doc! {"a": {"b": {"c": 5}}, "arr": [{"x": 1}, {"x": 2}]};
        assert_eq!(get_path(&d, "a.b.c"), Some(&Bson::Int32(5)));
        assert_eq!(get_path(&d, "arr.1.x"), Some(&Bson::Int32(2)));
        assert_eq!(get_path(&d, "arr.x"), None);
        assert_eq!(get_path(&d, "a.z"), None);
    }

    #[test]
    fn lookup_values_traverses_arrays_implicitly() {
        let d = doc! {"a": [{"b": 1}, {"b": [2, 3]}, 7]};
        let vals = lookup_values(&d, "a.b");
        assert!(vals.contains(&Bson::Int32(1)));
        assert!(vals.contains(&Bson::Int32(3)));
        assert!(vals.contains(&Bson::Array(vec![Bson::Int32(2), Bson::Int32(3)])));
        assert_eq!(lookup_values(&d, "a.0.b"), vec![Bson::Int32(1)]);
        assert!(lookup_values(&d, "zzz").is_empty());
    }
}
