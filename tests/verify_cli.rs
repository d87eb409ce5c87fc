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
