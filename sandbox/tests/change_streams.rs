//! Oplog reads and change streams: scopes, fullDocument modes, pre-images, resume options,
//! expanded events, invalidate, postBatchResumeToken, update descriptions, history loss.

mod common;

use std::time::Duration;

use common::*;
use futures_util::TryStreamExt;
use mongodb::bson::{doc, Bson, Document, Timestamp};
use mongodb::change_stream::ChangeStream;
use mongodb::options::{FullDocumentBeforeChangeType, FullDocumentType};
use mongodb::Client;

/// Next event within a deadline (the stream itself awaits; the timeout only bounds it).
async fn next(
    stream: &mut ChangeStream<mongodb::change_stream::event::ChangeStreamEvent<Document>>,
) -> Document {
    let ev = tokio::time::timeout(Duration::from_secs(10), stream.next_if_any())
        .await
        .expect("event within deadline");
    let ev = match ev.unwrap() {
        Some(e) => e,
        None => tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Some(e) = stream.next_if_any().await.unwrap() {
                    return e;
                }
            }
        })
        .await
        .expect("event within deadline"),
    };
    mongodb::bson::to_document(&ev).unwrap()
}

/// Opens a raw change stream with `aggregate` and returns (cursor id, firstBatch, reply).
async fn raw_stream(
    client: &Client,
    db: &str,
    coll: Bson,
    spec: Document,
) -> (i64, Vec<Document>, Document) {
    let reply = run(
        client,
        db,
        doc! {"aggregate": coll, "pipeline": [{"$changeStream": spec}], "cursor": {}},
    )
    .await
    .unwrap();
    let cursor = reply.get_document("cursor").unwrap().clone();
    let batch = cursor
        .get_array("firstBatch")
        .unwrap()
        .iter()
        .map(|b| b.as_document().unwrap().clone())
        .collect();
    (cursor.get_i64("id").unwrap(), batch, cursor)
}

async fn raw_get_more(client: &Client, db: &str, coll: &str, id: i64) -> (Vec<Document>, Document) {
    let reply = run(
        client,
        db,
        doc! {"getMore": id, "collection": coll, "maxTimeMS": 200},
    )
    .await
    .unwrap();
    let cursor = reply.get_document("cursor").unwrap().clone();
    let batch = cursor
        .get_array("nextBatch")
        .unwrap()
        .iter()
        .map(|b| b.as_document().unwrap().clone())
        .collect();
    (batch, cursor)
}

/// Reads events via getMore until `n` are gathered (deadline-bounded).
async fn raw_events(client: &Client, db: &str, coll: &str, id: i64, n: usize) -> Vec<Document> {
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while out.len() < n {
        assert!(
            std::time::Instant::now() < deadline,
            "only {} events: {out:?}",
            out.len()
        );
        let (batch, _) = raw_get_more(client, db, coll, id).await;
        out.extend(batch);
    }
    out
}

