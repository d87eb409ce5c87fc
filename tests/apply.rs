//! How update events reach the destination: as their changed fields (`$set`/`$unset`),
//! with the source's document read when a change no longer applies to the destination's
//! version of the document, or as the looked-up whole document (on sources older than
//! 6.1, or when configured). Either way the destination ends equal to the source.

mod common;

use std::time::Duration;

use bson::{doc, Document};
use common::*;
use ferry::progress::Phase;
use ferry_sandbox::{Sandbox, SandboxOptions};
use mongodb::Client;

/// Updates made after the start time to a document the copy has not reached yet: the copy
/// takes the newer document, and replaying the older updates on it meets a path that no
/// longer exists (`a.b` on a number); the applier replaces the document with the
/// source's instead of failing, and the run converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_that_no_longer_apply_are_replaced_by_the_source_document() {
    let pair = Pair::start().await;
    let coll = pair.src.database("app").collection::<Document>("shapes");
    let docs: Vec<Document> = (0..1000i64)
        .map(|i| doc! {"_id": i, "a": {"b": 1}, "n": i})
        .collect();
    coll.insert_many(docs).await.expect("seed");
    let cfg = pair.config(
        "[copy]\nbatch_max_documents = 50\nparallel_collections = 1\nparallel_ranges_per_collection = 1\n",
    );
    pair.destination.set_latency(Duration::from_millis(30));
    let m = start(cfg).await;
    wait_phase(&m.progress, Phase::Copying).await;
    // The last document is copied last.
    coll.update_one(doc! {"_id": 999i64}, doc! {"$set": {"a.b": 2}})
        .await
        .expect("update");
    coll.update_one(
        doc! {"_id": 999i64},
        doc! {"$set": {"a": 7}, "$unset": {"n": ""}},
    )
    .await
    .expect("update");
    coll.update_one(doc! {"_id": 998i64}, doc! {"$set": {"a.c": [1, 2]}})
        .await
        .expect("update");
    assert!(
        copied(&m.progress) < 998,
        "the copy reached the updated documents before the test could update them"
    );
    pair.destination.set_latency(Duration::ZERO);
    wait_phase(&m.progress, Phase::ReadyForCutover).await;
    assert_eq!(*m.progress.update_events.read(), Some("delta"));
    // And while syncing: a change that applies as a delta, then one that does not.
    coll.update_one(
        doc! {"_id": 5i64},
        doc! {"$set": {"a.b": 3}, "$inc": {"n": 1}},
    )
    .await
    .expect("update");
    coll.update_one(doc! {"_id": 6i64}, doc! {"$set": {"a": "text"}})
        .await
        .expect("update");
    coll.update_one(doc! {"_id": 6i64}, doc! {"$set": {"a": {"z": 1}}})
        .await
        .expect("update");
    cutover_and_complete(m).await;
    assert_eq!(assert_same(&pair.src, &pair.dst).await, 1000);
    let last = pair
        .dst
        .database("app")
        .collection::<Document>("shapes")
        .find_one(doc! {"_id": 999i64})
        .await
        .unwrap()
        .unwrap();
    assert_eq!(last, doc! {"_id": 999i64, "a": 7});
}

async fn sandbox_pair(version: &str) -> (Sandbox, Sandbox, Client, Client) {
    init_logging();
    let start = |name: &str| {
        Sandbox::start(SandboxOptions {
            set_name: name.into(),
            version: version.into(),
            ..Default::default()
        })
        .expect("sandbox starts")
    };
    let (source, destination) = (start("src"), start("dst"));
    let src = Client::with_uri_str(source.uri()).await.unwrap();
    let dst = Client::with_uri_str(destination.uri()).await.unwrap();
    (source, destination, src, dst)
}

/// A 6.0 source reports no `disambiguatedPaths`, so update events carry the looked-up
/// document; `apply.update_events = "lookup"` asks for the same on any source. Both
/// converge under a live workload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_document_updates_converge_on_6_0_and_when_configured() {
    for (version, extra) in [
        ("6.0.17", ""),
        ("7.0.13", "[apply]\nupdate_events = \"lookup\"\n"),
    ] {
        let (source, destination, src, dst) = sandbox_pair(version).await;
        seed(&src, "app", 500).await;
        let load = Workload::start(src.clone(), "app", 500);
        let m = start(config(&source.uri(), &destination.uri(), extra)).await;
        wait_phase(&m.progress, Phase::ReadyForCutover).await;
        assert_eq!(
            *m.progress.update_events.read(),
            Some("lookup"),
            "{version} {extra:?}"
        );
        load.advance(30).await;
        load.stop().await;
        cutover_and_complete(m).await;
        assert_same(&src, &dst).await;
    }
}

