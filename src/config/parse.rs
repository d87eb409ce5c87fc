//! TOML -> interpolated value tree -> typed [`Config`], collecting every
//! unknown key, type error and missing environment variable.

use std::path::Path;

use serde_path_to_error::Segment;
use toml::{Table, Value};

use super::{validate, Config, ConfigError, ConfigIssue};

/// Upper bound on deserialize-and-retry rounds; each round removes one key,
/// so a real file never gets near it.
const MAX_PARSE_ROUNDS: usize = 1_000;

pub(super) fn parse_config(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
    base_dir: Option<&Path>,
) -> Result<Config, ConfigError> {
    let mut table: Table = toml::from_str(text)
        .map_err(|e| ConfigError::Syntax(e.to_string().trim_end().to_owned()))?;

    let mut issues = Vec::new();
    // Keys whose value was dropped (bad interpolation, wrong type, unknown);
    // validation complaints about them would only be noise.
    let mut poisoned: Vec<String> = Vec::new();

    interpolate_table(&mut table, "", env, &mut issues, &mut poisoned);
    for key in poisoned.iter_mut() {
        // A bad element poisons (and removes) the whole array.
        if let Some(idx) = key.find('[') {
            key.truncate(idx);
        }
    }
    poisoned.dedup();
    for key in &poisoned {
        remove_dotted(&mut table, key);
    }

    let mut config = None;
    for _ in 0..MAX_PARSE_ROUNDS {
        match serde_path_to_error::deserialize::<_, Config>(Value::Table(table.clone())) {
            Ok(c) => {
                config = Some(c);
                break;
            }
            Err(err) => {
                let segments: Vec<Segment> = err.path().iter().cloned().collect();
                let (issue, removed) = describe_deserialize_error(&segments, err.inner().message());
                issues.push(issue);
                match removed.and_then(|path| remove_path(&mut table, &path)) {
                    Some(key) => poisoned.push(key),
                    // Cannot make progress; report what we have.
                    None => break,
                }
            }
        }
    }

    let Some(mut config) = config else {
        return Err(ConfigError::Invalid(issues));
    };

    if let Some(base) = base_dir {
        resolve_paths(&mut config, base);
    }
    let filter = config.namespace_filter().ok();
    issues.extend(super::sharding::resolve(
        &mut config.sharding,
        filter.as_ref(),
    ));

    let is_poisoned = |key: &str| {
        poisoned.iter().any(|p| {
            key == p
                || key
                    .strip_prefix(p.as_str())
                    .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
        })
    };
    issues.extend(
        validate::validate(&config)
            .into_iter()
            .filter(|issue| !is_poisoned(&issue.key)),
    );

    if issues.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError::Invalid(issues))
    }
}

fn resolve_paths(config: &mut Config, base: &Path) {
    let fix = |p: &mut Option<std::path::PathBuf>| {
        if let Some(path) = p {
            if path.is_relative() && !path.as_os_str().is_empty() {
                *path = base.join(&*path);
            }
        }
    };
    fix(&mut config.source.tls_ca_file);
    fix(&mut config.source.tls_certificate_key_file);
    fix(&mut config.destination.tls_ca_file);
    fix(&mut config.destination.tls_certificate_key_file);
    fix(&mut config.runtime.spool_dir);
    fix(&mut config.notify.webhook_ca_file);
    fix(&mut config.api.tls_cert_file);
    fix(&mut config.api.tls_key_file);
    fix(&mut config.sharding.entries_file);
}

// ---------------------------------------------------------------------------
// Deserialize errors
// ---------------------------------------------------------------------------

/// Dotted rendering of a path: `a.b[2].c`.
pub(super) fn dotted(segments: &[Segment]) -> String {
    let mut out = String::new();
    for seg in segments {
        match seg {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Unknown => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push('?');
            }
        }
    }
    out
}

