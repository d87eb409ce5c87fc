//! Balancers of sharded sides (issue 10, part 6): stopped on both sides at the start after
//! their settings (mode, `activeWindow`, per-collection `noBalance`) are recorded in
//! `__ferry`, and restored exactly in every ending — completed, cancelled, failed,
//! expired, and a cancel that comes in a later `ferry run` after a kill -9. One restarted
//! by someone else mid-run is stopped again and reported; one that cannot be restored is
//! reported with the commands to run. A `movePrimary` on the source during sync stops
//! the run, naming the database.

mod common;

use std::time::{Duration, Instant};

use bson::{doc, Document};
use common::sharded::{shard_collection, Topologies};
use common::*;
use ferry::control::ControlRequest;
use ferry::progress::Phase;
use mongodb::Client;

/// The namespace made sharded with `noBalance` on the source.
const NO_BALANCE_NS: &str = "shop.counters";

/// A balancer's settings as an operator sees them: mode, active window, and the
/// collections it leaves alone.
#[derive(Debug, PartialEq)]
struct Settings {
    mode: String,
    active_window: Option<Document>,
    no_balance: Vec<String>,
}

async fn settings(router: &Client) -> Settings {
    let status = router
        .database("admin")
        .run_command(doc! {"balancerStatus": 1})
        .await
        .expect("balancerStatus");
    let config = router.database("config");
    let active_window = config
        .collection::<Document>("settings")
        .find_one(doc! {"_id": "balancer"})
        .await
        .expect("read config.settings")
        .and_then(|d| d.get_document("activeWindow").ok().cloned());
    let mut no_balance = Vec::new();
    let mut cursor = config
        .collection::<Document>("collections")
        .find(doc! {"noBalance": true})
        .await
        .expect("read config.collections");
    while cursor.advance().await.expect("read config.collections") {
        let entry = cursor
            .deserialize_current()
            .expect("a config.collections entry");
        no_balance.push(entry.get_str("_id").expect("_id").to_string());
    }
    no_balance.sort();
    Settings {
        mode: status.get_str("mode").expect("mode").to_string(),
        active_window,
        no_balance,
    }
}

/// Turns the balancer on with an active window covering the whole day.
async fn run_balancer(router: &Client) {
    router
        .database("config")
        .collection::<Document>("settings")
        .update_one(
            doc! {"_id": "balancer"},
            doc! {"$set": {"activeWindow": {"start": "00:00", "stop": "23:59"}}},
        )
        .upsert(true)
        .await
        .expect("set the balancer's activeWindow");
    router
        .database("admin")
        .run_command(doc! {"balancerStart": 1})
        .await
        .expect("balancerStart");
}

/// A sharded source (`source_shards`) and destination (`destination_shards`, 0: a
/// replica set) whose balancers run with an active window; on the source, seeded data
/// and a sharded collection with `noBalance`. Returns them with each side's settings.
async fn balanced(
    source_shards: usize,
    destination_shards: usize,
) -> (Topologies, Settings, Option<Settings>) {
    let t = Topologies::start(source_shards, destination_shards).await;
    seed(&t.src, "shop", 300).await;
    shard_collection(&t.src, NO_BALANCE_NS, doc! {"_id": 1}).await;
    t.src
        .database("config")
        .collection::<Document>("collections")
        .update_one(
            doc! {"_id": NO_BALANCE_NS},
            doc! {"$set": {"noBalance": true}},
        )
        .await
        .expect("sh.disableBalancing on the source");
    run_balancer(&t.src).await;
    let source = settings(&t.src).await;
    assert_eq!(source.mode, "full");
    assert_eq!(source.no_balance, vec![NO_BALANCE_NS.to_string()]);
    let destination = if t.destination.is_sharded() {
        run_balancer(&t.dst).await;
        Some(settings(&t.dst).await)
    } else {
        None
    };
    (t, source, destination)
}

