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
use keel_core::{CloudEvent, Payload, RawMessage};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message as _, OwnedHeaders};

/// The header carrying the data content type (the Kafka binding's name for it).
pub const CONTENT_TYPE: &str = "content-type";

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
    /// rdkafka's header list.
    pub(crate) fn kafka_headers(&self) -> OwnedHeaders {
        let mut headers = OwnedHeaders::new_with_capacity(self.headers.len());
        for (key, value) in &self.headers {
            headers = headers.insert(Header { key, value: Some(value.as_ref()) });
        }
        headers
    }
}

/// Lays an event out as a binary-mode record.
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
    pub(crate) payload: Payload,
}

impl InRecord {
    /// Copies a consumed message and decodes it.
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
        let payload = decode(&headers, value.clone());
        Self {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(Bytes::copy_from_slice),
            headers,
            value,
            timestamp: message.timestamp().to_millis(),
            payload,
        }
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
