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

use std::collections::{BTreeMap, BTreeSet};

use bson::{doc, Bson, Document};
use futures_util::future::join_all;

use super::{describe, grant_fix, unsupported, Check, Probe, ALL_POWERFUL_ROLES};
use crate::cluster::nodes::{self, Node, NodeConnectError, NodeFacts};
use crate::cluster::topology::{self, AuthInfo, TopologyKind};
use crate::cluster::{Cluster, ClusterError, Side};
use crate::config::{Config, ConnectionConfig, NamespaceFilter};

/// Roles the source user needs on the router, on every shard and on the config servers:
/// reading every collection and the oplog, and the cluster's metadata.
const SOURCE_NODE_ROLES: [&str; 3] = ["backup", "readAnyDatabase", "clusterMonitor"];

/// Built-in roles that may stop and start the balancer (an update of `config.settings`).
const BALANCER_ROLES: [&str; 4] = ["root", "__system", "clusterManager", "clusterAdmin"];

/// Index options that say nothing about what the index holds, left out when the shards'
/// copies of an index are compared.
const IGNORED_INDEX_FIELDS: [&str; 3] = ["v", "ns", "background"];

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
        out.push(orphans(&filter, source).await);
        out.push(shard_indexes(&filter, source).await);
        out.push(zones(&filter, source).await);
        if matches!(destination.topology, Some(TopologyKind::ReplicaSet { .. })) {
            out.push(shard_keys(&filter, source).await);
        }
    }
    if source_sharded || destination_sharded {
        out.push(collations(&filter, source, source_sharded, destination_sharded).await);
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
    let config_servers = nodes::config_servers(router).await;
    let mut targets: Vec<Node> = Vec::new();
    if let Ok(node) = &config_servers {
        targets.push(node.clone());
    }
    targets.extend(shards.iter().map(Node::from_shard));
    let reached: Vec<Reached> = join_all(targets.into_iter().map(|node| async move {
        let facts = nodes::reach(side, conn, &node).await;
        Reached { node, facts }
    }))
    .await;

    let mut out = vec![config_servers_check(side, &config_servers, &reached)];
    if side == Side::Source {
        out.push(node_roles(router, &reached).await);
    }
    out.push(node_versions(probe, &reached));
    out.push(balancer_control(side, router).await);
    out.push(balancer_state(side, router).await);
    out
}

/// Why a node could not be asked, and what to do about it.
fn unreachable(side: Side, node: &Node, e: &NodeConnectError) -> (String, String) {
    let auth_failed = match e {
        NodeConnectError::Cluster(c) => super::is_auth_failure(c),
        NodeConnectError::Uri(_) => false,
    };
    if auth_failed {
        (
            format!("the {side} user cannot log in on {node} ({})", describe(e)),
            format!(
                "create the user on {node} with the same password and roles (connect to that replica set's primary: a shard's users are its own, apart from the cluster's users on the config servers)"
            ),
        )
    } else {
        (
            format!("cannot reach {node}: {}", describe(e)),
            format!(
                "make sure this host can reach {} (the addresses the router lists for it) with the TLS settings of {side}.uri",
                node.hosts.join(", ")
            ),
        )
    }
}

fn config_servers_check(
    side: Side,
    listed: &Result<Node, ClusterError>,
    reached: &[Reached],
) -> Check {
    let name = named("config servers", side);
    let node = match listed {
        Ok(node) => node,
        Err(e) => {
            return Check::fail(
                name,
                format!(
                    "the router does not name its config servers: {}",
                    describe(e)
                ),
                format!("grant the {side} user clusterMonitor (getShardMap) on the router"),
            )
        }
    };
    let Some(set) = &node.set_name else {
        return Check::fail(
            name,
            format!(
                "the config servers {} are not a replica set",
                node.hosts.join(",")
            ),
            "convert the config servers to a replica set (CSRS), as MongoDB 3.4 and later require",
        );
    };
    let answer = reached.iter().find(|r| r.node == *node);
    match answer.map(|r| &r.facts) {
        Some(Ok(facts)) => match facts.set_name() {
            Some(reported) if reported == set => {
                Check::pass(name, format!("{node} is a replica set"))
            }
            reported => Check::fail(
                name,
                format!(
                    "the router lists {node}, but that node reports {}",
                    reported.map_or("no replica set".to_string(), |r| format!("replica set {r}"))
                ),
                "check the router's configDB setting: it must name the config server replica set",
            ),
        },
        // Not confirmed by the node itself; the roles and versions checks name why.
        _ => Check::pass(
            name,
            format!("{node} is a replica set (as the router lists it)"),
        ),
    }
}

