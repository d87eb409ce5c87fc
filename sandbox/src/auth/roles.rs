//! Built-in roles and the authorization check.
//!
//! A role grants privileges; a privilege is a set of [`Action`]s on a resource pattern.
//! Resources checked by [`is_authorized`]:
//! - cluster actions ([`Action::is_cluster`]) are checked against the cluster resource,
//!   whatever `db`/`coll` say;
//! - other actions against the namespace `db.coll`; `coll == ""` means the database
//!   itself (`dbStats`, `listCollections`, `dropDatabase`, `createUser`, ...) and
//!   `db == ""` means every database (a cluster-wide change stream).
//!
//! Patterns follow MongoDB's model: a database-scoped role covers the database and its
//! *normal* collections (not `system.*`); the `...AnyDatabase` roles cover normal
//! collections of every database except `local` and `config`; `backup` reads everything;
//! `root` and `__system` may do anything.

use std::collections::{BTreeMap, BTreeSet};

use bson::{doc, Bson, Document};

use super::users::RoleRef;
use crate::error::CommandError;

/// Something a command does, as checked by the dispatcher.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    Find,
    Insert,
    Update,
    Remove,
    CreateCollection,
    DropCollection,
    CreateIndex,
    DropIndex,
    CollMod,
    RenameCollectionSameDb,
    DropDatabase,
    ListCollections,
    ListIndexes,
    /// `$indexStats`.
    IndexStats,
    ListDatabases,
    CollStats,
    DbStats,
    DbHash,
    ChangeStream,
    KillCursors,
    ServerStatus,
    ReplSetGetStatus,
    ConnPoolStats,
    GetParameter,
    GetCmdLineOpts,
    SetParameter,
    SetFeatureCompatibilityVersion,
    ListShards,
    BalancerStatus,
    /// `balancerStart` / `balancerStop`.
    BalancerControl,
    EnableSharding,
    ShardCollection,
    CreateUser,
    DropUser,
    ViewUser,
    SetUserWriteBlockMode,
    BypassWriteBlockingMode,
    AppendOplogNote,
    KillSessions,
    Shutdown,
    /// The sandbox's fault-injection commands: `root` or `clusterManager`.
    InternalFaults,
}

use Action::*;

