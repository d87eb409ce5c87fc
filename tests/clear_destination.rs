//! `destination.clear_destination` and namespace filters (issue 8): only the migrated
//! namespaces are cleared, and data outside them neither blocks the preflight nor is
//! touched.

mod common;

use bson::{doc, Document};
use common::*;

/// A config migrating only the `app` database, with `destination` keys added.
fn app_only_config(pair: &Pair, destination: &str) -> ferry::config::Config {
    let text = format!(
        "[source]\nuri = \"{}\"\n[destination]\nuri = \"{}\"\n{destination}[api]\nlisten = \"127.0.0.1:0\"\n[runtime]\nidle_noop_interval_seconds = 1\ncheckpoint_interval_seconds = 1\n[filter]\ninclude_namespaces = [\"app\"]\n",
        pair.source.uri(),
        pair.destination.uri()
    );
    ferry::config::from_toml_str(&text, &|_| None).expect("test config is valid")
}

/// Three invoices in an unrelated `billing` database on the destination.
async fn plant_billing(pair: &Pair) -> Vec<Vec<u8>> {
    pair.dst
        .database("billing")
        .collection::<Document>("invoices")
        .insert_many((0..3).map(|i| doc! {"_id": i, "amount": 100 * i}))
        .await
        .expect("plant billing data");
    documents(&pair.dst, "billing", "invoices").await
}

/// The `app` database is the same on both sides, byte for byte.
async fn assert_app_same(pair: &Pair) {
    let s = collections(&pair.src, "app").await;
    let d = collections(&pair.dst, "app").await;
    assert_eq!(
        s.keys().collect::<Vec<_>>(),
        d.keys().collect::<Vec<_>>(),
        "collections of app differ"
    );
    for name in s.keys() {
        assert_eq!(
            documents(&pair.src, "app", name).await,
            documents(&pair.dst, "app", name).await,
            "app.{name} differs"
        );
    }
}

/// Pins: `clear_destination = true` with `include_namespaces = ["app"]` dropped every
/// database on the destination, an unrelated `billing` database included. Now only the
/// migrated namespaces (stale `app` collections too) are dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_destination_drops_only_the_migrated_namespaces() {
    let pair = Pair::start().await;
    seed(&pair.src, "app", 300).await;
    let billing = plant_billing(&pair).await;
    let app = pair.dst.database("app");
    app.collection::<Document>("stale")
        .insert_one(doc! {"_id": 1, "old": true})
        .await
        .expect("plant a stale app collection");
    app.collection::<Document>("counters")
        .insert_one(doc! {"_id": 1_000_000i64, "old": true})
        .await
        .expect("plant a stale app document");
    let cfg = app_only_config(
        &pair,
        "clear_destination = true\nconfirm_destination_name = \"dst\"\n",
    );
    cutover_and_complete(start(cfg).await).await;
    assert_eq!(
        documents(&pair.dst, "billing", "invoices").await,
        billing,
        "clear_destination touched a database outside the migrated namespaces"
    );
    assert_app_same(&pair).await;
}

/// Pins: the preflight called data outside the migrated namespaces a blocker ("the
/// destination holds user data in: billing"), so such a migration could not start
/// without dropping it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_outside_the_migrated_namespaces_does_not_block_the_run() {
    let pair = Pair::start().await;
    seed(&pair.src, "app", 300).await;
    let billing = plant_billing(&pair).await;
    let cfg = app_only_config(&pair, "");
    let report = ferry::preflight::run_checks(&cfg).await;
    let empty = report
        .checks
        .iter()
        .find(|c| c.name == "destination empty")
        .expect("the destination-empty check");
    assert_eq!(empty.status, ferry::preflight::Status::Pass, "{report}");
    assert!(empty.message.contains("billing"), "{}", empty.message);
    cutover_and_complete(start(cfg).await).await;
    assert_eq!(documents(&pair.dst, "billing", "invoices").await, billing);
    assert_app_same(&pair).await;
}

/// Pins: a cancelled run resumed silently when `ferry run` was started again. Now a
/// cancelled run stays ended; with `clear_destination` the next run starts over: the
/// destination is cleared and copied again from scratch, and converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_cancel_clear_destination_starts_over() {
    let pair = Pair::start().await;
    seed(&pair.src, "app", 300).await;
    let m = start(app_only_config(&pair, "")).await;
    wait_phase(&m.progress, ferry::progress::Phase::ReadyForCutover).await;
    let reply = m
        .control
        .request(ferry::control::ControlRequest::Cancel)
        .await;
    assert!(reply.is_ok(), "{reply:?}");
    wait(m).await;
    // Written to the destination after the cancel: gone once the run starts over.
    pair.dst
        .database("app")
        .collection::<Document>("stray")
        .insert_one(doc! {"_id": 1})
        .await
        .expect("stray write");

    let refused = tokio::task::spawn_blocking({
        let config = app_only_config(&pair, "");
        move || {
            ferry::run::Migration::start(
                config,
                ferry::run::RunOptions {
                    serve_api: false,
                    preflight: true,
                },
            )
            .and_then(|m| m.wait())
        }
    })
    .await
    .expect("join");
    let error = match refused {
        Err(e) => format!("{e}"),
        Ok(outcome) => panic!("a cancelled run was resumed: {outcome:?}"),
    };
    assert!(
        error.contains("was cancelled; it does not resume"),
        "{error}"
    );

    let m = start(app_only_config(
        &pair,
        "clear_destination = true\nconfirm_destination_name = \"dst\"\n",
    ))
    .await;
    cutover_and_complete(m).await;
    assert_app_same(&pair).await;
}
