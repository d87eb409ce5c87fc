use super::*;

const EXAMPLE: &str = include_str!("../../config/ferry.example.toml");
const MINIMAL: &str = include_str!("../../config/minimal.toml");

const SRC: &str = "mongodb://src-a:27017,src-b:27017/?replicaSet=src";
const DST: &str = "mongodb://dst-a:27017/?replicaSet=dst";

fn no_env(_: &str) -> Option<String> {
    None
}

fn test_env(name: &str) -> Option<String> {
    match name {
        "FERRY_SOURCE_PASSWORD" => Some("s3cret-src".to_owned()),
        "FERRY_DESTINATION_PASSWORD" => Some("s3cret-dst".to_owned()),
        "HOOK_TOKEN" => Some("tok123".to_owned()),
        "EMPTY" => Some(String::new()),
        _ => None,
    }
}

/// Required sections plus `extra` (which may open further sections).
fn with_required(extra: &str) -> String {
    build("", "", extra)
}

/// `[source]` with `src` keys, `[destination]` with `dst` keys, then `rest`.
fn build(src: &str, dst: &str, rest: &str) -> String {
    format!("[source]\nuri = \"{SRC}\"\n{src}\n[destination]\nuri = \"{DST}\"\n{dst}\n{rest}")
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    from_toml_str(text, &test_env)
}

fn issues(text: &str) -> Vec<ConfigIssue> {
    match parse(text) {
        Ok(c) => panic!("expected errors, got {c:?}"),
        Err(ConfigError::Invalid(issues)) => issues,
        Err(other) => panic!("expected Invalid, got {other}"),
    }
}

/// Asserts exactly one issue for `key` and that it contains `needle`.
fn assert_issue(issues: &[ConfigIssue], key: &str, needle: &str) {
    let found: Vec<&ConfigIssue> = issues.iter().filter(|i| i.key == key).collect();
    assert!(
        found.iter().any(|i| i.message.contains(needle)),
        "no issue for {key} containing {needle:?} in:\n{}",
        display_issues(issues)
    );
}

fn single_issue(extra: &str, key: &str, needle: &str) {
    let got = issues(&with_required(extra));
    assert_eq!(
        got.len(),
        1,
        "expected one issue, got:\n{}",
        display_issues(&got)
    );
    assert_issue(&got, key, needle);
    let line = got[0].to_string();
    assert!(line.starts_with(&format!("{key}: ")), "{line}");
    assert!(line.contains("; "), "issue must say what to do: {line}");
}

// ---------------------------------------------------------------------------
// Defaults
// ---------------------------------------------------------------------------

#[test]
fn minimal_config_gets_all_defaults() {
    let cfg = parse(&with_required("")).expect("valid");
    assert_eq!(cfg.source.uri, SRC);
    assert_eq!(cfg.destination.uri, DST);
    let expected = Config {
        source: SourceConfig {
            uri: SRC.to_owned(),
            ..SourceConfig::default()
        },
        destination: DestinationConfig {
            uri: DST.to_owned(),
            ..DestinationConfig::default()
        },
        ..Config::default()
    };
    assert_eq!(cfg, expected);

    assert_eq!(cfg.source.app_name, "ferry");
    assert!(!cfg.source.tls_allow_invalid_certificates);
    assert_eq!(cfg.source.tls_ca_file, None);
    assert!(!cfg.destination.clear_destination);
    assert_eq!(cfg.api.listen.to_string(), "127.0.0.1:27182");
    assert!(cfg.filter.include_namespaces.is_empty());
    assert!(cfg.filter.exclude_namespaces.is_empty());
    assert_eq!(cfg.copy.batch_max_documents, 2_000);
    assert_eq!(cfg.copy.batch_max_bytes, 16 * 1024 * 1024 - 16 * 1024);
    assert_eq!(cfg.apply.batch_max_bytes, cfg.copy.batch_max_bytes);
    assert_eq!(cfg.runtime.checkpoint_interval_seconds, 5);
    assert_eq!(cfg.runtime.spool_dir, None);
    assert_eq!(cfg.cutover.lag_threshold_seconds, 5);
    assert_eq!(cfg.cutover.window_hours, 120.0);
    assert_eq!(cfg.cutover.warn_before_expiry_hours, vec![24.0, 6.0, 1.0]);
    assert!(!cfg.cutover.enforce_write_block);
    assert!(cfg.cutover.baseline_verification);
    assert_eq!(cfg.cutover.recheck_max_documents, 1_000_000);
    assert_eq!(cfg.notify.webhook_url, None);
    assert_eq!(cfg.log.level, "info");
    assert_eq!(cfg.log.format, LogFormat::Text);
    assert!(cfg.warnings().is_empty());
}

