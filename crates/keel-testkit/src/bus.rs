//! The bus conformance suite.
//!
//! ```text
//! struct Factory;
//! #[async_trait::async_trait]
//! impl keel_testkit::bus::BusFactory for Factory { /* ... */ }
//! keel_testkit::bus_conformance!(Factory; skip {
//!     late_group_receives_earlier_messages: "why this backend cannot run it",
//! });
//! ```
//!
//! Each case uses its own topics and groups, subscribes before it publishes (brokers
//! such as RabbitMQ drop what no queue is bound for yet), and checks delivery,
//! ordering, redelivery, dead-letters, handler panics, trace propagation and the
//! inbox. A case asserts or fails; one a backend cannot run is listed under `skip`
//! with the reason and reported as ignored, never as passed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use keel_bus::consumer::BatchOptions;
use keel_bus::layer::{InboxLayer, MemoryInbox, TraceLayer, current_context};
use keel_bus::{
    Backoff, Consumer, EventPublisher, HandlerError, Message, RedeliveryPolicy, Unreadable,
};
use keel_bus::{batch_fn, handler_fn, typed};
use keel_core::bus::{DeadLetter, GroupDepth};
use keel_core::envelope::ext;
use keel_core::{Bus, BusError, CloudEvent, Payload, Publisher, SubscriptionSpec, TraceContext};
use serde::{Deserialize, Serialize};
use tower::ServiceBuilder;

use crate::util::{eventually, seq_event, seq_of, unique};

/// What a backend's test file provides to run the suite. The provided methods serve
/// only the cases named in their docs; a backend that cannot provide one skips those
/// cases (the default panics, so a case that is not skipped cannot pass unrun).
#[async_trait]
pub trait BusFactory: Send + Sync + 'static {
    /// A bus client. Clients from one factory share one broker (one namespace), so
    /// what one publishes another receives.
    async fn bus(&self) -> Arc<dyn Bus>;

    /// Publishes a message that is not a valid CloudEvent, as a foreign producer (or a
    /// foreign writer of the log) would
    /// (`foreign_message_is_dead_lettered_and_consumption_goes_on`). The subscription
    /// must hand it out as [`Payload::Undecodable`] with the body kept as it is and a
    /// reason that says it is "not a CloudEvent".
    async fn publish_raw(
        &self,
        topic: &str,
        content_type: &str,
        body: Bytes,
    ) -> Result<(), BusError> {
        let _ = (topic, content_type, body);
        panic!("this factory cannot publish a foreign message: skip the case, with the reason")
    }

    /// Restarts the broker (stop, then start) and returns when it answers again
    /// (`broker_restarts_*`).
    async fn restart_broker(&self) {
        panic!("this factory cannot restart its broker: skip the case, with the reason")
    }
}

/// Generates one `#[tokio::test]` per case for `factory` (an expression building a
/// [`BusFactory`], evaluated in each test). Cases listed under `skip` get
/// `#[ignore = "reason"]`; a name that is not a case does not compile.
///
/// ```text
/// keel_testkit::bus_conformance!(Factory::new());
/// keel_testkit::bus_conformance!(Factory::new(); skip { case_name: "reason", ... });
/// ```
#[macro_export]
macro_rules! bus_conformance {
    ($factory:expr $(; skip { $($skip:ident : $reason:literal),* $(,)? })? $(;)?) => {
        $crate::__bus_conformance_cases!(($) $factory; [$($($skip : $reason),*)?];
            round_trip_preserves_every_attribute,
            ten_thousand_messages_reach_a_group,
            two_groups_each_receive_everything,
            competing_consumers_share_without_duplicates,
            order_per_key_under_concurrent_publishers,
            nack_leads_to_redelivery,
            dropped_consumer_redelivers_to_another,
            failing_handler_is_retried_then_dead_lettered,
            panicking_handler_is_retried_then_dead_lettered,
            panicking_batch_handler_is_retried_then_dead_lettered,
            panicking_handler_is_redelivered_not_acked,
            undecodable_data_is_dead_lettered_at_once,
            foreign_message_is_dead_lettered_and_consumption_goes_on,
            one_mib_message,
            topics_are_kept_apart,
            concurrent_publishing_from_many_tasks,
            resubscribe_resumes_where_the_group_left_off,
            late_group_receives_earlier_messages,
            nacking_subscribers_then_a_healthy_one,
            subscribe_and_close_racing,
            publisher_close_flushes_accepted_messages,
            batch_handler_gets_batches,
            ordered_concurrency_per_key,
            dead_letters_can_be_listed_retried_and_purged,
            group_depth_counts_waiting_messages_and_dead_letters,
            trace_context_crosses_the_bus,
            inbox_applies_a_redelivered_event_once,
            broker_restarts_lose_nothing,
            broker_restarts_then_consumption_resumes,
            old_versions_are_upcast_and_future_ones_dead_lettered,
            unreadable_events_are_skipped_by_the_skip_policy,
            the_stop_policy_stops_the_consumer_and_gives_the_event_back
        );
    };
}

/// The body of [`bus_conformance!`]. macro_rules cannot compare two identifiers, so it
/// writes a local macro whose first rules match the skipped names literally (an
/// ignored test) and whose last rule matches any other name (a test that runs). `$d`
/// is a `$` for that macro's own variable.
#[doc(hidden)]
#[macro_export]
macro_rules! __bus_conformance_cases {
    (($d:tt) $factory:expr; [$($skip:ident : $reason:literal),*]; $($case:ident),* $(,)?) => {
        // A skipped name must be a case.
        const _: () = { $(let _ = $crate::bus::$skip;)* };
        macro_rules! __keel_bus_case {
            $(
                ($skip) => {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                    #[ignore = $reason]
                    async fn $skip() {
                        let factory = $factory;
                        $crate::bus::$skip(&factory).await;
                    }
                };
            )*
            ($d case:ident) => {
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $d case() {
                    let factory = $factory;
                    $crate::bus::$d case(&factory).await;
                }
            };
        }
        $(__keel_bus_case!($case);)*
    };
}

/// A redelivery policy that keeps tests quick.
fn quick(max_attempts: u32) -> RedeliveryPolicy {
    RedeliveryPolicy::new(
        max_attempts,
        Backoff::new(Duration::from_millis(10), Duration::from_millis(50)),
    )
}

/// Received events, shared between a handler and the test.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<CloudEvent>>>);

impl Seen {
    fn push(&self, event: CloudEvent) {
        self.0.lock().expect("not poisoned").push(event);
    }
    fn len(&self) -> usize {
        self.0.lock().expect("not poisoned").len()
    }
    fn events(&self) -> Vec<CloudEvent> {
        self.0.lock().expect("not poisoned").clone()
    }
    fn distinct_ids(&self) -> HashSet<String> {
        self.events().iter().map(|e| e.id().to_owned()).collect()
    }
}

/// Starts a consumer that records every event it handles.
async fn collect(
    bus: &Arc<dyn Bus>,
    spec: SubscriptionSpec,
    concurrency: usize,
) -> (Seen, keel_bus::ConsumerHandle) {
    collect_with(bus, spec, concurrency, quick(5)).await
}

