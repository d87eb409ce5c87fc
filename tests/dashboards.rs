//! The Grafana dashboard and the Prometheus alert rules in deploy/ name only metrics
//! that a running daemon exports: a dashboard panel or an alert on a misspelt or
//! removed metric shows nothing and never fires, silently.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;

use bson::doc;
use common::*;
use ferry::progress::Phase;

/// Every `ferry_*` metric name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("ferry_") {
        let start = i + at;
        let before_ok =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_lowercase() || bytes[end] == b'_') {
            end += 1;
        }
        if before_ok {
            names.insert(text[start..end].to_string());
        }
        i = end;
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboards_and_alerts_use_only_exported_metrics() {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut wanted = BTreeSet::new();
    for file in ["deploy/grafana/ferry.json", "deploy/prometheus/alerts.yml"] {
        let text = std::fs::read_to_string(format!("{root}/{file}")).expect("deploy file");
        let names = metric_names(&text);
        assert!(!names.is_empty(), "{file} names no metric");
        wanted.extend(names);
    }

    let pair = Pair::start().await;
    seed(&pair.src, "app", 1000).await;
    // Two failed inserts on the destination: errors and retries are recorded.
    pair.dst
        .database("admin")
        .run_command(doc! {
            "configureFailPoint": "failCommand",
            "mode": {"times": 2},
            "data": {"failCommands": ["insert"], "errorCode": 50},
        })
        .await
        .expect("fail point");
    let port = free_port();
    let mut config = pair.config("");
    config.api.listen = format!("127.0.0.1:{port}").parse().expect("address");
    let m = start_with(config, true).await;
    wait_phase(&m.progress, Phase::ReadyForCutover).await;
    let load = Workload::start(pair.src.clone(), "app", 1000);
    load.advance(50).await;
    poll("applied events and changes since the baseline", || {
        applied(&m.progress) > 0 && m.progress.baseline_changed.load(Ordering::Relaxed) > 0
    })
    .await;
    load.stop().await;
    let api = ferry::api::client::ApiClient::new(&format!("http://127.0.0.1:{port}"))
        .expect("API client");
    let scraped = api.get("/metrics").await.expect("/metrics answers").text();
    let exported: BTreeSet<String> = scraped
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect();
    let missing: Vec<&String> = wanted.iter().filter(|n| !exported.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "deploy/ uses metrics the daemon does not export: {missing:?}\nexported: {exported:?}"
    );
    cutover_and_complete(m).await;
}
