//! `[sharding]`: how collections are sharded on a sharded destination when the source
//! does not say (a replica-set source, or a collection unsharded on a sharded source).
//!
//! The entries come either from a JSON file in the shape operators already keep
//! (`{"shardingEntries": [{"database", "collection", "shardCollection": {"key": [...]}}]}`)
//! or inline as `[[sharding.entries]]`. A shard key is an ordered list of one-field
//! tables, because the order of a shard key's fields is part of the key and neither TOML
//! tables nor JSON objects promise to keep it.

use std::fmt;
use std::path::PathBuf;

use bson::{Bson, Document};
use serde::Deserialize;

use super::{ConfigIssue, NamespaceFilter};

/// Default `sharding.create_supporting_indexes`: the destination collection is empty
/// when it is sharded, so creating the shard key's index there costs nothing, while
/// requiring it on the source would mean building an index on a production cluster.
pub const DEFAULT_SHARDING_CREATE_SUPPORTING_INDEXES: bool = true;

/// `[sharding]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShardingConfig {
    /// Create the index a shard key needs on the destination when the source has none.
    /// False: the source must have an index that starts with the key (validate says so).
    pub create_supporting_indexes: bool,
    /// JSON file with `shardingEntries` (relative to the config file's directory).
    pub entries_file: Option<PathBuf>,
    /// The same entries inline, as `[[sharding.entries]]`.
    pub entries: Vec<ShardingEntryConfig>,
    /// The entries from either source, checked; filled when the config is loaded.
    #[serde(skip)]
    pub resolved: Vec<ShardingEntry>,
}

impl Default for ShardingConfig {
    fn default() -> Self {
        Self {
            create_supporting_indexes: DEFAULT_SHARDING_CREATE_SUPPORTING_INDEXES,
            entries_file: None,
            entries: Vec::new(),
            resolved: Vec::new(),
        }
    }
}

impl ShardingConfig {
    /// The entry for `db.coll`, if the config shards it.
    pub fn entry(&self, db: &str, coll: &str) -> Option<&ShardingEntry> {
        self.resolved
            .iter()
            .find(|e| e.database == db && e.collection == coll)
    }
}

/// One `[[sharding.entries]]` table as written.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardingEntryConfig {
    pub database: String,
    pub collection: String,
    /// Ordered one-field tables: `[{location = 1}, {region = "hashed"}]`.
    pub key: Vec<toml::Table>,
}

/// How one shard key field distributes documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// `1`: contiguous ranges of values.
    Ranged,
    /// `"hashed"`: ranges of the value's hash.
    Hashed,
}

/// A shard key: fields in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardKeySpec(pub Vec<(String, KeyKind)>);

impl ShardKeySpec {
    /// The key pattern as `shardCollection` takes it.
    pub fn to_document(&self) -> Document {
        self.0
            .iter()
            .map(|(field, kind)| {
                let value = match kind {
                    KeyKind::Ranged => Bson::Int32(1),
                    KeyKind::Hashed => Bson::String("hashed".into()),
                };
                (field.clone(), value)
            })
            .collect()
    }

    pub fn is_hashed(&self) -> bool {
        self.0.iter().any(|(_, k)| *k == KeyKind::Hashed)
    }
}

impl fmt::Display for ShardKeySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_document())
    }
}

/// One checked sharding entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardingEntry {
    pub database: String,
    pub collection: String,
    pub key: ShardKeySpec,
}

impl ShardingEntry {
    pub fn namespace(&self) -> String {
        format!("{}.{}", self.database, self.collection)
    }
}

/// A key field's value as written, before it is checked.
enum RawValue<'a> {
    Integer(i64),
    Text(&'a str),
    Other(String),
}

