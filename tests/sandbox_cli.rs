//! `ferry sandbox` prints exactly one `ready <uri>` line and exits on SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn cli_prints_ready_and_exits_on_sigterm() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args([
            "sandbox",
            "--port",
            "0",
            "--set-name",
            "rsx",
            "--version",
            "6.0.3",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ferry sandbox");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let first = lines.next().expect("a line").expect("utf8");
    let uri = first.strip_prefix("ready ").expect("ready line");
    assert!(uri.starts_with("mongodb://127.0.0.1:"), "{uri}");
    assert!(uri.contains("replicaSet=rsx"), "{uri}");
    let addr = uri
        .trim_start_matches("mongodb://")
        .split('/')
        .next()
        .expect("host:port")
        .to_string();
    assert!(std::net::TcpStream::connect(&addr).is_ok());
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "did not exit on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = exit;
    // Nothing else was printed on stdout.
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(rest.is_empty(), "{rest:?}");
}

/// `--oplog-max-events N` keeps only the newest N oplog entries: resuming a change stream
/// from before them fails with ChangeStreamHistoryLost (286), as on a rolled-over oplog.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_oplog_max_events_loses_old_history() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["sandbox", "--port", "0", "--oplog-max-events", "5"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ferry sandbox");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("ready line");
    let uri = line
        .trim()
        .strip_prefix("ready ")
        .expect("ready line")
        .to_string();
    let client = mongodb::Client::with_uri_str(&uri).await.expect("client");
    let hello = client
        .database("admin")
        .run_command(bson::doc! {"ping": 1})
        .await
        .expect("ping");
    let before = hello.get_timestamp("operationTime").expect("operationTime");
    let coll = client.database("t").collection::<bson::Document>("c");
    for i in 0..20 {
        coll.insert_one(bson::doc! {"_id": i})
            .await
            .expect("insert");
    }
    let err = coll
        .watch()
        .start_at_operation_time(before)
        .await
        .expect_err("history before the newest 5 entries is gone");
    let code = match err.kind.as_ref() {
        mongodb::error::ErrorKind::Command(c) => c.code,
        other => panic!("unexpected error {other:?}"),
    };
    assert_eq!(code, 286, "{err}");
    let _ = child.kill();
    let _ = child.wait();
}

/// `ferry sandbox --shards 2` prints the router's URI (a mongos: no `replicaSet`), one
/// line per shard and the config server's; the router answers as a mongos and every
/// node applies `--version`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_shards_prints_router_shards_and_config() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args([
            "sandbox",
            "--port",
            "0",
            "--shards",
            "2",
            "--version",
            "6.0.17",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ferry sandbox --shards 2");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut next = || lines.next().expect("a line").expect("utf8");
    let ready = next();
    let router = ready
        .strip_prefix("ready ")
        .expect("ready line")
        .to_string();
    assert!(!router.contains("replicaSet"), "{router}");
    let shard0 = next();
    let shard1 = next();
    assert!(shard0.starts_with("shard shard0 mongodb://"), "{shard0}");
    assert!(shard1.contains("replicaSet=shard1"), "{shard1}");
    let config = next();
    assert!(config.starts_with("config mongodb://"), "{config}");
    let client = mongodb::Client::with_uri_str(&router)
        .await
        .expect("client");
    let hello = client
        .database("admin")
        .run_command(bson::doc! {"hello": 1})
        .await
        .expect("hello");
    assert_eq!(hello.get_str("msg"), Ok("isdbgrid"));
    let build = client
        .database("admin")
        .run_command(bson::doc! {"buildInfo": 1})
        .await
        .expect("buildInfo");
    assert_eq!(build.get_str("version"), Ok("6.0.17"));
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().expect("wait").is_none() {
        assert!(Instant::now() < deadline, "did not exit on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A script that closes the sandbox's output before reading its `ready` lines does not
/// stop the server (the benchmark read only the first line of `--shards 2` and its
/// sandbox died printing the `shard` lines: "failed printing to stdout: Broken pipe").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sandbox_keeps_serving_when_its_output_is_closed() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("address").port()
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["sandbox", "--port", &port.to_string(), "--shards", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ferry sandbox --shards 2");
    drop(child.stdout.take());
    let client = mongodb::Client::with_uri_str(format!("mongodb://127.0.0.1:{port}"))
        .await
        .expect("client");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(hello) = client
            .database("admin")
            .run_command(bson::doc! {"hello": 1})
            .await
        {
            assert_eq!(hello.get_str("msg"), Ok("isdbgrid"));
            break;
        }
        assert!(
            child.try_wait().expect("wait").is_none(),
            "the sandbox exited when its output was closed"
        );
        assert!(Instant::now() < deadline, "the router never answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Still serving a moment later, after it wrote its lines.
    client
        .database("admin")
        .run_command(bson::doc! {"listShards": 1})
        .await
        .expect("listShards");
    assert!(child.try_wait().expect("wait").is_none());
    let _ = child.kill();
    let _ = child.wait();
}
