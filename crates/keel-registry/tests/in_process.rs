//! The in-process registry through the same scenario as Consul, with real HTTP checks.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{HealthEndpoint, lifecycle, registration, unique, until_healthy};
use keel_registry::{InProcessRegistry, Registry, RegistryError, connect};

#[tokio::test]
async fn registers_checks_fails_recovers_and_deregisters() {
    lifecycle(Arc::new(InProcessRegistry::new()), Duration::from_millis(50)).await;
}

#[tokio::test]
async fn connect_without_url_is_in_process() {
    let registry = connect(None).await.unwrap();
    assert!(format!("{registry:?}").contains("InProcessRegistry"));
    let registry = connect(Some("  ")).await.unwrap();
    assert!(format!("{registry:?}").contains("InProcessRegistry"));
}

#[tokio::test]
async fn connect_names_the_url_it_cannot_reach() {
    let error = connect(Some("http://127.0.0.1:1")).await.unwrap_err();
    assert!(matches!(error, RegistryError::Unreachable(_)), "{error}");
    assert!(error.to_string().contains("127.0.0.1:1"), "{error}");
    let error = connect(Some("consul:8500")).await.unwrap_err();
    assert!(error.to_string().contains("consul:8500"), "{error}");
}

#[tokio::test]
async fn critical_too_long_removes_the_instance() {
    let registry = InProcessRegistry::new();
    let service = unique("keel-test");
    let endpoint = HealthEndpoint::start().await;
    let mut registration = registration(&service, &endpoint, Duration::from_millis(20));
    if let Some(check) = registration.check.as_mut() {
        check.deregister_critical_after = Duration::from_millis(100);
    }
    let id = registration.instance.id.clone();
    registry.register(&registration).await.unwrap();
    until_healthy(&registry, &service, &[&id]).await;
    endpoint.set_status(503);
    let removed = async {
        while registry.is_registered(&id).await.unwrap() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), removed).await.unwrap();
    endpoint.set_status(200);
    assert!(registry.healthy(&service).await.unwrap().is_empty());
}

#[tokio::test]
async fn re_registering_replaces_the_check() {
    let registry = InProcessRegistry::new();
    let service = unique("keel-test");
    let endpoint = HealthEndpoint::start().await;
    let mut registration = registration(&service, &endpoint, Duration::from_millis(20));
    if let Some(check) = registration.check.as_mut() {
        check.http = "http://127.0.0.1:1/ready".to_owned();
    }
    registry.register(&registration).await.unwrap();
    // Re-registering the same id with a working check makes it healthy.
    let id = registration.instance.id.clone();
    assert!(registry.healthy(&service).await.unwrap().is_empty());
    if let Some(check) = registration.check.as_mut() {
        check.http = endpoint.url();
    }
    registry.register(&registration).await.unwrap();
    until_healthy(&registry, &service, &[&id]).await;
}

/// An instance registered with its check passing is healthy before the registry's
/// first check (which runs at once, on a task of its own); one registered otherwise
/// starts critical, as in Consul.
#[tokio::test]
async fn an_instance_registered_as_passing_is_healthy_before_its_first_check() {
    let registry = InProcessRegistry::new();
    let endpoint = HealthEndpoint::start().await;
    let service = unique("keel-test");
    let mut passing = registration(&service, &endpoint, Duration::from_secs(600));
    passing.check.as_mut().unwrap().initially_passing = true;
    let critical = registration(&service, &endpoint, Duration::from_secs(600));
    // A current-thread runtime: the checks' tasks cannot run before this task yields,
    // and neither call below waits for anything.
    registry.register(&passing).await.unwrap();
    registry.register(&critical).await.unwrap();
    let healthy = registry.healthy(&service).await.unwrap();
    assert_eq!(healthy, [passing.instance.clone()]);
}
