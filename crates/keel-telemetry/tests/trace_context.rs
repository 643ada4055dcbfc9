//! W3C trace context on spans: `continue_trace` and `current_trace` against an
//! in-memory span exporter (thread-local subscribers, so tests run in parallel).
#![cfg(feature = "otel")]
#![allow(clippy::unwrap_used)]

use keel_core::TraceContext;
use keel_telemetry::{continue_trace, current_trace};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tracing_subscriber::layer::SubscriberExt as _;

const INCOMING: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// Runs `f` under a subscriber with an OpenTelemetry layer, returning its result and
/// the spans exported meanwhile.
fn with_otel<T>(f: impl FnOnce() -> T) -> (T, Vec<SpanData>) {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    let out = tracing::subscriber::with_default(subscriber, f);
    (out, exporter.get_finished_spans().unwrap())
}

fn find<'a>(spans: &'a [SpanData], name: &str) -> &'a SpanData {
    spans.iter().find(|span| span.name == name).unwrap()
}

#[test]
fn a_continued_span_is_exported_in_the_incoming_trace() {
    let incoming = TraceContext::parse(INCOMING).unwrap();
    let ((outer, inner), spans) = with_otel(|| {
        let span = tracing::info_span!("keel.handle");
        continue_trace(&span, &incoming);
        let _entered = span.enter();
        let outer = current_trace();
        let inner = tracing::info_span!("handler.work").in_scope(current_trace);
        (outer, inner)
    });
    assert_eq!(spans.len(), 2);
    let handle = find(&spans, "keel.handle");
    assert_eq!(handle.span_context.trace_id().to_string(), incoming.trace_id());
    assert_eq!(handle.parent_span_id.to_string(), incoming.span_id());
    assert!(handle.parent_span_is_remote);

    // The current context inside the span is the span itself, in the same trace.
    let outer = outer.unwrap();
    assert_eq!(outer.trace_id(), incoming.trace_id());
    assert_eq!(outer.span_id(), handle.span_context.span_id().to_string());
    assert!(outer.sampled());

    // Nested spans stay in the trace, children of the continued span.
    let work = find(&spans, "handler.work");
    assert_eq!(work.span_context.trace_id(), handle.span_context.trace_id());
    assert_eq!(work.parent_span_id, handle.span_context.span_id());
    let inner = inner.unwrap();
    assert_eq!(inner.trace_id(), incoming.trace_id());
    assert_eq!(inner.span_id(), work.span_context.span_id().to_string());
}

#[test]
fn tracestate_travels_through_the_span() {
    let incoming =
        TraceContext::parse(INCOMING).unwrap().with_state(Some("keel=abc,other=1".to_owned()));
    let (current, _) = with_otel(|| {
        let span = tracing::info_span!("with.state");
        continue_trace(&span, &incoming);
        span.in_scope(current_trace)
    });
    let current = current.unwrap();
    assert_eq!(current.trace_id(), incoming.trace_id());
    assert_eq!(current.tracestate(), Some("keel=abc,other=1"));
}

#[test]
fn without_a_continued_trace_a_span_starts_a_new_one() {
    let incoming = TraceContext::parse(INCOMING).unwrap();
    let (current, spans) = with_otel(|| tracing::info_span!("fresh").in_scope(current_trace));
    let current = current.unwrap();
    assert_ne!(current.trace_id(), incoming.trace_id());
    assert_eq!(find(&spans, "fresh").span_context.trace_id().to_string(), current.trace_id());
}

#[test]
fn without_an_opentelemetry_layer_both_are_no_ops() {
    let incoming = TraceContext::parse(INCOMING).unwrap();
    let plain = tracing_subscriber::registry().with(tracing_subscriber::fmt::layer());
    let current = tracing::subscriber::with_default(plain, || {
        let span = tracing::info_span!("plain");
        continue_trace(&span, &incoming);
        span.in_scope(current_trace)
    });
    assert_eq!(current, None);

    // No subscriber at all: the span is disabled.
    let span = tracing::Span::none();
    continue_trace(&span, &incoming);
    assert_eq!(span.in_scope(current_trace), None);
}
