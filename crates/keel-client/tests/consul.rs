//! Discovery through the real Consul agent on 127.0.0.1:8500 (`KEEL_CONSUL_URL`
//! overrides): a registered upstream is found and called, a deregistered one is not.

#![cfg(feature = "integration")]
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use keel_client::{ClientConfig, ClientError, ServiceClient};
use keel_registry::{ConsulRegistry, Instance, Registration, Registry};
use serde_json::Value;
use tokio::net::TcpListener;

fn consul_url() -> String {
    std::env::var("KEEL_CONSUL_URL").unwrap_or_else(|_| "http://127.0.0.1:8500".to_owned())
}

async fn wait_for(client: &ServiceClient, urls: &[String]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while client.endpoints().base_urls() != urls {
        assert!(tokio::time::Instant::now() < deadline, "never saw {urls:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn discovers_and_calls_an_instance_registered_in_consul() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app =
        axum::Router::new().fallback(|| async { axum::Json(serde_json::json!({"ok": true})) });
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let service = format!("keel-client-test-{}", uuid::Uuid::new_v4().simple());
    let registration = Registration {
        instance: Instance {
            id: format!("{service}-1"),
            service: service.clone(),
            address: "127.0.0.1".into(),
            port,
            tags: vec![],
            meta: BTreeMap::new(),
        },
        check: None,
    };
    let registry =
        ConsulRegistry::connect(&consul_url()).await.unwrap().with_wait(Duration::from_secs(1));
    registry.register(&registration).await.unwrap();

    let client = ServiceClient::discover(&registry, &service, ClientConfig::default());
    wait_for(&client, &[registration.instance.base_url()]).await;
    let answer: Value = client.get_json("/anything").await.unwrap();
    assert_eq!(answer["ok"], true);

    registry.deregister(&registration.instance.id).await.unwrap();
    wait_for(&client, &[]).await;
    let error = client.get_json::<Value>("/anything").await.unwrap_err();
    assert!(matches!(error, ClientError::NoInstances(_)), "{error:?}");
    server.abort();
}
