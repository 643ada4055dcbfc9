//! The CloudEvents 1.0 envelope and Keel's extension attributes.

use std::collections::BTreeMap;
use std::fmt;

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};

use crate::error::{DecodeError, Result};
use crate::ids::{EventId, Position, StreamVersion};
use crate::trace::{TraceContext, normalize_tracestate};

/// The only CloudEvents version Keel speaks.
pub const SPEC_VERSION: &str = "1.0";

/// JSON, the default data content type of Keel events.
pub const JSON: &str = "application/json";

/// Names of Keel's extension attributes (DESIGN 2.5).
pub mod ext {
    /// Key for ordering: brokers keep order per partition key (Kafka message key).
    pub const PARTITION_KEY: &str = "partitionkey";
    /// W3C trace context of the request that caused the event.
    pub const TRACEPARENT: &str = "traceparent";
    /// W3C `tracestate` accompanying [`TRACEPARENT`] (vendor entries, bounded).
    pub const TRACESTATE: &str = "tracestate";
    /// The id shared by every event of one business flow.
    pub const CORRELATION_ID: &str = "correlationid";
    /// The id of the event (or request) that directly caused this one.
    pub const CAUSATION_ID: &str = "causationid";
    /// The event's version within its stream (its `subject`).
    pub const STREAM_VERSION: &str = "streamversion";
    /// The event's position in the global log.
    pub const POSITION: &str = "position";
    /// The schema version of the event's data (from [`crate::Event::SCHEMA_VERSION`]).
    pub const SCHEMA_VERSION: &str = "schemaversion";
    /// The authenticated subject (user or API key) on whose behalf the event was written.
    pub const ACTOR: &str = "actor";
    /// The bus topic the event belongs to, when not the stream's category.
    pub const TOPIC: &str = "topic";
}

/// Longest `correlationid`, `causationid` and `actor`, in bytes: ids, like a stream id.
pub const MAX_ID_EXTENSION_LEN: usize = 256;
/// Longest value of any other string extension, in bytes.
pub const MAX_EXTENSION_LEN: usize = 4096;
/// Most bytes all extensions of one event may take together (names and values).
pub const MAX_EXTENSIONS_LEN: usize = 16 * 1024;

/// Attribute names the specification reserves; an extension may not use them.
pub const RESERVED: &[&str] = &[
    "id",
    "source",
    "specversion",
    "type",
    "subject",
    "time",
    "datacontenttype",
    "dataschema",
    "data",
    "data_base64",
];

/// An extension attribute value. Binary mode carries every value as a string; Keel's
/// integer extensions are read back as integers whichever way they travelled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExtensionValue {
    /// A text value.
    String(String),
    /// An integer value (Keel's `streamversion`, `position`, `schemaversion`).
    Integer(i64),
    /// A boolean value.
    Boolean(bool),
}

impl fmt::Display for ExtensionValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::String(s) => f.write_str(s),
            Self::Integer(i) => i.fmt(f),
            Self::Boolean(b) => b.fmt(f),
        }
    }
}

impl From<&str> for ExtensionValue {
    fn from(value: &str) -> Self {
        Self::String(value.to_owned())
    }
}

impl From<String> for ExtensionValue {
    fn from(value: String) -> Self {
        Self::String(value)
    }
}

impl From<i64> for ExtensionValue {
    fn from(value: i64) -> Self {
        Self::Integer(value)
    }
}

impl From<bool> for ExtensionValue {
    fn from(value: bool) -> Self {
        Self::Boolean(value)
    }
}

/// A CloudEvents 1.0 event. Construct with [`CloudEvent::builder`]; decoders validate
/// everything they return, so a `CloudEvent` in hand is always valid.
///
/// `data` holds the encoded bytes as they travel (JSON for Keel's own events), so
/// passing an event along never re-encodes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloudEvent {
    id: String,
    source: String,
    ty: String,
    subject: Option<String>,
    time: Option<DateTime<Utc>>,
    datacontenttype: Option<String>,
    dataschema: Option<String>,
    data: Option<Bytes>,
    extensions: BTreeMap<String, ExtensionValue>,
}

