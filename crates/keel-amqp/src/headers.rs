//! Messages on the wire: a [`CloudEvent`] as AMQP properties, headers and body
//! (CloudEvents binary mode through `keel_core::codec`), AMQP header values as
//! bytes for the decoder, and Keel's own `x-keel-*` headers.

use std::borrow::Cow;
use std::fmt::Write as _;

use bytes::Bytes;
use keel_core::codec::{Binding, from_message, to_binary};
use keel_core::{BusError, CloudEvent, Payload, RawMessage};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, DecimalValue, FieldTable, LongString, ShortString};

/// Which delivery attempt a message is on (1 = first); set by the retry path.
pub(crate) const ATTEMPT: &str = "x-keel-attempt";
/// The routing key the message was first published with (its CloudEvents type).
pub(crate) const ROUTING_KEY: &str = "x-keel-routing-key";
/// Why a message was dead-lettered.
pub(crate) const ERROR: &str = "x-keel-error";
/// How many attempts a dead-lettered message had.
pub(crate) const ATTEMPTS: &str = "x-keel-attempts";
/// A dead letter's id (UUIDv7), for `keel dlq show|retry`.
pub(crate) const DEAD_LETTER_ID: &str = "x-keel-dead-letter-id";
/// When a message was dead-lettered (RFC 3339).
pub(crate) const DEAD_LETTERED_AT: &str = "x-keel-dead-lettered-at";
/// The topic and group a dead letter belongs to.
pub(crate) const TOPIC: &str = "x-keel-topic";
pub(crate) const GROUP: &str = "x-keel-group";
/// Set by quorum queues: how often the message was returned to the queue.
pub(crate) const DELIVERY_COUNT: &str = "x-delivery-count";
/// Set by the broker whenever it dead-letters a message (here: a retry expiring).
pub(crate) const X_DEATH: &str = "x-death";

/// Headers that describe one trip through a queue and must not follow a message
/// that is published again.
const PER_TRIP: &[&str] = &[
    ATTEMPT,
    ERROR,
    ATTEMPTS,
    DEAD_LETTER_ID,
    DEAD_LETTERED_AT,
    TOPIC,
    GROUP,
    DELIVERY_COUNT,
    X_DEATH,
    "x-first-death-exchange",
    "x-first-death-queue",
    "x-first-death-reason",
];

/// Keeps header values well inside one AMQP frame.
const MAX_ERROR_BYTES: usize = 16 * 1024;

/// A message ready for `basic.publish`.
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub(crate) exchange: ShortString,
    pub(crate) routing_key: ShortString,
    pub(crate) properties: BasicProperties,
    pub(crate) body: Bytes,
}

/// `value` as an AMQP short string; a longer one can never be sent, so it makes the
/// message [`BusError::Unpublishable`].
pub(crate) fn short(value: &str, what: &str) -> Result<ShortString, BusError> {
    ShortString::try_new(value).map_err(|_| {
        BusError::Unpublishable(format!(
            "{what} `{}…` is longer than the 255 bytes AMQP allows",
            value.chars().take(40).collect::<String>()
        ))
    })
}

/// `event` in CloudEvents binary mode, for the topic exchange `exchange`: attributes
/// in `cloudEvents_*` headers, the data content type as the content type, the data
/// as the body, the type as the routing key; persistent.
pub(crate) fn encode(exchange: &ShortString, event: &CloudEvent) -> Result<Outgoing, BusError> {
    let binary = to_binary(event, Binding::Amqp);
    let mut headers = FieldTable::default();
    for (name, value) in binary.headers {
        headers.insert(short(&name, "header name")?, AMQPValue::LongString(value.into()));
    }
    let mut properties = BasicProperties::default().with_delivery_mode(2).with_headers(headers);
    if let Some(content_type) = binary.content_type {
        properties = properties.with_content_type(short(&content_type, "content type")?);
    }
    if let Ok(id) = ShortString::try_new(event.id()) {
        properties = properties.with_message_id(id);
    }
    if let Some(secs) = event.time().and_then(|t| u64::try_from(t.timestamp()).ok()) {
        properties = properties.with_timestamp(secs);
    }
    Ok(Outgoing {
        exchange: exchange.clone(),
        routing_key: short(event.ty(), "event type (the routing key)")?,
        properties,
        body: binary.body,
    })
}

