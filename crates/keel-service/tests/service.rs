//! The kit over real HTTP on loopback, with the in-process registry.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::{config, graceful_shutdown, start, until_healthy};
use keel_registry::{InProcessRegistry, Registry};
use keel_service::{PROBLEM_JSON, Readiness};
use serde_json::Value;

fn registry() -> Arc<InProcessRegistry> {
    Arc::new(InProcessRegistry::new())
}

async fn problem(response: reqwest::Response, status: u16) -> Value {
    assert_eq!(response.status(), status);
    assert_eq!(response.headers()["content-type"], PROBLEM_JSON);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], status);
    body
}

#[tokio::test]
async fn health_ready_and_metrics() {
    let registry = registry();
    let config = config(registry.clone());
    let name = config.name.clone();
    let h = start(config, Readiness::new().check("database", || async { Ok(()) })).await;
    until_healthy(&*registry, &name, &[h.running.instance_id()]).await;
    assert!(h.running.instance_id().starts_with(&format!("{name}-")));

    let health = h.client.get(format!("{}/health", h.base)).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.json::<Value>().await.unwrap(), serde_json::json!({"status": "ok"}));
    let ready = h.client.get(format!("{}/ready", h.base)).send().await.unwrap();
    assert_eq!(ready.status(), 200);

    let _ = h.client.get(format!("{}/nowhere/1", h.base)).send().await.unwrap();
    let metrics = h.client.get(format!("{}/metrics", h.base)).send().await.unwrap();
    assert_eq!(metrics.status(), 200);
    let text = metrics.text().await.unwrap();
    let line = |route: &str, status: &str| {
        text.lines().any(|l| {
            l.starts_with("http_requests_total{")
                && l.contains(&format!("service=\"{name}\""))
                && l.contains(&format!("route=\"{route}\""))
                && l.contains(&format!("status=\"{status}\""))
        })
    };
    assert!(line("/health", "200"), "{text}");
    assert!(line("unmatched", "404"), "{text}");
    assert!(text.contains("http_request_duration_seconds_bucket{"), "{text}");
}

#[tokio::test]
async fn failing_readiness_is_a_503_naming_the_check() {
    let registry = registry();
    let readiness = Readiness::new()
        .check("database", || async { Ok(()) })
        .check("bus", || async { Err("connection refused".to_owned()) });
    let h = start(config(registry.clone()), readiness).await;
    let ready = h.client.get(format!("{}/ready", h.base)).send().await.unwrap();
    let body = problem(ready, 503).await;
    assert_eq!(
        body["errors"],
        serde_json::json!([{"pointer": "bus", "detail": "connection refused"}])
    );
    assert!(body["detail"].as_str().unwrap().contains("bus"));
}

#[tokio::test]
async fn request_ids_are_echoed_or_generated() {
    let h = start(config(registry()), Readiness::new()).await;
    let response = h
        .client
        .get(format!("{}/health", h.base))
        .header("x-request-id", "req-123")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "req-123");
    let response = h.client.get(format!("{}/health", h.base)).send().await.unwrap();
    let id = response.headers()["x-request-id"].to_str().unwrap();
    assert_eq!(uuid::Uuid::parse_str(id).unwrap().get_version_num(), 7);
}

