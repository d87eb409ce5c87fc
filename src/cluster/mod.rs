//! Everything that talks to one MongoDB deployment as a whole: connecting (SCRAM, TLS with
//! a custom CA), running commands with errors that say which side failed, listing the
//! namespaces to migrate, reading cluster time.

use std::fmt;
use std::time::Duration;

use bson::{doc, Bson, Document, RawDocumentBuf, Timestamp};
use mongodb::options::{ClientOptions, ReadConcern, Tls, TlsOptions, WriteConcern};
use mongodb::Client;

use crate::config::{redacted_uri, ConnectionConfig, NamespaceFilter};

pub mod balancer;
pub mod metadata;
pub mod namespaces;
pub mod nodes;
pub mod ownership;
pub mod sharding;
pub mod topology;

/// Which deployment an operation ran against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    Source,
    Destination,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Source => "source",
            Side::Destination => "destination",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("{side}: invalid connection string {uri}")]
    Uri {
        side: Side,
        uri: String,
        #[source]
        source: mongodb::error::Error,
    },
    #[error("{side}: {action} failed")]
    Command {
        side: Side,
        action: String,
        #[source]
        source: mongodb::error::Error,
    },
}

impl ClusterError {
    pub fn side(&self) -> Side {
        match self {
            ClusterError::Uri { side, .. } | ClusterError::Command { side, .. } => *side,
        }
    }
    /// The server error code, when the failure was a command error.
    pub fn code(&self) -> Option<i32> {
        match self {
            ClusterError::Command { source, .. } => error_code(source),
            ClusterError::Uri { .. } => None,
        }
    }
    /// Whether trying again later may succeed (network trouble, elections, timeouts).
    pub fn is_transient(&self) -> bool {
        match self {
            ClusterError::Command { source, .. } => is_transient(source),
            ClusterError::Uri { .. } => false,
        }
    }
}

/// The `writeConcernError` of a successful command reply, as the driver error it stands
/// for (so it is classified like the same failure of a CRUD write).
pub fn write_concern_failure(reply: &Document) -> Option<mongodb::error::Error> {
    use mongodb::error::{ErrorKind, WriteFailure};
    let wce = reply.get_document("writeConcernError").ok()?;
    let mut wce = wce.clone();
    if !wce.contains_key("errorLabels") {
        if let Ok(labels) = reply.get_array("errorLabels") {
            wce.insert("errorLabels", labels.clone());
        }
    }
    let parsed = bson::from_document(wce.clone())
        .ok()
        .or_else(|| bson::from_document(doc! {"code": 64, "errmsg": format!("{wce}")}).ok());
    Some(match parsed {
        Some(parsed) => ErrorKind::Write(WriteFailure::WriteConcernError(parsed)).into(),
        None => mongodb::error::Error::custom(format!("writeConcernError {wce}")),
    })
}

/// The server's error code of a driver error, if it carries one.
pub fn error_code(e: &mongodb::error::Error) -> Option<i32> {
    use mongodb::error::ErrorKind;
    match e.kind.as_ref() {
        ErrorKind::Command(c) => Some(c.code),
        ErrorKind::Write(mongodb::error::WriteFailure::WriteError(w)) => Some(w.code),
        ErrorKind::Write(mongodb::error::WriteFailure::WriteConcernError(w)) => Some(w.code),
        ErrorKind::InsertMany(im) => im
            .write_errors
            .as_ref()
            .and_then(|w| w.first())
            .map(|w| w.code),
        _ => None,
    }
}

/// Server error codes worth retrying after a pause: network trouble, elections,
/// shutdowns, interrupted or timed-out operations, and a write concern not satisfied in
/// time (64 WriteConcernFailed: Ferry's writes are idempotent, so sending them again is
/// safe).
pub fn is_transient_code(code: i32) -> bool {
    matches!(
        code,
        6 | 7 | 43 | 50 | 64 | 89 | 91 | 189 | 262 | 9001 | 10107 | 11600 | 11602 | 13435 | 13436
    )
}

/// A `writeConcernError` of a command reply: transient when its code is (a stepdown or
/// shutdown before the write reached a majority, a wtimeout) or it is labelled
/// retryable. Others (100 UnsatisfiableWriteConcern, ...) need the operator.
pub fn write_concern_error_is_transient(wce: &bson::Document) -> bool {
    let retryable_label = wce
        .get_array("errorLabels")
        .is_ok_and(|l| l.iter().any(|l| l.as_str() == Some("RetryableWriteError")));
    retryable_label || wce.get_i32("code").is_ok_and(is_transient_code)
}

