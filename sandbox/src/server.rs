//! The listener and the [`Sandbox`] handle: start in-process, read the URI, inject faults,
//! stop on drop. Each connection runs in its own task; a bad message closes only its own
//! connection.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bson::oid::ObjectId;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};

use crate::auth::scram::Mechanism;
use crate::auth::users::{parse_roles, RoleRef, UserStore};
use crate::cursor::CursorRegistry;
use crate::dispatch::{self, Connection};
use crate::storage::Storage;
use crate::wire::{self, Request};

/// Default interval of the idle primary's no-op oplog writes: the real server's
/// `periodicNoopIntervalSecs` default (10 s).
pub const PERIODIC_NOOP_INTERVAL: Duration = Duration::from_secs(10);

/// How to start a sandbox replica set member.
#[derive(Clone, Debug)]
pub struct SandboxOptions {
    /// 0 picks a free port.
    pub port: u16,
    pub host: String,
    pub set_name: String,
    /// Reported server version, e.g. "7.0.13".
    pub version: String,
    /// Users created at start: (name, password, roles) in the admin database.
    pub users: Vec<(String, String, Vec<String>)>,
    pub tls: Option<TlsFiles>,
    pub oplog_max_events: Option<usize>,
    /// A primary with no write for this long writes a no-op oplog entry, so majority
    /// time and change-stream high-water marks keep moving (and a router's change stream
    /// is not held back by this node for longer). Zero disables the writer.
    pub periodic_noop_interval: Duration,
    /// What this node is: a replica set member (the default), or one node of a sandbox
    /// sharded cluster (see [`crate::sharding`]).
    pub role: crate::sharding::NodeRole,
    /// Shared by every node of a sharded cluster, so cluster time is one sequence; a
    /// replica set gets its own.
    pub clock: crate::storage::ClusterClock,
}

#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert_file: std::path::PathBuf,
    pub key_file: std::path::PathBuf,
}

impl Default for SandboxOptions {
    fn default() -> Self {
        SandboxOptions {
            port: 0,
            host: "127.0.0.1".into(),
            set_name: "rs0".into(),
            version: "7.0.13".into(),
            users: Vec::new(),
            tls: None,
            oplog_max_events: None,
            periodic_noop_interval: PERIODIC_NOOP_INTERVAL,
            role: crate::sharding::NodeRole::ReplicaSetMember,
            clock: crate::storage::ClusterClock::default(),
        }
    }
}

/// Errors starting a sandbox.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid --version {0:?}: expected X.Y.Z")]
    Version(String),
    #[error("invalid user {0:?}: {1}")]
    User(String, String),
    #[error("tls: {0}")]
    Tls(String),
    #[error("runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

/// Fault state that the dispatcher consults on each command.
#[derive(Debug, Default)]
pub struct Faults {
    /// Until when the member is not primary.
    pub stepped_down_until: Mutex<Option<Instant>>,
    /// Added before each reply, in microseconds.
    pub latency_us: AtomicU64,
    /// `configureFailPoint` (`failCommand`).
    pub fail_points: crate::failpoint::FailPoints,
    /// The majority lag fault in milliseconds (0: none); read without the storage lock.
    pub majority_lag_ms: AtomicU64,
}

/// State shared by every connection of one server.
pub struct Server {
    pub options: SandboxOptions,
    pub address: String,
    pub storage: Mutex<Storage>,
    /// Woken on every oplog append (change-stream getMore waits on it).
    pub oplog_appended: Notify,
    pub cursors: CursorRegistry,
    pub users: UserStore,
    pub faults: Faults,
    pub fcv: Mutex<String>,
    pub write_block: AtomicBool,
    pub term: AtomicI64,
    pub next_connection_id: AtomicI64,
    /// Replies of retryable writes, keyed by (lsid, txnNumber).
    /// Per session (`lsid` bytes): the latest retryable write's txnNumber and reply. Like
    /// the server's session records, one per session: older txnNumbers are refused.
    pub retry_cache: Mutex<std::collections::HashMap<Vec<u8>, (i64, crate::wire::Reply)>>,
    /// Open and recent multi-document transactions, per session.
    pub transactions: crate::transaction::Transactions,
    /// Bumped to make every connection close (fault injection, stepdown).
    pub disconnect: watch::Sender<u64>,
    pub started: Instant,
    /// Oplog entries read by queries on `local.oplog.rs` (entries materialized and
    /// tested), so tests can prove a `$natural` read with a limit does not scan it all.
    pub oplog_entries_read: AtomicU64,
    /// A shard primary's cluster (set once the router exists): where shard-side
    /// commands such as `splitChunk` reach the catalog.
    pub cluster: std::sync::OnceLock<std::sync::Weak<crate::sharding::Router>>,
}