#[tokio::test]
async fn trace_context_is_continued_and_reaches_the_handler() {
    let h = start(config(registry()), Readiness::new()).await;
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let response = h
        .client
        .get(format!("{}/context", h.base))
        .header("traceparent", parent)
        .header("tracestate", "vendor=1")
        .header("x-request-id", "req-7")
        .header("x-keel-subject", "user-42")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let traceparent = response.headers()["traceparent"].to_str().unwrap().to_owned();
    assert_eq!(response.headers()["tracestate"], "vendor=1");
    let server = keel_core::TraceContext::parse(&traceparent).unwrap();
    assert_eq!(server.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_ne!(server.span_id(), "00f067aa0ba902b7");
    let context: Value = response.json().await.unwrap();
    assert_eq!(context["traceparent"], traceparent.as_str());
    assert_eq!(context["correlation_id"], "req-7");
    assert_eq!(context["actor"], "user-42");
    assert_eq!(context["causation_id"], Value::Null);

    // Without a traceparent a new trace starts, and the request id correlates.
    let response = h.client.get(format!("{}/context", h.base)).send().await.unwrap();
    let traceparent = response.headers()["traceparent"].to_str().unwrap().to_owned();
    let request_id = response.headers()["x-request-id"].to_str().unwrap().to_owned();
    let context: Value = response.json().await.unwrap();
    assert_eq!(context["traceparent"], traceparent.as_str());
    assert_eq!(context["correlation_id"], request_id.as_str());
}

#[tokio::test]
async fn with_an_identity_key_only_signed_identities_are_believed() {
    use keel_service::{Identity, IdentityKey};
    let key = IdentityKey::derive_from_jwt_secret("a-secret-of-sixteen-bytes");
    let mut config = config(registry());
    config.identity = Some(key.clone());
    let h = start(config, Readiness::new()).await;
    let context = |headers: &[(&str, &str)]| {
        let mut request = h.client.get(format!("{}/context", h.base));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send()
    };

    // A bare subject header reaching the port directly is not an identity.
    let response = context(&[("x-keel-subject", "mallory")]).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().await.unwrap()["actor"], Value::Null);

    // The gateway's signed identity is.
    let token = key.sign(&Identity::new("alice").unwrap());
    let response =
        context(&[("x-keel-identity", &token), ("x-keel-subject", "mallory")]).await.unwrap();
    assert_eq!(response.json::<Value>().await.unwrap()["actor"], "alice");

    // One signed with another key is refused.
    let forged = IdentityKey::derive_from_jwt_secret("guessed-secret-0000")
        .sign(&Identity::new("alice").unwrap());
    let body = problem(context(&[("x-keel-identity", &forged)]).await.unwrap(), 401).await;
    assert!(body["detail"].as_str().unwrap().contains("x-keel-identity"), "{body}");
}

#[tokio::test]
async fn every_error_is_problem_json() {
    let h = start(config(registry()), Readiness::new()).await;
    let url = |path: &str| format!("{}{path}", h.base);

    let body = problem(h.client.get(url("/nowhere")).send().await.unwrap(), 404).await;
    assert!(body["detail"].as_str().unwrap().contains("/nowhere"));

    let response = h.client.get(url("/users")).send().await.unwrap();
    assert!(response.headers()["allow"].to_str().unwrap().contains("POST"));
    problem(response, 405).await;

    let big = serde_json::json!({"name": "x".repeat(2048), "email": "a@b"});
    problem(h.client.post(url("/users")).json(&big).send().await.unwrap(), 413).await;

    let missing = serde_json::json!({"name": "Ada"});
    let body =
        problem(h.client.post(url("/users")).json(&missing).send().await.unwrap(), 422).await;
    assert_eq!(body["errors"][0]["pointer"], "/email");
    assert!(body["errors"][0]["detail"].as_str().unwrap().contains("missing field `email`"));

    let wrong = serde_json::json!({"name": "Ada", "email": "a@b", "age": "old"});
    let body = problem(h.client.post(url("/users")).json(&wrong).send().await.unwrap(), 422).await;
    assert_eq!(body["errors"][0]["pointer"], "/age");

    let response = h.client.post(url("/users")).body("{}").send().await.unwrap();
    problem(response, 415).await;

    let body = problem(h.client.get(url("/panic")).send().await.unwrap(), 500).await;
    assert!(body.get("detail").is_none(), "panic details stay in the log: {body}");

    let ok = serde_json::json!({"name": "Ada", "email": "a@b"});
    let response = h.client.post(url("/users")).json(&ok).send().await.unwrap();
    assert_eq!(response.status(), 201);
}

#[tokio::test]
async fn control_bytes_in_paths_and_queries_are_a_400_naming_where() {
    let h = start(config(registry()), Readiness::new()).await;
    let get = |path: &str| h.client.get(format!("{}{path}", h.base)).send();

    let ok = get("/items/a%20b?type=order.placed").await.unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.text().await.unwrap(), "a b");
    for (path, pointer) in [
        ("/items/%00", "path"),
        ("/items/a%0Ab", "path"),
        ("/items/a?type=%00", "type"),
        ("/items/a?x=1&stream=a%1Fb", "stream"),
    ] {
        let body = problem(get(path).await.unwrap(), 400).await;
        assert_eq!(body["errors"][0]["pointer"], pointer, "{path}: {body}");
    }
}

