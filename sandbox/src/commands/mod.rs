//! The command table: name -> handler, required action, and whether it writes.

use bson::Document;

use crate::auth::roles::Action;
use crate::dispatch::Ctx;
use crate::error::CmdResult;

pub mod admin;
pub mod aggregate_write;
pub mod crud;
pub mod ddl;
pub mod handshake;
pub mod index_scan;
pub mod read;
pub mod server_config;
pub mod text_index;
pub mod write_concern;

pub type Handler = fn(&mut Ctx<'_>) -> CmdResult<Document>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    Read,
    Write,
    /// Neither reads nor writes user data (handshake, admin).
    Admin,
}

/// Whether a command runs on a node that is not primary (after a stepdown), as the real
/// server decides per command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnSecondary {
    /// Runs anywhere (server status, parameters, fault injection).
    Always,
    /// Reads: only when the client allows secondaries (`$readPreference` other than
    /// primary); otherwise 13435 NotPrimaryNoSecondaryOk.
    OptIn,
    /// Writes and primary-only commands: 10107 NotWritablePrimary.
    Never,
}

pub struct CommandSpec {
    pub name: &'static str,
    pub handler: Handler,
    /// Privilege checked by the dispatcher (None: the handler checks what it needs).
    pub action: Option<Action>,
    pub effect: Effect,
    /// Allowed before authentication and while not primary.
    pub no_auth: bool,
    /// What a node that is not primary does with the command.
    pub on_secondary: OnSecondary,
}

impl CommandSpec {
    /// Marks an admin command that only a primary runs (it writes to the oplog or to
    /// replicated state): on a secondary it fails with 10107 NotWritablePrimary.
    const fn primary_only(mut self) -> CommandSpec {
        self.on_secondary = OnSecondary::Never;
        self
    }
}

const fn cmd(
    name: &'static str,
    handler: Handler,
    action: Option<Action>,
    effect: Effect,
) -> CommandSpec {
    CommandSpec {
        name,
        handler,
        action,
        effect,
        no_auth: false,
        on_secondary: match effect {
            Effect::Write => OnSecondary::Never,
            Effect::Read => OnSecondary::OptIn,
            Effect::Admin => OnSecondary::Always,
        },
    }
}

const fn open(name: &'static str, handler: Handler) -> CommandSpec {
    CommandSpec {
        name,
        handler,
        action: None,
        effect: Effect::Admin,
        no_auth: true,
        on_secondary: OnSecondary::Always,
    }
}

use Effect::{Admin, Read, Write};

