//! Keel's example users service: users sign up over HTTP (the row and the
//! `user.registered` event commit in one transaction), and each user's orders are a
//! read model built from the orders service's events.
//!
//! # Layout
//!
//! - `lib.rs`: [`AppState`], [`migrate`], [`app`] (the axum router) and
//!   [`start_consumers`].
//! - `api.rs`: the HTTP handlers: `POST /api/users`, `GET /api/users/{id}`,
//!   `GET /api/users/{id}/orders` (paged). A user belongs to the subject that
//!   registered it: with identities verified, only that subject or an admin reads it
//!   and its orders (and places orders for it, in the orders service).
//! - `orders.rs`: the `users_orders` read model, fed by `order.*` events through the
//!   store's inbox (consumer group [`ORDERS_GROUP`]).
//! - `main.rs`: the binary: the service alone on `KEEL_DATABASE_URL`, listening on
//!   `KEEL_LISTEN_ADDR`, verifying identities with the key of `KEEL_IDENTITY_SECRET`
//!   or `KEEL_JWT_SECRET`.

// `keel::http::Problem` (the problem+json answer, built at most once per request)
// is the error type of the HTTP paths; boxing it would only add allocations.
#![allow(clippy::result_large_err)]

mod api;
mod orders;

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};
use keel::bus::ConsumerHandle;
use keel::core::{BusError, Subscriber};
use keel::http::{Idempotency, body_limit};
use keel::sql::Db;

pub use api::{DEFAULT_ORDERS_PAGE, MAX_ORDERS_PAGE};
pub use orders::{ORDERS_GROUP, rebuild as rebuild_orders};

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

/// The service's routes.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/api/users", post(api::create_user))
        .route("/api/users/{id}", get(api::get_user))
        .route("/api/users/{id}/orders", get(api::user_orders))
        .layer(body_limit())
        .with_state(state)
}

/// Starts the service's subscribers on `bus`: the orders read model.
pub async fn start_consumers(
    state: &AppState,
    bus: Arc<dyn Subscriber>,
) -> Result<Vec<ConsumerHandle>, BusError> {
    Ok(vec![orders::start(state, bus).await?])
}
