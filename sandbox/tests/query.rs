//! Reads: filter operators, sort across BSON types, skip/limit/projection/batchSize/hint,
//! getMore/killCursors, count, distinct, aggregation stages, min/max index bounds.

mod common;

use common::*;
use futures_util::TryStreamExt;
use mongodb::bson::{doc, oid::ObjectId, Bson, Document, Regex};
use mongodb::Collection;

async fn ids(coll: &Collection<Document>, filter: Document) -> Vec<i32> {
    let docs: Vec<Document> = coll
        .find(filter.clone())
        .sort(doc! {"_id": 1})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    docs.iter().map(|d| d.get_i32("_id").unwrap()).collect()
}

#[tokio::test]
async fn filter_operators() {
    let sb = start();
    let client = client(&sb).await;
    let coll = client.database("t").collection::<Document>("c");
    coll.insert_many(vec![
        doc! {"_id": 1, "n": 1, "s": "apple", "a": [1, 2, 3], "o": {"x": 1}, "t": [{"k": 1, "v": "a"}]},
        doc! {"_id": 2, "n": 2.5, "s": "Banana", "a": [2, 5], "o": {"x": 2}, "t": [{"k": 2, "v": "b"}]},
        doc! {"_id": 3, "n": 10i64, "s": "cherry", "a": [], "nul": Bson::Null},
        doc! {"_id": 4, "s": 5, "a": [[1, 2]], "o": {"x": {"y": 1}}},
    ])
    .await
    .unwrap();
    assert_eq!(ids(&coll, doc! {"n": {"$eq": 1}}).await, [1]);
    assert_eq!(ids(&coll, doc! {"n": {"$gt": 1}}).await, [2, 3]);
    assert_eq!(ids(&coll, doc! {"n": {"$gte": 2.5, "$lt": 10}}).await, [2]);
    assert_eq!(ids(&coll, doc! {"n": {"$lte": 2.5}}).await, [1, 2]);
    assert_eq!(ids(&coll, doc! {"n": {"$ne": 1}}).await, [2, 3, 4]);
    assert_eq!(ids(&coll, doc! {"n": {"$in": [1, 10]}}).await, [1, 3]);
    assert_eq!(ids(&coll, doc! {"n": {"$nin": [1, 10]}}).await, [2, 4]);
    assert_eq!(ids(&coll, doc! {"n": {"$exists": false}}).await, [4]);
    assert_eq!(ids(&coll, doc! {"nul": {"$exists": true}}).await, [3]);
    // null matches missing and null.
    assert_eq!(ids(&coll, doc! {"nul": Bson::Null}).await, [1, 2, 3, 4]);
    assert_eq!(ids(&coll, doc! {"n": Bson::Null}).await, [4]);
    assert_eq!(ids(&coll, doc! {"s": {"$type": "string"}}).await, [1, 2, 3]);
    assert_eq!(ids(&coll, doc! {"n": {"$type": "number"}}).await, [1, 2, 3]);
    assert_eq!(ids(&coll, doc! {"n": {"$type": 18}}).await, [3]);
    assert_eq!(
        ids(&coll, doc! {"s": {"$regex": "^b", "$options": "i"}}).await,
        [2]
    );
    assert_eq!(
        ids(
            &coll,
            doc! {"s": Regex { pattern: "rr".into(), options: String::new() }}
        )
        .await,
        [3]
    );
    assert_eq!(ids(&coll, doc! {"n": {"$mod": [5, 0]}}).await, [3]);
    assert_eq!(ids(&coll, doc! {"n": {"$not": {"$gt": 2}}}).await, [1, 4]);
    assert_eq!(ids(&coll, doc! {"$or": [{"n": 1}, {"s": 5}]}).await, [1, 4]);
    assert_eq!(
        ids(&coll, doc! {"$and": [{"n": {"$gt": 0}}, {"n": {"$lt": 5}}]}).await,
        [1, 2]
    );
    assert_eq!(
        ids(&coll, doc! {"$nor": [{"n": 1}, {"s": 5}]}).await,
        [2, 3]
    );
    // Arrays: element match, whole-array match, $all, $size, $elemMatch.
    assert_eq!(ids(&coll, doc! {"a": 2}).await, [1, 2]);
    assert_eq!(ids(&coll, doc! {"a": [2, 5]}).await, [2]);
    assert_eq!(ids(&coll, doc! {"a": [1, 2]}).await, [4]);
    assert_eq!(ids(&coll, doc! {"a": {"$all": [1, 3]}}).await, [1]);
    assert_eq!(ids(&coll, doc! {"a": {"$size": 0}}).await, [3]);
    assert_eq!(
        ids(&coll, doc! {"a": {"$elemMatch": {"$gt": 2, "$lt": 5}}}).await,
        [1]
    );
    assert_eq!(
        ids(&coll, doc! {"t": {"$elemMatch": {"k": 2, "v": "b"}}}).await,
        [2]
    );
    assert_eq!(ids(&coll, doc! {"t.k": 1}).await, [1]);
    // Dotted paths into documents; exact subdocument equality.
    assert_eq!(ids(&coll, doc! {"o.x": 2}).await, [2]);
    assert_eq!(ids(&coll, doc! {"o.x.y": 1}).await, [4]);
    assert_eq!(ids(&coll, doc! {"o": {"x": 1}}).await, [1]);
    // $expr.
    assert_eq!(ids(&coll, doc! {"$expr": {"$gt": ["$n", 2]}}).await, [2, 3]);
    // Numbers compare across types.
    assert_eq!(ids(&coll, doc! {"n": 10.0}).await, [3]);
    // Unknown operator: 2 BadValue.
    expect_code(coll.find_one(doc! {"n": {"$bogus": 1}}).await, 2).await;
}

