//! SIGKILL around due times with a saga (issue 16): saga processes
//! (tests/bin/testd.rs: the shipping saga and the timer dispatcher) are killed and
//! restarted while the orders' expiries come due; every order expires and is refunded
//! exactly once (timer once, inbox once, state once), nothing is dead-lettered and no
//! timer is left: on SQLite and PostgreSQL with the log as the bus, and on PostgreSQL
//! with the saga consuming from RabbitMQ and from Kafka (Tansu), the killed processes
//! also running the relay that moves the log to the broker.
#![cfg(feature = "integration")]
#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use common::{Input, Shipping, TOPIC, paid, placed};
use keel_core::{Bus, CloudEvent, ExpectedVersion, Namespace, NamespacedBus, StreamId};
use keel_saga::Saga as _;
use keel_sql::{Db, args};
use keel_testkit::util::{PATIENCE, unique};
use tokio::time::Instant;

const ORDERS: usize = 60;

/// The bus the saga consumes from.
#[derive(Debug, Clone)]
struct Backend {
    /// The broker's URL; `None`: the log itself.
    broker: Option<String>,
    /// The namespace of this run's topics and groups on the broker.
    namespace: String,
    /// The relay's name.
    relay: String,
    /// How long the processes are killed and restarted; after that the last pair
    /// stays up until every order is finished. Kafka needs this: a killed member keeps
    /// its partitions for the session timeout (10 s on Tansu) and every restart is a
    /// rebalance, so a group killed every second could never settle.
    kill_for: Duration,
}

impl Backend {
    fn log() -> Self {
        Self::with(None, PATIENCE * 3)
    }

    fn with(broker: Option<String>, kill_for: Duration) -> Self {
        let id = &uuid::Uuid::now_v7().simple().to_string()[18..];
        Self { broker, namespace: format!("kill{id}"), relay: format!("relay-{id}"), kill_for }
    }

    /// The bus as the saga processes see it.
    async fn open(&self, db: &Db) -> Arc<dyn Bus> {
        let Some(url) = &self.broker else {
            return match db {
                Db::Sqlite(log) => {
                    Arc::new(keel_logbus::open(Arc::new(log.clone())).await.unwrap())
                }
                Db::Postgres(log) => {
                    Arc::new(keel_logbus::open(Arc::new(log.clone())).await.unwrap())
                }
            };
        };
        let broker: Arc<dyn Bus> = if url.starts_with("amqp://") {
            Arc::new(
                keel_amqp::AmqpBus::connect(url, keel_amqp::AmqpConfig::default()).await.unwrap(),
            )
        } else {
            Arc::new(keel_kafka::KafkaBus::connect_checked(url).await.unwrap())
        };
        NamespacedBus::wrap(broker, &Namespace::new(&self.namespace).unwrap())
    }
}

/// A saga process; SIGKILLed when dropped.
struct Process(Child);

impl Process {
    fn start(url: &str, group: &str, backend: &Backend) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_keel-saga-testd"));
        command
            .env("KEEL_DATABASE_URL", url)
            .env("KEEL_TEST_GROUP", group)
            .env("RUST_LOG", "off")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(broker) = &backend.broker {
            command
                .env("KEEL_BUS_URL", broker)
                .env("KEEL_TEST_NAMESPACE", &backend.namespace)
                .env("KEEL_TEST_RELAY", &backend.relay);
        }
        Self(command.spawn().expect("start the saga process"))
    }

    fn sigkill(&mut self) {
        let _ = self.0.kill(); // SIGKILL on Unix
        let _ = self.0.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.sigkill();
    }
}

async fn append(db: &Db, input: &Input) {
    let stream = StreamId::new(format!("{TOPIC}-{}", Shipping::correlation_id(input))).unwrap();
    let event = CloudEvent::from_event(input, "/sigkill").unwrap().build().unwrap();
    let mut tx = db.begin().await.unwrap();
    tx.append(&stream, ExpectedVersion::Any, &[event]).await.unwrap();
    tx.commit().await.unwrap();
}

async fn count(db: &Db, sql: &str) -> i64 {
    let row: Option<(i64,)> = db.fetch_optional(sql, args![]).await.unwrap();
    row.map_or(0, |(n,)| n)
}

