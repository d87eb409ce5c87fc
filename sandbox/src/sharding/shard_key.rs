//! Shard keys: the pattern (`{a: 1, b: "hashed"}`), a document's key value, the value of
//! a hashed field, and key comparison for chunk bounds (`MinKey`/`MaxKey` included).

use std::cmp::Ordering;

use bson::{doc, Bson, Document};
use md5::{Digest, Md5};

use crate::error::{codes, CmdResult, CommandError};
use crate::query::order::compare;
use crate::query::path::get_path;

/// One field of a shard key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyField {
    pub path: String,
    pub hashed: bool,
}

/// A parsed shard key pattern.
#[derive(Clone, Debug)]
pub struct ShardKey {
    pub pattern: Document,
    pub fields: Vec<KeyField>,
}

impl ShardKey {
    /// Parses a `key` as `shardCollection` takes it: fields valued 1 (ranged) or
    /// `"hashed"`, at most one hashed field.
    pub fn parse(pattern: &Document) -> CmdResult<ShardKey> {
        if pattern.is_empty() {
            return Err(CommandError::new(
                codes::BAD_VALUE,
                "Shard key cannot be empty: give the key fields, e.g. {key: {customerId: 1}}",
            ));
        }
        let mut fields = Vec::new();
        for (path, v) in pattern {
            let hashed = match v {
                Bson::String(s) if s == "hashed" => true,
                Bson::Int32(1) | Bson::Int64(1) => false,
                Bson::Double(f) if *f == 1.0 => false,
                other => {
                    return Err(CommandError::new(
                        codes::BAD_VALUE,
                        format!(
                            "Unsupported shard key pattern {pattern}. Pattern must either be a single hashed field, or a list of ascending fields; {path} is {other}"
                        ),
                    ))
                }
            };
            if path.is_empty() || path.starts_with('$') {
                return Err(CommandError::new(
                    codes::BAD_VALUE,
                    format!("Unsupported shard key pattern {pattern}: invalid field {path:?}"),
                ));
            }
            fields.push(KeyField {
                path: path.clone(),
                hashed,
            });
        }
        if fields.iter().filter(|f| f.hashed).count() > 1 {
            return Err(CommandError::new(
                codes::BAD_VALUE,
                format!(
                    "Unsupported shard key pattern {pattern}: only one hashed field is allowed"
                ),
            ));
        }
        Ok(ShardKey {
            pattern: pattern.clone(),
            fields,
        })
    }

    pub fn hashed_field(&self) -> Option<&KeyField> {
        self.fields.iter().find(|f| f.hashed)
    }

    /// The smallest key: `MinKey` in every field.
    pub fn global_min(&self) -> Document {
        self.fields
            .iter()
            .map(|f| (f.path.clone(), Bson::MinKey))
            .collect()
    }
    /// The largest key: `MaxKey` in every field.
    pub fn global_max(&self) -> Document {
        self.fields
            .iter()
            .map(|f| (f.path.clone(), Bson::MaxKey))
            .collect()
    }

    /// The key of a stored (or to-be-stored) document: a missing field counts as null, a
    /// hashed field holds the hash of its value.
    pub fn key_of(&self, document: &Document) -> Document {
        self.fields
            .iter()
            .map(|f| {
                let value = get_path(document, &f.path).cloned().unwrap_or(Bson::Null);
                let value = if f.hashed {
                    Bson::Int64(hash_value(&value))
                } else {
                    value
                };
                (f.path.clone(), value)
            })
            .collect()
    }

    /// The key a filter pins down by equality on every key field (`{k: v}` or
    /// `{k: {$eq: v}}`), or None when it does not (then the command goes to several
    /// shards).
    pub fn key_from_equality(&self, filter: &Document) -> Option<Document> {
        let mut key = Document::new();
        for f in &self.fields {
            let value = equality_value(filter, &f.path)?;
            let value = if f.hashed {
                Bson::Int64(hash_value(&value))
            } else {
                value
            };
            key.insert(f.path.clone(), value);
        }
        Some(key)
    }

    /// The shard key fields of a document, unhashed (for `documentKey` and error
    /// messages): `{k1: v1, k2: v2}`; missing fields are left out.
    pub fn fields_of(&self, document: &Document) -> Document {
        let mut out = Document::new();
        for f in &self.fields {
            if let Some(v) = get_path(document, &f.path) {
                out.insert(f.path.clone(), v.clone());
            }
        }
        out
    }
}