fn token(ev: &Document) -> String {
    ev.get_document("_id")
        .unwrap()
        .get_str("_data")
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn oplog_rs_is_readable() {
    let sb = start();
    let client = client(&sb).await;
    let coll = client.database("t").collection::<Document>("c");
    coll.insert_one(doc! {"_id": 1}).await.unwrap();
    coll.update_one(doc! {"_id": 1}, doc! {"$set": {"a": 1}})
        .await
        .unwrap();
    coll.delete_one(doc! {"_id": 1}).await.unwrap();
    let oplog = client.database("local").collection::<Document>("oplog.rs");
    let entries: Vec<Document> = oplog
        .find(doc! {"ns": "t.c"})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let ops: Vec<&str> = entries.iter().map(|e| e.get_str("op").unwrap()).collect();
    assert_eq!(ops, vec!["i", "u", "d"]);
    for e in &entries {
        assert!(e.get_timestamp("ts").is_ok());
        assert!(e.get_datetime("wall").is_ok());
        assert!(e.get("ui").is_some());
        assert!(e.get_document("o").is_ok());
    }
    assert_eq!(entries[1].get_document("o2").unwrap(), &doc! {"_id": 1});
    // Newest entry by natural order descending, as tailers do.
    let last = oplog
        .find_one(doc! {})
        .sort(doc! {"$natural": -1})
        .await
        .unwrap()
        .unwrap();
    assert_eq!(last.get_str("op"), Ok("d"));
    // ts filters work.
    let ts = entries[1].get_timestamp("ts").unwrap();
    let after = oplog
        .count_documents(doc! {"ts": {"$gt": ts}, "ns": "t.c"})
        .await
        .unwrap();
    assert_eq!(after, 1);
}

#[tokio::test]
async fn collection_stream_with_update_description() {
    let sb = start();
    let client = client(&sb).await;
    let coll = client.database("t").collection::<Document>("c");
    coll.insert_one(doc! {"_id": 0}).await.unwrap();
    let mut stream = coll.watch().await.unwrap();
    coll.insert_one(doc! {"_id": 1, "a": {"b": 1}, "arr": [1, 2, 3], "gone": 1})
        .await
        .unwrap();
    coll.update_one(
        doc! {"_id": 1},
        doc! {"$set": {"a.b": 2}, "$unset": {"gone": ""}, "$pop": {"arr": 1}},
    )
    .await
    .unwrap();
    coll.update_one(
        doc! {"_id": 1},
        doc! {"$set": {"a.c": 3}, "$unset": {"x": ""}},
    )
    .await
    .unwrap();
    coll.replace_one(doc! {"_id": 1}, doc! {"r": 1})
        .await
        .unwrap();
    coll.delete_one(doc! {"_id": 1}).await.unwrap();
    client
        .database("t")
        .collection::<Document>("other")
        .insert_one(doc! {})
        .await
        .unwrap();
    coll.insert_one(doc! {"_id": 2}).await.unwrap();

    let ins = next(&mut stream).await;
    assert_eq!(ins.get_str("operationType"), Ok("insert"));
    assert_eq!(
        ins.get_document("ns").unwrap(),
        &doc! {"db": "t", "coll": "c"}
    );
    assert_eq!(ins.get_document("documentKey").unwrap(), &doc! {"_id": 1});
    assert_eq!(
        ins.get_document("fullDocument").unwrap().get_i32("_id"),
        Ok(1)
    );
    let upd = next(&mut stream).await;
    assert_eq!(upd.get_str("operationType"), Ok("update"));
    let desc = upd.get_document("updateDescription").unwrap();
    // `$pop` is logged as the whole array; truncatedArrays only come from pipelines.
    assert_eq!(
        desc.get_document("updatedFields").unwrap(),
        &doc! {"a.b": 2, "arr": [1, 2]}
    );
    assert_eq!(
        desc.get_array("removedFields").unwrap(),
        &vec![Bson::String("gone".into())]
    );
    assert!(desc.get_array("truncatedArrays").unwrap().is_empty());
    assert!(matches!(upd.get("fullDocument"), None | Some(Bson::Null)));
    let upd2 = next(&mut stream).await;
    let desc = upd2.get_document("updateDescription").unwrap();
    assert_eq!(
        desc.get_document("updatedFields").unwrap(),
        &doc! {"a.c": 3}
    );
    assert!(desc.get_array("removedFields").unwrap().is_empty());
    let rep = next(&mut stream).await;
    assert_eq!(rep.get_str("operationType"), Ok("replace"));
    assert_eq!(
        rep.get_document("fullDocument").unwrap(),
        &doc! {"_id": 1, "r": 1}
    );
    let del = next(&mut stream).await;
    assert_eq!(del.get_str("operationType"), Ok("delete"));
    assert_eq!(del.get_document("documentKey").unwrap(), &doc! {"_id": 1});
    let ins2 = next(&mut stream).await;
    assert_eq!(
        ins2.get_document("documentKey").unwrap(),
        &doc! {"_id": 2},
        "other collection filtered out"
    );
    for ev in [&ins, &upd, &upd2, &rep, &del, &ins2] {
        assert!(ev.get_timestamp("clusterTime").is_ok());
        assert!(ev.get_datetime("wallTime").is_ok());
    }
    let tokens: Vec<String> = [&ins, &upd, &upd2, &rep, &del, &ins2]
        .iter()
        .map(|e| token(e))
        .collect();
    let mut sorted = tokens.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(tokens, sorted, "tokens strictly increase");
}

#[tokio::test]
async fn database_and_cluster_streams() {
    let sb = start();
    let client = client(&sb).await;
    let mut dbs = client.database("t").watch().await.unwrap();
    let mut cluster = client.watch().await.unwrap();
    client
        .database("t")
        .collection::<Document>("a")
        .insert_one(doc! {"_id": 1})
        .await
        .unwrap();
    client
        .database("u")
        .collection::<Document>("b")
        .insert_one(doc! {"_id": 2})
        .await
        .unwrap();
    client
        .database("t")
        .collection::<Document>("b")
        .insert_one(doc! {"_id": 3})
        .await
        .unwrap();
    let e1 = next(&mut dbs).await;
    let e2 = next(&mut dbs).await;
    assert_eq!(
        e1.get_document("ns").unwrap(),
        &doc! {"db": "t", "coll": "a"}
    );
    assert_eq!(
        e2.get_document("ns").unwrap(),
        &doc! {"db": "t", "coll": "b"}
    );
    let mut seen = Vec::new();
    for _ in 0..3 {
        let e = next(&mut cluster).await;
        seen.push(
            e.get_document("ns")
                .unwrap()
                .get_str("db")
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(seen, vec!["t", "u", "t"]);
    // Cluster streams must run on admin: 73 InvalidNamespace otherwise.
    expect_code(
        run(&client, "t", doc! {"aggregate": 1, "pipeline": [{"$changeStream": {"allChangesForCluster": true}}], "cursor": {}}).await,
        73,
    )
    .await;
}

#[tokio::test]
async fn full_document_modes() {
    let sb = start();
    let client = client(&sb).await;
    let coll = client.database("t").collection::<Document>("c");
    coll.insert_one(doc! {"_id": 1, "v": 0}).await.unwrap();
    let mut lookup = coll
        .watch()
        .full_document(FullDocumentType::UpdateLookup)
        .await
        .unwrap();
    let mut when = coll
        .watch()
        .full_document(FullDocumentType::WhenAvailable)
        .await
        .unwrap();
    coll.update_one(doc! {"_id": 1}, doc! {"$set": {"v": 1}})
        .await
        .unwrap();
    coll.update_one(doc! {"_id": 1}, doc! {"$set": {"v": 2}})
        .await
        .unwrap();
    // updateLookup returns the current document (v: 2 for both events).
    let a = next(&mut lookup).await;
    assert_eq!(
        a.get_document("fullDocument").unwrap(),
        &doc! {"_id": 1, "v": 2}
    );
    // whenAvailable without post-images enabled: null.
    let b = next(&mut when).await;
    assert!(
        matches!(b.get("fullDocument"), None | Some(Bson::Null)),
        "{b}"
    );
    // required without post-images enabled: 47 NoMatchingDocument when the event is produced.
    let start = doc! {"_data": token(&a)};
    let res = run(&client, "t", doc! {"aggregate": "c", "pipeline": [{"$changeStream": {"fullDocument": "required", "startAfter": start}}], "cursor": {}}).await;
    let err = match res {
        Err(e) => e,
        Ok(r) => {
            let id = r.get_document("cursor").unwrap().get_i64("id").unwrap();
            run(
                &client,
                "t",
                doc! {"getMore": id, "collection": "c", "maxTimeMS": 200},
            )
            .await
            .unwrap_err()
        }
    };
    assert_eq!(code(&err), 47, "{err:?}");
    // Deleted document: updateLookup gives null.
    coll.delete_one(doc! {"_id": 1}).await.unwrap();
    let mut from_start = coll
        .watch()
        .full_document(FullDocumentType::UpdateLookup)
        .start_after(
            mongodb::bson::from_document::<mongodb::change_stream::event::ResumeToken>(
                doc! {"_data": token(&a)},
            )
            .unwrap(),
        )
        .await
        .unwrap();
    let e = next(&mut from_start).await;
    assert_eq!(e.get_str("operationType"), Ok("update"));
    assert!(
        matches!(e.get("fullDocument"), None | Some(Bson::Null)),
        "{e}"
    );
}

#[tokio::test]
async fn pre_and_post_images() {
    let sb = start();
    let client = client(&sb).await;
    let db = client.database("t");
    run(&client, "t", doc! {"create": "c"}).await.unwrap();
    let coll = db.collection::<Document>("c");
    coll.insert_one(doc! {"_id": 1, "v": 0}).await.unwrap();
    // Before images required but not enabled: the update event fails the stream.
    let mut required = coll
        .watch()
        .full_document_before_change(FullDocumentBeforeChangeType::Required)
        .await
        .unwrap();
    coll.update_one(doc! {"_id": 1}, doc! {"$set": {"v": 1}})
        .await
        .unwrap();
    let err = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match required.next_if_any().await {
                Ok(None) => continue,
                Ok(Some(ev)) => panic!("event without the required pre-image: {ev:?}"),
                Err(e) => return e,
            }
        }
    })
    .await
    .expect("error within deadline");
    assert_eq!(code(&err), 47, "{err:?}");
    run(
        &client,
        "t",
        doc! {"collMod": "c", "changeStreamPreAndPostImages": {"enabled": true}},
    )
    .await
    .unwrap();
    let mut stream = coll
        .watch()
        .full_document(FullDocumentType::Required)
        .full_document_before_change(FullDocumentBeforeChangeType::Required)
        .await
        .unwrap();
    coll.update_one(doc! {"_id": 1}, doc! {"$set": {"v": 2}})
        .await
        .unwrap();
    coll.update_one(doc! {"_id": 1}, doc! {"$set": {"v": 3}})
        .await
        .unwrap();
    coll.delete_one(doc! {"_id": 1}).await.unwrap();
    let e = next(&mut stream).await;
    assert_eq!(
        e.get_document("fullDocumentBeforeChange").unwrap(),
        &doc! {"_id": 1, "v": 1}
    );
    assert_eq!(
        e.get_document("fullDocument").unwrap(),
        &doc! {"_id": 1, "v": 2},
        "post-image at event time"
    );
    let e = next(&mut stream).await;
    assert_eq!(
        e.get_document("fullDocumentBeforeChange").unwrap(),
        &doc! {"_id": 1, "v": 2}
    );
    assert_eq!(
        e.get_document("fullDocument").unwrap(),
        &doc! {"_id": 1, "v": 3}
    );
    let e = next(&mut stream).await;
    assert_eq!(e.get_str("operationType"), Ok("delete"));
    assert_eq!(
        e.get_document("fullDocumentBeforeChange").unwrap(),
        &doc! {"_id": 1, "v": 3}
    );
}

