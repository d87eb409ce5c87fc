//! What an operator does and sees during a migration, end to end over TCP: namespace
//! filters, pause during the copy, writes after the operator declared them stopped,
//! SIGTERM of `ferry run`, and the cutover window's warning and expiry in a live run.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use bson::{doc, Bson, Document};
use common::*;
use ferry::api::client::ApiClient;
use ferry::api::StatusView;
use ferry::control::ControlRequest;
use ferry::progress::Phase;
use futures_util::TryStreamExt;
use mongodb::Client;

/// `n` documents in `db.coll`, each tagged with `origin`.
async fn fill(client: &Client, db: &str, coll: &str, n: i64, origin: &str) {
    client
        .database(db)
        .collection::<Document>(coll)
        .insert_many((0..n).map(|i| doc! {"_id": i, "origin": origin, "n": i}))
        .await
        .expect("insert");
}

/// Pins: namespace filters decide what migrates. With `include_namespaces = ["app"]`
/// and `exclude_namespaces = ["app.audit"]`, out-of-scope data (another database, an
/// excluded collection), written before and during the run, never reaches the
/// destination; a `billing` database the destination already holds, different from the
/// source's, is neither touched nor verified: the cutover completes and the report
/// counts only the in-scope namespaces.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_filters_keep_out_of_scope_data_away_and_unverified() {
    let pair = Pair::start().await;
    seed(&pair.src, "app", 300).await;
    fill(&pair.src, "app", "audit", 50, "source").await;
    fill(&pair.src, "billing", "invoices", 50, "source").await;
    fill(&pair.dst, "billing", "invoices", 20, "destination").await;
    let billing_before = documents(&pair.dst, "billing", "invoices").await;
    let m = start(pair.config(
        "[filter]\ninclude_namespaces = [\"app\"]\nexclude_namespaces = [\"app.audit\"]\n",
    ))
    .await;
    wait_phase(&m.progress, Phase::ReadyForCutover).await;
    // Writes while syncing, in scope and out of it.
    for i in 100..120i64 {
        for (db, coll) in [
            ("app", "audit"),
            ("billing", "invoices"),
            ("app", "counters"),
        ] {
            pair.src
                .database(db)
                .collection::<Document>(coll)
                .insert_one(doc! {"_id": i + 100_000, "origin": "live"})
                .await
                .expect("insert");
        }
    }
    let outcome = cutover_and_complete(m).await;
    let v = outcome.report.expect("report").verification;
    assert_eq!(
        v.namespaces_checked, 3,
        "only app.mixed, app.events and app.counters are verified: {v:?}"
    );
    assert!(
        !collections(&pair.dst, "app").await.contains_key("audit"),
        "the excluded app.audit reached the destination"
    );
    assert_eq!(
        documents(&pair.dst, "billing", "invoices").await,
        billing_before,
        "the destination's own billing database changed"
    );
    for coll in ["mixed", "events", "counters"] {
        assert_eq!(
            documents(&pair.src, "app", coll).await,
            documents(&pair.dst, "app", coll).await,
            "app.{coll} differs"
        );
        assert_eq!(
            indexes(&pair.src, "app", coll).await,
            indexes(&pair.dst, "app", coll).await,
            "app.{coll} indexes differ"
        );
    }
}

