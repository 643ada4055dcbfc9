//! A consumer group's lease on SQLite: a renewal that finds the database busy does not
//! deactivate the group (which would void and redeliver everything in flight).
// The tests open both stores (tests/common), behind the crate's store features.
#![cfg(all(feature = "sqlite", feature = "postgres"))]
#![allow(clippy::unwrap_used)]

mod common;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use keel_core::{Delivery, Publisher, Subscriber, Subscription, SubscriptionSpec};
use keel_logbus::LogBus;
use keel_sqlite::SqliteEventLog;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{Connection as _, SqliteConnection};

use common::{SqliteDb, numbered};

const PATIENCE: Duration = Duration::from_secs(60);

async fn next(sub: &mut Box<dyn Subscription>) -> Delivery {
    tokio::time::timeout(PATIENCE, sub.next()).await.expect("a delivery in time").unwrap().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_database_during_a_lease_renewal_redelivers_nothing() {
    let db = SqliteDb::new();
    // Statements give up on a locked database after 100 ms; the lease lasts 15 s.
    let options = SqliteConnectOptions::from_str(&db.url())
        .unwrap()
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_millis(100));
    let pool = SqlitePoolOptions::new().max_connections(4).connect_with(options).await.unwrap();
    let log = Arc::new(SqliteEventLog::from_pool(pool).await.unwrap());
    let mut bus_options = common::options();
    bus_options.lease_renew = Duration::from_millis(50);
    let bus = LogBus::open(log, bus_options).await.unwrap();

    let mut sub = bus.subscribe(SubscriptionSpec::new("busy", "g").prefetch(10)).await.unwrap();
    let events: Vec<_> = (0..3).map(numbered).collect();
    bus.publish("busy", &events).await.unwrap();
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(next(&mut sub).await);
    }

    // Another writer holds the write lock for a second: renewals every 50 ms find the
    // database busy, well within the lease.
    let mut locker = SqliteConnection::connect(&db.url()).await.unwrap();
    sqlx::query("BEGIN IMMEDIATE").execute(&mut locker).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    sqlx::query("ROLLBACK").execute(&mut locker).await.unwrap();
    let _ = locker.close().await;

    for delivery in held {
        delivery.ack().await.expect("the group is still active: its deliveries settle");
    }
    let marker = numbered(99);
    bus.publish("busy", std::slice::from_ref(&marker)).await.unwrap();
    let delivery = next(&mut sub).await;
    assert_eq!(
        delivery.event().unwrap().id(),
        marker.id(),
        "the next delivery is the new event, nothing redelivered"
    );
    assert_eq!(delivery.attempt(), 1);
    delivery.ack().await.unwrap();
}