#[tokio::test]
async fn resume_options() {
    let sb = start();
    let client = client(&sb).await;
    let coll = client.database("t").collection::<Document>("c");
    coll.insert_one(doc! {"_id": 0}).await.unwrap();
    let mut stream = coll.watch().await.unwrap();
    for i in 1..=3 {
        coll.insert_one(doc! {"_id": i}).await.unwrap();
    }
    let e1 = next(&mut stream).await;
    let e2 = next(&mut stream).await;
    let ct1 = e1.get_timestamp("clusterTime").unwrap();
    // resumeAfter e1 -> e2, e3.
    let (id, mut batch, _) = raw_stream(
        &client,
        "t",
        "c".into(),
        doc! {"resumeAfter": e1.get_document("_id").unwrap().clone()},
    )
    .await;
    if batch.len() < 2 {
        batch.extend(raw_events(&client, "t", "c", id, 2 - batch.len()).await);
    }
    assert_eq!(
        batch[0].get_document("documentKey").unwrap(),
        &doc! {"_id": 2}
    );
    assert_eq!(token(&batch[0]), token(&e2));
    // startAfter behaves like resumeAfter for ordinary events.
    let (id, mut batch, _) = raw_stream(
        &client,
        "t",
        "c".into(),
        doc! {"startAfter": e2.get_document("_id").unwrap().clone()},
    )
    .await;
    if batch.is_empty() {
        batch.extend(raw_events(&client, "t", "c", id, 1).await);
    }
    assert_eq!(
        batch[0].get_document("documentKey").unwrap(),
        &doc! {"_id": 3}
    );
    // startAtOperationTime is inclusive.
    let (id, mut batch, _) =
        raw_stream(&client, "t", "c".into(), doc! {"startAtOperationTime": ct1}).await;
    if batch.len() < 3 {
        batch.extend(raw_events(&client, "t", "c", id, 3 - batch.len()).await);
    }
    assert_eq!(
        batch[0].get_document("documentKey").unwrap(),
        &doc! {"_id": 1}
    );
    // Two resume options at once are refused.
    assert!(run(&client, "t", doc! {"aggregate": "c", "pipeline": [{"$changeStream": {"resumeAfter": e1.get_document("_id").unwrap().clone(), "startAtOperationTime": ct1}}], "cursor": {}}).await.is_err());
    // Garbage token: 260 InvalidResumeToken.
    expect_code(
        run(&client, "t", doc! {"aggregate": "c", "pipeline": [{"$changeStream": {"resumeAfter": {"_data": "zz"}}}], "cursor": {}}).await,
        260,
    )
    .await;
    // Driver-level resume token and resume.
    let tok = stream.resume_token().unwrap();
    let mut resumed = coll.watch().resume_after(tok).await.unwrap();
    coll.insert_one(doc! {"_id": 4}).await.unwrap();
    let e = next(&mut resumed).await;
    assert_eq!(e.get_document("documentKey").unwrap(), &doc! {"_id": 3});
}

