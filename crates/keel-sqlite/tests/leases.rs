//! Leases on SQLite: a renewal that finds the database busy keeps the lease until it
//! really expires, and a lease dropped without `release` is free again at once.

mod common;

use std::time::Duration;

use common::{fresh_url, log_with_busy_timeout};
use keel_sqlite::SqliteEventLog;
use keel_store::EventLog;
use keel_testkit::util::{PATIENCE, eventually_async, unique};
use sqlx::{Connection as _, SqliteConnection};

/// Takes the database's write lock on a connection of its own (as another process
/// writing a long transaction would); it is held until the connection rolls back.
async fn lock(url: &str) -> SqliteConnection {
    let mut conn = SqliteConnection::connect(url).await.expect("connect");
    sqlx::query("BEGIN IMMEDIATE").execute(&mut conn).await.expect("take the write lock");
    conn
}

async fn unlock(mut conn: SqliteConnection) {
    sqlx::query("ROLLBACK").execute(&mut conn).await.expect("give the write lock back");
    let _ = conn.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_that_finds_the_database_busy_keeps_the_lease() {
    let url = fresh_url();
    // Each renewal attempt gives up after 100 ms; the lease lasts 15 s.
    let log = log_with_busy_timeout(&url, Duration::from_millis(100)).await;
    let name = unique("lease");
    let mut lease = log.try_lease(&name).await.expect("ask").expect("free");

    let locked = lock(&url).await;
    for attempt in 1..=3 {
        assert!(lease.renew().await, "still held at attempt {attempt} while the database is busy");
    }
    unlock(locked).await;
    assert!(lease.renew().await, "renewed once the database is free");
    assert!(log.try_lease(&name).await.expect("ask").is_none(), "nobody else got it meanwhile");
    lease.release().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_that_stays_unrenewable_is_lost_when_it_expires() {
    let url = fresh_url();
    let log = log_with_busy_timeout(&url, Duration::from_millis(50))
        .await
        .with_lease_ttl(Duration::from_secs(2));
    let name = unique("lease");
    let mut lease = log.try_lease(&name).await.expect("ask").expect("free");
    let locked = lock(&url).await;
    assert!(lease.renew().await, "held while the lease lasts");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while lease.renew().await {
        assert!(tokio::time::Instant::now() < deadline, "the lease never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    unlock(locked).await;
    assert!(!lease.renew().await, "a lost lease stays lost");
    eventually_async("another holder to take the expired lease", || async {
        log.try_lease(&name).await.expect("ask").is_some()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_lease_is_free_again_at_once() {
    // A lease that would otherwise stall a successor for ten minutes.
    let log = SqliteEventLog::connect(&fresh_url())
        .await
        .expect("open")
        .with_lease_ttl(Duration::from_secs(600));
    let name = unique("lease");
    let lease = log.try_lease(&name).await.expect("ask").expect("free");
    drop(lease);
    eventually_async("the dropped lease to be free", || async {
        match log.try_lease(&name).await.expect("ask") {
            Some(lease) => {
                lease.release().await;
                true
            }
            None => false,
        }
    })
    .await;
}
