//! Fault injection: stepdown with automatic retry, dropped connections, latency, oplog
//! truncation, retryable-write replay and error labels.

mod common;

use std::time::{Duration, Instant};

use common::*;
use mongodb::bson::{doc, Document};

#[tokio::test]
async fn stepdown_then_retryable_write_succeeds_with_new_election_id() {
    let sb = start();
    let client = client(&sb).await;
    let coll = client.database("t").collection::<Document>("c");
    coll.insert_one(doc! {"_id": 0}).await.unwrap();
    let e1 = run(&client, "admin", doc! {"hello": 1})
        .await
        .unwrap()
        .get_object_id("electionId")
        .unwrap();
    sb.step_down(Duration::from_millis(500));
    // The driver rediscovers the primary and retries; the write lands exactly once.
    coll.insert_one(doc! {"_id": 1}).await.unwrap();
    assert_eq!(coll.count_documents(doc! {}).await.unwrap(), 2);
    let e2 = run(&client, "admin", doc! {"hello": 1})
        .await
        .unwrap()
        .get_object_id("electionId")
        .unwrap();
    assert!(e2 > e1, "{e1} {e2}");
}

#[tokio::test]
async fn stepped_down_member_refuses_writes_with_label() {
    let sb = start();
    let client = client(&sb).await;
    run(&client, "admin", doc! {"replSetStepDown": 5})
        .await
        .ok();
    let raw = client_for(&format!(
        "mongodb://{}/?directConnection=true",
        sb.address()
    ))
    .await;
    poll(Duration::from_secs(5), || {
        let raw = raw.clone();
        async move {
            let h = run(&raw, "admin", doc! {"hello": 1}).await.ok()?;
            (h.get_bool("isWritablePrimary") == Ok(false)).then_some(())
        }
    })
    .await;
    let err = run(&raw, "t", doc! {"insert": "c", "documents": [{}], "lsid": {"id": mongodb::bson::Binary{subtype: mongodb::bson::spec::BinarySubtype::Uuid, bytes: vec![1;16]}}, "txnNumber": 1i64})
        .await
        .unwrap_err();
    assert_eq!(code(&err), 10107);
    assert!(err.contains_label("RetryableWriteError"), "{err:?}");
    let hello = run(&raw, "admin", doc! {"hello": 1}).await.unwrap();
    assert_eq!(hello.get_bool("isWritablePrimary"), Ok(false));
    assert_eq!(hello.get_bool("secondary"), Ok(true));
}

#[tokio::test]
async fn retryable_write_applied_once() {
    let sb = start();
    let client = client(&sb).await;
    let lsid = doc! {"id": mongodb::bson::Binary{subtype: mongodb::bson::spec::BinarySubtype::Uuid, bytes: vec![7;16]}};
    let cmd = doc! {"update": "c", "updates": [{"q": {"_id": 1}, "u": {"$inc": {"n": 1}}, "upsert": true}], "lsid": lsid.clone(), "txnNumber": 5i64};
    let r1 = run(&client, "t", cmd.clone()).await.unwrap();
    let r2 = run(&client, "t", cmd).await.unwrap();
    assert_eq!(as_i64(r1.get("n")), as_i64(r2.get("n")));
    let d = client
        .database("t")
        .collection::<Document>("c")
        .find_one(doc! {"_id": 1})
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.get_i32("n"), Ok(1));
    // A new txnNumber applies again.
    run(&client, "t", doc! {"update": "c", "updates": [{"q": {"_id": 1}, "u": {"$inc": {"n": 1}}}], "lsid": lsid.clone(), "txnNumber": 6i64}).await.unwrap();
    // The session now only knows its latest write: an older one is refused, not redone.
    let old = run(&client, "t", doc! {"update": "c", "updates": [{"q": {"_id": 1}, "u": {"$inc": {"n": 1}}}], "lsid": lsid, "txnNumber": 5i64}).await;
    let err = old.expect_err("an older txnNumber is refused");
    assert_eq!(code(&err), 225, "{err}");
    let d = client
        .database("t")
        .collection::<Document>("c")
        .find_one(doc! {"_id": 1})
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.get_i32("n"), Ok(2));
}

