//! `ferry validate` against sandbox sharded clusters over TCP: the checks of a sharded
//! side (roles and versions on every node, balancer, orphans, indexes per shard, shard
//! keys towards a replica set), one test per failure an operator could hit.

mod common;

use std::process::Command;
use std::time::Duration;

use bson::{doc, Document};
use common::{sandbox_with_users, ADMIN, MIGRATOR};
use ferry::preflight::{run_checks_as, Check, PreflightReport, Status};
use ferry_sandbox::{ShardedCluster, ShardedOptions};
use mongodb::Client;

const OWNER: &str = "ferry@validate-sharded-test";

/// What Ferry needs on a sharded source: read everything, the oplog and the cluster's
/// metadata, and stop the balancer.
const SOURCE_ROLES: [&str; 4] = [
    "backup",
    "readAnyDatabase",
    "clusterMonitor",
    "clusterManager",
];
/// What Ferry needs on a sharded destination.
const DESTINATION_ROLES: [&str; 3] = ["readWriteAnyDatabase", "clusterMonitor", "clusterManager"];

/// A two-shard cluster with [`ADMIN`] (root) and [`MIGRATOR`] with `roles` on the router
/// (config servers) and every shard; the balancer never runs on its own and donors keep
/// their orphans.
fn cluster(roles: &[&str]) -> ShardedCluster {
    ShardedCluster::start(ShardedOptions {
        shards: 2,
        users: vec![
            (ADMIN.0.into(), ADMIN.1.into(), vec!["root".into()]),
            (
                MIGRATOR.0.into(),
                MIGRATOR.1.into(),
                roles.iter().map(|r| r.to_string()).collect(),
            ),
        ],
        balancer_interval: Duration::from_secs(3600),
        orphan_cleanup_delay: Duration::from_secs(3600),
        ..Default::default()
    })
    .expect("sharded cluster starts")
}

fn migrator_uri(c: &ShardedCluster) -> String {
    c.router_uri_with_user(MIGRATOR.0, MIGRATOR.1)
}

async fn admin_client(uri_with_user: &str) -> Client {
    Client::with_uri_str(uri_with_user)
        .await
        .expect("admin client")
}

async fn router_admin(c: &ShardedCluster) -> Client {
    admin_client(&c.router_uri_with_user(ADMIN.0, ADMIN.1)).await
}

/// The admin of one shard, connected to it directly.
async fn shard_admin(c: &ShardedCluster, shard: &str) -> Client {
    let uri = c
        .shard(shard)
        .expect("shard")
        .uri_with_user(ADMIN.0, ADMIN.1);
    admin_client(&uri).await
}

async fn run(client: &Client, db: &str, command: Document) -> Document {
    client
        .database(db)
        .run_command(command.clone())
        .await
        .unwrap_or_else(|e| panic!("{command} failed: {e}"))
}

/// `app.items` sharded on `{k: 1}`, documents k = 0..100, the upper half on shard1 (the
/// donor shard0 keeps its copies as orphans: cleanup is an hour away).
async fn sharded_items(c: &ShardedCluster) {
    let router = router_admin(c).await;
    run(
        &router,
        "admin",
        doc! {"enableSharding": "app", "primaryShard": "shard0"},
    )
    .await;
    run(
        &router,
        "admin",
        doc! {"shardCollection": "app.items", "key": {"k": 1}},
    )
    .await;
    let docs: Vec<Document> = (0..100).map(|k| doc! {"_id": k, "k": k}).collect();
    router
        .database("app")
        .collection::<Document>("items")
        .insert_many(docs)
        .await
        .expect("insert items");
    run(
        &router,
        "admin",
        doc! {"split": "app.items", "middle": {"k": 50}},
    )
    .await;
    run(
        &router,
        "admin",
        doc! {"moveChunk": "app.items", "find": {"k": 75}, "to": "shard1", "_waitForDelete": false},
    )
    .await;
}

/// Removes the orphans [`sharded_items`] left on shard0, for tests about something else.
async fn without_orphans(c: &ShardedCluster) {
    let shard0 = shard_admin(c, "shard0").await;
    run(
        &shard0,
        "app",
        doc! {"delete": "items", "deletes": [{"q": {"k": {"$gte": 50}}, "limit": 0}]},
    )
    .await;
}

fn config_text(source_uri: &str, destination_uri: &str) -> String {
    format!("[source]\nuri = \"{source_uri}\"\n\n[destination]\nuri = \"{destination_uri}\"\n")
}

