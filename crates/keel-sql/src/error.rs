//! The error type of the database seam.

use keel_store::StoreError;

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong in the database seam: the store, a query, a migration, JSON, an
/// event, the configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The event store refused or failed (a version conflict among others).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A service query failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A migration failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Stored or produced JSON did not (de)serialize.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    /// An event or envelope was invalid.
    #[error("invalid event: {0}")]
    Event(String),
    /// The database is configured wrongly (names the setting).
    #[error("configuration: {0}")]
    Config(String),
}

impl From<keel_core::DecodeError> for Error {
    /// An invalid stream id or event attribute is an invalid event.
    fn from(error: keel_core::DecodeError) -> Self {
        Self::Event(error.to_string())
    }
}

impl Error {
    /// Whether a unique constraint refused the write (a concurrent twin request won).
    pub fn is_unique_violation(&self) -> bool {
        let db = match self {
            Self::Database(sqlx::Error::Database(db)) => db,
            Self::Store(StoreError::Database(sqlx::Error::Database(db))) => db,
            _ => return false,
        };
        db.is_unique_violation()
    }

    /// Whether this is an optimistic-concurrency conflict (HTTP 409).
    pub fn is_conflict(&self) -> bool {
        matches!(self, Self::Store(e) if e.is_conflict())
    }

    /// Whether retrying the same work may succeed (handlers: transient vs permanent).
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Store(e) => e.is_retryable() || e.is_conflict(),
            Self::Database(e) => keel_store::is_transient(e),
            _ => false,
        }
    }
}