#[tokio::test]
async fn drop_connections_and_latency() {
    let sb = start();
    let client = client(&sb).await;
    let coll = client.database("t").collection::<Document>("c");
    coll.insert_one(doc! {}).await.unwrap();
    run(
        &client,
        "admin",
        doc! {"sandboxFault": 1, "dropConnections": true},
    )
    .await
    .ok();
    // The command form drops connections shortly after replying; the handle does it now.
    sb.drop_connections();
    // The driver reconnects; reads and writes keep working.
    poll(Duration::from_secs(10), || {
        let coll = coll.clone();
        async move { coll.insert_one(doc! {}).await.ok() }
    })
    .await;
    // Pooled connections that were dropped fail once (as with a real server); then ping works.
    poll(Duration::from_secs(10), || {
        let client = client.clone();
        async move { run(&client, "admin", doc! {"ping": 1}).await.ok() }
    })
    .await;
    sb.set_latency(Duration::from_millis(150));
    let elapsed = poll(Duration::from_secs(10), || {
        let client = client.clone();
        async move {
            let t = Instant::now();
            run(&client, "admin", doc! {"ping": 1})
                .await
                .ok()
                .map(|_| t.elapsed())
        }
    })
    .await;
    assert!(elapsed >= Duration::from_millis(150));
    poll(Duration::from_secs(10), || {
        let client = client.clone();
        async move {
            run(&client, "admin", doc! {"sandboxFault": 1, "latencyMs": 0})
                .await
                .ok()
        }
    })
    .await;
    let t = Instant::now();
    run(&client, "admin", doc! {"ping": 1}).await.unwrap();
    assert!(t.elapsed() < Duration::from_millis(150));
}

#[tokio::test]
async fn truncate_oplog_loses_history() {
    let sb = start();
    let client = client(&sb).await;
    let coll = client.database("t").collection::<Document>("c");
    let mut stream = coll.watch().await.unwrap();
    coll.insert_one(doc! {"_id": 1}).await.unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(ev) = stream.next_if_any().await.unwrap() {
                return ev;
            }
        }
    })
    .await
    .expect("event within deadline");
    for i in 2..10 {
        coll.insert_one(doc! {"_id": i}).await.unwrap();
    }
    run(
        &client,
        "admin",
        doc! {"sandboxFault": 1, "truncateOplogKeepLast": 2},
    )
    .await
    .unwrap();
    let n = client
        .database("local")
        .collection::<Document>("oplog.rs")
        .count_documents(doc! {})
        .await
        .unwrap();
    assert_eq!(n, 2);
    let err = coll.watch().resume_after(ev.id).await.unwrap_err();
    assert_eq!(code(&err), 286);
}

#[tokio::test]
async fn retried_write_is_not_replayed_while_stepped_down() {
    let sb = start();
    let raw = client_for(&format!(
        "mongodb://{}/?directConnection=true",
        sb.address()
    ))
    .await;
    let lsid = doc! {"id": mongodb::bson::Binary{subtype: mongodb::bson::spec::BinarySubtype::Uuid, bytes: vec![9;16]}};
    let cmd = doc! {"insert": "c", "documents": [{"_id": 1}], "lsid": lsid, "txnNumber": 3i64};
    run(&raw, "t", cmd.clone()).await.unwrap();
    sb.step_down(Duration::from_secs(30));
    // The first execution's result must not be handed out by a member that is not primary.
    let err = poll(Duration::from_secs(10), || {
        let raw = raw.clone();
        let cmd = cmd.clone();
        async move {
            run(&raw, "t", cmd)
                .await
                .err()
                .filter(|e| matches!(e.kind.as_ref(), mongodb::error::ErrorKind::Command(_)))
        }
    })
    .await;
    assert_eq!(code(&err), 10107, "{err:?}");
}

