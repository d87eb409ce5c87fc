//! The user store: users keyed by (database, name), their SCRAM credentials and roles.

use std::collections::BTreeMap;

use bson::{doc, Bson, Document};
use parking_lot::RwLock;

use super::roles::role_exists;
use super::scram::{saslprep_password, Mechanism, ScramSecrets};
use crate::error::{codes, CmdResult, CommandError};

/// Code the server uses when a role does not exist.
pub const ROLE_NOT_FOUND: i32 = 31;
/// Code the server uses when creating a user that already exists.
pub const USER_EXISTS: i32 = 51003;

/// A role grant: role `role` defined on database `db`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoleRef {
    pub role: String,
    pub db: String,
}

impl RoleRef {
    pub fn new(role: &str, db: &str) -> RoleRef {
        RoleRef {
            role: role.to_string(),
            db: db.to_string(),
        }
    }

    pub fn to_document(&self) -> Document {
        doc! { "role": self.role.clone(), "db": self.db.clone() }
    }
}

/// A user a connection has authenticated as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthenticatedUser {
    pub user: String,
    pub db: String,
    pub roles: Vec<RoleRef>,
}

impl AuthenticatedUser {
    /// `{user, db}` as `connectionStatus` lists authenticated users.
    pub fn to_document(&self) -> Document {
        doc! { "user": self.user.clone(), "db": self.db.clone() }
    }
}

/// A user as stored: identity, roles and credentials per mechanism.
#[derive(Clone, Debug)]
pub struct StoredUser {
    pub user: String,
    pub db: String,
    pub user_id: bson::Uuid,
    pub roles: Vec<RoleRef>,
    pub credentials: Vec<ScramSecrets>,
}

impl StoredUser {
    /// The credentials for `mech`, if the user has them.
    pub fn secrets(&self, mech: Mechanism) -> Option<&ScramSecrets> {
        self.credentials.iter().find(|s| s.mechanism == mech)
    }

    pub fn mechanisms(&self) -> Vec<Mechanism> {
        self.credentials.iter().map(|s| s.mechanism).collect()
    }

    pub fn to_authenticated(&self) -> AuthenticatedUser {
        AuthenticatedUser {
            user: self.user.clone(),
            db: self.db.clone(),
            roles: self.roles.clone(),
        }
    }

    /// The `usersInfo` form of this user.
    pub fn to_info(&self) -> Document {
        let roles: Vec<Bson> = self
            .roles
            .iter()
            .map(|r| Bson::Document(r.to_document()))
            .collect();
        let mechanisms: Vec<Bson> = self
            .mechanisms()
            .iter()
            .map(|m| Bson::String(m.name().to_string()))
            .collect();
        doc! {
            "_id": format!("{}.{}", self.db, self.user),
            "userId": bson::Binary::from_uuid(self.user_id),
            "user": self.user.clone(),
            "db": self.db.clone(),
            "roles": roles,
            "mechanisms": mechanisms,
        }
    }
}

/// All users, thread-safe.
#[derive(Default, Debug)]
pub struct UserStore {
    users: RwLock<BTreeMap<(String, String), StoredUser>>,
}

impl UserStore {
    pub fn new() -> UserStore {
        UserStore::default()
    }

    /// Creates a user with credentials for `mechanisms` (both SCRAM mechanisms if empty).
    pub fn create_user(
        &self,
        db: &str,
        user: &str,
        password: &str,
        roles: Vec<RoleRef>,
        mechanisms: &[Mechanism],
    ) -> CmdResult<()> {
        validate_user_name(db, user)?;
        if password.is_empty() {
            return Err(CommandError::bad_value("Password cannot be empty"));
        }
        let mut mechs: Vec<Mechanism> = if mechanisms.is_empty() {
            Mechanism::ALL.to_vec()
        } else {
            mechanisms.to_vec()
        };
        mechs.sort();
        mechs.dedup();
        if mechs.contains(&Mechanism::ScramSha256) {
            saslprep_password(password)?;
        }
        if self.users.read().contains_key(&key(db, user)) {
            return Err(exists_error(db, user));
        }
        // PBKDF2 is slow: derive outside the write lock.
        let credentials: Vec<ScramSecrets> = mechs
            .iter()
            .map(|m| ScramSecrets::derive(*m, user, password))
            .collect();
        self.insert_with_secrets(db, user, roles, credentials)
    }

