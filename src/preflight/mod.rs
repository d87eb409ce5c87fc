//! The pre-migration checks: everything that must hold before Ferry touches either
//! cluster, reported as one line per check (pass / warn / fail), each failure with the fix
//! an operator should apply. `ferry validate` prints the report; `ferry run` refuses to
//! start while any check fails.
//!
//! Every check always appears in the report: a check that cannot run because an earlier
//! one failed (no connection, failed authentication) is reported as a failure that names
//! that reason, so an operator never mistakes a skipped check for a passed one.
//!
//! Checks, in report order:
//! - `connectivity (side)`, `authentication (side)`: the server answers and accepts the
//!   credentials in the URI (SCRAM).
//! - `topology (side)`: a replica set or a sharded cluster (through its mongos); a
//!   standalone has no oplog, and a shard or the config servers reached directly hold
//!   only part of a cluster's data.
//! - `version (side)`, `versions match`: both 6.0.17+ at FCV 6.0, or both 7.0.13+ at FCV
//!   7.0, the same release on both sides.
//! - `roles (side)`: the source user can read everything and its oplog (`backup` and
//!   `readAnyDatabase`, plus `clusterMonitor` on a sharded source, or `root`); the
//!   destination user can write every database.
//! - `destination empty`: no user data in the migrated namespaces on the destination,
//!   unless `clear_destination` is set and `confirm_destination_name` names the cluster
//!   (see [`TopologyKind::confirm_name`]); data outside them is left alone.
//! - `migration lock`: no other Ferry process holds the destination's lease (one of
//!   this host that is gone is waited for, see [`crate::checkpoint::lease`]).
//! - `oplog window (source)`: the source's oplog covers at least
//!   [`OPLOG_WINDOW_SAFETY_FACTOR`] times the estimated copy time.
//! - `write block privilege (source)`: with `cutover.enforce_write_block`, the source
//!   user holds the `setUserWriteBlockMode` privilege (checked by privilege, not role).
//! - `time-series collections (source)`: none in scope (they cannot be kept in sync).
//! - On a sharded side, the checks of [`sharded`]: config servers, roles and versions on
//!   every node, the balancer, orphans, indexes per shard, zones, collations, shard keys.
//! - `sharding entries`: each `[sharding]` entry names a source collection that can be
//!   sharded on its key on the destination (see [`sharding_entries`]).

mod sharding_entries;

use std::fmt;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use bson::{doc, Bson, Document};

use crate::checkpoint::lease::{process_owner, LeaseRecord};
use crate::cluster::topology::{self, AuthInfo, ServerVersion, TopologyKind};
use crate::cluster::{Cluster, ClusterError, Side};
use crate::config::{self, Config, ConnectionConfig};

mod sharded;

/// Database of Ferry's bookkeeping on the destination, where the migration lease lives.
pub const LOCK_DB: &str = "__ferry";
/// Collection of the migration lease document `{_id: LOCK_ID, owner, expires_at: Date}`.
pub const LOCK_COLLECTION: &str = "lock";
/// `_id` of the one lease document: one migration per destination.
pub const LOCK_ID: &str = "lock";

/// Assumed initial-copy throughput used to estimate the copy time: 50 MiB/s is what a
/// single Ferry usually sustains between clusters in one region. It is an assumption,
/// not a measurement; the oplog-window check only warns on it.
pub const ASSUMED_COPY_BYTES_PER_SECOND: u64 = 50 * 1024 * 1024;

/// The oplog must cover this many times the estimated copy time, leaving room for a
/// slower copy than assumed and for restarts.
pub const OPLOG_WINDOW_SAFETY_FACTOR: u32 = 2;

/// Copies estimated to take less than this are not compared with the oplog window: a new
/// or idle cluster's oplog spans little time only because it is not full yet.
pub const OPLOG_CHECK_MIN_COPY_ESTIMATE: Duration = Duration::from_secs(60);

/// Source roles that allow everything Ferry does on the source.
const ALL_POWERFUL_ROLES: [&str; 2] = ["root", "__system"];
/// Destination roles that allow writing every database (`restore` writes everything a
/// restore needs, `__ferry` included).
const WRITE_ROLES: [&str; 4] = ["root", "__system", "readWriteAnyDatabase", "restore"];
/// Built-in roles known not to allow writing data to every database.
const NON_WRITE_ROLES: [&str; 12] = [
    "read",
    "readWrite",
    "readAnyDatabase",
    "backup",
    "clusterMonitor",
    "clusterManager",
    "clusterAdmin",
    "hostManager",
    "dbAdmin",
    "dbAdminAnyDatabase",
    "userAdmin",
    "userAdminAnyDatabase",
];

/// Outcome of one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Pass,
    /// Allowed, but the operator should know.
    Warn,
    /// The migration must not start.
    Fail,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Pass => "PASS",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        })
    }
}

