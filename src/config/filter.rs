//! Namespace include/exclude filter.

use super::ConfigIssue;

/// Databases never migrated, whatever the filter says: the server's own
/// (`admin`, `local`, `config`) and ferry's bookkeeping database (`__ferry`).
pub const NEVER_MIGRATED_DATABASES: [&str; 4] = ["admin", "local", "config", "__ferry"];

/// Collections with this prefix are server-managed (`system.views`,
/// `system.profile`, `system.js`, ...) and never copied as data.
pub const SYSTEM_COLLECTION_PREFIX: &str = "system.";

/// Characters MongoDB forbids in database names (plus `*`, reserved for
/// patterns).
const FORBIDDEN_DB_CHARS: [char; 8] = ['/', '\\', '.', ' ', '"', '$', '*', '\0'];

/// MongoDB limits database names to 63 bytes.
const MAX_DB_NAME_BYTES: usize = 63;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    /// `"db"` or `"db.*"`: every collection of a database.
    Database(String),
    /// `"db.coll"` (the collection name may itself contain dots).
    Collection(String, String),
}

impl Pattern {
    fn parse(text: &str) -> Result<Pattern, String> {
        const HINT: &str = "use \"db\", \"db.*\" or \"db.collection\"";
        let (db, coll) = match text.split_once('.') {
            None => (text, None),
            Some((db, "*")) => (db, None),
            Some((db, coll)) => (db, Some(coll)),
        };
        if db.is_empty() {
            return Err(format!("\"{text}\" has an empty database name; {HINT}"));
        }
        if let Some(c) = db.chars().find(|c| FORBIDDEN_DB_CHARS.contains(c)) {
            return Err(format!(
                "\"{text}\": database name contains {c:?}, which MongoDB does not allow (wildcards only as \"db.*\"); {HINT}"
            ));
        }
        if db.len() > MAX_DB_NAME_BYTES {
            return Err(format!(
                "\"{text}\": database name longer than {MAX_DB_NAME_BYTES} bytes; fix the name"
            ));
        }
        match coll {
            None => Ok(Pattern::Database(db.to_owned())),
            Some(coll) => {
                if coll.is_empty() {
                    return Err(format!("\"{text}\" has an empty collection name; {HINT}"));
                }
                if coll.contains('*') {
                    return Err(format!(
                        "\"{text}\": only \"db.*\" wildcards are supported; list collections explicitly"
                    ));
                }
                if coll.contains('$') || coll.contains('\0') {
                    return Err(format!(
                        "\"{text}\": collection name contains '$' or NUL, which MongoDB does not allow; fix the name"
                    ));
                }
                Ok(Pattern::Collection(db.to_owned(), coll.to_owned()))
            }
        }
    }

    fn db(&self) -> &str {
        match self {
            Pattern::Database(db) | Pattern::Collection(db, _) => db,
        }
    }

    fn matches(&self, db: &str, coll: &str) -> bool {
        match self {
            Pattern::Database(d) => d == db,
            Pattern::Collection(d, c) => d == db && c == coll,
        }
    }
}

/// Decides which namespaces are migrated.
///
/// Rules, in order:
/// 1. databases in [`NEVER_MIGRATED_DATABASES`] and `system.*` collections
///    are never migrated;
/// 2. a namespace matching any exclude pattern is not migrated;
/// 3. if there are include patterns, only matching namespaces are migrated;
///    with none, everything else is.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NamespaceFilter {
    include: Vec<Pattern>,
    exclude: Vec<Pattern>,
}

impl NamespaceFilter {
    /// Filter that migrates every user namespace.
    pub fn allow_all() -> Self {
        Self::default()
    }

    /// Compile `filter.include_namespaces` / `filter.exclude_namespaces`.
    /// Issues are keyed `filter.include_namespaces[i]` etc.
    pub fn new(include: &[String], exclude: &[String]) -> Result<Self, Vec<ConfigIssue>> {
        let mut issues = Vec::new();
        let include = compile("filter.include_namespaces", include, true, &mut issues);
        let exclude = compile("filter.exclude_namespaces", exclude, false, &mut issues);
        if issues.is_empty() {
            Ok(Self { include, exclude })
        } else {
            Err(issues)
        }
    }

    /// Whether `db` is never migrated regardless of the filter.
    pub fn is_never_migrated_db(db: &str) -> bool {
        NEVER_MIGRATED_DATABASES.contains(&db)
    }

    /// Whether the collection `db.coll` is migrated.
    pub fn allows(&self, db: &str, coll: &str) -> bool {
        if Self::is_never_migrated_db(db) || coll.starts_with(SYSTEM_COLLECTION_PREFIX) {
            return false;
        }
        if self.exclude.iter().any(|p| p.matches(db, coll)) {
            return false;
        }
        self.include.is_empty() || self.include.iter().any(|p| p.matches(db, coll))
    }

    /// Whether any collection of `db` might be migrated (use it to skip
    /// listing collections of databases that are out of scope).
    pub fn may_allow_database(&self, db: &str) -> bool {
        if Self::is_never_migrated_db(db) {
            return false;
        }
        if self
            .exclude
            .iter()
            .any(|p| matches!(p, Pattern::Database(d) if d == db))
        {
            return false;
        }
        self.include.is_empty() || self.include.iter().any(|p| p.db() == db)
    }

    /// True when no include or exclude pattern is configured.
    pub fn is_unrestricted(&self) -> bool {
        self.include.is_empty() && self.exclude.is_empty()
    }
}

fn compile(
    key: &str,
    patterns: &[String],
    is_include: bool,
    issues: &mut Vec<ConfigIssue>,
) -> Vec<Pattern> {
    let mut out = Vec::with_capacity(patterns.len());
    for (i, text) in patterns.iter().enumerate() {
        let item_key = format!("{key}[{i}]");
        match Pattern::parse(text) {
            Ok(p) => {
                if is_include {
                    if NamespaceFilter::is_never_migrated_db(p.db()) {
                        issues.push(ConfigIssue::new(
                            item_key,
                            format!(
                                "\"{text}\": database {} is never migrated; remove it",
                                p.db()
                            ),
                        ));
                        continue;
                    }
                    if let Pattern::Collection(_, coll) = &p {
                        if coll.starts_with(SYSTEM_COLLECTION_PREFIX) {
                            issues.push(ConfigIssue::new(
                                item_key,
                                format!("\"{text}\": system.* collections are never migrated; remove it"),
                            ));
                            continue;
                        }
                    }
                }
                out.push(p);
            }
            Err(message) => issues.push(ConfigIssue::new(item_key, message)),
        }
    }
    out
}
