//! `ferry run`: one migration from validation to completion, on its own thread and actix
//! system, controlled through a [`ControlHandle`] (the HTTP API holds one) and observed
//! through the shared [`Progress`](crate::progress::Progress). `earlier` decides what
//! to do with the state an earlier run left on the destination; `command` is the
//! `ferry run` and `ferry report` commands around it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread;

use bson::doc;
use tokio::sync::oneshot;

use crate::actors::supervisor::{Control, RunOutcome, Shutdown, Supervisor};
use crate::actors::{error_chain, Engine, EngineError};
use crate::checkpoint::{unix_now, CheckpointError, Checkpoints};
use crate::cluster::{Cluster, ClusterError, Side};
use crate::config::Config;
use crate::control::ControlHandle;
use crate::exit;
use crate::progress::{Phase, Progress, SharedProgress};

mod command;
mod earlier;

pub use command::{report_command, run_command};
use earlier::{earlier_run, Earlier};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("pre-migration checks failed:\n{0}")]
    Preflight(String),
    #[error("another migration holds the destination:\n{0}")]
    Held(String),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("cannot start the control API on {addr}")]
    Api {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the runtime")]
    Runtime(#[source] std::io::Error),
    #[error("the migration thread stopped unexpectedly")]
    Crashed,
    #[error("the migration was aborted")]
    Aborted,
    /// The migration on this destination ended (cancelled or expired) and is not
    /// resumed: starting over is a decision the operator makes on purpose.
    #[error("the migration on this destination was {}; it does not resume. To migrate again from the start, set destination.clear_destination = true with destination.confirm_destination_name (the migrated namespaces and Ferry's checkpoints are dropped first), or drop them and the destination's __ferry database yourself", .phase.as_str())]
    Ended {
        phase: Phase,
        /// The ended run's stored report, printed again for the operator.
        report: Option<Box<crate::report::Report>>,
    },
}

impl RunError {
    /// The exit code of a run that could not start or went wrong (see [`exit`]).
    pub fn exit_code(&self) -> u8 {
        match self {
            RunError::Preflight(_) => exit::REFUSED_BY_VALIDATION,
            RunError::Held(_) | RunError::Checkpoint(CheckpointError::Locked { .. }) => {
                exit::DESTINATION_HELD
            }
            RunError::Ended { phase, .. } => exit::of_phase(*phase),
            _ => exit::FAILED,
        }
    }
}

/// Knobs of a run that are not in the config file.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Serve the HTTP API on `api.listen`.
    pub serve_api: bool,
    /// Run the pre-migration checks first (always, except in tests of later phases).
    pub preflight: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            serve_api: true,
            preflight: true,
        }
    }
}

/// The API's listening socket (a second handle on it) and its address.
type ApiSocket = (std::net::TcpListener, SocketAddr);

/// A running migration.
pub struct Migration {
    pub control: ControlHandle,
    pub progress: SharedProgress,
    api_addr: Option<SocketAddr>,
    /// The API's listening socket, kept open across the run's ending (see
    /// [`Migration::take_api_listener`]).
    api_listener: Option<std::net::TcpListener>,
    shutdown: Option<oneshot::Sender<()>>,
    kill: Option<oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<Result<RunOutcome, RunError>>>,
}

impl Migration {
    /// Starts the migration on its own thread. Returns once the API (if any) listens.
    pub fn start(config: Config, options: RunOptions) -> Result<Migration, RunError> {
        let progress = Progress::new();
        let (control, control_rx) = ControlHandle::channel(16);
        let (shutdown_tx, shutdown_rx) = oneshot::channel();
        let (kill_tx, kill_rx) = oneshot::channel();
        let (ready_tx, ready_rx) =
            std::sync::mpsc::channel::<Result<Option<ApiSocket>, RunError>>();
        let thread_progress = progress.clone();
        let thread_control = control.clone();
        let thread = thread::Builder::new()
            .name("ferry-run".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build();
                let runtime = match runtime {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = ready_tx.send(Err(RunError::Runtime(e)));
                        return Err(RunError::Crashed);
                    }
                };
                let system = actix::System::with_tokio_rt(move || runtime);
                // Every log line of the run's actors (they all run on this thread)
                // carries the run's span; each actor adds its own below it.
                let span = tracing::info_span!(
                    "run",
                    migration = crate::checkpoint::lease::process_owner()
                );
                let _run = span.enter();
                system.block_on(async move {
                    tokio::select! {
                        r = drive(config, options, thread_progress, thread_control, control_rx, shutdown_rx, ready_tx) => r,
                        _ = kill_rx => Err(RunError::Aborted),
                    }
                })
            })
            .map_err(RunError::Runtime)?;
        let api_socket = match ready_rx.recv() {
            Ok(Ok(socket)) => socket,
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e);
            }
            Err(_) => {
                return match thread.join() {
                    Ok(Err(e)) => Err(e),
                    _ => Err(RunError::Crashed),
                };
            }
        };
        let (api_listener, api_addr) = match api_socket {
            Some((listener, addr)) => (Some(listener), Some(addr)),
            None => (None, None),
        };
        Ok(Migration {
            control,
            progress,
            api_addr,
            api_listener,
            shutdown: Some(shutdown_tx),
            kill: Some(kill_tx),
            thread: Some(thread),
        })
    }

    /// Where the API listens, when it was started.
    pub fn api_addr(&self) -> Option<SocketAddr> {
        self.api_addr
    }

    /// The API's listening socket (a second handle on the one the run's server uses),
    /// for a server that takes over after the run ends: while this is held the port
    /// keeps listening, so a request made as one server hands over to the next waits
    /// instead of being refused.
    pub fn take_api_listener(&mut self) -> Option<std::net::TcpListener> {
        self.api_listener.take()
    }

    /// Asks the run to stop and keep its checkpoints (SIGTERM); `wait` then returns.
    pub fn shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Stops the run at once without any cleanup, as a crash of the host would.
    pub fn abort(mut self) {
        if let Some(tx) = self.kill.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Waits for the run to end.
    pub fn wait(mut self) -> Result<RunOutcome, RunError> {
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(r)) => r,
            _ => Err(RunError::Crashed),
        }
    }

    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }
}