/// The roles of [`SOURCE_NODE_ROLES`] missing from `auth` (none when the node runs
/// without access control or the user is all-powerful).
fn missing_roles(auth: &AuthInfo) -> Vec<&'static str> {
    if auth.unauthenticated() || ALL_POWERFUL_ROLES.iter().any(|r| auth.has_admin_role(r)) {
        return Vec::new();
    }
    SOURCE_NODE_ROLES
        .iter()
        .copied()
        .filter(|r| !auth.has_admin_role(r))
        .collect()
}

async fn node_roles(router: &Cluster, reached: &[Reached]) -> Check {
    let side = Side::Source;
    let name = named("node roles", side);
    let mut problems: Vec<String> = Vec::new();
    let mut fixes: Vec<String> = Vec::new();
    let mut user = String::from("the user");
    match topology::auth_info(router).await {
        Ok(auth) => {
            if let Some(u) = auth.users.first() {
                user = u.clone();
            }
            let missing = missing_roles(&auth);
            if !missing.is_empty() {
                problems.push(format!("on the router it lacks {}", missing.join(" and ")));
                fixes.push(format!(
                    "on the router: {}",
                    grant_fix(side, &user, &missing)
                ));
            }
        }
        Err(e) => {
            problems.push(format!(
                "its roles on the router cannot be read: {}",
                describe(&e)
            ));
            fixes.push("make sure the router answers connectionStatus".into());
        }
    }
    for r in reached {
        match &r.facts {
            Ok(facts) => match &facts.auth {
                Ok(auth) => {
                    let missing = missing_roles(auth);
                    if !missing.is_empty() {
                        problems.push(format!("on {} it lacks {}", r.node, missing.join(" and ")));
                        fixes.push(format!(
                            "on {} (connect to its primary): {}",
                            r.node,
                            grant_fix(side, &user, &missing)
                        ));
                    }
                }
                Err(e) => {
                    problems.push(format!(
                        "its roles on {} cannot be read: {}",
                        r.node,
                        describe(e)
                    ));
                    fixes.push(format!("make sure {} answers connectionStatus", r.node));
                }
            },
            Err(e) => {
                let (problem, fix) = unreachable(side, &r.node, e);
                problems.push(problem);
                fixes.push(fix);
            }
        }
    }
    if problems.is_empty() {
        let names: Vec<String> = reached.iter().map(|r| r.node.to_string()).collect();
        Check::pass(
            name,
            format!(
                "{user} holds {} (or root) on the router and on {}",
                SOURCE_NODE_ROLES.join(", "),
                names.join(", ")
            ),
        )
    } else {
        Check::fail(
            name,
            format!(
                "the source user {user} needs {} on the router, every shard and the config servers: {}",
                SOURCE_NODE_ROLES.join(", "),
                problems.join("; ")
            ),
            fixes.join("; "),
        )
    }
}