impl Server {
    pub fn version_parts(&self) -> (i32, i32, i32) {
        parse_version(&self.options.version).unwrap_or((7, 0, 13))
    }
    pub fn max_wire_version(&self) -> i32 {
        match self.version_parts() {
            (6, _, _) => 17,
            (7, _, _) => 21,
            (8, _, _) => 25,
            (5, _, _) => 13,
            _ => 21,
        }
    }
    pub fn election_id(&self) -> ObjectId {
        let term = self.term.load(Ordering::SeqCst) as u32;
        let mut bytes = [0u8; 12];
        bytes[0..4].copy_from_slice(&[0x7f, 0xff, 0xff, 0xff]);
        bytes[8..12].copy_from_slice(&term.to_be_bytes());
        ObjectId::from_bytes(bytes)
    }
    pub fn is_primary(&self) -> bool {
        let mut guard = self.faults.stepped_down_until.lock();
        match *guard {
            Some(until) if Instant::now() < until => false,
            Some(_) => {
                *guard = None;
                true
            }
            None => true,
        }
    }
    /// Steps down for `period`: closes every connection; a new election follows.
    pub fn step_down(&self, period: Duration) {
        *self.faults.stepped_down_until.lock() = Some(Instant::now() + period);
        self.term.fetch_add(1, Ordering::SeqCst);
        self.drop_connections();
    }
    pub fn drop_connections(&self) {
        self.disconnect.send_modify(|g| *g += 1);
    }
    pub fn set_latency(&self, latency: Duration) {
        self.faults
            .latency_us
            .store(latency.as_micros() as u64, Ordering::SeqCst);
    }
    /// Makes the majority commit point trail the last write by `lag` (zero: no lag), as
    /// on a replica set whose secondaries are slow: majority reads and change streams see
    /// only what is older, `w: "majority"` writes wait for it.
    pub fn set_majority_lag(&self, lag: Duration) {
        self.faults
            .majority_lag_ms
            .store(lag.as_millis() as u64, Ordering::SeqCst);
        self.storage.lock().set_majority_lag(lag);
        self.oplog_appended.notify_waiters();
    }
    /// Drops oplog history, keeping only the newest `keep_last` entries.
    pub fn truncate_oplog(&self, keep_last: usize) {
        self.storage.lock().oplog.truncate(keep_last);
    }
}

pub fn parse_version(v: &str) -> Option<(i32, i32, i32)> {
    let mut parts = v.split('.').map(|p| p.parse::<i32>().ok());
    let a = parts.next()??;
    let b = parts.next()??;
    let c = parts.next().unwrap_or(Some(0))?;
    Some((a, b, c))
}

