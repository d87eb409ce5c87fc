//! The sandbox sharded cluster: a config server replica set, N shard replica sets and a
//! router (mongos), all in one process, all [`crate::server::Server`]s with their own
//! listener, sharing one [`crate::storage::ClusterClock`].
//!
//! Map of the module:
//! - [`cluster`]: [`ShardedCluster`], the handle (start from [`ShardedOptions`], URIs of
//!   the router, each shard and the config server, each node's [`Sandbox`] for faults).
//! - [`catalog`]: the sharding catalog kept in the config server's `config.*` collections
//!   (the source of truth): shards, databases with their primary shard, sharded
//!   collections (key, uuid, unique) and chunks (`[min, max)` ranges with their shard,
//!   keyed by collection `uuid`).
//! - [`shard_key`]: shard key patterns, a document's key, hashed key values, the chunk a
//!   key falls in.
//! - [`router`]: the router's dispatcher: auth against the config server's users, the
//!   router's own commands (hello, cluster-wide admin), and the choice of a route for
//!   every other command.
//! - [`sharding_admin`]: `enableSharding`, `shardCollection`, `listShards`, `getShardMap`.
//! - [`forward`]: sending a command to one shard in-process (the shard's own dispatcher,
//!   so its faults, auth-free internal connection, retry through a stepdown) and the
//!   router's cursors proxied onto shard cursors.
//! - [`routing`]: targeting writes by shard key (insert, update, delete, findAndModify);
//!   [`shard_key_update`]: a document whose new key belongs to another shard moves as a
//!   delete + insert at one cluster time; [`ddl`]: collection and index commands.
//! - [`merge`]: reads of sharded collections: each targeted shard's matching owned
//!   documents (the ownership filter keeps orphans out) gathered on the router, where the ordinary `find`,
//!   `aggregate`, `count` and `distinct` handlers run over them; [`read_target`]: which
//!   shards a read asks (by shard key equality, `$in` or range) and which of a shard's
//!   documents it looks at (`_id` lookups and ranges, the filter applied on the shard).
//!
//! - [`pipeline_write`]: `aggregate` with `$out`/`$merge` through the router: the
//!   pipeline runs on the router, each output document is written by its owning shard.
//! - [`migration`]: chunk migrations (copy logged `fromMigrate`, catalog update under
//!   the donor's lock), orphans and the donor's range deletions, `cleanupOrphaned`.
//! - [`cluster_admin`]: names, privileges and dispatch of the router commands below.
//! - [`chunk_admin`]: the router's `moveChunk`, `moveRange`, `split`, `mergeChunks`.
//! - [`balancer`]: the router's balancer task and `balancerStart`/`Stop`/`Status`,
//!   `setAllowMigrations`.
//! - [`membership`]: `addShard` (of a shard started in-process), `removeShard`
//!   (draining) and `movePrimary`.
//! - [`distribution`]: `$shardedDataDistribution` (owned and orphaned documents).
//! - [`index_stats`]: `$indexStats` per shard holding the collection.
//! - [`stream_command`]: `aggregate` with `$changeStream` and `getMore` on the router.
//! - [`reshard`]: `refineCollectionShardKey` and `reshardCollection` (catalog, data and
//!   their change events).
//! - [`stream`]: the router's change stream, merging the shards' streams in cluster-time
//!   order, held back by a shard that has not reported past an event.
//!
//! Flow: client -> router listener -> [`router::run_command`] -> (local handler | one
//! shard via [`forward`] | every owning shard via [`routing`]/[`merge`]) -> reply.
//!
//! Extension points (for the balancer, migrations, orphans and change streams):
//! - [`Router::shards`] is a lock-protected list: `addShard` pushes a started shard,
//!   `removeShard` marks it draining in `config.shards` and drops it when empty.
//! - Chunk ownership is only ever read through [`catalog::chunks`] and
//!   [`catalog::owning_shard`]: a migration copies the documents, then rewrites the
//!   chunk's `shard` in `config.chunks` ([`catalog::set_chunk_shard`]); from then on
//!   reads through the router ignore the donor's copies (they are orphans), and direct
//!   reads of the donor still return them until its cleanup deletes them.
//! - A shard receiving its first chunk of a collection needs the collection under the
//!   same uuid, options and indexes: [`sharding_admin::clone_collection_shape`].
//!   [`shard_key_update::move_document`] shows how to write on two shards at one cluster time
//!   (`Storage::pinned_time`, both storages locked in shard-name order).
//! - Router commands for chunks, the balancer and membership are listed (with their
//!   privileges) and dispatched in [`cluster_admin`]; routed reads and writes hold the
//!   migration gate ([`balancer::Balancer::gate`]) shared, migrations exclusively.
//! - [`RouterSettings`] carries the cluster-wide knobs (`balancer_interval`,
//!   `orphan_cleanup_delay`, shard-key move order).
//! - Change streams through the router: [`router::run_command`] sends `aggregate` with
//!   `$changeStream` and getMores on its cursors to [`stream_command`] (a
//!   [`stream::RouterStream`] over every shard); `appendOplogNote` is sent to every shard.
//! - Transactions through the router: [`forward::Participants`] starts the transaction on
//!   each shard a statement reaches and ends it on each; commits are per shard (no
//!   two-phase commit).

