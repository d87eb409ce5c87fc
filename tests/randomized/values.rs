//! Seeded generators of BSON values, `_id`s and documents: every BSON type, unicode keys
//! and strings, deep nesting, arrays of subdocuments for index paths, and (behind their
//! switches) `$`-prefixed and dotted top-level field names.

use bson::spec::BinarySubtype;
use bson::{doc, oid::ObjectId, Binary, Bson, DateTime, Decimal128, Document, Regex, Timestamp};
use rand::rngs::StdRng;
use rand::Rng;

/// Strings that exercise UTF-8 beyond ASCII: accents, CJK, RTL, emoji, combining marks.
const WORDS: [&str; 12] = [
    "plain",
    "café",
    "naïve",
    "日本語",
    "中文字",
    "עברית",
    "العربية",
    "🚀🌍",
    "e\u{301}",
    "Ω≈ç√",
    "ümlaut",
    "ключ",
];

/// Field names beyond ASCII (keys are compared byte for byte too).
const KEYS: [&str; 6] = ["名前", "ключ", "clé", "🔑", "k\u{301}ey", "ελληνικά"];

pub fn word(rng: &mut StdRng) -> String {
    let n = rng.gen_range(1..4);
    (0..n)
        .map(|_| WORDS[rng.gen_range(0..WORDS.len())])
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn unicode_key(rng: &mut StdRng) -> String {
    KEYS[rng.gen_range(0..KEYS.len())].to_string()
}

/// A Decimal128 from its decimal text (the bson crate parses it).
pub fn decimal(text: &str) -> Bson {
    match text.parse::<Decimal128>() {
        Ok(d) => Bson::Decimal128(d),
        Err(e) => panic!("test bug: {text:?} is not a decimal: {e}"),
    }
}

/// A scalar of any BSON type, including the awkward ones (NaN, -0.0, MinKey, regexes).
pub fn scalar(rng: &mut StdRng) -> Bson {
    match rng.gen_range(0..20) {
        0 => Bson::Int32(rng.gen_range(-1000..1000)),
        1 => Bson::Int64(rng.gen_range(-1_000_000_000_000i64..1_000_000_000_000)),
        2 => Bson::Double(rng.gen_range(-1e6..1e6)),
        3 => Bson::Double([f64::NAN, -0.0, f64::INFINITY, 1e-300][rng.gen_range(0..4)]),
        4 => decimal(&format!(
            "{}.{}",
            rng.gen_range(-9999..9999),
            rng.gen_range(0..999)
        )),
        5 | 6 => Bson::String(word(rng)),
        7 => Bson::Boolean(rng.gen()),
        8 => Bson::Null,
        9 => Bson::DateTime(DateTime::from_millis(
            rng.gen_range(0..4_000_000_000_000i64),
        )),
        10 => Bson::ObjectId(ObjectId::from_bytes(rng.gen())),
        11 => Bson::Binary(Binary {
            subtype: BinarySubtype::Generic,
            bytes: (0..rng.gen_range(0..24)).map(|_| rng.gen()).collect(),
        }),
        12 => Bson::Binary(Binary {
            subtype: BinarySubtype::Uuid,
            bytes: rng.gen::<[u8; 16]>().to_vec(),
        }),
        13 => Bson::Timestamp(Timestamp {
            time: rng.gen_range(1..2_000_000_000),
            increment: rng.gen_range(0..100),
        }),
        14 => Bson::RegularExpression(Regex {
            pattern: "^a.*b$".into(),
            options: "i".into(),
        }),
        15 => Bson::MinKey,
        16 => Bson::MaxKey,
        17 => Bson::JavaScriptCode("function() { return 1; }".into()),
        18 => Bson::Symbol("sym".into()),
        _ => Bson::Undefined,
    }
}

/// A value: a scalar, a small array or a small subdocument.
pub fn value(rng: &mut StdRng, depth: usize) -> Bson {
    if depth == 0 {
        return scalar(rng);
    }
    match rng.gen_range(0..10) {
        0 => Bson::Array(
            (0..rng.gen_range(0..4))
                .map(|_| value(rng, depth - 1))
                .collect(),
        ),
        1 => {
            let mut d = Document::new();
            for i in 0..rng.gen_range(0..4) {
                d.insert(format!("f{i}"), value(rng, depth - 1));
            }
            Bson::Document(d)
        }
        _ => scalar(rng),
    }
}

/// A chain of `depth` nested subdocuments ending in a value.
pub fn nested(rng: &mut StdRng, depth: usize) -> Bson {
    let mut v = scalar(rng);
    for level in 0..depth {
        v = Bson::Document(doc! {format!("l{level}"): v, "n": level as i32});
    }
    v
}

/// The kinds of `_id` a collection gets. Numeric kinds live in disjoint value ranges so
/// that no two are numerically equal (that case is the `equal_ids` switch's own op).
pub fn id(rng: &mut StdRng, seq: u64) -> Bson {
    match rng.gen_range(0..12) {
        0 | 1 => Bson::Int32(seq as i32),
        2 => Bson::Int64((1 << 40) + seq as i64),
        3 => Bson::Double(seq as f64 + 0.5),
        4 => decimal(&format!("{seq}.25")),
        5 => Bson::String(format!("{}-{seq}", WORDS[(seq % 12) as usize])),
        6 | 7 => Bson::ObjectId(ObjectId::from_bytes({
            let mut b = [0u8; 12];
            b[..4].copy_from_slice(&0x5f00_0000u32.to_be_bytes());
            b[4..].copy_from_slice(&seq.to_be_bytes());
            b
        })),
        8 => Bson::Document(doc! {"k": seq as i64, "s": WORDS[(seq % 12) as usize]}),
        9 => Bson::Binary(Binary {
            subtype: if seq.is_multiple_of(2) {
                BinarySubtype::Generic
            } else {
                BinarySubtype::Uuid
            },
            bytes: {
                let mut b = vec![0u8; 16];
                b[8..].copy_from_slice(&seq.to_be_bytes());
                b
            },
        }),
        10 => Bson::DateTime(DateTime::from_millis(1_600_000_000_000 + seq as i64)),
        _ => Bson::Timestamp(Timestamp {
            time: 1_000_000 + seq as u32,
            increment: 1,
        }),
    }
}

/// The numerically equal `_id`s of `n` in four types.
pub fn equal_ids(n: i32) -> [Bson; 4] {
    [
        Bson::Int32(n),
        Bson::Int64(n as i64),
        Bson::Double(n as f64),
        decimal(&n.to_string()),
    ]
}

/// What kinds of field names a generated document may carry.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    /// Top-level field names with a dot in them (`"a.b"`), legal since 5.0.
    pub dotted: bool,
    /// Top-level `$`-prefixed field names (`"$price"`), legal since 5.0.
    pub dollar: bool,
    /// Extra padding bytes.
    pub pad: usize,
}