async fn run(url: String, db: Db, backend: Backend) {
    let group = unique("shipping");
    let start = Utc::now() + chrono::Duration::milliseconds(500);
    let orders: Vec<String> = (0..ORDERS).map(|n| format!("{}-{n}", unique("o"))).collect();
    for (n, order) in orders.iter().enumerate() {
        // Paid, never picked: each expires (over about three seconds) and is refunded.
        let due = start + chrono::Duration::milliseconds(i64::try_from(n * 50).unwrap());
        append(&db, &placed(order, due)).await;
        append(&db, &paid(order)).await;
    }
    let finished =
        "SELECT CAST(COUNT(*) AS BIGINT) FROM keel_sagas WHERE saga = 'shipping' AND finished = 1";
    let began = Instant::now();
    let deadline = began + PATIENCE * 3;
    let mut kills = 0;
    let mut survivors = Vec::new();
    while count(&db, finished).await < i64::try_from(ORDERS).unwrap() {
        assert!(Instant::now() < deadline, "orders still unfinished");
        if began.elapsed() >= backend.kill_for {
            if survivors.is_empty() {
                survivors.push(Process::start(&url, &group, &backend));
                survivors.push(Process::start(&url, &group, &backend));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        let mut a = Process::start(&url, &group, &backend);
        let mut b = Process::start(&url, &group, &backend);
        let wait = 300 + random_ms();
        tokio::time::sleep(Duration::from_millis(wait)).await;
        a.sigkill();
        kills += 1;
        tokio::time::sleep(Duration::from_millis(wait)).await;
        b.sigkill();
        kills += 1;
    }
    eprintln!("{kills} SIGKILLs while {ORDERS} orders expired");
    for order in &orders {
        let stream = StreamId::new(format!("shipping-{order}")).unwrap();
        let types: Vec<String> =
            db.read_stream(&stream).await.unwrap().iter().map(|e| e.ty().to_owned()).collect();
        assert_eq!(types, ["shop.refunded"], "order {order}");
        let timer = StreamId::new(format!("timer-saga:shipping:{order}:expiry")).unwrap();
        assert_eq!(
            db.read_stream(&timer).await.unwrap().len(),
            1,
            "order {order}'s expiry fired once"
        );
    }
    let pending = "SELECT CAST(COUNT(*) AS BIGINT) FROM keel_timers";
    assert_eq!(count(&db, pending).await, 0);
    let bus = backend.open(&db).await;
    let letters = bus.list(TOPIC, &group, 10).await.unwrap();
    assert!(letters.is_empty(), "dead letters: {letters:?}");
    let letters = db.log().relay_dead_letters(None, 10).await.unwrap();
    assert!(letters.is_empty(), "relay dead letters: {letters:?}");
    drop(survivors);
}

/// 0..700 ms, different each round so kills land at different points.
fn random_ms() -> u64 {
    u64::from(uuid::Uuid::now_v7().as_bytes()[15]) * 700 / 255
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_sqlite() {
    let dir = std::env::temp_dir().join(unique("keel-saga-kill"));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}", dir.join("keel.db").display());
    let db = Db::connect(&url).await.unwrap();
    run(url, db, Backend::log()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_postgres() {
    let url = keel_testkit::postgres::fresh_database("saga_kill").await;
    let db = Db::connect(&url).await.unwrap();
    run(url, db, Backend::log()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_postgres_rabbitmq() {
    let url = keel_testkit::postgres::fresh_database("saga_kill_amqp").await;
    let db = Db::connect(&url).await.unwrap();
    let amqp = std::env::var("KEEL_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    run(url, db, Backend::with(Some(amqp), PATIENCE * 3)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_postgres_kafka() {
    let url = keel_testkit::postgres::fresh_database("saga_kill_kafka").await;
    let db = Db::connect(&url).await.unwrap();
    let brokers =
        std::env::var("KEEL_TEST_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
    // Killed over the expiries' due times (0.5 s to 3.5 s from the start) and beyond.
    let kafka = format!("kafka://{brokers}?profile=tansu");
    run(url, db, Backend::with(Some(kafka), Duration::from_secs(8))).await;
}
