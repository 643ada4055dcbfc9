//! The example system in one process: users, products and orders on one store, their
//! consumers on an in-memory bus fed by a relay from the log, driven through their
//! routers with `tower::ServiceExt::oneshot`.

#![allow(dead_code, clippy::unwrap_used, unreachable_pub)]

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use http::{HeaderMap, Request, StatusCode, header};
use keel::bus::ConsumerHandle;
use keel::http::{Identity, IdentityKey, Service, ServiceConfig};
use keel::memory::MemoryBus;
use keel::registry::InProcessRegistry;
use keel::runtime::{ProjectionTask, TimerTask};
use keel::sql::Db;
use keel::store::{Relay, RelayOptions, SubscribeOptions};
use keel::timers::{Dispatcher, DispatcherOptions};
use keel_orders::RouterDirectory;
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
    /// The timer dispatcher (the orders' deadlines).
    timers: TimerTask,
    /// The users service's read model of each user's orders.
    projection: ProjectionTask,
    relay: JoinHandle<keel::store::Result<()>>,
    file: Option<std::path::PathBuf>,
    /// Whether identities are verified (else the open mode).
    pub identified: bool,
}

/// How a test system runs.
#[derive(Clone)]
pub struct Options {
    pub identity: Option<IdentityKey>,
    /// The orders' deadline.
    pub deadline: Duration,
    /// Whether the products service's consumers run (false: the stock service is
    /// down, so orders stay pending).
    pub products: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self { identity: None, deadline: keel_orders::DEFAULT_ORDER_DEADLINE, products: true }
    }
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

/// The key the systems made with [`System::with_identities`] verify identities with.
pub fn key() -> IdentityKey {
    IdentityKey::derive_from_jwt_secret("the-test-secret-of-the-services")
}

/// The `x-keel-identity` header of `subject` with `roles`, as the gateway signs it.
pub fn identity(subject: &str, roles: &[&str]) -> (&'static str, String) {
    let identity = Identity::new(subject).unwrap().with_roles(roles.iter().copied()).unwrap();
    ("x-keel-identity", key().sign(&identity))
}

/// A service's routes behind the service kit (caller identities, input checks,
/// problem+json), as `keel up` serves them; nothing is bound.
pub fn behind_kit(name: &str, router: Router, identity: Option<IdentityKey>) -> Router {
    let registry = Arc::new(InProcessRegistry::new());
    let mut config = ServiceConfig::new(name, ([127, 0, 0, 1], 0).into(), registry);
    config.identity = identity;
    Service::new(config).router(router).into_router()
}

impl System {
    /// On a fresh SQLite file.
    pub async fn sqlite() -> Self {
        let (db, file) = Self::sqlite_db().await;
        Self::on_with(db, Some(file), None).await
    }

    /// On a fresh SQLite file, with identities verified by [`key`].
    pub async fn with_identities() -> Self {
        let (db, file) = Self::sqlite_db().await;
        Self::on_with(db, Some(file), Some(key())).await
    }

    pub async fn sqlite_db() -> (Db, std::path::PathBuf) {
        let file = std::env::temp_dir().join(format!("keel-services-{}.db", uuid::Uuid::now_v7()));
        (Db::connect(&format!("sqlite://{}", file.display())).await.unwrap(), file)
    }

    /// On an existing store (its tables are created), in the open mode.
    pub async fn on(db: Db, file: Option<std::path::PathBuf>) -> Self {
        Self::on_with(db, file, None).await
    }

    /// On an existing store, verifying identities with `identity` if given.
    pub async fn on_with(
        db: Db,
        file: Option<std::path::PathBuf>,
        identity: Option<IdentityKey>,
    ) -> Self {
        Self::with_options(db, file, Options { identity, ..Options::default() }).await
    }