impl Action {
    pub const ALL: &'static [Action] = &[
        Find,
        Insert,
        Update,
        Remove,
        CreateCollection,
        DropCollection,
        CreateIndex,
        DropIndex,
        CollMod,
        RenameCollectionSameDb,
        DropDatabase,
        ListCollections,
        ListIndexes,
        IndexStats,
        ListDatabases,
        CollStats,
        DbStats,
        DbHash,
        ChangeStream,
        KillCursors,
        ServerStatus,
        ReplSetGetStatus,
        ConnPoolStats,
        GetParameter,
        GetCmdLineOpts,
        SetParameter,
        SetFeatureCompatibilityVersion,
        ListShards,
        BalancerStatus,
        BalancerControl,
        EnableSharding,
        ShardCollection,
        CreateUser,
        DropUser,
        ViewUser,
        SetUserWriteBlockMode,
        BypassWriteBlockingMode,
        AppendOplogNote,
        KillSessions,
        Shutdown,
        InternalFaults,
    ];

    /// The action's name as `connectionStatus` shows it.
    pub fn name(&self) -> &'static str {
        match self {
            Find => "find",
            Insert => "insert",
            Update => "update",
            Remove => "remove",
            CreateCollection => "createCollection",
            DropCollection => "dropCollection",
            CreateIndex => "createIndex",
            DropIndex => "dropIndex",
            CollMod => "collMod",
            RenameCollectionSameDb => "renameCollectionSameDB",
            DropDatabase => "dropDatabase",
            ListCollections => "listCollections",
            ListIndexes => "listIndexes",
            IndexStats => "indexStats",
            ListDatabases => "listDatabases",
            CollStats => "collStats",
            DbStats => "dbStats",
            DbHash => "dbHash",
            ChangeStream => "changeStream",
            KillCursors => "killCursors",
            ServerStatus => "serverStatus",
            ReplSetGetStatus => "replSetGetStatus",
            ConnPoolStats => "connPoolStats",
            GetParameter => "getParameter",
            GetCmdLineOpts => "getCmdLineOpts",
            SetParameter => "setParameter",
            SetFeatureCompatibilityVersion => "setFeatureCompatibilityVersion",
            ListShards => "listShards",
            BalancerStatus => "balancerStatus",
            BalancerControl => "balancerControl",
            EnableSharding => "enableSharding",
            ShardCollection => "shardCollection",
            CreateUser => "createUser",
            DropUser => "dropUser",
            ViewUser => "viewUser",
            SetUserWriteBlockMode => "setUserWriteBlockMode",
            BypassWriteBlockingMode => "bypassWriteBlockingMode",
            AppendOplogNote => "appendOplogNote",
            KillSessions => "killAnySession",
            Shutdown => "shutdown",
            InternalFaults => "configureFailPoint",
        }
    }

    /// Whether the action applies to the cluster rather than a namespace.
    pub fn is_cluster(&self) -> bool {
        matches!(
            self,
            ListDatabases
                | ServerStatus
                | ReplSetGetStatus
                | ConnPoolStats
                | GetParameter
                | GetCmdLineOpts
                | SetParameter
                | SetFeatureCompatibilityVersion
                | ListShards
                | BalancerStatus
                | BalancerControl
                | SetUserWriteBlockMode
                | BypassWriteBlockingMode
                | AppendOplogNote
                | KillSessions
                | Shutdown
                | InternalFaults
        )
    }
}

/// Roles that exist on every database.
const DB_ROLES: &[&str] = &["read", "readWrite", "dbAdmin", "dbOwner", "userAdmin"];

/// Roles that exist only on the `admin` database.
const ADMIN_ROLES: &[&str] = &[
    "readAnyDatabase",
    "readWriteAnyDatabase",
    "dbAdminAnyDatabase",
    "userAdminAnyDatabase",
    "backup",
    "restore",
    "clusterMonitor",
    "clusterManager",
    "hostManager",
    "clusterAdmin",
    "root",
    "__system",
];

/// Every built-in role name.
pub const BUILTIN_ROLES: &[&str] = &[
    "read",
    "readWrite",
    "dbAdmin",
    "dbOwner",
    "userAdmin",
    "readAnyDatabase",
    "readWriteAnyDatabase",
    "dbAdminAnyDatabase",
    "userAdminAnyDatabase",
    "backup",
    "restore",
    "clusterMonitor",
    "clusterManager",
    "hostManager",
    "clusterAdmin",
    "root",
    "__system",
];

/// Whether `role@db` names a built-in role (cluster-wide roles exist only on `admin`).
pub fn role_exists(role: &str, db: &str) -> bool {
    DB_ROLES.contains(&role) || (db == "admin" && ADMIN_ROLES.contains(&role))
}

/// A resource pattern.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Resource {
    /// Everything, including the cluster and system collections.
    Any,
    Cluster,
    /// Normal collections of every database except `local` and `config`.
    AnyNormal,
    /// One database and its normal collections.
    Db(String),
    /// One exact namespace.
    Ns(String, String),
    /// A collection name in every database.
    CollAnyDb(String),
}

impl Resource {
    fn to_document(&self) -> Document {
        match self {
            Resource::Any => doc! { "anyResource": true },
            Resource::Cluster => doc! { "cluster": true },
            Resource::AnyNormal => doc! { "db": "", "collection": "" },
            Resource::Db(d) => doc! { "db": d.clone(), "collection": "" },
            Resource::Ns(d, c) => doc! { "db": d.clone(), "collection": c.clone() },
            Resource::CollAnyDb(c) => doc! { "db": "", "collection": c.clone() },
        }
    }

