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

/// Both sides with authentication, the migrator holding only the roles README.md
/// documents, and an administrator's client on each.
struct Documented {
    source: Sandbox,
    destination: Sandbox,
    src: Client,
    dst: Client,
}

impl Documented {
    async fn start() -> Documented {
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
        Documented {
            source,
            destination,
            src,
            dst,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_needs_only_the_documented_roles() {
    let Documented {
        source,
        destination,
        src,
        dst,
    } = Documented::start().await;
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

/// Pins: with `enforce_write_block = true` and the roles README.md documents (backup,
/// readAnyDatabase), `ferry validate` passed and the cutover then failed with 13
/// Unauthorized on setUserWriteBlockMode. The built-in backup role grants it (as on a
/// real server): the cutover blocks the source's writes, completes, and lifts the block.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enforce_write_block_works_with_the_documented_source_roles() {
    let Documented {
        source,
        destination,
        src,
        dst,
    } = Documented::start().await;
    seed(&src, "app", 300).await;
    let m = start(config(
        &source.uri_with_user(MIGRATOR.0, MIGRATOR.1),
        &destination.uri_with_user(MIGRATOR.0, MIGRATOR.1),
        "[cutover]\nenforce_write_block = true\n",
    ))
    .await;
    cutover_and_complete(m).await;
    assert_same(&src, &dst).await;
    src.database("app")
        .collection::<Document>("after")
        .insert_one(doc! {"_id": 1})
        .await
        .expect("the source takes writes again after the cutover");
}

/// A source user that may read everything but not block writes (a custom role without
/// setUserWriteBlockMode; here readAnyDatabase alone): with `enforce_write_block` the
/// preflight refuses, naming the privilege and the fix, instead of the cutover failing
/// after the applications were stopped. Without `enforce_write_block` the line passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validation_refuses_enforce_write_block_without_the_privilege() {
    init_logging();
    let source = sandbox("src", &["readAnyDatabase"]);
    let destination = sandbox("dst", &["root"]);
    let name = "write block privilege (source)";
    for (extra, refused) in [
        ("[cutover]\nenforce_write_block = true\n", true),
        ("", false),
    ] {
        let cfg = config(
            &source.uri_with_user(MIGRATOR.0, MIGRATOR.1),
            &destination.uri_with_user(MIGRATOR.0, MIGRATOR.1),
            extra,
        );
        let report = ferry::preflight::run_checks(&cfg).await;
        let check = report
            .checks
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no `{name}` line in {report}"));
        if refused {
            assert_eq!(check.status, ferry::preflight::Status::Fail, "{report}");
            assert!(
                check.message.contains("setUserWriteBlockMode"),
                "{}",
                check.message
            );
            let fix = check.fix.as_deref().unwrap_or_default();
            assert!(
                fix.contains("backup") && fix.contains("enforce_write_block = false"),
                "{fix}"
            );
        } else {
            assert_eq!(check.status, ferry::preflight::Status::Pass, "{report}");
        }
    }
}
