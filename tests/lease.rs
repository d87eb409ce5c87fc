//! One writer per destination (issue 8): the destination lease names one process; a
//! second `ferry run` refuses to start and names the holder; a run restarted after its
//! holder died takes the expired lease over; a holder whose lease is taken away stops
//! writing.

mod common;

use bson::{doc, DateTime, Document};
use common::*;
use ferry::checkpoint::lease::{host_name, process_owner};
use ferry::control::ControlRequest;
use ferry::progress::Phase;

/// Pins: a second `ferry run` with the same config (another `api.listen`) while one runs
/// was let in, because the lock recognised "the same migration" by a hash of the URIs;
/// both wrote to the destination. Now it exits non-zero naming the holder's host, pid
/// and since when.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_on_the_same_destination_refuses_to_start() {
    let pair = Pair::start().await;
    seed(&pair.src, "app", 300).await;
    let m = start(pair.config("")).await;
    wait_phase(&m.progress, Phase::ReadyForCutover).await;
    let lease = lock(&pair.dst)
        .await
        .expect("the running migration holds the lease");
    let since = lease
        .get_datetime("since")
        .expect("the lease says since when")
        .try_to_rfc3339_string()
        .expect("rfc3339");
    let path = config_file(
        &pair.source.uri(),
        &pair.destination.uri(),
        free_port(),
        "[runtime]\nidle_noop_interval_seconds = 1\n",
    );
    let (status, output) = wait_child(spawn_ferry_run(&path)).await;
    assert!(!status.success(), "the second daemon started: {output}");
    assert_eq!(
        status.code(),
        Some(ferry::exit::DESTINATION_HELD.into()),
        "exit code of a destination held by another migration: {output}"
    );
    for expected in [
        format!("pid {}", std::process::id()),
        format!("host {}", host_name()),
        format!("since {since}"),
    ] {
        assert!(output.contains(&expected), "{expected:?} not in: {output}");
    }
    // The first run is untouched and still owns the destination.
    assert_eq!(
        lock(&pair.dst)
            .await
            .and_then(|l| l.get_str("owner").ok().map(String::from)),
        Some(process_owner().to_string())
    );
    assert!(!m.progress.phase().is_terminal());
    cutover_and_complete(m).await;
    assert_same(&pair.src, &pair.dst).await;
    let _ = std::fs::remove_dir_all(path.parent().expect("config directory"));
}

/// Pins: the lock owner stored on the destination was a hash of URIs that contain
/// passwords. Now it is a random id of the process, with its host and pid beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_names_the_process_not_the_uris() {
    let pair = Pair::start().await;
    seed(&pair.src, "app", 100).await;
    let m = start(pair.config("")).await;
    wait_phase(&m.progress, Phase::ReadyForCutover).await;
    let lease = lock(&pair.dst).await.expect("lease held");
    assert_eq!(lease.get_str("owner"), Ok(process_owner()));
    assert_eq!(lease.get_i64("pid"), Ok(std::process::id() as i64));
    assert_eq!(lease.get_str("host"), Ok(host_name().as_str()));
    let text = format!("{lease:?}");
    assert!(
        !text.contains(&pair.source.uri()) && !text.contains(&pair.destination.uri()),
        "{text}"
    );
    let reply = m.control.request(ControlRequest::Cancel).await;
    assert!(reply.is_ok(), "{reply:?}");
    wait(m).await;
}

/// A process that held the lease on this host and died: the next run waits for its lease
/// to expire and takes it over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_holders_lease_is_taken_over_once_expired() {
    let pair = Pair::start().await;
    seed(&pair.src, "app", 100).await;
    let mut dead = std::process::Command::new("true")
        .spawn()
        .expect("a short-lived process");
    let dead_pid = dead.id() as i64;
    dead.wait().expect("reap it");
    let now = DateTime::now().timestamp_millis();
    pair.dst
        .database("__ferry")
        .collection::<Document>("lock")
        .insert_one(doc! {
            "_id": "lock", "owner": "ferry-00000000deadbeef", "host": host_name(), "pid": dead_pid,
            "since": DateTime::from_millis(now - 60_000), "renewed_at": DateTime::from_millis(now - 1000),
            "expires_at": DateTime::from_millis(now + 2000),
        })
        .await
        .expect("plant a dead holder's lease");
    let m = start(pair.config("")).await;
    let lease = lock(&pair.dst).await.expect("lease held");
    assert_eq!(lease.get_str("owner"), Ok(process_owner()));
    assert!(
        DateTime::now().timestamp_millis() >= now + 2000,
        "the lease was taken before it expired"
    );
    cutover_and_complete(m).await;
}

