//! `ferry demo` as a user runs it, with small data sets: each shape of source and
//! destination ends with verification passed and every seeded collection copied.

use ferry::demo::{run_demo, DemoArgs, DemoSizes};

fn small() -> DemoSizes {
    DemoSizes {
        customers: 1_000,
        orders: 2_000,
        products: 500,
        events: 1_500,
        sessions: 300,
    }
}

async fn demo(source_shards: usize, destination_shards: usize) {
    let report = run_demo(
        small(),
        DemoArgs {
            source_shards,
            destination_shards,
        },
    )
    .await
    .expect("the demo completes");
    assert!(
        report.verification.passed,
        "verification failed: {:?}",
        report.verification
    );
    assert_eq!(report.collections_copied, 5, "{report:?}");
    assert!(report.documents_copied >= 5_300, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_set_to_replica_set() {
    demo(0, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_shards_to_three_shards() {
    demo(2, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_set_to_two_shards_with_sharding_entries() {
    demo(0, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_shards_to_replica_set() {
    demo(2, 0).await;
}
