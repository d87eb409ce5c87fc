//! A collection renamed, and another dropped, while the copy's cursor on it is open: the
//! source kills the cursor (its next getMore fails with 175 QueryPlanKilled, as a real
//! mongod answers), the copy of that range starts again from its checkpoint (finding the
//! renamed collection by UUID, or nothing left of the dropped one), the change stream
//! replays the rename and the drop, and the destination ends up equal to the source.
//!
//! The timing is not left to luck: fail points hold the copy at a known point with its
//! cursor open (a getMore on the source, an insert on the destination) while the test
//! runs the DDL, and the source counts the getMores it failed with 175.

mod common;

use bson::{doc, Document};
use common::sharded::{shard_collection, shard_key, Topologies};
use common::*;
use ferry::progress::Phase;
use mongodb::Client;

/// Documents per collection: many copy batches of [`BATCH`], so the copy's cursor needs
/// several getMores.
const DOCS: i32 = 1000;
/// Copy batch (and cursor batch) size.
const BATCH: usize = 100;
/// How long a fail point holds the command it catches: the test's DDL runs meanwhile.
const HOLD_MS: i64 = 5000;

async fn fill(client: &Client, coll: &str) {
    client
        .database("app")
        .collection::<Document>(coll)
        .insert_many((0..DOCS).map(|i| doc! {"_id": i, "coll": coll, "pad": "x".repeat(64)}))
        .await
        .unwrap();
}

/// Holds the next `command` on `ns` of `client`'s server for [`HOLD_MS`], then runs it.
async fn hold_next(client: &Client, command: &str, ns: &str) {
    client
        .database("admin")
        .run_command(doc! {
            "configureFailPoint": "failCommand",
            "mode": {"times": 1},
            "data": {
                "failCommands": [command],
                "namespace": ns,
                "blockConnection": true,
                "blockTimeMS": HOLD_MS,
            },
        })
        .await
        .expect("fail point");
}

/// Copies app.big, app.gone and app.kept while `ddl` runs on its database at the moment `held` (the
/// source or destination sandbox whose fail point `hold_next` set) holds the copy; then
/// asserts that the DDL killed a copy cursor, and that after cutover the destination
/// equals the source.
async fn copy_with_ddl_under_open_cursor(
    pair: &Pair,
    held: &ferry_sandbox::Sandbox,
    entered_before: u64,
    (db, ddl): (&str, Document),
) {
    let killed_before = pair.source.query_plans_killed();
    let m = start(pair.config(&format!(
        "[copy]\nbatch_max_documents = {BATCH}\nparallel_collections = 3\nparallel_ranges_per_collection = 1\n"
    )))
    .await;
    poll("the copy to be held by the fail point", || {
        held.fail_points_entered() > entered_before
    })
    .await;
    pair.src.database(db).run_command(ddl).await.expect("ddl");
    poll("the source to kill the copy's cursor", || {
        pair.source.query_plans_killed() > killed_before
    })
    .await;
    wait_phase(&m.progress, Phase::ReadyForCutover).await;
    cutover_and_complete(m).await;
    assert_same(&pair.src, &pair.dst).await;
}

async fn collections(client: &Client) -> Vec<String> {
    let mut names = client
        .database("app")
        .list_collection_names()
        .await
        .unwrap();
    names.sort();
    names
}

/// Pins: a collection renamed under the copy's open cursor. A real source kills that
/// cursor (175 QueryPlanKilled); the copy must read the range again from the renamed
/// collection and the run converge. (The sandbox used to keep such cursors alive, so
/// this path was never exercised.) The copy of app.big is held in a getMore, its cursor
/// open, while the rename runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_under_an_open_copy_cursor_converges() {
    let pair = Pair::start().await;
    for coll in ["big", "gone", "kept"] {
        fill(&pair.src, coll).await;
    }
    let entered = pair.source.fail_points_entered();
    hold_next(&pair.src, "getMore", "app.big").await;
    copy_with_ddl_under_open_cursor(
        &pair,
        &pair.source,
        entered,
        (
            "admin",
            doc! {"renameCollection": "app.big", "to": "app.big_renamed"},
        ),
    )
    .await;
    assert_eq!(
        collections(&pair.dst).await,
        ["big_renamed", "gone", "kept"]
    );
}

/// Pins: a collection dropped under the copy's open cursor (175 QueryPlanKilled on the
/// next getMore): the copy must find nothing left to copy there and the run converge.
/// The copy of app.gone is held in its first insert on the destination, by when its
/// cursor is open on the source and its next getMores are still to come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_under_an_open_copy_cursor_converges() {
    let pair = Pair::start().await;
    for coll in ["big", "gone", "kept"] {
        fill(&pair.src, coll).await;
    }
    let entered = pair.destination.fail_points_entered();
    hold_next(&pair.dst, "insert", "app.gone").await;
    copy_with_ddl_under_open_cursor(
        &pair,
        &pair.destination,
        entered,
        ("app", doc! {"drop": "gone"}),
    )
    .await;
    assert_eq!(collections(&pair.dst).await, ["big", "kept"]);
}

