//! Expression errors inside aggregation stages fail the command, as on the server.

mod common;

use common::*;
use mongodb::bson::doc;

/// Pins: a `$project` whose computed field failed on a document (`$multiply` of a
/// string) silently left the field out and returned ok; the server fails the aggregate
/// with TypeMismatch (pymongo's RawBatchCommandCursor test_server_error).
#[tokio::test]
async fn failing_expression_in_project_fails_the_aggregate() {
    let sb = start();
    let client = client(&sb).await;
    run(
        &client,
        "t",
        doc! {"insert": "c", "documents": [{"_id": 1, "x": 2.0}, {"_id": 2, "x": "not a number"}]},
    )
    .await
    .unwrap();
    let err = run(
        &client,
        "t",
        doc! {"aggregate": "c", "pipeline": [{"$project": {"x": {"$multiply": [2, "$x"]}}}], "cursor": {}},
    )
    .await
    .unwrap_err();
    assert_eq!(code(&err), 14, "{err:?}");
    // Numbers alone still compute.
    let reply = run(
        &client,
        "t",
        doc! {"aggregate": "c", "pipeline": [{"$match": {"_id": 1}}, {"$project": {"x": {"$multiply": [2, "$x"]}}}], "cursor": {}},
    )
    .await
    .unwrap();
    let first = reply
        .get_document("cursor")
        .unwrap()
        .get_array("firstBatch")
        .unwrap()[0]
        .as_document()
        .unwrap()
        .clone();
    assert_eq!(first, doc! {"_id": 1, "x": 4.0});
}
