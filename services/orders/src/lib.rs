//! Keel's example orders service, event-sourced: an order is the fold of its stream
//! `order-<id>`. Placing one validates the body and asks the users and products
//! services (through a [`Directory`]) that what it names exists, then appends
//! `order.placed`; the products service answers with the stock reservation, which
//! confirms or rejects the order. Commands append with the version they loaded, so
//! two concurrent commands on one order make one of them a 409.
//!
//! # Layout
//!
//! - `lib.rs`: [`AppState`], [`migrate`], [`app`] (the axum router) and
//!   [`start_consumers`].
//! - `api.rs`: the HTTP handlers: `POST /api/orders`, `GET /api/orders/{id}`,
//!   `POST /api/orders/{id}/cancel`. An order belongs to the subject that placed it.
//!   [`ApiDoc`] describes them (OpenAPI).
//! - `order.rs`: the [`Order`] aggregate: fold (an event that does not fit is
//!   [`Error::Unreadable`], naming it) and command rules.
//! - `fulfilment.rs`: the [`Fulfilment`] saga (consumer group [`FULFILMENT_GROUP`],
//!   through the store's inbox): confirms or rejects the order from the stock's
//!   answer, or cancels it when its deadline passes first, in whatever order it hears
//!   of them.
//! - `directory.rs`: [`Directory`] (does a product exist; a [`UserLookup`]: does a
//!   user exist and may the caller act for it), with [`DiscoveryDirectory`] (the
//!   services found through the registry) and [`RouterDirectory`] (their routers in
//!   the same process), both asking on behalf of the caller.
//! - `error.rs`: [`Error`].
//! - `main.rs`: the binary: the service alone on `KEEL_DATABASE_URL` (with the timer
//!   dispatcher that fires the orders' deadlines), listening on
//!   `KEEL_LISTEN_ADDR`, finding users and products through the registry, verifying
//!   identities with the key of `KEEL_IDENTITY_SECRET` or `KEEL_JWT_SECRET`.

// `keel::http::Problem` (the problem+json answer, built at most once per request)
// is the error type of the HTTP paths; boxing it would only add allocations.
#![allow(clippy::result_large_err)]

mod api;
mod directory;
mod error;
mod fulfilment;
mod order;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use keel::bus::ConsumerHandle;
use keel::core::{BusError, Subscriber};
use keel::http::openapi::Shared;
use keel::http::{Idempotency, body_limit};
use keel::sql::Db;
use utoipa::OpenApi as _;

pub use directory::{Directory, DiscoveryDirectory, RouterDirectory, UserLookup};
pub use error::Error;
pub use fulfilment::{DEADLINE, FULFILMENT_GROUP, Fulfilment, Settled, runner as fulfilment};
pub use order::{Order, OrderStatus};

/// The CloudEvents `source` of the events this service writes.
pub const SOURCE: &str = "/services/orders";

/// The environment variable of the order deadline, in whole seconds.
pub const ORDER_DEADLINE_ENV: &str = "KEEL_ORDER_DEADLINE_SECS";

/// How long an order may stay unsettled before it is cancelled, by default.
pub const DEFAULT_ORDER_DEADLINE: Duration = Duration::from_secs(300);

/// The order deadline of the environment ([`ORDER_DEADLINE_ENV`]), else
/// [`DEFAULT_ORDER_DEADLINE`]; a value that is not a whole number of seconds above 0
/// is an error naming the variable.
pub fn order_deadline_from_env() -> anyhow::Result<Duration> {
    match std::env::var(ORDER_DEADLINE_ENV) {
        Err(_) => Ok(DEFAULT_ORDER_DEADLINE),
        Ok(text) if text.trim().is_empty() => Ok(DEFAULT_ORDER_DEADLINE),
        Ok(text) => match text.trim().parse::<u64>() {
            Ok(seconds) if seconds > 0 => Ok(Duration::from_secs(seconds)),
            _ => anyhow::bail!(
                "configuration key `{ORDER_DEADLINE_ENV}`: `{text}` is not a whole number of seconds above 0"
            ),
        },
    }
}

/// The service's OpenAPI document: its routes as the gateway exposes them; [`app`]
/// serves it at `/openapi.json`, where the gateway fetches it to merge.
#[derive(Debug, utoipa::OpenApi)]
#[openapi(
    paths(api::place_order, api::get_order, api::cancel_order),
    tags((name = "orders", description = "Orders: placed, confirmed or rejected by the stock, cancelled")),
    modifiers(&Shared),
)]
pub struct ApiDoc;

/// What the handlers share. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    pub directory: Arc<dyn Directory>,
    pub idempotency: Idempotency,
    /// How long an order may stay unsettled before it is cancelled.
    pub deadline: Duration,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("db", &self.db)
            .field("idempotency", &self.idempotency)
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// Idempotency keys remembered for [`keel::http::DEFAULT_IDEMPOTENCY_TTL`], orders
    /// cancelled after [`DEFAULT_ORDER_DEADLINE`].
    pub fn new(db: Db, directory: Arc<dyn Directory>) -> Self {
        Self {
            db,
            directory,
            idempotency: Idempotency::new("orders_idempotency"),
            deadline: DEFAULT_ORDER_DEADLINE,
        }
    }

    /// The same, cancelling orders not settled within `deadline`.
    #[must_use]
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// The same, remembering idempotency keys for `ttl`.
    #[must_use]
    pub fn with_idempotency_ttl(mut self, ttl: std::time::Duration) -> Self {
        self.idempotency = self.idempotency.with_ttl(ttl);
        self
    }
}

/// Creates the service's table (`orders_idempotency`) in the shared database.
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
        .route("/api/orders", post(api::place_order))
        .route("/api/orders/{id}", get(api::get_order))
        .route("/api/orders/{id}/cancel", post(api::cancel_order))
        .route(keel::http::openapi::SERVICE_PATH, keel::http::openapi::route(&ApiDoc::openapi()))
        .layer(body_limit())
        .with_state(state)
}

/// Starts the service's subscribers on `bus`: the fulfilment saga (one consumer per
/// topic it hears). Its deadlines need a `keel::timers::Dispatcher` running on the
/// same database (the service binary and `keel up` run one).
pub async fn start_consumers(
    state: &AppState,
    bus: Arc<dyn Subscriber>,
) -> Result<Vec<ConsumerHandle>, BusError> {
    fulfilment::start(state, bus).await
}
