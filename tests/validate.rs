//! `ferry validate` and the preflight checks against sandbox clusters over real TCP.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use bson::{doc, Document};
use common::{sandbox_with_users, ADMIN, MIGRATOR};
use ferry::preflight::{run_checks_as, Check, PreflightReport, Status, LOCK_COLLECTION, LOCK_DB};
use ferry_sandbox::Sandbox;

const OWNER: &str = "ferry@validate-test";

fn start(set_name: &str, version: &str, migrator_roles: &[&str]) -> Sandbox {
    sandbox_with_users(set_name, version, migrator_roles)
}

fn source(version: &str) -> Sandbox {
    start("src", version, &["backup", "readAnyDatabase"])
}

fn destination(version: &str) -> Sandbox {
    start(
        "dst",
        version,
        &[
            "readWriteAnyDatabase",
            "dbAdminAnyDatabase",
            "clusterMonitor",
        ],
    )
}

fn migrator_uri(s: &Sandbox) -> String {
    s.uri_with_user(MIGRATOR.0, MIGRATOR.1)
}

/// A config file in the temp directory with a unique name.
struct ConfigFile(PathBuf);

impl ConfigFile {
    fn new(source_uri: &str, destination_uri: &str, destination_extra: &str) -> ConfigFile {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "ferry-validate-{}-{}.toml",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let path = std::env::temp_dir().join(name);
        let text = format!(
            "[source]\nuri = \"{source_uri}\"\n\n[destination]\nuri = \"{destination_uri}\"\n{destination_extra}\n"
        );
        std::fs::write(&path, text).expect("write temp config");
        ConfigFile(path)
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().expect("tokio runtime")
}

fn checks(source_uri: &str, destination_uri: &str, destination_extra: &str) -> PreflightReport {
    let file = ConfigFile::new(source_uri, destination_uri, destination_extra);
    let config = ferry::config::load(&file.0).expect("valid config");
    let report = runtime().block_on(run_checks_as(&config, OWNER));
    println!("{report}");
    report
}

fn check<'a>(report: &'a PreflightReport, name: &str) -> &'a Check {
    report
        .check(name)
        .unwrap_or_else(|| panic!("no check named {name:?} in\n{report}"))
}

fn fix(c: &Check) -> &str {
    c.fix
        .as_deref()
        .unwrap_or_else(|| panic!("check {} has no fix", c.name))
}

/// Runs a command as the sandbox's root user.
fn admin_command(s: &Sandbox, db: &str, command: Document) -> Document {
    let uri = s.uri_with_user(ADMIN.0, ADMIN.1);
    runtime().block_on(async move {
        let client = mongodb::Client::with_uri_str(&uri).await.expect("client");
        client
            .database(db)
            .run_command(command)
            .await
            .expect("admin command")
    })
}

fn insert(s: &Sandbox, db: &str, coll: &str, document: Document) {
    admin_command(s, db, doc! {"insert": coll, "documents": [document]});
}

#[test]
fn all_checks_pass_on_supported_clusters() {
    let (src, dst) = (source("7.0.13"), destination("7.0.13"));
    insert(&src, "app", "users", doc! {"_id": 1, "name": "ada"});
    let report = checks(&migrator_uri(&src), &migrator_uri(&dst), "");
    assert!(report.passed(), "expected no failure:\n{report}");
    for name in [
        "connectivity (source)",
        "connectivity (destination)",
        "authentication (source)",
        "authentication (destination)",
        "topology (source)",
        "topology (destination)",
        "version (source)",
        "version (destination)",
        "versions match",
        "roles (source)",
        "roles (destination)",
        "destination empty",
        "migration lock",
        "oplog window (source)",
    ] {
        assert_eq!(
            check(&report, name).status,
            Status::Pass,
            "{name}:\n{report}"
        );
    }
    assert!(check(&report, "topology (source)")
        .message
        .contains("replica set src"));
    assert!(check(&report, "version (source)")
        .message
        .contains("7.0.13"));
}

#[test]
fn six_dot_zero_is_supported() {
    let (src, dst) = (source("6.0.17"), destination("6.0.17"));
    let report = checks(&migrator_uri(&src), &migrator_uri(&dst), "");
    assert!(report.passed(), "{report}");
}

