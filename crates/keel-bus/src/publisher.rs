//! Publishing typed events.

use std::sync::Arc;

use keel_core::{BusError, CloudEvent, EventSet, Publisher};

use crate::layer::current_context;

/// Publishes typed events as CloudEvents from one `source`, stamping the current
/// [`crate::layer::EventContext`] (trace, correlation, causation, actor) on each.
#[derive(Clone)]
pub struct EventPublisher {
    publisher: Arc<dyn Publisher>,
    source: Arc<str>,
}

impl std::fmt::Debug for EventPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventPublisher").field("source", &self.source).finish_non_exhaustive()
    }
}

impl EventPublisher {
    pub fn new(publisher: Arc<dyn Publisher>, source: impl Into<String>) -> Self {
        Self { publisher, source: source.into().into() }
    }

    /// The envelope `publish` would send for `event`.
    pub fn envelope<E: EventSet>(&self, event: &E) -> Result<CloudEvent, BusError> {
        let mut envelope = CloudEvent::from_event(event, &*self.source)
            .map_err(|e| BusError::Backend(Box::new(e)))?
            .build()?;
        if let Some(context) = current_context() {
            context.apply(&mut envelope);
        }
        Ok(envelope)
    }

    /// Publishes one event and returns its envelope once the broker confirmed it.
    pub async fn publish<E: EventSet>(
        &self,
        topic: &str,
        event: &E,
    ) -> Result<CloudEvent, BusError> {
        let envelope = self.envelope(event)?;
        self.publisher.publish(topic, std::slice::from_ref(&envelope)).await?;
        metrics::counter!("keel_published_total", "topic" => topic.to_owned()).increment(1);
        Ok(envelope)
    }

    /// Publishes events in order, confirmed together.
    pub async fn publish_all<E: EventSet>(
        &self,
        topic: &str,
        events: &[E],
    ) -> Result<Vec<CloudEvent>, BusError> {
        let envelopes = events.iter().map(|e| self.envelope(e)).collect::<Result<Vec<_>, _>>()?;
        self.publisher.publish(topic, &envelopes).await?;
        metrics::counter!("keel_published_total", "topic" => topic.to_owned())
            .increment(envelopes.len() as u64);
        Ok(envelopes)
    }
}
