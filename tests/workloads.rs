//! Workloads that production applications write and that broke migrations before: bursts
//! of updates to one large document, `_id`s equal to the server but of different BSON
//! types, and documents with `$`-prefixed field names. Each test names the failure it
//! pins; each ends with the destination compared to the source byte for byte.

mod common;

use bson::{doc, Bson, Decimal128, Document};
use common::*;
use ferry::control::ControlRequest;
use ferry::progress::Phase;

/// Pauses the run (events accumulate on the source), lets `work` write, and resumes.
async fn while_paused(m: &ferry::run::Migration, work: impl std::future::Future<Output = ()>) {
    let reply = request_until_accepted(m, ControlRequest::Pause).await;
    assert!(reply.is_ok(), "pause refused: {reply:?}");
    wait_phase(&m.progress, Phase::Paused).await;
    work.await;
    let reply = m.control.request(ControlRequest::Resume).await;
    assert!(reply.is_ok(), "resume refused: {reply:?}");
}

/// Pins: a few hundred `$push` to one ~200 KB document while Ferry was paused made the
/// applier read the document again for every push and send all the copies as one
/// `update` command ("Message length 63007208 over maximum 48000000"), failing the run.
/// Also a burst of updates that do need the source's document (a `$`-prefixed nested
/// path cannot be replayed as an operator): each document is read once, and the
/// replacements stay within the command budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_pushes_to_one_large_document_converges() {
    let pair = Pair::start().await;
    let coll = pair.src.database("app").collection::<Document>("feeds");
    let big = "x".repeat(200_000);
    coll.insert_many(vec![
        doc! {"_id": 1, "big": &big, "events": []},
        doc! {"_id": 2, "big": &big, "address": {"$street": "Elm", "n": 0}},
    ])
    .await
    .expect("seed");
    let m = start(pair.config("")).await;
    wait_phase(&m.progress, Phase::ReadyForCutover).await;
    while_paused(&m, async {
        for i in 0..300 {
            coll.update_one(doc! {"_id": 1}, doc! {"$push": {"events": {"n": i}}})
                .await
                .expect("push");
            coll.update_one(doc! {"_id": 2}, doc! {"$set": {"address.$street": i}})
                .await
                .expect("set a $-prefixed nested field");
        }
    })
    .await;
    cutover_and_complete(m).await;
    assert_eq!(assert_same(&pair.src, &pair.dst).await, 2);
}

/// Pins: a `Decimal128("1")` document deleted and inserted again as int32 1 (one `_id`
/// to the server, different bytes) failed the run with 66 ImmutableField, because equal
/// keys were hashed to different appliers and raced. Every numeric type in turn, with
/// several appliers per namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_equal_to_the_server_but_of_other_types_converge() {
    let pair = Pair::start().await;
    let coll = pair.src.database("app").collection::<Document>("ledger");
    let decimal = |s: &str| Bson::Decimal128(s.parse::<Decimal128>().expect("decimal"));
    let mut seed: Vec<Document> = (0..20)
        .map(|i| doc! {"_id": decimal(&format!("{i}")), "v": "decimal"})
        .collect();
    seed.push(doc! {"_id": 100i64, "v": "long"});
    coll.insert_many(seed).await.expect("seed");
    let m = start(pair.config("[apply]\nworkers = 8\n")).await;
    wait_phase(&m.progress, Phase::ReadyForCutover).await;
    for i in 0..20i32 {
        // Decimal -> int32 -> int64 -> double -> Decimal("i.0"), each a delete and insert.
        let forms = [
            Bson::Int32(i),
            Bson::Int64(i as i64),
            Bson::Double(i as f64),
            decimal(&format!("{i}.0")),
        ];
        let mut current = decimal(&format!("{i}"));
        for next in forms {
            coll.delete_one(doc! {"_id": current.clone()})
                .await
                .expect("delete");
            coll.insert_one(doc! {"_id": next.clone(), "v": format!("{next:?}")})
                .await
                .expect("insert");
            coll.update_one(doc! {"_id": next.clone()}, doc! {"$inc": {"n": 1}})
                .await
                .expect("update");
            current = next;
        }
    }
    cutover_and_complete(m).await;
    assert_eq!(assert_same(&pair.src, &pair.dst).await, 21);
}

