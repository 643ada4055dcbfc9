//! Transactions on SQLite: a caller dropped at any point of its `begin` (a timeout, a
//! `select!`, a stopped task) leaves no transaction open behind it, so no later writer
//! waits on a write lock nobody holds any more; the writers of one handle queue for
//! its write connection rather than meeting SQLite's busy handler; and requests'
//! transactions wait behind work in flight.
//!
//! sqlx's `begin_with` is not cancel-safe: dropped after SQLite ran the `BEGIN`
//! statement but before the `Transaction` existed, it returns the connection to the
//! pool inside a transaction, with the database's write lock held for good.

mod common;

use std::future::Future;
use std::time::Duration;

use common::{fresh_url, log_with_busy_timeout};
use keel_bus::layer::Inbox;
use keel_core::{CloudEvent, ExpectedVersion, StreamId};
use keel_sqlite::SqliteInbox;
use keel_store::{EventLog, SqlEventLog};
use keel_testkit::queueing;
use keel_testkit::util::unique;

/// Polls `future` up to `polls` times, yielding to the runtime between polls, then
/// drops it: the caller gave up at whatever point it had reached.
async fn abandon_after<F: Future>(future: F, polls: usize) {
    let mut future = std::pin::pin!(future);
    for _ in 0..polls {
        if futures::poll!(future.as_mut()).is_ready() {
            return;
        }
        tokio::task::yield_now().await;
    }
}

fn event() -> CloudEvent {
    CloudEvent::builder("order.placed", "/tests")
        .data("application/json", "{}")
        .build()
        .expect("valid event")
}

/// Rounds enough to abandon a `begin` at each of its await points many times over.
const ROUNDS: usize = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_transaction_abandoned_while_beginning_leaves_the_database_writable() {
    let url = fresh_url();
    // A leaked write lock shows as "database is locked" after this long.
    let log = log_with_busy_timeout(&url, Duration::from_millis(500)).await;
    let stream = StreamId::new(unique("order")).expect("valid");
    for round in 0..ROUNDS {
        abandon_after(SqlEventLog::begin(&log), round % 30 + 1).await;
        abandon_after(log.append(&stream, ExpectedVersion::Any, &[event()]), round % 7 + 1).await;
        log.append(&stream, ExpectedVersion::Any, &[event()])
            .await
            .unwrap_or_else(|error| panic!("round {round}: the next append failed: {error}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inbox_transaction_abandoned_while_beginning_leaves_the_database_writable() {
    let url = fresh_url();
    let log = log_with_busy_timeout(&url, Duration::from_millis(500)).await;
    let inbox = SqliteInbox::new(SqlEventLog::pool(&log).clone());
    let group = unique("group");
    for round in 0..ROUNDS {
        abandon_after(inbox.begin(&group, &format!("abandoned-{round}")), round % 30 + 1).await;
        let tx = inbox
            .begin(&group, &format!("kept-{round}"))
            .await
            .unwrap_or_else(|error| panic!("round {round}: the next begin failed: {error}"))
            .expect("a new event id");
        inbox.commit(tx).await.unwrap_or_else(|error| panic!("round {round}: commit: {error}"));
    }
}

/// Writers of one handle queue for its write connection instead of meeting SQLite's
/// busy handler: with a busy timeout far shorter than the queue, every append of many
/// concurrent writers still goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_of_one_handle_queue_instead_of_timing_out() {
    let url = fresh_url();
    let log = std::sync::Arc::new(log_with_busy_timeout(&url, Duration::from_millis(20)).await);
    let inbox = SqliteInbox::new(log.write_pool().clone());
    let writers: Vec<_> = (0..16)
        .map(|writer| {
            let (log, inbox) = (log.clone(), inbox.clone());
            tokio::spawn(async move {
                let stream = StreamId::new(unique("order")).expect("valid");
                for n in 0..25 {
                    log.append(&stream, ExpectedVersion::Any, &[event()])
                        .await
                        .unwrap_or_else(|error| panic!("writer {writer}, append {n}: {error}"));
                    let tx = inbox
                        .begin("g", &format!("{writer}-{n}"))
                        .await
                        .unwrap_or_else(|error| panic!("writer {writer}, inbox {n}: {error}"))
                        .expect("a new event id");
                    inbox.commit(tx).await.expect("commit");
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.expect("a writer");
    }
    assert_eq!(log.head().await.expect("head").0, 16 * 25);
}

/// Requests' transactions share one place in the writer's queue: with six requests
/// already waiting for the writer, a consumer's inbox transaction that arrives after
/// them waits for at most one of them, not for all six (first come, first served would
/// put it last, and the consumers would fall behind the clients).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_in_flight_waits_behind_one_request_at_most() {
    let log = std::sync::Arc::new(common::fresh_log().await);
    let inbox = SqliteInbox::new(log.write_pool().clone());
    let held = SqlEventLog::begin(log.as_ref()).await.expect("the writer, held");
    queueing::work_in_flight_waits_behind_one_request_at_most(
        || {
            let log = log.clone();
            async move { log.begin_request().await }
        },
        inbox,
        async move { held.commit().await.expect("commit") },
    )
    .await;
}