    /// Whether the pattern covers the requested resource (`None` = the cluster).
    fn covers(&self, req: Option<(&str, &str)>) -> bool {
        match (self, req) {
            (Resource::Any, _) => true,
            (Resource::Cluster, None) => true,
            (_, None) | (Resource::Cluster, Some(_)) => false,
            (Resource::AnyNormal, Some((db, coll))) => {
                db != "local" && db != "config" && is_normal(coll)
            }
            (Resource::Db(d), Some((db, coll))) => d == db && is_normal(coll),
            (Resource::Ns(d, c), Some((db, coll))) => d == db && c == coll,
            (Resource::CollAnyDb(c), Some((db, coll))) => !db.is_empty() && c == coll,
        }
    }
}

/// A normal collection (or the database itself, `""`): not `system.*`.
fn is_normal(coll: &str) -> bool {
    !coll.starts_with("system.")
}

const READ: &[Action] = &[
    Find,
    ListCollections,
    ListIndexes,
    CollStats,
    DbStats,
    DbHash,
    ChangeStream,
    KillCursors,
];

const WRITE: &[Action] = &[
    Insert,
    Update,
    Remove,
    CreateCollection,
    DropCollection,
    CreateIndex,
    DropIndex,
    RenameCollectionSameDb,
];

const DB_ADMIN: &[Action] = &[
    CollStats,
    IndexStats,
    DbStats,
    DbHash,
    ListCollections,
    ListIndexes,
    CreateCollection,
    DropCollection,
    CreateIndex,
    DropIndex,
    CollMod,
    RenameCollectionSameDb,
    DropDatabase,
];

const PROFILE: &[Action] = &[
    Find,
    CollStats,
    CreateCollection,
    DropCollection,
    ListIndexes,
];

const USER_ADMIN: &[Action] = &[CreateUser, DropUser, ViewUser];

const CLUSTER_MONITOR: &[Action] = &[
    ServerStatus,
    ReplSetGetStatus,
    ListShards,
    BalancerStatus,
    GetParameter,
    GetCmdLineOpts,
    ListDatabases,
    ConnPoolStats,
];

const CLUSTER_MANAGER: &[Action] = &[
    ListShards,
    ReplSetGetStatus,
    BalancerStatus,
    BalancerControl,
    AppendOplogNote,
    SetFeatureCompatibilityVersion,
    InternalFaults,
];

const HOST_MANAGER: &[Action] = &[KillSessions, SetParameter, Shutdown];

const CONFIG_READ: &[Action] = &[Find, ListCollections, ListIndexes, CollStats, DbStats];

const CONFIG_WRITE: &[Action] = &[
    Find,
    Insert,
    Update,
    Remove,
    CreateCollection,
    DropCollection,
    CreateIndex,
    DropIndex,
    ListCollections,
    ListIndexes,
    CollStats,
    DbStats,
];

