//! Projections (read model and checkpoint in one transaction, rebuild by replay) and
//! the transactional inbox, on SQLite.

mod common;

keel_testkit::projection_conformance! {
    db: sqlx::Sqlite,
    log: keel_sqlite::SqliteEventLog,
    fresh_log: common::fresh_log().await,
    inbox: keel_sqlite::SqliteInbox,
    upsert: "INSERT INTO counts (stream_id, events, last_version) VALUES (?, 1, ?)
             ON CONFLICT (stream_id) DO UPDATE
             SET events = counts.events + 1, last_version = excluded.last_version",
    insert_effect: "INSERT INTO effects (event_id) VALUES (?)",
}
