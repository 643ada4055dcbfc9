//! Keel's PostgreSQL log against raw SQL on the same server, side by side:
//!
//!   cargo bench -p keel-postgres --bench store
//!
//! (`KEEL_BENCH_DATABASE_URL`, default `postgres://postgres@127.0.0.1:5432/postgres`;
//! `KEEL_BENCH_ROUNDS`, default 3;
//! a scratch database is created and dropped.) The raw side writes the same columns
//! into a table with the same indexes (`LIKE keel_events INCLUDING ALL`), without the
//! stream head, the concurrency check or the notification. Replay compares
//! `EventLog::replay` (rows decoded into CloudEvents) with one raw `SELECT` of the same
//! columns decoded into tuples; paging compares `EventLog::read_after` (subscription
//! order, as the relay and the projections read) with keyset pages on `position`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use keel_core::{CloudEvent, ExpectedVersion, Position, StreamId};
use keel_postgres::{PgEventLog, PgOptions};
use keel_store::{Cursor, EventLog, LogFilter, LogQuery, SqlEventLog};
use sqlx::{Connection, PgPool};

const CLIENTS: usize = 8;
const SINGLE_PER_CLIENT: usize = 2_000;
const BATCH: usize = 100;
const BATCHES_PER_CLIENT: usize = 100;
const REPLAY_EVENTS: usize = 200_000;
/// Events per page in the paging row (the relay's default page).
const PAGE: usize = 5_000;

fn event(n: usize) -> CloudEvent {
    CloudEvent::builder("bench.order-placed", "/bench")
        .json_data(&serde_json::json!({
            "order_id": format!("order-{n}"), "user_id": "user-17", "total_cents": 12_345,
            "lines": [{"sku": "sku-1", "qty": 2}, {"sku": "sku-2", "qty": 1}]
        }))
        .expect("json")
        .partition_key(format!("order-{n}"))
        .build()
        .expect("valid")
}

fn row_values(n: usize) -> (String, String, Vec<u8>) {
    let e = event(n);
    (e.id().to_owned(), format!("order-{n}"), e.data().map(|d| d.to_vec()).unwrap_or_default())
}

const RAW_INSERT: &str = "INSERT INTO raw_events (epoch, transaction_id, stream_id, stream_version, event_id, topic,
    event_type, source, time, datacontenttype, dataschema, data, extensions)
    VALUES (0, pg_current_xact_id()::text::bigint, $1, $2, $3, 'order', 'bench.order-placed', '/bench', now(),
            'application/json', NULL, $4, '{\"partitionkey\":\"x\"}')";

async fn single_keel(log: &PgEventLog, run: &str) -> f64 {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for client in 0..CLIENTS {
        let log = log.clone();
        let run = run.to_owned();
        tasks.push(tokio::spawn(async move {
            for i in 0..SINGLE_PER_CLIENT {
                let n = client * 1_000_000 + i;
                let stream = StreamId::new(format!("order-{run}{client}-{i}")).expect("stream");
                log.append(&stream, ExpectedVersion::NoStream, &[event(n)]).await.expect("append");
            }
        }));
    }
    futures::future::join_all(tasks).await;
    (CLIENTS * SINGLE_PER_CLIENT) as f64 / started.elapsed().as_secs_f64()
}

async fn single_raw(pool: &PgPool, run: &str) -> f64 {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for client in 0..CLIENTS {
        let pool = pool.clone();
        let run = run.to_owned();
        tasks.push(tokio::spawn(async move {
            for i in 0..SINGLE_PER_CLIENT {
                let (id, _, data) = row_values(client * 1_000_000 + i);
                sqlx::query(RAW_INSERT)
                    .bind(format!("raw-{run}{client}-{i}"))
                    .bind(1_i64)
                    .bind(id)
                    .bind(data)
                    .execute(&pool)
                    .await
                    .expect("insert");
            }
        }));
    }
    futures::future::join_all(tasks).await;
    (CLIENTS * SINGLE_PER_CLIENT) as f64 / started.elapsed().as_secs_f64()
}

async fn batch_keel(log: &PgEventLog, run: &str) -> f64 {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for client in 0..CLIENTS {
        let log = log.clone();
        let run = run.to_owned();
        tasks.push(tokio::spawn(async move {
            for b in 0..BATCHES_PER_CLIENT {
                let events: Vec<CloudEvent> = (0..BATCH)
                    .map(|i| event(10_000_000 + client * 100_000 + b * BATCH + i))
                    .collect();
                let stream = StreamId::new(format!("batch-{run}{client}-{b}")).expect("stream");
                log.append(&stream, ExpectedVersion::NoStream, &events).await.expect("append");
            }
        }));
    }
    futures::future::join_all(tasks).await;
    (CLIENTS * BATCHES_PER_CLIENT * BATCH) as f64 / started.elapsed().as_secs_f64()
}