/// Pins: a document with a top-level `$`-prefixed field (legal since MongoDB 5.0) failed
/// the run with 52 DollarPrefixedFieldName whenever Ferry wrote it as a replacement: an
/// insert replayed over the copied document (duplicate key), and every update in lookup
/// mode. Such documents are written as a pipeline replacing the document by its literal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_with_dollar_prefixed_fields_converge() {
    let pair = Pair::start().await;
    let coll = pair.src.database("app").collection::<Document>("prices");
    let docs: Vec<Document> = (0..2000)
        .map(|i| doc! {"_id": i, "$price": i, "q": 0, "nested": {"$cur": "EUR"}})
        .collect();
    coll.insert_many(docs).await.expect("seed");
    for mode in ["delta", "lookup"] {
        let dst_db = pair.dst.database("app");
        dst_db.drop().await.expect("reset destination");
        pair.dst
            .database("__ferry")
            .drop()
            .await
            .expect("reset state");
        let m = start(pair.config(&format!(
            "[apply]\nupdate_events = \"{mode}\"\n[copy]\nbatch_max_documents = 100\nparallel_ranges_per_collection = 1\n"
        )))
        .await;
        // Written while the copy runs: replayed over copied documents.
        for i in 0..50 {
            coll.update_one(doc! {"_id": i * 37}, doc! {"$inc": {"q": 1}})
                .await
                .expect("update");
        }
        coll.insert_one(doc! {"_id": 10_000 + mode.len() as i32, "$price": 1, "q": 0})
            .await
            .expect("insert");
        wait_phase(&m.progress, Phase::ReadyForCutover).await;
        for i in 0..50 {
            coll.update_one(
                doc! {"_id": i * 11},
                doc! {"$inc": {"q": 1}, "$set": {"nested.$cur": "USD"}},
            )
            .await
            .expect("update");
        }
        cutover_and_complete(m).await;
        assert!(assert_same(&pair.src, &pair.dst).await >= 2000, "{mode}");
    }
}

/// Pins: collections renamed on the source while the copy runs lost the documents the
/// copy had not reached (the copy read the old name, found nothing; the replayed rename
/// moved the partial copy), the cutover refused, and restarting could not repair it.
/// The copy follows a collection by its UUID: a collection renamed mid-copy is read under
/// its new name into the planned one, and the replayed rename moves it; a new collection
/// created under the old name is not mixed in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collections_renamed_during_the_copy_converge() {
    let pair = Pair::start().await;
    let db = pair.src.database("app");
    for name in ["orders", "users"] {
        let docs: Vec<Document> = (0..3000)
            .map(|i| doc! {"_id": i, "name": name, "pad": "p".repeat(200)})
            .collect();
        db.collection::<Document>(name)
            .insert_many(docs)
            .await
            .expect("seed");
    }
    pair.destination
        .set_latency(std::time::Duration::from_millis(20));
    let m = start(pair.config(
        "[copy]\nbatch_max_documents = 100\nparallel_collections = 1\nparallel_ranges_per_collection = 1\n",
    ))
    .await;
    poll("the copy to start", || copied(&m.progress) > 0).await;
    let admin = pair.src.database("admin");
    admin
        .run_command(doc! {"renameCollection": "app.orders", "to": "app.orders_2026"})
        .await
        .expect("rename orders");
    admin
        .run_command(doc! {"renameCollection": "app.users", "to": "app.people"})
        .await
        .expect("rename users");
    // A new collection under an old name, with other documents.
    db.collection::<Document>("orders")
        .insert_many(
            (0..50)
                .map(|i| doc! {"_id": i, "name": "new orders"})
                .collect::<Vec<_>>(),
        )
        .await
        .expect("new orders");
    assert!(
        copied(&m.progress) < 6000,
        "the copy finished before the renames; the test proves nothing"
    );
    pair.destination.set_latency(std::time::Duration::ZERO);
    cutover_and_complete(m).await;
    assert_eq!(assert_same(&pair.src, &pair.dst).await, 6050);
}

