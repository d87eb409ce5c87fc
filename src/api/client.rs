//! A minimal HTTP/1.1 client for Ferry's own API, used by the CLI verbs.
//!
//! It speaks just enough HTTP for a loopback call to our own server: one request per
//! connection (`Connection: close`), a JSON body with `Content-Length`, and a response
//! read to the end (plain or chunked). Keeping it this small avoids pulling a full HTTP
//! client stack into the daemon binary for a handful of local requests.

use std::io;
use std::time::Duration;

use serde::de::DeserializeOwned;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long one API call may take end to end. The API answers from memory (control
/// requests wait at most 30 s on the supervisor), so this only catches a hung daemon.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(40);

/// Largest response accepted; a progress document with thousands of namespaces stays
/// well under this, and it bounds memory if something else answers on the port.
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

/// Why a call failed, in the operator's words.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid API URL {url:?}: {reason}; expected http://HOST:PORT")]
    InvalidUrl { url: String, reason: String },
    #[error("cannot reach ferry at {url}: is `ferry run` running?")]
    Unreachable {
        url: String,
        #[source]
        source: io::Error,
    },
    #[error("ferry at {url} did not answer within {} s", REQUEST_TIMEOUT.as_secs())]
    Timeout { url: String },
    #[error("ferry at {url} sent a response this client cannot read: {reason}")]
    Malformed { url: String, reason: String },
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

/// Where the API lives: `http://host:port` plus an optional path prefix (for a daemon
/// behind a reverse proxy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiClient {
    url: String,
    authority: String,
    prefix: String,
}

impl ApiClient {
    /// Parses `http://HOST[:PORT][/PREFIX]`; HTTPS is refused because the API listens
    /// in plain HTTP (on loopback by default).
    pub fn new(url: &str) -> Result<ApiClient, ClientError> {
        let invalid = |reason: &str| ClientError::InvalidUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            if url.starts_with("https://") {
                invalid("the ferry API speaks plain HTTP only")
            } else {
                invalid("missing http:// scheme")
            }
        })?;
        let (authority, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        if authority.is_empty() {
            return Err(invalid("missing host"));
        }
        let has_port = match authority.rfind(':') {
            // "[::1]" has colons but no port; "[::1]:80" and "host:80" have one.
            Some(i) => !authority[i..].contains(']'),
            None => false,
        };
        let authority = if has_port {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        Ok(ApiClient {
            url: url.trim_end_matches('/').to_string(),
            authority,
            prefix: prefix.to_string(),
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

    /// GETs `path` and decodes a 2xx JSON body; an error status becomes
    /// [`ClientError::Api`] with the API's message.
    pub async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let response = self.get(path).await?;
        self.decode(response)
    }

    /// POSTs `body` to `path` and decodes a 2xx JSON body like [`ApiClient::get_json`].
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
        serde_json::from_slice(&response.body).map_err(|e| ClientError::Malformed {
            url: self.url.clone(),
            reason: format!("invalid JSON: {e}"),
        })
    }

    /// Sends one request with any method; `body` is sent as JSON.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Response, ClientError> {
        match tokio::time::timeout(REQUEST_TIMEOUT, self.exchange(method, path, body)).await {
            Ok(result) => result,
            Err(_) => Err(ClientError::Timeout {
                url: self.url.clone(),
            }),
        }
    }

    async fn exchange(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Response, ClientError> {
        let unreachable = |source| ClientError::Unreachable {
            url: self.url.clone(),
            source,
        };
        let mut stream = TcpStream::connect(&self.authority)
            .await
            .map_err(unreachable)?;
        let body = body.unwrap_or_default();
        let mut request = format!(
            "{method} {}{path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: ferry-cli\r\nAccept: application/json\r\n\
             Connection: close\r\nContent-Length: {}\r\n",
            self.prefix,
            self.authority,
            body.len()
        );
        if !body.is_empty() {
            request.push_str("Content-Type: application/json\r\n");
        }
        request.push_str("\r\n");
        let mut bytes = request.into_bytes();
        bytes.extend_from_slice(&body);
        stream.write_all(&bytes).await.map_err(unreachable)?;
        stream.flush().await.map_err(unreachable)?;

        let mut raw = Vec::new();
        let mut limited = (&mut stream).take(MAX_RESPONSE_BYTES as u64 + 1);
        limited.read_to_end(&mut raw).await.map_err(unreachable)?;
        if raw.len() > MAX_RESPONSE_BYTES {
            return Err(self.malformed(format!("response larger than {MAX_RESPONSE_BYTES} bytes")));
        }
        parse_response(&raw).map_err(|reason| self.malformed(reason))
    }

    fn malformed(&self, reason: String) -> ClientError {
        ClientError::Malformed {
            url: self.url.clone(),
            reason,
        }
    }
}

/// Parses a complete HTTP/1.1 response read until the server closed the connection.
fn parse_response(raw: &[u8]) -> Result<Response, String> {
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| "no end of headers (is this an HTTP server?)".to_string())?;
    let head =
        std::str::from_utf8(&raw[..head_end]).map_err(|_| "headers are not UTF-8".to_string())?;
    let body = &raw[head_end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(format!("unexpected status line {status_line:?}"));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("unexpected status line {status_line:?}"))?;

    let mut content_length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            content_length = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| format!("bad Content-Length {value:?}"))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            && value.to_ascii_lowercase().contains("chunked")
        {
            chunked = true;
        }
    }
    let body = if chunked {
        decode_chunked(body)?
    } else if let Some(len) = content_length {
        body.get(..len)
            .ok_or_else(|| format!("body shorter than Content-Length {len}"))?
            .to_vec()
    } else {
        body.to_vec()
    };
    Ok(Response { status, body })
}

/// Decodes a chunked body (extensions and trailers ignored).
fn decode_chunked(mut rest: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| "truncated chunk header".to_string())?;
        let size_text =
            std::str::from_utf8(&rest[..line_end]).map_err(|_| "bad chunk header".to_string())?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        let chunk = rest
            .get(..size)
            .ok_or_else(|| "truncated chunk".to_string())?;
        out.extend_from_slice(chunk);
        rest = rest
            .get(size + 2..)
            .ok_or_else(|| "truncated chunk".to_string())?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_parsing_adds_default_port_and_keeps_prefix() {
        let c = ApiClient::new("http://127.0.0.1:27182").expect("valid url");
        assert_eq!(c.authority, "127.0.0.1:27182");
        assert_eq!(c.prefix, "");
        let c = ApiClient::new("http://proxy.local/ferry/").expect("valid url");
        assert_eq!(c.authority, "proxy.local:80");
        assert_eq!(c.prefix, "/ferry");
        let c = ApiClient::new("http://[::1]").expect("valid url");
        assert_eq!(c.authority, "[::1]:80");
    }

    #[test]
    fn https_and_schemeless_urls_are_refused_with_a_reason() {
        let e = ApiClient::new("https://host:1").expect_err("https refused");
        assert!(e.to_string().contains("plain HTTP"), "{e}");
        let e = ApiClient::new("127.0.0.1:27182").expect_err("scheme required");
        assert!(e.to_string().contains("http://"), "{e}");
    }

    #[test]
    fn parses_content_length_and_chunked_bodies() {
        let r = parse_response(b"HTTP/1.1 404 Not Found\r\ncontent-length: 2\r\n\r\n{}")
            .expect("parses");
        assert_eq!((r.status, r.body.as_slice()), (404, b"{}".as_slice()));
        let r = parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
            .expect("parses");
        assert_eq!(r.body, b"abcde");
        assert!(parse_response(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
    }
}
