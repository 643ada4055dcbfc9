//! The store conformance suite against SQLite (a fresh database file per test).

use std::sync::Arc;

use keel_sqlite::SqliteEventLog;
use keel_testkit::store::StoreFactory;

struct Sqlite;

impl StoreFactory for Sqlite {
    type Log = SqliteEventLog;

    async fn log(&self) -> Arc<SqliteEventLog> {
        let dir = std::env::temp_dir().join("keel-sqlite-tests");
        let path = dir.join(format!("{}.db", uuid::Uuid::now_v7().simple()));
        Arc::new(
            SqliteEventLog::connect(&format!("sqlite://{}", path.display())).await.expect("open"),
        )
    }

    async fn take_transaction_id<'c>(&'c self, _conn: &'c mut sqlx::SqliteConnection) {}
}

keel_testkit::store_conformance!(Sqlite);
