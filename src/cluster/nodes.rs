//! The nodes behind a router: each shard's replica set and the config server replica
//! set, found through the router (`listShards`, `getShardMap`) and reached with the
//! credentials, TLS and auth options of the router's configured URI, so a check can ask
//! each node what it allows instead of trusting the router's answer for all of them.
//!
//! On a shard only commands a 7.0 shard accepts from a user without the
//! `directShardOperations` role are sent (`hello`, `connectionStatus`, `buildInfo`,
//! `getParameter`); everything about data goes through the router.

use std::fmt;

use bson::{doc, Document};

use super::topology::{self, AuthInfo, ServerVersion, ShardInfo};
use super::{Cluster, ClusterError, Side};
use crate::config::ConnectionConfig;

/// Query options of a router URI that describe how to reach the router itself and so
/// must not be carried over to a shard or config server connection.
const ROUTER_ONLY_OPTIONS: [&str; 5] = [
    "replicaset",
    "directconnection",
    "loadbalanced",
    "srvservicename",
    "srvmaxhosts",
];

/// What a node behind the router is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeKind {
    /// The config server replica set (the sharding catalog and the router's users).
    ConfigServers,
    /// A shard, by its `_id` in `listShards`.
    Shard(String),
}

/// A replica set behind a router: what it is and where its members are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub kind: NodeKind,
    /// The replica set name from the connection string (`set/host,host`); `None` when the
    /// router lists bare hosts (config servers that are not a replica set).
    pub set_name: Option<String>,
    /// Member addresses (`host:port`).
    pub hosts: Vec<String>,
}

impl Node {
    /// Parses a connection string of the form `set/host:port,host:port` (or bare hosts).
    pub fn parse(kind: NodeKind, connection: &str) -> Node {
        let (set_name, list) = match connection.split_once('/') {
            Some((set, list)) => (Some(set.to_string()), list),
            None => (None, connection),
        };
        Node {
            kind,
            set_name,
            hosts: list
                .split(',')
                .filter(|h| !h.is_empty())
                .map(String::from)
                .collect(),
        }
    }

    pub fn from_shard(shard: &ShardInfo) -> Node {
        Node {
            kind: NodeKind::Shard(shard.id.clone()),
            set_name: shard.set_name.clone(),
            hosts: shard.hosts.clone(),
        }
    }
}

impl fmt::Display for Node {
    /// `shard shard0 (h1:27018)` / `config servers configRepl (h1:27019,h2:27019)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            NodeKind::Shard(id) => write!(f, "shard {id}")?,
            NodeKind::ConfigServers => match &self.set_name {
                Some(set) => write!(f, "config servers {set}")?,
                None => f.write_str("config servers")?,
            },
        }
        write!(f, " ({})", self.hosts.join(","))
    }
}

/// The config servers as the router names them: `getShardMap`'s `map.config`, else
/// `getCmdLineOpts`' `parsed.sharding.configDB` (both `set/host,host`).
pub async fn config_servers(router: &Cluster) -> Result<Node, ClusterError> {
    let from_map = router.run("admin", doc! {"getShardMap": 1}).await;
    let connection = match &from_map {
        Ok(reply) => reply
            .get_document("map")
            .ok()
            .and_then(|m| m.get_str("config").ok())
            .map(String::from),
        Err(_) => None,
    };
    let connection = match connection {
        Some(c) => c,
        None => {
            let opts = router.run("admin", doc! {"getCmdLineOpts": 1}).await;
            match opts.as_ref().ok().and_then(|o| {
                o.get_document("parsed")
                    .and_then(|p| p.get_document("sharding"))
                    .and_then(|s| s.get_str("configDB"))
                    .ok()
            }) {
                Some(c) => c.to_string(),
                None => {
                    // Report the first failure: it names the missing privilege.
                    from_map?;
                    opts?;
                    return Err(ClusterError::Command {
                        side: router.side,
                        action: "getShardMap".into(),
                        source: mongodb::error::Error::custom(
                            "neither getShardMap nor getCmdLineOpts names the config servers",
                        ),
                    });
                }
            }
        }
    };
    Ok(Node::parse(NodeKind::ConfigServers, &connection))
}

/// Why a node's connection string could not be built from the router's.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NodeUriError(String);

