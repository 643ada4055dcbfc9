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
/// Kafka group): the Tansu profile, unless `KEEL_TEST_KAFKA_PROFILE=apache` says the
/// brokers are Apache Kafka.
pub fn config(group_prefix: &str) -> KafkaConfig {
    let mut config = KafkaConfig::new(brokers());
    if std::env::var("KEEL_TEST_KAFKA_PROFILE").as_deref() != Ok("apache") {
        config = config.tansu();
    }
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

/// Restarts the Kafka-protocol broker at [`brokers`] (the first address): stops the
/// process listening on its port (SIGTERM, then SIGKILL if it lingers), starts the same
/// program with the same arguments again (for the test broker, what
/// `scripts/services.sh` runs: `tansu broker --listener-url tcp://127.0.0.1:9092
/// --advertised-listener-url tcp://127.0.0.1:9092 --storage-engine memory://tansu/`),
/// output to where the old one wrote, in a process group of its own so that it
/// outlives the test, and waits until the port answers.
///
/// Tansu's storage is in memory: the restarted broker has no records, topics or
/// committed offsets.
pub async fn restart_broker() {
    let address = brokers().split(',').next().expect("a broker address").trim().to_owned();
    let port = address.rsplit(':').next().expect("host:port").to_owned();
    let pid = listener_pid(&port);
    let program = std::fs::read_link(format!("/proc/{pid}/exe")).expect("the broker's program");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("the broker's arguments");
    let args: Vec<String> = nul_separated(&cmdline).skip(1).collect();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("the broker's environment");
    let env: Vec<(String, String)> = nul_separated(&environ)
        .filter_map(|pair| pair.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect();
    let output = std::fs::read_link(format!("/proc/{pid}/fd/1"))
        .ok()
        .filter(|path| path.is_file())
        .unwrap_or_else(|| "/dev/null".into());
    signal("TERM", pid);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while listening(&port).is_some() {
        if tokio::time::Instant::now() >= deadline {
            signal("KILL", pid);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = |path: &std::path::Path| {
        std::fs::OpenOptions::new().append(true).open(path).expect("the broker's log")
    };
    {
        use std::os::unix::process::CommandExt as _;
        #[allow(clippy::zombie_processes, reason = "the broker outlives the test")]
        let _broker = std::process::Command::new(&program)
            .args(&args)
            .env_clear()
            .envs(env)
            .stdin(std::process::Stdio::null())
            .stdout(log(&output))
            .stderr(log(&output))
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {} {args:?}: {e}", program.display()));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(&address).is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the broker did not come back on {address}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The id of the process listening on TCP `port`.
fn listener_pid(port: &str) -> u32 {
    listening(port).unwrap_or_else(|| panic!("no process listens on port {port}"))
}

/// The id of the process listening on TCP `port`, if any (from `ss`).
fn listening(port: &str) -> Option<u32> {
    let out = std::process::Command::new("ss")
        .args(["-Hltnp", &format!("sport = :{port}")])
        .output()
        .expect("run ss");
    let text = String::from_utf8_lossy(&out.stdout);
    let rest = text.split("pid=").nth(1)?;
    rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// The strings of a `/proc` file such as `cmdline` or `environ`.
fn nul_separated(bytes: &[u8]) -> impl Iterator<Item = String> + '_ {
    bytes
        .split(|b| *b == 0)
        .filter(|part| !part.is_empty())
        .map(|part| String::from_utf8_lossy(part).into_owned())
}

fn signal(name: &str, pid: u32) {
    let _ =
        std::process::Command::new("kill").args([&format!("-{name}"), &pid.to_string()]).status();
}
