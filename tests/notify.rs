//! Webhook notifications: a run announces ready_for_cutover and completed to an http://
//! receiver; https:// receivers are checked against the public roots or a given CA.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type Received = Arc<Mutex<Vec<serde_json::Value>>>;

/// Reads one HTTP request (head + Content-Length body), answers 200, records the body.
async fn serve_one<S>(mut stream: S, received: Received)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let Ok(n) = stream.read(&mut buf).await else {
            return;
        };
        if n == 0 {
            return;
        }
        data.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&data).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length: usize = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap_or(0))
                })
                .unwrap_or(0);
            if data.len() >= end + 4 + length {
                let body = &data[end + 4..end + 4 + length];
                if let Ok(json) = serde_json::from_slice(body) {
                    received.lock().unwrap().push(json);
                }
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .await;
                let _ = stream.shutdown().await;
                return;
            }
        }
    }
}

async fn http_receiver() -> (String, Received) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks/ferry", listener.local_addr().unwrap());
    let received: Received = Arc::default();
    let r = received.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve_one(stream, r.clone()));
        }
    });
    (url, received)
}

fn events(received: &Received) -> Vec<String> {
    received
        .lock()
        .unwrap()
        .iter()
        .filter_map(|j| j["event"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_announces_ready_for_cutover_and_completed() {
    let pair = Pair::start().await;
    seed(&pair.src, "app", 200).await;
    let (url, received) = http_receiver().await;
    let m = start(pair.config(&format!("[notify]\nwebhook_url = \"{url}\"\n"))).await;
    wait_phase(&m.progress, ferry::progress::Phase::ReadyForCutover).await;
    poll("the ready_for_cutover notification", || {
        events(&received).contains(&"ready_for_cutover".to_string())
    })
    .await;
    cutover_and_complete(m).await;
    poll("the completed notification", || {
        events(&received).contains(&"completed".to_string())
    })
    .await;
    let all = received.lock().unwrap().clone();
    let completed = all.iter().find(|j| j["event"] == "completed").unwrap();
    assert_eq!(completed["phase"], "completed");
    assert!(completed["message"]
        .as_str()
        .unwrap()
        .contains("verification passed"));
}

#[tokio::test]
async fn https_webhooks_trust_the_given_ca_and_refuse_unknown_ones() {
    let dir = std::env::temp_dir().join(format!("ferry-webhook-tls-{}", std::process::id()));
    let (ca_file, files) = certs::write_certs(&dir);
    let acceptor = ferry_sandbox::tls::acceptor(&files).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let received: Received = Arc::default();
    let r = received.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let r = r.clone();
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(stream).await {
                    serve_one(tls, r).await;
                }
            });
        }
    });
    let url = format!("https://localhost:{port}/hook");
    let body = r#"{"event":"test","message":"hello","phase":"syncing"}"#;
    let status = tokio::time::timeout(
        Duration::from_secs(30),
        ferry::notify::post(&url, body, Some(&ca_file)),
    )
    .await
    .expect("answered in time")
    .expect("https POST with the test CA");
    assert_eq!(status, 200);
    assert_eq!(events(&received), vec!["test".to_string()]);

    let refused = ferry::notify::post(&url, body, None).await;
    assert!(
        refused.is_err(),
        "a certificate from an unknown CA must be refused"
    );
    let bad = ferry::notify::post("ftp://example.com/x", body, None)
        .await
        .unwrap_err();
    assert!(bad.to_string().contains("http:// and https://"), "{bad}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Pins: a webhook receiver that fails once (a 503 from a restarting receiver) lost the
/// notification; it is now retried with backoff, and a 4xx is not retried.
#[tokio::test]
async fn a_webhook_is_retried_after_a_server_error_but_not_after_a_client_error() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let statuses = Arc::new(Mutex::new(vec![503u16, 200, 400]));
    let seen = Arc::new(Mutex::new(0usize));
    let (s, n) = (statuses.clone(), seen.clone());
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let status = {
                let mut s = s.lock().unwrap();
                if s.is_empty() {
                    400
                } else {
                    s.remove(0)
                }
            };
            *n.lock().unwrap() += 1;
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut data = Vec::new();
                while !String::from_utf8_lossy(&data).contains("\"event\"") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => data.extend_from_slice(&buf[..k]),
                    }
                }
                let reply = format!(
                    "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
                let _ = stream.write_all(reply.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    let body = r#"{"event":"ready_for_cutover","message":"m","phase":"ready_for_cutover"}"#;
    let short = Duration::from_millis(10);
    let status = ferry::notify::deliver(&url, body, None, Duration::from_secs(10), short)
        .await
        .expect("delivered on the second attempt");
    assert_eq!(status, 200);
    assert_eq!(*seen.lock().unwrap(), 2, "one retry after the 503");
    let refused = ferry::notify::deliver(&url, body, None, Duration::from_secs(10), short).await;
    assert!(refused.is_err(), "a 400 is final");
    assert_eq!(*seen.lock().unwrap(), 3, "no retry after a 400");
}

/// Pins: a run that failed told nobody; the webhook now carries `failed` with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_run_is_announced_with_its_reason() {
    let pair = Pair::start().await;
    seed(&pair.src, "app", 100).await;
    let (url, received) = http_receiver().await;
    let m = start(pair.config(&format!("[notify]\nwebhook_url = \"{url}\"\n"))).await;
    wait_phase(&m.progress, ferry::progress::Phase::ReadyForCutover).await;
    // A replayed drop whose write concern can never be met fails the run.
    pair.dst
        .database("admin")
        .run_command(bson::doc! {
            "configureFailPoint": "failCommand",
            "mode": {"times": 1},
            "data": {"failCommands": ["drop"], "writeConcernError": {"code": 100, "errmsg": "injected"}},
        })
        .await
        .expect("fail point");
    pair.src
        .database("app")
        .collection::<bson::Document>("events")
        .drop()
        .await
        .expect("drop on the source");
    poll("the failed notification", || {
        events(&received).contains(&"failed".to_string())
    })
    .await;
    let all = received.lock().unwrap().clone();
    let failed = all.iter().find(|j| j["event"] == "failed").unwrap();
    assert!(
        failed["message"].as_str().unwrap().contains("drop"),
        "the reason is named: {failed}"
    );
    wait(m).await;
}

