//! The router's commands for chunks, the balancer and shard membership: their names,
//! the privilege each requires, and where each is carried out ([`chunk_admin`],
//! [`balancer`], [`membership`]). All run on `admin` only, as on the real router.

use bson::Document;

use crate::auth::roles::Action;
use crate::error::{codes, CmdResult, CommandError};
use crate::wire::Reply;

use super::{balancer, chunk_admin, membership, Router};

/// Router commands of this module with their privileges. The sandbox's role model has
/// no separate `moveChunk`/`splitChunk`/`removeShard` actions: chunk commands need
/// `enableSharding` and cluster commands `balancerControl`, which the same built-in
/// roles (`clusterManager`, `root`) hold.
pub static COMMANDS: &[(&str, Action)] = &[
    ("moveChunk", Action::EnableSharding),
    ("movechunk", Action::EnableSharding),
    ("moveRange", Action::EnableSharding),
    ("split", Action::EnableSharding),
    ("mergeChunks", Action::EnableSharding),
    ("balancerStart", Action::BalancerControl),
    ("balancerStop", Action::BalancerControl),
    ("balancerStatus", Action::BalancerStatus),
    ("setAllowMigrations", Action::BalancerControl),
    ("addShard", Action::BalancerControl),
    ("addshard", Action::BalancerControl),
    ("removeShard", Action::BalancerControl),
    ("removeshard", Action::BalancerControl),
    ("movePrimary", Action::BalancerControl),
    ("moveprimary", Action::BalancerControl),
];

/// The privilege of one of this module's commands, if `name` is one.
pub fn action(name: &str) -> Option<Action> {
    super::command_action(COMMANDS, name)
}

/// Runs one of this module's commands.
pub async fn run(router: &Router, db: &str, cmd: &Document, name: &str) -> CmdResult<Reply> {
    if db != "admin" {
        return Err(CommandError::unauthorized(format!(
            "{name} may only be run against the admin database."
        )));
    }
    // Commands spelled in lower case take their value under that spelling.
    let cmd = normalized(cmd, name);
    let reply = match name {
        "moveChunk" | "movechunk" => chunk_admin::move_chunk(router, &cmd).await?,
        "moveRange" => chunk_admin::move_range(router, &cmd).await?,
        "split" => chunk_admin::split(router, &cmd)?,
        "mergeChunks" => chunk_admin::merge_chunks(router, &cmd)?,
        "balancerStart" => balancer::set_running(router, true)?,
        "balancerStop" => balancer::stop(router, &cmd).await?,
        "balancerStatus" => balancer::status(router),
        "setAllowMigrations" => balancer::set_allow_migrations(router, &cmd)?,
        "addShard" | "addshard" => membership::add_shard(router, &cmd)?,
        "removeShard" | "removeshard" => membership::remove_shard(router, &cmd)?,
        "movePrimary" | "moveprimary" => membership::move_primary(router, &cmd).await?,
        other => {
            return Err(CommandError::new(
                codes::COMMAND_NOT_FOUND,
                format!("no such command: '{other}'"),
            ))
        }
    };
    Ok(Reply::from(reply))
}

/// The command with its first field under the canonical (camel-case) name.
fn normalized(cmd: &Document, name: &str) -> Document {
    let canonical = match name {
        "movechunk" => "moveChunk",
        "addshard" => "addShard",
        "removeshard" => "removeShard",
        "moveprimary" => "movePrimary",
        _ => return cmd.clone(),
    };
    cmd.iter()
        .map(|(k, v)| {
            let key = if k == name { canonical } else { k.as_str() };
            (key.to_string(), v.clone())
        })
        .collect()
}
