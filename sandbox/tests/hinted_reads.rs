//! Finds that name an index: the scan order a hint gives, and `min`/`max` bounds on any
//! hinted index.

mod common;

use common::*;
use mongodb::bson::{doc, Bson, Document};

async fn setup(client: &mongodb::Client) {
    let docs: Vec<Document> = (0..10)
        .map(|i| doc! {"_id": i, "j": i, "k": 9 - i})
        .collect();
    run(client, "t", doc! {"insert": "c", "documents": docs})
        .await
        .unwrap();
    run(
        client,
        "t",
        doc! {"createIndexes": "c", "indexes": [
            {"key": {"k": 1}, "name": "k_1"},
            {"key": {"j": -1}, "name": "j_-1"},
            {"key": {"j": 1, "k": 1}, "name": "j_1_k_1"},
        ]},
    )
    .await
    .unwrap();
}

async fn ids(client: &mongodb::Client, find: Document) -> mongodb::error::Result<Vec<i32>> {
    let reply = run(client, "t", find).await?;
    Ok(reply
        .get_document("cursor")
        .unwrap()
        .get_array("firstBatch")
        .unwrap()
        .iter()
        .filter_map(Bson::as_document)
        .map(|d| d.get_i32("_id").unwrap())
        .collect())
}

/// Pins: a find hinted to a secondary index returned documents in `_id` order; the
/// server scans the index, so an unsorted hinted find returns them in the index's key
/// order (pymongo's test_hint: the first document of `hint([("num", -1)])` is the
/// largest).
#[tokio::test]
async fn hinted_find_without_sort_returns_index_order() {
    let sb = start();
    let client = client(&sb).await;
    setup(&client).await;
    let by_k = ids(&client, doc! {"find": "c", "hint": {"k": 1}})
        .await
        .unwrap();
    assert_eq!(by_k, vec![9, 8, 7, 6, 5, 4, 3, 2, 1, 0]);
    let by_name = ids(&client, doc! {"find": "c", "hint": "j_-1"})
        .await
        .unwrap();
    assert_eq!(by_name, vec![9, 8, 7, 6, 5, 4, 3, 2, 1, 0]);
    // An explicit sort still wins.
    let sorted = ids(
        &client,
        doc! {"find": "c", "hint": {"k": 1}, "sort": {"_id": 1}, "limit": 3},
    )
    .await
    .unwrap();
    assert_eq!(sorted, vec![0, 1, 2]);
    // A hint naming no index fails.
    expect_code(
        ids(&client, doc! {"find": "c", "hint": {"nope": 1}}).await,
        2,
    )
    .await;
}

/// Pins: `min`/`max` worked only with an `_id` hint and failed with 51173 on any other
/// index (pymongo's test_min, test_max and test_min_query).
#[tokio::test]
async fn min_and_max_bound_any_hinted_index() {
    let sb = start();
    let client = client(&sb).await;
    setup(&client).await;
    let below = ids(
        &client,
        doc! {"find": "c", "max": {"k": 3}, "hint": {"k": 1}},
    )
    .await
    .unwrap();
    assert_eq!(below, vec![9, 8, 7]);
    let from = ids(
        &client,
        doc! {"find": "c", "min": {"j": 1, "k": 8}, "max": {"j": 3, "k": 6}, "hint": "j_1_k_1"},
    )
    .await
    .unwrap();
    assert_eq!(from, vec![1, 2]);
    // On a descending index, min is the high end of the values.
    let desc = ids(
        &client,
        doc! {"find": "c", "min": {"j": 2}, "hint": {"j": -1}},
    )
    .await
    .unwrap();
    assert_eq!(desc, vec![2, 1, 0]);
    // Bounds must name the index's fields in its order.
    expect_code(
        ids(
            &client,
            doc! {"find": "c", "max": {"k": 3, "j": 3}, "hint": "j_1_k_1"},
        )
        .await,
        51174,
    )
    .await;
    // Without a hint, the server cannot choose an index for them.
    expect_code(
        ids(&client, doc! {"find": "c", "max": {"k": 3}}).await,
        51173,
    )
    .await;
}
