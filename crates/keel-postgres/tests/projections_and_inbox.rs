//! Projections (read model and checkpoint in one transaction, rebuild by replay) and
//! the transactional inbox, against the real PostgreSQL.
#![cfg(feature = "integration")]

mod common;

keel_testkit::projection_conformance! {
    db: sqlx::Postgres,
    log: keel_postgres::PgEventLog,
    fresh_log: common::fresh_log().await,
    inbox: keel_postgres::PgInbox,
    upsert: "INSERT INTO counts (stream_id, events, last_version) VALUES ($1, 1, $2)
             ON CONFLICT (stream_id) DO UPDATE
             SET events = counts.events + 1, last_version = excluded.last_version",
    insert_effect: "INSERT INTO effects (event_id) VALUES ($1)",
}
