//! Handlers from closures: plain, typed, and batch.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use keel_core::EventSet;
use tower::Service;

use crate::message::{HandlerError, Message};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A handler from an async closure over [`Message`].
pub fn handler_fn<F, Fut>(f: F) -> tower::util::ServiceFn<F>
where
    F: FnMut(Message) -> Fut,
    Fut: Future<Output = Result<(), HandlerError>>,
{
    tower::service_fn(f)
}

/// A batch handler from an async closure over a batch of messages; the batch is
/// acknowledged together when the closure succeeds.
pub fn batch_fn<F, Fut>(f: F) -> tower::util::ServiceFn<F>
where
    F: FnMut(Vec<Message>) -> Fut,
    Fut: Future<Output = Result<(), HandlerError>>,
{
    tower::service_fn(f)
}

/// A typed event and the message it came in.
#[derive(Debug)]
pub struct Typed<E> {
    /// The decoded event.
    pub event: E,
    /// The message it came in (attempt, topic, group, envelope).
    pub message: Message,
}

/// A handler for the event types of `E`: it decodes the data and calls `f`.
///
/// Messages of other types are acknowledged without calling `f` (a topic usually
/// carries several types; subscribe with `types` to not receive them at all). Data
/// that does not decode is a permanent error, so the message is dead-lettered at once.
pub fn typed<E, F, Fut>(f: F) -> TypedHandler<E, F>
where
    E: EventSet,
    F: Fn(Typed<E>) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    TypedHandler { f, _event: PhantomData }
}

/// See [`typed`].
pub struct TypedHandler<E, F> {
    f: F,
    _event: PhantomData<fn() -> E>,
}

impl<E, F: Clone> Clone for TypedHandler<E, F> {
    fn clone(&self) -> Self {
        Self { f: self.f.clone(), _event: PhantomData }
    }
}

impl<E, F> std::fmt::Debug for TypedHandler<E, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TypedHandler").field("event", &std::any::type_name::<E>()).finish()
    }
}

impl<E, F, Fut> Service<Message> for TypedHandler<E, F>
where
    E: EventSet,
    F: Fn(Typed<E>) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    type Response = ();
    type Error = HandlerError;
    type Future = BoxFuture<Result<(), HandlerError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, message: Message) -> Self::Future {
        let event = message.event();
        let data = event.data().map(|d| &d[..]).unwrap_or(b"null");
        let decoded =
            event.data_version().and_then(|version| E::from_json(event.ty(), version, data));
        let f = self.f.clone();
        Box::pin(async move {
            match decoded? {
                Some(event) => f(Typed { event, message }).await,
                None => {
                    tracing::trace!(
                        ty = message.event().ty(),
                        "event type not handled here; skipped"
                    );
                    Ok(())
                }
            }
        })
    }
}
