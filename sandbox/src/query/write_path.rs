//! Writing and removing values at dotted paths, creating intermediate documents and padding
//! arrays with nulls the way update operators do.

use bson::{Bson, Document};

use super::path::array_index;
use crate::error::{codes, CmdResult, CommandError};

/// Splits a dotted path into its components.
pub(crate) fn split_path(path: &str) -> Vec<String> {
    path.split('.').map(str::to_string).collect()
}

/// The value at `parts`, through documents and numeric array indexes.
pub(crate) fn get_parts<'a>(doc: &'a Document, parts: &[String]) -> Option<&'a Bson> {
    let (head, rest) = parts.split_first()?;
    let mut cur = doc.get(head)?;
    for part in rest {
        cur = match cur {
            Bson::Document(d) => d.get(part)?,
            Bson::Array(items) => items.get(array_index(part)?)?,
            _ => return None,
        };
    }
    Some(cur)
}

fn not_viable(part: &str, parent: &str, value: &Bson) -> CommandError {
    CommandError::new(
        codes::PATH_NOT_VIABLE,
        format!("Cannot create field '{part}' in element {{{parent}: {value}}}"),
    )
}

/// Stores `value` at `parts`, creating missing intermediate documents; a numeric component
/// indexes an array, padding it with nulls. Fails with `PathNotViable` when a scalar (or an
/// array with a non-numeric component) is in the way.
pub(crate) fn set_parts(doc: &mut Document, parts: &[String], value: Bson) -> CmdResult<()> {
    let Some((head, rest)) = parts.split_first() else {
        return Ok(());
    };
    if rest.is_empty() {
        doc.insert(head.clone(), value);
        return Ok(());
    }
    if !doc.contains_key(head) {
        doc.insert(head.clone(), Document::new());
    }
    match doc.get_mut(head) {
        Some(child) => set_in_value(child, head, rest, value),
        None => Err(CommandError::new(
            codes::INTERNAL_ERROR,
            "field vanished during update",
        )),
    }
}

fn set_in_value(target: &mut Bson, name: &str, parts: &[String], value: Bson) -> CmdResult<()> {
    let Some((head, rest)) = parts.split_first() else {
        *target = value;
        return Ok(());
    };
    match target {
        Bson::Document(d) => set_parts(d, parts, value),
        Bson::Array(items) => {
            let Some(idx) = array_index(head) else {
                return Err(not_viable(head, name, &Bson::Array(items.clone())));
            };
            while items.len() < idx {
                items.push(Bson::Null);
            }
            if items.len() == idx {
                items.push(if rest.is_empty() {
                    Bson::Null
                } else {
                    Bson::Document(Document::new())
                });
            }
            set_in_value(&mut items[idx], head, rest, value)
        }
        other => Err(not_viable(head, name, other)),
    }
}

/// Removes the value at `parts`: a document field is deleted, an array element becomes
/// null (as `$unset` does). Missing paths are left alone.
pub(crate) fn remove_parts(doc: &mut Document, parts: &[String]) {
    let Some((last, parent)) = parts.split_last() else {
        return;
    };
    if parent.is_empty() {
        doc.remove(last);
        return;
    }
    let Some(container) = get_parts_mut(doc, parent) else {
        return;
    };
    match container {
        Bson::Document(d) => {
            d.remove(last);
        }
        Bson::Array(items) => {
            if let Some(slot) = array_index(last).and_then(|i| items.get_mut(i)) {
                *slot = Bson::Null;
            }
        }
        _ => {}
    }
}

/// Mutable access to the value at `parts` without creating anything.
pub(crate) fn get_parts_mut<'a>(doc: &'a mut Document, parts: &[String]) -> Option<&'a mut Bson> {
    let (head, rest) = parts.split_first()?;
    let mut cur = doc.get_mut(head)?;
    for part in rest {
        cur = match cur {
            Bson::Document(d) => d.get_mut(part)?,
            Bson::Array(items) => items.get_mut(array_index(part)?)?,
            _ => return None,
        };
    }
    Some(cur)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    #[test]
    fn set_creates_documents_and_pads_arrays() {
        let mut d = doc! {"a": [1]};
        set_parts(&mut d, &split_path("b.c"), Bson::Int32(1)).expect("set");
        set_parts(&mut d, &split_path("a.3"), Bson::Int32(4)).expect("set");
        assert_eq!(d, doc! {"a": [1, Bson::Null, Bson::Null, 4], "b": {"c": 1}});
        let err = set_parts(&mut d, &split_path("b.c.d"), Bson::Int32(1)).expect_err("scalar");
        assert_eq!(err.code, 28);
        assert_eq!(err.errmsg, "Cannot create field 'd' in element {c: 1}");
    }

    #[test]
    fn remove_deletes_fields_and_nulls_array_elements() {
        let mut d = doc! {"a": {"b": 1, "c": 2}, "arr": [1, 2]};
        remove_parts(&mut d, &split_path("a.b"));
        remove_parts(&mut d, &split_path("arr.0"));
        remove_parts(&mut d, &split_path("zz.y"));
        assert_eq!(d, doc! {"a": {"c": 2}, "arr": [Bson::Null, 2]});
    }
}
