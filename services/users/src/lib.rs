//! Keel's example users service: users sign up over HTTP (the row and the
//! `user.registered` event commit in one transaction), and each user's orders are a
//! read model built from the orders service's events.
//!
//! # Layout
//!
//! - `lib.rs`: [`AppState`], [`migrate`] and [`app`] (the axum router).
//! - `api.rs`: the HTTP handlers: `POST /api/users`, `GET /api/users/{id}`,
//!   `GET /api/users/{id}/orders` (paged). A user belongs to the subject that
//!   registered it: with identities verified, only that subject or an admin reads it
//!   and its orders (and places orders for it, in the orders service).
//!   [`ApiDoc`] describes them (OpenAPI).
//! - `orders.rs`: [`UsersOrders`], the `users_orders` read model: a projection of the
//!   `order.*` events of the log, which the binary registers with its runner.
//! - `main.rs`: the binary, a `keel::runtime::ServiceRunner`: the service alone on
//!   `KEEL_DATABASE_URL`, listening on `KEEL_LISTEN_ADDR`, verifying identities with the
//!   key of `KEEL_IDENTITY_SECRET` or `KEEL_JWT_SECRET`; `keel-users projections
//!   rebuild users-orders` rebuilds the read model.

// `keel::http::Problem` (the problem+json answer, built at most once per request)
// is the error type of the HTTP paths; boxing it would only add allocations.
#![allow(clippy::result_large_err)]

mod api;
mod orders;

use axum::Router;
use axum::routing::{get, post};
use keel::http::openapi::Shared;
use keel::http::{Idempotency, body_limit};
use keel::sql::Db;
use utoipa::OpenApi as _;

pub use api::{DEFAULT_ORDERS_PAGE, MAX_ORDERS_PAGE};
pub use orders::UsersOrders;

/// The CloudEvents `source` of the events this service writes.
pub const SOURCE: &str = "/services/users";

/// What the handlers share. Cheap to clone.
#[derive(Clone, Debug)]
pub struct AppState {
    pub db: Db,
    pub idempotency: Idempotency,
}

impl AppState {
    /// Idempotency keys remembered for [`keel::http::DEFAULT_IDEMPOTENCY_TTL`].
    pub fn new(db: Db) -> Self {
        Self { db, idempotency: Idempotency::new("users_idempotency") }
    }

    /// The same, remembering idempotency keys for `ttl`.
    #[must_use]
    pub fn with_idempotency_ttl(mut self, ttl: std::time::Duration) -> Self {
        self.idempotency = self.idempotency.with_ttl(ttl);
        self
    }
}

/// Creates the service's tables (`users_*`) in the shared database.
pub async fn migrate(db: &Db) -> keel::sql::Result<()> {
    let mut sqlite = sqlx::migrate!("./migrations/sqlite");
    sqlite.set_ignore_missing(true);
    let mut postgres = sqlx::migrate!("./migrations/postgres");
    postgres.set_ignore_missing(true);
    db.migrate(&sqlite, &postgres).await
}

/// The service's OpenAPI document: its routes as the gateway exposes them; [`app`]
/// serves it at `/openapi.json`, where the gateway fetches it to merge.
#[derive(Debug, utoipa::OpenApi)]
#[openapi(
    paths(api::create_user, api::get_user, api::user_orders),
    tags((name = "users", description = "Users sign up; each user's orders, paged")),
    modifiers(&Shared),
)]
pub struct ApiDoc;

/// The service's routes.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/api/users", post(api::create_user))
        .route("/api/users/{id}", get(api::get_user))
        .route("/api/users/{id}/orders", get(api::user_orders))
        .route(keel::http::openapi::SERVICE_PATH, keel::http::openapi::route(&ApiDoc::openapi()))
        .layer(body_limit())
        .with_state(state)
}
