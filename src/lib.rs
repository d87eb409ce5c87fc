//! Ferry: live migration of MongoDB clusters.
//!
//! Map of the crate:
//! - [`config`]: the TOML file -> typed [`config::Config`]; every error at once.
//! - [`sandbox`]: `ferry sandbox`, the in-memory replica set from the CLI.
//! - [`progress`]: the shared view of a running migration the API reads.
//! - [`control`]: operator requests from the API to the supervisor.
//! - [`metrics`]: every metric name, described once.
//! - [`report`]: the final migration report.
//! - [`api`]: the HTTP control API and `/metrics`; reads `progress`, writes through
//!   `control`.
//! - [`cli`]: the operator verbs (`ferry status`, `ferry cutover`, ...) calling the API.

pub mod api;
pub mod cli;
pub mod config;
pub mod control;
pub mod metrics;
pub mod progress;
pub mod report;
pub mod sandbox;
