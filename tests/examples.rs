//! The examples under examples/ run as a user would run them: hello-events end to end,
//! the guide's service on SQLite and on PostgreSQL with RabbitMQ (and its read model
//! rebuilt by replay), and the notifications service next to `keel up`, seeing an order
//! placed through the gateway.
//!
//! The example binaries are other packages of the workspace, so the tests build them
//! with `cargo build` in the target directory this test runs from (a no-op when they
//! are fresh). Run them with cargo-nextest (what `scripts/test.sh` does): `cargo test`
//! holds the build directory's lock while tests run.
#![allow(clippy::unwrap_used)]
// Without `integration` only the guide's file check runs.
#![cfg_attr(not(feature = "integration"), allow(dead_code, unused_imports))]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::json;
use support::{Running, eventually, http, post, rust_blocks, temp_dir};

/// The guide's code is examples/guide-service/src/main.rs, word for word: every `rust`
/// block of docs/guide.md, in order.
#[test]
fn the_guide_is_the_guide_service() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let guide = std::fs::read_to_string(root.join("docs/guide.md")).unwrap();
    let main = std::fs::read_to_string(root.join("examples/guide-service/src/main.rs")).unwrap();
    let code = rust_blocks(&guide);
    assert!(code.matches("fn main").count() == 1, "the guide's blocks make one program");
    assert_eq!(
        code, main,
        "docs/guide.md's rust blocks, joined by blank lines, must be examples/guide-service/src/main.rs"
    );
}

/// The target directory this test binary was built in (`<target>/debug/deps/<test>`).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.ancestors().nth(3).expect("<target>/<profile>/deps/<test>").to_path_buf()
}

/// Builds the example binaries (all features, the whole workspace's feature set, so
/// nothing is rebuilt for another one) and returns where `name` is.
fn example(name: &str) -> PathBuf {
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--workspace", "--all-features", "--offline"])
            .args(["--bin", "hello-events", "--bin", "notifications", "--bin", "guide-service"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("CARGO_TARGET_DIR", target_dir())
            .status()
            .unwrap();
        assert!(status.success(), "building the examples failed");
    });
    let profile = std::env::current_exe().unwrap().ancestors().nth(2).unwrap().to_path_buf();
    profile.join(name)
}

#[cfg(feature = "integration")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_events_publishes_consumes_and_serves_its_read_model() {
    let dir = temp_dir("hello");
    let db = format!("sqlite://{}/hello.db", dir.display());
    let hello = Running::start(
        &example("hello-events"),
        &[],
        &dir,
        &[("KEEL_DATABASE_URL", &db)],
        "listening on",
    );
    let client = http();
    for text in ["Hello", "Good morning"] {
        let response = client.post(hello.url("/greetings/Ada")).body(text).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 202);
    }
    let ada = eventually(&hello.url("/greetings/Ada"), |v| v["greetings"] == 2).await;
    assert_eq!(ada, json!({ "name": "Ada", "greetings": 2, "last": "Good morning" }));
    let nobody = client.get(hello.url("/greetings/Grace")).send().await.unwrap();
    assert_eq!(nobody.status().as_u16(), 404, "nobody greeted Grace");
    hello.stop();

    // The read model and the consumer group's position survive a restart: the events
    // are not counted again.
    let hello = Running::start(
        &example("hello-events"),
        &[],
        &dir,
        &[("KEEL_DATABASE_URL", &db)],
        "listening on",
    );
    let response = client.post(hello.url("/greetings/Ada")).body("Hi").send().await.unwrap();
    assert_eq!(response.status().as_u16(), 202);
    let ada = eventually(&hello.url("/greetings/Ada"), |v| v["last"] == "Hi").await;
    assert_eq!(ada["greetings"], 3);
    hello.stop();
}

