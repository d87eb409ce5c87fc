//! A direct [`Document`]-to-BSON encoder, appending to a `Vec<u8>`: replies, cursor
//! batches and change events are written with it instead of `bson`'s serde-based
//! serializer, which costs several times more per document.
//!
//! Its output is byte for byte what `bson::to_vec` writes, for every BSON type (regex
//! options sorted, old binary with its inner length, code with scope with its total
//! length), and it fails exactly where `bson` fails: on a key or regex part that holds a
//! NUL byte, which a cstring cannot carry.

use bson::spec::BinarySubtype;
use bson::{doc, Binary, Bson, Document};

/// A string that must be written as a cstring holds a NUL byte.
#[derive(Debug, thiserror::Error)]
#[error("cannot encode {0:?} as a BSON cstring: it contains a NUL byte")]
pub struct EncodeError(pub String);

impl From<EncodeError> for crate::error::CommandError {
    fn from(e: EncodeError) -> Self {
        crate::error::CommandError::new(crate::error::codes::INTERNAL_ERROR, e.to_string())
    }
}

/// Appends `doc` as one BSON document.
pub fn document(buf: &mut Vec<u8>, doc: &Document) -> Result<(), EncodeError> {
    let start = open(buf);
    for (key, value) in doc {
        element(buf, key, value)?;
    }
    end(buf, start);
    Ok(())
}

/// Starts a document or array: a length placeholder that [`end`] fills in.
pub fn open(buf: &mut Vec<u8>) -> usize {
    let start = buf.len();
    buf.extend_from_slice(&[0; 4]);
    start
}

/// Terminates the document or array opened at `start` and writes its length.
pub fn end(buf: &mut Vec<u8>, start: usize) {
    buf.push(0);
    patch_length(buf, start);
}

/// Writes the length of everything from `start` (where [`open`] left a placeholder).
fn patch_length(buf: &mut [u8], start: usize) {
    let len = (buf.len() - start) as i32;
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
}

/// Appends one element: type byte, key, value.
pub fn element(buf: &mut Vec<u8>, key: &str, value: &Bson) -> Result<(), EncodeError> {
    buf.push(value.element_type() as u8);
    cstring(buf, key)?;
    self::value(buf, value)
}

/// Appends the header of an element whose value the caller writes: type byte and key.
pub fn element_header(
    buf: &mut Vec<u8>,
    kind: bson::spec::ElementType,
    key: &str,
) -> Result<(), EncodeError> {
    buf.push(kind as u8);
    cstring(buf, key)
}

/// Appends the header of array element `index` of type `kind` (its key is the index).
pub fn index_header(buf: &mut Vec<u8>, kind: bson::spec::ElementType, index: usize) {
    buf.push(kind as u8);
    decimal(buf, index);
    buf.push(0);
}

/// Appends a string element's value: length (with the NUL), bytes, NUL.
pub fn string(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as i32 + 1).to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
    buf.push(0);
}

fn cstring(buf: &mut Vec<u8>, s: &str) -> Result<(), EncodeError> {
    if s.as_bytes().contains(&0) {
        return Err(EncodeError(s.to_string()));
    }
    buf.extend_from_slice(s.as_bytes());
    buf.push(0);
    Ok(())
}

fn decimal(buf: &mut Vec<u8>, mut n: usize) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[at..]);
}

fn array(buf: &mut Vec<u8>, items: &[Bson]) -> Result<(), EncodeError> {
    let start = open(buf);
    for (i, item) in items.iter().enumerate() {
        index_header(buf, item.element_type(), i);
        value(buf, item)?;
    }
    end(buf, start);
    Ok(())
}

/// Appends a value (the part of an element after its key).
pub fn value(buf: &mut Vec<u8>, value: &Bson) -> Result<(), EncodeError> {
    match value {
        Bson::Double(f) => buf.extend_from_slice(&f.to_le_bytes()),
        Bson::String(s) | Bson::JavaScriptCode(s) | Bson::Symbol(s) => string(buf, s),
        Bson::Document(d) => document(buf, d)?,
        Bson::Array(items) => array(buf, items)?,
        Bson::Binary(b) => binary(buf, b),
        Bson::Undefined | Bson::Null | Bson::MinKey | Bson::MaxKey => {}
        Bson::ObjectId(oid) => buf.extend_from_slice(&oid.bytes()),
        Bson::Boolean(b) => buf.push(u8::from(*b)),
        Bson::DateTime(dt) => buf.extend_from_slice(&dt.timestamp_millis().to_le_bytes()),
        Bson::RegularExpression(re) => {
            cstring(buf, &re.pattern)?;
            let mut options: Vec<char> = re.options.chars().collect();
            options.sort_unstable();
            cstring(buf, &options.into_iter().collect::<String>())?;
        }
        Bson::DbPointer(_) => {
            // Its fields are private to `bson`: take the value out of bson's own encoding
            // of `{"": value}` (length 4, type 1, empty key 1, value, terminator 1).
            let bytes =
                bson::to_vec(&doc! {"": value.clone()}).map_err(|e| EncodeError(e.to_string()))?;
            if let Some(v) = bytes.get(6..bytes.len().saturating_sub(1)) {
                buf.extend_from_slice(v);
            }
        }
        Bson::JavaScriptCodeWithScope(c) => {
            let start = open(buf);
            string(buf, &c.code);
            document(buf, &c.scope)?;
            patch_length(buf, start);
        }
        Bson::Int32(n) => buf.extend_from_slice(&n.to_le_bytes()),
        Bson::Timestamp(ts) => {
            buf.extend_from_slice(&ts.increment.to_le_bytes());
            buf.extend_from_slice(&ts.time.to_le_bytes());
        }
        Bson::Int64(n) => buf.extend_from_slice(&n.to_le_bytes()),
        Bson::Decimal128(d) => buf.extend_from_slice(&d.bytes()),
    }
    Ok(())
}

