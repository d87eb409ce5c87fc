//! Semantic validation of a parsed [`Config`]: every problem is collected.

use std::collections::BTreeSet;
use std::path::Path;

use super::{
    filter::NamespaceFilter, Config, ConfigIssue, MONGODB_MAX_APP_NAME_BYTES,
    MONGODB_MAX_MESSAGE_BYTES,
};

/// Limit for concurrency knobs: far beyond any useful value, low enough to
/// catch a typo (an extra zero or two) before it opens thousands of
/// connections.
pub const MAX_PARALLELISM: usize = 1_024;

struct Issues(Vec<ConfigIssue>);

impl Issues {
    fn push(&mut self, key: &str, message: impl Into<String>) {
        self.0.push(ConfigIssue::new(key, message));
    }

    fn positive_u64(&mut self, key: &str, value: u64) {
        if value == 0 {
            self.push(
                key,
                "must be > 0; set a positive value or remove the key to use the default",
            );
        }
    }

    /// A duration in hours: finite and above zero (fractions allowed).
    fn positive_hours(&mut self, key: &str, value: f64) {
        if !(value.is_finite() && value > 0.0) {
            self.push(
                key,
                "must be > 0; set a positive number of hours or remove the key to use the default",
            );
        }
    }

    fn parallelism(&mut self, key: &str, value: usize) {
        if value == 0 {
            self.push(
                key,
                "must be > 0; set a positive value or remove the key to use the default",
            );
        } else if value > MAX_PARALLELISM {
            self.push(
                key,
                format!("must be <= {MAX_PARALLELISM} (got {value}); use a smaller value"),
            );
        }
    }

    fn count(&mut self, key: &str, value: usize) {
        if value == 0 {
            self.push(
                key,
                "must be > 0; set a positive value or remove the key to use the default",
            );
        }
    }

    fn batch_bytes(&mut self, key: &str, value: u64) {
        if value == 0 || value > MONGODB_MAX_MESSAGE_BYTES {
            self.push(
                key,
                format!(
                    "must be between 1 and {MONGODB_MAX_MESSAGE_BYTES} (MongoDB's maxMessageSizeBytes), got {value}; remove the key to use the default"
                ),
            );
        }
    }

    fn existing_file(&mut self, key: &str, path: Option<&Path>) {
        let Some(path) = path else { return };
        if path.as_os_str().is_empty() {
            self.push(key, "must not be empty; remove the key or give a file path");
        } else if !path.exists() {
            self.push(
                key,
                format!(
                    "file not found: {}; check the path (relative paths are resolved against the config file's directory)",
                    path.display()
                ),
            );
        } else if !path.is_file() {
            self.push(
                key,
                format!(
                    "not a regular file: {}; point it at a PEM file",
                    path.display()
                ),
            );
        }
    }
}

