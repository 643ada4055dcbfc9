//! Typed domain events and their conversion to and from envelopes.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::envelope::{CloudEvent, CloudEventBuilder, JSON, ext};
use crate::error::DecodeError;

/// A typed domain event. Implement it with one line:
///
/// ```
/// use keel_core::Event;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Event, Serialize, Deserialize)]
/// #[event(type = "order.placed", version = 2, key = order_id)]
/// struct OrderPlaced { order_id: String, total_cents: i64 }
///
/// assert_eq!(OrderPlaced::TYPE, "order.placed");
/// ```
///
/// `type` defaults to the struct's name, `version` to 1, and without `key` the event
/// has no partition key (brokers then spread it freely).
pub trait Event: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The CloudEvents `type`.
    const TYPE: &'static str;
    /// The version of the data's schema, carried in the `schemaversion` extension.
    const SCHEMA_VERSION: u32 = 1;

    /// The key that orders this event relative to others (`partitionkey`).
    fn partition_key(&self) -> Option<String> {
        None
    }
}

/// A closed set of event types one stream or handler understands: every [`Event`] is a
/// set of one, and an enum of events (`#[derive(EventSet)]`-style) is a larger one.
pub trait EventSet: Sized + Send + Sync + 'static {
    /// The CloudEvents types in the set.
    fn types() -> Vec<&'static str>;
    /// This value's CloudEvents type.
    fn event_type(&self) -> &'static str;
    /// This value's data schema version.
    fn schema_version(&self) -> u32;
    /// This value's partition key.
    fn partition_key(&self) -> Option<String>;
    /// This value's data as JSON.
    fn to_json(&self) -> Result<Vec<u8>, serde_json::Error>;
    /// Decodes data of type `ty`; `Ok(None)` when `ty` is not in the set.
    fn from_json(ty: &str, data: &[u8]) -> Result<Option<Self>, DecodeError>;
}

impl<E: Event> EventSet for E {
    fn types() -> Vec<&'static str> {
        vec![E::TYPE]
    }
    fn event_type(&self) -> &'static str {
        E::TYPE
    }
    fn schema_version(&self) -> u32 {
        E::SCHEMA_VERSION
    }
    fn partition_key(&self) -> Option<String> {
        Event::partition_key(self)
    }
    fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }
    fn from_json(ty: &str, data: &[u8]) -> Result<Option<Self>, DecodeError> {
        if ty != E::TYPE {
            return Ok(None);
        }
        serde_json::from_slice(data).map(Some).map_err(|source| DecodeError::Data {
            ty: ty.to_owned(),
            target: std::any::type_name::<E>(),
            source,
        })
    }
}

impl CloudEvent {
    /// Starts an envelope for a typed event: type, schema version, partition key and
    /// JSON data filled in; add the subject (stream) and trace context as needed.
    pub fn from_event<E: EventSet>(
        event: &E,
        source: impl Into<String>,
    ) -> Result<CloudEventBuilder, serde_json::Error> {
        let data = event.to_json()?;
        let mut builder = CloudEvent::builder(event.event_type(), source)
            .data(JSON, data)
            .extension(ext::SCHEMA_VERSION, i64::from(event.schema_version()));
        if let Some(key) = event.partition_key() {
            builder = builder.partition_key(key);
        }
        Ok(builder)
    }

    /// Decodes the data as one of the types of `E`.
    pub fn decode<E: EventSet>(&self) -> Result<E, DecodeError> {
        let data = self.data().map(|d| &d[..]).unwrap_or(b"null");
        E::from_json(self.ty(), data)?.ok_or_else(|| DecodeError::UnexpectedType {
            found: self.ty().to_owned(),
            expected: E::types().join(" or "),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate as keel_core;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, crate::Event, Serialize, Deserialize)]
    #[event(type = "order.placed", version = 2, key = order_id, crate = keel_core)]
    struct OrderPlaced {
        order_id: String,
        total_cents: i64,
    }

    #[derive(Debug, PartialEq, crate::Event, Serialize, Deserialize)]
    #[event(crate = keel_core)]
    struct Pinged;

    #[test]
    fn derive_fills_type_version_and_key() {
        assert_eq!(OrderPlaced::TYPE, "order.placed");
        assert_eq!(OrderPlaced::SCHEMA_VERSION, 2);
        assert_eq!(Pinged::TYPE, "Pinged");
        assert_eq!(Pinged::SCHEMA_VERSION, 1);
        let placed = OrderPlaced { order_id: "o-1".into(), total_cents: 5 };
        assert_eq!(Event::partition_key(&placed), Some("o-1".into()));
        assert_eq!(Event::partition_key(&Pinged), None);
    }

    #[test]
    fn typed_events_round_trip_through_envelopes() -> Result<(), Box<dyn std::error::Error>> {
        let placed = OrderPlaced { order_id: "o-1".into(), total_cents: 5 };
        let ev = CloudEvent::from_event(&placed, "/orders")?.subject("order-o-1").build()?;
        assert_eq!(ev.ty(), "order.placed");
        assert_eq!(ev.partition_key(), Some("o-1"));
        assert_eq!(ev.schema_version(), Some(2));
        assert_eq!(ev.decode::<OrderPlaced>()?, placed);
        let wrong = ev.decode::<Pinged>().expect_err("other type");
        assert!(matches!(wrong, DecodeError::UnexpectedType { .. }));
        Ok(())
    }

    #[test]
    fn bad_data_is_a_typed_error() -> Result<(), Box<dyn std::error::Error>> {
        let ev = CloudEvent::builder("order.placed", "/orders")
            .data(JSON, r#"{"order_id":1}"#)
            .build()?;
        let err = ev.decode::<OrderPlaced>().expect_err("bad data");
        assert!(matches!(err, DecodeError::Data { .. }), "{err}");
        Ok(())
    }
}
