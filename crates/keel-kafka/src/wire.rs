//! The record format: CloudEvents' Kafka protocol binding, and Keel's own headers.
//!
//! A Keel event travels in binary mode: every attribute in a `ce_` header (laid out
//! by `keel_core::codec::to_binary`), the data content type in a `content-type`
//! header, the data as the record value and the partition key as the record key (no
//! partition key: a null key). Decoding accepts binary and structured mode
//! (`content-type: application/cloudevents+json`); anything else becomes
//! [`Payload::Undecodable`] with the reason.

use bytes::Bytes;
use keel_core::codec::{self, Binding};
use keel_core::{CloudEvent, ExtensionValue, Payload, RawMessage};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message as _, OwnedHeaders};

/// The header carrying the data content type (the Kafka binding's name for it).
pub const CONTENT_TYPE: &str = "content-type";

/// The binary-mode headers of the `type` and `partitionkey` attributes.
const TYPE_HEADER: &str = "ce_type";
const PARTITION_KEY_HEADER: &str = "ce_partitionkey";

/// Headers Keel adds to a record it moves to a dead-letter topic.
pub mod dlq {
    /// The handler's (or decoder's) error text.
    pub const ERROR: &str = "keel-error";
    /// How many deliveries were attempted, in decimal.
    pub const ATTEMPTS: &str = "keel-attempts";
    /// The topic the record was read from.
    pub const ORIGINAL_TOPIC: &str = "keel-original-topic";
    /// Its partition, in decimal.
    pub const ORIGINAL_PARTITION: &str = "keel-original-partition";
    /// Its offset, in decimal.
    pub const ORIGINAL_OFFSET: &str = "keel-original-offset";
    /// When it was dead-lettered, RFC 3339.
    pub const DEAD_LETTERED_AT: &str = "keel-dead-lettered-at";
    /// The dead letter's id (a UUIDv7): what `keel dlq retry` names.
    pub const ID: &str = "keel-dead-letter-id";
    /// On a marker record: the dead letter with this id was retried or purged.
    pub const TOMBSTONE: &str = "keel-tombstone";
    /// On a marker record: every dead letter before this record was purged.
    pub const PURGE: &str = "keel-purge";

    /// Whether a header is one of Keel's dead-letter headers (stripped on retry).
    pub fn is_keel_header(name: &str) -> bool {
        [
            ERROR,
            ATTEMPTS,
            ORIGINAL_TOPIC,
            ORIGINAL_PARTITION,
            ORIGINAL_OFFSET,
            DEAD_LETTERED_AT,
            ID,
            TOMBSTONE,
            PURGE,
        ]
        .contains(&name)
    }
}

/// A record as Keel writes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct OutRecord {
    pub(crate) key: Option<Bytes>,
    pub(crate) headers: Vec<(String, Bytes)>,
    pub(crate) value: Bytes,
}

impl OutRecord {
    /// The record to send, borrowing this one's key and value.
    pub(crate) fn outgoing(&self) -> Outgoing<'_> {
        let headers = (!self.headers.is_empty()).then(|| self.kafka_headers());
        Outgoing { key: self.key.as_deref(), headers, value: &self.value }
    }

    /// rdkafka's header list.
    pub(crate) fn kafka_headers(&self) -> OwnedHeaders {
        let mut headers = OwnedHeaders::new_with_capacity(self.headers.len());
        for (key, value) in &self.headers {
            headers = headers.insert(Header { key, value: Some(value.as_ref()) });
        }
        headers
    }
}

/// Lays an event out as a binary-mode record through `keel_core::codec` (the reference
/// [`outgoing`] is tested against).
#[cfg(test)]
pub(crate) fn encode(event: &CloudEvent) -> OutRecord {
    let binary = codec::to_binary(event, Binding::Kafka);
    let mut headers: Vec<(String, Bytes)> =
        binary.headers.into_iter().map(|(k, v)| (k, Bytes::from(v))).collect();
    if let Some(content_type) = binary.content_type {
        headers.push((CONTENT_TYPE.to_owned(), Bytes::from(content_type)));
    }
    OutRecord {
        key: event.partition_key().map(|k| Bytes::copy_from_slice(k.as_bytes())),
        headers,
        value: binary.body,
    }
}

