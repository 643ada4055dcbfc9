//! A fresh log per test, each on a database of its own (`keel_testkit::postgres`).

#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;

use keel_postgres::{PgEventLog, PgOptions};
use keel_store::SqlEventLog;
use keel_testkit::store::StoreFactory;

/// Creates an empty database and returns its URL.
pub async fn fresh_database() -> String {
    keel_testkit::postgres::fresh_database("pg").await
}

pub async fn fresh_log() -> PgEventLog {
    let url = fresh_database().await;
    PgEventLog::connect(&url, PgOptions { max_connections: 6, ..PgOptions::default() })
        .await
        .expect("connect")
}

pub struct Postgres;

impl StoreFactory for Postgres {
    type Log = PgEventLog;

    async fn log(&self) -> Arc<PgEventLog> {
        Arc::new(fresh_log().await)
    }

    async fn take_transaction_id<'c>(&'c self, conn: &'c mut sqlx::PgConnection) {
        sqlx::query("SELECT pg_current_xact_id()")
            .execute(conn)
            .await
            .expect("take a transaction id");
    }
}

/// The pool of a log, for raw queries in tests.
pub fn pool(log: &PgEventLog) -> &sqlx::PgPool {
    SqlEventLog::pool(log)
}
