//! A direct BSON-to-[`Document`] decoder for the common element types, used before
//! `bson`'s own (serde-based) decoder, which is several times slower on large commands.
//!
//! It never decides anything `bson` would decide differently: on any element type outside
//! its list, any structural doubt (lengths, terminators, array keys, invalid UTF-8, NUL
//! inside a string, duplicate keys) or any key `bson` reads as extended JSON (`$oid`,
//! `$date`, ...), it gives up and the caller decodes the same bytes with `bson`, so
//! acceptance, errors and results stay exactly `bson`'s.

use bson::{oid::ObjectId, spec::BinarySubtype, Binary, Bson, DateTime, Document, Timestamp};

/// Deeper documents are left to `bson`.
const MAX_DEPTH: usize = 64;

/// Keys `bson`'s document visitor treats as extended JSON.
const EXTJSON_KEYS: &[&str] = &[
    "$oid",
    "$symbol",
    "$numberInt",
    "$numberLong",
    "$numberDouble",
    "$binary",
    "$uuid",
    "$code",
    "$scope",
    "$timestamp",
    "$regularExpression",
    "$dbPointer",
    "$date",
    "$maxKey",
    "$minKey",
    "$undefined",
    "$numberDecimal",
    "$numberDecimalBytes",
];

/// Decodes `bytes` (exactly one document) or returns None when `bson` must decide.
pub fn document(bytes: &[u8]) -> Option<Document> {
    let (doc, end) = read_document(bytes, 0, 0)?;
    (end == bytes.len()).then_some(doc)
}

fn read_len(buf: &[u8], at: usize) -> Option<usize> {
    let b = buf.get(at..at.checked_add(4)?)?;
    let n = i32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    usize::try_from(n).ok()
}

fn fixed<const N: usize>(buf: &[u8], at: usize) -> Option<[u8; N]> {
    buf.get(at..at.checked_add(N)?)?.try_into().ok()
}

/// The document starting at `at` and the offset just after it.
fn read_document(buf: &[u8], at: usize, depth: usize) -> Option<(Document, usize)> {
    let (body, end) = frame(buf, at, depth)?;
    let mut doc = Document::new();
    let mut pos = 0;
    loop {
        let kind = *body.get(pos)?;
        if kind == 0 {
            break;
        }
        let (key, next) = cstring(body, pos + 1)?;
        if key.starts_with('$') && EXTJSON_KEYS.contains(&key) {
            return None;
        }
        let (value, next) = read_value(body, kind, next, depth)?;
        if doc.insert(key, value).is_some() {
            return None;
        }
        pos = next;
    }
    (pos + 1 == body.len()).then_some((doc, end))
}

/// The array starting at `at` (keys must be "0", "1", ...) and the offset after it.
fn read_array(buf: &[u8], at: usize, depth: usize) -> Option<(Vec<Bson>, usize)> {
    let (body, end) = frame(buf, at, depth)?;
    let mut items = Vec::new();
    let mut pos = 0;
    let mut index = String::new();
    loop {
        let kind = *body.get(pos)?;
        if kind == 0 {
            break;
        }
        let (key, next) = cstring(body, pos + 1)?;
        index.clear();
        {
            use std::fmt::Write;
            let _ = write!(index, "{}", items.len());
        }
        if key != index {
            return None;
        }
        let (value, next) = read_value(body, kind, next, depth)?;
        items.push(value);
        pos = next;
    }
    (pos + 1 == body.len()).then_some((items, end))
}

/// A length-prefixed, NUL-terminated frame at `at`: its bytes after the length, and its end.
fn frame(buf: &[u8], at: usize, depth: usize) -> Option<(&[u8], usize)> {
    if depth > MAX_DEPTH {
        return None;
    }
    let len = read_len(buf, at)?;
    if len < 5 {
        return None;
    }
    let end = at.checked_add(len)?;
    let body = buf.get(at + 4..end)?;
    (body.last() == Some(&0)).then_some((body, end))
}

fn cstring(buf: &[u8], at: usize) -> Option<(&str, usize)> {
    let rest = buf.get(at..)?;
    let nul = rest.iter().position(|b| *b == 0)?;
    let s = std::str::from_utf8(&rest[..nul]).ok()?;
    Some((s, at + nul + 1))
}

