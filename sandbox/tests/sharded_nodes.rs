//! Options of `ShardedCluster` that apply to every node: TLS, the oplog size limit and
//! the periodic no-op interval.

mod common;

use std::time::Duration;

use common::{client_for, poll, run};
use ferry_sandbox::{ShardedCluster, ShardedOptions, TlsFiles};
use futures_util::TryStreamExt;
use mongodb::bson::{doc, Document};

/// A CA and a server certificate for 127.0.0.1 (as `tls.rs` makes them).
fn write_certs(dir: &std::path::Path) -> (std::path::PathBuf, TlsFiles) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params
        .subject_alt_names
        .push(rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    let ca_file = dir.join("ca.pem");
    let cert_file = dir.join("server.pem");
    let key_file = dir.join("server.key");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    (
        ca_file,
        TlsFiles {
            cert_file,
            key_file,
        },
    )
}

#[tokio::test]
async fn tls_applies_to_the_router_and_every_node() {
    let dir = std::env::temp_dir().join(format!("ferry-sharded-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ca, files) = write_certs(&dir);
    let cluster = ShardedCluster::start(ShardedOptions {
        shards: 2,
        tls: Some(files),
        ..Default::default()
    })
    .expect("cluster starts");
    let ca = ca.display().to_string();
    let router = client_for(&format!("{}&tlsCAFile={ca}", cluster.router_uri())).await;
    run(&router, "admin", doc! {"ping": 1}).await.unwrap();
    let mut uris: Vec<String> = cluster.shard_uris().into_iter().map(|(_, u)| u).collect();
    uris.push(cluster.config_uri());
    for uri in uris {
        assert!(uri.contains("tls=true"), "{uri}");
        let node = client_for(&format!("{uri}&tlsCAFile={ca}")).await;
        run(&node, "admin", doc! {"ping": 1}).await.unwrap();
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn oplog_limit_and_periodic_noops_apply_to_every_shard() {
    let cluster = ShardedCluster::start(ShardedOptions {
        shards: 2,
        oplog_max_events: Some(5),
        periodic_noop_interval: Duration::from_millis(50),
        ..Default::default()
    })
    .expect("cluster starts");
    let router = client_for(&cluster.router_uri()).await;
    run(
        &router,
        "admin",
        doc! {"shardCollection": "app.c", "key": {"_id": "hashed"}},
    )
    .await
    .unwrap();
    let coll = router.database("app").collection::<Document>("c");
    coll.insert_many((0..40).map(|i| doc! {"_id": i}))
        .await
        .unwrap();
    for (name, uri) in cluster.shard_uris() {
        let shard = client_for(&uri).await;
        let oplog = shard.database("local").collection::<Document>("oplog.rs");
        poll(Duration::from_secs(10), || {
            let oplog = oplog.clone();
            async move {
                let noops: Vec<Document> = oplog
                    .find(doc! {"op": "n", "o.msg": "periodic noop"})
                    .await
                    .ok()?
                    .try_collect()
                    .await
                    .ok()?;
                (!noops.is_empty()).then_some(())
            }
        })
        .await;
        let all: Vec<Document> = oplog
            .find(doc! {})
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        assert!(all.len() <= 5, "{name} keeps {} entries", all.len());
    }
}
