//! A router's own `failCommand` fail point, as a real mongos started with test commands
//! enabled has: configured on the router, it fails the named commands the router
//! receives, including those it answers itself (`balancerStart`).

mod common;

use common::{client_for, code, run};
use ferry_sandbox::{ShardedCluster, ShardedOptions};
use mongodb::bson::doc;

/// Pins: `configureFailPoint` sent to a router went to the config server, so a command
/// the router answers itself (`balancerStart`) could not be made to fail; tests of a
/// client's handling of such a failure had nothing to run against.
#[tokio::test]
async fn a_router_fail_point_fails_the_named_command_then_turns_off() {
    let cluster = ShardedCluster::start(ShardedOptions {
        shards: 1,
        ..Default::default()
    })
    .expect("cluster starts");
    let router = client_for(&cluster.router_uri()).await;
    run(&router, "admin", doc! {"balancerStop": 1})
        .await
        .expect("balancerStop");
    run(
        &router,
        "admin",
        doc! {
            "configureFailPoint": "failCommand",
            "mode": {"times": 1},
            "data": {"failCommands": ["balancerStart"], "errorCode": 13},
        },
    )
    .await
    .expect("configureFailPoint on the router");
    let failed = run(&router, "admin", doc! {"balancerStart": 1})
        .await
        .expect_err("the fail point fails balancerStart once");
    assert_eq!(code(&failed), 13);
    let status = run(&router, "admin", doc! {"balancerStatus": 1})
        .await
        .expect("balancerStatus is not named by the fail point");
    assert_eq!(status.get_str("mode"), Ok("off"), "the failed start ran");
    run(&router, "admin", doc! {"balancerStart": 1})
        .await
        .expect("balancerStart once the fail point has fired");
    let status = run(&router, "admin", doc! {"balancerStatus": 1})
        .await
        .expect("balancerStatus");
    assert_eq!(status.get_str("mode"), Ok("full"));
}
