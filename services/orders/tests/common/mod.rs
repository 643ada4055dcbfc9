//! The example system in one process: users, products and orders on one store, their
//! consumers on an in-memory bus fed by a relay from the log, driven through their
//! routers with `tower::ServiceExt::oneshot`.

#![allow(dead_code, clippy::unwrap_used, unreachable_pub)]

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use http::{HeaderMap, Request, StatusCode, header};
use keel_bus::ConsumerHandle;
use keel_memory::MemoryBus;
use keel_orders::RouterDirectory;
use keel_services_common::Db;
use keel_store::{Relay, RelayOptions, SubscribeOptions};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tower::ServiceExt as _;

pub struct System {
    pub db: Db,
    pub bus: Arc<MemoryBus>,
    pub users: Router,
    pub products: Router,
    pub orders: Router,
    consumers: Vec<ConsumerHandle>,
    relay: JoinHandle<keel_store::Result<()>>,
    file: Option<std::path::PathBuf>,
}

/// A response: status, headers and the JSON body (`Null` when empty or not JSON).
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Reply {
    /// The JSON pointers a problem+json names.
    pub fn pointers(&self) -> Vec<String> {
        self.body["errors"]
            .as_array()
            .map(|errors| {
                errors.iter().map(|e| e["pointer"].as_str().unwrap().to_owned()).collect()
            })
            .unwrap_or_default()
    }

    pub fn is_problem(&self) -> bool {
        self.headers.get(header::CONTENT_TYPE).is_some_and(|v| v == "application/problem+json")
    }
}

impl System {
    /// On a fresh SQLite file.
    pub async fn sqlite() -> Self {
        let file = std::env::temp_dir().join(format!("keel-services-{}.db", uuid::Uuid::now_v7()));
        let db = Db::connect(&format!("sqlite://{}", file.display())).await.unwrap();
        Self::on(db, Some(file)).await
    }

    /// On an existing store (its tables are created).
    pub async fn on(db: Db, file: Option<std::path::PathBuf>) -> Self {
        keel_users::migrate(&db).await.unwrap();
        keel_products::migrate(&db).await.unwrap();
        keel_orders::migrate(&db).await.unwrap();
        let users_state = keel_users::AppState::new(db.clone());
        let products_state = keel_products::AppState::new(db.clone());
        let users = keel_users::app(users_state.clone());
        let products = keel_products::app(products_state.clone());
        let directory = Arc::new(RouterDirectory::new(users.clone(), products.clone()));
        let orders_state = keel_orders::AppState::new(db.clone(), directory);
        let orders = keel_orders::app(orders_state.clone());

        let bus = Arc::new(MemoryBus::new());
        let options = RelayOptions {
            subscribe: SubscribeOptions {
                poll_interval: Duration::from_millis(200),
                ..SubscribeOptions::default()
            },
            ..RelayOptions::default()
        };
        let relay = Relay::new(db.log(), bus.clone(), format!("test-{}", uuid::Uuid::now_v7()))
            .options(options);
        let relay = tokio::spawn(relay.run(std::future::pending()));
        let mut consumers = keel_users::start_consumers(&users_state, bus.clone()).await.unwrap();
        consumers
            .extend(keel_products::start_consumers(&products_state, bus.clone()).await.unwrap());
        consumers.extend(keel_orders::start_consumers(&orders_state, bus.clone()).await.unwrap());
        Self { db, bus, users, products, orders, consumers, relay, file }
    }

    pub async fn stop(self) {
        for consumer in self.consumers {
            consumer.stop().await.unwrap();
        }
        self.relay.abort();
        if let Some(file) = self.file {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", file.display()));
            }
        }
    }

    pub async fn user(&self, name: &str) -> String {
        let email = format!("{name}-{}@example.org", uuid::Uuid::now_v7().simple());
        let reply = post(&self.users, "/api/users", json!({ "name": name, "email": email })).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
        reply.body["id"].as_str().unwrap().to_owned()
    }

    pub async fn product(&self, stock: i64) -> String {
        let body = json!({ "name": "widget", "price_cents": 250, "stock": stock });
        let reply = post(&self.products, "/api/products", body).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
        reply.body["id"].as_str().unwrap().to_owned()
    }

    pub async fn order(&self, user: &str, product: &str, quantity: i64) -> String {
        let body =
            json!({ "user_id": user, "items": [{ "product_id": product, "quantity": quantity }] });
        let reply = post(&self.orders, "/api/orders", body).await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
        assert_eq!(reply.body["status"], "pending");
        reply.body["id"].as_str().unwrap().to_owned()
    }

    pub async fn stock(&self, product: &str) -> i64 {
        let reply = get(&self.products, &format!("/api/products/{product}")).await;
        assert_eq!(reply.status, StatusCode::OK);
        reply.body["stock"].as_i64().unwrap()
    }

    /// Waits until the order is no longer pending; returns it.
    pub async fn settled(&self, order: &str) -> Value {
        eventually(|| async {
            let reply = get(&self.orders, &format!("/api/orders/{order}")).await;
            (reply.body["status"] != "pending").then_some(reply.body)
        })
        .await
    }
}

/// Polls `f` until it yields (bounded, so a broken flow fails instead of hanging).
pub async fn eventually<T, F, Fut>(mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    for _ in 0..3000 {
        if let Some(value) = f().await {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the condition never held");
}

pub async fn send(router: &Router, request: Request<Body>) -> Reply {
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Reply { status, headers, body }
}

pub async fn post(router: &Router, uri: &str, body: Value) -> Reply {
    post_with(router, uri, body, &[]).await
}

pub async fn post_with(router: &Router, uri: &str, body: Value, headers: &[(&str, &str)]) -> Reply {
    let mut request = Request::post(uri).header(header::CONTENT_TYPE, "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    send(router, request.body(Body::from(body.to_string())).unwrap()).await
}

pub async fn get(router: &Router, uri: &str) -> Reply {
    send(router, Request::get(uri).body(Body::empty()).unwrap()).await
}
