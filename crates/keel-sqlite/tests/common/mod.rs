//! Fresh database files for tests.

#![allow(dead_code, unreachable_pub)]

use keel_sqlite::SqliteEventLog;
use keel_store::SqlEventLog;

pub async fn fresh_log() -> SqliteEventLog {
    let path = std::env::temp_dir()
        .join("keel-sqlite-tests")
        .join(format!("{}.db", uuid::Uuid::now_v7().simple()));
    SqliteEventLog::connect(&format!("sqlite://{}", path.display())).await.expect("open")
}

pub fn pool(log: &SqliteEventLog) -> &sqlx::SqlitePool {
    SqlEventLog::pool(log)
}
