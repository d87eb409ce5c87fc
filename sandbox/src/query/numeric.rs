//! Arithmetic on BSON numbers with the server's type promotion: the result has the widest
//! operand type (int32 < int64 < double < decimal), and integer overflow widens.

use bson::{Bson, Decimal128};

use super::order::decimal_to_f64;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Width {
    Int32,
    Int64,
    Double,
    Decimal,
}

fn width(b: &Bson) -> Option<Width> {
    match b {
        Bson::Int32(_) => Some(Width::Int32),
        Bson::Int64(_) => Some(Width::Int64),
        Bson::Double(_) => Some(Width::Double),
        Bson::Decimal128(_) => Some(Width::Decimal),
        _ => None,
    }
}

/// Whether a value is any BSON number.
pub(crate) fn is_number(b: &Bson) -> bool {
    width(b).is_some()
}

fn as_i64(b: &Bson) -> i64 {
    match b {
        Bson::Int32(i) => i64::from(*i),
        Bson::Int64(i) => *i,
        _ => 0,
    }
}

/// A number as a double (decimals approximated).
pub(crate) fn as_f64(b: &Bson) -> Option<f64> {
    match b {
        Bson::Int32(i) => Some(f64::from(*i)),
        Bson::Int64(i) => Some(*i as f64),
        Bson::Double(d) => Some(*d),
        Bson::Decimal128(d) => Some(decimal_to_f64(d)),
        _ => None,
    }
}

fn decimal_of(f: f64) -> Bson {
    match format!("{f}").parse::<Decimal128>() {
        Ok(d) => Bson::Decimal128(d),
        Err(_) => Bson::Double(f),
    }
}

fn combine(
    a: &Bson,
    b: &Bson,
    int_op: fn(i64, i64) -> Option<i64>,
    float_op: fn(f64, f64) -> f64,
) -> Option<Bson> {
    let w = width(a)?.max(width(b)?);
    let (x, y) = (as_f64(a)?, as_f64(b)?);
    Some(match w {
        Width::Int32 | Width::Int64 => match int_op(as_i64(a), as_i64(b)) {
            Some(r) if w == Width::Int32 => match i32::try_from(r) {
                Ok(small) => Bson::Int32(small),
                Err(_) => Bson::Int64(r),
            },
            Some(r) => Bson::Int64(r),
            None => Bson::Double(float_op(x, y)),
        },
        Width::Double => Bson::Double(float_op(x, y)),
        Width::Decimal => decimal_of(float_op(x, y)),
    })
}

/// `a + b`, or `None` when either is not a number.
pub(crate) fn add(a: &Bson, b: &Bson) -> Option<Bson> {
    combine(a, b, i64::checked_add, |x, y| x + y)
}

/// `a - b`, or `None` when either is not a number.
pub(crate) fn subtract(a: &Bson, b: &Bson) -> Option<Bson> {
    combine(a, b, i64::checked_sub, |x, y| x - y)
}

/// `a * b`, or `None` when either is not a number.
pub(crate) fn multiply(a: &Bson, b: &Bson) -> Option<Bson> {
    combine(a, b, i64::checked_mul, |x, y| x * y)
}

/// Zero of the same numeric type as `b` (what `$mul` stores into a missing field).
pub(crate) fn zero_like(b: &Bson) -> Bson {
    match b {
        Bson::Int64(_) => Bson::Int64(0),
        Bson::Double(_) => Bson::Double(0.0),
        Bson::Decimal128(_) => decimal_of(0.0),
        _ => Bson::Int32(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int32_overflow_widens_to_int64() {
        assert_eq!(
            add(&Bson::Int32(i32::MAX), &Bson::Int32(1)),
            Some(Bson::Int64(i64::from(i32::MAX) + 1))
        );
        assert_eq!(add(&Bson::Int32(1), &Bson::Int32(2)), Some(Bson::Int32(3)));
    }

    #[test]
    fn any_double_makes_a_double() {
        assert_eq!(
            add(&Bson::Int64(1), &Bson::Double(0.5)),
            Some(Bson::Double(1.5))
        );
        assert_eq!(
            multiply(&Bson::Int32(2), &Bson::Double(2.0)),
            Some(Bson::Double(4.0))
        );
        assert_eq!(add(&Bson::Int32(1), &Bson::String("x".into())), None);
    }
}