/// Waits until a router's balancer is off.
async fn wait_balancer_off(router: &Client, what: &str) {
    let deadline = Instant::now() + DEADLINE;
    while settings(router).await.mode != "off" {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for the {what} balancer to be stopped"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Makes the router refuse `balancerStart` (13 Unauthorized) while `on`, so a restore
/// fails; or lets it through again.
async fn fail_balancer_start(router: &Client, on: bool) {
    let command = if on {
        doc! {
            "configureFailPoint": "failCommand",
            "mode": "alwaysOn",
            "data": {"failCommands": ["balancerStart"], "errorCode": 13},
        }
    } else {
        doc! {"configureFailPoint": "failCommand", "mode": "off"}
    };
    router
        .database("admin")
        .run_command(command)
        .await
        .expect("configure the router's failCommand on balancerStart");
}

/// While the run goes on: both balancers are off, and the source's settings from before
/// are recorded in `__ferry`.
async fn assert_stopped_and_recorded(t: &Topologies) {
    wait_balancer_off(&t.src, "source").await;
    if t.destination.is_sharded() {
        wait_balancer_off(&t.dst, "destination").await;
    }
    let state = t
        .dst
        .database("__ferry")
        .collection::<Document>("state")
        .find_one(doc! {"_id": "state"})
        .await
        .expect("read __ferry.state")
        .expect("the run's state");
    let recorded = state
        .get_document("balancers_before")
        .and_then(|b| b.get_document("source"))
        .expect("the source balancer's settings are recorded");
    assert_eq!(recorded.get_str("mode"), Ok("full"), "{recorded}");
}

/// After the ending: each side's balancer is exactly as it was before the run.
async fn assert_restored(t: &Topologies, source: &Settings, destination: &Option<Settings>) {
    assert_eq!(&settings(&t.src).await, source, "the source's balancer");
    if let Some(destination) = destination {
        assert_eq!(
            &settings(&t.dst).await,
            destination,
            "the destination's balancer"
        );
    }
}

/// Pins: the balancers were stopped with a boolean of "Ferry stopped it" and restarted
/// with balancerStart, so a stop or start by anyone else, an activeWindow or a noBalance
/// collection was not what the ending put back, and balancerStop's round in progress was
/// not waited for. Now the settings are recorded and restored exactly on completion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balancers_are_stopped_then_restored_exactly_on_completion() {
    let (t, source, destination) = balanced(2, 1).await;
    let m = start(t.config("")).await;
    wait_phase(&m.progress, Phase::ReadyForCutover).await;
    assert_stopped_and_recorded(&t).await;
    let outcome = cutover_and_complete(m).await;
    assert_eq!(outcome.phase, Phase::Completed);
    assert_restored(&t, &source, &destination).await;
    assert_same(&t.src, &t.dst).await;
}

/// Pins the same as on completion, for a cancel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balancers_are_restored_exactly_on_cancel() {
    let (t, source, destination) = balanced(1, 1).await;
    let m = start(t.config("")).await;
    wait_phase(&m.progress, Phase::ReadyForCutover).await;
    assert_stopped_and_recorded(&t).await;
    let reply = m.control.request(ControlRequest::Cancel).await;
    assert!(reply.is_ok(), "{reply:?}");
    assert_eq!(wait(m).await.phase, Phase::Cancelled);
    assert_restored(&t, &source, &destination).await;
}

/// Pins the same for a run that fails (its lease taken away by another process).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balancers_are_restored_exactly_when_the_run_fails() {
    let (t, source, destination) = balanced(1, 1).await;
    let m = start(config_with_runtime(
        &t.source.uri(),
        &t.destination.uri(),
        "lease_seconds = 3\n",
        "",
    ))
    .await;
    wait_phase(&m.progress, Phase::ReadyForCutover).await;
    assert_stopped_and_recorded(&t).await;
    let in_an_hour =
        bson::DateTime::from_millis(bson::DateTime::now().timestamp_millis() + 3_600_000);
    t.dst
        .database("__ferry")
        .collection::<Document>("lock")
        .update_one(
            doc! {"_id": "lock"},
            doc! {"$set": {"owner": "ferry-00000000000000ff", "host": "other", "pid": 1i64, "expires_at": in_an_hour}},
        )
        .await
        .expect("hand the lease to another process");
    assert_eq!(wait(m).await.phase, Phase::Failed);
    assert_restored(&t, &source, &destination).await;
}

