//! The users service on its own port with an identity key, reached directly (not
//! through the gateway): only the gateway's signed identity counts.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use keel::http::{Identity, IdentityKey, Service, ServiceConfig};
use keel::registry::InProcessRegistry;
use keel::sql::Db;
use keel_users::{AppState, app, migrate};
use serde_json::{Value, json};

#[tokio::test]
async fn writes_on_the_service_port_need_a_signed_identity() {
    let file = std::env::temp_dir().join(format!("keel-users-id-{}.db", uuid::Uuid::now_v7()));
    let db = Db::connect(&format!("sqlite://{}", file.display())).await.unwrap();
    migrate(&db).await.unwrap();
    let key = IdentityKey::derive_from_jwt_secret("the-users-test-secret-0123");
    let mut config =
        ServiceConfig::new("users", ([127, 0, 0, 1], 0).into(), Arc::new(InProcessRegistry::new()));
    config.identity = Some(key.clone());
    let running = Service::new(config).router(app(AppState::new(db))).bind().await.unwrap();
    let url = format!("http://{}/api/users", running.local_addr());
    let http = reqwest::Client::new();
    let body = json!({ "name": "Ada", "email": "ada@example.org" });

    let forged = IdentityKey::derive_from_jwt_secret("a-guessed-secret-000000")
        .sign(&Identity::new("alice").unwrap());
    for (what, headers) in [
        ("no identity", vec![]),
        ("a bare x-keel-subject", vec![("x-keel-subject", "alice".to_owned())]),
        ("an identity signed with another key", vec![("x-keel-identity", forged)]),
        ("an identity that is no token", vec![("x-keel-identity", "alice".to_owned())]),
    ] {
        let mut request = http.post(&url).json(&body);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401, "{what}");
        assert_eq!(response.headers()["content-type"], "application/problem+json", "{what}");
    }

    let alice = key.sign(&Identity::new("alice").unwrap());
    let created = http.post(&url).header("x-keel-identity", &alice).json(&body).send().await;
    let created = created.unwrap();
    assert_eq!(created.status(), 201);
    let id = created.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let fetched =
        http.get(format!("{url}/{id}")).header("x-keel-identity", &alice).send().await.unwrap();
    assert_eq!(fetched.status(), 200);

    running.shutdown();
    running.wait().await.unwrap();
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", file.display()));
    }
}
