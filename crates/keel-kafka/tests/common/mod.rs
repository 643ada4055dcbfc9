//! Helpers shared by the integration tests: the broker address and a raw producer.

#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use keel_kafka::{KafkaBus, KafkaConfig};
use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

/// The brokers under test: `KEEL_TEST_KAFKA_BROKERS`, default `127.0.0.1:9092`.
pub fn brokers() -> String {
    std::env::var("KEEL_TEST_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
}

/// The configuration for the test brokers, with consumer groups prefixed by
/// `group_prefix` (unique per test, so tests running side by side never share a
/// Kafka group).
pub fn config(group_prefix: &str) -> KafkaConfig {
    let mut config = KafkaConfig::new(brokers());
    config.group_prefix = group_prefix.to_owned();
    // `KEEL_TEST_KAFKA_DEBUG=cgrp,fetch` turns on librdkafka's debug logs.
    if let Ok(debug) = std::env::var("KEEL_TEST_KAFKA_DEBUG") {
        config.librdkafka.insert("debug".to_owned(), debug);
        config.librdkafka.insert("log_level".to_owned(), "7".to_owned());
    }
    config
}

/// A bus on the test brokers.
pub fn bus(group_prefix: &str) -> KafkaBus {
    KafkaBus::new(config(group_prefix)).expect("Kafka bus")
}

/// A prefix no other test uses.
pub fn unique_prefix() -> String {
    format!("t{}.", uuid::Uuid::now_v7().simple())
}

/// A plain producer (no Keel), as a foreign client would use.
pub fn raw_producer() -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("message.timeout.ms", "30000")
        .create()
        .expect("raw producer")
}

/// Sends one record with the given headers through a plain producer.
pub async fn send_raw(
    producer: &FutureProducer,
    topic: &str,
    key: Option<&[u8]>,
    headers: &[(&str, &[u8])],
    value: &[u8],
) {
    let mut owned = OwnedHeaders::new();
    for (key, value) in headers {
        owned = owned.insert(Header { key, value: Some(*value) });
    }
    let mut record: FutureRecord<'_, [u8], [u8]> =
        FutureRecord::to(topic).payload(value).headers(owned);
    if let Some(key) = key {
        record = record.key(key);
    }
    producer.send(record, Duration::from_secs(30)).await.expect("raw send confirmed");
}

/// Logs to the test's output, filtered by `RUST_LOG` (default: warnings).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// Every record of `topic` as `(partition, offset, key, headers, value)`, read with a
/// plain consumer (assigned partitions, no group) up to the end of each partition.
pub fn read_all(topic: &str) -> Vec<RawRecord> {
    use rdkafka::Message as _;
    use rdkafka::consumer::{BaseConsumer, Consumer as _};
    use rdkafka::error::KafkaError;
    use rdkafka::message::Headers as _;
    use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", format!("reader-{}", uuid::Uuid::now_v7().simple()))
        .set("enable.partition.eof", "true")
        .set("enable.auto.commit", "false")
        .create()
        .expect("reader");
    let metadata = reader.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
    let partitions: Vec<i32> = metadata.topics()[0].partitions().iter().map(|p| p.id()).collect();
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        tpl.add_partition_offset(topic, *p, Offset::Beginning).expect("partition");
    }
    reader.assign(&tpl).expect("assign");
    let mut open: std::collections::HashSet<i32> = partitions.into_iter().collect();
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !open.is_empty() {
        assert!(std::time::Instant::now() < deadline, "reading {topic} took too long");
        match reader.poll(Duration::from_millis(100)) {
            None => {}
            Some(Ok(m)) => out.push(RawRecord {
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().map(<[u8]>::to_vec),
                headers: m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                (h.key.to_owned(), h.value.map(<[u8]>::to_vec).unwrap_or_default())
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                value: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
            }),
            Some(Err(KafkaError::PartitionEOF(p))) => {
                open.remove(&p);
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
        }
    }
    out
}

/// A record as a plain client reads it.
#[derive(Clone, Debug)]
pub struct RawRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
    pub value: Vec<u8>,
}

impl RawRecord {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).and_then(|(_, v)| std::str::from_utf8(v).ok())
    }
}
