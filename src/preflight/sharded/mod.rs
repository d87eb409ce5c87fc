//! The checks of a sharded side, one line each with its fix, run after the checks every
//! side gets (see the list in [`super`]). A router answers for the whole cluster, but
//! Ferry's user must also exist with its roles on every shard and on the config
//! servers, whose versions must match: those are checked by connecting to each node
//! ([`crate::cluster::nodes`]), sending it only commands a shard accepts without
//! `directShardOperations`. Everything about data is read through the router.
//!
//! Per sharded side:
//! - `config servers (side)`: the config servers are a replica set.
//! - `node roles (source)`: the source user holds `backup`, `readAnyDatabase` and
//!   `clusterMonitor` on the router, every shard and the config servers.
//! - `node versions (side)`: every node runs the router's release at its FCV.
//! - `balancer control (side)`: the user may stop and start the balancer.
//! - `balancer state (side)`: mode, `activeWindow`, per-collection `noBalance` (they are
//!   restored when the migration ends).
//!
//! For a sharded source: `orphaned documents (source)` (warn: never copied), `shard
//! indexes (source)` (indexes that differ between the shards of one collection fail),
//! `zones (source)` (warn: not copied), and towards a replica set `shard keys (source)`
//! (warn: `_id` must be unique across shards). When either side is sharded: `default
//! collations (source)`.
//!
//! Files by role: [`nodes`] (config servers, roles and versions on every node),
//! [`balancer`] (who may stop it, and its settings), [`collections`] (orphans, indexes
//! per shard, zones, shard keys, collations).

mod balancer;
mod collections;
mod nodes;

use futures_util::future::join_all;

use super::{describe, grant_fix, unsupported, Check, Probe, ALL_POWERFUL_ROLES};
use crate::cluster::nodes::{self as cluster_nodes, Node, NodeConnectError, NodeFacts};
use crate::cluster::topology::TopologyKind;
use crate::cluster::Side;
use crate::config::{Config, ConnectionConfig, NamespaceFilter};

/// The sharded-side checks for both sides, in report order.
pub(super) async fn checks(config: &Config, source: &Probe, destination: &Probe) -> Vec<Check> {
    let mut out = Vec::new();
    let source_sharded = is_sharded(source);
    let destination_sharded = is_sharded(destination);
    if source_sharded {
        out.extend(side_checks(source, &config.source.connection()).await);
    }
    if destination_sharded {
        out.extend(side_checks(destination, &config.destination.connection()).await);
    }
    // An invalid filter is reported by the config checks; judge as if everything moved.
    let filter = config
        .namespace_filter()
        .unwrap_or_else(|_| NamespaceFilter::allow_all());
    if source_sharded {
        out.push(collections::orphans(&filter, source).await);
        out.push(collections::shard_indexes(&filter, source).await);
        out.push(collections::zones(&filter, source).await);
        if matches!(destination.topology, Some(TopologyKind::ReplicaSet { .. })) {
            out.push(collections::shard_keys(&filter, source).await);
        }
    }
    if source_sharded || destination_sharded {
        out.push(
            collections::collations(&filter, source, source_sharded, destination_sharded).await,
        );
    }
    out
}

fn is_sharded(probe: &Probe) -> bool {
    probe
        .topology
        .as_ref()
        .is_some_and(TopologyKind::is_sharded)
}

fn named(kind: &str, side: Side) -> String {
    format!("{kind} ({side})")
}

/// A node behind the router and what asking it gave.
struct Reached {
    node: Node,
    facts: Result<NodeFacts, NodeConnectError>,
}

async fn side_checks(probe: &Probe, conn: &ConnectionConfig) -> Vec<Check> {
    let side = probe.side;
    let router = match probe.usable() {
        Ok(c) => c,
        Err(reason) => {
            let mut names = vec![named("config servers", side)];
            if side == Side::Source {
                names.push(named("node roles", side));
            }
            names.extend(
                ["node versions", "balancer control", "balancer state"].map(|k| named(k, side)),
            );
            return names
                .into_iter()
                .map(|n| Check::not_run(n, &reason))
                .collect();
        }
    };
    let shards = match &probe.topology {
        Some(TopologyKind::Sharded { shards }) => shards.clone(),
        _ => Vec::new(),
    };
    let config_servers = cluster_nodes::config_servers(router).await;
    let mut targets: Vec<Node> = Vec::new();
    if let Ok(node) = &config_servers {
        targets.push(node.clone());
    }
    targets.extend(shards.iter().map(Node::from_shard));
    let reached: Vec<Reached> = join_all(targets.into_iter().map(|node| async move {
        let facts = cluster_nodes::reach(side, conn, &node).await;
        Reached { node, facts }
    }))
    .await;

    let mut out = vec![nodes::config_servers_check(side, &config_servers, &reached)];
    if side == Side::Source {
        out.push(nodes::node_roles(router, &reached).await);
    }
    out.push(nodes::node_versions(probe, &reached));
    out.push(balancer::balancer_control(side, router).await);
    out.push(balancer::balancer_state(side, router).await);
    out
}