/// Network errors, elections and shutdowns: worth retrying after a pause.
pub fn is_transient(e: &mongodb::error::Error) -> bool {
    use mongodb::error::{ErrorKind, WriteFailure};
    if e.contains_label("RetryableWriteError") || e.contains_label("ResumableChangeStreamError") {
        return true;
    }
    // A retryable write concern error means: send the (idempotent) batch again; write
    // errors beside it are met again, or handled, on that attempt.
    match e.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteConcernError(w)) => return is_transient_code(w.code),
        ErrorKind::InsertMany(im) => {
            if let Some(w) = &im.write_concern_error {
                if is_transient_code(w.code) {
                    return true;
                }
            }
        }
        _ => {}
    }
    if matches!(
        e.kind.as_ref(),
        ErrorKind::ServerSelection { .. }
            | ErrorKind::ConnectionPoolCleared { .. }
            | ErrorKind::Io(_)
    ) {
        return true;
    }
    error_code(e).is_some_and(is_transient_code)
}

/// How long Ferry waits for a primary to record the start time on (elections take
/// seconds; longer means the deployment needs an operator, and the run says so).
pub const PRIMARY_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

/// A connected deployment.
#[derive(Clone)]
pub struct Cluster {
    pub side: Side,
    pub client: Client,
    /// The URI without its password, for logs and errors.
    pub display_uri: String,
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cluster")
            .field("side", &self.side)
            .field("uri", &self.display_uri)
            .finish()
    }
}

/// How long server selection waits before an operation fails (and is retried by Ferry).
pub const SERVER_SELECTION_TIMEOUT: Duration = Duration::from_secs(10);

impl Cluster {
    /// Connects (lazily: the first command opens connections) with majority read and
    /// write concerns.
    pub async fn connect(side: Side, conn: &ConnectionConfig) -> Result<Cluster, ClusterError> {
        Cluster::connect_with(side, conn, true).await
    }

    /// [`Cluster::connect`] with the driver's retryable writes turned off, for writes that
    /// Ferry retries itself: a driver retry is invisible, so it could not be counted.
    pub async fn connect_without_write_retries(
        side: Side,
        conn: &ConnectionConfig,
    ) -> Result<Cluster, ClusterError> {
        Cluster::connect_with(side, conn, false).await
    }

    async fn connect_with(
        side: Side,
        conn: &ConnectionConfig,
        retry_writes: bool,
    ) -> Result<Cluster, ClusterError> {
        let display_uri = redacted_uri(&conn.uri);
        let mut options =
            ClientOptions::parse(&conn.uri)
                .await
                .map_err(|source| ClusterError::Uri {
                    side,
                    uri: display_uri.clone(),
                    source,
                })?;
        if conn.tls_ca_file.is_some() || conn.tls_certificate_key_file.is_some() {
            let mut tls = TlsOptions::default();
            tls.ca_file_path = conn.tls_ca_file.clone();
            tls.cert_key_file_path = conn.tls_certificate_key_file.clone();
            if conn.tls_allow_invalid_certificates {
                tls.allow_invalid_certificates = Some(true);
            }
            options.tls = Some(Tls::Enabled(tls));
        }
        if !conn.app_name.is_empty() {
            options.app_name = Some(conn.app_name.clone());
        }
        options.read_concern = Some(ReadConcern::majority());
        options.write_concern = Some(WriteConcern::majority());
        if options.server_selection_timeout.is_none() {
            options.server_selection_timeout = Some(SERVER_SELECTION_TIMEOUT);
        }
        if !retry_writes {
            options.retry_writes = Some(false);
        }
        let client = Client::with_options(options).map_err(|source| ClusterError::Uri {
            side,
            uri: display_uri.clone(),
            source,
        })?;
        Ok(Cluster {
            side,
            client,
            display_uri,
        })
    }

    fn err(&self, action: impl Into<String>) -> impl FnOnce(mongodb::error::Error) -> ClusterError {
        let side = self.side;
        let action = action.into();
        move |source| ClusterError::Command {
            side,
            action,
            source,
        }
    }