#[tokio::test]
async fn sort_across_bson_types() {
    let sb = start();
    let client = client(&sb).await;
    let coll = client.database("t").collection::<Document>("c");
    let oid = ObjectId::new();
    coll.insert_many(vec![
        doc! {"_id": 1, "v": "str"},
        doc! {"_id": 2, "v": 3},
        doc! {"_id": 3, "v": Bson::Null},
        doc! {"_id": 4, "v": {"a": 1}},
        doc! {"_id": 5, "v": 2.5},
        doc! {"_id": 6, "v": oid},
        doc! {"_id": 7, "v": true},
        doc! {"_id": 8, "v": mongodb::bson::DateTime::from_millis(0)},
        doc! {"_id": 9},
        doc! {"_id": 10, "v": [0, 9]},
        doc! {"_id": 11, "v": Bson::MinKey},
        doc! {"_id": 12, "v": Bson::MaxKey},
    ])
    .await
    .unwrap();
    let order: Vec<i32> = coll
        .find(doc! {})
        .sort(doc! {"v": 1, "_id": 1})
        .await
        .unwrap()
        .try_collect::<Vec<_>>()
        .await
        .unwrap()
        .iter()
        .map(|d| d.get_i32("_id").unwrap())
        .collect();
    // MinKey < null/missing < numbers (arrays by min element 0) < string < object < oid < bool < date < MaxKey
    assert_eq!(order, vec![11, 3, 9, 10, 5, 2, 1, 4, 6, 7, 8, 12]);
    let desc: Vec<i32> = coll
        .find(doc! {"v": {"$type": "number"}})
        .sort(doc! {"v": -1})
        .await
        .unwrap()
        .try_collect::<Vec<_>>()
        .await
        .unwrap()
        .iter()
        .map(|d| d.get_i32("_id").unwrap())
        .collect();
    // $type matches arrays holding a number; a descending sort uses an array's largest element.
    assert_eq!(desc, vec![10, 2, 5]);
}

