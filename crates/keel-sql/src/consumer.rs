//! Effectively-once subscribers.

use std::future::Future;
use std::sync::Arc;

use keel_bus::layer::{TraceLayer, inbox_fn};
use keel_bus::{Consumer, ConsumerHandle, HandlerError, Message};
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

/// Starts a consumer whose handler `f` runs inside the store's inbox transaction: `f`
/// gets the message and the open [`Tx`], writes its table changes and appends its
/// events in it, and gives it back; the processed mark commits with them, so a
/// redelivered event is never applied twice. Each message runs in a `keel.handle`
/// span with its [`keel_bus::layer::EventContext`] current, so [`crate::envelope`]
/// with `current_context()` chains correlation and causation.
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
    Consumer::new(subscriber, spec).concurrency(concurrency).start(handler).await
}