/// The guide's flow against a running guide service: two tasks, one completed, a bad
/// body refused naming the field, the read model catching up.
async fn exercise_tasks(tasks: &Running) {
    let (status, first) = post(&tasks.url("/tasks"), json!({ "title": "Write the guide" })).await;
    assert_eq!(status, 201, "{first}");
    assert_eq!(first["title"], "Write the guide");
    let (status, _) = post(&tasks.url("/tasks"), json!({ "title": "Follow it" })).await;
    assert_eq!(status, 201);
    let id = first["id"].as_str().unwrap();
    let done = http().post(tasks.url(&format!("/tasks/{id}/complete"))).send().await.unwrap();
    assert_eq!(done.status().as_u16(), 204);
    let again = http().post(tasks.url(&format!("/tasks/{id}/complete"))).send().await.unwrap();
    assert_eq!(again.status().as_u16(), 204, "completing twice changes nothing");
    let missing = http().post(tasks.url("/tasks/nope/complete")).send().await.unwrap();
    assert_eq!(missing.status().as_u16(), 404);
    let (status, problem) = post(&tasks.url("/tasks"), json!({ "title": " " })).await;
    assert_eq!(status, 422);
    assert_eq!(problem["errors"][0]["pointer"], "/title", "{problem}");
    let stats = eventually(&tasks.url("/stats"), |v| v["done"] == 1).await;
    assert_eq!(stats, json!({ "open": 1, "done": 1 }));
    // The consumer congratulated once, though the task was completed twice.
    let emails =
        eventually(&tasks.url("/emails"), |v| v.as_array().is_some_and(|e| !e.is_empty())).await;
    assert_eq!(emails, json!(["Well done: Write the guide"]));
}

#[cfg(feature = "integration")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guide_service_runs_and_rebuilds_on_sqlite() {
    let dir = temp_dir("guide");
    let db = format!("sqlite://{}/tasks.db", dir.display());
    let env = [("KEEL_DATABASE_URL", db.as_str())];
    let service = example("guide-service");
    let tasks = Running::start(&service, &[], &dir, &env, "listening on");
    exercise_tasks(&tasks).await;
    tasks.stop();

    let rebuilt = Command::new(&service)
        .args(["projections", "rebuild", "task-stats"])
        .current_dir(&dir)
        .env("KEEL_DATABASE_URL", &db)
        .output()
        .unwrap();
    assert!(rebuilt.status.success(), "{}", String::from_utf8_lossy(&rebuilt.stderr));
    assert_eq!(
        String::from_utf8_lossy(&rebuilt.stdout),
        "rebuilt projection task-stats from 3 event(s)\n"
    );

    // After the rebuild the projection resumes from its new checkpoint without counting
    // anything twice, and goes on with new events; the consumer sends nothing again.
    let tasks = Running::start(&service, &[], &dir, &env, "listening on");
    let (status, _) = post(&tasks.url("/tasks"), json!({ "title": "A third" })).await;
    assert_eq!(status, 201);
    let stats = eventually(&tasks.url("/stats"), |v| v["open"] == 2).await;
    assert_eq!(stats, json!({ "open": 2, "done": 1 }));
    let emails = http().get(tasks.url("/emails")).send().await.unwrap();
    assert_eq!(
        emails.json::<serde_json::Value>().await.unwrap(),
        json!(["Well done: Write the guide"])
    );
    tasks.stop();
}

#[cfg(feature = "integration")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guide_service_runs_on_postgres_and_rabbitmq() {
    let amqp = std::env::var("KEEL_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    guide_service_on_postgres_with(&amqp).await;
}

#[cfg(feature = "integration")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guide_service_runs_on_postgres_and_kafka() {
    let brokers =
        std::env::var("KEEL_TEST_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
    guide_service_on_postgres_with(&format!("kafka://{brokers}?profile=tansu")).await;
}