async fn batch_raw(pool: &PgPool, run: &str) -> f64 {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for client in 0..CLIENTS {
        let pool = pool.clone();
        let run = run.to_owned();
        tasks.push(tokio::spawn(async move {
            for b in 0..BATCHES_PER_CLIENT {
                let mut builder = sqlx::QueryBuilder::new(
                    "INSERT INTO raw_events (epoch, transaction_id, stream_id, stream_version, event_id, topic,
                     event_type, source, time, datacontenttype, dataschema, data, extensions) ",
                );
                builder.push_values(0..BATCH, |mut row, i| {
                    let (id, _, data) = row_values(10_000_000 + client * 100_000 + b * BATCH + i);
                    row.push("0, pg_current_xact_id()::text::bigint")
                        .push_bind(format!("rawbatch-{run}{client}-{b}"))
                        .push_bind(i64::try_from(i + 1).unwrap_or(0))
                        .push_bind(id)
                        .push("'order', 'bench.order-placed', '/bench', now(), 'application/json', NULL")
                        .push_bind(data)
                        .push("'{\"partitionkey\":\"x\"}'");
                });
                builder.build().execute(&pool).await.expect("insert");
            }
        }));
    }
    futures::future::join_all(tasks).await;
    (CLIENTS * BATCHES_PER_CLIENT * BATCH) as f64 / started.elapsed().as_secs_f64()
}

async fn replay_keel(log: &PgEventLog) -> (f64, usize) {
    let started = Instant::now();
    let query = LogQuery { from: Position::START, limit: 1000, ..LogQuery::default() };
    let mut batches = log.replay(query);
    let mut count = 0;
    while let Some(batch) = batches.next().await {
        count += batch.expect("replay").len();
    }
    (count as f64 / started.elapsed().as_secs_f64(), count)
}

/// An event row as the raw side decodes it ([`RAW_COLUMNS`]).
type RawRow = (
    i64,
    i64,
    i64,
    String,
    i64,
    String,
    String,
    String,
    String,
    chrono::DateTime<chrono::Utc>,
    Option<String>,
    Option<String>,
    Option<Vec<u8>>,
    String,
);

/// The columns Keel reads, for the raw side.
const RAW_COLUMNS: &str =
    "position, epoch, transaction_id, stream_id, stream_version, event_id, topic,
    event_type, source, time, datacontenttype, dataschema, data, extensions::text";

/// One `SELECT` of the same columns over the whole table, rows decoded into tuples of
/// owned values (what any sqlx reader does at the least).
async fn replay_raw(pool: &PgPool) -> (f64, usize) {
    let started = Instant::now();
    let sql =
        format!("SELECT {RAW_COLUMNS} FROM keel_events WHERE position > $1 ORDER BY position");
    let mut rows = sqlx::query_as::<_, RawRow>(&sql).bind(0_i64).fetch(pool);
    let mut count = 0;
    while let Some(row) = rows.next().await {
        let _row: RawRow = row.expect("select");
        count += 1;
    }
    (count as f64 / started.elapsed().as_secs_f64(), count)
}

/// Pages of the log in subscription order, as the relay and the projections read it
/// (`EventLog::read_after`, which also reads the snapshot's horizon).
async fn pages_keel(log: &PgEventLog) -> (f64, usize) {
    let started = Instant::now();
    let (mut cursor, mut count) = (Cursor::START, 0);
    loop {
        let page = log.read_after(cursor, &LogFilter::default(), PAGE).await.expect("read");
        let Some(last) = page.events.last() else { break };
        cursor = last.cursor;
        count += page.events.len();
    }
    (count as f64 / started.elapsed().as_secs_f64(), count)
}

/// The same pages by plain keyset paging on `position`, rows decoded into tuples.
async fn pages_raw(pool: &PgPool) -> (f64, usize) {
    let started = Instant::now();
    let (mut after, mut count) = (0_i64, 0);
    loop {
        let rows: Vec<RawRow> = sqlx::query_as(&format!(
            "SELECT {RAW_COLUMNS} FROM keel_events WHERE position > $1 ORDER BY position LIMIT $2"
        ))
        .bind(after)
        .bind(i64::try_from(PAGE).unwrap_or(i64::MAX))
        .fetch_all(pool)
        .await
        .expect("select");
        let Some(last) = rows.last() else { break };
        after = last.0;
        count += rows.len();
    }
    (count as f64 / started.elapsed().as_secs_f64(), count)
}