#[tokio::test]
async fn post_batch_resume_token_on_every_batch() {
    let sb = start();
    let client = client(&sb).await;
    let coll = client.database("t").collection::<Document>("c");
    coll.insert_one(doc! {"_id": 0}).await.unwrap();
    let (id, first, cursor) = raw_stream(&client, "t", "c".into(), doc! {}).await;
    assert!(first.is_empty());
    assert_ne!(id, 0);
    let pbrt0 = cursor
        .get_document("postBatchResumeToken")
        .unwrap()
        .get_str("_data")
        .unwrap()
        .to_string();
    let (batch, cursor) = raw_get_more(&client, "t", "c", id).await;
    assert!(batch.is_empty());
    let pbrt1 = cursor
        .get_document("postBatchResumeToken")
        .unwrap()
        .get_str("_data")
        .unwrap()
        .to_string();
    assert!(pbrt1 >= pbrt0);
    coll.insert_one(doc! {"_id": 1}).await.unwrap();
    coll.insert_one(doc! {"_id": 2}).await.unwrap();
    let mut events = Vec::new();
    let mut last_pbrt = pbrt1.clone();
    while events.len() < 2 {
        let (batch, cursor) = raw_get_more(&client, "t", "c", id).await;
        let pbrt = cursor
            .get_document("postBatchResumeToken")
            .unwrap()
            .get_str("_data")
            .unwrap()
            .to_string();
        assert!(pbrt >= last_pbrt);
        if let Some(last) = batch.last() {
            assert_eq!(pbrt, token(last), "pbrt is the last event's token");
        }
        last_pbrt = pbrt;
        events.extend(batch);
    }
    assert!(
        token(&events[0]) > pbrt1,
        "events sort after earlier high-water marks"
    );
    assert!(token(&events[1]) > token(&events[0]));
    // High-water mark after the events, then later events sort after it.
    let (_, cursor) = raw_get_more(&client, "t", "c", id).await;
    let hwm = cursor
        .get_document("postBatchResumeToken")
        .unwrap()
        .get_str("_data")
        .unwrap()
        .to_string();
    assert!(hwm >= token(&events[1]));
    // A stream resumed from the high-water mark sees only later events.
    let (id2, _, _) = raw_stream(
        &client,
        "t",
        "c".into(),
        doc! {"resumeAfter": {"_data": hwm.clone()}},
    )
    .await;
    coll.insert_one(doc! {"_id": 3}).await.unwrap();
    let later = raw_events(&client, "t", "c", id2, 1).await;
    assert_eq!(
        later[0].get_document("documentKey").unwrap(),
        &doc! {"_id": 3}
    );
    assert!(token(&later[0]) > hwm);
}