#[tokio::test]
async fn skip_limit_projection_batch_size_get_more() {
    let sb = start();
    let client = client(&sb).await;
    let coll = client.database("t").collection::<Document>("c");
    coll.insert_many(
        (0..250).map(|i| doc! {"_id": i, "a": i, "b": {"c": i, "d": 1}, "arr": [1, 2, 3]}),
    )
    .await
    .unwrap();
    let docs: Vec<Document> = coll
        .find(doc! {})
        .sort(doc! {"_id": -1})
        .skip(10)
        .limit(5)
        .projection(doc! {"b.c": 1, "_id": 0})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(docs.len(), 5);
    assert_eq!(docs[0], doc! {"b": {"c": 239}});
    let excl = coll
        .find_one(doc! {"_id": 0})
        .projection(doc! {"b": 0, "arr": 0})
        .await
        .unwrap()
        .unwrap();
    assert_eq!(excl, doc! {"_id": 0, "a": 0});
    let sliced = coll
        .find_one(doc! {"_id": 0})
        .projection(doc! {"arr": {"$slice": 2}, "a": 1})
        .await
        .unwrap()
        .unwrap();
    assert_eq!(sliced, doc! {"_id": 0, "a": 0, "arr": [1, 2]});
    // Mixing inclusion and exclusion: 31254.
    expect_code(
        coll.find_one(doc! {})
            .projection(doc! {"a": 1, "b": 0})
            .await,
        31254,
    )
    .await;
    // All 250 through several getMores with batchSize.
    let all: Vec<Document> = coll
        .find(doc! {})
        .batch_size(7)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(all.len(), 250);
    // Raw: first batch of 101 by default, cursor id Int64, ns with a dot.
    let reply = run(&client, "t", doc! {"find": "c"}).await.unwrap();
    let cursor = reply.get_document("cursor").unwrap();
    assert_eq!(cursor.get_array("firstBatch").unwrap().len(), 101);
    assert_eq!(cursor.get_str("ns"), Ok("t.c"));
    let id = cursor.get_i64("id").unwrap();
    assert_ne!(id, 0);
    let more = run(
        &client,
        "t",
        doc! {"getMore": id, "collection": "c", "batchSize": 200},
    )
    .await
    .unwrap();
    let cursor = more.get_document("cursor").unwrap();
    assert_eq!(cursor.get_array("nextBatch").unwrap().len(), 149);
    assert_eq!(cursor.get_i64("id"), Ok(0));
    // Exhausted cursor is gone: 43.
    expect_code(
        run(&client, "t", doc! {"getMore": id, "collection": "c"}).await,
        43,
    )
    .await;
    // killCursors.
    let reply = run(&client, "t", doc! {"find": "c", "batchSize": 1})
        .await
        .unwrap();
    let id = reply.get_document("cursor").unwrap().get_i64("id").unwrap();
    let killed = run(
        &client,
        "t",
        doc! {"killCursors": "c", "cursors": [id, 12345i64]},
    )
    .await
    .unwrap();
    assert_eq!(
        killed.get_array("cursorsKilled").unwrap(),
        &vec![Bson::Int64(id)]
    );
    assert_eq!(
        killed.get_array("cursorsNotFound").unwrap(),
        &vec![Bson::Int64(12345)]
    );
    expect_code(
        run(&client, "t", doc! {"getMore": id, "collection": "c"}).await,
        43,
    )
    .await;
    // Empty result still has an Int64 id.
    let reply = run(&client, "t", doc! {"find": "nothing"}).await.unwrap();
    assert_eq!(reply.get_document("cursor").unwrap().get_i64("id"), Ok(0));
    // Single batch.
    let reply = run(
        &client,
        "t",
        doc! {"find": "c", "limit": 3, "singleBatch": true},
    )
    .await
    .unwrap();
    assert_eq!(reply.get_document("cursor").unwrap().get_i64("id"), Ok(0));
}

