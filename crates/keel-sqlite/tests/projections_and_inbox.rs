//! Projections (read model and checkpoint in one transaction, rebuild by replay, one
//! active runner) and the transactional inbox, on SQLite.

mod common;

/// Deletes the lease's row, as another process does that takes the lease after the
/// holder stalled past its expiry and then gives it up.
async fn break_lease(log: &keel_sqlite::SqliteEventLog, name: &str) {
    let broken = sqlx::query("DELETE FROM keel_leases WHERE name = ?")
        .bind(name)
        .execute(common::pool(log))
        .await
        .expect("delete the lease");
    assert_eq!(broken.rows_affected(), 1, "the lease was held");
}

keel_testkit::projection_conformance! {
    db: sqlx::Sqlite,
    log: keel_sqlite::SqliteEventLog,
    // A short lease, so that a runner which does not renew it loses it within the test.
    fresh_log: common::fresh_log().await.with_lease_ttl(std::time::Duration::from_secs(2)),
    inbox: keel_sqlite::SqliteInbox,
    upsert: "INSERT INTO {counts} AS c (stream_id, events, last_version) VALUES (?, 1, ?)
             ON CONFLICT (stream_id) DO UPDATE
             SET events = c.events + 1, last_version = excluded.last_version",
    insert_effect: "INSERT INTO effects (event_id) VALUES (?)",
    break_lease: break_lease,
}
