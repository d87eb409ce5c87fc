//! MongoDB's total order over BSON values, as used by comparisons, sorting and indexes.

use std::cmp::Ordering;

use bson::{Bson, Document};

/// The comparison bracket of a value: values in a lower bracket sort before every value in
/// a higher one, whatever their contents. Numbers of all widths share one bracket, as do
/// strings and symbols, and null and undefined.
pub fn type_rank(b: &Bson) -> u8 {
    match b {
        Bson::MinKey => 1,
        Bson::Null | Bson::Undefined => 2,
        Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) | Bson::Decimal128(_) => 3,
        Bson::Symbol(_) | Bson::String(_) => 4,
        Bson::Document(_) => 5,
        Bson::Array(_) => 6,
        Bson::Binary(_) => 7,
        Bson::ObjectId(_) => 8,
        Bson::Boolean(_) => 9,
        Bson::DateTime(_) => 10,
        Bson::Timestamp(_) => 11,
        Bson::RegularExpression(_) => 12,
        Bson::DbPointer(_) => 13,
        Bson::JavaScriptCode(_) => 14,
        Bson::JavaScriptCodeWithScope(_) => 15,
        Bson::MaxKey => 16,
    }
}

/// A number reduced to what comparison needs: exact integers stay exact.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Number {
    Int(i64),
    Float(f64),
}

impl Number {
    pub(crate) fn of(b: &Bson) -> Option<Number> {
        match b {
            Bson::Int32(i) => Some(Number::Int(i64::from(*i))),
            Bson::Int64(i) => Some(Number::Int(*i)),
            Bson::Double(d) => Some(Number::Float(*d)),
            Bson::Decimal128(d) => Some(Number::Float(decimal_to_f64(d))),
            _ => None,
        }
    }

    pub(crate) fn as_f64(self) -> f64 {
        match self {
            Number::Int(i) => i as f64,
            Number::Float(f) => f,
        }
    }
}

/// Approximates a decimal by a double (bson 2.x has no decimal arithmetic).
pub(crate) fn decimal_to_f64(d: &bson::Decimal128) -> f64 {
    d.to_string().parse::<f64>().unwrap_or(f64::NAN)
}

/// NaN sorts below every other number and equals itself, as in the server.
fn compare_floats(a: f64, b: f64) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        (false, false) => a.partial_cmp(&b).unwrap_or(Ordering::Equal),
    }
}

fn compare_int_float(i: i64, f: f64) -> Ordering {
    if f.is_nan() {
        return Ordering::Greater;
    }
    // 2^63 is exactly representable; every i64 is below it and at or above -2^63.
    if f >= 9_223_372_036_854_775_808.0 {
        return Ordering::Less;
    }
    if f < -9_223_372_036_854_775_808.0 {
        return Ordering::Greater;
    }
    let whole = f.trunc();
    match i.cmp(&(whole as i64)) {
        Ordering::Equal => compare_floats(0.0, f - whole),
        other => other,
    }
}

pub(crate) fn compare_numbers(a: Number, b: Number) -> Ordering {
    match (a, b) {
        (Number::Int(x), Number::Int(y)) => x.cmp(&y),
        (Number::Float(x), Number::Float(y)) => compare_floats(x, y),
        (Number::Int(x), Number::Float(y)) => compare_int_float(x, y),
        (Number::Float(x), Number::Int(y)) => compare_int_float(y, x).reverse(),
    }
}

fn string_of(b: &Bson) -> &str {
    match b {
        Bson::String(s) | Bson::Symbol(s) => s,
        _ => "",
    }
}

fn compare_documents(a: &Document, b: &Document) -> Ordering {
    let mut ai = a.iter();
    let mut bi = b.iter();
    loop {
        match (ai.next(), bi.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some((ka, va)), Some((kb, vb))) => {
                let ord = type_rank(va)
                    .cmp(&type_rank(vb))
                    .then_with(|| ka.as_bytes().cmp(kb.as_bytes()))
                    .then_with(|| compare(va, vb));
                if ord != Ordering::Equal {
                    return ord;
                }
            }
        }
    }
}

fn compare_arrays(a: &[Bson], b: &[Bson]) -> Ordering {
    for (x, y) in a.iter().zip(b.iter()) {
        let ord = compare(x, y);
        if ord != Ordering::Equal {
            return ord;
        }
    }
    a.len().cmp(&b.len())
}

