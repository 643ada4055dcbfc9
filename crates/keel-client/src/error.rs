//! What a call through a [`crate::ServiceClient`] can fail with.

use std::time::Duration;

use crate::pool::PickError;

/// Why a call failed. `service` is the upstream's name, `instance` the base URL of the
/// instance that failed last.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Discovery knows no healthy instance of the named service.
    #[error("no healthy instance of {0}")]
    NoInstances(String),
    /// Every instance of the named service has its circuit breaker open.
    #[error("every instance of {0} has its circuit breaker open")]
    AllOpen(String),
    /// The last attempt did not complete (response and body) within the per-attempt
    /// timeout.
    #[error("{service} at {instance} did not answer within {timeout:?}")]
    Timeout {
        /// The upstream's name.
        service: String,
        /// The instance's base URL.
        instance: String,
        /// The per-attempt timeout that ran out.
        timeout: Duration,
    },
    /// No connection could be made to the instance.
    #[error("cannot connect to {service} at {instance}")]
    Connect {
        /// The upstream's name.
        service: String,
        /// The instance's base URL.
        instance: String,
        /// The HTTP client's error.
        #[source]
        source: reqwest::Error,
    },
    /// The connection broke after it was made (reset, closed mid-response).
    #[error("call to {service} at {instance} failed")]
    Transport {
        /// The upstream's name.
        service: String,
        /// The instance's base URL.
        instance: String,
        /// The HTTP client's error.
        #[source]
        source: reqwest::Error,
    },
    /// The instance answered with a status the helper does not accept (non-2xx).
    #[error("{service} at {instance} answered {status}")]
    Upstream {
        /// The upstream's name.
        service: String,
        /// The instance's base URL.
        instance: String,
        /// The status it answered with.
        status: http::StatusCode,
        /// The response body, as text (invalid UTF-8 replaced).
        body: String,
    },
    /// The request cannot be sent as given (a bad path, header or method); nothing was
    /// sent.
    #[error("invalid request to {service}: {reason}")]
    InvalidRequest {
        /// The upstream's name.
        service: String,
        /// What is wrong with the request.
        reason: String,
    },
    /// The request body could not be encoded, or the response body decoded, as JSON.
    #[error("cannot encode or decode the JSON body of a call to {service}")]
    Json {
        /// The upstream's name.
        service: String,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
}

impl ClientError {
    /// Whether calling again (another instance, or later) may succeed: the pool had
    /// nothing to offer, the instance was unreachable or slow, or it answered 502,
    /// 503 or 504.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::NoInstances(_)
            | Self::AllOpen(_)
            | Self::Timeout { .. }
            | Self::Connect { .. }
            | Self::Transport { .. } => true,
            Self::Upstream { status, .. } => is_retryable_status(*status),
            Self::InvalidRequest { .. } | Self::Json { .. } => false,
        }
    }

    /// The status the upstream answered, for [`ClientError::Upstream`].
    pub fn status(&self) -> Option<http::StatusCode> {
        match self {
            Self::Upstream { status, .. } => Some(*status),
            _ => None,
        }
    }
}

impl From<PickError> for ClientError {
    fn from(error: PickError) -> Self {
        match error {
            PickError::NoInstances(s) => Self::NoInstances(s),
            PickError::AllOpen(s) => Self::AllOpen(s),
        }
    }
}

/// 502, 503 and 504: the instance (or what is in front of it) could not serve the
/// call, so another instance may.
pub(crate) fn is_retryable_status(status: http::StatusCode) -> bool {
    matches!(status.as_u16(), 502..=504)
}