#[test]
fn bad_password_fails_authentication_and_says_what_to_fix() {
    let (src, dst) = (source("7.0.13"), destination("7.0.13"));
    let report = checks(
        &src.uri_with_user(MIGRATOR.0, "wrong"),
        &migrator_uri(&dst),
        "",
    );
    assert!(!report.passed());
    assert_eq!(check(&report, "connectivity (source)").status, Status::Pass);
    let auth = check(&report, "authentication (source)");
    assert_eq!(auth.status, Status::Fail, "{report}");
    assert!(
        auth.message
            .contains("authentication failed for the source user; check source.uri credentials"),
        "{}",
        auth.message
    );
    assert!(fix(auth).contains("source.uri"));
    // Checks that need the connection are reported as failed with the reason.
    let topology = check(&report, "topology (source)");
    assert_eq!(topology.status, Status::Fail);
    assert!(
        topology
            .message
            .contains("authentication to the source failed"),
        "{}",
        topology.message
    );
    assert_eq!(
        check(&report, "authentication (destination)").status,
        Status::Pass
    );
}

#[test]
fn source_user_without_backup_role_is_refused() {
    let src = start("src", "7.0.13", &["readAnyDatabase"]);
    let dst = destination("7.0.13");
    let report = checks(&migrator_uri(&src), &migrator_uri(&dst), "");
    let roles = check(&report, "roles (source)");
    assert_eq!(roles.status, Status::Fail, "{report}");
    assert!(roles.message.contains("lacks backup"), "{}", roles.message);
    assert!(
        fix(roles).contains("grantRolesToUser(\"ferry\", [{role: \"backup\", db: \"admin\"}])"),
        "{}",
        fix(roles)
    );
}

#[test]
fn source_user_without_read_any_database_is_refused() {
    let src = start("src", "7.0.13", &["backup"]);
    let dst = destination("7.0.13");
    let report = checks(&migrator_uri(&src), &migrator_uri(&dst), "");
    let roles = check(&report, "roles (source)");
    assert_eq!(roles.status, Status::Fail, "{report}");
    assert!(
        roles.message.contains("readAnyDatabase"),
        "{}",
        roles.message
    );
    assert!(fix(roles).contains("readAnyDatabase"));
}

#[test]
fn destination_user_that_cannot_write_is_refused() {
    let src = source("7.0.13");
    let dst = start("dst", "7.0.13", &["readAnyDatabase"]);
    let report = checks(&migrator_uri(&src), &migrator_uri(&dst), "");
    let roles = check(&report, "roles (destination)");
    assert_eq!(roles.status, Status::Fail, "{report}");
    assert!(fix(roles).contains("readWriteAnyDatabase"));
}

fn assert_version_refused(
    source_version: &str,
    destination_version: &str,
    message: &str,
    fix_text: &str,
) {
    let (src, dst) = (source(source_version), destination(destination_version));
    let report = checks(&migrator_uri(&src), &migrator_uri(&dst), "");
    assert!(!report.passed(), "{report}");
    let version = check(&report, "version (source)");
    assert_eq!(version.status, Status::Fail, "{report}");
    assert!(version.message.contains(message), "{}", version.message);
    assert!(fix(version).contains(fix_text), "{}", fix(version));
}

#[test]
fn version_8_0_is_refused() {
    assert_version_refused(
        "8.0.0",
        "8.0.0",
        "8.0.0 is not supported",
        "6.0.17+ or 7.0.13+",
    );
}

#[test]
fn rapid_release_is_refused() {
    assert_version_refused(
        "7.1.0",
        "7.0.13",
        "rapid release (7.1)",
        "rapid releases are not supported",
    );
}

#[test]
fn patch_below_minimum_is_refused() {
    assert_version_refused(
        "7.0.12",
        "7.0.13",
        "7.0.12 is older than 7.0.13",
        "upgrade to 7.0.13 or later",
    );
}

#[test]
fn mismatched_releases_are_refused() {
    let (src, dst) = (source("6.0.17"), destination("7.0.13"));
    let report = checks(&migrator_uri(&src), &migrator_uri(&dst), "");
    assert_eq!(check(&report, "version (source)").status, Status::Pass);
    assert_eq!(check(&report, "version (destination)").status, Status::Pass);
    let matched = check(&report, "versions match");
    assert_eq!(matched.status, Status::Fail, "{report}");
    assert!(
        matched
            .message
            .contains("the source runs 6.0.17 and the destination 7.0.13"),
        "{}",
        matched.message
    );
    assert!(fix(matched).contains("so both run 7.0"), "{}", fix(matched));
}

#[test]
fn feature_compatibility_version_behind_the_binary_is_refused() {
    let (src, dst) = (source("7.0.13"), destination("7.0.13"));
    admin_command(
        &src,
        "admin",
        doc! {"setFeatureCompatibilityVersion": "6.0", "confirm": true},
    );
    let report = checks(&migrator_uri(&src), &migrator_uri(&dst), "");
    let version = check(&report, "version (source)");
    assert_eq!(version.status, Status::Fail, "{report}");
    assert!(
        version
            .message
            .contains("featureCompatibilityVersion 6.0, not 7.0"),
        "{}",
        version.message
    );
    assert!(
        fix(version).contains("setFeatureCompatibilityVersion: \"7.0\", confirm: true"),
        "{}",
        fix(version)
    );
    assert_eq!(check(&report, "version (destination)").status, Status::Pass);
}

