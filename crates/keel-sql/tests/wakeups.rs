//! A committed append wakes the followers of its topics, whole-log subscribers, and
//! nobody else; on PostgreSQL, in other processes too (the `NOTIFY` names the topics).
//! SQLite on every run, PostgreSQL with the `integration` feature.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use keel_core::{CloudEvent, ExpectedVersion, StreamId};
use keel_sql::{Db, args};
use tokio::sync::watch;

/// Long enough for a wake-up that would come (a notification from the server) to come.
const QUIET: Duration = Duration::from_millis(300);
const PATIENCE: Duration = Duration::from_secs(30);

async fn sqlite() -> Db {
    let path = std::env::temp_dir().join(format!("keel-sql-wakeups-{}.db", uuid::Uuid::now_v7()));
    Db::connect(&format!("sqlite://{}", path.display())).await.unwrap()
}

fn placed() -> CloudEvent {
    CloudEvent::builder("order.placed", "/test").build().unwrap()
}

async fn woken(changes: &mut watch::Receiver<u64>) -> bool {
    tokio::time::timeout(QUIET, changes.changed()).await.is_ok()
}

/// `writer` and `reader` are the same log, or two processes' handles on one database.
async fn appends_wake_their_topics_only(writer: Db, reader: Db) {
    let log = reader.log();
    let mut all = log.changes();
    let mut orders = log.topic_changes("order");
    let mut stock = log.topic_changes("stock");
    for receiver in [&mut all, &mut orders, &mut stock] {
        receiver.borrow_and_update();
    }

    // A transaction without appends wakes nobody.
    let mut tx = writer.begin().await.unwrap();
    tx.execute("CREATE TABLE notes (id TEXT PRIMARY KEY)", args![]).await.unwrap();
    tx.commit().await.unwrap();
    assert!(!woken(&mut all).await, "nothing appended: no wake-up");

    let mut tx = writer.begin().await.unwrap();
    tx.execute("INSERT INTO notes (id) VALUES ($1)", args!["n-1"]).await.unwrap();
    tx.append(&StreamId::new("order-1").unwrap(), ExpectedVersion::NoStream, &[placed()])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    tokio::time::timeout(PATIENCE, orders.changed()).await.unwrap().unwrap();
    tokio::time::timeout(PATIENCE, all.changed()).await.unwrap().unwrap();
    assert!(!woken(&mut stock).await, "an append to `order` does not wake `stock`");

    // A standalone append knows its topic too.
    writer
        .log()
        .append(&StreamId::new("stock-sku-1").unwrap(), ExpectedVersion::NoStream, &[placed()])
        .await
        .unwrap();
    tokio::time::timeout(PATIENCE, stock.changed()).await.unwrap().unwrap();
    orders.borrow_and_update();
    assert!(!woken(&mut orders).await, "an append to `stock` does not wake `order`");
}

#[tokio::test]
async fn sqlite_appends_wake_their_topics_only() {
    let db = sqlite().await;
    appends_wake_their_topics_only(db.clone(), db).await;
}

#[cfg(feature = "integration")]
#[tokio::test]
async fn postgres_appends_wake_their_topics_only_in_this_process() {
    let db = Db::connect(&keel_testkit::postgres::fresh_database("wakeups").await).await.unwrap();
    appends_wake_their_topics_only(db.clone(), db).await;
}

#[cfg(feature = "integration")]
#[tokio::test]
async fn postgres_appends_wake_their_topics_only_in_other_processes() {
    let url = keel_testkit::postgres::fresh_database("wakeups").await;
    let writer = Db::connect(&url).await.unwrap();
    let reader = Db::connect(&url).await.unwrap();
    appends_wake_their_topics_only(writer, reader).await;
}
