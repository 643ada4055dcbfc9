//! Opening the configured store and bus.

use std::sync::Arc;

use anyhow::Context as _;
use keel_postgres::{PgEventLog, PgOptions};
use keel_sqlite::SqliteEventLog;
use keel_store::EventLog;

/// The configured event store.
#[derive(Clone, Debug)]
pub enum Store {
    Postgres(Arc<PgEventLog>),
    Sqlite(Arc<SqliteEventLog>),
}

impl Store {
    /// Connects to (and migrates) the store at `url`.
    pub async fn open(url: &str) -> anyhow::Result<Self> {
        if url.starts_with("sqlite:") {
            let log =
                SqliteEventLog::connect(url).await.with_context(|| format!("opening {url}"))?;
            Ok(Self::Sqlite(Arc::new(log)))
        } else {
            let log = PgEventLog::connect(url, PgOptions::default())
                .await
                .context("connecting to PostgreSQL (KEEL_DATABASE_URL)")?;
            Ok(Self::Postgres(Arc::new(log)))
        }
    }

    /// The store as an event log.
    pub fn log(&self) -> Arc<dyn EventLog> {
        match self {
            Self::Postgres(log) => log.clone(),
            Self::Sqlite(log) => log.clone(),
        }
    }

    /// `postgres` or `sqlite`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Postgres(_) => "postgres",
            Self::Sqlite(_) => "sqlite",
        }
    }
}

pub use keel_runtime::open_bus;
