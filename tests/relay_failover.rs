//! Two `keel relay` processes with the same name against one Postgres log, publishing to
//! the real RabbitMQ: SIGKILL the active one mid-stream, and the standby takes the lease
//! and goes on from the checkpoint. Every event arrives, and each stream's events first
//! arrive in version order (redeliveries of what the killed relay had already sent are
//! allowed: delivery is at-least-once).
#![cfg(feature = "integration")]
#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_amqp::{AmqpBus, AmqpConfig};
use keel_core::{CloudEvent, ExpectedVersion, StreamId, Subscriber, SubscriptionSpec};
use keel_postgres::{PgEventLog, PgOptions};
use keel_store::EventLog;

const STREAMS: usize = 8;
const PER_STREAM: usize = 250;

fn amqp_url() -> String {
    std::env::var("KEEL_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

fn unique() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

/// A `keel relay` process, killed when dropped.
struct RelayProcess(Child);

impl RelayProcess {
    fn start(database_url: &str) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_keel"))
            .args(["relay", "--name", "failover"])
            .env("KEEL_DATABASE_URL", database_url)
            .env("KEEL_BUS_URL", amqp_url())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start keel relay");
        Self(child)
    }

    fn sigkill(&mut self) {
        self.0.kill().expect("SIGKILL");
        self.0.wait().expect("reap");
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_active_relay_loses_nothing() {
    let database_url = keel_testkit::postgres::fresh_database("failover").await;
    let log = Arc::new(PgEventLog::connect(&database_url, PgOptions::default()).await.unwrap());
    // The stream category is the topic: unique per run.
    let topic = format!("fo{}", &unique()[20..]);
    let bus = AmqpBus::connect(&amqp_url(), AmqpConfig::default()).await.unwrap();
    // The group's queue must exist before the relay publishes (mandatory publishing).
    let mut subscription = bus.subscribe(SubscriptionSpec::new(&topic, "failover")).await.unwrap();

    let appender = {
        let log = log.clone();
        let topic = topic.clone();
        tokio::spawn(async move {
            for version in 1..=PER_STREAM {
                for stream in 0..STREAMS {
                    let stream_id = StreamId::new(format!("{topic}-{stream}")).unwrap();
                    let event = CloudEvent::builder("failover.tick", "/tests/failover")
                        .json_data(&serde_json::json!({ "version": version }))
                        .unwrap()
                        .subject(stream_id.as_str())
                        .build()
                        .unwrap();
                    log.append(&stream_id, ExpectedVersion::Any, &[event]).await.unwrap();
                }
                if version % 25 == 0 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        })
    };

    let mut first = RelayProcess::start(&database_url);
    let total = STREAMS * PER_STREAM;
    let mut seen = HashSet::new();
    let mut next_version: HashMap<String, u64> = HashMap::new();
    let mut second = None;
    let deadline = Instant::now() + Duration::from_secs(90);
    while seen.len() < total {
        assert!(Instant::now() < deadline, "only {} of {total} events arrived", seen.len());
        let Ok(Some(delivery)) =
            tokio::time::timeout(Duration::from_secs(5), subscription.next()).await
        else {
            continue;
        };
        let delivery = delivery.unwrap();
        let event = delivery.event().expect("a decodable event").clone();
        delivery.ack().await.unwrap();
        if !seen.insert(event.id().to_owned()) {
            continue; // a redelivery after the failover
        }
        let stream = event.subject().unwrap().to_owned();
        let version = event.stream_version().expect("stream version").0;
        let expected = next_version.entry(stream.clone()).or_insert(1);
        assert_eq!(version, *expected, "{stream}: version {version} arrived first out of order");
        *expected += 1;

        if seen.len() == total / 4 && second.is_none() {
            second = Some(RelayProcess::start(&database_url));
            // Let the standby start and stand by; the first still holds the lease.
            tokio::time::sleep(Duration::from_millis(500)).await;
            first.sigkill();
        }
    }
    assert!(second.is_some(), "the failover never happened");
    appender.await.unwrap();
    assert_eq!(seen.len(), total);
    assert!(next_version.values().all(|next| *next == PER_STREAM as u64 + 1));
}