pub mod balancer;
pub mod catalog;
pub mod chunk_admin;
pub mod cluster;
pub mod cluster_admin;
pub mod ddl;
pub mod distribution;
pub mod forward;
pub mod index_stats;
pub mod membership;
pub mod merge;
pub mod migration;
pub mod pipeline_write;
pub mod read_target;
pub mod reshard;
pub mod router;
pub mod routing;
pub mod shard_key;
pub mod shard_key_update;
pub mod sharding_admin;
pub mod stream;
pub mod stream_command;

use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;

use crate::server::Server;

pub use cluster::{ShardedCluster, ShardedOptions};

/// What a [`Server`] is in its deployment.
#[derive(Clone, Debug, Default)]
pub enum NodeRole {
    /// A replica set primary on its own (the sandbox's original mode).
    #[default]
    ReplicaSetMember,
    /// The config server's primary: answers `hello` with `configsvr: 2` and holds the
    /// catalog in `config.*`.
    ConfigServer,
    /// A shard's primary.
    ShardServer,
    /// The router (mongos) of a cluster.
    Router(Arc<Router>),
}

impl NodeRole {
    pub fn router(&self) -> Option<&Arc<Router>> {
        match self {
            NodeRole::Router(r) => Some(r),
            _ => None,
        }
    }
    pub fn is_router(&self) -> bool {
        matches!(self, NodeRole::Router(_))
    }
}

/// One shard of the cluster: its name (`shard0`...) and its primary.
#[derive(Clone)]
pub struct Shard {
    pub name: String,
    pub server: Arc<Server>,
}

/// Which write of a shard-key update comes first when the document changes shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ShardKeyMoveOrder {
    /// Delete on the old shard, then insert on the new one (the usual order).
    #[default]
    DeleteFirst,
    /// Insert on the new shard first: the real server's order is not guaranteed, so tests
    /// of consumers cover both.
    InsertFirst,
}

/// Cluster-wide knobs of the router.
#[derive(Clone, Debug)]
pub struct RouterSettings {
    /// How often the balancer runs a round (`--balancer-interval-ms`).
    pub balancer_interval: Duration,
    /// How long a donor keeps orphans after a migration (`--orphan-cleanup-delay-ms`).
    pub orphan_cleanup_delay: Duration,
    pub shard_key_move_order: ShardKeyMoveOrder,
}

impl Default for RouterSettings {
    fn default() -> Self {
        RouterSettings {
            balancer_interval: Duration::from_millis(10_000),
            orphan_cleanup_delay: Duration::from_millis(900_000),
            shard_key_move_order: ShardKeyMoveOrder::DeleteFirst,
        }
    }
}

/// The router's view of its cluster: the config server and the shards.
pub struct Router {
    pub config: Arc<Server>,
    pub shards: RwLock<Vec<Shard>>,
    pub settings: RwLock<RouterSettings>,
    /// Router cursor id -> the shard cursor it proxies (reads of unsharded collections).
    pub proxied_cursors: forward::ProxiedCursors,
    /// Shards taking part in each open transaction.
    pub transactions: forward::Participants,
    /// The balancer's state (rounds, the one-migration-at-a-time lock).
    pub balancer: balancer::Balancer,
    /// Shards started in this process but not yet added (`addShard` adds them).
    pub spares: RwLock<Vec<Shard>>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self.shards.read().iter().map(|s| s.name.clone()).collect();
        f.debug_struct("Router")
            .field("config", &self.config.address)
            .field("shards", &names)
            .finish()
    }
}

impl Router {
    pub fn new(config: Arc<Server>, shards: Vec<Shard>, settings: RouterSettings) -> Router {
        Router {
            config,
            shards: RwLock::new(shards),
            settings: RwLock::new(settings),
            proxied_cursors: Default::default(),
            transactions: Default::default(),
            balancer: Default::default(),
            spares: Default::default(),
        }
    }
    /// The shard named `name`.
    pub fn shard(&self, name: &str) -> Option<Shard> {
        self.shards.read().iter().find(|s| s.name == name).cloned()
    }
    pub fn shard_list(&self) -> Vec<Shard> {
        self.shards.read().clone()
    }
}

/// The privilege `name` needs in a module's table of router commands, if it is one of
/// them.
pub(crate) fn command_action(
    table: &[(&str, crate::auth::roles::Action)],
    name: &str,
) -> Option<crate::auth::roles::Action> {
    table
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, action)| *action)
}