impl CloudEvent {
    /// Starts an event of type `ty` from `source` with a fresh UUIDv7 id and the current time.
    pub fn builder(ty: impl Into<String>, source: impl Into<String>) -> CloudEventBuilder {
        CloudEventBuilder {
            event: CloudEvent {
                id: EventId::new().to_string(),
                source: source.into(),
                ty: ty.into(),
                subject: None,
                time: Some(Utc::now()),
                datacontenttype: None,
                dataschema: None,
                data: None,
                extensions: BTreeMap::new(),
            },
        }
    }

    /// Starts an event that already has its id (read back from a log or a broker):
    /// unlike [`CloudEvent::builder`] it neither draws an id nor reads the clock.
    pub fn rebuild(
        id: impl Into<String>,
        ty: impl Into<String>,
        source: impl Into<String>,
    ) -> CloudEventBuilder {
        CloudEventBuilder {
            event: CloudEvent {
                id: id.into(),
                source: source.into(),
                ty: ty.into(),
                subject: None,
                time: None,
                datacontenttype: None,
                dataschema: None,
                data: None,
                extensions: BTreeMap::new(),
            },
        }
    }

    /// The `id` attribute: unique per `source`.
    pub fn id(&self) -> &str {
        &self.id
    }
    /// The `source` attribute (URI-reference of the producer).
    pub fn source(&self) -> &str {
        &self.source
    }
    /// The `specversion` attribute: always `1.0`.
    pub fn specversion(&self) -> &'static str {
        SPEC_VERSION
    }
    /// The `type` attribute.
    pub fn ty(&self) -> &str {
        &self.ty
    }
    /// The `subject` attribute: for Keel's events, the stream id.
    pub fn subject(&self) -> Option<&str> {
        self.subject.as_deref()
    }
    /// The `time` attribute, when the event occurred.
    pub fn time(&self) -> Option<DateTime<Utc>> {
        self.time
    }
    /// `time` in RFC 3339 as it goes on the wire.
    pub fn time_rfc3339(&self) -> Option<String> {
        self.time.map(|t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
    }
    /// The `datacontenttype` attribute (absent means JSON).
    pub fn datacontenttype(&self) -> Option<&str> {
        self.datacontenttype.as_deref()
    }
    /// The `dataschema` attribute (URI), if any.
    pub fn dataschema(&self) -> Option<&str> {
        self.dataschema.as_deref()
    }
    /// The encoded data, if any.
    pub fn data(&self) -> Option<&Bytes> {
        self.data.as_ref()
    }
    /// All extension attributes by name.
    pub fn extensions(&self) -> &BTreeMap<String, ExtensionValue> {
        &self.extensions
    }
    /// One extension attribute by name.
    pub fn extension(&self, name: &str) -> Option<&ExtensionValue> {
        self.extensions.get(name)
    }

    /// Whether the data is JSON: no content type (CloudEvents' default), `application/json`,
    /// `text/json` or any `+json` type.
    pub fn data_is_json(&self) -> bool {
        self.datacontenttype.as_deref().is_none_or(is_json_content_type)
    }

    fn string_extension(&self, name: &str) -> Option<&str> {
        match self.extensions.get(name) {
            Some(ExtensionValue::String(s)) => Some(s),
            _ => None,
        }
    }

    fn integer_extension(&self, name: &str) -> Option<u64> {
        match self.extensions.get(name)? {
            ExtensionValue::Integer(i) => u64::try_from(*i).ok(),
            ExtensionValue::String(s) => s.parse().ok(),
            ExtensionValue::Boolean(_) => None,
        }
    }

    /// The [`ext::PARTITION_KEY`] extension: the ordering key.
    pub fn partition_key(&self) -> Option<&str> {
        self.string_extension(ext::PARTITION_KEY)
    }
    /// The [`ext::TRACEPARENT`] extension.
    pub fn traceparent(&self) -> Option<&str> {
        self.string_extension(ext::TRACEPARENT)
    }
    /// The [`ext::TRACESTATE`] extension.
    pub fn tracestate(&self) -> Option<&str> {
        self.string_extension(ext::TRACESTATE)
    }
    /// The [`ext::CORRELATION_ID`] extension.
    pub fn correlation_id(&self) -> Option<&str> {
        self.string_extension(ext::CORRELATION_ID)
    }
    /// The [`ext::CAUSATION_ID`] extension: the id of the event or request that caused
    /// this one.
    pub fn causation_id(&self) -> Option<&str> {
        self.string_extension(ext::CAUSATION_ID)
    }
    /// The [`ext::ACTOR`] extension: who caused the event.
    pub fn actor(&self) -> Option<&str> {
        self.string_extension(ext::ACTOR)
    }
    /// The event's version within its stream, once stored in the log.
    pub fn stream_version(&self) -> Option<StreamVersion> {
        self.integer_extension(ext::STREAM_VERSION).map(StreamVersion)
    }
    /// The event's global position in the log, once stored.
    pub fn position(&self) -> Option<Position> {
        self.integer_extension(ext::POSITION).map(Position)
    }
    /// The schema version its data was written at (absent means 1).
    pub fn schema_version(&self) -> Option<u64> {
        self.integer_extension(ext::SCHEMA_VERSION)
    }

    /// Sets (or replaces) an extension attribute after checking its name and value.
    ///
    /// Trace context is taken as W3C Trace Context says a receiver takes it: a
    /// `traceparent` that does not parse is refused, a valid one is stored in its
    /// canonical form; an invalid `tracestate` removes the attribute (without an
    /// error), a long one is truncated ([`crate::trace::normalize_tracestate`]). A
    /// value over its bound ([`MAX_ID_EXTENSION_LEN`] for `correlationid`,
    /// `causationid` and `actor`, [`MAX_EXTENSION_LEN`] for the others,
    /// [`MAX_EXTENSIONS_LEN`] for all together) or with a control character is
    /// refused, and the event is left as it was.
    pub fn set_extension(
        &mut self,
        name: impl Into<String>,
        value: impl Into<ExtensionValue>,
    ) -> Result<()> {
        let name = name.into();
        validate_extension_name(&name)?;
        let value = match (name.as_str(), normalize_extension(&name, value.into())) {
            (ext::TRACEPARENT, ExtensionValue::String(s)) => {
                ExtensionValue::String(TraceContext::parse(&s)?.traceparent())
            }
            (ext::TRACESTATE, ExtensionValue::String(s)) => match normalize_tracestate(&s) {
                Some(state) => ExtensionValue::String(state),
                None => {
                    self.extensions.remove(ext::TRACESTATE);
                    return Ok(());
                }
            },
            (ext::TRACEPARENT | ext::TRACESTATE, _) => {
                return Err(DecodeError::invalid(name.clone(), "must be a string"));
            }
            (_, value) => value,
        };
        validate_extension_value(&name, &value)?;
        let previous = self.extensions.insert(name.clone(), value);
        if let Err(error) = validate_extensions_size(&self.extensions) {
            match previous {
                Some(previous) => self.extensions.insert(name, previous),
                None => self.extensions.remove(&name),
            };
            return Err(error);
        }
        Ok(())
    }

    /// Records where the event sits in the log (set by stores when they read it back).
    pub fn set_position(&mut self, position: Position) {
        self.extensions.insert(ext::POSITION.into(), ExtensionValue::Integer(to_i64(position.0)));
    }

    /// Records the event's version within its stream.
    pub fn set_stream_version(&mut self, version: StreamVersion) {
        self.extensions
            .insert(ext::STREAM_VERSION.into(), ExtensionValue::Integer(to_i64(version.0)));
    }

    /// Sets the `subject` attribute.
    pub fn set_subject(&mut self, subject: impl Into<String>) {
        self.subject = Some(subject.into());
    }

    /// Removes an extension attribute, returning its value if it was set.
    pub fn remove_extension(&mut self, name: &str) -> Option<ExtensionValue> {
        self.extensions.remove(name)
    }

    /// Checks every rule of the specification that the type system does not.
    pub fn validate(&self) -> Result<()> {
        if self.id.is_empty() {
            return Err(DecodeError::invalid("id", "must be a non-empty string"));
        }
        validate_string("id", &self.id)?;
        if self.source.is_empty() {
            return Err(DecodeError::invalid("source", "must be a non-empty URI-reference"));
        }
        // Visible ASCII (no space), nearly every source, needs no look at each char.
        if !self.source.bytes().all(|b| b.is_ascii_graphic())
            && self.source.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(DecodeError::invalid("source", "a URI-reference has no whitespace"));
        }
        if self.ty.is_empty() {
            return Err(DecodeError::invalid("type", "must be a non-empty string"));
        }
        validate_string("type", &self.ty)?;
        if self.subject.as_deref() == Some("") {
            return Err(DecodeError::invalid("subject", "must be non-empty when present"));
        }
        if let Some(subject) = &self.subject {
            validate_string("subject", subject)?;
        }
        if let Some(ct) = &self.datacontenttype {
            validate_content_type(ct)?;
        }
        if let Some(schema) = &self.dataschema {
            validate_absolute_uri("dataschema", schema)?;
        }
        for (name, value) in &self.extensions {
            validate_extension_name(name)?;
            validate_extension_value(name, value)?;
        }
        validate_extensions_size(&self.extensions)
    }

    /// Rebuilds an event from parts a decoder has collected, validating it.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn from_parts(
        id: String,
        source: String,
        ty: String,
        subject: Option<String>,
        time: Option<DateTime<Utc>>,
        datacontenttype: Option<String>,
        dataschema: Option<String>,
        data: Option<Bytes>,
        extensions: BTreeMap<String, ExtensionValue>,
    ) -> Result<Self> {
        let mut extensions = extensions;
        for (name, value) in &mut extensions {
            if let ExtensionValue::String(_) = value {
                *value =
                    normalize_extension(name, std::mem::replace(value, ExtensionValue::Integer(0)));
            }
        }
        normalize_trace(&mut extensions);
        let event =
            Self { id, source, ty, subject, time, datacontenttype, dataschema, data, extensions };
        event.validate()?;
        Ok(event)
    }
}