/// One check's result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// What was checked, with the side in parentheses: `connectivity (source)`.
    pub name: String,
    pub status: Status,
    /// What was found.
    pub message: String,
    /// What the operator should do about a warning or failure.
    pub fix: Option<String>,
}

impl Check {
    pub fn pass(name: impl Into<String>, message: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            status: Status::Pass,
            message: message.into(),
            fix: None,
        }
    }

    pub fn warn(name: impl Into<String>, message: impl Into<String>, fix: Option<String>) -> Check {
        Check {
            name: name.into(),
            status: Status::Warn,
            message: message.into(),
            fix,
        }
    }

    pub fn fail(
        name: impl Into<String>,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check {
            name: name.into(),
            status: Status::Fail,
            message: message.into(),
            fix: Some(fix.into()),
        }
    }

    /// A check that could not run because `reason` (an earlier failure).
    fn not_run(name: impl Into<String>, reason: &str) -> Check {
        Check::fail(
            name,
            format!("not checked: {reason}"),
            "fix the failures above, then validate again",
        )
    }
}

/// Every check's result, in a stable order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PreflightReport {
    pub checks: Vec<Check>,
}

impl PreflightReport {
    /// True when the only failed check is the destination being held by another
    /// migration (a distinct ending for operators and scripts).
    pub fn only_held_elsewhere(&self) -> bool {
        let mut failed = self
            .checks
            .iter()
            .filter(|c| c.status == Status::Fail)
            .peekable();
        failed.peek().is_some() && failed.all(|c| c.name == LOCK_CHECK)
    }

    /// True when no check failed (warnings allowed).
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.status != Status::Fail)
    }

    /// The check named `name`, if it ran.
    pub fn check(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }

    /// The failed checks.
    pub fn failures(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| c.status == Status::Fail)
    }

    fn count(&self, status: Status) -> usize {
        self.checks.iter().filter(|c| c.status == status).count()
    }
}

impl fmt::Display for PreflightReport {
    /// One line per check, `STATUS  name  message`, names padded to one column; a warning
    /// or failure with a fix is followed by an indented `fix:` line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = self.checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
        for c in &self.checks {
            writeln!(f, "{}  {:width$}  {}", c.status, c.name, c.message)?;
            if let (Some(fix), false) = (&c.fix, c.status == Status::Pass) {
                writeln!(f, "      fix: {fix}")?;
            }
        }
        Ok(())
    }
}

/// Runs every check for a migration that has not started yet, as this process (see
/// [`crate::checkpoint::lease::process_owner`]).
pub async fn run_checks(config: &Config) -> PreflightReport {
    run_checks_with(config, process_owner(), false).await
}

/// Runs every check before `ferry run` starts or resumes: when `resuming`, the
/// destination holds the earlier run's partial copy, which is not foreign user data.
pub async fn run_checks_for_run(config: &Config, resuming: bool) -> PreflightReport {
    run_checks_with(config, process_owner(), resuming).await
}

/// Runs every check; a lease held by `owner` does not count as another migration.
pub async fn run_checks_as(config: &Config, owner: &str) -> PreflightReport {
    run_checks_with(config, owner, false).await
}

async fn run_checks_with(config: &Config, owner: &str, resuming: bool) -> PreflightReport {
    let (source_conn, destination_conn) =
        (config.source.connection(), config.destination.connection());
    let (source, destination) = tokio::join!(
        probe(Side::Source, &source_conn),
        probe(Side::Destination, &destination_conn),
    );
    let mut checks = Vec::new();
    for issue in config.warnings() {
        checks.push(Check::warn(
            format!("config {}", issue.key),
            issue.message.clone(),
            None,
        ));
    }
    for (s, d) in source.checks.iter().zip(destination.checks.iter()) {
        checks.push(s.clone());
        checks.push(d.clone());
        if s.name.starts_with("version ") {
            checks.push(versions_match(&source, &destination));
        }
    }
    checks.push(if resuming {
        Check::pass(
            DESTINATION_EMPTY,
            "resuming an earlier run: the destination holds its partial copy",
        )
    } else {
        destination_empty(config, &destination).await
    });
    checks.push(migration_lock(&destination, owner).await);
    checks.push(oplog_window(config, &source).await);
    checks.push(write_block_privilege(config, &source).await);
    checks.push(time_series(config, &source).await);
    checks.extend(sharded::checks(config, &source, &destination).await);
    checks.push(sharding_entries::check(config, &source, &destination, resuming).await);
    PreflightReport { checks }
}

const TIME_SERIES: &str = "time-series collections (source)";

