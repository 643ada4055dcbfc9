//! Published events in the log, and back.
//!
//! The log owns some attributes of what it stores: `subject` is the stream, `position`
//! and `streamversion` are set when reading, `time` is kept to the microsecond, event
//! ids are unique. A published event goes into the stream of its publish, never into
//! the stream its subject names (that may be an aggregate's, whose versions a bus
//! publish must not touch). A subscriber must receive a published event exactly as it
//! was published, so [`to_log`] records what the log would change, the subject
//! included, in one extension, [`MARKER`] (a small JSON object), and [`from_log`] puts
//! it back. Events that services append to the log themselves carry no marker and are
//! delivered as the log has them (with their position and stream version), as the
//! relay would.

use chrono::{DateTime, SecondsFormat, Timelike as _, Utc};
use keel_core::envelope::ext;
use keel_core::{CloudEvent, DecodeError, ExtensionValue, StreamId};
use serde::{Deserialize, Serialize};

/// The extension that marks an event as published through the log bus.
pub const MARKER: &str = "keelbus";

/// What the log changed, to be undone on delivery. Short names: it is stored per event.
#[derive(Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
struct Restore {
    /// The event's subject (the row's stream is its publish's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    s: Option<String>,
    /// The event had no subject. Rows written before `s` existed have neither when
    /// the subject was the row's stream.
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

/// The envelope to append to `stream`, the publish's own stream, for `event`
/// published to `topic`. `fresh_id`: store it under a new row id (its own id is
/// already in the log).
pub(crate) fn to_log(
    topic: &str,
    event: &CloudEvent,
    stream: &StreamId,
    fresh_id: bool,
) -> Result<CloudEvent, DecodeError> {
    let restore = Restore {
        s: event.subject().map(str::to_owned),
        ns: event.subject().is_none(),
        nt: event.time().is_none(),
        t: event.time().filter(|t| t.nanosecond() % 1000 != 0).map(rfc3339),
        p: integer(event, ext::POSITION),
        v: integer(event, ext::STREAM_VERSION),
        o: event.extension(ext::TOPIC).map(ToString::to_string),
        i: fresh_id.then(|| event.id().to_owned()),
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
    builder.extension(ext::TOPIC, topic).extension(MARKER, marker).build()
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
    let subject = match &restore.s {
        Some(subject) => Some(subject.as_str()),
        None if restore.ns => None,
        None => event.subject(),
    };
    if let Some(subject) = subject {
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
        let stream = StreamId::new(format!("{topic}-batch")).unwrap();
        let mut stored = to_log(topic, event, &stream, fresh).unwrap();
        // What a store does: drops `topic` into a column, sets the subject to the
        // stream, truncates time, sets these.
        stored.remove_extension(ext::TOPIC);
        stored.set_subject(stream.as_str());
        stored.set_position(keel_core::Position(99));
        stored.set_stream_version(keel_core::StreamVersion(3));
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
    fn rows_published_before_subjects_were_kept_apart_read_as_before() {
        // Such a row's stream was the event's subject, and its marker has no `s`.
        let mut stored = CloudEvent::builder("t", "/s")
            .subject("order-1")
            .extension(MARKER, r#"{"nt":true}"#)
            .build()
            .unwrap();
        stored.set_position(keel_core::Position(4));
        let expected = CloudEvent::rebuild(stored.id(), "t", "/s").subject("order-1").build();
        assert_eq!(from_log(stored), expected.unwrap());
    }

    #[test]
    fn events_without_the_marker_are_left_alone() {
        let mut event = CloudEvent::builder("t", "/s").subject("order-1").build().unwrap();
        event.set_position(keel_core::Position(4));
        assert_eq!(from_log(event.clone()), event);
    }
}
