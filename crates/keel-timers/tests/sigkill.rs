//! SIGKILL around due times: dispatcher processes (tests/bin/testd.rs) are killed and
//! restarted while timers come due; every timer's message is in the log exactly once,
//! on SQLite and on PostgreSQL.
#![cfg(feature = "integration")]
#![allow(clippy::unwrap_used)]

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use chrono::Utc;
use keel_core::{CloudEvent, StreamId};
use keel_sql::{Db, args};
use keel_testkit::util::{PATIENCE, unique};
use keel_timers::{DEFAULT_DISPATCHER, Timer, TimersExt};

const TIMERS: u64 = 400;

/// A dispatcher process; SIGKILLed when dropped.
struct Process(Child);

impl Process {
    fn start(url: &str) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_keel-timers-testd"))
            .env("KEEL_DATABASE_URL", url)
            .env("RUST_LOG", "off")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the dispatcher process");
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

async fn run(url: String, db: Db) {
    let start = Utc::now() + chrono::Duration::milliseconds(500);
    for n in 0..TIMERS {
        // Due over about four seconds.
        let due = start + chrono::Duration::milliseconds(i64::try_from(n * 10).unwrap());
        let event = CloudEvent::builder("test.killed_timer", "/sigkill")
            .json_data(&serde_json::json!({ "n": n }))
            .unwrap()
            .build()
            .unwrap();
        db.schedule(&Timer::at(format!("k{n}"), due, event)).await.unwrap();
    }
    let deadline = tokio::time::Instant::now() + PATIENCE * 3;
    let mut kills = 0;
    while db.pending_timers(DEFAULT_DISPATCHER).await.unwrap() > 0 {
        assert!(tokio::time::Instant::now() < deadline, "timers still pending");
        // Two processes racing for the lease; each is killed at a random point, the
        // active one mid-work (its lease then has to expire, or on PostgreSQL its
        // connection to close, before the other can go on).
        let mut a = Process::start(&url);
        let mut b = Process::start(&url);
        let wait = 50 + fastrand_ms();
        tokio::time::sleep(Duration::from_millis(wait)).await;
        a.sigkill();
        kills += 1;
        tokio::time::sleep(Duration::from_millis(wait)).await;
        b.sigkill();
        kills += 1;
    }
    eprintln!("{kills} SIGKILLs while {TIMERS} timers came due");
    for n in 0..TIMERS {
        let events = db.read_stream(&StreamId::new(format!("timer-k{n}")).unwrap()).await.unwrap();
        assert_eq!(events.len(), 1, "timer k{n} fired {} times", events.len());
    }
    let total: Option<(i64,)> = db
        .fetch_optional(
            "SELECT CAST(COUNT(*) AS BIGINT) FROM keel_events WHERE event_type = $1",
            args!["test.killed_timer"],
        )
        .await
        .unwrap();
    assert_eq!(total, Some((i64::try_from(TIMERS).unwrap(),)));
}

/// 0..400 ms, different each round so kills land at different points of a page.
fn fastrand_ms() -> u64 {
    u64::from(uuid::Uuid::now_v7().as_bytes()[15]) * 400 / 255
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_sqlite() {
    let dir = std::env::temp_dir().join(unique("keel-timers-kill"));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}", dir.join("keel.db").display());
    let db = Db::connect(&url).await.unwrap();
    run(url, db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_postgres() {
    let url = keel_testkit::postgres::fresh_database("timers_kill").await;
    let db = Db::connect(&url).await.unwrap();
    run(url, db).await;
}
