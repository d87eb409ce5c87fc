//! Open query cursors die with what they read, as on a real mongod 6.0/7.0: a find or
//! aggregate cursor whose collection is dropped (alone, with its database, or replaced
//! by a new collection of the same name) or renamed fails its next getMore with 175
//! QueryPlanKilled, and is gone afterwards (43 CursorNotFound); a cursor killed by
//! killCursors or with its session (killSessions) fails with 43 CursorNotFound. Cursors
//! over other collections are not touched.
//!
//! Each test pins the sandbox bug where such a cursor kept answering getMore from the
//! documents it had taken at open, so a copy reading a renamed or dropped collection
//! never saw the fault a real server gives it.

mod common;

use common::*;
use futures_util::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};
use mongodb::Client;

/// Fills `db.coll` with `n` documents `{_id: i, x: i}`.
async fn fill(client: &Client, db: &str, coll: &str, n: i32) {
    client
        .database(db)
        .collection::<Document>(coll)
        .insert_many((0..n).map(|i| doc! {"_id": i, "x": i}))
        .await
        .unwrap();
}

/// Opens a find cursor on `db.coll` with a first batch of 10; returns its id.
async fn open_find(client: &Client, db: &str, coll: &str) -> i64 {
    let reply = run(client, db, doc! {"find": coll, "batchSize": 10})
        .await
        .unwrap();
    let cursor = reply.get_document("cursor").unwrap();
    assert_eq!(cursor.get_array("firstBatch").unwrap().len(), 10);
    let id = cursor.get_i64("id").unwrap();
    assert_ne!(id, 0, "documents remain, so the cursor stays open");
    id
}

async fn get_more(
    client: &Client,
    db: &str,
    coll: &str,
    id: i64,
) -> mongodb::error::Result<Document> {
    run(
        client,
        db,
        doc! {"getMore": id, "collection": coll, "batchSize": 10},
    )
    .await
}

/// The `codeName` of a failed command.
fn code_name(err: &mongodb::error::Error) -> String {
    match err.kind.as_ref() {
        mongodb::error::ErrorKind::Command(c) => c.code_name.clone(),
        other => panic!("not a command error: {other:?}"),
    }
}

/// The cursor was killed by a catalog change: 175 QueryPlanKilled once, then it is gone.
async fn assert_plan_killed(client: &Client, db: &str, coll: &str, id: i64) {
    let err = expect_code(get_more(client, db, coll, id).await, 175).await;
    assert_eq!(code_name(&err), "QueryPlanKilled", "{err:?}");
    expect_code(get_more(client, db, coll, id).await, 43).await;
}

#[tokio::test]
async fn drop_kills_find_cursors_of_the_collection_only() {
    let sb = start();
    let client = client(&sb).await;
    fill(&client, "t", "a", 50).await;
    fill(&client, "t", "b", 50).await;
    let on_a = open_find(&client, "t", "a").await;
    let on_b = open_find(&client, "t", "b").await;
    run(&client, "t", doc! {"drop": "a"}).await.unwrap();
    assert_plan_killed(&client, "t", "a", on_a).await;
    // The other collection's cursor reads on to its end.
    let reply = get_more(&client, "t", "b", on_b).await.unwrap();
    assert_eq!(
        reply
            .get_document("cursor")
            .unwrap()
            .get_array("nextBatch")
            .unwrap()
            .len(),
        10
    );
}

#[tokio::test]
async fn rename_kills_find_cursors_within_and_across_databases() {
    let sb = start();
    let client = client(&sb).await;
    fill(&client, "t", "a", 50).await;
    fill(&client, "t", "b", 50).await;
    let on_a = open_find(&client, "t", "a").await;
    let on_b = open_find(&client, "t", "b").await;
    run(
        &client,
        "admin",
        doc! {"renameCollection": "t.a", "to": "t.a2"},
    )
    .await
    .unwrap();
    run(
        &client,
        "admin",
        doc! {"renameCollection": "t.b", "to": "other.b"},
    )
    .await
    .unwrap();
    assert_plan_killed(&client, "t", "a", on_a).await;
    assert_plan_killed(&client, "t", "b", on_b).await;
}

