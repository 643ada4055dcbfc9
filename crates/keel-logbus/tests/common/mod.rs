//! Test helpers: SQLite databases in temporary directories, fresh PostgreSQL databases
//! (`keel_testkit::postgres`), and conformance factories over them.

#![allow(dead_code, unreachable_pub)]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use keel_core::{Bus, BusError, CloudEvent, Delivery, Subscription};
use keel_logbus::{BusStore, LogBus, LogBusOptions};
use keel_postgres::{PgEventLog, PgOptions};
use keel_sqlite::SqliteEventLog;
use keel_store::SqlEventLog;
use keel_testkit::bus::BusFactory;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::sync::OnceCell;

/// How long a test waits for a delivery.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// The subscription's next delivery, within [`PATIENCE`].
pub async fn next(sub: &mut Box<dyn Subscription>) -> Delivery {
    tokio::time::timeout(PATIENCE, sub.next())
        .await
        .expect("a delivery in time")
        .expect("the subscription is open")
        .expect("a delivery, not an error")
}

/// The id of a delivery's event.
pub fn id_of(delivery: &Delivery) -> String {
    delivery.event().expect("a decoded event").id().to_owned()
}

/// This test binary's Prometheus recorder, installed on first use.
pub fn recorder() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| PrometheusBuilder::new().install_recorder().expect("a recorder"))
}

/// The sum of the counter `name`'s series whose labels include each of `labels`
/// (`key="value"`).
pub fn counter(name: &str, labels: &[&str]) -> u64 {
    recorder()
        .render()
        .lines()
        .filter(|line| line.split([' ', '{']).next() == Some(name))
        .filter(|line| labels.iter().all(|label| line.contains(label)))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// An event whose data is `n`.
pub fn numbered(n: u64) -> CloudEvent {
    CloudEvent::builder("test.numbered", "/keel-logbus/tests")
        .json_data(&n)
        .expect("a number is JSON")
        .build()
        .expect("a valid event")
}

/// Options that make takeovers quick in tests.
pub fn options() -> LogBusOptions {
    let mut options = LogBusOptions::default();
    options.lease_poll = Duration::from_millis(50);
    options.poll_interval = Duration::from_millis(200);
    options
}

pub async fn bus_over<L: BusStore>(log: Arc<L>) -> LogBus<L> {
    LogBus::open(log, options()).await.expect("open the log bus")
}

/// A SQLite database file in a directory of its own.
pub struct SqliteDb {
    pub dir: tempfile::TempDir,
}

impl SqliteDb {
    pub fn new() -> Self {
        Self { dir: tempfile::tempdir().expect("a temporary directory") }
    }

    pub fn url(&self) -> String {
        format!("sqlite://{}", self.dir.path().join("keel.db").display())
    }

    pub async fn log(&self) -> Arc<SqliteEventLog> {
        Arc::new(SqliteEventLog::connect(&self.url()).await.expect("open SQLite"))
    }
}

/// Creates an empty PostgreSQL database and returns its URL.
pub async fn fresh_database() -> String {
    keel_testkit::postgres::fresh_database("logbus").await
}

pub async fn pg_log(url: &str) -> Arc<PgEventLog> {
    let options = PgOptions { max_connections: 6, ..PgOptions::default() };
    Arc::new(PgEventLog::connect(url, options).await.expect("connect"))
}

/// Conformance on SQLite: every `bus()` is a new bus over one log in one file.
pub struct SqliteFactory {
    db: SqliteDb,
    log: OnceCell<Arc<SqliteEventLog>>,
}

impl SqliteFactory {
    pub fn new() -> Self {
        Self { db: SqliteDb::new(), log: OnceCell::new() }
    }

    async fn log(&self) -> Arc<SqliteEventLog> {
        self.log.get_or_init(|| self.db.log()).await.clone()
    }
}

/// A row no envelope can be built from (an extension name CloudEvents forbids), as a
/// foreign writer of the table could leave.
const BAD_EXTENSIONS: &str = r#"{"Not A Name": "x"}"#;

#[async_trait]
impl BusFactory for SqliteFactory {
    async fn bus(&self) -> Arc<dyn Bus> {
        Arc::new(bus_over(self.log().await).await)
    }

    async fn publish_raw(
        &self,
        topic: &str,
        content_type: &str,
        body: Bytes,
    ) -> Result<(), BusError> {
        let log = self.log().await;
        let now = chrono::Utc::now();
        sqlx::query(
            "INSERT INTO keel_events (stream_id, stream_version, event_id, topic, event_type,
                 source, time, time_micros, datacontenttype, data, extensions)
             VALUES (?, 1, ?, ?, 'foreign.message', '/foreign', ?, ?, ?, ?, ?)",
        )
        .bind(format!("foreign-{}", uuid::Uuid::now_v7().simple()))
        .bind(uuid::Uuid::now_v7().to_string())
        .bind(topic)
        .bind(now.to_rfc3339())
        .bind(now.timestamp_micros())
        .bind(content_type)
        .bind(body.to_vec())
        .bind(BAD_EXTENSIONS)
        .execute(log.pool())
        .await
        .expect("insert a foreign row");
        log.notify_appended();
        Ok(())
    }
}

/// Conformance on PostgreSQL: a fresh database per test.
pub struct PgFactory {
    log: OnceCell<Arc<PgEventLog>>,
}

impl PgFactory {
    pub fn new() -> Self {
        Self { log: OnceCell::new() }
    }

    async fn log(&self) -> Arc<PgEventLog> {
        self.log.get_or_init(|| async { pg_log(&fresh_database().await).await }).await.clone()
    }
}

#[async_trait]
impl BusFactory for PgFactory {
    async fn bus(&self) -> Arc<dyn Bus> {
        Arc::new(bus_over(self.log().await).await)
    }

    async fn publish_raw(
        &self,
        topic: &str,
        content_type: &str,
        body: Bytes,
    ) -> Result<(), BusError> {
        let log = self.log().await;
        sqlx::query(
            "INSERT INTO keel_events (epoch, transaction_id, stream_id, stream_version, event_id,
                 topic, event_type, source, time, datacontenttype, data, extensions)
             VALUES (keel_epoch(), pg_current_xact_id()::text::bigint, $1, 1, $2, $3,
                 'foreign.message', '/foreign', now(), $4, $5, $6::json)",
        )
        .bind(format!("foreign-{}", uuid::Uuid::now_v7().simple()))
        .bind(uuid::Uuid::now_v7().to_string())
        .bind(topic)
        .bind(content_type)
        .bind(body.to_vec())
        .bind(BAD_EXTENSIONS)
        .execute(log.pool())
        .await
        .expect("insert a foreign row");
        log.notify_appended();
        Ok(())
    }
}
