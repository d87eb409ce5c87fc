//! Ferry's configuration: a TOML file, `${ENV_VAR}` interpolation, strict
//! parsing (unknown keys are errors) and validation that reports every
//! problem at once as `dotted.key: what is wrong; what to do`.
//!
//! Entry points are [`load`] (read a file) and [`from_toml_str`] (parse text
//! with an injectable environment, for tests). Both return a fully validated
//! [`Config`]. `config/ferry.example.toml` documents every key.
//!
//! Pipeline:
//! 1. parse the text as a TOML table (syntax errors: [`ConfigError::Syntax`]);
//! 2. interpolate `${VAR}` in every string value (`$${` is a literal `${`);
//! 3. deserialize with `serde_path_to_error`; every unknown key or type
//!    error is recorded under its dotted key, the offending key is removed
//!    and deserialization is retried, so all of them are reported together;
//! 4. resolve relative paths against the config file's directory;
//! 5. validate the typed config and collect every issue.

mod filter;
mod parse;
mod redact;
mod sharding;
mod validate;

#[cfg(test)]
mod sharding_tests;
#[cfg(test)]
mod tests;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use filter::{NamespaceFilter, NEVER_MIGRATED_DATABASES};
pub use redact::{redacted_uri, redacted_url};
pub use sharding::{
    KeyKind, ShardKeySpec, ShardingConfig, ShardingEntry, ShardingEntryConfig,
    DEFAULT_SHARDING_CREATE_SUPPORTING_INDEXES,
};

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// One problem with the configuration, tied to the dotted key it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// Dotted path of the key, e.g. `source.uri` or
    /// `filter.include_namespaces[2]`.
    pub key: String,
    /// What is wrong and what to do about it, separated by `; `.
    pub message: String,
}

impl ConfigIssue {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The text is not valid TOML (the message carries line and column).
    #[error("config is not valid TOML: {0}")]
    Syntax(String),
    /// The TOML is well-formed but has unknown keys, wrong types, missing
    /// environment variables or invalid values. Display prints one issue
    /// per line.
    #[error("{}", display_issues(.0))]
    Invalid(Vec<ConfigIssue>),
}

impl ConfigError {
    /// The individual issues, if this is [`ConfigError::Invalid`].
    pub fn issues(&self) -> &[ConfigIssue] {
        match self {
            ConfigError::Invalid(issues) => issues,
            _ => &[],
        }
    }
}

fn display_issues(issues: &[ConfigIssue]) -> String {
    issues
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

// ---------------------------------------------------------------------------
// Defaults. Every default is named here, with the reason for its value.
// ---------------------------------------------------------------------------

/// MongoDB's maximum BSON document size (16 MiB).
pub const MONGODB_MAX_BSON_BYTES: u64 = 16 * 1024 * 1024;

/// MongoDB's `maxMessageSizeBytes` (48 000 000): the hard ceiling for one
/// wire message, hence for any configured batch size.
pub const MONGODB_MAX_MESSAGE_BYTES: u64 = 48_000_000;

/// Room left for the command envelope (command name, `$db`, `lsid`,
/// `txnNumber`, write concern...) when a batch is encoded as, or next to, a
/// single BSON document. 16 KiB is far more than any envelope needs.
pub const BATCH_ENVELOPE_HEADROOM_BYTES: u64 = 16 * 1024;

/// `appName` is limited to 128 bytes by the MongoDB handshake.
pub const MONGODB_MAX_APP_NAME_BYTES: usize = 128;

/// Default `app_name`: shows up in the clusters' logs, `currentOp` and
/// profiler output so DBAs can tell migration traffic from application
/// traffic.
pub const DEFAULT_APP_NAME: &str = "ferry";

/// Default `api.listen` port: not a MongoDB default (27017-27020), so it does
/// not clash with a local `mongod`/`mongos`; mnemonic: e = 2.7182...
pub const DEFAULT_API_PORT: u16 = 27182;

/// Default `api.listen`: loopback only, because the API can start cutover and
/// (with `clear_destination`) drop data; exposing it is an explicit choice.
pub const DEFAULT_API_LISTEN: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), DEFAULT_API_PORT);

/// Default `copy.batch_max_documents`: large enough to amortise round trips
/// for small documents (the byte cap below governs for large ones), well
/// under the server's `maxWriteBatchSize` of 100 000 so the driver never has
/// to split a batch.
pub const DEFAULT_COPY_BATCH_MAX_DOCUMENTS: usize = 2_000;

