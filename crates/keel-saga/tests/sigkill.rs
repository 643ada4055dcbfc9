//! SIGKILL around due times with a saga (issue 16): saga processes
//! (tests/bin/testd.rs: the shipping saga on the log bus and the timer dispatcher) are
//! killed and restarted while the orders' expiries come due; every order expires and is
//! refunded exactly once (timer once, inbox once, state once), on SQLite and on
//! PostgreSQL.
#![cfg(feature = "integration")]
#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use chrono::Utc;
use common::{Input, Shipping, TOPIC, paid, placed};
use keel_core::{CloudEvent, ExpectedVersion, StreamId};
use keel_saga::Saga as _;
use keel_sql::{Db, args};
use keel_testkit::util::{PATIENCE, unique};

const ORDERS: usize = 60;

/// A saga process; SIGKILLed when dropped.
struct Process(Child);

impl Process {
    fn start(url: &str, group: &str) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_keel-saga-testd"))
            .env("KEEL_DATABASE_URL", url)
            .env("KEEL_TEST_GROUP", group)
            .env("RUST_LOG", "off")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the saga process");
        Self(child)
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

async fn run(url: String, db: Db) {
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
    let deadline = tokio::time::Instant::now() + PATIENCE * 3;
    let mut kills = 0;
    while count(&db, finished).await < i64::try_from(ORDERS).unwrap() {
        assert!(tokio::time::Instant::now() < deadline, "orders still unfinished");
        let mut a = Process::start(&url, &group);
        let mut b = Process::start(&url, &group);
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
    run(url, db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_postgres() {
    let url = keel_testkit::postgres::fresh_database("saga_kill").await;
    let db = Db::connect(&url).await.unwrap();
    run(url, db).await;
}