/// The capped-list idiom applications write as a pipeline update — append with
/// `$concatArrays`, keep the last N with `$slice` — during sync, many times on the same
/// documents, converges (the sandbox refused both expressions with 168 before, so no
/// workload could produce these events).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capped_lists_kept_by_pipeline_updates_converge() {
    let pair = Pair::start().await;
    let coll = pair.src.database("app").collection::<Document>("feeds");
    coll.insert_many(
        (0..10)
            .map(|i| doc! {"_id": i, "recent": [], "owner": format!("user{i}")})
            .collect::<Vec<_>>(),
    )
    .await
    .expect("seed");
    let m = start(pair.config("")).await;
    wait_phase(&m.progress, Phase::ReadyForCutover).await;
    for round in 0..40 {
        coll.update_many(
            doc! {"_id": {"$lt": 5 + (round % 5)}},
            vec![doc! {"$set": {
                "recent": {"$slice": [{"$concatArrays": ["$recent", [{"n": round, "at": format!("t{round}")}]]}, -5]},
                "seen": {"$size": {"$ifNull": ["$recent", []]}},
            }}],
        )
        .await
        .expect("pipeline update");
    }
    let sample = coll
        .find_one(doc! {"_id": 0})
        .await
        .expect("read")
        .expect("document 0");
    assert_eq!(
        sample.get_array("recent").map(|a| a.len()).ok(),
        Some(5),
        "{sample}"
    );
    cutover_and_complete(m).await;
    assert_eq!(assert_same(&pair.src, &pair.dst).await, 10);
}

/// Materialized views refreshed the way applications do it — `$out` (a temporary
/// `tmp.agg_out.<uuid>` collection renamed over the target) and `$merge` — before the
/// start, during the copy window and during sync, converge with the target's indexes;
/// the same with a filter that names only the target collection (the temporary
/// collection is then out of scope, and its rename brings the target into it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn materialized_views_refreshed_by_out_and_merge_converge() {
    for filter in [
        "",
        "[filter]\ninclude_namespaces = [\"app.orders\", \"app.summary\", \"app.totals\"]\n",
    ] {
        let pair = Pair::start().await;
        let app = pair.src.database("app");
        let orders = app.collection::<Document>("orders");
        orders
            .insert_many((0..300).map(|i| doc! {"_id": i, "cust": i % 7, "amt": i}))
            .await
            .expect("seed");
        let refresh = |round: i32| {
            let orders = orders.clone();
            async move {
                orders
                    .aggregate(vec![
                        doc! {"$group": {"_id": "$cust", "total": {"$sum": "$amt"}, "round": {"$max": round}}},
                        doc! {"$out": "summary"},
                    ])
                    .await
                    .expect("$out");
                orders
                    .aggregate(vec![
                        doc! {"$match": {"cust": {"$lt": 3 + round % 4}}},
                        doc! {"$project": {"amt": 1, "seen": {"$literal": round}}},
                        doc! {"$merge": {"into": "totals", "whenMatched": "merge", "whenNotMatched": "insert"}},
                    ])
                    .await
                    .expect("$merge");
            }
        };
        refresh(0).await;
        app.collection::<Document>("summary")
            .create_index(
                mongodb::IndexModel::builder()
                    .keys(doc! {"total": -1})
                    .build(),
            )
            .await
            .expect("index on the view");
        let m = start(pair.config(filter)).await;
        refresh(1).await;
        wait_phase(&m.progress, Phase::ReadyForCutover).await;
        for round in 2..8 {
            orders
                .insert_one(doc! {"_id": 1000 + round, "cust": round % 7, "amt": 5})
                .await
                .expect("insert");
            refresh(round).await;
        }
        cutover_and_complete(m).await;
        assert_same(&pair.src, &pair.dst).await;
        let summary = pair.dst.database("app").collection::<Document>("summary");
        assert_eq!(
            summary
                .find_one(doc! {})
                .await
                .expect("read")
                .and_then(|d| d.get_i32("round").ok()),
            Some(7),
            "filter {filter:?}"
        );
        assert!(summary
            .list_index_names()
            .await
            .expect("indexes")
            .contains(&"total_-1".to_string()));
    }
}

/// A collection the filter leaves out, renamed onto a migrated name during sync (a
/// staging collection swapped in with `dropTarget`), replaces the migrated collection on
/// the destination too. Before, the rename was dropped with the excluded collection's
/// events: the destination kept the old contents (here the cutover then refused; with
/// `$out` in `materialized_views_refreshed_by_out_and_merge_converge` it passed with the
/// old contents, the baseline verification not knowing the namespace had changed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_excluded_collection_renamed_onto_a_migrated_one_replaces_it() {
    let pair = Pair::start().await;
    let app = pair.src.database("app");
    app.collection::<Document>("live")
        .insert_many((0..50).map(|i| doc! {"_id": i, "v": "old"}))
        .await
        .expect("seed");
    let m = start(pair.config("[filter]\ninclude_namespaces = [\"app.live\"]\n")).await;
    wait_phase(&m.progress, Phase::ReadyForCutover).await;
    poll("the baseline verification", || {
        m.progress.baseline.read().state == ferry::progress::BaselineState::Done
    })
    .await;
    let staging = app.collection::<Document>("staging");
    staging
        .insert_many((25..80).map(|i| doc! {"_id": i, "v": "new"}))
        .await
        .expect("fill staging");
    staging
        .create_index(mongodb::IndexModel::builder().keys(doc! {"v": 1}).build())
        .await
        .expect("index");
    pair.src
        .database("admin")
        .run_command(doc! {"renameCollection": "app.staging", "to": "app.live", "dropTarget": true})
        .await
        .expect("swap in");
    app.collection::<Document>("live")
        .update_one(doc! {"_id": 30}, doc! {"$set": {"touched": true}})
        .await
        .expect("update after the swap");
    cutover_and_complete(m).await;
    assert_eq!(assert_same(&pair.src, &pair.dst).await, 55);
    let names = pair
        .dst
        .database("app")
        .list_collection_names()
        .await
        .expect("list");
    assert_eq!(names, vec!["live".to_string()]);
}
