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
    let child = spawn_ferry_run(&config);
    let api = ferry::api::client::ApiClient::new(&format!("http://127.0.0.1:{port}"))
        .expect("API client");
    wait_child_phase(&api, "ready_for_cutover").await;
    child_cutover(&api).await;
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
    let _ = std::fs::remove_dir_all(config.parent().expect("config directory"));
}
