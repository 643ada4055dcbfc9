//! `keel why` and the console on the example system: an order placed through `keel up`'s
//! gateway causes stock reserved, which causes the order confirmed; `keel why` shows that
//! chain from the request, and the console that `keel up` serves on its gateway shows it
//! too. On SQLite with the log bus always; on PostgreSQL with the `integration` feature.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};
use support::{Running, eventually, post, temp_dir};

fn keel(dir: &Path, database_url: &str, args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(args)
        .current_dir(dir)
        .env("KEEL_DATABASE_URL", database_url)
        .env_remove("KEEL_BUS_URL")
        .output()
        .unwrap();
    assert!(output.status.success(), "keel {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

/// A user, a product and an order for one, placed through `keel up`'s gateway; returns
/// the order's id once it is confirmed.
async fn confirmed_order(up: &Running) -> String {
    let (status, user) =
        post(&up.url("/api/users"), json!({"name": "Ada", "email": "ada@example.com"})).await;
    assert_eq!(status, 201, "{user}");
    let (status, product) =
        post(&up.url("/api/products"), json!({"name": "Lamp", "price_cents": 1200, "stock": 3}))
            .await;
    assert_eq!(status, 201, "{product}");
    let order =
        json!({"user_id": user["id"], "items": [{"product_id": product["id"], "quantity": 1}]});
    let (status, order) = post(&up.url("/api/orders"), order).await;
    assert!(status == 201 || status == 202, "{status} {order}");
    let order_id = order["id"].as_str().unwrap().to_owned();
    eventually(&up.url(&format!("/api/orders/{order_id}")), |o| o["status"] == "confirmed").await;
    order_id
}

/// Places an order through `keel up` and follows it with `keel why` and the console.
async fn an_order_s_lineage(database_url: &str) {
    let dir = temp_dir("console");
    let up = Running::start(
        Path::new(env!("CARGO_BIN_EXE_keel")),
        &["up"],
        &dir,
        &[("KEEL_DATABASE_URL", database_url)],
        "gateway",
    );
    up.until_services_answer().await;
    let order_id = confirmed_order(&up).await;

    // The confirmation, found in the log.
    let lines = keel(&dir, database_url, &["replay", "--type", "order.confirmed"]);
    let confirmed: Value = lines
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|e| e["data"]["order_id"] == order_id.as_str())
        .unwrap_or_else(|| panic!("no order.confirmed for {order_id}: {lines}"));
    let id = confirmed["id"].as_str().unwrap();

    let why: Value =
        serde_json::from_str(&keel(&dir, database_url, &["why", id, "--json"])).unwrap();
    let causes: Vec<&str> =
        why["causes"].as_array().unwrap().iter().map(|c| c["type"].as_str().unwrap()).collect();
    assert_eq!(causes, ["order.placed", "stock.reserved"], "{why}");
    assert_eq!(why["event"]["type"], "order.confirmed");
    let request = why["correlationid"].as_str().expect("the request's id");
    assert_eq!(why["origin"], request, "the chain starts at the request: {why}");
    assert!(why["correlated"].as_array().unwrap().len() >= 3, "{why}");

    let placed = why["causes"][0]["id"].as_str().unwrap();
    let tree = keel(&dir, database_url, &["why", placed]);
    assert!(tree.starts_with(request), "{tree}");
    assert!(tree.contains("* order.placed"), "{tree}");
    let (reserved, confirmed) =
        (tree.find("stock.reserved").unwrap(), tree.find("order.confirmed").unwrap());
    assert!(reserved < confirmed, "what it caused, in order: {tree}");
    let missing = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["why", "no-such-event"])
        .current_dir(&dir)
        .env("KEEL_DATABASE_URL", database_url)
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no event no-such-event"));

    // The console on keel up's gateway: the event with its lineage, the groups.
    let client = support::http();
    let page = client.get(up.url(&format!("/_keel/console/event?id={id}"))).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let page = page.text().await.unwrap();
    assert!(page.contains(placed) && page.contains("stock.reserved"), "{page}");
    let groups = client.get(up.url("/_keel/console/groups")).send().await.unwrap();
    let groups = groups.text().await.unwrap();
    assert!(groups.contains("products-stock") && groups.contains("orders-fulfilment"), "{groups}");
    let lineage = client.get(up.url(&format!("/_keel/console/api/lineage?id={id}"))).send().await;
    assert_eq!(lineage.unwrap().json::<Value>().await.unwrap()["causes"], why["causes"]);
    up.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_s_lineage_on_sqlite() {
    let dir = temp_dir("console-db");
    an_order_s_lineage(&format!("sqlite://{}/keel.db", dir.display())).await;
}

#[cfg(feature = "integration")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_s_lineage_on_postgres() {
    let url = keel_testkit::postgres::fresh_database("why").await;
    an_order_s_lineage(&url).await;
}

/// The groups page on a broker: every example group shows a lag and a dead-letter
/// count (the bus's own depth, namespaced as the services' names are), not "?".
#[cfg(feature = "integration")]
async fn broker_groups_show_their_lag(bus_url: &str) {
    let dir = temp_dir("console-broker");
    let database_url = keel_testkit::postgres::fresh_database("console").await;
    let namespace = format!("console{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
    let up = Running::start(
        Path::new(env!("CARGO_BIN_EXE_keel")),
        &["up"],
        &dir,
        &[
            ("KEEL_DATABASE_URL", &database_url),
            ("KEEL_BUS_URL", bus_url),
            ("KEEL_NAMESPACE", &namespace),
        ],
        "gateway",
    );
    up.until_services_answer().await;
    confirmed_order(&up).await;

    let client = support::http();
    let groups = client.get(up.url("/_keel/console/groups")).send().await.unwrap();
    assert_eq!(groups.status(), 200);
    let groups = groups.text().await.unwrap();
    assert!(groups.contains("products-stock") && groups.contains("orders-fulfilment"), "{groups}");
    assert!(!groups.contains(">?</td>"), "every group's lag and dead letters known: {groups}");
    up.stop();
}

#[cfg(feature = "integration")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_groups_show_their_lag_on_kafka() {
    let brokers =
        std::env::var("KEEL_TEST_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
    broker_groups_show_their_lag(&format!("kafka://{brokers}?profile=tansu")).await;
}

#[cfg(feature = "integration")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_groups_show_their_lag_on_rabbitmq() {
    let url = std::env::var("KEEL_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    broker_groups_show_their_lag(&url).await;
}