    /// Inserts a user with precomputed credentials (for fixtures and test vectors).
    pub fn insert_with_secrets(
        &self,
        db: &str,
        user: &str,
        roles: Vec<RoleRef>,
        credentials: Vec<ScramSecrets>,
    ) -> CmdResult<()> {
        validate_user_name(db, user)?;
        let mut users = self.users.write();
        let k = key(db, user);
        if users.contains_key(&k) {
            return Err(exists_error(db, user));
        }
        users.insert(
            k,
            StoredUser {
                user: user.to_string(),
                db: db.to_string(),
                user_id: bson::Uuid::new(),
                roles: dedup_roles(roles),
                credentials,
            },
        );
        Ok(())
    }

    /// Drops a user; a missing user is `UserNotFound` (11).
    pub fn drop_user(&self, db: &str, user: &str) -> CmdResult<()> {
        match self.users.write().remove(&key(db, user)) {
            Some(_) => Ok(()),
            None => Err(not_found_error(db, user)),
        }
    }

    /// Drops every user of `db`; returns how many were removed (`dropAllUsersFromDatabase`).
    pub fn drop_all_users(&self, db: &str) -> usize {
        let mut users = self.users.write();
        let before = users.len();
        users.retain(|(d, _), _| d != db);
        before - users.len()
    }

    /// Adds roles to a user (`grantRolesToUser`).
    pub fn grant_roles(&self, db: &str, user: &str, roles: Vec<RoleRef>) -> CmdResult<()> {
        let mut users = self.users.write();
        let u = users
            .get_mut(&key(db, user))
            .ok_or_else(|| not_found_error(db, user))?;
        let mut all = std::mem::take(&mut u.roles);
        all.extend(roles);
        u.roles = dedup_roles(all);
        Ok(())
    }

    /// Removes roles from a user (`revokeRolesFromUser`).
    pub fn revoke_roles(&self, db: &str, user: &str, roles: &[RoleRef]) -> CmdResult<()> {
        let mut users = self.users.write();
        let u = users
            .get_mut(&key(db, user))
            .ok_or_else(|| not_found_error(db, user))?;
        u.roles.retain(|r| !roles.contains(r));
        Ok(())
    }

    /// Replaces a user's password and/or roles (`updateUser`).
    pub fn update_user(
        &self,
        db: &str,
        user: &str,
        password: Option<&str>,
        roles: Option<Vec<RoleRef>>,
    ) -> CmdResult<()> {
        let credentials = match password {
            Some("") => return Err(CommandError::bad_value("Password cannot be empty")),
            Some(pwd) => {
                let mechs = self
                    .lookup(db, user)
                    .ok_or_else(|| not_found_error(db, user))?
                    .mechanisms();
                if mechs.contains(&Mechanism::ScramSha256) {
                    saslprep_password(pwd)?;
                }
                Some(
                    mechs
                        .iter()
                        .map(|m| ScramSecrets::derive(*m, user, pwd))
                        .collect(),
                )
            }
            None => None,
        };
        let mut users = self.users.write();
        let u = users
            .get_mut(&key(db, user))
            .ok_or_else(|| not_found_error(db, user))?;
        if let Some(c) = credentials {
            u.credentials = c;
        }
        if let Some(r) = roles {
            u.roles = dedup_roles(r);
        }
        Ok(())
    }

    /// `usersInfo` documents for `db`, all users or only `filter`, sorted by `_id`.
    pub fn users_info(&self, db: &str, filter: Option<&str>) -> Vec<Document> {
        self.users
            .read()
            .values()
            .filter(|u| u.db == db && filter.is_none_or(|f| u.user == f))
            .map(StoredUser::to_info)
            .collect()
    }

