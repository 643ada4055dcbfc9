//! Keel's example users service: users sign up over HTTP (the row and the
//! `user.registered` event commit in one transaction), and each user's orders are a
//! read model built from the orders service's events.
//!
//! # Layout
//!
//! - `lib.rs`: [`AppState`], [`migrate`], [`app`] (the axum router) and
//!   [`start_consumers`].
//! - `api.rs`: the HTTP handlers: `POST /api/users`, `GET /api/users/{id}`,
//!   `GET /api/users/{id}/orders`.
//! - `orders.rs`: the `users_orders` read model, fed by `order.*` events through the
//!   store's inbox (consumer group [`ORDERS_GROUP`]).
//! - `main.rs`: the binary: the service alone on `KEEL_DATABASE_URL`, listening on
//!   `KEEL_USERS_ADDR`.

// `keel_service::Problem` (the problem+json answer, built at most once per request)
// is the error type of the HTTP paths; boxing it would only add allocations.
#![allow(clippy::result_large_err)]

mod api;
mod orders;

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};
use keel_bus::ConsumerHandle;
use keel_core::{BusError, Subscriber};
use keel_services_common::{Db, body_limit};

pub use orders::{ORDERS_GROUP, rebuild as rebuild_orders};

/// The CloudEvents `source` of the events this service writes.
pub const SOURCE: &str = "/services/users";

/// What the handlers share. Cheap to clone.
#[derive(Clone, Debug)]
pub struct AppState {
    pub db: Db,
}

impl AppState {
    pub fn new(db: Db) -> Self {
        Self { db }
    }
}

/// Creates the service's tables (`users_*`) in the shared database.
pub async fn migrate(db: &Db) -> keel_services_common::Result<()> {
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