/// A cutover that stays in progress past `cutover.long_cutover_warning_hours` is
/// announced (webhook `cutover_long`) while it runs, and the run still completes. Here
/// the destination holds every `collMod` (the index finalize) for a few seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cutover_running_long_is_announced() {
    let pair = Pair::start().await;
    seed(&pair.src, "app", 100).await;
    let (url, received) = http_receiver().await;
    let m = start(pair.config(&format!(
        "[notify]\nwebhook_url = \"{url}\"\n[cutover]\nlong_cutover_warning_hours = 0.0003\n"
    )))
    .await;
    wait_phase(&m.progress, ferry::progress::Phase::ReadyForCutover).await;
    pair.dst
        .database("admin")
        .run_command(bson::doc! {
            "configureFailPoint": "failCommand",
            "mode": "alwaysOn",
            "data": {"failCommands": ["collMod"], "blockConnection": true, "blockTimeMS": 2500},
        })
        .await
        .expect("fail point");
    let outcome = cutover_and_complete(m).await;
    assert_eq!(outcome.phase, ferry::progress::Phase::Completed);
    poll("the cutover_long notification", || {
        events(&received).contains(&"cutover_long".to_string())
    })
    .await;
    let all = received.lock().unwrap().clone();
    let long = all.iter().find(|j| j["event"] == "cutover_long").unwrap();
    assert_eq!(long["phase"], "cutting_over", "{long}");
}