#[tokio::test]
async fn expanded_events_and_invalidate() {
    let sb = start();
    let client = client(&sb).await;
    let (id, _, _) = raw_stream(
        &client,
        "t",
        Bson::Int32(1),
        doc! {"showExpandedEvents": true},
    )
    .await;
    let (cid, _, _) = raw_stream(&client, "t", "c".into(), doc! {"showExpandedEvents": true}).await;
    run(&client, "t", doc! {"create": "c"}).await.unwrap();
    run(
        &client,
        "t",
        doc! {"createIndexes": "c", "indexes": [{"key": {"a": 1}, "name": "a_1"}]},
    )
    .await
    .unwrap();
    run(&client, "t", doc! {"dropIndexes": "c", "index": "a_1"})
        .await
        .unwrap();
    run(&client, "t", doc! {"collMod": "c", "validator": {}})
        .await
        .unwrap();
    run(
        &client,
        "admin",
        doc! {"renameCollection": "t.c", "to": "t.d"},
    )
    .await
    .unwrap();
    run(&client, "t", doc! {"drop": "d"}).await.unwrap();
    // dropDatabase of a database with no collections is a no-op; give it one.
    run(&client, "t", doc! {"create": "e"}).await.unwrap();
    run(&client, "t", doc! {"dropDatabase": 1}).await.unwrap();
    let events = raw_events(&client, "t", "$cmd.aggregate", id, 10).await;
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e.get_str("operationType").unwrap())
        .collect();
    assert_eq!(
        kinds,
        vec![
            "create",
            "createIndexes",
            "dropIndexes",
            "modify",
            "rename",
            "drop",
            "create",
            "drop",
            "dropDatabase",
            "invalidate"
        ]
    );
    assert!(events[0].get("collectionUUID").is_some());
    assert!(events[0].get_document("operationDescription").is_ok());
    let ci = events[1].get_document("operationDescription").unwrap();
    assert_eq!(
        ci.get_array("indexes").unwrap()[0]
            .as_document()
            .unwrap()
            .get_str("name"),
        Ok("a_1")
    );
    assert_eq!(
        events[4].get_document("to").unwrap(),
        &doc! {"db": "t", "coll": "d"}
    );
    // The collection stream is invalidated by the rename.
    let cevents = raw_events(&client, "t", "c", cid, 1).await;
    let mut all = cevents;
    while all.last().unwrap().get_str("operationType") != Ok("invalidate") {
        all.extend(raw_events(&client, "t", "c", cid, 1).await);
    }
    let ckinds: Vec<&str> = all
        .iter()
        .map(|e| e.get_str("operationType").unwrap())
        .collect();
    assert_eq!(
        ckinds,
        vec![
            "create",
            "createIndexes",
            "dropIndexes",
            "modify",
            "rename",
            "invalidate"
        ]
    );
    let inv = all.last().unwrap().clone();
    let rename = all[all.len() - 2].clone();
    assert!(token(&inv) > token(&rename));
    // After invalidate the cursor is closed.
    let reply = run(&client, "t", doc! {"getMore": cid, "collection": "c"}).await;
    if let Ok(r) = reply {
        assert_eq!(r.get_document("cursor").unwrap().get_i64("id"), Ok(0));
    }
    // resumeAfter an invalidate fails; startAfter works.
    let bad = run(&client, "t", doc! {"aggregate": "c", "pipeline": [{"$changeStream": {"resumeAfter": inv.get_document("_id").unwrap().clone()}}], "cursor": {}}).await;
    assert!(bad.is_err());
    let (_, batch, cursor) = raw_stream(
        &client,
        "t",
        "c".into(),
        doc! {"startAfter": inv.get_document("_id").unwrap().clone()},
    )
    .await;
    assert!(batch.is_empty());
    assert!(cursor.get_document("postBatchResumeToken").is_ok());
    // Without showExpandedEvents the same DDL shows only drop/rename/invalidate-class events.
}

