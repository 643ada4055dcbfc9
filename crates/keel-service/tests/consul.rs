//! The kit registered in the real Consul agent on 127.0.0.1:8500.

#![cfg(feature = "integration")]
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use keel_registry::ConsulRegistry;
use keel_service::Readiness;

#[tokio::test]
async fn registers_in_consul_becomes_healthy_and_deregisters_on_shutdown() {
    let url =
        std::env::var("KEEL_CONSUL_URL").unwrap_or_else(|_| "http://127.0.0.1:8500".to_owned());
    let registry = Arc::new(ConsulRegistry::connect(&url).await.unwrap());
    let mut config = common::config(registry.clone());
    config.check_interval = Duration::from_secs(1);
    let name = config.name.clone();
    let h = common::start(config, Readiness::new()).await;
    common::graceful_shutdown(h, &*registry, &name).await;
}
