//! The whole system, measured from outside (issue 18): orders through the gateway of a
//! real `keel up`, for each deployment set-up in one run.
//!
//! For each set-up the bench starts `keel up` in a fresh directory (its own Postgres
//! database, and its own `KEEL_NAMESPACE` on the shared brokers), creates a user and
//! products with stock enough for every order, opens the events API's live tail
//! (`GET /api/events/live`, Server-Sent Events), waits for five warm-up orders to
//! settle (the consumer groups are formed), and then:
//!
//! 1. **fixed rate**: offers orders at `KEEL_BENCH_RATE` per second (default 100), each
//!    on its own task whatever the previous ones are doing (an open loop, so a slow
//!    system cannot slow the offered load down), and takes the latency from the POST
//!    being sent to the order's outcome (`order.confirmed`) arriving on the live tail;
//! 2. **closed loop at the maximum**: `KEEL_BENCH_CLIENTS` clients (default 16, each
//!    from a loopback address of its own: `keel up`'s gateway limits a client to 200
//!    requests a second) each post their next order as soon as the previous one is
//!    accepted; accepted per second is orders over the time to accept them all,
//!    settled per second is orders over the time until the last outcome was seen on the
//!    tail. Settled/accepted below 0.95 means the consumers fell behind (a backlog
//!    grows, and latency with it).
//!
//! Below each set-up's row, the fixed rate's latency is split into stages by the
//! orders' events' `time` (set when a service makes the event, before its transaction
//! commits) and the wall clock: the POST sent to `order.placed` made, `order.placed` to
//! `stock.reserved` (a commit and a hop to the products service), `stock.reserved` to
//! the outcome (a commit and a hop back to the orders service), and the outcome to its
//! arrival on the live tail (a commit and the tail's read).
//!
//! On Kafka (Tansu) the table also shows a raw rdkafka hop (produce, then consume with
//! the same `fetch.wait.max.ms` as Keel's URL) measured in the same run: an order's
//! outcome takes two hops (order.placed to the products service, stock.reserved back
//! to the orders service), so twice the raw hop is the floor the broker sets.
//!
//! `cargo bench -p keel-cli --bench system`; KEEL_BENCH_SETUPS (comma-separated, of
//! `embedded,postgres,rabbitmq,kafka`; default all), KEEL_BENCH_ORDERS (fixed-rate
//! orders, default 1000), KEEL_BENCH_MAX_ORDERS (closed-loop orders, default 2000),
//! KEEL_BENCH_RATE, KEEL_BENCH_CLIENTS, KEEL_BENCH_KAFKA_FETCH_WAIT_MS (default 10),
//! KEEL_BENCH_KAFKA_PARAMS and KEEL_BENCH_AMQP_PARAMS (more `KEEL_BUS_URL` parameters
//! for Kafka and RabbitMQ, `a=1&b=2`).
//! Needs PostgreSQL, RabbitMQ and the Kafka broker of scripts/services.sh.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::StreamExt as _;
use serde_json::{Value, json};
use tokio::sync::Notify;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// One deployment set-up: a name and the environment `keel up` gets.
struct Setup {
    name: &'static str,
    env: Vec<(&'static str, String)>,
}

#[derive(Debug, Default)]
struct Figures {
    /// Placed (POST sent) to confirmed (seen on the tail) at the fixed rate.
    p50: Duration,
    p99: Duration,
    /// The POST alone at the fixed rate.
    post_p99: Duration,
    accepted_per_s: f64,
    settled_per_s: f64,
    /// Where the time of an order at the fixed rate goes: each stage's p50 and p99.
    stages: Vec<(&'static str, Duration, Duration)>,
    /// A raw broker hop beside it (Kafka only).
    raw_hop: Option<(Duration, Duration)>,
}

/// The stages of the orders' trails (POST sent, then their events' times, then their
/// outcome seen on the tail), each stage's p50 and p99 over the orders whose trail
/// has both ends.
fn stages(
    trails: impl Iterator<Item = (DateTime<Utc>, Trail)>,
) -> Vec<(&'static str, Duration, Duration)> {
    let names = [
        "POST sent to order.placed made",
        "order.placed made to stock.reserved made",
        "stock.reserved made to the outcome made",
        "the outcome made to seen on the tail",
    ];
    let mut spans: [Vec<Duration>; 4] = Default::default();
    for (sent, trail) in trails {
        let points = [Some(sent), trail.placed, trail.reserved, trail.outcome, trail.seen];
        for (n, span) in spans.iter_mut().enumerate() {
            if let (Some(from), Some(to)) = (points[n], points[n + 1]) {
                span.push((to - from).to_std().unwrap_or_default());
            }
        }
    }
    names
        .into_iter()
        .zip(spans)
        .map(|(name, mut span)| {
            span.sort();
            (name, percentile(&span, 50), percentile(&span, 99))
        })
        .collect()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(run());
}

async fn run() {
    let orders = usize::try_from(env_or("KEEL_BENCH_ORDERS", 1000)).unwrap();
    let max_orders = usize::try_from(env_or("KEEL_BENCH_MAX_ORDERS", 2000)).unwrap();
    let rate = env_or("KEEL_BENCH_RATE", 100).max(1);
    let clients = usize::try_from(env_or("KEEL_BENCH_CLIENTS", 16)).unwrap().clamp(1, 250);
    let fetch_wait = env_or("KEEL_BENCH_KAFKA_FETCH_WAIT_MS", 10);
    let chosen = std::env::var("KEEL_BENCH_SETUPS")
        .unwrap_or_else(|_| "embedded,postgres,rabbitmq,kafka".to_owned());

    let mut results = Vec::new();
    for name in chosen.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let setup = setup(name, fetch_wait).await;
        eprintln!(
            "== {}: {orders} orders at {rate}/s, then {max_orders} by {clients} clients",
            setup.name
        );
        let system = System::start(&setup.env).await;
        let mut figures = measure(&system, orders, rate, max_orders, clients).await;
        system.stop();
        if name == "kafka" {
            figures.raw_hop = Some(raw_kafka_hop(fetch_wait, rate).await);
        }
        results.push((setup.name, figures));
    }

