//! `keel timers list|cancel` and the timers in `keel status`, against timers scheduled
//! with the library (keel-timers) and no dispatcher running, so they stay put: SQLite
//! always, PostgreSQL with the `integration` feature.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use chrono::{DateTime, Duration, DurationRound as _, TimeDelta, Utc};
use keel_core::{CloudEvent, StreamId};
use keel_sql::Db;
use keel_timers::{Timer, TimersExt as _};
use serde_json::Value;

/// `keel` in `dir` on `database_url`, with no bus.
struct Keel {
    dir: PathBuf,
    database_url: String,
}

impl Keel {
    fn new(database_url: Option<String>) -> Self {
        let dir = std::env::temp_dir().join(format!("keel-timers-cli-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        let database_url =
            database_url.unwrap_or_else(|| format!("sqlite://{}/keel.db", dir.display()));
        Self { dir, database_url }
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_keel"))
            .args(args)
            .current_dir(&self.dir)
            .env("KEEL_DATABASE_URL", &self.database_url)
            .env_remove("KEEL_BUS_URL")
            .env_remove("KEEL_NAMESPACE")
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(
            output.status.success(),
            "keel {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        serde_json::from_str(self.ok(&all).trim()).unwrap()
    }

    /// Runs `args`, which must fail, and returns its stderr.
    fn fails(&self, args: &[&str]) -> String {
        let output = self.run(args);
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(!output.status.success(), "keel {args:?} succeeded: {stderr}");
        stderr
    }

    /// The keys `keel timers list ARGS --json` prints, in order.
    fn keys(&self, args: &[&str]) -> Vec<String> {
        let mut all = vec!["timers", "list"];
        all.extend_from_slice(args);
        let listed = self.json(&all);
        listed["timers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["key"].as_str().unwrap().to_owned())
            .collect()
    }
}

fn event(ty: &str) -> CloudEvent {
    CloudEvent::builder(ty, "/tests/timers-cli").build().unwrap()
}

fn parse(value: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(value.as_str().unwrap()).unwrap().with_timezone(&Utc)
}

async fn exercise(keel: &Keel) {
    let db = Db::connect(&keel.database_url).await.unwrap();
    // Stored to the microsecond.
    let now = Utc::now().duration_trunc(TimeDelta::microseconds(1)).unwrap();
    let overdue = now - Duration::seconds(30);
    let later = now + Duration::hours(1);
    let latest = now + Duration::hours(2);
    let reminder = CloudEvent::builder("shop.reminder", "/tests/timers-cli")
        .extension("topic", "shop")
        .build()
        .unwrap();
    db.schedule(&Timer::at("a-overdue", overdue, reminder)).await.unwrap();
    let invoice = StreamId::new("invoice-7").unwrap();
    let bill = Timer::at("b-later", later, event("bill.due")).stream(invoice).dispatcher("billing");
    db.schedule(&bill).await.unwrap();
    db.schedule(&Timer::at("c-latest", latest, event("shop.expired"))).await.unwrap();

    // Everything, the soonest first, with what each will publish.
    let listed = keel.json(&["timers", "list"]);
    let timers = listed["timers"].as_array().unwrap();
    assert_eq!(timers.len(), 3, "{listed}");
    let (a, b, c) = (&timers[0], &timers[1], &timers[2]);
    assert_eq!(a["key"], "a-overdue");
    assert_eq!(a["dispatcher"], "default");
    assert_eq!(parse(&a["due_at"]), overdue);
    assert_eq!(a["type"], "shop.reminder");
    assert_eq!(a["topic"], "shop", "the event's topic extension");
    assert_eq!(a["stream"], "timer-a-overdue", "the timer's own stream");
    assert!(a["late_ms"].as_i64().unwrap() >= 30_000, "{a}");
    assert_eq!(b["key"], "b-later");
    assert_eq!(b["dispatcher"], "billing");
    assert_eq!(parse(&b["due_at"]), later);
    assert_eq!(b["type"], "bill.due");
    assert_eq!((&b["stream"], &b["topic"]), (&"invoice-7".into(), &"invoice".into()));
    assert!(b["late_ms"].is_null(), "not due yet: {b}");
    assert!(b["failed"].is_null(), "{b}");
    assert_eq!((&c["key"], &c["topic"]), (&"c-latest".into(), &"timer".into()));

    // Filters.
    assert_eq!(keel.keys(&["--dispatcher", "billing"]), ["b-later"]);
    assert_eq!(keel.keys(&["--dispatcher", "nobody"]), Vec::<String>::new());
    let before = (now + Duration::minutes(90)).to_rfc3339();
    assert_eq!(keel.keys(&["--due-before", &before]), ["a-overdue", "b-later"]);
    assert_eq!(keel.keys(&["--limit", "1"]), ["a-overdue"]);
    let text = keel.ok(&["timers", "list", "--limit", "2"]);
    assert!(text.contains("a-overdue") && text.contains("late"), "{text}");
    assert!(text.contains("--limit shows more"), "{text}");
    let text = keel.ok(&["timers", "list", "--dispatcher", "billing"]);
    assert!(text.contains("bill.due") && text.contains("invoice-7"), "{text}");

    // The status: how many are pending, how late the oldest overdue one is.
    let status = keel.json(&["status"]);
    assert_eq!(status["timers"]["pending"], 3, "{status}");
    assert_eq!(status["timers"]["failed"], 0, "{status}");
    assert_eq!(parse(&status["timers"]["oldest_overdue"]), overdue, "{status}");
    assert!(status["timers"]["oldest_overdue_late_ms"].as_i64().unwrap() >= 30_000, "{status}");
    let text = keel.ok(&["status"]);
    assert!(text.contains("timers 3 pending, the oldest overdue due"), "{text}");

    // Cancel by key, within a dispatcher name.
    let cancelled = keel.json(&["timers", "cancel", "c-latest"]);
    assert_eq!(cancelled["cancelled"], "c-latest", "{cancelled}");
    assert_eq!(keel.keys(&[]), ["a-overdue", "b-later"]);
    let stderr = keel.fails(&["timers", "cancel", "c-latest"]);
    assert!(stderr.contains("no timer `c-latest` of dispatcher `default`"), "{stderr}");
    let stderr = keel.fails(&["timers", "cancel", "b-later"]);
    assert!(stderr.contains("no timer `b-later`"), "another dispatcher's: {stderr}");
    keel.ok(&["timers", "cancel", "b-later", "--dispatcher", "billing"]);
    assert_eq!(keel.keys(&[]), ["a-overdue"]);
    assert_eq!(db.pending_timers("billing").await.unwrap(), 0);

    keel.ok(&["timers", "cancel", "a-overdue"]);
    assert_eq!(keel.ok(&["timers", "list"]).trim(), "no pending timers");
    let status = keel.json(&["status"]);
    assert_eq!(status["timers"]["pending"], 0, "{status}");
    assert!(status["timers"]["oldest_overdue"].is_null(), "{status}");
    assert!(keel.ok(&["status"]).contains("timers 0 pending\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timers_list_cancel_and_status_on_sqlite() {
    exercise(&Keel::new(None)).await;
}

#[cfg(feature = "integration")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timers_list_cancel_and_status_on_postgres() {
    let url = keel_testkit::postgres::fresh_database("timers_cli").await;
    exercise(&Keel::new(Some(url))).await;
}

#[test]
fn bad_arguments_are_refused_with_a_clear_message() {
    let keel = Keel::new(None);
    keel.ok(&["migrate"]);
    for (args, expected) in [
        (&["timers", "list", "--due-before", "tomorrow"][..], "not an RFC 3339 time"),
        (&["timers", "list", "--limit", "0"], "--limit must be at least 1"),
        (&["timers", "list", "--limit", "many"], "invalid value"),
        (&["timers", "cancel"], "KEY"),
        (&["timers", "cancel", "nothing-here"], "no timer `nothing-here`"),
    ] {
        let stderr = keel.fails(args);
        assert!(stderr.contains(expected), "keel {args:?}: {stderr}");
    }
}

#[test]
fn timers_list_refuses_a_database_that_does_not_exist() {
    let keel = Keel::new(None);
    let output = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["timers", "list"])
        .current_dir(&keel.dir)
        .env_remove("KEEL_DATABASE_URL")
        .env_remove("KEEL_BUS_URL")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "succeeded on no database: {stderr}");
    assert!(stderr.contains("no database at"), "{stderr}");
    assert!(!Path::new(&keel.dir).join("keel-data").exists(), "it created the database");
}
