//! What kind of deployment a [`Cluster`] is and what it allows: topology (replica set,
//! sharded cluster, standalone), server version and feature compatibility version, the
//! connected user's roles and privileges, the oplog window, and whether the deployment
//! already holds user data. Preflight decides what is acceptable; this module only reports.

use std::fmt;
use std::time::Duration;

use bson::{doc, Bson, Document, Timestamp};

use super::{Cluster, ClusterError};

/// Databases that never count as user data: the server's own and Ferry's bookkeeping.
pub const INTERNAL_DATABASES: [&str; 4] = crate::config::NEVER_MIGRATED_DATABASES;

/// How the deployment is organised, as its `hello` reply (and, for mongos, `listShards`)
/// describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TopologyKind {
    /// A replica set: `hello` carries `setName`.
    ReplicaSet {
        set_name: String,
        hosts: Vec<String>,
    },
    /// A sharded cluster reached through mongos (`hello.msg == "isdbgrid"`).
    Sharded { shards: Vec<ShardInfo> },
    /// A single mongod without replication: it has no oplog, so it cannot be migrated live.
    Standalone,
    /// A replica set that is one part of a sharded cluster, reached directly instead of
    /// through a router: a shard (`clusterRole` `shardsvr`) or the config servers
    /// (`configsvr`). Its data is only a slice of the cluster's, so it is not migrated
    /// on its own.
    ShardingMember {
        set_name: String,
        cluster_role: String,
    },
}

impl TopologyKind {
    /// The replica set name of a replica set; for a sharded cluster the id of its first
    /// shard (smallest `_id` from `listShards`), which is what operators confirm a
    /// destructive action against; `None` for a standalone.
    pub fn confirm_name(&self) -> Option<&str> {
        match self {
            TopologyKind::ReplicaSet { set_name, .. } => Some(set_name),
            TopologyKind::Sharded { shards } => shards.iter().map(|s| s.id.as_str()).min(),
            TopologyKind::Standalone | TopologyKind::ShardingMember { .. } => None,
        }
    }

    pub fn is_sharded(&self) -> bool {
        matches!(self, TopologyKind::Sharded { .. })
    }
}

impl fmt::Display for TopologyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TopologyKind::ReplicaSet { set_name, hosts } => {
                write!(f, "replica set {set_name} ({} members)", hosts.len())
            }
            TopologyKind::Sharded { shards } => {
                let ids: Vec<&str> = shards.iter().map(|s| s.id.as_str()).collect();
                write!(
                    f,
                    "sharded cluster with {} shards ({})",
                    shards.len(),
                    ids.join(", ")
                )
            }
            TopologyKind::Standalone => f.write_str("standalone server"),
            TopologyKind::ShardingMember {
                set_name,
                cluster_role,
            } => {
                let what = if cluster_role == CONFIG_SERVER_ROLE {
                    "the config server replica set"
                } else {
                    "a shard"
                };
                write!(f, "replica set {set_name}, {what} of a sharded cluster")
            }
        }
    }
}

/// One shard of a sharded cluster, from `listShards`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardInfo {
    /// The shard's `_id`.
    pub id: String,
    /// The shard's replica set name (the part of `host` before `/`).
    pub set_name: Option<String>,
    /// Member addresses (`host:port`).
    pub hosts: Vec<String>,
}

impl ShardInfo {
    /// Parses a `listShards` entry: `{_id, host: "rs/h1:1,h2:2", state}`.
    pub fn from_document(doc: &Document) -> Option<ShardInfo> {
        let id = doc.get_str("_id").ok()?.to_string();
        let host = doc.get_str("host").unwrap_or_default();
        let (set_name, list) = match host.split_once('/') {
            Some((set, list)) => (Some(set.to_string()), list),
            None => (None, host),
        };
        let hosts = list
            .split(',')
            .filter(|h| !h.is_empty())
            .map(String::from)
            .collect();
        Some(ShardInfo {
            id,
            set_name,
            hosts,
        })
    }
}

/// An error about a reply Ferry could not interpret, naming the side.
fn unexpected(cluster: &Cluster, action: &str, what: impl Into<String>) -> ClusterError {
    ClusterError::Command {
        side: cluster.side,
        action: action.to_string(),
        source: mongodb::error::Error::custom(what.into()),
    }
}