/// `configureFailPoint: "failCommand"` fails the named command as many times as asked,
/// with the code given, then lets it through; `writeConcernError` runs the command and
/// adds the error to its reply; the reply's `count` says how often it fired.
#[tokio::test]
async fn fail_command_fails_named_commands_and_counts() {
    let sb = start();
    let client = client(&sb).await;
    let fail = |mode: mongodb::bson::Bson, data: Document| {
        run(
            &client,
            "admin",
            doc! {"configureFailPoint": "failCommand", "mode": mode, "data": data},
        )
    };
    fail(
        doc! {"times": 2}.into(),
        doc! {"failCommands": ["find"], "errorCode": 96},
    )
    .await
    .unwrap();
    let find = || run(&client, "t", doc! {"find": "c", "filter": {}});
    let e = find().await.unwrap_err();
    assert_eq!(code(&e), 96, "{e}");
    assert!(find().await.is_err());
    find().await.expect("the third find passes");
    // A write concern error on a write that is applied.
    fail(
        "alwaysOn".into(),
        doc! {"failCommands": ["insert"], "writeConcernError": {"code": 64, "errmsg": "waiting for replication timed out"}},
    )
    .await
    .unwrap();
    let reply = run(
        &client,
        "t",
        doc! {"insert": "c", "documents": [{"_id": 1}]},
    )
    .await
    .expect("insert reply");
    assert_eq!(
        reply
            .get_document("writeConcernError")
            .and_then(|w| w.get_i32("code")),
        Ok(64)
    );
    let off = run(
        &client,
        "admin",
        doc! {"configureFailPoint": "failCommand", "mode": "off"},
    )
    .await
    .unwrap();
    assert_eq!(off.get_i64("count"), Ok(3));
    let n = run(&client, "t", doc! {"count": "c"}).await.unwrap();
    assert_eq!(as_i64(n.get("n")), 1, "the insert was applied");
    // Only on admin, only failCommand.
    let e = run(
        &client,
        "t",
        doc! {"configureFailPoint": "failCommand", "mode": "off"},
    )
    .await
    .unwrap_err();
    assert_eq!(code(&e), 13);
    let e = run(
        &client,
        "admin",
        doc! {"configureFailPoint": "noSuchPoint", "mode": "off"},
    )
    .await
    .unwrap_err();
    assert_eq!(code(&e), 2);
}

/// The member's answer to `cmd`: a pooled connection the stepdown closed fails with an I/O
/// error before any command reaches the member, so the command is sent again on a fresh
/// one (what a driver's retry would do); the member's own answer is returned.
async fn answer(
    client: &mongodb::Client,
    db: &str,
    cmd: mongodb::bson::Document,
) -> mongodb::error::Result<mongodb::bson::Document> {
    for _ in 0..20 {
        match run(client, db, cmd.clone()).await {
            Err(e) if matches!(*e.kind, mongodb::error::ErrorKind::Io(_)) => continue,
            other => return other,
        }
    }
    run(client, db, cmd).await
}

