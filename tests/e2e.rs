//! The example system end to end, through the gateway of a real `keel up` process:
//! the order flow, validation, idempotency, one trace from the POST to the consumer,
//! a read model rebuilt by replay, and a SIGKILL under a stream of orders.
//!
//! Three backend combinations: the embedded default (SQLite, the log as the bus, the
//! in-process registry) in every tier; Postgres + RabbitMQ + Consul and Postgres +
//! Kafka with the `integration` feature.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// A `keel up` process, killed when dropped.
struct System {
    child: Option<Child>,
    env: Vec<(String, String)>,
    dir: PathBuf,
    gateway: String,
    http: reqwest::Client,
}

impl System {
    /// Starts `keel up` in a fresh directory with `env` and waits until the gateway
    /// routes to every service.
    async fn start(env: &[(&str, String)]) -> Self {
        let dir = std::env::temp_dir().join(format!("keel-e2e-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut env: Vec<(String, String)> =
            env.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect();
        env.push(("KEEL_GATEWAY_ADDR".into(), format!("127.0.0.1:{port}")));
        let mut system = Self {
            child: None,
            env,
            dir,
            gateway: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap(),
        };
        system.spawn().await;
        system
    }

    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("keel-up.log"))
            .unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_keel"));
        command
            .arg("up")
            .current_dir(&self.dir)
            .env_remove("KEEL_DATABASE_URL")
            .env_remove("KEEL_BUS_URL")
            .env_remove("KEEL_CONSUL_URL")
            .env_remove("KEEL_JWT_SECRET")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            // keel's own default (warnings), as a user who sets nothing gets it.
            .env_remove("RUST_LOG")
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for (key, value) in &self.env {
            command.env(key, value);
        }
        self.child = Some(command.spawn().expect("start keel up"));
        self.wait_ready().await;
    }

