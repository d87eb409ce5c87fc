//! A collection sharded on another key than `_id` keeps `_id` unique per shard only:
//! two shards may each hold a different document with one `_id`, and reads through the
//! router return both, as a real router does (each shard's documents are merged, not
//! keyed by `_id`).

mod common;

use common::split_at_100;
use ferry_sandbox::{ShardedCluster, ShardedOptions};
use futures_util::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};
use mongodb::Client;

async fn ks(router: &Client, options: Option<mongodb::options::FindOptions>) -> Vec<i32> {
    let coll = router.database("app").collection::<Document>("items");
    let mut find = coll.find(doc! {});
    if let Some(options) = options {
        find = find.with_options(options);
    }
    let docs: Vec<Document> = find.await.unwrap().try_collect().await.unwrap();
    let mut ks: Vec<i32> = docs.iter().map(|d| d.get_i32("k").unwrap()).collect();
    ks.sort();
    ks
}

/// Pins: the router's merged view kept one document per `_id`, so a find through it
/// returned one of two documents sharing an `_id` on different shards (and a copy
/// through the router silently lost the other).
#[tokio::test]
async fn documents_sharing_an_id_on_two_shards_are_both_read_through_the_router() {
    let cluster = ShardedCluster::start(ShardedOptions {
        shards: 2,
        ..Default::default()
    })
    .expect("cluster starts");
    let router = common::client_for(&cluster.router_uri()).await;
    split_at_100(&cluster, &router).await;
    let items = router.database("app").collection::<Document>("items");
    items.insert_one(doc! {"_id": 1, "k": 5}).await.unwrap();
    items.insert_one(doc! {"_id": 1, "k": 150}).await.unwrap();

    assert_eq!(ks(&router, None).await, vec![5, 150]);
    let upper = mongodb::options::FindOptions::builder()
        .min(doc! {"k": 100})
        .max(doc! {"k": Bson::MaxKey})
        .hint(mongodb::options::Hint::Keys(doc! {"k": 1}))
        .build();
    assert_eq!(ks(&router, Some(upper)).await, vec![150]);
    let lower = mongodb::options::FindOptions::builder()
        .min(doc! {"k": Bson::MinKey})
        .max(doc! {"k": 100})
        .hint(mongodb::options::Hint::Keys(doc! {"k": 1}))
        .build();
    assert_eq!(ks(&router, Some(lower)).await, vec![5]);

    let groups: Vec<Document> = items
        .aggregate(vec![
            doc! {"$match": {"_id": {"$in": [1]}}},
            doc! {"$group": {"_id": "$_id", "n": {"$sum": 1}}},
        ])
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(groups.len(), 1);
    assert_eq!(common::as_i64(groups[0].get("n")), 2);
}