/// Builds a [`CloudEvent`]; `build` validates.
#[derive(Debug, Clone)]
#[must_use]
pub struct CloudEventBuilder {
    event: CloudEvent,
}

impl CloudEventBuilder {
    /// Sets the `id` (the default is a fresh UUIDv7).
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.event.id = id.into();
        self
    }
    /// Sets the `subject` attribute.
    pub fn subject(mut self, subject: impl Into<String>) -> Self {
        self.event.subject = Some(subject.into());
        self
    }
    /// Sets the `time` attribute (the default is now).
    pub fn time(mut self, time: DateTime<Utc>) -> Self {
        self.event.time = Some(time);
        self
    }
    /// Leaves out the `time` attribute.
    pub fn no_time(mut self) -> Self {
        self.event.time = None;
        self
    }
    /// Sets the `dataschema` attribute (a URI).
    pub fn dataschema(mut self, schema: impl Into<String>) -> Self {
        self.event.dataschema = Some(schema.into());
        self
    }
    /// Data already encoded in `content_type`.
    pub fn data(mut self, content_type: impl Into<String>, data: impl Into<Bytes>) -> Self {
        self.event.datacontenttype = Some(content_type.into());
        self.event.data = Some(data.into());
        self
    }
    /// Data and content type as stored, either possibly absent (events read back from a
    /// log or a broker).
    pub fn content(mut self, content_type: Option<String>, data: Option<Bytes>) -> Self {
        self.event.datacontenttype = content_type;
        self.event.data = data;
        self
    }
    /// Serializes `value` as the event's JSON data.
    pub fn json_data<T: serde::Serialize + ?Sized>(
        self,
        value: &T,
    ) -> std::result::Result<Self, serde_json::Error> {
        let bytes = serde_json::to_vec(value)?;
        Ok(self.data(JSON, bytes))
    }
    /// Sets an extension attribute; [`build`](Self::build) checks its name.
    pub fn extension(mut self, name: impl Into<String>, value: impl Into<ExtensionValue>) -> Self {
        self.event.extensions.insert(name.into(), value.into());
        self
    }
    /// Sets the partition key (the [`ext::PARTITION_KEY`] extension).
    pub fn partition_key(self, key: impl Into<String>) -> Self {
        self.extension(ext::PARTITION_KEY, key.into())
    }
    /// Validates the event as the CloudEvents specification says.
    ///
    /// # Errors
    /// [`DecodeError`] naming the first attribute that breaks the specification.
    pub fn build(self) -> Result<CloudEvent> {
        let CloudEvent {
            id,
            source,
            ty,
            subject,
            time,
            datacontenttype,
            dataschema,
            data,
            extensions,
        } = self.event;
        CloudEvent::from_parts(
            id,
            source,
            ty,
            subject,
            time,
            datacontenttype,
            dataschema,
            data,
            extensions,
        )
    }
}

