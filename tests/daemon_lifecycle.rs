//! The daemon's life around an ending, as an operator and Prometheus see it: after the
//! migration completes, `ferry run` keeps serving its status, report and metrics until
//! SIGTERM (then exits 0); started again, it prints the stored report and exits 0;
//! `ferry report` reads that report without a daemon; endings have distinct exit codes.

mod common;

use std::process::{Command, Stdio};

use common::*;

/// Runs `ferry <args> --config <config>` to its end (with a deadline); its exit code and
/// everything it printed.
async fn ferry(args: &[&str], config: &std::path::Path) -> (i32, String) {
    let child = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(args)
        .arg("--config")
        .arg(config)
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ferry runs");
    let (status, output) = wait_child(child).await;
    (status.code().unwrap_or(-1), output)
}

/// Pins: the daemon exited at completion and took its API with it (`ferry status` and
/// the report answered "connection refused"), and a second `ferry run` said only
/// "already completed"; then, for a fraction of a second at the ending, no server
/// listened (the run's stopped before the next bound the port) and a status request
/// was refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_completion_the_daemon_serves_its_report_until_sigterm() {
    let pair = Pair::start().await;
    let seeded = seed(&pair.src, "app", 300).await;
    let port = free_port();
    let config = config_file(&pair.source.uri(), &pair.destination.uri(), port, "");
    let child = spawn_ferry_run_with(&config, false);
    let api = ferry::api::client::ApiClient::new(&format!("http://127.0.0.1:{port}"))
        .expect("API client");
    wait_child_phase(&api, "ready_for_cutover").await;
    // A status poller (a fresh connection each time, as `ferry status` makes) runs
    // through the ending: every request must be answered.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poller = tokio::spawn(poll_status(port, stop.clone()));
    child_cutover(&api).await;
    wait_child_phase(&api, "completed").await;
    let report: serde_json::Value = api
        .get_json("/api/v1/report")
        .await
        .expect("the report is served after completion");
    assert_eq!(report["documents_copied"].as_u64(), Some(seeded));
    // At the ending the run's API server hands over to the one that serves until
    // SIGTERM, on the same socket: control is refused with 409 once the second serves.
    let deadline = std::time::Instant::now() + DEADLINE;
    let refused = loop {
        let reply = api
            .post_json("/api/v1/pause", &serde_json::json!({}))
            .await
            .expect("the API answers through the ending");
        if reply.status == 409 || std::time::Instant::now() > deadline {
            break reply;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(refused.status, 409, "{}", refused.text());
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (answered, failures) = poller.await.expect("the poller ran");
    assert!(
        failures.is_empty(),
        "status requests failed during the hand-over ({answered} answered): {failures:?}"
    );
    let metrics = api.get("/metrics").await.expect("metrics are served");
    assert!(metrics.is_success());
    // SAFETY: sending a signal to our own child process.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let (status, output) = wait_child(child).await;
    assert_eq!(status.code(), Some(0), "{output}");

    let (code, output) = ferry(&["run"], &config).await;
    assert_eq!(code, 0, "{output}");
    assert!(
        output.contains("migration report") && output.contains(&format!("{seeded} documents")),
        "a restarted run prints the stored report: {output}"
    );
    let (code, output) = ferry(&["report"], &config).await;
    assert_eq!(code, 0, "{output}");
    assert!(output.contains("migration report"), "{output}");
    let _ = std::fs::remove_dir_all(config.parent().expect("config directory"));
}

/// Polls `GET /api/v1/progress` with a new client (a new connection) each time until
/// `stop`: how many were answered, and the errors of those that were not.
async fn poll_status(
    port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> (usize, Vec<String>) {
    let (mut answered, mut failures) = (0, Vec::new());
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        let api = ferry::api::client::ApiClient::new(&format!("http://127.0.0.1:{port}"))
            .expect("API client");
        match api.get("/api/v1/progress").await {
            Ok(r) if r.is_success() => answered += 1,
            Ok(r) => failures.push(format!("{}: {}", r.status, r.text())),
            Err(e) => failures.push(e.to_string()),
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    (answered, failures)
}

/// The endings an operator scripts against have distinct exit codes: a cancelled run
/// exits 3 (and again when started again, printing its report), a run refused by
/// validation 5, a bad config 2; `ferry report` before any ending exits 1 and says why.
/// Pins: `ferry run` started again after a cancel refused with exit 5 ("refused by
/// validation") and printed no report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endings_have_distinct_exit_codes() {
    let pair = Pair::start().await;
    seed(&pair.src, "app", 100).await;
    let port = free_port();
    let config = config_file(&pair.source.uri(), &pair.destination.uri(), port, "");
    let child = spawn_ferry_run(&config);
    let api = ferry::api::client::ApiClient::new(&format!("http://127.0.0.1:{port}"))
        .expect("API client");
    wait_child_phase(&api, "ready_for_cutover").await;
    let (code, output) = ferry(&["report"], &config).await;
    assert_eq!(code, 1, "{output}");
    assert!(output.contains("no report yet"), "{output}");
    let reply = api
        .post_json("/api/v1/cancel", &serde_json::json!({}))
        .await
        .expect("cancel answered");
    assert!(reply.is_success(), "{}", reply.text());
    let (status, output) = wait_child(child).await;
    assert_eq!(status.code(), Some(3), "cancelled: {output}");

    // A cancelled run does not resume behind the operator's back: started again, it
    // prints the stored report, says how to start over and exits as cancelled.
    let (code, output) = ferry(&["run", "--exit-when-finished"], &config).await;
    assert_eq!(code, 3, "{output}");
    assert!(
        output.contains("migration report: the migration cancelled")
            && output.contains("was cancelled; it does not resume")
            && output.contains("clear_destination"),
        "{output}"
    );
    let (code, output) = ferry(&["report"], &config).await;
    assert_eq!(code, 0, "{output}");
    assert!(
        output.contains("migration report: the migration cancelled"),
        "{output}"
    );

    // A destination that already holds the namespaces (and no run of ours): the
    // pre-migration checks refuse.
    let other = Pair::start().await;
    seed(&other.src, "app", 10).await;
    seed(&other.dst, "app", 10).await;
    let refused = config_file(
        &other.source.uri(),
        &other.destination.uri(),
        free_port(),
        "",
    );
    let (code, output) = ferry(&["run", "--exit-when-finished"], &refused).await;
    assert_eq!(code, 5, "refused by validation: {output}");
    let _ = std::fs::remove_dir_all(refused.parent().expect("config directory"));

    let bad = config.with_file_name("bad.toml");
    std::fs::write(&bad, "[source]\nuri = 1\n").expect("write");
    let (code, output) = ferry(&["run"], &bad).await;
    assert_eq!(code, 2, "bad config: {output}");
    let _ = std::fs::remove_dir_all(config.parent().expect("config directory"));
}

/// Pins: `ferry run` started again after the cutover window expired refused with exit 5
/// (as if a pre-migration check had failed) and printed no report. Now it prints the
/// stored report, says how to start over, exits 4 (expired) and touches nothing (no
/// lease taken); `ferry report` prints the same report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_run_started_again_prints_its_report_and_exits_as_expired() {
    let pair = Pair::start().await;
    let seeded = seed(&pair.src, "app", 100).await;
    let config = config_file(
        &pair.source.uri(),
        &pair.destination.uri(),
        free_port(),
        "[runtime]\nidle_noop_interval_seconds = 1\ncheckpoint_interval_seconds = 1\n[cutover]\nwindow_hours = 0.001\nlag_threshold_seconds = 1\nwarn_before_expiry_hours = []\n",
    );
    let (status, output) = wait_child(spawn_ferry_run(&config)).await;
    assert_eq!(status.code(), Some(4), "expired: {output}");

    let (code, output) = ferry(&["run"], &config).await;
    assert_eq!(code, 4, "{output}");
    assert!(
        output.contains("migration report: the migration expired")
            && output.contains(&format!("{seeded} documents"))
            && output.contains("was expired; it does not resume")
            && output.contains("clear_destination"),
        "a restarted expired run prints its report and how to start over: {output}"
    );
    assert!(
        lock(&pair.dst).await.is_none(),
        "an ended run started again took the lease"
    );
    let (code, output) = ferry(&["report"], &config).await;
    assert_eq!(code, 0, "{output}");
    assert!(
        output.contains("migration report: the migration expired"),
        "{output}"
    );
    let _ = std::fs::remove_dir_all(config.parent().expect("config directory"));
}

/// A failed run is resumed by `ferry run` started again (its cause fixed): exit 1 at the
/// failure, `ferry report` prints the failure's report, and while the resumed run goes
/// on `ferry report` says there is no report yet. Pins: `ferry report` printed the
/// earlier failure's report (exit 0) as the report of the resumed, running migration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_run_resumes_and_its_old_report_is_not_shown_as_current() {
    let pair = Pair::start().await;
    seed(&pair.src, "app", 100).await;
    let port = free_port();
    let config = config_file(&pair.source.uri(), &pair.destination.uri(), port, "");
    let api = ferry::api::client::ApiClient::new(&format!("http://127.0.0.1:{port}"))
        .expect("API client");
    let child = spawn_ferry_run(&config);
    wait_child_phase(&api, "ready_for_cutover").await;
    fail_the_next_replayed_drop(&pair).await;
    let (status, output) = wait_child(child).await;
    assert_eq!(status.code(), Some(1), "failed: {output}");
    let (code, output) = ferry(&["report"], &config).await;
    assert_eq!(code, 0, "{output}");
    assert!(
        output.contains("migration report: the migration failed"),
        "{output}"
    );

    let child = spawn_ferry_run(&config);
    wait_child_phase(&api, "ready_for_cutover").await;
    let (code, output) = ferry(&["report"], &config).await;
    assert_eq!(code, 1, "the resumed run has no report yet: {output}");
    assert!(
        output.contains("no report yet") && !output.contains("migration report"),
        "{output}"
    );
    child_cutover(&api).await;
    let (status, output) = wait_child(child).await;
    assert_eq!(status.code(), Some(0), "{output}");
    assert!(
        output.contains("the earlier run on this destination failed; resuming"),
        "{output}"
    );
    assert_same(&pair.src, &pair.dst).await;
    let (code, output) = ferry(&["report"], &config).await;
    assert_eq!(code, 0, "{output}");
    assert!(
        output.contains("migration report") && !output.contains("the migration failed"),
        "{output}"
    );
    let _ = std::fs::remove_dir_all(config.parent().expect("config directory"));
}

