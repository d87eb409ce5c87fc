//! The server's configuration as tools read it: `getCmdLineOpts`, `getParameter` (one,
//! `"*"`, `showDetails`, unknown), and the privileges behind the write block at cutover.

mod common;

use common::*;
use ferry_sandbox::SandboxOptions;
use mongodb::bson::{doc, Bson, Document};

/// Pins: `getCmdLineOpts` was unknown (59); tools read the replica set name and port
/// from it.
#[tokio::test]
async fn get_cmd_line_opts_reports_argv_and_parsed_options() {
    let sb = start();
    let client = client(&sb).await;
    let reply = run(&client, "admin", doc! {"getCmdLineOpts": 1})
        .await
        .unwrap();
    let argv: Vec<&str> = reply
        .get_array("argv")
        .unwrap()
        .iter()
        .filter_map(Bson::as_str)
        .collect();
    assert_eq!(argv.first(), Some(&"mongod"));
    assert!(
        argv.windows(2).any(|w| w == ["--replSet", "rs0"]),
        "{argv:?}"
    );
    let parsed = reply.get_document("parsed").unwrap();
    assert_eq!(
        parsed
            .get_document("replication")
            .unwrap()
            .get_str("replSetName"),
        Ok("rs0")
    );
    let port: i32 = sb
        .address()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");
    assert_eq!(
        parsed.get_document("net").unwrap().get_i32("port"),
        Ok(port)
    );
    assert!(parsed.get("security").is_none());
    // Only on admin, as on the server.
    expect_code(run(&client, "t", doc! {"getCmdLineOpts": 1}).await, 13).await;
}

/// Pins: `getParameter: "*"` listed only two parameters, and `showDetails` was ignored.
#[tokio::test]
async fn get_parameter_lists_every_known_parameter() {
    let sb = start();
    let client = client(&sb).await;
    let all = run(&client, "admin", doc! {"getParameter": "*"})
        .await
        .unwrap();
    for name in [
        "featureCompatibilityVersion",
        "authenticationMechanisms",
        "cursorTimeoutMillis",
        "transactionLifetimeLimitSeconds",
        "localLogicalSessionTimeoutMinutes",
        "logLevel",
    ] {
        assert!(all.contains_key(name), "{name} missing from {all}");
    }
    // Each listed parameter can be asked for by name.
    for name in all
        .keys()
        .filter(|k| !matches!(k.as_str(), "ok" | "$clusterTime" | "operationTime"))
    {
        let one = run(&client, "admin", doc! {"getParameter": 1, name: 1})
            .await
            .unwrap();
        assert_eq!(one.get(name), all.get(name), "{name}");
    }
    let detailed = run(
        &client,
        "admin",
        doc! {"getParameter": {"showDetails": true}, "cursorTimeoutMillis": 1},
    )
    .await
    .unwrap();
    assert_eq!(
        detailed.get_document("cursorTimeoutMillis").unwrap(),
        &doc! {"value": 600_000i64, "settableAtRuntime": true, "settableAtStartup": true}
    );
    // A single unknown parameter fails as on the server.
    let err = expect_code(
        run(
            &client,
            "admin",
            doc! {"getParameter": 1, "noSuchParameter": 1},
        )
        .await,
        72,
    )
    .await;
    assert!(format!("{err:?}").contains("no option found to get"));
}

fn users() -> ferry_sandbox::Sandbox {
    start_with(SandboxOptions {
        users: vec![
            ("backup".into(), "pw".into(), vec!["backup".into()]),
            ("reader".into(), "pw".into(), vec!["readAnyDatabase".into()]),
            (
                "writer".into(),
                "pw".into(),
                vec!["readWriteAnyDatabase".into()],
            ),
        ],
        ..Default::default()
    })
}

/// Pins: the built-in `backup` role lacked `setUserWriteBlockMode` (a real 6.0+ server
/// grants it on the cluster so cluster-to-cluster sync can block writes at cutover): a
/// migration whose source user had the documented roles failed at cutover with 13.
#[tokio::test]
async fn backup_role_may_block_user_writes_read_any_database_may_not() {
    let sb = users();
    let backup = client_for(&sb.uri_with_user("backup", "pw")).await;
    let reader = client_for(&sb.uri_with_user("reader", "pw")).await;
    let writer = client_for(&sb.uri_with_user("writer", "pw")).await;
    run(
        &backup,
        "admin",
        doc! {"setUserWriteBlockMode": 1, "global": true},
    )
    .await
    .unwrap();
    expect_code(
        writer
            .database("t")
            .collection::<Document>("c")
            .insert_one(doc! {})
            .await,
        371,
    )
    .await;
    run(
        &backup,
        "admin",
        doc! {"setUserWriteBlockMode": 1, "global": false},
    )
    .await
    .unwrap();
    expect_code(
        run(
            &reader,
            "admin",
            doc! {"setUserWriteBlockMode": 1, "global": true},
        )
        .await,
        13,
    )
    .await;
    // connectionStatus shows the privilege on the cluster resource.
    let status = run(
        &backup,
        "admin",
        doc! {"connectionStatus": 1, "showPrivileges": true},
    )
    .await
    .unwrap();
    let privileges = status
        .get_document("authInfo")
        .unwrap()
        .get_array("authenticatedUserPrivileges")
        .unwrap();
    let cluster_actions: Vec<&str> = privileges
        .iter()
        .filter_map(Bson::as_document)
        .filter(|p| p.get_document("resource").ok() == Some(&doc! {"cluster": true}))
        .flat_map(|p| {
            p.get_array("actions")
                .unwrap()
                .iter()
                .filter_map(Bson::as_str)
        })
        .collect();
    assert!(
        cluster_actions.contains(&"setUserWriteBlockMode"),
        "{cluster_actions:?}"
    );
    assert!(!cluster_actions.contains(&"bypassWriteBlockingMode"));
}
