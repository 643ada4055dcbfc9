//! The orders service's errors.

use http::StatusCode;
use keel::bus::HandlerError;
use keel::http::Problem;
use keel::sql::Error as SqlError;

/// What can go wrong in the orders service beyond the shared plumbing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The users or products service could not be asked (down, timed out, odd answer).
    #[error("directory lookup failed: {0}")]
    Directory(String),
    /// An order's stream holds an event that does not fold into an order (written by
    /// hand, say with `keel publish`): the message names the stream and the event.
    #[error("{0}")]
    Unreadable(String),
    #[error(transparent)]
    Service(#[from] SqlError),
}

impl From<Error> for Problem {
    fn from(error: Error) -> Self {
        match error {
            Error::Directory(_) => {
                tracing::warn!(%error, "cannot validate the order now");
                Problem::new(StatusCode::SERVICE_UNAVAILABLE)
                    .with_detail("the users or products service cannot be reached; retry later")
                    .with_retry_after(1)
            }
            // The order's current state cannot be made out: a conflict with the state
            // of the resource, which the answer names, rather than a bare 500.
            Error::Unreadable(detail) => {
                tracing::error!(%detail, "an order stream cannot be read");
                Problem::conflict(detail)
                    .with_type("https://keel.invalid/problems/unreadable-stream")
                    .with_title("The order's event stream cannot be read")
            }
            Error::Service(error) => error.into(),
        }
    }
}

impl From<Error> for HandlerError {
    /// An unreadable stream stays unreadable: dead-letter the message at once.
    fn from(error: Error) -> Self {
        match error {
            Error::Service(error) => error.into(),
            other => HandlerError::permanent(other),
        }
    }
}