pub(super) fn validate(config: &Config) -> Vec<ConfigIssue> {
    let mut v = Issues(Vec::new());

    // [source] / [destination]
    let src = &config.source;
    let dst = &config.destination;
    validate_uri(&mut v, "source.uri", &src.uri);
    validate_uri(&mut v, "destination.uri", &dst.uri);
    v.existing_file("source.tls_ca_file", src.tls_ca_file.as_deref());
    v.existing_file(
        "source.tls_certificate_key_file",
        src.tls_certificate_key_file.as_deref(),
    );
    v.existing_file("destination.tls_ca_file", dst.tls_ca_file.as_deref());
    v.existing_file(
        "destination.tls_certificate_key_file",
        dst.tls_certificate_key_file.as_deref(),
    );
    validate_app_name(&mut v, "source.app_name", &src.app_name);
    validate_app_name(&mut v, "destination.app_name", &dst.app_name);

    if !src.uri.trim().is_empty() && !dst.uri.trim().is_empty() {
        if src.uri.trim() == dst.uri.trim() {
            v.push(
                "destination.uri",
                "is identical to source.uri; the destination must be a different, empty cluster",
            );
        } else {
            let a = uri_hosts(&src.uri);
            let b = uri_hosts(&dst.uri);
            let shared: Vec<&String> = a.intersection(&b).collect();
            if !shared.is_empty() {
                let list = shared
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ");
                v.push(
                    "destination.uri",
                    format!(
                        "shares host(s) {list} with source.uri; the destination must be a different, empty cluster"
                    ),
                );
            }
        }
    }

    if dst.clear_destination {
        match dst.confirm_destination_name.as_deref().map(str::trim) {
            None => v.push(
                "destination.confirm_destination_name",
                "required when clear_destination = true; set it to the destination's replica set (or sharded cluster) name, which preflight checks before anything is dropped",
            ),
            Some("") => v.push(
                "destination.confirm_destination_name",
                "must not be empty when clear_destination = true; set it to the destination's replica set (or sharded cluster) name",
            ),
            Some(_) => {}
        }
    }

    // [filter]
    if let Err(issues) = NamespaceFilter::new(
        &config.filter.include_namespaces,
        &config.filter.exclude_namespaces,
    ) {
        v.0.extend(issues);
    }

    // [copy]
    let copy = &config.copy;
    v.count("copy.batch_max_documents", copy.batch_max_documents);
    v.batch_bytes("copy.batch_max_bytes", copy.batch_max_bytes);
    v.parallelism("copy.parallel_collections", copy.parallel_collections);
    v.parallelism(
        "copy.parallel_ranges_per_collection",
        copy.parallel_ranges_per_collection,
    );
    v.parallelism("copy.insert_workers", copy.insert_workers);

    // [apply]
    let apply = &config.apply;
    v.count("apply.batch_max_events", apply.batch_max_events);
    v.batch_bytes("apply.batch_max_bytes", apply.batch_max_bytes);
    v.parallelism("apply.workers", apply.workers);
    v.positive_u64("apply.flush_interval_ms", apply.flush_interval_ms);

    // [runtime]
    let rt = &config.runtime;
    v.count("runtime.mailbox_capacity", rt.mailbox_capacity);
    v.positive_u64(
        "runtime.checkpoint_interval_seconds",
        rt.checkpoint_interval_seconds,
    );
    v.positive_u64(
        "runtime.idle_noop_interval_seconds",
        rt.idle_noop_interval_seconds,
    );
    if rt.lease_seconds < super::MIN_RUNTIME_LEASE_SECONDS {
        v.push(
            "runtime.lease_seconds",
            format!(
                "must be at least {}; the default ({}) suits production",
                super::MIN_RUNTIME_LEASE_SECONDS,
                super::DEFAULT_RUNTIME_LEASE_SECONDS
            ),
        );
    }
    if let Some(dir) = &rt.spool_dir {
        if dir.as_os_str().is_empty() {
            v.push(
                "runtime.spool_dir",
                "must not be empty; remove the key to disable spooling or give a directory",
            );
        } else if dir.exists() && !dir.is_dir() {
            v.push(
                "runtime.spool_dir",
                format!(
                    "exists but is not a directory: {}; point it at a directory (it is created if missing)",
                    dir.display()
                ),
            );
        }
        v.positive_u64("runtime.spool_max_bytes", rt.spool_max_bytes);
    }

    // [cutover]
    let cut = &config.cutover;
    v.positive_u64("cutover.lag_threshold_seconds", cut.lag_threshold_seconds);
    v.positive_hours("cutover.window_hours", cut.window_hours);
    v.positive_hours(
        "cutover.long_cutover_warning_hours",
        cut.long_cutover_warning_hours,
    );
    v.positive_u64("cutover.recheck_max_documents", cut.recheck_max_documents);
    if cut.window_hours > 0.0 && cut.lag_threshold_seconds as f64 >= cut.window_hours * 3600.0 {
        v.push(
            "cutover.lag_threshold_seconds",
            "must be shorter than cutover.window_hours; lower it",
        );
    }
    let mut seen: Vec<f64> = Vec::new();
    for (i, &h) in cut.warn_before_expiry_hours.iter().enumerate() {
        let key = format!("cutover.warn_before_expiry_hours[{i}]");
        if !(h.is_finite() && h > 0.0) {
            v.push(
                &key,
                "must be > 0; remove it or use a positive number of hours",
            );
        } else if cut.window_hours > 0.0 && h >= cut.window_hours {
            v.push(
                &key,
                format!(
                    "must be < cutover.window_hours ({}), got {h}; remove it or lower it",
                    cut.window_hours
                ),
            );
        }
        if seen.contains(&h) {
            v.push(&key, format!("duplicate value {h}; remove it"));
        }
        seen.push(h);
    }

    // [notify]
    let notify = &config.notify;
    if let Some(url) = &notify.webhook_url {
        validate_webhook_url(&mut v, "notify.webhook_url", url);
    }
    v.positive_u64(
        "notify.webhook_timeout_seconds",
        notify.webhook_timeout_seconds,
    );
    v.existing_file("notify.webhook_ca_file", notify.webhook_ca_file.as_deref());

    for (key, on) in [
        (
            "source.tls_allow_invalid_hostnames",
            config.source.tls_allow_invalid_hostnames,
        ),
        (
            "destination.tls_allow_invalid_hostnames",
            config.destination.tls_allow_invalid_hostnames,
        ),
    ] {
        if on {
            v.push(
                key,
                "cannot be honoured: Ferry's TLS library cannot skip only the host name check; put the host name in the certificate's subject alternative names, or (lab only) set tls_allow_invalid_certificates = true, which skips every certificate check",
            );
        }
    }

    // [api]
    let api = &config.api;
    if api.token.as_deref() == Some("") {
        v.push(
            "api.token",
            "is empty (is the environment variable it names set?); set a secret, or remove the key",
        );
    }
    v.existing_file("api.tls_cert_file", api.tls_cert_file.as_deref());
    v.existing_file("api.tls_key_file", api.tls_key_file.as_deref());
    if api.tls_cert_file.is_some() != api.tls_key_file.is_some() {
        v.push(
            if api.tls_cert_file.is_some() {
                "api.tls_key_file"
            } else {
                "api.tls_cert_file"
            },
            "is missing: HTTPS needs both api.tls_cert_file and api.tls_key_file",
        );
    }
    if api.access().token.is_none() {
        if !api.listen.ip().is_loopback() && !api.allow_unauthenticated {
            v.push(
                "api.listen",
                format!(
                    "{} is reachable from other hosts but api.token is not set, so anyone who can reach it could cut over or cancel; set api.token = \"${{FERRY_API_TOKEN}}\", listen on 127.0.0.1, or set api.allow_unauthenticated = true",
                    api.listen
                ),
            );
        }
        if api.token_required_for_reads {
            v.push(
                "api.token_required_for_reads",
                "is true but api.token is not set; set api.token",
            );
        }
    }

    // [log]
    validate_log_level(&mut v, "log.level", &config.log.level);

    v.0
}

