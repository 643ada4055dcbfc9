//! The inbox: handle each event at most once per consumer group.
//!
//! Delivery is at-least-once, so a handler sees an event again after a crash between
//! its commit and the ack, or after a rebalance. The inbox records processed event ids
//! per group; when the record is written in the same transaction as the handler's own
//! effects ([`inbox_fn`] with a database inbox from the store crates), a redelivered
//! event is never applied twice.

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tower::{Layer, Service, ServiceExt};

use super::BoxFuture;
use crate::message::{HandlerError, Message};

/// Where processed event ids are recorded.
pub trait Inbox: Send + Sync + 'static {
    /// The unit of work that commits the handler's effects and the processed mark
    /// together (a database transaction). Dropping it uncommitted discards both.
    type Tx: Send + 'static;

    /// Starts the work for `event_id` in `group`, or `None` if the group has already
    /// processed that event.
    fn begin(
        &self,
        group: &str,
        event_id: &str,
    ) -> impl Future<Output = Result<Option<Self::Tx>, HandlerError>> + Send;

    /// Commits the work and the processed mark.
    fn commit(&self, tx: Self::Tx) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

/// Skips events the group has already processed, around any handler. The processed
/// mark is committed after the handler succeeds, so the handler's own effects must be
/// idempotent or in memory; for database effects use [`inbox_fn`].
#[derive(Debug)]
pub struct InboxLayer<I> {
    inbox: Arc<I>,
}

impl<I> Clone for InboxLayer<I> {
    fn clone(&self) -> Self {
        Self { inbox: self.inbox.clone() }
    }
}

impl<I: Inbox> InboxLayer<I> {
    /// Deduplicates through `inbox`.
    pub fn new(inbox: Arc<I>) -> Self {
        Self { inbox }
    }
}

impl<S, I> Layer<S> for InboxLayer<I> {
    type Service = InboxService<S, I>;

    fn layer(&self, inner: S) -> Self::Service {
        InboxService { inner, inbox: self.inbox.clone() }
    }
}

/// See [`InboxLayer`].
#[derive(Debug)]
pub struct InboxService<S, I> {
    inner: S,
    inbox: Arc<I>,
}

impl<S: Clone, I> Clone for InboxService<S, I> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone(), inbox: self.inbox.clone() }
    }
}

impl<S, I> Service<Message> for InboxService<S, I>
where
    S: Service<Message, Response = (), Error = HandlerError> + Clone + Send + 'static,
    S::Future: Send,
    I: Inbox,
{
    type Response = ();
    type Error = HandlerError;
    type Future = BoxFuture<Result<(), HandlerError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, message: Message) -> Self::Future {
        let inner = self.inner.clone();
        let inbox = self.inbox.clone();
        Box::pin(async move {
            let Some(tx) = inbox.begin(message.group(), message.event().id()).await? else {
                tracing::debug!(id = message.event().id(), "already processed; skipped");
                metrics::counter!("keel_inbox_duplicates_total").increment(1);
                return Ok(());
            };
            inner.oneshot(message).await?;
            inbox.commit(tx).await
        })
    }
}

/// A handler whose effects go into the inbox's unit of work: `f` receives the message
/// and the open transaction, does its writes in it, and gives it back; the inbox then
/// commits effects and processed mark together. An event already processed by the
/// group is acknowledged without calling `f`.
pub fn inbox_fn<I, F, Fut>(inbox: Arc<I>, f: F) -> InboxFn<I, F>
where
    I: Inbox,
    F: Fn(Message, I::Tx) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<I::Tx, HandlerError>> + Send + 'static,
{
    InboxFn { inbox, f }
}

/// See [`inbox_fn`].
#[derive(Debug)]
pub struct InboxFn<I, F> {
    inbox: Arc<I>,
    f: F,
}

impl<I, F: Clone> Clone for InboxFn<I, F> {
    fn clone(&self) -> Self {
        Self { inbox: self.inbox.clone(), f: self.f.clone() }
    }
}

