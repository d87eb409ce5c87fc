//! The control API over real TCP: a server on port 0, a fake supervisor answering
//! control requests the way the real one decides them (by phase), and the CLI's own
//! client on the other end.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use ferry::api::client::{ApiClient, ClientError};
use ferry::api::{ApiServer, RunState, StatusView};
use ferry::cli::{self, ControlAction};
use ferry::control::{ControlError, ControlHandle, ControlRequest};
use ferry::progress::{
    BaselineState, BaselineView, NamespaceProgress, Phase, Progress, SharedProgress,
};
use ferry::report::Report;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::{json, Value};

struct Harness {
    server: ApiServer,
    progress: SharedProgress,
    client: ApiClient,
    url: String,
    /// Every request that reached the supervisor, in order.
    received: Arc<Mutex<Vec<ControlRequest>>>,
}

/// Starts the API and a supervisor stand-in that changes the phase the way the real one
/// does: cutover only from ready_for_cutover, resume only from paused.
async fn start(prometheus: Option<PrometheusHandle>) -> Harness {
    let progress = Progress::new();
    let (control, mut rx) = ControlHandle::channel(8);
    let received = Arc::new(Mutex::new(Vec::new()));
    let (supervised, log) = (progress.clone(), received.clone());
    tokio::spawn(async move {
        while let Some((request, reply)) = rx.recv().await {
            log.lock().expect("request log").push(request.clone());
            let phase = supervised.phase();
            let answer = match request {
                ControlRequest::Cutover { .. } if phase == Phase::ReadyForCutover => {
                    supervised.set_phase(Phase::CuttingOver);
                    Ok(json!({ "message": "cutover started" }))
                }
                ControlRequest::Cutover { .. } => Err(ControlError::conflict(format!(
                    "cannot cut over while {}: wait for ready_for_cutover",
                    phase.as_str()
                ))),
                ControlRequest::Extend { hours } => {
                    supervised
                        .window_expires_at
                        .fetch_add((hours * 3600.0) as i64, Ordering::Relaxed);
                    Ok(json!({ "message": format!("window extended by {hours} h") }))
                }
                ControlRequest::Pause => {
                    supervised.set_phase(Phase::Paused);
                    Ok(json!({ "message": "paused" }))
                }
                ControlRequest::Resume if phase == Phase::Paused => {
                    supervised.set_phase(Phase::Syncing);
                    Ok(json!({ "message": "resumed" }))
                }
                ControlRequest::Resume => Err(ControlError::conflict("not paused")),
                ControlRequest::Cancel => {
                    supervised.set_phase(Phase::Cancelled);
                    Ok(json!({}))
                }
            };
            let _ = reply.send(answer);
        }
    });
    let listen = "127.0.0.1:0".parse().expect("loopback address");
    let server = ferry::api::serve(listen, progress.clone(), control, prometheus)
        .await
        .expect("api binds port 0");
    let url = format!("http://{}", server.local_addr());
    let client = ApiClient::new(&url).expect("valid url");
    Harness {
        server,
        progress,
        client,
        url,
        received,
    }
}

async fn post(client: &ApiClient, path: &str, body: &str) -> (u16, Value) {
    let response = client
        .send("POST", path, Some(body.as_bytes().to_vec()))
        .await
        .expect("api answers");
    let json = serde_json::from_slice(&response.body).expect("JSON body");
    (response.status, json)
}

fn error_of(body: &Value) -> &str {
    body.get("error")
        .and_then(Value::as_str)
        .expect("error bodies carry an `error` string")
}

