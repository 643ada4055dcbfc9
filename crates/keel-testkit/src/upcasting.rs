//! What the upcasting cases share: an event type at version 2 with a step from
//! version 1, and envelopes as an older (or newer) deployment wrote them.
//!
//! Version 1 of `keel.test.placed` was `{"order": "o-1", "total": 12}` in whole units;
//! version 2 is [`PlacedV2`], `{"order": "o-1", "total_cents": 1200}`.

use keel_core::envelope::{JSON, ext};
use keel_core::{CloudEvent, Event, JsonValue};
use serde::{Deserialize, Serialize};

/// The CloudEvents type of the upcasting cases' events.
pub const PLACED: &str = "keel.test.placed";

/// Version 2 of `keel.test.placed`, as the code of the cases expects it.
#[derive(Clone, Debug, PartialEq, Eq, Event, Serialize, Deserialize)]
#[event(type = "keel.test.placed", version = 2, key = order, upcast(from = 1, with = v1_to_v2))]
pub struct PlacedV2 {
    /// The order's id.
    pub order: String,
    /// The total in cents (version 1 had `total` in whole units).
    pub total_cents: i64,
}

/// The step from version 1 to 2: `total` (units) becomes `total_cents`.
pub fn v1_to_v2(data: JsonValue) -> Result<JsonValue, String> {
    let order = data.get("order").cloned().ok_or("version 1 has no `order`")?;
    let total = data.get("total").and_then(JsonValue::as_i64).ok_or("`total` is not an integer")?;
    Ok(serde_json::json!({ "order": order, "total_cents": total * 100 }))
}

/// An event as version-1 code wrote it: no `schemaversion` (so version 1).
pub fn v1(order: &str, total: i64) -> CloudEvent {
    CloudEvent::builder(PLACED, "/keel/testkit")
        .data(JSON, serde_json::json!({ "order": order, "total": total }).to_string())
        .partition_key(order)
        .build()
        .expect("valid envelope")
}

/// An event as a newer deployment (version 3) wrote it.
pub fn v3(order: &str) -> CloudEvent {
    CloudEvent::builder(PLACED, "/keel/testkit")
        .data(
            JSON,
            serde_json::json!({ "order": order, "total_cents": 1, "currency": "EUR" }).to_string(),
        )
        .extension(ext::SCHEMA_VERSION, 3_i64)
        .partition_key(order)
        .build()
        .expect("valid envelope")
}

/// The v2 value a [`v1`] event must decode to.
pub fn expected(order: &str, total: i64) -> PlacedV2 {
    PlacedV2 { order: order.to_owned(), total_cents: total * 100 }
}

/// Asserts that decoding `event` fails as a future version (3 against the code's 2).
pub fn assert_future(event: &CloudEvent) {
    match event.decode::<PlacedV2>() {
        Err(keel_core::DecodeError::FutureVersion { version: 3, known: 2, .. }) => {}
        other => panic!("a version-3 event must be a FutureVersion error, got {other:?}"),
    }
    assert_eq!(PlacedV2::SCHEMA_VERSION, 2);
}