fn node_versions(probe: &Probe, reached: &[Reached]) -> Check {
    let side = probe.side;
    let name = named("node versions", side);
    let mut problems: Vec<String> = Vec::new();
    let mut fixes: Vec<String> = Vec::new();
    // Nodes the destination user could not ask: Ferry writes to the destination only
    // through its router, so it need not exist on them, and their versions are left to
    // the operator (a warning).
    let mut unchecked: Vec<(String, String)> = Vec::new();
    let router_release = probe.version.map(|v| v.release());
    for r in reached {
        let facts = match &r.facts {
            Ok(f) => f,
            Err(e) => {
                let (problem, fix) = unreachable(side, &r.node, e);
                if side == Side::Destination {
                    unchecked.push((problem, fix));
                } else {
                    problems.push(format!("not checked: {problem}"));
                    fixes.push(fix);
                }
                continue;
            }
        };
        let version = match &facts.version {
            Ok(v) => *v,
            Err(e) => {
                problems.push(format!(
                    "{} does not tell its version: {}",
                    r.node,
                    describe(e)
                ));
                fixes.push(format!("make sure {} answers buildInfo", r.node));
                continue;
            }
        };
        if let Some((why, fix)) = unsupported(version) {
            problems.push(format!("{} runs {why}", r.node));
            fixes.push(format!("{fix} on {}", r.node));
            continue;
        }
        let release = version.release();
        if let Some(router) = &router_release {
            if *router != release {
                problems.push(format!(
                    "{} runs {version} but the router runs {router}",
                    r.node
                ));
                fixes.push(format!(
                    "finish the upgrade so every node of the {side} runs the same release"
                ));
                continue;
            }
        }
        match &facts.fcv {
            Ok(fcv) if *fcv == release => {}
            Ok(fcv) => {
                problems.push(format!(
                    "{} runs {version} at featureCompatibilityVersion {fcv}",
                    r.node
                ));
                fixes.push(format!(
                    "finish the upgrade through the {side} router: db.adminCommand({{setFeatureCompatibilityVersion: \"{release}\", confirm: true}})"
                ));
            }
            Err(e) => {
                problems.push(format!(
                    "the featureCompatibilityVersion of {} cannot be read: {}",
                    r.node,
                    describe(e)
                ));
                fixes.push(format!(
                    "grant the {side} user clusterMonitor (getParameter) on {}",
                    r.node
                ));
            }
        }
    }
    let release = router_release.unwrap_or_else(|| "the same release".into());
    if !problems.is_empty() {
        problems.extend(unchecked.iter().map(|(p, _)| format!("not checked: {p}")));
        fixes.extend(unchecked.into_iter().map(|(_, f)| f));
        fixes.dedup();
        return Check::fail(name, problems.join("; "), fixes.join("; "));
    }
    if !unchecked.is_empty() {
        let (unasked, asked): (Vec<&Reached>, Vec<&Reached>) =
            reached.iter().partition(|r| r.facts.is_err());
        let asked: Vec<String> = asked.iter().map(|r| r.node.to_string()).collect();
        let unasked: Vec<String> = unasked.iter().map(|r| r.node.to_string()).collect();
        let (problems, fixes): (Vec<String>, Vec<String>) = unchecked.into_iter().unzip();
        return Check::warn(
            name,
            format!(
                "not checked on {}: {}; {}",
                unasked.join(", "),
                problems.join("; "),
                if asked.is_empty() {
                    "no node answered".to_string()
                } else {
                    format!("{} run {release} at featureCompatibilityVersion {release}", asked.join(", "))
                }
            ),
            Some(format!(
                "check that those nodes run {release} at featureCompatibilityVersion {release}, or {}",
                fixes.join("; ")
            )),
        );
    }
    let names: Vec<String> = reached.iter().map(|r| r.node.to_string()).collect();
    Check::pass(
        name,
        format!(
            "{} run {release} at featureCompatibilityVersion {release}",
            names.join(", ")
        ),
    )
}