#[tokio::test]
async fn default_stream_hides_expanded_events() {
    let sb = start();
    let client = client(&sb).await;
    let mut stream = client.database("t").watch().await.unwrap();
    run(&client, "t", doc! {"create": "c"}).await.unwrap();
    run(
        &client,
        "t",
        doc! {"createIndexes": "c", "indexes": [{"key": {"a": 1}, "name": "a_1"}]},
    )
    .await
    .unwrap();
    client
        .database("t")
        .collection::<Document>("c")
        .insert_one(doc! {"_id": 1})
        .await
        .unwrap();
    let e = next(&mut stream).await;
    assert_eq!(e.get_str("operationType"), Ok("insert"));
}

#[tokio::test]
async fn history_lost_after_truncation() {
    let sb = start_with(ferry_sandbox::SandboxOptions {
        oplog_max_events: Some(5),
        ..Default::default()
    });
    let client = client(&sb).await;
    let coll = client.database("t").collection::<Document>("c");
    let mut stream = coll.watch().await.unwrap();
    coll.insert_one(doc! {"_id": 0}).await.unwrap();
    let first = next(&mut stream).await;
    for i in 1..20 {
        coll.insert_one(doc! {"_id": i}).await.unwrap();
    }
    let oplog_len = client
        .database("local")
        .collection::<Document>("oplog.rs")
        .count_documents(doc! {})
        .await
        .unwrap();
    assert!(oplog_len <= 5, "{oplog_len}");
    let err = run(
        &client,
        "t",
        doc! {"aggregate": "c", "pipeline": [{"$changeStream": {"resumeAfter": first.get_document("_id").unwrap().clone()}}], "cursor": {}},
    )
    .await
    .unwrap_err();
    assert_eq!(code(&err), 286);
    assert!(
        err.contains_label("NonResumableChangeStreamError"),
        "{err:?}"
    );
    // startAtOperationTime before the window too.
    let ts: Timestamp = first.get_timestamp("clusterTime").unwrap();
    expect_code(
        run(&client, "t", doc! {"aggregate": "c", "pipeline": [{"$changeStream": {"startAtOperationTime": ts}}], "cursor": {}}).await,
        286,
    )
    .await;
}

