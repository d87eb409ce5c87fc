//! Run-time checks of sandbox features that are still being added: a seed skips a
//! feature's generator, saying why, when the source does not support it yet.

use bson::{doc, Document};
use mongodb::Client;

use super::super::requests::{command, write};
use super::{transaction, Kind, Namespace};

/// Whether the source supports a feature's commands: probes them on a scratch
/// collection. Returns why not, when it does not.
pub async fn unsupported(client: &Client, kind: Kind) -> Option<String> {
    let db = "rand_probe";
    let _ = command(
        client,
        db,
        doc! {"insert": "p", "documents": [{"_id": 1, "objs": [{"b": 1}], "arr": [1]}]},
    )
    .await;
    let outcome = match kind {
        Kind::Transaction => {
            let ns = Namespace {
                db: db.into(),
                coll: "p".into(),
            };
            transaction(client, &ns, doc! {"_id": 2, "cnt": 1}, Some(bson::Bson::Int32(1))).await
        }
        Kind::PipelineUpdate => {
            // The same stages and expressions the generator sends.
            let pipeline = super::super::updates::pipeline("probe");
            write(
                client,
                db,
                doc! {"update": "p", "updates": [{"q": {"_id": 1}, "u": pipeline}]},
            )
            .await
        }
        Kind::CappedList => {
            let pipeline = super::super::updates::capped_list("probe", 2);
            write(
                client,
                db,
                doc! {"update": "p", "updates": [{"q": {"_id": 1}, "u": pipeline}]},
            )
            .await
        }
        Kind::View => {
            let mut out = Ok(());
            for last in [
                doc! {"$out": "v"},
                doc! {"$merge": {"into": "v", "on": "_id", "whenMatched": "merge", "whenNotMatched": "insert"}},
            ] {
                let cmd = doc! {"aggregate": "p", "pipeline": [{"$project": {"arr": 1}}, last], "cursor": {}};
                if let Err(e) = command(client, db, cmd).await {
                    out = Err(e.to_string());
                }
            }
            out
        }
        Kind::ArrayFilters => {
            write(client, db, doc! {"update": "p", "updates": [{"q": {"_id": 1}, "u": {"$set": {"objs.$[o].c": 1}}, "arrayFilters": [{"o.b": 1}]}]}).await
        }
        Kind::Reorder => {
            let _ = write(client, db, doc! {"update": "p", "updates": [{"q": {"_id": 1}, "u": {"$set": {"pair": {"x": 1, "y": 2}}}}]}).await;
            let _ = write(client, db, doc! {"update": "p", "updates": [{"q": {"_id": 1}, "u": {"$set": {"pair": {"y": 2, "x": 1}}}}]}).await;
            let found = client
                .database(db)
                .collection::<Document>("p")
                .find_one(doc! {"_id": 1})
                .await
                .ok()
                .flatten();
            let order: Vec<String> = found
                .and_then(|d| d.get_document("pair").ok().cloned())
                .map(|p| p.keys().cloned().collect())
                .unwrap_or_default();
            if order == ["y", "x"] {
                Ok(())
            } else {
                Err(format!("a reordering $set left the fields as {order:?}"))
            }
        }
        _ => Ok(()),
    };
    let _ = command(client, db, doc! {"dropDatabase": 1}).await;
    outcome.err().map(|e| e.chars().take(200).collect())
}
