//! The orders service's errors.

use http::StatusCode;
use keel_service::Problem;
use keel_services_common::ServiceError;

/// What can go wrong in the orders service beyond the shared plumbing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The users or products service could not be asked (down, timed out, odd answer).
    #[error("directory lookup failed: {0}")]
    Directory(String),
    #[error(transparent)]
    Service(#[from] ServiceError),
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
            Error::Service(error) => error.into(),
        }
    }
}