#[tokio::test]
async fn count_and_distinct() {
    let sb = start();
    let client = client(&sb).await;
    let coll = client.database("t").collection::<Document>("c");
    coll.insert_many(vec![
        doc! {"_id": 1, "k": "a", "tags": ["x", "y"]},
        doc! {"_id": 2, "k": "b", "tags": ["y"]},
        doc! {"_id": 3, "k": "a"},
    ])
    .await
    .unwrap();
    assert_eq!(coll.count_documents(doc! {"k": "a"}).await.unwrap(), 2);
    assert_eq!(coll.estimated_document_count().await.unwrap(), 3);
    let raw = run(
        &client,
        "t",
        doc! {"count": "c", "query": {}, "skip": 1, "limit": 1},
    )
    .await
    .unwrap();
    assert_eq!(as_i64(raw.get("n")), 1);
    let mut k = coll.distinct("k", doc! {}).await.unwrap();
    k.sort_by_key(|b| b.to_string());
    assert_eq!(k, vec![Bson::String("a".into()), Bson::String("b".into())]);
    let mut tags = coll
        .distinct("tags", doc! {"k": {"$ne": "z"}})
        .await
        .unwrap();
    tags.sort_by_key(|b| b.to_string());
    assert_eq!(
        tags,
        vec![Bson::String("x".into()), Bson::String("y".into())]
    );
    // Counting a missing collection is 0, not an error.
    let raw = run(&client, "t", doc! {"count": "missing"}).await.unwrap();
    assert_eq!(as_i64(raw.get("n")), 0);
}

#[tokio::test]
async fn aggregation_stages() {
    let sb = start();
    let client = client(&sb).await;
    let coll = client.database("t").collection::<Document>("c");
    coll.insert_many(vec![
        doc! {"_id": 1, "g": "a", "n": 1, "tags": ["x", "y"]},
        doc! {"_id": 2, "g": "a", "n": 2, "tags": ["y"]},
        doc! {"_id": 3, "g": "b", "n": 5, "tags": []},
    ])
    .await
    .unwrap();
    let run_agg = |p: Vec<Document>| {
        let coll = coll.clone();
        async move {
            coll.aggregate(p)
                .await
                .unwrap()
                .try_collect::<Vec<Document>>()
                .await
                .unwrap()
        }
    };
    let grouped = run_agg(vec![
        doc! {"$match": {"n": {"$gte": 1}}},
        doc! {"$group": {"_id": "$g", "total": {"$sum": "$n"}, "avg": {"$avg": "$n"}, "cnt": {"$sum": 1}, "mx": {"$max": "$n"}, "all": {"$push": "$_id"}}},
        doc! {"$sort": {"_id": 1}},
    ])
    .await;
    assert_eq!(grouped.len(), 2);
    assert_eq!(grouped[0].get_str("_id"), Ok("a"));
    assert_eq!(as_i64(grouped[0].get("total")), 3);
    assert_eq!(grouped[0].get_f64("avg"), Ok(1.5));
    assert_eq!(as_i64(grouped[0].get("cnt")), 2);
    assert_eq!(as_i64(grouped[1].get("mx")), 5);
    // $first/$last follow the input order, $min the BSON order.
    let ordered = run_agg(vec![
        doc! {"$sort": {"_id": 1}},
        doc! {"$group": {"_id": "$g", "first": {"$first": "$_id"}, "last": {"$last": "$_id"}, "mn": {"$min": "$n"}}},
        doc! {"$sort": {"_id": 1}},
    ])
    .await;
    assert_eq!(as_i64(ordered[0].get("first")), 1);
    assert_eq!(as_i64(ordered[0].get("last")), 2);
    assert_eq!(as_i64(ordered[0].get("mn")), 1);
    let unwound = run_agg(vec![doc! {"$unwind": "$tags"}, doc! {"$count": "n"}]).await;
    assert_eq!(unwound, vec![doc! {"n": 3}]);
    let projected = run_agg(vec![
        doc! {"$sort": {"n": -1}},
        doc! {"$skip": 1},
        doc! {"$limit": 1},
        doc! {"$project": {"_id": 0, "double": {"$multiply": ["$n", 2]}}},
    ])
    .await;
    assert_eq!(projected.len(), 1);
    assert_eq!(as_i64(projected[0].get("double")), 4);
    let added = run_agg(vec![
        doc! {"$match": {"_id": 1}},
        doc! {"$addFields": {"x": "$g"}},
        doc! {"$unset": "tags"},
        doc! {"$replaceRoot": {"newRoot": {"y": "$x"}}},
    ])
    .await;
    assert_eq!(added, vec![doc! {"y": "a"}]);
    let sampled = run_agg(vec![doc! {"$sample": {"size": 2}}]).await;
    assert_eq!(sampled.len(), 2);
    // Empty group id = whole collection.
    let total = run_agg(vec![
        doc! {"$group": {"_id": Bson::Null, "s": {"$sum": "$n"}}},
    ])
    .await;
    assert_eq!(as_i64(total[0].get("s")), 8);
    // Unknown stage: 40324.
    expect_code(coll.aggregate(vec![doc! {"$bogus": {}}]).await, 40324).await;
    // Raw reply shape: cursor with firstBatch even for aggregate.
    let raw = run(
        &client,
        "t",
        doc! {"aggregate": "c", "pipeline": [], "cursor": {"batchSize": 1}},
    )
    .await
    .unwrap();
    let cursor = raw.get_document("cursor").unwrap();
    assert_eq!(cursor.get_array("firstBatch").unwrap().len(), 1);
    assert_ne!(cursor.get_i64("id").unwrap(), 0);
    // aggregate without cursor option: 9 FailedToParse.
    expect_code(
        run(&client, "t", doc! {"aggregate": "c", "pipeline": []}).await,
        9,
    )
    .await;
}

