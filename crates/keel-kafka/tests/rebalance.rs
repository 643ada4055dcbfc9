//! Group members come and go while messages flow: every message is handled, the
//! committed offsets never pass a message that was not handled yet, each key's
//! effects stay in order, and with the inbox no effect is applied twice.

#![cfg(feature = "integration")]

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_bus::layer::{InboxLayer, MemoryInbox};
use keel_bus::{Consumer, ConsumerHandle, HandlerError, Message, handler_fn};
use keel_core::{Payload, Publisher, SubscriptionSpec};
use keel_kafka::{KafkaBus, ReplayStart};
use keel_testkit::util::{eventually, seq_event, seq_of, unique};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tower::ServiceBuilder;

const KEYS: u64 = 16;
const PER_KEY: u64 = 60;
const PARTITIONS: i32 = 8;

/// What the handlers did, shared by every member.
#[derive(Clone, Default)]
struct Effects {
    /// Event id -> how many times its effect was applied.
    applied: Arc<Mutex<HashMap<String, u32>>>,
    /// Key -> the sequence numbers applied, in order.
    by_key: Arc<Mutex<BTreeMap<String, Vec<u64>>>>,
    /// Event ids handled (the handler ran to success), with or without the inbox.
    handled: Arc<Mutex<HashSet<String>>>,
}

async fn member(
    bus: &KafkaBus,
    topic: &str,
    inbox: &Arc<MemoryInbox>,
    effects: &Effects,
) -> ConsumerHandle {
    let applied = effects.clone();
    let effect = handler_fn(move |message: Message| {
        let effects = applied.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(2)).await;
            let event = message.event();
            *effects.applied.lock().expect("lock").entry(event.id().to_owned()).or_default() += 1;
            let key = event.partition_key().unwrap_or_default().to_owned();
            effects.by_key.lock().expect("lock").entry(key).or_default().push(seq_of(event));
            Ok::<(), HandlerError>(())
        }
    });
    let with_inbox = ServiceBuilder::new().layer(InboxLayer::new(inbox.clone())).service(effect);
    let handled = effects.handled.clone();
    let recording = tower::service_fn(move |message: Message| {
        let mut inner = with_inbox.clone();
        let handled = handled.clone();
        async move {
            let id = message.event().id().to_owned();
            tower::Service::call(&mut inner, message).await?;
            handled.lock().expect("lock").insert(id);
            Ok::<(), HandlerError>(())
        }
    });
    let spec = SubscriptionSpec::new(topic, "g").prefetch(16);
    Consumer::new(Arc::new(bus.clone()), spec)
        .concurrency(4)
        .start(recording)
        .await
        .expect("subscribe")
}

/// The group's committed offset per partition (no membership: a plain lookup).
fn committed(group: &str, topic: &str) -> BTreeMap<i32, i64> {
    let client: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", common::brokers())
        .set("group.id", group)
        .create()
        .expect("client");
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition(topic, p);
    }
    let committed = client.committed_offsets(tpl, Duration::from_secs(10)).expect("committed");
    committed
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(n) => Some((e.partition(), n)),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn members_come_and_go_while_messages_flow() {
    common::init_tracing();
    let prefix = common::unique_prefix();
    let mut config = common::config(&prefix);
    config.partitions = PARTITIONS;
    let bus = KafkaBus::new(config).expect("bus");
    let topic = unique("rebalance");
    let inbox = Arc::new(MemoryInbox::new());
    let effects = Effects::default();

    let first = member(&bus, &topic, &inbox, &effects).await;
    let publisher = {
        let (bus, topic) = (bus.clone(), topic.clone());
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for seq in 0..PER_KEY {
                let events: Vec<_> =
                    (0..KEYS).map(|k| seq_event(seq, Some(&format!("key-{k}")))).collect();
                bus.publish(&topic, &events).await.expect("publish");
                ids.extend(events.iter().map(|e| e.id().to_owned()));
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
            ids
        })
    };
    // Samples of (committed offsets, then what was handled by then).
    let samples = Arc::new(Mutex::new(Vec::new()));
    let sampler = {
        let (samples, handled, topic) = (samples.clone(), effects.handled.clone(), topic.clone());
        let group = format!("{prefix}g");
        tokio::spawn(async move {
            loop {
                let (group, topic) = (group.clone(), topic.clone());
                let offsets = tokio::task::spawn_blocking(move || committed(&group, &topic))
                    .await
                    .expect("lookup");
                let snapshot = handled.lock().expect("lock").clone();
                samples.lock().expect("lock").push((offsets, snapshot));
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };

    // Members join and leave while the publisher runs (about 9 s).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let second = member(&bus, &topic, &inbox, &effects).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let third = member(&bus, &topic, &inbox, &effects).await;
    tokio::time::sleep(Duration::from_millis(2000)).await;
    first.stop().await.expect("stop the first member");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let fourth = member(&bus, &topic, &inbox, &effects).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // One member goes away abruptly, as a crash of its task would.
    second.abort();

    let sent: HashSet<String> = publisher.await.expect("publisher").into_iter().collect();
    assert_eq!(sent.len() as u64, KEYS * PER_KEY);
    eventually("every message handled", || {
        effects.handled.lock().expect("lock").is_superset(&sent)
    })
    .await;
    sampler.abort();
    third.stop().await.expect("stop");
    fourth.stop().await.expect("stop");

    // With the inbox, no effect twice; each key's effects in order.
    let applied = effects.applied.lock().expect("lock").clone();
    let twice: Vec<_> = applied.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "effects applied more than once: {twice:?}");
    assert_eq!(applied.len(), sent.len());
    for (key, seqs) in effects.by_key.lock().expect("lock").iter() {
        let expected: Vec<u64> = (0..PER_KEY).collect();
        assert_eq!(seqs, &expected, "key {key} applied out of order or incompletely");
    }

    // Committed offsets never passed an unhandled message.
    let records =
        bus.replay().read(&topic, ReplayStart::Beginning, usize::MAX).await.expect("replay");
    let by_position: HashMap<(i32, i64), String> = records
        .iter()
        .map(|r| match &r.payload {
            Payload::Event(e) => ((r.partition, r.offset), e.id().to_owned()),
            Payload::Undecodable(raw) => panic!("undecodable record: {raw:?}"),
        })
        .collect();
    let samples = samples.lock().expect("lock").clone();
    assert!(samples.len() > 10, "the sampler ran ({} samples)", samples.len());
    for (offsets, handled) in &samples {
        for (partition, committed) in offsets {
            for offset in 0..*committed {
                let id = by_position.get(&(*partition, offset)).expect("a record below the commit");
                assert!(
                    handled.contains(id),
                    "partition {partition} committed at {committed} before offset {offset} was handled"
                );
            }
        }
    }
}