/// Pins: pause holds the initial copy, not only the sync. Paused mid-copy, the number
/// of copied documents stops moving (the copy does not run to its end while paused) as
/// the source keeps changing; after resume the copy finishes and the destination
/// converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_during_the_copy_holds_it_and_resume_converges() {
    let pair = Pair::start().await;
    let total = seed(&pair.src, "app", 1000).await;
    let cfg = pair.config(
        "[copy]\nbatch_max_documents = 50\nparallel_collections = 1\nparallel_ranges_per_collection = 1\n",
    );
    pair.destination.set_latency(Duration::from_millis(40));
    let m = start(cfg).await;
    poll("the copy to start", || copied(&m.progress) > 0).await;
    let reply = m.control.request(ControlRequest::Pause).await;
    assert!(reply.is_ok(), "{reply:?}");
    assert_eq!(m.progress.phase(), Phase::Paused);
    // A batch in flight when the pause arrived may still land; then nothing moves.
    let mut settled = copied(&m.progress);
    let mut stable_rounds = 0;
    poll("the copy to stop while paused", || {
        let now = copied(&m.progress);
        if now == settled {
            stable_rounds += 1;
        } else {
            settled = now;
            stable_rounds = 0;
        }
        stable_rounds >= 20
    })
    .await;
    assert!(
        settled < total,
        "the copy ran to its end ({settled} of {total}) while paused"
    );
    // The source goes on changing; the copy stays where it is.
    let counters = pair.src.database("app").collection::<Document>("counters");
    for i in 0..100i64 {
        counters
            .update_one(doc! {"_id": i}, doc! {"$inc": {"value": 1i64}})
            .await
            .expect("update");
    }
    assert_eq!(
        copied(&m.progress),
        settled,
        "documents copied while paused"
    );
    assert_eq!(m.progress.phase(), Phase::Paused);
    let reply = m.control.request(ControlRequest::Resume).await;
    assert!(reply.is_ok(), "{reply:?}");
    poll("the copy to go on after resume", || {
        copied(&m.progress) > settled
    })
    .await;
    pair.destination.set_latency(Duration::ZERO);
    cutover_and_complete(m).await;
    assert_same(&pair.src, &pair.dst).await;
}

/// Pins: writes that reach the source after the operator declared writes stopped
/// (cutover without `enforce_write_block`) are detected and counted: the status and the
/// report show a late-write count above zero. And an application that never stops no
/// longer keeps the cutover in cutting_over forever (the drain waited for a moment with
/// no new event): the cutover ends, here while the writes go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_writes_after_the_declared_stop_are_counted() {
    let pair = Pair::start().await;
    seed(&pair.src, "app", 1000).await;
    let m = start(pair.config("")).await;
    wait_phase(&m.progress, Phase::ReadyForCutover).await;
    // A slow destination keeps the drain and the verification going while the
    // application, which did not really stop, goes on writing.
    pair.destination.set_latency(Duration::from_millis(100));
    let reply = request_until_accepted(
        &m,
        ControlRequest::Cutover {
            writes_stopped: true,
        },
    )
    .await;
    assert!(reply.is_ok(), "{reply:?}");
    let late = pair.src.database("app").collection::<Document>("late");
    let deadline = std::time::Instant::now() + DEADLINE;
    let mut i = 0i64;
    while m.progress.phase() == Phase::CuttingOver {
        assert!(
            std::time::Instant::now() < deadline,
            "the cutover never ended while the application kept writing ({} late writes counted)",
            m.progress
                .late_writes
                .load(std::sync::atomic::Ordering::Relaxed)
        );
        late.insert_one(doc! {"_id": i, "after": "the declared stop"})
            .await
            .expect("the source still takes writes");
        i += 1;
        // Pacing only.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    pair.destination.set_latency(Duration::ZERO);
    let view = StatusView::capture(&m.progress, ferry::checkpoint::unix_now());
    assert!(
        view.late_writes > 0,
        "{i} writes after the declared stop, none counted (phase {})",
        m.progress.phase().as_str()
    );
    let report = m
        .progress
        .report
        .read()
        .clone()
        .expect("the cutover's verification leaves a report");
    assert!(report.late_writes_detected > 0, "{report}");
    assert!(report.to_string().contains("late writes"), "{report}");
    if !m.progress.phase().is_terminal() {
        let reply = m.control.request(ControlRequest::Cancel).await;
        assert!(reply.is_ok(), "{reply:?}");
    }
    wait(m).await;
}

/// `__ferry.ranges` of the finished ranges: id -> documents.
async fn finished_ranges(dst: &Client) -> BTreeMap<String, i64> {
    let docs: Vec<Document> = dst
        .database("__ferry")
        .collection::<Document>("ranges")
        .find(doc! {"done": true})
        .await
        .expect("ranges")
        .try_collect()
        .await
        .expect("ranges");
    docs.into_iter()
        .map(|d| {
            let n = match d.get("documents") {
                Some(Bson::Int64(n)) => *n,
                Some(Bson::Int32(n)) => *n as i64,
                _ => -1,
            };
            (format!("{:?}", d.get("_id")), n)
        })
        .collect()
}

/// The child's progress document.
async fn child_status(api: &ApiClient) -> Option<StatusView> {
    api.get_json("/api/v1/progress").await.ok()
}