/// With showExpandedEvents, a 6.1+ server tells which dotted paths hold array indices or
/// numeric field names (`disambiguatedPaths`); older servers and plain streams do not.
#[tokio::test]
async fn disambiguated_paths_for_numeric_components() {
    for (version, expanded, expect) in [
        ("7.0.13", true, true),
        ("7.0.13", false, false),
        ("6.0.17", true, false),
    ] {
        let sb = start_with(ferry_sandbox::SandboxOptions {
            version: version.into(),
            ..Default::default()
        });
        let client = client(&sb).await;
        let coll = client.database("t").collection::<Document>("c");
        coll.insert_one(doc! {"_id": 1, "tags": ["a"], "m": {"0": "x"}, "plain": 1})
            .await
            .unwrap();
        let (id, _, _) = raw_stream(
            &client,
            "t",
            Bson::String("c".into()),
            doc! {"showExpandedEvents": expanded},
        )
        .await;
        coll.update_one(doc! {"_id": 1}, doc! {"$push": {"tags": "b"}})
            .await
            .unwrap();
        coll.update_one(doc! {"_id": 1}, doc! {"$set": {"m.0": "y"}})
            .await
            .unwrap();
        coll.update_one(doc! {"_id": 1}, doc! {"$set": {"plain": 2}})
            .await
            .unwrap();
        let events = raw_events(&client, "t", "c", id, 3).await;
        let desc = |i: usize| events[i].get_document("updateDescription").unwrap();
        assert_eq!(
            desc(0).get_document("updatedFields").unwrap(),
            &doc! {"tags.1": "b"}
        );
        assert_eq!(
            desc(1).get_document("updatedFields").unwrap(),
            &doc! {"m.0": "y"}
        );
        if expect {
            assert_eq!(
                desc(0).get_document("disambiguatedPaths").unwrap(),
                &doc! {"tags.1": ["tags", 1]}
            );
            assert_eq!(
                desc(1).get_document("disambiguatedPaths").unwrap(),
                &doc! {"m.0": ["m", "0"]}
            );
        } else {
            assert!(
                desc(0).get("disambiguatedPaths").is_none(),
                "{version} {expanded}"
            );
            assert!(
                desc(1).get("disambiguatedPaths").is_none(),
                "{version} {expanded}"
            );
        }
        assert!(
            desc(2).get("disambiguatedPaths").is_none(),
            "an unambiguous path needs no disambiguation"
        );
    }
}

