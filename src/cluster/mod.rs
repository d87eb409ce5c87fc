//! Everything that talks to one MongoDB deployment as a whole: connecting (SCRAM, TLS with
//! a custom CA), running commands with errors that say which side failed, listing the
//! namespaces to migrate, reading cluster time.
//!
//! This layer alone holds the driver client: the actors read and write documents through
//! [`documents`], follow changes through [`streams`], keep their records through
//! [`records`], and get every driver failure as a [`ClusterError`] already classified
//! (see `errors.rs`: transient or not, what a refusal means).

use std::fmt;
use std::time::Duration;

use bson::{doc, Bson, Document, RawDocumentBuf, Timestamp};
use mongodb::options::{ClientOptions, ReadConcern, Tls, TlsOptions, WriteConcern};
use mongodb::Client;

use crate::config::{redacted_uri, ConnectionConfig, NamespaceFilter};

pub mod balancer;
pub mod documents;
mod errors;
pub mod metadata;
pub mod namespaces;
pub mod nodes;
pub mod ownership;
pub mod records;
pub mod sharding;
pub mod streams;
pub mod topology;

pub use errors::{
    describe_error, error_code, is_transient, is_transient_code, short_error,
    write_concern_error_is_transient, write_concern_failure, ClusterError, Refusal,
};

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

/// How long Ferry waits for a primary to record the start time on (elections take
/// seconds; longer means the deployment needs an operator, and the run says so).
pub const PRIMARY_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

/// A connected deployment.
#[derive(Clone)]
pub struct Cluster {
    pub side: Side,
    /// The driver, used by this module's functions only (see DESIGN.md "Actors, as they
    /// must be in the code").
    client: Client,
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
            Err(e) if e.is(Refusal::NamespaceMissing) => Ok(Vec::new()),
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
            Err(e) if e.is(Refusal::NamespaceMissing) => Ok((0, 0)),
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
