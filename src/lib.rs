//! Ferry: live migration of MongoDB clusters.
//!
//! Map of the crate:
//! - [`config`]: the TOML file -> typed [`config::Config`]; every error at once.
//! - [`cluster`]: one MongoDB deployment as a whole: connect, commands, topology, versions.
//! - [`preflight`]: the pre-migration checks behind `ferry validate`.
//! - [`sandbox`]: `ferry sandbox`, the in-memory replica set from the CLI.
//! - [`progress`]: the shared view of a running migration the API reads.
//! - [`control`]: operator requests from the API to the supervisor.
//! - [`metrics`]: every metric name, described once.
//! - [`report`]: the final migration report.

pub mod cluster;
pub mod config;
pub mod control;
pub mod metrics;
pub mod preflight;
pub mod progress;
pub mod report;
pub mod sandbox;