/// `event` for one group's queue through the default exchange (a backfill): as
/// [`encode`], with the queue as the routing key and the event type kept in
/// `x-keel-routing-key`, which retries and dead letters take as the original key.
pub(crate) fn encode_to_queue(
    default_exchange: &ShortString,
    queue: &ShortString,
    event: &CloudEvent,
) -> Result<Outgoing, BusError> {
    let mut message = encode(default_exchange, event)?;
    let mut headers = message.properties.headers().clone().unwrap_or_default();
    headers.insert(ROUTING_KEY.into(), AMQPValue::LongString(message.routing_key.as_str().into()));
    message.properties = message.properties.with_headers(headers);
    message.routing_key = queue.clone();
    Ok(message)
}

/// Decodes a received message: binary or structured mode, or undecodable with the
/// reason (never a panic).
pub(crate) fn decode(properties: &BasicProperties, body: Bytes) -> Payload {
    let content_type = properties.content_type().as_ref().map(ShortString::as_str);
    let converted: Vec<(&str, Cow<'_, [u8]>)> = properties
        .headers()
        .iter()
        .flat_map(|table| table.inner().iter())
        .filter(|(name, _)| Binding::Amqp.attribute_of(name.as_str()).is_some())
        .map(|(name, value)| (name.as_str(), value_bytes(value)))
        .collect();
    let headers = converted.iter().map(|(name, value)| (*name, value.as_ref()));
    match from_message(Binding::Amqp, headers, content_type, body.clone()) {
        Ok(event) => Payload::Event(event),
        Err(error) => Payload::Undecodable(RawMessage {
            headers: raw_headers(properties),
            content_type: content_type.map(str::to_owned),
            body,
            error: error.to_string(),
        }),
    }
}

/// Every header of a message, values as bytes.
pub(crate) fn raw_headers(properties: &BasicProperties) -> Vec<(String, Bytes)> {
    properties
        .headers()
        .iter()
        .flat_map(|table| table.inner().iter())
        .map(|(name, value)| {
            (name.as_str().to_owned(), Bytes::copy_from_slice(value_bytes(value).as_ref()))
        })
        .collect()
}

/// A header value as bytes: strings and byte arrays as they are, everything else in
/// its usual text form (timestamps as RFC 3339).
pub(crate) fn value_bytes(value: &AMQPValue) -> Cow<'_, [u8]> {
    match value {
        AMQPValue::LongString(s) => Cow::Borrowed(s.as_bytes()),
        AMQPValue::ShortString(s) => Cow::Borrowed(s.as_str().as_bytes()),
        AMQPValue::ByteArray(b) => Cow::Borrowed(b.as_slice()),
        other => Cow::Owned(value_text(other).into_bytes()),
    }
}

fn value_text(value: &AMQPValue) -> String {
    let mut out = String::new();
    write_value(&mut out, value);
    out
}

fn write_value(out: &mut String, value: &AMQPValue) {
    let _ = match value {
        AMQPValue::Boolean(b) => write!(out, "{b}"),
        AMQPValue::ShortShortInt(n) => write!(out, "{n}"),
        AMQPValue::ShortShortUInt(n) => write!(out, "{n}"),
        AMQPValue::ShortInt(n) => write!(out, "{n}"),
        AMQPValue::ShortUInt(n) => write!(out, "{n}"),
        AMQPValue::LongInt(n) => write!(out, "{n}"),
        AMQPValue::LongUInt(n) => write!(out, "{n}"),
        AMQPValue::LongLongInt(n) => write!(out, "{n}"),
        AMQPValue::Float(n) => write!(out, "{n}"),
        AMQPValue::Double(n) => write!(out, "{n}"),
        AMQPValue::DecimalValue(d) => write!(out, "{}", decimal_text(*d)),
        AMQPValue::ShortString(s) => write!(out, "{s}"),
        AMQPValue::LongString(s) => write!(out, "{s}"),
        AMQPValue::ByteArray(b) => write!(out, "{}", String::from_utf8_lossy(b.as_slice())),
        AMQPValue::Timestamp(secs) => {
            match i64::try_from(*secs).ok().and_then(|s| chrono::DateTime::from_timestamp(s, 0)) {
                Some(time) => write!(out, "{}", time.to_rfc3339()),
                None => write!(out, "{secs}"),
            }
        }
        AMQPValue::FieldArray(items) => {
            out.push('[');
            for (i, item) in items.as_slice().iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_value(out, item);
            }
            out.push(']');
            Ok(())
        }
        AMQPValue::FieldTable(table) => {
            out.push('{');
            for (i, (name, item)) in table.inner().iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                let _ = write!(out, "{name}: ");
                write_value(out, item);
            }
            out.push('}');
            Ok(())
        }
        AMQPValue::Void => Ok(()),
    };
}

