//! Authentication through the router: users live on the config server (where a mongos
//! keeps them); `--user` creates them on every shard too; a user created directly on a
//! shard exists only there.

mod common;

use common::{client_for, code, run};
use ferry_sandbox::{ShardedCluster, ShardedOptions};
use mongodb::bson::{doc, Document};

fn start() -> ShardedCluster {
    ShardedCluster::start(ShardedOptions {
        shards: 2,
        users: vec![("admin".into(), "pw".into(), vec!["root".into()])],
        ..Default::default()
    })
    .expect("cluster starts")
}

fn with_user(uri: &str, user: &str, password: &str) -> String {
    let rest = uri.trim_start_matches("mongodb://");
    let (hosts, params) = rest.split_once("/?").unwrap_or((rest, ""));
    let sep = if params.is_empty() { "" } else { "&" };
    format!("mongodb://{user}:{password}@{hosts}/?authSource=admin{sep}{params}")
}

#[tokio::test]
async fn start_up_users_exist_on_the_router_and_every_shard() {
    let cluster = start();
    let router = client_for(&cluster.router_uri_with_user("admin", "pw")).await;
    router
        .database("app")
        .collection::<Document>("c")
        .insert_one(doc! {"x": 1})
        .await
        .unwrap();
    for (_, uri) in cluster.shard_uris() {
        let shard = client_for(&with_user(&uri, "admin", "pw")).await;
        run(&shard, "admin", doc! {"listDatabases": 1})
            .await
            .unwrap();
    }
    let anonymous = client_for(&cluster.router_uri()).await;
    let err = anonymous
        .database("app")
        .collection::<Document>("c")
        .find_one(doc! {})
        .await
        .unwrap_err();
    assert_eq!(code(&err), 13, "{err:?}");
}

/// Pins: "the migration user is missing on shard1" can be staged. A user created on a
/// shard directly authenticates there, not through the router or on another shard.
#[tokio::test]
async fn a_user_created_on_a_shard_exists_only_there() {
    let cluster = start();
    let shard1_uri = cluster.shard("shard1").unwrap().uri();
    let shard1 = client_for(&with_user(&shard1_uri, "admin", "pw")).await;
    run(
        &shard1,
        "admin",
        doc! {"createUser": "local", "pwd": "pw2", "roles": ["readAnyDatabase"]},
    )
    .await
    .unwrap();
    let on_shard = client_for(&with_user(&shard1_uri, "local", "pw2")).await;
    run(&on_shard, "admin", doc! {"listDatabases": 1})
        .await
        .unwrap();
    let via_router = client_for(&cluster.router_uri_with_user("local", "pw2")).await;
    let err = run(&via_router, "admin", doc! {"ping": 1})
        .await
        .unwrap_err();
    assert!(
        format!("{err:?}").contains("Authentication"),
        "router must refuse the shard-local user: {err:?}"
    );
}

#[tokio::test]
async fn create_user_through_the_router_stores_it_on_the_config_server_only() {
    let cluster = start();
    let router = client_for(&cluster.router_uri_with_user("admin", "pw")).await;
    run(
        &router,
        "admin",
        doc! {"createUser": "migrator", "pwd": "m", "roles": ["readAnyDatabase"]},
    )
    .await
    .unwrap();
    let migrator = client_for(&cluster.router_uri_with_user("migrator", "m")).await;
    run(&migrator, "admin", doc! {"listDatabases": 1})
        .await
        .unwrap();
    let config = client_for(&with_user(&cluster.config_uri(), "admin", "pw")).await;
    let info = run(&config, "admin", doc! {"usersInfo": "migrator"})
        .await
        .unwrap();
    assert_eq!(info.get_array("users").unwrap().len(), 1);
    let shard0 = client_for(&with_user(
        &cluster.shard("shard0").unwrap().uri(),
        "admin",
        "pw",
    ))
    .await;
    let info = run(&shard0, "admin", doc! {"usersInfo": "migrator"})
        .await
        .unwrap();
    assert!(info.get_array("users").unwrap().is_empty());
}