/// Pins the same for a cutover window that expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balancers_are_restored_exactly_when_the_window_expires() {
    let (t, source, destination) = balanced(1, 1).await;
    let m = start(t.config(
        "[cutover]\nwindow_hours = 0.002\nlag_threshold_seconds = 1\nwarn_before_expiry_hours = []\n",
    ))
    .await;
    wait_phase(&m.progress, Phase::ReadyForCutover).await;
    assert_stopped_and_recorded(&t).await;
    assert_eq!(wait(m).await.phase, Phase::Expired);
    assert_restored(&t, &source, &destination).await;
}

/// Pins: a `ferry run` killed with -9 and started again must not record the balancers as
/// it finds them — stopped, by the killed run — or the cancel that ends the second run
/// leaves them stopped. The first record is kept, and the ending restores it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_then_restart_then_cancel_restores_the_balancers_as_first_found() {
    let (t, source, destination) = balanced(1, 1).await;
    let port = free_port();
    let path = config_file(
        &t.source.uri(),
        &t.destination.uri(),
        port,
        "[runtime]\nidle_noop_interval_seconds = 1\ncheckpoint_interval_seconds = 1\nlease_seconds = 3\n",
    );
    let mut child = spawn_ferry_run(&path);
    let api = ferry::api::client::ApiClient::new(&format!("http://127.0.0.1:{port}"))
        .expect("API client");
    wait_child_phase(&api, "ready_for_cutover").await;
    assert_stopped_and_recorded(&t).await;
    child.kill().expect("kill -9 the ferry run");
    child.wait().expect("reap the killed ferry run");
    let child = spawn_ferry_run(&path);
    wait_child_phase(&api, "ready_for_cutover").await;
    let reply = api
        .post_json("/api/v1/cancel", &serde_json::json!({}))
        .await
        .expect("the restarted run's API answers");
    assert!(reply.is_success(), "cancel refused");
    let (status, output) = wait_child(child).await;
    assert!(output.contains("cancelled"), "{status:?}: {output}");
    assert_restored(&t, &source, &destination).await;
    let _ = std::fs::remove_dir_all(path.parent().expect("config directory"));
}

/// Pins: a balancer someone started while Ferry copied and synced ran on, moving chunks
/// under the copy, and nobody was told; settings changed mid-run (an active window
/// removed, a collection's `noBalance` lifted) stayed changed. Now the balancer is
/// stopped again, the progress says so, and the ending restores the settings from
/// before the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_balancer_started_by_someone_else_mid_run_is_stopped_again_and_reported() {
    let (t, source, destination) = balanced(1, 1).await;
    let m = start(t.config("")).await;
    wait_phase(&m.progress, Phase::ReadyForCutover).await;
    assert_stopped_and_recorded(&t).await;
    t.src
        .database("admin")
        .run_command(doc! {"balancerStart": 1})
        .await
        .expect("someone starts the source's balancer");
    t.src
        .database("config")
        .collection::<Document>("settings")
        .update_one(
            doc! {"_id": "balancer"},
            doc! {"$unset": {"activeWindow": 1}},
        )
        .await
        .expect("someone removes the active window");
    t.src
        .database("config")
        .collection::<Document>("collections")
        .update_one(
            doc! {"_id": NO_BALANCE_NS},
            doc! {"$set": {"noBalance": false}},
        )
        .await
        .expect("someone enables balancing of the collection");
    poll("a warning about the restarted balancer", || {
        !m.progress.balancer_warnings.read().is_empty()
    })
    .await;
    let warning = m.progress.balancer_warnings.read()[0].clone();
    assert!(
        warning.contains("source") && warning.contains("stopped it again"),
        "{warning}"
    );
    wait_balancer_off(&t.src, "source").await;
    let reply = m.control.request(ControlRequest::Cancel).await;
    assert!(reply.is_ok(), "{reply:?}");
    assert_eq!(wait(m).await.phase, Phase::Cancelled);
    assert_restored(&t, &source, &destination).await;
}