/// Compares two values the way the server orders them (no collation: strings compare by
/// their UTF-8 bytes).
pub fn compare(a: &Bson, b: &Bson) -> Ordering {
    let rank = type_rank(a).cmp(&type_rank(b));
    if rank != Ordering::Equal {
        return rank;
    }
    match (a, b) {
        (Bson::Document(x), Bson::Document(y)) => compare_documents(x, y),
        (Bson::Array(x), Bson::Array(y)) => compare_arrays(x, y),
        (Bson::Binary(x), Bson::Binary(y)) => x
            .bytes
            .len()
            .cmp(&y.bytes.len())
            .then_with(|| u8::from(x.subtype).cmp(&u8::from(y.subtype)))
            .then_with(|| x.bytes.cmp(&y.bytes)),
        (Bson::ObjectId(x), Bson::ObjectId(y)) => x.bytes().cmp(&y.bytes()),
        (Bson::Boolean(x), Bson::Boolean(y)) => x.cmp(y),
        (Bson::DateTime(x), Bson::DateTime(y)) => x.timestamp_millis().cmp(&y.timestamp_millis()),
        (Bson::Timestamp(x), Bson::Timestamp(y)) => {
            (x.time, x.increment).cmp(&(y.time, y.increment))
        }
        (Bson::RegularExpression(x), Bson::RegularExpression(y)) => x
            .pattern
            .cmp(&y.pattern)
            .then_with(|| x.options.cmp(&y.options)),
        (Bson::JavaScriptCode(x), Bson::JavaScriptCode(y)) => x.cmp(y),
        (Bson::JavaScriptCodeWithScope(x), Bson::JavaScriptCodeWithScope(y)) => x
            .code
            .cmp(&y.code)
            .then_with(|| compare_documents(&x.scope, &y.scope)),
        (Bson::DbPointer(_), Bson::DbPointer(_)) => Ordering::Equal,
        _ => match (Number::of(a), Number::of(b)) {
            (Some(x), Some(y)) => compare_numbers(x, y),
            _ => string_of(a).as_bytes().cmp(string_of(b).as_bytes()),
        },
    }
}

/// Equality as queries see it: `1`, `1.0` and `NumberLong(1)` are all equal.
pub fn values_equal(a: &Bson, b: &Bson) -> bool {
    compare(a, b) == Ordering::Equal
}

/// A BSON value ordered by [`compare`], usable as a `BTreeMap`/`BTreeSet` key.
#[derive(Clone, Debug)]
pub struct OrdBson(pub Bson);

impl PartialEq for OrdBson {
    fn eq(&self, other: &Self) -> bool {
        values_equal(&self.0, &other.0)
    }
}

impl Eq for OrdBson {}

impl PartialOrd for OrdBson {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for OrdBson {
    fn cmp(&self, other: &Self) -> Ordering {
        compare(&self.0, &other.0)
    }
}

/// Whether two values have the same BSON bytes: same types, same field order, doubles by
/// bit pattern. This is the server's notion of "no change" for an update (a reordered
/// subdocument or an int32 replaced by an equal int64 is a change), unlike
/// [`values_equal`], which is the query language's equality.
pub fn binary_equal(a: &Bson, b: &Bson) -> bool {
    match (a, b) {
        (Bson::Document(x), Bson::Document(y)) => documents_binary_equal(x, y),
        (Bson::Array(x), Bson::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| binary_equal(p, q))
        }
        (Bson::Double(x), Bson::Double(y)) => x.to_bits() == y.to_bits(),
        (Bson::JavaScriptCodeWithScope(x), Bson::JavaScriptCodeWithScope(y)) => {
            x.code == y.code && documents_binary_equal(&x.scope, &y.scope)
        }
        _ => a == b,
    }
}

