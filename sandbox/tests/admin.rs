//! Administrative commands: ping, buildInfo, parameters/FCV, status, replSetGetStatus,
//! dbHash, collStats, connectionStatus, users, write blocking, appendOplogNote.

mod common;

use common::*;
use ferry_sandbox::SandboxOptions;
use futures_util::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};

fn with_admin() -> ferry_sandbox::Sandbox {
    start_with(SandboxOptions {
        users: vec![("admin".into(), "pw".into(), vec!["root".into()])],
        ..Default::default()
    })
}

#[tokio::test]
async fn ping_build_info_parameters_fcv() {
    let sb = start_with(SandboxOptions {
        version: "6.0.14".into(),
        ..Default::default()
    });
    let client = client(&sb).await;
    let ping = run(&client, "admin", doc! {"ping": 1}).await.unwrap();
    assert_eq!(ping.get_f64("ok"), Ok(1.0));
    let build = run(&client, "admin", doc! {"buildInfo": 1}).await.unwrap();
    assert_eq!(build.get_str("version"), Ok("6.0.14"));
    assert_eq!(
        build.get_array("versionArray").unwrap(),
        &vec![
            Bson::Int32(6),
            Bson::Int32(0),
            Bson::Int32(14),
            Bson::Int32(0)
        ]
    );
    let p = run(
        &client,
        "admin",
        doc! {"getParameter": 1, "featureCompatibilityVersion": 1},
    )
    .await
    .unwrap();
    assert_eq!(
        p.get_document("featureCompatibilityVersion")
            .unwrap()
            .get_str("version"),
        Ok("6.0")
    );
    // getParameter outside admin: 13.
    expect_code(
        run(
            &client,
            "t",
            doc! {"getParameter": 1, "featureCompatibilityVersion": 1},
        )
        .await,
        13,
    )
    .await;
    // Unknown parameter: 72 InvalidOptions.
    expect_code(
        run(
            &client,
            "admin",
            doc! {"getParameter": 1, "noSuchParameter": 1},
        )
        .await,
        72,
    )
    .await;
    // FCV can go down one version and back.
    let sb7 = start();
    let c7 = common::client(&sb7).await;
    run(
        &c7,
        "admin",
        doc! {"setFeatureCompatibilityVersion": "6.0", "confirm": true},
    )
    .await
    .unwrap();
    let p = run(
        &c7,
        "admin",
        doc! {"getParameter": 1, "featureCompatibilityVersion": 1},
    )
    .await
    .unwrap();
    assert_eq!(
        p.get_document("featureCompatibilityVersion")
            .unwrap()
            .get_str("version"),
        Ok("6.0")
    );
    run(
        &c7,
        "admin",
        doc! {"setFeatureCompatibilityVersion": "7.0", "confirm": true},
    )
    .await
    .unwrap();
    // 7.0 requires confirm: 7369100.
    expect_code(
        run(&c7, "admin", doc! {"setFeatureCompatibilityVersion": "6.0"}).await,
        7369100,
    )
    .await;
    // Above the binary: error.
    assert!(run(
        &c7,
        "admin",
        doc! {"setFeatureCompatibilityVersion": "8.0", "confirm": true}
    )
    .await
    .is_err());
}

#[tokio::test]
async fn server_status_and_repl_set_get_status() {
    let sb = start();
    let client = client(&sb).await;
    let st = run(&client, "admin", doc! {"serverStatus": 1})
        .await
        .unwrap();
    assert_eq!(st.get_str("version"), Ok("7.0.13"));
    assert!(st.get("uptime").is_some());
    assert!(st.get_document("connections").is_ok());
    assert_eq!(
        st.get_document("repl").unwrap().get_str("setName"),
        Ok("rs0")
    );
    let rs = run(&client, "admin", doc! {"replSetGetStatus": 1})
        .await
        .unwrap();
    assert_eq!(rs.get_str("set"), Ok("rs0"));
    assert_eq!(as_i64(rs.get("myState")), 1);
    let members = rs.get_array("members").unwrap();
    assert_eq!(members.len(), 1);
    let m = members[0].as_document().unwrap();
    assert_eq!(m.get_str("stateStr"), Ok("PRIMARY"));
    assert_eq!(m.get_str("name"), Ok(sb.address()));
    assert_eq!(m.get_bool("self"), Ok(true));
    assert!(rs.get_document("optimes").is_ok());
}