/// Pins: time-series collections were skipped with only a log line, while verification
/// and the report said nothing. They cannot be kept in sync by a change stream, so the
/// preflight refuses them by name with the fix; excluded by the filter, the migration
/// runs and leaves them out knowingly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_series_collections_are_refused_at_validation() {
    let pair = Pair::start().await;
    let db = pair.src.database("app");
    db.run_command(doc! {"create": "metrics", "timeseries": {"timeField": "t", "metaField": "m"}})
        .await
        .expect("create a time-series collection");
    db.collection::<Document>("orders")
        .insert_one(doc! {"_id": 1})
        .await
        .expect("seed");
    let name = "time-series collections (source)";
    let report = ferry::preflight::run_checks(&pair.config("")).await;
    let check = report
        .checks
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no `{name}` line in {report}"));
    assert_eq!(check.status, ferry::preflight::Status::Fail, "{report}");
    assert!(check.message.contains("app.metrics"), "{}", check.message);
    assert!(
        check
            .fix
            .as_deref()
            .unwrap_or_default()
            .contains("exclude_namespaces = [\"app.metrics\"]"),
        "{check:?}"
    );
    let excluded = pair.config("[filter]\nexclude_namespaces = [\"app.metrics\"]\n");
    let report = ferry::preflight::run_checks(&excluded).await;
    assert!(report.passed(), "{report}");
    let m = start(excluded).await;
    cutover_and_complete(m).await;
    let dst_names = pair
        .dst
        .database("app")
        .list_collection_names()
        .await
        .expect("list");
    assert_eq!(dst_names, vec!["orders".to_string()]);
}

/// Documents near the 16 MB limit written while Ferry syncs. With update events carrying
/// the looked-up document, an update's event holds the document and its changed fields,
/// over 16 MB, which a server can only send split (`$changeStreamSplitLargeEvent`);
/// without it the stream fails with BSONObjectTooLarge on every resume. Ferry asks for
/// split events and joins them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_near_the_size_limit_written_during_sync_converge() {
    let pair = Pair::start().await;
    let coll = pair.src.database("app").collection::<Document>("blobs");
    coll.insert_one(doc! {"_id": 0, "small": true})
        .await
        .expect("seed");
    let m = start(pair.config("[apply]\nupdate_events = \"lookup\"\n")).await;
    wait_phase(&m.progress, Phase::ReadyForCutover).await;
    let big = "b".repeat(16 * 1024 * 1024 - 200);
    coll.insert_one(doc! {"_id": 1, "data": &big})
        .await
        .expect("insert a document near 16 MB");
    let half = "h".repeat(8 * 1024 * 1024);
    coll.insert_one(doc! {"_id": 2, "a": &half})
        .await
        .expect("insert");
    coll.update_one(
        doc! {"_id": 2},
        doc! {"$set": {"b": &half[..7 * 1024 * 1024]}},
    )
    .await
    .expect("grow it near the limit");
    coll.insert_one(doc! {"_id": 3, "after": true})
        .await
        .expect("insert");
    cutover_and_complete(m).await;
    assert_eq!(assert_same(&pair.src, &pair.dst).await, 4);
}

