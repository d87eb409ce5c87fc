//! The apply path of a migration against the sandbox, in process:
//! destination side: `update` commands of 1000 `{q: {_id}, u: <replacement>, upsert: true}`
//! statements (half replacing existing documents, half upserting) and `delete` commands;
//! source side: a change stream with `fullDocument: updateLookup` read to the end, a
//! default change stream with `showExpandedEvents` read as raw documents over the whole
//! history (inserts, replacements, upserts, deletes and small `$inc` updates), and a
//! `find` with min/max and hint `{_id: 1}` over the whole collection.
//! Rates are reported as ratios to an `insert_many` baseline measured in the same run.

use std::time::Instant;

use ferry_sandbox::{Sandbox, SandboxOptions};
use futures_util::{StreamExt, TryStreamExt};
use mongodb::bson::{doc, Bson, Document, RawDocumentBuf, Timestamp};
use mongodb::options::FullDocumentType;

const DOCS: i64 = 100_000;
const BATCH: i64 = 1_000;
const UPDATE_COMMANDS: i64 = 40;
const DELETE_COMMANDS: i64 = 10;
/// Documents touched by the one `update_many` of small `$inc` updates.
const SMALL_UPDATES: i64 = 50_000;

fn make_doc(i: i64, gen: i64) -> Document {
    doc! {"_id": i, "n": i, "gen": gen, "name": format!("name-{i}"), "tags": ["a", "b", "c"],
    "nested": {"x": i, "y": "z"}, "pad": "x".repeat(900)}
}

