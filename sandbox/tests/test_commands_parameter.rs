//! The sandbox runs the test-only commands (configureFailPoint), and says so as a mongod
//! started with `--setParameter enableTestCommands=1` does.

mod common;

use common::*;
use mongodb::bson::doc;

/// Pins: `getParameter: "*"` lacked `enableTestCommands`, so pymongo's test suite failed
/// in its setup of every test (KeyError) and tools could not tell that fail points are
/// offered.
#[tokio::test]
async fn enable_test_commands_is_reported() {
    let sb = start();
    let client = client(&sb).await;
    let all = run(&client, "admin", doc! {"getParameter": "*"})
        .await
        .unwrap();
    assert_eq!(all.get_bool("enableTestCommands"), Ok(true), "{all}");
    let one = run(
        &client,
        "admin",
        doc! {"getParameter": 1, "enableTestCommands": 1},
    )
    .await
    .unwrap();
    assert_eq!(one.get_bool("enableTestCommands"), Ok(true));
    let opts = run(&client, "admin", doc! {"getCmdLineOpts": 1})
        .await
        .unwrap();
    assert_eq!(
        opts.get_document("parsed")
            .unwrap()
            .get_document("setParameter")
            .unwrap()
            .get_str("enableTestCommands"),
        Ok("1")
    );
}
