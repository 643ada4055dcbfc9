//! Keel's Kafka backend against raw rdkafka on the same broker, side by side.
//!
//! ```text
//! cargo bench -p keel-kafka --bench kafka
//! ```
//!
//! Environment: `KEEL_TEST_KAFKA_BROKERS` (default `127.0.0.1:9092`),
//! `KEEL_BENCH_MESSAGES` (default 50000), `KEEL_BENCH_ROUNDS` (default 3; the best
//! round of each side is reported; the sides take turns going first, because Tansu
//! slows down as it holds more data), `KEEL_BENCH_LINGER_MS` (default 0, Keel's
//! default; both sides' producers get it).
//!
//! - Publish: 1 KiB of JSON data per event, 64 partition keys, in batches of 1000,
//!   each batch confirmed before the next (what `Publisher::publish` promises). Keel
//!   publishes `CloudEvent`s; raw rdkafka sends the very records Keel's encoding
//!   produces (same key, headers and value) through a `FutureProducer` with the same
//!   settings (idempotent, `acks=all`, `linger.ms`, `batch.num.messages=1000`).
//! - Consume: a fresh group reads the same 50000-record topic from the beginning.
//!   Keel: a `Subscription`, each delivery acknowledged (offsets committed every
//!   100 ms); raw: a `BaseConsumer` poll loop committing every 100 ms. The clock starts
//!   at the first record, so group joins and Keel's hand-off grace are not counted.
//! - Relay: the same events, appended in batches of 1000 to a fresh PostgreSQL
//!   database (`KEEL_TEST_DATABASE_URL`) beforehand (not timed), relayed to a topic of
//!   their own; the clock runs from the relay's start until its checkpoint reaches the
//!   log's head. Set beside raw rdkafka's publish (issue 18: at least 0.8x).
//! - CPU per message: the whole machine's CPU time (this bench, the broker and
//!   PostgreSQL) during each publish round, over its messages. Where they share a few
//!   cores, the relay's rate follows this: it reads every event from PostgreSQL, which
//!   raw rdkafka's publish does not.

#![allow(clippy::cast_precision_loss, clippy::print_stdout, unreachable_pub)]

// As the `keel` binary, so that the relay and the publish rows measure what ships.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_core::{CloudEvent, Publisher, Subscriber, SubscriptionSpec};
use keel_kafka::{KafkaBus, KafkaConfig};
use keel_postgres::{PgEventLog, PgOptions};
use keel_testkit::relay::{Measured, machine_cpu_time};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Header, Headers as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message as _};

