//! API security over real TCP: with `api.token` set, state-changing requests need the
//! bearer token (401 without, 403 with a wrong one, JSON errors both), reads stay open
//! unless `token_required_for_reads`, and the CLI's client sends the token.

mod common;

use std::sync::{Arc, Mutex};

use ferry::api::access::ApiAccess;
use ferry::api::client::{ApiClient, ClientError};
use ferry::control::{ControlHandle, ControlRequest};
use ferry::progress::{Phase, Progress};
use serde_json::{json, Value};

/// An API with `access` and a supervisor stand-in that records what reached it.
async fn start(access: ApiAccess) -> (String, ferry::api::ApiServer, Arc<Mutex<Vec<String>>>) {
    start_tls(access, None).await
}

async fn start_tls(
    access: ApiAccess,
    tls: Option<&ferry_sandbox::TlsFiles>,
) -> (String, ferry::api::ApiServer, Arc<Mutex<Vec<String>>>) {
    let progress = Progress::new();
    progress.set_phase(Phase::Syncing);
    let (control, mut rx) = ControlHandle::channel(8);
    let reached = Arc::new(Mutex::new(Vec::new()));
    let log = reached.clone();
    tokio::spawn(async move {
        while let Some((request, reply)) = rx.recv().await {
            log.lock().unwrap().push(format!("{request:?}"));
            let _ = reply.send(Ok(json!({ "message": "ok" })));
            if matches!(request, ControlRequest::Cancel) {
                break;
            }
        }
    });
    let listen = "127.0.0.1:0".parse().unwrap();
    let server = ferry::api::serve_with(listen, access, tls, progress, control, None)
        .await
        .expect("api binds port 0");
    let scheme = if tls.is_some() { "https" } else { "http" };
    let url = format!("{scheme}://localhost:{}", server.local_addr().port());
    (url, server, reached)
}

fn client(url: &str, token: Option<&str>) -> ApiClient {
    ApiClient::with(url, token.map(str::to_string), None).unwrap()
}

async fn call(client: &ApiClient, method: &str, path: &str) -> (u16, Value) {
    let body = (method == "POST").then(|| b"{}".to_vec());
    let response = client.send(method, path, body).await.expect("api answers");
    let json = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
    (response.status, json)
}

/// Pins: anyone who could reach the API could pause, cut over or cancel.
#[tokio::test]
async fn state_changes_need_the_token_and_reads_stay_open() {
    let secret = "correct horse battery staple";
    let (url, server, reached) = start(ApiAccess {
        token: Some(secret.into()),
        token_required_for_reads: false,
    })
    .await;
    let (status, body) = call(&client(&url, None), "POST", "/api/v1/pause").await;
    assert_eq!(status, 401, "{body}");
    assert!(body["error"].as_str().unwrap().contains("Bearer"), "{body}");
    let (status, body) = call(&client(&url, Some("guess")), "POST", "/api/v1/pause").await;
    assert_eq!(status, 403, "{body}");
    assert!(body["error"].as_str().is_some(), "{body}");
    assert!(
        reached.lock().unwrap().is_empty(),
        "refused requests never reach the supervisor"
    );
    let (status, _) = call(&client(&url, None), "GET", "/api/v1/progress").await;
    assert_eq!(status, 200, "reads are open by default");
    let (status, body) = call(&client(&url, Some(secret)), "POST", "/api/v1/pause").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(reached.lock().unwrap().len(), 1);
    match ferry::cli::control(&url, ferry::cli::ControlAction::Pause).await {
        Err(ClientError::Api { status: 401, .. }) => {}
        other => panic!("the CLI without FERRY_API_TOKEN must get a 401: {other:?}"),
    }
    server.stop().await;
}

#[tokio::test]
async fn reads_need_the_token_when_asked() {
    let (url, server, _) = start(ApiAccess {
        token: Some("t0ken".into()),
        token_required_for_reads: true,
    })
    .await;
    for path in ["/api/v1/progress", "/api/v1/report", "/metrics"] {
        let (status, body) = call(&client(&url, None), "GET", path).await;
        assert_eq!(status, 401, "{path}: {body}");
        assert!(body["error"].is_string(), "{path}: JSON error");
    }
    let (status, _) = call(&client(&url, Some("t0ken")), "GET", "/api/v1/progress").await;
    assert_eq!(status, 200);
    server.stop().await;
}

/// The API over HTTPS: a client trusting the listener's CA reaches it with the token; a
/// client without that CA is refused by TLS before any request is made.
#[tokio::test]
async fn the_api_serves_https_with_its_certificate() {
    let dir = std::env::temp_dir().join(format!("ferry-api-tls-{}", std::process::id()));
    let (ca_file, files) = common::certs::write_certs(&dir);
    let (url, server, reached) = start_tls(
        ApiAccess {
            token: Some("t0ken".into()),
            token_required_for_reads: false,
        },
        Some(&files),
    )
    .await;
    assert!(url.starts_with("https://"));
    let trusted = ApiClient::with(&url, Some("t0ken".into()), Some(&ca_file)).unwrap();
    let (status, body) = call(&trusted, "POST", "/api/v1/pause").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(reached.lock().unwrap().len(), 1);
    let untrusting = ApiClient::with(&url, Some("t0ken".into()), None).unwrap();
    assert!(
        matches!(
            untrusting.get("/api/v1/progress").await,
            Err(ClientError::Unreachable { .. })
        ),
        "an unknown CA is refused"
    );
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