fn main() {
    let sb = Sandbox::start(SandboxOptions::default()).expect("sandbox");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let client = mongodb::Client::with_uri_str(sb.uri())
            .await
            .expect("client");
        let db = client.database("bench");
        let coll = db.collection::<Document>("c");

        let before_inserts: Timestamp = match db.run_command(doc! {"ping": 1}).await {
            Ok(reply) => reply.get_timestamp("operationTime").expect("operationTime"),
            Err(e) => panic!("ping: {e}"),
        };

        // Baseline: insert_many.
        let batches: Vec<Vec<Document>> = (0..DOCS / BATCH)
            .map(|b| (b * BATCH..(b + 1) * BATCH).map(|i| make_doc(i, 0)).collect())
            .collect();
        let t = Instant::now();
        for batch in batches {
            coll.insert_many(batch).await.expect("insert");
        }
        let insert_rate = DOCS as f64 / t.elapsed().as_secs_f64();

        let start: Timestamp = match db.run_command(doc! {"ping": 1}).await {
            Ok(reply) => reply.get_timestamp("operationTime").expect("operationTime"),
            Err(e) => panic!("ping: {e}"),
        };

        // Update commands: half replace existing documents (stride 2 over the
        // collection), half upsert new ones beyond its end.
        let commands: Vec<Document> = (0..UPDATE_COMMANDS)
            .map(|c| {
                let updates: Vec<Bson> = (0..BATCH)
                    .map(|s| {
                        let k = c * BATCH + s;
                        let id = if s % 2 == 0 { k } else { DOCS + k };
                        Bson::Document(doc! {"q": {"_id": id}, "u": make_doc(id, 1), "upsert": true})
                    })
                    .collect();
                doc! {"update": "c", "updates": updates, "ordered": true, "bypassDocumentValidation": true}
            })
            .collect();
        let t = Instant::now();
        for cmd in commands {
            let reply = db.run_command(cmd).await.expect("update");
            assert_eq!(reply.get_i32("n").expect("n"), BATCH as i32);
        }
        let update_rate = (UPDATE_COMMANDS * BATCH) as f64 / t.elapsed().as_secs_f64();

        // Changed fields by `_id` (how Ferry applies update events): `$set` of one field.
        let commands: Vec<Document> = (0..UPDATE_COMMANDS)
            .map(|c| {
                let updates: Vec<Bson> = (0..BATCH)
                    .map(|s| {
                        let id = (c * BATCH + s) * 2 + 1;
                        Bson::Document(doc! {"q": {"_id": id}, "u": {"$set": {"n": id + 7}}})
                    })
                    .collect();
                doc! {"update": "c", "updates": updates, "ordered": false}
            })
            .collect();
        let t = Instant::now();
        for cmd in commands {
            let reply = db.run_command(cmd).await.expect("update");
            assert_eq!(reply.get_i32("n").expect("n"), BATCH as i32);
        }
        let delta_rate = (UPDATE_COMMANDS * BATCH) as f64 / t.elapsed().as_secs_f64();

        let commands: Vec<Document> = (0..DELETE_COMMANDS)
            .map(|c| {
                let deletes: Vec<Bson> = (0..BATCH)
                    .map(|s| Bson::Document(doc! {"q": {"_id": DOCS / 2 + c * BATCH + s}, "limit": 1}))
                    .collect();
                doc! {"delete": "c", "deletes": deletes, "ordered": true}
            })
            .collect();
        let t = Instant::now();
        for cmd in commands {
            let reply = db.run_command(cmd).await.expect("delete");
            assert_eq!(reply.get_i32("n").expect("n"), BATCH as i32);
        }
        let delete_rate = (DELETE_COMMANDS * BATCH) as f64 / t.elapsed().as_secs_f64();

        // Change stream over those events, with updateLookup.
        let events = (2 * UPDATE_COMMANDS + DELETE_COMMANDS) * BATCH;
        let t = Instant::now();
        let mut stream = coll
            .watch()
            .full_document(FullDocumentType::UpdateLookup)
            .start_at_operation_time(start)
            .batch_size(BATCH as u32)
            .await
            .expect("watch");
        let mut seen = 0i64;
        while seen < events {
            match stream.next().await {
                Some(Ok(_)) => seen += 1,
                Some(Err(e)) => panic!("change stream: {e}"),
                None => break,
            }
        }
        assert_eq!(seen, events);
        let stream_rate = events as f64 / t.elapsed().as_secs_f64();

        // Small updates (not timed), then a default stream over the whole history, as a
        // migration's source reads it: no fullDocument option, expanded events, raw.
        let updated = coll
            .update_many(doc! {"_id": {"$lt": SMALL_UPDATES}}, doc! {"$inc": {"n": 1}})
            .await
            .expect("update_many");
        assert_eq!(updated.modified_count, SMALL_UPDATES as u64);
        let history = DOCS + (2 * UPDATE_COMMANDS + DELETE_COMMANDS) * BATCH + SMALL_UPDATES;
        let t = Instant::now();
        let mut stream = coll
            .watch()
            .show_expanded_events(true)
            .start_at_operation_time(before_inserts)
            .await
            .expect("watch")
            .with_type::<RawDocumentBuf>();
        let mut seen = 0i64;
        while seen < history {
            match stream.next().await {
                Some(Ok(_)) => seen += 1,
                Some(Err(e)) => panic!("change stream: {e}"),
                None => break,
            }
        }
        assert_eq!(seen, history);
        let raw_stream_rate = history as f64 / t.elapsed().as_secs_f64();

        // Full find with min/max and hint {_id: 1}.
        let t = Instant::now();
        let find = doc! {"find": "c", "filter": {}, "min": {"_id": Bson::MinKey}, "max": {"_id": Bson::MaxKey},
            "hint": {"_id": 1}, "batchSize": BATCH as i32};
        let n = db
            .run_cursor_command(find)
            .await
            .expect("find")
            .try_fold(0i64, |n, _| async move { Ok(n + 1) })
            .await
            .expect("cursor");
        let find_rate = n as f64 / t.elapsed().as_secs_f64();

        println!("documents: {DOCS}, batches and statements per command: {BATCH}");
        println!("insert_many baseline: {insert_rate:.0} docs/s");
        for (name, rate) in [
            ("update (replace/upsert)", update_rate),
            ("update ($set by _id)", delta_rate),
            ("delete", delete_rate),
            ("change stream (updateLookup)", stream_rate),
            ("change stream (expanded, raw)", raw_stream_rate),
            ("find min/max hint _id", find_rate),
        ] {
            println!(
                "{name:30} {rate:>9.0} /s  ratio to insert_many: {:.2}",
                rate / insert_rate
            );
        }
    });
}
