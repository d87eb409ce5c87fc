//! A whole migration with authentication on both sides and only the roles README.md asks
//! for: copy, sync, the baseline verification (which reads the destination's change
//! stream), cutover and verification all work with them.

mod common;

use bson::{doc, Document};
use common::*;
use ferry::progress::{BaselineState, Phase};
use ferry_sandbox::{Sandbox, SandboxOptions};
use mongodb::Client;

fn sandbox(set_name: &str, migrator_roles: &[&str]) -> Sandbox {
    sandbox_with_users(set_name, &SandboxOptions::default().version, migrator_roles)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_needs_only_the_documented_roles() {
    init_logging();
    let source = sandbox("src", &["backup", "readAnyDatabase"]);
    let destination = sandbox(
        "dst",
        &[
            "readWriteAnyDatabase",
            "dbAdminAnyDatabase",
            "clusterMonitor",
        ],
    );
    let src = Client::with_uri_str(source.uri_with_user(ADMIN.0, ADMIN.1))
        .await
        .expect("source admin client");
    let dst = Client::with_uri_str(destination.uri_with_user(ADMIN.0, ADMIN.1))
        .await
        .expect("destination admin client");
    seed(&src, "app", 1000).await;
    let m = start(config(
        &source.uri_with_user(MIGRATOR.0, MIGRATOR.1),
        &destination.uri_with_user(MIGRATOR.0, MIGRATOR.1),
        "",
    ))
    .await;
    wait_phase(&m.progress, Phase::ReadyForCutover).await;
    let load = Workload::start(src.clone(), "app", 1000);
    load.advance(30).await;
    poll("the baseline verification to finish", || {
        let view = m.progress.baseline.read();
        assert_ne!(view.state, BaselineState::Failed, "{:?}", view.detail);
        view.state == BaselineState::Done
    })
    .await;
    load.advance(20).await;
    load.stop().await;
    dst.database("app")
        .collection::<Document>("counters")
        .find_one(doc! {})
        .await
        .expect("the admin reads the destination");
    let outcome = cutover_and_complete(m).await;
    let v = outcome.report.expect("report").verification;
    assert_eq!(v.namespaces_rechecked, 3, "{v:?}");
    assert_same(&src, &dst).await;
}