/// [`binary_equal`] for documents: the same fields in the same order with equal bytes.
pub fn documents_binary_equal(a: &Document, b: &Document) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|((ka, va), (kb, vb))| ka == kb && binary_equal(va, vb))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_equality_sees_order_types_and_signed_zero() {
        use bson::doc;
        let a = Bson::Document(doc! {"x": 1, "y": 2});
        assert!(binary_equal(&a, &Bson::Document(doc! {"x": 1, "y": 2})));
        assert!(!binary_equal(&a, &Bson::Document(doc! {"y": 2, "x": 1})));
        assert!(!binary_equal(&Bson::Int32(1), &Bson::Int64(1)));
        assert!(!binary_equal(&Bson::Double(0.0), &Bson::Double(-0.0)));
        assert!(binary_equal(
            &Bson::Double(f64::NAN),
            &Bson::Double(f64::NAN)
        ));
    }

    use bson::{doc, oid::ObjectId, Bson};

    #[test]
    fn numbers_of_different_widths_compare_by_value() {
        assert!(values_equal(&Bson::Int32(1), &Bson::Double(1.0)));
        assert!(values_equal(&Bson::Int64(1), &Bson::Int32(1)));
        assert_eq!(
            compare(&Bson::Int64(2), &Bson::Double(1.5)),
            Ordering::Greater
        );
        assert_eq!(
            compare(&Bson::Int64(i64::MAX), &Bson::Double(9.3e18)),
            Ordering::Less
        );
        let dec: bson::Decimal128 = "2.5".parse().expect("decimal");
        assert_eq!(
            compare(&Bson::Decimal128(dec), &Bson::Int32(2)),
            Ordering::Greater
        );
    }

    #[test]
    fn nan_is_below_all_numbers_and_equal_to_itself() {
        assert_eq!(
            compare(&Bson::Double(f64::NAN), &Bson::Int64(i64::MIN)),
            Ordering::Less
        );
        assert!(values_equal(
            &Bson::Double(f64::NAN),
            &Bson::Double(f64::NAN)
        ));
    }

    #[test]
    fn types_follow_the_server_bracket_order() {
        let ordered = vec![
            Bson::MinKey,
            Bson::Null,
            Bson::Int32(100),
            Bson::String("a".into()),
            Bson::Document(doc! {}),
            Bson::Array(vec![]),
            Bson::Binary(bson::Binary {
                subtype: bson::spec::BinarySubtype::Generic,
                bytes: vec![],
            }),
            Bson::ObjectId(ObjectId::new()),
            Bson::Boolean(false),
            Bson::DateTime(bson::DateTime::from_millis(0)),
            Bson::Timestamp(bson::Timestamp {
                time: 0,
                increment: 0,
            }),
            Bson::RegularExpression(bson::Regex {
                pattern: "a".into(),
                options: String::new(),
            }),
            Bson::MaxKey,
        ];
        for pair in ordered.windows(2) {
            assert_eq!(compare(&pair[0], &pair[1]), Ordering::Less, "{:?}", pair);
        }
    }

    #[test]
    fn undefined_equals_null_and_symbol_equals_string() {
        assert!(values_equal(&Bson::Undefined, &Bson::Null));
        assert!(values_equal(
            &Bson::Symbol("x".into()),
            &Bson::String("x".into())
        ));
    }

    #[test]
    fn arrays_and_documents_compare_elementwise_shorter_first() {
        let a = Bson::Array(vec![Bson::Int32(1), Bson::Int32(2)]);
        let b = Bson::Array(vec![Bson::Int32(1), Bson::Int32(2), Bson::Int32(0)]);
        assert_eq!(compare(&a, &b), Ordering::Less);
        let c = Bson::Array(vec![Bson::Int32(1), Bson::Int32(3)]);
        assert_eq!(compare(&c, &b), Ordering::Greater);
        let d1 = Bson::Document(doc! {"a": 1, "b": 2});
        let d2 = Bson::Document(doc! {"a": 1, "c": 0});
        assert_eq!(compare(&d1, &d2), Ordering::Less);
        assert!(values_equal(
            &Bson::Document(doc! {"a": 1}),
            &Bson::Document(doc! {"a": 1.0})
        ));
        assert!(!values_equal(
            &Bson::Document(doc! {"a": 1, "b": 2}),
            &Bson::Document(doc! {"b": 2, "a": 1})
        ));
    }

    #[test]
    fn ordbson_works_as_map_key() {
        let mut m = std::collections::BTreeMap::new();
        m.insert(OrdBson(Bson::Int32(1)), "int");
        m.insert(OrdBson(Bson::Double(1.0)), "double");
        m.insert(OrdBson(Bson::String("1".into())), "string");
        assert_eq!(m.len(), 2);
        assert_eq!(m.keys().next().map(|k| k.0.clone()), Some(Bson::Int32(1)));
    }
}
