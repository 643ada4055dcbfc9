//! The context that events written now inherit (trace, correlation, causation, actor),
//! and the layer that sets it from each incoming message.

use std::future::Future;
use std::task::{Context, Poll};

use keel_core::envelope::ext;
use keel_core::{CloudEvent, TraceContext};
use tower::{Layer, Service};
use tracing::Instrument as _;

use super::BoxFuture;
use crate::message::{HandlerError, Message};

/// Who and what caused the work in progress. HTTP middleware sets it per request, the
/// [`TraceLayer`] per message; publishers and stores stamp it on the events they write
/// (without overriding attributes the event already has).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventContext {
    /// The W3C trace context to continue.
    pub trace: Option<TraceContext>,
    /// The id shared by every event of one business flow.
    pub correlation_id: Option<String>,
    /// The id of the event or request that caused this work.
    pub causation_id: Option<String>,
    /// Who the work is done for (a user or service id).
    pub actor: Option<String>,
    /// The caller's signed identity token (`x-keel-identity`), forwarded on calls to
    /// other services; never stored on events.
    pub credentials: Option<String>,
}

impl EventContext {
    /// The context for handling `message`: a child span of its trace, its correlation
    /// id (or its own id, starting a correlation), caused by it, on behalf of its actor.
    pub fn from_message(message: &Message) -> Self {
        let event = message.event();
        Self {
            trace: Some(message.trace_context().map_or_else(TraceContext::new_root, |t| t.child())),
            correlation_id: Some(event.correlation_id().unwrap_or(event.id()).to_owned()),
            causation_id: Some(event.id().to_owned()),
            actor: event.actor().map(str::to_owned),
            credentials: None,
        }
    }

    /// Stamps the context on `event` where it has no value of its own.
    pub fn apply(&self, event: &mut CloudEvent) {
        let mut set = |name: &str, value: Option<&str>| {
            if let Some(value) = value
                && event.extension(name).is_none()
            {
                // Names are Keel's own constants, always valid.
                let _ = event.set_extension(name, value);
            }
        };
        let traceparent = self.trace.as_ref().map(TraceContext::traceparent);
        set(ext::TRACEPARENT, traceparent.as_deref());
        set(ext::TRACESTATE, self.trace.as_ref().and_then(TraceContext::tracestate));
        set(ext::CORRELATION_ID, self.correlation_id.as_deref());
        set(ext::CAUSATION_ID, self.causation_id.as_deref());
        set(ext::ACTOR, self.actor.as_deref());
    }
}

tokio::task_local! {
    static CURRENT: EventContext;
}

/// The context of the task's current work, if any was set.
pub fn current_context() -> Option<EventContext> {
    CURRENT.try_with(Clone::clone).ok()
}

/// Runs `fut` with `context` as the current context.
pub async fn with_context<F: Future>(context: EventContext, fut: F) -> F::Output {
    CURRENT.scope(context, fut).await
}

/// A `tracing` span per message (`keel.handle`, with type, id, topic, group, attempt
/// and the trace id it continues), and the [`EventContext`] of the message for the
/// handler's duration.
#[derive(Clone, Copy, Debug, Default)]
pub struct TraceLayer;

impl TraceLayer {
    /// The layer (it has no settings).
    pub fn new() -> Self {
        Self
    }
}

impl<S> Layer<S> for TraceLayer {
    type Service = TraceService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TraceService { inner }
    }
}

/// See [`TraceLayer`].
#[derive(Clone, Debug)]
pub struct TraceService<S> {
    inner: S,
}

impl<S> Service<Message> for TraceService<S>
where
    S: Service<Message, Response = (), Error = HandlerError>,
    S::Future: Send + 'static,
{
    type Response = ();
    type Error = HandlerError;
    type Future = BoxFuture<Result<(), HandlerError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, message: Message) -> Self::Future {
        let mut context = EventContext::from_message(&message);
        let event = message.event();
        let span = tracing::info_span!(
            "keel.handle",
            event.r#type = event.ty(),
            event.id = event.id(),
            topic = message.topic(),
            group = message.group(),
            attempt = message.attempt(),
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
        );
        // With OpenTelemetry export on, the span joins the message's trace and its own
        // span id is the one events written by the handler point back to.
        if let Some(parent) = message.trace_context() {
            keel_telemetry::continue_trace(&span, &parent);
        }
        if let Some(exported) = span.in_scope(keel_telemetry::current_trace) {
            context.trace = Some(exported);
        }
        if let Some(trace) = &context.trace {
            span.record("trace_id", trace.trace_id());
            span.record("span_id", trace.span_id());
        }
        let call = self.inner.call(message);
        Box::pin(with_context(context, call).instrument(span))
    }
}
