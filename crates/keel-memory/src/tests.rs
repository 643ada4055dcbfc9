use std::collections::HashSet;
use std::time::{Duration, Instant};

use keel_core::CloudEvent;
use keel_core::bus::{
    BusError, DeadLetterId, DeadLetterReason, DeadLetters, Delivery, Payload, Publisher,
    RawMessage, StartFrom, Subscriber, Subscription, SubscriptionSpec,
};
use tokio::time::timeout;

use crate::MemoryBus;

/// How long a negative test waits for something that must not happen.
const QUIET: Duration = Duration::from_millis(100);
/// How long a positive test waits for something that must happen.
const SOON: Duration = Duration::from_secs(5);

fn event(ty: &str, key: Option<&str>, n: u64) -> CloudEvent {
    let mut builder = CloudEvent::builder(ty, "/keel-memory/tests");
    if let Some(key) = key {
        builder = builder.partition_key(key);
    }
    builder.json_data(&n).expect("json").build().expect("valid event")
}

fn numbered(n: u64) -> CloudEvent {
    event("test.numbered", None, n)
}

fn number(delivery: &Delivery) -> u64 {
    let data = delivery.event().and_then(CloudEvent::data).expect("event with data");
    serde_json::from_slice(data).expect("a number")
}

async fn subscribe(bus: &MemoryBus, spec: SubscriptionSpec) -> Box<dyn Subscription> {
    bus.subscribe(spec).await.expect("subscribe")
}

async fn next(sub: &mut Box<dyn Subscription>) -> Delivery {
    timeout(SOON, sub.next()).await.expect("a delivery in time").expect("open").expect("ok")
}

async fn nothing(sub: &mut Box<dyn Subscription>) {
    if let Ok(got) = timeout(QUIET, sub.next()).await {
        panic!("expected nothing, got {got:?}");
    }
}

async fn publish(bus: &MemoryBus, topic: &str, events: &[CloudEvent]) {
    bus.publish(topic, events).await.expect("publish");
}

#[tokio::test]
async fn fans_out_to_every_group() {
    let bus = MemoryBus::new();
    let mut a = subscribe(&bus, SubscriptionSpec::new("t", "a")).await;
    let mut b = subscribe(&bus, SubscriptionSpec::new("t", "b")).await;
    publish(&bus, "t", &[numbered(1), numbered(2)]).await;
    for sub in [&mut a, &mut b] {
        for expected in [1, 2] {
            let d = next(sub).await;
            assert_eq!((number(&d), d.attempt()), (expected, 1));
            d.ack().await.expect("ack");
        }
        nothing(sub).await;
    }
}

#[tokio::test]
async fn competing_consumers_share_without_duplicates() {
    let bus = MemoryBus::new();
    let mut a = subscribe(&bus, SubscriptionSpec::new("t", "g").prefetch(5)).await;
    let mut b = subscribe(&bus, SubscriptionSpec::new("t", "g").prefetch(100)).await;
    publish(&bus, "t", &(0..20).map(numbered).collect::<Vec<_>>()).await;

    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(next(&mut a).await);
    }
    nothing(&mut a).await; // prefetch reached
    for _ in 0..15 {
        held.push(next(&mut b).await);
    }
    nothing(&mut b).await;
    let seen: HashSet<u64> = held.iter().map(number).collect();
    assert_eq!(seen, (0..20).collect());
    for d in held {
        d.ack().await.expect("ack");
    }
    nothing(&mut a).await;
}

#[tokio::test]
async fn keeps_order_per_key_across_a_nack() {
    let bus = MemoryBus::new();
    let mut sub = subscribe(&bus, SubscriptionSpec::new("t", "g")).await;
    let events = [event("x", Some("k"), 1), event("x", Some("k"), 2), event("x", Some("other"), 3)];
    publish(&bus, "t", &events).await;

    let first = next(&mut sub).await;
    assert_eq!(number(&first), 1);
    let other = next(&mut sub).await;
    assert_eq!(number(&other), 3, "another key is not held back");
    nothing(&mut sub).await; // 2 waits for 1
    first.nack(Duration::from_millis(20)).await.expect("nack");

    let again = next(&mut sub).await;
    assert_eq!((number(&again), again.attempt()), (1, 2), "the nacked one comes back first");
    nothing(&mut sub).await;
    again.ack().await.expect("ack");
    let second = next(&mut sub).await;
    assert_eq!((number(&second), second.attempt()), (2, 1));
    other.ack().await.expect("ack");
    second.ack().await.expect("ack");
}

