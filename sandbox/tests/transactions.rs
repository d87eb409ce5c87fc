//! Multi-document transactions over TCP with the official driver: commit and abort,
//! snapshot reads, write conflicts, writes waiting for a transaction, commit retries,
//! NoSuchTransaction, and what the oplog and change streams show of a transaction.

mod common;

use std::time::Duration;

use common::*;
use futures_util::{FutureExt, TryStreamExt};
use mongodb::bson::{doc, Bson, Document};
use mongodb::options::{Acknowledgment, ReadConcern, TransactionOptions, WriteConcern};
use mongodb::{Client, ClientSession, Collection};

async fn session(client: &Client) -> ClientSession {
    client.start_session().await.expect("session starts")
}

fn coll(client: &Client) -> Collection<Document> {
    client.database("t").collection::<Document>("c")
}

async fn ids(c: &Collection<Document>) -> Vec<i32> {
    let docs: Vec<Document> = c.find(doc! {}).await.unwrap().try_collect().await.unwrap();
    docs.iter().map(|d| d.get_i32("_id").unwrap()).collect()
}

/// Commit makes every write of the transaction visible at once; before it, other
/// clients see none of them. (Pins: commitTransaction answered 59 CommandNotFound.)
#[tokio::test]
async fn committed_transaction_is_visible_atomically() {
    let sb = start();
    let client = client(&sb).await;
    let c = coll(&client);
    c.insert_one(doc! {"_id": 0, "n": 0}).await.unwrap();
    let mut s = session(&client).await;
    s.start_transaction().await.unwrap();
    c.insert_one(doc! {"_id": 1}).session(&mut s).await.unwrap();
    c.update_one(doc! {"_id": 0}, doc! {"$set": {"n": 1}})
        .session(&mut s)
        .await
        .unwrap();
    c.insert_one(doc! {"_id": 2}).session(&mut s).await.unwrap();
    // Outside the transaction: nothing yet.
    assert_eq!(ids(&c).await, vec![0]);
    let seen = c.find_one(doc! {"_id": 0}).await.unwrap().unwrap();
    assert_eq!(seen.get_i32("n"), Ok(0));
    // Inside: its own writes.
    let inside: Vec<Document> = c
        .find(doc! {})
        .session(&mut s)
        .await
        .unwrap()
        .stream(&mut s)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(inside.len(), 3);
    s.commit_transaction().await.unwrap();
    assert_eq!(ids(&c).await, vec![0, 1, 2]);
    let seen = c.find_one(doc! {"_id": 0}).await.unwrap().unwrap();
    assert_eq!(seen.get_i32("n"), Ok(1));
}

/// An aborted transaction leaves no document and no oplog entry.
#[tokio::test]
async fn aborted_transaction_leaves_no_trace() {
    let sb = start();
    let client = client(&sb).await;
    let c = coll(&client);
    c.insert_one(doc! {"_id": 0}).await.unwrap();
    let oplog = client.database("local").collection::<Document>("oplog.rs");
    let before = oplog.count_documents(doc! {}).await.unwrap();
    let mut s = session(&client).await;
    s.start_transaction().await.unwrap();
    c.insert_one(doc! {"_id": 1}).session(&mut s).await.unwrap();
    c.delete_one(doc! {"_id": 0}).session(&mut s).await.unwrap();
    s.abort_transaction().await.unwrap();
    assert_eq!(ids(&c).await, vec![0]);
    assert_eq!(oplog.count_documents(doc! {}).await.unwrap(), before);
}

