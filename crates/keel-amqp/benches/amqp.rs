//! Keel over RabbitMQ against raw lapin, in one run, on the same broker:
//! confirmed publish rate, consume rate, and end-to-end latency; and the relay moving
//! a backlog from a Postgres log to the broker, beside raw lapin's confirmed publish.
//!
//! ```text
//! cargo bench -p keel-amqp --features integration
//! ```
//!
//! Both sides publish the same messages (1 KiB of data plus the CloudEvents
//! headers Keel writes), persistent, mandatory, with publisher confirms, in batches
//! of 100 (raw lapin: publish the batch, then await its confirms, on one channel),
//! into a queue of their own. Both consume with the same prefetch and ack each
//! message; Keel also decodes each into a `CloudEvent`. Latency is publish-call start
//! to receipt, one confirmed message at a time, with a connection to publish and one
//! to consume on both sides (as Keel does). The relay's backlog is the same messages,
//! appended in batches of 100 to a fresh PostgreSQL database beforehand (not timed);
//! its clock runs from the relay's start until its checkpoint reaches the log's head.
//! Environment: `KEEL_TEST_AMQP_URL`, `KEEL_TEST_DATABASE_URL`,
//! `KEEL_BENCH_MESSAGES` (default 50,000), `KEEL_BENCH_ROUNDS` (default 3),
//! `KEEL_BENCH_QUEUE_TYPE` (`quorum`, the default, or `classic`).

#[cfg(not(feature = "integration"))]
fn main() {
    println!(
        "the RabbitMQ benchmark needs the broker: cargo bench -p keel-amqp --features integration"
    );
}

#[cfg(feature = "integration")]
fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(bench::run());
}

#[cfg(feature = "integration")]
mod bench {
    use std::time::{Duration, Instant};

    use std::sync::Arc;

