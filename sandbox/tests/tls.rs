//! TLS: a server certificate signed by a test CA; clients trusting the CA connect,
//! others fail.

mod common;

use common::*;
use ferry_sandbox::{SandboxOptions, TlsFiles};
use mongodb::bson::doc;

fn write_certs(dir: &std::path::Path) -> (std::path::PathBuf, TlsFiles) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "ferry test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
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
async fn tls_with_ca_connects_and_without_fails() {
    let dir = std::env::temp_dir().join(format!("ferry-sandbox-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ca_file, files) = write_certs(&dir);
    let sb = start_with(SandboxOptions {
        tls: Some(files),
        ..Default::default()
    });
    assert!(sb.uri().contains("tls=true"));
    let good = client_for(&format!("{}&tlsCAFile={}", sb.uri(), ca_file.display())).await;
    run(&good, "admin", doc! {"ping": 1}).await.unwrap();
    good.database("t")
        .collection("c")
        .insert_one(doc! {"x": 1})
        .await
        .unwrap();
    let bad = client_for(&sb.uri()).await;
    assert!(run(&bad, "admin", doc! {"ping": 1}).await.is_err());
    let plain = client_for(&format!(
        "mongodb://{}/?replicaSet=rs0&serverSelectionTimeoutMS=1000",
        sb.address()
    ))
    .await;
    assert!(run(&plain, "admin", doc! {"ping": 1}).await.is_err());
    let _ = std::fs::remove_dir_all(&dir);
}