/// Multi-document transactions on the source, during the copy and during sync, one of
/// them larger than one 16 MB `applyOps` oplog entry: their events carry `lsid` and
/// `txnNumber` and share cluster times, and Ferry applies them event by event (the
/// destination converges; a transaction's writes are not applied atomically there while
/// syncing, which nobody reads before the cutover).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_on_the_source_converge() {
    let pair = Pair::start().await;
    let accounts = pair.src.database("bank").collection::<Document>("accounts");
    let ledger = pair.src.database("bank").collection::<Document>("ledger");
    accounts
        .insert_many(
            (0..2000)
                .map(|i| doc! {"_id": i, "balance": 100})
                .collect::<Vec<_>>(),
        )
        .await
        .expect("seed");
    pair.destination
        .set_latency(std::time::Duration::from_millis(10));
    let m = start(pair.config("[copy]\nbatch_max_documents = 100\n")).await;
    let transfer = |from: i32, to: i32, n: i32| {
        let client = pair.src.clone();
        let (accounts, ledger) = (accounts.clone(), ledger.clone());
        async move {
            let mut s = client.start_session().await.expect("session");
            s.start_transaction().await.expect("start");
            accounts
                .update_one(doc! {"_id": from}, doc! {"$inc": {"balance": -1}})
                .session(&mut s)
                .await
                .expect("debit");
            accounts
                .update_one(doc! {"_id": to}, doc! {"$inc": {"balance": 1}})
                .session(&mut s)
                .await
                .expect("credit");
            ledger
                .insert_one(doc! {"_id": n, "from": from, "to": to})
                .session(&mut s)
                .await
                .expect("ledger");
            s.commit_transaction().await.expect("commit");
        }
    };
    for n in 0..50 {
        transfer(n * 37 % 2000, n * 91 % 2000, n).await;
    }
    pair.destination.set_latency(std::time::Duration::ZERO);
    wait_phase(&m.progress, Phase::ReadyForCutover).await;
    for n in 50..100 {
        transfer(n * 37 % 2000, n * 91 % 2000, n).await;
    }
    // A transaction over several 16 MB oplog entries, and an aborted one.
    let mut s = pair.src.start_session().await.expect("session");
    s.start_transaction().await.expect("start");
    let blob = "t".repeat(4 * 1024 * 1024);
    for i in 0..6 {
        ledger
            .insert_one(doc! {"_id": 1000 + i, "blob": &blob})
            .session(&mut s)
            .await
            .expect("large transaction");
    }
    s.commit_transaction().await.expect("commit");
    s.start_transaction().await.expect("start");
    ledger
        .insert_one(doc! {"_id": -1, "aborted": true})
        .session(&mut s)
        .await
        .expect("insert");
    s.abort_transaction().await.expect("abort");
    cutover_and_complete(m).await;
    assert_eq!(assert_same(&pair.src, &pair.dst).await, 2106);
}

/// Pins (found by the randomized suite): an update that Ferry applies by reading the
/// source's document was lost when its collection was renamed before Ferry applied it:
/// the read found nothing under the old name and took the document for deleted, and no
/// later event brought the change. The read now follows the collection's UUID.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_read_from_a_collection_renamed_since_converges() {
    let pair = Pair::start().await;
    let coll = pair.src.database("app").collection::<Document>("c0");
    coll.insert_many(
        (0..10)
            .map(|i| doc! {"_id": i, "address": {"$street": "Elm", "n": i}})
            .collect::<Vec<_>>(),
    )
    .await
    .expect("seed");
    let m = start(pair.config("")).await;
    wait_phase(&m.progress, Phase::ReadyForCutover).await;
    while_paused(&m, async {
        // A `$`-prefixed path cannot be replayed as an operator: Ferry reads the document.
        coll.update_one(doc! {"_id": 1}, doc! {"$set": {"address.$street": "Oak"}})
            .await
            .expect("update");
        pair.src
            .database("admin")
            .run_command(doc! {"renameCollection": "app.c0", "to": "app.renamed"})
            .await
            .expect("rename");
    })
    .await;
    cutover_and_complete(m).await;
    assert_eq!(assert_same(&pair.src, &pair.dst).await, 10);
}