/// Default `copy.batch_max_bytes` and `apply.batch_max_bytes`: 16 MiB less
/// [`BATCH_ENVELOPE_HEADROOM_BYTES`], so a whole batch fits in one maximum
/// size BSON document together with its command envelope (it can be sent as
/// one command, or spooled as one record, without ever hitting a server
/// limit), while still being big enough to keep the link busy.
pub const DEFAULT_BATCH_MAX_BYTES: u64 = MONGODB_MAX_BSON_BYTES - BATCH_ENVELOPE_HEADROOM_BYTES;

/// Default `copy.parallel_collections`: overlaps network latency across a few
/// collections without opening so many cursors that the source's working set
/// (and its production traffic) suffers.
pub const DEFAULT_COPY_PARALLEL_COLLECTIONS: usize = 4;

/// Default `copy.parallel_ranges_per_collection`: large collections are split
/// into `_id` ranges read concurrently; 4 gives most of the speed-up on one
/// big collection while keeping at most
/// `parallel_collections * parallel_ranges_per_collection` (16) source cursors.
pub const DEFAULT_COPY_PARALLEL_RANGES_PER_COLLECTION: usize = 4;

/// Default `copy.insert_workers`: inserting (with index maintenance) is
/// usually slower than reading, so there are more writers than readers; 8
/// concurrent insert batches saturate a typical destination without
/// exhausting the driver's default pool of 100 connections.
pub const DEFAULT_COPY_INSERT_WORKERS: usize = 8;

/// Default `apply.batch_max_events`: smaller than copy batches because change
/// application is latency sensitive (lag is what gates cutover); 1000 events
/// still amortise round trips well during catch-up.
pub const DEFAULT_APPLY_BATCH_MAX_EVENTS: usize = 1_000;

/// Default `apply.workers`: events are partitioned by document key so
/// per-document order is preserved; 8 partitions give parallelism on the
/// destination without one hot collection starving the others.
pub const DEFAULT_APPLY_WORKERS: usize = 8;

/// Default `apply.flush_interval_ms`: an incomplete batch waits at most this
/// long, so under light load at most 100 ms of lag is added while bursts are
/// still batched.
pub const DEFAULT_APPLY_FLUSH_INTERVAL_MS: u64 = 100;

/// Default `runtime.mailbox_capacity`: bounded actor mailboxes give
/// backpressure; 1024 messages absorb bursts without letting a slow stage
/// buffer unbounded memory.
pub const DEFAULT_RUNTIME_MAILBOX_CAPACITY: usize = 1_024;

/// Default `runtime.checkpoint_interval_seconds`: after a crash at most ~5 s
/// of (idempotent) changes are re-applied, while checkpoint writes to the
/// destination stay negligible.
pub const DEFAULT_RUNTIME_CHECKPOINT_INTERVAL_SECONDS: u64 = 5;

/// Default `runtime.idle_noop_interval_seconds`: matches the server's own
/// `periodicNoopIntervalSecs` (10 s); on an idle source the resume point and
/// the lag measurement still advance at least this often.
pub const DEFAULT_RUNTIME_IDLE_NOOP_INTERVAL_SECONDS: u64 = 10;

/// Default `runtime.lease_seconds`: a crashed Ferry blocks a successor for at most a
/// minute, while the holder renews every 10 s and stops writing 30 s after its last
/// renewal, leaving 30 s for writes still in flight and clock skew between hosts.
pub const DEFAULT_RUNTIME_LEASE_SECONDS: u64 = 60;

/// Shortest `runtime.lease_seconds`: renewals every half second at the least.
pub const MIN_RUNTIME_LEASE_SECONDS: u64 = 3;

/// Default `runtime.spool_max_bytes`: 8 GiB of disk lets the change reader
/// run far ahead of a slow destination during initial copy, yet cannot fill
/// a typical data volume. Only used when `spool_dir` is set.
pub const DEFAULT_RUNTIME_SPOOL_MAX_BYTES: u64 = 8 * 1024 * 1024 * 1024;

/// Default `cutover.lag_threshold_seconds`: cutover is offered once the
/// destination is at most 5 s behind, so the final write pause (draining the
/// remaining lag) is a few seconds.
pub const DEFAULT_CUTOVER_LAG_THRESHOLD_SECONDS: u64 = 5;

/// Default `cutover.window_hours`: 5 days - long enough to cover a weekend
/// and schedule a maintenance window, short enough that an abandoned
/// migration does not keep loading both clusters indefinitely (and stays
/// within a typical oplog/change-stream retention if ferry is restarted).
pub const DEFAULT_CUTOVER_WINDOW_HOURS: f64 = 120.0;

