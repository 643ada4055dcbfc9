//! The error type of the sagas.

use keel_bus::HandlerError;

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong handling a saga's input.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The event is not one of the saga's inputs, or its data cannot be read.
    #[error("saga {saga}: event {event_id} ({event_type}) cannot be read: {source}")]
    Decode {
        /// The saga's name.
        saga: &'static str,
        /// The event's id.
        event_id: String,
        /// The event's type.
        event_type: String,
        /// Why.
        #[source]
        source: keel_core::DecodeError,
    },
    /// No saga has this correlation id, and the input does not start one.
    #[error(
        "saga {saga}: no instance for correlation id `{correlation_id}`, and {event_type} \
         (event {event_id}) does not start one"
    )]
    UnknownCorrelation {
        /// The saga's name.
        saga: &'static str,
        /// The input's correlation id.
        correlation_id: String,
        /// The input's type.
        event_type: String,
        /// The input's event id.
        event_id: String,
    },
    /// Another input of the same saga instance was stored first: retry on its state.
    #[error("saga {saga}: instance `{correlation_id}` changed concurrently")]
    Conflict {
        /// The saga's name.
        saga: &'static str,
        /// The instance's correlation id.
        correlation_id: String,
    },
    /// A step was refused before anything was written (an invalid stream or key).
    #[error("saga {saga}: invalid step: {reason}")]
    InvalidStep {
        /// The saga's name.
        saga: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The store failed.
    #[error(transparent)]
    Sql(#[from] keel_sql::Error),
    /// Scheduling or cancelling a timer failed.
    #[error(transparent)]
    Timers(#[from] keel_timers::Error),
    /// The stored state did not (de)serialize.
    #[error("saga {saga}: state JSON: {source}")]
    State {
        /// The saga's name.
        saga: &'static str,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

impl Error {
    /// Whether handling the same input again may succeed: a conflict, or transient
    /// database trouble. Everything else is dead-lettered.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Conflict { .. } => true,
            Self::Sql(e) => e.is_retryable(),
            Self::Timers(e) => e.is_retryable(),
            _ => false,
        }
    }
}

impl From<Error> for HandlerError {
    /// Retryable errors are transient (the delivery is retried); the rest, an unknown
    /// correlation id among them, are permanent (dead-lettered with the reason).
    fn from(error: Error) -> Self {
        if error.is_retryable() {
            HandlerError::transient(error)
        } else {
            HandlerError::permanent(error)
        }
    }
}
