//! [`ShardedCluster`]: starts a config server, N shards and a router in this process and
//! hands out their URIs and [`Sandbox`] handles (faults are injected per node).

use std::sync::Arc;
use std::time::Duration;

use crate::server::{Sandbox, SandboxOptions, StartError, TlsFiles, PERIODIC_NOOP_INTERVAL};
use crate::storage::ClusterClock;

use super::{catalog, NodeRole, Router, RouterSettings, Shard, ShardKeyMoveOrder};

/// Name of the config server replica set.
pub const CONFIG_SET_NAME: &str = "configRepl";

/// How to start a sandbox sharded cluster.
#[derive(Clone, Debug)]
pub struct ShardedOptions {
    /// Number of shards (at least 1).
    pub shards: usize,
    pub host: String,
    /// The router's port (0 picks a free one); every other node takes a free port.
    pub router_port: u16,
    /// Reported server version of every node, e.g. "7.0.13".
    pub version: String,
    /// Users created at start on the config server (where the router's users live) and
    /// on every shard: (name, password, roles) in `admin`.
    pub users: Vec<(String, String, Vec<String>)>,
    pub tls: Option<TlsFiles>,
    pub oplog_max_events: Option<usize>,
    pub periodic_noop_interval: Duration,
    pub balancer_interval: Duration,
    pub orphan_cleanup_delay: Duration,
    pub shard_key_move_order: ShardKeyMoveOrder,
}

impl Default for ShardedOptions {
    fn default() -> Self {
        let settings = RouterSettings::default();
        ShardedOptions {
            shards: 2,
            host: "127.0.0.1".into(),
            router_port: 0,
            version: "7.0.13".into(),
            users: Vec::new(),
            tls: None,
            oplog_max_events: None,
            periodic_noop_interval: PERIODIC_NOOP_INTERVAL,
            balancer_interval: settings.balancer_interval,
            orphan_cleanup_delay: settings.orphan_cleanup_delay,
            shard_key_move_order: settings.shard_key_move_order,
        }
    }
}

/// A running sharded cluster. Dropping it stops every node.
pub struct ShardedCluster {
    router: Sandbox,
    config: Sandbox,
    /// (shard name, its primary).
    shards: Vec<(String, Sandbox)>,
    tls: bool,
    /// How a new shard's primary starts ([`ShardedCluster::start_shard`]).
    shard_template: SandboxOptions,
}

impl ShardedCluster {
    pub fn start(options: ShardedOptions) -> Result<ShardedCluster, StartError> {
        if options.shards == 0 {
            return Err(StartError::User(
                "--shards".into(),
                "a sharded cluster needs at least one shard (--shards 1 or more)".into(),
            ));
        }
        let clock = ClusterClock::default();
        let node = |set_name: &str, role: NodeRole| SandboxOptions {
            port: 0,
            host: options.host.clone(),
            set_name: set_name.to_string(),
            version: options.version.clone(),
            users: options.users.clone(),
            tls: options.tls.clone(),
            oplog_max_events: options.oplog_max_events,
            periodic_noop_interval: options.periodic_noop_interval,
            role,
            clock: clock.clone(),
        };
        let config = Sandbox::start(node(CONFIG_SET_NAME, NodeRole::ConfigServer))?;
        let mut shards = Vec::new();
        for i in 0..options.shards {
            let name = format!("shard{i}");
            let sandbox = Sandbox::start(node(&name, NodeRole::ShardServer))?;
            shards.push((name, sandbox));
        }
        let entries: Vec<(String, String)> = shards
            .iter()
            .map(|(name, sb)| (name.clone(), format!("{name}/{}", sb.address())))
            .collect();
        catalog::initialize(&mut config.server().storage.lock(), &entries)
            .map_err(|e| StartError::User("config".into(), e.errmsg))?;
        let router = Arc::new(Router::new(
            config.server().clone(),
            shards
                .iter()
                .map(|(name, sb)| Shard {
                    name: name.clone(),
                    server: sb.server().clone(),
                })
                .collect(),
            RouterSettings {
                balancer_interval: options.balancer_interval,
                orphan_cleanup_delay: options.orphan_cleanup_delay,
                shard_key_move_order: options.shard_key_move_order,
            },
        ));
        for (_, shard) in &shards {
            let _ = shard.server().cluster.set(Arc::downgrade(&router));
        }
        let router = Sandbox::start(SandboxOptions {
            port: options.router_port,
            // The router has no users of its own: it authenticates against the config
            // server's.
            users: Vec::new(),
            ..node("", NodeRole::Router(router))
        })?;
        Ok(ShardedCluster {
            router,
            config,
            shards,
            tls: options.tls.is_some(),
            shard_template: node("", NodeRole::ShardServer),
        })
    }

    fn tls_suffix(&self, first: bool) -> &'static str {
        match (self.tls, first) {
            (false, _) => "",
            (true, true) => "/?tls=true",
            (true, false) => "&tls=true",
        }
    }

    /// `mongodb://host:port` of the router (no `replicaSet`: drivers see a mongos).
    pub fn router_uri(&self) -> String {
        format!(
            "mongodb://{}{}",
            self.router.address(),
            self.tls_suffix(true)
        )
    }
    /// The router URI with a user's credentials.
    pub fn router_uri_with_user(&self, user: &str, password: &str) -> String {
        format!(
            "mongodb://{user}:{password}@{}/?authSource=admin{}",
            self.router.address(),
            self.tls_suffix(false)
        )
    }
    /// (shard name, URI of its replica set) per shard.
    pub fn shard_uris(&self) -> Vec<(String, String)> {
        self.shards
            .iter()
            .map(|(name, sb)| (name.clone(), sb.uri()))
            .collect()
    }
    pub fn config_uri(&self) -> String {
        self.config.uri()
    }
    pub fn router(&self) -> &Sandbox {
        &self.router
    }
    pub fn config(&self) -> &Sandbox {
        &self.config
    }
    /// The primary of shard `name` (`shard0`...).
    pub fn shard(&self, name: &str) -> Option<&Sandbox> {
        self.shards
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, sb)| sb)
    }
    pub fn shards(&self) -> impl Iterator<Item = (&str, &Sandbox)> {
        self.shards.iter().map(|(n, sb)| (n.as_str(), sb))
    }
    /// Starts a new shard replica set in this process, not yet part of the cluster, and
    /// returns its name (the next `shardN`) and `setName/host:port`: `addShard` with that
    /// string through the router adds it, as an operator adds a new replica set to a real
    /// cluster.
    pub fn start_shard(&mut self) -> Result<(String, String), StartError> {
        let name = format!("shard{}", self.shards.len());
        let sandbox = Sandbox::start(SandboxOptions {
            set_name: name.clone(),
            ..self.shard_template.clone()
        })?;
        let host = format!("{name}/{}", sandbox.address());
        if let Some(router) = self.topology() {
            let _ = sandbox.server().cluster.set(Arc::downgrade(router));
            router.spares.write().push(Shard {
                name: name.clone(),
                server: sandbox.server().clone(),
            });
        }
        self.shards.push((name.clone(), sandbox));
        Ok((name, host))
    }
    /// The router's view of the cluster (catalog access, settings).
    pub fn topology(&self) -> Option<&Arc<Router>> {
        self.router.server().options.role.router()
    }
    /// Blocks until the nodes stop (they never do on their own; used by the CLI).
    pub fn wait(self) {
        let ShardedCluster { router, .. } = self;
        router.wait();
    }
}