/// Pins: a cutover refused by verification left its report (ending "completed",
/// verification failed) in place, and a cancel after it stored that report: `ferry
/// report` and `ferry run` then showed a cancelled migration as a completed one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_after_a_refused_cutover_is_reported_as_cancelled() {
    let pair = Pair::start().await;
    seed(&pair.src, "app", 100).await;
    let m = start(pair.config("")).await;
    wait_phase(&m.progress, ferry::progress::Phase::ReadyForCutover).await;
    pair.dst
        .database("app")
        .collection::<bson::Document>("counters")
        .insert_one(bson::doc! {"_id": "planted"})
        .await
        .expect("plant a difference on the destination");
    cutover_refused_by_verification(&m).await;
    let reply = m
        .control
        .request(ferry::control::ControlRequest::Cancel)
        .await;
    assert!(reply.is_ok(), "{reply:?}");
    let outcome = wait(m).await;
    let report = outcome.report.expect("a cancelled run has a report");
    assert_eq!(report.ending, "cancelled", "{report}");
    let config = config_file(&pair.source.uri(), &pair.destination.uri(), free_port(), "");
    let (code, output) = ferry(&["report"], &config).await;
    assert_eq!(code, 0, "{output}");
    assert!(
        output.contains("migration report: the migration cancelled"),
        "{output}"
    );
    let _ = std::fs::remove_dir_all(config.parent().expect("config directory"));
}