/// Guards (the randomized suite's `equal_ids` seeds found it; this shorter scenario did
/// not reproduce it on its own): numerically equal `_id`s of different types changed
/// while the copy runs. The copy takes the newer document (`_id` int32 1), then
/// the replayed insert of the older one (`_id` Decimal128("1")) meets it as a duplicate
/// key, and its replacement failed with 66 ImmutableField (the same key to the server,
/// other bytes). Such a replacement is applied as a delete and an insert.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_of_other_types_changed_during_the_copy_converge() {
    let pair = Pair::start().await;
    let coll = pair.src.database("app").collection::<Document>("ledger");
    let decimal = |s: String| Bson::Decimal128(s.parse::<Decimal128>().expect("decimal"));
    let seed: Vec<Document> = (0..400)
        .map(|i| doc! {"_id": i, "v": "int", "pad": "p".repeat(100)})
        .collect();
    coll.insert_many(seed).await.expect("seed");
    pair.destination
        .set_latency(std::time::Duration::from_millis(20));
    let m = start(pair.config(
        "[copy]\nbatch_max_documents = 20\nparallel_collections = 1\nparallel_ranges_per_collection = 1\n",
    ))
    .await;
    poll("the copy to start", || copied(&m.progress) > 0).await;
    for i in (0..400).rev().step_by(7) {
        coll.delete_one(doc! {"_id": i}).await.expect("delete");
        coll.insert_one(doc! {"_id": decimal(format!("{i}")), "v": "decimal"})
            .await
            .expect("insert");
        coll.delete_one(doc! {"_id": i}).await.expect("delete");
        coll.insert_one(doc! {"_id": i as i64, "v": "long"})
            .await
            .expect("insert");
    }
    pair.destination.set_latency(std::time::Duration::ZERO);
    cutover_and_complete(m).await;
    assert_eq!(assert_same(&pair.src, &pair.dst).await, 400);
}

/// Seeds `app.<name>` with `n` documents (with indexes, so the copy between databases
/// carries them too).
async fn seed_collection(pair: &Pair, name: &str, n: i32) {
    let coll = pair.src.database("app").collection::<Document>(name);
    coll.insert_many(
        (0..n)
            .map(|i| doc! {"_id": i, "name": name, "k": i % 7, "pad": "p".repeat(200)})
            .collect::<Vec<_>>(),
    )
    .await
    .expect("seed");
    pair.src
        .database("app")
        .run_command(doc! {"createIndexes": name, "indexes": [{"key": {"k": 1}, "name": "k_1"}]})
        .await
        .expect("index");
}

async fn rename(pair: &Pair, from: &str, to: &str, drop_target: bool) {
    pair.src
        .database("admin")
        .run_command(doc! {"renameCollection": from, "to": to, "dropTarget": drop_target})
        .await
        .unwrap_or_else(|e| panic!("rename {from} to {to}: {e}"));
}

/// Pins: collections renamed into another database while the copy runs lost documents
/// (the randomized suite's `rename_during_copy`, seeds 1 and 3). A real server carries
/// such a rename out as a copy: a new temporary collection in the target database with
/// its own UUID, one insert per document, a rename of it onto the target, a drop of the
/// source. The sandbox showed one `rename` keeping the UUID instead, so the copy found
/// the collection gone from its database, called the range done, and the replayed rename
/// moved the partial copy. Every timing: a collection renamed while its range is read,
/// one renamed before the copy reached it, one renamed after it was copied (during
/// sync), one onto an existing collection (`dropTarget`), and writes to each afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collections_renamed_into_another_database_during_the_copy_converge() {
    let pair = Pair::start().await;
    // Copied in name order, one collection at a time: items, orders, users.
    seed_collection(&pair, "items", 300).await;
    seed_collection(&pair, "orders", 2000).await;
    seed_collection(&pair, "users", 2000).await;
    pair.destination
        .set_latency(std::time::Duration::from_millis(20));
    let m = start(pair.config(
        "[copy]\nbatch_max_documents = 100\nparallel_collections = 1\nparallel_ranges_per_collection = 1\n",
    ))
    .await;
    // Items are copied and orders are being read.
    poll("the copy to reach orders", || copied(&m.progress) > 400).await;
    rename(&pair, "app.orders", "archive.orders", false).await;
    rename(&pair, "app.users", "archive.people", false).await;
    assert!(
        copied(&m.progress) < 4300,
        "the copy finished before the renames; the test proves nothing"
    );
    let archive = pair.src.database("archive");
    archive
        .collection::<Document>("orders")
        .insert_one(doc! {"_id": "after the rename"})
        .await
        .expect("insert");
    archive
        .collection::<Document>("people")
        .update_many(doc! {"k": 3}, doc! {"$set": {"moved": true}})
        .await
        .expect("update");
    pair.destination.set_latency(std::time::Duration::ZERO);
    wait_phase(&m.progress, Phase::ReadyForCutover).await;
    // After the copy: a copied collection moves, then replaces another one.
    rename(&pair, "app.items", "archive.items", false).await;
    rename(&pair, "archive.items", "other.people", false).await;
    rename(&pair, "archive.people", "other.people", true).await;
    pair.src
        .database("other")
        .collection::<Document>("people")
        .delete_many(doc! {"k": 1})
        .await
        .expect("delete");
    cutover_and_complete(m).await;
    let n = assert_same(&pair.src, &pair.dst).await;
    assert_eq!(n, 2001 + 2000 - 286);
}

