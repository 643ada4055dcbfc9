//! The context a request gives the events it writes.

use http::HeaderMap;
use keel_bus::layer::{EventContext, current_context};
use keel_core::TraceContext;

/// The context of an HTTP request: the task's current context if middleware set one,
/// completed from the headers: the trace from `traceparent` (a child span; a new trace
/// without one), the correlation from `x-request-id`. The actor comes only from the
/// service kit, which verifies who is calling ([`crate::Caller`]): a header
/// alone never names one, or whoever reaches a service's port could write events in
/// someone else's name.
pub fn request_context(headers: &HeaderMap) -> EventContext {
    let header = |name: &str| {
        headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim).filter(|v| !v.is_empty())
    };
    let mut context = current_context().unwrap_or_default();
    if context.trace.is_none() {
        let incoming = header("traceparent").and_then(|t| TraceContext::parse(t).ok());
        let incoming = incoming.map(|t| t.with_state(header("tracestate").map(str::to_owned)));
        context.trace = Some(incoming.map_or_else(TraceContext::new_root, |t| t.child()));
    }
    if context.correlation_id.is_none() {
        context.correlation_id = header("x-request-id").map(str::to_owned);
    }
    context
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_trace_continues_but_a_subject_header_alone_is_no_actor() {
        let mut headers = HeaderMap::new();
        headers.insert(crate::SUBJECT, "user-7".parse().unwrap());
        headers.insert(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".parse().unwrap(),
        );
        let context = request_context(&headers);
        assert_eq!(context.actor, None);
        let trace = context.trace.unwrap();
        assert_eq!(trace.trace_id(), "0af7651916cd43dd8448eb211c80319c");
        assert_ne!(trace.span_id(), "b7ad6b7169203331", "a child span");
    }
}
