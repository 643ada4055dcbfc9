//! Timers due within a window: lateness after the due time (p50/p99/max, as the
//! dispatcher's `keel_timer_lateness_seconds` histogram records it), the dispatch rate
//! of a backlog that is all due at once, and beside them a replay of the same number
//! of events from the log (`EventLog::replay`), in the same run on the same store.
//!
//! `KEEL_BENCH_TIMERS` (default 100000) timers, due evenly over
//! `KEEL_BENCH_SPREAD_SECS` (default 60) seconds, the first `KEEL_BENCH_LEAD_SECS`
//! (default 1) after the start, scheduled in transactions of 1000 while the
//! dispatcher runs; then as many again all due at once. The store is a fresh SQLite
//! file unless `KEEL_BENCH_DATABASE_URL` names one (postgres://...).
//!
//! `cargo bench -p keel-timers --all-features --bench timers`
#![allow(clippy::unwrap_used, clippy::cast_precision_loss)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::TryStreamExt as _;
use keel_core::CloudEvent;
use keel_sql::Db;
use keel_store::LogQuery;
use keel_timers::{DEFAULT_DISPATCHER, Dispatcher, Timer, TimersExt, schedule_in};
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};

/// Keeps every value recorded to `keel_timer_lateness_seconds`.
#[derive(Debug, Default)]
struct Lateness(Arc<Mutex<Vec<f64>>>);

#[derive(Debug)]
struct Samples(Arc<Mutex<Vec<f64>>>);

impl metrics::HistogramFn for Samples {
    fn record(&self, value: f64) {
        self.0.lock().unwrap().push(value);
    }
}

impl Recorder for Lateness {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
        Counter::noop()
    }
    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        if key.name() == "keel_timer_lateness_seconds" {
            Histogram::from_arc(Arc::new(Samples(self.0.clone())))
        } else {
            Histogram::noop()
        }
    }
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The value at `permille`/1000 of the sorted samples (nearest rank).
fn percentile(sorted: &[f64], permille: usize) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[(sorted.len() - 1) * permille / 1000]
}

fn summary(samples: &Mutex<Vec<f64>>) -> String {
    let mut values = std::mem::take(&mut *samples.lock().unwrap());
    values.sort_by(f64::total_cmp);
    format!(
        "n={} p50={:.1} ms p99={:.1} ms max={:.1} ms",
        values.len(),
        percentile(&values, 500) * 1e3,
        percentile(&values, 990) * 1e3,
        values.last().copied().unwrap_or(f64::NAN) * 1e3,
    )
}

fn message(n: u64) -> CloudEvent {
    CloudEvent::builder("bench.timer_fired", "/bench")
        .json_data(&serde_json::json!({ "n": n, "payload": "a small timeout message" }))
        .unwrap()
        .build()
        .unwrap()
}

async fn wait_drained(db: &Db) {
    while db.pending_timers(DEFAULT_DISPATCHER).await.unwrap() > 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let samples = Arc::new(Mutex::new(Vec::new()));
    metrics::set_global_recorder(Lateness(samples.clone())).unwrap();
    let n = env_or("KEEL_BENCH_TIMERS", 100_000);
    let spread = Duration::from_secs(env_or("KEEL_BENCH_SPREAD_SECS", 60));
    let url = std::env::var("KEEL_BENCH_DATABASE_URL").unwrap_or_else(|_| {
        let dir = std::env::temp_dir().join(format!("keel-timers-bench-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        format!("sqlite://{}", dir.join("keel.db").display())
    });
    let store = url.split(':').next().unwrap_or("?").to_owned();
    let db = Db::connect(&url).await.unwrap();
    println!("keel-timers bench: {n} timers, {store}");

    // 1. Due evenly over the spread, scheduled while the dispatcher runs.
    let dispatcher = Arc::new(Dispatcher::new(db.clone()));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = dispatcher.clone();
    let task = tokio::spawn(async move {
        running
            .run(async move {
                let _ = stopped.await;
            })
            .await
    });
    // The first is due this long after scheduling starts (`KEEL_BENCH_LEAD_SECS`,
    // default 1): scheduling then overlaps the dispatching, as in a live system.
    let lead = i64::try_from(env_or("KEEL_BENCH_LEAD_SECS", 1)).unwrap_or(1);
    let first_due = Utc::now() + chrono::Duration::seconds(lead);
    let spread_micros = spread.as_micros();
    let scheduling = Instant::now();
    for batch in (0..n).collect::<Vec<_>>().chunks(1000) {
        let mut tx = db.begin().await.unwrap();
        for &i in batch {
            let offset = i64::try_from(u128::from(i) * spread_micros / u128::from(n)).unwrap();
            let due = first_due + chrono::Duration::microseconds(offset);
            schedule_in(&mut tx, &Timer::at(format!("spread-{i}"), due, message(i))).await.unwrap();
        }
        tx.commit().await.unwrap();
    }
    let scheduled_in = scheduling.elapsed();
    wait_drained(&db).await;
    let spread_done = Utc::now();
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
    println!(
        "scheduling:      {n} timers in {:.2} s = {:.0} timers/s (transactions of 1000)",
        scheduled_in.as_secs_f64(),
        n as f64 / scheduled_in.as_secs_f64()
    );
    println!(
        "due over {:>3} s:  lateness {} (last fired {:.2} s after the first was due)",
        spread.as_secs(),
        summary(&samples),
        (spread_done - first_due).as_seconds_f64()
    );

    // 2. A backlog all due at once: how fast the dispatcher drains it.
    let past = Utc::now() - chrono::Duration::seconds(1);
    for batch in (0..n).collect::<Vec<_>>().chunks(1000) {
        let mut tx = db.begin().await.unwrap();
        for &i in batch {
            schedule_in(&mut tx, &Timer::at(format!("backlog-{i}"), past, message(i)))
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
    }
    let draining = Instant::now();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = dispatcher.clone();
    let task = tokio::spawn(async move {
        running
            .run(async move {
                let _ = stopped.await;
            })
            .await
    });
    wait_drained(&db).await;
    let drained_in = draining.elapsed();
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
    let _ = summary(&samples);
    println!(
        "all due at once: {n} timers dispatched in {:.2} s = {:.0} timers/s",
        drained_in.as_secs_f64(),
        n as f64 / drained_in.as_secs_f64()
    );

    // 3. Replaying as many events from the log.
    let log = db.log();
    let replaying = Instant::now();
    let mut replayed = 0u64;
    let mut pages = log.replay(LogQuery { limit: 1000, ..LogQuery::default() });
    while let Some(page) = pages.try_next().await.unwrap() {
        replayed += page.len() as u64;
        if replayed >= n {
            break;
        }
    }
    let replayed_in = replaying.elapsed();
    println!(
        "replay:          {replayed} events read in {:.2} s = {:.0} events/s",
        replayed_in.as_secs_f64(),
        replayed as f64 / replayed_in.as_secs_f64()
    );
}
