//! Ferry: live migration of MongoDB clusters.

pub mod config;
