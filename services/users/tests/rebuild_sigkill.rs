//! SIGKILL during a blue/green rebuild of `users-orders` (issue 15): the real binary,
//! `keel-users projections rebuild users-orders --wait`, is killed half-way through
//! a log of 30,000 order events and the README's bad publish. The live read model
//! keeps answering, unchanged, with its checkpoint where it was; running the rebuild
//! again resumes the killed generation from its own checkpoint (not from 0) and
//! switches in the same model a from-scratch catch-up built, with the bad event
//! recorded as skipped; `--discard` instead drops the generation (its table, its
//! checkpoint, its `keel_rebuilds` row). SQLite on every run, PostgreSQL with the
//! `integration` feature.
#![allow(clippy::unwrap_used)]

use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use keel::core::{CloudEvent, ExpectedVersion, Position};
use keel::sql::{Db, ProjectionSpec, args};
use keel::store::{Cursor, RebuildState};
use keel_services_common::events::{
    OrderCancelled, OrderConfirmed, OrderItem, OrderPlaced, OrderRejected, stream_id,
};
use keel_testkit::util::PATIENCE;
use keel_users::{AppState, UsersOrders, app, migrate};
use serde_json::{Value, json};
use tower::ServiceExt as _;

/// Orders in the log, each placed and settled: twice as many events.
const ORDERS: usize = 15_000;
/// Orders per appending transaction while filling the log.
const ORDERS_PER_TX: usize = 1_000;
const LIVE: &str = "projection:users-orders";
const NEXT: &str = "projection-rebuild:users-orders";
const SHADOW: &str = "users_orders__keel_next";
/// What the binary says when a rebuild's lease is held: on SQLite a killed rebuild's
/// lease row stays until its time to live (15 s) runs out.
const LEASE_HELD: &str = "another rebuild of it is running";

/// A read model row: (order_id, user_id, status, items, reason, placed_at, updated_at).
type Row = (String, String, String, String, Option<String>, String, String);

/// What to do after the kill.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Then {
    Resume,
    Discard,
}

/// The log filled, the live model caught up from scratch, and what it held then.
struct Fixture {
    db: Db,
    url: String,
    dir: std::path::PathBuf,
    /// A user registered through the API, who placed every tenth order.
    user: String,
    /// The API's answer for that user's orders.
    answer: Value,
    rows: Vec<Row>,
    checkpoint: Cursor,
    /// The README's bad publish: `order.placed` with `{"total":12}`.
    bad_event: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_killed_rebuild_resumes() {
    let dir = temp_dir("resume");
    killed_rebuild(&format!("sqlite://{}/keel.db", dir.display()), dir, Then::Resume).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_killed_rebuild_is_discarded() {
    let dir = temp_dir("discard");
    killed_rebuild(&format!("sqlite://{}/keel.db", dir.display()), dir, Then::Discard).await;
}

#[cfg(feature = "integration")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_killed_rebuild_resumes() {
    let url = keel_testkit::postgres::fresh_database("rebuild_kill").await;
    killed_rebuild(&url, temp_dir("pg-resume"), Then::Resume).await;
}

#[cfg(feature = "integration")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_killed_rebuild_is_discarded() {
    let url = keel_testkit::postgres::fresh_database("rebuild_discard").await;
    killed_rebuild(&url, temp_dir("pg-discard"), Then::Discard).await;
}

async fn killed_rebuild(url: &str, dir: std::path::PathBuf, then: Then) {
    let fixture = fill(url, dir).await;
    let db = &fixture.db;
    let killed_at = kill_mid_rebuild(&fixture).await;

    // The live model: untouched, answering, its checkpoint where it was.
    assert_eq!(live_rows(db).await, fixture.rows, "the live model changed");
    assert_eq!(checkpoint(db, LIVE).await, Some(fixture.checkpoint));
    assert_eq!(orders_of(db, &fixture.user).await, fixture.answer);
    // The killed generation: building, part-way.
    assert_eq!(rebuild_state(db).await, Some(RebuildState::Building));
    assert!(shadow_exists(db).await, "the killed generation's table is there");
    let applied_before_kill = applied_up_to(db, killed_at).await;
    assert!(applied_before_kill > 0 && applied_before_kill < total(db).await);

    match then {
        Then::Resume => resume(&fixture, applied_before_kill).await,
        Then::Discard => discard(&fixture).await,
    }
    let _ = std::fs::remove_dir_all(&fixture.dir);
}