    use bytes::Bytes;
    use futures::StreamExt as _;
    use keel_amqp::{AmqpBus, AmqpConfig, QueueType};
    use keel_core::codec::{Binding, to_binary};
    use keel_core::{CloudEvent, Publisher, Subscriber, SubscriptionSpec};
    use keel_postgres::{PgEventLog, PgOptions};
    use lapin::options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
        ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    };
    use lapin::types::{AMQPValue, FieldTable, LongString};
    use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};

    const BATCH: usize = 100;
    const BODY: usize = 1024;
    const PREFETCH: u16 = 256;
    const LATENCY_SAMPLES: usize = 2000;

    fn url() -> String {
        std::env::var("KEEL_TEST_AMQP_URL")
            .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
    }

    fn env_usize(name: &str, default: usize) -> usize {
        std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
    }

    fn queue_type() -> QueueType {
        match std::env::var("KEEL_BENCH_QUEUE_TYPE").as_deref() {
            Ok("classic") => QueueType::Classic,
            _ => QueueType::Quorum,
        }
    }

    fn keel_config() -> AmqpConfig {
        AmqpConfig::default()
            .queue_type(queue_type())
            .queue_expires(Some(Duration::from_secs(60)))
            .connection_name("keel-bench")
    }

    fn unique(prefix: &str) -> String {
        format!("{prefix}-{}", uuid::Uuid::now_v7().simple())
    }

    fn event(i: usize) -> CloudEvent {
        let mut data = format!("{{\"seq\":{i},\"pad\":\"");
        while data.len() < BODY - 2 {
            data.push('x');
        }
        data.push_str("\"}");
        CloudEvent::builder("bench.event", "/keel/bench")
            .subject(format!("stream-{}", i % 64))
            .partition_key(format!("stream-{}", i % 64))
            .data("application/json", data)
            .build()
            .expect("valid")
    }

    /// The same message as Keel sends, for raw lapin.
    fn raw_message(event: &CloudEvent) -> (BasicProperties, Bytes) {
        let binary = to_binary(event, Binding::Amqp);
        let mut headers = FieldTable::default();
        for (name, value) in binary.headers {
            headers.insert(name.into(), AMQPValue::LongString(LongString::from(value)));
        }
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_message_id(event.id().into())
            .with_headers(headers);
        (properties, binary.body)
    }

    async fn raw_topology(channel: &Channel, exchange: &str, queue: &str) {
        channel
            .exchange_declare(
                exchange.into(),
                lapin::ExchangeKind::Topic,
                ExchangeDeclareOptions { durable: true, ..Default::default() },
                FieldTable::default(),
            )
            .await
            .expect("exchange");
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), AMQPValue::LongString(queue_type().as_str().into()));
        args.insert("x-expires".into(), AMQPValue::LongLongInt(60_000));
        channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions { durable: true, ..Default::default() },
                args,
            )
            .await
            .expect("queue");
        channel
            .queue_bind(
                queue.into(),
                exchange.into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind");
    }

    struct Rates {
        raw_publish: f64,
        keel_publish: f64,
        raw_consume: f64,
        keel_consume: f64,
        relay: f64,
    }

    async fn raw_publish(
        channel: &Channel,
        exchange: &str,
        messages: &[(BasicProperties, Bytes)],
    ) -> f64 {
        let started = Instant::now();
        for batch in messages.chunks(BATCH) {
            let mut confirms = Vec::with_capacity(batch.len());
            for (properties, body) in batch {
                let confirm = channel
                    .basic_publish(
                        exchange.into(),
                        "bench.event".into(),
                        BasicPublishOptions { mandatory: true, immediate: false },
                        body,
                        properties.clone(),
                    )
                    .await
                    .expect("publish");
                confirms.push(confirm);
            }
            for confirm in confirms {
                assert_eq!(confirm.await.expect("confirm"), Confirmation::Ack(None));
            }
        }
        rate(messages.len(), started.elapsed())
    }

    async fn keel_publish(bus: &AmqpBus, topic: &str, events: &[CloudEvent]) -> f64 {
        let started = Instant::now();
        for batch in events.chunks(BATCH) {
            bus.publish(topic, batch).await.expect("publish");
        }
        rate(events.len(), started.elapsed())
    }

    async fn raw_consume(connection: &Connection, queue: &str, count: usize) -> f64 {
        let channel = connection.create_channel().await.expect("channel");
        channel.basic_qos(PREFETCH, BasicQosOptions::default()).await.expect("qos");
        let started = Instant::now();
        let mut consumer = channel
            .basic_consume(
                queue.into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("consume");
        for _ in 0..count {
            let delivery = consumer.next().await.expect("open").expect("delivery");
            delivery.ack(BasicAckOptions::default()).await.expect("ack");
        }
        let elapsed = started.elapsed();
        let _ = channel.close(200, "done".into()).await;
        rate(count, elapsed)
    }

    async fn keel_consume(bus: &AmqpBus, topic: &str, count: usize) -> f64 {
        let spec = SubscriptionSpec::new(topic, "bench").prefetch(u32::from(PREFETCH));
        let started = Instant::now();
        let mut sub = bus.subscribe(spec).await.expect("subscribe");
        for _ in 0..count {
            let delivery = sub.next().await.expect("open").expect("delivery");
            assert!(delivery.event().is_some(), "decoded");
            delivery.ack().await.expect("ack");
        }
        let elapsed = started.elapsed();
        sub.close().await.expect("close");
        rate(count, elapsed)
    }

    /// The relay moving `events`, appended to a fresh Postgres log first, to a topic of
    /// their own (a group queue bound to it: every publish is mandatory).
    async fn relay(events: &[CloudEvent]) -> f64 {
        let database = keel_testkit::postgres::fresh_database("relay_bench").await;
        let log = PgEventLog::connect(&database, PgOptions::default()).await.expect("log");
        let bus = AmqpBus::connect(&url(), keel_config()).await.expect("keel connect");
        let topic = format!("relay{}", uuid::Uuid::now_v7().simple());
        let spec = SubscriptionSpec::new(&topic, "bench").prefetch(u32::from(PREFETCH));
        bus.subscribe(spec).await.expect("subscribe").close().await.expect("close");
        let bus = Arc::new(bus);
        let run =
            keel_testkit::relay::relay_backlog(Arc::new(log), bus.clone(), &topic, events, BATCH)
                .await;
        Publisher::close(&*bus).await.expect("close");
        rate(events.len(), run.elapsed)
    }

    fn rate(count: usize, elapsed: Duration) -> f64 {
        count as f64 / elapsed.as_secs_f64()
    }

    async fn round(messages: usize, keel_first: bool) -> Rates {
        let events: Vec<CloudEvent> = (0..messages).map(event).collect();
        let raw_messages: Vec<_> = events.iter().map(raw_message).collect();

        // Raw lapin: its own exchange and quorum queue.
        let connection =
            Connection::connect(&url(), ConnectionProperties::default()).await.expect("connect");
        let channel = connection.create_channel().await.expect("channel");
        channel.confirm_select(ConfirmSelectOptions::default()).await.expect("confirms");
        let (exchange, queue) = (unique("bench.raw"), unique("bench.raw.q"));
        raw_topology(&channel, &exchange, &queue).await;

        // Keel: its own topic; a group subscribed once so its queue exists.
        let bus = AmqpBus::connect(&url(), keel_config()).await.expect("keel connect");
        let topic = unique("bench");
        let spec = SubscriptionSpec::new(&topic, "bench").prefetch(u32::from(PREFETCH));
        bus.subscribe(spec).await.expect("subscribe").close().await.expect("close");

        // Alternate who goes first, so neither always meets a broker still busy with
        // the other's messages.
        let (raw_publish, keel_publish, raw_consume, keel_consume) = if keel_first {
            let keel_publish = keel_publish(&bus, &topic, &events).await;
            let raw_publish = raw_publish(&channel, &exchange, &raw_messages).await;
            let keel_consume = keel_consume(&bus, &topic, messages).await;
            let raw_consume = raw_consume(&connection, &queue, messages).await;
            (raw_publish, keel_publish, raw_consume, keel_consume)
        } else {
            let raw_publish = raw_publish(&channel, &exchange, &raw_messages).await;
            let keel_publish = keel_publish(&bus, &topic, &events).await;
            let raw_consume = raw_consume(&connection, &queue, messages).await;
            let keel_consume = keel_consume(&bus, &topic, messages).await;
            (raw_publish, keel_publish, raw_consume, keel_consume)
        };
        let _ = connection.close(200, "done".into()).await;
        Publisher::close(&bus).await.expect("close");
        // After both publishers, whose queues are drained by then.
        let relay = relay(&events).await;
        Rates { raw_publish, keel_publish, raw_consume, keel_consume, relay }
    }

    /// The sample at `per_mille`/1000 of the sorted samples (nearest rank).
    fn percentile(sorted: &[Duration], per_mille: usize) -> Duration {
        let rank = (sorted.len().saturating_sub(1) * per_mille + 500) / 1000;
        sorted[rank.min(sorted.len().saturating_sub(1))]
    }

    /// Publish-call start to receipt, one confirmed message at a time.
    async fn keel_latency() -> Vec<Duration> {
        let bus = AmqpBus::connect(&url(), keel_config()).await.expect("connect");
        let topic = unique("bench-latency");
        let mut sub =
            bus.subscribe(SubscriptionSpec::new(&topic, "bench")).await.expect("subscribe");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let receiver = tokio::spawn(async move {
            while let Some(Ok(delivery)) = sub.next().await {
                let at = Instant::now();
                let id = delivery.event().map(|e| e.id().to_owned()).unwrap_or_default();
                let _ = delivery.ack().await;
                if tx.send((id, at)).is_err() {
                    break;
                }
            }
        });
        let mut samples = Vec::with_capacity(LATENCY_SAMPLES);
        for i in 0..LATENCY_SAMPLES {
            let event = event(i);
            let started = Instant::now();
            bus.publish(&topic, std::slice::from_ref(&event)).await.expect("publish");
            let (id, at) = rx.recv().await.expect("received");
            assert_eq!(id, event.id());
            samples.push(at - started);
        }
        receiver.abort();
        Publisher::close(&bus).await.expect("close");
        samples
    }

    /// The same shape as Keel's: a connection to publish, one to consume, the
    /// consumer in its own task.
    async fn raw_latency() -> Vec<Duration> {
        let publisher =
            Connection::connect(&url(), ConnectionProperties::default()).await.expect("connect");
        let publish = publisher.create_channel().await.expect("channel");
        publish.confirm_select(ConfirmSelectOptions::default()).await.expect("confirms");
        let (exchange, queue) = (unique("bench.rawlat"), unique("bench.rawlat.q"));
        raw_topology(&publish, &exchange, &queue).await;
        let consumer_connection =
            Connection::connect(&url(), ConnectionProperties::default()).await.expect("connect");
        let consume = consumer_connection.create_channel().await.expect("channel");
        consume.basic_qos(PREFETCH, BasicQosOptions::default()).await.expect("qos");
        let mut consumer = consume
            .basic_consume(
                queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("consume");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let receiver = tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                let at = Instant::now();
                let id = delivery.properties.message_id().as_ref().map(|id| id.to_string());
                let _ = delivery.ack(BasicAckOptions::default()).await;
                if tx.send((id.unwrap_or_default(), at)).is_err() {
                    break;
                }
            }
        });
        let mut samples = Vec::with_capacity(LATENCY_SAMPLES);
        for i in 0..LATENCY_SAMPLES {
            let event = event(i);
            let (properties, body) = raw_message(&event);
            let started = Instant::now();
            let confirm = publish
                .basic_publish(
                    exchange.as_str().into(),
                    "bench.event".into(),
                    BasicPublishOptions { mandatory: true, immediate: false },
                    &body,
                    properties,
                )
                .await
                .expect("publish");
            assert_eq!(confirm.await.expect("confirm"), Confirmation::Ack(None));
            let (id, at) = rx.recv().await.expect("received");
            assert_eq!(id, event.id());
            samples.push(at - started);
        }
        receiver.abort();
        let _ = publisher.close(200, "done".into()).await;
        let _ = consumer_connection.close(200, "done".into()).await;
        samples
    }

    fn summary(mut samples: Vec<Duration>) -> (Duration, Duration) {
        samples.sort();
        (percentile(&samples, 500), percentile(&samples, 990))
    }

    fn ms(d: Duration) -> String {
        format!("{:.2} ms", d.as_secs_f64() * 1000.0)
    }

    pub(crate) async fn run() {
        let messages = env_usize("KEEL_BENCH_MESSAGES", 50_000);
        let rounds = env_usize("KEEL_BENCH_ROUNDS", 3).max(1);
        println!(
            "keel-amqp benchmark: {messages} messages of {BODY} B data, batches of {BATCH}, \
             prefetch {PREFETCH}, {:?} queues, {rounds} rounds",
            queue_type()
        );
        // Warm up the broker and both clients.
        let _ = round(2_000, false).await;
        let mut all = Vec::new();
        for n in 1..=rounds {
            let r = round(messages, n % 2 == 0).await;
            println!(
                "round {n}: publish raw {:>8.0}/s keel {:>8.0}/s ({:.2}x) | consume raw {:>8.0}/s keel {:>8.0}/s ({:.2}x) | relay {:>8.0}/s ({:.2}x raw publish)",
                r.raw_publish,
                r.keel_publish,
                r.keel_publish / r.raw_publish,
                r.raw_consume,
                r.keel_consume,
                r.keel_consume / r.raw_consume,
                r.relay,
                r.relay / r.raw_publish
            );
            all.push(r);
        }
        let median = |f: fn(&Rates) -> f64| {
            let mut values: Vec<f64> = all.iter().map(f).collect();
            values.sort_by(f64::total_cmp);
            values[values.len() / 2]
        };
        let ratio = |f: fn(&Rates) -> f64| median(f);
        let (rp, kp) = (median(|r| r.raw_publish), median(|r| r.keel_publish));
        let (rc, kc) = (median(|r| r.raw_consume), median(|r| r.keel_consume));
        let publish_ratio = ratio(|r| r.keel_publish / r.raw_publish);
        let consume_ratio = ratio(|r| r.keel_consume / r.raw_consume);
        let relay = median(|r| r.relay);
        let relay_ratio = ratio(|r| r.relay / r.raw_publish);
        let (raw50, raw99) = summary(raw_latency().await);
        let (keel50, keel99) = summary(keel_latency().await);
        println!();
        println!(
            "| metric (median of {rounds} rounds) | raw lapin | Keel | Keel / raw (median of the rounds' ratios) |"
        );
        println!("|---|---:|---:|---:|");
        println!("| confirmed publish, msg/s | {rp:.0} | {kp:.0} | {publish_ratio:.2} |");
        println!("| consume + ack, msg/s | {rc:.0} | {kc:.0} | {consume_ratio:.2} |");
        println!(
            "| relay from Postgres (Keel) vs confirmed publish (raw), msg/s | {rp:.0} | {relay:.0} | {relay_ratio:.2} |"
        );
        println!(
            "| end-to-end latency p50 ({LATENCY_SAMPLES} msgs) | {} | {} | |",
            ms(raw50),
            ms(keel50)
        );
        println!("| end-to-end latency p99 | {} | {} | |", ms(raw99), ms(keel99));
    }
}