    /// On an existing store, as `options` say.
    pub async fn with_options(db: Db, file: Option<std::path::PathBuf>, options: Options) -> Self {
        let identity = options.identity;
        keel_users::migrate(&db).await.unwrap();
        keel_products::migrate(&db).await.unwrap();
        keel_orders::migrate(&db).await.unwrap();
        let users_state = keel_users::AppState::new(db.clone());
        let products_state = keel_products::AppState::new(db.clone());
        let users = behind_kit("users", keel_users::app(users_state), identity.clone());
        let products =
            behind_kit("products", keel_products::app(products_state.clone()), identity.clone());
        let directory = Arc::new(RouterDirectory::new(users.clone(), products.clone()));
        let orders_state =
            keel_orders::AppState::new(db.clone(), directory).with_deadline(options.deadline);
        let identified = identity.is_some();
        let orders = behind_kit("orders", keel_orders::app(orders_state.clone()), identity);

        let bus = Arc::new(MemoryBus::new());
        let relay_options = RelayOptions {
            subscribe: SubscribeOptions {
                poll_interval: Duration::from_millis(200),
                ..SubscribeOptions::default()
            },
            ..RelayOptions::default()
        };
        let relay = Relay::new(db.log(), bus.clone(), format!("test-{}", uuid::Uuid::now_v7()))
            .options(relay_options);
        let relay = tokio::spawn(relay.run(std::future::pending()));
        let projection = ProjectionTask::start(db.clone(), keel_users::UsersOrders.into());
        let mut consumers = Vec::new();
        if options.products {
            consumers.extend(
                keel_products::start_consumers(&products_state, bus.clone()).await.unwrap(),
            );
        }
        consumers.extend(keel_orders::start_consumers(&orders_state, bus.clone()).await.unwrap());
        let dispatcher = Dispatcher::new(db.clone()).options(DispatcherOptions {
            poll_interval: Duration::from_millis(100),
            ..DispatcherOptions::default()
        });
        let timers = TimerTask::start(dispatcher);
        Self {
            db,
            bus,
            users,
            products,
            orders,
            consumers,
            timers,
            projection,
            relay,
            file,
            identified,
        }
    }

    /// Stops everything but keeps the store (a restart: start another system on it).
    pub async fn stop_keeping_the_store(mut self) -> (Db, Option<std::path::PathBuf>) {
        let file = self.file.take();
        let db = self.db.clone();
        self.stop().await;
        (db, file)
    }

