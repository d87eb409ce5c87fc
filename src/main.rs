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
    /// Run every pre-migration check and print one line per check.
    Validate {
        #[arg(long)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Sandbox(args) => ferry::sandbox::run(args),
        Command::Validate { config } => ferry::preflight::validate_command(&config),
    }
}