/// Reads inside a transaction see the snapshot of its first statement (plus its own
/// writes), not what others commit later.
#[tokio::test]
async fn transaction_reads_its_snapshot() {
    let sb = start();
    let client = client(&sb).await;
    let c = coll(&client);
    let other = client.database("t").collection::<Document>("other");
    c.insert_one(doc! {"_id": 0, "v": "old"}).await.unwrap();
    other.insert_one(doc! {"_id": 0, "v": "old"}).await.unwrap();
    let mut s = session(&client).await;
    s.start_transaction()
        .read_concern(ReadConcern::snapshot())
        .await
        .unwrap();
    c.insert_one(doc! {"_id": 1}).session(&mut s).await.unwrap();
    // Committed by someone else after the snapshot, on a collection the transaction has
    // not read yet, and a new document in the one it has.
    other
        .update_one(doc! {"_id": 0}, doc! {"$set": {"v": "new"}})
        .await
        .unwrap();
    c.insert_one(doc! {"_id": 9}).await.unwrap();
    let seen = other
        .find_one(doc! {"_id": 0})
        .session(&mut s)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen.get_str("v"), Ok("old"));
    let inside: Vec<Document> = c
        .find(doc! {})
        .session(&mut s)
        .await
        .unwrap()
        .stream(&mut s)
        .try_collect()
        .await
        .unwrap();
    let inside: Vec<i32> = inside.iter().map(|d| d.get_i32("_id").unwrap()).collect();
    assert_eq!(inside, vec![0, 1]);
    s.commit_transaction().await.unwrap();
}

/// Two transactions writing one document: the second fails with 112 WriteConflict and
/// the TransientTransactionError label, and is aborted; the first commits.
#[tokio::test]
async fn concurrent_transactions_conflict() {
    let sb = start();
    let client = client(&sb).await;
    let c = coll(&client);
    c.insert_one(doc! {"_id": 0, "n": 0}).await.unwrap();
    let mut a = session(&client).await;
    let mut b = session(&client).await;
    a.start_transaction().await.unwrap();
    b.start_transaction().await.unwrap();
    c.update_one(doc! {"_id": 0}, doc! {"$inc": {"n": 1}})
        .session(&mut a)
        .await
        .unwrap();
    let err = c
        .update_one(doc! {"_id": 0}, doc! {"$inc": {"n": 10}})
        .session(&mut b)
        .await
        .unwrap_err();
    assert_eq!(code(&err), 112, "{err:?}");
    assert!(err.contains_label("TransientTransactionError"), "{err:?}");
    // b is aborted: committing it fails with NoSuchTransaction.
    let err = b.commit_transaction().await.unwrap_err();
    assert_eq!(code(&err), 251, "{err:?}");
    a.commit_transaction().await.unwrap();
    let d = c.find_one(doc! {"_id": 0}).await.unwrap().unwrap();
    assert_eq!(d.get_i32("n"), Ok(1));
}

/// A transaction writing a document that another client changed after the transaction's
/// snapshot fails with WriteConflict.
#[tokio::test]
async fn write_after_snapshot_conflicts() {
    let sb = start();
    let client = client(&sb).await;
    let c = coll(&client);
    c.insert_many(vec![doc! {"_id": 0}, doc! {"_id": 1}])
        .await
        .unwrap();
    let mut s = session(&client).await;
    s.start_transaction().await.unwrap();
    c.find_one(doc! {"_id": 1}).session(&mut s).await.unwrap();
    c.update_one(doc! {"_id": 0}, doc! {"$set": {"x": 1}})
        .await
        .unwrap();
    let err = c
        .update_one(doc! {"_id": 0}, doc! {"$set": {"x": 2}})
        .session(&mut s)
        .await
        .unwrap_err();
    assert_eq!(code(&err), 112, "{err:?}");
    assert!(err.contains_label("TransientTransactionError"));
    let d = c.find_one(doc! {"_id": 0}).await.unwrap().unwrap();
    assert_eq!(d.get_i32("x"), Ok(1));
}

/// A write outside any transaction to a document a transaction holds waits until the
/// transaction ends, then applies on top of it; writes to other documents do not wait.
#[tokio::test]
async fn plain_write_waits_for_transaction() {
    let sb = start();
    let client = client(&sb).await;
    let c = coll(&client);
    c.insert_many(vec![doc! {"_id": 0, "n": 0}, doc! {"_id": 1, "n": 0}])
        .await
        .unwrap();
    let mut s = session(&client).await;
    s.start_transaction().await.unwrap();
    c.update_one(doc! {"_id": 0}, doc! {"$set": {"n": 5}})
        .session(&mut s)
        .await
        .unwrap();
    // Another document: no wait.
    c.update_one(doc! {"_id": 1}, doc! {"$inc": {"n": 1}})
        .await
        .unwrap();
    let waiting = {
        let c = c.clone();
        tokio::spawn(async move {
            c.update_one(doc! {"_id": 0}, doc! {"$inc": {"n": 1}})
                .await
                .unwrap()
        })
    };
    // It stays blocked while the transaction is open: the document keeps its value.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiting.is_finished(), "the write did not wait");
    let d = c.find_one(doc! {"_id": 0}).await.unwrap().unwrap();
    assert_eq!(d.get_i32("n"), Ok(0));
    s.commit_transaction().await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the write proceeds once the transaction ends")
        .unwrap();
    assert_eq!(r.modified_count, 1);
    let d = c.find_one(doc! {"_id": 0}).await.unwrap().unwrap();
    assert_eq!(d.get_i32("n"), Ok(6));
}

