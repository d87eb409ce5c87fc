//! Authentication (SCRAM-SHA-1/256, speculative) and built-in role enforcement.

mod common;

use common::*;
use ferry_sandbox::SandboxOptions;
use mongodb::bson::{doc, Document};

fn users() -> ferry_sandbox::Sandbox {
    start_with(SandboxOptions {
        users: vec![
            ("root".into(), "pw".into(), vec!["root".into()]),
            ("reader".into(), "pw".into(), vec!["readAnyDatabase".into()]),
            (
                "writer".into(),
                "pw".into(),
                vec!["readWriteAnyDatabase".into()],
            ),
            ("dba".into(), "pw".into(), vec!["dbAdminAnyDatabase".into()]),
            ("ops".into(), "pw".into(), vec!["clusterMonitor".into()]),
            ("backup".into(), "pw".into(), vec!["backup".into()]),
        ],
        ..Default::default()
    })
}

#[tokio::test]
async fn scram_mechanisms_and_bad_password() {
    let sb = users();
    for mech in ["SCRAM-SHA-1", "SCRAM-SHA-256"] {
        let uri = format!("{}&authMechanism={mech}", sb.uri_with_user("root", "pw"));
        let c = client_for(&uri).await;
        let cs = run(&c, "admin", doc! {"connectionStatus": 1})
            .await
            .unwrap();
        let users = cs
            .get_document("authInfo")
            .unwrap()
            .get_array("authenticatedUsers")
            .unwrap();
        assert_eq!(users.len(), 1, "{mech}");
    }
    // Default mechanism negotiation (speculative authentication) works too.
    let c = client_for(&sb.uri_with_user("root", "pw")).await;
    run(&c, "admin", doc! {"ping": 1}).await.unwrap();
    let bad = client_for(&sb.uri_with_user("root", "wrong")).await;
    let err = run(&bad, "admin", doc! {"ping": 1}).await.unwrap_err();
    let msg = format!("{err:?}");
    assert!(
        msg.contains("18") || msg.contains("Authentication failed"),
        "{msg}"
    );
    // Unauthenticated clients may handshake but not read: 13.
    let anon = client(&sb).await;
    run(&anon, "admin", doc! {"hello": 1}).await.unwrap();
    expect_code(
        anon.database("t")
            .collection::<Document>("c")
            .find_one(doc! {})
            .await,
        13,
    )
    .await;
}

#[tokio::test]
async fn speculative_authenticate_in_hello() {
    let sb = users();
    let c = client(&sb).await;
    let reply = run(
        &c,
        "admin",
        doc! {"hello": 1, "speculativeAuthenticate": {"saslStart": 1, "mechanism": "SCRAM-SHA-256",
            "payload": mongodb::bson::Binary { subtype: mongodb::bson::spec::BinarySubtype::Generic, bytes: b"n,,n=root,r=abcdefghijklmnop".to_vec() },
            "db": "admin"}, "saslSupportedMechs": "admin.root"},
    )
    .await
    .unwrap();
    let spec = reply.get_document("speculativeAuthenticate").unwrap();
    assert!(spec.get("conversationId").is_some());
    assert_eq!(spec.get_bool("done"), Ok(false));
    let payload = String::from_utf8(spec.get_binary_generic("payload").unwrap().clone()).unwrap();
    assert!(payload.starts_with("r=abcdefghijklmnop"), "{payload}");
    assert!(payload.contains(",s=") && payload.contains(",i="));
    let mechs = reply.get_array("saslSupportedMechs").unwrap();
    assert_eq!(mechs.len(), 2);
}

#[tokio::test]
async fn built_in_roles_allow_and_deny() {
    let sb = users();
    let root = client_for(&sb.uri_with_user("root", "pw")).await;
    root.database("t")
        .collection::<Document>("c")
        .insert_one(doc! {"_id": 1})
        .await
        .unwrap();
    let reader = client_for(&sb.uri_with_user("reader", "pw")).await;
    let writer = client_for(&sb.uri_with_user("writer", "pw")).await;
    let dba = client_for(&sb.uri_with_user("dba", "pw")).await;
    let ops = client_for(&sb.uri_with_user("ops", "pw")).await;
    let backup = client_for(&sb.uri_with_user("backup", "pw")).await;
    let c = |cl: &mongodb::Client| cl.database("t").collection::<Document>("c");

    // read
    assert!(c(&reader).find_one(doc! {}).await.unwrap().is_some());
    expect_code(c(&reader).insert_one(doc! {}).await, 13).await;
    expect_code(run(&reader, "t", doc! {"drop": "c"}).await, 13).await;
    // readWrite
    c(&writer).insert_one(doc! {"_id": 2}).await.unwrap();
    c(&writer).delete_one(doc! {"_id": 2}).await.unwrap();
    expect_code(run(&writer, "admin", doc! {"serverStatus": 1}).await, 13).await;
    expect_code(
        run(
            &writer,
            "admin",
            doc! {"createUser": "x", "pwd": "y", "roles": []},
        )
        .await,
        13,
    )
    .await;
    // dbAdmin: DDL and stats, no data reads or writes.
    run(&dba, "t", doc! {"collStats": "c"}).await.unwrap();
    run(
        &dba,
        "t",
        doc! {"createIndexes": "c", "indexes": [{"key": {"a": 1}, "name": "a_1"}]},
    )
    .await
    .unwrap();
    expect_code(c(&dba).insert_one(doc! {}).await, 13).await;
    // clusterMonitor
    run(&ops, "admin", doc! {"serverStatus": 1}).await.unwrap();
    run(&ops, "admin", doc! {"replSetGetStatus": 1})
        .await
        .unwrap();
    expect_code(c(&ops).insert_one(doc! {}).await, 13).await;
    expect_code(
        run(
            &ops,
            "admin",
            doc! {"setUserWriteBlockMode": 1, "global": true},
        )
        .await,
        13,
    )
    .await;
    // backup can read everything, including the oplog, but not write.
    backup
        .database("local")
        .collection::<Document>("oplog.rs")
        .find_one(doc! {})
        .await
        .unwrap();
    expect_code(c(&backup).insert_one(doc! {}).await, 13).await;
    // root: everything.
    run(
        &root,
        "admin",
        doc! {"setUserWriteBlockMode": 1, "global": false},
    )
    .await
    .unwrap();
    // Change streams need changeStream+find.
    c(&reader).watch().await.unwrap();
}