/// A running sandbox member. Dropping it stops the server and closes its connections.
pub struct Sandbox {
    server: Arc<Server>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sandbox {
    /// Starts a server on its own runtime thread and returns once it accepts connections.
    pub fn start(options: SandboxOptions) -> Result<Sandbox, StartError> {
        let version = parse_version(&options.version)
            .ok_or_else(|| StartError::Version(options.version.clone()))?;
        let bind = format!("{}:{}", options.host, options.port);
        // A std listener, so that starting works from inside an async context too (no
        // block_on here); it becomes a tokio listener on the sandbox's own runtime thread.
        let listener = std::net::TcpListener::bind(&bind).map_err(|source| StartError::Bind {
            addr: bind.clone(),
            source,
        })?;
        listener
            .set_nonblocking(true)
            .map_err(|source| StartError::Bind {
                addr: bind.clone(),
                source,
            })?;
        let local: SandboxAddr = listener
            .local_addr()
            .map_err(|source| StartError::Bind { addr: bind, source })?
            .into();
        let tls = match &options.tls {
            Some(files) => Some(crate::tls::acceptor(files).map_err(StartError::Tls)?),
            None => None,
        };
        let users = UserStore::default();
        for (name, password, roles) in &options.users {
            let roles: Vec<RoleRef> = parse_roles(
                &bson::Bson::Array(roles.iter().map(|r| r.clone().into()).collect()),
                "admin",
            )
            .map_err(|e| StartError::User(name.clone(), e.errmsg))?;
            users
                .create_user(
                    "admin",
                    name,
                    password,
                    roles,
                    &[Mechanism::ScramSha1, Mechanism::ScramSha256],
                )
                .map_err(|e| StartError::User(name.clone(), e.errmsg))?;
        }
        let fcv = format!("{}.{}", version.0, version.1);
        let (disconnect, _) = watch::channel(0u64);
        let server = Arc::new(Server {
            address: format!("{}:{}", options.host, local.0.port()),
            storage: Mutex::new(Storage::with_clock(
                options.oplog_max_events,
                options.clock.clone(),
            )),
            options,
            oplog_appended: Notify::new(),
            cursors: CursorRegistry::default(),
            users,
            faults: Faults::default(),
            fcv: Mutex::new(fcv),
            write_block: AtomicBool::new(false),
            term: AtomicI64::new(1),
            next_connection_id: AtomicI64::new(1),
            retry_cache: Mutex::new(Default::default()),
            transactions: Default::default(),
            disconnect,
            started: Instant::now(),
            oplog_entries_read: AtomicU64::new(0),
            cluster: std::sync::OnceLock::new(),
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("sandbox")
            .enable_all()
            .build()
            .map_err(StartError::Runtime)?;
        let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel();
        let accept_server = server.clone();
        let thread = std::thread::Builder::new()
            .name("sandbox-main".into())
            .spawn(move || {
                runtime.block_on(async move {
                    match TcpListener::from_std(listener) {
                        Ok(listener) => {
                            accept_loop(accept_server, listener, tls, shutdown_rx).await
                        }
                        Err(e) => tracing::error!(error = %e, "sandbox listener failed"),
                    }
                });
                runtime.shutdown_timeout(Duration::from_millis(200));
            })
            .map_err(StartError::Runtime)?;
        Ok(Sandbox {
            server,
            shutdown: Some(shutdown_tx),
            thread: Some(thread),
        })
    }

    /// `host:port` the server listens on.
    pub fn address(&self) -> &str {
        &self.server.address
    }

    /// A connection string for drivers: `mongodb://[user:pass@]host:port/?replicaSet=<name>`.
    pub fn uri(&self) -> String {
        let tls = if self.server.options.tls.is_some() {
            "&tls=true"
        } else {
            ""
        };
        format!(
            "mongodb://{}/?replicaSet={}{}",
            self.server.address, self.server.options.set_name, tls
        )
    }

    /// The URI with the credentials of a user.
    pub fn uri_with_user(&self, user: &str, password: &str) -> String {
        let tls = if self.server.options.tls.is_some() {
            "&tls=true"
        } else {
            ""
        };
        format!(
            "mongodb://{}:{}@{}/?replicaSet={}&authSource=admin{}",
            user, password, self.server.address, self.server.options.set_name, tls
        )
    }

    pub fn server(&self) -> &Arc<Server> {
        &self.server
    }

    pub fn step_down(&self, period: Duration) {
        self.server.step_down(period);
    }
    pub fn drop_connections(&self) {
        self.server.drop_connections();
    }
    pub fn set_latency(&self, latency: Duration) {
        self.server.set_latency(latency);
    }
    pub fn truncate_oplog(&self, keep_last: usize) {
        self.server.truncate_oplog(keep_last);
    }
    /// How many oplog entries queries on `local.oplog.rs` have read so far.
    pub fn oplog_entries_read(&self) -> u64 {
        self.server.oplog_entries_read.load(Ordering::Relaxed)
    }
    /// See [`Server::set_majority_lag`].
    pub fn set_majority_lag(&self, lag: Duration) {
        self.server.set_majority_lag(lag);
    }
    /// How many getMores failed with 175 QueryPlanKilled (their collection dropped or
    /// renamed while the cursor was open), so a test can assert its DDL hit an open cursor.
    pub fn query_plans_killed(&self) -> u64 {
        self.server.cursors.plans_killed()
    }
    /// How many commands the fail points have acted on since the server started (the
    /// `count` a `configureFailPoint` reply carries), read without reconfiguring them, so
    /// a test can wait for a `failCommand` it set (a write concern error, say) to fire.
    pub fn fail_points_entered(&self) -> u64 {
        self.server.faults.fail_points.entered()
    }
    /// Blocks until the server stops (it never does on its own; used by the CLI).
    pub fn wait(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
    pub fn stop(mut self) {
        self.stop_now();
    }
    fn stop_now(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.server.drop_connections();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.stop_now();
    }
}

struct SandboxAddr(SocketAddr);
impl From<SocketAddr> for SandboxAddr {
    fn from(a: SocketAddr) -> Self {
        SandboxAddr(a)
    }
}

async fn accept_loop(
    server: Arc<Server>,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    mut shutdown: tokio::sync::oneshot::Receiver<()>,
) {
    let cursor_server = server.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            cursor_server.cursors.reap_idle();
        }
    });
    // The router stores no data: only data-bearing nodes write periodic no-ops.
    let interval = server.options.periodic_noop_interval;
    if !interval.is_zero() && !server.options.role.is_router() {
        tokio::spawn(periodic_noop_writer(server.clone(), interval));
    }
    if let Some(router) = server.options.role.router() {
        crate::sharding::balancer::spawn(router);
    }
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => {
                let Ok((stream, _peer)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let server = server.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        Some(acceptor) => match acceptor.accept(stream).await {
                            Ok(s) => serve_connection(server, s).await,
                            Err(e) => tracing::debug!(error = %e, "tls handshake failed"),
                        },
                        None => serve_connection(server, stream).await,
                    }
                });
            }
        }
    }
}

