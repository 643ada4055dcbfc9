#![cfg(feature = "integration")]
//! Keel and plain AMQP clients on the same broker: structured CloudEvents from a
//! producer that is not Keel are consumed; a body that is not a CloudEvent is
//! dead-lettered with a readable reason while consumption goes on; Keel's own
//! messages and dead letters are readable by plain clients.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use keel_bus::{Consumer, HandlerError, Message, handler_fn};
use keel_core::codec::to_structured;
use keel_core::{CloudEvent, Payload, Publisher as _, SubscriptionSpec};
use keel_testkit::util::{eventually, eventually_async, unique};
use lapin::BasicProperties;
use lapin::options::BasicGetOptions;
use lapin::types::AMQPValue;

#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<CloudEvent>>>);

impl Seen {
    fn ids(&self) -> Vec<String> {
        self.0.lock().expect("not poisoned").iter().map(|e| e.id().to_owned()).collect()
    }
    fn events(&self) -> Vec<CloudEvent> {
        self.0.lock().expect("not poisoned").clone()
    }
}

async fn consume(
    bus: &Arc<dyn keel_core::Bus>,
    spec: SubscriptionSpec,
) -> (Seen, keel_bus::ConsumerHandle) {
    let seen = Seen::default();
    let sink = seen.clone();
    let handler = handler_fn(move |message: Message| {
        let sink = sink.clone();
        async move {
            sink.0.lock().expect("not poisoned").push(message.into_event());
            Ok::<(), HandlerError>(())
        }
    });
    let handle = Consumer::new(bus.clone(), spec).start(handler).await.expect("subscribe");
    (seen, handle)
}

fn order_placed() -> CloudEvent {
    CloudEvent::builder("shop.order.placed", "/python/checkout")
        .subject("order-17")
        .json_data(&serde_json::json!({ "order_id": 17, "total_cents": 1250 }))
        .expect("json")
        .build()
        .expect("valid")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn structured_json_from_a_plain_client_is_consumed() {
    let bus = common::dyn_bus().await;
    let topic = unique("interop-structured");
    let (seen, handle) = consume(&bus, SubscriptionSpec::new(&topic, "billing")).await;
    let sent = order_placed();
    let properties = BasicProperties::default()
        .with_content_type("application/cloudevents+json; charset=utf-8".into());
    common::plain_publish(&topic, sent.ty(), properties, Bytes::from(to_structured(&sent)))
        .await
        .expect("plain publish");
    eventually("the structured event", || seen.ids().contains(&sent.id().to_owned())).await;
    assert_eq!(seen.events()[0], sent, "every attribute and the data survive");
    handle.stop().await.expect("stop");
    assert!(bus.list(&topic, "billing", 10).await.expect("list").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_python_dict_is_dead_lettered_with_a_reason_and_consumption_goes_on() {
    let bus = common::dyn_bus().await;
    let topic = unique("interop-foreign");
    let (seen, handle) = consume(&bus, SubscriptionSpec::new(&topic, "billing")).await;
    let body =
        Bytes::from_static(b"{'order_id': 17, 'status': 'placed', 'total': Decimal('12.50')}");
    let properties = BasicProperties::default().with_content_type("text/plain".into());
    common::plain_publish(&topic, "order.placed", properties, body.clone())
        .await
        .expect("plain publish");
    let after = order_placed();
    bus.publish(&topic, std::slice::from_ref(&after)).await.expect("publish");
    eventually("the valid event after the foreign one", || {
        seen.ids().contains(&after.id().to_owned())
    })
    .await;
    eventually_async("a dead letter", || async {
        bus.list(&topic, "billing", 10).await.expect("list").len() == 1
    })
    .await;
    let letter = bus.list(&topic, "billing", 10).await.expect("list").remove(0);
    assert!(letter.reason.contains("not a CloudEvent"), "reason: {}", letter.reason);
    assert_eq!(letter.attempts, 1);
    match &letter.payload {
        Payload::Undecodable(raw) => {
            assert_eq!(raw.body, body, "the original bytes are kept");
            assert_eq!(raw.content_type.as_deref(), Some("text/plain"));
        }
        Payload::Event(event) => panic!("decoded: {event:?}"),
    }
    handle.stop().await.expect("stop");

    // A plain client reading the dead-letter queue sees why, where from and when.
    let connection = common::plain_connection().await;
    let channel = connection.create_channel().await.expect("channel");
    let dlq = format!("keel.{topic}:billing:dlq");
    let message = channel
        .basic_get(dlq.as_str().into(), BasicGetOptions { no_ack: false })
        .await
        .expect("get")
        .expect("a dead letter");
    let headers = message.delivery.properties.headers().clone().expect("headers");
    let text = |name: &str| match headers.inner().get(name) {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        other => panic!("{name}: {other:?}"),
    };
    assert!(text("x-keel-error").contains("not a CloudEvent"));
    assert_eq!(text("x-keel-routing-key"), "order.placed");
    assert_eq!(text("x-keel-dead-letter-id"), letter.id.0);
    assert_eq!(text("x-keel-topic"), topic);
    assert_eq!(text("x-keel-group"), "billing");
    assert!(chrono::DateTime::parse_from_rfc3339(&text("x-keel-dead-lettered-at")).is_ok());
    assert!(matches!(headers.inner().get("x-keel-attempts"), Some(AMQPValue::LongLongInt(1))));
    assert_eq!(message.delivery.data, body.to_vec());
    let _ = connection.close(200, "done".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keel_messages_are_binary_mode_cloud_events_for_plain_clients() {
    let bus = common::bus().await;
    let topic = unique("interop-wire");
    // A group queue for the messages to land in.
    let sub = keel_core::Subscriber::subscribe(&bus, SubscriptionSpec::new(&topic, "g"))
        .await
        .expect("subscribe");
    keel_core::Subscription::close(sub).await.expect("close");
    let sent = order_placed();
    bus.publish(&topic, std::slice::from_ref(&sent)).await.expect("publish");

    let connection = common::plain_connection().await;
    let channel = connection.create_channel().await.expect("channel");
    let queue = format!("keel.{topic}:g");
    let mut message = None;
    for _ in 0..100 {
        message = channel
            .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .expect("get");
        if message.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let delivery = message.expect("the message").delivery;
    assert_eq!(delivery.routing_key.as_str(), "shop.order.placed", "routing key = type");
    let properties = &delivery.properties;
    assert_eq!(properties.content_type().as_ref().map(|c| c.as_str()), Some("application/json"));
    assert_eq!(*properties.delivery_mode(), Some(2), "persistent");
    let headers = properties.headers().clone().expect("headers");
    let text = |name: &str| match headers.inner().get(name) {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        other => panic!("{name}: {other:?}"),
    };
    assert_eq!(text("cloudEvents_specversion"), "1.0");
    assert_eq!(text("cloudEvents_id"), sent.id());
    assert_eq!(text("cloudEvents_type"), "shop.order.placed");
    assert_eq!(text("cloudEvents_source"), "/python/checkout");
    assert_eq!(text("cloudEvents_subject"), "order-17");
    assert_eq!(delivery.data, sent.data().expect("data").to_vec(), "the data, untouched");
    let _ = connection.close(200, "done".into()).await;
}
