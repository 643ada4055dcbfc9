//! JSON Schemas of event types (feature `schema`, through `schemars`), and a
//! [`Catalog`] of the event types a program knows, which `keel schema export` prints and
//! `keel schema check` decodes the log's events against.
//!
//! ```
//! use keel_core::{Event, schema::Catalog};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Event, Serialize, Deserialize, schemars::JsonSchema)]
//! #[event(type = "order.placed", version = 2)]
//! struct OrderPlaced { order_id: String, total_cents: i64 }
//!
//! let catalog = Catalog::new().with::<OrderPlaced>();
//! let schemas = catalog.schemas();
//! assert_eq!((schemas[0].event_type, schemas[0].version), ("order.placed", 2));
//! assert_eq!(schemas[0].schema["properties"]["total_cents"]["type"], "integer");
//! ```

use serde::Serialize;
use serde_json::Value;

use crate::envelope::CloudEvent;
use crate::error::DecodeError;
use crate::event::Event;

/// The JSON Schema of one event type at the schema version the code expects.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EventSchema {
    /// The CloudEvents type.
    pub event_type: &'static str,
    /// [`Event::SCHEMA_VERSION`].
    pub version: u32,
    /// The JSON Schema (draft 2020-12) of the event's data.
    pub schema: Value,
}

/// The JSON Schema of `E`'s data.
pub fn schema_of<E: Event + schemars::JsonSchema>() -> EventSchema {
    EventSchema {
        event_type: E::TYPE,
        version: E::SCHEMA_VERSION,
        schema: schemars::schema_for!(E).to_value(),
    }
}

/// One event type in a [`Catalog`].
#[derive(Clone, Copy, Debug)]
struct Entry {
    event_type: &'static str,
    schema: fn() -> EventSchema,
    decode: fn(&CloudEvent) -> Result<(), DecodeError>,
}

/// The event types a program knows: their schemas, and a check that an envelope
/// decodes as the code would decode it (upcasters included).
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    entries: Vec<Entry>,
}

impl Catalog {
    /// An empty catalog.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `E` (a later type of the same name replaces an earlier one).
    #[must_use]
    pub fn with<E: Event + schemars::JsonSchema>(mut self) -> Self {
        self.entries.retain(|e| e.event_type != E::TYPE);
        self.entries.push(Entry {
            event_type: E::TYPE,
            schema: schema_of::<E>,
            decode: |event| event.decode::<E>().map(drop),
        });
        self
    }

    /// The schemas, in the order the types were added.
    pub fn schemas(&self) -> Vec<EventSchema> {
        self.entries.iter().map(|e| (e.schema)()).collect()
    }

    /// The CloudEvents types in the catalog.
    pub fn types(&self) -> Vec<&'static str> {
        self.entries.iter().map(|e| e.event_type).collect()
    }

    /// Decodes `event` as the code of its type would: `None` when the catalog does not
    /// know the type.
    pub fn check(&self, event: &CloudEvent) -> Option<Result<(), DecodeError>> {
        let entry = self.entries.iter().find(|e| e.event_type == event.ty())?;
        Some((entry.decode)(event))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate as keel_core;
    use crate::envelope::{JSON, ext};
    use serde::Deserialize;

    #[derive(crate::Event, Serialize, Deserialize, schemars::JsonSchema)]
    #[event(type = "order.placed", version = 2, crate = keel_core, upcast(from = 1, with = v1_to_v2))]
    struct Placed {
        order_id: String,
        total_cents: i64,
    }

    fn v1_to_v2(mut data: Value) -> Result<Value, String> {
        let total = data["total"].as_i64().ok_or("`total` is not an integer")?;
        data["total_cents"] = (total * 100).into();
        Ok(data)
    }

    fn event(version: i64, data: &str) -> CloudEvent {
        CloudEvent::builder("order.placed", "/t")
            .data(JSON, data.to_owned())
            .extension(ext::SCHEMA_VERSION, version)
            .build()
            .expect("valid")
    }

    #[test]
    fn the_catalog_checks_with_upcasters_and_knows_its_types() {
        let catalog = Catalog::new().with::<Placed>();
        assert_eq!(catalog.types(), vec!["order.placed"]);
        let schema = &catalog.schemas()[0];
        assert_eq!(schema.version, 2);
        let required = schema.schema["required"].as_array().expect("required");
        assert!(required.contains(&"total_cents".into()), "{}", schema.schema);
        assert!(matches!(catalog.check(&event(1, r#"{"order_id":"o","total":1}"#)), Some(Ok(()))));
        assert!(matches!(
            catalog.check(&event(1, r#"{"total":1}"#)),
            Some(Err(DecodeError::Data { .. }))
        ));
        assert!(matches!(
            catalog.check(&event(3, r#"{}"#)),
            Some(Err(DecodeError::FutureVersion { .. }))
        ));
        let other = CloudEvent::builder("other", "/t").build().expect("valid");
        assert!(catalog.check(&other).is_none());
    }
}