/// commitTransaction sent again after it succeeded answers ok (the driver retries a
/// commit whose reply it lost); commit or statements of an unknown transaction fail with
/// 251 NoSuchTransaction and the TransientTransactionError label.
#[tokio::test]
async fn commit_retry_and_no_such_transaction() {
    let sb = start();
    let client = client(&sb).await;
    let lsid = doc! {"id": Bson::Binary(mongodb::bson::Binary{subtype: mongodb::bson::spec::BinarySubtype::Uuid, bytes: vec![3; 16]})};
    let stmt = doc! {"insert": "c", "documents": [{"_id": 1}], "lsid": lsid.clone(),
    "txnNumber": 1i64, "startTransaction": true, "autocommit": false};
    run(&client, "t", stmt).await.unwrap();
    let commit =
        doc! {"commitTransaction": 1, "lsid": lsid.clone(), "txnNumber": 1i64, "autocommit": false};
    run(&client, "admin", commit.clone()).await.unwrap();
    run(&client, "admin", commit).await.unwrap();
    let unknown =
        doc! {"commitTransaction": 1, "lsid": lsid.clone(), "txnNumber": 7i64, "autocommit": false};
    let err = run(&client, "admin", unknown).await.unwrap_err();
    assert_eq!(code(&err), 251, "{err:?}");
    assert!(err.contains_label("TransientTransactionError"));
    let stray = doc! {"insert": "c", "documents": [{"_id": 2}], "lsid": lsid.clone(),
    "txnNumber": 8i64, "autocommit": false};
    let err = run(&client, "t", stray).await.unwrap_err();
    assert_eq!(code(&err), 251, "{err:?}");
    let abort_committed =
        doc! {"abortTransaction": 1, "lsid": lsid, "txnNumber": 1i64, "autocommit": false};
    let err = run(&client, "admin", abort_committed).await.unwrap_err();
    assert_eq!(code(&err), 256, "{err:?}");
    assert_eq!(ids(&coll(&client)).await, vec![1]);
}