async fn fill(log: &PgEventLog, target: usize) {
    let have = usize::try_from(log.head().await.expect("head").0).unwrap_or(0);
    let mut n = have;
    let log = Arc::new(log.clone());
    while n < target {
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let log = log.clone();
            let start = n;
            tasks.push(tokio::spawn(async move {
                let events: Vec<CloudEvent> =
                    (0..1000).map(|i| event(50_000_000 + start + i)).collect();
                let stream = StreamId::new(format!("fill-{start}")).expect("stream");
                log.append(&stream, ExpectedVersion::Any, &events).await.expect("append");
            }));
            n += 1000;
        }
        futures::future::join_all(tasks).await;
    }
}

/// Runs a raw reader and Keel's in turn, `rounds` times: the best rate of each, with
/// the rows its last run read.
async fn best_reads(
    rounds: usize,
    raw: impl AsyncFn() -> (f64, usize),
    keel: impl AsyncFn() -> (f64, usize),
) -> ((f64, usize), (f64, usize)) {
    let (mut best_raw, mut best_keel) = ((0f64, 0), (0f64, 0));
    for _ in 0..rounds {
        let (rate, count) = raw().await;
        best_raw = (best_raw.0.max(rate), count);
        let (rate, count) = keel().await;
        best_keel = (best_keel.0.max(rate), count);
    }
    (best_raw, best_keel)
}

fn row(name: &str, keel: f64, raw: f64, target: &str) {
    println!("{name:<44} {keel:>12.0} {raw:>12.0} {:>7.2}x  {target}", keel / raw);
}

#[tokio::main]
async fn main() {
    let admin = std::env::var("KEEL_BENCH_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let name = format!("keel_bench_{}", std::process::id());
    let mut conn = sqlx::PgConnection::connect(&admin).await.expect("connect");
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.expect("create");
    let (base, _) = admin.rsplit_once('/').expect("db in URL");
    let url = format!("{base}/{name}");
    let options = PgOptions {
        max_connections: u32::try_from(CLIENTS + 4).unwrap_or(12),
        ..PgOptions::default()
    };
    let log = PgEventLog::connect(&url, options.clone()).await.expect("connect");
    let quiet = PgEventLog::connect(&url, PgOptions { notify: false, listen: false, ..options })
        .await
        .expect("connect");
    let pool = SqlEventLog::pool(&log).clone();
    sqlx::query("CREATE TABLE raw_events (LIKE keel_events INCLUDING ALL)")
        .execute(&pool)
        .await
        .expect("raw table");

    let rounds: usize =
        std::env::var("KEEL_BENCH_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(3);
    println!(
        "Keel PostgreSQL event log vs raw SQL, same server, {CLIENTS} clients, best of {rounds} rounds"
    );
    println!("{:<44} {:>12} {:>12} {:>8}  target", "measure (per second)", "keel", "raw", "ratio");
    // Warm up both paths once.
    // Rounds alternate Keel and raw so load from elsewhere hits both alike; each
    // figure is the best round.
    let _ = single_keel(&quiet, "warm").await;
    let _ = single_raw(&pool, "warm").await;
    let (mut keel_single, mut keel_single_quiet, mut raw_single) = (0f64, 0f64, 0f64);
    let (mut keel_batch, mut raw_batch) = (0f64, 0f64);
    for round in 0..rounds {
        keel_single = keel_single.max(single_keel(&log, &format!("notify{round}")).await);
        raw_single = raw_single.max(single_raw(&pool, &format!("raw{round}")).await);
        keel_single_quiet =
            keel_single_quiet.max(single_keel(&quiet, &format!("quiet{round}")).await);
        keel_batch = keel_batch.max(batch_keel(&log, &format!("b{round}")).await);
        raw_batch = raw_batch.max(batch_raw(&pool, &format!("b{round}")).await);
    }
    row("single-event appends (with NOTIFY wake-ups)", keel_single, raw_single, ">= 0.8x");
    row("single-event appends (no wake-ups)", keel_single_quiet, raw_single, "");
    row(&format!("batched appends, events ({BATCH} per append)"), keel_batch, raw_batch, ">= 0.7x");
    fill(&log, REPLAY_EVENTS).await;
    let _ = replay_raw(&pool).await;
    let ((raw_replay, raw_count), (keel_replay, keel_count)) =
        best_reads(rounds, async || replay_raw(&pool).await, async || replay_keel(&log).await)
            .await;
    row(
        &format!("replay, events ({keel_count} vs {raw_count} rows)"),
        keel_replay,
        raw_replay,
        ">= 200000/s",
    );
    let ((raw_pages, raw_count), (keel_pages, keel_count)) =
        best_reads(rounds, async || pages_raw(&pool).await, async || pages_keel(&log).await).await;
    row(
        &format!("pages of {PAGE} in order ({keel_count} vs {raw_count} rows)"),
        keel_pages,
        raw_pages,
        "",
    );

    drop(log);
    drop(quiet);
    pool.close().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)")).execute(&mut conn).await;
}
