//! The fault harness (issue 18): the example system deployed as separate processes
//! (two instances of each service, two relays of one name, the gateway), registered
//! in a Consul dev agent of the run's own under a namespace of the run's own, on
//! PostgreSQL + RabbitMQ and on PostgreSQL + Kafka (a Tansu broker of the run's own),
//! takes a bounded load of orders through the gateway while the harness injects
//! faults:
//!
//! - `sigkill`: a random process is SIGKILLed, then started again;
//! - `sigstop`: a random process is SIGSTOPped for up to 4 s, then SIGCONTed;
//! - `postgres cut` / `rabbitmq cut`: every connection through the proxy in front of
//!   the service is closed;
//! - `postgres outage` / `rabbitmq outage`: the same, and new connections are refused
//!   for up to 4 s (what a restart of the service looks like from the processes);
//! - `postgres stall` / `rabbitmq stall`: no byte goes through for up to 4 s;
//! - `consul restart`: the run's Consul agent is stopped (SIGKILL or SIGTERM), kept
//!   down for 0.5 to 4 s and started again on the same ports; a dev agent forgets
//!   every registration, so the services register again;
//! - `kafka pause` (Kafka set-up): the run's Tansu broker is SIGSTOPped for 0.5 to 4 s,
//!   then SIGCONTed (Tansu keeps its log in memory: a restart would lose it by
//!   construction, a pause loses nothing).
//!
//! The processes reach PostgreSQL and RabbitMQ through loopback TCP proxies written
//! for the harness (tests/faults/proxy.rs), so the shared PostgreSQL and RabbitMQ of
//! `scripts/services.sh` are never restarted and the other tests are not disturbed.
//! Consul and the Kafka broker cannot be stood in for by a proxy (a proxy cannot make
//! Consul forget its registrations; Kafka clients learn the broker's address from its
//! metadata and would go around one), so the run has its own of each, which it
//! restarts or pauses for real (tests/faults/deployment.rs, `Daemon`).
//!
//! Each client retries an order with the same `Idempotency-Key` on connection errors,
//! timeouts and 5xx answers until it is accepted. Then, with every process running
//! again, the harness checks that the deployment is whole again (two passing instances
//! of each service in Consul, the gateway routing to each), that every accepted order
//! settles (confirmed, rejected or cancelled), that the log holds exactly one
//! `order.placed` per accepted order (none lost, none doubled) and exactly one outcome
//! of the stock and of the order, that each product's stock is its initial stock minus
//! what confirmed orders took (never negative, the reservations agree), that each
//! consumer group's inbox holds every log event the group is subscribed to (the bus
//! delivered everything; the inbox's key makes a second processing impossible), and
//! that the users service's read model equals its rebuild from the log. It prints a
//! summary.
//!
//! The CI round runs the load for 45 s per set-up (a few hundred orders). Longer, by
//! hand: `KEEL_FAULTS_SECS=600 cargo nextest run -p keel-cli --all-features --test
//! faults` (build `-p keel-users -p keel-products -p keel-orders` first). Also
//! `KEEL_FAULTS_SEED` (the faults' and the orders' random choices; printed by each
//! run), `KEEL_FAULTS_CLIENTS` (default 4) and `KEEL_FAULTS_LOG` (the processes'
//! `RUST_LOG`, default `warn`; their logs are in the directory the summary names).
//! See docs/faults.md. Needs the `integration` feature, the PostgreSQL and RabbitMQ
//! of `scripts/services.sh`, and its `consul` and `tansu` binaries on PATH.
#![cfg(feature = "integration")]
#![allow(clippy::unwrap_used)]

#[path = "faults/deployment.rs"]
mod deployment;
#[path = "faults/proxy.rs"]
mod proxy;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deployment::{Broker, Deployment};
use serde_json::{Value, json};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions as _, Row as _};
use tokio::time::Instant;