async fn checks(source_uri: &str, destination_uri: &str) -> PreflightReport {
    let config = ferry::config::from_toml_str(&config_text(source_uri, destination_uri), &|_| None)
        .expect("valid config");
    let report = run_checks_as(&config, OWNER).await;
    println!("{report}");
    report
}

fn check<'a>(report: &'a PreflightReport, name: &str) -> &'a Check {
    report
        .check(name)
        .unwrap_or_else(|| panic!("no check named {name:?} in\n{report}"))
}

/// A sharded source and destination set up as an operator should: every sharded check
/// passes, and `ferry validate --json` carries them with their side.
#[tokio::test]
async fn all_good_sharded_to_sharded_passes() {
    let source = cluster(&SOURCE_ROLES);
    let destination = cluster(&DESTINATION_ROLES);
    sharded_items(&source).await;
    without_orphans(&source).await;
    let report = checks(&migrator_uri(&source), &migrator_uri(&destination)).await;
    assert!(report.passed(), "{report}");
    for side in ["source", "destination"] {
        for kind in [
            "config servers",
            "node versions",
            "balancer control",
            "balancer state",
        ] {
            let c = check(&report, &format!("{kind} ({side})"));
            assert_eq!(c.status, Status::Pass, "{c:?}");
        }
    }
    for name in [
        "node roles (source)",
        "orphaned documents (source)",
        "shard indexes (source)",
        "zones (source)",
        "default collations (source)",
    ] {
        assert_eq!(check(&report, name).status, Status::Pass, "{name}");
    }
    let roles = check(&report, "node roles (source)");
    assert!(
        roles.message.contains("shard shard0") && roles.message.contains("shard shard1"),
        "{roles:?}"
    );
    assert!(
        report.check("shard keys (source)").is_none(),
        "shard keys only matter towards a replica set"
    );

    let path = std::env::temp_dir().join(format!(
        "ferry-validate-sharded-{}.toml",
        std::process::id()
    ));
    std::fs::write(
        &path,
        config_text(&migrator_uri(&source), &migrator_uri(&destination)),
    )
    .expect("write config");
    let out = tokio::task::spawn_blocking({
        let path = path.clone();
        move || {
            Command::new(env!("CARGO_BIN_EXE_ferry"))
                .args(["validate", "--json", "--config"])
                .arg(&path)
                .output()
                .expect("run ferry validate")
        }
    })
    .await
    .expect("join");
    let _ = std::fs::remove_file(&path);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    let json: serde_json::Value = serde_json::from_str(stdout.trim()).expect("JSON output");
    let listed = json["checks"].as_array().expect("checks");
    for (name, side) in [
        ("node roles", "source"),
        ("node versions", "destination"),
        ("balancer state", "source"),
        ("shard indexes", "source"),
    ] {
        let c = listed
            .iter()
            .find(|c| c["name"] == name && c["side"] == side)
            .unwrap_or_else(|| panic!("no {name} ({side}) in {json}"));
        assert_eq!(c["status"], "pass", "{c}");
    }
}

/// The migration user exists on the router but not on shard1: the check fails naming
/// that shard and saying the user cannot log in there.
#[tokio::test]
async fn user_missing_on_one_shard_fails_naming_it() {
    let source = cluster(&SOURCE_ROLES);
    let destination = cluster(&DESTINATION_ROLES);
    let shard1 = shard_admin(&source, "shard1").await;
    run(&shard1, "admin", doc! {"dropUser": MIGRATOR.0}).await;
    let report = checks(&migrator_uri(&source), &migrator_uri(&destination)).await;
    let roles = check(&report, "node roles (source)");
    assert_eq!(roles.status, Status::Fail, "{roles:?}");
    assert!(
        roles.message.contains("cannot log in on shard shard1"),
        "{roles:?}"
    );
    assert!(!roles.message.contains("shard0"), "{roles:?}");
    assert!(
        roles.fix.as_deref().unwrap_or("").contains("shard shard1"),
        "{roles:?}"
    );
    assert!(!report.passed());
}

