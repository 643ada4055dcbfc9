//! Fresh database files for tests.

#![allow(dead_code, unreachable_pub)]

use std::str::FromStr;
use std::time::Duration;

use keel_sqlite::SqliteEventLog;
use keel_store::SqlEventLog;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};

/// The URL of a database file nobody has opened yet.
pub fn fresh_url() -> String {
    let path = std::env::temp_dir()
        .join("keel-sqlite-tests")
        .join(format!("{}.db", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(path.parent().expect("a directory")).expect("the test directory");
    format!("sqlite://{}", path.display())
}

pub async fn fresh_log() -> SqliteEventLog {
    SqliteEventLog::connect(&fresh_url()).await.expect("open")
}

/// A log whose connections give up on a locked database after `busy` (sqlx's default
/// is 5 s; a service may well pass a pool with a short one).
pub async fn log_with_busy_timeout(url: &str, busy: Duration) -> SqliteEventLog {
    let options = SqliteConnectOptions::from_str(url)
        .expect("url")
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(busy);
    let pool =
        SqlitePoolOptions::new().max_connections(4).connect_with(options).await.expect("pool");
    SqliteEventLog::from_pool(pool).await.expect("open")
}

pub fn pool(log: &SqliteEventLog) -> &sqlx::SqlitePool {
    SqlEventLog::pool(log)
}