/// The router URI rewritten to reach `node`: the same credentials, auth options, TLS and
/// other options, with the node's hosts and `replicaSet` (router-only options such as
/// `directConnection` dropped). A `mongodb+srv://` URI becomes `mongodb://` with
/// `tls=true` unless it says otherwise; options its DNS TXT record carried (such as
/// `authSource`) must then be spelled in the URI.
pub fn node_uri(router_uri: &str, node: &Node) -> Result<String, NodeUriError> {
    let (srv, rest) = if let Some(rest) = router_uri.strip_prefix("mongodb+srv://") {
        (true, rest)
    } else if let Some(rest) = router_uri.strip_prefix("mongodb://") {
        (false, rest)
    } else {
        return Err(NodeUriError(
            "the connection string does not start with mongodb:// or mongodb+srv://".into(),
        ));
    };
    if node.hosts.is_empty() {
        return Err(NodeUriError(format!(
            "the router lists no hosts for {node}"
        )));
    }
    // Credentials end at the last '@' before the options (a password must
    // percent-encode '/', '?' and '@').
    let head_end = rest.find('?').unwrap_or(rest.len());
    let hosts_start = rest[..head_end].rfind('@').map_or(0, |at| at + 1);
    let userinfo = &rest[..hosts_start];
    let after_hosts = rest[hosts_start..]
        .find(['/', '?'])
        .map_or(rest.len(), |i| hosts_start + i);
    let tail = &rest[after_hosts..];
    let (path, query) = match tail.split_once('?') {
        Some((path, query)) => (path, query),
        None => (tail, ""),
    };
    let mut options: Vec<String> = query
        .split('&')
        .filter(|o| !o.is_empty())
        .filter(|o| {
            let key = o.split('=').next().unwrap_or_default().to_ascii_lowercase();
            !ROUTER_ONLY_OPTIONS.contains(&key.as_str())
        })
        .map(String::from)
        .collect();
    let has = |options: &[String], key: &str| {
        options.iter().any(|o| {
            o.split('=')
                .next()
                .is_some_and(|k| k.eq_ignore_ascii_case(key))
        })
    };
    if srv && !has(&options, "tls") && !has(&options, "ssl") {
        options.push("tls=true".into());
    }
    if let Some(set) = &node.set_name {
        options.push(format!("replicaSet={set}"));
    }
    let path = if path.is_empty() { "/" } else { path };
    let mut uri = format!("mongodb://{userinfo}{}{path}", node.hosts.join(","));
    if !options.is_empty() {
        uri.push('?');
        uri.push_str(&options.join("&"));
    }
    Ok(uri)
}

/// A connection to `node` with the router connection's credentials and TLS settings.
pub async fn connect(
    side: Side,
    router: &ConnectionConfig,
    node: &Node,
) -> Result<Cluster, NodeConnectError> {
    let uri = node_uri(&router.uri, node).map_err(NodeConnectError::Uri)?;
    let conn = ConnectionConfig {
        uri,
        ..router.clone()
    };
    Cluster::connect(side, &conn)
        .await
        .map_err(NodeConnectError::Cluster)
}

#[derive(Debug, thiserror::Error)]
pub enum NodeConnectError {
    #[error("cannot build its connection string from the router's")]
    Uri(#[source] NodeUriError),
    #[error(transparent)]
    Cluster(ClusterError),
}

/// What one node says about itself and the connected user. The node answered `hello`
/// (so it is reachable and the user logged in); every other answer is kept on its own so
/// a check can name exactly what could not be read.
#[derive(Debug)]
pub struct NodeFacts {
    pub hello: Document,
    pub auth: Result<AuthInfo, ClusterError>,
    pub version: Result<ServerVersion, ClusterError>,
    pub fcv: Result<String, ClusterError>,
}

impl NodeFacts {
    /// The replica set name the node reports, if it is a replica set member.
    pub fn set_name(&self) -> Option<&str> {
        self.hello.get_str("setName").ok()
    }
}

/// Asks a connected node for [`NodeFacts`]; fails when it does not answer `hello` (the
/// driver logs in before the first command, so a user missing there fails here).
pub async fn facts(node: &Cluster) -> Result<NodeFacts, ClusterError> {
    let hello = node.run("admin", doc! {"hello": 1}).await?;
    let auth = topology::auth_info(node).await;
    let version = topology::server_version(node).await;
    let fcv = topology::feature_compatibility_version(node).await;
    Ok(NodeFacts {
        hello,
        auth,
        version,
        fcv,
    })
}

/// Connects to `node` and asks it for [`NodeFacts`].
pub async fn reach(
    side: Side,
    router: &ConnectionConfig,
    node: &Node,
) -> Result<NodeFacts, NodeConnectError> {
    let cluster = connect(side, router, node).await?;
    facts(&cluster).await.map_err(NodeConnectError::Cluster)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard() -> Node {
        Node::parse(NodeKind::Shard("sh0".into()), "rs0/a:1,b:2")
    }

    #[test]
    fn keeps_credentials_and_options_and_sets_the_replica_set() {
        let uri = node_uri(
            "mongodb://u:p%40ss@router:27017/?authSource=admin&tls=true&directConnection=true",
            &shard(),
        )
        .unwrap();
        assert_eq!(
            uri,
            "mongodb://u:p%40ss@a:1,b:2/?authSource=admin&tls=true&replicaSet=rs0"
        );
    }

    #[test]
    fn srv_becomes_tls_and_path_is_kept() {
        let uri = node_uri("mongodb+srv://u:p@cluster.example.com/admin", &shard()).unwrap();
        assert_eq!(uri, "mongodb://u:p@a:1,b:2/admin?tls=true&replicaSet=rs0");
        let config = Node::parse(NodeKind::ConfigServers, "cfg/c:3");
        assert_eq!(
            node_uri("mongodb://r:1", &config).unwrap(),
            "mongodb://c:3/?replicaSet=cfg"
        );
        assert_eq!(config.to_string(), "config servers cfg (c:3)");
        assert!(node_uri("http://x", &config).is_err());
    }
}