#[tokio::test]
async fn a_dropped_delivery_is_redelivered() {
    let bus = MemoryBus::new();
    let mut sub = subscribe(&bus, SubscriptionSpec::new("t", "g")).await;
    publish(&bus, "t", &[event("x", Some("k"), 7)]).await;
    let d = next(&mut sub).await;
    drop(d);
    let d = next(&mut sub).await;
    assert_eq!((number(&d), d.attempt()), (7, 2));
    d.ack().await.expect("ack");
    nothing(&mut sub).await;
}

#[tokio::test]
async fn a_dropped_or_closed_subscription_gives_its_deliveries_back() {
    let bus = MemoryBus::new();
    let mut keeper = subscribe(&bus, SubscriptionSpec::new("t", "g").prefetch(1)).await;
    publish(&bus, "t", &[numbered(1), numbered(2)]).await;

    let mut leaver = subscribe(&bus, SubscriptionSpec::new("t", "g")).await;
    let held = next(&mut keeper).await;
    let taken = next(&mut leaver).await;
    assert_eq!((number(&held), number(&taken)), (1, 2));
    drop(leaver);
    held.ack().await.expect("ack");
    let d = next(&mut keeper).await;
    assert_eq!((number(&d), d.attempt()), (2, 2));
    // Settling a delivery after its subscription closed does nothing.
    assert!(matches!(taken.ack().await, Err(BusError::Closed)));

    let mut closer = subscribe(&bus, SubscriptionSpec::new("t", "g")).await;
    drop(d); // back to the group once more
    let d = next(&mut closer).await;
    assert_eq!((number(&d), d.attempt()), (2, 3));
    closer.close().await.expect("close");
    let d = next(&mut keeper).await;
    assert_eq!((number(&d), d.attempt()), (2, 4));
    d.ack().await.expect("ack");
    nothing(&mut keeper).await;
}

#[tokio::test]
async fn dead_letters_can_be_listed_retried_and_purged() {
    let bus = MemoryBus::new();
    let mut sub = subscribe(&bus, SubscriptionSpec::new("t", "g")).await;
    publish(&bus, "t", &[numbered(1), numbered(2)]).await;
    for error in ["first", "second"] {
        let d = next(&mut sub).await;
        let reason = DeadLetterReason { error: error.into(), attempts: d.attempt() };
        d.dead_letter(reason).await.expect("dead-letter");
    }
    nothing(&mut sub).await;

    let letters = bus.list("t", "g", 10).await.expect("list");
    assert_eq!(letters.len(), 2);
    assert_eq!((letters[0].reason.as_str(), letters[1].reason.as_str()), ("first", "second"));
    assert_eq!((letters[0].topic.as_str(), letters[0].group.as_str()), ("t", "g"));
    assert_eq!(letters[0].attempts, 1);
    assert!(matches!(&letters[0].payload, Payload::Event(e) if e.ty() == "test.numbered"));
    assert_eq!(bus.list("t", "g", 1).await.expect("list").len(), 1);
    assert!(bus.list("t", "other", 10).await.expect("list").is_empty());
    assert!(bus.list("nope", "g", 10).await.expect("list").is_empty());

    assert!(bus.retry("t", "g", &letters[0].id).await.expect("retry"));
    assert!(!bus.retry("t", "g", &letters[0].id).await.expect("retry"));
    assert!(!bus.retry("t", "g", &DeadLetterId("missing".into())).await.expect("retry"));
    let d = next(&mut sub).await;
    assert_eq!((number(&d), d.attempt()), (1, 1));
    d.ack().await.expect("ack");

    assert_eq!(bus.purge("t", "g").await.expect("purge"), 1);
    assert!(bus.list("t", "g", 10).await.expect("list").is_empty());
    assert_eq!(bus.purge("t", "g").await.expect("purge"), 0);
    assert!(matches!(bus.list("t", "g/x", 10).await, Err(BusError::Config(_))));
}

