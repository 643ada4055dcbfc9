//! Published events in the log, and back.
//!
//! The log owns some attributes of what it stores: `subject` is the stream, `position`
//! and `streamversion` are set when reading, `time` is kept to the microsecond, event
//! ids are unique. A subscriber must receive a published event exactly as it was
//! published, so [`to_log`] records what the log would change in one extension,
//! [`MARKER`] (a small JSON object), and [`from_log`] puts it back. Events that
//! services append to the log themselves carry no marker and are delivered as the
//! log has them (with their position and stream version), as the relay would.

use chrono::{DateTime, SecondsFormat, Timelike as _, Utc};
use keel_core::envelope::ext;
use keel_core::{CloudEvent, DecodeError, ExtensionValue, StreamId};
use serde::{Deserialize, Serialize};

/// The extension that marks an event as published through the log bus.
pub const MARKER: &str = "keelbus";

/// What the log changed, to be undone on delivery. Short names: it is stored per event.
#[derive(Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
struct Restore {
    /// The event had no subject (the stream was made up for it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    ns: bool,
    /// The event had no time.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    nt: bool,
    /// The time, when finer than a microsecond.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    t: Option<String>,
    /// The publisher's own `position` extension.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    p: Option<i64>,
    /// The publisher's own `streamversion` extension.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    v: Option<i64>,
    /// The publisher's own `topic` extension.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    o: Option<String>,
    /// The event's id, when the row has another one (the id was in the log already).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    i: Option<String>,
}

fn integer(event: &CloudEvent, name: &str) -> Option<i64> {
    match event.extension(name) {
        Some(ExtensionValue::Integer(i)) => Some(*i),
        _ => None,
    }
}

/// The stream and the envelope to append for `event` published to `topic`.
/// `fresh_id`: store it under a new row id (its own id is already in the log).
/// `batch_stream`: the stream of events without a subject.
pub(crate) fn to_log(
    topic: &str,
    event: &CloudEvent,
    batch_stream: &StreamId,
    fresh_id: bool,
) -> Result<(StreamId, CloudEvent), DecodeError> {
    let restore = Restore {
        ns: event.subject().is_none(),
        nt: event.time().is_none(),
        t: event.time().filter(|t| t.nanosecond() % 1000 != 0).map(rfc3339),
        p: integer(event, ext::POSITION),
        v: integer(event, ext::STREAM_VERSION),
        o: event.extension(ext::TOPIC).map(ToString::to_string),
        i: fresh_id.then(|| event.id().to_owned()),
    };
    let stream = match event.subject() {
        Some(subject) => StreamId::new(subject)?,
        None => batch_stream.clone(),
    };
    let id = if fresh_id { uuid::Uuid::now_v7().to_string() } else { event.id().to_owned() };
    let mut builder = CloudEvent::rebuild(id, event.ty(), event.source())
        .subject(stream.as_str())
        .content(event.datacontenttype().map(str::to_owned), event.data().cloned());
    if let Some(time) = event.time() {
        builder = builder.time(time);
    }
    if let Some(schema) = event.dataschema() {
        builder = builder.dataschema(schema);
    }
    for (name, value) in event.extensions() {
        if !matches!(name.as_str(), ext::POSITION | ext::STREAM_VERSION | ext::TOPIC | MARKER) {
            builder = builder.extension(name.clone(), value.clone());
        }
    }
    let marker = serde_json::to_string(&restore).map_err(DecodeError::Json)?;
    let stored = builder.extension(ext::TOPIC, topic).extension(MARKER, marker).build()?;
    Ok((stream, stored))
}

fn rfc3339(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// The event as it was published, if it carries the marker; otherwise as read.
pub(crate) fn from_log(event: CloudEvent) -> CloudEvent {
    let Some(ExtensionValue::String(marker)) = event.extension(MARKER) else { return event };
    let Ok(restore) = serde_json::from_str::<Restore>(marker) else {
        tracing::warn!(id = event.id(), "an event carries an unreadable `{MARKER}` extension");
        return event;
    };
    let id = restore.i.clone().unwrap_or_else(|| event.id().to_owned());
    let mut builder = CloudEvent::rebuild(id, event.ty(), event.source())
        .content(event.datacontenttype().map(str::to_owned), event.data().cloned());
    if !restore.ns
        && let Some(subject) = event.subject()
    {
        builder = builder.subject(subject);
    }
    let time = match &restore.t {
        Some(t) => keel_core::envelope::parse_time(t).ok().or(event.time()),
        None => event.time(),
    };
    if !restore.nt
        && let Some(time) = time
    {
        builder = builder.time(time);
    }
    if let Some(schema) = event.dataschema() {
        builder = builder.dataschema(schema);
    }
    for (name, value) in event.extensions() {
        if !matches!(name.as_str(), ext::POSITION | ext::STREAM_VERSION | MARKER) {
            builder = builder.extension(name.clone(), value.clone());
        }
    }
    if let Some(p) = restore.p {
        builder = builder.extension(ext::POSITION, p);
    }
    if let Some(v) = restore.v {
        builder = builder.extension(ext::STREAM_VERSION, v);
    }
    if let Some(o) = restore.o {
        builder = builder.extension(ext::TOPIC, o);
    }
    match builder.build() {
        Ok(restored) => restored,
        Err(error) => {
            tracing::warn!(id = event.id(), %error, "could not restore a published event");
            event
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn stored_and_read(topic: &str, event: &CloudEvent, fresh: bool) -> CloudEvent {
        let batch = StreamId::new(format!("{topic}-batch")).unwrap();
        let (stream, mut stored) = to_log(topic, event, &batch, fresh).unwrap();
        // What a store does: drops `topic` into a column, truncates time, sets these.
        stored.remove_extension(ext::TOPIC);
        stored.set_position(keel_core::Position(99));
        stored.set_stream_version(keel_core::StreamVersion(3));
        assert_eq!(stored.subject(), Some(stream.as_str()));
        from_log(stored)
    }

    #[test]
    fn a_published_event_comes_back_unchanged() {
        let event = CloudEvent::builder("t", "/s")
            .time("2026-11-27T09:30:12.123456789Z".parse().unwrap())
            .extension(ext::POSITION, 5_i64)
            .extension("other", "x")
            .build()
            .unwrap();
        assert_eq!(stored_and_read("orders", &event, false), event);
        assert_eq!(stored_and_read("orders", &event, true), event);
        let keyed = CloudEvent::builder("t", "/s").subject("order-1").no_time().build().unwrap();
        assert_eq!(stored_and_read("orders", &keyed, false), keyed);
    }

    #[test]
    fn events_without_the_marker_are_left_alone() {
        let mut event = CloudEvent::builder("t", "/s").subject("order-1").build().unwrap();
        event.set_position(keel_core::Position(4));
        assert_eq!(from_log(event.clone()), event);
    }
}
