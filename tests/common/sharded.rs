//! Sandbox deployments of either shape for the topology tests: a replica set or a
//! sharded cluster (router, config servers, shards), and a source/destination pair of
//! any of the four combinations.

use std::time::Duration;

use bson::{doc, Document};
use ferry_sandbox::{Sandbox, SandboxOptions, ShardedCluster, ShardedOptions};
use mongodb::Client;

/// One side of a migration test.
pub enum Deployment {
    ReplicaSet(Sandbox),
    Sharded(Box<ShardedCluster>),
}

impl Deployment {
    /// `shards == 0`: a replica set named `set_name`; otherwise a sharded cluster with a
    /// balancer that stays idle unless a test starts it (`balancer_interval` long).
    pub fn start(set_name: &str, shards: usize) -> Deployment {
        if shards == 0 {
            return Deployment::ReplicaSet(
                Sandbox::start(SandboxOptions {
                    set_name: set_name.into(),
                    ..Default::default()
                })
                .expect("replica set sandbox starts"),
            );
        }
        Deployment::start_sharded(ShardedOptions {
            shards,
            balancer_interval: Duration::from_secs(3600),
            ..Default::default()
        })
    }

    pub fn start_sharded(options: ShardedOptions) -> Deployment {
        Deployment::Sharded(Box::new(
            ShardedCluster::start(options).expect("sharded sandbox starts"),
        ))
    }

    /// The URI a client (and Ferry) connects to: the router of a sharded cluster.
    pub fn uri(&self) -> String {
        match self {
            Deployment::ReplicaSet(s) => s.uri(),
            Deployment::Sharded(c) => c.router_uri(),
        }
    }

    pub fn sharded(&self) -> Option<&ShardedCluster> {
        match self {
            Deployment::Sharded(c) => Some(c),
            Deployment::ReplicaSet(_) => None,
        }
    }

    pub fn is_sharded(&self) -> bool {
        self.sharded().is_some()
    }
}

/// A source and a destination of any shape, with a client on each.
pub struct Topologies {
    pub source: Deployment,
    pub destination: Deployment,
    pub src: Client,
    pub dst: Client,
}

impl Topologies {
    /// `0` shards means a replica set on that side.
    pub async fn start(source_shards: usize, destination_shards: usize) -> Topologies {
        Topologies::from(
            Deployment::start("src", source_shards),
            Deployment::start("dst", destination_shards),
        )
        .await
    }

    pub async fn from(source: Deployment, destination: Deployment) -> Topologies {
        super::init_logging();
        let src = Client::with_uri_str(source.uri())
            .await
            .expect("source client");
        let dst = Client::with_uri_str(destination.uri())
            .await
            .expect("destination client");
        Topologies {
            source,
            destination,
            src,
            dst,
        }
    }

    pub fn config(&self, extra: &str) -> ferry::config::Config {
        super::config(&self.source.uri(), &self.destination.uri(), extra)
    }
}

/// Shards `ns` ("db.coll") on `key` through the router (enableSharding first).
pub async fn shard_collection(router: &Client, ns: &str, key: Document) {
    let db = ns.split('.').next().expect("namespace has a database");
    router
        .database("admin")
        .run_command(doc! {"enableSharding": db})
        .await
        .expect("enableSharding");
    router
        .database("admin")
        .run_command(doc! {"shardCollection": ns, "key": key})
        .await
        .expect("shardCollection");
}

/// Splits `ns` at `middle` and moves the chunk holding `middle` to shard `to`.
pub async fn split_and_move(router: &Client, ns: &str, middle: Document, to: &str) {
    router
        .database("admin")
        .run_command(doc! {"split": ns, "middle": middle.clone()})
        .await
        .expect("split");
    router
        .database("admin")
        .run_command(doc! {"moveChunk": ns, "find": middle, "to": to, "_waitForDelete": false})
        .await
        .expect("moveChunk");
}

/// The shard key of `ns` on a sharded side (`config.collections.key`), if it is sharded.
pub async fn shard_key(router: &Client, ns: &str) -> Option<Document> {
    router
        .database("config")
        .collection::<Document>("collections")
        .find_one(doc! {"_id": ns})
        .await
        .expect("read config.collections")
        .and_then(|d| d.get_document("key").ok().cloned())
}