/// Turn a serde error at `segments` into an issue, and say which map-key path
/// to remove so that the next attempt gets further.
fn describe_deserialize_error(
    segments: &[Segment],
    message: &str,
) -> (ConfigIssue, Option<Vec<String>>) {
    // Only map keys can be removed; a bad element inside an array poisons the
    // whole array (the key holding it).
    let mut removable: Vec<String> = Vec::new();
    for seg in segments {
        match seg {
            Segment::Map { key } => removable.push(key.clone()),
            _ => break,
        }
    }
    let removed = if removable.is_empty() {
        None
    } else {
        Some(removable)
    };

    let key = if segments.is_empty() {
        "(top level)".to_owned()
    } else {
        dotted(segments)
    };

    let text = if let Some(rest) = message.strip_prefix("unknown field `") {
        // serde: "unknown field `x`, expected one of `a`, `b`" or
        // "unknown field `x`, expected `a`" or "..., there are no fields".
        let expected = rest
            .split_once(", expected ")
            .map(|(_, e)| e.trim_start_matches("one of ").replace('`', ""));
        match expected {
            Some(list) => {
                format!("unknown key; remove it or fix its spelling (valid keys here: {list})")
            }
            None => "unknown key; remove it or fix its spelling".to_owned(),
        }
    } else {
        format!("{message}; see config/ferry.example.toml for the expected type and values")
    };
    (ConfigIssue::new(key, text), removed)
}

/// Remove the value at a map-key path; returns its dotted key on success.
fn remove_path(table: &mut Table, path: &[String]) -> Option<String> {
    let (last, parents) = path.split_last()?;
    let mut current = table;
    for key in parents {
        current = current.get_mut(key)?.as_table_mut()?;
    }
    current.remove(last)?;
    Some(path.join("."))
}

/// Remove by a dotted key (`a.b`).
fn remove_dotted(table: &mut Table, key: &str) {
    let path: Vec<String> = key.split('.').map(str::to_owned).collect();
    let _ = remove_path(table, &path);
}

// ---------------------------------------------------------------------------
// ${ENV} interpolation
// ---------------------------------------------------------------------------

fn join_key(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

fn interpolate_table(
    table: &mut Table,
    prefix: &str,
    env: &dyn Fn(&str) -> Option<String>,
    issues: &mut Vec<ConfigIssue>,
    poisoned: &mut Vec<String>,
) {
    for (key, value) in table.iter_mut() {
        let dotted = join_key(prefix, key);
        interpolate_value(value, &dotted, env, issues, poisoned);
    }
}

fn interpolate_value(
    value: &mut Value,
    key: &str,
    env: &dyn Fn(&str) -> Option<String>,
    issues: &mut Vec<ConfigIssue>,
    poisoned: &mut Vec<String>,
) {
    match value {
        Value::String(s) => match interpolate_str(s, env) {
            Ok(new) => *s = new,
            Err(messages) => {
                for message in messages {
                    issues.push(ConfigIssue::new(key, message));
                }
                poisoned.push(key.to_owned());
            }
        },
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                interpolate_value(item, &format!("{key}[{i}]"), env, issues, poisoned);
            }
        }
        Value::Table(t) => interpolate_table(t, key, env, issues, poisoned),
        _ => {}
    }
}

fn valid_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() || c == '_' => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Replace `${VAR}` with `env(VAR)`; `$${` becomes a literal `${`; any other
/// `$` is kept. Returns every problem found in the string.
pub(super) fn interpolate_str(
    s: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, Vec<String>> {
    let mut out = String::with_capacity(s.len());
    let mut errors = Vec::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i..];
        if let Some(tail) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = tail;
        } else if let Some(body) = after.strip_prefix("${") {
            match body.find('}') {
                None => {
                    errors.push(
                        "unterminated ${ (missing closing }); write ${NAME}, or $${ for a literal ${"
                            .to_owned(),
                    );
                    rest = "";
                }
                Some(j) => {
                    let name = &body[..j];
                    if !valid_var_name(name) {
                        errors.push(format!(
                            "invalid environment variable name \"{name}\" in ${{...}}; use letters, digits and _ (not starting with a digit), or $${{ for a literal ${{"
                        ));
                    } else {
                        match env(name) {
                            Some(v) => out.push_str(&v),
                            None => errors.push(format!(
                                "environment variable {name} is not set; set it in ferry's environment, or write $${{ for a literal ${{"
                            )),
                        }
                    }
                    rest = &body[j + 1..];
                }
            }
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}