/// Keel's integer extensions are integers however they arrived (binary mode sends strings).
fn normalize_extension(name: &str, value: ExtensionValue) -> ExtensionValue {
    match (name, &value) {
        (ext::STREAM_VERSION | ext::POSITION | ext::SCHEMA_VERSION, ExtensionValue::String(s)) => {
            s.parse::<i64>().map(ExtensionValue::Integer).unwrap_or(value)
        }
        _ => value,
    }
}

/// Trace context as W3C Trace Context says a receiver takes it, so that untrusted
/// propagated values never fail a decode and never grow what is stored: a
/// `traceparent` that does not parse is dropped (and its `tracestate` with it, which
/// means nothing alone), a valid one kept in canonical form; an invalid `tracestate`
/// is dropped and a long one truncated.
fn normalize_trace(extensions: &mut BTreeMap<String, ExtensionValue>) {
    let parent = match extensions.get(ext::TRACEPARENT) {
        Some(ExtensionValue::String(value)) => TraceContext::parse(value).ok(),
        _ => None,
    };
    let Some(parent) = parent else {
        extensions.remove(ext::TRACEPARENT);
        extensions.remove(ext::TRACESTATE);
        return;
    };
    extensions.insert(ext::TRACEPARENT.to_owned(), ExtensionValue::String(parent.traceparent()));
    let state = match extensions.get(ext::TRACESTATE) {
        Some(ExtensionValue::String(value)) => normalize_tracestate(value),
        _ => None,
    };
    match state {
        Some(state) => extensions.insert(ext::TRACESTATE.to_owned(), ExtensionValue::String(state)),
        None => extensions.remove(ext::TRACESTATE),
    };
}