    /// Runs a command on a database.
    ///
    /// A reply with `ok: 1` and a `writeConcernError` (a DDL command that was applied on
    /// the primary but not acknowledged as asked) is an error: the driver hands such
    /// replies back as successes, and treating them so would let a replayed drop or rename
    /// count as done when a failover could still roll it back.
    pub async fn run(&self, db: &str, command: Document) -> Result<Document, ClusterError> {
        let name = command.keys().next().cloned().unwrap_or_default();
        let reply = self
            .client
            .database(db)
            .run_command(command)
            .await
            .map_err(self.err(name.clone()))?;
        match write_concern_failure(&reply) {
            Some(source) => Err(self.err(name)(source)),
            None => Ok(reply),
        }
    }

    /// Runs a command already encoded as raw BSON (write batches built without decoding
    /// the documents they carry).
    pub async fn run_raw(
        &self,
        db: &str,
        command: RawDocumentBuf,
    ) -> Result<Document, ClusterError> {
        let name = command
            .iter()
            .next()
            .and_then(|e| e.ok())
            .map(|(k, _)| k.to_string())
            .unwrap_or_default();
        self.client
            .database(db)
            .run_raw_command(command)
            .await
            .map_err(self.err(name))
    }

    /// The deployment's current cluster time (operationTime of a no-op read).
    pub async fn cluster_time(&self) -> Result<Timestamp, ClusterError> {
        let reply = self.run("admin", doc! {"ping": 1}).await?;
        if let Ok(ts) = reply.get_timestamp("operationTime") {
            return Ok(ts);
        }
        let hello = self.run("admin", doc! {"hello": 1}).await?;
        hello
            .get_document("lastWrite")
            .ok()
            .and_then(|lw| lw.get_document("opTime").ok())
            .and_then(|o| o.get_timestamp("ts").ok())
            .ok_or_else(|| ClusterError::Command {
                side: self.side,
                action: "read cluster time".into(),
                source: mongodb::error::Error::custom(
                    "the server reported no operationTime; is it a replica set?",
                ),
            })
    }

    /// Writes a no-op to the oplog so change streams and cluster time move on an idle
    /// deployment; returns the cluster time after it.
    pub async fn append_noop(&self, message: &str) -> Result<Timestamp, ClusterError> {
        let reply = self
            .run(
                "admin",
                doc! {"appendOplogNote": 1, "data": {"ferry": message}},
            )
            .await?;
        match reply.get_timestamp("operationTime") {
            Ok(ts) => Ok(ts),
            Err(_) => self.cluster_time().await,
        }
    }