#[tokio::test]
async fn progress_reports_phase_counters_window_and_namespaces() {
    let h = start(None).await;
    let view: StatusView = h
        .client
        .get_json("/api/v1/progress")
        .await
        .expect("progress");
    assert_eq!(view.phase, Phase::Validating);
    assert_eq!(view.lag_seconds, None, "lag is unknown before syncing");
    assert_eq!(view.window_expires_at, None);
    assert!(!view.can_cutover);

    h.progress.set_phase(Phase::ReadyForCutover);
    h.progress.documents_copied.store(500, Ordering::Relaxed);
    h.progress
        .documents_estimated
        .store(1000, Ordering::Relaxed);
    h.progress.bytes_copied.store(2048, Ordering::Relaxed);
    h.progress.bytes_estimated.store(4096, Ordering::Relaxed);
    h.progress.events_applied.store(42, Ordering::Relaxed);
    h.progress.lag_ms.store(1500, Ordering::Relaxed);
    h.progress
        .window_expires_at
        .store(1_700_000_000, Ordering::Relaxed);
    *h.progress.namespace_mut("shop.orders") = NamespaceProgress {
        status: "copying".into(),
        documents_copied: 500,
        documents_estimated: 1000,
        ..Default::default()
    };
    h.progress
        .set_error("destination: write conflict, retrying");
    *h.progress.baseline.write() = BaselineView {
        state: BaselineState::Done,
        documents_compared: 1000,
        chunks_differing: 1,
        ..Default::default()
    };
    h.progress.baseline_changed.store(7, Ordering::Relaxed);

    let raw: Value = h
        .client
        .get_json("/api/v1/progress")
        .await
        .expect("progress");
    assert_eq!(raw["state"], "running");
    assert_eq!(raw["phase"], "ready_for_cutover");
    assert_eq!(raw["can_cutover"], true);
    assert_eq!(raw["lag_seconds"], 1.5);
    assert_eq!(raw["documents_copied"], 500);
    assert_eq!(raw["documents_estimated"], 1000);
    assert_eq!(raw["bytes_copied"], 2048);
    assert_eq!(raw["bytes_estimated"], 4096);
    assert_eq!(raw["events_applied"], 42);
    assert_eq!(raw["window_expires_at"], "2023-11-14T22:13:20Z");
    assert_eq!(raw["namespaces"]["shop.orders"]["status"], "copying");
    assert_eq!(raw["namespaces"]["shop.orders"]["documents_copied"], 500);
    assert_eq!(raw["last_error"], "destination: write conflict, retrying");
    assert_eq!(raw["baseline"]["state"], "done");
    assert_eq!(raw["baseline"]["documents_compared"], 1000);
    assert_eq!(raw["baseline"]["documents_changed"], 7);

    // The CLI's screen shows the same facts.
    let view = cli::status(&h.url).await.expect("status");
    assert_eq!(view.state, RunState::Running);
    let screen = cli::render_status(&view);
    for expected in [
        "ready_for_cutover",
        " 50.0%",
        "1.5 s",
        "42 applied",
        "2023-11-14T22:13:20Z",
        "shop.orders",
        "ferry cutover",
        "write conflict",
        "baseline:   done: 1000 documents compared (1 chunks differed)",
        "the 7 documents changed since",
    ] {
        assert!(
            screen.contains(expected),
            "status screen lacks {expected:?}:\n{screen}"
        );
    }
    h.server.stop().await;
}

