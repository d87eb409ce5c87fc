//! Authentication and authorization, pure logic (no networking).
//!
//! - [`scram`]: the server side of SCRAM-SHA-1 / SCRAM-SHA-256 conversations
//!   (RFC 5802, RFC 7677), with MongoDB's password digest for SHA-1.
//! - [`users`]: the user store (`createUser`, `dropUser`, `usersInfo`) and role parsing.
//! - [`roles`]: the built-in roles, the actions they grant and the authorization check.

// `CmdResult` is the crate-wide result type; its error is large by design.
#![allow(clippy::result_large_err)]

pub mod roles;
pub mod scram;
pub mod users;

pub use roles::{is_authorized, privileges_of, Action, BUILTIN_ROLES};
pub use scram::{Mechanism, ScramConversation, ScramSecrets};
pub use users::{parse_roles, AuthenticatedUser, RoleRef, StoredUser, UserStore};
