//! Ferry's command line: parses arguments, then calls the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "ferry", version, about = "Live migration of MongoDB clusters")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run an in-memory MongoDB-compatible replica set for tests and demos.
    Sandbox(ferry::sandbox::SandboxArgs),
    /// Run a migration (the daemon): validate, copy, sync, wait for cutover.
    Run {
        #[arg(long)]
        config: PathBuf,
        /// Exit when the migration ends instead of serving its status and report until
        /// SIGTERM (same as `runtime.exit_when_finished = true`).
        #[arg(long)]
        exit_when_finished: bool,
    },
    /// Print the stored report of a completed migration (read from the destination).
    Report {
        #[arg(long)]
        config: PathBuf,
    },
    /// A whole migration between two in-memory sandboxes, with a live workload.
    Demo(ferry::demo::DemoArgs),
    /// Run every pre-migration check and print one line per check.
    Validate {
        #[arg(long)]
        config: PathBuf,
        /// One JSON document instead of lines: {"passed", "checks": [{name, side, status,
        /// message, fix}]}.
        #[arg(long)]
        json: bool,
    },
    /// Compare source and destination now: counts, content hashes, indexes, options.
    Verify {
        #[arg(long)]
        config: PathBuf,
        /// Also compare unique and TTL index options (they are made effective at cutover).
        #[arg(long)]
        strict: bool,
    },
    /// Show a running migration's phase, copy progress, lag and cutover window.
    Status(ferry::cli::StatusArgs),
    /// Hand over to the destination; run only after application writes have stopped.
    Cutover(ferry::cli::ApiTarget),
    /// Lengthen the cutover window.
    Extend(ferry::cli::ExtendArgs),
    /// Pause copying and syncing.
    Pause(ferry::cli::ApiTarget),
    /// Resume a paused migration.
    Resume(ferry::cli::ApiTarget),
    /// Cancel the migration.
    Cancel(ferry::cli::ApiTarget),
}

fn main() -> ExitCode {
    ferry::memory::tune_allocator();
    let cli = Cli::parse();
    if !matches!(
        cli.command,
        Command::Run { .. } | Command::Sandbox(_) | Command::Demo(_)
    ) {
        ferry::cli::end_quietly_on_closed_output();
    }
    match cli.command {
        Command::Sandbox(args) => ferry::sandbox::run(args),
        Command::Run {
            config,
            exit_when_finished,
        } => ferry::run::run_command(&config, exit_when_finished),
        Command::Report { config } => ferry::run::report_command(&config),
        Command::Demo(shape) => ferry::demo::demo_command(shape),
        Command::Validate { config, json } => ferry::preflight::validate_command(&config, json),
        Command::Verify { config, strict } => {
            ferry::actors::verifier::verify_command(&config, strict)
        }
        Command::Status(args) => ferry::cli::status_command(args),
        Command::Cutover(api) => {
            ferry::cli::control_command(api, ferry::cli::ControlAction::Cutover)
        }
        Command::Extend(args) => ferry::cli::control_command(
            args.target,
            ferry::cli::ControlAction::Extend { hours: args.hours },
        ),
        Command::Pause(api) => ferry::cli::control_command(api, ferry::cli::ControlAction::Pause),
        Command::Resume(api) => ferry::cli::control_command(api, ferry::cli::ControlAction::Resume),
        Command::Cancel(api) => ferry::cli::control_command(api, ferry::cli::ControlAction::Cancel),
    }
}
