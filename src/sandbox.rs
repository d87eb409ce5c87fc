//! `ferry sandbox`: runs a `ferry-sandbox` replica set member (or, with `--shards N`, a
//! sharded cluster: config server, N shards and a router) until SIGINT/SIGTERM and
//! prints `ready <uri>` once it accepts connections.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use ferry_sandbox::{Sandbox, SandboxOptions, ShardedCluster, ShardedOptions, TlsFiles};

#[derive(clap::Args, Debug)]
pub struct SandboxArgs {
    /// Port to listen on (0 picks a free one).
    #[arg(long, default_value_t = 27017)]
    pub port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Replica set name reported to clients.
    #[arg(long, default_value = "rs0")]
    pub set_name: String,
    /// Server version to report (X.Y.Z); decides the wire version and the FCV.
    #[arg(long, default_value = "7.0.13")]
    pub version: String,
    /// A user in the admin database: NAME:PASSWORD:ROLE[,ROLE...]. Enables authentication.
    #[arg(long = "user", value_name = "NAME:PASSWORD:ROLES")]
    pub users: Vec<String>,
    /// PEM certificate chain for TLS.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for TLS.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Keep at most this many oplog entries; older history is lost (ChangeStreamHistoryLost).
    #[arg(long)]
    pub oplog_max_events: Option<usize>,
    /// Start a sharded cluster with this many shards (set names shard0..N-1), a config
    /// server replica set and a router listening on --port; without it, a replica set.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub shards: Option<u32>,
    /// How often an idle primary writes a no-op to its oplog, in milliseconds (every node).
    #[arg(long, default_value_t = 10_000)]
    pub periodic_noop_ms: u64,
    /// Sharded cluster: milliseconds between balancer rounds.
    #[arg(long, default_value_t = 10_000)]
    pub balancer_interval_ms: u64,
    /// Sharded cluster: milliseconds a donor shard keeps orphaned documents after a chunk
    /// migration before deleting them.
    #[arg(long, default_value_t = 900_000)]
    pub orphan_cleanup_delay_ms: u64,
}

/// Parses `NAME:PASSWORD:ROLE[,ROLE...]`.
pub fn parse_user(spec: &str) -> Result<(String, String, Vec<String>), String> {
    let mut parts = spec.splitn(3, ':');
    let (Some(name), Some(password), Some(roles)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(format!(
            "--user {spec:?}: expected NAME:PASSWORD:ROLE[,ROLE...]"
        ));
    };
    if name.is_empty() || password.is_empty() {
        return Err(format!(
            "--user {spec:?}: name and password must not be empty"
        ));
    }
    let roles: Vec<String> = roles
        .split(',')
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(String::from)
        .collect();
    if roles.is_empty() {
        return Err(format!(
            "--user {spec:?}: give at least one role, e.g. root"
        ));
    }
    Ok((name.to_string(), password.to_string(), roles))
}

pub fn options_from(args: &SandboxArgs) -> Result<SandboxOptions, String> {
    let users = args
        .users
        .iter()
        .map(|u| parse_user(u))
        .collect::<Result<Vec<_>, _>>()?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(TlsFiles {
            cert_file: cert.clone(),
            key_file: key.clone(),
        }),
        _ => None,
    };
    Ok(SandboxOptions {
        port: args.port,
        host: args.host.clone(),
        set_name: args.set_name.clone(),
        version: args.version.clone(),
        users,
        tls,
        oplog_max_events: args.oplog_max_events,
        periodic_noop_interval: Duration::from_millis(args.periodic_noop_ms),
        ..Default::default()
    })
}

/// The sharded cluster options of `--shards N` and the options every node shares.
pub fn sharded_options_from(args: &SandboxArgs, shards: u32) -> Result<ShardedOptions, String> {
    let node = options_from(args)?;
    Ok(ShardedOptions {
        shards: shards as usize,
        host: node.host,
        router_port: node.port,
        version: node.version,
        users: node.users,
        tls: node.tls,
        oplog_max_events: node.oplog_max_events,
        periodic_noop_interval: node.periodic_noop_interval,
        balancer_interval: Duration::from_millis(args.balancer_interval_ms),
        orphan_cleanup_delay: Duration::from_millis(args.orphan_cleanup_delay_ms),
        ..Default::default()
    })
}

fn report_start_error(e: &ferry_sandbox::StartError) {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(&format!(": {s}"));
        source = s.source();
    }
    eprintln!("error: {msg}");
}

/// `--shards N`: starts the cluster, prints `ready <router uri>`, one `shard <name> <uri>`
/// line per shard and `config <uri>`, then runs until a signal.
fn run_sharded(args: &SandboxArgs, shards: u32) -> ExitCode {
    let options = match sharded_options_from(args, shards) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let cluster = match ShardedCluster::start(options) {
        Ok(c) => c,
        Err(e) => {
            report_start_error(&e);
            return ExitCode::FAILURE;
        }
    };
    let mut lines = format!("ready {}\n", cluster.router_uri());
    for (name, uri) in cluster.shard_uris() {
        lines.push_str(&format!("shard {name} {uri}\n"));
    }
    lines.push_str(&format!("config {}\n", cluster.config_uri()));
    announce(&lines);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start signal handling: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(wait_for_shutdown_signal());
    drop(cluster);
    ExitCode::SUCCESS
}

pub fn run(args: SandboxArgs) -> ExitCode {
    if let Some(shards) = args.shards {
        return run_sharded(&args, shards);
    }
    let options = match options_from(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let sandbox = match Sandbox::start(options) {
        Ok(s) => s,
        Err(e) => {
            report_start_error(&e);
            return ExitCode::FAILURE;
        }
    };
    announce(&format!("ready {}\n", sandbox.uri()));
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start signal handling: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(wait_for_shutdown_signal());
    sandbox.stop();
    ExitCode::SUCCESS
}

/// Resolves on SIGINT or SIGTERM.
pub async fn wait_for_shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Prints the `ready` lines in one write. A reader that has gone away (a script that read
/// the first line and closed the pipe) does not stop the server: the error is ignored.
fn announce(lines: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(lines.as_bytes()).and_then(|()| out.flush());
}
