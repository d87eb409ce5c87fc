//! Ferry: live migration of MongoDB clusters.