/// Runs the rebuild again to the switch: it resumes from the killed generation's
/// checkpoint, and the model it switches in is the from-scratch one.
async fn resume(fixture: &Fixture, applied_before_kill: u64) {
    let db = &fixture.db;
    let output = admin(fixture, &["projections", "rebuild", "users-orders", "--wait"]).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    let total = total(db).await;
    // The first progress line is where it resumed: the events the killed run applied.
    let first = stderr.lines().find(|l| l.starts_with("users-orders: ")).unwrap_or_default();
    assert_eq!(
        first,
        format!("users-orders: {applied_before_kill} of {total} event(s)"),
        "the rerun resumes the killed generation: {stderr}"
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        format!("rebuilt projection users-orders from {total} event(s)\n")
    );
    assert_eq!(rebuild_state(db).await, None);
    assert!(!shadow_exists(db).await, "the generation became the live table");
    assert_eq!(checkpoint(db, NEXT).await, None);
    let head = db.log().head().await.unwrap();
    assert_eq!(checkpoint(db, LIVE).await.map(|c| c.position), Some(head_position(head)));
    // The same model as the from-scratch catch-up (the log did not change since),
    // bar the times the rows were written at.
    let rebuilt = live_rows(db).await;
    assert_eq!(rebuilt.len(), ORDERS);
    assert_eq!(without_times(&rebuilt), without_times(&fixture.rows));
    assert_eq!(orders_of(db, &fixture.user).await, fixture.answer);
    // The bad event was skipped by the new generation too, and its record is the
    // projection's now.
    assert_eq!(skipped(db, LIVE).await, vec![fixture.bad_event.clone()]);
    assert_eq!(skipped(db, NEXT).await, Vec::<String>::new());
}

/// Discards the killed rebuild: its generation goes, the live model stays.
async fn discard(fixture: &Fixture) {
    let db = &fixture.db;
    let output = admin(fixture, &["projections", "rebuild", "users-orders", "--discard"]).await;
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "discarded the rebuild of projection users-orders; the live one is untouched\n"
    );
    assert_eq!(rebuild_state(db).await, None);
    let rebuilds: Option<(i64,)> =
        db.fetch_optional("SELECT COUNT(*) FROM keel_rebuilds", args![]).await.unwrap();
    assert_eq!(rebuilds, Some((0,)), "the keel_rebuilds row is gone");
    assert!(!shadow_exists(db).await, "the shadow table is gone");
    assert_eq!(checkpoint(db, NEXT).await, None);
    assert_eq!(skipped(db, NEXT).await, Vec::<String>::new());
    assert_eq!(live_rows(db).await, fixture.rows, "the live model changed");
    assert_eq!(checkpoint(db, LIVE).await, Some(fixture.checkpoint));
    assert_eq!(orders_of(db, &fixture.user).await, fixture.answer);
    assert_eq!(skipped(db, LIVE).await, vec![fixture.bad_event.clone()]);
}