/// The periodic no-op writer: a primary whose newest oplog entry is `interval` old
/// appends a no-op, so an idle node's cluster time keeps moving (majority time, change
/// stream high-water marks, a router stream waiting for every shard to report).
async fn periodic_noop_writer(server: Arc<Server>, interval: Duration) {
    let mut wait = interval;
    loop {
        tokio::time::sleep(wait).await;
        if !server.is_primary() {
            wait = interval;
            continue;
        }
        let mut storage = server.storage.lock();
        let idle_for = storage.oplog.entries.back().map_or(interval, |e| {
            let ms = bson::DateTime::now().timestamp_millis() - e.wall.timestamp_millis();
            Duration::from_millis(ms.max(0) as u64)
        });
        if idle_for >= interval {
            storage.append_noop(bson::doc! {"msg": "periodic noop"});
            drop(storage);
            server.oplog_appended.notify_waiters();
            wait = interval;
        } else {
            wait = interval - idle_for;
        }
    }
}

async fn serve_connection<S: AsyncRead + AsyncWrite + Unpin>(server: Arc<Server>, stream: S) {
    let (mut reader, mut writer) = tokio::io::split(stream);
    let mut reader = tokio::io::BufReader::with_capacity(64 * 1024, &mut reader);
    let mut disconnect = server.disconnect.subscribe();
    disconnect.borrow_and_update();
    let id = server.next_connection_id.fetch_add(1, Ordering::SeqCst);
    let mut conn = Connection::new(id);
    loop {
        let request = tokio::select! {
            r = wire::read_request(&mut reader) => r,
            _ = disconnect.changed() => return,
        };
        let request = match request {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(error = %e, connection = id, "closing connection");
                return;
            }
        };
        let bytes = match request {
            Request::Msg {
                request_id,
                more_to_come,
                command,
            } => {
                let reply = tokio::select! {
                    r = run_command(&server, &mut conn, command) => r,
                    _ = disconnect.changed() => return,
                };
                if conn.close_without_reply {
                    return;
                }
                if more_to_come {
                    continue;
                }
                wire::encode_msg_reply(request_id, &reply)
            }
            Request::Query {
                request_id,
                collection,
                query,
            } => {
                let reply = match server.options.role.router() {
                    Some(router) => {
                        crate::sharding::router::run_legacy_query(
                            &server,
                            router,
                            &mut conn,
                            &collection,
                            query,
                        )
                        .await
                    }
                    None => {
                        dispatch::run_legacy_query(&server, &mut conn, &collection, query).await
                    }
                };
                wire::encode_op_reply(request_id, &reply)
            }
        };
        let latency = server.faults.latency_us.load(Ordering::SeqCst);
        if latency > 0 {
            tokio::time::sleep(Duration::from_micros(latency)).await;
        }
        if writer.write_all(&bytes).await.is_err() {
            return;
        }
        if conn.close_after_reply {
            let _ = writer.shutdown().await;
            return;
        }
    }
}

/// One command of a client connection: a router routes it over its cluster; any other
/// node runs it itself.
async fn run_command(
    server: &Arc<Server>,
    conn: &mut Connection,
    command: bson::Document,
) -> crate::wire::Reply {
    match server.options.role.router() {
        Some(router) => crate::sharding::router::run_command(server, router, conn, command).await,
        None => dispatch::run_command(server, conn, command).await,
    }
}