/// [`collect`] with its own redelivery policy.
async fn collect_with(
    bus: &Arc<dyn Bus>,
    spec: SubscriptionSpec,
    concurrency: usize,
    policy: RedeliveryPolicy,
) -> (Seen, keel_bus::ConsumerHandle) {
    let seen = Seen::default();
    let sink = seen.clone();
    let handler = handler_fn(move |message: Message| {
        let sink = sink.clone();
        async move {
            sink.push(message.into_event());
            Ok::<(), HandlerError>(())
        }
    });
    let handle = Consumer::new(bus.clone(), spec)
        .concurrency(concurrency)
        .redelivery(policy)
        .start(handler)
        .await
        .expect("subscribe");
    (seen, handle)
}

async fn publish_seq(
    bus: &Arc<dyn Bus>,
    topic: &str,
    range: std::ops::Range<u64>,
    key: Option<&str>,
) -> Vec<CloudEvent> {
    let events: Vec<_> = range.map(|i| seq_event(i, key)).collect();
    for chunk in events.chunks(500) {
        bus.publish(topic, chunk).await.expect("publish");
    }
    events
}

pub async fn round_trip_preserves_every_attribute(f: &dyn BusFactory) {
    let bus = f.bus().await;
    let topic = unique("roundtrip");
    let mut sub = bus.subscribe(SubscriptionSpec::new(&topic, "g")).await.expect("subscribe");
    let sent = CloudEvent::builder("keel.test.order-placed", "/keel/testkit/orders?region=eu")
        .subject("order-0190f0c2")
        .time("2026-11-27T09:30:12.123456789Z".parse().expect("time"))
        .dataschema("https://schemas.example.com/order-placed/v2.json")
        .data(
            "application/json",
            r#"{"order_id":"0190f0c2","lines":[{"sku":"a","qty":2}],"note":"ünïcødé ✓"}"#,
        )
        .partition_key("order-0190f0c2")
        .extension(ext::TRACEPARENT, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        .extension(ext::TRACESTATE, "vendor=opaque,other=1")
        .extension(ext::CORRELATION_ID, "corr-17")
        .extension(ext::CAUSATION_ID, "cause-16")
        .extension(ext::STREAM_VERSION, 7_i64)
        .extension(ext::POSITION, 1234_i64)
        .extension(ext::SCHEMA_VERSION, 2_i64)
        .extension(ext::ACTOR, "user:42")
        .extension("customattr", "custom value")
        .build()
        .expect("valid");
    bus.publish(&topic, std::slice::from_ref(&sent)).await.expect("publish");
    let delivery = tokio::time::timeout(crate::util::PATIENCE, sub.next())
        .await
        .expect("a delivery in time")
        .expect("subscription open")
        .expect("delivery");
    assert_eq!(delivery.attempt(), 1);
    let Payload::Event(received) = delivery.payload().clone() else {
        panic!("undecodable: {delivery:?}")
    };
    assert_eq!(received, sent, "every attribute and extension survives the trip");
    delivery.ack().await.expect("ack");
    sub.close().await.expect("close");
}

pub async fn ten_thousand_messages_reach_a_group(f: &dyn BusFactory) {
    let bus = f.bus().await;
    let topic = unique("tenk");
    let (seen, handle) = collect(&bus, SubscriptionSpec::new(&topic, "g").prefetch(500), 4).await;
    let sent = publish_seq(&bus, &topic, 0..10_000, None).await;
    eventually("10,000 messages", || seen.distinct_ids().len() == sent.len()).await;
    let expected: HashSet<_> = sent.iter().map(|e| e.id().to_owned()).collect();
    assert_eq!(seen.distinct_ids(), expected);
    handle.stop().await.expect("stop");
}

pub async fn two_groups_each_receive_everything(f: &dyn BusFactory) {
    let bus = f.bus().await;
    let topic = unique("fanout");
    let (a, ha) = collect(&bus, SubscriptionSpec::new(&topic, "group-a"), 1).await;
    let (b, hb) = collect(&bus, SubscriptionSpec::new(&topic, "group-b"), 1).await;
    let sent = publish_seq(&bus, &topic, 0..200, None).await;
    let expected: HashSet<_> = sent.iter().map(|e| e.id().to_owned()).collect();
    eventually("group a gets all", || a.distinct_ids() == expected).await;
    eventually("group b gets all", || b.distinct_ids() == expected).await;
    ha.stop().await.expect("stop");
    hb.stop().await.expect("stop");
}

pub async fn competing_consumers_share_without_duplicates(f: &dyn BusFactory) {
    let bus = f.bus().await;
    let topic = unique("compete");
    let total = Arc::new(AtomicUsize::new(0));
    let mut members = Vec::new();
    for _ in 0..4 {
        let seen = Seen::default();
        let (sink, total) = (seen.clone(), total.clone());
        let handler = handler_fn(move |message: Message| {
            let (sink, total) = (sink.clone(), total.clone());
            async move {
                // Slow enough that one member cannot take everything alone.
                tokio::time::sleep(Duration::from_millis(2)).await;
                sink.push(message.into_event());
                total.fetch_add(1, Ordering::SeqCst);
                Ok::<(), HandlerError>(())
            }
        });
        let spec = SubscriptionSpec::new(&topic, "workers").prefetch(8);
        let handle = Consumer::new(bus.clone(), spec).start(handler).await.expect("subscribe");
        members.push((seen, handle));
    }
    let sent = publish_seq(&bus, &topic, 0..400, None).await;
    eventually("400 handled", || total.load(Ordering::SeqCst) >= sent.len()).await;
    // Give a duplicate time to show up, if there were one.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut all = Vec::new();
    for (seen, handle) in members.drain(..) {
        handle.stop().await.expect("stop");
        all.push(seen.events());
    }
    let ids: Vec<String> = all.iter().flatten().map(|e| e.id().to_owned()).collect();
    let distinct: HashSet<_> = ids.iter().cloned().collect();
    assert_eq!(ids.len(), sent.len(), "every message handled exactly once when all ack");
    assert_eq!(distinct.len(), sent.len());
    let busy = all.iter().filter(|events| !events.is_empty()).count();
    assert!(
        busy >= 2,
        "the group's members share the load (counts: {:?})",
        all.iter().map(Vec::len).collect::<Vec<_>>()
    );
}

pub async fn order_per_key_under_concurrent_publishers(f: &dyn BusFactory) {
    let bus = f.bus().await;
    let topic = unique("order");
    let (seen, handle) = collect(&bus, SubscriptionSpec::new(&topic, "g"), 4).await;
    let mut tasks = Vec::new();
    for publisher in 0..4 {
        let (bus, topic) = (bus.clone(), topic.clone());
        tasks.push(tokio::spawn(async move {
            for seq in 0..50 {
                for key in 0..3 {
                    let key = format!("p{publisher}-k{key}");
                    bus.publish(&topic, &[seq_event(seq, Some(&key))]).await.expect("publish");
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("publisher task");
    }
    eventually("600 messages", || seen.distinct_ids().len() == 600).await;
    handle.stop().await.expect("stop");
    assert_in_order_per_key(&seen.events(), 12, 50);
}

/// Each key's sequence numbers arrive as 0, 1, 2, ... (a redelivery may repeat the
/// latest one, never go back further).
fn assert_in_order_per_key(events: &[CloudEvent], keys: usize, per_key: u64) {
    let mut by_key: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for event in events {
        let key = event.partition_key().expect("keyed").to_owned();
        by_key.entry(key).or_default().push(seq_of(event));
    }
    assert_eq!(by_key.len(), keys);
    for (key, seqs) in by_key {
        let mut next = 0;
        for seq in &seqs {
            assert!(*seq == next || *seq + 1 == next, "key {key} out of order: {seqs:?}");
            next = seq + 1;
        }
        assert_eq!(next, per_key, "key {key} complete");
    }
}

pub async fn nack_leads_to_redelivery(f: &dyn BusFactory) {
    let bus = f.bus().await;
    let topic = unique("nack");
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let record = attempts.clone();
    let handler = handler_fn(move |message: Message| {
        let record = record.clone();
        async move {
            record.lock().expect("not poisoned").push(message.attempt());
            if message.attempt() == 1 {
                Err(HandlerError::transient("first attempt fails"))
            } else {
                Ok(())
            }
        }
    });
    let handle = Consumer::new(bus.clone(), SubscriptionSpec::new(&topic, "g"))
        .redelivery(quick(5))
        .start(handler)
        .await
        .expect("subscribe");
    publish_seq(&bus, &topic, 0..1, None).await;
    eventually("a redelivery", || attempts.lock().expect("not poisoned").len() >= 2).await;
    handle.stop().await.expect("stop");
    let attempts = attempts.lock().expect("not poisoned").clone();
    assert_eq!(attempts[..2], [1, 2]);
    assert!(bus.list(&topic, "g", 10).await.expect("list").is_empty(), "nothing dead-lettered");
}

pub async fn dropped_consumer_redelivers_to_another(f: &dyn BusFactory) {
    let bus = f.bus().await;
    let topic = unique("dropped");
    let mut first = bus.subscribe(SubscriptionSpec::new(&topic, "g")).await.expect("subscribe");
    let sent = publish_seq(&bus, &topic, 0..1, None).await;
    let delivery = tokio::time::timeout(crate::util::PATIENCE, first.next())
        .await
        .expect("in time")
        .expect("open")
        .expect("delivery");
    assert_eq!(delivery.event().map(CloudEvent::id), Some(sent[0].id()));
    // The member goes away without settling: as a crash would.
    drop(delivery);
    drop(first);
    let (seen, handle) = collect(&bus, SubscriptionSpec::new(&topic, "g"), 1).await;
    eventually("redelivery to the other member", || seen.distinct_ids().contains(sent[0].id()))
        .await;
    handle.stop().await.expect("stop");
}

pub async fn failing_handler_is_retried_then_dead_lettered(f: &dyn BusFactory) {
    let bus = f.bus().await;
    let topic = unique("deadletter");
    let calls = Arc::new(AtomicU32::new(0));
    let good = Seen::default();
    let (counter, sink) = (calls.clone(), good.clone());
    let handler = handler_fn(move |message: Message| {
        let (counter, sink) = (counter.clone(), sink.clone());
        async move {
            if seq_of(message.event()) == 0 {
                counter.fetch_add(1, Ordering::SeqCst);
                return Err(HandlerError::transient("boom: the handler failed on purpose"));
            }
            sink.push(message.into_event());
            Ok(())
        }
    });
    let handle = Consumer::new(bus.clone(), SubscriptionSpec::new(&topic, "g"))
        .redelivery(quick(3))
        .start(handler)
        .await
        .expect("subscribe");
    let sent = publish_seq(&bus, &topic, 0..1, None).await;
    let letters = dead_letters_when(&bus, &topic, "a dead letter", |l| !l.is_empty()).await;
    assert_eq!(letters.len(), 1);
    assert!(
        letters[0].reason.contains("boom: the handler failed on purpose"),
        "reason: {}",
        letters[0].reason
    );
    assert_eq!(letters[0].attempts, 3);
    assert_eq!(calls.load(Ordering::SeqCst), 3, "tried three times");
    match &letters[0].payload {
        Payload::Event(event) => assert_eq!(event.id(), sent[0].id()),
        Payload::Undecodable(raw) => panic!("dead letter lost its event: {raw:?}"),
    }
    // Consumption goes on.
    publish_seq(&bus, &topic, 1..2, None).await;
    eventually("the next message", || good.len() == 1).await;
    handle.stop().await.expect("stop");
}

/// Every handler call as `(seq, attempt)`, shared between a handler and the test.
#[derive(Clone, Default)]
struct Calls(Arc<Mutex<Vec<(u64, u32)>>>);

impl Calls {
    fn push(&self, message: &Message) {
        self.0.lock().expect("not poisoned").push((seq_of(message.event()), message.attempt()));
    }
    fn attempts_of(&self, seq: u64) -> Vec<u32> {
        let calls = self.0.lock().expect("not poisoned");
        calls.iter().filter(|(s, _)| *s == seq).map(|(_, attempt)| *attempt).collect()
    }
}

/// The sample event of each dead letter (panics on an undecodable one).
fn dead_seqs(letters: &[DeadLetter]) -> Vec<u64> {
    let mut seqs: Vec<u64> = letters
        .iter()
        .map(|letter| match &letter.payload {
            Payload::Event(event) => seq_of(event),
            Payload::Undecodable(raw) => panic!("dead letter lost its event: {raw:?}"),
        })
        .collect();
    seqs.sort_unstable();
    seqs
}

/// A handler that panics is a transient failure: message 0 panics before the handler
/// returns its future (as `m.decode().unwrap()` in a closure does), message 1 inside
/// the future, on every attempt. Both are tried three times, never acknowledged, then
/// dead-lettered with the panic as the reason, and the consumer goes on.
pub async fn panicking_handler_is_retried_then_dead_lettered(f: &dyn BusFactory) {
    let bus = f.bus().await;
    let topic = unique("panics");
    let (calls, good) = (Calls::default(), Seen::default());
    let (record, sink) = (calls.clone(), good.clone());
    let handler = handler_fn(move |message: Message| {
        record.push(&message);
        let seq = seq_of(message.event());
        if seq == 0 {
            panic!("poison message 0, before the future");
        }
        let sink = sink.clone();
        async move {
            if seq == 1 {
                panic!("poison message 1, in the future");
            }
            sink.push(message.into_event());
            Ok::<(), HandlerError>(())
        }
    });
    let handle = Consumer::new(bus.clone(), SubscriptionSpec::new(&topic, "g"))
        .redelivery(quick(3))
        .start(handler)
        .await
        .expect("subscribe");
    publish_seq(&bus, &topic, 0..2, None).await;
    let letters =
        dead_letters_when(&bus, &topic, "both poison messages' dead letters", |l| l.len() == 2)
            .await;
    assert_eq!(dead_seqs(&letters), [0, 1]);
    for letter in &letters {
        assert_eq!(letter.attempts, 3, "{letter:?}");
        assert!(letter.reason.contains("handler panicked: poison message"), "{letter:?}");
    }
    assert_eq!(calls.attempts_of(0), [1, 2, 3]);
    assert_eq!(calls.attempts_of(1), [1, 2, 3]);
    let after = publish_seq(&bus, &topic, 2..3, None).await;
    eventually("the message after the poison ones", || good.distinct_ids().contains(after[0].id()))
        .await;
    handle.stop().await.expect("stop");
}

/// [`panicking_handler_is_retried_then_dead_lettered`] with a batch handler: the batch
/// holding a poison message panics on each attempt and is dead-lettered; the consumer
/// goes on. The poison messages come one at a time, so no good message shares their
/// batch (a batch is settled together).
pub async fn panicking_batch_handler_is_retried_then_dead_lettered(f: &dyn BusFactory) {
    let bus = f.bus().await;
    let topic = unique("batchpanics");
    let (calls, good) = (Calls::default(), Seen::default());
    let (record, sink) = (calls.clone(), good.clone());
    let handler = batch_fn(move |batch: Vec<Message>| {
        batch.iter().for_each(|message| record.push(message));
        let seqs: Vec<u64> = batch.iter().map(|message| seq_of(message.event())).collect();
        if seqs.contains(&0) {
            panic!("poison batch with 0, before the future");
        }
        let sink = sink.clone();
        async move {
            if seqs.contains(&1) {
                panic!("poison batch with 1, in the future");
            }
            batch.into_iter().for_each(|message| sink.push(message.into_event()));
            Ok::<(), HandlerError>(())
        }
    });
    let options = BatchOptions { max_size: 10, max_wait: Duration::from_millis(20) };
    let handle = Consumer::new(bus.clone(), SubscriptionSpec::new(&topic, "g"))
        .redelivery(quick(3))
        .start_batch(handler, options)
        .await
        .expect("subscribe");
    for seq in 0..2_u64 {
        publish_seq(&bus, &topic, seq..seq + 1, None).await;
        let count = usize::try_from(seq + 1).expect("small");
        let letters =
            dead_letters_when(&bus, &topic, "the poison batch's dead letter", |l| l.len() == count)
                .await;
        assert_eq!(dead_seqs(&letters), (0..=seq).collect::<Vec<_>>());
        for letter in &letters {
            assert_eq!(letter.attempts, 3, "{letter:?}");
            assert!(letter.reason.contains("handler panicked: poison batch"), "{letter:?}");
        }
        assert_eq!(calls.attempts_of(seq), [1, 2, 3]);
    }
    let after = publish_seq(&bus, &topic, 2..3, None).await;
    eventually("the message after the poison ones", || good.distinct_ids().contains(after[0].id()))
        .await;
    handle.stop().await.expect("stop");
}

/// Fails if a panicking handler's delivery were acknowledged: the handler panics on
/// the first attempt only (before its future for message 0, inside it for message 1),
/// so only a redelivery reaches it again.
pub async fn panicking_handler_is_redelivered_not_acked(f: &dyn BusFactory) {
    let bus = f.bus().await;
    let topic = unique("paniconce");
    let (calls, good) = (Calls::default(), Seen::default());
    let (record, sink) = (calls.clone(), good.clone());
    let handler = handler_fn(move |message: Message| {
        record.push(&message);
        let (seq, first) = (seq_of(message.event()), message.attempt() == 1);
        if first && seq == 0 {
            panic!("first attempt of 0 panics, before the future");
        }
        let sink = sink.clone();
        async move {
            if first && seq == 1 {
                panic!("first attempt of 1 panics, in the future");
            }
            sink.push(message.into_event());
            Ok::<(), HandlerError>(())
        }
    });
    let handle = Consumer::new(bus.clone(), SubscriptionSpec::new(&topic, "g"))
        .redelivery(quick(3))
        .start(handler)
        .await
        .expect("subscribe");
    let sent = publish_seq(&bus, &topic, 0..2, None).await;
    let expected: HashSet<_> = sent.iter().map(|e| e.id().to_owned()).collect();
    eventually("a redelivery of each message whose handler panicked", || {
        good.distinct_ids() == expected
    })
    .await;
    handle.stop().await.expect("stop");
    for seq in 0..2 {
        assert_eq!(calls.attempts_of(seq)[..2], [1, 2], "message {seq}");
    }
    assert!(bus.list(&topic, "g", 10).await.expect("list").is_empty(), "nothing dead-lettered");
}

#[derive(Debug, Serialize, Deserialize, keel_core::Event)]
#[event(type = "keel.test.counted", crate = keel_core)]
struct Counted {
    n: u32,
}

pub async fn undecodable_data_is_dead_lettered_at_once(f: &dyn BusFactory) {
    let bus = f.bus().await;
    let topic = unique("baddata");
    let handled = Arc::new(AtomicU32::new(0));
    let counter = handled.clone();
    let handler = typed(move |counted: keel_bus::Typed<Counted>| {
        let counter = counter.clone();
        async move {
            counter.fetch_add(counted.event.n, Ordering::SeqCst);
            Ok(())
        }
    });
    let handle = Consumer::new(bus.clone(), SubscriptionSpec::new(&topic, "g"))
        .redelivery(quick(5))
        .start(handler)
        .await
        .expect("subscribe");
    let bad = CloudEvent::builder("keel.test.counted", "/keel/testkit")
        .data("application/json", r#"{"n":"not a number"}"#)
        .build()
        .expect("valid envelope");
    let publisher = EventPublisher::new(bus.clone(), "/keel/testkit");
    bus.publish(&topic, &[bad]).await.expect("publish");
    publisher.publish(&topic, &Counted { n: 5 }).await.expect("publish");
    eventually("the good event", || handled.load(Ordering::SeqCst) == 5).await;
    let letters = dead_letters_when(&bus, &topic, "a dead letter", |l| !l.is_empty()).await;
    assert_eq!(letters[0].attempts, 1, "no retries for data that cannot decode");
    assert!(letters[0].reason.contains("does not decode"), "reason: {}", letters[0].reason);
    handle.stop().await.expect("stop");
}

pub async fn foreign_message_is_dead_lettered_and_consumption_goes_on(f: &dyn BusFactory) {
    let bus = f.bus().await;
    let topic = unique("foreign");
    let (seen, handle) = collect(&bus, SubscriptionSpec::new(&topic, "g"), 1).await;
    let body = Bytes::from_static(b"{'order_id': 17, 'status': 'placed'}");
    f.publish_raw(&topic, "text/plain", body.clone()).await.expect("raw publish");
    let sent = publish_seq(&bus, &topic, 0..1, None).await;
    eventually("the valid message after the foreign one", || {
        seen.distinct_ids().contains(sent[0].id())
    })
    .await;
    let letters = dead_letters_when(&bus, &topic, "a dead letter", |l| !l.is_empty()).await;
    assert!(letters[0].reason.contains("not a CloudEvent"), "reason: {}", letters[0].reason);
    match &letters[0].payload {
        Payload::Undecodable(raw) => assert_eq!(raw.body, body, "the original bytes are kept"),
        Payload::Event(event) => panic!("a foreign message decoded: {event:?}"),
    }
    handle.stop().await.expect("stop");
}

pub async fn one_mib_message(f: &dyn BusFactory) {
    let bus = f.bus().await;
    let topic = unique("big");
    let (seen, handle) = collect(&bus, SubscriptionSpec::new(&topic, "g"), 1).await;
    let blob = "x".repeat(1024 * 1024 - 16);
    let sent = CloudEvent::builder("keel.test.big", "/keel/testkit")
        .json_data(&serde_json::json!({ "blob": blob }))
        .expect("json")
        .build()
        .expect("valid");
    assert!(sent.data().map_or(0, Bytes::len) >= 1024 * 1024 - 16);
    bus.publish(&topic, std::slice::from_ref(&sent)).await.expect("publish 1 MiB");
    eventually("the 1 MiB message", || seen.len() == 1).await;
    assert_eq!(seen.events()[0].data(), sent.data());
    handle.stop().await.expect("stop");
}

pub async fn topics_are_kept_apart(f: &dyn BusFactory) {
    let bus = f.bus().await;
    let topics: Vec<String> = (0..3).map(|i| unique(&format!("apart{i}"))).collect();
    let mut consumers = Vec::new();
    for topic in &topics {
        consumers.push(collect(&bus, SubscriptionSpec::new(topic, "g"), 1).await);
    }
    let mut sent = Vec::new();
    for topic in &topics {
        sent.push(publish_seq(&bus, topic, 0..50, None).await);
    }
    for ((seen, _), sent) in consumers.iter().zip(&sent) {
        let expected: HashSet<_> = sent.iter().map(|e| e.id().to_owned()).collect();
        eventually("each topic's messages", || seen.distinct_ids() == expected).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    for ((seen, handle), sent) in consumers.into_iter().zip(&sent) {
        handle.stop().await.expect("stop");
        assert_eq!(seen.len(), sent.len(), "no message from another topic");
    }
}

pub async fn concurrent_publishing_from_many_tasks(f: &dyn BusFactory) {
    let bus = f.bus().await;
    let topic = unique("manytasks");
    let (seen, handle) = collect(&bus, SubscriptionSpec::new(&topic, "g").prefetch(256), 4).await;
    let mut tasks = Vec::new();
    for task in 0..16_u64 {
        let (bus, topic) = (bus.clone(), topic.clone());
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..100 {
                let event = seq_event(task * 1000 + i, None);
                bus.publish(&topic, std::slice::from_ref(&event)).await.expect("publish");
                ids.push(event.id().to_owned());
            }
            ids
        }));
    }
    let mut expected = HashSet::new();
    for task in tasks {
        expected.extend(task.await.expect("task"));
    }
    assert_eq!(expected.len(), 1600);
    eventually("1,600 messages", || seen.distinct_ids() == expected).await;
    handle.stop().await.expect("stop");
}

pub async fn resubscribe_resumes_where_the_group_left_off(f: &dyn BusFactory) {
    let bus = f.bus().await;
    let topic = unique("resume");
    let (first, handle) = collect(&bus, SubscriptionSpec::new(&topic, "g"), 1).await;
    let before = publish_seq(&bus, &topic, 0..100, None).await;
    eventually("the first 100", || first.distinct_ids().len() == 100).await;
    handle.stop().await.expect("stop");
    let after = publish_seq(&bus, &topic, 100..200, None).await;
    let (second, handle) = collect(&bus, SubscriptionSpec::new(&topic, "g"), 1).await;
    let expected: HashSet<_> = after.iter().map(|e| e.id().to_owned()).collect();
    // Waits for the next 100 only, so a redelivered first message fails the assertion
    // below, naming how many, rather than this wait.
    eventually("the next 100", || expected.is_subset(&second.distinct_ids())).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    handle.stop().await.expect("stop");
    let replayed: Vec<_> =
        before.iter().filter(|e| second.distinct_ids().contains(e.id())).collect();
    assert!(replayed.is_empty(), "{} acknowledged messages came again", replayed.len());
}

pub async fn late_group_receives_earlier_messages(f: &dyn BusFactory) {
    let bus = f.bus().await;
    let topic = unique("late");
    let sent = publish_seq(&bus, &topic, 0..100, None).await;
    let (seen, handle) = collect(&bus, SubscriptionSpec::new(&topic, "latecomer"), 1).await;
    let expected: HashSet<_> = sent.iter().map(|e| e.id().to_owned()).collect();
    eventually("history for a new group", || seen.distinct_ids() == expected).await;
    handle.stop().await.expect("stop");
}

pub async fn nacking_subscribers_then_a_healthy_one(f: &dyn BusFactory) {
    let bus = f.bus().await;
    let topic = unique("nackers");
    let nacks = Arc::new(AtomicUsize::new(0));
    let mut nackers = Vec::new();
    for _ in 0..2 {
        let mut sub =
            bus.subscribe(SubscriptionSpec::new(&topic, "g").prefetch(4)).await.expect("subscribe");
        let nacks = nacks.clone();
        nackers.push(tokio::spawn(async move {
            while let Some(Ok(delivery)) = sub.next().await {
                nacks.fetch_add(1, Ordering::SeqCst);
                let _ = delivery.nack(Duration::from_millis(5)).await;
                if nacks.load(Ordering::SeqCst) >= 150 {
                    break;
                }
            }
            let _ = sub.close().await;
        }));
    }
    let sent = publish_seq(&bus, &topic, 0..50, None).await;
    for nacker in nackers {
        nacker.await.expect("nacker");
    }
    // Some messages were delivered (and nacked) more times than a default policy
    // allows, and a consumer dead-letters a delivery past its last attempt without
    // handling it; this case is about nothing being lost, so the healthy member
    // allows them all.
    let (seen, handle) =
        collect_with(&bus, SubscriptionSpec::new(&topic, "g"), 1, quick(1_000)).await;
    let expected: HashSet<_> = sent.iter().map(|e| e.id().to_owned()).collect();
    eventually("everything, after only nacks", || seen.distinct_ids() == expected).await;
    handle.stop().await.expect("stop");
}

pub async fn subscribe_and_close_racing(f: &dyn BusFactory) {
    let bus = f.bus().await;
    let topic = unique("race");
    let acked = Arc::new(Mutex::new(HashSet::new()));
    // A steady member, so the group exists from the start. A member that leaves gives
    // back what it prefetched and did not take, and some brokers count each such
    // return as an attempt (RabbitMQ's quorum queues, in `x-delivery-count`); under
    // this much churn a message can come back more times than a default policy
    // allows, and a consumer dead-letters a delivery past its last attempt. This case
    // is about nothing being lost, so the steady member allows them all.
    let (steady, steady_handle) =
        collect_with(&bus, SubscriptionSpec::new(&topic, "g"), 1, quick(1_000)).await;
    let publisher = {
        let (bus, topic) = (bus.clone(), topic.clone());
        tokio::spawn(async move { publish_seq(&bus, &topic, 0..300, None).await })
    };
    let mut churners = Vec::new();
    for _ in 0..20 {
        let (bus, topic, acked) = (bus.clone(), topic.clone(), acked.clone());
        churners.push(tokio::spawn(async move {
            for _ in 0..5 {
                let mut sub = bus
                    .subscribe(SubscriptionSpec::new(&topic, "g").prefetch(2))
                    .await
                    .expect("subscribe");
                if let Ok(Some(Ok(delivery))) =
                    tokio::time::timeout(Duration::from_millis(20), sub.next()).await
                    && let Some(id) = delivery.event().map(|e| e.id().to_owned())
                    && delivery.ack().await.is_ok()
                {
                    acked.lock().expect("not poisoned").insert(id);
                }
                sub.close().await.expect("close");
            }
        }));
    }
    let deadline = crate::util::PATIENCE;
    for churner in churners {
        tokio::time::timeout(deadline, churner).await.expect("no deadlock").expect("churner");
    }
    let sent = publisher.await.expect("publisher");
    let expected: HashSet<_> = sent.iter().map(|e| e.id().to_owned()).collect();
    let handled = || {
        let mut all = steady.distinct_ids();
        all.extend(acked.lock().expect("not poisoned").iter().cloned());
        all
    };
    let deadline = tokio::time::Instant::now() + crate::util::PATIENCE;
    while handled() != expected {
        if tokio::time::Instant::now() >= deadline {
            let missing = expected.difference(&handled()).count();
            let depth = bus.depth(&topic, "g").await;
            panic!(
                "timed out waiting for every message handled by someone: {missing} of {} \
                 missing; the group's depth: {depth:?}",
                expected.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    steady_handle.stop().await.expect("stop");
}

pub async fn publisher_close_flushes_accepted_messages(f: &dyn BusFactory) {
    let bus = f.bus().await;
    let consumer_bus = f.bus().await;
    let topic = unique("flush");
    let (seen, handle) = collect(&consumer_bus, SubscriptionSpec::new(&topic, "g"), 1).await;
    let mut publishes = Vec::new();
    for i in 0..20 {
        let (bus, topic) = (bus.clone(), topic.clone());
        publishes.push(tokio::spawn(async move {
            let event = seq_event(i, None);
            bus.publish(&topic, std::slice::from_ref(&event)).await.map(|()| event.id().to_owned())
        }));
    }
    let mut accepted = HashSet::new();
    for publish in publishes {
        if let Ok(id) = publish.await.expect("task") {
            accepted.insert(id);
        }
    }
    Publisher::close(&*bus).await.expect("close flushes");
    assert!(
        bus.publish(&topic, &[seq_event(99, None)]).await.is_err(),
        "publishing after close fails"
    );
    assert_eq!(accepted.len(), 20);
    eventually("every accepted message", || accepted.is_subset(&seen.distinct_ids())).await;
    let _ = handle.stop().await;
}

pub async fn batch_handler_gets_batches(f: &dyn BusFactory) {
    let bus = f.bus().await;
    let topic = unique("batch");
    let sizes = Arc::new(Mutex::new(Vec::new()));
    let seen = Seen::default();
    let (record, sink) = (sizes.clone(), seen.clone());
    let handler = batch_fn(move |batch: Vec<Message>| {
        let (record, sink) = (record.clone(), sink.clone());
        async move {
            record.lock().expect("not poisoned").push(batch.len());
            for message in batch {
                sink.push(message.into_event());
            }
            Ok::<(), HandlerError>(())
        }
    });
    let options = BatchOptions { max_size: 50, max_wait: Duration::from_millis(50) };
    let sent = {
        // Publish first (subscribing a plain member so brokers bind the group), so
        // batches fill from a backlog.
        let sub = bus.subscribe(SubscriptionSpec::new(&topic, "g")).await.expect("subscribe");
        let sent = publish_seq(&bus, &topic, 0..500, None).await;
        sub.close().await.expect("close");
        sent
    };
    let handle = Consumer::new(bus.clone(), SubscriptionSpec::new(&topic, "g"))
        .start_batch(handler, options)
        .await
        .expect("subscribe");
    let expected: HashSet<_> = sent.iter().map(|e| e.id().to_owned()).collect();
    eventually("500 messages in batches", || seen.distinct_ids() == expected).await;
    handle.stop().await.expect("stop");
    let sizes = sizes.lock().expect("not poisoned").clone();
    assert!(sizes.iter().all(|s| *s <= 50), "batch sizes {sizes:?}");
    assert!(sizes.iter().any(|s| *s > 1), "some batch holds more than one message: {sizes:?}");
}

pub async fn ordered_concurrency_per_key(f: &dyn BusFactory) {
    let bus = f.bus().await;
    let topic = unique("keyed");
    let in_flight = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let busy_keys = Arc::new(Mutex::new(HashSet::new()));
    let overlap = Arc::new(AtomicUsize::new(0));
    let seen = Seen::default();
    let state = (in_flight.clone(), peak.clone(), busy_keys.clone(), overlap.clone(), seen.clone());
    let handler = handler_fn(move |message: Message| {
        let (in_flight, peak, busy_keys, overlap, seen) = state.clone();
        async move {
            let key = message.event().partition_key().unwrap_or_default().to_owned();
            if !busy_keys.lock().expect("not poisoned").insert(key.clone()) {
                overlap.fetch_add(1, Ordering::SeqCst);
            }
            let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(3)).await;
            in_flight.fetch_sub(1, Ordering::SeqCst);
            busy_keys.lock().expect("not poisoned").remove(&key);
            seen.push(message.into_event());
            Ok::<(), HandlerError>(())
        }
    });
    let handle = Consumer::new(bus.clone(), SubscriptionSpec::new(&topic, "g").prefetch(64))
        .concurrency(8)
        .start(handler)
        .await
        .expect("subscribe");
    let mut events = Vec::new();
    for seq in 0..30 {
        for key in 0..10 {
            events.push(seq_event(seq, Some(&format!("key-{key}"))));
        }
    }
    bus.publish(&topic, &events).await.expect("publish");
    eventually("300 keyed messages", || seen.distinct_ids().len() == 300).await;
    handle.stop().await.expect("stop");
    assert_eq!(overlap.load(Ordering::SeqCst), 0, "one key is never handled twice at once");
    assert!(peak.load(Ordering::SeqCst) >= 2, "different keys are handled in parallel");
    assert_in_order_per_key(&seen.events(), 10, 30);
}

pub async fn dead_letters_can_be_listed_retried_and_purged(f: &dyn BusFactory) {
    let bus = f.bus().await;
    let topic = unique("dlq");
    let healed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = Seen::default();
    let (flag, sink) = (healed.clone(), seen.clone());
    let handler = handler_fn(move |message: Message| {
        let (flag, sink) = (flag.clone(), sink.clone());
        async move {
            if !flag.load(Ordering::SeqCst) {
                return Err(HandlerError::permanent("rejected until healed"));
            }
            sink.push(message.into_event());
            Ok(())
        }
    });
    let handle = Consumer::new(bus.clone(), SubscriptionSpec::new(&topic, "g"))
        .redelivery(quick(2))
        .start(handler)
        .await
        .expect("subscribe");
    let sent = publish_seq(&bus, &topic, 0..3, None).await;
    let letters = dead_letters_when(&bus, &topic, "three dead letters", |l| l.len() == 3).await;
    assert!(letters.iter().all(|l| l.attempts == 1 && l.reason.contains("rejected until healed")));
    healed.store(true, Ordering::SeqCst);
    assert!(bus.retry(&topic, "g", &letters[0].id).await.expect("retry"), "found");
    let retried = match &letters[0].payload {
        Payload::Event(event) => event.id().to_owned(),
        Payload::Undecodable(raw) => panic!("undecodable: {raw:?}"),
    };
    eventually("the retried message", || seen.distinct_ids().contains(&retried)).await;
    assert!(sent.iter().any(|e| e.id() == retried));
    let unknown = keel_core::DeadLetterId("no-such-letter".into());
    assert!(!bus.retry(&topic, "g", &unknown).await.expect("retry unknown"));
    dead_letters_when(&bus, &topic, "two left", |l| l.len() == 2).await;
    // A purge right after a list may run before the broker has every letter back
    // (see `dead_letters_when`): purge until none is left, and count.
    let deadline = tokio::time::Instant::now() + crate::util::PATIENCE;
    let mut purged = bus.purge(&topic, "g").await.expect("purge");
    while purged < 2 {
        assert!(tokio::time::Instant::now() < deadline, "timed out purging");
        tokio::time::sleep(Duration::from_millis(20)).await;
        purged += bus.purge(&topic, "g").await.expect("purge");
    }
    assert_eq!(purged, 2);
    assert!(bus.list(&topic, "g", 10).await.expect("list").is_empty());
    handle.stop().await.expect("stop");
}

/// `Subscriber::depth`: five messages published to a group nobody consumes wait in
/// it; once a consumer has settled them (acking the odd ones, dead-lettering the even
/// ones) none waits and three are dead letters. The consumer's gauges follow.
pub async fn group_depth_counts_waiting_messages_and_dead_letters(f: &dyn BusFactory) {
    let bus = f.bus().await;
    let topic = unique("depth");
    // The group exists (a broker drops what no queue is bound for), nobody consumes.
    let member = bus.subscribe(SubscriptionSpec::new(&topic, "g")).await.expect("subscribe");
    member.close().await.expect("close");
    // One publish per event: on Tansu a partition's high watermark is the base offset
    // of its last batch plus one (see keel-kafka's lag.rs), so a lag figure can be
    // short by the tail of a batch; single-record batches keep it exact.
    for seq in 0..5 {
        publish_seq(&bus, &topic, seq..seq + 1, None).await;
    }
    depth_when(&bus, &topic, "five waiting", |d| d.lag == Some(5)).await;
    let handler = handler_fn(|message: Message| async move {
        if seq_of(message.event()).is_multiple_of(2) {
            return Err(HandlerError::permanent("even"));
        }
        Ok(())
    });
    let handle = Consumer::new(bus.clone(), SubscriptionSpec::new(&topic, "g"))
        .redelivery(quick(1))
        .start(handler)
        .await
        .expect("subscribe");
    let settled = |d: &GroupDepth| d.lag == Some(0) && d.dead_letters == Some(3);
    depth_when(&bus, &topic, "none waiting, three dead letters", settled).await;
    handle.stop().await.expect("stop");
}

/// Reads the depth of group `g` of `topic` until `ready` holds for it.
async fn depth_when(
    bus: &Arc<dyn Bus>,
    topic: &str,
    what: &str,
    ready: impl Fn(&GroupDepth) -> bool,
) -> GroupDepth {
    let deadline = tokio::time::Instant::now() + crate::util::PATIENCE;
    loop {
        let depth = bus.depth(topic, "g").await.expect("depth");
        if ready(&depth) {
            return depth;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}: {depth:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn trace_context_crosses_the_bus(f: &dyn BusFactory) {
    let bus = f.bus().await;
    let (first_topic, second_topic) = (unique("trace-in"), unique("trace-out"));
    let publisher = EventPublisher::new(bus.clone(), "/keel/testkit");
    let observed = Arc::new(Mutex::new(None));
    let (record, out) = (observed.clone(), publisher.clone());
    let forward_to = second_topic.clone();
    let handler = ServiceBuilder::new().layer(TraceLayer::new()).service(handler_fn(
        move |message: Message| {
            let (record, out, topic) = (record.clone(), out.clone(), forward_to.clone());
            async move {
                *record.lock().expect("not poisoned") = current_context();
                out.publish(&topic, &Counted { n: 1 }).await.map_err(HandlerError::transient)?;
                let _ = message;
                Ok::<(), HandlerError>(())
            }
        },
    ));
    let handle = Consumer::new(bus.clone(), SubscriptionSpec::new(&first_topic, "g"))
        .start(handler)
        .await
        .expect("subscribe");
    let (downstream, downstream_handle) =
        collect(&bus, SubscriptionSpec::new(&second_topic, "g"), 1).await;
    let origin = TraceContext::new_root();
    let first = CloudEvent::builder("keel.test.traced", "/keel/testkit")
        .extension(ext::TRACEPARENT, origin.traceparent())
        .build()
        .expect("valid");
    bus.publish(&first_topic, std::slice::from_ref(&first)).await.expect("publish");
    eventually("the follow-up event", || downstream.len() == 1).await;
    let context =
        observed.lock().expect("not poisoned").clone().expect("the handler saw a context");
    let trace = context.trace.expect("a trace");
    assert_eq!(trace.trace_id(), origin.trace_id(), "the handler continues the publisher's trace");
    assert_ne!(trace.span_id(), origin.span_id(), "in a span of its own");
    let follow_up = downstream.events().remove(0);
    let carried =
        TraceContext::parse(follow_up.traceparent().expect("traceparent")).expect("valid");
    assert_eq!(
        carried.trace_id(),
        origin.trace_id(),
        "events published by the handler carry the trace on"
    );
    assert_eq!(follow_up.causation_id(), Some(first.id()));
    assert_eq!(follow_up.correlation_id(), Some(first.id()));
    handle.stop().await.expect("stop");
    downstream_handle.stop().await.expect("stop");
}

pub async fn inbox_applies_a_redelivered_event_once(f: &dyn BusFactory) {
    let bus = f.bus().await;
    let topic = unique("inbox");
    let inbox = Arc::new(MemoryInbox::new());
    let applied = Arc::new(Mutex::new(HashMap::<String, u32>::new()));
    let calls = Arc::new(AtomicUsize::new(0));
    let (record, counter) = (applied.clone(), calls.clone());
    let handler = ServiceBuilder::new().layer(InboxLayer::new(inbox.clone())).service(handler_fn(
        move |message: Message| {
            let record = record.clone();
            async move {
                *record
                    .lock()
                    .expect("not poisoned")
                    .entry(message.event().id().to_owned())
                    .or_default() += 1;
                Ok::<(), HandlerError>(())
            }
        },
    ));
    let counting = tower::service_fn(move |message: Message| {
        counter.fetch_add(1, Ordering::SeqCst);
        let mut inner = handler.clone();
        async move { tower::Service::call(&mut inner, message).await }
    });
    let handle = Consumer::new(bus.clone(), SubscriptionSpec::new(&topic, "g"))
        .start(counting)
        .await
        .expect("subscribe");
    let event = seq_event(1, None);
    // The same event twice: what a broker redelivery after a lost ack looks like.
    bus.publish(&topic, std::slice::from_ref(&event)).await.expect("publish");
    bus.publish(&topic, std::slice::from_ref(&event)).await.expect("publish again");
    eventually("both deliveries", || calls.load(Ordering::SeqCst) >= 2).await;
    handle.stop().await.expect("stop");
    assert_eq!(applied.lock().expect("not poisoned").get(event.id()), Some(&1), "applied once");
    assert!(inbox.contains("g", event.id()));
}

/// Publishes one event, retrying what fails retryably (at-least-once, as the relay
/// does) until the broker confirms it.
async fn publish_retrying(bus: &Arc<dyn Bus>, topic: &str, event: &CloudEvent) {
    let deadline = tokio::time::Instant::now() + crate::util::PATIENCE;
    loop {
        match bus.publish(topic, std::slice::from_ref(event)).await {
            Ok(()) => return,
            Err(error) if error.is_retryable() || matches!(error, BusError::Closed) => {
                assert!(tokio::time::Instant::now() < deadline, "publish kept failing: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => panic!("publish failed for good: {error}"),
        }
    }
}

/// The broker restarts twice while messages are published and consumed; every message
/// whose publish was confirmed arrives. Only for brokers whose storage survives a
/// restart.
pub async fn broker_restarts_lose_nothing(f: &dyn BusFactory) {
    let bus = f.bus().await;
    let topic = unique("restart");
    let (seen, handle) = collect(&bus, SubscriptionSpec::new(&topic, "g"), 1).await;
    let publisher = {
        let (bus, topic) = (bus.clone(), topic.clone());
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..200 {
                let event = seq_event(i, None);
                publish_retrying(&bus, &topic, &event).await;
                ids.push(event.id().to_owned());
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            ids
        })
    };
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        f.restart_broker().await;
    }
    let expected: HashSet<_> = publisher.await.expect("publisher").into_iter().collect();
    eventually("every message across restarts", || expected.is_subset(&seen.distinct_ids())).await;
    handle.stop().await.expect("stop");
}

/// After a broker restart the same publisher and consumer carry on: what is published
/// once the broker is back arrives. Everything published before is handled first, so
/// the case also holds on a broker that keeps nothing across a restart (Tansu with
/// in-memory storage), where it is what can be checked.
pub async fn broker_restarts_then_consumption_resumes(f: &dyn BusFactory) {
    let bus = f.bus().await;
    let topic = unique("resume-restart");
    let (seen, handle) = collect(&bus, SubscriptionSpec::new(&topic, "g"), 1).await;
    let before = publish_seq(&bus, &topic, 0..20, None).await;
    let expected: HashSet<_> = before.iter().map(|e| e.id().to_owned()).collect();
    eventually("the messages before the restart", || seen.distinct_ids() == expected).await;
    f.restart_broker().await;
    let after: Vec<_> = (20..40).map(|i| seq_event(i, None)).collect();
    for event in &after {
        publish_retrying(&bus, &topic, event).await;
    }
    let expected: HashSet<_> = after.iter().map(|e| e.id().to_owned()).collect();
    eventually("every message published after the restart", || {
        expected.is_subset(&seen.distinct_ids())
    })
    .await;
    handle.stop().await.expect("stop");
}

/// Lists the dead letters of `topic`'s group `g` until `ready` holds for the list, and
/// returns that list. Listing again right after would not do: on RabbitMQ a list takes
/// the letters and gives them back as it ends, and the broker may still be putting
/// them back when the next list starts (docs of keel-amqp's `dead_letters`).
async fn dead_letters_when(
    bus: &Arc<dyn Bus>,
    topic: &str,
    what: &str,
    ready: impl Fn(&[DeadLetter]) -> bool,
) -> Vec<DeadLetter> {
    let deadline = tokio::time::Instant::now() + crate::util::PATIENCE;
    loop {
        let letters = bus.list(topic, "g", 10).await.expect("list");
        if ready(&letters) {
            return letters;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Events written at version 1 reach a version-2 typed handler upcast; an event from a
/// newer deployment (version 3) is dead-lettered at once, with a reason naming both
/// versions, and consumption goes on.
pub async fn old_versions_are_upcast_and_future_ones_dead_lettered(f: &dyn BusFactory) {
    use crate::upcasting::{PlacedV2, expected, v1, v3};
    let bus = f.bus().await;
    let topic = unique("upcast");
    let seen = Arc::new(Mutex::new(Vec::<PlacedV2>::new()));
    let sink = seen.clone();
    let handler = typed(move |placed: keel_bus::Typed<PlacedV2>| {
        let sink = sink.clone();
        async move {
            sink.lock().expect("not poisoned").push(placed.event);
            Ok(())
        }
    });
    let handle = Consumer::new(bus.clone(), SubscriptionSpec::new(&topic, "g"))
        .redelivery(quick(5))
        .start(handler)
        .await
        .expect("subscribe");
    bus.publish(&topic, &[v1("o-1", 12), v3("o-2"), v1("o-3", 7)]).await.expect("publish");
    let current = PlacedV2 { order: "o-4".into(), total_cents: 5 };
    EventPublisher::new(bus.clone(), "/keel/testkit")
        .publish(&topic, &current)
        .await
        .expect("publish");
    eventually("three events handled", || seen.lock().expect("not poisoned").len() == 3).await;
    let mut got = seen.lock().expect("not poisoned").clone();
    got.sort_by(|a, b| a.order.cmp(&b.order));
    assert_eq!(got, vec![expected("o-1", 12), expected("o-3", 7), current]);
    let letters =
        dead_letters_when(&bus, &topic, "the future event's dead letter", |l| !l.is_empty()).await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].attempts, 1, "no retries for a version the code cannot read");
    assert!(
        letters[0].reason.contains("schema version 3, newer than the 2"),
        "reason: {}",
        letters[0].reason
    );
    handle.stop().await.expect("stop");
}

/// A typed consumer of [`crate::upcasting::PlacedV2`] with an unreadable policy,
/// recording what it handles.
async fn placed_consumer(
    bus: &Arc<dyn Bus>,
    topic: &str,
    policy: Unreadable,
) -> (Arc<Mutex<Vec<crate::upcasting::PlacedV2>>>, keel_bus::ConsumerHandle) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let handler = typed(move |placed: keel_bus::Typed<crate::upcasting::PlacedV2>| {
        let sink = sink.clone();
        async move {
            sink.lock().expect("not poisoned").push(placed.event);
            Ok(())
        }
    });
    let handle = Consumer::new(bus.clone(), SubscriptionSpec::new(topic, "g"))
        .redelivery(quick(5))
        .on_unreadable(policy)
        .start(handler)
        .await
        .expect("subscribe");
    (seen, handle)
}

/// With [`Unreadable::Skip`], a future version and data that does not decode are
/// acked and passed over (nothing is dead-lettered) and the next event is handled. All
/// share one key, so they arrive in order and the skips are settled before it.
pub async fn unreadable_events_are_skipped_by_the_skip_policy(f: &dyn BusFactory) {
    use crate::upcasting::{PLACED, expected, v1, v3};
    let bus = f.bus().await;
    let topic = unique("skip");
    let (seen, handle) = placed_consumer(&bus, &topic, Unreadable::Skip).await;
    let bad = CloudEvent::builder(PLACED, "/keel/testkit")
        .data("application/json", r#"{"total":12}"#)
        .partition_key("o-1")
        .build()
        .expect("valid envelope");
    bus.publish(&topic, &[v3("o-1"), bad, v1("o-1", 12)]).await.expect("publish");
    eventually("the readable event", || !seen.lock().expect("not poisoned").is_empty()).await;
    assert_eq!(*seen.lock().expect("not poisoned"), vec![expected("o-1", 12)]);
    handle.stop().await.expect("stop");
    assert!(
        bus.list(&topic, "g", 10).await.expect("list").is_empty(),
        "skipped, not dead-lettered"
    );
}

/// With [`Unreadable::Stop`], the consumer ends with an error naming the event's
/// problem, without handling what follows; the event went back to the group, where a
/// consumer with the default policy dead-letters it and handles the rest.
pub async fn the_stop_policy_stops_the_consumer_and_gives_the_event_back(f: &dyn BusFactory) {
    use crate::upcasting::{expected, v1, v3};
    let bus = f.bus().await;
    let topic = unique("stop");
    let (seen, mut handle) = placed_consumer(&bus, &topic, Unreadable::Stop).await;
    bus.publish(&topic, &[v3("o-1"), v1("o-1", 12)]).await.expect("publish");
    let ended = handle.join().await.expect_err("the policy stops the consumer");
    assert!(ended.to_string().contains("newer than the 2"), "{ended}");
    assert!(seen.lock().expect("not poisoned").is_empty(), "nothing after the event");

    let (seen, handle) = placed_consumer(&bus, &topic, Unreadable::DeadLetter).await;
    eventually("the readable event", || !seen.lock().expect("not poisoned").is_empty()).await;
    assert_eq!(*seen.lock().expect("not poisoned"), vec![expected("o-1", 12)]);
    let letters =
        dead_letters_when(&bus, &topic, "the future event's dead letter", |l| !l.is_empty()).await;
    assert!(letters[0].reason.contains("newer than the 2"), "{}", letters[0].reason);
    handle.stop().await.expect("stop");
}