/// How long one order may take to be accepted, retries included, before the harness
/// calls it unanswered (a failure).
const ORDER_PATIENCE: Duration = Duration::from_secs(120);

/// How long the accepted orders may take to settle once the faults stop.
const SETTLE_PATIENCE: Duration = Duration::from_secs(180);

/// How long the deployment may take, once the faults stop, to be whole again: two
/// passing instances of each service in Consul, the gateway routing to each.
const RECOVERY_PATIENCE: Duration = Duration::from_secs(120);

const USERS: usize = 4;
const PRODUCTS: usize = 5;
const INITIAL_STOCK: i64 = 100;

pub(crate) fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .connect_timeout(Duration::from_secs(2))
        .build()
        .unwrap()
}

fn env_number(key: &str, default: u64) -> u64 {
    match std::env::var(key) {
        Err(_) => default,
        Ok(text) => {
            text.trim().parse().unwrap_or_else(|_| panic!("{key}=`{text}` is not a number"))
        }
    }
}

/// A small seeded generator (xorshift64*): a run's choices are repeated by its seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % u64::try_from(n).unwrap()).unwrap()
    }

    fn millis(&mut self, low: u64, high: u64) -> Duration {
        Duration::from_millis(low + self.next() % (high - low))
    }
}

/// What the clients saw.
#[derive(Default)]
struct Ledger {
    /// Accepted orders: id -> items (product id, quantity).
    accepted: HashMap<String, Vec<(String, i64)>>,
    /// Orders never accepted within [`ORDER_PATIENCE`].
    unanswered: usize,
    /// Answers that were neither an acceptance nor worth a retry (a 4xx but 409/429).
    refused: Vec<String>,
    /// Attempts retried (connection errors, timeouts, 5xx, 409, 429).
    retries: usize,
    /// Retries answered from the idempotency record (`Idempotent-Replayed: true`).
    replayed: usize,
}