/// Pins: with a filter naming collections, a collection renamed into a database of the
/// filter never arrived: a rename between databases fills a temporary collection
/// (`tmpXXXXX.renameCollection`) that no filter names, so its inserts and its rename
/// onto the target were filtered out. They are taken wherever the database may hold
/// migrated collections; a temporary collection renamed onto a target outside the
/// filter is dropped again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rename_into_a_filtered_database_converges() {
    let pair = Pair::start().await;
    seed_collection(&pair, "orders", 500).await;
    seed_collection(&pair, "drafts", 50).await;
    let m =
        start(pair.config("[filter]\ninclude_namespaces = [\"app\", \"archive.orders\"]\n")).await;
    wait_phase(&m.progress, Phase::ReadyForCutover).await;
    rename(&pair, "app.orders", "archive.orders", false).await;
    // Out of scope once renamed: gone from the destination too.
    rename(&pair, "app.drafts", "archive.drafts", false).await;
    cutover_and_complete(m).await;
    let orders = documents(&pair.src, "archive", "orders").await;
    assert_eq!(orders.len(), 500);
    assert_eq!(documents(&pair.dst, "archive", "orders").await, orders);
    assert_eq!(
        indexes(&pair.src, "archive", "orders").await,
        indexes(&pair.dst, "archive", "orders").await
    );
    let left: Vec<String> = pair
        .dst
        .database("archive")
        .list_collection_names()
        .await
        .expect("list");
    assert_eq!(left, vec!["orders".to_string()], "nothing else in archive");
    assert!(documents(&pair.dst, "app", "drafts").await.is_empty());
}

/// Pins: an update that moves fields (a pipeline `[{$set: {b: "$a"}}, {$unset: "a"}]`,
/// a `$replaceWith` putting a field ahead of the others, a subdocument whose fields
/// change order) is logged by the server as fields inserted again at the end, and the
/// change event reports them among `updatedFields`; replayed as `$set` they stayed in
/// place, the destination's field order differed, and the cutover refused. Also an
/// update that truncates an array and changes an element below the new size (one
/// update with `$set` and `$push` on one array is refused with 40).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fields_moved_by_pipeline_updates_converge() {
    let pair = Pair::start().await;
    let coll = pair.src.database("app").collection::<Document>("moves");
    let pad = "p".repeat(300);
    let long = "l".repeat(60);
    coll.insert_many(
        (0..20)
            .map(|i| {
                doc! {"_id": i, "pad": &pad, "a": i, "sub": {"p": &pad, "x": 1, "y": 2},
                "arr": [&long, &long, &long, &long, &long, &long], "z": "last"}
            })
            .collect::<Vec<_>>(),
    )
    .await
    .expect("seed");
    let m = start(pair.config("")).await;
    wait_phase(&m.progress, Phase::ReadyForCutover).await;
    let update = |filter: Document, pipeline: Vec<Document>| {
        let coll = coll.clone();
        async move {
            coll.update_many(filter, pipeline)
                .await
                .expect("pipeline update");
        }
    };
    update(
        doc! {"_id": {"$lt": 5}},
        vec![doc! {"$set": {"b": "$a"}}, doc! {"$unset": "a"}],
    )
    .await;
    update(
        doc! {"_id": {"$gte": 5, "$lt": 10}},
        vec![
            doc! {"$replaceWith": {"$mergeObjects": [{"_id": "$_id", "pad": "$pad", "moved": "$z"}, "$$ROOT"]}},
        ],
    )
    .await;
    update(
        doc! {"_id": {"$gte": 10, "$lt": 15}},
        vec![doc! {"$set": {"sub": {"$mergeObjects": [{"p": "$sub.p", "y": "$sub.y"}, "$sub"]}}}],
    )
    .await;
    update(
        doc! {"_id": {"$gte": 15}},
        vec![doc! {"$set": {"arr": [
            {"$arrayElemAt": ["$arr", 0]},
            {"$arrayElemAt": ["$arr", 1]},
            {"$arrayElemAt": ["$arr", 2]},
            "new",
        ]}}],
    )
    .await;
    cutover_and_complete(m).await;
    assert_eq!(assert_same(&pair.src, &pair.dst).await, 20);
}

