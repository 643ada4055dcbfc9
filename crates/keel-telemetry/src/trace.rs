//! Bridging Keel's [`TraceContext`] and the OpenTelemetry context of `tracing` spans.
//!
//! Both directions go through the W3C TraceContext propagator (the `traceparent` and
//! `tracestate` strings), so there is one parser and one formatter on each side.
//!
//! Without the `otel` feature both are no-ops: nothing records span contexts, so an
//! incoming trace context is passed on unchanged by the callers.

#[cfg(feature = "otel")]
use std::collections::HashMap;

use keel_core::TraceContext;
#[cfg(feature = "otel")]
use opentelemetry::propagation::TextMapPropagator as _;
#[cfg(feature = "otel")]
use opentelemetry::trace::TraceContextExt as _;
#[cfg(feature = "otel")]
use opentelemetry_sdk::propagation::TraceContextPropagator;
#[cfg(feature = "otel")]
use tracing_opentelemetry::{OpenTelemetrySpanExt as _, SetParentError};

#[cfg(feature = "otel")]
const TRACEPARENT: &str = "traceparent";
#[cfg(feature = "otel")]
const TRACESTATE: &str = "tracestate";

/// Makes `span` continue the remote trace `trace`: when exported, it has `trace`'s trace
/// id and `trace`'s span id as its parent. Call it before the span is first entered
/// (e.g. right after `info_span!`, before `.instrument(span)`).
///
/// A no-op when no OpenTelemetry layer is installed, the span is disabled, or the
/// `otel` feature is off.
#[cfg(feature = "otel")]
pub fn continue_trace(span: &tracing::Span, trace: &TraceContext) {
    let mut carrier = HashMap::from([(TRACEPARENT.to_owned(), trace.traceparent())]);
    if let Some(state) = trace.tracestate() {
        carrier.insert(TRACESTATE.to_owned(), state.to_owned());
    }
    let parent = TraceContextPropagator::new().extract(&carrier);
    match span.set_parent(parent) {
        Ok(()) | Err(SetParentError::LayerNotFound | SetParentError::SpanDisabled) => {}
        Err(error) => tracing::debug!(%error, "cannot continue the incoming trace"),
    }
}

/// The W3C context of the current span (its trace id and its own span id), to send on
/// outgoing requests and events. `None` when no OpenTelemetry layer is installed or
/// the current span is not recorded (always, without the `otel` feature).
#[cfg(feature = "otel")]
pub fn current_trace() -> Option<TraceContext> {
    let context = tracing::Span::current().context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    let traceparent = carrier.get(TRACEPARENT)?;
    let trace = TraceContext::parse(traceparent).ok()?;
    Some(trace.with_state(carrier.remove(TRACESTATE)))
}

/// Without the `otel` feature: nothing to continue (see the `otel` version).
#[cfg(not(feature = "otel"))]
pub fn continue_trace(span: &tracing::Span, trace: &TraceContext) {
    let _ = (span, trace);
}

/// Without the `otel` feature: always `None` (see the `otel` version).
#[cfg(not(feature = "otel"))]
pub fn current_trace() -> Option<TraceContext> {
    None
}