/// Pins: on a member that is not primary, `appendOplogNote` and the other primary-only
/// admin commands failed with 13435 NotPrimaryNoSecondaryOk (the code for reads without
/// secondaryOk); a real secondary answers them with 10107 NotWritablePrimary, and still
/// answers status, parameter and secondary-allowed reads.
#[tokio::test]
async fn stepped_down_member_answers_each_command_class_as_a_secondary() {
    let sb = start();
    let raw = client_for(&format!(
        "mongodb://{}/?directConnection=true",
        sb.address()
    ))
    .await;
    run(&raw, "t", doc! {"insert": "c", "documents": [{"_id": 1}]})
        .await
        .unwrap();
    sb.step_down(Duration::from_secs(30));
    // The stepdown closes connections; wait until a fresh one sees a secondary.
    poll(Duration::from_secs(10), || {
        let raw = raw.clone();
        async move {
            let h = run(&raw, "admin", doc! {"hello": 1}).await.ok()?;
            (h.get_bool("isWritablePrimary") == Ok(false)).then_some(())
        }
    })
    .await;
    for (db, cmd) in [
        ("admin", doc! {"appendOplogNote": 1, "data": {"tick": 1}}),
        ("admin", doc! {"setUserWriteBlockMode": 1, "global": true}),
        ("admin", doc! {"replSetStepDown": 1}),
        (
            "admin",
            doc! {"setFeatureCompatibilityVersion": "7.0", "confirm": true},
        ),
        ("t", doc! {"insert": "c", "documents": [{"_id": 2}]}),
        (
            "t",
            doc! {"update": "c", "updates": [{"q": {}, "u": {"$set": {"a": 1}}}]},
        ),
        ("t", doc! {"create": "d"}),
    ] {
        let err = answer(&raw, db, cmd.clone()).await.unwrap_err();
        assert_eq!(code(&err), 10107, "{cmd}: {err:?}");
        assert!(!err.contains_label("RetryableWriteError"), "{cmd}: {err:?}");
    }
    for (db, cmd) in [
        ("admin", doc! {"serverStatus": 1}),
        (
            "admin",
            doc! {"getParameter": 1, "featureCompatibilityVersion": 1},
        ),
        ("admin", doc! {"replSetGetStatus": 1}),
        ("admin", doc! {"sandboxFault": 1, "latencyMs": 0}),
    ] {
        answer(&raw, db, cmd.clone())
            .await
            .unwrap_or_else(|e| panic!("{cmd}: {e:?}"));
    }
    // A read that allows secondaries is served.
    let found = answer(
        &raw,
        "t",
        doc! {"find": "c", "filter": {}, "$readPreference": {"mode": "secondaryPreferred"}},
    )
    .await
    .unwrap();
    let batch = found
        .get_document("cursor")
        .unwrap()
        .get_array("firstBatch")
        .unwrap();
    assert_eq!(batch.len(), 1);
}

/// A `failCommand` write concern timeout: the write is applied, and the reply (ok: 1)
/// carries the `writeConcernError` (64 WriteConcernFailed, as a primary whose majority did
/// not acknowledge within `wtimeout` answers); it fires the given number of times, and
/// the sandbox handle counts it.
#[tokio::test]
async fn write_concern_failure_applies_the_write_and_reports_it() {
    let sb = start();
    let client = client(&sb).await;
    let entered_before = sb.fail_points_entered();
    run(
        &client,
        "admin",
        doc! {
            "configureFailPoint": "failCommand",
            "mode": {"times": 1},
            "data": {
                "failCommands": ["insert", "update", "delete"],
                "writeConcernError": {
                    "code": 64,
                    "codeName": "WriteConcernFailed",
                    "errmsg": "waiting for replication timed out",
                    "errInfo": {"wtimeout": true},
                },
            },
        },
    )
    .await
    .unwrap();
    let reply = run(
        &client,
        "t",
        doc! {"insert": "c", "documents": [{"_id": 1}], "writeConcern": {"w": "majority"}},
    )
    .await
    .unwrap();
    assert_eq!(reply.get_i32("n").unwrap(), 1, "{reply}");
    let wce = reply.get_document("writeConcernError").unwrap();
    assert_eq!(wce.get_i32("code").unwrap(), 64);
    assert_eq!(wce.get_str("codeName").unwrap(), "WriteConcernFailed");
    assert_eq!(sb.fail_points_entered(), entered_before + 1);
    let coll = client.database("t").collection::<Document>("c");
    assert_eq!(coll.count_documents(doc! {}).await.unwrap(), 1);
    coll.insert_one(doc! {"_id": 2})
        .await
        .expect("only one failure was injected");
}
