//! `[sharding]`: entries from a JSON file or inline TOML, ordered keys, and every
//! mistake reported under its dotted key.

use std::path::PathBuf;

use bson::{doc, Bson};

use super::*;

const BASE: &str = "[source]\nuri = \"mongodb://src:27017/?replicaSet=src\"\n[destination]\nuri = \"mongodb://dst:27017/\"\n";

fn parse(extra: &str) -> Result<Config, ConfigError> {
    from_toml_str(&format!("{BASE}{extra}"), &|_| None)
}

fn issues(extra: &str) -> Vec<ConfigIssue> {
    match parse(extra) {
        Ok(c) => panic!("expected errors, got {:?}", c.sharding),
        Err(e) => e.issues().to_vec(),
    }
}

fn has(issues: &[ConfigIssue], key: &str, needle: &str) {
    assert!(
        issues
            .iter()
            .any(|i| i.key == key && i.message.contains(needle)),
        "no issue for {key} containing {needle:?} in:\n{}",
        issues
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// A fresh directory for one test's files.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ferry-sharding-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// Writes a config file naming `sharding.json` next to it, and that JSON file.
fn load_with_file(name: &str, json: &str) -> Result<Config, ConfigError> {
    let dir = scratch(name);
    std::fs::write(dir.join("sharding.json"), json).expect("write entries file");
    let path = dir.join("ferry.toml");
    std::fs::write(
        &path,
        format!("{BASE}[sharding]\nentries_file = \"sharding.json\"\n"),
    )
    .expect("write config");
    load(&path)
}

#[test]
fn defaults_create_supporting_indexes_and_have_no_entries() {
    let config = parse("").expect("valid");
    assert!(config.sharding.create_supporting_indexes);
    assert!(config.sharding.resolved.is_empty());
}

#[test]
fn inline_entries_keep_the_key_order() {
    let config = parse(
        "[sharding]\ncreate_supporting_indexes = false\n[[sharding.entries]]\ndatabase = \"accounts\"\ncollection = \"us_east\"\nkey = [{region = 1}, {location = 1}]\n[[sharding.entries]]\ndatabase = \"accounts\"\ncollection = \"events\"\nkey = [{user = \"hashed\"}]\n",
    )
    .expect("valid");
    assert!(!config.sharding.create_supporting_indexes);
    let entry = config.sharding.entry("accounts", "us_east").expect("entry");
    let key = entry.key.to_document();
    assert_eq!(
        key.keys().collect::<Vec<_>>(),
        ["region", "location"],
        "the key's fields stay in the order written"
    );
    assert_eq!(key, doc! {"region": 1, "location": 1});
    let hashed = config.sharding.entry("accounts", "events").expect("entry");
    assert_eq!(
        hashed.key.to_document().get("user"),
        Some(&Bson::String("hashed".into()))
    );
    assert!(hashed.key.is_hashed());
}

#[test]
fn entries_file_is_read_relative_to_the_config_file() {
    let config = load_with_file(
        "relative",
        r#"{"shardingEntries": [{"database": "accounts", "collection": "us_east", "shardCollection": {"key": [{"location": 1}, {"region": 1}]}}]}"#,
    )
    .expect("valid");
    let entry = config.sharding.entry("accounts", "us_east").expect("entry");
    assert_eq!(entry.key.to_document(), doc! {"location": 1, "region": 1});
    assert_eq!(
        entry.key.to_document().keys().collect::<Vec<_>>(),
        ["location", "region"]
    );
}

#[test]
fn bad_key_values_are_named_by_their_dotted_key() {
    let got = issues(
        "[[sharding.entries]]\ndatabase = \"a\"\ncollection = \"b\"\nkey = [{x = -1}, {y = \"text\"}, {z = 1, w = 1}]\n",
    );
    has(&got, "sharding.entries[0].key[0]", "descending");
    has(
        &got,
        "sharding.entries[0].key[1]",
        "1 (ranged) or \"hashed\"",
    );
    has(&got, "sharding.entries[0].key[2]", "one-field table");
    let got = issues(
        "[[sharding.entries]]\ndatabase = \"a\"\ncollection = \"b\"\nkey = [{x = \"hashed\"}, {y = \"hashed\"}]\n",
    );
    has(&got, "sharding.entries[0].key", "only one \"hashed\" field");
    let got = issues("[[sharding.entries]]\ndatabase = \"a\"\ncollection = \"b\"\nkey = []\n");
    has(&got, "sharding.entries[0].key", "empty");
    let got = issues(
        "[[sharding.entries]]\ndatabase = \"config\"\ncollection = \"system.x\"\nkey = [{x = 1}]\n",
    );
    has(&got, "sharding.entries[0].database", "cannot be sharded");
    has(&got, "sharding.entries[0].collection", "system collection");
}

#[test]
fn duplicate_and_filtered_out_entries_are_errors() {
    let entry = "[[sharding.entries]]\ndatabase = \"a\"\ncollection = \"b\"\nkey = [{x = 1}]\n";
    let got = issues(&format!("{entry}{entry}"));
    has(&got, "sharding.entries[1]", "listed twice");
    let got = issues(&format!("[filter]\nexclude_namespaces = [\"a\"]\n{entry}"));
    has(&got, "sharding.entries[0]", "not migrated");
}

#[test]
fn file_and_inline_entries_together_are_refused() {
    let got = issues(
        "[sharding]\nentries_file = \"sharding.json\"\n[[sharding.entries]]\ndatabase = \"a\"\ncollection = \"b\"\nkey = [{x = 1}]\n",
    );
    has(&got, "sharding.entries_file", "keep one of them");
}

#[test]
fn entries_file_problems_say_where() {
    let got = issues("[sharding]\nentries_file = \"/nonexistent/ferry/sharding.json\"\n");
    has(
        &got,
        "sharding.entries_file",
        "file not found: /nonexistent/ferry/sharding.json",
    );

    let err = load_with_file("badjson", "{\"shardingEntries\": [\n  {\"database\": }\n]}")
        .expect_err("bad JSON is refused");
    has(err.issues(), "sharding.entries_file", "line 2 column");

    let err = load_with_file(
        "badkey",
        r#"{"shardingEntries": [{"database": "a", "collection": "b", "shardCollection": {"key": {"x": 1, "y": 1}}}]}"#,
    )
    .expect_err("an object key is refused");
    has(
        err.issues(),
        "sharding.entries_file",
        "shardingEntries[0].shardCollection.key",
    );

    let err = load_with_file(
        "badvalue",
        r#"{"shardingEntries": [{"database": "a", "collection": "b", "shardCollection": {"key": [{"x": -1}]}}]}"#,
    )
    .expect_err("a descending key is refused");
    has(
        err.issues(),
        "sharding.entries_file",
        "shardingEntries[0].shardCollection.key[0]",
    );

    let err = load_with_file("nolist", r#"{"entries": []}"#).expect_err("no shardingEntries");
    has(
        err.issues(),
        "sharding.entries_file",
        "no \"shardingEntries\" list",
    );
}
