//! Text index definitions: stored and listed in the server's form, so a definition copied
//! from a real server's listIndexes is recreated identically.

mod common;

use common::*;
use mongodb::bson::{doc, Bson, Document};

async fn index(client: &mongodb::Client, name: &str) -> Document {
    let reply = run(client, "t", doc! {"listIndexes": "c"}).await.unwrap();
    reply
        .get_document("cursor")
        .unwrap()
        .get_array("firstBatch")
        .unwrap()
        .iter()
        .filter_map(Bson::as_document)
        .find(|i| i.get_str("name") == Ok(name))
        .cloned()
        .unwrap_or_else(|| panic!("no index {name} in {reply}"))
}

/// Pins: `{t: "text"}` was stored and listed as given, without `weights` and the text
/// defaults, and with the user's key instead of `{_fts: "text", _ftsx: 1}` (pymongo's
/// test_index_text); a migration copying a real server's text index (listed in that
/// form) to the sandbox, or the other way, then saw two different definitions.
#[tokio::test]
async fn text_index_is_stored_in_the_server_form() {
    let sb = start();
    let client = client(&sb).await;
    run(
        &client,
        "t",
        doc! {"createIndexes": "c", "indexes": [
            {"key": {"a": 1, "title": "text", "body": "text"}, "name": "a_1_title_text_body_text", "weights": {"body": 5}},
        ]},
    )
    .await
    .unwrap();
    let listed = index(&client, "a_1_title_text_body_text").await;
    assert_eq!(
        listed.get_document("key").unwrap(),
        &doc! {"a": 1, "_fts": "text", "_ftsx": 1}
    );
    assert_eq!(
        listed.get_document("weights").unwrap(),
        &doc! {"body": 5, "title": 1}
    );
    assert_eq!(listed.get_str("default_language"), Ok("english"));
    assert_eq!(listed.get_str("language_override"), Ok("language"));
    assert_eq!(listed.get_i32("textIndexVersion"), Ok(3));

    // The listed definition, sent back as a migration's createIndexes does, is the same
    // index (no second one, no conflict), and lists identically on another collection.
    let mut copy = listed.clone();
    copy.remove("v");
    let reply = run(
        &client,
        "t",
        doc! {"createIndexes": "c", "indexes": [copy.clone()]},
    )
    .await
    .unwrap();
    assert_eq!(reply.get_str("note"), Ok("all indexes already exist"));
    run(&client, "t", doc! {"createIndexes": "d", "indexes": [copy]})
        .await
        .unwrap();
    let other = run(&client, "t", doc! {"listIndexes": "d"}).await.unwrap();
    let other = other
        .get_document("cursor")
        .unwrap()
        .get_array("firstBatch")
        .unwrap()[1]
        .as_document()
        .unwrap()
        .clone();
    assert_eq!(other, listed);
}
