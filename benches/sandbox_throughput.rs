//! Sandbox throughput: insert_many of 1 KB documents in batches of 1000, then a full find.
//! Baseline in the same run: encoding the same documents with `bson` (no network).

use std::time::Instant;

use ferry_sandbox::{Sandbox, SandboxOptions};
use futures_util::TryStreamExt;
use mongodb::bson::{doc, Document};

const DOCS: usize = 200_000;
const BATCH: usize = 1_000;

fn make_doc(i: usize) -> Document {
    doc! {"_id": i as i64, "n": i as i64, "pad": "x".repeat(1000)}
}

fn main() {
    let sb = Sandbox::start(SandboxOptions::default()).expect("sandbox");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let client = mongodb::Client::with_uri_str(sb.uri())
            .await
            .expect("client");
        let coll = client.database("bench").collection::<Document>("c");
        let batches: Vec<Vec<Document>> = (0..DOCS / BATCH)
            .map(|b| (b * BATCH..(b + 1) * BATCH).map(make_doc).collect())
            .collect();
        let t = Instant::now();
        let mut bytes = 0usize;
        for batch in &batches {
            for d in batch {
                bytes += mongodb::bson::to_vec(d).expect("encode").len();
            }
        }
        let encode_rate = DOCS as f64 / t.elapsed().as_secs_f64();
        let t = Instant::now();
        for batch in batches {
            coll.insert_many(batch).await.expect("insert");
        }
        let insert_rate = DOCS as f64 / t.elapsed().as_secs_f64();
        let t = Instant::now();
        let n = coll
            .find(doc! {})
            .batch_size(BATCH as u32)
            .await
            .expect("find")
            .try_fold(0usize, |n, _| async move { Ok(n + 1) })
            .await
            .expect("cursor");
        assert_eq!(n, DOCS);
        let find_rate = DOCS as f64 / t.elapsed().as_secs_f64();
        println!(
            "documents: {DOCS} x {} bytes, batches of {BATCH}",
            bytes / DOCS
        );
        println!("insert_many: {insert_rate:.0} docs/s");
        println!("find:        {find_rate:.0} docs/s");
        println!("baseline (bson encode of the same docs, no I/O): {encode_rate:.0} docs/s");
    });
}
