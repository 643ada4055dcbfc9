//! A small app served through the kit, for the tests.

#![allow(clippy::unwrap_used, dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use keel_registry::Registry;
use keel_service::{Json, Readiness, RunningService, Service, ServiceConfig};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

#[derive(Debug, Deserialize, Serialize)]
pub struct NewUser {
    pub name: String,
    pub email: String,
    #[serde(default)]
    pub age: Option<u32>,
}

/// `POST /users` (JSON), `GET /slow` (tells `started`, then answers after 300 ms),
/// `GET /panic`, `GET /context` (the handler's `keel_bus` context), `GET /items/{id}`
/// (echoes the id).
pub fn app(started: mpsc::UnboundedSender<()>) -> Router {
    Router::new()
        .route(
            "/users",
            post(|Json(user): Json<NewUser>| async move {
                (axum::http::StatusCode::CREATED, Json(user))
            }),
        )
        .route(
            "/slow",
            get(move || {
                let started = started.clone();
                async move {
                    let _ = started.send(());
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    "done"
                }
            }),
        )
        .route("/panic", get(|| async { panic!("boom") as &'static str }))
        .route(
            "/items/{id}",
            get(|axum::extract::Path(id): axum::extract::Path<String>| async move { id }),
        )
        .route(
            "/context",
            get(|| async {
                let context = keel_bus::layer::current_context().unwrap();
                axum::Json(serde_json::json!({
                    "traceparent": context.trace.map(|t| t.traceparent()),
                    "correlation_id": context.correlation_id,
                    "causation_id": context.causation_id,
                    "actor": context.actor,
                }))
            }),
        )
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

pub fn config(registry: Arc<dyn Registry>) -> ServiceConfig {
    let mut config =
        ServiceConfig::new(unique("keel-test"), SocketAddr::from(([127, 0, 0, 1], 0)), registry);
    config.check_interval = Duration::from_millis(50);
    config.body_limit = 1024;
    config
}

pub struct Harness {
    pub running: RunningService,
    pub base: String,
    pub client: reqwest::Client,
    pub started: mpsc::UnboundedReceiver<()>,
}

pub async fn start(config: ServiceConfig, readiness: Readiness) -> Harness {
    let (started_tx, started) = mpsc::unbounded_channel();
    let running =
        Service::new(config).readiness(readiness).router(app(started_tx)).bind().await.unwrap();
    let base = format!("http://{}", running.local_addr());
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    Harness { running, base, client, started }
}

/// Polls `healthy()` (at most 30 s) until it has exactly `ids`.
pub async fn until_healthy(registry: &dyn Registry, service: &str, ids: &[&str]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let healthy = registry.healthy(service).await.unwrap();
        if healthy.iter().map(|i| i.id.as_str()).eq(ids.iter().copied()) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "healthy() stays {healthy:?}, want {ids:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Shutdown while `/slow` is in flight: the request finishes, the instance leaves the
/// registry, the service stops and accepts nothing more.
pub async fn graceful_shutdown(mut h: Harness, registry: &dyn Registry, service: &str) {
    let id = h.running.instance_id().to_owned();
    until_healthy(registry, service, &[&id]).await;
    let slow = tokio::spawn(h.client.get(format!("{}/slow", h.base)).send());
    h.started.recv().await.unwrap();
    h.running.shutdown();
    until_healthy(registry, service, &[]).await;
    let response = slow.await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "done");
    let base = h.base.clone();
    let client = h.client.clone();
    h.running.wait().await.unwrap();
    assert!(client.get(format!("{base}/health")).send().await.is_err(), "still accepting");
}
