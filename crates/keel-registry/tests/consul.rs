//! Against the real Consul agent on 127.0.0.1:8500 (`KEEL_CONSUL_URL` overrides).

#![cfg(feature = "integration")]
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use keel_registry::{ConsulRegistry, connect};

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
