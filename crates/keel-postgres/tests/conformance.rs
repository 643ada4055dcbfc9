//! The store conformance suite against the real PostgreSQL.
#![cfg(feature = "integration")]

mod common;

keel_testkit::store_conformance!(common::Postgres);