async fn balancer_control(side: Side, router: &Cluster) -> Check {
    let name = named("balancer control", side);
    let auth = match topology::auth_info(router).await {
        Ok(a) => a,
        Err(e) => {
            return Check::fail(
                name,
                format!("cannot read the {side} user's roles: {}", describe(&e)),
                "make sure the router answers connectionStatus",
            )
        }
    };
    if auth.unauthenticated() {
        return Check::pass(name, format!("the {side} runs without access control"));
    }
    let user = auth.users.first().map(String::as_str).unwrap_or("the user");
    if let Some(role) = BALANCER_ROLES.iter().find(|r| auth.has_admin_role(r)) {
        return Check::pass(
            name,
            format!("{user} may stop and start the {side} balancer ({role})"),
        );
    }
    match topology::may_update(router, "config", "settings").await {
        Ok(true) => Check::pass(
            name,
            format!("{user} may stop and start the {side} balancer (update on config.settings)"),
        ),
        Ok(false) => Check::fail(
            name,
            format!(
                "{user} may not stop and start the {side} balancer (balancerStop and balancerStart need update on config.settings); Ferry stops it for the migration and restores it at the end"
            ),
            grant_fix(side, user, &["clusterManager"]),
        ),
        Err(e) => Check::fail(
            name,
            format!("cannot read the {side} user's privileges: {}", describe(&e)),
            "make sure the router answers connectionStatus with showPrivileges",
        ),
    }
}

/// The balancer's settings as the router reports them.
struct BalancerSettings {
    mode: String,
    /// `{start: "HH:MM", stop: "HH:MM"}` from `config.settings`.
    active_window: Option<Document>,
    /// Namespaces with `noBalance: true` in `config.collections`.
    no_balance: Vec<String>,
}

async fn read_balancer(router: &Cluster) -> Result<BalancerSettings, ClusterError> {
    let status = router.run("admin", doc! {"balancerStatus": 1}).await?;
    let mode = status.get_str("mode").unwrap_or("unknown").to_string();
    let settings = router
        .cursor(
            "config",
            doc! {"find": "settings", "filter": {"_id": "balancer"}},
        )
        .await?;
    let active_window = settings
        .first()
        .and_then(|s| s.get_document("activeWindow").ok())
        .cloned();
    let no_balance = router
        .cursor(
            "config",
            doc! {"find": "collections", "filter": {"noBalance": true}},
        )
        .await?
        .iter()
        .filter_map(|c| c.get_str("_id").ok().map(String::from))
        .collect();
    Ok(BalancerSettings {
        mode,
        active_window,
        no_balance,
    })
}

async fn balancer_state(side: Side, router: &Cluster) -> Check {
    let name = named("balancer state", side);
    let state = match read_balancer(router).await {
        Ok(s) => s,
        Err(e) => {
            return Check::fail(
                name,
                format!("cannot read the {side} balancer's settings: {}", describe(&e)),
                format!("grant the {side} user clusterMonitor (balancerStatus, read on the config database)"),
            )
        }
    };
    let mut kept = Vec::new();
    if let Some(w) = &state.active_window {
        kept.push(format!(
            "activeWindow {}-{}",
            w.get_str("start").unwrap_or("?"),
            w.get_str("stop").unwrap_or("?")
        ));
    }
    if !state.no_balance.is_empty() {
        kept.push(format!("noBalance on {}", state.no_balance.join(", ")));
    }
    if kept.is_empty() {
        Check::pass(
            name,
            format!(
                "balancer mode {}, no activeWindow, no collection with noBalance; Ferry stops it during the migration and restores mode {} at the end",
                state.mode, state.mode
            ),
        )
    } else {
        Check::warn(
            name,
            format!(
                "balancer mode {} with {}; Ferry stops the balancer during the migration and restores these settings at the end",
                state.mode,
                kept.join("; ")
            ),
            Some(format!(
                "nothing to do; if the migration ends without restoring them (Ferry says so), set them again on the {side}: sh.setBalancerState / config.settings activeWindow, sh.disableBalancing for the noBalance collections"
            )),
        )
    }
}

/// The sharded collections the router's catalog lists (dropped ones left out), with
/// their `_id` (namespace) and `key`.
async fn sharded_collections(router: &Cluster) -> Result<Vec<Document>, ClusterError> {
    router
        .cursor(
            "config",
            doc! {"find": "collections", "filter": {"dropped": {"$ne": true}}},
        )
        .await
}

fn in_scope(filter: &NamespaceFilter, ns: &str) -> bool {
    ns.split_once('.')
        .is_some_and(|(db, coll)| filter.allows(db, coll))
}

