//! A saga process for the SIGKILL test (tests/sigkill.rs): runs the example shipping
//! saga (tests/common) as consumer group `KEEL_TEST_GROUP` with the default timer
//! dispatcher, until killed. On SQLite the store's leases (dispatcher, relay) expire
//! after 1 s.
//!
//! The saga consumes from the log bus of `KEEL_DATABASE_URL`, or, when
//! `KEEL_BUS_URL` is set (`amqp://`, `kafka://`), from that broker within namespace
//! `KEEL_TEST_NAMESPACE` (so runs never see each other's topics); then this process
//! also runs relay `KEEL_TEST_RELAY`, which moves the log to the broker (one active
//! across the processes, by the store's lease), so a kill hits it too.

#![allow(missing_docs)]

#[path = "../common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::Duration;

use keel_core::{Bus, Namespace, NamespacedBus};
use keel_saga::SagaRunner;
use keel_sql::Db;
use keel_store::{Relay, RelayOptions, SubscribeOptions};
use keel_timers::{Dispatcher, DispatcherOptions};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("KEEL_DATABASE_URL")?;
    let group = std::env::var("KEEL_TEST_GROUP")?;
    let db = if url.starts_with("sqlite:") {
        Db::Sqlite(
            keel_sqlite::SqliteEventLog::connect(&url)
                .await?
                .with_lease_ttl(Duration::from_millis(1000)),
        )
    } else {
        Db::connect(&url).await?
    };
    let broker = match std::env::var("KEEL_BUS_URL") {
        Ok(bus_url) => {
            let namespace = Namespace::new(&std::env::var("KEEL_TEST_NAMESPACE")?)?;
            let relay = std::env::var("KEEL_TEST_RELAY")?;
            Some((NamespacedBus::wrap(open_broker(&bus_url).await?, &namespace), relay))
        }
        Err(_) => None,
    };
    let bus: Arc<dyn Bus> = match (&broker, &db) {
        (Some((broker, _)), _) => broker.clone(),
        (None, Db::Sqlite(log)) => Arc::new(keel_logbus::open(Arc::new(log.clone())).await?),
        (None, Db::Postgres(log)) => Arc::new(keel_logbus::open(Arc::new(log.clone())).await?),
    };
    let _consumers = SagaRunner::<common::Shipping>::new().start(&db, bus, &group, 4).await?;
    // After the consumers have subscribed: RabbitMQ keeps nothing for a group that
    // does not exist yet.
    let _relay = broker.map(|(broker, name)| {
        let options = RelayOptions {
            batch_size: 16,
            standby_poll: Duration::from_millis(50),
            max_backoff: Duration::from_millis(200),
            subscribe: SubscribeOptions {
                poll_interval: Duration::from_millis(20),
                ..SubscribeOptions::default()
            },
        };
        let relay = Relay::new(db.log(), broker, name).options(options);
        tokio::spawn(async move {
            if let Err(error) = relay.run(std::future::pending()).await {
                eprintln!("the relay failed: {error}");
                std::process::exit(1);
            }
        })
    });
    let options = DispatcherOptions { page_size: 20, poll_interval: Duration::from_millis(100) };
    Dispatcher::new(db).options(options).run(std::future::pending()).await?;
    Ok(())
}

async fn open_broker(url: &str) -> Result<Arc<dyn Bus>, Box<dyn std::error::Error>> {
    if url.starts_with("amqp://") {
        Ok(Arc::new(keel_amqp::AmqpBus::connect(url, keel_amqp::AmqpConfig::default()).await?))
    } else if url.starts_with("kafka://") {
        Ok(Arc::new(keel_kafka::KafkaBus::connect_checked(url).await?))
    } else {
        Err(format!("KEEL_BUS_URL `{url}`: neither amqp:// nor kafka://").into())
    }
}