/// Default `cutover.long_cutover_warning_hours`: a cutover normally takes seconds to
/// minutes; half a day means something is stuck.
pub const DEFAULT_LONG_CUTOVER_WARNING_HOURS: f64 = 12.0;

/// Default `cutover.warn_before_expiry_hours`: a day ahead to plan, 6 h to
/// act, 1 h as the last call.
pub fn default_warn_before_expiry_hours() -> Vec<f64> {
    vec![24.0, 6.0, 1.0]
}

/// Default `cutover.recheck_max_documents`: documents changed after the
/// baseline verification are remembered by `_id` (tens of bytes each) and
/// re-read at cutover; past 1 million in one namespace (~100 MB of memory,
/// and as long to re-read as a scan of a mid-sized collection) that
/// namespace is compared in full at cutover instead.
pub const DEFAULT_CUTOVER_RECHECK_MAX_DOCUMENTS: u64 = 1_000_000;

/// Default `notify.webhook_timeout_seconds`: a notification must never stall
/// the migration; 10 s tolerates a slow receiver.
pub const DEFAULT_NOTIFY_WEBHOOK_TIMEOUT_SECONDS: u64 = 10;

/// Default `log.level`: `info` records phase changes and progress without
/// per-batch noise.
pub const DEFAULT_LOG_LEVEL: &str = "info";

// ---------------------------------------------------------------------------
// Sections
// ---------------------------------------------------------------------------

/// The whole configuration. Every section except `[source]` and
/// `[destination]` (which need `uri`) may be omitted.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub source: SourceConfig,
    pub destination: DestinationConfig,
    pub api: ApiConfig,
    pub filter: FilterConfig,
    pub copy: CopyConfig,
    pub apply: ApplyConfig,
    pub runtime: RuntimeConfig,
    pub cutover: CutoverConfig,
    pub notify: NotifyConfig,
    pub log: LogConfig,
    pub sharding: ShardingConfig,
}

/// How to connect to a cluster; the common part of `[source]` and
/// `[destination]`.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectionConfig {
    pub uri: String,
    pub tls_ca_file: Option<PathBuf>,
    pub tls_certificate_key_file: Option<PathBuf>,
    pub tls_allow_invalid_certificates: bool,
    pub app_name: String,
}

impl fmt::Debug for ConnectionConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionConfig")
            .field("uri", &redacted_uri(&self.uri))
            .field("tls_ca_file", &self.tls_ca_file)
            .field("tls_certificate_key_file", &self.tls_certificate_key_file)
            .field(
                "tls_allow_invalid_certificates",
                &self.tls_allow_invalid_certificates,
            )
            .field("app_name", &self.app_name)
            .finish()
    }
}

/// `[source]`: the cluster (replica set or sharded) being migrated.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SourceConfig {
    /// `mongodb://` or `mongodb+srv://` connection string. Required.
    pub uri: String,
    /// PEM file with the CA(s) to trust; must exist.
    pub tls_ca_file: Option<PathBuf>,
    /// PEM file with client certificate and key (x.509 / mutual TLS).
    pub tls_certificate_key_file: Option<PathBuf>,
    /// Accept any server certificate: no chain, expiry or host name check. Default false.
    pub tls_allow_invalid_certificates: bool,
    /// Refused when true: the TLS library cannot skip only the host name check, and a
    /// key that silently skipped every check would promise less than it does.
    pub tls_allow_invalid_hostnames: bool,
    /// `appName` sent to the server. Default [`DEFAULT_APP_NAME`].
    pub app_name: String,
}

impl Default for SourceConfig {
    fn default() -> Self {
        Self {
            uri: String::new(),
            tls_ca_file: None,
            tls_certificate_key_file: None,
            tls_allow_invalid_certificates: false,
            tls_allow_invalid_hostnames: false,
            app_name: DEFAULT_APP_NAME.to_owned(),
        }
    }
}

impl SourceConfig {
    pub fn connection(&self) -> ConnectionConfig {
        ConnectionConfig {
            uri: self.uri.clone(),
            tls_ca_file: self.tls_ca_file.clone(),
            tls_certificate_key_file: self.tls_certificate_key_file.clone(),
            tls_allow_invalid_certificates: self.tls_allow_invalid_certificates,
            app_name: self.app_name.clone(),
        }
    }
}

