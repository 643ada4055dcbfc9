//! Against the real Consul agent on 127.0.0.1:8500 (`KEEL_CONSUL_URL` overrides).

#![cfg(feature = "integration")]
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use keel_registry::{ConsulRegistry, Registry, connect};

fn consul_url() -> String {
    std::env::var("KEEL_CONSUL_URL").unwrap_or_else(|_| "http://127.0.0.1:8500".to_owned())
}

#[tokio::test]
async fn registers_becomes_healthy_fails_recovers_and_deregisters() {
    let registry =
        ConsulRegistry::connect(&consul_url()).await.unwrap().with_wait(Duration::from_secs(5));
    lifecycle_with(Arc::new(registry)).await;
}

async fn lifecycle_with(registry: Arc<ConsulRegistry>) {
    common::lifecycle(registry, Duration::from_secs(1)).await;
}

#[tokio::test]
async fn connect_with_a_url_is_consul() {
    let registry = connect(Some(&consul_url())).await.unwrap();
    assert!(format!("{registry:?}").contains("ConsulRegistry"));
    assert!(registry.healthy(&common::unique("keel-test-none")).await.unwrap().is_empty());
}

/// An instance registered with its check passing is found at once, before Consul's
/// first check (which Consul runs at a random moment within the interval); one
/// registered otherwise starts critical. The check here answers 503 and runs every ten
/// minutes, so only the registration's own status can make an instance healthy.
#[tokio::test]
async fn an_instance_registered_as_passing_is_found_before_its_first_check() {
    let registry = ConsulRegistry::connect(&consul_url()).await.unwrap();
    let endpoint = common::HealthEndpoint::start().await;
    endpoint.set_status(503);
    let service = common::unique("keel-test");
    let mut passing = common::registration(&service, &endpoint, Duration::from_secs(600));
    passing.check.as_mut().unwrap().initially_passing = true;
    let critical = common::registration(&service, &endpoint, Duration::from_secs(600));
    registry.register(&passing).await.unwrap();
    registry.register(&critical).await.unwrap();

    common::until_healthy(&registry, &service, &[&passing.instance.id]).await;

    registry.deregister(&passing.instance.id).await.unwrap();
    registry.deregister(&critical.instance.id).await.unwrap();
}
