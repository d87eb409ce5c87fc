//! `$out` and `$merge`: what they leave in the target collection and the change events a
//! migration sees for them (a `$out` fills `tmp.agg_out.<uuid>` and renames it over the
//! target, keeping the target's indexes).

mod common;

use common::{client, code, run, start};
use futures_util::TryStreamExt;
use mongodb::bson::{doc, Document};

#[tokio::test]
async fn out_replaces_the_target_through_a_renamed_temporary_collection() {
    let sb = start();
    let c = client(&sb).await;
    let db = c.database("app");
    db.collection::<Document>("orders")
        .insert_many((0..9).map(|i| doc! {"_id": i, "cust": i % 3, "amt": i}))
        .await
        .unwrap();
    let summary = db.collection::<Document>("summary");
    summary.insert_one(doc! {"_id": "stale"}).await.unwrap();
    summary
        .create_index(
            mongodb::IndexModel::builder()
                .keys(doc! {"total": 1})
                .build(),
        )
        .await
        .unwrap();
    let mut stream = db.watch().show_expanded_events(true).await.unwrap();
    let out: Vec<Document> = db
        .collection::<Document>("orders")
        .aggregate(vec![
            doc! {"$group": {"_id": "$cust", "total": {"$sum": "$amt"}}},
            doc! {"$out": "summary"},
        ])
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert!(out.is_empty());
    let mut ids: Vec<i32> = summary
        .find(doc! {})
        .await
        .unwrap()
        .try_collect::<Vec<_>>()
        .await
        .unwrap()
        .iter()
        .map(|d| d.get_i32("_id").unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, vec![0, 1, 2]);
    assert!(summary
        .list_index_names()
        .await
        .unwrap()
        .contains(&"total_1".to_string()));
    let mut ops = Vec::new();
    while ops.last().map(String::as_str) != Some("rename") {
        let event = stream.try_next().await.unwrap().expect("an event");
        let coll = event.ns.and_then(|ns| ns.coll).unwrap_or_default();
        assert!(coll.starts_with("tmp.agg_out."), "{coll}");
        // The driver names expanded events it has no variant for `Other("...")`.
        let op = format!("{:?}", event.operation_type).to_lowercase();
        ops.push(
            op.trim_start_matches("other(\"")
                .trim_end_matches("\")")
                .to_string(),
        );
    }
    assert_eq!(
        ops,
        [
            "create",
            "createindexes",
            "insert",
            "insert",
            "insert",
            "rename"
        ]
    );
    let names = db.list_collection_names().await.unwrap();
    assert!(!names.iter().any(|n| n.starts_with("tmp.")), "{names:?}");
}

#[tokio::test]
async fn merge_inserts_merges_replaces_or_keeps_as_asked() {
    let sb = start();
    let c = client(&sb).await;
    let db = c.database("app");
    let source = db.collection::<Document>("src");
    source
        .insert_many((0..4).map(|i| doc! {"_id": i, "v": i}))
        .await
        .unwrap();
    let target = db.collection::<Document>("dst");
    target
        .insert_many(vec![
            doc! {"_id": 0, "keep": true},
            doc! {"_id": 1, "keep": true},
        ])
        .await
        .unwrap();
    let merge = |spec: Document| {
        let source = source.clone();
        async move {
            source
                .aggregate(vec![doc! {"$merge": spec}])
                .await
                .map(|_| ())
        }
    };
    merge(doc! {"into": "dst", "whenMatched": "merge"})
        .await
        .unwrap();
    assert_eq!(
        target.find_one(doc! {"_id": 0}).await.unwrap().unwrap(),
        doc! {"_id": 0, "keep": true, "v": 0}
    );
    assert_eq!(target.count_documents(doc! {}).await.unwrap(), 4);
    merge(doc! {"into": "dst", "whenMatched": "replace"})
        .await
        .unwrap();
    assert_eq!(
        target.find_one(doc! {"_id": 1}).await.unwrap().unwrap(),
        doc! {"_id": 1, "v": 1}
    );
    let err = merge(doc! {"into": "dst", "whenMatched": "fail"})
        .await
        .unwrap_err();
    assert_eq!(code(&err), 11000);
    let err = merge(doc! {"into": "dst", "on": "v"}).await.unwrap_err();
    assert_eq!(code(&err), 51183, "no unique index on v");
    let err = run(
        &c,
        "app",
        doc! {"aggregate": "src", "pipeline": [{"$out": "x"}, {"$match": {}}], "cursor": {}},
    )
    .await
    .unwrap_err();
    assert_eq!(code(&err), 40601);
}
