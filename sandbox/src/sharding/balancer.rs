//! The balancer: a task of the router that, every `--balancer-interval-ms`, moves one
//! chunk per collection from the shard with the most chunks to the one with the fewest
//! (a documented simplification: the real 6.0.3+ balancer compares data size per
//! collection), and drains shards being removed. It runs only while the `config.settings`
//! balancer document allows it (`stopped`/`mode`, `activeWindow`) and skips collections
//! with `noBalance` or migrations disabled (`setAllowMigrations`).
//!
//! Its commands: `balancerStart`, `balancerStop` (which waits for a round in progress to
//! end), `balancerStatus`, `setAllowMigrations`.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Weak};

use bson::{doc, Bson, Document};

use crate::error::{codes, CmdResult, CommandError};
use crate::query::order::OrdBson;
use crate::storage::Storage;

use super::catalog::{self, CollectionEntry};
use super::migration;
use super::Router;

/// `_id` of the balancer's document in `config.settings`.
const BALANCER_SETTINGS_ID: &str = "balancer";

/// The balancer's state on the router.
#[derive(Debug, Default)]
pub struct Balancer {
    /// The migration gate: routed reads and writes hold it shared from choosing their
    /// shards to their reply; a migration (or `movePrimary`) holds it exclusively while it
    /// copies and commits. So no routed write lands on a donor after its documents were
    /// copied (the real cluster's critical section, with the router's retry on a stale
    /// routing table), and migrations run one at a time.
    pub gate: tokio::sync::RwLock<()>,
    in_round: AtomicBool,
    rounds: AtomicI64,
}

/// Runs balancer rounds every `balancer_interval` until the router is gone.
pub async fn run(router: Weak<Router>) {
    loop {
        let Some(interval) = router
            .upgrade()
            .map(|r| r.settings.read().balancer_interval)
        else {
            return;
        };
        tokio::time::sleep(interval).await;
        let Some(router) = router.upgrade() else {
            return;
        };
        let run = enabled(&router.config.storage.lock());
        if run {
            round(&router).await;
        }
    }
}

/// Whether the balancer settings let a round run now.
fn enabled(config: &Storage) -> bool {
    let settings = settings(config);
    if settings.get_bool("stopped").unwrap_or(false)
        || settings.get_str("mode").is_ok_and(|m| m == "off")
    {
        return false;
    }
    match settings.get_document("activeWindow") {
        Ok(window) => in_active_window(window, minute_of_day_utc()),
        Err(_) => true,
    }
}

/// The `config.settings` balancer document (empty when missing).
fn settings(config: &Storage) -> Document {
    config
        .collection(catalog::CONFIG_DB, catalog::SETTINGS)
        .and_then(|c| {
            c.docs
                .get(&OrdBson(Bson::String(BALANCER_SETTINGS_ID.into())))
        })
        .map(|d| Document::clone(d))
        .unwrap_or_default()
}

fn minute_of_day_utc() -> u32 {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    ((secs % 86_400) / 60) as u32
}

/// Whether `now` (minutes since midnight, UTC: the sandbox's server time zone) is in an
/// `activeWindow {start: "HH:MM", stop: "HH:MM"}`; a window may wrap midnight. A window
/// that does not parse never blocks the balancer.
pub fn in_active_window(window: &Document, now: u32) -> bool {
    let parse = |key: &str| -> Option<u32> {
        let (h, m) = window.get_str(key).ok()?.split_once(':')?;
        let (h, m): (u32, u32) = (h.trim().parse().ok()?, m.trim().parse().ok()?);
        (h < 24 && m < 60).then_some(h * 60 + m)
    };
    let (Some(start), Some(stop)) = (parse("start"), parse("stop")) else {
        return true;
    };
    if start <= stop {
        (start..stop).contains(&now)
    } else {
        now >= start || now < stop
    }
}

