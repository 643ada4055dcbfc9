//! Projections (read model and checkpoint in one transaction, rebuild by replay, one
//! active runner) and the transactional inbox, against the real PostgreSQL.
#![cfg(feature = "integration")]

mod common;

/// Terminates the backend that holds the lease's advisory lock (a dropped connection,
/// as after a network failure): PostgreSQL releases the lock at once.
async fn break_lease(log: &keel_postgres::PgEventLog, name: &str) {
    let terminated: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_locks
         WHERE locktype = 'advisory' AND objsubid = 1
           AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
           AND ((classid::bigint << 32) | objid::bigint)
               = hashtextextended('keel.lease.' || $1, 0)",
    )
    .bind(name)
    .fetch_all(common::pool(log))
    .await
    .expect("terminate the lease's connection");
    assert_eq!(terminated, vec![true], "one connection held the lease");
}

keel_testkit::projection_conformance! {
    db: sqlx::Postgres,
    log: keel_postgres::PgEventLog,
    fresh_log: common::fresh_log().await,
    inbox: keel_postgres::PgInbox,
    upsert: "INSERT INTO {counts} AS c (stream_id, events, last_version) VALUES ($1, 1, $2)
             ON CONFLICT (stream_id) DO UPDATE
             SET events = c.events + 1, last_version = excluded.last_version",
    insert_effect: "INSERT INTO effects (event_id) VALUES ($1)",
    break_lease: break_lease,
}
