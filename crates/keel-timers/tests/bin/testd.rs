//! A timer dispatcher process for the SIGKILL test (tests/sigkill.rs): runs the default
//! dispatcher on `KEEL_DATABASE_URL` until killed, and prints `active` once it holds
//! the lease. On SQLite the lease expires after `KEEL_TEST_LEASE_TTL_MS` (default 1000).

use std::time::Duration;

use keel_sql::Db;
use keel_timers::{Dispatcher, DispatcherOptions};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("KEEL_DATABASE_URL")?;
    let db = if url.starts_with("sqlite:") {
        let ttl: u64 = std::env::var("KEEL_TEST_LEASE_TTL_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000);
        Db::Sqlite(
            keel_sqlite::SqliteEventLog::connect(&url)
                .await?
                .with_lease_ttl(Duration::from_millis(ttl)),
        )
    } else {
        Db::connect(&url).await?
    };
    let options = DispatcherOptions { page_size: 20, poll_interval: Duration::from_millis(100) };
    let dispatcher = std::sync::Arc::new(Dispatcher::new(db).options(options));
    let mut active = dispatcher.watch_active();
    tokio::spawn(async move {
        while active.changed().await.is_ok() {
            if *active.borrow_and_update() {
                println!("active");
            }
        }
    });
    dispatcher.run(std::future::pending()).await?;
    Ok(())
}
