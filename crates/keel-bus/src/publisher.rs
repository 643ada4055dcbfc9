//! Publishing typed events.

use std::sync::Arc;

use keel_core::{BusError, CloudEvent, EventSet, Publisher};

use crate::layer::current_context;

/// Publishes typed events as CloudEvents from one `source`, stamping the current
/// [`crate::layer::EventContext`] (trace, correlation, causation, actor) on each.
///
/// ```no_run
/// use std::sync::Arc;
/// use keel_bus::EventPublisher;
/// use keel_core::{BusError, Event, Publisher};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Event, Serialize, Deserialize)]
/// #[event(type = "order.placed", key = order_id)] // orders keep their order per id
/// struct OrderPlaced {
///     order_id: String,
///     total_cents: u64,
/// }
///
/// async fn place(bus: Arc<dyn Publisher>) -> Result<(), BusError> {
///     let events = EventPublisher::new(bus, "/orders");
///     let placed = OrderPlaced { order_id: "o-1".into(), total_cents: 4200 };
///     // Returns once the broker has confirmed the event; inside a request or a handler
///     // the envelope also carries its trace, correlation and actor.
///     let envelope = events.publish("orders", &placed).await?;
///     println!("published {}", envelope.id());
///     Ok(())
/// }
/// ```
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
    /// Publishes through `publisher`, with `source` as every envelope's `source`
    /// attribute (a URI-reference naming the service, such as `/orders`).
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