/// Time-series collections cannot be migrated live: their change events are not
/// available to change streams on MongoDB 6.0 and 7.0, so Ferry could copy them but not
/// keep them in sync. They are refused here, by name, rather than left out silently.
async fn time_series(config: &Config, source: &Probe) -> Check {
    const NAME: &str = TIME_SERIES;
    let cluster = match source.usable() {
        Ok(c) => c,
        Err(reason) => return Check::not_run(NAME, &reason),
    };
    let filter = config.namespace_filter().unwrap_or_default();
    let found = async {
        let mut found = Vec::new();
        for namespace in crate::cluster::namespaces::in_scope(cluster, &filter).await? {
            if namespace.kind == crate::cluster::namespaces::NamespaceKind::TimeSeries {
                found.push(namespace.full_name());
            }
        }
        Ok::<_, ClusterError>(found)
    };
    match found.await {
        Ok(found) if found.is_empty() => Check::pass(NAME, "none in scope"),
        Ok(found) => Check::fail(
            NAME,
            format!(
                "{} in scope: {}; their changes cannot be followed by a change stream, so Ferry cannot keep them in sync",
                found.len(),
                found.join(", ")
            ),
            format!(
                "leave them out with [filter] exclude_namespaces = [{}] and move them separately (mongodump/mongorestore while their writers are stopped)",
                found.iter().map(|n| format!("\"{n}\"")).collect::<Vec<_>>().join(", ")
            ),
        ),
        Err(e) => Check::fail(
            NAME,
            format!("cannot list the source's collections: {}", describe(&e)),
            "grant the source user listCollections on every database (readAnyDatabase has it)",
        ),
    }
}

const WRITE_BLOCK_PRIVILEGE: &str = "write block privilege (source)";
/// The check that fails when another migration holds the destination.
pub const LOCK_CHECK: &str = "migration lock";

/// With `cutover.enforce_write_block`, the source user must be allowed to run
/// `setUserWriteBlockMode`; checked by the privilege itself, so a custom role without it
/// fails here rather than at the cutover, when the operator has already stopped the
/// applications.
async fn write_block_privilege(config: &Config, source: &Probe) -> Check {
    const NAME: &str = WRITE_BLOCK_PRIVILEGE;
    if !config.cutover.enforce_write_block {
        return Check::pass(
            NAME,
            "not needed: cutover.enforce_write_block is off (the operator stops the writes)",
        );
    }
    let cluster = match source.usable() {
        Ok(c) => c,
        Err(reason) => return Check::not_run(NAME, &reason),
    };
    let auth = match topology::auth_info(cluster).await {
        Ok(a) => a,
        Err(e) => {
            return Check::fail(
                NAME,
                format!("cannot read the source user's privileges: {}", describe(&e)),
                "make sure the source answers connectionStatus",
            )
        }
    };
    if auth.unauthenticated() {
        return Check::pass(NAME, "the source runs without access control");
    }
    let user = auth.users.first().map(String::as_str).unwrap_or("the user");
    match topology::cluster_actions(cluster).await {
        Ok(actions) if actions.iter().any(|a| a == "setUserWriteBlockMode") => Check::pass(
            NAME,
            format!("{user} may run setUserWriteBlockMode to block writes at cutover"),
        ),
        Ok(_) => Check::fail(
            NAME,
            format!(
                "cutover.enforce_write_block is on, but the source user {user} may not run setUserWriteBlockMode, so the cutover would fail after the applications were stopped"
            ),
            format!(
                "{} (the built-in backup role grants setUserWriteBlockMode), or set cutover.enforce_write_block = false and stop the writes yourself",
                grant_fix(Side::Source, user, &["backup"])
            ),
        ),
        Err(e) => Check::fail(
            NAME,
            format!("cannot read the source user's privileges: {}", describe(&e)),
            "make sure the source answers connectionStatus with showPrivileges",
        ),
    }
}

const DESTINATION_EMPTY: &str = "destination empty";

/// What one side's checks learnt, for the checks that need both sides.
struct Probe {
    side: Side,
    /// connectivity, authentication, topology, version, roles, in that order.
    checks: Vec<Check>,
    /// Set when the side answered and authenticated.
    cluster: Option<Cluster>,
    topology: Option<TopologyKind>,
    version: Option<ServerVersion>,
    /// Why checks that need a working connection cannot run.
    blocked: Option<String>,
}

impl Probe {
    fn usable(&self) -> Result<&Cluster, String> {
        match (&self.cluster, &self.blocked) {
            (Some(c), None) => Ok(c),
            (_, Some(reason)) => Err(reason.clone()),
            (None, None) => Err(format!("no connection to the {}", self.side)),
        }
    }
}

fn named(kind: &str, side: Side) -> String {
    format!("{kind} ({side})")
}

/// The error and its causes, for an operator to read.
use crate::cluster::describe_error as describe;

