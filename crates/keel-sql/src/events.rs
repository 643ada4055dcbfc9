//! Typed events as envelopes, stamped with the context of the work that writes them.

use keel_bus::layer::EventContext;
use keel_core::{CloudEvent, Event};

use crate::error::{Error, Result};

/// The envelope of a typed event from `source`, stamped with `context` (actor, trace,
/// correlation, causation), ready to append.
pub fn envelope<E: Event>(event: &E, source: &str, context: &EventContext) -> Result<CloudEvent> {
    let mut envelope =
        CloudEvent::from_event(event, source)?.build().map_err(|e| Error::Event(e.to_string()))?;
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
    fn the_envelope_carries_the_context_and_the_events_key() {
        let context = EventContext {
            actor: Some("user-7".into()),
            correlation_id: Some("req-1".into()),
            ..EventContext::default()
        };
        let event = envelope(&Pinged { id: "1".into() }, "/test", &context).unwrap();
        assert_eq!(event.ty(), "test.pinged");
        assert_eq!(event.actor(), Some("user-7"));
        assert_eq!(event.correlation_id(), Some("req-1"));
        assert_eq!(event.partition_key(), Some("1"));
    }
}
