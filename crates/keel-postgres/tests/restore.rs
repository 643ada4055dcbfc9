//! Dump the log, restore it into a brand-new PostgreSQL cluster whose transaction ids
//! start lower than the stored ones, and check that appends and subscriptions go on.
#![cfg(feature = "integration")]

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use keel_core::{CloudEvent, ExpectedVersion, StreamId};
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

    let dump = target.dir.join("dump.sql");
    let source_db = source_url.rsplit('/').next().expect("db name").to_owned();
    let output = Command::new("pg_dump")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "--no-owner",
            "-f",
            dump.to_str().expect("utf8"),
            &source_db,
        ])
        .output()
        .expect("pg_dump");
    assert!(output.status.success(), "pg_dump: {}", String::from_utf8_lossy(&output.stderr));
    run(Command::new("psql").args([
        "-q",
        "-h",
        "127.0.0.1",
        "-p",
        &target.port.to_string(),
        "-U",
        "postgres",
        "-c",
        "CREATE DATABASE restored",
    ]));
    run(Command::new("psql").args([
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "-h",
        "127.0.0.1",
        "-p",
        &target.port.to_string(),
        "-U",
        "postgres",
        "-d",
        "restored",
        "-f",
        dump.to_str().expect("utf8"),
    ]));

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