/// A document with the fields the update generators aim at: `g` (group for multi
/// updates), `cnt` (number), `bits` (int), `s` (string), `arr` (ints), `tags` (strings),
/// `objs` (subdocuments, for `objs.3.b` paths), `sub` (nested), plus random extras.
pub fn document(rng: &mut StdRng, id: Bson, shape: Shape) -> Document {
    let mut d = doc! {"_id": id};
    d.insert("g", rng.gen_range(0..8i32));
    d.insert(
        "cnt",
        match rng.gen_range(0..3) {
            0 => Bson::Int32(rng.gen_range(0..100)),
            1 => Bson::Int64(rng.gen_range(0..100)),
            _ => Bson::Double(rng.gen_range(0.0..100.0)),
        },
    );
    d.insert("bits", rng.gen_range(0..256i32));
    d.insert("s", word(rng));
    d.insert(
        "arr",
        (0..rng.gen_range(0..8))
            .map(|_| Bson::Int32(rng.gen_range(0..20)))
            .collect::<Vec<_>>(),
    );
    d.insert(
        "tags",
        (0..rng.gen_range(0..4))
            .map(|_| Bson::String(WORDS[rng.gen_range(0..WORDS.len())].into()))
            .collect::<Vec<_>>(),
    );
    d.insert(
        "objs",
        (0..rng.gen_range(0..6))
            .map(|i: i32| Bson::Document(doc! {"b": i, "c": word(rng)}))
            .collect::<Vec<_>>(),
    );
    d.insert("sub", doc! {"a": value(rng, 2), "b": {"c": value(rng, 1)}});
    for _ in 0..rng.gen_range(0..3) {
        d.insert(unicode_key(rng), value(rng, 2));
    }
    if rng.gen_ratio(1, 10) {
        let depth = rng.gen_range(10..90);
        d.insert("deep", nested(rng, depth));
    }
    if shape.dotted && rng.gen_ratio(1, 4) {
        d.insert("a.b", value(rng, 1));
        d.insert("x.y.z", word(rng));
    }
    if shape.dollar && rng.gen_ratio(1, 4) {
        d.insert("$price", value(rng, 1));
        d.insert("$meta", doc! {"v": 1});
    }
    if shape.pad > 0 {
        d.insert("pad", "p".repeat(shape.pad));
    }
    d
}
