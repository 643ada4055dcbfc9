//! Fresh PostgreSQL databases for tests, one per test, on the server of
//! `KEEL_TEST_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`).
//!
//! Their names start with `keel_t_`: the test script (`scripts/test.sh`) drops every
//! such database before a run, so a test need not clean up after itself (and a failed
//! test leaves its data to look at).

use sqlx::Connection as _;

/// The URL of the test server's maintenance database.
pub fn admin_url() -> String {
    std::env::var("KEEL_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Creates an empty database named `keel_t_<label>_<uuid>` and returns its URL.
///
/// # Panics
/// When the test server cannot be reached or refuses the database: the test cannot
/// run without it.
pub async fn fresh_database(label: &str) -> String {
    let admin = admin_url();
    let name = format!("keel_t_{label}_{}", uuid::Uuid::now_v7().simple());
    let mut conn = sqlx::PgConnection::connect(&admin).await.expect("connect to the test server");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("create the test database");
    let _ = conn.close().await;
    let (base, _) = admin.rsplit_once('/').expect("a database in KEEL_TEST_DATABASE_URL");
    format!("{base}/{name}")
}

/// [`fresh_database`] for a synchronous test (not from inside a tokio runtime).
pub fn fresh_database_blocking(label: &str) -> String {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(fresh_database(label))
}