#[test]
fn non_empty_destination_needs_a_confirmed_clear() {
    let (src, dst) = (source("7.0.13"), destination("7.0.13"));
    insert(&dst, "app", "users", doc! {"_id": 1});
    let (s, d) = (migrator_uri(&src), migrator_uri(&dst));

    let report = checks(&s, &d, "");
    let empty = check(&report, "destination empty");
    assert_eq!(empty.status, Status::Fail, "{report}");
    assert!(empty.message.contains("app"), "{}", empty.message);
    assert!(
        fix(empty).contains("destination.confirm_destination_name = \"dst\""),
        "{}",
        fix(empty)
    );

    let report = checks(
        &s,
        &d,
        "clear_destination = true\nconfirm_destination_name = \"dst\"",
    );
    assert!(report.passed(), "{report}");
    let empty = check(&report, "destination empty");
    assert_eq!(empty.status, Status::Warn);
    assert!(
        empty.message.contains("will be dropped"),
        "{}",
        empty.message
    );

    let report = checks(
        &s,
        &d,
        "clear_destination = true\nconfirm_destination_name = \"prod\"",
    );
    let empty = check(&report, "destination empty");
    assert_eq!(empty.status, Status::Fail, "{report}");
    assert!(
        empty
            .message
            .contains("is \"prod\" but the destination's replica set name is \"dst\""),
        "{}",
        empty.message
    );
    assert!(fix(empty).contains("confirm_destination_name = \"dst\""));
}

#[test]
fn lock_held_by_another_migration_is_refused() {
    let (src, dst) = (source("7.0.13"), destination("7.0.13"));
    let in_an_hour =
        bson::DateTime::from_millis(bson::DateTime::now().timestamp_millis() + 3_600_000);
    insert(
        &dst,
        LOCK_DB,
        LOCK_COLLECTION,
        doc! {"_id": "lock", "owner": "ferry@other-host", "expires_at": in_an_hour},
    );
    let report = checks(&migrator_uri(&src), &migrator_uri(&dst), "");
    let lock = check(&report, "migration lock");
    assert_eq!(lock.status, Status::Fail, "{report}");
    assert!(
        lock.message.contains("another ferry process (pid 0 on host an unknown host since an unknown time) holds the destination until"),
        "{}",
        lock.message
    );
    assert!(fix(lock).contains("ferry cancel"));
    // The lock database is Ferry's own: it does not make the destination non-empty.
    assert_eq!(check(&report, "destination empty").status, Status::Pass);
}

#[test]
fn expired_or_own_lock_is_accepted() {
    let (src, dst) = (source("7.0.13"), destination("7.0.13"));
    let an_hour_ago =
        bson::DateTime::from_millis(bson::DateTime::now().timestamp_millis() - 3_600_000);
    insert(
        &dst,
        LOCK_DB,
        LOCK_COLLECTION,
        doc! {"_id": "lock", "owner": "ferry@other-host", "expires_at": an_hour_ago},
    );
    let report = checks(&migrator_uri(&src), &migrator_uri(&dst), "");
    assert_eq!(
        check(&report, "migration lock").status,
        Status::Pass,
        "{report}"
    );

    let in_an_hour =
        bson::DateTime::from_millis(bson::DateTime::now().timestamp_millis() + 3_600_000);
    admin_command(
        &dst,
        LOCK_DB,
        doc! {"update": LOCK_COLLECTION, "updates": [{"q": {"_id": "lock"}, "u": {"$set": {"owner": OWNER, "expires_at": in_an_hour}}}]},
    );
    let report = checks(&migrator_uri(&src), &migrator_uri(&dst), "");
    let lock = check(&report, "migration lock");
    assert_eq!(lock.status, Status::Pass, "{report}");
    assert!(lock.message.contains("resumes"), "{}", lock.message);
}