static COMMANDS: &[CommandSpec] = &[
    open("hello", handshake::hello),
    open("isMaster", handshake::hello),
    open("ismaster", handshake::hello),
    open("saslStart", handshake::sasl_start),
    open("saslContinue", handshake::sasl_continue),
    open("logout", handshake::logout),
    open("connectionStatus", handshake::connection_status),
    open("ping", admin::ping),
    open("buildInfo", admin::build_info),
    open("buildinfo", admin::build_info),
    open("endSessions", admin::end_sessions),
    cmd(
        "getParameter",
        server_config::get_parameter,
        Some(Action::GetParameter),
        Admin,
    ),
    cmd(
        "getCmdLineOpts",
        server_config::get_cmd_line_opts,
        Some(Action::GetCmdLineOpts),
        Admin,
    ),
    cmd(
        "setFeatureCompatibilityVersion",
        admin::set_fcv,
        Some(Action::SetFeatureCompatibilityVersion),
        Admin,
    )
    .primary_only(),
    cmd(
        "serverStatus",
        admin::server_status,
        Some(Action::ServerStatus),
        Admin,
    ),
    cmd(
        "replSetGetStatus",
        admin::repl_set_get_status,
        Some(Action::ReplSetGetStatus),
        Admin,
    ),
    cmd(
        "killSessions",
        admin::kill_sessions,
        Some(Action::KillSessions),
        Admin,
    ),
    cmd("listDatabases", admin::list_databases, None, Read),
    cmd("dbHash", admin::db_hash, Some(Action::DbHash), Read),
    cmd("dbStats", admin::db_stats, Some(Action::DbStats), Read),
    cmd(
        "collStats",
        admin::coll_stats,
        Some(Action::CollStats),
        Read,
    ),
    cmd(
        "usersInfo",
        admin::users_info,
        Some(Action::ViewUser),
        Admin,
    ),
    cmd(
        "createUser",
        admin::create_user,
        Some(Action::CreateUser),
        Admin,
    )
    .primary_only(),
    cmd("dropUser", admin::drop_user, Some(Action::DropUser), Admin).primary_only(),
    cmd(
        "setUserWriteBlockMode",
        admin::set_user_write_block_mode,
        Some(Action::SetUserWriteBlockMode),
        Admin,
    )
    .primary_only(),
    cmd(
        "appendOplogNote",
        admin::append_oplog_note,
        Some(Action::AppendOplogNote),
        Admin,
    )
    .primary_only(),
    cmd(
        "replSetStepDown",
        admin::repl_set_step_down,
        Some(Action::InternalFaults),
        Admin,
    )
    .primary_only(),
    cmd(
        "configureFailPoint",
        admin::configure_fail_point,
        Some(Action::InternalFaults),
        Admin,
    ),
    cmd(
        "sandboxFault",
        admin::sandbox_fault,
        Some(Action::InternalFaults),
        Admin,
    ),
    cmd("create", ddl::create, Some(Action::CreateCollection), Write),
    cmd("drop", ddl::drop, Some(Action::DropCollection), Write),
    cmd(
        "dropDatabase",
        ddl::drop_database,
        Some(Action::DropDatabase),
        Write,
    ),
    cmd("renameCollection", ddl::rename_collection, None, Write),
    cmd("collMod", ddl::coll_mod, Some(Action::CollMod), Write),
    cmd(
        "createIndexes",
        ddl::create_indexes,
        Some(Action::CreateIndex),
        Write,
    ),
    cmd(
        "dropIndexes",
        ddl::drop_indexes,
        Some(Action::DropIndex),
        Write,
    ),
    cmd(
        "deleteIndexes",
        ddl::drop_indexes,
        Some(Action::DropIndex),
        Write,
    ),
    cmd(
        "listCollections",
        ddl::list_collections,
        Some(Action::ListCollections),
        Read,
    ),
    cmd(
        "listIndexes",
        ddl::list_indexes,
        Some(Action::ListIndexes),
        Read,
    ),
    cmd("insert", crud::insert, Some(Action::Insert), Write),
    cmd("update", crud::update, Some(Action::Update), Write),
    cmd("delete", crud::delete, Some(Action::Remove), Write),
    cmd(
        "findAndModify",
        crud::find_and_modify,
        Some(Action::Update),
        Write,
    ),
    cmd(
        "findandmodify",
        crud::find_and_modify,
        Some(Action::Update),
        Write,
    ),
    cmd("count", crud::count, Some(Action::Find), Read),
    cmd("distinct", crud::distinct, Some(Action::Find), Read),
    cmd("find", read::find, Some(Action::Find), Read),
    cmd("getMore", read::get_more_placeholder, None, Read),
    cmd(
        "killCursors",
        read::kill_cursors,
        Some(Action::KillCursors),
        Read,
    ),
    cmd("aggregate", read::aggregate, None, Read),
    // A shard's wait for its range deletions; run asynchronously by the dispatcher.
    cmd(
        "cleanupOrphaned",
        dispatched_asynchronously,
        Some(Action::BalancerControl),
        Admin,
    )
    .primary_only(),
    // A shard primary's split of a chunk it owns (the router's `split` on a real cluster).
    cmd(
        "splitChunk",
        dispatched_asynchronously,
        Some(Action::BalancerControl),
        Admin,
    )
    .primary_only(),
    cmd("commitTransaction", outside_transaction, None, Write),
    cmd("abortTransaction", outside_transaction, None, Write),
];

/// Placeholder for commands the dispatcher runs asynchronously itself.
fn dispatched_asynchronously(ctx: &mut Ctx<'_>) -> CmdResult<Document> {
    Err(crate::error::CommandError::new(
        crate::error::codes::INTERNAL_ERROR,
        format!("{} must be dispatched asynchronously", ctx.name),
    ))
}

/// commitTransaction / abortTransaction without `autocommit: false`: the dispatcher runs
/// them for transactions; on their own they are refused.
fn outside_transaction(ctx: &mut Ctx<'_>) -> CmdResult<Document> {
    Err(crate::error::CommandError::new(
        crate::error::codes::INVALID_OPTIONS,
        format!(
            "'{}' must be run within a transaction (with lsid, txnNumber and autocommit: false)",
            ctx.name
        ),
    ))
}

pub fn lookup(name: &str) -> Option<&'static CommandSpec> {
    COMMANDS.iter().find(|c| c.name == name)
}