    /// `usersInfo` documents for every user of every database (`usersInfo: {forAllDBs: true}`).
    pub fn all_users_info(&self) -> Vec<Document> {
        self.users
            .read()
            .values()
            .map(StoredUser::to_info)
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.users.read().is_empty()
    }

    pub fn len(&self) -> usize {
        self.users.read().len()
    }

    /// A copy of the stored user, for SCRAM conversations.
    pub fn lookup(&self, db: &str, user: &str) -> Option<StoredUser> {
        self.users.read().get(&key(db, user)).cloned()
    }
}

fn key(db: &str, user: &str) -> (String, String) {
    (db.to_string(), user.to_string())
}

fn exists_error(db: &str, user: &str) -> CommandError {
    CommandError::new(USER_EXISTS, format!("User \"{user}@{db}\" already exists"))
}

fn not_found_error(db: &str, user: &str) -> CommandError {
    CommandError::new(
        codes::USER_NOT_FOUND,
        format!("User '{user}@{db}' not found"),
    )
}

fn validate_user_name(db: &str, user: &str) -> CmdResult<()> {
    if user.is_empty() {
        return Err(CommandError::bad_value(
            "User document needs 'user' field to be non-empty",
        ));
    }
    if db.is_empty() {
        return Err(CommandError::bad_value(
            "User document needs 'db' field to be non-empty",
        ));
    }
    if db == "local" {
        return Err(CommandError::bad_value(
            "Cannot create users in the local database",
        ));
    }
    Ok(())
}

fn dedup_roles(roles: Vec<RoleRef>) -> Vec<RoleRef> {
    let mut out: Vec<RoleRef> = Vec::with_capacity(roles.len());
    for r in roles {
        if !out.contains(&r) {
            out.push(r);
        }
    }
    out
}

