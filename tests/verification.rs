//! Verification compares what applications see: raw document bytes (field order and
//! numeric types count) and index definitions with their options. A difference of any
//! of these alone refuses the cutover after a baseline verification, and fails
//! `ferry verify --strict` with the namespace and the difference named.

mod common;

use std::time::Duration;

use bson::{doc, Document, RawDocumentBuf};
use common::*;
use ferry::progress::{BaselineState, Phase};
use ferry_sandbox::{Sandbox, SandboxOptions};
use mongodb::options::IndexOptions;
use mongodb::{Client, IndexModel};

async fn wait_baseline_done(m: &ferry::run::Migration) {
    poll("the baseline verification to finish", || {
        let view = m.progress.baseline.read();
        assert_ne!(
            view.state,
            BaselineState::Failed,
            "baseline failed: {:?}",
            view.detail
        );
        view.state == BaselineState::Done
    })
    .await;
}

/// The source's document `_id` of `coll`, as raw bytes.
async fn raw_document(client: &Client, db: &str, coll: &str, id: i64) -> RawDocumentBuf {
    client
        .database(db)
        .collection::<RawDocumentBuf>(coll)
        .find_one(doc! {"_id": id})
        .await
        .expect("read")
        .expect("the document exists")
}

/// Replaces a destination document by `replacement` (same `_id`), bypassing Ferry.
async fn plant(dst: &Client, coll: &str, id: i64, replacement: Document) {
    let r = dst
        .database("app")
        .collection::<Document>(coll)
        .replace_one(doc! {"_id": id}, replacement)
        .await
        .expect("write to the destination");
    assert_eq!(r.matched_count, 1);
}

/// Writes the source's bytes of a document back to the destination.
async fn repair(pair: &Pair, coll: &str, id: i64) {
    let original = raw_document(&pair.src, "app", coll, id).await;
    pair.dst
        .database("app")
        .collection::<RawDocumentBuf>(coll)
        .replace_one(doc! {"_id": id}, original)
        .await
        .expect("repair the destination");
}

/// Pins: verification counts field order, numeric types and index options, through the
/// baseline path (the cutover after a background baseline re-reads only what changed).
/// One at a time on the destination, each refuses the cutover and is named:
/// - a document whose fields are in another order (same values);
/// - a document whose int64 field is an int32 of the same value;
/// - an index with the same key and name, but unique on the destination only.
///
/// With all three repaired, the next cutover completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_baseline_path_refuses_order_type_and_index_option_differences() {
    let pair = Pair::start().await;
    seed(&pair.src, "app", 1000).await;
    let m = start(pair.config("")).await;
    wait_phase(&m.progress, Phase::ReadyForCutover).await;
    wait_baseline_done(&m).await;

    // Field order only: counters documents are {_id, value, pad}.
    let source = raw_document(&pair.src, "app", "counters", 120)
        .await
        .to_document()
        .expect("decode");
    plant(
        &pair.dst,
        "counters",
        120,
        doc! {"pad": source.get("pad").cloned().expect("pad"), "value": source.get("value").cloned().expect("value")},
    )
    .await;
    let error = cutover_refused_by_verification(&m).await;
    assert!(error.contains("app.counters"), "{error}");
    assert!(error.contains("120"), "the reordered _id is named: {error}");
    repair(&pair, "counters", 120).await;

    // int64 -> int32 only.
    let value = source.get_i64("value").expect("value is an int64");
    plant(
        &pair.dst,
        "counters",
        340,
        doc! {"value": value as i32, "pad": source.get("pad").cloned().expect("pad")},
    )
    .await;
    let error = cutover_refused_by_verification(&m).await;
    assert!(error.contains("app.counters"), "{error}");
    assert!(error.contains("340"), "the retyped _id is named: {error}");
    repair(&pair, "counters", 340).await;

    // Index option only: the same key and name, unique on the destination.
    let mixed = pair.dst.database("app").collection::<Document>("mixed");
    mixed
        .drop_index("group_1_rank_-1")
        .await
        .expect("drop the index on the destination");
    mixed
        .create_index(
            IndexModel::builder()
                .keys(doc! {"group": 1, "rank": -1})
                .options(IndexOptions::builder().unique(true).build())
                .build(),
        )
        .await
        .expect("unique index on the destination");
    let error = cutover_refused_by_verification(&m).await;
    assert!(error.contains("app.mixed"), "{error}");
    assert!(
        error.contains("group_1_rank_-1"),
        "the index is named: {error}"
    );
    mixed
        .drop_index("group_1_rank_-1")
        .await
        .expect("drop the index on the destination");
    mixed
        .create_index(
            IndexModel::builder()
                .keys(doc! {"group": 1, "rank": -1})
                .build(),
        )
        .await
        .expect("index as on the source");

    cutover_and_complete(m).await;
    assert_same(&pair.src, &pair.dst).await;
}