#[tokio::test]
async fn db_hash_changes_with_data_and_is_stable() {
    let sb = start();
    let client = client(&sb).await;
    let coll = client.database("t").collection::<Document>("c");
    coll.insert_many(vec![doc! {"_id": 1}, doc! {"_id": 2}])
        .await
        .unwrap();
    let h1 = run(&client, "t", doc! {"dbHash": 1}).await.unwrap();
    let h1b = run(&client, "t", doc! {"dbHash": 1}).await.unwrap();
    assert_eq!(h1.get_str("md5"), h1b.get_str("md5"));
    assert!(h1.get_document("collections").unwrap().get_str("c").is_ok());
    coll.update_one(doc! {"_id": 1}, doc! {"$set": {"x": 1}})
        .await
        .unwrap();
    let h2 = run(&client, "t", doc! {"dbHash": 1, "collections": ["c"]})
        .await
        .unwrap();
    assert_ne!(h1.get_str("md5"), h2.get_str("md5"));
    assert_ne!(
        h1.get_document("collections").unwrap().get_str("c"),
        h2.get_document("collections").unwrap().get_str("c")
    );
}

#[tokio::test]
async fn coll_stats_command_and_stage() {
    let sb = start();
    let client = client(&sb).await;
    let coll = client.database("t").collection::<Document>("c");
    coll.insert_many((0..10).map(|i| doc! {"_id": i, "pad": "x".repeat(100)}))
        .await
        .unwrap();
    let st = run(&client, "t", doc! {"collStats": "c"}).await.unwrap();
    assert_eq!(st.get_str("ns"), Ok("t.c"));
    assert_eq!(as_i64(st.get("count")), 10);
    assert!(as_i64(st.get("size")) > 1000);
    assert!(as_i64(st.get("avgObjSize")) > 100);
    assert_eq!(as_i64(st.get("nindexes")), 1);
    let stage: Vec<Document> = coll
        .aggregate(vec![doc! {"$collStats": {"storageStats": {}, "count": {}}}])
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(stage.len(), 1);
    let s = &stage[0];
    assert_eq!(s.get_str("ns"), Ok("t.c"));
    assert_eq!(
        as_i64(s.get_document("storageStats").unwrap().get("count")),
        10
    );
    assert_eq!(as_i64(s.get("count")), 10);
    // Missing collection: 26 for collStats.
    expect_code(run(&client, "t", doc! {"collStats": "missing"}).await, 26).await;
}

#[tokio::test]
async fn connection_status_and_users() {
    let sb = with_admin();
    let client = client_for(&sb.uri_with_user("admin", "pw")).await;
    let cs = run(
        &client,
        "admin",
        doc! {"connectionStatus": 1, "showPrivileges": true},
    )
    .await
    .unwrap();
    let info = cs.get_document("authInfo").unwrap();
    assert_eq!(
        info.get_array("authenticatedUsers").unwrap(),
        &vec![Bson::Document(doc! {"user": "admin", "db": "admin"})]
    );
    assert_eq!(
        info.get_array("authenticatedUserRoles").unwrap(),
        &vec![Bson::Document(doc! {"role": "root", "db": "admin"})]
    );
    assert!(!info
        .get_array("authenticatedUserPrivileges")
        .unwrap()
        .is_empty());
    run(
        &client,
        "app",
        doc! {"createUser": "reader", "pwd": "rpw", "roles": [{"role": "read", "db": "app"}]},
    )
    .await
    .unwrap();
    // Duplicate user: 51003.
    expect_code(
        run(
            &client,
            "app",
            doc! {"createUser": "reader", "pwd": "x", "roles": []},
        )
        .await,
        51003,
    )
    .await;
    let ui = run(&client, "app", doc! {"usersInfo": "reader"})
        .await
        .unwrap();
    let users = ui.get_array("users").unwrap();
    assert_eq!(users.len(), 1);
    let u = users[0].as_document().unwrap();
    assert_eq!(u.get_str("_id"), Ok("app.reader"));
    assert_eq!(u.get_str("user"), Ok("reader"));
    assert_eq!(u.get_str("db"), Ok("app"));
    assert_eq!(
        u.get_array("roles").unwrap(),
        &vec![Bson::Document(doc! {"role": "read", "db": "app"})]
    );
    assert!(!u.contains_key("credentials"));
    let all = run(&client, "admin", doc! {"usersInfo": {"forAllDBs": true}})
        .await
        .unwrap();
    assert_eq!(all.get_array("users").unwrap().len(), 2);
    // The new user can log in (authSource=app) and read but not write.
    let reader = client_for(&format!(
        "mongodb://reader:rpw@{}/?replicaSet=rs0&authSource=app",
        sb.address()
    ))
    .await;
    reader
        .database("app")
        .collection::<Document>("c")
        .find_one(doc! {})
        .await
        .unwrap();
    expect_code(
        reader
            .database("app")
            .collection::<Document>("c")
            .insert_one(doc! {})
            .await,
        13,
    )
    .await;
    run(&client, "app", doc! {"dropUser": "reader"})
        .await
        .unwrap();
    expect_code(run(&client, "app", doc! {"dropUser": "reader"}).await, 11).await;
    let ui = run(&client, "app", doc! {"usersInfo": "reader"})
        .await
        .unwrap();
    assert!(ui.get_array("users").unwrap().is_empty());
}

