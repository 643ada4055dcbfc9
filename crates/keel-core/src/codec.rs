//! Wire formats: structured mode (`application/cloudevents+json`) and binary mode.
//!
//! Binary mode puts each attribute in a message header named `prefix + attribute`
//! (`ce_` for Kafka, `cloudEvents_` for AMQP), the data content type in the
//! message's content type, and the data bytes, untouched, in the body. Structured mode
//! puts the whole event in one JSON document. Decoders accept both, picked by the
//! message's content type, and never panic on foreign input.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::envelope::{CloudEvent, ExtensionValue, SPEC_VERSION, is_json_content_type, parse_time};
use crate::error::{DecodeError, Result};

/// The content type of a structured-mode CloudEvent.
pub const STRUCTURED_CONTENT_TYPE: &str = "application/cloudevents+json";
const BATCH_CONTENT_TYPE: &str = "application/cloudevents-batch+json";

/// A protocol binding's header naming.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Binding {
    /// Kafka protocol binding: `ce_` headers; the content type in a `content-type` header.
    Kafka,
    /// AMQP protocol binding as RabbitMQ carries it: `cloudEvents_` headers (the
    /// binding's `cloudEvents:` is accepted on input); the content type in the
    /// message's `content-type` property.
    Amqp,
}

impl Binding {
    /// The header prefix this binding writes.
    pub fn prefix(self) -> &'static str {
        match self {
            Self::Kafka => "ce_",
            Self::Amqp => "cloudEvents_",
        }
    }

    /// The attribute a header carries, when it is a CloudEvents header of this binding.
    pub fn attribute_of(self, header: &str) -> Option<&str> {
        match self {
            Self::Kafka => header.strip_prefix("ce_"),
            Self::Amqp => {
                header.strip_prefix("cloudEvents_").or_else(|| header.strip_prefix("cloudEvents:"))
            }
        }
    }
}

/// A CloudEvent laid out for a binary-mode message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BinaryMessage {
    /// `(prefixed name, value)` for every attribute except `datacontenttype`.
    pub headers: Vec<(String, String)>,
    /// The message's content type: the event's `datacontenttype`.
    pub content_type: Option<String>,
    /// The event's data, as is.
    pub body: Bytes,
}

/// Lays `event` out as a binary-mode message of `binding`.
pub fn to_binary(event: &CloudEvent, binding: Binding) -> BinaryMessage {
    let prefix = binding.prefix();
    let mut headers = Vec::with_capacity(6 + event.extensions().len());
    let mut push = |name: &str, value: String| headers.push((format!("{prefix}{name}"), value));
    push("specversion", SPEC_VERSION.to_owned());
    push("id", event.id().to_owned());
    push("source", event.source().to_owned());
    push("type", event.ty().to_owned());
    if let Some(subject) = event.subject() {
        push("subject", subject.to_owned());
    }
    if let Some(time) = event.time_rfc3339() {
        push("time", time);
    }
    if let Some(schema) = event.dataschema() {
        push("dataschema", schema.to_owned());
    }
    for (name, value) in event.extensions() {
        push(name, value.to_string());
    }
    BinaryMessage {
        headers,
        content_type: event.datacontenttype().map(str::to_owned),
        body: event.data().cloned().unwrap_or_default(),
    }
}