/// POSTs `body` to `url` with `Idempotency-Key: key` until it is answered with a
/// success; `None` if it is refused for good or patience runs out.
async fn post_until_accepted(
    http: &reqwest::Client,
    url: &str,
    key: &str,
    body: &Value,
    ledger: &Mutex<Ledger>,
) -> Option<Value> {
    let deadline = Instant::now() + ORDER_PATIENCE;
    loop {
        match http.post(url).header("idempotency-key", key).json(body).send().await {
            Ok(response) if response.status().is_success() => {
                let replayed = response.headers().contains_key("idempotent-replayed");
                if let Ok(answer) = response.json::<Value>().await {
                    if replayed {
                        ledger.lock().unwrap().replayed += 1;
                    }
                    return Some(answer);
                }
            }
            Ok(response)
                if response.status().is_server_error()
                    || response.status() == 409
                    || response.status() == 429 => {}
            Ok(response) => {
                let status = response.status();
                let text = response.text().await.unwrap_or_default();
                ledger.lock().unwrap().refused.push(format!("{status} for {body}: {text}"));
                return None;
            }
            Err(_) => {}
        }
        if Instant::now() > deadline {
            ledger.lock().unwrap().unanswered += 1;
            return None;
        }
        ledger.lock().unwrap().retries += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What the clients share.
#[derive(Clone)]
struct Load {
    gateway: String,
    users: Arc<Vec<String>>,
    products: Arc<Vec<String>>,
    /// When the round ends.
    until: Instant,
    /// Orders left to place.
    budget: Arc<std::sync::atomic::AtomicI64>,
    /// Between one client's orders.
    pause: Duration,
    ledger: Arc<Mutex<Ledger>>,
}

/// One client: orders of one or two products, one to three of each, until the round
/// ends or the orders budget is spent.
async fn client(load: Load, mut rng: Rng) {
    use std::sync::atomic::Ordering;
    let Load { gateway, users, products, until, budget, pause, ledger } = load;
    let http = http();
    let url = format!("{gateway}/api/orders");
    while Instant::now() < until && budget.fetch_sub(1, Ordering::SeqCst) > 0 {
        let user = &users[rng.below(users.len())];
        let first = rng.below(products.len());
        let mut items = vec![(products[first].clone(), 1 + i64::try_from(rng.below(3)).unwrap())];
        if rng.below(2) == 0 {
            let second = (first + 1 + rng.below(products.len() - 1)) % products.len();
            items.push((products[second].clone(), 1 + i64::try_from(rng.below(3)).unwrap()));
        }
        let body = json!({
            "user_id": user,
            "items": items.iter().map(|(p, q)| json!({"product_id": p, "quantity": q})).collect::<Vec<_>>(),
        });
        let key = uuid::Uuid::now_v7().to_string();
        if let Some(answer) = post_until_accepted(&http, &url, &key, &body, &ledger).await {
            let id = answer["id"].as_str().expect("an order id").to_owned();
            ledger.lock().unwrap().accepted.insert(id, items);
        }
        tokio::time::sleep(pause).await;
    }
}

/// Creates the users and products the orders name (retrying like the clients).
async fn catalogue(gateway: &str, ledger: &Mutex<Ledger>) -> (Vec<String>, Vec<String>) {
    let http = http();
    let mut users = Vec::new();
    for n in 0..USERS {
        let body =
            json!({"name": format!("Client {n}"), "email": format!("client{n}@example.com")});
        let key = uuid::Uuid::now_v7().to_string();
        let user = post_until_accepted(&http, &format!("{gateway}/api/users"), &key, &body, ledger)
            .await
            .expect("a user");
        users.push(user["id"].as_str().unwrap().to_owned());
    }
    let mut products = Vec::new();
    for n in 0..PRODUCTS {
        let body =
            json!({"name": format!("Part {n}"), "price_cents": 100 + n, "stock": INITIAL_STOCK});
        let key = uuid::Uuid::now_v7().to_string();
        let url = format!("{gateway}/api/products");
        let product =
            post_until_accepted(&http, &url, &key, &body, ledger).await.expect("a product");
        products.push(product["id"].as_str().unwrap().to_owned());
    }
    (users, products)
}

/// The kinds of fault a set-up can inject.
fn fault_kinds(deployment: &Deployment) -> Vec<&'static str> {
    let mut kinds = vec![
        "sigkill",
        "sigkill",
        "sigstop",
        "postgres cut",
        "postgres outage",
        "postgres stall",
        "consul restart",
    ];
    if deployment.broker.is_some() {
        kinds.extend(["rabbitmq cut", "rabbitmq outage", "rabbitmq stall"]);
    }
    if deployment.kafka.is_some() {
        kinds.push("kafka pause");
    }
    kinds
}

/// Injects faults until `until`; returns how many of each kind.
async fn inject(
    deployment: &mut Deployment,
    rng: &mut Rng,
    until: Instant,
) -> BTreeMap<String, usize> {
    let kinds = fault_kinds(deployment);
    let mut injected = BTreeMap::new();
    while Instant::now() < until {
        tokio::time::sleep(rng.millis(500, 2000)).await;
        deployment.supervise();
        let kind = kinds[rng.below(kinds.len())];
        let process = rng.below(deployment.processes.len());
        let mut label = deployment.processes[process].label.clone();
        match kind {
            "sigkill" => {
                deployment.kill(process);
                tokio::time::sleep(rng.millis(100, 1500)).await;
                deployment.restart(process);
            }
            "sigstop" => {
                deployment.signal(process, "STOP");
                tokio::time::sleep(rng.millis(300, 4000)).await;
                deployment.signal(process, "CONT");
            }
            "consul restart" => {
                // The dev agent forgets every registration: the services register again.
                let signal = if rng.below(2) == 0 { "KILL" } else { "TERM" };
                let down = rng.millis(500, 4000);
                deployment.consul_agent.stop(signal).await;
                tokio::time::sleep(down).await;
                deployment.consul_agent.start();
                label = format!("(SIG{signal}, down {down:?})");
            }
            "kafka pause" => {
                let kafka = deployment.kafka.as_mut().expect("a Kafka broker");
                let paused = rng.millis(500, 4000);
                kafka.pause(true);
                tokio::time::sleep(paused).await;
                kafka.pause(false);
                label = format!("({paused:?})");
            }
            _ => {
                let proxy = if kind.starts_with("postgres") {
                    deployment.postgres.clone()
                } else {
                    deployment.broker.clone().expect("a broker proxy")
                };
                if kind.ends_with("cut") {
                    proxy.cut();
                } else if kind.ends_with("outage") {
                    proxy.outage(rng.millis(500, 4000)).await;
                } else {
                    proxy.stall(rng.millis(500, 4000)).await;
                }
            }
        }
        let what = if kind.starts_with("sig") || kind == "consul restart" || kind == "kafka pause" {
            format!("{kind} {label}")
        } else {
            kind.to_owned()
        };
        eprintln!("faults: {what}");
        *injected.entry(kind.to_owned()).or_default() += 1;
    }
    injected
}

/// One event of the log, as the checks need it.
struct LogEvent {
    id: String,
    topic: String,
    ty: String,
    data: Value,
}

async fn connect(deployment: &Deployment) -> sqlx::PgConnection {
    let options: PgConnectOptions = deployment.database_url.parse().unwrap();
    options
        .options([("search_path", format!("\"{}\"", deployment.namespace))])
        .connect()
        .await
        .unwrap()
}

async fn read_log(db: &mut sqlx::PgConnection) -> Vec<LogEvent> {
    let rows =
        sqlx::query("SELECT event_id, topic, event_type, data FROM keel_events ORDER BY position")
            .fetch_all(db)
            .await
            .unwrap();
    rows.iter()
        .map(|row| LogEvent {
            id: row.get("event_id"),
            topic: row.get("topic"),
            ty: row.get("event_type"),
            data: row
                .get::<Option<Vec<u8>>, _>("data")
                .and_then(|bytes| serde_json::from_slice(&bytes).ok())
                .unwrap_or(Value::Null),
        })
        .collect()
}

/// Waits until every accepted order is settled as the orders service (through the
/// gateway) sees it; returns each one's status.
async fn settled(deployment: &mut Deployment, ledger: &Ledger) -> HashMap<String, String> {
    let http = http();
    let deadline = Instant::now() + SETTLE_PATIENCE;
    let mut statuses = HashMap::new();
    for id in ledger.accepted.keys() {
        loop {
            deployment.supervise();
            let url = format!("{}/api/orders/{id}", deployment.gateway);
            if let Ok(response) = http.get(&url).send().await
                && response.status() == 200
                && let Ok(order) = response.json::<Value>().await
                && order["status"] != "pending"
            {
                statuses.insert(id.clone(), order["status"].as_str().unwrap().to_owned());
                break;
            }
            if Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    statuses
}

/// The users service's read model, without its timestamps.
async fn users_orders(
    db: &mut sqlx::PgConnection,
) -> Vec<(String, String, String, String, Option<String>)> {
    sqlx::query_as(
        "SELECT order_id, user_id, status, items, reason FROM users_orders ORDER BY order_id",
    )
    .fetch_all(db)
    .await
    .unwrap()
}

async fn run(broker: Broker, label: &str) {
    let secs = env_number("KEEL_FAULTS_SECS", 45);
    let clients = env_number("KEEL_FAULTS_CLIENTS", 4).max(1);
    let max_orders = env_number("KEEL_FAULTS_ORDERS", 8 * secs).max(1);
    let seed =
        env_number("KEEL_FAULTS_SEED", u64::try_from(nanos() % u128::from(u32::MAX)).unwrap());
    let mut rng = Rng::new(seed);
    let mut deployment = Deployment::start(broker).await;
    eprintln!(
        "faults ({label}): seed {seed}, namespace {}, logs in {}",
        deployment.namespace,
        deployment.dir.display()
    );
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let (users, products) = catalogue(&deployment.gateway, &ledger).await;

    let until = Instant::now() + Duration::from_secs(secs);
    let load = Load {
        gateway: deployment.gateway.clone(),
        users: Arc::new(users),
        products: Arc::new(products),
        until,
        budget: Arc::new(std::sync::atomic::AtomicI64::new(i64::try_from(max_orders).unwrap())),
        // Spread over the round: about `max_orders` in `secs`.
        pause: Duration::from_secs(secs * clients) / u32::try_from(max_orders).unwrap(),
        ledger: ledger.clone(),
    };
    let products = load.products.clone();
    let clients_running: Vec<_> = (0..clients)
        .map(|n| {
            let rng = Rng::new(seed ^ (n + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            tokio::spawn(client(load.clone(), rng))
        })
        .collect();
    drop(load);
    let injected = inject(&mut deployment, &mut rng, until).await;
    deployment.heal();
    let healed = Instant::now();
    for client in clients_running {
        // Supervise while the last orders are retried.
        let mut client = client;
        loop {
            match tokio::time::timeout(Duration::from_millis(500), &mut client).await {
                Ok(joined) => break joined.unwrap(),
                Err(_) => deployment.supervise(),
            }
        }
    }
    let ledger = Arc::try_unwrap(ledger).ok().unwrap().into_inner().unwrap();

    // Every check runs, then the failures are reported together with the summary.
    let mut failures = Vec::new();

    // The deployment is whole again: every service registered (again, after a restart
    // of the Consul agent, which forgets them all) with two passing instances, and the
    // gateway's discovery routes to each.
    let recovered = deployment.until_ready(RECOVERY_PATIENCE).await;
    let recovery = healed.elapsed();
    if let Err(error) = recovered {
        failures.push(format!("not whole again after the faults: {error}"));
    }

    let statuses = settled(&mut deployment, &ledger).await;
    let mut db = connect(&deployment).await;
    let log = read_log(&mut db).await;

    // Orders: one placement per accepted order, none more; one outcome each.
    let mut placed: HashMap<String, usize> = HashMap::new();
    let mut outcomes: HashMap<String, Vec<&str>> = HashMap::new();
    let mut stock_outcomes: HashMap<String, Vec<&str>> = HashMap::new();
    for event in &log {
        let order = event.data["order_id"].as_str().unwrap_or_default().to_owned();
        match event.ty.as_str() {
            "order.placed" => *placed.entry(order).or_default() += 1,
            "order.confirmed" | "order.rejected" | "order.cancelled" => {
                outcomes.entry(order).or_default().push(event.ty.as_str());
            }
            "stock.reserved" | "stock.rejected" => {
                stock_outcomes.entry(order).or_default().push(event.ty.as_str());
            }
            _ => {}
        }
    }
    let lost: Vec<&String> =
        ledger.accepted.keys().filter(|id| !placed.contains_key(*id)).collect();
    let doubled = placed.values().map(|n| n - 1).sum::<usize>()
        + placed.keys().filter(|id| !ledger.accepted.contains_key(*id)).count();
    if !lost.is_empty() {
        failures.push(format!("{} accepted order(s) not in the log: {lost:?}", lost.len()));
    }
    if doubled > 0 {
        failures.push(format!(
            "{doubled} order(s) placed more than once or never accepted: {:?}",
            placed
                .iter()
                .filter(|(id, n)| **n > 1 || !ledger.accepted.contains_key(*id))
                .collect::<Vec<_>>()
        ));
    }
    let unsettled: Vec<&String> =
        ledger.accepted.keys().filter(|id| !statuses.contains_key(*id)).collect();
    if !unsettled.is_empty() {
        failures.push(format!(
            "{} accepted order(s) never settled within {SETTLE_PATIENCE:?}: {:?}",
            unsettled.len(),
            &unsettled[..unsettled.len().min(10)]
        ));
    }
    for (id, status) in &statuses {
        let decided = outcomes.get(id).map(Vec::as_slice).unwrap_or_default();
        if decided.len() != 1 || decided[0] != format!("order.{status}") {
            failures.push(format!("order {id} is {status}, its stream has {decided:?}"));
        }
        let stock = stock_outcomes.get(id).map(Vec::as_slice).unwrap_or_default();
        let expected = match status.as_str() {
            "confirmed" => stock == ["stock.reserved"],
            "rejected" => stock == ["stock.rejected"],
            _ => stock.len() <= 1,
        };
        if !expected {
            failures.push(format!("order {id} is {status}, its stock answers are {stock:?}"));
        }
    }

    // Stock: initial minus what confirmed orders took; the reservations agree.
    let mut taken: HashMap<&str, i64> = HashMap::new();
    for (id, items) in &ledger.accepted {
        if statuses.get(id).map(String::as_str) == Some("confirmed") {
            for (product, quantity) in items {
                *taken.entry(product.as_str()).or_default() += quantity;
            }
        }
    }
    for product in products.iter() {
        let (stock,): (i64,) = sqlx::query_as("SELECT stock FROM products_products WHERE id = $1")
            .bind(product)
            .fetch_one(&mut db)
            .await
            .unwrap();
        let (reserved,): (Option<i64>,) = sqlx::query_as(
            "SELECT SUM(quantity)::BIGINT FROM products_reservations WHERE product_id = $1",
        )
        .bind(product)
        .fetch_one(&mut db)
        .await
        .unwrap();
        let expected = INITIAL_STOCK - taken.get(product.as_str()).copied().unwrap_or(0);
        if stock != expected || stock < 0 || reserved.unwrap_or(0) != INITIAL_STOCK - expected {
            failures.push(format!(
                "product {product}: stock {stock}, expected {expected}; reserved {reserved:?}"
            ));
        }
    }

    // The bus delivered every log event to every group: each group's inbox holds each
    // event it is subscribed to. An order can settle before one of its events reached a
    // group (the saga takes its inputs in any order), and a killed Kafka member holds
    // its partitions until its session times out: wait for the inboxes to drain (every
    // group's subscribed events processed), as long as orders may take to settle.
    let groups: [(&str, &[(&str, &str)]); 2] = [
        ("products-stock", &[("order", "order.placed"), ("order", "order.cancelled")]),
        (
            "orders-fulfilment",
            &[
                ("order", "order.placed"),
                ("order", "order.cancelled"),
                ("order", "order.deadline_passed"),
                ("stock", "stock.reserved"),
                ("stock", "stock.rejected"),
            ],
        ),
    ];
    let deadline = Instant::now() + SETTLE_PATIENCE;
    let inbox: Vec<(String, String)> = loop {
        let inbox: Vec<(String, String)> =
            sqlx::query_as("SELECT group_name, event_id FROM keel_inbox")
                .fetch_all(&mut db)
                .await
                .unwrap();
        let subscribed_events = groups
            .iter()
            .map(|(_, subscribed)| {
                log.iter()
                    .filter(|e| subscribed.contains(&(e.topic.as_str(), e.ty.as_str())))
                    .count()
            })
            .sum::<usize>();
        if inbox.len() >= subscribed_events || Instant::now() > deadline {
            break inbox;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut processed: HashMap<&str, HashSet<&str>> = HashMap::new();
    for (group, event) in &inbox {
        processed.entry(group.as_str()).or_default().insert(event.as_str());
    }
    let mut delivered = 0;
    for (group, subscribed) in groups {
        let seen: HashSet<&str> = processed
            .iter()
            .filter(|(name, _)| name.ends_with(group))
            .flat_map(|(_, ids)| ids.iter().copied())
            .collect();
        let missing: Vec<&str> = log
            .iter()
            .filter(|e| subscribed.contains(&(e.topic.as_str(), e.ty.as_str())))
            .filter(|e| !seen.contains(e.id.as_str()))
            .map(|e| e.id.as_str())
            .collect();
        delivered += seen.len();
        if !missing.is_empty() {
            failures.push(format!(
                "group {group} never processed {} event(s) of the log, e.g. {:?} (inbox groups: {:?})",
                missing.len(),
                &missing[..missing.len().min(5)],
                processed.keys().collect::<Vec<_>>()
            ));
        }
    }

    // The read model equals its rebuild from the log (once it has caught up).
    let deadline = Instant::now() + SETTLE_PATIENCE;
    let live = loop {
        let model = users_orders(&mut db).await;
        let caught_up = model.len() == ledger.accepted.len()
            && model.iter().all(|row| statuses.get(&row.0) == Some(&row.2));
        if caught_up || Instant::now() > deadline {
            break model;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let rebuild = std::process::Command::new(
        std::path::Path::new(env!("CARGO_BIN_EXE_keel")).with_file_name("keel-users"),
    )
    .args(["projections", "rebuild", "users-orders", "--wait"])
    .env("KEEL_DATABASE_URL", &deployment.database_url)
    .env("KEEL_NAMESPACE", &deployment.namespace)
    .env_remove("KEEL_BUS_URL")
    .env_remove("KEEL_CONSUL_URL")
    .output()
    .unwrap();
    if rebuild.status.success() {
        let rebuilt = users_orders(&mut db).await;
        if rebuilt != live {
            let differ = live.iter().zip(&rebuilt).find(|(a, b)| a != b);
            failures.push(format!(
                "users_orders: {} live row(s), {} rebuilt; first difference {differ:?}",
                live.len(),
                rebuilt.len()
            ));
        }
    } else {
        failures.push(format!(
            "keel-users projections rebuild users-orders failed: {}",
            String::from_utf8_lossy(&rebuild.stderr)
        ));
    }
    let statuses_seen: BTreeMap<&str, usize> =
        statuses.values().fold(BTreeMap::new(), |mut m, s| {
            *m.entry(s.as_str()).or_default() += 1;
            m
        });
    if ledger.unanswered > 0 || !ledger.refused.is_empty() {
        failures.push(format!(
            "{} order(s) unanswered within {ORDER_PATIENCE:?}; refused: {:?}",
            ledger.unanswered, ledger.refused
        ));
    }

    let summary = format!(
        "fault harness ({label}, {secs} s, {clients} clients, seed {seed}):\n  \
         faults injected: {injected:?} (processes that exited on their own and were restarted: {:?})\n  \
         orders accepted: {}, settled: {} {statuses_seen:?}, lost: {}, doubled: {doubled}\n  \
         retries: {} ({} answered from the idempotency record), unanswered: {}, refused: {}\n  \
         log events: {}, inbox marks of the checked groups: {delivered}\n  \
         whole again (two passing instances of each service, the gateway routing) {:.1} s after the faults",
        deployment.exits,
        ledger.accepted.len(),
        statuses.len(),
        lost.len(),
        ledger.retries,
        ledger.replayed,
        ledger.unanswered,
        ledger.refused.len(),
        log.len(),
        recovery.as_secs_f64(),
    );
    eprintln!("{summary}");
    if failures.is_empty() {
        deployment.stop().await;
    } else {
        let tails: Vec<String> = ["orders-1", "products-1", "relay-1", "gateway"]
            .iter()
            .map(|p| deployment.log_tail(p))
            .collect();
        panic!("{summary}\nFAILED:\n  {}\n{}", failures.join("\n  "), tails.join("\n"));
    }
}

fn nanos() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn faults_postgres_rabbitmq() {
    run(Broker::RabbitMq, "Postgres + RabbitMQ").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn faults_postgres_kafka() {
    run(Broker::Kafka, "Postgres + Kafka (Tansu)").await;
}