/// Checks one key (a list of one-field maps); `at` names the list in messages.
fn parse_key<'a>(
    fields: impl Iterator<Item = Result<(String, RawValue<'a>), String>>,
    at: &str,
    issues: &mut Vec<(String, String)>,
) -> Option<ShardKeySpec> {
    let mut out: Vec<(String, KeyKind)> = Vec::new();
    let mut ok = true;
    for (i, field) in fields.enumerate() {
        let here = format!("{at}[{i}]");
        let (name, value) = match field {
            Ok(f) => f,
            Err(message) => {
                issues.push((here, message));
                ok = false;
                continue;
            }
        };
        if name.is_empty() || name.starts_with('$') {
            issues.push((
                here,
                format!("\"{name}\" is not a field name a shard key can use; name a document field (dotted paths allowed)"),
            ));
            ok = false;
            continue;
        }
        let kind = match value {
            RawValue::Integer(1) => KeyKind::Ranged,
            RawValue::Text("hashed") => KeyKind::Hashed,
            RawValue::Integer(n) => {
                issues.push((
                    here,
                    format!("{name} = {n}: a shard key field is 1 (ranged) or \"hashed\"; descending (-1) keys cannot shard a collection"),
                ));
                ok = false;
                continue;
            }
            RawValue::Text(t) => {
                issues.push((
                    here,
                    format!("{name} = \"{t}\": a shard key field is 1 (ranged) or \"hashed\""),
                ));
                ok = false;
                continue;
            }
            RawValue::Other(shown) => {
                issues.push((
                    here,
                    format!("{name} = {shown}: a shard key field is 1 (ranged) or \"hashed\""),
                ));
                ok = false;
                continue;
            }
        };
        if out.iter().any(|(n, _)| *n == name) {
            issues.push((
                here,
                format!("{name} appears twice in the key; list each field once"),
            ));
            ok = false;
            continue;
        }
        out.push((name, kind));
    }
    if !ok {
        return None;
    }
    if out.is_empty() {
        issues.push((
            at.to_string(),
            "the shard key is empty; list its fields in order, e.g. [{location = 1}, {region = 1}]"
                .into(),
        ));
        return None;
    }
    if out.iter().filter(|(_, k)| *k == KeyKind::Hashed).count() > 1 {
        issues.push((
            at.to_string(),
            "a shard key may have only one \"hashed\" field; make the others 1 (ranged)".into(),
        ));
        return None;
    }
    Some(ShardKeySpec(out))
}

/// Checks the database and collection names of an entry.
fn check_names(database: &str, collection: &str, at: &str, issues: &mut Vec<(String, String)>) {
    if database.is_empty() || database.contains(['.', '/', '\\', ' ', '"', '$']) {
        issues.push((
            format!("{at}.database"),
            format!(
                "\"{database}\" is not a database name; give the database holding the collection"
            ),
        ));
    } else if matches!(database, "admin" | "config" | "local") {
        issues.push((
            format!("{at}.database"),
            format!("the {database} database cannot be sharded; remove this entry"),
        ));
    }
    if collection.is_empty() || collection.contains('$') {
        issues.push((
            format!("{at}.collection"),
            format!("\"{collection}\" is not a collection name; give the collection to shard"),
        ));
    } else if collection.starts_with("system.") {
        issues.push((
            format!("{at}.collection"),
            format!(
                "{collection} is a system collection, which cannot be sharded; remove this entry"
            ),
        ));
    }
}

fn toml_value(v: &toml::Value) -> RawValue<'_> {
    match v {
        toml::Value::Integer(n) => RawValue::Integer(*n),
        toml::Value::String(s) => RawValue::Text(s),
        toml::Value::Float(f) if *f == 1.0 => RawValue::Integer(1),
        other => RawValue::Other(other.to_string()),
    }
}

fn json_value(v: &serde_json::Value) -> RawValue<'_> {
    match v {
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => RawValue::Integer(i),
            None if n.as_f64() == Some(1.0) => RawValue::Integer(1),
            None => RawValue::Other(n.to_string()),
        },
        serde_json::Value::String(s) => RawValue::Text(s),
        other => RawValue::Other(other.to_string()),
    }
}

const ONE_FIELD: &str =
    "each element is a one-field table, e.g. {location = 1}; list the fields one per element, in order";

/// Entries written inline.
fn inline_entries(
    entries: &[ShardingEntryConfig],
    issues: &mut Vec<(String, String)>,
) -> Vec<ShardingEntry> {
    let mut out = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let at = format!("sharding.entries[{i}]");
        check_names(&e.database, &e.collection, &at, issues);
        let fields = e.key.iter().map(|t| {
            let mut it = t.iter();
            match (it.next(), it.next()) {
                (Some((k, v)), None) => Ok((k.clone(), toml_value(v))),
                _ => Err(ONE_FIELD.to_string()),
            }
        });
        if let Some(key) = parse_key(fields, &format!("{at}.key"), issues) {
            out.push(ShardingEntry {
                database: e.database.clone(),
                collection: e.collection.clone(),
                key,
            });
        }
    }
    out
}