/// A record to send, borrowing its key and value.
pub(crate) struct Outgoing<'r> {
    pub(crate) key: Option<&'r [u8]>,
    pub(crate) headers: Option<OwnedHeaders>,
    pub(crate) value: &'r [u8],
}

/// What [`encode`] makes of `event`, written straight into librdkafka's header list:
/// the hot path of publishing, without building the intermediate strings (a test
/// checks both give the same headers).
pub(crate) fn outgoing(event: &CloudEvent) -> Outgoing<'_> {
    // `OwnedHeaders::insert` takes the list by value and gives it back.
    let add = |headers: OwnedHeaders, key: &str, value: &[u8]| {
        headers.insert(Header { key, value: Some(value) })
    };
    let mut headers = OwnedHeaders::new_with_capacity(8 + event.extensions().len());
    headers = add(headers, "ce_specversion", event.specversion().as_bytes());
    headers = add(headers, "ce_id", event.id().as_bytes());
    headers = add(headers, "ce_source", event.source().as_bytes());
    headers = add(headers, "ce_type", event.ty().as_bytes());
    if let Some(subject) = event.subject() {
        headers = add(headers, "ce_subject", subject.as_bytes());
    }
    if let Some(time) = event.time_rfc3339() {
        headers = add(headers, "ce_time", time.as_bytes());
    }
    if let Some(schema) = event.dataschema() {
        headers = add(headers, "ce_dataschema", schema.as_bytes());
    }
    let mut name = String::with_capacity(32);
    for (extension, value) in event.extensions() {
        name.clear();
        name.push_str("ce_");
        name.push_str(extension);
        headers = match value {
            ExtensionValue::String(text) => add(headers, &name, text.as_bytes()),
            other => add(headers, &name, other.to_string().as_bytes()),
        };
    }
    if let Some(content_type) = event.datacontenttype() {
        headers = add(headers, CONTENT_TYPE, content_type.as_bytes());
    }
    Outgoing {
        key: event.partition_key().map(str::as_bytes),
        headers: Some(headers),
        value: event.data().map_or(&[], |data| data.as_ref()),
    }
}

/// A record as a consumer read it, with everything Keel needs to hand it out,
/// redeliver it or dead-letter it.
#[derive(Clone, Debug)]
pub(crate) struct InRecord {
    pub(crate) topic: String,
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    pub(crate) key: Option<Bytes>,
    pub(crate) headers: Vec<(String, Bytes)>,
    pub(crate) value: Bytes,
    /// Milliseconds since the epoch, when the broker gave one.
    pub(crate) timestamp: Option<i64>,
}

impl InRecord {
    /// Copies a consumed message. Decoding waits for [`InRecord::decode`], so that a
    /// consumer's polling thread only copies and the subscriber's task decodes.
    pub(crate) fn from_message(message: &BorrowedMessage<'_>) -> Self {
        let headers: Vec<(String, Bytes)> = message
            .headers()
            .map(|headers| {
                headers
                    .iter()
                    .map(|h| {
                        (h.key.to_owned(), h.value.map(Bytes::copy_from_slice).unwrap_or_default())
                    })
                    .collect()
            })
            .unwrap_or_default();
        let value = message.payload().map(Bytes::copy_from_slice).unwrap_or_default();
        Self {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(Bytes::copy_from_slice),
            headers,
            value,
            timestamp: message.timestamp().to_millis(),
        }
    }

    /// The event, or why the record is not one.
    pub(crate) fn decode(&self) -> Payload {
        decode(&self.headers, self.value.clone())
    }

    /// What orders the record among its partition's: the `partitionkey` attribute of a
    /// binary-mode event, else the record key (which Keel's encoder sets to the same).
    pub(crate) fn ordering_key(&self) -> Option<Bytes> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(PARTITION_KEY_HEADER))
            .map(|(_, v)| v.clone())
            .or_else(|| self.key.clone())
    }

    /// The event type of a binary-mode event, read from its header without decoding.
    pub(crate) fn binary_event_type(&self) -> Option<&str> {
        self.header(TYPE_HEADER)
    }

    /// The value of the first header named `name`, as text.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
}