async fn probe(side: Side, conn: &ConnectionConfig) -> Probe {
    let mut p = Probe {
        side,
        checks: Vec::new(),
        cluster: None,
        topology: None,
        version: None,
        blocked: None,
    };
    let names = [
        "connectivity",
        "authentication",
        "topology",
        "version",
        "roles",
    ]
    .map(|k| named(k, side));
    let block = |p: &mut Probe, reason: String| {
        for name in names.iter().skip(p.checks.len()) {
            p.checks.push(Check::not_run(name.clone(), &reason));
        }
        p.blocked = Some(reason);
    };

    let cluster = match Cluster::connect(side, conn).await {
        Ok(c) => c,
        Err(e) => {
            p.checks.push(Check::fail(
                &names[0],
                format!("the {side} connection string is invalid: {}", describe(&e)),
                format!(
                    "fix {side}.uri: mongodb://user:password@host:port,host:port/?replicaSet=name"
                ),
            ));
            block(&mut p, format!("the {side} connection string is invalid"));
            return p;
        }
    };

    // Any command opens (and authenticates) a connection.
    match cluster.run("admin", doc! {"ping": 1}).await {
        Ok(_) => p.checks.push(Check::pass(
            &names[0],
            format!("reached {}", cluster.display_uri),
        )),
        Err(e) if e.is_auth_failure() => {
            p.checks.push(Check::pass(
                &names[0],
                format!("reached {}", cluster.display_uri),
            ));
            p.checks.push(Check::fail(
                &names[1],
                format!("authentication failed for the {side} user; check {side}.uri credentials ({})", describe(&e)),
                format!(
                    "check the user name, password and authSource in {side}.uri (the user usually lives in the admin database: add authSource=admin)"
                ),
            ));
            block(&mut p, format!("authentication to the {side} failed"));
            return p;
        }
        Err(e) => {
            p.checks.push(Check::fail(
                &names[0],
                format!("cannot reach the {side} at {}: {}", cluster.display_uri, describe(&e)),
                format!(
                    "check the hosts and ports in {side}.uri, that the servers are running, that this host can reach them (firewall, DNS) and the TLS settings"
                ),
            ));
            block(&mut p, format!("the {side} is unreachable"));
            return p;
        }
    }

    let auth = match topology::auth_info(&cluster).await {
        Ok(auth) => {
            p.checks.push(authentication_check(&names[1], side, &auth));
            Some(auth)
        }
        Err(e) => {
            p.checks.push(Check::fail(
                &names[1],
                format!("cannot read the {side} user's roles: {}", describe(&e)),
                "make sure the server answers connectionStatus (MongoDB 6.0+)",
            ));
            None
        }
    };
    p.cluster = Some(cluster.clone());

    match topology::topology(&cluster).await {
        Ok(TopologyKind::Standalone) => {
            p.checks.push(Check::fail(
                &names[2],
                format!("the {side} is a standalone server: it has no oplog, so it cannot be migrated live"),
                format!("convert it to a replica set (set replication.replSetName, restart, run rs.initiate()) and point {side}.uri at it"),
            ));
            p.topology = Some(TopologyKind::Standalone);
        }
        Ok(kind @ TopologyKind::ShardingMember { .. }) => {
            p.checks.push(Check::fail(
                &names[2],
                format!("{side}.uri reaches {kind}: it holds only part of the cluster's data, and Ferry reads and writes a sharded cluster through its router"),
                format!("point {side}.uri at the cluster's mongos (router) instead"),
            ));
            p.topology = Some(kind);
        }
        Ok(kind) => {
            p.checks.push(Check::pass(&names[2], kind.to_string()));
            p.topology = Some(kind);
        }
        Err(e) => p.checks.push(Check::fail(
            &names[2],
            format!("cannot detect the {side} topology: {}", describe(&e)),
            "make sure the server answers hello (and listShards on a mongos)",
        )),
    }

    p.checks
        .push(version_check(&names[3], side, &cluster, &mut p.version).await);

    p.checks.push(match &auth {
        Some(auth) => roles_check(&names[4], side, auth, p.topology.as_ref()),
        None => Check::not_run(
            &names[4],
            &format!("the {side} user's roles could not be read"),
        ),
    });
    p
}

fn authentication_check(name: &str, side: Side, auth: &AuthInfo) -> Check {
    if auth.unauthenticated() {
        Check::warn(
            name,
            format!("the {side} runs without access control: no user is authenticated, so Ferry treats the connection as all-powerful"),
            Some(format!("enable access control on the {side} and put a dedicated user in {side}.uri")),
        )
    } else {
        Check::pass(name, format!("authenticated as {}", auth.users.join(", ")))
    }
}

