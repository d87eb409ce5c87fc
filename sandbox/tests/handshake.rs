//! Connection handshake: the driver sees a writable replica-set primary with the fields
//! drivers rely on.

mod common;

use common::*;
use ferry_sandbox::SandboxOptions;
use mongodb::bson::{doc, Bson};

#[tokio::test]
async fn driver_sees_writable_primary() {
    let sb = start();
    let client = client(&sb).await;
    let hello = run(&client, "admin", doc! {"hello": 1}).await.unwrap();
    assert_eq!(hello.get_bool("isWritablePrimary"), Ok(true));
    assert_eq!(hello.get_bool("secondary"), Ok(false));
    assert_eq!(hello.get_str("setName"), Ok("rs0"));
    assert_eq!(hello.get_str("me"), Ok(sb.address()));
    assert_eq!(hello.get_str("primary"), Ok(sb.address()));
    let hosts = hello.get_array("hosts").unwrap();
    assert_eq!(hosts, &vec![Bson::String(sb.address().to_string())]);
    assert!(hello.get_object_id("electionId").is_ok());
    assert_eq!(as_i64(hello.get("logicalSessionTimeoutMinutes")), 30);
    assert_eq!(as_i64(hello.get("maxBsonObjectSize")), 16 * 1024 * 1024);
    assert_eq!(as_i64(hello.get("maxMessageSizeBytes")), 48_000_000);
    assert_eq!(as_i64(hello.get("maxWireVersion")), 21);
    assert!(!hello.contains_key("topologyVersion"));
    assert!(!hello.contains_key("msg"));
    let ct = hello.get_document("$clusterTime").unwrap();
    assert!(ct.get_timestamp("clusterTime").is_ok());
    let sig = ct.get_document("signature").unwrap();
    assert_eq!(sig.get_binary_generic("hash").unwrap().len(), 20);
    assert_eq!(sig.get_i64("keyId"), Ok(0));
    assert!(hello.get_timestamp("operationTime").is_ok());
    // The driver can write, so it selected the member as primary.
    client
        .database("t")
        .collection("c")
        .insert_one(doc! {"x": 1})
        .await
        .unwrap();
}

#[tokio::test]
async fn legacy_is_master_reports_ismaster() {
    let sb = start();
    let client = client(&sb).await;
    let reply = run(&client, "admin", doc! {"isMaster": 1}).await.unwrap();
    assert_eq!(reply.get_bool("ismaster"), Ok(true));
    assert!(!reply.contains_key("isWritablePrimary"));
}

#[tokio::test]
async fn max_wire_version_follows_version() {
    for (version, wire) in [("6.0.5", 17), ("7.0.13", 21), ("8.0.1", 25)] {
        let sb = start_with(SandboxOptions {
            version: version.into(),
            ..Default::default()
        });
        let client = client(&sb).await;
        let hello = run(&client, "admin", doc! {"hello": 1}).await.unwrap();
        assert_eq!(as_i64(hello.get("maxWireVersion")), wire, "{version}");
        let build = run(&client, "admin", doc! {"buildInfo": 1}).await.unwrap();
        assert_eq!(build.get_str("version"), Ok(version));
    }
}

#[tokio::test]
async fn custom_set_name_is_required_by_driver() {
    let sb = start_with(SandboxOptions {
        set_name: "other".into(),
        ..Default::default()
    });
    assert!(sb.uri().contains("replicaSet=other"));
    let good = client(&sb).await;
    good.database("t")
        .collection("c")
        .insert_one(doc! {})
        .await
        .unwrap();
    // A client expecting another set name never finds a primary.
    let mut opts = mongodb::options::ClientOptions::parse(format!(
        "mongodb://{}/?replicaSet=rs0&serverSelectionTimeoutMS=500",
        sb.address()
    ))
    .await
    .unwrap();
    opts.server_selection_timeout = Some(std::time::Duration::from_millis(500));
    let bad = mongodb::Client::with_options(opts).unwrap();
    let err = bad
        .database("t")
        .collection::<mongodb::bson::Document>("c")
        .insert_one(doc! {})
        .await
        .unwrap_err();
    assert!(
        matches!(*err.kind, mongodb::error::ErrorKind::ServerSelection { .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn unknown_command_is_59() {
    let sb = start();
    let client = client(&sb).await;
    let err = expect_code(run(&client, "admin", doc! {"noSuchCommand": 1}).await, 59).await;
    if let mongodb::error::ErrorKind::Command(c) = err.kind.as_ref() {
        assert_eq!(c.code_name, "CommandNotFound");
    }
}

#[tokio::test]
async fn sessions_are_used_and_cluster_time_advances() {
    let sb = start();
    let client = client(&sb).await;
    let coll = client.database("t").collection("c");
    let mut session = client.start_session().await.unwrap();
    coll.insert_one(doc! {"a": 1})
        .session(&mut session)
        .await
        .unwrap();
    let t1 = session.operation_time().expect("operationTime recorded");
    coll.insert_one(doc! {"a": 2})
        .session(&mut session)
        .await
        .unwrap();
    let t2 = session.operation_time().unwrap();
    assert!(
        (t2.time, t2.increment) > (t1.time, t1.increment),
        "{t1:?} {t2:?}"
    );
    assert!(session.cluster_time().is_some());
}
