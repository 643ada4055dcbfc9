//! The relay against the real brokers: an event a broker can never take becomes a
//! relay dead letter and the relay goes on (Kafka on Tansu: a record over the size
//! limit; RabbitMQ: an event type longer than a routing key), and a RabbitMQ group
//! created after events were published gets them by a backfill from the log
//! (`keel replay --into group:TOPIC:GROUP`) while the other groups get nothing twice;
//! the same backfill on Kafka goes through the group's retry topic.
#![cfg(feature = "integration")]
#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use keel_amqp::{AmqpBus, AmqpConfig};
use keel_core::{
    CloudEvent, ExpectedVersion, Position, Publisher, StreamId, Subscriber, Subscription,
    SubscriptionSpec,
};
use keel_kafka::{KafkaBus, KafkaConfig};
use keel_sqlite::SqliteEventLog;
use keel_store::{EventLog, LogQuery, Relay, RelayOptions, SubscribeOptions};
use tokio::time::Instant;

const PATIENCE: Duration = Duration::from_secs(60);

fn amqp_url() -> String {
    std::env::var("KEEL_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

fn kafka_brokers() -> String {
    std::env::var("KEEL_TEST_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

fn unique(prefix: &str) -> String {
    format!("{prefix}{}", &uuid::Uuid::now_v7().simple().to_string()[18..])
}

/// A SQLite log in a directory of its own, and its URL.
async fn sqlite() -> (Arc<SqliteEventLog>, String) {
    let dir = std::env::temp_dir().join(unique("keel-relay-"));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}/keel.db", dir.display());
    (Arc::new(SqliteEventLog::connect(&url).await.unwrap()), url)
}

async fn append(log: &dyn EventLog, stream: &str, event: CloudEvent) -> CloudEvent {
    let stream = StreamId::new(stream).unwrap();
    log.append(&stream, ExpectedVersion::Any, std::slice::from_ref(&event)).await.unwrap();
    event
}

fn event(ty: &str, n: u64, padding: usize) -> CloudEvent {
    CloudEvent::builder(ty, "/tests/relay")
        .partition_key("one-key")
        .json_data(&serde_json::json!({ "n": n, "padding": "x".repeat(padding) }))
        .unwrap()
        .build()
        .unwrap()
}

fn options() -> RelayOptions {
    RelayOptions {
        batch_size: 16,
        standby_poll: Duration::from_millis(50),
        max_backoff: Duration::from_millis(200),
        subscribe: SubscribeOptions {
            poll_interval: Duration::from_millis(20),
            ..SubscribeOptions::default()
        },
    }
}

/// Runs a relay until the returned sender is dropped or sent to.
fn start_relay(
    log: Arc<dyn EventLog>,
    bus: Arc<dyn Publisher>,
    name: &str,
) -> (tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<keel_store::Result<()>>) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let relay = Relay::new(log, bus, name).options(options());
    let task = tokio::spawn(relay.run(async move {
        let _ = stopped.await;
    }));
    (stop, task)
}

async fn caught_up(log: &dyn EventLog, relay: &str) -> bool {
    match log.checkpoint(&Relay::checkpoint_name(relay)).await.unwrap() {
        Some(cursor) => log.count_after(cursor, Position(u64::MAX)).await.unwrap() == 0,
        None => false,
    }
}

async fn wait_caught_up(log: &dyn EventLog, relay: &str) {
    let deadline = Instant::now() + PATIENCE;
    while !caught_up(log, relay).await {
        assert!(Instant::now() < deadline, "the relay never caught up (a poison event stops it?)");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The next `n` distinct events a group gets (acked), in order of first arrival
/// (delivery is at-least-once: a batch the relay publishes again event by event after
/// a refusal may repeat what went out before it).
async fn receive(subscription: &mut Box<dyn Subscription>, n: usize) -> Vec<CloudEvent> {
    let deadline = Instant::now() + PATIENCE;
    let mut got: Vec<CloudEvent> = Vec::new();
    while got.len() < n {
        assert!(Instant::now() < deadline, "only {} of {n} events arrived", got.len());
        let Ok(Some(delivery)) =
            tokio::time::timeout(Duration::from_secs(2), subscription.next()).await
        else {
            continue;
        };
        let delivery = delivery.unwrap();
        let event = delivery.event().expect("a decodable event").clone();
        delivery.ack().await.unwrap();
        if !got.iter().any(|e| e.id() == event.id()) {
            got.push(event);
        }
    }
    got
}

/// Nothing more arrives within a short while (the absence of a duplicate: a wrong
/// backfill would deliver at once, since it publishes before the check starts).
async fn nothing_more(subscription: &mut Box<dyn Subscription>, what: &str) {
    if let Ok(Some(delivery)) =
        tokio::time::timeout(Duration::from_secs(2), subscription.next()).await
    {
        panic!("{what} got {:?}", delivery.unwrap().event().map(CloudEvent::id));
    }
}

fn ids(events: &[CloudEvent]) -> Vec<String> {
    events.iter().map(|e| e.id().to_owned()).collect()
}

/// Relays `small, poison, small` on `topic` through `relay_bus` into a group of
/// `subscriber`, and checks the poison event is a relay dead letter with `reason`.
async fn poison_is_dead_lettered(
    relay_bus: Arc<dyn Publisher>,
    subscriber: &dyn Subscriber,
    topic: &str,
    poison: CloudEvent,
    reason: &str,
) {
    let (log, _) = sqlite().await;
    let mut group = subscriber.subscribe(SubscriptionSpec::new(topic, "poison")).await.unwrap();
    let stream = format!("{topic}-1");
    let first = append(&*log, &stream, event("relay.small", 1, 10)).await;
    let poison = append(&*log, &stream, poison).await;
    let last = append(&*log, &stream, event("relay.small", 3, 10)).await;
    let name = unique("poison");
    let (stop, task) = start_relay(log.clone(), relay_bus, &name);
    wait_caught_up(&*log, &name).await;
    let got = receive(&mut group, 2).await;
    assert_eq!(ids(&got), ids(&[first, last]), "the other events, in order");
    let letters = log.relay_dead_letters(Some(&name), 10).await.unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].event_id, poison.id());
    assert_eq!(letters[0].topic, topic);
    assert!(letters[0].reason.contains(reason), "{}", letters[0].reason);
    let _ = stop.send(());
    task.await.unwrap().unwrap();
    group.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_over_the_kafka_size_limit_is_dead_lettered() {
    let topic = unique("poisonk");
    let mut config =
        KafkaConfig::from_url(&format!("kafka://{}?profile=tansu", kafka_brokers())).unwrap();
    config.group_prefix = unique("relay-");
    config.partitions = 1;
    let subscriber = KafkaBus::new(config.clone()).unwrap();
    // The relay's producer takes records of up to 4 KiB (`message.max.bytes`, which
    // a broker enforces the same way); the poison record is 16 KiB.
    let mut small = config;
    small.max_message_bytes = 4096;
    let relay_bus = Arc::new(KafkaBus::new(small).unwrap());
    let poison = event("relay.big", 2, 16 * 1024);
    poison_is_dead_lettered(relay_bus, &subscriber, &topic, poison, "too large").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_type_amqp_cannot_carry_is_dead_lettered() {
    let topic = unique("poisona");
    let bus = AmqpBus::connect(&amqp_url(), AmqpConfig::default()).await.unwrap();
    // The type is the routing key, which AMQP limits to 255 bytes.
    let poison = event(&format!("relay.{}", "long".repeat(80)), 2, 10);
    poison_is_dead_lettered(Arc::new(bus.clone()), &bus, &topic, poison, "255 bytes").await;
}

/// A page in which some event types have no queue bound (RabbitMQ returns them) is
/// published once: its routed events reach their group once, not again when the
/// unroutable ones are sorted out. Before the relay knew which events came back, it
/// published such a page again event by event: every routed event twice, and a broker
/// round trip per event (in the whole-system bench, `order.confirmed`, which no group
/// takes from the bus, did this to most pages).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_with_events_nobody_subscribes_to_reaches_the_group_once() {
    let (log, _) = sqlite().await;
    let topic = unique("mixed");
    let stream = format!("{topic}-1");
    let bus = AmqpBus::connect(&amqp_url(), AmqpConfig::default()).await.unwrap();
    let mut group = bus
        .subscribe(SubscriptionSpec::new(&topic, "routed").types(["relay.routed"]))
        .await
        .unwrap();
    let mut routed = Vec::new();
    for n in 0..8 {
        routed.push(append(&*log, &stream, event("relay.routed", n, 10)).await);
        append(&*log, &stream, event("relay.nobody", n, 10)).await;
    }
    let name = unique("mixed");
    let (stop, task) = start_relay(log.clone(), Arc::new(bus.clone()), &name);
    wait_caught_up(&*log, &name).await;
    assert_eq!(ids(&receive(&mut group, 8).await), ids(&routed), "the routed events, in order");
    nothing_more(&mut group, "the group").await;
    let _ = stop.send(());
    task.await.unwrap().unwrap();
    group.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rabbitmq_group_created_later_is_backfilled_from_the_log() {
    let (log, database_url) = sqlite().await;
    let topic = unique("backfill");
    let stream = format!("{topic}-1");
    let bus = AmqpBus::connect(&amqp_url(), AmqpConfig::default()).await.unwrap();
    let name = unique("backfill");
    let (stop, task) = start_relay(log.clone(), Arc::new(bus.clone()), &name);

    // Published while no group exists: RabbitMQ keeps nothing, the relay skips them.
    let mut events = Vec::new();
    for n in 1..=2 {
        events.push(append(&*log, &stream, event("relay.early", n, 10)).await);
    }
    wait_caught_up(&*log, &name).await;
    // A first group, then an event it gets live.
    let mut early = bus.subscribe(SubscriptionSpec::new(&topic, "early")).await.unwrap();
    events.push(append(&*log, &stream, event("relay.live", 3, 10)).await);
    assert_eq!(ids(&receive(&mut early, 1).await), ids(&events[2..]));
    wait_caught_up(&*log, &name).await;

    // Two groups created later, backfilled through the command line: one from a
    // position, one from a time.
    let mut late = bus.subscribe(SubscriptionSpec::new(&topic, "late")).await.unwrap();
    let mut since = bus.subscribe(SubscriptionSpec::new(&topic, "since")).await.unwrap();
    let keel = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_keel"))
            .args(args)
            .env("KEEL_DATABASE_URL", &database_url)
            .env("KEEL_BUS_URL", amqp_url())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "keel {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&output.stdout).unwrap()
    };
    let into_late = format!("group:{topic}:late");
    let done = keel(&["replay", "--into", &into_late, "--from", "0", "--json"]);
    assert_eq!(done["replayed"], 3, "{done}");
    assert_eq!(ids(&receive(&mut late, 3).await), ids(&events), "every event, in log order");

    let all = log.read_all(&LogQuery::default()).await.unwrap();
    let second_time = all[1].event.time().unwrap().to_rfc3339();
    let into_since = format!("group:{topic}:since");
    let done = keel(&["replay", "--into", &into_since, "--since", &second_time, "--json"]);
    assert_eq!(done["replayed"], 2, "{done}");
    assert_eq!(ids(&receive(&mut since, 2).await), ids(&events[1..]));

    // Nobody else got anything twice.
    nothing_more(&mut early, "the first group").await;
    nothing_more(&mut late, "the group backfilled from a position").await;
    nothing_more(&mut since, "the group backfilled from a time").await;

    // A group that does not exist is a clear error, not a silent success.
    let output = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["replay", "--into", &format!("group:{topic}:nobody")])
        .env("KEEL_DATABASE_URL", &database_url)
        .env("KEEL_BUS_URL", amqp_url())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("does not exist") && stderr.contains("subscribe it first"), "{stderr}");

    let _ = stop.send(());
    task.await.unwrap().unwrap();
    for group in [early, late, since] {
        group.close().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_group_is_backfilled_through_its_retry_topic() {
    let (log, _) = sqlite().await;
    let topic = unique("backfillk");
    let stream = format!("{topic}-1");
    let mut events = Vec::new();
    for n in 1..=3 {
        events.push(append(&*log, &stream, event("relay.early", n, 10)).await);
    }
    let mut config =
        KafkaConfig::from_url(&format!("kafka://{}?profile=tansu", kafka_brokers())).unwrap();
    config.group_prefix = unique("relay-");
    config.partitions = 1;
    let bus = KafkaBus::new(config).unwrap();
    // Kafka keeps what a topic had; these events never went to the topic at all.
    let mut other = bus.subscribe(SubscriptionSpec::new(&topic, "other")).await.unwrap();
    let mut late = bus.subscribe(SubscriptionSpec::new(&topic, "late")).await.unwrap();
    let mut spec = keel_store::GroupBackfill::new(&topic, "late");
    spec.from = Position(1);
    let done = keel_store::backfill_group(&*log, &bus, &spec, |_| {}).await.unwrap();
    assert_eq!(done.published, 2);
    assert_eq!(ids(&receive(&mut late, 2).await), ids(&events[1..]), "in log order");
    nothing_more(&mut late, "the backfilled group").await;
    nothing_more(&mut other, "the other group").await;
    late.close().await.unwrap();
    other.close().await.unwrap();
}