#[test]
fn unreachable_destination_fails_with_a_clear_message() {
    let src = source("7.0.13");
    let report = checks(
        &migrator_uri(&src),
        "mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=2000",
        "",
    );
    let conn = check(&report, "connectivity (destination)");
    assert_eq!(conn.status, Status::Fail, "{report}");
    assert!(
        conn.message
            .contains("cannot reach the destination at mongodb://127.0.0.1:1"),
        "{}",
        conn.message
    );
    assert!(fix(conn).contains("destination.uri"));
    for name in [
        "authentication (destination)",
        "version (destination)",
        "destination empty",
        "migration lock",
    ] {
        let c = check(&report, name);
        assert_eq!(c.status, Status::Fail, "{name}");
        assert!(
            c.message.contains("the destination is unreachable"),
            "{name}: {}",
            c.message
        );
    }
    assert_eq!(check(&report, "connectivity (source)").status, Status::Pass);
}

fn ferry_validate(file: &ConfigFile) -> (i32, String, String) {
    ferry_validate_with(file, &[])
}

fn ferry_validate_with(file: &ConfigFile, extra: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .arg("validate")
        .args(extra)
        .arg("--config")
        .arg(&file.0)
        .output()
        .expect("run ferry");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    println!("{stdout}{stderr}");
    (out.status.code().unwrap_or(-1), stdout, stderr)
}

#[test]
fn ferry_validate_binary_exit_codes_and_lines() {
    let (src, dst) = (source("7.0.13"), destination("7.0.13"));

    let good = ConfigFile::new(&migrator_uri(&src), &migrator_uri(&dst), "");
    let (code, stdout, _) = ferry_validate(&good);
    assert_eq!(code, 0);
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("PASS  connectivity (source)")),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("PASS  versions match")),
        "{stdout}"
    );
    assert!(!stdout.contains("FAIL"));

    let bad = ConfigFile::new(
        &src.uri_with_user(MIGRATOR.0, "wrong"),
        &migrator_uri(&dst),
        "",
    );
    let (code, stdout, _) = ferry_validate(&bad);
    assert_eq!(code, 5, "refused by validation");
    let lines: Vec<&str> = stdout.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.starts_with("FAIL  authentication (source)"))
        .unwrap_or_else(|| panic!("no failed authentication line in\n{stdout}"));
    assert!(lines[at].contains("check source.uri credentials"));
    assert!(lines[at + 1].starts_with("      fix: "), "{stdout}");
    assert!(
        !stdout.contains("wrong"),
        "the password leaked into the output:\n{stdout}"
    );

    let invalid = ConfigFile::new("", "http://nowhere", "colour = \"blue\"");
    let (code, _, stderr) = ferry_validate(&invalid);
    assert_eq!(code, 2, "bad config");
    assert!(stderr.contains("source.uri"), "{stderr}");
    assert!(stderr.contains("destination.colour"), "{stderr}");

    // For automation: one JSON document, one object per check.
    let (code, stdout, _) = ferry_validate_with(&bad, &["--json"]);
    assert_eq!(code, 5);
    let doc: serde_json::Value = serde_json::from_str(stdout.trim()).expect("JSON output");
    assert_eq!(doc["passed"], false);
    let checks = doc["checks"].as_array().expect("checks");
    let auth = checks
        .iter()
        .find(|c| c["name"] == "authentication" && c["side"] == "source")
        .unwrap_or_else(|| panic!("no authentication check for the source in {doc}"));
    assert_eq!(auth["status"], "fail");
    assert!(auth["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert!(auth["fix"].as_str().is_some_and(|f| !f.is_empty()));
    assert!(
        checks.iter().any(|c| c["side"].is_null()),
        "side-less checks"
    );
    let (code, stdout, _) = ferry_validate_with(&invalid, &["--json"]);
    assert_eq!(code, 2);
    let doc: serde_json::Value = serde_json::from_str(stdout.trim()).expect("JSON output");
    assert!(doc["config_errors"].as_array().is_some_and(|e| e
        .iter()
        .any(|l| l.as_str().unwrap_or("").contains("source.uri"))));
}

/// The same checks against real clusters, when the environment names them.
#[test]
fn real_clusters_from_environment() {
    let (Ok(source_uri), Ok(destination_uri)) = (
        std::env::var("FERRY_TEST_SOURCE_URI"),
        std::env::var("FERRY_TEST_DESTINATION_URI"),
    ) else {
        println!("skipped: set FERRY_TEST_SOURCE_URI and FERRY_TEST_DESTINATION_URI");
        return;
    };
    let report = checks(&source_uri, &destination_uri, "");
    for name in [
        "connectivity (source)",
        "connectivity (destination)",
        "authentication (source)",
        "authentication (destination)",
    ] {
        assert_ne!(
            check(&report, name).status,
            Status::Fail,
            "{name}:\n{report}"
        );
    }
    for name in [
        "topology (source)",
        "version (source)",
        "roles (source)",
        "destination empty",
        "migration lock",
    ] {
        check(&report, name);
    }
}