    pub async fn stop(self) {
        for consumer in self.consumers {
            consumer.stop().await.unwrap();
        }
        self.timers.stop().await.unwrap();
        self.projection.stop().await.unwrap();
        self.relay.abort();
        if let Some(file) = self.file {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", file.display()));
            }
        }
    }

    /// The header that says a request acts for `subject`: its signed identity when
    /// identities are verified, `x-keel-subject` in the open mode.
    pub fn by(&self, subject: &str, roles: &[&str]) -> (&'static str, String) {
        if self.identified { identity(subject, roles) } else { ("x-keel-subject", subject.into()) }
    }

    /// Signs up a user on behalf of the subject `name` (who then owns it).
    pub async fn user(&self, name: &str) -> String {
        let email = format!("{name}-{}@example.org", uuid::Uuid::now_v7().simple());
        let (header, value) = self.by(name, &[]);
        let body = json!({ "name": name, "email": email });
        let reply = post_with(&self.users, "/api/users", body, &[(header, &value)]).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
        reply.body["id"].as_str().unwrap().to_owned()
    }

    /// Adds a product, as an admin.
    pub async fn product(&self, stock: i64) -> String {
        let body = json!({ "name": "widget", "price_cents": 250, "stock": stock });
        let (header, value) = self.by("root", &["admin"]);
        let reply = post_with(&self.products, "/api/products", body, &[(header, &value)]).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
        reply.body["id"].as_str().unwrap().to_owned()
    }

    /// Places an order for `user`, as an admin.
    pub async fn order(&self, user: &str, product: &str, quantity: i64) -> String {
        let body =
            json!({ "user_id": user, "items": [{ "product_id": product, "quantity": quantity }] });
        let (header, value) = self.by("root", &["admin"]);
        let reply = post_with(&self.orders, "/api/orders", body, &[(header, &value)]).await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.body);
        assert_eq!(reply.body["status"], "pending");
        reply.body["id"].as_str().unwrap().to_owned()
    }

    pub async fn stock(&self, product: &str) -> i64 {
        let reply = get(&self.products, &format!("/api/products/{product}")).await;
        assert_eq!(reply.status, StatusCode::OK);
        reply.body["stock"].as_i64().unwrap()
    }

    /// Waits until the order is no longer pending; returns it (read as an admin).
    pub async fn settled(&self, order: &str) -> Value {
        let (header, value) = self.by("root", &["admin"]);
        eventually(|| async {
            let uri = format!("/api/orders/{order}");
            let reply = get_with(&self.orders, &uri, &[(header, &value)]).await;
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
    get_with(router, uri, &[]).await
}

pub async fn get_with(router: &Router, uri: &str, headers: &[(&str, &str)]) -> Reply {
    let mut request = Request::get(uri);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    send(router, request.body(Body::empty()).unwrap()).await
}

/// A raw JSON text (possibly invalid) posted with `content_type`.
pub async fn post_text(
    router: &Router,
    uri: &str,
    content_type: &str,
    text: &str,
    headers: &[(&str, &str)],
) -> Reply {
    let mut request = Request::post(uri).header(header::CONTENT_TYPE, content_type);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    send(router, request.body(Body::from(text.to_owned())).unwrap()).await
}

/// Text no store should see (NUL and other control characters), duplicate and unknown
/// fields, a charset other than UTF-8, NUL in paths: each a 4xx problem naming where,
/// and nothing written. The store matters (Postgres refuses NUL in text, SQLite stores
/// it), so this runs on both.
pub async fn hostile_text_is_refused_before_any_store_sees_it(system: &System) {
    let (header, value) = system.by("root", &["admin"]);
    let by = [(header, value.as_str())];
    let json = "application/json";
    let head_before = system.db.log().head().await.unwrap();
    for (uri, body, pointer) in [
        ("/api/users", r#"{"name":"a\u0000b","email":"nul@example.org"}"#, "/name"),
        ("/api/users", r#"{"name":"Nul","email":"n\u0000@example.org"}"#, "/email"),
        ("/api/users", r#"{"name":"A","name":"B","email":"dup@example.org"}"#, "/name"),
        ("/api/users", r#"{"name":"A","email":"unknown@example.org","admin":true}"#, "/admin"),
        ("/api/users", r#"{"name":"A\u0001","email":"ctl@example.org"}"#, "/name"),
        ("/api/products", r#"{"name":"\u0000","price_cents":1,"stock":1}"#, "/name"),
        (
            "/api/orders",
            r#"{"user_id":"\u0000","items":[{"product_id":"p","quantity":1}]}"#,
            "/user_id",
        ),
        (
            "/api/orders",
            r#"{"user_id":"u","items":[{"product_id":"p","quantity":1,"x":1}]}"#,
            "/items/0/x",
        ),
    ] {
        let router = match uri {
            "/api/users" => &system.users,
            "/api/products" => &system.products,
            _ => &system.orders,
        };
        let reply = post_text(router, uri, json, body, &by).await;
        assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {}", reply.body);
        assert!(reply.is_problem(), "{body}");
        assert!(reply.pointers().contains(&pointer.to_owned()), "{body}: {}", reply.body);
    }
    let latin = r#"{"name":"A","email":"latin@example.org"}"#;
    let reply =
        post_text(&system.users, "/api/users", "application/json; charset=iso-8859-1", latin, &by)
            .await;
    assert_eq!(reply.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{}", reply.body);
    for (router, uri) in [
        (&system.users, "/api/users/%00"),
        (&system.users, "/api/users/%00/orders"),
        (&system.orders, "/api/orders/%00"),
        (&system.products, "/api/products/a%00b"),
    ] {
        let reply = get_with(router, uri, &by).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{uri}: {}", reply.body);
        assert!(reply.is_problem(), "{uri}");
    }
    let reply = post_with(&system.orders, "/api/orders/%00/cancel", json!({}), &by).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.body);
    assert_eq!(system.db.log().head().await.unwrap(), head_before, "something was written");
}

/// Concurrent sign-ups with one e-mail address: one is created, the others are told
/// the address is taken (409 naming `/email`), never a 500.
pub async fn concurrent_sign_ups_with_one_email(system: &System) {
    let email = format!("twin-{}@example.org", uuid::Uuid::now_v7().simple());
    let (header, value) = system.by("twins", &[]);
    let replies = futures::future::join_all((0..8).map(|n| {
        let body = json!({ "name": format!("twin {n}"), "email": email });
        let by = [(header, value.as_str())];
        async move { post_with(&system.users, "/api/users", body, &by).await }
    }))
    .await;
    let mut statuses: Vec<u16> = replies.iter().map(|r| r.status.as_u16()).collect();
    statuses.sort_unstable();
    let bodies: Vec<String> = replies.iter().map(|r| r.body.to_string()).collect();
    assert_eq!(statuses, [201, 409, 409, 409, 409, 409, 409, 409], "{bodies:#?}");
    for reply in replies.iter().filter(|r| r.status == StatusCode::CONFLICT) {
        assert!(reply.is_problem());
        assert_eq!(reply.pointers(), ["/email"], "{}", reply.body);
    }
}