#[tokio::test]
async fn cutover_requires_the_operator_to_confirm_writes_stopped() {
    let h = start(None).await;
    h.progress.set_phase(Phase::ReadyForCutover);
    for body in ["", "{}", r#"{"writes_stopped": false}"#] {
        let (status, reply) = post(&h.client, "/api/v1/cutover", body).await;
        assert_eq!(status, 400, "body {body:?}");
        let message = error_of(&reply);
        assert!(message.contains("stop application writes"), "{message}");
        assert!(message.contains(r#""writes_stopped": true"#), "{message}");
    }
    assert!(
        h.received.lock().expect("log").is_empty(),
        "an unconfirmed cutover must never reach the supervisor"
    );
    assert_eq!(h.progress.phase(), Phase::ReadyForCutover);

    let (status, reply) = post(&h.client, "/api/v1/cutover", r#"{"writes_stoped": true}"#).await;
    assert_eq!(
        status, 400,
        "a misspelt field is refused, not read as false"
    );
    assert!(error_of(&reply).contains("writes_stoped"), "{reply}");

    let reply = cli::control(&h.url, ControlAction::Cutover)
        .await
        .expect("cutover accepted");
    assert_eq!(reply["message"], "cutover started");
    assert_eq!(h.progress.phase(), Phase::CuttingOver);
    h.server.stop().await;
}

#[tokio::test]
async fn supervisor_refusal_keeps_its_status_and_message() {
    let h = start(None).await;
    h.progress.set_phase(Phase::Copying);
    match cli::control(&h.url, ControlAction::Cutover).await {
        Err(ClientError::Api { status, message }) => {
            assert_eq!(status, 409);
            assert!(message.contains("ready_for_cutover"), "{message}");
        }
        other => panic!("expected a 409 refusal, got {other:?}"),
    }
    assert_eq!(h.progress.phase(), Phase::Copying);
    h.server.stop().await;
}

#[tokio::test]
async fn extend_accepts_only_a_positive_number_of_hours() {
    let h = start(None).await;
    for body in [
        r#"{"hours": 0}"#,
        r#"{"hours": -1}"#,
        r#"{"hours": "x"}"#,
        "{}",
        r#"{"hours": 1e999}"#,
    ] {
        let (status, reply) = post(&h.client, "/api/v1/extend", body).await;
        assert_eq!(status, 400, "body {body:?}: {reply}");
        assert!(error_of(&reply).contains("hours"), "{reply}");
    }
    assert!(h.received.lock().expect("log").is_empty());

    h.progress
        .window_expires_at
        .store(1_700_000_000, Ordering::Relaxed);
    let reply = cli::control(&h.url, ControlAction::Extend { hours: 2.0 })
        .await
        .expect("extend accepted");
    assert_eq!(reply["message"], "window extended by 2 h");
    let view = cli::status(&h.url).await.expect("status");
    assert_eq!(
        view.window_expires_at.as_deref(),
        Some("2023-11-15T00:13:20Z")
    );
    h.server.stop().await;
}

#[tokio::test]
async fn malformed_json_unknown_routes_and_wrong_methods_get_json_errors() {
    let h = start(None).await;
    let (status, reply) = post(&h.client, "/api/v1/extend", "{hours: 3").await;
    assert_eq!(status, 400);
    assert!(
        error_of(&reply).contains("line 1"),
        "parse error position is shown: {reply}"
    );

    let response = h.client.get("/api/v1/nope").await.expect("api answers");
    assert_eq!(response.status, 404);
    assert!(
        response.error_message().contains("/api/v1/progress"),
        "404 lists the routes"
    );

    let response = h.client.get("/api/v1/cutover").await.expect("api answers");
    assert_eq!(response.status, 405);
    assert!(
        response.error_message().contains("POST"),
        "{}",
        response.error_message()
    );
    let response = h
        .client
        .send("DELETE", "/api/v1/progress", None)
        .await
        .expect("api answers");
    assert_eq!(response.status, 405);
    h.server.stop().await;
}

#[tokio::test]
async fn pause_resume_cancel_reach_the_supervisor() {
    let h = start(None).await;
    h.progress.set_phase(Phase::Syncing);
    cli::control(&h.url, ControlAction::Pause)
        .await
        .expect("pause");
    assert_eq!(
        cli::status(&h.url).await.expect("status").state,
        RunState::Paused
    );
    cli::control(&h.url, ControlAction::Resume)
        .await
        .expect("resume");
    assert_eq!(h.progress.phase(), Phase::Syncing);
    let reply = cli::control(&h.url, ControlAction::Cancel)
        .await
        .expect("cancel");
    assert_eq!(
        cli::render_reply(ControlAction::Cancel, &reply),
        "cancel: accepted"
    );
    assert_eq!(
        cli::status(&h.url).await.expect("status").state,
        RunState::Finished
    );
    assert_eq!(
        *h.received.lock().expect("log"),
        vec![
            ControlRequest::Pause,
            ControlRequest::Resume,
            ControlRequest::Cancel
        ]
    );
    h.server.stop().await;
}

#[tokio::test]
async fn report_is_404_until_the_migration_completes() {
    let h = start(None).await;
    h.progress.set_phase(Phase::Syncing);
    let response = h.client.get("/api/v1/report").await.expect("api answers");
    assert_eq!(response.status, 404);
    assert!(
        response.error_message().contains("syncing"),
        "{}",
        response.error_message()
    );

    let report = Report {
        documents_copied: 1234,
        events_synced: 56,
        ..Default::default()
    };
    *h.progress.report.write() = Some(report.clone());
    let served: Report = h.client.get_json("/api/v1/report").await.expect("report");
    assert_eq!(served, report);
    h.server.stop().await;
}

#[tokio::test]
async fn metrics_endpoint_serves_ferry_metrics() {
    // The daemon's own installer: installs once per process and describes every metric.
    let prometheus = ferry::api::install_prometheus();
    assert!(
        prometheus.is_some(),
        "no other recorder in this test binary"
    );
    let h = start(prometheus).await;
    ferry::metrics::record_copy("shop.metrics_test", 5, 640);
    ferry::metrics::record_baseline_compared(1000);
    ferry::metrics::record_baseline_changed();
    let response = h.client.get("/metrics").await.expect("api answers");
    assert_eq!(response.status, 200);
    let text = response.text();
    assert!(
        text.contains(r#"ferry_copy_documents_total{namespace="shop.metrics_test"} 5"#),
        "{text}"
    );
    assert!(
        text.contains("# HELP ferry_copy_documents_total"),
        "metrics are described: {text}"
    );
    assert!(
        text.contains("ferry_baseline_documents_compared_total 1000"),
        "{text}"
    );
    assert!(
        text.contains("ferry_baseline_documents_changed_total 1\n"),
        "{text}"
    );
    h.server.stop().await;

    let bare = start(None).await;
    let response = bare.client.get("/metrics").await.expect("api answers");
    assert_eq!(
        (response.status, response.body.len()),
        (200, 0),
        "no recorder: empty, not an error"
    );
    bare.server.stop().await;
}

#[actix_web::test]
async fn serves_inside_an_actix_system_like_the_engine() {
    let h = start(None).await;
    h.progress.set_phase(Phase::Copying);
    let view = cli::status(&h.url).await.expect("status under actix");
    assert_eq!(view.phase, Phase::Copying);
    h.server.stop().await;
    assert!(
        matches!(
            cli::status(&h.url).await,
            Err(ClientError::Unreachable { .. })
        ),
        "a stopped server closes its port"
    );
}

#[tokio::test]
async fn cli_reports_an_unreachable_daemon_instead_of_panicking() {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let error = cli::status(&url).await.expect_err("nothing listens");
    let message = error.to_string();
    assert!(
        message.contains(&format!("cannot reach ferry at {url}")),
        "{message}"
    );
    assert!(message.contains("ferry run"), "{message}");
    for action in [
        ControlAction::Cutover,
        ControlAction::Extend { hours: 1.0 },
        ControlAction::Pause,
    ] {
        let error = cli::control(&url, action)
            .await
            .expect_err("nothing listens");
        assert!(matches!(error, ClientError::Unreachable { .. }), "{error}");
    }
    assert!(matches!(
        cli::status("localhost:27182").await,
        Err(ClientError::InvalidUrl { .. })
    ));
}
