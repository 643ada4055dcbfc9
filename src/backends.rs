//! Opening the configured store and bus.

use std::sync::Arc;

use anyhow::Context as _;
use keel_core::Namespace;
use keel_postgres::{PgEventLog, PgOptions};
use keel_runtime::redact_url;
use keel_sqlite::SqliteEventLog;
use keel_store::EventLog;

/// The configured event store.
#[derive(Clone, Debug)]
pub enum Store {
    Postgres(Arc<PgEventLog>),
    Sqlite(Arc<SqliteEventLog>),
}

impl Store {
    /// Connects to (and migrates) the store at `url`, in `namespace`'s schema on
    /// PostgreSQL. A SQLite database in memory is refused: each `keel` command is a
    /// process of its own, so it would start empty and be gone when the command ends.
    pub async fn open(url: &str, namespace: &Namespace) -> anyhow::Result<Self> {
        if url.starts_with("sqlite:") {
            refuse_in_memory(url)?;
            check_writable(url)?;
            let log = SqliteEventLog::connect(url)
                .await
                .with_context(|| format!("opening {}", redact_url(url)))?;
            Ok(Self::Sqlite(Arc::new(log)))
        } else {
            let options = PgOptions { namespace: namespace.clone(), ..PgOptions::default() };
            let log = PgEventLog::connect(url, options)
                .await
                .context("connecting to PostgreSQL (KEEL_DATABASE_URL)")?;
            Ok(Self::Postgres(Arc::new(log)))
        }
    }

    /// Opens the store at `url` for reading (status, tail, replay, listing dead
    /// letters): SQLite is opened read-only and not migrated, so these work on a
    /// database this user may only read. PostgreSQL is opened as by [`Store::open`].
    pub async fn open_read_only(url: &str, namespace: &Namespace) -> anyhow::Result<Self> {
        if url.starts_with("sqlite:") {
            refuse_in_memory(url)?;
            let log = SqliteEventLog::open_read_only(url).await?;
            Ok(Self::Sqlite(Arc::new(log)))
        } else {
            Self::open(url, namespace).await
        }
    }

    /// The store as an event log.
    pub fn log(&self) -> Arc<dyn EventLog> {
        match self {
            Self::Postgres(log) => log.clone(),
            Self::Sqlite(log) => log.clone(),
        }
    }

    /// The store as the SQL libraries (keel-sql, keel-timers) take it.
    pub fn db(&self) -> keel_sql::Db {
        match self {
            Self::Postgres(log) => keel_sql::Db::Postgres((**log).clone()),
            Self::Sqlite(log) => keel_sql::Db::Sqlite((**log).clone()),
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

fn refuse_in_memory(url: &str) -> anyhow::Result<()> {
    if keel_sqlite::is_in_memory(url) {
        anyhow::bail!(
            "KEEL_DATABASE_URL `{url}` is a database in memory: this command would start \
             with an empty log and lose what it writes when it ends; give a file, such as \
             sqlite://keel-data/keel.db"
        );
    }
    Ok(())
}

/// A SQLite file this user may not write is named as such, not left to SQLite's terse
/// "attempt to write a readonly database" halfway through a migration.
fn check_writable(url: &str) -> anyhow::Result<()> {
    let path = url.trim_start_matches("sqlite://").trim_start_matches("sqlite:");
    let path = std::path::Path::new(path.split('?').next().unwrap_or_default());
    match std::fs::OpenOptions::new().append(true).open(path) {
        Err(error) if error.kind() == std::io::ErrorKind::PermissionDenied => {
            anyhow::bail!(
                "the database {} is read-only for this user ({error}): this command writes \
                 to it (status, tail and replay only read it)",
                path.display()
            )
        }
        _ => Ok(()),
    }
}

pub use keel_runtime::open_bus;
