//! A saga process for the SIGKILL test (tests/sigkill.rs): runs the example shipping
//! saga (tests/common) as consumer group `KEEL_TEST_GROUP` on the log bus of
//! `KEEL_DATABASE_URL`, with the default timer dispatcher, until killed. On SQLite the
//! dispatcher's lease expires after 1 s.

#![allow(missing_docs)]

#[path = "../common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::Duration;

use keel_core::Bus;
use keel_saga::SagaRunner;
use keel_sql::Db;
use keel_timers::{Dispatcher, DispatcherOptions};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("KEEL_DATABASE_URL")?;
    let group = std::env::var("KEEL_TEST_GROUP")?;
    let db = if url.starts_with("sqlite:") {
        Db::Sqlite(
            keel_sqlite::SqliteEventLog::connect(&url)
                .await?
                .with_lease_ttl(Duration::from_millis(1000)),
        )
    } else {
        Db::connect(&url).await?
    };
    let bus: Arc<dyn Bus> = match &db {
        Db::Sqlite(log) => Arc::new(keel_logbus::open(Arc::new(log.clone())).await?),
        Db::Postgres(log) => Arc::new(keel_logbus::open(Arc::new(log.clone())).await?),
    };
    let _consumers = SagaRunner::<common::Shipping>::new().start(&db, bus, &group, 4).await?;
    let options = DispatcherOptions { page_size: 20, poll_interval: Duration::from_millis(100) };
    Dispatcher::new(db).options(options).run(std::future::pending()).await?;
    Ok(())
}