/// A rename into another database is carried out as a real server does it, and a
/// whole-cluster stream shows every step: `create` and `createIndexes` of a temporary
/// collection `tmpXXXXX.renameCollection` in the target database (a new UUID), one
/// `insert` per document, a `rename` of the temporary collection onto the target (an
/// existing target goes with it: the event names its UUID in `dropTarget`, no `drop`),
/// and the `drop` of the source. Pins: the sandbox showed one `rename` across databases,
/// keeping the UUID, which no real server does; a migration tool tested against it read
/// documents by a UUID a real server has replaced.
#[tokio::test]
async fn a_rename_between_databases_shows_its_copy_in_the_stream() {
    let sb = start();
    let client = client(&sb).await;
    let src = client.database("s").collection::<Document>("c");
    src.insert_many(vec![doc! {"_id": 1, "a": 1}, doc! {"_id": 2, "a": 2}])
        .await
        .unwrap();
    run(
        &client,
        "s",
        doc! {"createIndexes": "c", "indexes": [{"key": {"a": 1}, "name": "a_1"}]},
    )
    .await
    .unwrap();
    client
        .database("d")
        .collection::<Document>("t")
        .insert_one(doc! {"_id": "old target"})
        .await
        .unwrap();
    let uuid_of = |list: Vec<Document>| {
        list[0]
            .get_document("info")
            .unwrap()
            .get("uuid")
            .cloned()
            .unwrap()
    };
    let source_uuid = uuid_of(
        run(
            &client,
            "s",
            doc! {"listCollections": 1, "filter": {"name": "c"}},
        )
        .await
        .unwrap()
        .get_document("cursor")
        .unwrap()
        .get_array("firstBatch")
        .unwrap()
        .iter()
        .map(|d| d.as_document().unwrap().clone())
        .collect(),
    );
    let (id, _, _) = raw_stream(
        &client,
        "admin",
        Bson::Int32(1),
        doc! {"allChangesForCluster": true, "showExpandedEvents": true},
    )
    .await;
    run(
        &client,
        "admin",
        doc! {"renameCollection": "s.c", "to": "d.t", "dropTarget": true},
    )
    .await
    .unwrap();
    let events = raw_events(&client, "admin", "$cmd.aggregate", id, 6).await;
    let kinds: Vec<(&str, &str, &str)> = events
        .iter()
        .map(|e| {
            let ns = e.get_document("ns").unwrap();
            (
                e.get_str("operationType").unwrap(),
                ns.get_str("db").unwrap(),
                ns.get_str("coll").unwrap_or(""),
            )
        })
        .collect();
    let temp = kinds[0].2;
    assert!(
        temp.len() == "tmpXXXXX.renameCollection".len()
            && temp.starts_with("tmp")
            && temp.ends_with(".renameCollection"),
        "temporary collection name {temp:?}"
    );
    assert_eq!(
        kinds,
        vec![
            ("create", "d", temp),
            ("createIndexes", "d", temp),
            ("insert", "d", temp),
            ("insert", "d", temp),
            ("rename", "d", temp),
            ("drop", "s", "c"),
        ]
    );
    assert_eq!(
        events[2].get_document("fullDocument").unwrap(),
        &doc! {"_id": 1, "a": 1}
    );
    assert_eq!(
        events[4].get_document("to").unwrap(),
        &doc! {"db": "d", "coll": "t"}
    );
    let description = events[4].get_document("operationDescription").unwrap();
    assert!(
        matches!(description.get("dropTarget"), Some(Bson::Binary(_))),
        "the replaced target's UUID: {description}"
    );
    let target = run(
        &client,
        "d",
        doc! {"listCollections": 1, "filter": {"name": "t"}},
    )
    .await
    .unwrap();
    let target_list: Vec<Document> = target
        .get_document("cursor")
        .unwrap()
        .get_array("firstBatch")
        .unwrap()
        .iter()
        .map(|d| d.as_document().unwrap().clone())
        .collect();
    assert_ne!(
        uuid_of(target_list),
        source_uuid,
        "a new collection, a new UUID"
    );
    let docs: Vec<Document> = client
        .database("d")
        .collection::<Document>("t")
        .find(doc! {})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(docs, vec![doc! {"_id": 1, "a": 1}, doc! {"_id": 2, "a": 2}]);
    let names: Vec<String> = client.database("d").list_collection_names().await.unwrap();
    assert_eq!(names, vec!["t".to_string()], "no temporary collection left");
}