const BATCH: usize = 1000;
const SIZE: usize = 1024;
const KEYS: usize = 64;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn brokers() -> String {
    std::env::var("KEEL_TEST_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::now_v7().simple())
}

fn events(n: usize) -> Vec<CloudEvent> {
    let pad = "x".repeat(SIZE - 40);
    (0..n)
        .map(|i| {
            CloudEvent::builder("keel.bench.event", "/keel/bench")
                .partition_key(format!("key-{}", i % KEYS))
                .data("application/json", format!(r#"{{"seq":{i:>12},"pad":"{pad}"}}"#))
                .build()
                .expect("valid")
        })
        .collect()
}

/// The record Keel writes for an event, for the raw producer to send as is.
struct Raw {
    key: Vec<u8>,
    headers: Vec<(String, Vec<u8>)>,
    value: Vec<u8>,
}

fn as_raw(event: &CloudEvent) -> Raw {
    let binary = keel_core::codec::to_binary(event, keel_core::codec::Binding::Kafka);
    let mut headers: Vec<(String, Vec<u8>)> =
        binary.headers.into_iter().map(|(k, v)| (k, v.into_bytes())).collect();
    if let Some(ct) = binary.content_type {
        headers.push(("content-type".to_owned(), ct.into_bytes()));
    }
    Raw {
        key: event.partition_key().unwrap_or_default().as_bytes().to_vec(),
        headers,
        value: binary.body.to_vec(),
    }
}

async fn create_topic(topic: &str) {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", brokers()).create().expect("admin");
    let result = admin
        .create_topics(&[NewTopic::new(topic, 8, TopicReplication::Fixed(1))], &AdminOptions::new())
        .await
        .expect("create");
    result.into_iter().for_each(|r| {
        r.expect("topic created");
    });
}

/// The producers' `linger.ms`, Keel's and raw rdkafka's alike.
fn linger_ms() -> usize {
    env_or("KEEL_BENCH_LINGER_MS", 0)
}

fn raw_producer() -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", linger_ms().to_string())
        .set("batch.num.messages", "1000")
        .set("sticky.partitioning.linger.ms", "0")
        .set("message.timeout.ms", "30000")
        .set("compression.type", "none")
        .create()
        .expect("raw producer")
}

async fn raw_publish(producer: &FutureProducer, topic: &str, records: &[Raw]) -> Duration {
    let start = Instant::now();
    for batch in records.chunks(BATCH) {
        let mut pending = Vec::with_capacity(batch.len());
        for record in batch {
            let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
            for (k, v) in &record.headers {
                headers = headers.insert(Header { key: k, value: Some(v) });
            }
            let mut future_record = FutureRecord::to(topic)
                .key(&record.key[..])
                .payload(&record.value[..])
                .headers(headers);
            loop {
                match producer.send_result(future_record) {
                    Ok(delivery) => {
                        pending.push(delivery);
                        break;
                    }
                    Err((_, back)) => {
                        future_record = back;
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            }
        }
        for delivery in pending {
            delivery.await.expect("not canceled").expect("delivered");
        }
    }
    start.elapsed()
}

async fn keel_publish(bus: &KafkaBus, topic: &str, events: &[CloudEvent]) -> Duration {
    let start = Instant::now();
    for batch in events.chunks(BATCH) {
        bus.publish(topic, batch).await.expect("publish");
    }
    start.elapsed()
}

async fn keel_consume(bus: &KafkaBus, topic: &str, n: usize) -> Duration {
    let spec = SubscriptionSpec::new(topic, unique("keel-bench")).prefetch(1000);
    let mut sub = bus.subscribe(spec).await.expect("subscribe");
    let first = sub.next().await.expect("open").expect("delivery");
    let start = Instant::now();
    first.ack().await.expect("ack");
    for _ in 1..n {
        let delivery = sub.next().await.expect("open").expect("delivery");
        delivery.ack().await.expect("ack");
    }
    let elapsed = start.elapsed();
    sub.close().await.expect("close");
    elapsed
}

fn raw_consume(topic: &str, n: usize) -> Duration {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", unique("raw-bench"))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("raw consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut count = 0;
    let mut start = None;
    let mut last_commit = Instant::now();
    let mut bytes = 0usize;
    while count < n {
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Ok(message)) => {
                start.get_or_insert_with(Instant::now);
                bytes += message.payload().map_or(0, <[u8]>::len)
                    + message.headers().map_or(0, |h| h.count());
                count += 1;
                if last_commit.elapsed() >= Duration::from_millis(100) {
                    let _ = consumer.commit_consumer_state(CommitMode::Async);
                    last_commit = Instant::now();
                }
            }
            Some(Err(e)) => eprintln!("raw consumer: {e}"),
        }
    }
    let elapsed = start.map_or(Duration::ZERO, |s| s.elapsed());
    let _ = consumer.commit_consumer_state(CommitMode::Sync);
    assert!(bytes > 0);
    elapsed
}

/// The relay moving `events`, appended to a fresh Postgres log first, to a topic of
/// their own.
async fn relay(bus: Arc<KafkaBus>, events: &[CloudEvent]) -> Measured {
    let database = keel_testkit::postgres::fresh_database("relay_bench").await;
    let log = PgEventLog::connect(&database, PgOptions::default()).await.expect("log");
    let topic = format!("relay{}", uuid::Uuid::now_v7().simple());
    create_topic(&topic).await;
    keel_testkit::relay::relay_backlog(Arc::new(log), bus, &topic, events, BATCH).await
}

/// Who publishes in a publish round.
#[derive(Clone, Copy)]
enum Side {
    Raw,
    Keel,
    Relay,
}

fn rate(n: usize, elapsed: Duration) -> f64 {
    n as f64 / elapsed.as_secs_f64()
}

/// A publish round: its rate, and the CPU time per message the whole machine spent.
struct Round {
    rate: f64,
    cpu_us: f64,
}

impl Round {
    fn new(n: usize, run: Measured) -> Self {
        Self { rate: rate(n, run.elapsed), cpu_us: run.machine_cpu.as_secs_f64() * 1e6 / n as f64 }
    }
}

/// Times `publish`, and the machine's CPU time meanwhile.
async fn measured(publish: impl std::future::Future<Output = Duration>) -> Measured {
    let before = machine_cpu_time();
    let elapsed = publish.await;
    Measured { elapsed, machine_cpu: machine_cpu_time().saturating_sub(before) }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n = env_or("KEEL_BENCH_MESSAGES", 50_000);
    let rounds = env_or("KEEL_BENCH_ROUNDS", 3).max(1);
    let mut config = KafkaConfig::new(brokers());
    // The test broker is Tansu unless KEEL_TEST_KAFKA_PROFILE=apache.
    if std::env::var("KEEL_TEST_KAFKA_PROFILE").as_deref() != Ok("apache") {
        config = config.tansu();
    }
    config.partitions = 8;
    config.linger = Duration::from_millis(u64::try_from(linger_ms()).unwrap_or(0));
    let bus = Arc::new(KafkaBus::new(config).expect("bus"));
    let events = events(n);
    let records: Vec<Raw> = events.iter().map(as_raw).collect();
    let producer = raw_producer();
    println!(
        "Keel Kafka backend vs raw rdkafka, {n} messages of {SIZE} B data, broker {}, linger.ms={}",
        brokers(),
        linger_ms()
    );

    // Warm-up: connections, metadata, topic creation.
    let warm = unique("bench-warm");
    create_topic(&warm).await;
    raw_publish(&producer, &warm, &records[..BATCH.min(n)]).await;
    keel_publish(&bus, &warm, &events[..BATCH.min(n)]).await;

    let mut consume_topic = None;
    let (mut raw_publishes, mut keel_publishes, mut relays) = (Vec::new(), Vec::new(), Vec::new());
    // Tansu slows down as it holds more data, so the sides take turns going first
    // (raw, Keel, relay; Keel, relay, raw; ...).
    for round in 0..rounds {
        let mut sides = [Side::Raw, Side::Keel, Side::Relay];
        sides.rotate_left(round % 3);
        for side in sides {
            let topic = unique("bench-publish");
            match side {
                Side::Keel => {
                    create_topic(&topic).await;
                    let run = measured(keel_publish(&bus, &topic, &events)).await;
                    keel_publishes.push(Round::new(n, run));
                }
                Side::Raw => {
                    create_topic(&topic).await;
                    let run = measured(raw_publish(&producer, &topic, &records)).await;
                    raw_publishes.push(Round::new(n, run));
                    consume_topic.get_or_insert(topic);
                }
                Side::Relay => relays.push(Round::new(n, relay(bus.clone(), &events).await)),
            }
        }
    }
    let topic = consume_topic.expect("a topic to consume");
    let (mut raw_rounds, mut keel_rounds) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        for side in if round % 2 == 0 { [false, true] } else { [true, false] } {
            if side {
                keel_rounds.push(rate(n, keel_consume(&bus, &topic, n).await));
            } else {
                let t = topic.clone();
                let raw =
                    tokio::task::spawn_blocking(move || raw_consume(&t, n)).await.expect("raw");
                raw_rounds.push(rate(n, raw));
            }
        }
    }
    let best = |rounds: &[f64]| rounds.iter().copied().fold(0.0_f64, f64::max);
    let (raw_con, keel_con) = (best(&raw_rounds), best(&keel_rounds));
    let show = |rounds: &[f64]| rounds.iter().map(|r| format!("{r:.0}")).collect::<Vec<_>>();
    println!("consume rounds (msg/s): Keel {:?}, raw {:?}", show(&keel_rounds), show(&raw_rounds));
    let rates = |rounds: &[Round]| rounds.iter().map(|r| r.rate).collect::<Vec<_>>();
    let (raw_rates, keel_rates, relay_rates) =
        (rates(&raw_publishes), rates(&keel_publishes), rates(&relays));
    println!("publish rounds (msg/s): relay {:?}, raw {:?}", show(&relay_rates), show(&raw_rates));
    let (raw_pub, keel_pub, relay_best) = (best(&raw_rates), best(&keel_rates), best(&relay_rates));
    println!();
    println!(
        "| {:<8} | {:>14} | {:>18} | {:>10} |",
        "", "Keel (msg/s)", "raw rdkafka (msg/s)", "Keel / raw"
    );
    println!("|----------|----------------|---------------------|------------|");
    for (what, keel, raw) in [
        ("publish", keel_pub, raw_pub),
        ("consume", keel_con, raw_con),
        ("relay", relay_best, raw_pub),
    ] {
        println!("| {what:<8} | {keel:>14.0} | {raw:>19.0} | {:>9.2}x |", keel / raw);
    }
    Publisher::close(&*bus).await.expect("close");
    println!("relay: from a Postgres log, set beside raw rdkafka's publish");
    // The bench, the broker and PostgreSQL share the machine's cores: where they are
    // all busy, a rate follows the CPU each message costs them together.
    let cpu = |rounds: &[Round]| rounds.iter().map(|r| r.cpu_us).sum::<f64>() / rounds.len() as f64;
    println!(
        "CPU per message, whole machine, mean of the rounds (us): raw publish {:.1}, Keel publish {:.1}, relay {:.1} (reading the log included)",
        cpu(&raw_publishes),
        cpu(&keel_publishes),
        cpu(&relays)
    );
}