/// The driver's own cursor sees the error in the middle of its iteration.
#[tokio::test]
async fn a_driver_cursor_fails_when_its_collection_is_renamed() {
    let sb = start();
    let client = client(&sb).await;
    fill(&client, "t", "a", 50).await;
    let coll = client.database("t").collection::<Document>("a");
    let mut cursor = coll.find(doc! {}).batch_size(10).await.unwrap();
    for _ in 0..10 {
        cursor
            .try_next()
            .await
            .unwrap()
            .expect("a first-batch document");
    }
    run(
        &client,
        "admin",
        doc! {"renameCollection": "t.a", "to": "t.renamed"},
    )
    .await
    .unwrap();
    let err = cursor.try_next().await.expect_err("the cursor was killed");
    assert_eq!(code(&err), 175, "{err:?}");
}

#[tokio::test]
async fn drop_database_kills_cursors_of_its_collections() {
    let sb = start();
    let client = client(&sb).await;
    fill(&client, "t", "a", 50).await;
    let on_a = open_find(&client, "t", "a").await;
    run(&client, "t", doc! {"dropDatabase": 1}).await.unwrap();
    assert_plan_killed(&client, "t", "a", on_a).await;
}

/// A collection dropped and created again under its name is another collection: the
/// cursor over the first is dead.
#[tokio::test]
async fn a_collection_recreated_under_its_name_does_not_revive_the_cursor() {
    let sb = start();
    let client = client(&sb).await;
    fill(&client, "t", "a", 50).await;
    let on_a = open_find(&client, "t", "a").await;
    run(&client, "t", doc! {"drop": "a"}).await.unwrap();
    fill(&client, "t", "a", 50).await;
    assert_plan_killed(&client, "t", "a", on_a).await;
}

#[tokio::test]
async fn drop_kills_aggregate_cursors_over_the_collection() {
    let sb = start();
    let client = client(&sb).await;
    fill(&client, "t", "a", 50).await;
    let reply = run(
        &client,
        "t",
        doc! {"aggregate": "a", "pipeline": [{"$match": {"x": {"$gte": 0}}}], "cursor": {"batchSize": 10}},
    )
    .await
    .unwrap();
    let id = reply.get_document("cursor").unwrap().get_i64("id").unwrap();
    assert_ne!(id, 0);
    run(&client, "t", doc! {"drop": "a"}).await.unwrap();
    assert_plan_killed(&client, "t", "a", id).await;
}

#[tokio::test]
async fn kill_cursors_leaves_cursor_not_found() {
    let sb = start();
    let client = client(&sb).await;
    fill(&client, "t", "a", 50).await;
    let id = open_find(&client, "t", "a").await;
    let reply = run(
        &client,
        "t",
        doc! {"killCursors": "a", "cursors": [Bson::Int64(id)]},
    )
    .await
    .unwrap();
    assert_eq!(
        reply.get_array("cursorsKilled").unwrap(),
        &vec![Bson::Int64(id)]
    );
    let err = expect_code(get_more(&client, "t", "a", id).await, 43).await;
    assert_eq!(code_name(&err), "CursorNotFound");
}

/// Opens a find cursor (first batch of 10) in `session`; returns its id.
async fn open_in(client: &Client, session: &mut mongodb::ClientSession) -> i64 {
    let reply = client
        .database("t")
        .run_command(doc! {"find": "a", "batchSize": 10})
        .session(session)
        .await
        .unwrap();
    reply.get_document("cursor").unwrap().get_i64("id").unwrap()
}

/// killSessions kills the cursors opened in the named sessions, not the others.
#[tokio::test]
async fn kill_sessions_kills_the_sessions_cursors() {
    let sb = start();
    let client = client(&sb).await;
    fill(&client, "t", "a", 50).await;
    let mut killed = client.start_session().await.unwrap();
    let mut kept = client.start_session().await.unwrap();
    let in_killed = open_in(&client, &mut killed).await;
    let in_kept = open_in(&client, &mut kept).await;
    let killed_id = killed.id().get("id").cloned().expect("lsid.id");
    run(&client, "admin", doc! {"killSessions": [{"id": killed_id}]})
        .await
        .unwrap();
    expect_code(get_more(&client, "t", "a", in_killed).await, 43).await;
    client
        .database("t")
        .run_command(doc! {"getMore": in_kept, "collection": "a"})
        .session(&mut kept)
        .await
        .expect("a cursor of another session lives on");
}