impl<I, F, Fut> Service<Message> for InboxFn<I, F>
where
    I: Inbox,
    F: Fn(Message, I::Tx) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<I::Tx, HandlerError>> + Send + 'static,
{
    type Response = ();
    type Error = HandlerError;
    type Future = BoxFuture<Result<(), HandlerError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, message: Message) -> Self::Future {
        let inbox = self.inbox.clone();
        let f = self.f.clone();
        Box::pin(async move {
            let Some(tx) = inbox.begin(message.group(), message.event().id()).await? else {
                metrics::counter!("keel_inbox_duplicates_total").increment(1);
                return Ok(());
            };
            let tx = f(message, tx).await?;
            inbox.commit(tx).await
        })
    }
}

/// An inbox in memory: deduplicates within one process's lifetime. For tests and the
/// in-memory bus; durable deployments use the store's inbox.
///
/// Like a database inbox, it claims an event id for the duration of its handling: a
/// second delivery of the same event while the first is still being handled gets a
/// transient error (and comes back later) instead of running the handler twice.
#[derive(Clone, Debug, Default)]
pub struct MemoryInbox {
    state: Arc<Mutex<MemoryInboxState>>,
}

#[derive(Debug, Default)]
struct MemoryInboxState {
    processed: HashSet<(String, String)>,
    claimed: HashSet<(String, String)>,
}

impl MemoryInbox {
    /// An empty inbox.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `group` has processed `event_id`.
    pub fn contains(&self, group: &str, event_id: &str) -> bool {
        self.state
            .lock()
            .map(|state| state.processed.contains(&(group.to_owned(), event_id.to_owned())))
            .unwrap_or(false)
    }
}

/// The memory inbox's unit of work: the claimed mark it will record. Dropping it
/// uncommitted (the handler failed) releases the claim.
#[derive(Debug)]
pub struct MemoryInboxTx {
    key: (String, String),
    state: Arc<Mutex<MemoryInboxState>>,
}

impl Drop for MemoryInboxTx {
    fn drop(&mut self) {
        if let Ok(mut state) = self.state.lock() {
            state.claimed.remove(&self.key);
        }
    }
}

impl Inbox for MemoryInbox {
    type Tx = MemoryInboxTx;

    async fn begin(
        &self,
        group: &str,
        event_id: &str,
    ) -> Result<Option<MemoryInboxTx>, HandlerError> {
        let key = (group.to_owned(), event_id.to_owned());
        let mut state = self
            .state
            .lock()
            .map_err(|_| HandlerError::transient("the memory inbox's lock is poisoned"))?;
        if state.processed.contains(&key) {
            return Ok(None);
        }
        if !state.claimed.insert(key.clone()) {
            return Err(HandlerError::transient(format!(
                "event {event_id} is being handled by another delivery of group {group}"
            )));
        }
        Ok(Some(MemoryInboxTx { key, state: self.state.clone() }))
    }

    async fn commit(&self, tx: MemoryInboxTx) -> Result<(), HandlerError> {
        if let Ok(mut state) = self.state.lock() {
            state.processed.insert(tx.key.clone());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_second_delivery_during_handling_is_refused_until_the_first_settles() {
        let inbox = MemoryInbox::new();
        let first = inbox.begin("g", "e1").await.expect("begin").expect("first claim");
        let twin = inbox.begin("g", "e1").await;
        assert!(twin.is_err_and(|e| !e.is_permanent()), "a twin must come back later");
        inbox.commit(first).await.expect("commit");
        assert!(inbox.begin("g", "e1").await.expect("begin").is_none(), "processed");
        assert!(inbox.contains("g", "e1"));
    }

    #[tokio::test]
    async fn a_failed_handling_releases_its_claim() {
        let inbox = MemoryInbox::new();
        let claim = inbox.begin("g", "e2").await.expect("begin").expect("claim");
        drop(claim);
        assert!(inbox.begin("g", "e2").await.expect("begin").is_some(), "claimable again");
        assert!(!inbox.contains("g", "e2"));
    }
}