/// Why a version is not supported, and what to run instead.
fn unsupported(v: ServerVersion) -> Option<(String, String)> {
    const FIX: &str = "run MongoDB 6.0.17+ or 7.0.13+ (the same release on both sides)";
    match (v.major, v.minor, v.patch) {
        (6, 0, p) if p >= 17 => None,
        (7, 0, p) if p >= 13 => None,
        (6, 0, _) => Some((
            format!("{v} is older than 6.0.17, the oldest supported 6.0 release"),
            "upgrade to 6.0.17 or later".into(),
        )),
        (7, 0, _) => Some((
            format!("{v} is older than 7.0.13, the oldest supported 7.0 release"),
            "upgrade to 7.0.13 or later".into(),
        )),
        (major, _, _) if major >= 8 => Some((
            format!("{v} is not supported yet (Ferry supports 6.0 and 7.0)"),
            FIX.into(),
        )),
        (major, minor, _) if minor != 0 && major >= 6 => Some((
            format!("{v} is a rapid release ({major}.{minor}), which is not supported"),
            format!("{FIX}; rapid releases are not supported"),
        )),
        _ => Some((format!("{v} is older than 6.0.17"), FIX.into())),
    }
}

async fn version_check(
    name: &str,
    side: Side,
    cluster: &Cluster,
    found: &mut Option<ServerVersion>,
) -> Check {
    let version = match topology::server_version(cluster).await {
        Ok(v) => v,
        Err(e) => {
            return Check::fail(
                name,
                format!("cannot read the {side} version: {}", describe(&e)),
                "make sure the server answers buildInfo",
            )
        }
    };
    *found = Some(version);
    let fcv = match topology::feature_compatibility_version(cluster).await {
        Ok(fcv) => fcv,
        Err(e) => {
            return Check::fail(
                name,
                format!(
                "the {side} runs {version} but its featureCompatibilityVersion cannot be read: {}",
                describe(&e)
            ),
                format!("grant the {side} user clusterMonitor (getParameter) or check the server"),
            )
        }
    };
    if let Some((why, fix)) = unsupported(version) {
        return Check::fail(
            name,
            format!("the {side} runs {why}"),
            format!("{fix} on the {side}"),
        );
    }
    let release = version.release();
    if fcv != release {
        return Check::fail(
            name,
            format!("the {side} runs {version} with featureCompatibilityVersion {fcv}, not {release}"),
            format!(
                "finish the upgrade on the {side}: db.adminCommand({{setFeatureCompatibilityVersion: \"{release}\", confirm: true}})"
            ),
        );
    }
    Check::pass(
        name,
        format!("{version}, featureCompatibilityVersion {fcv}"),
    )
}

fn versions_match(source: &Probe, destination: &Probe) -> Check {
    const NAME: &str = "versions match";
    match (source.version, destination.version) {
        (Some(s), Some(d)) if s.release() == d.release() => Check::pass(
            NAME,
            format!(
                "source {s} and destination {d} run the same release {}",
                s.release()
            ),
        ),
        (Some(s), Some(d)) => Check::fail(
            NAME,
            format!(
                "the source runs {s} and the destination {d}: both sides must run the same release"
            ),
            format!(
                "upgrade the older side so both run {} (6.0.17+ or 7.0.13+)",
                s.release().max(d.release())
            ),
        ),
        (None, _) => Check::not_run(NAME, "the source version is unknown"),
        (_, None) => Check::not_run(NAME, "the destination version is unknown"),
    }
}

fn grant_fix(side: Side, user: &str, roles: &[&str]) -> String {
    let user = user.split('@').next().unwrap_or(user);
    let list: Vec<String> = roles
        .iter()
        .map(|r| format!("{{role: \"{r}\", db: \"admin\"}}"))
        .collect();
    format!(
        "grant them on the {side}: db.getSiblingDB(\"admin\").grantRolesToUser(\"{user}\", [{}]), or use a user that has them",
        list.join(", ")
    )
}