/// The guide's last section: the same service on a fresh PostgreSQL database with the
/// broker of `bus_url`, fed by `keel relay`.
async fn guide_service_on_postgres_with(bus_url: &str) {
    let dir = temp_dir("guide-pg");
    let db = keel_testkit::postgres::fresh_database("guide").await;
    let env = [("KEEL_DATABASE_URL", db.as_str()), ("KEEL_BUS_URL", bus_url)];
    let tasks = Running::start(&example("guide-service"), &[], &dir, &env, "listening on");
    // The relay publishes the log to the broker; started after the consumer subscribed.
    let mut relay = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["relay", "--name", "guide-test"])
        .current_dir(&dir)
        .envs(env)
        .env_remove("KEEL_CONSUL_URL")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    exercise_tasks(&tasks).await;
    tasks.stop();
    let _ = relay.kill();
    let _ = relay.wait();

    let rebuilt = Command::new(example("guide-service"))
        .args(["projections", "rebuild", "task-stats"])
        .current_dir(&dir)
        .envs(env)
        .output()
        .unwrap();
    assert!(rebuilt.status.success(), "{}", String::from_utf8_lossy(&rebuilt.stderr));
    assert_eq!(
        String::from_utf8_lossy(&rebuilt.stdout),
        "rebuilt projection task-stats from 3 event(s)\n"
    );
}

#[cfg(feature = "integration")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_follow_orders_placed_through_the_gateway_of_keel_up() {
    let dir = temp_dir("notifications");
    let db = format!("sqlite://{}/keel.db", dir.display());
    notifications_next_to_keel_up(&dir, &[("KEEL_DATABASE_URL", db.as_str())]).await;
}

#[cfg(feature = "integration")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_next_to_keel_up_on_postgres_and_rabbitmq() {
    let dir = temp_dir("notifications-pg");
    let db = keel_testkit::postgres::fresh_database("notifications").await;
    let amqp = std::env::var("KEEL_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    notifications_next_to_keel_up(
        &dir,
        &[("KEEL_DATABASE_URL", db.as_str()), ("KEEL_BUS_URL", amqp.as_str())],
    )
    .await;
}

/// `keel up` and the notifications service on the same database and bus (`env`); an
/// order the stock covers and one it does not, placed through the gateway, reach the
/// user's notifications.
async fn notifications_next_to_keel_up(dir: &Path, env: &[(&str, &str)]) {
    let up = Running::start(Path::new(env!("CARGO_BIN_EXE_keel")), &["up"], dir, env, "gateway");
    // Subscribed before any order is placed (a broker keeps nothing for a group that
    // does not exist yet).
    let notifications = Running::start(&example("notifications"), &[], dir, env, "listening on");

    let (status, user) =
        post(&up.url("/api/users"), json!({ "name": "Ada", "email": "ada@example.com" })).await;
    assert_eq!(status, 201, "{user}");
    let (status, product) = post(
        &up.url("/api/products"),
        json!({ "name": "Keel mug", "price_cents": 1250, "stock": 3 }),
    )
    .await;
    assert_eq!(status, 201, "{product}");
    let (user_id, product_id) = (user["id"].as_str().unwrap(), product["id"].as_str().unwrap());
    let items = |quantity: i64| json!([{ "product_id": product_id, "quantity": quantity }]);
    let (status, placed) =
        post(&up.url("/api/orders"), json!({ "user_id": user_id, "items": items(2) })).await;
    assert!(status == 201 || status == 202, "{status} {placed}");
    let (status, too_many) =
        post(&up.url("/api/orders"), json!({ "user_id": user_id, "items": items(5) })).await;
    assert!(status == 201 || status == 202, "{status} {too_many}");

    let feed = eventually(&notifications.url(&format!("/notifications/{user_id}")), |v| {
        v["notifications"].as_array().is_some_and(|n| n.len() == 4)
    })
    .await;
    let seen: Vec<(String, String)> = feed["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (n["order_id"].as_str().unwrap().to_owned(), n["kind"].as_str().unwrap().to_owned())
        })
        .collect();
    let (first, second) = (placed["id"].as_str().unwrap(), too_many["id"].as_str().unwrap());
    for expected in
        [(first, "placed"), (first, "confirmed"), (second, "placed"), (second, "rejected")]
    {
        assert!(
            seen.iter().any(|(order, kind)| order == expected.0 && kind == expected.1),
            "{expected:?} missing from {feed}"
        );
    }
    notifications.stop();
    up.stop();
}