/// Non-fatal observations an operator should see in the log.
pub(super) fn warnings(config: &Config) -> Vec<ConfigIssue> {
    let mut w = Issues(Vec::new());
    for (key, on) in [
        (
            "source.tls_allow_invalid_certificates",
            config.source.tls_allow_invalid_certificates,
        ),
        (
            "destination.tls_allow_invalid_certificates",
            config.destination.tls_allow_invalid_certificates,
        ),
    ] {
        if on {
            w.push(
                key,
                "is true: the server's certificate is not verified at all (chain, expiry, host name), so a man-in-the-middle is possible; give Ferry the CA with tls_ca_file and set it to false",
            );
        }
    }
    if !config.api.listen.ip().is_loopback() && config.api.access().token.is_none() {
        w.push(
            "api.listen",
            format!(
                "{} is reachable from other hosts and the API is not authenticated (api.allow_unauthenticated = true); set api.token, or listen on 127.0.0.1",
                config.api.listen
            ),
        );
    }
    if config.destination.clear_destination {
        w.push(
            "destination.clear_destination",
            "is true: in-scope namespaces on the destination will be dropped before copying",
        );
    } else if config.destination.confirm_destination_name.is_some() {
        w.push(
            "destination.confirm_destination_name",
            "is ignored because clear_destination = false",
        );
    }
    w.0
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

const MONGODB_SCHEME: &str = "mongodb://";
const MONGODB_SRV_SCHEME: &str = "mongodb+srv://";

/// The host list of a connection string: between the scheme (and optional
/// `user:pass@`) and the first `/` or `?`.
fn uri_host_list(uri: &str) -> Option<(bool, &str)> {
    let uri = uri.trim();
    let (srv, rest) = if let Some(r) = uri.strip_prefix(MONGODB_SRV_SCHEME) {
        (true, r)
    } else if let Some(r) = uri.strip_prefix(MONGODB_SCHEME) {
        (false, r)
    } else {
        return None;
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    // Credentials may contain '/' or '?' only percent-encoded, so the last
    // '@' before the first '/' or '?' ends them; if the password contains an
    // unencoded '/', fall back to the last '@' anywhere.
    let hosts_start = match rest[..end].rfind('@') {
        Some(at) => at + 1,
        None => match rest.rfind('@') {
            Some(at) if !rest[..at].contains('?') => at + 1,
            _ => 0,
        },
    };
    let rest = &rest[hosts_start..];
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    Some((srv, &rest[..end]))
}

/// Normalised `host:port` set of a URI (default port 27017).
fn uri_hosts(uri: &str) -> BTreeSet<String> {
    let Some((srv, list)) = uri_host_list(uri) else {
        return BTreeSet::new();
    };
    list.split(',')
        .filter(|h| !h.is_empty())
        .map(|h| {
            let h = h.to_ascii_lowercase();
            if srv || (h.contains(':') && !h.ends_with(']')) {
                h
            } else {
                format!("{h}:27017")
            }
        })
        .collect()
}

fn validate_uri(v: &mut Issues, key: &str, uri: &str) {
    if uri.trim().is_empty() {
        v.push(
            key,
            "required; set it to the cluster's connection string, e.g. \"mongodb://user:${PASSWORD}@host:27017/?replicaSet=rs0\"",
        );
        return;
    }
    if uri != uri.trim() {
        v.push(key, "has leading or trailing whitespace; remove it");
    }
    let Some((srv, hosts)) = uri_host_list(uri) else {
        v.push(
            key,
            "must start with mongodb:// or mongodb+srv://; use a MongoDB connection string",
        );
        return;
    };
    if hosts.is_empty() || hosts.split(',').any(str::is_empty) {
        v.push(
            key,
            "has an empty host; write host[:port][,host[:port]...] after the scheme",
        );
        return;
    }
    if srv {
        if hosts.contains(',') {
            v.push(
                key,
                "mongodb+srv:// takes exactly one host name; remove the others (they come from DNS)",
            );
        } else if hosts.contains(':') {
            v.push(
                key,
                "mongodb+srv:// host must not have a port; remove it (ports come from DNS)",
            );
        }
    }
}

fn validate_app_name(v: &mut Issues, key: &str, name: &str) {
    if name.trim().is_empty() {
        v.push(
            key,
            "must not be empty; remove the key to use the default \"ferry\"",
        );
    } else if name.len() > MONGODB_MAX_APP_NAME_BYTES {
        v.push(
            key,
            format!(
                "must be at most {MONGODB_MAX_APP_NAME_BYTES} bytes (MongoDB limit), got {}; shorten it",
                name.len()
            ),
        );
    }
}

fn validate_webhook_url(v: &mut Issues, key: &str, url: &str) {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    match rest {
        None => v.push(
            key,
            "must start with http:// or https://; give a full URL or remove the key",
        ),
        Some(rest) => {
            let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
            let host = authority.rsplit('@').next().unwrap_or("");
            if host.is_empty() || url.chars().any(char::is_whitespace) {
                v.push(
                    key,
                    "is not a valid URL (empty host or whitespace); give a full URL such as https://hooks.example.com/ferry",
                );
            }
        }
    }
}

const SIMPLE_LOG_LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

fn validate_log_level(v: &mut Issues, key: &str, level: &str) {
    let lower = level.trim().to_ascii_lowercase();
    if SIMPLE_LOG_LEVELS.contains(&lower.as_str()) {
        return;
    }
    let looks_like_directive = level.contains('=') || level.contains(',');
    if looks_like_directive && tracing_subscriber::EnvFilter::try_new(level).is_ok() {
        return;
    }
    v.push(
        key,
        format!(
            "invalid log level \"{level}\"; use one of trace, debug, info, warn, error, off, or a directive like \"info,ferry=debug\""
        ),
    );
}
