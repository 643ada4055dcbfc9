//! A blue/green projection rebuild against `keel replay` alone over the same log, side
//! by side, on SQLite and PostgreSQL:
//!
//!   cargo bench -p keel-sql --bench rebuild
//!
//! (`KEEL_BENCH_EVENTS`, default 50,000; `KEEL_BENCH_DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`, where a scratch database is created
//! and dropped; PostgreSQL is skipped if it does not answer.) Replay is what `keel
//! replay` does: the log read in pages of 2,000 (`EventLog::replay`) and each event
//! written out as a structured JSON line (into memory here). The rebuild is
//! `ProjectionSpec::rebuild` of a projection that upserts one row per stream (a new
//! generation of its table, pages of 2,000 (the default) in one transaction each with
//! the checkpoint, then the switch), and again with pages of 500; each three
//! ways: a statement per event (`Projection::apply`), a multi-row `VALUES` upsert per
//! page, and an upsert per page over two list arguments (`Arg::TextList`,
//! `Arg::IntList`: one statement text for every page). Target: rebuild throughput at
//! least 0.5x replay's.

use std::time::Instant;

use futures::StreamExt as _;
use keel_bus::HandlerError;
use keel_core::codec::to_structured;
use keel_core::{CloudEvent, ExpectedVersion, StreamId};
use keel_sql::{Conn, Db, Dialect, Projection, ProjectionSpec, args};
use keel_store::LogQuery;
use sqlx::Connection as _;

const STREAMS: usize = 1_000;

/// How the projection writes a page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Writes {
    /// One upsert per event (`apply` alone, the default `apply_batch`).
    PerEvent,
    /// The page's changes in one multi-row `VALUES` upsert, two parameters a row.
    PageValues,
    /// The page's changes in one upsert over two list parameters (arrays with
    /// `unnest` on PostgreSQL, JSON with `json_each` on SQLite): one statement text
    /// whatever the page holds.
    PageLists,
}

impl Writes {
    fn label(self) -> &'static str {
        match self {
            Self::PerEvent => "event/statement",
            Self::PageValues => "page/VALUES",
            Self::PageLists => "page/lists",
        }
    }
}

/// Events per stream, as a read model, written as `writes` says.
struct PerStream {
    writes: Writes,
}

#[async_trait::async_trait]
impl Projection for PerStream {
    fn name(&self) -> &str {
        "bench-per-stream"
    }

    fn tables(&self) -> &[&str] {
        &["bench_per_stream"]
    }

    async fn apply(&self, conn: &mut Conn<'_>, event: &CloudEvent) -> Result<(), HandlerError> {
        conn.execute(
            "INSERT INTO {bench_per_stream} AS s (stream_id, events) VALUES ($1, 1)
             ON CONFLICT (stream_id) DO UPDATE SET events = s.events + 1",
            args![event.subject().unwrap_or_default()],
        )
        .await?;
        Ok(())
    }

    async fn apply_batch(
        &self,
        conn: &mut Conn<'_>,
        events: &[&CloudEvent],
    ) -> Result<(), HandlerError> {
        if self.writes == Writes::PerEvent {
            for event in events {
                self.apply(conn, event).await?;
            }
            return Ok(());
        }
        // What the page changed, one row per stream (a statement may not upsert a row
        // twice), in one statement.
        let mut counts = std::collections::BTreeMap::<&str, i64>::new();
        for event in events {
            *counts.entry(event.subject().unwrap_or_default()).or_default() += 1;
        }
        if self.writes == Writes::PageLists {
            let (streams, added): (Vec<String>, Vec<i64>) =
                counts.into_iter().map(|(stream, n)| (stream.to_owned(), n)).unzip();
            let sql = match conn.dialect() {
                Dialect::Postgres => {
                    "INSERT INTO {bench_per_stream} AS s (stream_id, events)
                     SELECT * FROM unnest($1::text[], $2::bigint[])
                     ON CONFLICT (stream_id) DO UPDATE SET events = s.events + excluded.events"
                }
                // `$2 ->> k.key`: the list's element at the same index. `WHERE true` tells
                // SQLite's parser the upsert's ON is not a join's.
                Dialect::Sqlite => {
                    "INSERT INTO {bench_per_stream} AS s (stream_id, events)
                     SELECT k.value, $2 ->> k.key FROM json_each($1) AS k WHERE true
                     ON CONFLICT (stream_id) DO UPDATE SET events = s.events + excluded.events"
                }
            };
            conn.execute(sql, args![streams, added]).await?;
            return Ok(());
        }
        let mut values = Vec::with_capacity(counts.len());
        let mut args = Vec::with_capacity(counts.len() * 2);
        for (n, (stream, count)) in counts.into_iter().enumerate() {
            values.push(format!("(${}, ${})", 2 * n + 1, 2 * n + 2));
            args.extend(args![stream, count]);
        }
        let sql = format!(
            "INSERT INTO {{bench_per_stream}} AS s (stream_id, events) VALUES {}
             ON CONFLICT (stream_id) DO UPDATE SET events = s.events + excluded.events",
            values.join(", ")
        );
        conn.execute(&sql, args).await?;
        Ok(())
    }
}

