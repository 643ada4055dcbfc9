//! The row shape both SQL stores use, and its conversion to and from envelopes.

use std::collections::BTreeMap;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use keel_core::envelope::ext;
use keel_core::{CloudEvent, ExtensionValue, StreamId};

use crate::error::{Result, StoreError};
use crate::log::topic_of;

/// An event as a SQL store keeps it. Keel's `position`, `streamversion` and `topic`
/// live in columns, every other extension in a JSON object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEvent {
    /// The event's position in the global log.
    pub position: i64,
    /// The stream id.
    pub stream_id: String,
    /// The event's version in its stream.
    pub stream_version: i64,
    /// The CloudEvents `id`.
    pub event_id: String,
    /// The bus topic.
    pub topic: String,
    /// The CloudEvents `type`.
    pub event_type: String,
    /// The CloudEvents `source`.
    pub source: String,
    /// The CloudEvents `time`.
    pub time: DateTime<Utc>,
    /// The CloudEvents `datacontenttype`.
    pub datacontenttype: Option<String>,
    /// The CloudEvents `dataschema`.
    pub dataschema: Option<String>,
    /// The event's data, as bytes.
    pub data: Option<Vec<u8>>,
    /// JSON object of the remaining extensions.
    pub extensions: String,
}

impl StoredEvent {
    /// The envelope, with subject = stream id and the position and stream version set.
    pub fn into_cloud_event(self) -> Result<CloudEvent> {
        let position = self.position;
        let decode = |source| StoreError::Decode { position, source };
        let extensions: BTreeMap<String, StoredExtension> = serde_json::from_str(&self.extensions)
            .map_err(|e| decode(keel_core::DecodeError::Json(e)))?;
        let mut builder = CloudEvent::rebuild(self.event_id, self.event_type, self.source)
            .subject(self.stream_id)
            .time(self.time)
            .content(self.datacontenttype, self.data.map(Bytes::from));
        if let Some(schema) = self.dataschema {
            builder = builder.dataschema(schema);
        }
        for (name, value) in extensions {
            let value = match value {
                StoredExtension::String(s) => ExtensionValue::String(s),
                StoredExtension::Integer(i) => ExtensionValue::Integer(i),
                StoredExtension::Boolean(b) => ExtensionValue::Boolean(b),
            };
            builder = builder.extension(name, value);
        }
        builder = builder
            .extension(ext::POSITION, position)
            .extension(ext::STREAM_VERSION, self.stream_version);
        builder.build().map_err(decode)
    }
}

/// An extension value as stored: CloudEvents extensions are strings, integers or
/// booleans (parsed straight into this, without a generic JSON tree).
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum StoredExtension {
    String(String),
    Integer(i64),
    Boolean(bool),
}

/// The columns of one event to append (the store assigns position and version).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewEvent {
    /// The CloudEvents `id`.
    pub event_id: String,
    /// The bus topic.
    pub topic: String,
    /// The CloudEvents `type`.
    pub event_type: String,
    /// The CloudEvents `source`.
    pub source: String,
    /// The CloudEvents `time`.
    pub time: DateTime<Utc>,
    /// The CloudEvents `datacontenttype`.
    pub datacontenttype: Option<String>,
    /// The CloudEvents `dataschema`.
    pub dataschema: Option<String>,
    /// The event's data, as bytes.
    pub data: Option<Vec<u8>>,
    /// JSON object of the remaining extensions.
    pub extensions: String,
}

impl NewEvent {
    /// Lays out `event` for appending to `stream`.
    pub fn from_event(stream: &StreamId, event: &CloudEvent) -> Result<Self> {
        let topic = topic_of(stream, event)?;
        let extensions: serde_json::Map<String, serde_json::Value> = event
            .extensions()
            .iter()
            .filter(|(name, _)| {
                !matches!(name.as_str(), ext::POSITION | ext::STREAM_VERSION | ext::TOPIC)
            })
            .map(|(name, value)| {
                let value = match value {
                    ExtensionValue::String(s) => serde_json::Value::String(s.clone()),
                    ExtensionValue::Integer(i) => serde_json::Value::from(*i),
                    ExtensionValue::Boolean(b) => serde_json::Value::Bool(*b),
                };
                (name.clone(), value)
            })
            .collect();
        Ok(Self {
            event_id: event.id().to_owned(),
            topic,
            event_type: event.ty().to_owned(),
            source: event.source().to_owned(),
            time: event.time().unwrap_or_else(Utc::now),
            datacontenttype: event.datacontenttype().map(str::to_owned),
            dataschema: event.dataschema().map(str::to_owned),
            data: event.data().map(|d| d.to_vec()),
            extensions: serde_json::Value::Object(extensions).to_string(),
        })
    }
}

/// Lays out a batch, checking it is not empty.
pub fn new_events(stream: &StreamId, events: &[CloudEvent]) -> Result<Vec<NewEvent>> {
    if events.is_empty() {
        return Err(StoreError::InvalidEvent("an append needs at least one event".into()));
    }
    events.iter().map(|event| NewEvent::from_event(stream, event)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_core::{Position, StreamVersion};

    #[test]
    fn round_trips_through_the_row_shape() -> Result<()> {
        let stream =
            StreamId::new("order-1").map_err(|e| StoreError::InvalidEvent(e.to_string()))?;
        let event = CloudEvent::builder("order.placed", "/orders")
            .data("application/json", r#"{"a":1}"#)
            .partition_key("order-1")
            .extension("flag", true)
            .extension("count", 3_i64)
            .build()
            .map_err(|e| StoreError::InvalidEvent(e.to_string()))?;
        let row = NewEvent::from_event(&stream, &event)?;
        let stored = StoredEvent {
            position: 9,
            stream_id: stream.to_string(),
            stream_version: 2,
            event_id: row.event_id,
            topic: row.topic,
            event_type: row.event_type,
            source: row.source,
            time: row.time,
            datacontenttype: row.datacontenttype,
            dataschema: row.dataschema,
            data: row.data,
            extensions: row.extensions,
        };
        let back = stored.into_cloud_event()?;
        assert_eq!(back.id(), event.id());
        assert_eq!(back.subject(), Some("order-1"));
        assert_eq!(back.position(), Some(Position(9)));
        assert_eq!(back.stream_version(), Some(StreamVersion(2)));
        assert_eq!(back.extension("flag"), Some(&ExtensionValue::Boolean(true)));
        assert_eq!(back.extension("count"), Some(&ExtensionValue::Integer(3)));
        assert_eq!(back.data(), event.data());
        Ok(())
    }
}
