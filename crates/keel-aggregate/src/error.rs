//! The error type: the aggregate's own refusal, or what failed around it.

use keel_core::{DecodeError, StreamId, StreamVersion};

/// `Result` with [`Error`] over the aggregate's error `E`.
pub type Result<T, E> = std::result::Result<T, Error<E>>;

/// What can go wrong loading an aggregate or executing a command on it. `E` is the
/// aggregate's own error ([`crate::Aggregate::Error`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error<E> {
    /// The aggregate refused the command (nothing was written).
    #[error("command refused: {0}")]
    Rejected(#[source] E),
    /// The id does not make a valid stream id.
    #[error("invalid aggregate id `{id}`")]
    InvalidId {
        /// The id as given.
        id: String,
        /// Why its stream id is invalid.
        #[source]
        source: DecodeError,
    },
    /// An event of the stream does not decode into the aggregate's events (an unknown
    /// type, bad data, or a schema version the code cannot upcast).
    #[error("stream `{stream}`: event {event_id} at version {version} does not decode")]
    Decode {
        /// The stream.
        stream: StreamId,
        /// The event's version in the stream.
        version: StreamVersion,
        /// The event's id.
        event_id: String,
        /// Why it does not decode.
        #[source]
        source: DecodeError,
    },
    /// A new event could not be turned into an envelope.
    #[error("event does not encode")]
    Encode(#[source] keel_sql::Error),
    /// The database failed, or a version conflict outlived the retries (see
    /// [`Error::is_conflict`]).
    #[error(transparent)]
    Sql(#[from] keel_sql::Error),
}

impl<E> Error<E> {
    /// Whether this is an optimistic-concurrency conflict (HTTP 409): another writer
    /// kept winning the stream until the retries ran out, or, inside your transaction,
    /// a conflict only a new transaction can resolve.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Self::Sql(e) if e.is_conflict())
    }

    /// Whether running the same work again (in a new transaction) may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Sql(e) if e.is_retryable())
    }

    /// The aggregate's own refusal, if that is what this is.
    pub fn rejection(&self) -> Option<&E> {
        match self {
            Self::Rejected(e) => Some(e),
            _ => None,
        }
    }
}
