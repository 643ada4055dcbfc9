//! Aggregates side by side, on SQLite and (when `KEEL_BENCH_DATABASE_URL` names a
//! PostgreSQL server, e.g. `postgres://postgres@127.0.0.1:5432/postgres`) PostgreSQL:
//!
//!   cargo bench -p keel-aggregate --all-features --bench aggregate
//!
//! - loading an aggregate of 10,000 events: folded from the events, and from a
//!   snapshot (at the last event, and 99 events behind it);
//! - command throughput (load, handle, append with the expected version, commit)
//!   against raw appends of the same events (begin, append with the version the
//!   writer already knows, commit), one client, on fresh streams of 10 events and on
//!   streams of 100 events with a snapshot every 20. Target: commands at least 0.7x.
//!
//! `KEEL_BENCH_ROUNDS` (default 3): each figure is the best round. The SQLite database
//! is a temporary file; the PostgreSQL one a scratch database, dropped at the end.

#![allow(clippy::unwrap_used, missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Instant;

use common::{Account, Deposited, deposit, open};
use keel_aggregate::{Repository, SnapshotUse};
use keel_core::{CloudEvent, ExpectedVersion, StreamId, StreamVersion};
use keel_sql::Db;

const LOAD_EVENTS: u64 = 10_000;
const COMMANDS: usize = 2_000;

/// One store's figures.
#[derive(Default)]
struct Figures {
    load_events_ms: f64,
    load_snapshot_ms: f64,
    load_snapshot_behind_ms: f64,
    short: Throughput,
    long: Throughput,
}

#[derive(Default, Clone, Copy)]
struct Throughput {
    commands: f64,
    raw: f64,
}

fn deposited(account: &str, cents: i64) -> CloudEvent {
    CloudEvent::from_event(&Deposited { account_id: account.to_owned(), cents }, "/account")
        .unwrap()
        .build()
        .unwrap()
}

/// Appends `count` deposits to account `id` (opened first when `from` is 0).
async fn fill(db: &Db, id: &str, from: u64, count: u64) {
    let stream = StreamId::new(format!("account-{id}")).unwrap();
    let mut version = from;
    if from == 0 {
        Repository::<Account>::new(db.clone()).execute(id, &open(id)).await.unwrap();
        version = 1;
    }
    let target = from + count;
    while version < target {
        let n = (target - version).min(500);
        let events: Vec<CloudEvent> = (0..n).map(|_| deposited(id, 1)).collect();
        let mut tx = db.begin().await.unwrap();
        tx.append(&stream, ExpectedVersion::Exact(StreamVersion(version)), &events).await.unwrap();
        tx.commit().await.unwrap();
        version += n;
    }
}