fn number(v: Option<&Bson>) -> u64 {
    crate::cluster::number(v)
}

async fn orphans(filter: &NamespaceFilter, source: &Probe) -> Check {
    let name = named("orphaned documents", Side::Source);
    let router = match source.usable() {
        Ok(c) => c,
        Err(reason) => return Check::not_run(name, &reason),
    };
    let distribution = router
        .cursor(
            "admin",
            doc! {"aggregate": 1, "pipeline": [{"$shardedDataDistribution": {}}], "cursor": {}},
        )
        .await;
    let entries = match distribution {
        Ok(d) => d,
        Err(e) => {
            return Check::warn(
                name,
                format!("cannot read $shardedDataDistribution through the router: {}", describe(&e)),
                Some("grant the source user clusterMonitor (shardedDataDistribution); orphans are never copied either way".into()),
            )
        }
    };
    let mut found = Vec::new();
    for entry in &entries {
        let ns = entry.get_str("ns").unwrap_or_default();
        if !in_scope(filter, ns) {
            continue;
        }
        let per_shard: Vec<String> = entry
            .get_array("shards")
            .map(|a| {
                a.iter()
                    .filter_map(Bson::as_document)
                    .filter_map(|s| {
                        let n = number(s.get("numOrphanedDocs"));
                        (n > 0)
                            .then(|| format!("{} on {}", n, s.get_str("shardName").unwrap_or("?")))
                    })
                    .collect()
            })
            .unwrap_or_default();
        if !per_shard.is_empty() {
            found.push(format!("{ns} ({})", per_shard.join(", ")));
        }
    }
    if found.is_empty() {
        Check::pass(name, "no orphaned documents in the migrated collections")
    } else {
        Check::warn(
            name,
            format!(
                "orphaned documents (left on a shard by a chunk migration, not owned by it): {}; they are never copied",
                found.join("; ")
            ),
            Some("nothing to do: Ferry copies only the documents each shard owns; to remove the orphans, run cleanupOrphaned on the shard's primary".into()),
        )
    }
}

/// An index as compared between shards: its options without [`IGNORED_INDEX_FIELDS`],
/// sorted by name (the key keeps its field order, which matters).
fn index_shape(spec: &Document) -> String {
    let mut fields: Vec<(&String, &Bson)> = spec
        .iter()
        .filter(|(k, _)| !IGNORED_INDEX_FIELDS.contains(&k.as_str()))
        .collect();
    fields.sort_by(|a, b| a.0.cmp(b.0));
    let doc: Document = fields
        .into_iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    doc.to_string()
}

/// The differences between the shards' index sets of one collection, from its
/// `$indexStats` entries (one per index and shard that owns chunks of it).
fn index_differences(ns: &str, stats: &[Document]) -> Vec<String> {
    // shard -> index name -> shape
    let mut by_shard: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for s in stats {
        let (Ok(shard), Ok(index)) = (s.get_str("shard"), s.get_str("name")) else {
            continue;
        };
        let shape = s
            .get_document("spec")
            .map(index_shape)
            .unwrap_or_else(|_| s.get("key").map(|k| k.to_string()).unwrap_or_default());
        by_shard
            .entry(shard.to_string())
            .or_default()
            .insert(index.to_string(), shape);
    }
    let names: BTreeSet<&String> = by_shard.values().flat_map(|m| m.keys()).collect();
    let mut out = Vec::new();
    for index in names {
        let missing: Vec<&str> = by_shard
            .iter()
            .filter(|(_, m)| !m.contains_key(index))
            .map(|(s, _)| s.as_str())
            .collect();
        if !missing.is_empty() {
            out.push(format!(
                "{ns}: index {index} is missing on {}",
                missing.join(", ")
            ));
            continue;
        }
        let shapes: BTreeSet<&String> = by_shard.values().filter_map(|m| m.get(index)).collect();
        if shapes.len() > 1 {
            let per_shard: Vec<String> = by_shard
                .iter()
                .filter_map(|(s, m)| m.get(index).map(|shape| format!("{s}: {shape}")))
                .collect();
            out.push(format!(
                "{ns}: index {index} differs between shards ({})",
                per_shard.join("; ")
            ));
        }
    }
    out
}