    /// Records the migration's start time on the source: a no-op written by the
    /// primary, then a wait until that write is majority-committed.
    ///
    /// An election may be under way (a secondary refuses with 10107 NotWritablePrimary,
    /// a member mid-transition with 13435, 189 or 11602): transient errors are retried
    /// with backoff until [`PRIMARY_WAIT`] has passed. The majority wait matters because
    /// the copy reads at majority read concern: a document written just before the
    /// start time but not yet majority-committed would be missing from the copy's
    /// snapshot, and the change stream starts after it, so neither would carry it.
    pub async fn record_start_time(&self) -> Result<Timestamp, ClusterError> {
        let deadline = std::time::Instant::now() + PRIMARY_WAIT;
        let mut pause = std::time::Duration::from_millis(100);
        let ts = loop {
            match self.append_noop("ferry start").await {
                Ok(ts) => break ts,
                Err(e) if e.is_transient() && std::time::Instant::now() < deadline => {
                    tracing::warn!(side = %self.side, error = %e, "no primary to record the start time on yet; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(std::time::Duration::from_secs(2));
                }
                Err(e) => return Err(e),
            }
        };
        self.wait_majority_committed(ts).await?;
        Ok(ts)
    }

    /// Waits until the majority commit point has reached `ts`: a majority read with
    /// `afterClusterTime` blocks until then (the collection read need not exist).
    pub async fn wait_majority_committed(&self, ts: Timestamp) -> Result<(), ClusterError> {
        self.run(
            "admin",
            doc! {
                "find": "ferry_majority_probe",
                "filter": {},
                "limit": 1,
                "readConcern": {"level": "majority", "afterClusterTime": ts},
            },
        )
        .await
        .map(|_| ())
    }

    /// Database names, excluding the ones Ferry never migrates.
    pub async fn database_names(
        &self,
        filter: &NamespaceFilter,
    ) -> Result<Vec<String>, ClusterError> {
        let reply = self
            .run("admin", doc! {"listDatabases": 1, "nameOnly": true})
            .await?;
        let mut names: Vec<String> = reply
            .get_array("databases")
            .map(|a| {
                a.iter()
                    .filter_map(|d| {
                        d.as_document()
                            .and_then(|d| d.get_str("name").ok())
                            .map(String::from)
                    })
                    .collect()
            })
            .unwrap_or_default();
        names.retain(|n| !NamespaceFilter::is_never_migrated_db(n) && filter.may_allow_database(n));
        names.sort();
        Ok(names)
    }

    /// listCollections entries of a database (collections and views), all of them.
    pub async fn collection_specs(&self, db: &str) -> Result<Vec<Document>, ClusterError> {
        self.cursor(db, doc! {"listCollections": 1, "cursor": {}})
            .await
    }

    /// The name the collection with this UUID has now in `db`, if it is still there (a
    /// rename within a database keeps the UUID; one into another database does not).
    pub async fn collection_name_by_uuid(
        &self,
        db: &str,
        uuid: &bson::Binary,
    ) -> Result<Option<String>, ClusterError> {
        let specs = self.collection_specs(db).await?;
        Ok(specs.iter().find_map(|spec| {
            let same = matches!(
                spec.get_document("info").map(|i| i.get("uuid")),
                Ok(Some(Bson::Binary(b))) if b == uuid
            );
            if same {
                spec.get_str("name").ok().map(String::from)
            } else {
                None
            }
        }))
    }

    /// listIndexes of a collection (empty when it does not exist).
    pub async fn index_specs(&self, db: &str, coll: &str) -> Result<Vec<Document>, ClusterError> {
        match self
            .cursor(db, doc! {"listIndexes": coll, "cursor": {}})
            .await
        {
            Ok(v) => Ok(v),
            Err(e) if e.code() == Some(26) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// Runs a cursor-returning command and collects every batch.
    pub async fn cursor(&self, db: &str, command: Document) -> Result<Vec<Document>, ClusterError> {
        use futures_util::TryStreamExt;
        let name = command.keys().next().cloned().unwrap_or_default();
        let cursor = self
            .client
            .database(db)
            .run_cursor_command(command)
            .await
            .map_err(self.err(name.clone()))?;
        cursor.try_collect().await.map_err(self.err(name))
    }

    /// Document count and data size of a collection, from collStats (0, 0 if missing).
    pub async fn collection_size(&self, db: &str, coll: &str) -> Result<(u64, u64), ClusterError> {
        match self.run(db, doc! {"collStats": coll}).await {
            Ok(s) => Ok((number(s.get("count")), number(s.get("size")))),
            Err(e) if e.code() == Some(26) => Ok((0, 0)),
            Err(e) => Err(e),
        }
    }
}

/// A numeric BSON value as u64 (0 when absent or not a number).
pub fn number(v: Option<&Bson>) -> u64 {
    match v {
        Some(Bson::Int32(i)) => (*i).max(0) as u64,
        Some(Bson::Int64(i)) => (*i).max(0) as u64,
        Some(Bson::Double(d)) => d.max(0.0) as u64,
        _ => 0,
    }
}

/// A driver error as an operator should read it: the server's code, name and message,
/// without the raw reply bytes the driver's own Display includes.
pub fn short_error(e: &mongodb::error::Error) -> String {
    use mongodb::error::{ErrorKind, WriteFailure};
    match e.kind.as_ref() {
        ErrorKind::Command(c) => format!("{} ({}): {}", c.code_name, c.code, c.message),
        ErrorKind::Write(WriteFailure::WriteError(w)) => {
            format!("write error {}: {}", w.code, w.message)
        }
        ErrorKind::Write(WriteFailure::WriteConcernError(w)) => {
            format!("write concern error {}: {}", w.code, w.message)
        }
        ErrorKind::InsertMany(im) => match im.write_errors.as_ref().and_then(|w| w.first()) {
            Some(w) => format!("write error {}: {}", w.code, w.message),
            None => "insert failed".to_string(),
        },
        ErrorKind::Authentication { message, .. } => format!("authentication failed: {message}"),
        ErrorKind::ServerSelection { message, .. } => format!("no server available: {message}"),
        other => {
            let mut s = other.to_string();
            s.truncate(300);
            s
        }
    }
}

/// "outer: inner: innermost" for an error and its causes, with driver errors shortened.
pub fn describe_error(error: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = match error.downcast_ref::<mongodb::error::Error>() {
        Some(e) => short_error(e),
        None => error.to_string(),
    };
    let mut source = error.source();
    while let Some(s) = source {
        let text = match s.downcast_ref::<mongodb::error::Error>() {
            Some(e) => short_error(e),
            None => s.to_string(),
        };
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        source = s.source();
    }
    msg
}
