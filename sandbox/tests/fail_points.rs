//! The named test fail points beyond `failCommand`'s error codes: a getMore failing after
//! it took its cursor (server-side change stream labels), `maxTimeAlwaysTimeOut`, and
//! `failCommand`'s `closeConnection` and `blockConnection`.

mod common;

use common::*;
use mongodb::bson::{doc, Bson, Document};
use mongodb::error::ErrorKind;

async fn open_stream(client: &mongodb::Client) -> i64 {
    let reply = run(
        client,
        "t",
        doc! {"aggregate": "c", "pipeline": [{"$changeStream": {}}], "cursor": {}},
    )
    .await
    .unwrap();
    reply.get_document("cursor").unwrap().get_i64("id").unwrap()
}

async fn fail_point(client: &mongodb::Client, cmd: Document) -> i64 {
    let reply = run(client, "admin", cmd).await.unwrap();
    as_i64(reply.get("count"))
}

/// Pins: `failGetMoreAfterCursorCheckout` was unknown ("Cannot find failpoint"), so no
/// test could check that the server itself labels a failed change-stream getMore
/// ResumableChangeStreamError (drivers at wire version 9+ resume only on that label;
/// pymongo's change stream resume tests failed at configuration).
#[tokio::test]
async fn get_more_after_checkout_fails_with_server_labels_and_kills_the_cursor() {
    let sb = start();
    let client = client(&sb).await;
    let id = open_stream(&client).await;
    let get_more = doc! {"getMore": id, "collection": "c", "maxTimeMS": 10};
    fail_point(
        &client,
        doc! {"configureFailPoint": "failGetMoreAfterCursorCheckout", "mode": {"times": 1}, "data": {"errorCode": 11602}},
    )
    .await;
    let err = run(&client, "t", get_more.clone()).await.unwrap_err();
    assert_eq!(code(&err), 11602);
    assert!(err.contains_label("ResumableChangeStreamError"), "{err:?}");
    // The cursor died with the failed getMore.
    expect_code(run(&client, "t", get_more).await, 43).await;

    // A code that is not resumable gets no label.
    let id = open_stream(&client).await;
    fail_point(
        &client,
        doc! {"configureFailPoint": "failGetMoreAfterCursorCheckout", "mode": {"times": 1}, "data": {"errorCode": 280}},
    )
    .await;
    let err = run(
        &client,
        "t",
        doc! {"getMore": id, "collection": "c", "maxTimeMS": 10},
    )
    .await
    .unwrap_err();
    assert_eq!(code(&err), 280);
    assert!(!err.contains_label("ResumableChangeStreamError"), "{err:?}");
}

/// Pins: `maxTimeAlwaysTimeOut` was unknown; with it on, a command with `maxTimeMS`
/// fails with 50 MaxTimeMSExpired and one without runs.
#[tokio::test]
async fn max_time_always_time_out_fails_commands_with_a_time_limit() {
    let sb = start();
    let client = client(&sb).await;
    let before = fail_point(
        &client,
        doc! {"configureFailPoint": "maxTimeAlwaysTimeOut", "mode": "alwaysOn"},
    )
    .await;
    expect_code(
        run(&client, "t", doc! {"find": "c", "maxTimeMS": 5000}).await,
        50,
    )
    .await;
    run(&client, "t", doc! {"find": "c"}).await.unwrap();
    let after = fail_point(
        &client,
        doc! {"configureFailPoint": "maxTimeAlwaysTimeOut", "mode": "off"},
    )
    .await;
    assert_eq!(after, before + 1, "the fail point fired once");
    run(&client, "t", doc! {"find": "c", "maxTimeMS": 5000})
        .await
        .unwrap();
}

/// Pins: `failCommand` refused `closeConnection` and `blockConnection`, so a dropped
/// connection under one chosen command (pymongo's retryable-read and change stream
/// resume tests) could not be staged.
#[tokio::test]
async fn close_connection_cuts_the_command_and_block_connection_delays_it() {
    let sb = start();
    let client = client(&sb).await;
    fail_point(
        &client,
        doc! {"configureFailPoint": "failCommand", "mode": {"times": 1}, "data": {"failCommands": ["ping"], "closeConnection": true}},
    )
    .await;
    let err = run(&client, "t", doc! {"ping": 1}).await.unwrap_err();
    assert!(
        matches!(err.kind.as_ref(), ErrorKind::Io(_)),
        "a network error, not a reply: {err:?}"
    );
    // Spent after one: the next ping (on a new connection) answers.
    run(&client, "t", doc! {"ping": 1}).await.unwrap();

    let before = fail_point(
        &client,
        doc! {"configureFailPoint": "failCommand", "mode": {"times": 1}, "data": {"failCommands": ["insert"], "blockConnection": true, "blockTimeMS": 50}},
    )
    .await;
    let reply = run(
        &client,
        "t",
        doc! {"insert": "c", "documents": [{"_id": 1}]},
    )
    .await
    .unwrap();
    assert_eq!(reply.get("n"), Some(&Bson::Int32(1)), "{reply}");
    let after = fail_point(
        &client,
        doc! {"configureFailPoint": "failCommand", "mode": "off"},
    )
    .await;
    assert_eq!(after, before + 1, "the insert was held by the fail point");
}

/// Pins: `failCommand` with a `namespace` never matched a getMore (its namespace was
/// taken as the database alone; a getMore names its collection in `collection`), so a
/// test could not hold one collection's cursor without holding every other.
#[tokio::test]
async fn fail_command_namespace_matches_a_get_more_by_its_collection() {
    let sb = start();
    let client = client(&sb).await;
    for coll in ["a", "b"] {
        let docs: Vec<Document> = (0..20).map(|i| doc! {"_id": i}).collect();
        run(&client, "t", doc! {"insert": coll, "documents": docs})
            .await
            .unwrap();
    }
    let open = |coll: &'static str| {
        let client = client.clone();
        async move {
            let reply = run(&client, "t", doc! {"find": coll, "batchSize": 5})
                .await
                .unwrap();
            reply.get_document("cursor").unwrap().get_i64("id").unwrap()
        }
    };
    let (on_a, on_b) = (open("a").await, open("b").await);
    fail_point(
        &client,
        doc! {"configureFailPoint": "failCommand", "mode": {"times": 1}, "data": {"failCommands": ["getMore"], "namespace": "t.b", "errorCode": 96}},
    )
    .await;
    run(&client, "t", doc! {"getMore": on_a, "collection": "a"})
        .await
        .expect("another collection's getMore is not taken");
    expect_code(
        run(&client, "t", doc! {"getMore": on_b, "collection": "b"}).await,
        96,
    )
    .await;
}