impl fmt::Debug for SourceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SourceConfig")
            .field("uri", &redacted_uri(&self.uri))
            .field("tls_ca_file", &self.tls_ca_file)
            .field("tls_certificate_key_file", &self.tls_certificate_key_file)
            .field(
                "tls_allow_invalid_certificates",
                &self.tls_allow_invalid_certificates,
            )
            .field("app_name", &self.app_name)
            .finish()
    }
}

/// `[destination]`: the empty cluster being migrated to.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DestinationConfig {
    /// `mongodb://` or `mongodb+srv://` connection string. Required.
    pub uri: String,
    pub tls_ca_file: Option<PathBuf>,
    pub tls_certificate_key_file: Option<PathBuf>,
    pub tls_allow_invalid_certificates: bool,
    /// Refused when true (see [`SourceConfig::tls_allow_invalid_hostnames`]).
    pub tls_allow_invalid_hostnames: bool,
    pub app_name: String,
    /// Drop the in-scope namespaces found on the destination before copying.
    /// Default false: a non-empty destination is a preflight error instead.
    pub clear_destination: bool,
    /// Required (non-empty) when `clear_destination = true`. Preflight checks
    /// that it equals the destination's replica-set name (or, for a sharded
    /// cluster, its cluster name), so data is only ever dropped on the
    /// cluster the operator named.
    pub confirm_destination_name: Option<String>,
}

impl Default for DestinationConfig {
    fn default() -> Self {
        Self {
            uri: String::new(),
            tls_ca_file: None,
            tls_certificate_key_file: None,
            tls_allow_invalid_certificates: false,
            tls_allow_invalid_hostnames: false,
            app_name: DEFAULT_APP_NAME.to_owned(),
            clear_destination: false,
            confirm_destination_name: None,
        }
    }
}

impl DestinationConfig {
    pub fn connection(&self) -> ConnectionConfig {
        ConnectionConfig {
            uri: self.uri.clone(),
            tls_ca_file: self.tls_ca_file.clone(),
            tls_certificate_key_file: self.tls_certificate_key_file.clone(),
            tls_allow_invalid_certificates: self.tls_allow_invalid_certificates,
            app_name: self.app_name.clone(),
        }
    }
}

impl fmt::Debug for DestinationConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DestinationConfig")
            .field("uri", &redacted_uri(&self.uri))
            .field("tls_ca_file", &self.tls_ca_file)
            .field("tls_certificate_key_file", &self.tls_certificate_key_file)
            .field(
                "tls_allow_invalid_certificates",
                &self.tls_allow_invalid_certificates,
            )
            .field("app_name", &self.app_name)
            .field("clear_destination", &self.clear_destination)
            .field("confirm_destination_name", &self.confirm_destination_name)
            .finish()
    }
}

/// `[api]`: the HTTP control/status API.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Socket address to listen on. Default [`DEFAULT_API_LISTEN`].
    pub listen: SocketAddr,
    /// Bearer token required on every state-changing request (usually
    /// `"${FERRY_API_TOKEN}"`). Default unset.
    pub token: Option<String>,
    /// Require the token on reads (progress, report, metrics) too. Default false.
    pub token_required_for_reads: bool,
    /// Allow a non-loopback `listen` without a token. Default false: refused.
    pub allow_unauthenticated: bool,
    /// PEM certificate chain and key: serve the API over HTTPS. Both or neither.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_API_LISTEN,
            token: None,
            token_required_for_reads: false,
            allow_unauthenticated: false,
            tls_cert_file: None,
            tls_key_file: None,
        }
    }
}

impl fmt::Debug for ApiConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiConfig")
            .field("listen", &self.listen)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("token_required_for_reads", &self.token_required_for_reads)
            .field("allow_unauthenticated", &self.allow_unauthenticated)
            .field("tls_cert_file", &self.tls_cert_file)
            .field("tls_key_file", &self.tls_key_file)
            .finish()
    }
}

impl ApiConfig {
    /// The listener's certificate and key, when the API serves HTTPS.
    pub fn tls(&self) -> Option<ferry_sandbox::TlsFiles> {
        match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(cert), Some(key)) => Some(ferry_sandbox::TlsFiles {
                cert_file: cert.clone(),
                key_file: key.clone(),
            }),
            _ => None,
        }
    }

    /// The access rule the API server enforces.
    pub fn access(&self) -> crate::api::access::ApiAccess {
        crate::api::access::ApiAccess {
            token: self.token.clone().filter(|t| !t.is_empty()),
            token_required_for_reads: self.token_required_for_reads,
        }
    }
}

