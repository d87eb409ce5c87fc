//! The balancer of a sharded deployment, as Ferry controls it: what it is set to (mode,
//! `activeWindow` in `config.settings`, per-collection `noBalance` in
//! `config.collections`), stopping it (waiting for a round in progress to end), and
//! putting back exactly what was read before.
//!
//! Only callers that know the side is sharded call these (the engine's topology says so);
//! a replica set has no balancer.

use std::time::{Duration, Instant};

use bson::{doc, Bson, Document};
use serde::{Deserialize, Serialize};

use super::{Cluster, ClusterError};

/// `_id` of the balancer's document in `config.settings`.
const SETTINGS_ID: &str = "balancer";
/// How long Ferry waits for a balancer round in progress to end after `balancerStop`.
const ROUND_END_WAIT: Duration = Duration::from_secs(120);
/// How often `balancerStatus` is asked while waiting for a round to end.
const ROUND_POLL: Duration = Duration::from_millis(200);

/// What a sharded deployment's balancer is set to, as recorded before Ferry stops it and
/// restored when the migration ends.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct BalancerSettings {
    /// `balancerStatus.mode`: `"full"` runs, `"off"` is stopped.
    pub mode: String,
    /// `config.settings {_id: "balancer"}.activeWindow` (`{start, stop}`), if any.
    #[serde(default)]
    pub active_window: Option<Document>,
    /// Namespaces with `noBalance: true` in `config.collections`.
    #[serde(default)]
    pub no_balance: Vec<String>,
}

impl BalancerSettings {
    /// Whether the balancer was set to run.
    pub fn was_running(&self) -> bool {
        self.mode != "off"
    }

    /// The mongosh commands that put this state back by hand, for the operator when
    /// Ferry could not.
    pub fn restore_commands(&self) -> String {
        let mut commands = vec![if self.was_running() {
            "sh.startBalancer()".to_string()
        } else {
            "sh.stopBalancer()".to_string()
        }];
        match &self.active_window {
            Some(window) => commands.push(format!(
                "db.getSiblingDB(\"config\").settings.updateOne({{_id: \"balancer\"}}, {{$set: {{activeWindow: {}}}}}, {{upsert: true}})",
                Bson::Document(window.clone()).into_relaxed_extjson()
            )),
            None => commands.push(
                "db.getSiblingDB(\"config\").settings.updateOne({_id: \"balancer\"}, {$unset: {activeWindow: 1}})".into(),
            ),
        }
        for ns in &self.no_balance {
            commands.push(format!("sh.disableBalancing(\"{ns}\")"));
        }
        commands.join("; ")
    }
}

/// Reads the balancer's mode, its active window and the collections it must leave alone.
pub async fn read(cluster: &Cluster) -> Result<BalancerSettings, ClusterError> {
    let mode = mode(cluster).await?;
    Ok(BalancerSettings {
        mode,
        active_window: active_window(cluster).await?,
        no_balance: no_balance(cluster).await?,
    })
}

/// `balancerStatus.mode` (`"full"` or `"off"`).
pub async fn mode(cluster: &Cluster) -> Result<String, ClusterError> {
    let reply = cluster.run("admin", doc! {"balancerStatus": 1}).await?;
    reply
        .get_str("mode")
        .map(str::to_string)
        .map_err(|_| unexpected(cluster, "balancerStatus", "the reply carries no mode"))
}

async fn active_window(cluster: &Cluster) -> Result<Option<Document>, ClusterError> {
    let settings = cluster
        .cursor(
            "config",
            doc! {"find": "settings", "filter": {"_id": SETTINGS_ID}, "limit": 1},
        )
        .await?;
    Ok(settings
        .first()
        .and_then(|s| s.get_document("activeWindow").ok())
        .cloned())
}

async fn no_balance(cluster: &Cluster) -> Result<Vec<String>, ClusterError> {
    let entries = cluster
        .cursor(
            "config",
            doc! {"find": "collections", "filter": {"noBalance": true}, "projection": {"_id": 1}},
        )
        .await?;
    let mut names: Vec<String> = entries
        .iter()
        .filter_map(|e| e.get_str("_id").ok().map(str::to_string))
        .collect();
    names.sort();
    Ok(names)
}

/// Stops the balancer and waits for a round in progress to end, so no chunk moves once
/// this returns.
pub async fn stop(cluster: &Cluster) -> Result<(), ClusterError> {
    cluster.run("admin", doc! {"balancerStop": 1}).await?;
    let deadline = Instant::now() + ROUND_END_WAIT;
    loop {
        let status = cluster.run("admin", doc! {"balancerStatus": 1}).await?;
        if !status.get_bool("inBalancerRound").unwrap_or(false) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(unexpected(
                cluster,
                "balancerStop",
                &format!(
                    "a balancer round was still in progress {} s after the balancer was stopped; wait for it to end (balancerStatus inBalancerRound: false) and start the migration again",
                    ROUND_END_WAIT.as_secs()
                ),
            ));
        }
        tokio::time::sleep(ROUND_POLL).await;
    }
}

/// Puts the balancer back as `prior` recorded it: its active window, its `noBalance`
/// collections (collections dropped since are left alone), then its mode.
pub async fn restore(cluster: &Cluster, prior: &BalancerSettings) -> Result<(), ClusterError> {
    if active_window(cluster).await? != prior.active_window {
        let update = match &prior.active_window {
            Some(window) => doc! {"$set": {"activeWindow": window.clone()}},
            None => doc! {"$unset": {"activeWindow": 1}},
        };
        cluster
            .run(
                "config",
                doc! {"update": "settings", "updates": [{"q": {"_id": SETTINGS_ID}, "u": update, "upsert": true}]},
            )
            .await?;
    }
    let now = no_balance(cluster).await?;
    for ns in now.iter().filter(|ns| !prior.no_balance.contains(ns)) {
        set_no_balance(cluster, ns, false).await?;
    }
    for ns in prior.no_balance.iter().filter(|ns| !now.contains(ns)) {
        set_no_balance(cluster, ns, true).await?;
    }
    if prior.was_running() {
        cluster.run("admin", doc! {"balancerStart": 1}).await?;
    } else if mode(cluster).await? != "off" {
        stop(cluster).await?;
    }
    Ok(())
}

/// Sets `noBalance` of one sharded collection (what `sh.disableBalancing` and
/// `sh.enableBalancing` do); a collection no longer sharded is left alone.
async fn set_no_balance(cluster: &Cluster, ns: &str, value: bool) -> Result<(), ClusterError> {
    cluster
        .run(
            "config",
            doc! {"update": "collections", "updates": [{"q": {"_id": ns}, "u": {"$set": {"noBalance": value}}}]},
        )
        .await?;
    Ok(())
}

fn unexpected(cluster: &Cluster, action: &str, what: &str) -> ClusterError {
    ClusterError::Command {
        side: cluster.side,
        action: action.into(),
        source: mongodb::error::Error::custom(what.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restore_commands_put_back_mode_window_and_no_balance() {
        let prior = BalancerSettings {
            mode: "full".into(),
            active_window: Some(doc! {"start": "23:00", "stop": "06:00"}),
            no_balance: vec!["shop.orders".into()],
        };
        let text = prior.restore_commands();
        assert!(text.starts_with("sh.startBalancer()"), "{text}");
        assert!(text.contains("\"start\":\"23:00\""), "{text}");
        assert!(
            text.contains("sh.disableBalancing(\"shop.orders\")"),
            "{text}"
        );
        let off = BalancerSettings {
            mode: "off".into(),
            ..Default::default()
        };
        assert!(off.restore_commands().starts_with("sh.stopBalancer()"));
    }
}