/// One balancer round: at most one migration per collection.
async fn round(router: &Router) {
    router.balancer.in_round.store(true, Ordering::SeqCst);
    let collections = catalog::collections(&router.config.storage.lock());
    for entry in collections {
        if let Err(e) = balance_collection(router, &entry).await {
            tracing::debug!(ns = %entry.ns, error = %e.errmsg, "balancer skipped a collection");
        }
    }
    router.balancer.rounds.fetch_add(1, Ordering::SeqCst);
    router.balancer.in_round.store(false, Ordering::SeqCst);
}

/// Moves one chunk of the collection, from a draining shard if any has chunks, else from
/// the shard with most chunks to the one with fewest when they differ by two or more.
async fn balance_collection(router: &Router, entry: &CollectionEntry) -> CmdResult<()> {
    let (chunks, collection_doc, draining) = {
        let config = router.config.storage.lock();
        let doc = config
            .collection(catalog::CONFIG_DB, catalog::COLLECTIONS)
            .and_then(|c| c.docs.get(&OrdBson(Bson::String(entry.ns.clone()))))
            .map(|d| Document::clone(d))
            .unwrap_or_default();
        (
            catalog::chunks(&config, &entry.uuid),
            doc,
            draining_shards(&config),
        )
    };
    if collection_doc.get_bool("noBalance").unwrap_or(false)
        || !collection_doc.get_bool("permitMigrations").unwrap_or(true)
    {
        return Ok(());
    }
    let shards = router.shard_list();
    let count = |name: &str| chunks.iter().filter(|c| c.shard == name).count();
    let recipient = shards
        .iter()
        .filter(|s| !draining.contains(&s.name))
        .min_by_key(|s| (count(&s.name), s.name.clone()));
    let Some(recipient) = recipient else {
        return Ok(());
    };
    let donor = shards
        .iter()
        .filter(|s| draining.contains(&s.name) && count(&s.name) > 0)
        .map(|s| s.name.clone())
        .next()
        .or_else(|| {
            shards
                .iter()
                .filter(|s| count(&s.name) >= count(&recipient.name) + 2)
                .max_by_key(|s| (count(&s.name), std::cmp::Reverse(s.name.clone())))
                .map(|s| s.name.clone())
        });
    let Some(donor) = donor else {
        return Ok(());
    };
    let Some(chunk) = chunks.iter().find(|c| c.shard == donor) else {
        return Ok(());
    };
    migration::move_chunk(router, entry, chunk, recipient, false).await?;
    Ok(())
}

/// Names of the shards `removeShard` is draining (`draining: true` in `config.shards`).
pub fn draining_shards(config: &Storage) -> Vec<String> {
    catalog::shard_documents(config)
        .into_iter()
        .filter(|d| d.get_bool("draining").unwrap_or(false))
        .filter_map(|d| d.get_str("_id").ok().map(str::to_string))
        .collect()
}

/// `balancerStart` / `balancerStop`: sets the balancer document's `mode` and `stopped`
/// (keeping `activeWindow` and any other setting).
pub fn set_running(router: &Router, running: bool) -> CmdResult<Document> {
    let mut config = router.config.storage.lock();
    let mut settings = settings(&config);
    settings.insert("_id", BALANCER_SETTINGS_ID);
    settings.insert("mode", if running { "full" } else { "off" });
    settings.insert("stopped", !running);
    let id = Bson::String(BALANCER_SETTINGS_ID.into());
    if config
        .collection(catalog::CONFIG_DB, catalog::SETTINGS)
        .is_some_and(|c| c.docs.contains_key(&OrdBson(id.clone())))
    {
        config.update(
            catalog::CONFIG_DB,
            catalog::SETTINGS,
            &id,
            settings,
            crate::query::UpdateLog::Replacement,
        )?;
    } else {
        config.insert(catalog::CONFIG_DB, catalog::SETTINGS, settings)?;
    }
    drop(config);
    router.config.oplog_appended.notify_waiters();
    Ok(doc! {})
}

/// How long `balancerStop` waits for a round in progress by default (the server's
/// default `maxTimeMS` for it: one minute).
const STOP_WAIT_DEFAULT_MS: i64 = 60_000;