/// Drops `app.events` on the source while the destination answers the replayed drop
/// with a write concern error that can never be met: the running migration fails (once;
/// the fail point then turns itself off).
async fn fail_the_next_replayed_drop(pair: &Pair) {
    pair.dst
        .database("admin")
        .run_command(bson::doc! {
            "configureFailPoint": "failCommand",
            "mode": {"times": 1},
            "data": {
                "failCommands": ["drop"],
                "writeConcernError": {"code": 100, "errmsg": "injected by the test"},
            },
        })
        .await
        .expect("fail point");
    pair.src
        .database("app")
        .collection::<bson::Document>("events")
        .drop()
        .await
        .expect("drop on the source");
}

/// Pins: after a failure whose message says to start over (lost change history, a
/// resharded source collection), `clear_destination` did not start over: the failed
/// run was resumed, and failed again the same way. Now `clear_destination` clears the
/// failed run's namespaces and checkpoints and copies from scratch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_failure_clear_destination_starts_over() {
    let pair = Pair::start().await;
    seed(&pair.src, "app", 100).await;
    let port = free_port();
    let config = config_file(&pair.source.uri(), &pair.destination.uri(), port, "");
    let api = ferry::api::client::ApiClient::new(&format!("http://127.0.0.1:{port}"))
        .expect("API client");
    let child = spawn_ferry_run(&config);
    wait_child_phase(&api, "ready_for_cutover").await;
    fail_the_next_replayed_drop(&pair).await;
    let (status, output) = wait_child(child).await;
    assert_eq!(status.code(), Some(1), "failed: {output}");
    // Written to the destination after the failure: gone once the run starts over.
    pair.dst
        .database("app")
        .collection::<bson::Document>("stray")
        .insert_one(bson::doc! {"_id": 1})
        .await
        .expect("stray write");

    let text = std::fs::read_to_string(&config).expect("read the config");
    std::fs::write(
        &config,
        text.replacen(
            "[api]",
            "clear_destination = true\nconfirm_destination_name = \"dst\"\n[api]",
            1,
        ),
    )
    .expect("write the config");
    let child = spawn_ferry_run(&config);
    wait_child_phase(&api, "ready_for_cutover").await;
    child_cutover(&api).await;
    let (status, output) = wait_child(child).await;
    assert_eq!(status.code(), Some(0), "{output}");
    assert!(
        output.contains("starting over (clear_destination)"),
        "{output}"
    );
    assert_same(&pair.src, &pair.dst).await;
    let _ = std::fs::remove_dir_all(config.parent().expect("config directory"));
}