/// Pins: a collection renamed while the copy plan samples it. The plan reads a sample of
/// `_id`s through a cursor (more than a first batch when a collection is split into many
/// ranges); the source kills it (175 QueryPlanKilled) and the run failed for good, as if
/// the error could never pass. Planning again finds the collection under its new name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_under_the_plans_sample_cursor_converges() {
    let pair = Pair::start().await;
    fill(&pair.src, "big").await;
    let entered = pair.source.fail_points_entered();
    // The first getMore on app.big is the plan's: 8 ranges of 1000 documents in batches
    // of 100 sample 160 `_id`s, more than the first batch's 101.
    hold_next(&pair.src, "getMore", "app.big").await;
    let killed_before = pair.source.query_plans_killed();
    let m = start(pair.config(&format!(
        "[copy]\nbatch_max_documents = {BATCH}\nparallel_ranges_per_collection = 8\n"
    )))
    .await;
    poll("the plan's sample getMore to be held", || {
        pair.source.fail_points_entered() > entered
    })
    .await;
    pair.src
        .database("admin")
        .run_command(doc! {"renameCollection": "app.big", "to": "app.big_renamed"})
        .await
        .expect("rename");
    poll("the source to kill the plan's cursor", || {
        pair.source.query_plans_killed() > killed_before
    })
    .await;
    wait_phase(&m.progress, Phase::ReadyForCutover).await;
    cutover_and_complete(m).await;
    assert_eq!(assert_same(&pair.src, &pair.dst).await, DOCS as usize);
    assert_eq!(collections(&pair.dst).await, ["big_renamed"]);
}

/// [`copy_with_ddl_under_open_cursor`] between two-shard clusters: app.big, app.gone and
/// app.kept are sharded on a hashed `_id` on the source, so the copy reads them through
/// the source's router, whose cursor dies with the collection (the shards kill theirs).
async fn sharded_copy_with_ddl_under_open_cursor(
    held: impl Fn(&Topologies) -> &ferry_sandbox::Sandbox,
    hold: (&str, &str),
    (db, ddl): (&str, Document),
) -> Topologies {
    let t = Topologies::start(2, 2).await;
    for coll in ["big", "gone", "kept"] {
        shard_collection(&t.src, &format!("app.{coll}"), doc! {"_id": "hashed"}).await;
        fill(&t.src, coll).await;
    }
    let src_router = t.source.sharded().expect("a sharded source").router();
    let held_by = held(&t);
    let entered = held_by.fail_points_entered();
    let client = if std::ptr::eq(held_by, src_router) {
        &t.src
    } else {
        &t.dst
    };
    hold_next(client, hold.0, hold.1).await;
    let killed_before = src_router.query_plans_killed();
    let m = start(t.config(&format!(
        "[copy]\nbatch_max_documents = {BATCH}\nparallel_collections = 3\nparallel_ranges_per_collection = 1\n"
    )))
    .await;
    poll("the copy to be held by the fail point", || {
        held_by.fail_points_entered() > entered
    })
    .await;
    t.src.database(db).run_command(ddl).await.expect("ddl");
    poll("the source's router to kill the copy's cursor", || {
        src_router.query_plans_killed() > killed_before
    })
    .await;
    wait_phase(&m.progress, Phase::ReadyForCutover).await;
    cutover_and_complete(m).await;
    assert_same(&t.src, &t.dst).await;
    t
}

/// A sharded source collection renamed while the copy's cursor on it is open through the
/// router: the copy reads the range again under the new name and the run converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sharded_collection_renamed_under_an_open_copy_cursor_converges() {
    let t = sharded_copy_with_ddl_under_open_cursor(
        |t| t.source.sharded().expect("a sharded source").router(),
        ("getMore", "app.big"),
        (
            "admin",
            doc! {"renameCollection": "app.big", "to": "app.big_renamed"},
        ),
    )
    .await;
    assert_eq!(collections(&t.dst).await, ["big_renamed", "gone", "kept"]);
    assert_eq!(
        shard_key(&t.dst, "app.big_renamed").await,
        Some(doc! {"_id": "hashed"}),
        "the renamed collection keeps its shard key on the destination"
    );
}

/// A sharded source collection dropped while the copy's cursor on it is open through the
/// router (its first insert held on the destination's router): nothing of it is left on
/// the destination.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sharded_collection_dropped_under_an_open_copy_cursor_converges() {
    let t = sharded_copy_with_ddl_under_open_cursor(
        |t| {
            t.destination
                .sharded()
                .expect("a sharded destination")
                .router()
        },
        ("insert", "app.gone"),
        ("app", doc! {"drop": "gone"}),
    )
    .await;
    assert_eq!(collections(&t.dst).await, ["big", "kept"]);
}
