//! Property tests of the wire codecs: round trips in both modes, and no input, however
//! malformed, makes a decoder panic.

use std::collections::BTreeMap;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use keel_core::codec::{Binding, from_message, from_structured, to_binary, to_structured};
use keel_core::{CloudEvent, ExtensionValue};
use proptest::prelude::*;

use keel_core::envelope::RESERVED;

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<i64>().prop_map(|i| serde_json::json!(i)),
        "\\PC{0,12}".prop_map(serde_json::Value::String),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..6)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

/// `(content type, data)` pairs of the three kinds Keel meets: JSON, text, bytes.
fn data() -> impl Strategy<Value = Option<(String, Vec<u8>)>> {
    prop_oneof![
        Just(None),
        json_value().prop_map(|v| Some((
            "application/json".to_owned(),
            serde_json::to_vec(&v).expect("serializable")
        ))),
        "\\PC{0,40}".prop_map(|s| Some(("text/plain; charset=utf-8".to_owned(), s.into_bytes()))),
        prop::collection::vec(any::<u8>(), 0..64)
            .prop_map(|b| Some(("application/octet-stream".to_owned(), b))),
    ]
}

fn extension_value(strings_only: bool) -> BoxedStrategy<ExtensionValue> {
    if strings_only {
        "\\PC{0,20}".prop_map(ExtensionValue::String).boxed()
    } else {
        prop_oneof![
            "\\PC{0,20}".prop_map(ExtensionValue::String),
            any::<i64>().prop_map(ExtensionValue::Integer),
            any::<bool>().prop_map(ExtensionValue::Boolean),
        ]
        .boxed()
    }
}

fn event(strings_only: bool) -> impl Strategy<Value = CloudEvent> {
    (
        "\\PC{1,30}",
        "[a-zA-Z0-9/:._~?=&-]{1,40}",
        "[a-z][a-z0-9.-]{0,30}",
        proptest::option::of("\\PC{1,30}"),
        proptest::option::of(0_i64..4_102_444_800_000_000_000),
        proptest::option::of("https://[a-z]{1,10}\\.example/[a-z0-9/]{0,20}"),
        data(),
        prop::collection::btree_map("[a-z][a-z0-9]{0,19}", extension_value(strings_only), 0..5),
    )
        .prop_map(|(id, source, ty, subject, nanos, schema, data, extensions)| {
            let mut builder = CloudEvent::builder(ty, source).id(id).no_time();
            if let Some(subject) = subject {
                builder = builder.subject(subject);
            }
            if let Some(nanos) = nanos {
                builder = builder.time(DateTime::<Utc>::from_timestamp_nanos(nanos));
            }
            if let Some(schema) = schema {
                builder = builder.dataschema(schema);
            }
            if let Some((content_type, bytes)) = data {
                builder = builder.data(content_type, bytes);
            }
            let extensions: BTreeMap<_, _> = extensions
                .into_iter()
                .filter(|(name, _)| !RESERVED.contains(&name.as_str()))
                // Keel's own integer extensions only take integers.
                .filter(|(name, _)| {
                    !matches!(name.as_str(), "position" | "streamversion" | "schemaversion")
                })
                .collect();
            for (name, value) in extensions {
                builder = builder.extension(name, value);
            }
            builder.build().expect("generated events are valid")
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn structured_mode_round_trips(event in event(false)) {
        let back = from_structured(&to_structured(&event)).expect("decodes");
        prop_assert_eq!(back, event);
    }

    #[test]
    fn binary_mode_round_trips(event in event(true), kafka in any::<bool>()) {
        let binding = if kafka { Binding::Kafka } else { Binding::Amqp };
        let message = to_binary(&event, binding);
        let headers = message.headers.iter().map(|(k, v)| (k.as_str(), v.as_bytes()));
        let back = from_message(binding, headers, message.content_type.as_deref(), message.body.clone())
            .expect("decodes");
        prop_assert_eq!(back, event);
    }

    #[test]
    fn structured_decoder_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = from_structured(&bytes);
    }

    #[test]
    fn json_shaped_garbage_never_panics(value in json_value()) {
        let _ = from_structured(&serde_json::to_vec(&value).expect("serializable"));
        let mut object = serde_json::json!({"specversion": "1.0", "id": "x", "source": "/s", "type": "t"});
        object["data"] = value.clone();
        object["time"] = value.clone();
        object["ext"] = value;
        let _ = from_structured(&serde_json::to_vec(&object).expect("serializable"));
    }

    #[test]
    fn binary_decoder_never_panics(
        headers in prop::collection::vec(
            (prop_oneof![Just("ce_specversion".to_owned()), "ce_\\PC{0,12}", "cloudEvents_\\PC{0,12}", "\\PC{0,12}"],
             prop::collection::vec(any::<u8>(), 0..24)),
            0..10,
        ),
        content_type in proptest::option::of(prop_oneof![Just("application/cloudevents+json".to_owned()), "\\PC{0,30}"]),
        body in prop::collection::vec(any::<u8>(), 0..256),
        kafka in any::<bool>(),
    ) {
        let binding = if kafka { Binding::Kafka } else { Binding::Amqp };
        let headers = headers.iter().map(|(k, v)| (k.as_str(), v.as_slice()));
        let _ = from_message(binding, headers, content_type.as_deref(), Bytes::from(body));
    }
}