impl Drop for Migration {
    fn drop(&mut self) {
        if let Some(tx) = self.kill.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn drive(
    config: Config,
    options: RunOptions,
    progress: SharedProgress,
    control: ControlHandle,
    mut control_rx: tokio::sync::mpsc::Receiver<crate::control::ControlMessage>,
    shutdown_rx: oneshot::Receiver<()>,
    ready: std::sync::mpsc::Sender<Result<Option<ApiSocket>, RunError>>,
) -> Result<RunOutcome, RunError> {
    crate::metrics::describe();
    progress.set_phase(Phase::Validating);
    let setup = async {
        let source = Cluster::connect(Side::Source, &config.source.connection()).await?;
        let destination =
            Cluster::connect(Side::Destination, &config.destination.connection()).await?;
        let checkpoints = Checkpoints::new(
            destination.clone(),
            crate::checkpoint::LeaseTerms::new(config.runtime.lease_duration()),
        );
        let existing = match earlier_run(
            checkpoints.load_state().await?,
            config.destination.clear_destination,
        )? {
            // Nothing to do, and nothing to touch (balancers, lease, data).
            Earlier::Completed(report) => return Ok(Err(report.map(|r| *r))),
            Earlier::Resume(state) => Some(*state),
            Earlier::StartFresh => None,
        };
        if options.preflight {
            let report = crate::preflight::run_checks_for_run(&config, existing.is_some()).await;
            for line in report.to_string().lines() {
                tracing::info!("{line}");
            }
            if !report.passed() {
                if report.only_held_elsewhere() {
                    return Err(RunError::Held(report.to_string()));
                }
                return Err(RunError::Preflight(report.to_string()));
            }
        }
        acquire_lease(&checkpoints).await?;
        let engine = match Engine::assemble(
            config.clone(),
            source,
            destination,
            checkpoints,
            progress.clone(),
        )
        .await
        {
            Ok(engine) => Arc::new(engine),
            Err(EngineError::Filter(e)) => return Err(RunError::Preflight(e.to_string())),
            Err(EngineError::Cluster(e)) => return Err(e.into()),
        };
        let state = match existing {
            Some(state) => {
                tracing::info!(phase = ?state.phase, copy_complete = state.copy_complete, "resuming the earlier run");
                state
            }
            None => {
                progress.set_phase(Phase::Initializing);
                let balancers_before = if engine.config.destination.clear_destination {
                    clear_destination(&engine).await?
                } else {
                    None
                };
                let start_ts = engine.source.record_start_time().await?;
                let started_at = unix_now();
                let mut fresh = doc! {"start_ts": start_ts, "started_at": started_at, "copy_complete": false, "events_applied": 0i64};
                if let Some(before) = balancers_before {
                    fresh.insert("balancers_before", before);
                }
                engine.checkpoints.set_state(fresh).await?;
                engine.checkpoints.load_state().await?.unwrap_or_default()
            }
        };
        Ok::<_, RunError>(Ok((engine, state)))
    };
    let (engine, state) = match setup.await {
        Ok(Ok(v)) => v,
        Ok(Err(report)) => {
            let _ = ready.send(Ok(None));
            *progress.report.write() = report.clone();
            progress.set_phase(Phase::Completed);
            tracing::info!("this migration already completed; nothing to do (drop the destination's __ferry database to migrate again)");
            return Ok(RunOutcome {
                phase: Phase::Completed,
                report,
                error: None,
            });
        }
        Err(e) => {
            progress.set_phase(Phase::Failed);
            progress.set_error(error_chain(&e));
            let _ = ready.send(Err(e));
            return Err(RunError::Crashed);
        }
    };
    let (api, socket) = if options.serve_api {
        match serve_api(&config, &progress, &control).await {
            Ok((server, kept)) => {
                let addr = server.local_addr();
                (Some(server), Some((kept, addr)))
            }
            Err(source) => {
                let e = RunError::Api {
                    addr: config.api.listen,
                    source,
                };
                let _ = ready.send(Err(e));
                return Err(RunError::Crashed);
            }
        }
    } else {
        (None, None)
    };
    let _ = ready.send(Ok(socket));
    let (done_tx, done_rx) = oneshot::channel();
    let supervisor = actix::Actor::start(Supervisor::new(engine, state, done_tx));
    let forward = supervisor.clone();
    actix::spawn(async move {
        while let Some((request, reply)) = control_rx.recv().await {
            if forward.send(Control(request, reply)).await.is_err() {
                break;
            }
        }
    });
    let stop = supervisor.clone();
    actix::spawn(async move {
        if shutdown_rx.await.is_ok() {
            stop.do_send(Shutdown);
        }
    });
    let outcome = done_rx.await.map_err(|_| RunError::Crashed)?;
    if let Some(api) = api {
        api.stop().await;
    }
    Ok(outcome)
}

/// Binds `api.listen` and serves the API there; returns the server and a second handle
/// on its socket (see [`Migration::take_api_listener`]).
async fn serve_api(
    config: &Config,
    progress: &SharedProgress,
    control: &ControlHandle,
) -> std::io::Result<(crate::api::ApiServer, std::net::TcpListener)> {
    let listener = crate::api::bind(config.api.listen)?;
    let kept = listener.try_clone()?;
    let server = crate::api::serve_on(
        listener,
        config.api.access(),
        config.api.tls().as_ref(),
        progress.clone(),
        control.clone(),
        crate::api::install_prometheus(),
    )
    .await?;
    Ok((server, kept))
}

/// Takes the destination lease. Another live holder makes the run refuse to start; a
/// holder that was a process of this host and is gone (a crash) is waited for until its
/// lease expires, saying how long.
async fn acquire_lease(checkpoints: &Checkpoints) -> Result<(), RunError> {
    use crate::checkpoint::LeaseAttempt;
    loop {
        let held = match checkpoints.acquire_lease().await? {
            LeaseAttempt::Taken => {
                tracing::info!(owner = checkpoints.owner(), "took the destination lease");
                return Ok(());
            }
            LeaseAttempt::Held(held) => held,
        };
        let wait = held.remaining(bson::DateTime::now());
        match wait {
            Some(wait) if held.holder_is_gone() => {
                tracing::warn!(
                    holder = %held.holder(),
                    expires_at = %held.expires(),
                    wait_s = wait.as_secs_f64().ceil(),
                    "the destination lease belongs to a ferry process of this host that is gone (a crash?); waiting for the lease to expire before taking it over"
                );
                // Past the expiry by a little, so the holder's clock is behind it too.
                tokio::time::sleep(wait + std::time::Duration::from_millis(200)).await;
            }
            _ => {
                return Err(CheckpointError::Locked {
                    holder: held.holder(),
                    until: held.expires(),
                }
                .into())
            }
        }
    }
}

/// Drops the migrated namespaces on the destination (clear_destination = true): every
/// collection and view the namespace filter selects, nothing else, and any checkpoints
/// of an earlier migration. Returns the balancers' recorded states, which the new run
/// keeps (see [`Checkpoints::reset`]).
async fn clear_destination(
    engine: &crate::actors::SharedEngine,
) -> Result<Option<bson::Bson>, RunError> {
    let dest = &engine.destination;
    engine
        .checkpoints
        .fence()
        .check()
        .map_err(CheckpointError::from)?;
    for namespace in crate::cluster::namespaces::in_scope(dest, &engine.filter).await? {
        let (db, name) = (namespace.db.clone(), namespace.coll.as_str());
        tracing::warn!(ns = %format!("{db}.{name}"), "clear_destination: dropping a migrated namespace on the destination");
        match dest.run(&db, doc! {"drop": name}).await {
            Ok(_) => {}
            // Dropped meanwhile: what was asked for.
            Err(e) if e.is(crate::cluster::Refusal::NamespaceMissing) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(engine.checkpoints.reset().await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_and_a_held_destination_have_their_own_exit_codes() {
        assert_eq!(
            RunError::Preflight(String::new()).exit_code(),
            exit::REFUSED_BY_VALIDATION
        );
        let held = RunError::Checkpoint(CheckpointError::Locked {
            holder: String::new(),
            until: String::new(),
        });
        assert_eq!(held.exit_code(), exit::DESTINATION_HELD);
        assert_eq!(
            RunError::Held(String::new()).exit_code(),
            exit::DESTINATION_HELD
        );
    }
}