/// The value a filter requires `path` to equal, when it is a plain equality (not a
/// regular expression, array or operator document other than `$eq`).
pub fn equality_value(filter: &Document, path: &str) -> Option<Bson> {
    let direct = filter.get(path).cloned().or_else(|| {
        // `{a: {b: 1}}` pins `a.b` only as part of a whole-document equality: not used.
        None
    });
    let value = match direct {
        Some(Bson::Document(d)) if d.keys().next().is_some_and(|k| k.starts_with('$')) => {
            if d.len() == 1 {
                d.get("$eq").cloned()?
            } else {
                return None;
            }
        }
        Some(v) => v,
        None => {
            // `$and: [{k: v}, ...]`
            let clauses = filter.get_array("$and").ok()?;
            return clauses
                .iter()
                .filter_map(|c| c.as_document())
                .find_map(|c| equality_value(c, path));
        }
    };
    match value {
        Bson::RegularExpression(_) | Bson::Array(_) => None,
        v => Some(v),
    }
}

/// Orders two keys of one pattern, field by field, in BSON order.
pub fn compare_keys(a: &Document, b: &Document) -> Ordering {
    for (x, y) in a.values().zip(b.values()) {
        match compare(x, y) {
            Ordering::Equal => continue,
            other => return other,
        }
    }
    Ordering::Equal
}

/// Whether `key` lies in `[min, max)`.
pub fn in_range(key: &Document, min: &Document, max: &Document) -> bool {
    compare_keys(min, key) != Ordering::Greater && compare_keys(key, max) == Ordering::Less
}

/// The 64-bit hash of a value for a hashed index or shard key. Equal numbers of different
/// types hash alike (1, 1.0 and 1L are one key), as the real server's do; the values
/// themselves are the sandbox's own (MD5 of a canonical encoding), not the real server's.
pub fn hash_value(value: &Bson) -> i64 {
    let mut hasher = Md5::new();
    hasher.update([0u8; 4]);
    canonical_bytes(value, &mut hasher);
    let digest = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    i64::from_le_bytes(first)
}

fn canonical_bytes(value: &Bson, out: &mut Md5) {
    let rank = crate::query::order::type_rank(value);
    out.update([rank]);
    match value {
        // Every number, whatever its type, as the server hashes it: converted to a
        // double, then truncated to a 64-bit integer (saturating; NaN is 0). So 2, 2L,
        // 2.0, 2.9 and NumberDecimal("2") hash alike and live on one shard.
        Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) | Bson::Decimal128(_) => {
            let f = match value {
                Bson::Int32(n) => f64::from(*n),
                Bson::Int64(n) => *n as f64,
                Bson::Double(f) => *f,
                Bson::Decimal128(d) => crate::query::order::decimal_to_f64(d),
                _ => 0.0,
            };
            // `as` saturates at the i64 bounds and maps NaN to 0.
            out.update((f as i64).to_le_bytes())
        }
        Bson::Document(d) => {
            for (k, v) in d {
                out.update(k.as_bytes());
                out.update([0]);
                canonical_bytes(v, out);
            }
        }
        Bson::Array(a) => {
            for v in a {
                canonical_bytes(v, out);
            }
        }
        other => {
            let bytes = bson::to_vec(&doc! {"": other.clone()}).unwrap_or_default();
            out.update(bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_of_different_types_hash_alike() {
        assert_eq!(hash_value(&Bson::Int32(1)), hash_value(&Bson::Int64(1)));
        assert_eq!(hash_value(&Bson::Int32(1)), hash_value(&Bson::Double(1.0)));
        assert_ne!(hash_value(&Bson::Int32(1)), hash_value(&Bson::Int32(2)));
        // Decimals too, and fractions are truncated (2.3, 2.2 and 2.9 collide).
        let two = hash_value(&Bson::Int32(2));
        let decimal: bson::Decimal128 = "2".parse().unwrap();
        assert_eq!(hash_value(&Bson::Decimal128(decimal)), two);
        assert_eq!(hash_value(&Bson::Double(2.9)), two);
        assert_eq!(hash_value(&Bson::Double(-0.0)), hash_value(&Bson::Int32(0)));
        assert_eq!(
            hash_value(&Bson::Double(f64::NAN)),
            hash_value(&Bson::Int32(0))
        );
    }

    #[test]
    fn missing_key_field_counts_as_null() {
        let key = ShardKey::parse(&doc! {"a": 1, "b": 1}).unwrap();
        assert_eq!(key.key_of(&doc! {"a": 5}), doc! {"a": 5, "b": Bson::Null});
    }

    #[test]
    fn ranges_are_half_open() {
        let min = doc! {"a": Bson::MinKey};
        let mid = doc! {"a": 10};
        assert!(in_range(&doc! {"a": 9}, &min, &mid));
        assert!(!in_range(&doc! {"a": 10}, &min, &mid));
    }
}