/// Decodes a message of `binding`: structured mode when the content type says
/// `application/cloudevents+json`, binary mode otherwise.
///
/// `headers` are the message's headers with raw byte values; `content_type` is the
/// message's content type (for Kafka, the value of its `content-type` header).
pub fn from_message<'a>(
    binding: Binding,
    headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    content_type: Option<&str>,
    body: Bytes,
) -> Result<CloudEvent> {
    if let Some(ct) = content_type {
        let media = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        if media == STRUCTURED_CONTENT_TYPE {
            return from_structured(&body);
        }
        if media == BATCH_CONTENT_TYPE {
            return Err(DecodeError::NotACloudEvent(
                "batched mode (application/cloudevents-batch+json) is not supported".into(),
            ));
        }
    }
    let mut attributes: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in headers {
        let Some(attribute) = binding.attribute_of(name) else { continue };
        let value = std::str::from_utf8(value).map_err(|_| {
            DecodeError::invalid(attribute.to_owned(), format!("header `{name}` is not UTF-8"))
        })?;
        attributes.insert(attribute.to_owned(), value.to_owned());
    }
    if !attributes.contains_key("specversion") {
        return Err(DecodeError::NotACloudEvent(format!(
            "no `{}specversion` header, and the content type ({}) is not {STRUCTURED_CONTENT_TYPE}",
            binding.prefix(),
            content_type.unwrap_or("none"),
        )));
    }
    let mut take = |name: &'static str| attributes.remove(name);
    let specversion = take("specversion").unwrap_or_default();
    if specversion != SPEC_VERSION {
        return Err(DecodeError::UnsupportedSpecVersion(specversion));
    }
    let id = take("id").ok_or(DecodeError::MissingAttribute("id"))?;
    let source = take("source").ok_or(DecodeError::MissingAttribute("source"))?;
    let ty = take("type").ok_or(DecodeError::MissingAttribute("type"))?;
    let subject = take("subject");
    let time = take("time").map(|t| parse_time(&t)).transpose()?;
    let dataschema = take("dataschema");
    // In binary mode the content type is the message's, never a header.
    take("datacontenttype");
    let extensions =
        attributes.into_iter().map(|(name, value)| (name, ExtensionValue::String(value))).collect();
    let data = if body.is_empty() && content_type.is_none() { None } else { Some(body) };
    CloudEvent::from_parts(
        id,
        source,
        ty,
        subject,
        time,
        content_type.map(str::to_owned),
        dataschema,
        data,
        extensions,
    )
}

#[derive(Serialize)]
#[serde(untagged)]
enum JsonExtension<'a> {
    String(&'a str),
    Integer(i64),
    Boolean(bool),
}

#[derive(Serialize)]
struct StructuredOut<'a> {
    specversion: &'static str,
    id: &'a str,
    source: &'a str,
    #[serde(rename = "type")]
    ty: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    datacontenttype: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dataschema: Option<&'a str>,
    #[serde(flatten)]
    extensions: BTreeMap<&'a str, JsonExtension<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<StructuredData<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data_base64: Option<String>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum StructuredData<'a> {
    Json(&'a RawValue),
    Text(&'a str),
}

/// Encodes `event` as one structured-mode JSON document. JSON data is embedded as is
/// (not re-encoded), text data as a string, anything else as `data_base64`.
pub fn to_structured(event: &CloudEvent) -> Vec<u8> {
    let mut data = None;
    let mut data_base64 = None;
    if let Some(bytes) = event.data() {
        let raw = if event.data_is_json() { exact_json(bytes) } else { None };
        match (raw, std::str::from_utf8(bytes)) {
            (Some(raw), _) => data = Some(StructuredData::Json(raw)),
            (None, Ok(text)) if !event.data_is_json() => data = Some(StructuredData::Text(text)),
            _ => data_base64 = Some(BASE64.encode(bytes)),
        }
    }
    let out = StructuredOut {
        specversion: SPEC_VERSION,
        id: event.id(),
        source: event.source(),
        ty: event.ty(),
        subject: event.subject(),
        time: event.time_rfc3339(),
        datacontenttype: event.datacontenttype(),
        dataschema: event.dataschema(),
        extensions: event
            .extensions()
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    ExtensionValue::String(s) => JsonExtension::String(s),
                    ExtensionValue::Integer(i) => JsonExtension::Integer(*i),
                    ExtensionValue::Boolean(b) => JsonExtension::Boolean(*b),
                };
                (k.as_str(), v)
            })
            .collect(),
        data,
        data_base64,
    };
    // Serializing borrowed strings, integers and validated raw JSON cannot fail.
    serde_json::to_vec(&out).unwrap_or_default()
}

/// The bytes as a JSON value, when they are exactly one (no surrounding whitespace,
/// so decoding gives back the same bytes). JSON `null` is excluded: `"data": null`
/// means "no data" to a decoder, so it travels as `data_base64`.
fn exact_json(bytes: &[u8]) -> Option<&RawValue> {
    let raw: &RawValue = serde_json::from_slice(bytes).ok()?;
    (raw.get().len() == bytes.len() && raw.get() != "null").then_some(raw)
}

