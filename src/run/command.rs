//! The `ferry run` and `ferry report` commands: load the config, start the migration
//! (or read its stored report), print what an operator needs, and exit with the code
//! [`crate::exit`] documents.

use std::net::SocketAddr;
use tracing::Instrument;

use crate::actors::error_chain;
use crate::checkpoint::Checkpoints;
use crate::cluster::{Cluster, Side};
use crate::config::Config;
use crate::control::ControlHandle;
use crate::exit;
use crate::progress::{Phase, SharedProgress};

use super::{Migration, RunError, RunOptions};

/// `ferry run --config F`: runs until the migration ends or SIGINT/SIGTERM.
/// `ferry run`: the daemon. Exit codes are [`crate::exit`]'s. After the run ends it
/// keeps serving the API (progress, report, metrics) until SIGTERM, unless
/// `runtime.exit_when_finished` or `exit_when_finished` (`--exit-when-finished`) says
/// otherwise. Started again after an ending it does not resume: after completion it
/// prints the stored report and exits 0; after a cancel or an expiry it prints the
/// stored report, says how to start over, and exits with that ending's code (3, 4).
/// After a failure it resumes from the checkpoints (the cause is meant to be fixed).
pub fn run_command(path: &std::path::Path, exit_when_finished: bool) -> std::process::ExitCode {
    let config = match crate::config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return exit::code(exit::BAD_CONFIG);
        }
    };
    crate::logging::init(
        &config.log.level,
        matches!(config.log.format, crate::config::LogFormat::Json),
    );
    let exit_when_finished = exit_when_finished || config.runtime.exit_when_finished;
    let mut migration = match Migration::start(config.clone(), RunOptions::default()) {
        Ok(m) => m,
        Err(RunError::Ended { phase, report }) => {
            // Ended by an earlier run: show what it did, and how to start over.
            match &report {
                Some(report) => println!("{report}"),
                None => println!(
                    "this migration already ended: {} (no stored report)",
                    phase.as_str()
                ),
            }
            let e = RunError::Ended { phase, report };
            eprintln!("{e}");
            return exit::code(e.exit_code());
        }
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            return exit::code(e.exit_code());
        }
    };
    let Some(api_addr) = migration.api_addr() else {
        // Completed by an earlier run: show what it did.
        return match migration.wait() {
            Ok(outcome) => {
                match &outcome.report {
                    Some(report) => println!("{report}"),
                    None => println!("this migration already completed (no stored report)"),
                }
                exit::code(exit::of_phase(outcome.phase))
            }
            Err(e) => {
                eprintln!("error: {}", error_chain(&e));
                exit::code(e.exit_code())
            }
        };
    };
    tracing::info!(api = %api_addr, "control API listening");
    let signals = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot handle signals: {e}");
            return exit::code(exit::FAILED);
        }
    };
    let finished = signals.block_on(async {
        loop {
            tokio::select! {
                _ = crate::sandbox::wait_for_shutdown_signal() => return false,
                _ = tokio::time::sleep(std::time::Duration::from_millis(200)) => {
                    if migration.is_finished() {
                        return true;
                    }
                }
            }
        }
    });
    if !finished {
        migration.shutdown();
    }
    let progress = migration.progress.clone();
    // Held from before the run's server stops until the next one serves on it: a
    // request in between waits in the backlog rather than finding the port closed.
    let listener = migration.take_api_listener();
    let outcome = match migration.wait() {
        Ok(outcome) => outcome,
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            return exit::code(e.exit_code());
        }
    };
    if outcome.phase != Phase::Completed {
        eprintln!(
            "migration {}: {}",
            outcome.phase.as_str(),
            outcome.error.clone().unwrap_or_default()
        );
    }
    if let (true, false, Some(listener)) = (finished, exit_when_finished, listener) {
        // The same run span as the run's own lines, so these carry the migration too.
        let span =
            tracing::info_span!("run", migration = crate::checkpoint::lease::process_owner());
        signals.block_on(
            serve_until_signal(&config, listener, api_addr, progress, outcome.phase)
                .instrument(span),
        );
    }
    exit::code(exit::of_phase(outcome.phase))
}

/// After the run ended: the API keeps answering (progress, report, metrics; control
/// requests are refused with 409) until SIGTERM or SIGINT.
async fn serve_until_signal(
    config: &Config,
    listener: std::net::TcpListener,
    addr: SocketAddr,
    progress: SharedProgress,
    phase: Phase,
) {
    let (control, mut requests) = ControlHandle::channel(4);
    tokio::spawn(async move {
        while let Some((_, reply)) = requests.recv().await {
            let _ = reply.send(Err(crate::control::ControlError::conflict(format!(
                "the migration has ended ({}); there is nothing left to control",
                phase.as_str()
            ))));
        }
    });
    let server = crate::api::serve_on(
        listener,
        config.api.access(),
        config.api.tls().as_ref(),
        progress,
        control,
        crate::api::install_prometheus(),
    )
    .await;
    match server {
        Ok(server) => {
            tracing::info!(api = %addr, phase = phase.as_str(), "the migration has ended; the API keeps serving its status and report until SIGTERM");
            crate::sandbox::wait_for_shutdown_signal().await;
            server.stop().await;
        }
        Err(e) => {
            tracing::warn!(error = %e, api = %addr, "cannot serve the API after the ending; exiting");
        }
    }
}

/// `ferry report --config F`: the stored report of an ended migration (completed,
/// cancelled, failed or expired; its first line names the ending), read from the
/// destination's `__ferry` database (no daemon needed). Exit 0 with the report, 1 when
/// there is none (no migration, or one still running or resumed: it says where the
/// migration stands), 2 for a bad config.
pub fn report_command(path: &std::path::Path) -> std::process::ExitCode {
    let config = match crate::config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return exit::code(exit::BAD_CONFIG);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return exit::code(exit::FAILED);
        }
    };
    let state = runtime.block_on(async {
        let destination =
            Cluster::connect(Side::Destination, &config.destination.connection()).await?;
        let checkpoints = Checkpoints::new(
            destination,
            crate::checkpoint::LeaseTerms::new(config.runtime.lease_duration()),
        );
        Ok::<_, RunError>(checkpoints.load_state().await?)
    });
    match state {
        Ok(Some(state)) => match (state.report, state.phase) {
            // Only an ended run's report: a run resumed after a failure still holds
            // the failure's report until it ends again.
            (Some(report), Some(phase)) if phase.is_terminal() => {
                println!("{report}");
                exit::code(exit::COMPLETED)
            }
            (_, phase) => {
                eprintln!(
                    "no report yet: the migration on this destination is {}; the report is stored when the migration ends",
                    phase.map_or("running", |p| p.as_str())
                );
                exit::code(exit::FAILED)
            }
        },
        Ok(None) => {
            eprintln!(
                "no migration has run on this destination (its __ferry database holds no state)"
            );
            exit::code(exit::FAILED)
        }
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            exit::code(exit::FAILED)
        }
    }
}
