//! The HTTP control API and the Prometheus endpoint.
//!
//! Operators (and `ferry status|cutover|extend|pause|resume|cancel`) talk to a running
//! migration through this API. Reads come straight from the shared [`Progress`] registry,
//! so a busy engine never delays `status`; writes (cutover, extend, pause, resume,
//! cancel) go to the supervisor through the [`ControlHandle`], which alone decides
//! whether the run's phase allows them.
//!
//! Routes (all JSON; every error is `{"error": "<what was wrong and what to do>"}`):
//! - `GET  /api/v1/progress`: [`StatusView`]
//! - `POST /api/v1/cutover` with `{"writes_stopped": true}`
//! - `POST /api/v1/extend` with `{"hours": N}`
//! - `POST /api/v1/pause`, `/api/v1/resume`, `/api/v1/cancel`
//! - `GET  /api/v1/report`: the final [`crate::report::Report`], 404 until it exists
//! - `GET  /metrics`: Prometheus text exposition

pub mod access;
pub mod client;
mod routes;
mod status;

use std::io;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, App, HttpServer};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing::Instrument;

use crate::control::ControlHandle;
use crate::progress::SharedProgress;

pub use status::{format_rfc3339, RunState, StatusView};

/// Path prefix of every control route; versioned so the CLI and the daemon can evolve.
pub const API_PREFIX: &str = "/api/v1";

/// How long a graceful stop waits for in-flight requests before closing connections.
/// Requests are small and answered from memory, so a few seconds is plenty.
const SHUTDOWN_TIMEOUT_SECONDS: u64 = 5;

/// How often histogram samples are folded into the recorder's summaries. The exporter
/// leaves this to its user; without it, samples pile up between scrapes.
const METRICS_UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Installs the process-wide Prometheus recorder and describes every metric, returning
/// the handle `/metrics` renders.
///
/// Idempotent, because the `metrics` facade accepts one global recorder per process:
/// later calls return the same handle. `None` (with a warning) when some other recorder
/// was installed first; metrics then go there and `/metrics` answers empty.
pub fn install_prometheus() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| match PrometheusBuilder::new().install_recorder() {
            Ok(handle) => {
                crate::metrics::describe();
                Some(handle)
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot install the prometheus recorder; /metrics will be empty");
                None
            }
        })
        .clone()
}

/// A running API server. Dropping it leaves the server running until the process ends;
/// call [`ApiServer::stop`] to close the listener and finish in-flight requests.
pub struct ApiServer {
    local_addr: SocketAddr,
    handle: actix_web::dev::ServerHandle,
    task: tokio::task::JoinHandle<io::Result<()>>,
    upkeep: Option<tokio::task::JoinHandle<()>>,
}

impl ApiServer {
    /// The address the server listens on; differs from the requested one when the
    /// configured port was 0.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting connections, waits for in-flight requests (up to a few seconds),
    /// and returns once the listener is closed. A server that failed on its own is only
    /// logged: at shutdown there is nothing left for the caller to do about it.
    pub async fn stop(self) {
        self.handle.stop(true).await;
        if let Some(upkeep) = self.upkeep {
            upkeep.abort();
        }
        match self.task.await {
            Ok(Ok(())) => tracing::info!(addr = %self.local_addr, "api stopped"),
            Ok(Err(e)) => tracing::warn!(addr = %self.local_addr, error = %e, "api server failed"),
            Err(e) => tracing::warn!(addr = %self.local_addr, error = %e, "api server task failed"),
        }
    }
}

/// The span of the code that started the API (a run's span, in `ferry run`).
#[derive(Clone)]
struct ServingSpan(tracing::Span);

/// Handles each request within [`ServingSpan`], so what a handler logs ("operator
/// request") says which run it belongs to: actix-web serves on a worker thread of its
/// own, where that span is not entered.
async fn in_serving_span(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let span = req
        .app_data::<web::Data<ServingSpan>>()
        .map_or_else(tracing::Span::none, |s| s.0.clone());
    next.call(req).instrument(span).await
}

/// Binds `listen` and starts serving in the background; returns once the socket is
/// bound, so a port conflict surfaces here as an error rather than later in a log line.
///
/// Works both under an `actix_rt::System` (the engine) and a plain tokio runtime (tests,
/// tools): the server future is spawned on the current runtime, and actix-web runs its
/// single worker on its own thread. OS signals are left to the daemon, which decides
/// the shutdown order; `prometheus` is `None` when no recorder is installed, and
/// `/metrics` then answers with an empty body.
pub async fn serve(
    listen: SocketAddr,
    progress: SharedProgress,
    control: ControlHandle,
    prometheus: Option<PrometheusHandle>,
) -> io::Result<ApiServer> {
    serve_with(
        listen,
        access::ApiAccess::open(),
        None,
        progress,
        control,
        prometheus,
    )
    .await
}

/// [`serve`] with an access rule (`api.token`); with `tls`, over HTTPS with that
/// certificate and key.
pub async fn serve_with(
    listen: SocketAddr,
    access: access::ApiAccess,
    tls: Option<&ferry_sandbox::TlsFiles>,
    progress: SharedProgress,
    control: ControlHandle,
    prometheus: Option<PrometheusHandle>,
) -> io::Result<ApiServer> {
    serve_on(bind(listen)?, access, tls, progress, control, prometheus).await
}

/// Binds the API's listening socket. A caller that keeps a clone of it (`try_clone`)
/// while one server stops and the next starts on it keeps the port listening: a
/// client connecting in between waits in the backlog instead of being refused.
pub fn bind(listen: SocketAddr) -> io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(listen)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// [`serve_with`] on a socket [`bind`] made.
pub async fn serve_on(
    listener: std::net::TcpListener,
    access: access::ApiAccess,
    tls: Option<&ferry_sandbox::TlsFiles>,
    progress: SharedProgress,
    control: ControlHandle,
    prometheus: Option<PrometheusHandle>,
) -> io::Result<ApiServer> {
    let upkeep_handle = prometheus.clone();
    let state = routes::ApiState {
        progress,
        control,
        prometheus,
    };
    let serving = ServingSpan(tracing::Span::current());
    let server = HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(state.clone()))
            .app_data(web::Data::new(access.clone()))
            .app_data(web::Data::new(serving.clone()))
            .wrap(actix_web::middleware::from_fn(access::check))
            .wrap(actix_web::middleware::from_fn(in_serving_span))
            .configure(routes::configure)
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(SHUTDOWN_TIMEOUT_SECONDS);
    let server = match tls {
        Some(files) => {
            let config = ferry_sandbox::tls::server_config(files)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            server.listen_rustls_0_23(listener, config)?
        }
        None => server.listen(listener)?,
    };
    let local_addr = server.addrs().first().copied().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::AddrNotAvailable,
            "the API's socket has no address",
        )
    })?;
    let server = server.run();
    let handle = server.handle();
    let task = tokio::spawn(server);
    tracing::info!(addr = %local_addr, https = tls.is_some(), "api listening");
    let upkeep = upkeep_handle.map(|handle| {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(METRICS_UPKEEP_INTERVAL);
            loop {
                tick.tick().await;
                handle.run_upkeep();
            }
        })
    });
    Ok(ApiServer {
        local_addr,
        handle,
        task,
        upkeep,
    })
}