#[tokio::test]
async fn user_write_block_mode() {
    let sb = start_with(SandboxOptions {
        users: vec![
            ("admin".into(), "pw".into(), vec!["root".into()]),
            (
                "app".into(),
                "pw".into(),
                vec!["readWriteAnyDatabase".into()],
            ),
        ],
        ..Default::default()
    });
    let admin = client_for(&sb.uri_with_user("admin", "pw")).await;
    let app = client_for(&sb.uri_with_user("app", "pw")).await;
    let coll = app.database("t").collection::<Document>("c");
    coll.insert_one(doc! {"_id": 1}).await.unwrap();
    run(
        &admin,
        "admin",
        doc! {"setUserWriteBlockMode": 1, "global": true},
    )
    .await
    .unwrap();
    expect_code(coll.insert_one(doc! {"_id": 2}).await, 371).await;
    expect_code(coll.delete_one(doc! {"_id": 1}).await, 371).await;
    // Reads still work.
    assert_eq!(coll.count_documents(doc! {}).await.unwrap(), 1);
    // root holds bypassWriteBlockingMode (via __system-like privileges? restore role has it).
    admin
        .database("t")
        .collection::<Document>("c")
        .insert_one(doc! {"_id": 3})
        .await
        .unwrap();
    let st = run(&admin, "admin", doc! {"serverStatus": 1}).await;
    let _ = st;
    run(
        &admin,
        "admin",
        doc! {"setUserWriteBlockMode": 1, "global": false},
    )
    .await
    .unwrap();
    coll.insert_one(doc! {"_id": 2}).await.unwrap();
    // Missing 'global': 40414.
    expect_code(
        run(&admin, "admin", doc! {"setUserWriteBlockMode": 1}).await,
        40414,
    )
    .await;
}

#[tokio::test]
async fn append_oplog_note_advances_operation_time() {
    let sb = start();
    let client = client(&sb).await;
    let before = run(&client, "admin", doc! {"ping": 1}).await.unwrap();
    let t0 = before.get_timestamp("operationTime").unwrap();
    let note = run(
        &client,
        "admin",
        doc! {"appendOplogNote": 1, "data": {"msg": "hi"}},
    )
    .await
    .unwrap();
    let t1 = note.get_timestamp("operationTime").unwrap();
    assert!(
        (t1.time, t1.increment) > (t0.time, t0.increment),
        "{t0:?} {t1:?}"
    );
    let last = client
        .database("local")
        .collection::<Document>("oplog.rs")
        .find_one(doc! {})
        .sort(doc! {"$natural": -1})
        .await
        .unwrap()
        .unwrap();
    assert_eq!(last.get_str("op"), Ok("n"));
    assert_eq!(last.get_timestamp("ts"), Ok(t1));
    // Outside admin: 13.
    expect_code(
        run(&client, "t", doc! {"appendOplogNote": 1, "data": {}}).await,
        13,
    )
    .await;
}

#[tokio::test]
async fn end_and_kill_sessions_are_accepted() {
    let sb = start();
    let client = client(&sb).await;
    let lsid = doc! {"id": mongodb::bson::Binary{subtype: mongodb::bson::spec::BinarySubtype::Uuid, bytes: vec![3;16]}};
    let r = run(&client, "admin", doc! {"endSessions": [lsid.clone()]})
        .await
        .unwrap();
    assert_eq!(as_i64(r.get("ok")), 1);
    let r = run(&client, "admin", doc! {"killSessions": [lsid]})
        .await
        .unwrap();
    assert_eq!(as_i64(r.get("ok")), 1);
    // The driver's own endSessions on shutdown is answered too.
    client.shutdown().await;
}
