//! Notifications: a service outside Keel's example system that follows the orders
//! service's events and keeps each user's notifications ("your order was placed",
//! "... confirmed", "... rejected: out of stock"), served at
//! `GET /notifications/{user_id}`.
//!
//! It runs with `keel::runtime::ServiceRunner` and shares the example system's database
//! and bus (`KEEL_DATABASE_URL`, `KEEL_BUS_URL`: run it next to `keel up` with the same
//! settings) and nothing else: it does not depend on the example system's crates. The
//! events' JSON is the contract, and this service decodes it into its own types, with
//! only the fields it needs (unknown fields are ignored, so the writer may add some), as
//! a team outside the repository would.
//!
//! The read model is kept through the store's inbox (each event applied once, with the
//! processed mark in the same transaction) by the consumer group `notifications`,
//! which, being new, starts at the beginning of the log: orders placed before the
//! service first started are notified too.

use axum::Router;
use axum::extract::{Path, State};
use axum::routing::get;
use keel::bus::{ConsumerHandle, HandlerError, Message};
use keel::core::{BusError, Event, SubscriptionSpec};
use keel::http::{Json, Problem, body_limit};
use keel::runtime::{ServiceContext, ServiceRunner};
use keel::sql::{Db, Tx, args, start_inbox_consumer};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The orders service's topic (its streams are `order-<id>`).
const ORDER_TOPIC: &str = "order";
/// This service's consumer group on it.
const GROUP: &str = "notifications";

/// `order.placed`, as far as notifications care.
#[derive(Debug, Event, Serialize, Deserialize)]
#[event(type = "order.placed", key = order_id)]
struct OrderPlaced {
    order_id: String,
    user_id: String,
    items: Vec<Value>,
}

/// `order.confirmed`.
#[derive(Debug, Event, Serialize, Deserialize)]
#[event(type = "order.confirmed", key = order_id)]
struct OrderConfirmed {
    order_id: String,
}

/// `order.rejected`.
#[derive(Debug, Event, Serialize, Deserialize)]
#[event(type = "order.rejected", key = order_id)]
struct OrderRejected {
    order_id: String,
    reason: String,
}

/// `order.cancelled`.
#[derive(Debug, Event, Serialize, Deserialize)]
#[event(type = "order.cancelled", key = order_id)]
struct OrderCancelled {
    order_id: String,
}

async fn create_tables(db: Db) -> keel::sql::Result<()> {
    let mut tx = db.begin().await?;
    tx.execute(
        "CREATE TABLE IF NOT EXISTS notifications_orders (order_id TEXT PRIMARY KEY, user_id TEXT NOT NULL)",
        args![],
    )
    .await?;
    tx.execute(
        "CREATE TABLE IF NOT EXISTS notifications_feed (event_id TEXT PRIMARY KEY,
         user_id TEXT NOT NULL, order_id TEXT NOT NULL, kind TEXT NOT NULL, text TEXT NOT NULL)",
        args![],
    )
    .await?;
    tx.commit().await
}

/// One order event -> one notification for the order's user, in the inbox's transaction.
async fn notify(message: Message, mut tx: Tx) -> Result<Tx, HandlerError> {
    let ty = message.event().ty();
    let (order_id, kind, text) = if ty == OrderPlaced::TYPE {
        let placed: OrderPlaced = message.decode()?;
        tx.execute(
            "INSERT INTO notifications_orders (order_id, user_id) VALUES ($1, $2)
             ON CONFLICT (order_id) DO NOTHING",
            args![&placed.order_id, &placed.user_id],
        )
        .await?;
        let text = format!("Your order of {} line(s) was placed", placed.items.len());
        (placed.order_id, "placed", text)
    } else if ty == OrderConfirmed::TYPE {
        let confirmed: OrderConfirmed = message.decode()?;
        (confirmed.order_id, "confirmed", "Your order is confirmed".to_owned())
    } else if ty == OrderRejected::TYPE {
        let rejected: OrderRejected = message.decode()?;
        (rejected.order_id, "rejected", format!("Your order was rejected: {}", rejected.reason))
    } else if ty == OrderCancelled::TYPE {
        let cancelled: OrderCancelled = message.decode()?;
        (cancelled.order_id, "cancelled", "Your order was cancelled".to_owned())
    } else {
        return Ok(tx);
    };
    let user: Option<(String,)> = tx
        .fetch_optional(
            "SELECT user_id FROM notifications_orders WHERE order_id = $1",
            args![&order_id],
        )
        .await?;
    // An order's events share its partition key, so `order.placed` was handled first.
    let Some((user_id,)) = user else {
        return Err(HandlerError::permanent(format!("{ty} of unknown order `{order_id}`")));
    };
    tx.execute(
        "INSERT INTO notifications_feed (event_id, user_id, order_id, kind, text)
         VALUES ($1, $2, $3, $4, $5)",
        args![message.event().id(), user_id, order_id, kind, text],
    )
    .await?;
    Ok(tx)
}

/// `GET /notifications/{user_id}` -> `{"user_id", "notifications": [{"order_id", "kind",
/// "text"}]}`, oldest first (event ids are UUIDv7).
async fn list(State(db): State<Db>, Path(user_id): Path<String>) -> Result<Json<Value>, Problem> {
    let rows: Vec<(String, String, String)> = db
        .fetch_all(
            "SELECT order_id, kind, text FROM notifications_feed WHERE user_id = $1 ORDER BY event_id",
            args![&user_id],
        )
        .await?;
    let notifications: Vec<Value> = rows
        .into_iter()
        .map(|(order_id, kind, text)| json!({ "order_id": order_id, "kind": kind, "text": text }))
        .collect();
    Ok(Json(json!({ "user_id": user_id, "notifications": notifications })))
}

/// The consumer: the group `notifications` on the orders service's topic.
async fn start_consumers(context: ServiceContext) -> Result<Vec<ConsumerHandle>, BusError> {
    let spec = SubscriptionSpec::new(ORDER_TOPIC, GROUP).types([
        OrderPlaced::TYPE,
        OrderConfirmed::TYPE,
        OrderRejected::TYPE,
        OrderCancelled::TYPE,
    ]);
    Ok(vec![start_inbox_consumer(&context.db, context.bus, spec, 4, notify).await?])
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    ServiceRunner::new("notifications")
        .migrations(create_tables)
        .consumers(start_consumers)
        .routes(|context: &ServiceContext| {
            Router::new()
                .route("/notifications/{user_id}", get(list))
                .layer(body_limit())
                .with_state(context.db.clone())
        })
        .run()
        .await
}