    /// Every service answers through the gateway (404 for an unknown id is an answer).
    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(90);
        for path in ["/api/users/none", "/api/products/none", "/api/orders/none", "/api/events"] {
            loop {
                if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                    panic!("keel up exited with {status}: {}", self.log());
                }
                let answered = self.http.get(format!("{}{path}", self.gateway)).send().await;
                if answered.is_ok_and(|r| r.status() == 404 || r.status() == 200) {
                    break;
                }
                assert!(Instant::now() < deadline, "{path} never answered: {}", self.log());
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("keel-up.log")).unwrap_or_default()
    }

    fn sigkill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    async fn post(&self, path: &str, body: Value, key: Option<&str>) -> (u16, Value) {
        let mut request = self.http.post(format!("{}{path}", self.gateway)).json(&body);
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let response = self.http.get(format!("{}{path}", self.gateway)).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn create_user(&self, name: &str) -> String {
        let email = format!("{}@example.com", name.to_lowercase());
        let (status, body) =
            self.post("/api/users", json!({ "name": name, "email": email }), None).await;
        assert_eq!(status, 201, "{body}: {}", self.log());
        body["id"].as_str().unwrap().to_owned()
    }

    async fn create_product(&self, stock: i64) -> String {
        let body = json!({ "name": "Keel mug", "price_cents": 1250, "stock": stock });
        let (status, body) = self.post("/api/products", body, None).await;
        assert_eq!(status, 201, "{body}: {}", self.log());
        body["id"].as_str().unwrap().to_owned()
    }

    async fn stock(&self, product: &str) -> i64 {
        let (status, body) = self.get(&format!("/api/products/{product}")).await;
        assert_eq!(status, 200, "{body}");
        body["stock"].as_i64().unwrap()
    }

    /// Waits until the order is confirmed or rejected; returns the final status.
    async fn settled_status(&self, order: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (status, body) = self.get(&format!("/api/orders/{order}")).await;
            assert_eq!(status, 200, "{body}");
            let state = body["status"].as_str().unwrap().to_owned();
            if state != "pending" {
                return state;
            }
            assert!(Instant::now() < deadline, "order {order} is still pending: {}", self.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for System {
    fn drop(&mut self) {
        self.sigkill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn order(user: &str, product: &str, quantity: i64) -> Value {
    json!({ "user_id": user, "items": [{ "product_id": product, "quantity": quantity }] })
}

/// The order flow, validation, idempotency and the trace, on a running system.
async fn order_flow(system: &System) {
    let user = system.create_user("Ada").await;
    let product = system.create_product(5).await;

    // Confirmed while stock lasts, rejected after; the trace of the POST goes on in
    // the products service's consumer.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let response = system
        .http
        .post(format!("{}/api/orders", system.gateway))
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .json(&order(&user, &product, 2))
        .send()
        .await
        .unwrap();
    assert!(matches!(response.status().as_u16(), 201 | 202), "{}", response.status());
    let confirmed: Value = response.json().await.unwrap();
    let confirmed = confirmed["id"].as_str().unwrap().to_owned();
    assert_eq!(system.settled_status(&confirmed).await, "confirmed");
    let (_, too_many) = system.post("/api/orders", order(&user, &product, 10), None).await;
    let rejected = too_many["id"].as_str().unwrap().to_owned();
    assert_eq!(system.settled_status(&rejected).await, "rejected");
    assert_eq!(system.stock(&product).await, 3);

    let (_, placed) = system.get(&format!("/api/events/streams/order-{confirmed}")).await;
    let first = &placed["events"][0];
    assert_eq!(first["type"], "order.placed");
    assert!(first["traceparent"].as_str().unwrap().contains(trace_id), "{placed}");
    let (_, reserved) = system.get("/api/events?type=stock.reserved&limit=1000").await;
    let reservation = reserved["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["data"]["order_id"] == confirmed.as_str())
        .unwrap_or_else(|| panic!("no stock.reserved for {confirmed}: {reserved}"));
    assert!(
        reservation["traceparent"].as_str().unwrap().contains(trace_id),
        "the consumer's event is not in the POST's trace: {reservation}"
    );

    // The users service's read model, built from order events.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = system.get(&format!("/api/users/{user}/orders")).await;
        assert_eq!(status, 200, "{body}");
        let orders = body["orders"].as_array().cloned().unwrap_or_default();
        let statuses: HashMap<String, String> = orders
            .iter()
            .map(|o| {
                (
                    o["id"].as_str().unwrap_or_default().to_owned(),
                    o["status"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        if statuses.get(&confirmed).map(String::as_str) == Some("confirmed")
            && statuses.get(&rejected).map(String::as_str) == Some("rejected")
        {
            break;
        }
        assert!(Instant::now() < deadline, "the read model never caught up: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Bad input: 4xx problem+json naming the field.
    let (status, problem) = system.post("/api/orders", json!({ "items": [] }), None).await;
    assert!(matches!(status, 400 | 422), "{problem}");
    assert!(problem.to_string().contains("/user_id"), "{problem}");
    let (status, problem) = system.post("/api/orders", order(&user, &product, 0), None).await;
    assert!(matches!(status, 400 | 422), "{problem}");
    assert!(problem.to_string().contains("/items/0/quantity"), "{problem}");
    let (status, problem) = system.post("/api/orders", order("nobody", &product, 1), None).await;
    assert_eq!(status, 422, "{problem}");
    assert!(problem.to_string().contains("/user_id"), "{problem}");
    let (status, problem) = system.post("/api/users", json!({ "name": 7 }), None).await;
    assert!(matches!(status, 400 | 422), "{problem}");
    assert!(problem.to_string().contains("/name"), "{problem}");

    // A retried POST with the same Idempotency-Key gets the first result.
    let key = uuid::Uuid::now_v7().to_string();
    let (first_status, first) =
        system.post("/api/orders", order(&user, &product, 1), Some(&key)).await;
    let (again_status, again) =
        system.post("/api/orders", order(&user, &product, 1), Some(&key)).await;
    assert_eq!((first_status, &first["id"]), (again_status, &again["id"]));
    assert_eq!(system.settled_status(first["id"].as_str().unwrap()).await, "confirmed");
    assert_eq!(system.stock(&product).await, 2);

    // One Prometheus page for the process: the gateway, the consumers, the services.
    let metrics = system
        .http
        .get(format!("{}/_keel/metrics", system.gateway))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for series in [
        "keel_gateway_requests_total",
        "keel_gateway_request_duration_seconds",
        "keel_consumed_total",
        "http_requests_total",
    ] {
        assert!(metrics.contains(series), "{series} missing from /_keel/metrics:\n{metrics}");
    }
}

/// A stream of orders for scarce stock; SIGKILL `keel up` in the middle and start it
/// again: every accepted order ends confirmed or rejected, none is lost, none applied
/// twice, and stock never goes negative.
async fn crash_under_load(system: &mut System) {
    const ORDERS: usize = 30;
    const STOCK: i64 = 20;
    let user = system.create_user("Grace").await;
    let product = system.create_product(STOCK).await;
    let mut accepted: Vec<(String, i64)> = Vec::new();
    for n in 0..ORDERS {
        if n == ORDERS / 2 {
            system.sigkill();
            system.spawn().await;
        }
        let quantity = i64::try_from(n % 3 + 1).unwrap();
        // A client retries with its Idempotency-Key until the system answers.
        let key = format!("crash-{n}-{}", uuid::Uuid::now_v7().simple());
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let response = system
                .http
                .post(format!("{}/api/orders", system.gateway))
                .header("idempotency-key", &key)
                .json(&order(&user, &product, quantity))
                .send()
                .await;
            if let Ok(response) = response
                && matches!(response.status().as_u16(), 201 | 202)
            {
                let body: Value = response.json().await.unwrap();
                accepted.push((body["id"].as_str().unwrap().to_owned(), quantity));
                break;
            }
            assert!(Instant::now() < deadline, "order {n} never accepted: {}", system.log());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let mut confirmed_quantity = 0;
    for (order, quantity) in &accepted {
        match system.settled_status(order).await.as_str() {
            "confirmed" => confirmed_quantity += quantity,
            "rejected" => {}
            other => panic!("order {order} ended {other}"),
        }
    }
    let stock = system.stock(&product).await;
    assert!(stock >= 0, "stock went negative: {stock}");
    assert_eq!(stock, STOCK - confirmed_quantity, "stock and confirmed orders disagree");
    assert_eq!(accepted.len(), ORDERS);
}

/// A read model rebuilt by replay equals the live one.
async fn rebuilt_read_model_equals_live(system: &mut System) {
    let user = system.create_user("Barbara").await;
    let product = system.create_product(2).await;
    for quantity in [1, 1, 1] {
        let (_, body) = system.post("/api/orders", order(&user, &product, quantity), None).await;
        system.settled_status(body["id"].as_str().unwrap()).await;
    }
    let path = format!("/api/users/{user}/orders");
    let live = loop {
        let (_, live) = system.get(&path).await;
        let orders = live["orders"].as_array().cloned().unwrap_or_default();
        if orders.len() == 3 && orders.iter().all(|o| o["status"] != "pending") {
            break live;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    system.sigkill();
    // The read model is the users service's projection: its own binary rebuilds it,
    // on the same database (`keel projections rebuild` only says so).
    let mut refused = Command::new(env!("CARGO_BIN_EXE_keel"));
    refused.args(["projections", "rebuild", "users-orders"]).current_dir(&system.dir);
    for (key, value) in &system.env {
        refused.env(key, value);
    }
    let output = refused.output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "keel has no users-orders projection of its own");
    assert!(stderr.contains("keel-users projections rebuild users-orders"), "{stderr}");
    let mut rebuild = Command::new(service_binary("keel-users"));
    rebuild.args(["projections", "rebuild", "users-orders"]).current_dir(&system.dir);
    for (key, value) in &system.env {
        rebuild.env(key, value);
    }
    let output = rebuild.stderr(Stdio::inherit()).output().unwrap();
    assert!(output.status.success(), "rebuild failed");
    system.spawn().await;
    let (_, rebuilt) = system.get(&path).await;
    assert_eq!(rebuilt, live);
}

/// The binary of an example service, built beside `keel` (the workspace's tests build
/// every binary; with `-p keel-cli` alone, add `-p keel-users`).
fn service_binary(name: &str) -> std::path::PathBuf {
    let keel = std::path::Path::new(env!("CARGO_BIN_EXE_keel"));
    let binary = keel.with_file_name(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        binary.exists(),
        "{} is not built: run the tests with `-p {name}` too (or the whole workspace)",
        binary.display()
    );
    binary
}

async fn whole_system(env: &[(&str, String)]) {
    let mut system = System::start(env).await;
    order_flow(&system).await;
    rebuilt_read_model_equals_live(&mut system).await;
    crash_under_load(&mut system).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_default_sqlite_and_the_log_as_bus() {
    whole_system(&[]).await;
}

/// With `OTEL_EXPORTER_OTLP_ENDPOINT` set and `RUST_LOG` unset, the spans of a request
/// reach an OTLP/HTTP collector (here a stand-in that keeps each export's body).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_the_otlp_collector_at_the_default_log_level() {
    use axum::body::Bytes;
    use axum::http::{StatusCode, Uri};

    let (tx, mut exports) = tokio::sync::mpsc::unbounded_channel::<(String, Bytes)>();
    let collector = axum::Router::new().fallback(move |uri: Uri, body: Bytes| {
        let tx = tx.clone();
        async move {
            let _ = tx.send((uri.path().to_owned(), body));
            StatusCode::OK
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, collector).await });

    let system = System::start(&[("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)]).await;
    let trace_id = uuid::Uuid::new_v4().simple().to_string();
    let response = system
        .http
        .post(format!("{}/api/users", system.gateway))
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .json(&json!({ "name": "Otto", "email": "otto@example.com" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);

    // Protobuf carries the trace id as its 16 raw bytes.
    let raw: Vec<u8> =
        (0..32).step_by(2).map(|i| u8::from_str_radix(&trace_id[i..i + 2], 16).unwrap()).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let mut requests = 0;
    loop {
        match tokio::time::timeout_at(deadline, exports.recv()).await {
            Ok(Some((path, body))) => {
                requests += 1;
                assert_eq!(path, "/v1/traces");
                if body.windows(16).any(|w| w == raw.as_slice()) {
                    break;
                }
            }
            _ => panic!(
                "no span of trace {trace_id} reached the collector ({requests} export request(s)): {}",
                system.log()
            ),
        }
    }
}

#[cfg(feature = "integration")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_rabbitmq_and_consul() {
    let amqp = std::env::var("KEEL_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let consul =
        std::env::var("KEEL_TEST_CONSUL_URL").unwrap_or_else(|_| "http://127.0.0.1:8500".into());
    whole_system(&[
        ("KEEL_DATABASE_URL", keel_testkit::postgres::fresh_database("e2e").await),
        ("KEEL_BUS_URL", amqp),
        ("KEEL_CONSUL_URL", consul),
    ])
    .await;
}

#[cfg(feature = "integration")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_and_kafka() {
    let brokers =
        std::env::var("KEEL_TEST_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
    whole_system(&[
        ("KEEL_DATABASE_URL", keel_testkit::postgres::fresh_database("e2e").await),
        ("KEEL_BUS_URL", format!("kafka://{brokers}?profile=tansu")),
    ])
    .await;
}
