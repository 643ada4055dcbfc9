//! The crate's error, and how it maps onto the bus traits' [`BusError`].

use keel_core::{BusError, DecodeError};
use keel_store::StoreError;

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong in the log bus.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The store failed (or is not migrated for the log bus).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An event cannot go into the log as it is (it makes no valid envelope).
    #[error("the event cannot be stored: {0}")]
    Event(#[from] DecodeError),
}

impl From<Error> for BusError {
    fn from(error: Error) -> Self {
        match error {
            Error::Event(error) => BusError::Codec(error),
            Error::Store(error) if error.is_retryable() => BusError::Connection(error.to_string()),
            Error::Store(StoreError::InvalidEvent(reason)) => BusError::Rejected(reason),
            Error::Store(error @ StoreError::DuplicateEvent { .. }) => {
                BusError::Rejected(error.to_string())
            }
            Error::Store(StoreError::Config(reason)) => BusError::Config(reason),
            Error::Store(error) => BusError::Backend(Box::new(error)),
        }
    }
}
