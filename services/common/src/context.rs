//! The context a request gives the events it writes, and typed events as envelopes.

use http::HeaderMap;
use keel_bus::layer::{EventContext, current_context};
use keel_core::{CloudEvent, Event, TraceContext};

use crate::error::{Result, ServiceError};

/// The open mode's subject header (see [`keel_service::SUBJECT`]).
pub const SUBJECT_HEADER: &str = keel_service::SUBJECT;

/// The context of an HTTP request: the task's current context if middleware set one,
/// completed from the headers: the trace from `traceparent` (a child span; a new trace
/// without one), the correlation from `x-request-id`. The actor comes only from the
/// service kit, which verifies who is calling ([`keel_service::Caller`]): a header
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

/// The envelope of a typed event from `source`, stamped with `context` (actor, trace,
/// correlation, causation), ready to append.
pub fn envelope<E: Event>(event: &E, source: &str, context: &EventContext) -> Result<CloudEvent> {
    let mut envelope = CloudEvent::from_event(event, source)?
        .build()
        .map_err(|e| ServiceError::Event(e.to_string()))?;
    context.apply(&mut envelope);
    Ok(envelope)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde::{Deserialize, Serialize};

    #[derive(Event, Serialize, Deserialize)]
    #[event(type = "test.pinged", key = id)]
    struct Pinged {
        id: String,
    }

    #[test]
    fn the_trace_continues_but_a_subject_header_alone_is_no_actor() {
        let mut headers = HeaderMap::new();
        headers.insert(SUBJECT_HEADER, "user-7".parse().unwrap());
        headers.insert(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".parse().unwrap(),
        );
        let context = request_context(&headers);
        let event = envelope(&Pinged { id: "1".into() }, "/test", &context).unwrap();
        assert_eq!(event.actor(), None);
        assert!(event.traceparent().unwrap().contains("0af7651916cd43dd8448eb211c80319c"));
        assert_eq!(event.partition_key(), Some("1"));
    }
}