/// The best of `rounds` timings of `load` on `repo`, in milliseconds.
async fn time_load(repo: &Repository<Account>, id: &str, rounds: usize) -> (f64, SnapshotUse) {
    let mut best = f64::MAX;
    let mut used = SnapshotUse::None;
    for _ in 0..rounds {
        let started = Instant::now();
        let loaded = repo.load(id).await.unwrap();
        best = best.min(started.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(loaded.version, StreamVersion(LOAD_EVENTS));
        used = loaded.snapshot;
    }
    (best, used)
}

async fn loads(db: &Db, rounds: usize, figures: &mut Figures) {
    fill(db, "load", 0, LOAD_EVENTS - 1).await;
    // The last event by command, with snapshots every 10,000: it takes one at 10,000.
    let snapshots = Repository::<Account>::new(db.clone()).snapshot_every(LOAD_EVENTS);
    assert!(snapshots.execute("load", &deposit(1)).await.unwrap().snapshot_taken);
    let plain = Repository::<Account>::new(db.clone());
    let (ms, used) = time_load(&plain, "load", rounds).await;
    assert_eq!(used, SnapshotUse::None);
    figures.load_events_ms = ms;
    let (ms, used) = time_load(&snapshots, "load", rounds).await;
    assert_eq!(used, SnapshotUse::Used(StreamVersion(LOAD_EVENTS)));
    figures.load_snapshot_ms = ms;

    // A snapshot 99 events behind the head.
    fill(db, "behind", 0, LOAD_EVENTS - 100).await;
    let behind = Repository::<Account>::new(db.clone()).snapshot_every(LOAD_EVENTS - 99);
    assert!(behind.execute("behind", &deposit(1)).await.unwrap().snapshot_taken);
    fill(db, "behind", LOAD_EVENTS - 99, 99).await;
    let (ms, used) = time_load(&snapshots, "behind", rounds).await;
    assert_eq!(used, SnapshotUse::Used(StreamVersion(LOAD_EVENTS - 99)));
    figures.load_snapshot_behind_ms = ms;
}

/// Commands per second: `COMMANDS` deposits round-robin over streams of
/// `per_stream` events each.
async fn commands(db: &Db, run: &str, per_stream: usize, snapshot_every: u64) -> f64 {
    let streams = COMMANDS / per_stream;
    let repo = Repository::<Account>::new(db.clone()).snapshot_every(snapshot_every);
    for s in 0..streams {
        repo.execute(&format!("{run}{s}"), &open("x")).await.unwrap();
    }
    let started = Instant::now();
    for i in 0..COMMANDS {
        let id = format!("{run}{}", i % streams);
        repo.execute(&id, &deposit(1)).await.unwrap();
    }
    f64::from(u32::try_from(COMMANDS).unwrap()) / started.elapsed().as_secs_f64()
}

/// Raw appends per second of the same shape: the writer knows each stream's version.
async fn raw(db: &Db, run: &str, per_stream: usize) -> f64 {
    let streams = COMMANDS / per_stream;
    let ids: Vec<StreamId> =
        (0..streams).map(|s| StreamId::new(format!("account-{run}{s}")).unwrap()).collect();
    for (s, stream) in ids.iter().enumerate() {
        let mut tx = db.begin().await.unwrap();
        let opened = common::Opened { account_id: format!("{run}{s}"), owner: "x".into() };
        let event = CloudEvent::from_event(&opened, "/account").unwrap().build().unwrap();
        tx.append(stream, ExpectedVersion::NoStream, &[event]).await.unwrap();
        tx.commit().await.unwrap();
    }
    let mut versions = vec![1u64; streams];
    let started = Instant::now();
    for i in 0..COMMANDS {
        let s = i % streams;
        let event = deposited(&format!("{run}{s}"), 1);
        let mut tx = db.begin().await.unwrap();
        tx.append(&ids[s], ExpectedVersion::Exact(StreamVersion(versions[s])), &[event])
            .await
            .unwrap();
        tx.commit().await.unwrap();
        versions[s] += 1;
    }
    f64::from(u32::try_from(COMMANDS).unwrap()) / started.elapsed().as_secs_f64()
}

async fn measure(db: &Db, rounds: usize) -> Figures {
    let mut figures = Figures::default();
    loads(db, rounds, &mut figures).await;
    // Warm up both paths, then alternate them so outside load hits both alike.
    let _ = commands(db, "warm-c", 10, 0).await;
    let _ = raw(db, "warm-r", 10).await;
    for round in 0..rounds {
        let short = Throughput {
            commands: commands(db, &format!("c{round}-"), 10, 0).await,
            raw: raw(db, &format!("r{round}-"), 10).await,
        };
        let long = Throughput {
            commands: commands(db, &format!("lc{round}-"), 100, 20).await,
            raw: raw(db, &format!("lr{round}-"), 100).await,
        };
        figures.short.commands = figures.short.commands.max(short.commands);
        figures.short.raw = figures.short.raw.max(short.raw);
        figures.long.commands = figures.long.commands.max(long.commands);
        figures.long.raw = figures.long.raw.max(long.raw);
    }
    figures
}

fn print(columns: &[(&str, Figures)]) {
    let header: String = columns.iter().map(|(name, _)| format!("{name:>14}")).collect();
    println!("{:<58}{header}", "measure");
    let row = |label: &str, value: &dyn Fn(&Figures) -> String| {
        let cells: String = columns.iter().map(|(_, f)| format!("{:>14}", value(f))).collect();
        println!("{label:<58}{cells}");
    };
    row("load 10,000 events, no snapshot (ms)", &|f| format!("{:.1}", f.load_events_ms));
    row("load 10,000 events, snapshot at the head (ms)", &|f| format!("{:.2}", f.load_snapshot_ms));
    row("load 10,000 events, snapshot + 99 events (ms)", &|f| {
        format!("{:.2}", f.load_snapshot_behind_ms)
    });
    row("  snapshot speed-up (at the head)", &|f| {
        format!("{:.0}x", f.load_events_ms / f.load_snapshot_ms)
    });
    for (label, pick) in [
        ("10-event streams", (|f: &Figures| f.short) as fn(&Figures) -> Throughput),
        ("100-event streams, snapshot every 20", |f: &Figures| f.long),
    ] {
        row(&format!("commands/s, {label}"), &|f| format!("{:.0}", pick(f).commands));
        row(&format!("raw appends/s, {label}"), &|f| format!("{:.0}", pick(f).raw));
        row(&format!("  ratio (target >= 0.7x), {label}"), &|f| {
            format!("{:.2}x", pick(f).commands / pick(f).raw)
        });
    }
}

#[tokio::main]
async fn main() {
    let rounds: usize =
        std::env::var("KEEL_BENCH_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(3);
    println!(
        "keel-aggregate: loading and commands against raw appends, one client, best of {rounds} rounds"
    );
    let path = std::env::temp_dir().join(format!("keel-aggregate-bench-{}.db", std::process::id()));
    let sqlite = Db::connect(&format!("sqlite://{}", path.display())).await.unwrap();
    let mut columns = vec![("sqlite", measure(&sqlite, rounds).await)];
    drop(sqlite);
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.clone().into_os_string();
        file.push(suffix);
        let _ = std::fs::remove_file(file);
    }
    if let Ok(admin) = std::env::var("KEEL_BENCH_DATABASE_URL") {
        columns.push(("postgres", postgres(&admin, rounds).await));
    } else {
        println!("(PostgreSQL skipped: set KEEL_BENCH_DATABASE_URL to a server's URL)");
    }
    print(&columns);
}

#[cfg(feature = "postgres")]
async fn postgres(admin: &str, rounds: usize) -> Figures {
    use sqlx::Connection as _;
    let name = format!("keel_bench_aggregate_{}", std::process::id());
    let mut conn = sqlx::PgConnection::connect(admin).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.unwrap();
    let (base, _) = admin.rsplit_once('/').unwrap();
    let db = Db::connect(&format!("{base}/{name}")).await.unwrap();
    let figures = measure(&db, rounds).await;
    drop(db);
    sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)")).execute(&mut conn).await.unwrap();
    figures
}

#[cfg(not(feature = "postgres"))]
async fn postgres(_admin: &str, _rounds: usize) -> Figures {
    panic!("KEEL_BENCH_DATABASE_URL is set, but keel-aggregate was built without `postgres`");
}
