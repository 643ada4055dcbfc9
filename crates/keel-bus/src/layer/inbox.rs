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
#[derive(Clone, Debug, Default)]
pub struct MemoryInbox {
    processed: Arc<Mutex<HashSet<(String, String)>>>,
}

impl MemoryInbox {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `group` has processed `event_id`.
    pub fn contains(&self, group: &str, event_id: &str) -> bool {
        self.processed
            .lock()
            .map(|set| set.contains(&(group.to_owned(), event_id.to_owned())))
            .unwrap_or(false)
    }
}

/// The memory inbox's unit of work: the mark it will record.
#[derive(Debug)]
pub struct MemoryInboxTx {
    key: (String, String),
}

impl Inbox for MemoryInbox {
    type Tx = MemoryInboxTx;

    async fn begin(
        &self,
        group: &str,
        event_id: &str,
    ) -> Result<Option<MemoryInboxTx>, HandlerError> {
        let key = (group.to_owned(), event_id.to_owned());
        let seen = self.processed.lock().map(|set| set.contains(&key)).unwrap_or(false);
        Ok((!seen).then_some(MemoryInboxTx { key }))
    }

    async fn commit(&self, tx: MemoryInboxTx) -> Result<(), HandlerError> {
        if let Ok(mut set) = self.processed.lock() {
            set.insert(tx.key);
        }
        Ok(())
    }
}