fn strings(doc: &Document, key: &str) -> Vec<String> {
    doc.get_array(key)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// `clusterRole` of a config server replica set member.
pub const CONFIG_SERVER_ROLE: &str = "configsvr";

/// The sharding role of a replica set member, when it has one: `configsvr` when `hello`
/// says so (`configsvr` field), else `parsed.sharding.clusterRole` of `getCmdLineOpts`
/// (`shardsvr` on a shard). A user without `getCmdLineOpts` (clusterMonitor has it)
/// cannot tell a shard from a replica set; that is taken as a replica set.
async fn sharding_role(cluster: &Cluster, hello: &Document) -> Option<String> {
    if hello.contains_key("configsvr") {
        return Some(CONFIG_SERVER_ROLE.to_string());
    }
    let opts = cluster
        .run("admin", doc! {"getCmdLineOpts": 1})
        .await
        .ok()?;
    opts.get_document("parsed")
        .and_then(|p| p.get_document("sharding"))
        .and_then(|s| s.get_str("clusterRole"))
        .ok()
        .map(String::from)
}

/// Detects the topology from `hello` (and `listShards` on a mongos).
pub async fn topology(cluster: &Cluster) -> Result<TopologyKind, ClusterError> {
    let hello = cluster.run("admin", doc! {"hello": 1}).await?;
    if let Ok(set_name) = hello.get_str("setName") {
        if let Some(cluster_role) = sharding_role(cluster, &hello).await {
            return Ok(TopologyKind::ShardingMember {
                set_name: set_name.to_string(),
                cluster_role,
            });
        }
        return Ok(TopologyKind::ReplicaSet {
            set_name: set_name.to_string(),
            hosts: strings(&hello, "hosts"),
        });
    }
    if hello.get_str("msg") == Ok("isdbgrid") {
        let reply = cluster.run("admin", doc! {"listShards": 1}).await?;
        let mut shards: Vec<ShardInfo> = reply
            .get_array("shards")
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_document().and_then(ShardInfo::from_document))
                    .collect()
            })
            .unwrap_or_default();
        shards.sort_by(|a, b| a.id.cmp(&b.id));
        return Ok(TopologyKind::Sharded { shards });
    }
    Ok(TopologyKind::Standalone)
}

/// A MongoDB server version `major.minor.patch`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServerVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl ServerVersion {
    pub const fn new(major: u32, minor: u32, patch: u32) -> ServerVersion {
        ServerVersion {
            major,
            minor,
            patch,
        }
    }

    /// Parses `"7.0.13"` (also `"7.0.13-rc1"`, `"7.0"`).
    pub fn parse(text: &str) -> Option<ServerVersion> {
        let mut parts = text.split(['.', '-', '+']);
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        let patch = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        Some(ServerVersion {
            major,
            minor,
            patch,
        })
    }

    /// `"major.minor"`: the feature compatibility version this release runs at when fully
    /// upgraded.
    pub fn release(&self) -> String {
        format!("{}.{}", self.major, self.minor)
    }

    fn from_array(values: &[Bson]) -> Option<ServerVersion> {
        let n = |i: usize| -> Option<u32> {
            match values.get(i)? {
                Bson::Int32(v) => u32::try_from(*v).ok(),
                Bson::Int64(v) => u32::try_from(*v).ok(),
                Bson::Double(v) if *v >= 0.0 => Some(*v as u32),
                _ => None,
            }
        };
        Some(ServerVersion {
            major: n(0)?,
            minor: n(1)?,
            patch: n(2).unwrap_or(0),
        })
    }
}

impl fmt::Display for ServerVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// The server version from `buildInfo` (`versionArray`, else `version`).
pub async fn server_version(cluster: &Cluster) -> Result<ServerVersion, ClusterError> {
    let info = cluster.run("admin", doc! {"buildInfo": 1}).await?;
    if let Some(v) = info
        .get_array("versionArray")
        .ok()
        .and_then(|a| ServerVersion::from_array(a))
    {
        return Ok(v);
    }
    info.get_str("version")
        .ok()
        .and_then(ServerVersion::parse)
        .ok_or_else(|| {
            unexpected(
                cluster,
                "buildInfo",
                "the reply carries no readable version",
            )
        })
}

/// The feature compatibility version (e.g. `"7.0"`), from `getParameter`.
pub async fn feature_compatibility_version(cluster: &Cluster) -> Result<String, ClusterError> {
    let reply = cluster
        .run(
            "admin",
            doc! {"getParameter": 1, "featureCompatibilityVersion": 1},
        )
        .await?;
    match reply.get("featureCompatibilityVersion") {
        Some(Bson::Document(d)) => d.get_str("version").map(String::from).map_err(|_| {
            unexpected(
                cluster,
                "getParameter",
                "featureCompatibilityVersion has no version",
            )
        }),
        Some(Bson::String(s)) => Ok(s.clone()),
        _ => Err(unexpected(
            cluster,
            "getParameter",
            "the reply carries no featureCompatibilityVersion",
        )),
    }
}

