//! In-process retries of transient failures, with exponential backoff and jitter.

use std::task::{Context, Poll};

use tower::{Layer, Service, ServiceExt};

use super::BoxFuture;
use crate::message::{HandlerError, Message};
use keel_core::Backoff;

/// Retries a handler up to `max_retries` times on transient errors, sleeping
/// `backoff.delay(n)` before retry `n`. Permanent errors pass straight through.
///
/// This retries inside one delivery (the message stays in flight); the consumer's
/// [`crate::RedeliveryPolicy`] retries across deliveries through the broker.
#[derive(Clone, Copy, Debug)]
pub struct RetryLayer {
    backoff: Backoff,
    max_retries: u32,
}

impl RetryLayer {
    /// Retries a transient failure up to `max_retries` times in the handler, waiting
    /// `backoff` between tries; permanent failures are not retried.
    pub fn new(backoff: Backoff, max_retries: u32) -> Self {
        Self { backoff, max_retries }
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Retry { inner, backoff: self.backoff, max_retries: self.max_retries }
    }
}

/// See [`RetryLayer`].
#[derive(Clone, Debug)]
pub struct Retry<S> {
    inner: S,
    backoff: Backoff,
    max_retries: u32,
}

impl<S> Service<Message> for Retry<S>
where
    S: Service<Message, Response = (), Error = HandlerError> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = ();
    type Error = HandlerError;
    type Future = BoxFuture<Result<(), HandlerError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, message: Message) -> Self::Future {
        // Take the service that was driven to readiness; keep a clone for retries.
        let clone = self.inner.clone();
        let mut first = std::mem::replace(&mut self.inner, clone);
        let mut again = self.inner.clone();
        let (backoff, max_retries) = (self.backoff, self.max_retries);
        Box::pin(async move {
            let mut result = first.call(message.clone()).await;
            let mut retry = 0;
            while let Err(error) = &result {
                if error.is_permanent() || retry >= max_retries {
                    break;
                }
                retry += 1;
                let delay = backoff.delay(retry);
                tracing::debug!(%error, retry, ?delay, "handler failed; retrying");
                metrics::counter!("keel_handler_retries_total").increment(1);
                tokio::time::sleep(delay).await;
                result = again.ready().await?.call(message.clone()).await;
            }
            result
        })
    }
}
