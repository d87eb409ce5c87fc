//! The balancer checks: whether the user may stop and start it, and the settings Ferry
//! will restore after stopping it (mode, `activeWindow`, per-collection `noBalance`).

use bson::{doc, Document};

use crate::cluster::topology;
use crate::cluster::{Cluster, ClusterError, Side};

use super::{describe, grant_fix, named, Check};

/// Built-in roles that may stop and start the balancer (an update of `config.settings`).
const BALANCER_ROLES: [&str; 4] = ["root", "__system", "clusterManager", "clusterAdmin"];

pub(super) async fn balancer_control(side: Side, router: &Cluster) -> Check {
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

pub(super) async fn balancer_state(side: Side, router: &Cluster) -> Check {
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