/// `[filter]`: which namespaces to migrate. Patterns are `"db"`,
/// `"db.*"` (same as `"db"`) or `"db.coll"`. Both lists empty means every
/// user namespace. Exclusion wins over inclusion. See [`NamespaceFilter`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FilterConfig {
    pub include_namespaces: Vec<String>,
    pub exclude_namespaces: Vec<String>,
}

impl FilterConfig {
    /// Compile the patterns. Errors name `filter.include_namespaces[i]` /
    /// `filter.exclude_namespaces[i]`.
    pub fn namespace_filter(&self) -> Result<NamespaceFilter, ConfigError> {
        NamespaceFilter::new(&self.include_namespaces, &self.exclude_namespaces)
            .map_err(ConfigError::Invalid)
    }
}

/// `[copy]`: initial bulk copy.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CopyConfig {
    pub batch_max_documents: usize,
    pub batch_max_bytes: u64,
    pub parallel_collections: usize,
    pub parallel_ranges_per_collection: usize,
    pub insert_workers: usize,
}

impl Default for CopyConfig {
    fn default() -> Self {
        Self {
            batch_max_documents: DEFAULT_COPY_BATCH_MAX_DOCUMENTS,
            batch_max_bytes: DEFAULT_BATCH_MAX_BYTES,
            parallel_collections: DEFAULT_COPY_PARALLEL_COLLECTIONS,
            parallel_ranges_per_collection: DEFAULT_COPY_PARALLEL_RANGES_PER_COLLECTION,
            insert_workers: DEFAULT_COPY_INSERT_WORKERS,
        }
    }
}

/// `[apply]`: applying change events to the destination.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApplyConfig {
    pub batch_max_events: usize,
    pub batch_max_bytes: u64,
    pub workers: usize,
    pub flush_interval_ms: u64,
    pub update_events: UpdateEvents,
}

/// How update events reach the destination (`apply.update_events`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum UpdateEvents {
    /// Apply the changed fields (`$set`/`$unset`); read the source document only when a
    /// path is ambiguous or does not apply. Sources older than 6.1 (no
    /// `disambiguatedPaths`) always use `Lookup`.
    #[default]
    Delta,
    /// Read the whole current document with every update event and replace it.
    Lookup,
}

impl Default for ApplyConfig {
    fn default() -> Self {
        Self {
            batch_max_events: DEFAULT_APPLY_BATCH_MAX_EVENTS,
            batch_max_bytes: DEFAULT_BATCH_MAX_BYTES,
            workers: DEFAULT_APPLY_WORKERS,
            flush_interval_ms: DEFAULT_APPLY_FLUSH_INTERVAL_MS,
            update_events: UpdateEvents::Delta,
        }
    }
}

impl ApplyConfig {
    pub fn flush_interval(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.flush_interval_ms)
    }
}

/// `[runtime]`: internal plumbing.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    pub mailbox_capacity: usize,
    pub checkpoint_interval_seconds: u64,
    pub idle_noop_interval_seconds: u64,
    /// Directory for spilling buffered change events to disk. None (default):
    /// buffer in memory only and apply backpressure to the change reader.
    pub spool_dir: Option<PathBuf>,
    pub spool_max_bytes: u64,
    /// Lifetime of the destination lease after each renewal (see `checkpoint::lease`).
    pub lease_seconds: u64,
    /// Exit as soon as the run ends, instead of serving the API (status, report,
    /// metrics) until SIGTERM. Default false.
    pub exit_when_finished: bool,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            mailbox_capacity: DEFAULT_RUNTIME_MAILBOX_CAPACITY,
            checkpoint_interval_seconds: DEFAULT_RUNTIME_CHECKPOINT_INTERVAL_SECONDS,
            idle_noop_interval_seconds: DEFAULT_RUNTIME_IDLE_NOOP_INTERVAL_SECONDS,
            spool_dir: None,
            spool_max_bytes: DEFAULT_RUNTIME_SPOOL_MAX_BYTES,
            lease_seconds: DEFAULT_RUNTIME_LEASE_SECONDS,
            exit_when_finished: false,
        }
    }
}

impl RuntimeConfig {
    pub fn checkpoint_interval(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.checkpoint_interval_seconds)
    }

    pub fn idle_noop_interval(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.idle_noop_interval_seconds)
    }

    /// How long the destination lease lasts (`lease_seconds`).
    pub fn lease_duration(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.lease_seconds)
    }
}

