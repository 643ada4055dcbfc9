//! Typed domain events and their conversion to and from envelopes.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::envelope::{CloudEvent, CloudEventBuilder, JSON, ext};
use crate::error::DecodeError;
use crate::upcast::{self, StepError};

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
/// has no partition key (brokers then spread it freely). Data written at older
/// versions is brought up to `version` by the steps declared with `upcast(...)`
/// (see [`crate::upcast`]).
pub trait Event: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The CloudEvents `type`.
    const TYPE: &'static str;
    /// The version of the data's schema, carried in the `schemaversion` extension.
    const SCHEMA_VERSION: u32 = 1;

    /// The key that orders this event relative to others (`partitionkey`).
    fn partition_key(&self) -> Option<String> {
        None
    }

    /// One upcasting step: `data` at schema version `from`, brought to `from + 1`;
    /// `None` when the type has no step from `from`. Declared with
    /// `#[event(upcast(from = N, with = f))]`; decoding applies the steps in turn.
    fn upcast_step(from: u32, data: Value) -> Option<Result<Value, StepError>> {
        let _ = (from, data);
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
    /// Decodes data of type `ty` written at schema `version` (1 when the envelope
    /// carries none), upcasting it to the code's version; `Ok(None)` when `ty` is not
    /// in the set.
    fn from_json(ty: &str, version: u32, data: &[u8]) -> Result<Option<Self>, DecodeError>;
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
    fn from_json(ty: &str, version: u32, data: &[u8]) -> Result<Option<Self>, DecodeError> {
        if ty != E::TYPE {
            return Ok(None);
        }
        upcast::decode_at::<E>(version, data).map(Some)
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

    /// The schema version of the data: the `schemaversion` attribute, or 1 without one.
    pub fn data_version(&self) -> Result<u32, DecodeError> {
        match self.schema_version() {
            None => Ok(upcast::DEFAULT_VERSION),
            Some(v) => u32::try_from(v)
                .ok()
                .filter(|v| *v >= 1)
                .ok_or(DecodeError::InvalidSchemaVersion(v)),
        }
    }

    /// Decodes the data as one of the types of `E`, upcast from the schema version it
    /// was written at ([`CloudEvent::data_version`]) to the code's.
    pub fn decode<E: EventSet>(&self) -> Result<E, DecodeError> {
        let data = self.data().map(|d| &d[..]).unwrap_or(b"null");
        E::from_json(self.ty(), self.data_version()?, data)?.ok_or_else(|| {
            DecodeError::UnexpectedType {
                found: self.ty().to_owned(),
                expected: E::types().join(" or "),
            }
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
            .extension(ext::SCHEMA_VERSION, 2_i64)
            .build()?;
        let err = ev.decode::<OrderPlaced>().expect_err("bad data");
        assert!(matches!(err, DecodeError::Data { .. }), "{err}");
        Ok(())
    }

    /// v1: `{"order_id", "total"}` in whole units; v2: `total_cents`; v3: `currency`.
    #[derive(Debug, PartialEq, crate::Event, Serialize, Deserialize)]
    #[event(
        type = "order.placed", version = 3, crate = keel_core,
        upcast(from = 1, with = v1_to_v2),
        upcast(from = 2, typed = v2_to_v3)
    )]
    struct OrderPlacedV3 {
        order_id: String,
        total_cents: i64,
        currency: String,
    }

    fn v1_to_v2(mut data: Value) -> Result<Value, String> {
        let total = data["total"].as_i64().ok_or("`total` is not an integer")?;
        data["total_cents"] = (total * 100).into();
        Ok(data)
    }

    #[derive(Deserialize)]
    struct V2 {
        order_id: String,
        total_cents: i64,
    }

    fn v2_to_v3(v2: V2) -> OrderPlacedV3 {
        OrderPlacedV3 { order_id: v2.order_id, total_cents: v2.total_cents, currency: "EUR".into() }
    }

    /// Version 3 with no step from 1: version-1 data cannot be read.
    #[derive(Debug, PartialEq, crate::Event, Serialize, Deserialize)]
    #[event(type = "order.placed", version = 3, crate = keel_core, upcast(from = 2, typed = v2_to_v3))]
    struct OnlyFromV2 {
        currency: String,
    }

    fn at_version(version: Option<i64>, data: &str) -> CloudEvent {
        let mut b = CloudEvent::builder("order.placed", "/orders").data(JSON, data.to_owned());
        if let Some(v) = version {
            b = b.extension(ext::SCHEMA_VERSION, v);
        }
        b.build().expect("valid envelope")
    }

    #[test]
    fn data_without_a_version_is_v1_and_goes_through_every_step() {
        let v1 = at_version(None, r#"{"order_id":"o-1","total":12}"#);
        let decoded: OrderPlacedV3 = v1.decode().expect("upcast");
        assert_eq!(
            decoded,
            OrderPlacedV3 { order_id: "o-1".into(), total_cents: 1200, currency: "EUR".into() }
        );
        let v2 = at_version(Some(2), r#"{"order_id":"o-2","total_cents":7}"#);
        assert_eq!(v2.decode::<OrderPlacedV3>().expect("upcast").total_cents, 7);
        let v3 = at_version(Some(3), r#"{"order_id":"o-3","total_cents":8,"currency":"USD"}"#);
        assert_eq!(v3.decode::<OrderPlacedV3>().expect("current").currency, "USD");
    }

    #[test]
    fn a_future_version_is_an_error_naming_both_versions() {
        let v4 = at_version(Some(4), r#"{"order_id":"o-1","total_cents":8,"currency":"USD"}"#);
        let err = v4.decode::<OrderPlacedV3>().expect_err("future");
        assert!(
            matches!(&err, DecodeError::FutureVersion { event_type, version: 4, known: 3 } if event_type == "order.placed"),
            "{err}"
        );
        assert!(err.to_string().contains("schema version 4, newer than the 3"), "{err}");
        // A type that never declared a version is v1: v2 data is from the future too.
        let pinged = CloudEvent::builder("Pinged", "/p").extension(ext::SCHEMA_VERSION, 2_i64);
        let err = pinged.build().expect("valid").decode::<Pinged>().expect_err("future");
        assert!(matches!(err, DecodeError::FutureVersion { version: 2, known: 1, .. }), "{err}");
    }

    #[test]
    fn a_missing_step_and_a_failing_step_are_errors() {
        let v1 = at_version(Some(1), r#"{"order_id":"o-1","total":12}"#);
        let err = v1.decode::<OnlyFromV2>().expect_err("no step from 1");
        assert!(matches!(err, DecodeError::MissingUpcaster { from: 1, to: 3, .. }), "{err}");
        assert!(err.to_string().contains("no upcaster to version 2"), "{err}");
        let bad = at_version(None, r#"{"order_id":"o-1","total":"twelve"}"#);
        let err = bad.decode::<OrderPlacedV3>().expect_err("step fails");
        assert!(matches!(err, DecodeError::Upcast { from: 1, .. }), "{err}");
        assert!(err.to_string().contains("`total` is not an integer"), "{err}");
        // A typed step whose input does not deserialize fails as a step too.
        let bad = at_version(Some(2), r#"{"order_id":"o-1"}"#);
        let err = bad.decode::<OrderPlacedV3>().expect_err("typed step input");
        assert!(matches!(err, DecodeError::Upcast { from: 2, .. }), "{err}");
    }

    #[test]
    fn version_zero_is_invalid() {
        let v0 = at_version(Some(0), r#"{"order_id":"o-1","total":12}"#);
        let err = v0.decode::<OrderPlacedV3>().expect_err("v0");
        assert!(matches!(err, DecodeError::InvalidSchemaVersion(0)), "{err}");
    }

    #[test]
    fn upcast_steps_are_callable_on_json() {
        let value = serde_json::json!({"order_id": "o-1", "total": 2});
        let up = crate::upcast::upcast::<OrderPlacedV3>(1, value).expect("chain");
        assert_eq!(up["total_cents"], 200);
        assert_eq!(up["currency"], "EUR");
    }
}
