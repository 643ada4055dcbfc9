//! Store errors.

use keel_core::{BusError, DecodeError, ExpectedVersion, StreamId, StreamVersion};

/// `Result` with [`StoreError`].
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// What can go wrong in an event store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Optimistic concurrency: the stream was not at the expected version (HTTP 409).
    #[error(
        "version conflict on stream `{stream}`: expected {expected}, the stream is at version {actual}"
    )]
    VersionConflict {
        /// The stream appended to.
        stream: StreamId,
        /// What the append expected.
        expected: ExpectedVersion,
        /// The stream's version when the append ran.
        actual: StreamVersion,
    },
    /// The stream's latest event was written by a transaction that started after this
    /// one; appending now would put the stream out of order for subscribers. Retry the
    /// whole transaction (it gets a newer transaction id).
    #[error("stream `{stream}` was appended to by a younger transaction; retry the transaction")]
    WriteOrder {
        /// The stream appended to.
        stream: StreamId,
    },
    /// Another transaction appended the same stream version at the same time. Retry
    /// the whole transaction.
    #[error(
        "another transaction appended to stream `{stream}` at the same time; retry the transaction"
    )]
    ConcurrentAppend {
        /// The stream appended to.
        stream: StreamId,
    },
    /// An event with this id is already in the log.
    #[error("an event with id `{id}` is already in the log")]
    DuplicateEvent {
        /// The event id already in the log.
        id: String,
    },
    /// Something asked for does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// An event to append is not valid (bad stream id, attribute or topic).
    #[error("invalid event: {0}")]
    InvalidEvent(String),
    /// A stored event could not be turned back into an envelope.
    #[error("event at position {position} does not decode: {source}")]
    Decode {
        /// The log position of the event that did not decode.
        position: i64,
        #[source]
        /// Why it did not decode.
        source: DecodeError,
    },
    /// The store is configured wrongly (URL, options) or not migrated.
    #[error("store configuration: {0}")]
    Config(String),
    /// A lease (relay, projection) is held by another process.
    #[error("`{0}` is held by another process")]
    LeaseHeld(String),
    /// A checkpoint was not where its writer last stored it: another writer (a second
    /// runner of the same projection, a rebuild) moved it meanwhile. The writer's
    /// transaction must be rolled back, and the writer stop.
    #[error("checkpoint `{name}` was moved by another writer")]
    CheckpointMoved {
        /// The checkpoint's name.
        name: String,
    },
    /// The database reported an error.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A migration failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The bus failed while the store's data was being published (a backfill, a
    /// relay dead letter sent again).
    #[error("publishing failed: {0}")]
    Bus(#[from] BusError),
}

impl StoreError {
    /// Whether the same operation may succeed if tried again.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::WriteOrder { .. } | Self::ConcurrentAppend { .. } => true,
            Self::Database(error) => is_transient(error),
            Self::Bus(error) => error.is_retryable(),
            _ => false,
        }
    }

    /// Whether this is an optimistic-concurrency conflict (HTTP 409).
    pub fn is_conflict(&self) -> bool {
        matches!(
            self,
            Self::VersionConflict { .. } | Self::WriteOrder { .. } | Self::ConcurrentAppend { .. }
        )
    }
}

/// Whether a database error may pass if the same work is tried again: connection
/// trouble, pool exhaustion, serialization failures, deadlocks and busy databases do;
/// everything else does not. The one rule for every SQL layer of Keel.
pub fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => {
            // 40001 serialization failure, 40P01 deadlock (Postgres); SQLITE_BUSY (5),
            // SQLITE_LOCKED (6) and their extended codes (SQLite).
            let code = db.code();
            matches!(
                code.as_deref(),
                Some("40001" | "40P01" | "57P01" | "5" | "6" | "517" | "261" | "262")
            )
        }
        _ => false,
    }
}