fn roles_check(name: &str, side: Side, auth: &AuthInfo, topology: Option<&TopologyKind>) -> Check {
    if auth.unauthenticated() {
        return Check::warn(
            name,
            format!("no access control on the {side}: every operation is allowed"),
            Some(format!("enable access control on the {side}")),
        );
    }
    let user = auth.users.first().map(String::as_str).unwrap_or("the user");
    let held: Vec<String> = auth
        .roles
        .iter()
        .map(|r| format!("{}@{}", r.role, r.db))
        .collect();
    if ALL_POWERFUL_ROLES.iter().any(|r| auth.has_admin_role(r)) {
        return Check::pass(name, format!("{user} holds {}", held.join(", ")));
    }
    let sharded = topology.is_some_and(TopologyKind::is_sharded);
    match side {
        Side::Source => {
            let mut needed = vec!["backup", "readAnyDatabase"];
            if sharded {
                needed.push("clusterMonitor");
            }
            let missing: Vec<&str> = needed
                .iter()
                .copied()
                .filter(|r| !auth.has_admin_role(r))
                .collect();
            if missing.is_empty() {
                Check::pass(name, format!("{user} holds {}", held.join(", ")))
            } else {
                Check::fail(
                    name,
                    format!(
                        "the source user {user} lacks {} (it holds {}); Ferry needs {} to read every collection and the oplog",
                        missing.join(" and "),
                        if held.is_empty() { "no roles".to_string() } else { held.join(", ") },
                        needed.join(", ")
                    ),
                    grant_fix(side, user, &missing),
                )
            }
        }
        Side::Destination => {
            let writes = WRITE_ROLES.iter().any(|r| auth.has_admin_role(r));
            if writes && sharded && !auth.has_admin_role("clusterManager") {
                return Check::warn(
                    name,
                    format!("{user} can write but lacks clusterManager, needed to stop the balancer and shard collections"),
                    Some(grant_fix(side, user, &["clusterManager"])),
                );
            }
            if writes {
                return Check::pass(name, format!("{user} holds {}", held.join(", ")));
            }
            let unknown: Vec<&str> = auth
                .roles
                .iter()
                .filter(|r| r.db != "admin" || !NON_WRITE_ROLES.contains(&r.role.as_str()))
                .map(|r| r.role.as_str())
                .collect();
            if unknown.is_empty() {
                Check::fail(
                    name,
                    format!(
                        "the destination user {user} cannot write every database (it holds {})",
                        if held.is_empty() {
                            "no roles".to_string()
                        } else {
                            held.join(", ")
                        }
                    ),
                    grant_fix(side, user, &["readWriteAnyDatabase"]),
                )
            } else {
                Check::warn(
                    name,
                    format!(
                        "cannot tell whether the destination user {user}'s roles ({}) allow writing every database",
                        held.join(", ")
                    ),
                    Some(format!("make sure they do, or {}", grant_fix(side, user, &["readWriteAnyDatabase"]))),
                )
            }
        }
    }
}

async fn destination_empty(config: &Config, destination: &Probe) -> Check {
    const NAME: &str = DESTINATION_EMPTY;
    let cluster = match destination.usable() {
        Ok(c) => c,
        Err(reason) => return Check::not_run(NAME, &reason),
    };
    let databases = match topology::user_databases(cluster).await {
        Ok(d) => d,
        Err(e) => {
            return Check::fail(
                NAME,
                format!("cannot list the destination's databases: {}", describe(&e)),
                "grant the destination user listDatabases and listCollections (readWriteAnyDatabase has them)",
            )
        }
    };
    if databases.is_empty() {
        return Check::pass(NAME, "the destination holds no user data");
    }
    // Only data in the migrated namespaces is in the way: the rest is left alone.
    let (databases, untouched) = split_by_scope(config, cluster, databases).await;
    if databases.is_empty() {
        return Check::pass(
            NAME,
            format!(
                "the destination holds no data in the migrated namespaces; it holds other data, left alone, in: {}",
                untouched.join(", ")
            ),
        );
    }
    let shown = databases
        .iter()
        .take(5)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    let more = databases.len().saturating_sub(5);
    let listed = if more > 0 {
        format!("{shown} and {more} more")
    } else {
        shown
    };
    let expected = destination
        .topology
        .as_ref()
        .and_then(TopologyKind::confirm_name);
    let what = match destination.topology {
        Some(TopologyKind::Sharded { .. }) => "first shard id",
        _ => "replica set name",
    };
    let dest = &config.destination;
    let Some(expected) = expected else {
        return Check::not_run(
            NAME,
            "the destination topology is unknown, so clear_destination cannot be confirmed",
        );
    };
    if !dest.clear_destination {
        return Check::fail(
            NAME,
            format!("the destination holds user data in: {listed}"),
            format!(
                "migrate into an empty cluster, drop those databases, or set destination.clear_destination = true and destination.confirm_destination_name = \"{expected}\" (the destination's {what}) to drop the migrated namespaces before copying"
            ),
        );
    }
    match dest.confirm_destination_name.as_deref() {
        Some(name) if name == expected => Check::warn(
            NAME,
            format!(
                "the destination holds user data in: {listed}; clear_destination is set and confirmed for \"{expected}\": the migrated namespaces will be dropped there before copying"
            ),
            None,
        ),
        Some(name) => Check::fail(
            NAME,
            format!(
                "destination.confirm_destination_name is \"{name}\" but the destination's {what} is \"{expected}\"; nothing will be cleared on a cluster you did not name"
            ),
            format!(
                "check that destination.uri points at the cluster you mean to clear, then set destination.confirm_destination_name = \"{expected}\""
            ),
        ),
        None => Check::fail(
            NAME,
            format!("destination.clear_destination is true but destination.confirm_destination_name is not set; the destination holds user data in: {listed}"),
            format!("set destination.confirm_destination_name = \"{expected}\" (the destination's {what})"),
        ),
    }
}

