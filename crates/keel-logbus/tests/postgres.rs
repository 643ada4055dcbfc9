//! The bus conformance suite on PostgreSQL (a fresh database per test).
// The tests open both stores (tests/common), behind the crate's store features.
#![cfg(all(feature = "sqlite", feature = "postgres"))]
#![cfg(feature = "integration")]

mod common;

keel_testkit::bus_conformance!(common::PgFactory::new(); skip {
    broker_restarts_lose_nothing: "the log bus has no broker: its messages are rows of the \
        event log; restarting the PostgreSQL server all tests share would break the others",
    broker_restarts_then_consumption_resumes: "the log bus has no broker: its messages are \
        rows of the event log; restarting the PostgreSQL server all tests share would break \
        the others",
});