    println!();
    println!(
        "{orders} orders at {rate}/s (open loop), then {max_orders} orders by {clients} clients (closed loop); Kafka fetch.wait.max.ms={fetch_wait}"
    );
    println!();
    println!(
        "| set-up | placed-to-confirmed p50 / p99 at {rate}/s | POST p99 | accepted / settled per s at max | settled / accepted |"
    );
    println!("|---|---:|---:|---:|---:|");
    for (name, f) in &results {
        println!(
            "| {name} | {} / {} | {} | {:.0} / {:.0} | {:.2} |",
            ms(f.p50),
            ms(f.p99),
            ms(f.post_p99),
            f.accepted_per_s,
            f.settled_per_s,
            f.settled_per_s / f.accepted_per_s.max(f64::MIN_POSITIVE)
        );
        for (stage, p50, p99) in &f.stages {
            println!(
                "| … {stage} (p50 / p99 of the stage alone) | {} / {} | | | |",
                ms(*p50),
                ms(*p99)
            );
        }
        if let Some((p50, p99)) = f.raw_hop {
            println!(
                "| raw rdkafka hop, same fetch settings (x2 = an order's two hops) | {} / {} (x2: {} / {}) | | | |",
                ms(p50),
                ms(p99),
                ms(p50 * 2),
                ms(p99 * 2)
            );
        }
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

async fn setup(name: &str, fetch_wait: u64) -> Setup {
    let namespace = format!("bench{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
    let postgres = || keel_testkit::postgres::fresh_database("bench");
    match name {
        "embedded" => Setup { name: "embedded (SQLite, log bus)", env: vec![] },
        "postgres" => {
            Setup { name: "Postgres + log bus", env: vec![("KEEL_DATABASE_URL", postgres().await)] }
        }
        "rabbitmq" => Setup {
            name: "Postgres + RabbitMQ",
            env: vec![
                ("KEEL_DATABASE_URL", postgres().await),
                (
                    "KEEL_BUS_URL",
                    // The namespace is thrown away after the run: its queues expire
                    // a minute after their last consumer left.
                    format!(
                        "amqp://guest:guest@127.0.0.1:5672/%2f?queue_expires_ms=60000{}",
                        params("KEEL_BENCH_AMQP_PARAMS")
                    ),
                ),
                ("KEEL_NAMESPACE", namespace),
            ],
        },
        "kafka" => Setup {
            name: "Postgres + Kafka (Tansu)",
            env: vec![
                ("KEEL_DATABASE_URL", postgres().await),
                (
                    "KEEL_BUS_URL",
                    format!(
                        "kafka://127.0.0.1:9092?profile=tansu&rdkafka.fetch.wait.max.ms={fetch_wait}{}",
                        params("KEEL_BENCH_KAFKA_PARAMS")
                    ),
                ),
                ("KEEL_NAMESPACE", namespace),
            ],
        },
        other => panic!("unknown set-up `{other}` (embedded, postgres, rabbitmq, kafka)"),
    }
}

/// More parameters for a set-up's `KEEL_BUS_URL`, from the environment variable `name`
/// (`a=1&b=2`), each after a `&`; nothing when it is unset.
fn params(name: &str) -> String {
    std::env::var(name)
        .ok()
        .map(|params| params.trim_start_matches(['?', '&']).to_owned())
        .filter(|params| !params.is_empty())
        .map(|params| format!("&{params}"))
        .unwrap_or_default()
}

/// Outcomes seen on the live tail: order id to when it was seen; and each order's
/// trail of events, for where the time goes.
#[derive(Default)]
struct Outcomes {
    seen: Mutex<HashMap<String, Instant>>,
    trails: Mutex<HashMap<String, Trail>>,
    changed: Notify,
}

/// The `time` of an order's events (set when the service made the event, before its
/// transaction committed), and when its outcome arrived on the tail, by the wall clock.
#[derive(Clone, Copy, Default)]
struct Trail {
    placed: Option<DateTime<Utc>>,
    reserved: Option<DateTime<Utc>>,
    outcome: Option<DateTime<Utc>>,
    seen: Option<DateTime<Utc>>,
}

impl Outcomes {
    fn record(&self, order: String) {
        self.seen.lock().unwrap().entry(order).or_insert_with(Instant::now);
        self.changed.notify_waiters();
    }

    /// Notes an event of `order`'s seen on the tail.
    fn trace(&self, order: &str, kind: &str, time: Option<DateTime<Utc>>) {
        let mut trails = self.trails.lock().unwrap();
        let trail = trails.entry(order.to_owned()).or_default();
        match kind {
            "order.placed" => trail.placed = time,
            "stock.reserved" | "stock.rejected" => trail.reserved = time,
            "order.confirmed" | "order.rejected" | "order.cancelled" => {
                trail.outcome = time;
                trail.seen = Some(Utc::now());
            }
            _ => {}
        }
    }

    fn trail(&self, order: &str) -> Trail {
        self.trails.lock().unwrap().get(order).copied().unwrap_or_default()
    }

    /// When each of `orders` was seen; waits (up to `patience` without progress) until
    /// all were.
    async fn wait_for(&self, orders: &[String], patience: Duration) -> Vec<Instant> {
        loop {
            let notified = self.changed.notified();
            let (found, missing) = {
                let seen = self.seen.lock().unwrap();
                let found: Vec<Instant> =
                    orders.iter().filter_map(|o| seen.get(o).copied()).collect();
                (found, orders.len() - seen.len().min(orders.len()))
            };
            if found.len() == orders.len() {
                return found;
            }
            if tokio::time::timeout(patience, notified).await.is_err() {
                panic!(
                    "{missing} orders never settled (no outcome on the live tail for {patience:?})"
                );
            }
        }
    }
}

async fn measure(
    system: &System,
    orders: usize,
    rate: u64,
    max_orders: usize,
    clients: usize,
) -> Figures {
    let http = &system.http;
    let (status, user) = system
        .post("/api/users", json!({"name": "Bench", "email": "bench@example.com"}), None)
        .await;
    assert_eq!(status, 201, "{user}");
    let user = user["id"].as_str().unwrap().to_owned();
    let (status, product) = system
        .post(
            "/api/products",
            json!({"name": "Widget", "price_cents": 100, "stock": 1_000_000_000}),
            None,
        )
        .await;
    assert_eq!(status, 201, "{product}");
    let product = product["id"].as_str().unwrap().to_owned();

    let outcomes = Arc::new(Outcomes::default());
    let tail =
        tokio::spawn(follow_tail(http.clone(), system.gateway.clone(), Arc::clone(&outcomes)));
    // The tail starts after the head: give it a moment to be subscribed.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let order_body = json!({"user_id": user, "items": [{"product_id": product, "quantity": 1}]});

    // Warm-up: a few orders settled end to end before anything is measured, so the
    // figures are the steady state and not the consumer groups' first assignment (on
    // Kafka a group takes seconds to form).
    let handle = system.clone_handle();
    let warm_up: Vec<String> =
        futures::future::join_all((0..5).map(|_| handle.place(&order_body))).await;
    outcomes.wait_for(&warm_up, Duration::from_secs(60)).await;

    // 1. The fixed rate.
    let start = Instant::now();
    let period = Duration::from_secs_f64(1.0 / rate as f64);
    let mut posts = Vec::with_capacity(orders);
    for n in 0..orders {
        tokio::time::sleep_until((start + period * u32::try_from(n).unwrap()).into()).await;
        let system = system.clone_handle();
        let body = order_body.clone();
        posts.push(tokio::spawn(async move {
            let (sent, sent_at) = (Instant::now(), Utc::now());
            let id = system.place(&body).await;
            (id, sent, sent.elapsed(), sent_at)
        }));
    }
    let mut placed = Vec::with_capacity(orders);
    for post in posts {
        placed.push(post.await.unwrap());
    }
    let ids: Vec<String> = placed.iter().map(|(id, ..)| id.clone()).collect();
    let settled = outcomes.wait_for(&ids, Duration::from_secs(60)).await;
    let mut latencies: Vec<Duration> = placed
        .iter()
        .zip(&settled)
        .map(|((_, sent, ..), at)| at.saturating_duration_since(*sent))
        .collect();
    let mut post_latencies: Vec<Duration> = placed.iter().map(|(_, _, took, _)| *took).collect();
    let stages = stages(placed.iter().map(|(id, _, _, sent_at)| (*sent_at, outcomes.trail(id))));
    latencies.sort();
    post_latencies.sort();

    // 2. The closed loop.
    let start = Instant::now();
    let per_client = max_orders.div_ceil(clients);
    let mut loops = Vec::new();
    for n in 0..clients {
        let system = system.client_handle(n);
        let body = order_body.clone();
        loops.push(tokio::spawn(async move {
            let mut ids = Vec::with_capacity(per_client);
            for _ in 0..per_client {
                ids.push(system.place(&body).await);
            }
            (ids, Instant::now())
        }));
    }
    let mut ids = Vec::new();
    let mut last_accepted = start;
    for client in loops {
        let (mut theirs, done) = client.await.unwrap();
        ids.append(&mut theirs);
        last_accepted = last_accepted.max(done);
    }
    let settled = outcomes.wait_for(&ids, Duration::from_secs(120)).await;
    let last_settled = settled.into_iter().max().unwrap_or(start);
    tail.abort();

    Figures {
        p50: percentile(&latencies, 50),
        p99: percentile(&latencies, 99),
        post_p99: percentile(&post_latencies, 99),
        stages,
        accepted_per_s: ids.len() as f64 / (last_accepted - start).as_secs_f64(),
        settled_per_s: ids.len() as f64 / (last_settled - start).as_secs_f64(),
        raw_hop: None,
    }
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

/// Reads the live tail and records each order's outcome (confirmed, rejected or
/// cancelled: any of them settles the order) by its stream `order-<id>`.
async fn follow_tail(http: reqwest::Client, gateway: String, outcomes: Arc<Outcomes>) {
    let response = http
        .get(format!("{gateway}/api/events/live"))
        .timeout(Duration::from_secs(3600))
        .send()
        .await
        .expect("the live tail opens");
    assert!(response.status().is_success(), "live tail: {}", response.status());
    let mut body = response.bytes_stream();
    let mut buffer = String::new();
    while let Some(chunk) = body.next().await {
        let Ok(chunk) = chunk else { return };
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let message: String = buffer.drain(..end + 2).collect();
            let mut kind = "";
            let mut data = "";
            for line in message.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    kind = v.trim();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data = v.trim();
                }
            }
            let Ok(event) = serde_json::from_str::<Value>(data) else { continue };
            let Some(order) = order_of(&event) else { continue };
            let time = event["time"].as_str().and_then(|t| t.parse::<DateTime<Utc>>().ok());
            outcomes.trace(&order, kind, time);
            if matches!(kind, "order.confirmed" | "order.rejected" | "order.cancelled") {
                outcomes.record(order);
            }
        }
    }
}

/// The order id of an outcome event: its data's `order_id`, or its stream `order-<id>`.
fn order_of(event: &Value) -> Option<String> {
    if let Some(id) = event["data"]["order_id"].as_str() {
        return Some(id.to_owned());
    }
    event["keelstream"].as_str().and_then(|s| s.strip_prefix("order-")).map(str::to_owned)
}

/// One produce-to-consume hop on the Kafka broker with the same fetch wait as Keel's
/// URL: p50 and p99 over `rate` messages a second for five seconds.
async fn raw_kafka_hop(fetch_wait: u64, rate: u64) -> (Duration, Duration) {
    use rdkafka::ClientConfig;
    use rdkafka::consumer::{Consumer as _, StreamConsumer};
    use rdkafka::message::Message as _;
    use rdkafka::producer::{FutureProducer, FutureRecord};

    let topic = format!("bench-hop-{}", uuid::Uuid::now_v7().simple());
    let brokers = "127.0.0.1:9092";
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "0")
        .set("acks", "all")
        .create()
        .unwrap();
    let admin: rdkafka::admin::AdminClient<_> =
        ClientConfig::new().set("bootstrap.servers", brokers).create().unwrap();
    let _ = admin
        .create_topics(
            &[rdkafka::admin::NewTopic::new(&topic, 1, rdkafka::admin::TopicReplication::Fixed(1))],
            &rdkafka::admin::AdminOptions::new(),
        )
        .await;
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", &topic)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", fetch_wait.to_string())
        .create()
        .unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    // Wait for the assignment: a first message must come back.
    let count = usize::try_from(rate * 5).unwrap();
    let sent: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let receiver = {
        let sent = Arc::clone(&sent);
        tokio::spawn(async move {
            let mut hops = Vec::with_capacity(count);
            while hops.len() < count {
                let message = consumer.recv().await.unwrap();
                let arrived = Instant::now();
                let n: u64 =
                    std::str::from_utf8(message.payload().unwrap()).unwrap().parse().unwrap();
                if let Some(at) = sent.lock().unwrap().remove(&n) {
                    hops.push(arrived - at);
                }
            }
            hops
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let period = Duration::from_secs_f64(1.0 / rate as f64);
    let start = Instant::now();
    for n in 0..count as u64 {
        tokio::time::sleep_until((start + period * u32::try_from(n).unwrap()).into()).await;
        let payload = n.to_string();
        sent.lock().unwrap().insert(n, Instant::now());
        producer
            .send(FutureRecord::<(), _>::to(&topic).payload(&payload), Duration::from_secs(5))
            .await
            .unwrap();
    }
    let mut hops = tokio::time::timeout(Duration::from_secs(60), receiver)
        .await
        .expect("the raw consumer received every message")
        .unwrap();
    hops.sort();
    (percentile(&hops, 50), percentile(&hops, 99))
}

/// A `keel up` process in its own directory, SIGTERMed when stopped.
struct System {
    child: Option<Child>,
    dir: PathBuf,
    gateway: String,
    http: reqwest::Client,
}

/// What a client task needs of the system.
#[derive(Clone)]
struct Handle {
    gateway: String,
    http: reqwest::Client,
}

impl System {
    async fn start(env: &[(&str, String)]) -> Self {
        let dir =
            std::env::temp_dir().join(format!("keel-bench-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let log = std::fs::File::create(dir.join("keel-up.log")).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_keel"));
        command
            .arg("up")
            .current_dir(&dir)
            .env_remove("KEEL_DATABASE_URL")
            .env_remove("KEEL_BUS_URL")
            .env_remove("KEEL_CONSUL_URL")
            .env_remove("KEEL_NAMESPACE")
            .env("KEEL_GATEWAY_ADDR", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command.spawn().expect("keel up starts");
        let system = Self {
            child: Some(child),
            dir,
            gateway: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .pool_max_idle_per_host(64)
                .build()
                .unwrap(),
        };
        system.until_services_answer().await;
        system
    }

    /// Every example service answers through the gateway (404 for an unknown id is an
    /// answer; 503 "no healthy upstream instance" is not yet).
    async fn until_services_answer(&self) {
        for path in ["/api/users/none", "/api/products/none", "/api/orders/none", "/api/events"] {
            let url = format!("{}{path}", self.gateway);
            let mut tries = 0;
            loop {
                match self.http.get(&url).send().await {
                    Ok(r) if r.status() == 404 || r.status() == 200 => break,
                    _ if tries < 600 => tries += 1,
                    other => panic!(
                        "{path} never answered ({other:?}); see {}",
                        self.dir.join("keel-up.log").display()
                    ),
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    fn clone_handle(&self) -> Handle {
        Handle { gateway: self.gateway.clone(), http: self.http.clone() }
    }

    /// A handle that connects from loopback address `127.0.0.<n + 2>`: the gateway
    /// limits each client (by address) to 200 requests a second on a route, so the
    /// closed loop's clients come from addresses of their own, as real ones would.
    fn client_handle(&self, n: usize) -> Handle {
        let address = std::net::Ipv4Addr::new(127, 0, 0, u8::try_from(n + 2).unwrap());
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .local_address(std::net::IpAddr::V4(address))
            .build()
            .unwrap();
        Handle { gateway: self.gateway.clone(), http }
    }

    async fn post(&self, path: &str, body: Value, key: Option<&str>) -> (u16, Value) {
        self.clone_handle().post(path, &body, key).await
    }

    fn stop(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for System {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Handle {
    async fn post(&self, path: &str, body: &Value, key: Option<&str>) -> (u16, Value) {
        let mut request = self.http.post(format!("{}{path}", self.gateway)).json(body);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Places one order (retrying a refusal for load, 429 or 503, with the same
    /// idempotency key) and returns its id.
    async fn place(&self, body: &Value) -> String {
        let key = uuid::Uuid::now_v7().to_string();
        for _ in 0..100 {
            let (status, answer) = self.post("/api/orders", body, Some(&key)).await;
            match status {
                201 | 202 => return answer["id"].as_str().unwrap().to_owned(),
                429 | 503 => tokio::time::sleep(Duration::from_millis(50)).await,
                _ => panic!("POST /api/orders: {status} {answer}"),
            }
        }
        panic!("POST /api/orders refused for load 100 times");
    }
}