/// Splits the destination's user databases into those holding a namespace the filter
/// migrates and the others. A database whose collections cannot be listed counts as in
/// scope (the check then fails rather than miss data).
async fn split_by_scope(
    config: &Config,
    cluster: &Cluster,
    databases: Vec<String>,
) -> (Vec<String>, Vec<String>) {
    // An invalid filter is reported by the config checks; judge as if everything moved.
    let filter = config
        .namespace_filter()
        .unwrap_or_else(|_| config::NamespaceFilter::allow_all());
    if filter.is_unrestricted() {
        return (databases, Vec::new());
    }
    let (mut in_scope, mut untouched) = (Vec::new(), Vec::new());
    for db in databases {
        if !filter.may_allow_database(&db) {
            untouched.push(db);
            continue;
        }
        let migrated = match cluster.collection_specs(&db).await {
            Ok(specs) => specs.iter().any(|spec| {
                spec.get_str("name")
                    .is_ok_and(|name| filter.allows(&db, name))
            }),
            Err(_) => true,
        };
        if migrated {
            in_scope.push(db);
        } else {
            untouched.push(db);
        }
    }
    (in_scope, untouched)
}

async fn migration_lock(destination: &Probe, owner: &str) -> Check {
    const NAME: &str = LOCK_CHECK;
    let cluster = match destination.usable() {
        Ok(c) => c,
        Err(reason) => return Check::not_run(NAME, &reason),
    };
    let reply = cluster
        .run(LOCK_DB, doc! {"find": LOCK_COLLECTION, "filter": {"_id": LOCK_ID}, "limit": 1, "singleBatch": true})
        .await;
    let lease: Option<Document> = match reply {
        Ok(r) => r
            .get_document("cursor")
            .ok()
            .and_then(|c| c.get_array("firstBatch").ok())
            .and_then(|b| b.first())
            .and_then(Bson::as_document)
            .cloned(),
        Err(e) => {
            return Check::fail(
                NAME,
                format!("cannot read the lease {LOCK_DB}.{LOCK_COLLECTION} on the destination: {}", describe(&e)),
                format!("grant the destination user read and write on the {LOCK_DB} database (readWriteAnyDatabase has them)"),
            )
        }
    };
    let Some(lease) = lease else {
        return Check::pass(NAME, "no other migration holds the destination");
    };
    let held = LeaseRecord::from_document(&lease);
    let now = bson::DateTime::now();
    if held.is_expired(now) {
        return Check::pass(
            NAME,
            format!(
                "the lease of an earlier ferry process ({}) expired at {}; it will be taken over",
                held.holder(),
                held.expires()
            ),
        );
    }
    if held.owner == owner {
        return Check::pass(
            NAME,
            format!("the lease is held by this process ({owner}); it resumes"),
        );
    }
    match held.remaining(now) {
        Some(left) if held.holder_is_gone() => Check::warn(
            NAME,
            format!(
                "the lease is held by a ferry process of this host that is gone ({}); ferry run waits {} for it to expire at {}, then takes it over",
                held.holder(),
                human(left),
                held.expires()
            ),
            None,
        ),
        Some(_) => Check::fail(
            NAME,
            format!(
                "another ferry process ({}) holds the destination until {}",
                held.holder(),
                held.expires()
            ),
            format!(
                "only one process may write to a destination: wait for that migration to finish or cancel it on its host (ferry cancel); if it is dead, its lease expires at {}",
                held.expires()
            ),
        ),
        None => Check::fail(
            NAME,
            format!(
                "another ferry process ({}) holds the destination (its lease has no expires_at)",
                held.holder()
            ),
            format!("cancel that migration on its host; if none runs, delete the document {{_id: \"{LOCK_ID}\"}} from {LOCK_DB}.{LOCK_COLLECTION} on the destination"),
        ),
    }
}

fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        _ => format!("{:.1}h", s as f64 / 3600.0),
    }
}