type Privilege = (Resource, &'static [Action]);

fn db(d: &str) -> Resource {
    Resource::Db(d.to_string())
}

fn ns(d: &str, c: &str) -> Resource {
    Resource::Ns(d.to_string(), c.to_string())
}

fn any_db(c: &str) -> Resource {
    Resource::CollAnyDb(c.to_string())
}

/// The privileges one role grants (nothing for an unknown role).
fn role_privileges(role: &str, on: &str, out: &mut Vec<Privilege>) {
    if !role_exists(role, on) {
        return;
    }
    match role {
        "read" => {
            out.push((db(on), READ));
            out.push((ns(on, "system.js"), READ));
        }
        "readWrite" => {
            out.push((db(on), READ));
            out.push((db(on), WRITE));
            out.push((ns(on, "system.js"), READ));
            out.push((ns(on, "system.js"), WRITE));
        }
        "dbAdmin" => {
            out.push((db(on), DB_ADMIN));
            out.push((ns(on, "system.profile"), PROFILE));
        }
        "userAdmin" => out.push((db(on), USER_ADMIN)),
        "dbOwner" => {
            for r in ["readWrite", "dbAdmin", "userAdmin"] {
                role_privileges(r, on, out);
            }
        }
        "readAnyDatabase" => {
            out.push((Resource::AnyNormal, READ));
            out.push((any_db("system.js"), READ));
            out.push((Resource::Cluster, &[ListDatabases]));
        }
        "readWriteAnyDatabase" => {
            out.push((Resource::AnyNormal, READ));
            out.push((Resource::AnyNormal, WRITE));
            out.push((any_db("system.js"), READ));
            out.push((any_db("system.js"), WRITE));
            out.push((Resource::Cluster, &[ListDatabases]));
        }
        "dbAdminAnyDatabase" => {
            out.push((Resource::AnyNormal, DB_ADMIN));
            out.push((any_db("system.profile"), PROFILE));
            out.push((Resource::Cluster, &[ListDatabases]));
        }
        "userAdminAnyDatabase" => {
            out.push((Resource::AnyNormal, USER_ADMIN));
            out.push((ns("admin", "system.users"), &[Find, ListIndexes, CollStats]));
            out.push((Resource::Cluster, &[ListDatabases]));
        }
        "backup" => {
            out.push((
                Resource::Any,
                &[
                    Find,
                    ListCollections,
                    ListIndexes,
                    DbHash,
                    CollStats,
                    DbStats,
                ],
            ));
            out.push((
                Resource::Cluster,
                &[
                    ListDatabases,
                    AppendOplogNote,
                    ServerStatus,
                    GetParameter,
                    // Granted since 6.0 so that cluster-to-cluster sync can block writes
                    // on the source at cutover.
                    SetUserWriteBlockMode,
                ],
            ));
        }
        "restore" => {
            out.push((
                Resource::Any,
                &[
                    Insert,
                    Update,
                    CreateCollection,
                    CreateIndex,
                    DropCollection,
                    CollMod,
                    ListCollections,
                    ListIndexes,
                    CreateUser,
                    DropUser,
                    ViewUser,
                ],
            ));
            out.push((Resource::Cluster, &[GetParameter]));
        }
        "clusterMonitor" => {
            out.push((Resource::Cluster, CLUSTER_MONITOR));
            out.push((db("config"), CONFIG_READ));
            out.push((ns("config", "system.sessions"), CONFIG_READ));
            out.push((ns("local", "system.replset"), &[Find]));
            out.push((Resource::AnyNormal, &[CollStats, DbStats, IndexStats]));
        }
        "clusterManager" => {
            out.push((Resource::Cluster, CLUSTER_MANAGER));
            out.push((Resource::AnyNormal, &[EnableSharding, ShardCollection]));
            out.push((db("config"), CONFIG_WRITE));
            out.push((db("local"), CONFIG_READ));
            out.push((ns("local", "system.replset"), &[Find]));
        }
        "hostManager" => out.push((Resource::Cluster, HOST_MANAGER)),
        "clusterAdmin" => {
            for r in ["clusterManager", "clusterMonitor", "hostManager"] {
                role_privileges(r, on, out);
            }
            out.push((
                Resource::Cluster,
                &[SetUserWriteBlockMode, BypassWriteBlockingMode],
            ));
            out.push((Resource::AnyNormal, &[DropDatabase]));
        }
        "root" | "__system" => out.push((Resource::Any, Action::ALL)),
        _ => {}
    }
}

fn all_privileges(roles: &[RoleRef]) -> Vec<Privilege> {
    let mut out = Vec::new();
    for r in roles {
        role_privileges(&r.role, &r.db, &mut out);
    }
    out
}

fn has(privs: &[Privilege], action: Action, req: Option<(&str, &str)>) -> bool {
    privs
        .iter()
        .any(|(res, actions)| actions.contains(&action) && res.covers(req))
}

/// Whether `roles` allow `action` on `db.coll` (or on the cluster for cluster actions).
/// A change stream needs both `changeStream` and `find` on the namespace.
pub fn is_authorized(roles: &[RoleRef], action: Action, db: &str, coll: &str) -> bool {
    let privs = all_privileges(roles);
    let req = if action.is_cluster() {
        None
    } else {
        Some((db, coll))
    };
    match action {
        ChangeStream => has(&privs, ChangeStream, req) && has(&privs, Find, req),
        a => has(&privs, a, req),
    }
}

/// The privileges `roles` grant, merged per resource, as `connectionStatus` with
/// `showPrivileges: true` reports them: `[{resource: {db, collection} | {cluster: true}
/// | {anyResource: true}, actions: [...]}]`.
pub fn privileges_of(roles: &[RoleRef]) -> Vec<Document> {
    let mut merged: BTreeMap<Resource, BTreeSet<&'static str>> = BTreeMap::new();
    for (res, actions) in all_privileges(roles) {
        merged
            .entry(res)
            .or_default()
            .extend(actions.iter().map(Action::name));
    }
    merged
        .into_iter()
        .map(|(res, actions)| {
            let actions: Vec<Bson> = actions
                .into_iter()
                .map(|a| Bson::String(a.to_string()))
                .collect();
            doc! { "resource": res.to_document(), "actions": actions }
        })
        .collect()
}

/// The role documents `connectionStatus` lists for a user: `[{role, db}]`.
pub fn roles_documents(roles: &[RoleRef]) -> Vec<Document> {
    roles.iter().map(RoleRef::to_document).collect()
}

/// The server's `Unauthorized` (13) error for a command on a database.
pub fn unauthorized_error(command: &str, db: &str) -> CommandError {
    CommandError::unauthorized(format!(
        "not authorized on {db} to execute command {{ {command}: ... }}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(role: &str, db: &str) -> Vec<RoleRef> {
        vec![RoleRef::new(role, db)]
    }

    #[test]
    fn read_and_read_write_are_db_scoped() {
        let read = r("read", "a");
        assert!(is_authorized(&read, Find, "a", "c"));
        assert!(is_authorized(&read, ListCollections, "a", ""));
        assert!(is_authorized(&read, ChangeStream, "a", "c"));
        assert!(!is_authorized(&read, Insert, "a", "c"));
        assert!(!is_authorized(&read, Find, "b", "c"));
        assert!(!is_authorized(&read, Find, "a", "system.users"));
        assert!(!is_authorized(&read, ListDatabases, "admin", ""));
        assert!(!is_authorized(&read, ChangeStream, "", ""));

        let rw = r("readWrite", "a");
        for act in [Find, Insert, Update, Remove, CreateIndex, DropCollection] {
            assert!(is_authorized(&rw, act, "a", "c"), "{act:?}");
            assert!(!is_authorized(&rw, act, "b", "c"), "{act:?}");
        }
        assert!(!is_authorized(&rw, DropDatabase, "a", ""));
        assert!(!is_authorized(&rw, CreateUser, "a", ""));

        // admin-db grants cover only the admin database.
        let admin_read = r("read", "admin");
        assert!(is_authorized(&admin_read, Find, "admin", "c"));
        assert!(!is_authorized(&admin_read, Find, "app", "c"));
    }

    #[test]
    fn db_admin_user_admin_owner() {
        let dba = r("dbAdmin", "a");
        assert!(is_authorized(&dba, DropDatabase, "a", ""));
        assert!(is_authorized(&dba, CollMod, "a", "c"));
        assert!(is_authorized(&dba, Find, "a", "system.profile"));
        assert!(!is_authorized(&dba, Find, "a", "c"));
        assert!(!is_authorized(&dba, Insert, "a", "c"));

        let ua = r("userAdmin", "a");
        assert!(is_authorized(&ua, CreateUser, "a", ""));
        assert!(!is_authorized(&ua, CreateUser, "b", ""));
        assert!(!is_authorized(&ua, Find, "a", "c"));

        let owner = r("dbOwner", "a");
        for act in [Find, Insert, DropDatabase, CreateUser, ViewUser, CollMod] {
            assert!(is_authorized(&owner, act, "a", "c"), "{act:?}");
            assert!(!is_authorized(&owner, act, "b", "c"), "{act:?}");
        }
    }

    #[test]
    fn any_database_roles() {
        let rad = r("readAnyDatabase", "admin");
        assert!(is_authorized(&rad, Find, "x", "c"));
        assert!(is_authorized(&rad, Find, "admin", "c"));
        assert!(is_authorized(&rad, ListDatabases, "admin", ""));
        assert!(is_authorized(&rad, ChangeStream, "", ""));
        assert!(!is_authorized(&rad, Insert, "x", "c"));
        assert!(!is_authorized(&rad, Update, "x", "c"));
        assert!(!is_authorized(&rad, DropDatabase, "x", ""));
        assert!(!is_authorized(&rad, Find, "local", "oplog.rs"));
        assert!(!is_authorized(&rad, Find, "config", "chunks"));
        // Only on admin.
        assert!(!is_authorized(&r("readAnyDatabase", "x"), Find, "x", "c"));

        let rwad = r("readWriteAnyDatabase", "admin");
        assert!(is_authorized(&rwad, Insert, "x", "c"));
        assert!(is_authorized(&rwad, Remove, "y", "c"));
        assert!(!is_authorized(&rwad, DropDatabase, "y", ""));

        let dbad = r("dbAdminAnyDatabase", "admin");
        assert!(is_authorized(&dbad, DropDatabase, "y", ""));
        assert!(!is_authorized(&dbad, Find, "y", "c"));

        let uaad = r("userAdminAnyDatabase", "admin");
        assert!(is_authorized(&uaad, CreateUser, "y", ""));
        assert!(is_authorized(&uaad, ViewUser, "admin", ""));
        assert!(!is_authorized(&uaad, Insert, "y", "c"));
    }

    #[test]
    fn backup_and_restore() {
        let b = r("backup", "admin");
        assert!(is_authorized(&b, Find, "x", "c"));
        assert!(is_authorized(&b, Find, "local", "oplog.rs"));
        assert!(is_authorized(&b, Find, "config", "system.sessions"));
        assert!(is_authorized(&b, Find, "admin", "system.users"));
        for act in [
            ListDatabases,
            AppendOplogNote,
            ServerStatus,
            SetUserWriteBlockMode,
        ] {
            assert!(is_authorized(&b, act, "admin", ""), "{act:?}");
        }
        assert!(!is_authorized(&b, BypassWriteBlockingMode, "admin", ""));
        assert!(is_authorized(&b, ListCollections, "x", ""));
        assert!(is_authorized(&b, DbHash, "x", ""));
        assert!(!is_authorized(&b, Insert, "x", "c"));
        assert!(!is_authorized(&b, Update, "x", "c"));
        assert!(!is_authorized(&b, DropCollection, "x", "c"));

        let rs = r("restore", "admin");
        for act in [
            Insert,
            Update,
            CreateCollection,
            CreateIndex,
            DropCollection,
        ] {
            assert!(is_authorized(&rs, act, "x", "c"), "{act:?}");
        }
        assert!(!is_authorized(&rs, BypassWriteBlockingMode, "admin", ""));
        assert!(!is_authorized(&rs, DropDatabase, "x", ""));
        assert!(!is_authorized(&rs, Find, "x", "c"));
    }

    #[test]
    fn cluster_roles() {
        let mon = r("clusterMonitor", "admin");
        for act in [
            ServerStatus,
            ReplSetGetStatus,
            ListShards,
            BalancerStatus,
            GetParameter,
            ListDatabases,
            ConnPoolStats,
        ] {
            assert!(is_authorized(&mon, act, "admin", ""), "{act:?}");
        }
        assert!(is_authorized(&mon, Find, "config", "shards"));
        assert!(!is_authorized(&mon, Find, "x", "c"));
        assert!(!is_authorized(&mon, BalancerControl, "admin", ""));
        assert!(!is_authorized(&mon, InternalFaults, "admin", ""));
        assert!(!is_authorized(&mon, SetParameter, "admin", ""));

        let mgr = r("clusterManager", "admin");
        for act in [
            BalancerControl,
            AppendOplogNote,
            SetFeatureCompatibilityVersion,
            InternalFaults,
            ListShards,
        ] {
            assert!(is_authorized(&mgr, act, "admin", ""), "{act:?}");
        }
        assert!(is_authorized(&mgr, EnableSharding, "x", ""));
        assert!(is_authorized(&mgr, ShardCollection, "x", "c"));
        assert!(is_authorized(&mgr, Insert, "config", "settings"));
        assert!(!is_authorized(&mgr, ServerStatus, "admin", ""));
        assert!(!is_authorized(&mgr, SetUserWriteBlockMode, "admin", ""));
        assert!(!is_authorized(&mgr, Find, "x", "c"));

        let adm = r("clusterAdmin", "admin");
        for act in [
            ServerStatus,
            BalancerControl,
            SetUserWriteBlockMode,
            BypassWriteBlockingMode,
            InternalFaults,
            Shutdown,
            SetParameter,
        ] {
            assert!(is_authorized(&adm, act, "admin", ""), "{act:?}");
        }
        assert!(is_authorized(&adm, DropDatabase, "x", ""));
        assert!(!is_authorized(&adm, Find, "x", "c"));
        assert!(!is_authorized(&adm, Insert, "x", "c"));
    }

    #[test]
    fn root_can_do_everything() {
        let root = r("root", "admin");
        for act in Action::ALL {
            assert!(is_authorized(&root, *act, "x", "c"), "{act:?}");
            assert!(is_authorized(&root, *act, "local", "oplog.rs"), "{act:?}");
            assert!(is_authorized(&root, *act, "", ""), "{act:?}");
        }
        assert!(!is_authorized(&r("root", "x"), Find, "x", "c"));
        assert!(!is_authorized(&[], Find, "x", "c"));
    }

    #[test]
    fn role_combinations_union() {
        let roles = vec![RoleRef::new("read", "a"), RoleRef::new("readWrite", "b")];
        assert!(is_authorized(&roles, Find, "a", "c"));
        assert!(!is_authorized(&roles, Insert, "a", "c"));
        assert!(is_authorized(&roles, Insert, "b", "c"));
    }

    #[test]
    fn privileges_documents() {
        let p = privileges_of(&[
            RoleRef::new("read", "a"),
            RoleRef::new("clusterMonitor", "admin"),
        ]);
        assert!(p.iter().any(
            |d| d.get_document("resource").unwrap() == &doc! {"cluster": true}
                && d.get_array("actions")
                    .unwrap()
                    .contains(&Bson::String("serverStatus".into()))
        ));
        let a = p
            .iter()
            .find(|d| d.get_document("resource").unwrap() == &doc! {"db": "a", "collection": ""})
            .unwrap();
        let actions = a.get_array("actions").unwrap();
        assert!(actions.contains(&Bson::String("find".into())));
        assert!(!actions.contains(&Bson::String("insert".into())));
        let root = privileges_of(&r("root", "admin"));
        assert_eq!(
            root[0].get_document("resource").unwrap(),
            &doc! {"anyResource": true}
        );
        assert!(privileges_of(&[]).is_empty());
    }

    #[test]
    fn role_existence() {
        for role in BUILTIN_ROLES {
            assert!(role_exists(role, "admin"), "{role}");
        }
        assert!(role_exists("read", "x"));
        assert!(!role_exists("root", "x"));
        assert!(!role_exists("nope", "admin"));
    }
}
