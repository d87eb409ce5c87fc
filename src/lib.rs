//! Ferry: live migration of MongoDB clusters.
//!
//! Map of the crate, in the order data flows through a migration:
//! - [`config`]: the TOML file -> typed [`config::Config`]; every error at once.
//! - [`cluster`]: connecting to one deployment; topology, versions, roles, balancers.
//! - [`preflight`]: the pre-migration checks (`ferry validate`, and first in `ferry run`).
//! - [`run`]: one migration on its own actix system; [`run::Migration`] is its handle.
//! - [`actors`]: supervisor, coordinator, copier, tailer, appliers, verifier.
//! - [`checkpoint`]: run state in the destination's `__ferry` database (resume after a crash).
//! - [`spool`]: change events kept on local disk while the initial copy runs.
//! - [`progress`]: the shared view of a running migration; [`api`] serves it over HTTP.
//! - [`control`]: operator requests from the API to the supervisor.
//! - [`metrics`], [`report`], [`notify`], [`logging`]: what an operator sees.
//! - [`memory`]: allocator tuning for batch-sized buffers.
//! - [`sandbox`], [`demo`]: the in-memory replica set from the CLI, and a whole demo run.

pub mod actors;
pub mod api;
pub mod checkpoint;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod control;
pub mod demo;
pub mod exit;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod notify;
pub mod preflight;
pub mod progress;
pub mod report;
pub mod run;
pub mod sandbox;
pub mod spool;