async fn shard_indexes(filter: &NamespaceFilter, source: &Probe) -> Check {
    let name = named("shard indexes", Side::Source);
    let router = match source.usable() {
        Ok(c) => c,
        Err(reason) => return Check::not_run(name, &reason),
    };
    let found = async {
        let mut found = Vec::new();
        for c in sharded_collections(router).await? {
            let ns = c.get_str("_id").unwrap_or_default();
            let Some((db, coll)) = ns.split_once('.') else {
                continue;
            };
            if !filter.allows(db, coll) {
                continue;
            }
            let stats = router
                .cursor(
                    db,
                    doc! {"aggregate": coll, "pipeline": [{"$indexStats": {}}], "cursor": {}},
                )
                .await?;
            found.extend(index_differences(ns, &stats));
        }
        Ok::<_, ClusterError>(found)
    };
    match found.await {
        Ok(found) if found.is_empty() => Check::pass(
            name,
            "every sharded collection has the same indexes on each of its shards",
        ),
        Ok(found) => Check::fail(
            name,
            format!(
                "indexes differ between shards of one collection: {}; the destination cannot be built to match",
                found.join("; ")
            ),
            "make the shards agree through the router: create each missing index again with createIndexes (it is built on the shards that lack it) or drop the stray one with dropIndexes, then validate again",
        ),
        Err(e) => Check::fail(
            name,
            format!("cannot compare the shards' indexes: {}", describe(&e)),
            "grant the source user clusterMonitor ($indexStats and read on the config database)",
        ),
    }
}

async fn zones(filter: &NamespaceFilter, source: &Probe) -> Check {
    let name = named("zones", Side::Source);
    let router = match source.usable() {
        Ok(c) => c,
        Err(reason) => return Check::not_run(name, &reason),
    };
    let tags = match router
        .cursor("config", doc! {"find": "tags", "filter": {}})
        .await
    {
        Ok(t) => t,
        Err(e) => {
            return Check::warn(
                name,
                format!(
                    "cannot read the source's zones (config.tags): {}",
                    describe(&e)
                ),
                Some("grant the source user clusterMonitor (read on the config database)".into()),
            )
        }
    };
    let mut found: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for t in &tags {
        let ns = t.get_str("ns").unwrap_or_default();
        if in_scope(filter, ns) {
            found
                .entry(ns.to_string())
                .or_default()
                .insert(t.get_str("tag").unwrap_or("?").to_string());
        }
    }
    if found.is_empty() {
        return Check::pass(name, "no zone ranges on the migrated collections");
    }
    let listed: Vec<String> = found
        .iter()
        .map(|(ns, zones)| {
            format!(
                "{ns} (zones {})",
                zones.iter().cloned().collect::<Vec<_>>().join(", ")
            )
        })
        .collect();
    Check::warn(
        name,
        format!(
            "zone ranges on {}; zones are not copied",
            listed.join("; ")
        ),
        Some("after the migration, define the zones on the destination (sh.addShardToZone, sh.updateZoneKeyRange) if you need them".into()),
    )
}

/// Whether a shard key is `_id` alone (ranged or hashed), which keeps `_id` unique
/// across shards.
fn keyed_on_id(key: &Document) -> bool {
    key.len() == 1 && key.contains_key("_id")
}