/// A role granted to a user: `role` defined in database `db`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Role {
    pub role: String,
    pub db: String,
}

/// Who the connection is authenticated as, from `connectionStatus`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthInfo {
    /// `user@db` of each authenticated user; empty when the deployment runs without
    /// access control (then every operation is allowed).
    pub users: Vec<String>,
    /// Every role the authenticated users hold, inherited roles included.
    pub roles: Vec<Role>,
}

impl AuthInfo {
    /// No authenticated user: the deployment has access control disabled, so the
    /// connection may do anything.
    pub fn unauthenticated(&self) -> bool {
        self.users.is_empty()
    }

    /// Whether the user holds `role` from the `admin` database (where the cluster-wide
    /// built-in roles live).
    pub fn has_admin_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r.role == role && r.db == "admin")
    }
}

/// The connection's authenticated users and their roles.
pub async fn auth_info(cluster: &Cluster) -> Result<AuthInfo, ClusterError> {
    let reply = cluster.run("admin", doc! {"connectionStatus": 1}).await?;
    let info = reply
        .get_document("authInfo")
        .map_err(|_| unexpected(cluster, "connectionStatus", "the reply carries no authInfo"))?;
    let users = info
        .get_array("authenticatedUsers")
        .map(|a| {
            a.iter()
                .filter_map(Bson::as_document)
                .map(|u| {
                    format!(
                        "{}@{}",
                        u.get_str("user").unwrap_or_default(),
                        u.get_str("db").unwrap_or_default()
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let roles = info
        .get_array("authenticatedUserRoles")
        .map(|a| {
            a.iter()
                .filter_map(Bson::as_document)
                .map(|r| Role {
                    role: r.get_str("role").unwrap_or_default().to_string(),
                    db: r.get_str("db").unwrap_or_default().to_string(),
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(AuthInfo { users, roles })
}

/// The connection's privileges (`connectionStatus` with `showPrivileges`).
async fn privileges(cluster: &Cluster) -> Result<bson::Array, ClusterError> {
    let reply = cluster
        .run(
            "admin",
            doc! {"connectionStatus": 1, "showPrivileges": true},
        )
        .await?;
    reply
        .get_document("authInfo")
        .and_then(|i| i.get_array("authenticatedUserPrivileges"))
        .cloned()
        .map_err(|_| {
            unexpected(
                cluster,
                "connectionStatus",
                "the reply lists no authenticatedUserPrivileges",
            )
        })
}

/// The actions the connection's users may take on the cluster resource
/// (`connectionStatus` with `showPrivileges`), e.g. `setUserWriteBlockMode`.
pub async fn cluster_actions(cluster: &Cluster) -> Result<Vec<String>, ClusterError> {
    let privileges = privileges(cluster).await?;
    let mut actions = Vec::new();
    for p in privileges.iter().filter_map(Bson::as_document) {
        let resource = p.get_document("resource").ok();
        let on_cluster = resource.is_some_and(|r| {
            r.get_bool("cluster").unwrap_or(false) || r.get_bool("anyResource").unwrap_or(false)
        });
        if on_cluster {
            if let Ok(list) = p.get_array("actions") {
                actions.extend(list.iter().filter_map(|a| a.as_str().map(String::from)));
            }
        }
    }
    Ok(actions)
}

/// Whether the connection's users may `update` the namespace `db.coll` (by an exact,
/// database-wide or any-resource privilege from `connectionStatus` with
/// `showPrivileges`): `balancerStart` and `balancerStop` are authorized as updates of
/// `config.settings`.
pub async fn may_update(cluster: &Cluster, db: &str, coll: &str) -> Result<bool, ClusterError> {
    let privileges = privileges(cluster).await?;
    Ok(privileges.iter().filter_map(Bson::as_document).any(|p| {
        let covers = p.get_document("resource").is_ok_and(|r| {
            r.get_bool("anyResource").unwrap_or(false)
                || (r.get_str("db") == Ok(db)
                    && matches!(r.get_str("collection"), Ok(c) if c.is_empty() || c == coll))
        });
        covers
            && p.get_array("actions")
                .is_ok_and(|a| a.iter().any(|a| a.as_str() == Some("update")))
    }))
}

/// The history a replica set's oplog holds: its first and last entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OplogWindow {
    pub first: Timestamp,
    pub last: Timestamp,
}

impl OplogWindow {
    /// Time between the oldest and the newest entry.
    pub fn duration(&self) -> Duration {
        Duration::from_secs(u64::from(self.last.time.saturating_sub(self.first.time)))
    }
}

/// The first and last `ts` of `local.oplog.rs` of a replica set (read in natural order,
/// which is insertion order; sorting by `ts` is the fallback for servers that refuse a
/// `$natural` sort). Fails with a clear error on a deployment without a readable oplog.
pub async fn oplog_window(cluster: &Cluster) -> Result<OplogWindow, ClusterError> {
    let natural = async {
        let first = oplog_edge(cluster, doc! {"$natural": 1}).await?;
        let last = oplog_edge(cluster, doc! {"$natural": -1}).await?;
        Ok::<_, ClusterError>((first, last))
    };
    let (first, last) = match natural.await {
        Ok((Some(first), Some(last))) if first <= last => (Some(first), Some(last)),
        _ => (
            oplog_edge(cluster, doc! {"ts": 1}).await?,
            oplog_edge(cluster, doc! {"ts": -1}).await?,
        ),
    };
    match (first, last) {
        (Some(first), Some(last)) => Ok(OplogWindow { first, last }),
        _ => Err(unexpected(
            cluster,
            "read local.oplog.rs",
            "the oplog is empty or missing; is this a replica set?",
        )),
    }
}

async fn oplog_edge(cluster: &Cluster, sort: Document) -> Result<Option<Timestamp>, ClusterError> {
    // The local database only supports local read concern.
    let reply = cluster
        .run(
            "local",
            doc! {
                "find": "oplog.rs", "filter": {}, "sort": sort, "limit": 1, "singleBatch": true,
                "projection": {"ts": 1}, "readConcern": {"level": "local"},
            },
        )
        .await?;
    Ok(reply
        .get_document("cursor")
        .ok()
        .and_then(|c| c.get_array("firstBatch").ok())
        .and_then(|b| b.first())
        .and_then(Bson::as_document)
        .and_then(|d| d.get_timestamp("ts").ok()))
}

/// Databases other than [`INTERNAL_DATABASES`] that hold at least one collection or view,
/// sorted by name.
pub async fn user_databases(cluster: &Cluster) -> Result<Vec<String>, ClusterError> {
    let names = cluster
        .database_names(&crate::config::NamespaceFilter::allow_all())
        .await?;
    let mut with_data = Vec::new();
    for name in names {
        let collections = cluster
            .run(
                &name,
                doc! {"listCollections": 1, "nameOnly": true, "cursor": {"batchSize": 1}},
            )
            .await?;
        let any = collections
            .get_document("cursor")
            .ok()
            .and_then(|c| c.get_array("firstBatch").ok())
            .is_some_and(|b| !b.is_empty());
        if any {
            with_data.push(name);
        }
    }
    Ok(with_data)
}

/// Whether the deployment holds user data: any database other than the internal ones
/// with a collection.
pub async fn holds_user_data(cluster: &Cluster) -> Result<bool, ClusterError> {
    Ok(!user_databases(cluster).await?.is_empty())
}

/// Uncompressed size in bytes of the documents in `databases` (`dbStats.dataSize`).
pub async fn data_size(cluster: &Cluster, databases: &[String]) -> Result<u64, ClusterError> {
    let mut total = 0u64;
    for db in databases {
        let stats = cluster.run(db, doc! {"dbStats": 1}).await?;
        total = total.saturating_add(super::number(stats.get("dataSize")));
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_versions() {
        assert_eq!(
            ServerVersion::parse("7.0.13"),
            Some(ServerVersion::new(7, 0, 13))
        );
        assert_eq!(
            ServerVersion::parse("8.0.0-rc2"),
            Some(ServerVersion::new(8, 0, 0))
        );
        assert_eq!(
            ServerVersion::parse("6.0"),
            Some(ServerVersion::new(6, 0, 0))
        );
        assert_eq!(ServerVersion::parse("seven"), None);
        assert_eq!(ServerVersion::new(6, 0, 17).release(), "6.0");
    }

    #[test]
    fn parses_shards() {
        let s = ShardInfo::from_document(&doc! {"_id": "sh1", "host": "rs1/a:1,b:2", "state": 1})
            .unwrap();
        assert_eq!(s.set_name.as_deref(), Some("rs1"));
        assert_eq!(s.hosts, vec!["a:1", "b:2"]);
        let kind = TopologyKind::Sharded {
            shards: vec![
                s,
                ShardInfo {
                    id: "sh0".into(),
                    set_name: None,
                    hosts: vec![],
                },
            ],
        };
        assert_eq!(kind.confirm_name(), Some("sh0"));
    }
}
