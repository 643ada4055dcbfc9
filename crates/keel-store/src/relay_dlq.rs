//! Relay dead letters: events the relay could never publish.
//!
//! When the bus refuses an event for a reason that belongs to the event itself
//! ([`BusError::is_unpublishable`]: larger than the broker accepts, an invalid record,
//! an attribute the wire format cannot carry), retrying it forever would stop the
//! relay for every topic. The relay records it here instead (the store's
//! [`EventLog::save_relay_dead_letter`]), stores its checkpoint past it only once the
//! record is committed, and goes on. The event itself stays in the log; the record
//! names it by position. `keel dlq --relay NAME` lists, shows, retries (publishes the
//! event again through the bus, then deletes the record) and purges them; `keel
//! status` counts them.
//!
//! [`BusError::is_unpublishable`]: keel_core::BusError::is_unpublishable

use chrono::{DateTime, Utc};
use keel_core::{Position, Publisher};

use crate::error::{Result, StoreError};
use crate::log::{EventLog, LogEvent, LogQuery};

/// An event a relay could never publish, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayDeadLetter {
    /// The relay's name (not its checkpoint name).
    pub relay: String,
    /// The event's position in the log: with the relay, the record's key.
    pub position: Position,
    /// The event's id.
    pub event_id: String,
    /// The topic it was to be published on.
    pub topic: String,
    /// The event's type.
    pub event_type: String,
    /// The bus's error.
    pub reason: String,
    /// When the relay gave up on it.
    pub dead_lettered_at: DateTime<Utc>,
}

impl RelayDeadLetter {
    /// A record for `event`, refused with `reason`, now.
    pub fn new(relay: &str, event: &LogEvent, reason: impl Into<String>) -> Self {
        Self {
            relay: relay.to_owned(),
            position: event.cursor.log_position(),
            event_id: event.event.id().to_owned(),
            topic: event.topic.clone(),
            event_type: event.event.ty().to_owned(),
            reason: reason.into(),
            dead_lettered_at: Utc::now(),
        }
    }
}

/// One relay dead letter, if there is one at `position`.
pub async fn find(
    log: &dyn EventLog,
    relay: &str,
    position: Position,
) -> Result<Option<RelayDeadLetter>> {
    Ok(log
        .relay_dead_letters(Some(relay), usize::MAX)
        .await?
        .into_iter()
        .find(|letter| letter.position == position))
}

/// The event a relay dead letter names, read from the log.
pub async fn event_of(log: &dyn EventLog, letter: &RelayDeadLetter) -> Result<LogEvent> {
    let query = LogQuery {
        from: Position(letter.position.0.saturating_sub(1)),
        limit: 1,
        ..LogQuery::default()
    };
    log.read_all(&query)
        .await?
        .into_iter()
        .next()
        .filter(|event| event.event.id() == letter.event_id)
        .ok_or_else(|| {
            StoreError::NotFound(format!(
                "event {} at position {} (named by a dead letter of relay `{}`)",
                letter.event_id, letter.position, letter.relay
            ))
        })
}

/// Publishes the event of a relay dead letter again through `bus` and, once the
/// broker has confirmed it, deletes the record. `Ok(false)` when there is no such
/// record; a failed publish keeps it.
pub async fn retry(
    log: &dyn EventLog,
    bus: &dyn Publisher,
    relay: &str,
    position: Position,
) -> Result<bool> {
    let Some(letter) = find(log, relay, position).await? else { return Ok(false) };
    let event = event_of(log, &letter).await?;
    bus.publish(&event.topic, std::slice::from_ref(&event.event)).await?;
    log.delete_relay_dead_letter(relay, position).await
}
