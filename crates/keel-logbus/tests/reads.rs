//! How often a group's feeder reads the log: once it has read to the end of its topic,
//! a settle or a take (which only make room) does not send it to the log again; an
//! append or its poll does. Counted by `keel_logbus_reads_total`, with a recorder of
//! this test binary's own.
#![cfg(all(feature = "sqlite", feature = "postgres"))]
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use keel_core::{CloudEvent, Publisher, Subscriber, SubscriptionSpec};
use keel_logbus::BusStore;

use common::{bus_over, counter, next, numbered, recorder};

/// Fewer than a group reads ahead (its batch size, 256): one page holds them all.
const EVENTS: u64 = 100;

/// `keel_logbus_reads_total` of `topic`'s group `group`.
fn reads(topic: &str, group: &str) -> u64 {
    counter(
        "keel_logbus_reads_total",
        &[&format!("topic=\"{topic}\""), &format!("group=\"{group}\"")],
    )
}

/// Every event published in one append, then taken and acknowledged one at a time,
/// a few milliseconds apart (as a handler doing some work would): 200 takes and
/// settles, each of which wakes the feeder on its own.
async fn settles_do_not_send_a_caught_up_feeder_to_the_log<L: BusStore>(log: Arc<L>) {
    recorder();
    let bus = bus_over(log).await;
    let topic = format!("reads-{}", uuid::Uuid::now_v7().simple());
    let mut sub = bus.subscribe(SubscriptionSpec::new(&topic, "g")).await.unwrap();
    let events: Vec<CloudEvent> = (0..EVENTS).map(numbered).collect();
    bus.publish(&topic, &events).await.unwrap();
    for _ in 0..EVENTS {
        let delivery = next(&mut sub).await;
        delivery.ack().await.unwrap();
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let reads = reads(&topic, "g");
    // The page with every event, the look before the append, second looks after the
    // append's notification (PostgreSQL), and a read per poll (200 ms in the tests'
    // options) while the test runs. Reading per take or settle would be a hundred or more.
    assert!((1..=40).contains(&reads), "{reads} reads of the log for {EVENTS} events");
    sub.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_settles_do_not_send_a_caught_up_feeder_to_the_log() {
    let db = common::SqliteDb::new();
    settles_do_not_send_a_caught_up_feeder_to_the_log(db.log().await).await;
}

#[cfg(feature = "integration")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_settles_do_not_send_a_caught_up_feeder_to_the_log() {
    let url = common::fresh_database().await;
    settles_do_not_send_a_caught_up_feeder_to_the_log(common::pg_log(&url).await).await;
}
