//! The sharded cluster: a router over shard replica sets.
//!
//! - [`stream`]: the router's change stream, merging the shards' streams in cluster-time
//!   order, held back by a shard that has not reported past an event.

pub mod stream;