fn decimal_text(d: DecimalValue) -> String {
    let digits = d.value.to_string();
    let scale = usize::from(d.scale);
    if scale == 0 {
        return digits;
    }
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (whole, fraction) = padded.split_at(padded.len() - scale);
    format!("{whole}.{fraction}")
}

/// An integer header, whatever integer type it travelled as (or a numeric string).
pub(crate) fn int_header(properties: &BasicProperties, name: &str) -> Option<i64> {
    let value = properties.headers().as_ref()?.inner().get(name)?;
    match value {
        AMQPValue::ShortShortInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortShortUInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortUInt(n) => Some(i64::from(*n)),
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
        AMQPValue::LongUInt(n) => Some(i64::from(*n)),
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::Timestamp(n) => i64::try_from(*n).ok(),
        AMQPValue::LongString(_) | AMQPValue::ShortString(_) => {
            std::str::from_utf8(&value_bytes(value)).ok()?.trim().parse().ok()
        }
        _ => None,
    }
}

/// A header as text, when present.
pub(crate) fn text_header(properties: &BasicProperties, name: &str) -> Option<String> {
    let value = properties.headers().as_ref()?.inner().get(name)?;
    Some(String::from_utf8_lossy(&value_bytes(value)).into_owned())
}

/// Which attempt a delivery is: Keel's attempt header (1 when absent), plus the
/// broker's count of returns to the queue (quorum queues count them in
/// `x-delivery-count`; classic queues only flag a redelivery).
pub(crate) fn attempt(properties: &BasicProperties, redelivered: bool) -> u32 {
    let base = int_header(properties, ATTEMPT)
        .and_then(|n| u32::try_from(n).ok())
        .filter(|n| *n >= 1)
        .unwrap_or(1);
    let returns = match int_header(properties, DELIVERY_COUNT) {
        Some(count) => u32::try_from(count.max(0)).unwrap_or(u32::MAX),
        None => u32::from(redelivered),
    };
    base.saturating_add(returns)
}

/// The headers of `properties` without the per-trip ones, ready for more.
pub(crate) fn lasting_headers(properties: &BasicProperties) -> FieldTable {
    let mut table = FieldTable::default();
    for (name, value) in properties.headers().iter().flat_map(|t| t.inner().iter()) {
        if !PER_TRIP.contains(&name.as_str()) {
            table.insert(name.clone(), value.clone());
        }
    }
    table
}

/// Properties for publishing a received message again (to a retry queue, the
/// dead-letter queue, or back to its group): the original ones with `headers`,
/// persistent, without an expiration, and without `user-id` (the broker checks it
/// against the connection's user).
pub(crate) fn republish_properties(
    original: &BasicProperties,
    headers: FieldTable,
) -> BasicProperties {
    let mut p = BasicProperties::default().with_headers(headers).with_delivery_mode(2);
    if let Some(v) = original.content_type() {
        p = p.with_content_type(v.clone());
    }
    if let Some(v) = original.content_encoding() {
        p = p.with_content_encoding(v.clone());
    }
    if let Some(v) = original.priority() {
        p = p.with_priority(*v);
    }
    if let Some(v) = original.correlation_id() {
        p = p.with_correlation_id(v.clone());
    }
    if let Some(v) = original.reply_to() {
        p = p.with_reply_to(v.clone());
    }
    if let Some(v) = original.message_id() {
        p = p.with_message_id(v.clone());
    }
    if let Some(v) = original.timestamp() {
        p = p.with_timestamp(*v);
    }
    if let Some(v) = original.kind() {
        p = p.with_type(v.clone());
    }
    if let Some(v) = original.app_id() {
        p = p.with_app_id(v.clone());
    }
    p
}

/// A text header value (long string).
pub(crate) fn text(value: impl Into<Vec<u8>>) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value.into()))
}

/// An error text cut to a size that fits a header.
pub(crate) fn error_text(error: &str) -> String {
    if error.len() <= MAX_ERROR_BYTES {
        return error.to_owned();
    }
    let mut end = MAX_ERROR_BYTES;
    while !error.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… (truncated)", &error[..end])
}