async fn oplog_window(config: &Config, source: &Probe) -> Check {
    const NAME: &str = "oplog window (source)";
    let cluster = match source.usable() {
        Ok(c) => c,
        Err(reason) => return Check::not_run(NAME, &reason),
    };
    let estimate = async {
        let filter = config.namespace_filter().unwrap_or_default();
        let databases = cluster.database_names(&filter).await?;
        let bytes = topology::data_size(cluster, &databases).await?;
        Ok::<_, ClusterError>((
            bytes,
            Duration::from_secs_f64(bytes as f64 / ASSUMED_COPY_BYTES_PER_SECOND as f64),
        ))
    };
    let (bytes, copy) = match estimate.await {
        Ok(e) => e,
        Err(e) => {
            return Check::fail(
                NAME,
                format!("cannot measure the source data size: {}", describe(&e)),
                "grant the source user dbStats on every database (readAnyDatabase has it)",
            )
        }
    };
    let mib = bytes / (1024 * 1024);
    let assumed = ASSUMED_COPY_BYTES_PER_SECOND / (1024 * 1024);
    let needed = copy * OPLOG_WINDOW_SAFETY_FACTOR;
    let estimate_text = format!(
        "copying {mib} MiB is estimated at {} (assuming {assumed} MiB/s)",
        human(copy)
    );
    match &source.topology {
        Some(TopologyKind::ReplicaSet { .. }) => {}
        Some(TopologyKind::Sharded { .. }) => {
            return Check::warn(
                NAME,
                format!("not measured: a mongos does not expose the shards' oplogs; {estimate_text}"),
                Some(format!(
                    "check on each shard (rs.printReplicationInfo()) that the oplog covers at least {} ({OPLOG_WINDOW_SAFETY_FACTOR}x the estimate), or set runtime.spool_dir",
                    human(needed)
                )),
            )
        }
        _ => return Check::not_run(NAME, "the source is not a replica set"),
    }
    let window = match topology::oplog_window(cluster).await {
        Ok(w) => w.duration(),
        Err(e) => {
            return Check::fail(
                NAME,
                format!("cannot read the source oplog: {}", describe(&e)),
                "grant the source user read on local.oplog.rs (the backup role has it)",
            )
        }
    };
    if copy < OPLOG_CHECK_MIN_COPY_ESTIMATE {
        return Check::pass(
            NAME,
            format!("the oplog covers {}; {estimate_text}", human(window)),
        );
    }
    if window < needed && config.runtime.spool_dir.is_some() {
        Check::pass(
            NAME,
            format!(
                "the oplog covers {}, less than {OPLOG_WINDOW_SAFETY_FACTOR}x the copy estimate, but changes are spooled to runtime.spool_dir while copying; {estimate_text}",
                human(window)
            ),
        )
    } else if window < needed {
        Check::warn(
            NAME,
            format!(
                "the oplog covers {}, less than {OPLOG_WINDOW_SAFETY_FACTOR}x the copy estimate; {estimate_text}",
                human(window)
            ),
            Some(format!(
                "grow the source oplog to cover at least {} (replSetResizeOplog) or set runtime.spool_dir so change events are kept on disk during the copy",
                human(needed)
            )),
        )
    } else {
        Check::pass(
            NAME,
            format!("the oplog covers {}; {estimate_text}", human(window)),
        )
    }
}

impl Check {
    /// The check as one JSON object for automation: `name` without the side, `side`
    /// (`source`, `destination` or null), `status` (`pass`, `warn`, `fail`), `message`,
    /// `fix` (or null).
    pub fn to_json(&self) -> serde_json::Value {
        let (name, side) = match self.name.rsplit_once(" (") {
            Some((name, side)) if side.ends_with(')') => (
                name.to_string(),
                Some(side.trim_end_matches(')').to_string()),
            ),
            _ => (self.name.clone(), None),
        };
        serde_json::json!({
            "name": name,
            "side": side,
            "status": self.status.to_string().to_ascii_lowercase(),
            "message": self.message,
            "fix": self.fix,
        })
    }
}

impl PreflightReport {
    /// `{"passed": bool, "checks": [...]}` with [`Check::to_json`] per check.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "passed": self.passed(),
            "checks": self.checks.iter().map(Check::to_json).collect::<Vec<_>>(),
        })
    }
}

/// `ferry validate --config <path> [--json]`: prints every config error, or every
/// check's line (with `--json`, one JSON document: `{"passed", "checks": [{name, side,
/// status, message, fix}]}`, or `{"passed": false, "config_errors": [...]}`). Exit 0 when
/// nothing fails (warnings allowed), 5 when a check fails, 2 for a bad config.
pub fn validate_command(path: &Path, json: bool) -> ExitCode {
    let config = match config::load(path) {
        Ok(c) => c,
        Err(e) if json => {
            let errors: Vec<String> = e.to_string().lines().map(str::to_string).collect();
            println!(
                "{}",
                serde_json::json!({"passed": false, "config_errors": errors})
            );
            return crate::exit::code(crate::exit::BAD_CONFIG);
        }
        Err(e) => {
            eprintln!(
                "{}: the configuration is invalid; fix these and validate again:",
                path.display()
            );
            for line in e.to_string().lines() {
                eprintln!("  {line}");
            }
            return crate::exit::code(crate::exit::BAD_CONFIG);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let report = runtime.block_on(run_checks(&config));
    if json {
        println!("{}", report.to_json());
    } else {
        print!("{report}");
        println!(
            "{} passed, {} warnings, {} failed",
            report.count(Status::Pass),
            report.count(Status::Warn),
            report.count(Status::Fail)
        );
    }
    if report.passed() {
        ExitCode::SUCCESS
    } else {
        crate::exit::code(crate::exit::REFUSED_BY_VALIDATION)
    }
}
