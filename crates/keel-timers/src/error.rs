//! The error type of the timers.

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong scheduling, cancelling or dispatching timers.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The store refused or failed (names the query's cause).
    #[error(transparent)]
    Sql(#[from] keel_sql::Error),
    /// A timer was refused before anything was written: `field` names what is wrong.
    #[error("invalid timer: `{field}` {reason}")]
    InvalidTimer {
        /// The timer's field at fault (`key`, `dispatcher`, `due`, `stream`, `event`).
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

impl Error {
    /// Whether trying the same work again may succeed (busy database, connection
    /// trouble, a serialization failure or an append conflict).
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Sql(e) => e.is_retryable(),
            Self::InvalidTimer { .. } => false,
        }
    }

    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidTimer { field, reason: reason.into() }
    }
}

impl From<keel_store::StoreError> for Error {
    fn from(error: keel_store::StoreError) -> Self {
        Self::Sql(error.into())
    }
}