fn sandbox(name: &str) -> Sandbox {
    Sandbox::start(SandboxOptions {
        set_name: name.into(),
        ..Default::default()
    })
    .expect("sandbox")
}

/// Both sides: `shop.orders` with 100 documents and a TTL index.
async fn seed_shop(client: &Client) {
    let orders = client.database("shop").collection::<Document>("orders");
    orders
        .insert_many(
            (0..100i64)
                .map(|i| doc! {"_id": i, "total": i * 3, "at": bson::DateTime::from_millis(i)}),
        )
        .await
        .expect("seed");
    orders
        .create_index(
            IndexModel::builder()
                .keys(doc! {"at": 1})
                .options(
                    IndexOptions::builder()
                        .name("at_ttl".to_string())
                        .expire_after(Duration::from_secs(3600))
                        .build(),
                )
                .build(),
        )
        .await
        .expect("ttl index");
}

/// `ferry verify --strict --config <path>`: the exit code and everything printed.
async fn verify_strict(path: &std::path::Path) -> (Option<i32>, String) {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(["verify", "--strict", "--config"])
            .arg(&path)
            .output()
            .expect("run ferry verify");
        (
            out.status.code(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    })
    .await
    .expect("join")
}

/// Pins: `ferry verify --strict` fails (exit 1) on a field-order-only, an
/// int64↔int32-only and an index-option-only difference (a TTL of another length, a
/// unique flag on one side), naming the namespace and what differs; equal sides pass
/// (exit 0).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_strict_names_order_type_and_index_option_differences() {
    let source = sandbox("src");
    let destination = sandbox("dst");
    let src = Client::with_uri_str(source.uri()).await.expect("client");
    let dst = Client::with_uri_str(destination.uri())
        .await
        .expect("client");
    seed_shop(&src).await;
    seed_shop(&dst).await;
    let path = config_file(&source.uri(), &destination.uri(), free_port(), "");
    let (code, out) = verify_strict(&path).await;
    assert_eq!(code, Some(0), "equal sides: {out}");

    let orders = dst.database("shop").collection::<Document>("orders");
    let at = bson::DateTime::from_millis(7);
    // Field order only.
    orders
        .replace_one(doc! {"_id": 7i64}, doc! {"at": at, "total": 21i64})
        .await
        .expect("reorder");
    let (code, out) = verify_strict(&path).await;
    assert_eq!(code, Some(1), "field order: {out}");
    assert!(out.contains("shop.orders [content]"), "{out}");
    assert!(out.contains("_id 7 differs"), "{out}");
    orders
        .replace_one(doc! {"_id": 7i64}, doc! {"total": 21i64, "at": at})
        .await
        .expect("repair");

    // int64 -> int32 only.
    orders
        .replace_one(
            doc! {"_id": 8i64},
            doc! {"total": 24i32, "at": bson::DateTime::from_millis(8)},
        )
        .await
        .expect("retype");
    let (code, out) = verify_strict(&path).await;
    assert_eq!(code, Some(1), "numeric type: {out}");
    assert!(out.contains("shop.orders [content]"), "{out}");
    assert!(out.contains("_id 8 differs"), "{out}");
    orders
        .replace_one(
            doc! {"_id": 8i64},
            doc! {"total": 24i64, "at": bson::DateTime::from_millis(8)},
        )
        .await
        .expect("repair");
    let (code, out) = verify_strict(&path).await;
    assert_eq!(code, Some(0), "repaired: {out}");

    // Index options only: another TTL, then unique on one side.
    dst.database("shop")
        .run_command(
            doc! {"collMod": "orders", "index": {"name": "at_ttl", "expireAfterSeconds": 60i64}},
        )
        .await
        .expect("collMod");
    let (code, out) = verify_strict(&path).await;
    assert_eq!(code, Some(1), "TTL: {out}");
    assert!(out.contains("shop.orders [indexes]"), "{out}");
    assert!(out.contains("at_ttl"), "{out}");
    dst.database("shop")
        .run_command(
            doc! {"collMod": "orders", "index": {"name": "at_ttl", "expireAfterSeconds": 3600i64}},
        )
        .await
        .expect("collMod");
    for (client, unique) in [(&src, false), (&dst, true)] {
        client
            .database("shop")
            .collection::<Document>("orders")
            .create_index(
                IndexModel::builder()
                    .keys(doc! {"total": 1})
                    .options(
                        IndexOptions::builder()
                            .name("total_1".to_string())
                            .unique(unique)
                            .build(),
                    )
                    .build(),
            )
            .await
            .expect("index");
    }
    let (code, out) = verify_strict(&path).await;
    assert_eq!(code, Some(1), "unique: {out}");
    assert!(out.contains("shop.orders [indexes]"), "{out}");
    assert!(out.contains("total_1"), "{out}");
    let _ = std::fs::remove_dir_all(path.parent().expect("config directory"));
}
