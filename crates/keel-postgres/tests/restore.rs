//! Dump the log, restore it into a brand-new PostgreSQL cluster whose transaction ids
//! start lower than the stored ones, and check that appends and subscriptions go on.
#![cfg(feature = "integration")]

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use keel_core::{CloudEvent, ExpectedVersion, StreamId, StreamVersion};
use keel_postgres::{PgEventLog, PgOptions};
use keel_store::{Cursor, EventLog, LogFilter, SubscribeOptions, subscribe};
use sqlx::Connection;

const BIN: &str = "/usr/lib/postgresql/15/bin";

/// A throwaway cluster, stopped and deleted on drop.
struct Cluster {
    dir: PathBuf,
    port: u16,
}

impl Cluster {
    fn start() -> Self {
        let dir =
            std::env::temp_dir().join(format!("keel-restore-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let port = free_port();
        // initdb refuses to run as root.
        run(Command::new("chown").args(["postgres:postgres", dir.to_str().expect("utf8")]));
        run(&mut as_postgres(&[
            &format!("{BIN}/initdb"),
            "-D",
            &data(&dir),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
        ]));
        let options =
            format!("-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off", dir.display());
        run(&mut as_postgres(&[
            &format!("{BIN}/pg_ctl"),
            "-D",
            &data(&dir),
            "-o",
            &options,
            "-l",
            &format!("{}/log", dir.display()),
            "-w",
            "start",
        ]));
        Self { dir, port }
    }

    fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = as_postgres(&[
            &format!("{BIN}/pg_ctl"),
            "-D",
            &data(&self.dir),
            "-m",
            "immediate",
            "stop",
        ])
        .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn data(dir: &std::path::Path) -> String {
    format!("{}/data", dir.display())
}

fn as_postgres(args: &[&str]) -> Command {
    let mut command = if nix_is_root() { Command::new("runuser") } else { Command::new(args[0]) };
    if nix_is_root() {
        command.args(["-u", "postgres", "--"]).args(args);
    } else {
        command.args(&args[1..]);
    }
    command
}

fn nix_is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0\n")).unwrap_or(false)
}

fn run(command: &mut Command) {
    let output = command.output().expect("run");
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

fn event(n: u32) -> CloudEvent {
    CloudEvent::builder("keel.test.n", "/keel/test")
        .json_data(&serde_json::json!({ "n": n }))
        .expect("json")
        .build()
        .expect("valid")
}

async fn current_xid(url: &str) -> i64 {
    let mut conn = sqlx::PgConnection::connect(url).await.expect("connect");
    sqlx::query_scalar("SELECT pg_current_xact_id()::text::bigint")
        .fetch_one(&mut conn)
        .await
        .expect("xid")
}

/// The server of `KEEL_TEST_DATABASE_URL` (`None`) or a throwaway cluster's port.
fn port_args(port: Option<u16>) -> Vec<String> {
    let mut args =
        vec!["-h".to_owned(), "127.0.0.1".to_owned(), "-U".to_owned(), "postgres".to_owned()];
    if let Some(port) = port {
        args.extend(["-p".to_owned(), port.to_string()]);
    }
    args
}

/// `pg_dump`s the database of `url` (on the server `port`, see [`port_args`]) into a
/// file in `dir`.
fn dump_database(port: Option<u16>, url: &str, dir: &std::path::Path) -> PathBuf {
    let dump = dir.join(format!("dump-{}.sql", uuid::Uuid::now_v7().simple()));
    let database = url.rsplit('/').next().expect("db name");
    let output = Command::new("pg_dump")
        .args(port_args(port))
        .args(["--no-owner", "-f", dump.to_str().expect("utf8"), database])
        .output()
        .expect("pg_dump");
    assert!(output.status.success(), "pg_dump: {}", String::from_utf8_lossy(&output.stderr));
    dump
}

/// Loads `dump` into `database` on the server `port` (creating the database first when
/// `create`).
fn restore_database(port: Option<u16>, database: &str, dump: &std::path::Path, create: bool) {
    if create {
        run(Command::new("psql").args(port_args(port)).args([
            "-q",
            "-c",
            &format!("CREATE DATABASE {database}"),
        ]));
    }
    run(Command::new("psql").args(port_args(port)).args([
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "-d",
        database,
        "-f",
        dump.to_str().expect("utf8"),
    ]));
}

#[tokio::test]
async fn appends_and_subscriptions_go_on_after_restore_into_a_new_cluster() {
    let target = Cluster::start();
    let target_xid = current_xid(&target.url("postgres")).await;

    let source_url = common::fresh_database().await;
    let source = PgEventLog::connect(&source_url, PgOptions::default()).await.expect("connect");
    // Make the stored transaction ids run ahead of the new cluster's counter.
    while current_xid(&source_url).await < target_xid + 200 {
        for _ in 0..50 {
            let _ = current_xid(&source_url).await;
        }
    }
    let s = StreamId::new("order-restored").expect("valid");
    let before: Vec<CloudEvent> = (0..5).map(event).collect();
    source.append(&s, ExpectedVersion::NoStream, &before).await.expect("append");
    let page = source.read_after(Cursor::START, &LogFilter::default(), 100).await.expect("read");
    assert_eq!(page.events.len(), 5);
    let checkpoint = page.events.last().expect("events").cursor;
    source.save_checkpoint("relay:main", checkpoint).await.expect("checkpoint");
    let stored_max: i64 = sqlx::query_scalar("SELECT max(transaction_id) FROM keel_events")
        .fetch_one(common::pool(&source))
        .await
        .expect("max");
    drop(source);

    let dump = dump_database(None, &source_url, &target.dir);
    restore_database(Some(target.port), "restored", &dump, true);

    let restored_url = target.url("restored");
    assert!(
        stored_max > current_xid(&restored_url).await,
        "the restore problem is reproduced: stored ids run ahead"
    );
    let restored =
        Arc::new(PgEventLog::connect(&restored_url, PgOptions::default()).await.expect("connect"));
    assert_eq!(restored.epoch(), 1, "a new cluster starts a new epoch");

    // The relay's subscription goes on from its restored checkpoint.
    let from = restored.checkpoint("relay:main").await.expect("load").expect("restored checkpoint");
    let log: Arc<dyn EventLog> = restored.clone();
    let options = SubscribeOptions {
        poll_interval: Duration::from_millis(20),
        ..SubscribeOptions::default()
    };
    let mut pages = subscribe(log.clone(), from, LogFilter::default(), options);
    let after: Vec<CloudEvent> = (5..8).map(event).collect();
    restored
        .append(&s, ExpectedVersion::Exact(keel_core::StreamVersion(5)), &after)
        .await
        .expect("append after restore");
    let mut seen = Vec::new();
    while seen.len() < after.len() {
        let page = tokio::time::timeout(Duration::from_secs(30), pages.next())
            .await
            .expect("in time")
            .expect("open")
            .expect("page");
        seen.extend(page.events.into_iter().map(|e| e.event.id().to_owned()));
    }
    assert_eq!(seen, after.iter().map(|e| e.id().to_owned()).collect::<Vec<_>>());

    // A subscriber from the start sees the whole stream in version order.
    let all: Vec<_> = subscribe(
        log,
        Cursor::START,
        LogFilter::default(),
        SubscribeOptions { stop_when_caught_up: true, ..options },
    )
    .collect()
    .await;
    let versions: Vec<u64> = all
        .into_iter()
        .flat_map(|p| p.expect("page").events)
        .map(|e| e.event.stream_version().expect("v").0)
        .collect();
    assert_eq!(versions, (1..=8).collect::<Vec<_>>());
}

/// Fail-back: the log moves from cluster A (the test server) to cluster B and, with
/// events written on B, back into A, which registered an epoch long ago. Its old epoch
/// is below B's: reused, new events would sort before everything B wrote (subscribers
/// skip them, appends to B's streams are refused as out of write order).
#[tokio::test]
async fn a_restore_back_into_a_cluster_registered_before_moves_above_every_epoch() {
    let a_url = common::fresh_database().await;
    let a = PgEventLog::connect(&a_url, PgOptions::default()).await.expect("connect");
    assert_eq!(a.epoch(), 0);
    let s = StreamId::new("order-failback").expect("valid");
    a.append(&s, ExpectedVersion::NoStream, &(0..3).map(event).collect::<Vec<_>>())
        .await
        .expect("append on A");
    drop(a);

    // Fail over to B, and write there.
    let b_cluster = Cluster::start();
    let dump = dump_database(None, &a_url, &b_cluster.dir);
    restore_database(Some(b_cluster.port), "failover", &dump, true);
    let b = PgEventLog::connect(&b_cluster.url("failover"), PgOptions::default())
        .await
        .expect("connect to B");
    assert_eq!(b.epoch(), 1);
    b.append(&s, ExpectedVersion::Exact(StreamVersion(3)), &(3..6).map(event).collect::<Vec<_>>())
        .await
        .expect("append on B");
    // A subscriber has read everything B wrote.
    let page = b.read_after(Cursor::START, &LogFilter::default(), 100).await.expect("read");
    assert_eq!(page.events.len(), 6);
    let checkpoint = page.events.last().expect("events").cursor;
    assert_eq!(checkpoint.epoch, 1);
    b.save_checkpoint("relay:main", checkpoint).await.expect("checkpoint");
    drop(b);

    // Fail back into A.
    let dump = dump_database(Some(b_cluster.port), &b_cluster.url("failover"), &b_cluster.dir);
    let back_url = keel_testkit::postgres::fresh_database("failback").await;
    let back_db = back_url.rsplit('/').next().expect("db name").to_owned();
    restore_database(None, &back_db, &dump, false);
    let back =
        Arc::new(PgEventLog::connect(&back_url, PgOptions::default()).await.expect("connect"));
    let from = back.checkpoint("relay:main").await.expect("load").expect("restored checkpoint");
    assert_eq!(from, checkpoint);

    // A new stream's event is after the subscriber's checkpoint (it lags by one).
    let other = StreamId::new("order-failback-new").expect("valid");
    back.append(&other, ExpectedVersion::NoStream, &[event(100)]).await.expect("append new stream");
    let head = back.head().await.expect("head");
    assert_eq!(
        back.count_after(from, head).await.expect("lag"),
        1,
        "the event appended after the fail-back is ahead of the subscriber (epoch {})",
        back.epoch()
    );
    // B's stream takes appends.
    let after: Vec<CloudEvent> = (6..9).map(event).collect();
    back.append(&s, ExpectedVersion::Exact(StreamVersion(6)), &after)
        .await
        .expect("append to a stream B wrote");
    assert!(back.epoch() > 1, "above every epoch in the log: {}", back.epoch());

    // The subscriber goes on from its checkpoint and sees both appends.
    let log: Arc<dyn EventLog> = back.clone();
    let options = SubscribeOptions {
        poll_interval: Duration::from_millis(20),
        stop_when_caught_up: true,
        ..SubscribeOptions::default()
    };
    let seen: Vec<String> = subscribe(log.clone(), from, LogFilter::default(), options)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .flat_map(|p| p.expect("page").events)
        .map(|e| e.event.id().to_owned())
        .collect();
    assert_eq!(seen.len(), 4, "the new stream's event and the three appended to B's stream");
    // A subscriber from the start sees the whole stream in version order.
    let versions: Vec<u64> = subscribe(log, Cursor::START, LogFilter::default(), options)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .flat_map(|p| p.expect("page").events)
        .filter(|e| e.event.subject() == Some(s.as_str()))
        .map(|e| e.event.stream_version().expect("v").0)
        .collect();
    assert_eq!(versions, (1..=9).collect::<Vec<_>>());

    // A restart on A keeps the epoch it moved to.
    let epoch = back.epoch();
    drop(back);
    let again = PgEventLog::connect(&back_url, PgOptions::default()).await.expect("reconnect");
    assert_eq!(again.epoch(), epoch, "no new epoch without a restore");
}