/// Pins: a balancer that could not be restarted was only logged, with no command to run:
/// `GET /api/v1/progress` and the report said nothing. Now both carry the warning, with
/// the commands that put the recorded settings back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_balancer_that_cannot_be_restored_is_reported_with_the_commands_to_run() {
    let (t, _source, _destination) = balanced(1, 0).await;
    let port = free_port();
    let path = config_file(
        &t.source.uri(),
        &t.destination.uri(),
        port,
        "[runtime]\nidle_noop_interval_seconds = 1\ncheckpoint_interval_seconds = 1\n",
    );
    // Kept serving after the ending, so its progress and report can be read.
    let mut child = spawn_ferry_run_with(&path, false);
    let api = ferry::api::client::ApiClient::new(&format!("http://127.0.0.1:{port}"))
        .expect("API client");
    wait_child_phase(&api, "ready_for_cutover").await;
    assert_stopped_and_recorded(&t).await;
    fail_balancer_start(&t.src, true).await;
    child_cutover(&api).await;
    wait_child_phase(&api, "completed").await;
    let deadline = Instant::now() + DEADLINE;
    let progress = loop {
        let progress: serde_json::Value = api
            .get_json("/api/v1/progress")
            .await
            .expect("progress after the run");
        if progress["balancer_warnings"]
            .as_array()
            .is_some_and(|w| !w.is_empty())
        {
            break progress;
        }
        assert!(Instant::now() < deadline, "no balancer warning: {progress}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let warning = progress["balancer_warnings"][0]
        .as_str()
        .expect("a warning")
        .to_string();
    assert!(
        warning.contains("sh.startBalancer()")
            && warning.contains("\"start\":\"00:00\"")
            && warning.contains(&format!("sh.disableBalancing(\"{NO_BALANCE_NS}\")")),
        "{warning}"
    );
    let report: serde_json::Value = api
        .get_json("/api/v1/report")
        .await
        .expect("the report after the run");
    assert_eq!(
        report["balancer_warnings"][0].as_str(),
        Some(warning.as_str()),
        "{report}"
    );
    let _ = child.kill();
    let _ = child.wait();
    fail_balancer_start(&t.src, false).await;
    let _ = std::fs::remove_dir_all(path.parent().expect("config directory"));
}

/// Pins: a run that could not restore the source's balancer (cancelled while
/// balancerStart failed) left it stopped with its settings recorded in `__ferry`; the
/// operator starting over with `clear_destination = true` had that record dropped with
/// the checkpoints, so the new run recorded "stopped" and its completion left the
/// balancer off. The record now outlives the reset, and the completion restores the
/// settings found before the first run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starting_over_after_a_failed_restore_restores_the_balancer_as_first_found() {
    let (t, source, _destination) = balanced(1, 0).await;
    let m = start(t.config("")).await;
    wait_phase(&m.progress, Phase::ReadyForCutover).await;
    assert_stopped_and_recorded(&t).await;
    fail_balancer_start(&t.src, true).await;
    let reply = m.control.request(ControlRequest::Cancel).await;
    assert!(reply.is_ok(), "{reply:?}");
    assert_eq!(wait(m).await.phase, Phase::Cancelled);
    fail_balancer_start(&t.src, false).await;
    assert_eq!(settings(&t.src).await.mode, "off", "the restore failed");

    let mut again = t.config("");
    again.destination.clear_destination = true;
    again.destination.confirm_destination_name = Some("dst".into());
    let m = start(again).await;
    wait_phase(&m.progress, Phase::ReadyForCutover).await;
    cutover_and_complete(m).await;
    assert_restored(&t, &source, &None).await;
}