fn event(n: usize) -> CloudEvent {
    CloudEvent::builder("bench.order-placed", "/bench")
        .json_data(&serde_json::json!({
            "order_id": format!("order-{n}"), "user_id": "user-17", "total_cents": 12_345,
            "lines": [{"sku": "sku-1", "qty": 2}, {"sku": "sku-2", "qty": 1}]
        }))
        .expect("json")
        .build()
        .expect("valid")
}

async fn fill(db: &Db, events: usize) {
    let mut tx = db.begin().await.expect("begin");
    tx.execute(
        "CREATE TABLE bench_per_stream (stream_id TEXT PRIMARY KEY, events BIGINT NOT NULL)",
        args![],
    )
    .await
    .expect("table");
    tx.commit().await.expect("commit");
    for chunk in (0..events).collect::<Vec<_>>().chunks(1_000) {
        let mut tx = db.begin().await.expect("begin");
        for &n in chunk {
            let stream = StreamId::new(format!("order-{}", n % STREAMS)).expect("stream");
            tx.append(&stream, ExpectedVersion::Any, &[event(n)]).await.expect("append");
        }
        tx.commit().await.expect("commit");
    }
}

/// `keel replay` to a sink: events per second.
async fn replay(db: &Db, events: usize) -> f64 {
    let started = Instant::now();
    let log = db.log();
    let mut pages = log.replay(LogQuery { limit: 2_000, ..LogQuery::default() });
    let mut out = Vec::with_capacity(1 << 20);
    let mut count = 0;
    while let Some(page) = pages.next().await {
        for event in page.expect("page") {
            out.extend_from_slice(&to_structured(&event.event));
            out.push(b'\n');
            count += 1;
        }
        out.clear();
    }
    assert_eq!(count, events);
    count as f64 / started.elapsed().as_secs_f64()
}

/// A blue/green rebuild applying `batch` events per transaction, written as `writes`
/// says: events per second.
async fn rebuild(db: &Db, events: usize, batch: usize, writes: Writes) -> f64 {
    let started = Instant::now();
    let spec = ProjectionSpec::new(PerStream { writes }).batch_size(batch);
    let rebuilt = spec.rebuild(db, |_| {}).await.expect("rebuild");
    assert!(rebuilt.switched);
    assert_eq!(rebuilt.applied, events as u64);
    let rows: Option<(i64,)> = db
        .fetch_optional("SELECT CAST(SUM(events) AS BIGINT) FROM bench_per_stream", args![])
        .await
        .expect("sum");
    assert_eq!(rows, Some((i64::try_from(events).expect("events"),)));
    events as f64 / started.elapsed().as_secs_f64()
}

async fn compare(store: &str, db: &Db, events: usize) {
    fill(db, events).await;
    // Warm the cache the same way for both.
    replay(db, events).await;
    let replayed = replay(db, events).await;
    // Pages of 500 events a transaction, then the default (2,000); a statement per
    // event, then a page per statement, then a page in one statement text.
    for (batch, writes) in [
        (500, Writes::PerEvent),
        (2_000, Writes::PerEvent),
        (500, Writes::PageValues),
        (2_000, Writes::PageValues),
        (500, Writes::PageLists),
        (2_000, Writes::PageLists),
    ] {
        let rebuilt = rebuild(db, events, batch, writes).await;
        let apply = writes.label();
        println!(
            "{store:<10} {events:>8} events   keel replay {replayed:>10.0} events/s   rebuild ({batch:>5}/tx, {apply:<15}) {rebuilt:>10.0} events/s   rebuild/replay {:.2}x (target >= 0.5x)",
            rebuilt / replayed
        );
    }
}

#[tokio::main]
async fn main() {
    let events: usize =
        std::env::var("KEEL_BENCH_EVENTS").ok().and_then(|n| n.parse().ok()).unwrap_or(50_000);
    let dir = std::env::temp_dir().join(format!("keel-bench-rebuild-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let sqlite = Db::connect(&format!("sqlite://{}/keel.db", dir.display())).await.expect("sqlite");
    compare("sqlite", &sqlite, events).await;
    drop(sqlite);
    let _ = std::fs::remove_dir_all(&dir);

    let server = std::env::var("KEEL_BENCH_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let Ok(mut admin) = sqlx::PgConnection::connect(&server).await else {
        println!("postgres   skipped: {server} does not answer");
        return;
    };
    let name = format!("keel_bench_rebuild_{}", std::process::id());
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut admin).await.expect("create");
    let url =
        format!("{}/{name}", server.rsplit_once('/').map_or(server.as_str(), |(base, _)| base));
    let postgres = Db::connect(&url).await.expect("postgres");
    compare("postgres", &postgres, events).await;
    drop(postgres);
    let _ = sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)")).execute(&mut admin).await;
}