/// Sends SIGTERM to a child.
fn sigterm(child: &std::process::Child) {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

const FAST_RUNTIME: &str = "[runtime]\nidle_noop_interval_seconds = 1\ncheckpoint_interval_seconds = 1\nlease_seconds = 3\n";

/// Pins: SIGTERM of `ferry run` mid-copy stops it cleanly (exit 0, saying a new run
/// resumes), releases the destination lease, and a restarted `ferry run` resumes the
/// copy (finished ranges are not copied again), reaches ready_for_cutover and completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_of_ferry_run_stops_cleanly_and_a_restart_resumes() {
    let pair = Pair::start().await;
    let total = seed(&pair.src, "app", 3000).await;
    let extra = format!("{FAST_RUNTIME}[copy]\nbatch_max_documents = 100\nparallel_collections = 1\nparallel_ranges_per_collection = 1\n");
    pair.destination.set_latency(Duration::from_millis(20));
    let port = free_port();
    let path = config_file(&pair.source.uri(), &pair.destination.uri(), port, &extra);
    let child = spawn_ferry_run(&path);
    let api = ApiClient::new(&format!("http://127.0.0.1:{port}")).expect("API client");
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let copied_now = child_status(&api)
            .await
            .filter(|s| s.phase == Phase::Copying)
            .map_or(0, |s| s.documents_copied);
        if copied_now > 0 && !finished_ranges(&pair.dst).await.is_empty() {
            assert!(copied_now < total, "the copy ended before the test acted");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the copy never got under way"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sigterm(&child);
    let (status, output) = wait_child(child).await;
    assert!(status.success(), "SIGTERM is a clean stop: {output}");
    assert!(output.contains("run again to resume"), "{output}");
    assert!(
        lock(&pair.dst).await.is_none(),
        "the lease is still held after SIGTERM"
    );
    pair.destination.set_latency(Duration::ZERO);
    let finished = finished_ranges(&pair.dst).await;

    let port = free_port();
    let path = config_file(&pair.source.uri(), &pair.destination.uri(), port, &extra);
    let child = spawn_ferry_run(&path);
    let api = ApiClient::new(&format!("http://127.0.0.1:{port}")).expect("API client");
    wait_child_phase(&api, "ready_for_cutover").await;
    let after = finished_ranges(&pair.dst).await;
    for (id, n) in &finished {
        assert_eq!(
            after.get(id),
            Some(n),
            "finished range {id} was copied again"
        );
    }
    child_cutover(&api).await;
    let (status, output) = wait_child(child).await;
    assert!(status.success(), "{output}");
    assert_same(&pair.src, &pair.dst).await;
    let _ = std::fs::remove_dir_all(path.parent().expect("config directory"));
}

/// Pins: the cutover window in a live run. With a 14.4 s window and a warning 10.8 s
/// before it ends, `ferry run` warns (the progress API shows the warning, the log says
/// it), then the window ends the run as `expired`: exit non-zero, the lease released,
/// and the source untouched and writable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_window_warns_then_expires_a_live_run() {
    let pair = Pair::start().await;
    seed(&pair.src, "app", 200).await;
    let port = free_port();
    let path = config_file(
        &pair.source.uri(),
        &pair.destination.uri(),
        port,
        &format!(
            "{FAST_RUNTIME}[cutover]\nwindow_hours = 0.004\nwarn_before_expiry_hours = [0.003]\n"
        ),
    );
    let child = spawn_ferry_run(&path);
    let api = ApiClient::new(&format!("http://127.0.0.1:{port}")).expect("API client");
    let deadline = std::time::Instant::now() + DEADLINE;
    let warning = loop {
        if let Some(status) = child_status(&api).await {
            if let Some(w) = status.window_warning {
                break w;
            }
            assert!(!status.phase.is_terminal(), "{status:?}");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no window warning in the status"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(warning.contains("extend"), "{warning}");
    let (status, output) = wait_child(child).await;
    assert!(!status.success(), "an expired run exits non-zero: {output}");
    assert!(output.contains("migration expired"), "{output}");
    assert!(
        output.contains("the cutover window expires soon"),
        "the log warns: {output}"
    );
    assert!(lock(&pair.dst).await.is_none(), "lease held after expiry");
    assert!(
        source_takes_writes(&pair.src, "app", "probes").await,
        "the source must stay writable"
    );
    let _ = std::fs::remove_dir_all(path.parent().expect("config directory"));
}