#[cfg(test)]
mod tests {
    use keel_core::envelope::ext;
    use lapin::types::{ByteArray, FieldArray};

    use super::*;

    fn sample() -> CloudEvent {
        CloudEvent::builder("order.placed", "/services/orders")
            .subject("order-42")
            .partition_key("order-42")
            .extension(ext::STREAM_VERSION, 3_i64)
            .extension(ext::TRACEPARENT, "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
            .data("application/json", r#"{"total":12}"#)
            .build()
            .expect("valid")
    }

    #[test]
    fn events_travel_in_binary_mode_and_come_back_whole() {
        let event = sample();
        let out = encode(&"keel.orders".into(), &event).expect("encodes");
        assert_eq!(out.routing_key.as_str(), "order.placed");
        assert_eq!(
            out.properties.content_type().as_ref().map(|c| c.as_str()),
            Some("application/json")
        );
        assert_eq!(*out.properties.delivery_mode(), Some(2));
        assert_eq!(out.properties.message_id().as_ref().map(|c| c.as_str()), Some(event.id()));
        let headers = out.properties.headers().as_ref().expect("headers");
        assert!(headers.inner().keys().all(|k| k.as_str().starts_with("cloudEvents_")));
        assert!(headers.contains_key("cloudEvents_partitionkey"));
        match decode(&out.properties, out.body.clone()) {
            Payload::Event(back) => assert_eq!(back, event),
            Payload::Undecodable(raw) => panic!("undecodable: {}", raw.error),
        }
    }

    #[test]
    fn structured_mode_is_accepted() {
        let event = sample();
        let properties = BasicProperties::default()
            .with_content_type("application/cloudevents+json; charset=utf-8".into());
        let body = Bytes::from(keel_core::codec::to_structured(&event));
        assert_eq!(decode(&properties, body), Payload::Event(event));
    }

    #[test]
    fn foreign_bodies_are_undecodable_with_a_reason_and_all_headers() {
        let mut headers = FieldTable::default();
        headers.insert("x-origin".into(), AMQPValue::LongLongInt(7));
        let properties =
            BasicProperties::default().with_content_type("text/plain".into()).with_headers(headers);
        let body = Bytes::from_static(b"{'order_id': 17}");
        let Payload::Undecodable(raw) = decode(&properties, body.clone()) else {
            panic!("decoded a foreign body")
        };
        assert!(raw.error.contains("not a CloudEvent"), "{}", raw.error);
        assert_eq!(raw.body, body);
        assert_eq!(raw.content_type.as_deref(), Some("text/plain"));
        assert_eq!(raw.headers, vec![("x-origin".to_owned(), Bytes::from_static(b"7"))]);
    }

    #[test]
    fn header_values_become_bytes() {
        let cases: Vec<(AMQPValue, &[u8])> = vec![
            (AMQPValue::LongString("héllo".into()), "héllo".as_bytes()),
            (AMQPValue::ShortString("short".into()), b"short"),
            (AMQPValue::ByteArray(ByteArray::from(vec![0_u8, 255])), &[0, 255]),
            (AMQPValue::Boolean(true), b"true"),
            (AMQPValue::ShortShortInt(-3), b"-3"),
            (AMQPValue::LongUInt(42), b"42"),
            (AMQPValue::LongLongInt(-9_000_000_000), b"-9000000000"),
            (AMQPValue::Double(1.5), b"1.5"),
            (AMQPValue::DecimalValue(DecimalValue { scale: 2, value: 12345 }), b"123.45"),
            (AMQPValue::DecimalValue(DecimalValue { scale: 3, value: 5 }), b"0.005"),
            (AMQPValue::Timestamp(0), b"1970-01-01T00:00:00+00:00"),
            (
                AMQPValue::FieldArray(FieldArray::from(vec![
                    AMQPValue::LongInt(1),
                    AMQPValue::LongString("a".into()),
                ])),
                b"[1, a]",
            ),
            (AMQPValue::Void, b""),
        ];
        for (value, expected) in cases {
            assert_eq!(value_bytes(&value).as_ref(), expected, "{value:?}");
        }
        let mut table = FieldTable::default();
        table.insert("count".into(), AMQPValue::LongLongInt(2));
        table.insert("queue".into(), AMQPValue::LongString("q".into()));
        assert_eq!(value_bytes(&AMQPValue::FieldTable(table)).as_ref(), b"{count: 2, queue: q}");
    }

    #[test]
    fn a_timestamp_time_header_decodes() {
        let mut headers = FieldTable::default();
        headers.insert("cloudEvents_specversion".into(), text("1.0"));
        headers.insert("cloudEvents_id".into(), text("1"));
        headers.insert("cloudEvents_source".into(), AMQPValue::ShortString("/s".into()));
        headers.insert("cloudEvents_type".into(), text("t"));
        headers.insert("cloudEvents_time".into(), AMQPValue::Timestamp(1_700_000_000));
        let properties = BasicProperties::default().with_headers(headers);
        let Payload::Event(event) = decode(&properties, Bytes::new()) else {
            panic!("undecodable")
        };
        assert_eq!(event.time().map(|t| t.timestamp()), Some(1_700_000_000));
    }

    #[test]
    fn attempts_add_keel_header_and_broker_returns() {
        let with = |pairs: &[(&str, AMQPValue)]| {
            let mut table = FieldTable::default();
            for (k, v) in pairs {
                table.insert((*k).into(), v.clone());
            }
            BasicProperties::default().with_headers(table)
        };
        assert_eq!(attempt(&BasicProperties::default(), false), 1);
        assert_eq!(attempt(&BasicProperties::default(), true), 2);
        assert_eq!(attempt(&with(&[(ATTEMPT, AMQPValue::LongInt(3))]), false), 3);
        assert_eq!(
            attempt(
                &with(&[
                    (ATTEMPT, AMQPValue::LongInt(3)),
                    (DELIVERY_COUNT, AMQPValue::LongLongInt(2))
                ]),
                true
            ),
            5
        );
        assert_eq!(attempt(&with(&[(ATTEMPT, text("2"))]), false), 2);
        // Garbage from a foreign producer never panics and never goes below 1.
        assert_eq!(attempt(&with(&[(ATTEMPT, AMQPValue::LongLongInt(-5))]), false), 1);
        assert_eq!(attempt(&with(&[(ATTEMPT, text("many"))]), false), 1);
        assert_eq!(
            attempt(&with(&[(ATTEMPT, AMQPValue::LongLongInt(i64::from(u32::MAX)))]), true),
            u32::MAX
        );
    }

    #[test]
    fn republishing_drops_per_trip_headers_expiration_and_user() {
        let mut table = FieldTable::default();
        table.insert("cloudEvents_id".into(), text("1"));
        table.insert(ATTEMPT.into(), AMQPValue::LongInt(2));
        table.insert(X_DEATH.into(), AMQPValue::FieldArray(FieldArray::default()));
        let original = BasicProperties::default()
            .with_headers(table)
            .with_expiration("100".into())
            .with_user_id("alice".into())
            .with_content_type("application/json".into());
        let again = republish_properties(&original, lasting_headers(&original));
        let headers = again.headers().as_ref().expect("headers");
        assert_eq!(headers.inner().len(), 1);
        assert!(headers.contains_key("cloudEvents_id"));
        assert_eq!(*again.expiration(), None);
        assert_eq!(*again.user_id(), None);
        assert_eq!(*again.delivery_mode(), Some(2));
        assert_eq!(again.content_type().as_ref().map(|c| c.as_str()), Some("application/json"));
    }

    #[test]
    fn a_backfill_goes_to_the_queue_and_keeps_the_type_as_the_original_key() {
        let event = CloudEvent::builder("order.placed", "/s").build().expect("valid");
        let queue: ShortString = "keel.orders:billing".into();
        let message = encode_to_queue(&"".into(), &queue, &event).expect("encodes");
        assert_eq!(message.exchange.as_str(), "");
        assert_eq!(message.routing_key, queue);
        assert_eq!(text_header(&message.properties, ROUTING_KEY).as_deref(), Some("order.placed"));
        let Payload::Event(decoded) = decode(&message.properties, message.body) else {
            panic!("decodes")
        };
        assert_eq!(decoded.id(), event.id());
    }

    #[test]
    fn overlong_names_are_errors_not_panics() {
        let event = CloudEvent::builder("t".repeat(300), "/s").build().expect("valid");
        let err = encode(&"keel.t".into(), &event).expect_err("too long");
        assert!(matches!(err, BusError::Unpublishable(_)), "{err}");
        let long = "é".repeat(10_000);
        let cut = error_text(&long);
        assert!(cut.len() < MAX_ERROR_BYTES + 32 && cut.ends_with("(truncated)"));
    }
}
