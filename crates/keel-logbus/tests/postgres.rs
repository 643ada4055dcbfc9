//! The bus conformance suite on PostgreSQL (a fresh database per test).

#![cfg(feature = "integration")]

mod common;

keel_testkit::bus_conformance!(common::PgFactory::new());
