//! A blue/green rebuild of `users-orders` SIGKILLed mid-way, as its own process
//! (`keel-users projections rebuild users-orders`): the live read model and its
//! checkpoint are intact; running the rebuild again resumes the new generation and
//! switches it in; a rebuild killed again is discarded with `--discard`. The log holds
//! the README's bad publish too, which the policy records and the rebuild goes past.
//! On SQLite, and on PostgreSQL with the `integration` feature.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use keel::core::{CloudEvent, ExpectedVersion, StreamId};
use keel::sql::{Db, args};
use keel_services_common::events::{OrderItem, OrderPlaced};
use keel_testkit::util::{PATIENCE, unique};

const ORDERS: usize = 30_000;

type OrderRow = (String, String, String, String, Option<String>);

async fn orders(db: &Db) -> Vec<OrderRow> {
    db.fetch_all(
        "SELECT order_id, user_id, status, items, reason FROM users_orders ORDER BY order_id",
        args![],
    )
    .await
    .unwrap()
}

fn users(url: &str, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_keel-users"));
    command
        .args(args)
        .env("KEEL_DATABASE_URL", url)
        .env_remove("KEEL_BUS_URL")
        .env_remove("KEEL_CONSUL_URL")
        .env("RUST_LOG", "off");
    command
}

/// Runs `keel-users ARGS` until it succeeds; a killed rebuild's lease may still be
/// held (on SQLite until it expires).
async fn users_ok(url: &str, args: &[&str]) -> Output {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let output = users(url, args).output().unwrap();
        if output.status.success() {
            return output;
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("another rebuild of it is running")
                && tokio::time::Instant::now() < deadline,
            "keel-users {args:?}: {stderr}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Starts a rebuild and SIGKILLs it once its new generation has a checkpoint.
async fn kill_a_rebuild(url: &str, db: &Db) {
    let mut child = users(url, &["projections", "rebuild", "users-orders"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let building = db.log().checkpoint("projection-rebuild:users-orders").await;
        if building.is_ok_and(|c| c.is_some()) {
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "the rebuild ended before it was killed");
        assert!(tokio::time::Instant::now() < deadline, "the rebuild never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

async fn exercise(url: &str) {
    // The binary migrates the database; the log gets the orders and the bad publish.
    users_ok(url, &["projections", "list"]).await;
    let db = Db::connect(url).await.unwrap();
    let user = unique("u");
    for chunk in 0..ORDERS / 500 {
        let mut tx = db.begin().await.unwrap();
        for n in chunk * 500..(chunk + 1) * 500 {
            let placed = OrderPlaced {
                order_id: format!("o-{n:05}"),
                user_id: user.clone(),
                items: vec![OrderItem { product_id: "p-1".into(), quantity: 1 }],
            };
            let event = CloudEvent::from_event(&placed, "/test").unwrap().build().unwrap();
            let stream = StreamId::new(format!("order-o-{n:05}")).unwrap();
            tx.append(&stream, ExpectedVersion::NoStream, &[event]).await.unwrap();
        }
        tx.commit().await.unwrap();
    }
    let bad = CloudEvent::builder("order.placed", "/cli")
        .data("application/json", r#"{"total":12}"#)
        .build()
        .unwrap();
    let mut tx = db.begin().await.unwrap();
    tx.append(&StreamId::new("order-1").unwrap(), ExpectedVersion::Any, &[bad]).await.unwrap();
    tx.commit().await.unwrap();

    // The live model, built by a first rebuild (no replica runs: it switches itself).
    let first = users_ok(url, &["projections", "rebuild", "users-orders"]).await;
    let expected = format!("rebuilt projection users-orders from {} event(s)\n", ORDERS + 1);
    assert_eq!(String::from_utf8_lossy(&first.stdout), expected);
    let live = orders(&db).await;
    assert_eq!(live.len(), ORDERS);
    let at = db.log().checkpoint("projection:users-orders").await.unwrap();
    assert!(at.is_some());
    let skipped = db.log().skipped(None, 10).await.unwrap();
    assert_eq!(skipped.len(), 1, "the bad publish is recorded");
    assert_eq!(skipped[0].subscriber, "projection:users-orders");

    // Killed mid-rebuild: the live model and its checkpoint are intact.
    kill_a_rebuild(url, &db).await;
    assert_eq!(orders(&db).await, live, "the live model is intact");
    assert_eq!(db.log().checkpoint("projection:users-orders").await.unwrap(), at);
    let listed = users_ok(url, &["projections", "list"]).await;
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(listed.contains("rebuild building, new generation at"), "{listed}");

    // Run again: it resumes and switches in.
    let resumed = users_ok(url, &["projections", "rebuild", "users-orders"]).await;
    assert_eq!(String::from_utf8_lossy(&resumed.stdout), expected);
    assert_eq!(orders(&db).await, live);
    assert_eq!(db.log().checkpoint("projection:users-orders").await.unwrap(), at);
    assert_eq!(db.log().checkpoint("projection-rebuild:users-orders").await.unwrap(), None);
    let skipped = db.log().skipped(None, 10).await.unwrap();
    assert_eq!(skipped.len(), 1);
    assert_eq!(skipped[0].subscriber, "projection:users-orders");

    // Killed again, then discarded.
    kill_a_rebuild(url, &db).await;
    let discarded = users_ok(url, &["projections", "rebuild", "users-orders", "--discard"]).await;
    assert!(String::from_utf8_lossy(&discarded.stdout).contains("discarded the rebuild"));
    let shadow: keel::sql::Result<Vec<(String,)>> =
        db.fetch_all("SELECT order_id FROM users_orders__keel_next", args![]).await;
    assert!(shadow.is_err(), "the new generation's table is dropped");
    assert_eq!(orders(&db).await, live);
    assert_eq!(db.log().checkpoint("projection:users-orders").await.unwrap(), at);
    assert_eq!(db.log().checkpoint("projection-rebuild:users-orders").await.unwrap(), None);
    assert_eq!(db.log().skipped(None, 10).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_rebuild_on_sqlite_leaves_the_live_model_and_resumes_or_is_discarded() {
    let dir = std::env::temp_dir().join(unique("keel-users-rebuild-kill"));
    std::fs::create_dir_all(&dir).unwrap();
    exercise(&format!("sqlite://{}/keel.db", dir.display())).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[cfg(feature = "integration")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_rebuild_on_postgres_leaves_the_live_model_and_resumes_or_is_discarded() {
    exercise(&keel_testkit::postgres::fresh_database("users_rebuild_kill").await).await;
}
