//! A time limit per handler call.

use std::task::{Context, Poll};
use std::time::Duration;

use tower::{Layer, Service};

use super::BoxFuture;
use crate::message::HandlerError;

/// Fails a handler call that takes longer than `timeout` with a transient error (the
/// message is then retried like any other transient failure).
#[derive(Clone, Copy, Debug)]
pub struct TimeoutLayer {
    timeout: Duration,
}

impl TimeoutLayer {
    /// Fails a handler call that takes longer than `timeout` (a transient failure).
    pub fn new(timeout: Duration) -> Self {
        Self { timeout }
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Timeout { inner, timeout: self.timeout }
    }
}

/// See [`TimeoutLayer`].
#[derive(Clone, Debug)]
pub struct Timeout<S> {
    inner: S,
    timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
#[error("handler timed out after {0:?}")]
struct Elapsed(Duration);

impl<S, R> Service<R> for Timeout<S>
where
    S: Service<R, Response = (), Error = HandlerError>,
    S::Future: Send + 'static,
{
    type Response = ();
    type Error = HandlerError;
    type Future = BoxFuture<Result<(), HandlerError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        let timeout = self.timeout;
        let call = self.inner.call(request);
        Box::pin(async move {
            match tokio::time::timeout(timeout, call).await {
                Ok(result) => result,
                Err(_) => Err(HandlerError::transient(Elapsed(timeout))),
            }
        })
    }
}
