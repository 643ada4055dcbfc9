//! Fresh databases for tests: `keel_t_<uuid>` on the server of `KEEL_TEST_DATABASE_URL`
//! (default `postgres://postgres@127.0.0.1:5432/postgres`). The test script drops
//! them before each run.

#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;

use keel_postgres::{PgEventLog, PgOptions};
use keel_store::SqlEventLog;
use keel_testkit::store::StoreFactory;
use sqlx::Connection;

pub fn admin_url() -> String {
    std::env::var("KEEL_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Creates an empty database and returns its URL.
pub async fn fresh_database() -> String {
    let admin = admin_url();
    let name = format!("keel_t_{}", uuid::Uuid::now_v7().simple());
    let mut conn = sqlx::PgConnection::connect(&admin).await.expect("connect to the test server");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("create database");
    let _ = conn.close().await;
    let (base, _) = admin.rsplit_once('/').expect("URL with a database");
    format!("{base}/{name}")
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
