#![cfg(feature = "integration")]
//! Publishing is confirmed or it is an error: unroutable and nacked messages are
//! refused, bad configuration is named, a closed bus refuses work, and batches larger
//! than the confirm window still arrive whole.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_amqp::{AmqpBus, AmqpConfig};
use keel_bus::{Consumer, HandlerError, Message, handler_fn};
use keel_core::{BusError, DeadLetters as _, Publisher, Subscriber as _, SubscriptionSpec};
use keel_testkit::util::{eventually, seq_event, unique};
use lapin::types::{AMQPValue, FieldTable};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn publishing_where_no_group_listens_is_an_error() {
    let bus = common::bus().await;
    let topic = unique("nobody");
    let err = bus.publish(&topic, &[seq_event(0, None)]).await.expect_err("unroutable");
    assert!(matches!(&err, BusError::Unroutable(m) if m.contains("unroutable")), "{err}");
    assert!(!err.is_retryable());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn types_a_group_did_not_subscribe_are_unroutable() {
    let bus = common::bus().await;
    let topic = unique("typed");
    let spec = SubscriptionSpec::new(&topic, "g").types(["keel.test.seq"]);
    let mut sub = bus.subscribe(spec).await.expect("subscribe");
    bus.publish(&topic, &[seq_event(0, None)]).await.expect("a subscribed type");
    let other = keel_core::CloudEvent::builder("keel.test.other", "/t").build().expect("valid");
    let err = bus.publish(&topic, &[other]).await.expect_err("not bound");
    assert!(matches!(err, BusError::Unroutable(_)), "{err}");
    let delivery = sub.next().await.expect("open").expect("delivery");
    delivery.ack().await.expect("ack");
    sub.close().await.expect("close");
}

/// `publish_routed` publishes a batch once and names the events RabbitMQ returned;
/// the others are confirmed, and arrive once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn publish_routed_names_the_events_nobody_takes() {
    let bus = common::bus().await;
    let topic = unique("routed");
    let spec = SubscriptionSpec::new(&topic, "g").types(["keel.test.seq"]);
    let mut sub = bus.subscribe(spec).await.expect("subscribe");
    let mut batch = Vec::new();
    let mut nobody = Vec::new();
    for n in 0..6 {
        batch.push(seq_event(n, None));
        let other = keel_core::CloudEvent::builder("keel.test.other", "/t").build().expect("valid");
        nobody.push(other.id().to_owned());
        batch.push(other);
    }
    // An id too long for an AMQP message id (256 bytes, the most a CloudEvent may
    // have) comes back unnamed; it is still told apart from the routed events.
    let long = keel_core::CloudEvent::builder("keel.test.other", "/t")
        .id("x".repeat(256))
        .build()
        .expect("valid");
    nobody.push(long.id().to_owned());
    batch.push(long);
    let unrouted = bus.publish_routed(&topic, &batch).await.expect("published");
    assert_eq!(unrouted, nobody, "the returned events, in batch order");
    for routed in batch[..12].iter().step_by(2) {
        let delivery = sub.next().await.expect("open").expect("delivery");
        assert_eq!(delivery.event().expect("decodes").id(), routed.id());
        delivery.ack().await.expect("ack");
    }
    let more = tokio::time::timeout(Duration::from_millis(500), sub.next()).await;
    assert!(
        more.is_err(),
        "nothing twice: {:?}",
        more.map(|d| d.map(|d| d.map(|d| d.event().map(|e| e.id().to_owned()))))
    );
    sub.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_nacked_publish_is_an_error() {
    let bus = common::bus().await;
    let topic = unique("full");
    // A queue that refuses a second message, bound to the topic's exchange.
    let sub = bus.subscribe(SubscriptionSpec::new(&topic, "g")).await.expect("exchange");
    sub.close().await.expect("close");
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongLongInt(1));
    args.insert("x-overflow".into(), AMQPValue::LongString("reject-publish".into()));
    args.insert("x-expires".into(), AMQPValue::LongLongInt(30_000));
    let full = format!("{topic}-full");
    common::plain_queue(&full, args).await;
    let connection = common::plain_connection().await;
    let channel = connection.create_channel().await.expect("channel");
    channel
        .queue_bind(
            full.as_str().into(),
            format!("keel.{topic}").into(),
            "#".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind");
    bus.publish(&topic, &[seq_event(0, None)]).await.expect("room for one");
    let err = bus.publish(&topic, &[seq_event(1, None)]).await.expect_err("nacked");
    assert!(matches!(&err, BusError::Rejected(m) if m.contains("negative confirm")), "{err}");
    let _ = connection.close(200, "done".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_configuration_is_named_and_an_absent_broker_is_retryable() {
    let err = AmqpBus::connect(&format!("{}?prefech=3", common::url()), AmqpConfig::default())
        .await
        .expect_err("typo");
    assert!(matches!(&err, BusError::Config(m) if m.contains("prefech")), "{err}");
    let err = AmqpBus::connect(
        "amqp://guest:guest@127.0.0.1:1/%2f",
        AmqpConfig::default().connect_timeout(Duration::from_secs(5)),
    )
    .await
    .expect_err("nothing listens there");
    assert!(err.is_retryable(), "{err}");
    let bus = common::bus().await;
    let err = bus.publish("no spaces allowed", &[seq_event(0, None)]).await.expect_err("bad");
    assert!(matches!(err, BusError::Config(_)), "{err}");
    let Err(err) = bus.subscribe(SubscriptionSpec::new("t", "g/1")).await else {
        panic!("a bad group name is refused")
    };
    assert!(matches!(err, BusError::Config(_)), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_url_configures_the_bus() {
    let url = format!("{}?queue_type=classic&prefetch=7&publish_channels=2", common::url());
    let bus = common::bus_at(&url, AmqpConfig::default()).await;
    assert_eq!(bus.config().queue_type, keel_amqp::QueueType::Classic);
    assert_eq!(bus.config().prefetch, Some(7));
    assert_eq!(bus.config().publish_channels, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_closed_bus_refuses_work_and_ends_its_subscriptions() {
    let bus = common::bus().await;
    let topic = unique("closing");
    let mut sub = bus.subscribe(SubscriptionSpec::new(&topic, "g")).await.expect("subscribe");
    Publisher::close(&bus).await.expect("close");
    assert!(sub.next().await.is_none(), "the subscription ends");
    assert!(matches!(bus.publish(&topic, &[seq_event(0, None)]).await, Err(BusError::Closed)));
    assert!(matches!(
        bus.subscribe(SubscriptionSpec::new(&topic, "g")).await,
        Err(BusError::Closed)
    ));
    assert!(matches!(bus.list(&topic, "g", 1).await, Err(BusError::Closed)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batches_larger_than_the_confirm_window_arrive_whole() {
    let bus: Arc<dyn keel_core::Bus> =
        Arc::new(common::bus_with(common::config().confirm_window(7).publish_channels(2)).await);
    let topic = unique("windows");
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let sink = seen.clone();
    let handler = handler_fn(move |message: Message| {
        let sink = sink.clone();
        async move {
            sink.lock().expect("not poisoned").insert(message.event().id().to_owned());
            Ok::<(), HandlerError>(())
        }
    });
    let handle = Consumer::new(bus.clone(), SubscriptionSpec::new(&topic, "g").prefetch(200))
        .concurrency(4)
        .start(handler)
        .await
        .expect("subscribe");
    let events: Vec<_> = (0..1000).map(|i| seq_event(i, None)).collect();
    let mut tasks = Vec::new();
    for chunk in events.chunks(250) {
        let (bus, topic, chunk) = (bus.clone(), topic.clone(), chunk.to_vec());
        tasks.push(tokio::spawn(async move { bus.publish(&topic, &chunk).await }));
    }
    for task in tasks {
        task.await.expect("task").expect("publish");
    }
    let expected: HashSet<String> = events.iter().map(|e| e.id().to_owned()).collect();
    eventually("1,000 messages", || *seen.lock().expect("not poisoned") == expected).await;
    handle.stop().await.expect("stop");
}
