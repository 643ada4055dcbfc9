//! The bus conformance suite on SQLite (a database file per test).
// The tests open both stores (tests/common), behind the crate's store features.
#![cfg(all(feature = "sqlite", feature = "postgres"))]

mod common;

keel_testkit::bus_conformance!(common::SqliteFactory::new(); skip {
    broker_restarts_lose_nothing: "the log bus has no broker: its messages are rows of the \
        SQLite file (crash recovery over the same file is in tests/recovery.rs)",
    broker_restarts_then_consumption_resumes: "the log bus has no broker: its messages are \
        rows of the SQLite file (crash recovery over the same file is in tests/recovery.rs)",
});
