//! Index scans a find asks for by hint: `min`/`max` bounds on the `_id` index (read
//! straight from the collection's ordered map) or on any other hinted ascending or
//! descending index, and the key order such a scan returns documents in.

use bson::{Bson, Document};

use crate::error::{CmdResult, CommandError};
use crate::query::sort::SortSpec;

/// Index bounds of a find with `min`/`max` (only on the `_id` index): [min, max).
#[derive(Default)]
pub struct IdBounds {
    pub min: Option<Bson>,
    pub max: Option<Bson>,
}

impl IdBounds {
    /// Bounds on the `_id` index, read straight from the ordered map; None when `min`/`max`
    /// bound another (hinted) index, which [`IndexBounds`] handles.
    pub fn parse(cmd: &Document, hinted: Option<&Document>) -> CmdResult<Option<IdBounds>> {
        let min = cmd.get_document("min").ok();
        let max = cmd.get_document("max").ok();
        if min.is_none() && max.is_none() {
            return Ok(Some(IdBounds::default()));
        }
        let hinted_id = match (cmd.get("hint"), hinted) {
            (_, Some(key)) => key.keys().eq(["_id"].iter()),
            (Some(Bson::Document(h)), None) => h.keys().eq(["_id"].iter()),
            (Some(Bson::String(name)), None) => name == "_id_",
            _ => false,
        };
        if !hinted_id {
            if hinted.is_some() {
                return Ok(None);
            }
            return Err(CommandError::new(
                51173,
                "When using min()/max() a hint of which index to use must be provided",
            ));
        }
        let id_of = |d: Option<&Document>| -> CmdResult<Option<Bson>> {
            match d {
                None => Ok(None),
                Some(d) if d.keys().eq(["_id"].iter()) => Ok(d.get("_id").cloned()),
                Some(_) => Err(CommandError::new(
                    51174,
                    "The index chosen is not consistent with the min/max bounds",
                )),
            }
        };
        Ok(Some(IdBounds {
            min: id_of(min)?,
            max: id_of(max)?,
        }))
    }
    pub fn is_set(&self) -> bool {
        self.min.is_some() || self.max.is_some()
    }
}

/// `min`/`max` on a hinted secondary index: the index keys in `[min, max)`, compared
/// field by field in the index's key order and directions.
pub struct IndexBounds {
    /// The index's own order, in which a bounded scan returns documents.
    pub order: SortSpec,
    paths: Vec<(String, bool)>,
    min: Option<Vec<Bson>>,
    max: Option<Vec<Bson>>,
}

impl IndexBounds {
    pub fn parse(cmd: &Document, key: &Document) -> CmdResult<IndexBounds> {
        let paths = index_paths(key).ok_or_else(|| {
            CommandError::bad_value("min()/max() need an ascending or descending index")
        })?;
        let values = |field: &str| -> CmdResult<Option<Vec<Bson>>> {
            let Ok(bound) = cmd.get_document(field) else {
                return Ok(None);
            };
            // The bound names the index's fields, in the index's order.
            if !bound.keys().eq(paths.iter().map(|(p, _)| p)) {
                return Err(CommandError::new(
                    51174,
                    "The index chosen is not consistent with the min/max bounds",
                ));
            }
            Ok(Some(bound.values().cloned().collect()))
        };
        Ok(IndexBounds {
            order: SortSpec::new(key)?,
            min: values("min")?,
            max: values("max")?,
            paths,
        })
    }

    /// How a document's index key compares with a bound.
    fn compare(&self, doc: &Document, bound: &[Bson]) -> std::cmp::Ordering {
        for ((path, ascending), value) in self.paths.iter().zip(bound) {
            let key = crate::query::sort::sort_key(doc, path, *ascending);
            let ord = crate::query::order::compare(&key, value);
            let ord = if *ascending { ord } else { ord.reverse() };
            if ord != std::cmp::Ordering::Equal {
                return ord;
            }
        }
        std::cmp::Ordering::Equal
    }

    pub fn contains(&self, doc: &Document) -> bool {
        self.min
            .as_ref()
            .is_none_or(|m| self.compare(doc, m) != std::cmp::Ordering::Less)
            && self
                .max
                .as_ref()
                .is_none_or(|m| self.compare(doc, m) == std::cmp::Ordering::Less)
    }
}

/// The fields and directions of an ascending/descending index (None for text, hashed,
/// geo and other special indexes, whose order is not a sort order).
pub fn index_paths(key: &Document) -> Option<Vec<(String, bool)>> {
    key.iter()
        .map(|(path, dir)| {
            let d = match dir {
                Bson::Int32(n) => f64::from(*n),
                Bson::Int64(n) => *n as f64,
                Bson::Double(f) => *f,
                _ => return None,
            };
            (d != 0.0).then(|| (path.clone(), d > 0.0))
        })
        .collect()
}