#[test]
fn minimal_file_parses_to_defaults() {
    let cfg = parse(MINIMAL).expect("minimal.toml must be valid");
    assert_eq!(
        cfg.source.uri,
        "mongodb://ferry:s3cret-src@src-1:27017,src-2:27017,src-3:27017/?replicaSet=src"
    );
    assert_eq!(cfg.api, ApiConfig::default());
    assert_eq!(cfg.copy, CopyConfig::default());
    assert_eq!(cfg.cutover, CutoverConfig::default());
}

#[test]
fn example_file_parses_and_matches_defaults() {
    let cfg = parse(EXAMPLE).expect("ferry.example.toml must be valid");
    let mut expected = Config::default();
    expected.source.uri = "mongodb://ferry:s3cret-src@src-1:27017,src-2:27017,src-3:27017/?replicaSet=src&authSource=admin".to_owned();
    expected.destination.uri = "mongodb://ferry:s3cret-dst@dst-1:27017,dst-2:27017,dst-3:27017/?replicaSet=dst&authSource=admin".to_owned();
    assert_eq!(cfg, expected);
}

#[test]
fn example_file_commented_keys_are_valid_keys() {
    // Uncomment every `# key = value` line that names a key of its section
    // and check that the result still parses as far as the schema goes (the
    // referenced files do not exist, so only file-existence errors remain).
    let uncommented: String = EXAMPLE
        .lines()
        .map(|line| {
            let t = line.trim_start();
            let candidate = t.strip_prefix("# ").unwrap_or("");
            let is_assignment = candidate.split_once(" = ").is_some_and(|(k, _)| {
                !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
            });
            if is_assignment {
                candidate.to_owned()
            } else {
                line.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let env = |name: &str| test_env(name).or_else(|| Some(format!("<{name}>")));
    let got = match from_toml_str(&uncommented, &env) {
        Err(ConfigError::Invalid(issues)) => issues,
        other => panic!("expected file-not-found issues, got {other:?}"),
    };
    for issue in &got {
        assert!(
            issue.message.starts_with("file not found"),
            "unexpected issue: {issue}"
        );
    }
    assert_eq!(got.len(), 8, "{}", display_issues(&got));
}

#[test]
fn every_default_in_example_is_documented() {
    // Each section's keys appear in the example file.
    for key in [
        "uri",
        "tls_ca_file",
        "tls_certificate_key_file",
        "tls_allow_invalid_certificates",
        "app_name",
        "clear_destination",
        "confirm_destination_name",
        "listen",
        "include_namespaces",
        "exclude_namespaces",
        "batch_max_documents",
        "batch_max_bytes",
        "parallel_collections",
        "parallel_ranges_per_collection",
        "insert_workers",
        "batch_max_events",
        "workers",
        "flush_interval_ms",
        "update_events",
        "mailbox_capacity",
        "checkpoint_interval_seconds",
        "idle_noop_interval_seconds",
        "spool_dir",
        "spool_max_bytes",
        "lease_seconds",
        "lag_threshold_seconds",
        "window_hours",
        "warn_before_expiry_hours",
        "enforce_write_block",
        "baseline_verification",
        "recheck_max_documents",
        "long_cutover_warning_hours",
        "webhook_url",
        "webhook_timeout_seconds",
        "webhook_ca_file",
        "level",
        "format",
        "create_supporting_indexes",
        "entries_file",
    ] {
        assert!(EXAMPLE.contains(&format!("{key} = ")), "{key} undocumented");
    }
}

// ---------------------------------------------------------------------------
// Required keys and validation errors
// ---------------------------------------------------------------------------

#[test]
fn missing_sections_are_reported_together() {
    let got = issues("");
    assert_issue(&got, "source.uri", "required");
    assert_issue(&got, "destination.uri", "required");
    assert_eq!(got.len(), 2);
}

#[test]
fn uri_scheme_is_checked() {
    let got = issues("[source]\nuri = \"http://x\"\n[destination]\nuri = \"localhost:27017\"");
    assert_issue(
        &got,
        "source.uri",
        "must start with mongodb:// or mongodb+srv://",
    );
    assert_issue(
        &got,
        "destination.uri",
        "must start with mongodb:// or mongodb+srv://",
    );
}

#[test]
fn uri_shapes_are_checked() {
    let got = issues(
        "[source]\nuri = \"mongodb+srv://a.example.com,b.example.com\"\n[destination]\nuri = \"mongodb://user:pw@/db\"",
    );
    assert_issue(&got, "source.uri", "exactly one host");
    assert_issue(&got, "destination.uri", "empty host");
    let got = issues("[source]\nuri = \"mongodb+srv://a.example.com:27017\"\n[destination]\nuri = \" mongodb://d \"");
    assert_issue(&got, "source.uri", "must not have a port");
    assert_issue(&got, "destination.uri", "whitespace");
}

#[test]
fn identical_uris_are_rejected() {
    let got = issues(&format!(
        "[source]\nuri = \"{SRC}\"\n[destination]\nuri = \"{SRC}\""
    ));
    assert_eq!(got.len(), 1);
    assert_issue(&got, "destination.uri", "identical to source.uri");
}

#[test]
fn shared_hosts_are_rejected() {
    let got = issues(
        "[source]\nuri = \"mongodb://u:a@Src-A,src-b:27018/\"\n[destination]\nuri = \"mongodb://v:b@src-a:27017/other\"",
    );
    assert_eq!(got.len(), 1);
    assert_issue(&got, "destination.uri", "src-a:27017");
}

#[test]
fn tls_files_must_exist() {
    let missing = "/definitely/not/here/ca.pem";
    let got = issues(&format!(
        "[source]\nuri = \"{SRC}\"\ntls_ca_file = \"{missing}\"\n[destination]\nuri = \"{DST}\"\ntls_certificate_key_file = \"/nope/client.pem\""
    ));
    assert_issue(
        &got,
        "source.tls_ca_file",
        "file not found: /definitely/not/here/ca.pem",
    );
    assert_issue(
        &got,
        "destination.tls_certificate_key_file",
        "file not found: /nope/client.pem",
    );
    assert_eq!(got.len(), 2);

    let existing = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let cfg = parse(&format!(
        "[source]\nuri = \"{SRC}\"\ntls_ca_file = \"{existing}\"\n[destination]\nuri = \"{DST}\""
    ))
    .expect("existing file is fine");
    assert_eq!(cfg.source.tls_ca_file.as_deref(), Some(Path::new(existing)));

    let dir = env!("CARGO_MANIFEST_DIR");
    let got = issues(&format!(
        "[source]\nuri = \"{SRC}\"\ntls_ca_file = \"{dir}\"\n[destination]\nuri = \"{DST}\""
    ));
    assert_issue(&got, "source.tls_ca_file", "not a regular file");
}

#[test]
fn clear_destination_requires_confirmation() {
    let got = issues(&build("", "clear_destination = true", ""));
    assert_eq!(got.len(), 1, "{}", display_issues(&got));
    assert_issue(
        &got,
        "destination.confirm_destination_name",
        "required when clear_destination = true",
    );
}

#[test]
fn clear_destination_confirmation_must_not_be_empty() {
    let got = issues(&build(
        "",
        "clear_destination = true\nconfirm_destination_name = \"  \"",
        "",
    ));
    assert_eq!(got.len(), 1);
    assert_issue(
        &got,
        "destination.confirm_destination_name",
        "must not be empty",
    );

    let cfg = parse(&build(
        "",
        "clear_destination = true\nconfirm_destination_name = \"dst\"",
        "",
    ))
    .expect("confirmed");
    assert_eq!(
        cfg.destination.confirm_destination_name.as_deref(),
        Some("dst")
    );
    assert!(cfg
        .warnings()
        .iter()
        .any(|w| w.key == "destination.clear_destination"));
}

#[test]
fn app_name_is_checked() {
    let long = "x".repeat(129);
    let got = issues(&build(
        "app_name = \"\"",
        &format!("app_name = \"{long}\""),
        "",
    ));
    assert_eq!(got.len(), 2);
    assert_issue(&got, "source.app_name", "must not be empty");
    assert_issue(&got, "destination.app_name", "at most 128 bytes");
}

#[test]
fn zero_values_are_rejected() {
    let cases = [
        (
            "[copy]\nbatch_max_documents = 0",
            "copy.batch_max_documents",
        ),
        ("[copy]\nbatch_max_bytes = 0", "copy.batch_max_bytes"),
        (
            "[copy]\nparallel_collections = 0",
            "copy.parallel_collections",
        ),
        (
            "[copy]\nparallel_ranges_per_collection = 0",
            "copy.parallel_ranges_per_collection",
        ),
        ("[copy]\ninsert_workers = 0", "copy.insert_workers"),
        ("[apply]\nbatch_max_events = 0", "apply.batch_max_events"),
        ("[apply]\nbatch_max_bytes = 0", "apply.batch_max_bytes"),
        ("[apply]\nworkers = 0", "apply.workers"),
        ("[apply]\nflush_interval_ms = 0", "apply.flush_interval_ms"),
        (
            "[runtime]\nmailbox_capacity = 0",
            "runtime.mailbox_capacity",
        ),
        (
            "[runtime]\ncheckpoint_interval_seconds = 0",
            "runtime.checkpoint_interval_seconds",
        ),
        (
            "[runtime]\nidle_noop_interval_seconds = 0",
            "runtime.idle_noop_interval_seconds",
        ),
        (
            "[runtime]\nspool_dir = \"/tmp/ferry-spool-test\"\nspool_max_bytes = 0",
            "runtime.spool_max_bytes",
        ),
        (
            "[cutover]\nlag_threshold_seconds = 0",
            "cutover.lag_threshold_seconds",
        ),
        (
            "[cutover]\nwindow_hours = 0\nwarn_before_expiry_hours = []",
            "cutover.window_hours",
        ),
        (
            "[notify]\nwebhook_timeout_seconds = 0",
            "notify.webhook_timeout_seconds",
        ),
    ];
    for (extra, key) in cases {
        let needle = if key.ends_with("_bytes") && key != "runtime.spool_max_bytes" {
            "must be between 1 and 48000000"
        } else {
            "must be > 0"
        };
        single_issue(extra, key, needle);
    }
}

#[test]
fn window_hours_zero_message() {
    let got = issues(&with_required("[cutover]\nwindow_hours = 0"));
    assert!(got.iter().any(|i| i
        .to_string()
        .starts_with("cutover.window_hours: must be > 0")));
}

#[test]
fn upper_bounds_are_checked() {
    single_issue(
        "[copy]\nbatch_max_bytes = 48000001",
        "copy.batch_max_bytes",
        "maxMessageSizeBytes",
    );
    single_issue(
        "[copy]\ninsert_workers = 100000",
        "copy.insert_workers",
        "must be <= 1024",
    );
    single_issue(
        "[cutover]\nlag_threshold_seconds = 3600\nwindow_hours = 1\nwarn_before_expiry_hours = []",
        "cutover.lag_threshold_seconds",
        "shorter than cutover.window_hours",
    );
}

#[test]
fn warn_before_expiry_hours_are_checked() {
    let got = issues(&with_required(
        "[cutover]\nwindow_hours = 10\nwarn_before_expiry_hours = [0, 10, 6, 6]",
    ));
    assert_issue(&got, "cutover.warn_before_expiry_hours[0]", "must be > 0");
    assert_issue(
        &got,
        "cutover.warn_before_expiry_hours[1]",
        "must be < cutover.window_hours (10)",
    );
    assert_issue(
        &got,
        "cutover.warn_before_expiry_hours[3]",
        "duplicate value 6",
    );
    assert_eq!(got.len(), 3, "{}", display_issues(&got));
    // Defaults [24, 6, 1] no longer fit a 12-hour window.
    single_issue(
        "[cutover]\nwindow_hours = 12",
        "cutover.warn_before_expiry_hours[0]",
        "must be < cutover.window_hours",
    );
}

#[test]
fn spool_dir_must_be_a_directory() {
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    single_issue(
        &format!("[runtime]\nspool_dir = \"{file}\""),
        "runtime.spool_dir",
        "not a directory",
    );
    single_issue(
        "[runtime]\nspool_dir = \"\"",
        "runtime.spool_dir",
        "must not be empty",
    );
}

#[test]
fn webhook_url_is_checked() {
    single_issue(
        "[notify]\nwebhook_url = \"ftp://x\"",
        "notify.webhook_url",
        "must start with http:// or https://",
    );
    single_issue(
        "[notify]\nwebhook_url = \"https:///path\"",
        "notify.webhook_url",
        "not a valid URL",
    );
    let cfg = parse(&with_required(
        "[notify]\nwebhook_url = \"https://hooks.example.com/x/${HOOK_TOKEN}\"",
    ))
    .expect("valid");
    assert_eq!(
        cfg.notify.webhook_url.as_deref(),
        Some("https://hooks.example.com/x/tok123")
    );
}

#[test]
fn log_settings_are_checked() {
    single_issue(
        "[log]\nlevel = \"verbose\"",
        "log.level",
        "invalid log level",
    );
    let got = issues(&with_required("[log]\nformat = \"xml\""));
    assert_eq!(got.len(), 1);
    assert_issue(&got, "log.format", "unknown variant `xml`");
    let cfg = parse(&with_required(
        "[log]\nlevel = \"info,ferry=debug\"\nformat = \"json\"",
    ))
    .expect("valid");
    assert_eq!(cfg.log.format, LogFormat::Json);
    let cfg = parse(&with_required("[log]\nlevel = \"WARN\"")).expect("valid");
    assert_eq!(cfg.log.level, "WARN");
}

#[test]
fn api_listen_is_checked() {
    let got = issues(&with_required("[api]\nlisten = \"localhost\""));
    assert_eq!(got.len(), 1);
    assert_issue(&got, "api.listen", "invalid socket address");
    let cfg = parse(&with_required(
        "[api]\nlisten = \"0.0.0.0:8080\"\nallow_unauthenticated = true",
    ))
    .expect("valid");
    assert_eq!(cfg.api.listen.port(), 8080);
    assert!(cfg.warnings().iter().any(|w| w.key == "api.listen"));
}

#[test]
fn filter_patterns_are_checked() {
    let got = issues(&with_required(
        "[filter]\ninclude_namespaces = [\"ok\", \"admin\", \"a.b*\", \"\", \"db.system.users\", \"x$y\"]\nexclude_namespaces = [\".coll\", \"local\", \"db.\"]",
    ));
    assert_issue(&got, "filter.include_namespaces[1]", "never migrated");
    assert_issue(&got, "filter.include_namespaces[2]", "wildcards");
    assert_issue(&got, "filter.include_namespaces[3]", "empty database name");
    assert_issue(&got, "filter.include_namespaces[4]", "system.* collections");
    assert_issue(&got, "filter.include_namespaces[5]", "does not allow");
    assert_issue(&got, "filter.exclude_namespaces[0]", "empty database name");
    assert_issue(
        &got,
        "filter.exclude_namespaces[2]",
        "empty collection name",
    );
    assert_eq!(got.len(), 7, "{}", display_issues(&got));
}

// ---------------------------------------------------------------------------
// Many errors at once
// ---------------------------------------------------------------------------

#[test]
fn all_errors_are_reported_at_once() {
    let text = r#"
[source]
uri = "http://src"
tls_ca_file = "/missing/ca.pem"
colour = "blue"

[destination]
uri = "mongodb://dst"
clear_destination = true

[copy]
insert_workers = "eight"
batch_max_documents = 0

[cutover]
window_hours = 0
warn_before_expiry_hours = []

[notify]
webhook_url = "${NOPE}"

[bogus]
x = 1
"#;
    let err = parse(text).expect_err("invalid");
    let got = err.issues().to_vec();
    assert_issue(&got, "source.uri", "must start with mongodb://");
    assert_issue(
        &got,
        "source.tls_ca_file",
        "file not found: /missing/ca.pem",
    );
    assert_issue(&got, "source.colour", "unknown key");
    assert_issue(&got, "destination.confirm_destination_name", "required");
    assert_issue(&got, "copy.insert_workers", "invalid type");
    assert_issue(&got, "copy.batch_max_documents", "must be > 0");
    assert_issue(&got, "cutover.window_hours", "must be > 0");
    assert_issue(&got, "notify.webhook_url", "NOPE");
    assert_issue(&got, "bogus", "unknown key");
    assert_eq!(got.len(), 9, "{}", display_issues(&got));

    // Display: one issue per line.
    let shown = err.to_string();
    assert_eq!(shown.lines().count(), 9, "{shown}");
    for line in shown.lines() {
        assert!(line.contains(": "), "{line}");
    }
}

// ---------------------------------------------------------------------------
// Unknown keys and type errors name their dotted path
// ---------------------------------------------------------------------------

#[test]
fn unknown_key_names_dotted_path() {
    let got = issues(&with_required("[copy]\nbatch_max_docs = 5"));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].key, "copy.batch_max_docs");
    assert!(got[0].message.contains("unknown key"), "{}", got[0]);
    assert!(got[0].message.contains("batch_max_documents"), "{}", got[0]);
}

#[test]
fn unknown_keys_everywhere_are_all_reported() {
    let got = issues(&build(
        "passwrd = \"x\"",
        "clear = true",
        "[sourse]\nuri = \"x\"\n[cutover]\nwindow = 3\n",
    ));
    let keys: Vec<&str> = got.iter().map(|i| i.key.as_str()).collect();
    for key in [
        "source.passwrd",
        "destination.clear",
        "sourse",
        "cutover.window",
    ] {
        assert!(keys.contains(&key), "{key} missing from {keys:?}");
    }
    assert_eq!(got.len(), 4);
}

#[test]
fn type_errors_name_dotted_path() {
    let got = issues(&build(
        "tls_allow_invalid_certificates = \"yes\"",
        "",
        "[cutover]\nwarn_before_expiry_hours = [24, \"six\"]\n[apply]\nworkers = -1\n",
    ));
    assert_issue(
        &got,
        "source.tls_allow_invalid_certificates",
        "invalid type",
    );
    assert_issue(&got, "cutover.warn_before_expiry_hours[1]", "invalid type");
    assert_issue(&got, "apply.workers", "-1");
    assert_eq!(got.len(), 3, "{}", display_issues(&got));
}

#[test]
fn section_of_wrong_type_is_reported() {
    let got = issues("source = 5\n[destination]\nuri = \"mongodb://d\"");
    assert_eq!(got.len(), 1, "{}", display_issues(&got));
    assert_issue(&got, "source", "invalid type");
}

#[test]
fn syntax_errors_are_reported() {
    match parse("[source\nuri = 1") {
        Err(ConfigError::Syntax(msg)) => assert!(msg.contains("line 1"), "{msg}"),
        other => panic!("expected syntax error, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// Environment interpolation
// ---------------------------------------------------------------------------

#[test]
fn env_interpolation_present() {
    let cfg = parse(
        "[source]\nuri = \"mongodb://u:${FERRY_SOURCE_PASSWORD}@h1/\"\n[destination]\nuri = \"mongodb://u:${FERRY_DESTINATION_PASSWORD}@h2/?x=${EMPTY}\"\n[filter]\ninclude_namespaces = [\"db${EMPTY}.c\"]",
    )
    .expect("valid");
    assert_eq!(cfg.source.uri, "mongodb://u:s3cret-src@h1/");
    assert_eq!(cfg.destination.uri, "mongodb://u:s3cret-dst@h2/?x=");
    assert_eq!(cfg.filter.include_namespaces, vec!["db.c".to_owned()]);
}

#[test]
fn env_interpolation_missing_names_key_and_variable() {
    let got = match from_toml_str(
        "[source]\nuri = \"mongodb://u:${SRC_PW}@h1/\"\n[destination]\nuri = \"mongodb://h2/\"\n[filter]\nexclude_namespaces = [\"a\", \"${NS}\"]",
        &no_env,
    ) {
        Err(ConfigError::Invalid(issues)) => issues,
        other => panic!("{other:?}"),
    };
    assert_eq!(got.len(), 2, "{}", display_issues(&got));
    assert_issue(&got, "source.uri", "environment variable SRC_PW is not set");
    assert_issue(
        &got,
        "filter.exclude_namespaces[1]",
        "environment variable NS is not set",
    );
}

#[test]
fn env_interpolation_escape_and_malformed() {
    let cfg = parse(&with_required(
        "[log]\nlevel = \"info\"\n[runtime]\nspool_dir = \"/tmp/$${HOME}/a$b$\"",
    ))
    .expect("valid");
    assert_eq!(
        cfg.runtime.spool_dir.as_deref(),
        Some(Path::new("/tmp/${HOME}/a$b$"))
    );

    let got = issues(&with_required("[runtime]\nspool_dir = \"/tmp/${UNCLOSED\""));
    assert_issue(&got, "runtime.spool_dir", "unterminated");
    let got = issues(&with_required("[runtime]\nspool_dir = \"/tmp/${1BAD}\""));
    assert_issue(
        &got,
        "runtime.spool_dir",
        "invalid environment variable name",
    );
}

#[test]
fn interpolated_value_is_not_reexpanded() {
    let env = |name: &str| (name == "A").then(|| "${B}".to_owned());
    assert_eq!(
        parse::interpolate_str("x${A}y", &env),
        Ok("x${B}y".to_owned())
    );
}

// ---------------------------------------------------------------------------
// Secrets
// ---------------------------------------------------------------------------

#[test]
fn redacted_uri_hides_passwords() {
    assert_eq!(
        redacted_uri("mongodb://alice:p%40ss@h1:27017,h2/db?replicaSet=rs"),
        "mongodb://alice:***@h1:27017,h2/db?replicaSet=rs"
    );
    assert_eq!(
        redacted_uri("mongodb+srv://bob:secret@cluster.example.com/"),
        "mongodb+srv://bob:***@cluster.example.com/"
    );
    // No password: unchanged.
    assert_eq!(redacted_uri("mongodb://h1/"), "mongodb://h1/");
    assert_eq!(
        redacted_uri("mongodb://CN=x@h1/?authMechanism=MONGODB-X509"),
        "mongodb://CN=x@h1/?authMechanism=MONGODB-X509"
    );
    // Unencoded '@' and '?' in the password do not leak it.
    let r = redacted_uri("mongodb://u:pa@ss?w@h1/");
    assert!(!r.contains("ss?w") && r.ends_with("@h1/"), "{r}");
    let r = redacted_uri("mongodb://u:pa/ss@h1/db");
    assert!(!r.contains("pa/ss"), "{r}");
    // Secret query options.
    assert_eq!(
        redacted_uri("mongodb://h/?tls=true&tlsCertificateKeyFilePassword=kp&authMechanismProperties=AWS_SESSION_TOKEN:t"),
        "mongodb://h/?tls=true&tlsCertificateKeyFilePassword=***&authMechanismProperties=***"
    );
}

#[test]
fn redacted_url_hides_tokens() {
    assert_eq!(
        redacted_url("https://hooks.slack.com/services/T0/B0/XyZ"),
        "https://hooks.slack.com/***"
    );
    assert_eq!(redacted_url("http://u:p@h:8080/"), "http://***@h:8080/");
    assert_eq!(redacted_url("https://h"), "https://h");
}

#[test]
fn debug_never_prints_passwords() {
    let cfg = parse(&format!(
        "{}\n[notify]\nwebhook_url = \"https://hooks.example.com/x/${{HOOK_TOKEN}}\"",
        MINIMAL
    ))
    .expect("valid");
    let shown = format!("{cfg:?}");
    let pretty = format!("{cfg:#?}");
    for secret in ["s3cret-src", "s3cret-dst", "tok123"] {
        assert!(!shown.contains(secret), "{secret} leaked: {shown}");
        assert!(!pretty.contains(secret), "{secret} leaked: {pretty}");
    }
    assert!(shown.contains("ferry:***@src-1:27017"), "{shown}");
    let conn = format!("{:?}", cfg.destination.connection());
    assert!(
        !conn.contains("s3cret-dst") && conn.contains("***"),
        "{conn}"
    );
}

// ---------------------------------------------------------------------------
// Namespace filter
// ---------------------------------------------------------------------------

fn filter(include: &[&str], exclude: &[&str]) -> NamespaceFilter {
    let own = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    match NamespaceFilter::new(&own(include), &own(exclude)) {
        Ok(f) => f,
        Err(issues) => panic!("{}", display_issues(&issues)),
    }
}

#[test]
fn filter_empty_allows_all_user_namespaces() {
    let f = filter(&[], &[]);
    assert!(f.is_unrestricted());
    assert!(f.allows("shop", "orders"));
    assert!(f.allows("shop", "a.b"));
    for db in ["admin", "local", "config", "__ferry"] {
        assert!(!f.allows(db, "anything"), "{db}");
        assert!(!f.may_allow_database(db), "{db}");
    }
    assert!(!f.allows("shop", "system.views"));
    assert!(!f.allows("shop", "system.profile"));
    assert!(f.allows("shop", "systemic"));
}

#[test]
fn filter_include_and_exclude() {
    let f = filter(
        &["shop", "crm.customers", "analytics.*"],
        &["shop.sessions"],
    );
    assert!(f.allows("shop", "orders"));
    assert!(!f.allows("shop", "sessions"), "exclude wins");
    assert!(f.allows("crm", "customers"));
    assert!(!f.allows("crm", "leads"));
    assert!(f.allows("analytics", "events"));
    assert!(!f.allows("other", "x"));
    assert!(!f.allows("shop", "system.js"));
    assert!(f.may_allow_database("crm"));
    assert!(!f.may_allow_database("other"));

    let f = filter(&["shop"], &["shop"]);
    assert!(!f.allows("shop", "orders"), "exclude wins over include");
    assert!(!f.may_allow_database("shop"));

    let f = filter(&[], &["scratch", "shop.tmp.cache", "logs.*"]);
    assert!(f.allows("shop", "orders"));
    assert!(!f.allows("shop", "tmp.cache"));
    assert!(f.allows("shop", "tmp"));
    assert!(!f.allows("scratch", "x"));
    assert!(!f.allows("logs", "x"));
    assert!(f.may_allow_database("shop"));
    assert!(!f.may_allow_database("logs"));
    // Excluding system databases is redundant but allowed.
    let f = filter(&[], &["admin", "shop.system.views"]);
    assert!(!f.allows("admin", "x"));
}

#[test]
fn filter_is_built_from_config() {
    let cfg = parse(&with_required(
        "[filter]\ninclude_namespaces = [\"shop\"]\nexclude_namespaces = [\"shop.tmp\"]",
    ))
    .expect("valid");
    let f = match cfg.namespace_filter() {
        Ok(f) => f,
        Err(e) => panic!("{e}"),
    };
    assert!(f.allows("shop", "orders"));
    assert!(!f.allows("shop", "tmp"));
    assert!(!f.allows("crm", "x"));
    assert_eq!(NamespaceFilter::allow_all(), filter(&[], &[]),);
}

// ---------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------

#[test]
fn load_reads_file_and_resolves_relative_paths() {
    let dir = std::env::temp_dir().join(format!("ferry-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("ca.pem"), "pem").expect("write");
    let path = dir.join("ferry.toml");
    std::fs::write(
        &path,
        format!("[source]\nuri = \"{SRC}\"\ntls_ca_file = \"ca.pem\"\n[destination]\nuri = \"{DST}\"\n[runtime]\nspool_dir = \"spool\""),
    )
    .expect("write");
    let cfg = load(&path).expect("valid");
    assert_eq!(cfg.source.tls_ca_file, Some(dir.join("ca.pem")));
    assert_eq!(cfg.runtime.spool_dir, Some(dir.join("spool")));

    std::fs::write(&path, "[source\n").expect("write");
    match load(&path) {
        Err(ConfigError::Syntax(msg)) => assert!(msg.contains("ferry.toml"), "{msg}"),
        other => panic!("{other:?}"),
    }
    let _ = std::fs::remove_dir_all(&dir);

    match load(Path::new("/no/such/ferry.toml")) {
        Err(e @ ConfigError::Io { .. }) => {
            assert!(e.to_string().contains("/no/such/ferry.toml"), "{e}")
        }
        other => panic!("{other:?}"),
    }
}

/// Pins: `tls_allow_invalid_hostnames = true` silently disabled every certificate check
/// (the TLS library has no host-name-only switch). It is refused now, pointing at the
/// key that says what it does.
#[test]
fn a_host_name_only_tls_exception_is_refused_with_the_honest_alternative() {
    let got = issues(&build("tls_allow_invalid_hostnames = true", "", ""));
    assert_issue(
        &got,
        "source.tls_allow_invalid_hostnames",
        "tls_allow_invalid_certificates",
    );
    assert_eq!(got.len(), 1, "{}", display_issues(&got));
    parse(&build("tls_allow_invalid_hostnames = false", "", "")).expect("false is harmless");
    let cfg = parse(&build("tls_allow_invalid_certificates = true", "", ""))
        .expect("a lab exception is accepted");
    assert!(cfg.source.connection().tls_allow_invalid_certificates);
}

/// Pins: anyone who could reach a non-loopback API could cut over or cancel.
#[test]
fn an_exposed_api_needs_a_token_or_an_explicit_choice() {
    let got = issues(&with_required("[api]\nlisten = \"0.0.0.0:8080\""));
    assert_issue(&got, "api.listen", "api.token");
    let cfg = parse(&with_required(
        "[api]\nlisten = \"0.0.0.0:8080\"\ntoken = \"0123456789abcdef\"",
    ))
    .expect("a token makes it acceptable");
    assert!(!cfg.warnings().iter().any(|w| w.key == "api.listen"));
    assert!(
        !format!("{cfg:?}").contains("0123456789abcdef"),
        "token redacted"
    );
    let got = issues(&with_required("[api]\ntoken_required_for_reads = true"));
    assert_issue(&got, "api.token_required_for_reads", "api.token");
    let got = issues(&with_required("[api]\ntoken = \"\""));
    assert_issue(&got, "api.token", "empty");
}