/// `balancerStop`: turns the balancer off, then waits for a round in progress to end (up
/// to `maxTimeMS`, one minute by default), as a real router does: when it returns, no
/// migration the balancer started is still running.
pub async fn stop(router: &Router, cmd: &Document) -> CmdResult<Document> {
    set_running(router, false)?;
    let wait_ms = match cmd.get("maxTimeMS") {
        Some(Bson::Int32(ms)) if *ms > 0 => i64::from(*ms),
        Some(Bson::Int64(ms)) if *ms > 0 => *ms,
        Some(Bson::Double(ms)) if *ms > 0.0 => *ms as i64,
        _ => STOP_WAIT_DEFAULT_MS,
    };
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(wait_ms as u64);
    while router.balancer.in_round.load(Ordering::SeqCst) {
        if tokio::time::Instant::now() >= deadline {
            return Err(CommandError::new(
                codes::MAX_TIME_MS_EXPIRED,
                "operation exceeded time limit: the balancer round in progress did not end; the balancer is off and stops after this round",
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    Ok(doc! {})
}

/// `balancerStatus`: `{mode, inBalancerRound, numBalancerRounds}`.
pub fn status(router: &Router) -> Document {
    let running = enabled_mode(&router.config.storage.lock());
    doc! {
        "mode": if running { "full" } else { "off" },
        "inBalancerRound": router.balancer.in_round.load(Ordering::SeqCst),
        "numBalancerRounds": router.balancer.rounds.load(Ordering::SeqCst),
    }
}

/// The configured mode, regardless of the active window.
fn enabled_mode(config: &Storage) -> bool {
    let settings = settings(config);
    !(settings.get_bool("stopped").unwrap_or(false)
        || settings.get_str("mode").is_ok_and(|m| m == "off"))
}

/// `setAllowMigrations: ns, allowMigrations: bool`: sets `permitMigrations: false` on the
/// collection's `config.collections` entry, or removes it, as the real command does.
pub fn set_allow_migrations(router: &Router, cmd: &Document) -> CmdResult<Document> {
    let ns = cmd.get_str("setAllowMigrations").map_err(|_| {
        CommandError::type_mismatch("setAllowMigrations takes a namespace string, e.g. \"db.coll\"")
    })?;
    let allow = cmd.get_bool("allowMigrations").map_err(|_| {
        CommandError::new(
            codes::MISSING_REQUIRED_FIELD,
            "BSON field 'setAllowMigrations.allowMigrations' is missing but a required field",
        )
    })?;
    migration::sharded_collection(router, ns)?;
    let mut config = router.config.storage.lock();
    let id = Bson::String(ns.to_string());
    let Some(mut entry) = config
        .collection(catalog::CONFIG_DB, catalog::COLLECTIONS)
        .and_then(|c| c.docs.get(&OrdBson(id.clone())))
        .map(|d| Document::clone(d))
    else {
        return Err(CommandError::ns_not_found(format!("{ns} is not sharded")));
    };
    if allow {
        entry.remove("permitMigrations");
    } else {
        entry.insert("permitMigrations", false);
    }
    config.update(
        catalog::CONFIG_DB,
        catalog::COLLECTIONS,
        &id,
        entry,
        crate::query::UpdateLog::Replacement,
    )?;
    Ok(doc! {})
}

/// Starts the balancer task of a router on the current runtime.
pub fn spawn(router: &Arc<Router>) {
    tokio::spawn(run(Arc::downgrade(router)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn active_window_may_wrap_midnight() {
        let window = doc! {"start": "23:00", "stop": "02:00"};
        assert!(in_active_window(&window, 23 * 60 + 30));
        assert!(in_active_window(&window, 60));
        assert!(!in_active_window(&window, 12 * 60));
        let day = doc! {"start": "08:00", "stop": "17:00"};
        assert!(in_active_window(&day, 9 * 60));
        assert!(!in_active_window(&day, 18 * 60));
    }
}