/// Decodes one structured-mode JSON document.
pub fn from_structured(json: &[u8]) -> Result<CloudEvent> {
    let members: BTreeMap<String, &RawValue> =
        serde_json::from_slice(json).map_err(DecodeError::Json)?;
    let string = |name: &'static str| -> Result<Option<String>> {
        match members.get(name) {
            None => Ok(None),
            Some(raw) => match serde_json::from_str::<serde_json::Value>(raw.get()) {
                Ok(serde_json::Value::Null) => Ok(None),
                Ok(serde_json::Value::String(s)) => Ok(Some(s)),
                _ => Err(DecodeError::invalid(name, "must be a JSON string")),
            },
        }
    };
    let specversion = string("specversion")?.ok_or(DecodeError::MissingAttribute("specversion"))?;
    if specversion != SPEC_VERSION {
        return Err(DecodeError::UnsupportedSpecVersion(specversion));
    }
    let id = string("id")?.ok_or(DecodeError::MissingAttribute("id"))?;
    let source = string("source")?.ok_or(DecodeError::MissingAttribute("source"))?;
    let ty = string("type")?.ok_or(DecodeError::MissingAttribute("type"))?;
    let subject = string("subject")?;
    let time = string("time")?.map(|t| parse_time(&t)).transpose()?;
    let datacontenttype = string("datacontenttype")?;
    let dataschema = string("dataschema")?;
    let is_json = datacontenttype.as_deref().is_none_or(is_json_content_type);

    let data = match (members.get("data"), string("data_base64")?) {
        (Some(_), Some(_)) => {
            return Err(DecodeError::invalid("data", "`data` and `data_base64` are both present"));
        }
        (Some(raw), None) if raw.get() == "null" => None,
        (Some(raw), None) if is_json => Some(Bytes::copy_from_slice(raw.get().as_bytes())),
        (Some(raw), None) => match serde_json::from_str::<String>(raw.get()) {
            Ok(text) => Some(Bytes::from(text)),
            Err(_) => Some(Bytes::copy_from_slice(raw.get().as_bytes())),
        },
        (None, Some(b64)) => Some(Bytes::from(
            BASE64
                .decode(b64.as_bytes())
                .map_err(|e| DecodeError::invalid("data_base64", e.to_string()))?,
        )),
        (None, None) => None,
    };

    let mut extensions = BTreeMap::new();
    for (name, raw) in &members {
        if matches!(
            name.as_str(),
            "specversion"
                | "id"
                | "source"
                | "type"
                | "subject"
                | "time"
                | "datacontenttype"
                | "dataschema"
                | "data"
                | "data_base64"
        ) {
            continue;
        }
        let value = match serde_json::from_str::<serde_json::Value>(raw.get()) {
            Ok(serde_json::Value::Null) => continue,
            Ok(serde_json::Value::String(s)) => ExtensionValue::String(s),
            Ok(serde_json::Value::Bool(b)) => ExtensionValue::Boolean(b),
            Ok(serde_json::Value::Number(n)) => match n.as_i64() {
                Some(i) => ExtensionValue::Integer(i),
                None => {
                    return Err(DecodeError::invalid(
                        name.clone(),
                        "an extension number must be a 32- or 64-bit integer",
                    ));
                }
            },
            _ => {
                return Err(DecodeError::invalid(
                    name.clone(),
                    "an extension must be a string, integer or boolean",
                ));
            }
        };
        extensions.insert(name.clone(), value);
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::ext;

    fn sample() -> CloudEvent {
        CloudEvent::builder("order.placed", "/services/orders")
            .subject("order-42")
            .partition_key("order-42")
            .extension(ext::TRACEPARENT, "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
            .extension(ext::CORRELATION_ID, "corr-1")
            .extension(ext::STREAM_VERSION, 3_i64)
            .extension(ext::POSITION, 17_i64)
            .extension("flag", true)
            .data("application/json", r#"{"total":12,"items":[1,2]}"#)
            .build()
            .expect("valid sample")
    }

    #[test]
    fn binary_round_trip_on_both_bindings() {
        let ev = sample();
        for binding in [Binding::Kafka, Binding::Amqp] {
            let msg = to_binary(&ev, binding);
            assert!(msg.headers.iter().all(|(k, _)| k.starts_with(binding.prefix())));
            let headers = msg.headers.iter().map(|(k, v)| (k.as_str(), v.as_bytes()));
            let back =
                from_message(binding, headers, msg.content_type.as_deref(), msg.body.clone())
                    .expect("decodes");
            // Booleans travel as strings in binary mode; everything Keel reads is intact.
            assert_eq!(back.id(), ev.id());
            assert_eq!(back.time(), ev.time());
            assert_eq!(back.partition_key(), ev.partition_key());
            assert_eq!(back.stream_version(), ev.stream_version());
            assert_eq!(back.position(), ev.position());
            assert_eq!(back.traceparent(), ev.traceparent());
            assert_eq!(back.data(), ev.data());
            assert_eq!(back.extension("flag"), Some(&ExtensionValue::String("true".into())));
        }
    }

    #[test]
    fn structured_round_trip_embeds_json_data() {
        let ev = sample();
        let json = to_structured(&ev);
        let text = String::from_utf8(json.clone()).expect("utf8");
        assert!(text.contains(r#""data":{"total":12,"items":[1,2]}"#), "{text}");
        assert_eq!(from_structured(&json).expect("decodes"), ev);
    }

    #[test]
    fn structured_mode_is_chosen_by_content_type() {
        let ev = sample();
        let body = Bytes::from(to_structured(&ev));
        let back = from_message(
            Binding::Amqp,
            [],
            Some("application/cloudevents+json; charset=utf-8"),
            body,
        )
        .expect("decodes");
        assert_eq!(back, ev);
    }

    #[test]
    fn text_and_binary_data_survive_structured_mode() {
        for (ct, data) in
            [("text/plain", &b"hello"[..]), ("application/octet-stream", &[0, 159, 146, 150][..])]
        {
            let ev = CloudEvent::builder("t", "/s").data(ct, data.to_vec()).build().expect("valid");
            let back = from_structured(&to_structured(&ev)).expect("decodes");
            assert_eq!(back.data().map(|b| &b[..]), Some(data));
        }
    }

    #[test]
    fn foreign_messages_get_reasons() {
        let err =
            from_message(Binding::Amqp, [], Some("text/plain"), Bytes::from_static(b"{'a': 1}"))
                .expect_err("not a cloud event");
        assert!(err.to_string().contains("no `cloudEvents_specversion` header"), "{err}");

        let err = from_structured(br#"{"specversion":"1.0","id":"1","source":"/s"}"#)
            .expect_err("no type");
        assert_eq!(err.to_string(), "missing required CloudEvents attribute `type`");

        let err = from_structured(br#"{"specversion":"0.3","id":"1","source":"/s","type":"t"}"#)
            .expect_err("old version");
        assert!(matches!(err, DecodeError::UnsupportedSpecVersion(_)));

        let err = from_structured(
            br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","time":"yesterday"}"#,
        )
        .expect_err("bad time");
        assert!(err.to_string().contains("`time`"), "{err}");

        let headers = [
            ("ce_specversion", &b"1.0"[..]),
            ("ce_id", b"1"),
            ("ce_source", b"/s"),
            ("ce_type", &[0xff, 0xfe]),
        ];
        let err = from_message(Binding::Kafka, headers, None, Bytes::new()).expect_err("bad utf8");
        assert!(err.to_string().contains("not UTF-8"), "{err}");
    }

    #[test]
    fn amqp_accepts_the_colon_prefix() {
        let headers = [
            ("cloudEvents:specversion", &b"1.0"[..]),
            ("cloudEvents:id", b"1"),
            ("cloudEvents:source", b"/s"),
            ("cloudEvents:type", b"t"),
        ];
        let ev = from_message(
            Binding::Amqp,
            headers,
            Some("application/json"),
            Bytes::from_static(b"{}"),
        )
        .expect("decodes");
        assert_eq!(ev.ty(), "t");
    }
}
