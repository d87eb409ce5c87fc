//! The client of Ferry's own API, used by the CLI verbs (`ferry status`, `cutover`, ...).
//!
//! HTTP is `reqwest` over rustls: `http://` or `https://` (the API listener may serve
//! TLS), the CA to trust from `FERRY_API_CA_FILE` (besides the public web roots), and the
//! bearer token from `FERRY_API_TOKEN` when the daemon requires one.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;

/// How long one API call may take end to end. The API answers from memory (control
/// requests wait at most 30 s on the supervisor), so this only catches a hung daemon.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(40);

/// How long connecting may take before the daemon counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest response accepted; a progress document with thousands of namespaces stays
/// well under this, and it bounds memory if something else answers on the port.
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

/// Environment variable with the API's bearer token.
pub const TOKEN_ENV: &str = "FERRY_API_TOKEN";
/// Environment variable with a PEM file of the CA that signed the API's certificate.
pub const CA_FILE_ENV: &str = "FERRY_API_CA_FILE";

/// Why a call failed, in the operator's words.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid API URL {url:?}: {reason}; expected http://HOST:PORT or https://HOST:PORT")]
    InvalidUrl { url: String, reason: String },
    #[error("cannot reach ferry at {url}: is `ferry run` running?")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("ferry at {url} did not answer within {} s", REQUEST_TIMEOUT.as_secs())]
    Timeout { url: String },
    #[error("ferry at {url} sent a response this client cannot read: {reason}")]
    Malformed { url: String, reason: String },
    #[error("cannot use the CA file {}: {reason}; set {CA_FILE_ENV} to a PEM file", path.display())]
    CaFile { path: PathBuf, reason: String },
    /// The API answered with an error status; `message` is its `error` field.
    #[error("{message} (HTTP {status})")]
    Api { status: u16, message: String },
}

/// A response: status and raw body.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Response {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body as text (lossy: the API only sends UTF-8).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The `error` message of an error body, or the raw body when it is not ours.
    pub fn error_message(&self) -> String {
        serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
            .unwrap_or_else(|| self.text())
    }
}

/// Where the API lives (`http[s]://host:port` plus an optional path prefix, for a
/// daemon behind a reverse proxy) and how to authenticate to it.
#[derive(Debug, Clone)]
pub struct ApiClient {
    url: String,
    token: Option<String>,
    http: reqwest::Client,
}

/// A PEM bundle's certificates, for a client that must trust a private CA.
pub fn ca_certificates(path: &Path) -> Result<Vec<reqwest::Certificate>, String> {
    let pem = std::fs::read(path).map_err(|e| e.to_string())?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("no PEM certificate in it".into());
    }
    Ok(certs)
}

impl ApiClient {
    /// A client for `url`, with the token and CA file from the environment
    /// ([`TOKEN_ENV`], [`CA_FILE_ENV`]).
    pub fn new(url: &str) -> Result<ApiClient, ClientError> {
        let token = std::env::var(TOKEN_ENV).ok().filter(|t| !t.is_empty());
        let ca_file = std::env::var_os(CA_FILE_ENV)
            .filter(|p| !p.is_empty())
            .map(PathBuf::from);
        ApiClient::with(url, token, ca_file.as_deref())
    }

    /// A client for `url` sending `token` as a bearer token and trusting `ca_file`.
    pub fn with(
        url: &str,
        token: Option<String>,
        ca_file: Option<&Path>,
    ) -> Result<ApiClient, ClientError> {
        let invalid = |reason: &str| ClientError::InvalidUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let parsed = reqwest::Url::parse(url).map_err(|e| invalid(&e.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(invalid("the scheme must be http:// or https://"));
        }
        if parsed.host_str().is_none_or(str::is_empty) {
            return Err(invalid("missing host"));
        }
        let mut builder = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("ferry-cli/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = ca_file {
            let certs = ca_certificates(path).map_err(|reason| ClientError::CaFile {
                path: path.to_path_buf(),
                reason,
            })?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder.build().map_err(|e| invalid(&e.to_string()))?;
        Ok(ApiClient {
            url: url.trim_end_matches('/').to_string(),
            token,
            http,
        })
    }

    /// The URL as the operator gave it, for messages.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub async fn get(&self, path: &str) -> Result<Response, ClientError> {
        self.send("GET", path, None).await
    }

    pub async fn post_json(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<Response, ClientError> {
        self.send("POST", path, Some(body.to_string().into_bytes()))
            .await
    }

    pub async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let response = self.get(path).await?;
        self.decode(response)
    }

    pub async fn post_json_for<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<T, ClientError> {
        let response = self.post_json(path, body).await?;
        self.decode(response)
    }

    fn decode<T: DeserializeOwned>(&self, response: Response) -> Result<T, ClientError> {
        if !response.is_success() {
            return Err(ClientError::Api {
                status: response.status,
                message: response.error_message(),
            });
        }
        serde_json::from_slice(&response.body)
            .map_err(|e| self.malformed(format!("invalid JSON: {e}")))
    }

    /// Sends one request; `path` starts with `/` and is appended to the base URL.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Response, ClientError> {
        let method = reqwest::Method::from_bytes(method.as_bytes()).map_err(|_| {
            ClientError::InvalidUrl {
                url: self.url.clone(),
                reason: format!("unknown HTTP method {method:?}"),
            }
        })?;
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.url))
            .header(reqwest::header::ACCEPT, "application/json");
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body);
        }
        let mut response = request.send().await.map_err(|e| self.failed(e))?;
        let status = response.status().as_u16();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| self.failed(e))? {
            if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(
                    self.malformed(format!("response larger than {MAX_RESPONSE_BYTES} bytes"))
                );
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Response { status, body })
    }

    fn failed(&self, source: reqwest::Error) -> ClientError {
        if source.is_timeout() {
            ClientError::Timeout {
                url: self.url.clone(),
            }
        } else if source.is_decode() || source.is_body() {
            self.malformed(source.to_string())
        } else {
            ClientError::Unreachable {
                url: self.url.clone(),
                source,
            }
        }
    }

    fn malformed(&self, reason: String) -> ClientError {
        ClientError::Malformed {
            url: self.url.clone(),
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_before_any_request() {
        assert!(ApiClient::with("http://127.0.0.1:8080", None, None).is_ok());
        assert!(ApiClient::with("https://ferry.internal:8443/prefix/", None, None).is_ok());
        for bad in ["127.0.0.1:8080", "ftp://host", "http://", "not a url"] {
            assert!(
                matches!(
                    ApiClient::with(bad, None, None),
                    Err(ClientError::InvalidUrl { .. })
                ),
                "{bad}"
            );
        }
        let missing = ApiClient::with("https://h:1", None, Some(Path::new("/nonexistent.pem")));
        assert!(matches!(missing, Err(ClientError::CaFile { .. })));
    }
}
