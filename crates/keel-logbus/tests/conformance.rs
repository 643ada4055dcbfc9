//! The bus conformance suite on SQLite (a database file per test).

mod common;

keel_testkit::bus_conformance!(common::SqliteFactory::new());