async fn shard_keys(filter: &NamespaceFilter, source: &Probe) -> Check {
    let name = named("shard keys", Side::Source);
    let router = match source.usable() {
        Ok(c) => c,
        Err(reason) => return Check::not_run(name, &reason),
    };
    let collections = match sharded_collections(router).await {
        Ok(c) => c,
        Err(e) => {
            return Check::fail(
                name,
                format!(
                    "cannot read the source's sharded collections: {}",
                    describe(&e)
                ),
                "grant the source user clusterMonitor (read on the config database)",
            )
        }
    };
    let found: Vec<String> = collections
        .iter()
        .filter(|c| in_scope(filter, c.get_str("_id").unwrap_or_default()))
        .filter_map(|c| {
            let key = c.get_document("key").ok()?;
            (!keyed_on_id(key)).then(|| format!("{} (key {key})", c.get_str("_id").unwrap_or("?")))
        })
        .collect();
    if found.is_empty() {
        return Check::pass(
            name,
            "every migrated sharded collection is sharded on _id, which is unique across shards",
        );
    }
    Check::warn(
        name,
        format!(
            "sharded on a key other than _id: {}; a sharded cluster keeps _id unique per shard only, but the replica set destination needs it unique across shards: the copy stops at the first duplicate _id and names it",
            found.join("; ")
        ),
        Some("make sure the applications never give two documents of these collections the same _id (an ObjectId default does), or leave them out with [filter] exclude_namespaces".into()),
    )
}

async fn collations(
    filter: &NamespaceFilter,
    source: &Probe,
    source_sharded: bool,
    destination_sharded: bool,
) -> Check {
    let name = named("default collations", Side::Source);
    let cluster = match source.usable() {
        Ok(c) => c,
        Err(reason) => return Check::not_run(name, &reason),
    };
    let found = async {
        let mut found = Vec::new();
        for db in cluster.database_names(filter).await? {
            for spec in cluster.collection_specs(&db).await? {
                let coll = spec.get_str("name").unwrap_or_default();
                if !filter.allows(&db, coll) {
                    continue;
                }
                let locale = spec
                    .get_document("options")
                    .and_then(|o| o.get_document("collation"))
                    .and_then(|c| c.get_str("locale"));
                if let Ok(locale) = locale {
                    if locale != "simple" {
                        found.push(format!("{db}.{coll} ({locale})"));
                    }
                }
            }
        }
        Ok::<_, ClusterError>(found)
    };
    let found =
        match found.await {
            Ok(f) => f,
            Err(e) => return Check::fail(
                name,
                format!("cannot list the source's collections: {}", describe(&e)),
                "grant the source user listCollections on every database (readAnyDatabase has it)",
            ),
        };
    if found.is_empty() {
        return Check::pass(
            name,
            "no migrated collection has a non-simple default collation",
        );
    }
    if destination_sharded {
        let how = if source_sharded {
            "they are sharded there with the simple collation, as on the source, and keep their default collation"
        } else {
            "a collection sharded there must be sharded with the simple collation and needs a shard key index with the simple collation"
        };
        Check::warn(
            name,
            format!(
                "non-simple default collation on {} with a sharded destination: {how}",
                found.join(", ")
            ),
            Some("queries that target one shard by key must use the simple collation; check the applications' queries on these collections".into()),
        )
    } else {
        Check::pass(
            name,
            format!(
                "non-simple default collation on {}; they keep it on the replica set destination",
                found.join(", ")
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_missing_and_differing_indexes() {
        let stat = |shard: &str, name: &str, spec: Document| {
            doc! {"shard": shard, "name": name, "spec": spec}
        };
        let stats = vec![
            stat(
                "sh0",
                "_id_",
                doc! {"v": 2, "key": {"_id": 1}, "name": "_id_"},
            ),
            stat(
                "sh1",
                "_id_",
                doc! {"key": {"_id": 1}, "name": "_id_", "v": 1},
            ),
            stat("sh0", "a_1", doc! {"v": 2, "key": {"a": 1}, "name": "a_1"}),
            stat("sh0", "b_1", doc! {"v": 2, "key": {"b": 1}, "name": "b_1"}),
            stat(
                "sh1",
                "b_1",
                doc! {"v": 2, "key": {"b": 1}, "name": "b_1", "unique": true},
            ),
        ];
        let found = index_differences("db.c", &stats);
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(found[0], "db.c: index a_1 is missing on sh1");
        assert!(found[1].starts_with("db.c: index b_1 differs between shards"));
        assert!(keyed_on_id(&doc! {"_id": "hashed"}));
        assert!(!keyed_on_id(&doc! {"_id": 1, "a": 1}));
    }
}
