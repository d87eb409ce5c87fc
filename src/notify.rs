//! Webhook notifications (ready for cutover, window expiring, expired, completed): a JSON
//! POST to `notify.webhook_url`, fire and forget, failures logged.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::actors::SharedEngine;

/// Sends `{event, message, phase}` to the configured webhook, if any, in the background.
pub fn send(engine: &SharedEngine, event: &str, message: &str) {
    let Some(url) = engine.config.notify.webhook_url.clone() else {
        return;
    };
    let timeout = Duration::from_secs(engine.config.notify.webhook_timeout_seconds.max(1));
    let body = serde_json::json!({
        "event": event,
        "message": message,
        "phase": engine.progress.phase().as_str(),
        "source": engine.source.display_uri,
    })
    .to_string();
    tokio::spawn(async move {
        match tokio::time::timeout(timeout, post(&url, &body)).await {
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

/// A minimal HTTP/1.1 POST (http:// only); returns the status code.
pub async fn post(url: &str, body: &str) -> std::io::Result<u16> {
    let invalid = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, m.to_string());
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        invalid("only http:// webhooks are supported; put an https proxy in front")
    })?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let host_port = if authority.contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let mut stream = tokio::net::TcpStream::connect(&host_port).await?;
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
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
