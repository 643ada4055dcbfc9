//! Keel's example products service: the catalogue over HTTP (the row and the
//! `product.created` event commit in one transaction) and the stock, which it reserves
//! for each placed order, all items or none, answering `stock.reserved` or
//! `stock.rejected`; a cancelled order's stock goes back (`stock.released`).
//!
//! # Layout
//!
//! - `lib.rs`: [`AppState`], [`migrate`], [`app`] (the axum router) and
//!   [`start_consumers`].
//! - `api.rs`: the HTTP handlers: `POST /api/products` (an authenticated caller when
//!   identities are verified), `GET /api/products/{id}` (the catalogue is public);
//!   [`ApiDoc`] describes them (OpenAPI).
//! - `stock.rs`: reservations, fed by `order.placed` and `order.cancelled` through the
//!   store's inbox (consumer group [`STOCK_GROUP`]): stock changes, reservation rows,
//!   the answering event and the processed mark in one transaction.
//! - `main.rs`: the binary: the service alone on `KEEL_DATABASE_URL`, listening on
//!   `KEEL_LISTEN_ADDR`, verifying identities with the key of `KEEL_IDENTITY_SECRET`
//!   or `KEEL_JWT_SECRET`.

// `keel::http::Problem` (the problem+json answer, built at most once per request)
// is the error type of the HTTP paths; boxing it would only add allocations.
#![allow(clippy::result_large_err)]

mod api;
mod stock;

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};
use keel::bus::ConsumerHandle;
use keel::core::{BusError, Subscriber};
use keel::http::openapi::Shared;
use keel::http::{Idempotency, body_limit};
use keel::sql::Db;
use utoipa::OpenApi as _;

pub use stock::STOCK_GROUP;

/// The CloudEvents `source` of the events this service writes.
pub const SOURCE: &str = "/services/products";

/// What the handlers share. Cheap to clone.
#[derive(Clone, Debug)]
pub struct AppState {
    pub db: Db,
    pub idempotency: Idempotency,
}

impl AppState {
    /// Idempotency keys remembered for [`keel::http::DEFAULT_IDEMPOTENCY_TTL`].
    pub fn new(db: Db) -> Self {
        Self { db, idempotency: Idempotency::new("products_idempotency") }
    }

    /// The same, remembering idempotency keys for `ttl`.
    #[must_use]
    pub fn with_idempotency_ttl(mut self, ttl: std::time::Duration) -> Self {
        self.idempotency = self.idempotency.with_ttl(ttl);
        self
    }
}

/// Creates the service's tables (`products_*`) in the shared database.
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
    paths(api::create_product, api::get_product),
    tags((name = "products", description = "The catalogue and its stock")),
    modifiers(&Shared),
)]
pub struct ApiDoc;

/// The service's routes.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/api/products", post(api::create_product))
        .route("/api/products/{id}", get(api::get_product))
        .route(keel::http::openapi::SERVICE_PATH, keel::http::openapi::route(&ApiDoc::openapi()))
        .layer(body_limit())
        .with_state(state)
}

/// Starts the service's subscribers on `bus`: stock reservations.
pub async fn start_consumers(
    state: &AppState,
    bus: Arc<dyn Subscriber>,
) -> Result<Vec<ConsumerHandle>, BusError> {
    Ok(vec![stock::start(state, bus).await?])
}
