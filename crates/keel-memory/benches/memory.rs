//! Throughput of the in-process bus: one publisher (batches of 100, ten partition
//! keys) and one group member (prefetch 64, acking each message) on a topic whose
//! capacity (1,000) makes the publisher wait, as a busy consumer would.
//!
//! ```text
//! cargo bench -p keel-memory
//! ```
//!
//! Environment: `KEEL_BENCH_MESSAGES` (default 100,000), `KEEL_BENCH_ROUNDS` (default 3).
//! Prints messages per second for each round; nothing is asserted (the tests check
//! what arrives, never how fast).

use std::time::{Duration, Instant};

use keel_core::CloudEvent;
use keel_core::bus::{Publisher, Subscriber, SubscriptionSpec};
use keel_memory::MemoryBus;

const BATCH: u64 = 100;
const KEYS: u64 = 10;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn event(n: u64) -> CloudEvent {
    CloudEvent::builder("keel.bench.numbered", "/keel-memory/bench")
        .partition_key(format!("k{}", n % KEYS))
        .json_data(&n)
        .expect("json")
        .build()
        .expect("valid event")
}

/// Publishes and consumes `messages`; returns how long it took, from the first
/// publish to the last ack.
async fn round(messages: u64) -> Duration {
    let bus = MemoryBus::with_capacity(1_000);
    let mut sub =
        bus.subscribe(SubscriptionSpec::new("t", "g").prefetch(64)).await.expect("subscribe");
    let events: Vec<CloudEvent> = (0..messages).map(event).collect();
    let started = Instant::now();
    let producer = tokio::spawn({
        let bus = bus.clone();
        async move {
            for batch in events.chunks(usize::try_from(BATCH).expect("small")) {
                bus.publish("t", batch).await.expect("publish");
            }
        }
    });
    for _ in 0..messages {
        let delivery = sub.next().await.expect("open").expect("delivery");
        delivery.ack().await.expect("ack");
    }
    let elapsed = started.elapsed();
    producer.await.expect("producer");
    elapsed
}

fn main() {
    let messages = env_u64("KEEL_BENCH_MESSAGES", 100_000);
    let rounds = env_u64("KEEL_BENCH_ROUNDS", 3);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!("keel-memory: {messages} messages a round, publish batches of {BATCH}, capacity 1000");
    for n in 1..=rounds {
        let elapsed = runtime.block_on(round(messages));
        let rate = messages as f64 / elapsed.as_secs_f64();
        println!("round {n}: {elapsed:.2?}, {rate:.0} messages/s (publish to ack)");
    }
}
