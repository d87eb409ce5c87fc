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

pub mod client;
mod routes;
mod status;

use std::io;
use std::net::SocketAddr;

use actix_web::{web, App, HttpServer};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::control::ControlHandle;
use crate::progress::SharedProgress;

pub use status::{format_rfc3339, RunState, StatusView};

/// Path prefix of every control route; versioned so the CLI and the daemon can evolve.
pub const API_PREFIX: &str = "/api/v1";

/// How long a graceful stop waits for in-flight requests before closing connections.
/// Requests are small and answered from memory, so a few seconds is plenty.
const SHUTDOWN_TIMEOUT_SECONDS: u64 = 5;

/// A running API server. Dropping it leaves the server running until the process ends;
/// call [`ApiServer::stop`] to close the listener and finish in-flight requests.
pub struct ApiServer {
    local_addr: SocketAddr,
    handle: actix_web::dev::ServerHandle,
    task: tokio::task::JoinHandle<io::Result<()>>,
}

impl ApiServer {
    /// The address the server listens on; differs from the requested one when the
    /// configured port was 0.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting connections, waits for in-flight requests (up to a few seconds),
    /// and returns once the server has shut down.
    pub async fn stop(self) -> io::Result<()> {
        self.handle.stop(true).await;
        match self.task.await {
            Ok(result) => result,
            Err(join) => Err(io::Error::other(format!("api server task failed: {join}"))),
        }
    }
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
    let state = routes::ApiState {
        progress,
        control,
        prometheus,
    };
    let server = HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(state.clone()))
            .configure(routes::configure)
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(SHUTDOWN_TIMEOUT_SECONDS)
    .bind(listen)?;
    let local_addr = server.addrs().first().copied().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::AddrNotAvailable,
            format!("api.listen {listen}: bound no address"),
        )
    })?;
    let server = server.run();
    let handle = server.handle();
    let task = tokio::spawn(server);
    tracing::info!(addr = %local_addr, "api listening");
    Ok(ApiServer {
        local_addr,
        handle,
        task,
    })
}
