//! Webhook notifications (ready for cutover, window expiring, expired, completed, ...): a
//! JSON POST to `notify.webhook_url` in the background, retried with backoff, failures
//! logged. HTTP is `reqwest` over rustls: the public web roots plus `webhook_ca_file`.

use std::path::Path;
use std::time::Duration;

use tracing::Instrument;

use crate::actors::SharedEngine;

/// Attempts per notification: the first, then retries after 1 s, 2 s and 4 s.
pub const ATTEMPTS: u32 = 4;
/// The wait before the first retry; doubled before each later one.
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);

/// Why one delivery attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("{url}: only http:// and https:// webhooks are supported")]
    Scheme { url: String },
    #[error("webhook CA file {path}: {reason}")]
    CaFile { path: String, reason: String },
    #[error("{url}: {source}")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url} answered HTTP {status}")]
    Status { url: String, status: u16 },
}

impl WebhookError {
    /// Whether a later attempt may succeed: network trouble, timeouts, 5xx and 429.
    pub fn is_transient(&self) -> bool {
        match self {
            WebhookError::Http { .. } => true,
            WebhookError::Status { status, .. } => *status >= 500 || *status == 429,
            WebhookError::Scheme { .. } | WebhookError::CaFile { .. } => false,
        }
    }
}

/// Sends `{event, message, phase, source}` to the configured webhook, if any, in the
/// background.
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
    let event = event.to_string();
    // The delivery runs on another task (maybe another thread): it keeps the span of
    // the run and the actor that sent it, so its log lines say whose they are.
    tokio::spawn(
        async move {
            if let Err(e) = deliver(&url, &body, ca_file.as_deref(), timeout, FIRST_BACKOFF).await
            {
                tracing::warn!(error = %e, event, url = %crate::config::redacted_url(&url), "webhook not delivered");
            }
        }
        .instrument(tracing::Span::current()),
    );
}

/// Posts `body` until it is accepted (2xx), a permanent failure, or [`ATTEMPTS`]
/// attempts, waiting `first_backoff`, then twice as long, between them. Each attempt
/// may take `timeout`. Returns the accepting status.
pub async fn deliver(
    url: &str,
    body: &str,
    ca_file: Option<&Path>,
    timeout: Duration,
    first_backoff: Duration,
) -> Result<u16, WebhookError> {
    let client = client(url, ca_file, timeout)?;
    let mut backoff = first_backoff;
    let mut attempt = 1;
    loop {
        match post_with(&client, url, body).await {
            Ok(status) => return Ok(status),
            Err(e) if e.is_transient() && attempt < ATTEMPTS => {
                tracing::debug!(error = %e, attempt, "webhook attempt failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff *= 2;
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// One POST of `body` to an `http://` or `https://` URL; returns the 2xx status. For
/// https the server is checked against the public web roots, plus the CA in `ca_file`.
pub async fn post(url: &str, body: &str, ca_file: Option<&Path>) -> Result<u16, WebhookError> {
    let client = client(url, ca_file, Duration::from_secs(30))?;
    post_with(&client, url, body).await
}

fn client(
    url: &str,
    ca_file: Option<&Path>,
    timeout: Duration,
) -> Result<reqwest::Client, WebhookError> {
    let redacted = crate::config::redacted_url(url);
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(WebhookError::Scheme { url: redacted });
    }
    let mut builder = reqwest::Client::builder()
        .timeout(timeout)
        .user_agent(concat!("ferry/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = ca_file {
        let certs =
            crate::api::client::ca_certificates(path).map_err(|reason| WebhookError::CaFile {
                path: path.display().to_string(),
                reason,
            })?;
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder.build().map_err(|source| WebhookError::Http {
        url: redacted,
        source,
    })
}

async fn post_with(client: &reqwest::Client, url: &str, body: &str) -> Result<u16, WebhookError> {
    let redacted = || crate::config::redacted_url(url);
    let response = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.to_string())
        .send()
        .await
        .map_err(|source| WebhookError::Http {
            url: redacted(),
            source,
        })?;
    let status = response.status().as_u16();
    if (200..300).contains(&status) {
        Ok(status)
    } else {
        Err(WebhookError::Status {
            url: redacted(),
            status,
        })
    }
}
