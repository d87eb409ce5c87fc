//! Ferry: live migration of MongoDB clusters.
//!
//! Map of the crate:
//! - [`config`]: the TOML file -> typed [`config::Config`]; every error at once.
//! - [`sandbox`]: `ferry sandbox`, the in-memory replica set from the CLI.
//! - [`progress`]: the shared view of a running migration the API reads.
//! - [`control`]: operator requests from the API to the supervisor.
//! - [`metrics`]: every metric name, described once.
//! - [`report`]: the final migration report.

pub mod config;
pub mod control;
pub mod metrics;
pub mod progress;
pub mod report;
pub mod sandbox;
