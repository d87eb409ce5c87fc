//! Write concerns this replica set cannot satisfy. The sandbox is a one-member set: a
//! write asking for more acknowledgements than it has members is applied, and its reply
//! carries a `writeConcernError` (100 UnsatisfiableWriteConcern), as a real primary's
//! does when `w` exceeds its data-bearing members.

use bson::{doc, Bson, Document};

/// Data-bearing members of the sandbox's replica set (hello lists one host).
const DATA_BEARING_MEMBERS: i64 = 1;

/// The `writeConcernError` for a command whose `writeConcern.w` is a number above the
/// set's data-bearing members, or None when the write concern can be satisfied.
pub fn unsatisfiable(cmd: &Document) -> Option<Document> {
    let wc = cmd.get_document("writeConcern").ok()?;
    let requested = wc.get("w")?;
    let w = match requested {
        Bson::Int32(n) => i64::from(*n),
        Bson::Int64(n) => *n,
        Bson::Double(f) if f.fract() == 0.0 => *f as i64,
        _ => return None,
    };
    if w <= DATA_BEARING_MEMBERS {
        return None;
    }
    let wtimeout = wc.get("wtimeout").cloned().unwrap_or(Bson::Int32(0));
    Some(doc! {
        "code": 100,
        "codeName": "UnsatisfiableWriteConcern",
        "errmsg": "Not enough data-bearing nodes",
        "errInfo": {
            "writeConcern": {"w": requested.clone(), "wtimeout": wtimeout, "provenance": "clientSupplied"},
        },
    })
}