#[tokio::test]
async fn a_full_topic_makes_publishers_wait() {
    let bus = MemoryBus::with_capacity(10);
    let mut sub = subscribe(&bus, SubscriptionSpec::new("t", "g")).await;
    for n in 0..10 {
        publish(&bus, "t", &[numbered(n)]).await;
    }
    assert!(timeout(QUIET, bus.publish("t", &[numbered(10)])).await.is_err(), "must wait");

    let waiting = tokio::spawn({
        let bus = bus.clone();
        async move { bus.publish("t", &[numbered(10)]).await }
    });
    // Delivered is not enough: only settling frees room.
    let first = next(&mut sub).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!waiting.is_finished());
    first.ack().await.expect("ack");
    timeout(SOON, waiting).await.expect("publish resumes").expect("task").expect("publish");

    // A waiting publisher fails once the bus closes.
    let blocked = tokio::spawn({
        let bus = bus.clone();
        async move { bus.publish("t", &[numbered(11)]).await }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    bus.close().await.expect("close");
    let result = timeout(SOON, blocked).await.expect("in time").expect("task");
    assert!(matches!(result, Err(BusError::Closed)));
}

#[tokio::test]
async fn a_batch_larger_than_the_capacity_goes_through() {
    let bus = MemoryBus::with_capacity(3);
    let mut sub = subscribe(&bus, SubscriptionSpec::new("t", "g")).await;
    publish(&bus, "t", &(0..10).map(numbered).collect::<Vec<_>>()).await;
    for n in 0..10 {
        let d = next(&mut sub).await;
        assert_eq!(number(&d), n);
        d.ack().await.expect("ack");
    }
    publish(&bus, "t", &[numbered(10)]).await;
}

#[tokio::test]
async fn messages_wait_for_groups_to_come_and_count_toward_capacity() {
    let bus = MemoryBus::with_capacity(2);
    publish(&bus, "t", &[numbered(1), numbered(2)]).await;
    assert!(timeout(QUIET, bus.publish("t", &[numbered(3)])).await.is_err(), "must wait");
    let mut sub = subscribe(&bus, SubscriptionSpec::new("t", "g")).await;
    for n in [1, 2] {
        let d = next(&mut sub).await;
        assert_eq!(number(&d), n);
        d.ack().await.expect("ack");
    }
    publish(&bus, "t", &[numbered(3)]).await;
}

#[tokio::test]
async fn close_stops_publishing_and_ends_subscriptions() {
    let bus = MemoryBus::new();
    let mut idle = subscribe(&bus, SubscriptionSpec::new("idle", "g")).await;
    let waiting = tokio::spawn(async move { idle.next().await.is_none() });
    let mut sub = subscribe(&bus, SubscriptionSpec::new("t", "g")).await;
    publish(&bus, "t", &[numbered(1)]).await;

    bus.close().await.expect("close");
    bus.close().await.expect("close is idempotent");
    assert!(matches!(bus.publish("t", &[numbered(2)]).await, Err(BusError::Closed)));
    assert!(bus.subscribe(SubscriptionSpec::new("t", "h")).await.is_err());
    assert!(timeout(SOON, waiting).await.expect("woken").expect("task"), "ends with None");

    // What was ready is still handed out, then the subscription ends.
    let d = next(&mut sub).await;
    assert_eq!(number(&d), 1);
    d.ack().await.expect("ack");
    assert!(timeout(SOON, sub.next()).await.expect("ends").is_none());
}

#[tokio::test]
async fn a_group_starting_from_latest_skips_what_came_before() {
    let bus = MemoryBus::new();
    publish(&bus, "t", &[numbered(1)]).await;
    let mut earliest = subscribe(&bus, SubscriptionSpec::new("t", "early")).await;
    let mut latest =
        subscribe(&bus, SubscriptionSpec::new("t", "late").start(StartFrom::Latest)).await;
    nothing(&mut latest).await;
    publish(&bus, "t", &[numbered(2)]).await;
    assert_eq!(number(&next(&mut latest).await), 2);
    assert_eq!(number(&next(&mut earliest).await), 1);
    assert_eq!(number(&next(&mut earliest).await), 2);
}

#[tokio::test]
async fn type_filters_skip_other_types() {
    let bus = MemoryBus::with_capacity(4);
    let mut sub = subscribe(&bus, SubscriptionSpec::new("t", "g").types(["wanted"])).await;
    let events = [event("wanted", None, 1), event("other", None, 2), event("wanted", None, 3)];
    publish(&bus, "t", &events).await;
    let (one, three) = (next(&mut sub).await, next(&mut sub).await);
    assert_eq!((number(&one), number(&three)), (1, 3));
    nothing(&mut sub).await;
    one.ack().await.expect("ack");
    three.ack().await.expect("ack");
    // Skipped messages are done at once: nothing is retained, the topic has room.
    let more: Vec<_> = (0..4).map(|n| event("other", None, n)).collect();
    timeout(SOON, bus.publish("t", &more)).await.expect("room").expect("publish");
    timeout(SOON, bus.publish("t", &more)).await.expect("room").expect("publish");
}

#[tokio::test]
async fn undecodable_messages_are_delivered_raw() {
    let bus = MemoryBus::new();
    let mut sub = subscribe(&bus, SubscriptionSpec::new("t", "g").types(["x"])).await;
    let raw = RawMessage {
        headers: vec![("h".into(), "v".into())],
        content_type: Some("text/plain".into()),
        body: "garbage".into(),
        error: "not a CloudEvent".into(),
    };
    bus.publish_raw("t", raw.clone()).expect("publish_raw");
    let d = next(&mut sub).await;
    assert_eq!(d.payload(), &Payload::Undecodable(raw));
    assert!(matches!(bus.publish_raw("bad topic", d_raw()), Err(BusError::Config(_))));
    d.ack().await.expect("ack");
}

fn d_raw() -> RawMessage {
    RawMessage { headers: Vec::new(), content_type: None, body: "x".into(), error: "e".into() }
}

#[tokio::test]
async fn bad_names_are_config_errors() {
    let bus = MemoryBus::new();
    assert!(matches!(bus.publish("a b", &[numbered(1)]).await, Err(BusError::Config(_))));
    assert!(matches!(
        bus.subscribe(SubscriptionSpec::new("t", "")).await.map(drop),
        Err(BusError::Config(_))
    ));
}

#[tokio::test]
/// Through a topic whose capacity makes the publisher wait, in order per key. How
/// fast is for `benches/memory.rs` to print, not for a test to assert.
async fn ten_thousand_messages_go_through_in_order_per_key() {
    let bus = MemoryBus::with_capacity(1_000);
    let mut sub = subscribe(&bus, SubscriptionSpec::new("t", "g").prefetch(64)).await;
    let producer = tokio::spawn({
        let bus = bus.clone();
        async move {
            for chunk in 0..100 {
                let batch: Vec<_> = (0..100)
                    .map(|i| event("x", Some(&format!("k{}", i % 10)), chunk * 100 + i))
                    .collect();
                bus.publish("t", &batch).await.expect("publish");
            }
        }
    });
    let mut last = [None::<u64>; 10];
    for _ in 0..10_000 {
        let d = next(&mut sub).await;
        let n = number(&d);
        let lane = usize::try_from(n % 10).expect("small");
        assert!(last[lane].is_none_or(|prev| prev < n), "order per key");
        last[lane] = Some(n);
        d.ack().await.expect("ack");
    }
    producer.await.expect("producer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn competing_consumers_on_many_threads_keep_key_order() {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    const TOTAL: u64 = 2_000;
    let bus = MemoryBus::with_capacity(100);
    /// Last acked message per key, and every acked message.
    type Done = (HashMap<u64, u64>, HashSet<u64>);
    let done: Arc<Mutex<Done>> = Arc::default();
    let mut consumers = Vec::new();
    for _ in 0..4 {
        let mut sub = subscribe(&bus, SubscriptionSpec::new("t", "g").prefetch(8)).await;
        let done = Arc::clone(&done);
        consumers.push(tokio::spawn(async move {
            while let Some(d) = sub.next().await {
                let d = d.expect("delivery");
                let n = number(&d);
                match (n % 7, d.attempt()) {
                    (0, 1) => d.nack(Duration::ZERO).await.expect("nack"),
                    (3, 1) => drop(d),
                    _ => {
                        {
                            let mut done = done.lock().expect("lock");
                            if let Some(prev) = done.0.insert(n % 13, n) {
                                assert!(prev < n, "key order: {prev} then {n}");
                            }
                            assert!(done.1.insert(n), "{n} acked twice");
                        }
                        d.ack().await.expect("ack");
                    }
                }
            }
        }));
    }
    for chunk in 0..TOTAL / 50 {
        let batch: Vec<_> = (0..50)
            .map(|i| {
                let n = chunk * 50 + i;
                event("x", Some(&format!("k{}", n % 13)), n)
            })
            .collect();
        publish(&bus, "t", &batch).await;
    }
    // Everything is settled once the log is empty.
    let deadline = Instant::now() + SOON;
    while retained(&bus, "t") > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(retained(&bus, "t"), 0);
    bus.close().await.expect("close");
    for consumer in consumers {
        timeout(SOON, consumer).await.expect("consumer ends").expect("consumer");
    }
    let done = done.lock().expect("lock");
    assert_eq!(done.1.len(), usize::try_from(TOTAL).expect("small"));
}

fn retained(bus: &MemoryBus, topic: &str) -> usize {
    bus.existing_topic(topic).map_or(0, |t| t.retained())
}
