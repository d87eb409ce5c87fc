//! `ferry verify`: compares two deployments and says where they differ.

use std::process::Command;

use bson::{doc, Document};
use ferry_sandbox::{Sandbox, SandboxOptions};

fn sandbox(name: &str) -> Sandbox {
    Sandbox::start(SandboxOptions {
        set_name: name.into(),
        ..Default::default()
    })
    .expect("sandbox")
}

async fn seed(uri: &str) {
    let client = mongodb::Client::with_uri_str(uri).await.expect("client");
    let coll = client.database("shop").collection::<Document>("orders");
    coll.insert_many(
        (0..200).map(|i| doc! {"_id": i, "total": i as f64 * 1.5, "items": [i, i + 1]}),
    )
    .await
    .expect("seed");
}

fn verify(config: &std::path::Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["verify", "--config"])
        .arg(config)
        .output()
        .expect("run ferry verify");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_passes_on_equal_sides_and_names_a_difference() {
    let source = sandbox("src");
    let destination = sandbox("dst");
    seed(&source.uri()).await;
    seed(&destination.uri()).await;
    let path = std::env::temp_dir().join(format!("ferry-verify-{}.toml", std::process::id()));
    std::fs::write(
        &path,
        format!(
            "[source]\nuri = \"{}\"\n[destination]\nuri = \"{}\"\n",
            source.uri(),
            destination.uri()
        ),
    )
    .expect("write config");

    let (ok, out) = tokio::task::spawn_blocking({
        let path = path.clone();
        move || verify(&path)
    })
    .await
    .expect("join");
    assert!(ok, "{out}");
    assert!(
        out.contains("verification passed: 1 namespaces, 200 documents"),
        "{out}"
    );

    let client = mongodb::Client::with_uri_str(destination.uri())
        .await
        .expect("client");
    client
        .database("shop")
        .collection::<Document>("orders")
        .update_one(doc! {"_id": 7}, doc! {"$set": {"total": 0.0}})
        .await
        .expect("change destination");
    let (ok, out) = tokio::task::spawn_blocking({
        let path = path.clone();
        move || verify(&path)
    })
    .await
    .expect("join");
    let _ = std::fs::remove_file(&path);
    assert!(!ok, "{out}");
    assert!(out.contains("shop.orders [content]"), "{out}");
    assert!(out.contains("_id 7 differs"), "{out}");
}

/// `ferry validate | head -1`: the reader goes away before the output is written, and the
/// command ends quietly instead of panicking ("failed printing to stdout: Broken pipe"
/// with a backtrace on stderr, as `ferry report | head` did).
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_printing_command_ends_quietly_when_its_reader_goes_away() {
    use std::os::unix::process::ExitStatusExt;
    let source = sandbox("src");
    let destination = sandbox("dst");
    let path = std::env::temp_dir().join(format!("ferry-pipe-{}.toml", std::process::id()));
    std::fs::write(
        &path,
        format!(
            "[source]\nuri = \"{}\"\n[destination]\nuri = \"{}\"\n",
            source.uri(),
            destination.uri()
        ),
    )
    .expect("write config");
    let out = tokio::task::spawn_blocking(move || {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(["validate", "--config"])
            .arg(&path)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run ferry validate");
        // The reader closes its end at once, like `head` after its first line.
        drop(child.stdout.take());
        let out = child.wait_with_output().expect("wait");
        let _ = std::fs::remove_file(&path);
        out
    })
    .await
    .expect("join");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "stderr: {stderr}");
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGPIPE),
        "status {:?}, stderr: {stderr}",
        out.status
    );
}