#[tokio::test]
async fn find_min_max_with_id_hint_gives_index_bounds() {
    let sb = start();
    let client = client(&sb).await;
    let coll = client.database("t").collection::<Document>("c");
    coll.insert_many((0..20).map(|i| doc! {"_id": i}))
        .await
        .unwrap();
    coll.insert_one(doc! {"_id": "s"}).await.unwrap();
    let got: Vec<Document> = coll
        .find(doc! {})
        .min(doc! {"_id": 5})
        .max(doc! {"_id": 9})
        .hint(mongodb::options::Hint::Keys(doc! {"_id": 1}))
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let ids: Vec<i32> = got.iter().map(|d| d.get_i32("_id").unwrap()).collect();
    // min inclusive, max exclusive, in index order.
    assert_eq!(ids, vec![5, 6, 7, 8]);
    // Bounds span types in index order: numbers < strings.
    let got: Vec<Document> = coll
        .find(doc! {})
        .min(doc! {"_id": 18})
        .max(doc! {"_id": Bson::MaxKey})
        .hint(mongodb::options::Hint::Keys(doc! {"_id": 1}))
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(got.len(), 3);
    assert_eq!(got[2].get_str("_id"), Ok("s"));
    // min/max without hint: 51173.
    expect_code(
        run(&client, "t", doc! {"find": "c", "min": {"_id": 1}}).await,
        51173,
    )
    .await;
    // Hint to a missing index: 2 BadValue.
    expect_code(
        run(&client, "t", doc! {"find": "c", "hint": {"nope": 1}}).await,
        2,
    )
    .await;
    // Filter combines with bounds.
    let got: Vec<Document> = coll
        .find(doc! {"_id": {"$gt": 6}})
        .min(doc! {"_id": 5})
        .max(doc! {"_id": 9})
        .hint(mongodb::options::Hint::Name("_id_".into()))
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(got.len(), 2);
}
