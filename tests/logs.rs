//! What an operator reads in the logs: with `log.format = "json"`, every line an actor
//! writes carries its context as spans — the run (with the migration's owner id), then
//! the actor (planner, copier with its shard and namespace, tailer, applier with its
//! namespace, coordinator with its role).

mod common;

use common::*;

fn spans_of(line: &serde_json::Value) -> Vec<String> {
    line["spans"]
        .as_array()
        .map(|spans| {
            spans
                .iter()
                .filter_map(|s| s["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_lines_carry_the_run_and_the_actor() {
    let pair = Pair::start().await;
    seed(&pair.src, "app", 200).await;
    let port = free_port();
    let config = config_file(
        &pair.source.uri(),
        &pair.destination.uri(),
        port,
        "[log]\nformat = \"json\"\nlevel = \"info\"\n",
    );
    // Kept serving after the ending, then stopped: the lines of both parts are read.
    let child = spawn_ferry_run_with(&config, false);
    let api = ferry::api::client::ApiClient::new(&format!("http://127.0.0.1:{port}"))
        .expect("API client");
    wait_child_phase(&api, "ready_for_cutover").await;
    child_cutover(&api).await;
    wait_child_phase(&api, "completed").await;
    // The API that serves after the ending is up once control requests are refused.
    let deadline = std::time::Instant::now() + DEADLINE;
    while !matches!(
        api.post_json("/api/v1/pause", &serde_json::json!({})).await,
        Ok(r) if r.status == 409
    ) {
        assert!(
            std::time::Instant::now() < deadline,
            "the API after the ending never answered"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // SAFETY: signals the child this test started; no memory is involved.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let (status, output) = wait_child(child).await;
    assert!(status.success(), "{output}");
    let lines: Vec<serde_json::Value> = output
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let from_actors: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| {
            l["target"]
                .as_str()
                .is_some_and(|t| t.starts_with("ferry::actors"))
        })
        .collect();
    assert!(!from_actors.is_empty(), "{output}");
    for line in &from_actors {
        let run = &line["spans"][0];
        assert_eq!(run["name"], "run", "{line}");
        assert!(
            run["migration"]
                .as_str()
                .is_some_and(|m| m.starts_with("ferry-")),
            "{line}"
        );
    }
    let with = |message: &str, span: &str| {
        lines.iter().any(|l| {
            l["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(message))
                && spans_of(l).contains(&span.to_string())
        })
    };
    assert!(with("copying", "planner"), "{output}");
    assert!(
        with("tailing the source change stream", "tailer"),
        "{output}"
    );
    // Pins: the API's lines (actix-web's worker thread) carried no span: the cutover
    // request could not be told apart from another run's.
    let request = lines
        .iter()
        .find(|l| l["fields"]["message"] == "operator request")
        .unwrap_or_else(|| panic!("no 'operator request' line: {output}"));
    assert_eq!(
        spans_of(request).first().map(String::as_str),
        Some("run"),
        "{request}"
    );
    // Pins: the lines after the ending (the API serving on another runtime) carried no
    // span.
    let serving = lines
        .iter()
        .find(|l| {
            l["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("the API keeps serving"))
        })
        .unwrap_or_else(|| panic!("no line after the ending: {output}"));
    assert_eq!(
        spans_of(serving).first().map(String::as_str),
        Some("run"),
        "{serving}"
    );
    let _ = std::fs::remove_dir_all(config.parent().expect("config directory"));
}

/// Answers every HTTP request on `listener` with 404 (a webhook that refuses for good,
/// so Ferry logs "webhook not delivered" at once, without retrying).
async fn refuse_webhooks(listener: tokio::net::TcpListener) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    while let Ok((mut stream, _)) = listener.accept().await {
        tokio::spawn(async move {
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            // The headers, then as much body as they announce.
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
                let text = String::from_utf8_lossy(&request).to_ascii_lowercase();
                if let Some(end) = text.find("\r\n\r\n") {
                    let length = text
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    if request.len() >= end + 4 + length {
                        break;
                    }
                }
            }
            let _ = stream
                .write_all(
                    b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                )
                .await;
        });
    }
}

/// Pins: a line logged on a task the run spawned (the webhook delivery, on another
/// runtime thread) carried no span at all, so the operator could not tell which run it
/// belonged to. Now it carries the run's span like the actors' lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_logged_on_a_spawned_task_carries_the_run() {
    let pair = Pair::start().await;
    seed(&pair.src, "app", 50).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the webhook receiver");
    let hook = listener.local_addr().expect("receiver address");
    tokio::spawn(refuse_webhooks(listener));
    let config = config_file(
        &pair.source.uri(),
        &pair.destination.uri(),
        free_port(),
        &format!(
            "[log]\nformat = \"json\"\nlevel = \"info\"\n[notify]\nwebhook_url = \"http://{hook}/hook\"\n"
        ),
    );
    let mut child = spawn_ferry_run(&config);
    let stderr = child.stderr.take().expect("piped stderr");
    let (lines_tx, lines_rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    // The run announces ready_for_cutover; the receiver refuses it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let mut seen = Vec::new();
    let line = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match lines_rx.recv_timeout(left) {
            Ok(text) => {
                let parsed: Option<serde_json::Value> = serde_json::from_str(&text).ok();
                seen.push(text);
                if let Some(line) = parsed.filter(|l| {
                    l["fields"]["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("webhook not delivered"))
                }) {
                    break line;
                }
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("no 'webhook not delivered' line: {}", seen.join("\n"));
            }
        }
    };
    // SAFETY: sending a signal to our own child process.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let (status, output) = wait_child(child).await;
    assert!(status.success(), "{output}");
    assert_eq!(
        spans_of(&line).first().map(String::as_str),
        Some("run"),
        "{line}"
    );
    assert!(
        line["spans"][0]["migration"]
            .as_str()
            .is_some_and(|m| m.starts_with("ferry-")),
        "{line}"
    );
    let _ = std::fs::remove_dir_all(config.parent().expect("config directory"));
}
