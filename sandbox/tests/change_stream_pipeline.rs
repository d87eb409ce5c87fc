//! What a change stream's aggregate accepts and what its pipeline may do to events: read
//! concern, unknown stages, the resume token, and stages that filter events out.

mod common;

use common::*;
use mongodb::bson::{doc, Bson, Document};

async fn open(
    client: &mongodb::Client,
    pipeline: Vec<Document>,
    extra: Document,
) -> mongodb::error::Result<i64> {
    let mut stages = vec![doc! {"$changeStream": {}}];
    stages.extend(pipeline);
    let mut cmd = doc! {"aggregate": "c", "pipeline": stages, "cursor": {}};
    cmd.extend(extra);
    let reply = run(client, "t", cmd).await?;
    Ok(reply.get_document("cursor").unwrap().get_i64("id").unwrap())
}

async fn next_batch(client: &mongodb::Client, id: i64) -> mongodb::error::Result<Vec<Bson>> {
    let reply = run(
        client,
        "t",
        doc! {"getMore": id, "collection": "c", "maxTimeMS": 200},
    )
    .await?;
    Ok(reply
        .get_document("cursor")
        .unwrap()
        .get_array("nextBatch")
        .unwrap()
        .clone())
}

/// Pins: a change stream opened with `readConcern: {level: "local"}` was accepted; the
/// server refuses any level but majority (72), so code that passes its default read
/// concern to `watch` only fails against a real server.
#[tokio::test]
async fn read_concern_other_than_majority_is_refused() {
    let sb = start();
    let client = client(&sb).await;
    for level in ["local", "available"] {
        let err = open(&client, vec![], doc! {"readConcern": {"level": level}})
            .await
            .unwrap_err();
        assert_eq!(code(&err), 72, "{level}: {err:?}");
    }
    open(&client, vec![], doc! {"readConcern": {"level": "majority"}})
        .await
        .unwrap();
    open(&client, vec![], doc! {}).await.unwrap();
}

/// Pins: an unknown stage after `$changeStream` was accepted at open and only failed
/// once an event arrived; the server refuses it when the stream is opened (40324).
#[tokio::test]
async fn unknown_stage_fails_at_open() {
    let sb = start();
    let client = client(&sb).await;
    let err = open(&client, vec![doc! {"$unsupported": "foo"}], doc! {})
        .await
        .unwrap_err();
    assert_eq!(code(&err), 40324);
}

/// Pins: a pipeline that projected out `_id` (the resume token) delivered events that no
/// driver can resume from; the server fails the stream with 280 ChangeStreamFatalError,
/// labelled NonResumableChangeStreamError.
#[tokio::test]
async fn projecting_out_the_resume_token_is_fatal() {
    let sb = start();
    let client = client(&sb).await;
    let id = open(&client, vec![doc! {"$project": {"_id": 0}}], doc! {})
        .await
        .unwrap();
    run(
        &client,
        "t",
        doc! {"insert": "c", "documents": [{"_id": 1}]},
    )
    .await
    .unwrap();
    let err = poll(std::time::Duration::from_secs(10), || async {
        match next_batch(&client, id).await {
            Ok(batch) if batch.is_empty() => None,
            Ok(batch) => panic!("events delivered without their token: {batch:?}"),
            Err(e) => Some(e),
        }
    })
    .await;
    assert_eq!(code(&err), 280);
    assert!(!err.contains_label("ResumableChangeStreamError"), "{err:?}");
    assert!(
        err.contains_label("NonResumableChangeStreamError"),
        "{err:?}"
    );
}

/// Pins: an event that a stage after the first (`$addFields` then `$match`) filtered
/// out was delivered as an empty document.
#[tokio::test]
async fn later_match_filters_events_out() {
    let sb = start();
    let client = client(&sb).await;
    let id = open(
        &client,
        vec![
            doc! {"$addFields": {"seen": true}},
            doc! {"$match": {"operationType": "delete"}},
        ],
        doc! {},
    )
    .await
    .unwrap();
    run(
        &client,
        "t",
        doc! {"insert": "c", "documents": [{"_id": 1}]},
    )
    .await
    .unwrap();
    run(
        &client,
        "t",
        doc! {"delete": "c", "deletes": [{"q": {"_id": 1}, "limit": 1}]},
    )
    .await
    .unwrap();
    let events = poll(std::time::Duration::from_secs(10), || async {
        let batch = next_batch(&client, id).await.unwrap();
        (!batch.is_empty()).then_some(batch)
    })
    .await;
    assert_eq!(events.len(), 1, "{events:?}");
    let event = events[0].as_document().unwrap();
    assert_eq!(event.get_str("operationType"), Ok("delete"));
    assert_eq!(event.get_bool("seen"), Ok(true));
}