#[tokio::test]
async fn metric_labels_come_from_closed_sets() {
    let registry = registry();
    let config = config(registry.clone());
    let name = config.name.clone();
    let h = start(config, Readiness::new()).await;
    let invented = format!("FROB{}", uuid::Uuid::now_v7().simple());
    let method = reqwest::Method::from_bytes(invented.as_bytes()).unwrap();
    for path in ["/users", "/health", "/nowhere/1", "/nowhere/2"] {
        let response = h.client.request(method.clone(), format!("{}{path}", h.base)).send().await;
        assert!(response.unwrap().status().is_client_error());
    }
    let text = h.client.get(format!("{}/metrics", h.base)).send().await.unwrap();
    let text = text.text().await.unwrap();
    let ours: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("http_requests_total{") && l.contains(&name))
        .collect();
    assert!(!text.contains(&invented), "an invented method became a label: {ours:?}");
    assert!(ours.iter().any(|l| l.contains("method=\"other\"")), "{ours:?}");
    assert!(!text.contains("/nowhere/"), "a raw path became a label: {ours:?}");
}

#[tokio::test]
async fn shutdown_drains_in_flight_requests_and_deregisters() {
    let registry = registry();
    let config = config(registry.clone());
    let name = config.name.clone();
    let h = start(config, Readiness::new()).await;
    graceful_shutdown(h, &*registry, &name).await;
}

#[tokio::test]
async fn a_taken_address_fails_to_bind() {
    let registry = registry();
    let h = start(config(registry.clone()), Readiness::new()).await;
    let mut config = config(registry.clone());
    config.listen = h.running.local_addr();
    let error = keel_service::Service::new(config).bind().await.unwrap_err();
    assert!(error.to_string().contains(&h.running.local_addr().to_string()), "{error}");
}

/// A readiness whose one check (`database`) passes while the flag is set.
fn switchable_readiness(ready: bool) -> (Arc<std::sync::atomic::AtomicBool>, Readiness) {
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(ready));
    let flag = ready.clone();
    let readiness = Readiness::new().check("database", move || {
        let ready = flag.load(std::sync::atomic::Ordering::SeqCst);
        async move { if ready { Ok(()) } else { Err("down".to_owned()) } }
    });
    (ready, readiness)
}

#[tokio::test]
async fn an_instance_dropped_by_the_registry_registers_again() {
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    let registry = registry();
    let mut config = config(registry.clone());
    config.check_interval = Duration::from_millis(20);
    config.deregister_critical_after = Duration::from_millis(200);
    let name = config.name.clone();
    let (ready, readiness) = switchable_readiness(true);
    let h = start(config, readiness).await;
    let id = h.running.instance_id().to_owned();
    until_healthy(&*registry, &name, &[&id]).await;

    ready.store(false, Ordering::SeqCst);
    let dropped = async {
        while registry.is_registered(&id).await.unwrap() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), dropped).await.unwrap();

    ready.store(true, Ordering::SeqCst);
    until_healthy(&*registry, &name, &[&id]).await;
}

/// A restarted Consul dev agent forgets every instance at once, long before
/// `deregister_critical_after` could matter: the instance registers again at its next
/// health-check interval, not half that period later.
#[tokio::test]
async fn an_instance_the_registry_forgot_registers_again_at_the_next_check() {
    use std::time::Duration;

    let registry = registry();
    let mut config = config(registry.clone());
    config.check_interval = Duration::from_millis(20);
    // The audit must not wait for this: the test gives up long before half of it.
    config.deregister_critical_after = Duration::from_secs(3600);
    let name = config.name.clone();
    let h = start(config, Readiness::new()).await;
    let id = h.running.instance_id().to_owned();
    until_healthy(&*registry, &name, &[&id]).await;

    // What an agent restart does to it: gone, without the instance being told.
    registry.deregister(&id).await.unwrap();
    assert!(!registry.is_registered(&id).await.unwrap());
    let back = async {
        while !registry.is_registered(&id).await.unwrap() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), back)
        .await
        .expect("the instance never registered again");
    until_healthy(&*registry, &name, &[&id]).await;
}