/// Pins (the randomized suite's `rename_during_copy`, seeds 94, 209, 282, 317 and 385):
/// a collection renamed after the start time but before the copy plan listed the
/// collections ended on the destination short of documents and of its indexes. The plan
/// named it by its new name, so the copy landed there; the change stream then replayed
/// the writes made under the old name (re-reading each document from the source, so the
/// old name came back on the destination holding just those) and the rename onto the
/// new name, which replaced the whole copy with them. The plan now names every collection
/// as it was named at the start time, where the stream's first events find it.
///
/// The start time's majority wait is held by a fail point (after its no-op is written),
/// so the writes and the rename land between the start time and the plan every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collection_renamed_before_the_copy_plan_converges() {
    let pair = Pair::start().await;
    seed_collection(&pair, "orders", 300).await;
    pair.src
        .database("app")
        .run_command(doc! {"createIndexes": "orders", "indexes": [
            {"key": {"at": 1}, "name": "at_ttl", "expireAfterSeconds": 31_536_000},
        ]})
        .await
        .expect("ttl index");
    pair.src
        .database("admin")
        .run_command(doc! {
            "configureFailPoint": "failCommand",
            "mode": {"times": 1},
            "data": {
                "failCommands": ["find"],
                "namespace": "admin.ferry_majority_probe",
                "blockConnection": true,
                "blockTimeMS": 3000,
            },
        })
        .await
        .expect("fail point");
    let (src, dst) = (pair.src.clone(), pair.dst.clone());
    let writes = tokio::spawn(async move {
        let oplog = src.database("local").collection::<Document>("oplog.rs");
        let deadline = std::time::Instant::now() + DEADLINE;
        while oplog
            .find_one(doc! {"o.ferry": "ferry start"})
            .await
            .expect("read the oplog")
            .is_none()
        {
            assert!(
                std::time::Instant::now() < deadline,
                "no start time was recorded"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let orders = src.database("app").collection::<Document>("orders");
        // Writes Ferry replays as whole documents (they bring the old name back on the
        // destination), and one it replays as a delta.
        orders
            .insert_one(doc! {"_id": 1000, "name": "orders", "k": 2})
            .await
            .expect("insert before the rename");
        orders
            .replace_one(doc! {"_id": 7}, doc! {"name": "replaced", "k": 7})
            .await
            .expect("replace before the rename");
        orders
            .update_many(doc! {"k": 2}, doc! {"$set": {"before": "rename"}})
            .await
            .expect("update before the rename");
        src.database("admin")
            .run_command(doc! {"renameCollection": "app.orders", "to": "app.orders_2026"})
            .await
            .expect("rename");
        let state = dst
            .database("__ferry")
            .collection::<Document>("state")
            .find_one(doc! {})
            .await
            .expect("read the run state");
        assert!(
            state.is_none_or(|s| !s.contains_key("start_ts")),
            "the start time was saved before the rename; the plan may have seen the old name and the test proves nothing"
        );
        src.database("app")
            .collection::<Document>("orders_2026")
            .update_many(doc! {"k": 3}, doc! {"$set": {"after": "rename"}})
            .await
            .expect("update after the rename");
    });
    let m = start(pair.config("")).await;
    writes.await.expect("writes around the plan");
    cutover_and_complete(m).await;
    assert_eq!(assert_same(&pair.src, &pair.dst).await, 301);
}
