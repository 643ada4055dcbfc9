//! Effectively-once subscribers.

use std::future::Future;
use std::sync::Arc;

use keel_bus::layer::{TraceLayer, inbox_fn};
use keel_bus::{Backoff, Consumer, ConsumerHandle, HandlerError, Message, RedeliveryPolicy};
use keel_core::{BusError, Subscriber, SubscriptionSpec};
use tower::Layer as _;

use crate::db::{Db, Tx};
use crate::error::Error;

impl From<Error> for HandlerError {
    /// Conflicts and transient database trouble are retried (a retry reloads the
    /// state); anything else is dead-lettered.
    fn from(error: Error) -> Self {
        if error.is_retryable() {
            HandlerError::transient(error)
        } else {
            HandlerError::permanent(error)
        }
    }
}

/// Deliveries of an inbox consumer before a message that keeps failing transiently is
/// dead-lettered. An inbox handler's transient failures are almost always its own
/// database being out of reach (a restart, a cut connection), which is not the
/// message's fault: with the consumer's default of 5 attempts (1.5 s of backoff) a
/// database outage of two seconds dead-lettered every message in flight (found by
/// the fault harness, tests/faults.rs). 12 attempts, 100 ms doubling to 30 s, ride
/// out about 110 s.
pub const INBOX_ATTEMPTS: u32 = 12;

/// Starts a consumer whose handler `f` runs inside the store's inbox transaction: `f`
/// gets the message and the open [`Tx`], writes its table changes and appends its
/// events in it, and gives it back; the processed mark commits with them, so a
/// redelivered event is never applied twice. Each message runs in a `keel.handle`
/// span with its [`keel_bus::layer::EventContext`] current, so [`crate::envelope`]
/// with `current_context()` chains correlation and causation. A transient failure is
/// redelivered up to [`INBOX_ATTEMPTS`] times.
pub async fn start_inbox_consumer<F, Fut>(
    db: &Db,
    subscriber: Arc<dyn Subscriber>,
    spec: SubscriptionSpec,
    concurrency: usize,
    f: F,
) -> Result<ConsumerHandle, BusError>
where
    F: Fn(Message, Tx) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Tx, HandlerError>> + Send + 'static,
{
    let handler = TraceLayer::new().layer(inbox_fn(db.inbox(), f));
    Consumer::new(subscriber, spec)
        .concurrency(concurrency)
        .redelivery(RedeliveryPolicy::new(INBOX_ATTEMPTS, Backoff::default()))
        .start(handler)
        .await
}
