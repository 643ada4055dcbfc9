//! Two `keel up` with different namespaces (`KEEL_NAMESPACE`) on one Consul, one
//! RabbitMQ and one PostgreSQL database: each runs the whole example system, orders
//! settle in each through its own bus and discovery, neither sees the other's data,
//! and Consul holds each one's services under its own names. Needs the `integration`
//! feature (and the services of `scripts/services.sh`).
#![cfg(feature = "integration")]
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;

use serde_json::{Value, json};
use support::{Running, eventually, http, post, temp_dir};

fn consul_url() -> String {
    std::env::var("KEEL_CONSUL_URL").unwrap_or_else(|_| "http://127.0.0.1:8500".to_owned())
}

fn amqp_url() -> String {
    let url = std::env::var("KEEL_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    format!("{url}?queue_expires_ms=120000")
}

fn up(namespace: &str, database_url: &str) -> Running {
    let dir = temp_dir(namespace);
    let (amqp, consul) = (amqp_url(), consul_url());
    Running::start(
        Path::new(env!("CARGO_BIN_EXE_keel")),
        &["up"],
        &dir,
        &[
            ("KEEL_NAMESPACE", namespace),
            ("KEEL_DATABASE_URL", database_url),
            ("KEEL_BUS_URL", &amqp),
            ("KEEL_CONSUL_URL", &consul),
        ],
        "gateway ",
    )
}

/// A user, a product and an order through `system`'s gateway; the order's id once
/// it is confirmed (the products service reserved the stock over the bus, the orders
/// service found it through Consul).
async fn order_confirmed(system: &Running) -> (String, String) {
    system.until_services_answer().await;
    let (status, user) =
        post(&system.url("/api/users"), json!({"name": "Ada", "email": "ada@example.com"})).await;
    assert_eq!(status, 201, "{user}");
    let user_id = user["id"].as_str().unwrap().to_owned();
    let (status, product) = post(
        &system.url("/api/products"),
        json!({"name": "Lamp", "price_cents": 1200, "stock": 5}),
    )
    .await;
    assert_eq!(status, 201, "{product}");
    let product_id = product["id"].as_str().unwrap();
    let (status, order) = post(
        &system.url("/api/orders"),
        json!({"user_id": user_id, "items": [{"product_id": product_id, "quantity": 2}]}),
    )
    .await;
    assert!(status == 201 || status == 202, "{status}: {order}");
    let order_id = order["id"].as_str().unwrap().to_owned();
    let url = system.url(&format!("/api/orders/{order_id}"));
    let settled = eventually(&url, |o| o["status"] != "pending").await;
    assert_eq!(settled["status"], "confirmed", "{settled}");
    (user_id, order_id)
}

/// The passing instances Consul holds under `name`.
async fn in_consul(name: &str) -> Vec<Value> {
    let url = format!("{}/v1/health/service/{name}?passing=true", consul_url());
    http().get(url).send().await.unwrap().json().await.unwrap()
}

async fn status_of(url: &str) -> u16 {
    http().get(url).send().await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_keel_up_with_different_namespaces_share_one_consul() {
    let database_url = keel_testkit::postgres::fresh_database("namespaces_up").await;
    let id = uuid::Uuid::now_v7().simple().to_string();
    let (ns_a, ns_b) = (format!("a{}", &id[16..]), format!("b{}", &id[16..]));
    let a = up(&ns_a, &database_url);
    let b = up(&ns_b, &database_url);

    let (user_a, order_a) = order_confirmed(&a).await;
    let (user_b, order_b) = order_confirmed(&b).await;
    for (system, user, order) in [(&b, &user_a, &order_a), (&a, &user_b, &order_b)] {
        assert_eq!(status_of(&system.url(&format!("/api/users/{user}"))).await, 404);
        assert_eq!(status_of(&system.url(&format!("/api/orders/{order}"))).await, 404);
    }

    // One Consul: each system's services under its own names, one instance each.
    for namespace in [&ns_a, &ns_b] {
        for service in ["users", "products", "orders", "events"] {
            let name = format!("{namespace}.{service}");
            let instances = in_consul(&name).await;
            assert_eq!(instances.len(), 1, "{name}: {instances:?}");
            assert_eq!(instances[0]["Service"]["Service"], name.as_str());
        }
    }
    let port_a = in_consul(&format!("{ns_a}.orders")).await[0]["Service"]["Port"].clone();
    let port_b = in_consul(&format!("{ns_b}.orders")).await[0]["Service"]["Port"].clone();
    assert_ne!(port_a, port_b, "two different orders services");

    // Stopping A deregisters A's services only.
    a.stop();
    assert!(in_consul(&format!("{ns_a}.orders")).await.is_empty(), "A deregistered");
    assert_eq!(in_consul(&format!("{ns_b}.orders")).await.len(), 1, "B still registered");
    let (status, _) =
        post(&b.url("/api/users"), json!({"name": "Grace", "email": "grace@example.com"})).await;
    assert_eq!(status, 201, "B goes on without A");
    b.stop();
}