/// The value of the first header named `name`, as text.
pub(crate) fn header<'a>(headers: &'a [(String, Bytes)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .and_then(|(_, v)| std::str::from_utf8(v).ok())
}

/// Decodes a record's headers and value: binary or structured mode, or the reason it
/// is neither.
pub(crate) fn decode(headers: &[(String, Bytes)], value: Bytes) -> Payload {
    let content_type = header(headers, CONTENT_TYPE).map(str::to_owned);
    let pairs = headers
        .iter()
        .filter(|(k, _)| !dlq::is_keel_header(k))
        .map(|(k, v)| (k.as_str(), v.as_ref()));
    match codec::from_message(Binding::Kafka, pairs, content_type.as_deref(), value.clone()) {
        Ok(event) => Payload::Event(event),
        Err(error) => Payload::Undecodable(RawMessage {
            headers: headers.to_vec(),
            content_type,
            body: value,
            error: error.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use keel_core::envelope::ext;

    use super::*;

    #[test]
    fn binary_mode_round_trip_with_key() {
        let event = CloudEvent::builder("t.happened", "/s")
            .partition_key("order-7")
            .extension(ext::STREAM_VERSION, 3_i64)
            .data("application/json", r#"{"a":1}"#)
            .build()
            .expect("valid");
        let record = encode(&event);
        assert_eq!(record.key.as_deref(), Some(&b"order-7"[..]));
        assert_eq!(header(&record.headers, "content-type"), Some("application/json"));
        assert_eq!(header(&record.headers, "ce_type"), Some("t.happened"));
        let Payload::Event(back) = decode(&record.headers, record.value.clone()) else {
            panic!("undecodable")
        };
        assert_eq!(back.id(), event.id());
        assert_eq!(back.partition_key(), Some("order-7"));
        assert_eq!(back.data(), event.data());
    }

    fn pairs(headers: &OwnedHeaders) -> Vec<(String, Vec<u8>)> {
        headers
            .iter()
            .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec).unwrap_or_default()))
            .collect()
    }

    #[test]
    fn the_publishing_fast_path_writes_what_encode_does() {
        let full = CloudEvent::builder("t.happened", "/s")
            .subject("order-7")
            .partition_key("order-7")
            .extension(ext::STREAM_VERSION, 3_i64)
            .extension("flag", true)
            .dataschema("https://example.com/schema")
            .data("application/json", r#"{"a":1}"#)
            .build()
            .expect("valid");
        let bare = CloudEvent::rebuild("id-1", "t", "/s").build().expect("valid");
        for event in [full, bare] {
            let record = encode(&event);
            let fast = outgoing(&event);
            assert_eq!(pairs(&fast.headers.expect("headers")), pairs(&record.kafka_headers()));
            assert_eq!(fast.key, record.key.as_deref());
            assert_eq!(fast.value, record.value.as_ref());
        }
    }

    #[test]
    fn no_key_without_partition_key_and_structured_mode_decodes() {
        let event = CloudEvent::builder("t", "/s").build().expect("valid");
        assert_eq!(encode(&event).key, None);
        let headers = vec![(CONTENT_TYPE.to_owned(), Bytes::from("application/cloudevents+json"))];
        let body = Bytes::from(codec::to_structured(&event));
        assert_eq!(decode(&headers, body), Payload::Event(event));
    }

    #[test]
    fn foreign_records_keep_their_bytes_and_a_reason() {
        let headers = vec![(CONTENT_TYPE.to_owned(), Bytes::from("text/plain"))];
        let Payload::Undecodable(raw) = decode(&headers, Bytes::from_static(b"hello")) else {
            panic!("decoded")
        };
        assert_eq!(raw.body, Bytes::from_static(b"hello"));
        assert!(raw.error.contains("not a CloudEvent"), "{}", raw.error);
    }
}