/// Pins: a `movePrimary` of a migrated database during sync went unnoticed (it has no
/// change event), so the run went on from a source whose unsharded collections had moved.
/// Now the run stops, naming the database and what to do, and restores the balancers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_primary_during_sync_stops_the_run_naming_the_database() {
    let (t, source, destination) = balanced(2, 0).await;
    let m = start(t.config("")).await;
    wait_phase(&m.progress, Phase::ReadyForCutover).await;
    let database = t
        .src
        .database("config")
        .collection::<Document>("databases")
        .find_one(doc! {"_id": "shop"})
        .await
        .expect("read config.databases")
        .expect("shop has an entry");
    let primary = database.get_str("primary").expect("a primary shard");
    let other = t
        .source
        .sharded()
        .expect("a sharded source")
        .shards()
        .map(|(name, _)| name.to_string())
        .find(|name| name != primary)
        .expect("a second shard");
    t.src
        .database("admin")
        .run_command(doc! {"movePrimary": "shop", "to": other.as_str()})
        .await
        .expect("movePrimary");
    poll("the run to stop after the movePrimary", || m.is_finished()).await;
    let outcome = wait(m).await;
    assert_eq!(outcome.phase, Phase::Failed);
    let error = outcome.error.unwrap_or_default();
    assert!(
        error.contains("database shop") && error.contains("movePrimary"),
        "{error}"
    );
    assert_restored(&t, &source, &destination).await;
}

/// Pins: a shard added to the source during sync went unnoticed (shard membership has no
/// change event). Now the run stops, naming the shard, and restores the balancers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_added_to_the_source_during_sync_stops_the_run_naming_it() {
    let (mut t, source, destination) = balanced(1, 0).await;
    let m = start(t.config("")).await;
    wait_phase(&m.progress, Phase::ReadyForCutover).await;
    let common::sharded::Deployment::Sharded(cluster) = &mut t.source else {
        panic!("a sharded source");
    };
    let (name, host) = cluster.start_shard().expect("a new shard starts");
    t.src
        .database("admin")
        .run_command(doc! {"addShard": host})
        .await
        .expect("addShard");
    poll("the run to stop after the addShard", || m.is_finished()).await;
    let outcome = wait(m).await;
    assert_eq!(outcome.phase, Phase::Failed);
    let error = outcome.error.unwrap_or_default();
    assert!(
        error.contains(&format!("shard {name} was added")),
        "{error}"
    );
    assert_restored(&t, &source, &destination).await;
}

/// Pins: the metadata watch compared with what each process found when it started, so a
/// `movePrimary` made while Ferry was down (after a kill -9) went unnoticed by the
/// restarted run. Now the first run's snapshot is recorded in `__ferry` and the restarted
/// run stops, naming the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_primary_while_ferry_is_down_stops_the_restarted_run() {
    let (t, source, destination) = balanced(2, 0).await;
    let port = free_port();
    let path = config_file(
        &t.source.uri(),
        &t.destination.uri(),
        port,
        "[runtime]\nidle_noop_interval_seconds = 1\ncheckpoint_interval_seconds = 1\nlease_seconds = 3\n",
    );
    let mut child = spawn_ferry_run(&path);
    let api = ferry::api::client::ApiClient::new(&format!("http://127.0.0.1:{port}"))
        .expect("API client");
    wait_child_phase(&api, "ready_for_cutover").await;
    child.kill().expect("kill -9 the ferry run");
    child.wait().expect("reap the killed ferry run");
    let database = t
        .src
        .database("config")
        .collection::<Document>("databases")
        .find_one(doc! {"_id": "shop"})
        .await
        .expect("read config.databases")
        .expect("shop has an entry");
    let primary = database.get_str("primary").expect("a primary shard");
    let other = t
        .source
        .sharded()
        .expect("a sharded source")
        .shards()
        .map(|(name, _)| name.to_string())
        .find(|name| name != primary)
        .expect("a second shard");
    t.src
        .database("admin")
        .run_command(doc! {"movePrimary": "shop", "to": other.as_str()})
        .await
        .expect("movePrimary while Ferry is down");
    let (status, output) = wait_child(spawn_ferry_run(&path)).await;
    assert!(!status.success(), "{output}");
    assert!(
        output.contains("database shop") && output.contains("movePrimary"),
        "{output}"
    );
    assert_restored(&t, &source, &destination).await;
    let _ = std::fs::remove_dir_all(path.parent().expect("config directory"));
}
