//! Ferry: live migration of MongoDB clusters.
//!
//! Map of the crate:
//! - [`sandbox`]: `ferry sandbox`, the in-memory replica set from the CLI.

pub mod sandbox;
