//! Webhook notifications (ready for cutover, window expiring, expired, completed): a JSON
//! POST to `notify.webhook_url`, fire and forget, failures logged.

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::actors::SharedEngine;

/// Sends `{event, message, phase}` to the configured webhook, if any, in the background.
pub fn send(engine: &SharedEngine, event: &str, message: &str) {
    let Some(url) = engine.config.notify.webhook_url.clone() else {
        return;
    };
    let timeout = Duration::from_secs(engine.config.notify.webhook_timeout_seconds.max(1));
    let ca_file = engine.config.notify.webhook_ca_file.clone();
    let body = serde_json::json!({
        "event": event,
        "message": message,
        "phase": engine.progress.phase().as_str(),
        "source": engine.source.display_uri,
    })
    .to_string();
    tokio::spawn(async move {
        match tokio::time::timeout(timeout, post(&url, &body, ca_file.as_deref())).await {
            Ok(Ok(status)) if (200..300).contains(&status) => {}
            Ok(Ok(status)) => {
                tracing::warn!(status, url = %crate::config::redacted_url(&url), "webhook answered with an error status")
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, url = %crate::config::redacted_url(&url), "webhook failed")
            }
            Err(_) => tracing::warn!(url = %crate::config::redacted_url(&url), "webhook timed out"),
        }
    });
}

/// A minimal HTTP/1.1 POST to an `http://` or `https://` URL; returns the status code.
/// For https the server is checked against the public web roots, plus the CA in
/// `ca_file` when given.
pub async fn post(url: &str, body: &str, ca_file: Option<&Path>) -> std::io::Result<u16> {
    let invalid = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, m);
    let (tls, rest) = if let Some(rest) = url.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("http://") {
        (false, rest)
    } else {
        return Err(invalid(format!(
            "{}: only http:// and https:// webhooks are supported",
            crate::config::redacted_url(url)
        )));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((h, tail)) => (h, tail.strip_prefix(':')),
            None => {
                return Err(invalid(format!(
                    "bad IPv6 host in webhook URL: {authority}"
                )))
            }
        },
        None => match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        },
    };
    let port = match port {
        Some(p) => p
            .parse::<u16>()
            .map_err(|_| invalid(format!("bad port in webhook URL: {p}")))?,
        None if tls => 443,
        None => 80,
    };
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let stream = tokio::net::TcpStream::connect((host, port)).await?;
    if tls {
        let connector = tls_connector(ca_file)?;
        let name = rustls::pki_types::ServerName::try_from(host.to_string())
            .map_err(|e| invalid(format!("webhook host {host}: {e}")))?;
        let stream = connector.connect(name, stream).await?;
        exchange(stream, request.as_bytes()).await
    } else {
        exchange(stream, request.as_bytes()).await
    }
}

fn tls_connector(ca_file: Option<&Path>) -> std::io::Result<tokio_rustls::TlsConnector> {
    let other = |m: String| std::io::Error::other(m);
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let pem = std::fs::read(path)?;
        for cert in rustls_pemfile::certs(&mut &pem[..]) {
            roots
                .add(cert?)
                .map_err(|e| other(format!("{}: {e}", path.display())))?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| other(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(std::sync::Arc::new(
        config,
    )))
}

/// Writes the request and reads the status code of the response.
async fn exchange<S>(mut stream: S, request: &[u8]) -> std::io::Result<u16>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    stream.write_all(request).await?;
    stream.flush().await?;
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    while !head.windows(2).any(|w| w == b"\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    line.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "no HTTP status line"))
}