/// Parses a `roles` array: `["readWrite", {role: "read", db: "x"}]`. Bare names refer to
/// `default_db`. Unknown roles (including cluster-wide roles named on a database other
/// than `admin`) are `RoleNotFound` (31).
pub fn parse_roles(value: &Bson, default_db: &str) -> CmdResult<Vec<RoleRef>> {
    let Bson::Array(items) = value else {
        return Err(CommandError::type_mismatch(format!(
            "\"roles\" must be an array, not {:?}",
            value.element_type()
        )));
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let r = match item {
            Bson::String(s) => RoleRef::new(s, default_db),
            Bson::Document(d) => {
                let role = match d.get("role") {
                    Some(Bson::String(s)) => s.clone(),
                    _ => {
                        return Err(CommandError::failed_to_parse(
                            "Role names must be either strings or objects with \"role\" and \"db\" string fields",
                        ))
                    }
                };
                let db = match d.get("db") {
                    Some(Bson::String(s)) => s.clone(),
                    _ => {
                        return Err(CommandError::failed_to_parse(
                            "Role names must be either strings or objects with \"role\" and \"db\" string fields",
                        ))
                    }
                };
                RoleRef { role, db }
            }
            _ => {
                return Err(CommandError::failed_to_parse(
                    "Role names must be either strings or objects with \"role\" and \"db\" string fields",
                ))
            }
        };
        if !role_exists(&r.role, &r.db) {
            return Err(CommandError::new(
                ROLE_NOT_FOUND,
                format!("Could not find role: {}@{}", r.role, r.db),
            ));
        }
        if !out.contains(&r) {
            out.push(r);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::bson;

    #[test]
    fn create_drop_and_info() {
        let s = UserStore::default();
        assert!(s.is_empty());
        s.create_user(
            "admin",
            "root",
            "pw",
            vec![RoleRef::new("root", "admin")],
            &[],
        )
        .unwrap();
        s.create_user(
            "app",
            "u",
            "pw",
            vec![RoleRef::new("readWrite", "app")],
            &[Mechanism::ScramSha256],
        )
        .unwrap();
        assert!(!s.is_empty());
        let e = s
            .create_user("admin", "root", "x", vec![], &[])
            .unwrap_err();
        assert_eq!(e.code, 51003);
        assert_eq!(e.errmsg, "User \"root@admin\" already exists");
        assert_eq!(
            s.create_user("admin", "p", "", vec![], &[])
                .unwrap_err()
                .code,
            2
        );

        let info = s.users_info("admin", None);
        assert_eq!(info.len(), 1);
        let d = &info[0];
        assert_eq!(d.get_str("_id").unwrap(), "admin.root");
        assert_eq!(d.get_str("user").unwrap(), "root");
        assert_eq!(d.get_str("db").unwrap(), "admin");
        assert!(
            matches!(d.get("userId"), Some(Bson::Binary(b)) if b.subtype == bson::spec::BinarySubtype::Uuid)
        );
        assert_eq!(
            d.get_array("roles").unwrap(),
            &vec![bson!({"role": "root", "db": "admin"})]
        );
        assert_eq!(
            d.get_array("mechanisms").unwrap(),
            &vec![bson!("SCRAM-SHA-1"), bson!("SCRAM-SHA-256")]
        );
        let app = s.users_info("app", Some("u"));
        assert_eq!(
            app[0].get_array("mechanisms").unwrap(),
            &vec![bson!("SCRAM-SHA-256")]
        );
        assert!(s.users_info("app", Some("nope")).is_empty());
        assert_eq!(s.all_users_info().len(), 2);

        assert_eq!(s.drop_user("app", "nope").unwrap_err().code, 11);
        s.drop_user("app", "u").unwrap();
        assert!(s.lookup("app", "u").is_none());
        assert!(s.lookup("admin", "root").is_some());
    }

    #[test]
    fn grant_revoke_update() {
        let s = UserStore::default();
        s.create_user(
            "app",
            "u",
            "pw",
            vec![RoleRef::new("read", "app")],
            &[Mechanism::ScramSha1],
        )
        .unwrap();
        s.grant_roles(
            "app",
            "u",
            vec![
                RoleRef::new("readWrite", "app"),
                RoleRef::new("read", "app"),
            ],
        )
        .unwrap();
        assert_eq!(s.lookup("app", "u").unwrap().roles.len(), 2);
        s.revoke_roles("app", "u", &[RoleRef::new("read", "app")])
            .unwrap();
        assert_eq!(
            s.lookup("app", "u").unwrap().roles,
            vec![RoleRef::new("readWrite", "app")]
        );
        let before = s.lookup("app", "u").unwrap().credentials;
        s.update_user("app", "u", Some("new"), None).unwrap();
        assert_ne!(s.lookup("app", "u").unwrap().credentials, before);
        assert_eq!(s.grant_roles("app", "x", vec![]).unwrap_err().code, 11);
        assert_eq!(s.drop_all_users("app"), 1);
    }

    #[test]
    fn parse_roles_forms() {
        let v = bson!(["readWrite", {"role": "read", "db": "other"}, "readWrite"]);
        let r = parse_roles(&v, "app").unwrap();
        assert_eq!(
            r,
            vec![
                RoleRef::new("readWrite", "app"),
                RoleRef::new("read", "other")
            ]
        );
        let e = parse_roles(&bson!(["nosuch"]), "app").unwrap_err();
        assert_eq!(e.code, 31);
        assert_eq!(e.errmsg, "Could not find role: nosuch@app");
        assert_eq!(
            parse_roles(&bson!(["readAnyDatabase"]), "app")
                .unwrap_err()
                .code,
            31
        );
        assert!(parse_roles(&bson!(["readAnyDatabase", "root"]), "admin").is_ok());
        assert!(parse_roles(&bson!([1]), "app").is_err());
        assert!(parse_roles(&bson!([{"role": "read"}]), "app").is_err());
        assert!(parse_roles(&bson!("read"), "app").is_err());
    }
}