/// A CloudEvents `String`: no control characters (U+0000 to U+001F, U+007F to
/// U+009F) and no noncharacters.
fn validate_string(name: &str, value: &str) -> Result<()> {
    // Printable ASCII, nearly every value, holds neither: one pass over the bytes.
    if is_printable_ascii(value) {
        return Ok(());
    }
    let noncharacter = |c: char| {
        let code = u32::from(c);
        (0xFDD0..=0xFDEF).contains(&code) || code & 0xFFFE == 0xFFFE
    };
    match value.chars().find(|&c| c.is_control() || noncharacter(c)) {
        Some(c) => Err(DecodeError::invalid(
            name.to_owned(),
            format!(
                "contains U+{:04X}, a control character or noncharacter, which a CloudEvents String may not",
                u32::from(c)
            ),
        )),
        None => Ok(()),
    }
}

/// Whether `value` is all printable ASCII (U+0020 to U+007E): no control character
/// and no noncharacter.
fn is_printable_ascii(value: &str) -> bool {
    value.bytes().all(|b| (0x20..0x7f).contains(&b))
}

/// An extension value within its bound, and a valid CloudEvents `String`.
fn validate_extension_value(name: &str, value: &ExtensionValue) -> Result<()> {
    let ExtensionValue::String(text) = value else { return Ok(()) };
    let max = match name {
        ext::CORRELATION_ID | ext::CAUSATION_ID | ext::ACTOR => MAX_ID_EXTENSION_LEN,
        _ => MAX_EXTENSION_LEN,
    };
    if text.len() > max {
        return Err(DecodeError::invalid(
            name.to_owned(),
            format!("is {} bytes long; at most {max} are allowed", text.len()),
        ));
    }
    validate_string(name, text)
}

/// All extensions together within [`MAX_EXTENSIONS_LEN`] bytes (names and values; a
/// number or boolean counts 8).
fn validate_extensions_size(extensions: &BTreeMap<String, ExtensionValue>) -> Result<()> {
    let size: usize = extensions
        .iter()
        .map(|(name, value)| {
            name.len()
                + match value {
                    ExtensionValue::String(text) => text.len(),
                    ExtensionValue::Integer(_) | ExtensionValue::Boolean(_) => 8,
                }
        })
        .sum();
    if size > MAX_EXTENSIONS_LEN {
        return Err(DecodeError::invalid(
            "extensions",
            format!("take {size} bytes in all; at most {MAX_EXTENSIONS_LEN} are allowed"),
        ));
    }
    Ok(())
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// CloudEvents attribute names: lower-case ASCII letters and digits only, and not one
/// the specification reserves.
pub fn validate_extension_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(DecodeError::InvalidAttributeName {
            name: name.to_owned(),
            reason: "must not be empty",
        });
    }
    if !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) {
        return Err(DecodeError::InvalidAttributeName {
            name: name.to_owned(),
            reason: "only lower-case letters a-z and digits 0-9 are allowed",
        });
    }
    if RESERVED.contains(&name) {
        return Err(DecodeError::InvalidAttributeName {
            name: name.to_owned(),
            reason: "reserved by the CloudEvents specification",
        });
    }
    Ok(())
}