/// Fills the log (the events appended straight to the store, a thousand orders a
/// transaction) and catches the live model up from scratch.
async fn fill(url: &str, dir: std::path::PathBuf) -> Fixture {
    let db = Db::connect(url).await.unwrap();
    migrate(&db).await.unwrap();
    let (status, created) = call(
        &db,
        Request::post("/api/users")
            .header("content-type", "application/json")
            .body(Body::from(json!({ "name": "Kim", "email": "kim@example.com" }).to_string()))
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let user = created["id"].as_str().unwrap().to_owned();
    let mut bad_event = String::new();
    let chunks = ORDERS / ORDERS_PER_TX;
    for chunk in 0..chunks {
        let first = chunk * ORDERS_PER_TX;
        let mut tx = db.begin().await.unwrap();
        for n in first..first + ORDERS_PER_TX {
            let order_id = format!("o-{n:05}");
            let user_id = if n % 10 == 0 { user.clone() } else { format!("user-{}", n % 50) };
            let placed = OrderPlaced {
                order_id: order_id.clone(),
                user_id,
                items: vec![OrderItem {
                    product_id: "p-1".to_owned(),
                    quantity: 1 + i64::try_from(n % 3).unwrap(),
                }],
            };
            let settled = match n % 3 {
                0 => cloud(&OrderConfirmed { order_id: order_id.clone() }),
                1 => cloud(&OrderRejected {
                    order_id: order_id.clone(),
                    reason: "out of stock".to_owned(),
                }),
                _ => cloud(&OrderCancelled { order_id: order_id.clone() }),
            };
            let stream = stream_id("order", &order_id).unwrap();
            tx.append(&stream, ExpectedVersion::NoStream, &[cloud(&placed), settled])
                .await
                .unwrap();
        }
        if chunk == chunks / 2 {
            // `keel publish order.placed --stream order-1 --data '{"total":12}'`.
            let bad = CloudEvent::builder("order.placed", "/keel/cli")
                .data("application/json", r#"{"total":12}"#)
                .build()
                .unwrap();
            bad_event = bad.id().to_owned();
            tx.append(&stream_id("order", "1").unwrap(), ExpectedVersion::Any, &[bad])
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
    }
    // The projection retries a page that fails for good: a bad event it does not
    // skip would hold it here.
    let caught_up = tokio::time::timeout(PATIENCE, ProjectionSpec::new(UsersOrders).catch_up(&db))
        .await
        .expect("the live projection did not get past the README's bad publish")
        .unwrap();
    assert_eq!(caught_up, 2 * ORDERS as u64 + 1);
    let rows = live_rows(&db).await;
    assert_eq!(rows.len(), ORDERS);
    assert_eq!(skipped(&db, LIVE).await, vec![bad_event.clone()], "the policy skips it");
    let answer = orders_of(&db, &user).await;
    assert_eq!(answer["orders"].as_array().map(Vec::len), Some(100), "{answer}");
    let checkpoint = checkpoint(&db, LIVE).await.unwrap();
    Fixture { db, url: url.to_owned(), dir, user, answer, rows, checkpoint, bad_event }
}

/// Starts `keel-users projections rebuild users-orders --wait` and SIGKILLs it once
/// its generation's checkpoint passed a quarter of the log (the live model answering
/// meanwhile); returns where that checkpoint was.
async fn kill_mid_rebuild(fixture: &Fixture) -> Cursor {
    let db = &fixture.db;
    let mut child = binary(fixture)
        .args(["projections", "rebuild", "users-orders", "--wait"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let total = total(db).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(at) = checkpoint(db, NEXT).await
            && applied_up_to(db, at).await >= total / 4
        {
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the rebuild ended ({status}) before it could be killed half-way");
        }
        assert!(tokio::time::Instant::now() < deadline, "the rebuild did not get going");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // During the rebuild, the live model answers as before.
    assert_eq!(orders_of(db, &fixture.user).await, fixture.answer);
    kill(&mut child);
    let at = checkpoint(db, NEXT).await.unwrap();
    assert!(
        applied_up_to(db, at).await < total,
        "the rebuild finished before the kill; give it more events"
    );
    at
}

/// SIGKILL (what `Child::kill` sends on Unix), then reaps the child.
fn kill(child: &mut Child) {
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "killed, not exited: {status}");
}

/// Runs an admin subcommand of the binary to its end and checks it succeeded. While a
/// killed rebuild's lease is still held (SQLite keeps the row until its time to live
/// runs out) the binary refuses, saying so: it is run again until it is not refused,
/// for up to [`PATIENCE`].
async fn admin(fixture: &Fixture, args: &[&str]) -> Output {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let mut command = binary(fixture);
        command.args(args);
        let output = tokio::task::spawn_blocking(move || command.output()).await.unwrap().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        if output.status.success() {
            return output;
        }
        assert!(stderr.contains(LEASE_HELD), "{args:?} failed: {stderr}");
        assert!(tokio::time::Instant::now() < deadline, "the killed rebuild's lease stays held");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn binary(fixture: &Fixture) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_keel-users"));
    command
        .current_dir(&fixture.dir)
        .env("KEEL_DATABASE_URL", &fixture.url)
        .env("RUST_LOG", "warn")
        .env_remove("KEEL_BUS_URL")
        .env_remove("KEEL_CONSUL_URL")
        .env_remove("KEEL_NAMESPACE");
    command
}

fn cloud<E: keel::core::Event>(event: &E) -> CloudEvent {
    CloudEvent::from_event(event, keel_users::SOURCE).unwrap().build().unwrap()
}

fn temp_dir(label: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(keel_testkit::util::unique(&format!("keel-kill-{label}")));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// One request to the service's router.
async fn call(db: &Db, request: Request<Body>) -> (StatusCode, Value) {
    let response = app(AppState::new(db.clone())).oneshot(request).await.unwrap();
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), 1 << 24).await.unwrap();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// The API's answer for `user`'s orders (the first 100).
async fn orders_of(db: &Db, user: &str) -> Value {
    let request =
        Request::get(format!("/api/users/{user}/orders?limit=100")).body(Body::empty()).unwrap();
    let (status, body) = call(db, request).await;
    assert_eq!(status, StatusCode::OK, "the live model answers: {body}");
    body
}

async fn live_rows(db: &Db) -> Vec<Row> {
    db.fetch_all(
        "SELECT order_id, user_id, status, items, reason, placed_at, updated_at
         FROM users_orders ORDER BY order_id",
        args![],
    )
    .await
    .unwrap()
}

/// The rows without `placed_at` and `updated_at`, which record when they were written.
fn without_times(rows: &[Row]) -> Vec<(&str, &str, &str, &str, Option<&str>)> {
    rows.iter()
        .map(|(order, user, status, items, reason, _, _)| {
            (order.as_str(), user.as_str(), status.as_str(), items.as_str(), reason.as_deref())
        })
        .collect()
}

async fn checkpoint(db: &Db, name: &str) -> Option<Cursor> {
    db.log().checkpoint(name).await.unwrap()
}

async fn rebuild_state(db: &Db) -> Option<RebuildState> {
    ProjectionSpec::new(UsersOrders).rebuild_state(db).await.unwrap()
}

/// The ids of the events `subscriber` skipped.
async fn skipped(db: &Db, subscriber: &str) -> Vec<String> {
    let skipped = db.log().skipped(Some(subscriber), 100).await.unwrap();
    skipped.into_iter().map(|s| s.event_id).collect()
}

/// Events in the log.
async fn total(db: &Db) -> u64 {
    db.log().count_after(Cursor::START, Position(u64::MAX)).await.unwrap()
}

/// Events in the log up to `at` (what a rebuild resumed from `at` reports as applied).
async fn applied_up_to(db: &Db, at: Cursor) -> u64 {
    total(db).await - db.log().count_after(at, Position(u64::MAX)).await.unwrap()
}

fn head_position(head: Position) -> i64 {
    i64::try_from(head.0).unwrap()
}

async fn shadow_exists(db: &Db) -> bool {
    let sql = match db {
        Db::Sqlite(_) => "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = $1",
        Db::Postgres(_) => {
            "SELECT COUNT(*) FROM pg_tables WHERE schemaname = current_schema() AND tablename = $1"
        }
    };
    let count: Option<(i64,)> = db.fetch_optional(sql, args![SHADOW]).await.unwrap();
    count.unwrap().0 == 1
}
