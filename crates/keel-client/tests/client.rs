//! The service client against real HTTP upstreams on loopback that fail, slow down
//! and die.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{Method, Request};
use hyper_util::rt::TokioIo;
use keel_bus::layer::{EventContext, with_context};
use keel_client::{
    Balance, BreakerConfig, BreakerState, ClientConfig, ClientError, Endpoints, PoolConfig,
    RetryBudget, ServedBy, ServiceClient,
};
use keel_core::TraceContext;
use keel_registry::{Instance, Registration, Registry, RegistryError, Watch};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

const OK: u8 = 0;
const UNAVAILABLE: u8 = 1;
const INTERNAL: u8 = 2;
const SLOW: u8 = 3;

/// An HTTP upstream on loopback whose behaviour the test switches, counting its hits.
struct Upstream {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    mode: Arc<AtomicU8>,
    task: Option<JoinHandle<()>>,
}

impl Upstream {
    async fn start(mode: u8) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut upstream =
            Self { addr, hits: Arc::default(), mode: Arc::new(AtomicU8::new(mode)), task: None };
        upstream.serve(listener);
        upstream
    }

    fn serve(&mut self, listener: TcpListener) {
        let (hits, mode, addr) = (self.hits.clone(), self.mode.clone(), self.addr);
        let app = Router::new().fallback(move |method: Method, headers: HeaderMap| {
            let (hits, mode) = (hits.clone(), mode.clone());
            async move { answer(addr, &hits, &mode, method, &headers).await }
        });
        self.task = Some(tokio::spawn(async move {
            // Connections live in this task, so aborting it kills them all.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let service = hyper_util::service::TowerToHyperService::new(app.clone());
                connections.spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
                while connections.try_join_next().is_some() {}
            }
        }));
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Drops the listener and every connection.
    async fn kill(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Serves again on the same port.
    async fn revive(&mut self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(listener) => break listener,
                Err(e) if tokio::time::Instant::now() > deadline => panic!("rebind: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        self.serve(listener);
    }
}

async fn answer(
    addr: SocketAddr,
    hits: &AtomicUsize,
    mode: &AtomicU8,
    method: Method,
    headers: &HeaderMap,
) -> Response {
    hits.fetch_add(1, Ordering::SeqCst);
    match mode.load(Ordering::SeqCst) {
        UNAVAILABLE => return StatusCode::SERVICE_UNAVAILABLE.into_response(),
        INTERNAL => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        SLOW => tokio::time::sleep(Duration::from_secs(30)).await,
        _ => {}
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    axum::Json(serde_json::json!({
        "instance": addr.to_string(),
        "method": method.as_str(),
        "traceparent": header("traceparent"),
        "x-request-id": header("x-request-id"),
        "x-keel-subject": header("x-keel-subject"),
        "x-keel-identity": header("x-keel-identity"),
    }))
    .into_response()
}

fn pool(balance: Balance, failure_threshold: u32, open_for: Duration) -> PoolConfig {
    PoolConfig { balance, breaker: BreakerConfig { failure_threshold, open_for } }
}

fn generous_budget() -> Arc<RetryBudget> {
    Arc::new(RetryBudget::new(Duration::from_secs(60), 1000, 10.0))
}

fn client(
    name: &str,
    upstreams: &[&Upstream],
    pool: PoolConfig,
    config: ClientConfig,
) -> ServiceClient {
    let urls = upstreams.iter().map(|u| u.url()).collect();
    ServiceClient::new(name, Endpoints::fixed(name, urls, pool), config)
}

fn request(method: Method, path: &str) -> Request<Bytes> {
    Request::builder().method(method).uri(path).body(Bytes::new()).unwrap()
}

fn state(client: &ServiceClient, upstream: &Upstream) -> BreakerState {
    let url = upstream.url();
    client.endpoints().states().into_iter().find(|(u, _)| *u == url).unwrap().1
}

const HOUR: Duration = Duration::from_secs(3600);

#[tokio::test]
async fn failing_upstream_is_ejected_and_traffic_goes_to_the_healthy_one() {
    let good = Upstream::start(OK).await;
    let bad = Upstream::start(UNAVAILABLE).await;
    let config =
        ClientConfig { max_retries: 1, retry_budget: generous_budget(), ..Default::default() };
    let client = client("ejected-503", &[&good, &bad], pool(Balance::RoundRobin, 3, HOUR), config);
    for _ in 0..20 {
        // The GET that hits the failing instance is retried on the healthy one.
        let response = client.send(request(Method::GET, "/thing")).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.extensions().get::<ServedBy>().unwrap().0, good.url());
    }
    assert_eq!(bad.hits(), 3, "ejected after the threshold");
    assert_eq!(good.hits(), 20);
    assert_eq!(state(&client, &bad), BreakerState::Open);
    assert_eq!(state(&client, &good), BreakerState::Closed);
}

#[tokio::test]
async fn internal_errors_open_the_breaker_but_are_not_retried() {
    let good = Upstream::start(OK).await;
    let bad = Upstream::start(INTERNAL).await;
    let config =
        ClientConfig { max_retries: 3, retry_budget: generous_budget(), ..Default::default() };
    let client = client("ejected-500", &[&good, &bad], pool(Balance::RoundRobin, 2, HOUR), config);
    let mut statuses = BTreeMap::new();
    for _ in 0..20 {
        let response = client.send(request(Method::GET, "/thing")).await.unwrap();
        *statuses.entry(response.status().as_u16()).or_insert(0) += 1;
    }
    assert_eq!(statuses, BTreeMap::from([(200, 18), (500, 2)]));
    assert_eq!(bad.hits(), 2);
    assert_eq!(state(&client, &bad), BreakerState::Open);
    let error = client.get_json::<Value>("/thing").await;
    assert!(error.is_ok(), "{error:?}");
}

#[tokio::test]
async fn slow_upstream_hits_the_timeout() {
    let slow = Upstream::start(SLOW).await;
    let config =
        ClientConfig { timeout: Duration::from_millis(200), max_retries: 0, ..Default::default() };
    let alone = client("slow-alone", &[&slow], PoolConfig::default(), config.clone());
    let error = alone.send(request(Method::GET, "/")).await.unwrap_err();
    assert!(matches!(error, ClientError::Timeout { .. }), "{error:?}");
    assert!(error.is_retryable());

    // With a fast instance beside it, GETs are retried there, and one timeout
    // (threshold 1) ejects the slow one.
    let fast = Upstream::start(OK).await;
    // Generous enough that the fast one never times out on a loaded machine.
    let timeout = Duration::from_secs(3);
    let config =
        ClientConfig { timeout, max_retries: 1, retry_budget: generous_budget(), ..config };
    let both = client("slow-fast", &[&slow, &fast], pool(Balance::RoundRobin, 1, HOUR), config);
    for _ in 0..4 {
        let response = both.send(request(Method::GET, "/")).await.unwrap();
        assert_eq!(response.extensions().get::<ServedBy>().unwrap().0, fast.url());
    }
    assert_eq!(slow.hits(), 1 + 1, "one timeout opened its breaker");
    assert_eq!(state(&both, &slow), BreakerState::Open);
}

#[tokio::test]
async fn killed_upstream_is_ejected_and_a_probe_closes_its_breaker_when_it_returns() {
    let good = Upstream::start(OK).await;
    let mut dying = Upstream::start(OK).await;
    let config =
        ClientConfig { max_retries: 1, retry_budget: generous_budget(), ..Default::default() };
    let client = client(
        "killed",
        &[&good, &dying],
        pool(Balance::RoundRobin, 2, Duration::from_millis(200)),
        config.clone(),
    );
    for _ in 0..4 {
        client.send(request(Method::GET, "/")).await.unwrap();
    }
    assert_eq!(dying.hits(), 2);
    dying.kill().await;

    let alone = ServiceClient::new(
        "killed-alone",
        Endpoints::fixed("killed-alone", vec![dying.url()], PoolConfig::default()),
        config,
    );
    let error = alone.send(request(Method::GET, "/")).await.unwrap_err();
    assert!(matches!(error, ClientError::Connect { .. }), "{error:?}");

    // Calls keep succeeding on the healthy instance while the dead one is ejected.
    for _ in 0..10 {
        let response = client.send(request(Method::GET, "/")).await.unwrap();
        assert_eq!(response.extensions().get::<ServedBy>().unwrap().0, good.url());
    }
    assert_eq!(state(&client, &dying), BreakerState::Open);

    dying.revive().await;
    let hits_before = dying.hits();
    // Poll until a half-open probe (after `open_for`) has reached it and closed the breaker.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while state(&client, &dying) != BreakerState::Closed {
        assert!(tokio::time::Instant::now() < deadline, "breaker never closed");
        client.send(request(Method::GET, "/")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(dying.hits() > hits_before);
    let served: Vec<String> = served_by(&client, 4).await;
    assert!(served.contains(&dying.url()), "back in rotation: {served:?}");
}

async fn served_by(client: &ServiceClient, n: usize) -> Vec<String> {
    let mut served = Vec::new();
    for _ in 0..n {
        let response = client.send(request(Method::GET, "/")).await.unwrap();
        served.push(response.extensions().get::<ServedBy>().unwrap().0.clone());
    }
    served
}

#[tokio::test]
async fn only_idempotent_calls_are_retried_on_another_instance() {
    let a = Upstream::start(UNAVAILABLE).await;
    let b = Upstream::start(UNAVAILABLE).await;
    let config =
        ClientConfig { max_retries: 1, retry_budget: generous_budget(), ..Default::default() };
    let client = client("idempotent", &[&a, &b], pool(Balance::RoundRobin, 100, HOUR), config);
    let total = || a.hits() + b.hits();

    let response = client.send(request(Method::POST, "/orders")).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(total(), 1, "POST without Idempotency-Key is not retried");

    let response = client.send(request(Method::GET, "/orders")).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(total(), 3);
    assert_eq!((a.hits(), b.hits()), (2, 1), "round robin then the other instance");

    let mut keyed = request(Method::POST, "/orders");
    keyed.headers_mut().insert("idempotency-key", "order-1".parse().unwrap());
    client.send(keyed).await.unwrap();
    assert_eq!(total(), 5, "POST with Idempotency-Key is retried");
    assert_eq!((a.hits(), b.hits()), (3, 2), "on another instance");

    let error =
        client.post_json::<_, Value>("/orders", &serde_json::json!({}), None).await.unwrap_err();
    assert_eq!(error.status(), Some(StatusCode::SERVICE_UNAVAILABLE));
    assert!(error.is_retryable());
    assert_eq!(total(), 6);
}

#[tokio::test]
async fn an_exhausted_budget_stops_retries() {
    let a = Upstream::start(UNAVAILABLE).await;
    let b = Upstream::start(UNAVAILABLE).await;
    // One retry per call deposited, no floor.
    let tight = ClientConfig {
        max_retries: 3,
        retry_budget: Arc::new(RetryBudget::new(Duration::from_secs(60), 0, 1.0)),
        ..Default::default()
    };
    let client_tight =
        client("budget-tight", &[&a, &b], pool(Balance::RoundRobin, 1000, HOUR), tight);
    for _ in 0..5 {
        client_tight.send(request(Method::GET, "/")).await.unwrap();
    }
    assert_eq!(
        a.hits() + b.hits(),
        5 * 2,
        "each call: one attempt and the one retry its deposit pays for"
    );

    // The same calls with a generous budget use all of max_retries.
    let generous =
        ClientConfig { max_retries: 3, retry_budget: generous_budget(), ..Default::default() };
    let client_generous =
        client("budget-generous", &[&a, &b], pool(Balance::RoundRobin, 1000, HOUR), generous);
    client_generous.send(request(Method::GET, "/")).await.unwrap();
    assert_eq!(a.hits() + b.hits(), 5 * 2 + 4);
}

#[tokio::test]
async fn trace_request_id_and_subject_are_propagated() {
    let upstream = Upstream::start(OK).await;
    let client = client("propagate", &[&upstream], PoolConfig::default(), ClientConfig::default());
    let trace = TraceContext::new_root();
    let context = EventContext {
        trace: Some(trace.clone()),
        correlation_id: Some("req-42".into()),
        causation_id: None,
        actor: Some("user-7".into()),
        credentials: Some("signed-identity".into()),
    };
    let echo: Value = with_context(context.clone(), client.get_json("/echo")).await.unwrap();
    let traceparent = TraceContext::parse(echo["traceparent"].as_str().unwrap()).unwrap();
    assert_eq!(traceparent.trace_id(), trace.trace_id());
    assert_ne!(traceparent.span_id(), trace.span_id(), "a child span");
    assert_eq!(echo["x-request-id"], "req-42");
    assert_eq!(echo["x-keel-subject"], "user-7");
    assert_eq!(echo["x-keel-identity"], "signed-identity");

    // Headers the caller set win.
    let mut own = request(Method::GET, "/echo");
    own.headers_mut().insert("x-request-id", "mine".parse().unwrap());
    let response = with_context(context, client.send(own)).await.unwrap();
    let echo: Value = serde_json::from_slice(response.body()).unwrap();
    assert_eq!(echo["x-request-id"], "mine");
    assert_eq!(echo["x-keel-subject"], "user-7");

    // No context, nothing invented.
    let echo: Value = client.get_json("/echo").await.unwrap();
    assert!(echo["traceparent"].is_null() && echo["x-request-id"].is_null());
}

/// A registry whose watch the test drives.
#[derive(Debug)]
struct FakeRegistry {
    rx: tokio::sync::watch::Receiver<Arc<[Instance]>>,
}

#[async_trait::async_trait]
impl Registry for FakeRegistry {
    async fn register(&self, _: &Registration) -> Result<(), RegistryError> {
        Ok(())
    }
    async fn deregister(&self, _: &str) -> Result<(), RegistryError> {
        Ok(())
    }
    async fn healthy(&self, _: &str) -> Result<Vec<Instance>, RegistryError> {
        Ok(self.rx.borrow().to_vec())
    }
    fn watch(&self, _: &str) -> Watch {
        Watch::new(self.rx.clone())
    }
}

fn instance(upstream: &Upstream) -> Instance {
    Instance {
        id: format!("discovered-{}", upstream.addr.port()),
        service: "discovered".into(),
        address: "127.0.0.1".into(),
        port: upstream.addr.port(),
        tags: vec![],
        meta: BTreeMap::new(),
    }
}

#[tokio::test]
async fn discovered_pool_follows_the_registry() {
    let first = Upstream::start(OK).await;
    let second = Upstream::start(OK).await;
    let (tx, rx) =
        tokio::sync::watch::channel::<Arc<[Instance]>>(Arc::from(vec![instance(&first)]));
    let registry = FakeRegistry { rx };
    let client = ServiceClient::discover(&registry, "discovered", ClientConfig::default());
    drop(registry);
    let echo: Value = client.get_json("/").await.unwrap();
    assert_eq!(echo["instance"], first.addr.to_string());

    tx.send(Arc::from(vec![instance(&second)])).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while client.endpoints().base_urls() != vec![second.url()] {
        assert!(tokio::time::Instant::now() < deadline, "snapshot never changed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let echo: Value = client.get_json("/").await.unwrap();
    assert_eq!(echo["instance"], second.addr.to_string());

    tx.send(Arc::from(Vec::new())).unwrap();
    while !client.endpoints().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "snapshot never emptied");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let error = client.get_json::<Value>("/").await.unwrap_err();
    assert!(matches!(error, ClientError::NoInstances(_)), "{error:?}");
}

#[tokio::test]
async fn discovers_through_the_in_process_registry() {
    let first = Upstream::start(OK).await;
    let second = Upstream::start(OK).await;
    let registry = keel_registry::InProcessRegistry::new();
    let service = "discovered-in-process";
    let registration = |upstream: &Upstream| Registration {
        instance: Instance { service: service.into(), ..instance(upstream) },
        check: None,
    };
    registry.register(&registration(&first)).await.unwrap();
    let client = ServiceClient::discover(&registry, service, ClientConfig::default());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while client.endpoints().base_urls() != vec![first.url()] {
        assert!(tokio::time::Instant::now() < deadline, "first instance never discovered");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let echo: Value = client.get_json("/").await.unwrap();
    assert_eq!(echo["instance"], first.addr.to_string());

    registry.register(&registration(&second)).await.unwrap();
    registry.deregister(&registration(&first).instance.id).await.unwrap();
    while client.endpoints().base_urls() != vec![second.url()] {
        assert!(tokio::time::Instant::now() < deadline, "change never followed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let echo: Value = client.get_json("/").await.unwrap();
    assert_eq!(echo["instance"], second.addr.to_string());
}