/// The driver's callback API (`start_transaction().and_run(...)`, the Rust driver's
/// `with_transaction`, with majority write concern) retries transactions that hit write
/// conflicts and every increment lands once; so does the explicit start/commit style.
#[tokio::test]
async fn driver_retries_transient_conflicts() {
    let sb = start();
    let client = client(&sb).await;
    let c = coll(&client);
    c.insert_one(doc! {"_id": 0, "n": 0}).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let c = coll(&client);
            let mut s = client.start_session().await.unwrap();
            let options = TransactionOptions::builder()
                .write_concern(WriteConcern::builder().w(Acknowledgment::Majority).build())
                .build();
            for _ in 0..5 {
                s.start_transaction()
                    .with_options(options.clone())
                    .and_run(&c, |s, c| {
                        async move {
                            c.update_one(doc! {"_id": 0}, doc! {"$inc": {"n": 1}})
                                .session(s)
                                .await
                        }
                        .boxed()
                    })
                    .await
                    .unwrap();
            }
            // Explicit style: start, write, commit; on a transient error abort and redo.
            loop {
                s.start_transaction().await.unwrap();
                let step = async {
                    c.update_one(doc! {"_id": 0}, doc! {"$inc": {"n": 1}})
                        .session(&mut s)
                        .await?;
                    s.commit_transaction().await
                }
                .await;
                match step {
                    Ok(()) => break,
                    Err(e) if e.contains_label("TransientTransactionError") => {
                        let _ = s.abort_transaction().await;
                    }
                    Err(e) => panic!("{e:?}"),
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let d = c.find_one(doc! {"_id": 0}).await.unwrap().unwrap();
    assert_eq!(d.get_i32("n"), Ok(24));
}

/// A committed transaction is one `applyOps` entry in `local.oplog.rs`, carrying its
/// `lsid` and `txnNumber`; its change events carry them too and share the entry's
/// cluster time, with distinct, increasing resume tokens.
#[tokio::test]
async fn committed_transaction_as_apply_ops_and_events() {
    let sb = start();
    let client = client(&sb).await;
    let c = coll(&client);
    c.insert_one(doc! {"_id": 0}).await.unwrap();
    let mut stream = client
        .database("t")
        .watch()
        .await
        .unwrap()
        .with_type::<Document>();
    let mut s = session(&client).await;
    s.start_transaction().await.unwrap();
    c.insert_one(doc! {"_id": 1}).session(&mut s).await.unwrap();
    c.update_one(doc! {"_id": 0}, doc! {"$set": {"a": 1}})
        .session(&mut s)
        .await
        .unwrap();
    client
        .database("t")
        .collection::<Document>("d")
        .delete_many(doc! {})
        .session(&mut s)
        .await
        .unwrap();
    c.delete_one(doc! {"_id": 1}).session(&mut s).await.unwrap();
    s.commit_transaction().await.unwrap();
    let oplog = client.database("local").collection::<Document>("oplog.rs");
    let entry = oplog
        .find_one(doc! {"o.applyOps": {"$exists": true}})
        .await
        .unwrap()
        .expect("an applyOps entry");
    assert_eq!(entry.get_str("op"), Ok("c"));
    assert_eq!(entry.get_str("ns"), Ok("admin.$cmd"));
    assert_eq!(entry.get_i64("txnNumber"), Ok(1));
    assert!(entry.get_document("lsid").unwrap().contains_key("id"));
    let ops = entry
        .get_document("o")
        .unwrap()
        .get_array("applyOps")
        .unwrap();
    let kinds: Vec<&str> = ops
        .iter()
        .map(|o| o.as_document().unwrap().get_str("op").unwrap())
        .collect();
    assert_eq!(kinds, vec!["i", "u", "d"]);
    assert!(!entry.get_document("o").unwrap().contains_key("partialTxn"));

    let mut events = Vec::new();
    while events.len() < 3 {
        let e = tokio::time::timeout(Duration::from_secs(5), stream.next_if_any())
            .await
            .unwrap()
            .unwrap();
        if let Some(e) = e {
            events.push(e);
        }
    }
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e.get_str("operationType").unwrap())
        .collect();
    assert_eq!(kinds, vec!["insert", "update", "delete"]);
    let ts = entry.get_timestamp("ts").unwrap();
    let mut tokens = Vec::new();
    for e in &events {
        assert_eq!(e.get_timestamp("clusterTime").unwrap(), ts);
        assert_eq!(e.get_i64("txnNumber"), Ok(1));
        assert!(e.get_document("lsid").unwrap().contains_key("id"));
        tokens.push(
            e.get_document("_id")
                .unwrap()
                .get_str("_data")
                .unwrap()
                .to_string(),
        );
    }
    assert!(tokens.windows(2).all(|w| w[0] < w[1]), "{tokens:?}");
}

/// Resuming after the first event of a transaction delivers exactly the rest of it.
#[tokio::test]
async fn resume_inside_a_transaction() {
    let sb = start();
    let client = client(&sb).await;
    let c = coll(&client);
    let start = run(&client, "admin", doc! {"ping": 1})
        .await
        .unwrap()
        .get_timestamp("operationTime")
        .unwrap();
    let mut s = session(&client).await;
    s.start_transaction().await.unwrap();
    for i in 0..3 {
        c.insert_one(doc! {"_id": i}).session(&mut s).await.unwrap();
    }
    s.commit_transaction().await.unwrap();
    let reply = run(
        &client,
        "t",
        doc! {"aggregate": "c", "pipeline": [{"$changeStream": {"startAtOperationTime": start}}], "cursor": {}},
    )
    .await
    .unwrap();
    let batch = reply
        .get_document("cursor")
        .unwrap()
        .get_array("firstBatch")
        .unwrap()
        .clone();
    assert_eq!(batch.len(), 3);
    let first = batch[0]
        .as_document()
        .unwrap()
        .get_document("_id")
        .unwrap()
        .clone();
    let reply = run(
        &client,
        "t",
        doc! {"aggregate": "c", "pipeline": [{"$changeStream": {"resumeAfter": first}}], "cursor": {}},
    )
    .await
    .unwrap();
    let rest: Vec<i32> = reply
        .get_document("cursor")
        .unwrap()
        .get_array("firstBatch")
        .unwrap()
        .iter()
        .map(|e| {
            e.as_document()
                .unwrap()
                .get_document("documentKey")
                .unwrap()
                .get_i32("_id")
                .unwrap()
        })
        .collect();
    assert_eq!(rest, vec![1, 2]);
}

/// A transaction whose operations exceed 16 MB is written as several `applyOps` entries:
/// all but the last carry `partialTxn: true`, each links to the previous by `prevOpTime`,
/// each holds at most 16 MB; a change stream delivers every operation once, each event
/// at its entry's cluster time.
#[tokio::test]
async fn large_transaction_spans_several_entries() {
    let sb = start();
    let client = client(&sb).await;
    let c = coll(&client);
    let mut stream = c.watch().await.unwrap().with_type::<Document>();
    let pad = "x".repeat(3 * 1024 * 1024);
    let mut s = session(&client).await;
    s.start_transaction().await.unwrap();
    for i in 0..12 {
        c.insert_one(doc! {"_id": i, "pad": pad.clone()})
            .session(&mut s)
            .await
            .unwrap();
    }
    s.commit_transaction().await.unwrap();
    let oplog = client.database("local").collection::<Document>("oplog.rs");
    let entries: Vec<Document> = oplog
        .find(doc! {"o.applyOps": {"$exists": true}})
        .projection(doc! {"o.applyOps.o.pad": 0})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert!(entries.len() >= 3, "{} entries", entries.len());
    let mut total = 0;
    for (i, e) in entries.iter().enumerate() {
        let o = e.get_document("o").unwrap();
        total += o.get_array("applyOps").unwrap().len();
        let last = i + 1 == entries.len();
        assert_eq!(o.get_bool("partialTxn").ok(), (!last).then_some(true));
        let prev = e
            .get_document("prevOpTime")
            .unwrap()
            .get_timestamp("ts")
            .unwrap();
        if i > 0 {
            assert_eq!(prev, entries[i - 1].get_timestamp("ts").unwrap());
        }
    }
    assert_eq!(total, 12);
    let mut seen = Vec::new();
    while seen.len() < 12 {
        let e = tokio::time::timeout(Duration::from_secs(10), stream.next_if_any())
            .await
            .unwrap()
            .unwrap();
        if let Some(e) = e {
            seen.push(
                e.get_document("documentKey")
                    .unwrap()
                    .get_i32("_id")
                    .unwrap(),
            );
        }
    }
    assert_eq!(seen, (0..12).collect::<Vec<_>>());
}

/// Commands a transaction may not run fail with 263, and writes to the collection
/// after the transaction's own create work.
#[tokio::test]
async fn unsupported_commands_in_transaction() {
    let sb = start();
    let client = client(&sb).await;
    let lsid = doc! {"id": Bson::Binary(mongodb::bson::Binary{subtype: mongodb::bson::spec::BinarySubtype::Uuid, bytes: vec![4; 16]})};
    run(
        &client,
        "t",
        doc! {"insert": "fresh", "documents": [{"_id": 1}], "lsid": lsid.clone(), "txnNumber": 1i64, "startTransaction": true, "autocommit": false},
    )
    .await
    .unwrap();
    let err = run(
        &client,
        "t",
        doc! {"drop": "fresh", "lsid": lsid.clone(), "txnNumber": 1i64, "autocommit": false},
    )
    .await
    .unwrap_err();
    assert_eq!(code(&err), 263, "{err:?}");
    // The transaction is still open: commit creates the collection with its document.
    run(
        &client,
        "admin",
        doc! {"commitTransaction": 1, "lsid": lsid, "txnNumber": 1i64, "autocommit": false},
    )
    .await
    .unwrap();
    let fresh = client.database("t").collection::<Document>("fresh");
    assert_eq!(fresh.count_documents(doc! {}).await.unwrap(), 1);
}