/// The migration user on shard0 (recreated there with fewer roles) lacks clusterMonitor: the check names the shard and the
/// missing role, with the grant to run there.
#[tokio::test]
async fn role_missing_on_one_shard_fails_naming_node_and_role() {
    let source = cluster(&SOURCE_ROLES);
    let destination = cluster(&DESTINATION_ROLES);
    let shard0 = shard_admin(&source, "shard0").await;
    run(&shard0, "admin", doc! {"dropUser": MIGRATOR.0}).await;
    run(
        &shard0,
        "admin",
        doc! {"createUser": MIGRATOR.0, "pwd": MIGRATOR.1, "roles": ["backup", "readAnyDatabase", "clusterManager"]},
    )
    .await;
    let report = checks(&migrator_uri(&source), &migrator_uri(&destination)).await;
    let roles = check(&report, "node roles (source)");
    assert_eq!(roles.status, Status::Fail, "{roles:?}");
    assert!(
        roles.message.contains("on shard shard0") && roles.message.contains("lacks clusterMonitor"),
        "{roles:?}"
    );
    let fix = roles.fix.as_deref().unwrap_or("");
    assert!(
        fix.contains("shard shard0")
            && fix.contains("grantRolesToUser")
            && fix.contains("clusterMonitor"),
        "{roles:?}"
    );
}

/// Orphans left on a donor shard are reported per collection and shard, as a warning:
/// they are never copied.
#[tokio::test]
async fn orphans_are_warned() {
    let source = cluster(&SOURCE_ROLES);
    let destination = cluster(&DESTINATION_ROLES);
    sharded_items(&source).await;
    let report = checks(&migrator_uri(&source), &migrator_uri(&destination)).await;
    let orphans = check(&report, "orphaned documents (source)");
    assert_eq!(orphans.status, Status::Warn, "{orphans:?}");
    assert!(
        orphans.message.contains("app.items (50 on shard0)"),
        "{orphans:?}"
    );
    assert!(orphans.message.contains("never copied"), "{orphans:?}");
    assert!(report.passed(), "a warning does not stop the migration");
}

/// A balancer `activeWindow` and a collection with `noBalance` are reported (they are
/// restored when the migration ends).
#[tokio::test]
async fn balancer_window_and_no_balance_are_reported() {
    let source = cluster(&SOURCE_ROLES);
    let destination = cluster(&DESTINATION_ROLES);
    sharded_items(&source).await;
    without_orphans(&source).await;
    let router = router_admin(&source).await;
    run(
        &router,
        "config",
        doc! {"update": "settings", "updates": [{"q": {"_id": "balancer"}, "u": {"$set": {"activeWindow": {"start": "01:00", "stop": "05:00"}}}, "upsert": true}]},
    )
    .await;
    run(
        &router,
        "config",
        doc! {"update": "collections", "updates": [{"q": {"_id": "app.items"}, "u": {"$set": {"noBalance": true}}}]},
    )
    .await;
    let report = checks(&migrator_uri(&source), &migrator_uri(&destination)).await;
    let state = check(&report, "balancer state (source)");
    assert_eq!(state.status, Status::Warn, "{state:?}");
    assert!(
        state.message.contains("activeWindow 01:00-05:00"),
        "{state:?}"
    );
    assert!(
        state.message.contains("noBalance on app.items"),
        "{state:?}"
    );
    assert!(state.message.contains("restores"), "{state:?}");
    let destination_state = check(&report, "balancer state (destination)");
    assert_eq!(
        destination_state.status,
        Status::Pass,
        "{destination_state:?}"
    );
}

/// An index built on one shard only (directly, behind the router's back) fails the check,
/// which names the collection, the index and the shard that lacks it.
#[tokio::test]
async fn indexes_differing_between_shards_fail() {
    let source = cluster(&SOURCE_ROLES);
    let destination = cluster(&DESTINATION_ROLES);
    sharded_items(&source).await;
    without_orphans(&source).await;
    let shard0 = shard_admin(&source, "shard0").await;
    run(
        &shard0,
        "app",
        doc! {"createIndexes": "items", "indexes": [{"key": {"extra": 1}, "name": "extra_1"}]},
    )
    .await;
    let report = checks(&migrator_uri(&source), &migrator_uri(&destination)).await;
    let indexes = check(&report, "shard indexes (source)");
    assert_eq!(indexes.status, Status::Fail, "{indexes:?}");
    assert!(
        indexes
            .message
            .contains("app.items: index extra_1 is missing on shard1"),
        "{indexes:?}"
    );
    assert!(!report.passed());
}

/// Sharded source, replica set destination: a collection sharded on a key other than
/// `_id` is warned about (`_id` must be unique across shards).
#[tokio::test]
async fn sharded_to_replica_set_warns_on_non_id_shard_key() {
    let source = cluster(&SOURCE_ROLES);
    let destination =
        sandbox_with_users("dst", "7.0.13", &["readWriteAnyDatabase", "clusterMonitor"]);
    sharded_items(&source).await;
    without_orphans(&source).await;
    let report = checks(
        &migrator_uri(&source),
        &destination.uri_with_user(MIGRATOR.0, MIGRATOR.1),
    )
    .await;
    let keys = check(&report, "shard keys (source)");
    assert_eq!(keys.status, Status::Warn, "{keys:?}");
    assert!(keys.message.contains("app.items"), "{keys:?}");
    assert!(keys.message.contains("first duplicate _id"), "{keys:?}");
    assert!(
        report.check("node versions (destination)").is_none(),
        "a replica set destination has no sharded checks"
    );
    assert!(report.passed(), "{report}");
}

