//! The server's configuration as a client reads it: `getParameter` (one, several or `"*"`)
//! over the parameters the sandbox knows, and `getCmdLineOpts` (the command line a mongod
//! started with these options would have, and its parsed form).

use bson::{doc, Bson, Document};

use crate::dispatch::Ctx;
use crate::error::{codes, CmdResult, CommandError};
use crate::server::Server;

/// Every parameter `getParameter` knows, with its current value, in the order `"*"` lists
/// them. The values are a 7.0 mongod's defaults unless the sandbox's state decides them.
fn parameters(server: &Server) -> Vec<(&'static str, Bson)> {
    let fcv = server.fcv.lock().clone();
    let tls_mode = if server.options.tls.is_some() {
        "requireTLS"
    } else {
        "disabled"
    };
    vec![
        (
            "authenticationMechanisms",
            Bson::Array(vec!["SCRAM-SHA-1".into(), "SCRAM-SHA-256".into()]),
        ),
        ("cursorTimeoutMillis", Bson::Int64(600_000)),
        // The sandbox runs the test-only commands (configureFailPoint), as a mongod started
        // with `--setParameter enableTestCommands=1` does.
        ("enableTestCommands", Bson::Boolean(true)),
        (
            "featureCompatibilityVersion",
            Bson::Document(doc! {"version": fcv}),
        ),
        (
            "internalQueryMaxBlockingSortMemoryUsageBytes",
            Bson::Int64(100 * 1024 * 1024),
        ),
        ("localLogicalSessionTimeoutMinutes", Bson::Int32(30)),
        ("logLevel", Bson::Int32(0)),
        ("maxSessions", Bson::Int32(1_000_000)),
        ("maxTransactionLockRequestTimeoutMillis", Bson::Int32(5)),
        ("quiet", Bson::Boolean(false)),
        ("tlsMode", Bson::String(tls_mode.into())),
        ("transactionLifetimeLimitSeconds", Bson::Int32(60)),
    ]
}

/// Parameters whose value cannot change while the server runs.
fn settable_at_runtime(name: &str) -> bool {
    !matches!(
        name,
        "tlsMode" | "authenticationMechanisms" | "enableTestCommands"
    )
}

/// `{getParameter: 1 | "*" | {showDetails, allParameters}, <name>: 1, ...}`.
pub fn get_parameter(ctx: &mut Ctx<'_>) -> CmdResult<Document> {
    if ctx.db != "admin" {
        return Err(CommandError::unauthorized(
            "getParameter may only be run against the admin database.",
        ));
    }
    let (all, details) = match ctx.cmd.get("getParameter") {
        Some(Bson::String(s)) => (s == "*", false),
        Some(Bson::Document(opts)) => (
            opts.get_bool("allParameters").unwrap_or(false),
            opts.get_bool("showDetails").unwrap_or(false),
        ),
        _ => (false, false),
    };
    let mut reply = Document::new();
    for (name, value) in parameters(ctx.server) {
        if !(all || ctx.cmd.contains_key(name)) {
            continue;
        }
        let value = if details {
            Bson::Document(doc! {
                "value": value,
                "settableAtRuntime": settable_at_runtime(name),
                "settableAtStartup": true,
            })
        } else {
            value
        };
        reply.insert(name, value);
    }
    if reply.is_empty() {
        return Err(CommandError::new(
            codes::INVALID_OPTIONS,
            "no option found to get",
        ));
    }
    Ok(reply)
}

/// `{getCmdLineOpts: 1}` -> `{argv: [...], parsed: {net, replication, security?, ...}}`.
pub fn get_cmd_line_opts(ctx: &mut Ctx<'_>) -> CmdResult<Document> {
    if ctx.db != "admin" {
        return Err(CommandError::unauthorized(
            "getCmdLineOpts may only be run against the admin database.",
        ));
    }
    let options = &ctx.server.options;
    let port = ctx
        .server
        .address
        .rsplit(':')
        .next()
        .and_then(|p| p.parse::<i32>().ok())
        .unwrap_or(i32::from(options.port));
    let mut argv: Vec<Bson> = vec![
        "mongod".into(),
        "--bind_ip".into(),
        options.host.clone().into(),
        "--port".into(),
        port.to_string().into(),
        "--replSet".into(),
        options.set_name.clone().into(),
        "--setParameter".into(),
        "enableTestCommands=1".into(),
    ];
    let mut net = doc! {"bindIp": options.host.clone(), "port": port};
    if let Some(tls) = &options.tls {
        let cert = tls.cert_file.display().to_string();
        argv.extend([
            Bson::from("--tlsMode"),
            "requireTLS".into(),
            "--tlsCertificateKeyFile".into(),
            cert.clone().into(),
        ]);
        net.insert(
            "tls",
            doc! {"mode": "requireTLS", "certificateKeyFile": cert},
        );
    }
    let mut parsed = doc! {
        "net": net,
        "replication": {"replSetName": options.set_name.clone()},
        "setParameter": {"enableTestCommands": "1"},
    };
    let cluster_role = match options.role {
        crate::sharding::NodeRole::ShardServer => Some("shardsvr"),
        crate::sharding::NodeRole::ConfigServer => Some("configsvr"),
        _ => None,
    };
    if let Some(role) = cluster_role {
        argv.push(format!("--{role}").into());
        parsed.insert("sharding", doc! {"clusterRole": role});
    }
    if !ctx.server.users.is_empty() {
        argv.push("--auth".into());
        parsed.insert("security", doc! {"authorization": "enabled"});
    }
    Ok(doc! {"argv": argv, "parsed": parsed})
}