/// Entries from the JSON file's text; problems are named by their JSON path.
fn file_entries(text: &str, issues: &mut Vec<(String, String)>) -> Vec<ShardingEntry> {
    let json: serde_json::Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            issues.push((
                String::new(),
                format!(
                    "not valid JSON at line {} column {}: {e}; fix the file",
                    e.line(),
                    e.column()
                ),
            ));
            return Vec::new();
        }
    };
    let Some(list) = json.get("shardingEntries").and_then(|v| v.as_array()) else {
        issues.push((
            String::new(),
            "has no \"shardingEntries\" list; write {\"shardingEntries\": [{\"database\": ..., \"collection\": ..., \"shardCollection\": {\"key\": [{\"field\": 1}]}}]}".into(),
        ));
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, e) in list.iter().enumerate() {
        let at = format!("shardingEntries[{i}]");
        let text_of = |field: &str| e.get(field).and_then(|v| v.as_str());
        let (Some(database), Some(collection)) = (text_of("database"), text_of("collection"))
        else {
            issues.push((at, "needs \"database\" and \"collection\" strings".into()));
            continue;
        };
        check_names(database, collection, &at, issues);
        let key_at = format!("{at}.shardCollection.key");
        let Some(key) = e
            .get("shardCollection")
            .and_then(|s| s.get("key"))
            .and_then(|k| k.as_array())
        else {
            issues.push((
                key_at,
                "missing or not a list; write \"shardCollection\": {\"key\": [{\"field\": 1}]} (a list keeps the fields' order)".into(),
            ));
            continue;
        };
        let fields = key.iter().map(|f| match f.as_object() {
            Some(map) if map.len() == 1 => map
                .iter()
                .next()
                .map(|(k, v)| (k.clone(), json_value(v)))
                .ok_or_else(|| ONE_FIELD.to_string()),
            _ => Err("each element is a one-field object, e.g. {\"location\": 1}; list the fields one per element, in order".to_string()),
        });
        if let Some(key) = parse_key(fields, &key_at, issues) {
            out.push(ShardingEntry {
                database: database.to_string(),
                collection: collection.to_string(),
                key,
            });
        }
    }
    out
}

/// Reads and checks the entries (from the file or inline), stores them in `resolved`,
/// and returns every problem under its dotted key. `filter` is `[filter]` compiled
/// (None when it is itself invalid): an entry it leaves out is an error.
pub(super) fn resolve(
    sharding: &mut ShardingConfig,
    filter: Option<&NamespaceFilter>,
) -> Vec<ConfigIssue> {
    let mut issues = Vec::new();
    let mut found: Vec<(String, String)> = Vec::new();
    let entries = match (&sharding.entries_file, sharding.entries.is_empty()) {
        (Some(_), false) => {
            issues.push(ConfigIssue::new(
                "sharding.entries_file",
                "both entries_file and [[sharding.entries]] are set; keep one of them",
            ));
            return issues;
        }
        (Some(path), true) if path.as_os_str().is_empty() => {
            issues.push(ConfigIssue::new(
                "sharding.entries_file",
                "must not be empty; remove the key or give the JSON file's path",
            ));
            return issues;
        }
        (Some(path), true) => match std::fs::read_to_string(path) {
            Ok(text) => {
                let entries = file_entries(&text, &mut found);
                for (at, message) in found.drain(..) {
                    let place = if at.is_empty() {
                        path.display().to_string()
                    } else {
                        format!("{} at {at}", path.display())
                    };
                    issues.push(ConfigIssue::new(
                        "sharding.entries_file",
                        format!("{place}: {message}"),
                    ));
                }
                entries
            }
            Err(e) => {
                let what = if e.kind() == std::io::ErrorKind::NotFound {
                    format!("file not found: {}", path.display())
                } else {
                    format!("cannot read {}: {e}", path.display())
                };
                issues.push(ConfigIssue::new(
                    "sharding.entries_file",
                    format!("{what}; check the path (relative paths are resolved against the config file's directory)"),
                ));
                return issues;
            }
        },
        (None, _) => {
            let entries = inline_entries(&sharding.entries, &mut found);
            issues.extend(found.drain(..).map(|(k, m)| ConfigIssue::new(k, m)));
            entries
        }
    };
    let origin = |i: usize| match &sharding.entries_file {
        Some(_) => (
            "sharding.entries_file".to_string(),
            format!("shardingEntries[{i}]: "),
        ),
        None => (format!("sharding.entries[{i}]"), String::new()),
    };
    for (i, e) in entries.iter().enumerate() {
        let (key, prefix) = origin(i);
        if let Some(first) = entries[..i]
            .iter()
            .position(|o| o.database == e.database && o.collection == e.collection)
        {
            issues.push(ConfigIssue::new(
                key,
                format!(
                    "{prefix}{} is listed twice (first at entry {first}); keep one entry per collection",
                    e.namespace()
                ),
            ));
        } else if let Some(filter) = filter {
            if !filter.allows(&e.database, &e.collection) {
                issues.push(ConfigIssue::new(
                    key,
                    format!(
                        "{prefix}{} is not migrated ([filter] leaves it out); remove the entry or include the collection",
                        e.namespace()
                    ),
                ));
            }
        }
    }
    sharding.resolved = entries;
    issues
}
