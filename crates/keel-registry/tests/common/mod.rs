//! Shared by the registry tests: a health endpoint whose answer the test controls,
//! and the register / healthy / fail / recover / deregister scenario every backend passes.

#![allow(clippy::unwrap_used, dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use axum::http::StatusCode;
use keel_registry::{HealthCheck, Instance, Registration, Registry, Watch};

/// An HTTP server on loopback answering `GET /ready` with a status the test sets.
pub struct HealthEndpoint {
    pub addr: SocketAddr,
    status: Arc<AtomicU16>,
    task: tokio::task::JoinHandle<()>,
}

impl HealthEndpoint {
    pub async fn start() -> Self {
        let status = Arc::new(AtomicU16::new(200));
        let shared = status.clone();
        let app = axum::Router::new().route(
            "/ready",
            axum::routing::get(move || {
                let status = shared.load(Ordering::SeqCst);
                async move { StatusCode::from_u16(status).unwrap() }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { addr, status, task }
    }

    pub fn set_status(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    pub fn url(&self) -> String {
        format!("http://{}/ready", self.addr)
    }
}

impl Drop for HealthEndpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

pub fn registration(service: &str, endpoint: &HealthEndpoint, interval: Duration) -> Registration {
    Registration {
        instance: Instance {
            id: unique(service),
            service: service.to_owned(),
            address: "127.0.0.1".to_owned(),
            port: endpoint.addr.port(),
            tags: vec!["test".to_owned()],
            meta: [("version".to_owned(), "1".to_owned())].into(),
        },
        check: Some(HealthCheck {
            http: endpoint.url(),
            interval,
            timeout: Duration::from_secs(1),
            deregister_critical_after: Duration::from_secs(60),
            initially_passing: false,
        }),
    }
}

/// Waits (at most 30 s) until the watch shows exactly `ids`.
pub async fn until_snapshot(watch: &mut Watch, ids: &[&str]) {
    let matches =
        |snapshot: &[Instance]| snapshot.iter().map(|i| i.id.as_str()).eq(ids.iter().copied());
    let wait = async {
        while !matches(&watch.snapshot()) {
            watch.changed().await.unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(30), wait)
        .await
        .unwrap_or_else(|_| panic!("watch never showed {ids:?}; it shows {:?}", watch.snapshot()));
}

/// Polls `healthy()` (at most 30 s) until it returns exactly `ids`.
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

/// Register, become healthy (in `healthy()` and a watch), fail the check and vanish
/// from discovery, recover, deregister and vanish again.
pub async fn lifecycle(registry: Arc<dyn Registry>, interval: Duration) {
    let service = unique("keel-test");
    let endpoint = HealthEndpoint::start().await;
    let registration = registration(&service, &endpoint, interval);
    let id = registration.instance.id.as_str();
    let mut watch = registry.watch(&service);

    registry.register(&registration).await.unwrap();
    assert!(registry.is_registered(id).await.unwrap());
    until_snapshot(&mut watch, &[id]).await;
    until_healthy(&*registry, &service, &[id]).await;
    let seen = registry.healthy(&service).await.unwrap().remove(0);
    assert_eq!(seen, registration.instance, "discovery returns what was registered");

    endpoint.set_status(500);
    until_snapshot(&mut watch, &[]).await;
    until_healthy(&*registry, &service, &[]).await;

    endpoint.set_status(200);
    until_snapshot(&mut watch, &[id]).await;

    registry.deregister(id).await.unwrap();
    assert!(!registry.is_registered(id).await.unwrap());
    until_snapshot(&mut watch, &[]).await;
    until_healthy(&*registry, &service, &[]).await;
    registry.deregister(id).await.unwrap();
}