/// `[cutover]`: when and how the switch to the destination happens.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CutoverConfig {
    /// Cutover is allowed once replication lag is at most this.
    pub lag_threshold_seconds: u64,
    /// How long after the initial copy completes the migration may stay in
    /// continuous sync before it expires. Fractions are allowed (0.5 = 30 min).
    pub window_hours: f64,
    /// Notify this many hours before the window expires (each `< window_hours`;
    /// fractions allowed).
    pub warn_before_expiry_hours: Vec<f64>,
    /// At cutover, block writes on the source with `setUserWriteBlockMode`
    /// (MongoDB 6.0+, needs the `setUserWriteBlockMode` privilege). Default
    /// false: the operator stops application writes.
    pub enforce_write_block: bool,
    /// Compare both sides in the background once in sync, so that cutover
    /// only re-reads what changed since (downtime independent of data size).
    pub baseline_verification: bool,
    /// Changed documents remembered per namespace before it falls back to a
    /// full comparison at cutover.
    pub recheck_max_documents: u64,
    /// Warn (log, progress, webhook `cutover_long`) when a cutover has been in
    /// progress this long: the destination is not serving yet and the operator
    /// must look. Fractions are allowed.
    pub long_cutover_warning_hours: f64,
}

impl Default for CutoverConfig {
    fn default() -> Self {
        Self {
            lag_threshold_seconds: DEFAULT_CUTOVER_LAG_THRESHOLD_SECONDS,
            window_hours: DEFAULT_CUTOVER_WINDOW_HOURS,
            warn_before_expiry_hours: default_warn_before_expiry_hours(),
            enforce_write_block: false,
            baseline_verification: true,
            recheck_max_documents: DEFAULT_CUTOVER_RECHECK_MAX_DOCUMENTS,
            long_cutover_warning_hours: DEFAULT_LONG_CUTOVER_WARNING_HOURS,
        }
    }
}

/// `[notify]`: outbound notifications.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotifyConfig {
    /// `http://` or `https://` URL that receives JSON POSTs on phase changes
    /// and expiry warnings. None (default): no notifications.
    pub webhook_url: Option<String>,
    pub webhook_timeout_seconds: u64,
    /// PEM file of the CA that signed an `https://` webhook's certificate, for a
    /// receiver behind a private CA. None (default): the public web roots.
    pub webhook_ca_file: Option<PathBuf>,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        Self {
            webhook_url: None,
            webhook_timeout_seconds: DEFAULT_NOTIFY_WEBHOOK_TIMEOUT_SECONDS,
            webhook_ca_file: None,
        }
    }
}

impl fmt::Debug for NotifyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Webhook URLs often embed a token in their path (Slack, Teams...).
        f.debug_struct("NotifyConfig")
            .field(
                "webhook_url",
                &self.webhook_url.as_deref().map(redacted_url),
            )
            .field("webhook_timeout_seconds", &self.webhook_timeout_seconds)
            .field("webhook_ca_file", &self.webhook_ca_file)
            .finish()
    }
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `trace`, `debug`, `info`, `warn`, `error`, `off`, or a
    /// `tracing_subscriber::EnvFilter` directive such as `info,ferry=debug`.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: DEFAULT_LOG_LEVEL.to_owned(),
            format: LogFormat::default(),
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines; default because the first run is usually
    /// watched in a terminal.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

// ---------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------

/// Read, interpolate (from the process environment), parse and validate the
/// config file at `path`. Relative paths inside the file (`tls_ca_file`,
/// `tls_certificate_key_file`, `spool_dir`) are resolved against the file's
/// directory.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let base = path.parent().map(Path::to_path_buf);
    let env = |name: &str| std::env::var(name).ok();
    parse::parse_config(&text, &env, base.as_deref()).map_err(|err| match err {
        ConfigError::Syntax(msg) => ConfigError::Syntax(format!("{}: {msg}", path.display())),
        other => other,
    })
}

/// Parse and validate config text. `env` resolves `${VAR}` references
/// (return None for an unset variable). Relative paths stay relative to the
/// current directory.
pub fn from_toml_str(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    parse::parse_config(text, env, None)
}

impl Config {
    /// The namespace filter described by `[filter]`.
    pub fn namespace_filter(&self) -> Result<NamespaceFilter, ConfigError> {
        self.filter.namespace_filter()
    }

    /// Legal but risky settings, to be logged once logging is set up (the
    /// log settings come from this very file, so the loader cannot log).
    pub fn warnings(&self) -> Vec<ConfigIssue> {
        validate::warnings(self)
    }
}