/// A live holder elsewhere: the run refuses to start and says who holds it until when.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_held_elsewhere_is_refused() {
    let pair = Pair::start().await;
    seed(&pair.src, "app", 100).await;
    let in_an_hour = DateTime::from_millis(DateTime::now().timestamp_millis() + 3_600_000);
    pair.dst
        .database("__ferry")
        .collection::<Document>("lock")
        .insert_one(doc! {
            "_id": "lock", "owner": "ferry-0000000000000001", "host": "migration-host-2", "pid": 4242i64,
            "since": DateTime::from_millis(0), "renewed_at": DateTime::now(), "expires_at": in_an_hour,
        })
        .await
        .expect("plant another holder's lease");
    let cfg = pair.config("");
    let error = tokio::task::spawn_blocking(move || {
        ferry::run::Migration::start(cfg, ferry::run::RunOptions::default())
            .err()
            .map(|e| ferry::actors::error_chain(&e))
    })
    .await
    .expect("start task")
    .expect("the run must refuse to start");
    assert!(
        error.contains("pid 4242 on host migration-host-2 since 1970-01-01T00:00:00"),
        "{error}"
    );
}

/// Pins: a holder whose lease was deleted out-of-band recreated it at its next renewal
/// and went on writing. Now renewal only extends a lease that still names the holder:
/// the holder stops writing (its fence closes) and the run fails saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_whose_lease_is_deleted_stops_writing() {
    let pair = Pair::start().await;
    seed(&pair.src, "app", 500).await;
    let load = Workload::start(pair.src.clone(), "app", 500);
    let m = start(pair.config_with_lease(3, "")).await;
    wait_phase(&m.progress, Phase::ReadyForCutover).await;
    pair.dst
        .database("__ferry")
        .collection::<Document>("lock")
        .delete_one(doc! {"_id": "lock"})
        .await
        .expect("delete the lease");
    poll("the run to stop after losing its lease", || m.is_finished()).await;
    let outcome = wait(m).await;
    assert_eq!(outcome.phase, Phase::Failed);
    let error = outcome.error.unwrap_or_default();
    assert!(error.contains("lease was taken away"), "{error}");
    assert!(
        lock(&pair.dst).await.is_none(),
        "the lost lease was taken back"
    );
    load.stop().await;
}

/// A holder whose lease now names another process stops writing and leaves the other
/// holder's lease alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_whose_lease_changes_hands_stops_writing() {
    let pair = Pair::start().await;
    seed(&pair.src, "app", 500).await;
    let load = Workload::start(pair.src.clone(), "app", 500);
    let m = start(pair.config_with_lease(3, "")).await;
    wait_phase(&m.progress, Phase::ReadyForCutover).await;
    let in_an_hour = DateTime::from_millis(DateTime::now().timestamp_millis() + 3_600_000);
    pair.dst
        .database("__ferry")
        .collection::<Document>("lock")
        .update_one(
            doc! {"_id": "lock"},
            doc! {"$set": {"owner": "ferry-00000000000000ff", "host": "other", "pid": 1i64, "expires_at": in_an_hour}},
        )
        .await
        .expect("hand the lease to another process");
    poll("the run to stop after losing its lease", || m.is_finished()).await;
    let outcome = wait(m).await;
    assert_eq!(outcome.phase, Phase::Failed);
    let error = outcome.error.unwrap_or_default();
    assert!(error.contains("pid 1 on host other"), "{error}");
    let lease = lock(&pair.dst).await.expect("the other holder's lease");
    assert_eq!(lease.get_str("owner"), Ok("ferry-00000000000000ff"));
    load.stop().await;
}
