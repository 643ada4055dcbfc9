//! The groups of a bus store their progress together: the feeders of every group on
//! a topic are woken by the same append, and the saves queued while one transaction
//! runs commit in the next (`keel_logbus_progress_saves_total` against
//! `keel_logbus_progress_writes_total`, with a recorder of this test binary's own).
#![cfg(all(feature = "sqlite", feature = "postgres"))]
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use keel_core::{Publisher, Subscriber, SubscriptionSpec};
use keel_logbus::BusStore;

use common::{bus_over, counter, next, numbered, recorder};

const GROUPS: usize = 8;
const EVENTS: u64 = 40;

/// Eight groups on one topic, each event published on its own and taken by every
/// group before the next: every group's feeder saves a read mark (and its checkpoint)
/// for every event, at the same moments.
async fn groups_woken_together_commit_together<L: BusStore>(log: Arc<L>) {
    recorder();
    let bus = bus_over(log).await;
    let topic = format!("commit-{}", uuid::Uuid::now_v7().simple());
    let mut subs = Vec::new();
    for group in 0..GROUPS {
        subs.push(bus.subscribe(SubscriptionSpec::new(&topic, format!("g{group}"))).await.unwrap());
    }
    let (saves, writes) = (
        counter("keel_logbus_progress_saves_total", &[]),
        counter("keel_logbus_progress_writes_total", &[]),
    );
    for n in 0..EVENTS {
        bus.publish(&topic, &[numbered(n)]).await.unwrap();
        for sub in &mut subs {
            let delivery = next(sub).await;
            delivery.ack().await.unwrap();
        }
    }
    let saves = counter("keel_logbus_progress_saves_total", &[]) - saves;
    let writes = counter("keel_logbus_progress_writes_total", &[]) - writes;
    eprintln!("{saves} saves in {writes} transactions");
    assert!(saves >= EVENTS * GROUPS as u64, "{saves} saves: a read mark per group and event");
    assert!(writes * 2 <= saves, "{saves} saves took {writes} transactions");
    for sub in subs {
        sub.close().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_groups_woken_together_commit_together() {
    let db = common::SqliteDb::new();
    groups_woken_together_commit_together(db.log().await).await;
}

#[cfg(feature = "integration")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_groups_woken_together_commit_together() {
    let url = common::fresh_database().await;
    groups_woken_together_commit_together(common::pg_log(&url).await).await;
}