/// Appends a binary value (old binary carries its length twice, as `bson` writes it).
pub fn binary(buf: &mut Vec<u8>, b: &Binary) {
    let len = b.bytes.len() as i32;
    if b.subtype == BinarySubtype::BinaryOld {
        buf.extend_from_slice(&(len + 4).to_le_bytes());
        buf.push(u8::from(b.subtype));
        buf.extend_from_slice(&len.to_le_bytes());
    } else {
        buf.extend_from_slice(&len.to_le_bytes());
        buf.push(u8::from(b.subtype));
    }
    buf.extend_from_slice(&b.bytes);
}

/// `doc` as BSON bytes.
pub fn to_vec(doc: &Document) -> Result<Vec<u8>, EncodeError> {
    let mut buf = Vec::with_capacity(crate::storage::encoded_size(doc));
    document(&mut buf, doc)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::oid::ObjectId;
    use bson::{DateTime, Decimal128, JavaScriptCodeWithScope, Regex, Timestamp};

    fn same_as_bson(d: &Document) {
        let ours = to_vec(d).expect("encodes");
        let theirs = bson::to_vec(d).expect("bson encodes");
        assert_eq!(ours, theirs, "{d}");
        assert_eq!(ours.len(), crate::storage::encoded_size(d));
    }

    fn every_type() -> Document {
        let many: Vec<Bson> = (0..1005).map(|i| Bson::Int64(i * 3)).collect();
        let subtypes = [
            BinarySubtype::Generic,
            BinarySubtype::Function,
            BinarySubtype::BinaryOld,
            BinarySubtype::UuidOld,
            BinarySubtype::Uuid,
            BinarySubtype::Md5,
            BinarySubtype::Encrypted,
            BinarySubtype::Column,
            BinarySubtype::Sensitive,
            BinarySubtype::UserDefined(0x80),
            BinarySubtype::Reserved(0x42),
        ];
        let binaries: Vec<Bson> = subtypes
            .iter()
            .map(|s| {
                Bson::Binary(Binary {
                    subtype: *s,
                    bytes: vec![1, 2, 3, 0, 255],
                })
            })
            .collect();
        let dbpointer = match bson::Document::from_reader(
            &[
                // {"p": DBPointer("db.c", ObjectId(01..0c))}
                &[
                    29u8, 0, 0, 0, 0x0C, b'p', 0, 5, 0, 0, 0, b'd', b'b', b'.', b'c', 0,
                ][..],
                &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 0][..],
            ]
            .concat()[..],
        ) {
            Ok(d) => d.get("p").cloned().expect("pointer"),
            Err(e) => panic!("dbpointer fixture: {e}"),
        };
        doc! {
            "_id": ObjectId::from_bytes([9; 12]), "d": 1.5, "neg0": -0.0, "nan": f64::NAN,
            "inf": f64::NEG_INFINITY, "s": "héllo", "empty": "", "nul inside": "a\0b",
            "doc": {"a": {"b": [1, "x", {"c": []}], "e": {}}}, "many": many,
            "binaries": binaries, "emptybin": Binary {subtype: BinarySubtype::BinaryOld, bytes: vec![]},
            "undef": Bson::Undefined, "t": true, "f": false, "dt": DateTime::from_millis(-1234),
            "null": Bson::Null,
            "re": Regex {pattern: "a.*b".into(), options: "xsmi".into()},
            "re2": Regex {pattern: "".into(), options: "".into()},
            "ptr": dbpointer, "js": Bson::JavaScriptCode("f()".into()),
            "sym": Bson::Symbol("sym".into()),
            "jsw": JavaScriptCodeWithScope {code: "g(x)".into(), scope: doc! {"x": 1, "y": {"z": [Bson::MinKey]}}},
            "i32": -7, "ts": Timestamp {time: 0xdead_beef, increment: 0x0102_0304}, "i64": i64::MIN,
            "dec": Decimal128::from_bytes([7; 16]), "min": Bson::MinKey, "max": Bson::MaxKey,
            "nested arrays": [[[1], []], [{"k": Bson::Null}]],
        }
    }

    #[test]
    fn encodes_every_type_like_bson() {
        same_as_bson(&Document::new());
        same_as_bson(&every_type());
        same_as_bson(&doc! {"deep": every_type(), "in array": [every_type(), every_type()]});
    }

    #[test]
    fn fails_where_bson_fails() {
        for d in [
            doc! {"a\0b": 1},
            doc! {"ok": {"x\0": 1}},
            doc! {"re": Regex {pattern: "a\0".into(), options: "".into()}},
            doc! {"re": Regex {pattern: "a".into(), options: "i\0".into()}},
            doc! {"arr": [{"k\0": 1}]},
        ] {
            assert!(bson::to_vec(&d).is_err(), "{d:?}");
            assert!(to_vec(&d).is_err(), "{d:?}");
        }
    }
}