/// A URI that reaches a shard, or the config servers, directly instead of the router is
/// refused by the topology check, which says to use the mongos (a shard holds only part
/// of the data, so migrating it alone would silently lose the rest).
#[tokio::test]
async fn a_shard_or_config_server_uri_is_refused() {
    let source = cluster(&SOURCE_ROLES);
    let destination = cluster(&DESTINATION_ROLES);
    let shard_uri = source
        .shard("shard1")
        .expect("shard1")
        .uri_with_user(MIGRATOR.0, MIGRATOR.1);
    let report = checks(&shard_uri, &migrator_uri(&destination)).await;
    let topology = check(&report, "topology (source)");
    assert_eq!(topology.status, Status::Fail, "{topology:?}");
    assert!(
        topology
            .message
            .contains("replica set shard1, a shard of a sharded cluster"),
        "{topology:?}"
    );
    assert!(
        topology.fix.as_deref().unwrap_or("").contains("mongos"),
        "{topology:?}"
    );

    let config_uri = source.config().uri_with_user(MIGRATOR.0, MIGRATOR.1);
    let report = checks(&migrator_uri(&source), &config_uri).await;
    let topology = check(&report, "topology (destination)");
    assert_eq!(topology.status, Status::Fail, "{topology:?}");
    assert!(
        topology.message.contains("the config server replica set"),
        "{topology:?}"
    );
}

/// Ferry writes to a sharded destination only through its router, so a destination user
/// missing on one destination shard does not stop the migration: the versions there
/// are left to the operator, with a warning naming the shard.
#[tokio::test]
async fn destination_user_missing_on_a_shard_is_a_warning() {
    let source = cluster(&SOURCE_ROLES);
    let destination = cluster(&DESTINATION_ROLES);
    let shard0 = shard_admin(&destination, "shard0").await;
    run(&shard0, "admin", doc! {"dropUser": MIGRATOR.0}).await;
    let report = checks(&migrator_uri(&source), &migrator_uri(&destination)).await;
    let versions = check(&report, "node versions (destination)");
    assert_eq!(versions.status, Status::Warn, "{versions:?}");
    assert!(
        versions.message.contains("not checked on shard shard0")
            && versions.message.contains("cannot log in"),
        "{versions:?}"
    );
    assert!(versions.message.contains("shard shard1"), "{versions:?}");
    assert!(report.passed(), "{report}");
}

/// Sharded to sharded: a sharded collection with a non-simple default collation is
/// warned about (it is sharded on the destination with the simple collation); an
/// unsharded one keeps its collation and only shows in the message.
#[tokio::test]
async fn non_simple_collation_on_a_sharded_collection_is_warned() {
    let source = cluster(&SOURCE_ROLES);
    let destination = cluster(&DESTINATION_ROLES);
    let router = router_admin(&source).await;
    run(
        &router,
        "admin",
        doc! {"enableSharding": "app", "primaryShard": "shard0"},
    )
    .await;
    for coll in ["people", "notes"] {
        run(
            &router,
            "app",
            doc! {"create": coll, "collation": {"locale": "fr", "strength": 2}},
        )
        .await;
    }
    run(
        &router,
        "app",
        doc! {"createIndexes": "people", "indexes": [{"key": {"k": 1}, "name": "k_1", "collation": {"locale": "simple"}}]},
    )
    .await;
    run(
        &router,
        "admin",
        doc! {"shardCollection": "app.people", "key": {"k": 1}, "collation": {"locale": "simple"}},
    )
    .await;
    let report = checks(&migrator_uri(&source), &migrator_uri(&destination)).await;
    let collations = check(&report, "default collations (source)");
    assert_eq!(collations.status, Status::Warn, "{collations:?}");
    assert!(
        collations
            .message
            .starts_with("non-simple default collation on app.people (fr)"),
        "{collations:?}"
    );
    assert!(
        collations
            .message
            .contains("unsharded, they keep it: app.notes (fr)"),
        "{collations:?}"
    );
    assert!(report.passed(), "{report}");
}
