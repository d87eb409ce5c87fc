//! The checks that ask every node behind the router: the config servers are a replica
//! set, the source user holds its roles on each node, each node runs the router's
//! release at its FCV.

use crate::cluster::nodes::{Node, NodeConnectError};
use crate::cluster::topology::{self, AuthInfo};
use crate::cluster::{Cluster, ClusterError, Side};

use super::{describe, grant_fix, named, unsupported, Check, Probe, Reached, ALL_POWERFUL_ROLES};

/// Roles the source user needs on the router, on every shard and on the config servers:
/// reading every collection and the oplog, and the cluster's metadata.
const SOURCE_NODE_ROLES: [&str; 3] = ["backup", "readAnyDatabase", "clusterMonitor"];

/// Why a node could not be asked, and what to do about it.
fn unreachable(side: Side, node: &Node, e: &NodeConnectError) -> (String, String) {
    let auth_failed = match e {
        NodeConnectError::Cluster(c) => c.is_auth_failure(),
        NodeConnectError::Uri(_) => false,
    };
    if auth_failed {
        (
            format!("the {side} user cannot log in on {node} (authentication failed)"),
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

pub(super) fn config_servers_check(
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

pub(super) async fn node_roles(router: &Cluster, reached: &[Reached]) -> Check {
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

pub(super) fn node_versions(probe: &Probe, reached: &[Reached]) -> Check {
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