/// A registry that stops answering while `down` (an agent restarting), counting the
/// looks it did not answer, and records how each registration's check starts.
#[derive(Debug)]
struct Flaky {
    inner: Arc<InProcessRegistry>,
    down: std::sync::atomic::AtomicBool,
    unanswered: std::sync::atomic::AtomicUsize,
    /// Each registration's first check status, in order.
    initially_passing: std::sync::Mutex<Vec<bool>>,
}

impl Flaky {
    fn new(inner: Arc<InProcessRegistry>) -> Self {
        Self {
            inner,
            down: false.into(),
            unanswered: 0.into(),
            initially_passing: Vec::new().into(),
        }
    }

    fn initially_passing(&self) -> Vec<bool> {
        self.initially_passing.lock().unwrap().clone()
    }
}

#[async_trait::async_trait]
impl Registry for Flaky {
    async fn register(
        &self,
        registration: &keel_registry::Registration,
    ) -> Result<(), keel_registry::RegistryError> {
        let passing = registration.check.as_ref().is_some_and(|check| check.initially_passing);
        self.initially_passing.lock().unwrap().push(passing);
        self.inner.register(registration).await
    }

    async fn deregister(&self, instance_id: &str) -> Result<(), keel_registry::RegistryError> {
        self.inner.deregister(instance_id).await
    }

    async fn is_registered(&self, instance_id: &str) -> Result<bool, keel_registry::RegistryError> {
        use std::sync::atomic::Ordering;
        if self.down.load(Ordering::SeqCst) {
            self.unanswered.fetch_add(1, Ordering::SeqCst);
            return Err(keel_registry::RegistryError::Unreachable(
                "the agent is restarting".into(),
            ));
        }
        self.inner.is_registered(instance_id).await
    }

    async fn healthy(
        &self,
        service: &str,
    ) -> Result<Vec<keel_registry::Instance>, keel_registry::RegistryError> {
        self.inner.healthy(service).await
    }

    fn watch(&self, service: &str) -> keel_registry::Watch {
        self.inner.watch(service)
    }
}

/// While the registry does not answer, the instance looks again within moments, not
/// at its next check: back in the registry soon after the agent is (before, up to a
/// whole check interval later).
#[tokio::test]
async fn an_instance_registers_again_soon_after_an_unanswering_registry_is_back() {
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    let inner = registry();
    let flaky = Arc::new(Flaky::new(inner.clone()));
    let mut config = config(flaky.clone());
    // Far longer than the test waits once the registry is back.
    config.check_interval = Duration::from_secs(3);
    config.deregister_critical_after = Duration::from_secs(3600);
    let name = config.name.clone();
    let h = start(config, Readiness::new()).await;
    let id = h.running.instance_id().to_owned();
    until_healthy(&*inner, &name, &[&id]).await;

    // The agent goes away and comes back empty; the instance's first look finds it away.
    flaky.down.store(true, Ordering::SeqCst);
    inner.deregister(&id).await.unwrap();
    let looked = async {
        while flaky.unanswered.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), looked).await.unwrap();
    flaky.down.store(false, Ordering::SeqCst);
    let back = async {
        while !inner.is_registered(&id).await.unwrap() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(Duration::from_millis(1500), back)
        .await
        .expect("registered again within moments of the registry's return");
}

/// An instance registers with its health check as its readiness is then: critical
/// while its checks fail, passing once they pass, so that after a registry forgot it
/// (a Consul agent restart) callers find it again at once, not after the registry's
/// first check (before, up to a whole check interval of 503s).
#[tokio::test]
async fn an_instance_registers_with_its_check_as_ready_as_it_is() {
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    let inner = registry();
    let flaky = Arc::new(Flaky::new(inner.clone()));
    let mut config = config(flaky.clone());
    config.check_interval = Duration::from_millis(20);
    config.deregister_critical_after = Duration::from_secs(3600);
    let (ready, readiness) = switchable_readiness(false);
    let h = start(config, readiness).await;
    let id = h.running.instance_id().to_owned();
    assert_eq!(flaky.initially_passing(), [false], "not ready as it started");

    ready.store(true, Ordering::SeqCst);
    inner.deregister(&id).await.unwrap();
    let again = async {
        while flaky.initially_passing().len() < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), again).await.unwrap();
    assert!(flaky.initially_passing()[1], "ready as it registered again");
}
