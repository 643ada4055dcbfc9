//! Upcasting: bringing event data written at an older schema version up to the version
//! the code expects, one step (N to N+1) at a time.
//!
//! An event type declares its steps where it is defined, so every place that decodes it
//! (consumers, projections, replay, aggregate loading) applies them without plumbing:
//!
//! ```
//! use keel_core::{CloudEvent, Event, JsonValue};
//! use serde::{Deserialize, Serialize};
//!
//! /// v1 had `total` in whole units; v2 has `total_cents`; v3 adds `currency`.
//! #[derive(Event, Serialize, Deserialize)]
//! #[event(type = "order.placed", version = 3,
//!         upcast(from = 1, with = v1_to_v2),
//!         upcast(from = 2, typed = v2_to_v3))]
//! struct OrderPlaced { order_id: String, total_cents: i64, currency: String }
//!
//! fn v1_to_v2(mut data: JsonValue) -> Result<JsonValue, String> {
//!     let total = data["total"].as_i64().ok_or("`total` is not an integer")?;
//!     data["total_cents"] = (total * 100).into();
//!     Ok(data)
//! }
//!
//! #[derive(Deserialize)]
//! struct OrderPlacedV2 { order_id: String, total_cents: i64 }
//!
//! fn v2_to_v3(v2: OrderPlacedV2) -> OrderPlaced {
//!     OrderPlaced { order_id: v2.order_id, total_cents: v2.total_cents, currency: "EUR".into() }
//! }
//!
//! let v1 = CloudEvent::builder("order.placed", "/orders")
//!     .data("application/json", r#"{"order_id":"o-1","total":12}"#)
//!     .build()?; // no `schemaversion`: version 1
//! let placed: OrderPlaced = v1.decode()?;
//! assert_eq!((placed.total_cents, placed.currency.as_str()), (1200, "EUR"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! A JSON step (`with`) is `fn(JsonValue) -> Result<JsonValue, E>` with `E` any error
//! or message; a typed step (`typed`) is `fn(Old) -> New` between serde types (a step
//! that can fail is a JSON step). Data without a `schemaversion` is version 1. A
//! version newer than the code's is [`DecodeError::FutureVersion`]; an older one without a path of
//! steps to the code's is [`DecodeError::MissingUpcaster`]; a step that fails is
//! [`DecodeError::Upcast`]. None of these is ever replaced by a default.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::DecodeError;
use crate::event::Event;

/// Why one upcasting step failed (its own message, or a serde error).
pub type StepError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The schema version of data whose envelope carries no `schemaversion`.
pub const DEFAULT_VERSION: u32 = 1;

/// Brings `data`, written at `version`, up to `E::SCHEMA_VERSION` through the steps
/// `E` declares ([`Event::upcast_step`]).
pub fn upcast<E: Event>(version: u32, data: Value) -> Result<Value, DecodeError> {
    let known = E::SCHEMA_VERSION;
    if version > known {
        return Err(DecodeError::FutureVersion { event_type: E::TYPE.to_owned(), version, known });
    }
    let mut data = data;
    for from in version..known {
        data = match E::upcast_step(from, data) {
            Some(Ok(next)) => next,
            Some(Err(source)) => {
                return Err(DecodeError::Upcast { event_type: E::TYPE.to_owned(), from, source });
            }
            None => {
                return Err(DecodeError::MissingUpcaster {
                    event_type: E::TYPE.to_owned(),
                    from,
                    to: known,
                });
            }
        };
    }
    Ok(data)
}

/// Decodes `data`, written at `version`, as `E`: directly at the code's version,
/// through the upcasting steps from an older one.
pub fn decode_at<E: Event>(version: u32, data: &[u8]) -> Result<E, DecodeError> {
    let data_error = |source| DecodeError::Data {
        ty: E::TYPE.to_owned(),
        target: std::any::type_name::<E>(),
        source,
    };
    if version == E::SCHEMA_VERSION {
        return serde_json::from_slice(data).map_err(data_error);
    }
    let value: Value = serde_json::from_slice(data).map_err(data_error)?;
    let value = upcast::<E>(version, value)?;
    serde_json::from_value(value).map_err(data_error)
}

/// Runs a JSON step (what `upcast(from = N, with = f)` expands to).
pub fn json_step<Err: Into<StepError>>(
    step: fn(Value) -> Result<Value, Err>,
    data: Value,
) -> Result<Value, StepError> {
    step(data).map_err(Into::into)
}

/// Runs a typed step (what `upcast(from = N, typed = f)` expands to): the data is read
/// as the step's input type and its output written back as JSON.
pub fn typed_step<Old, New>(step: fn(Old) -> New, data: Value) -> Result<Value, StepError>
where
    Old: DeserializeOwned,
    New: Serialize,
{
    let old: Old = serde_json::from_value(data)?;
    Ok(serde_json::to_value(step(old))?)
}