fn read_value(buf: &[u8], kind: u8, at: usize, depth: usize) -> Option<(Bson, usize)> {
    Some(match kind {
        0x01 => (Bson::Double(f64::from_le_bytes(fixed(buf, at)?)), at + 8),
        0x02 => {
            let len = read_len(buf, at)?;
            let start = at + 4;
            let end = start.checked_add(len)?;
            let bytes = buf.get(start..end)?;
            let (last, text) = bytes.split_last()?;
            if *last != 0 || text.contains(&0) {
                return None;
            }
            let s = std::str::from_utf8(text).ok()?;
            (Bson::String(s.to_owned()), end)
        }
        0x03 => {
            let (d, end) = read_document(buf, at, depth + 1)?;
            (Bson::Document(d), end)
        }
        0x04 => {
            let (items, end) = read_array(buf, at, depth + 1)?;
            (Bson::Array(items), end)
        }
        0x05 => {
            let len = read_len(buf, at)?;
            let subtype = match *buf.get(at + 4)? {
                0x00 => BinarySubtype::Generic,
                0x04 => BinarySubtype::Uuid,
                _ => return None,
            };
            let start = at + 5;
            let end = start.checked_add(len)?;
            let bytes = buf.get(start..end)?.to_vec();
            (Bson::Binary(Binary { subtype, bytes }), end)
        }
        0x07 => (
            Bson::ObjectId(ObjectId::from_bytes(fixed(buf, at)?)),
            at + 12,
        ),
        0x08 => match *buf.get(at)? {
            0 => (Bson::Boolean(false), at + 1),
            1 => (Bson::Boolean(true), at + 1),
            _ => return None,
        },
        0x09 => (
            Bson::DateTime(DateTime::from_millis(i64::from_le_bytes(fixed(buf, at)?))),
            at + 8,
        ),
        0x0A => (Bson::Null, at),
        0x10 => (Bson::Int32(i32::from_le_bytes(fixed(buf, at)?)), at + 4),
        0x11 => {
            let b: [u8; 8] = fixed(buf, at)?;
            let increment = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            let time = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
            (Bson::Timestamp(Timestamp { time, increment }), at + 8)
        }
        0x12 => (Bson::Int64(i64::from_le_bytes(fixed(buf, at)?)), at + 8),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    fn both(bytes: &[u8]) -> (Option<Document>, Result<Document, String>) {
        (
            document(bytes),
            Document::from_reader(bytes).map_err(|e| e.to_string()),
        )
    }

    /// Whenever the fast decoder answers, `bson` gives exactly the same document.
    fn agrees(bytes: &[u8]) {
        if let (Some(fast), slow) = both(bytes) {
            let slow = slow.expect("bson rejects what the fast path accepted");
            assert_eq!(
                bson::to_vec(&fast).expect("encode"),
                bson::to_vec(&slow).expect("encode")
            );
        }
    }

    #[test]
    fn decodes_common_documents_like_bson() {
        let d = doc! {
            "update": "c", "$db": "d", "ordered": true, "n": 1, "l": 5i64, "f": -0.0,
            "nan": f64::NAN, "s": "héllo", "e": "", "null": Bson::Null,
            "oid": ObjectId::new(), "dt": DateTime::from_millis(-5),
            "ts": Timestamp {time: 7, increment: 9},
            "bin": Binary {subtype: BinarySubtype::Generic, bytes: vec![1, 2, 3]},
            "uuid": Binary {subtype: BinarySubtype::Uuid, bytes: vec![7; 16]},
            "updates": [{"q": {"_id": 1}, "u": {"_id": 1, "a": [1, [2, {"b": 3}], []], "x": {}}, "upsert": true}],
            "$set": {"a": 1},
        };
        let bytes = bson::to_vec(&d).expect("encode");
        let fast = document(&bytes).expect("fast path");
        assert_eq!(bson::to_vec(&fast).expect("encode"), bytes);
        agrees(&bytes);
    }

    #[test]
    fn leaves_other_types_and_extended_json_keys_to_bson() {
        for d in [
            doc! {"r": bson::Regex {pattern: "a".into(), options: "i".into()}},
            doc! {"d": bson::Decimal128::from_bytes([0; 16])},
            doc! {"m": Bson::MinKey},
            doc! {"x": {"$oid": "0123456789abcdef01234567"}},
            doc! {"x": {"a": 1, "$date": 5i64}},
            doc! {"b": Binary {subtype: BinarySubtype::BinaryOld, bytes: vec![1]}},
            doc! {"s": "a\0b"},
        ] {
            let bytes = bson::to_vec(&d).expect("encode");
            assert!(document(&bytes).is_none(), "{d}");
        }
    }

    #[test]
    fn never_disagrees_with_bson_on_damaged_input() {
        let d = doc! {"a": [1, "x", {"b": true}], "c": {"d": 1.5, "e": Bson::Null}, "f": 3i64,
        "g": ObjectId::from_bytes([3; 12]), "h": false};
        let bytes = bson::to_vec(&d).expect("encode");
        // Every single-byte change and every truncation.
        for i in 0..bytes.len() {
            for v in [0u8, 1, 2, 3, 4, 5, 0x10, 0x30, 0x7f, 0xff] {
                let mut b = bytes.clone();
                b[i] = v;
                agrees(&b);
            }
            agrees(&bytes[..i]);
        }
        // Duplicate keys and out-of-order array keys.
        let mut dup = bytes.clone();
        if let Some(p) = dup.windows(2).position(|w| w == b"c\0") {
            dup[p] = b'a';
        }
        assert!(document(&dup).is_none());
        agrees(&dup);
    }
}