pub(crate) fn is_json_content_type(ct: &str) -> bool {
    let media = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    media == "application/json" || media == "text/json" || media.ends_with("+json")
}

fn validate_content_type(ct: &str) -> Result<()> {
    let media = ct.split(';').next().unwrap_or("").trim();
    let valid = media
        .split_once('/')
        .is_some_and(|(t, s)| !t.is_empty() && !s.is_empty() && !s.contains('/'))
        && !media.chars().any(|c| c.is_whitespace() || c.is_control());
    if valid {
        Ok(())
    } else {
        Err(DecodeError::invalid(
            "datacontenttype",
            format!("`{ct}` is not an RFC 2046 media type"),
        ))
    }
}

fn validate_absolute_uri(name: &'static str, uri: &str) -> Result<()> {
    let scheme_ok = uri.split_once(':').is_some_and(|(scheme, _)| {
        scheme.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
            && scheme.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    });
    if scheme_ok && !uri.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Ok(())
    } else {
        Err(DecodeError::invalid(name, format!("`{uri}` is not an absolute URI")))
    }
}

/// Parses an RFC 3339 timestamp as the `time` attribute requires.
pub fn parse_time(value: &str) -> Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| DecodeError::invalid("time", format!("`{value}` is not RFC 3339: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_fills_id_time_and_validates() -> Result<()> {
        let ev = CloudEvent::builder("order.placed", "/orders")
            .subject("order-1")
            .partition_key("order-1")
            .json_data(&serde_json::json!({"a": 1}))
            .map_err(DecodeError::Json)?
            .build()?;
        assert_eq!(ev.specversion(), "1.0");
        assert!(ev.id().parse::<EventId>().is_ok());
        assert!(ev.time().is_some());
        assert_eq!(ev.partition_key(), Some("order-1"));
        assert!(ev.data_is_json());
        Ok(())
    }

    #[test]
    fn invalid_attributes_are_named() {
        let err = CloudEvent::builder("", "/x").build().err().map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("invalid CloudEvents attribute `type`: must be a non-empty string")
        );
        let err = CloudEvent::builder("t", "/x").extension("Bad_Name", "v").build().err();
        assert!(matches!(err, Some(DecodeError::InvalidAttributeName { .. })));
        let err = CloudEvent::builder("t", "/x").extension("data", "v").build().err();
        assert!(matches!(err, Some(DecodeError::InvalidAttributeName { .. })));
        let err = CloudEvent::builder("t", "/x").data("nonsense", "x").build().err();
        assert!(matches!(err, Some(DecodeError::InvalidAttribute { .. })));
        let err = CloudEvent::builder("t", "/x").dataschema("relative/path").build().err();
        assert!(matches!(err, Some(DecodeError::InvalidAttribute { .. })));
    }

    #[test]
    fn integer_extensions_read_back_from_strings() -> Result<()> {
        let ev = CloudEvent::builder("t", "/x").extension(ext::POSITION, "42").build()?;
        assert_eq!(ev.position(), Some(Position(42)));
        assert_eq!(ev.extension(ext::POSITION), Some(&ExtensionValue::Integer(42)));
        Ok(())
    }

    const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn propagated_trace_context_is_bounded_on_the_envelope() -> Result<()> {
        let huge = format!("vendor={}", "x".repeat(307 * 1024));
        let ev = CloudEvent::builder("t", "/x")
            .extension(ext::TRACEPARENT, TRACEPARENT)
            .extension(ext::TRACESTATE, huge.as_str())
            .build()?;
        assert_eq!(ev.traceparent(), Some(TRACEPARENT));
        assert_eq!(ev.tracestate(), None, "an oversize tracestate is not stored");

        let mut ev =
            CloudEvent::builder("t", "/x").extension(ext::TRACEPARENT, TRACEPARENT).build()?;
        ev.set_extension(ext::TRACESTATE, huge)?;
        assert_eq!(ev.tracestate(), None);
        ev.set_extension(ext::TRACESTATE, "k=v , w=1")?;
        assert_eq!(ev.tracestate(), Some("k=v,w=1"));
        assert!(ev.set_extension(ext::TRACEPARENT, "not a traceparent").is_err());
        assert_eq!(ev.traceparent(), Some(TRACEPARENT));

        // An invalid traceparent is dropped on decode, and the tracestate with it.
        let ev = CloudEvent::builder("t", "/x")
            .extension(ext::TRACEPARENT, format!("00-{}", "f".repeat(4000)))
            .extension(ext::TRACESTATE, "k=v")
            .build()?;
        assert_eq!((ev.traceparent(), ev.tracestate()), (None, None));
        Ok(())
    }

    #[test]
    fn metadata_extensions_are_bounded() -> Result<()> {
        let at_limit = "i".repeat(MAX_ID_EXTENSION_LEN);
        let over = "i".repeat(MAX_ID_EXTENSION_LEN + 1);
        for name in [ext::CORRELATION_ID, ext::CAUSATION_ID, ext::ACTOR] {
            CloudEvent::builder("t", "/x").extension(name, at_limit.as_str()).build()?;
            let err = CloudEvent::builder("t", "/x").extension(name, over.as_str()).build().err();
            assert!(err.as_ref().is_some_and(|e| e.to_string().contains(name)), "{name}: {err:?}");
            let mut ev = CloudEvent::builder("t", "/x").build()?;
            assert!(ev.set_extension(name, over.as_str()).is_err(), "{name}");
            assert_eq!(ev.extension(name), None, "{name}: an oversize value is not stored");
        }
        let other = "o".repeat(MAX_EXTENSION_LEN);
        CloudEvent::builder("t", "/x").extension("other", other.as_str()).build()?;
        let err = CloudEvent::builder("t", "/x").extension("other", format!("{other}o")).build();
        assert!(err.is_err());
        let mut builder = CloudEvent::builder("t", "/x");
        for n in 0..5 {
            builder = builder.extension(format!("big{n}"), "b".repeat(4000));
        }
        assert!(builder.build().is_err(), "more than MAX_EXTENSIONS_LEN in all");
        Ok(())
    }

    #[test]
    fn string_attributes_refuse_control_characters() {
        for bad in ["order\u{1}placed", "order\nplaced", "order\u{7f}", "order\u{85}x", "\u{fffe}"]
        {
            assert!(CloudEvent::builder(bad, "/x").build().is_err(), "type {bad:?}");
            assert!(CloudEvent::builder("t", "/x").id(bad).build().is_err(), "id {bad:?}");
            assert!(
                CloudEvent::builder("t", "/x").subject(bad).build().is_err(),
                "subject {bad:?}"
            );
            let ext = CloudEvent::builder("t", "/x").extension("note", bad).build();
            assert!(ext.is_err(), "extension {bad:?}");
        }
        let err =
            CloudEvent::builder("order\u{1}placed", "/x").build().err().map(|e| e.to_string());
        assert!(err.as_deref().is_some_and(|e| e.contains("`type`")), "{err:?}");
        assert!(CloudEvent::builder("order.placed ünïcode", "/x").build().is_ok());
    }

    #[test]
    fn a_source_has_no_whitespace_or_control_character() {
        for bad in ["/a b", "/a\tb", "/a\u{7f}", "/a\u{a0}b", "/a\u{2003}b", "/a\u{85}"] {
            assert!(CloudEvent::builder("t", bad).build().is_err(), "source {bad:?}");
        }
        for good in ["/orders", "https://example.com/a?b=c#d", "urn:keel:ünïcode"] {
            assert!(CloudEvent::builder("t", good).build().is_ok(), "source {good:?}");
        }
    }

    #[test]
    fn time_must_be_rfc3339() {
        assert!(parse_time("2026-11-27T09:00:00Z").is_ok());
        assert!(parse_time("2026-11-27T09:00:00.123456+02:00").is_ok());
        assert!(parse_time("27/11/2026").is_err());
    }
}
