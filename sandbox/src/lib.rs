//! `ferry-sandbox`: an in-memory server that speaks MongoDB's wire protocol well enough
//! that the official drivers treat it as a replica-set primary.
//!
//! Map of the crate:
//! - [`wire`]: message framing (OP_MSG, legacy OP_QUERY/OP_REPLY); `decode` is its fast
//!   path for common BSON, falling back to `bson` for anything else; [`encode`] writes
//!   replies (and change events straight from the oplog) as BSON bytes.
//! - [`server`]: the TCP/TLS listener, one task per connection, the [`Sandbox`] handle.
//! - [`dispatch`]: the one command table; applies auth, write blocking, faults and error
//!   labels once so each handler is about its own command.
//! - [`storage`]: databases, collections (ordered maps `_id` -> raw document), indexes,
//!   and the oplog, the single source of truth for history.
//! - [`query`]: BSON ordering, filters, sort, projection, update operators, aggregation.
//! - [`auth`]: SCRAM-SHA-1/256 conversations, users and built-in roles.
//! - [`transaction`]: multi-document transactions (workspaces, locks, commit as
//!   `applyOps`); [`versions`]: prior document versions for snapshot and majority reads.
//! - [`sharding`]: the sharded cluster: config server, shards and the router (mongos)
//!   that routes commands to shards in-process, with the catalog in `config.*`; chunk
//!   migrations, orphans, the balancer and the router's change streams.
//! - [`error`]: command errors with codes and labels as the real server reports them.
//!
//! Data flow: bytes -> `wire` -> `dispatch` (auth, faults) -> handler -> `storage`
//! (write + oplog append under one lock) -> reply -> `wire` -> bytes.

// `CommandError` is the server's error reply (code, message, labels, extra fields) and the
// result of every handler; it is built once per failed command, so boxing it would only
// add an indirection to every handler signature.
#![allow(clippy::result_large_err)]

pub mod auth;
pub mod changestream;
pub mod commands;
pub mod cursor;
mod decode;
pub mod dispatch;
pub mod encode;
pub mod error;
pub mod failpoint;
pub mod server;
pub mod sharding;
pub mod storage;
pub mod tls;
pub mod transaction;
pub mod versions;
pub mod wire;

pub use server::{Sandbox, SandboxOptions, StartError, TlsFiles};
pub use sharding::{ShardKeyMoveOrder, ShardedCluster, ShardedOptions};
pub mod query;
