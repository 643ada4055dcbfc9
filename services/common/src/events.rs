//! The example system's domain events: the contract between the services, so each
//! subscriber decodes exactly what the writer appended.
//!
//! Streams are `<category>-<id>`, and the category is the bus topic (see
//! `keel::core::StreamId::category`): users write `user-<id>`, products `product-<id>`
//! and, for reservations, `stock-<order id>`; orders write `order-<id>`.

use keel::core::schema::Catalog;
use keel::core::{Event, StreamId};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use keel::sql::{Error, Result};

/// Bus topics (stream categories).
pub mod topics {
    pub const USER: &str = "user";
    pub const PRODUCT: &str = "product";
    pub const ORDER: &str = "order";
    pub const STOCK: &str = "stock";
}

/// The stream `<category>-<id>`.
pub fn stream_id(category: &str, id: &str) -> Result<StreamId> {
    StreamId::new(format!("{category}-{id}")).map_err(|e| Error::Event(e.to_string()))
}

/// A user signed up.
#[derive(Clone, Debug, PartialEq, Eq, Event, Serialize, Deserialize, JsonSchema)]
#[event(type = "user.registered", key = user_id)]
pub struct UserRegistered {
    pub user_id: String,
    pub name: String,
    pub email: String,
}

/// A product was added to the catalogue with its initial stock.
#[derive(Clone, Debug, PartialEq, Eq, Event, Serialize, Deserialize, JsonSchema)]
#[event(type = "product.created", key = product_id)]
pub struct ProductCreated {
    pub product_id: String,
    pub name: String,
    pub price_cents: i64,
    pub stock: i64,
}

/// One line of an order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
pub struct OrderItem {
    /// The product's id.
    #[schema(min_length = 1, max_length = 100)]
    pub product_id: String,
    /// How many, 1 to 1,000,000.
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub quantity: i64,
}

/// An order was placed (pending until the stock is reserved or refused).
#[derive(Clone, Debug, PartialEq, Eq, Event, Serialize, Deserialize, JsonSchema)]
#[event(type = "order.placed", key = order_id)]
pub struct OrderPlaced {
    pub order_id: String,
    pub user_id: String,
    pub items: Vec<OrderItem>,
}

/// The stock of every item of an order is set aside.
#[derive(Clone, Debug, PartialEq, Eq, Event, Serialize, Deserialize, JsonSchema)]
#[event(type = "stock.reserved", key = order_id)]
pub struct StockReserved {
    pub order_id: String,
}

/// The stock of an order could not be reserved (nothing was).
#[derive(Clone, Debug, PartialEq, Eq, Event, Serialize, Deserialize, JsonSchema)]
#[event(type = "stock.rejected", key = order_id)]
pub struct StockRejected {
    pub order_id: String,
    pub reason: String,
}

/// The stock reserved for a cancelled order went back on the shelf.
#[derive(Clone, Debug, PartialEq, Eq, Event, Serialize, Deserialize, JsonSchema)]
#[event(type = "stock.released", key = order_id)]
pub struct StockReleased {
    pub order_id: String,
}

/// The order's stock is reserved: it will be delivered.
#[derive(Clone, Debug, PartialEq, Eq, Event, Serialize, Deserialize, JsonSchema)]
#[event(type = "order.confirmed", key = order_id)]
pub struct OrderConfirmed {
    pub order_id: String,
}

/// The order cannot be fulfilled.
#[derive(Clone, Debug, PartialEq, Eq, Event, Serialize, Deserialize, JsonSchema)]
#[event(type = "order.rejected", key = order_id)]
pub struct OrderRejected {
    pub order_id: String,
    pub reason: String,
}

/// The customer cancelled the order.
#[derive(Clone, Debug, PartialEq, Eq, Event, Serialize, Deserialize, JsonSchema)]
#[event(type = "order.cancelled", key = order_id)]
pub struct OrderCancelled {
    pub order_id: String,
}

/// An order was not settled (confirmed, rejected or cancelled) by its deadline: the
/// message of the durable timer the orders service schedules with each order, which
/// its fulfilment saga answers by cancelling the order.
#[derive(Clone, Debug, PartialEq, Eq, Event, Serialize, Deserialize, JsonSchema)]
#[event(type = "order.deadline_passed", key = order_id)]
pub struct OrderDeadlinePassed {
    pub order_id: String,
}

/// Every event type of the example system, for `keel schema export` and
/// `keel schema check`.
pub fn catalog() -> Catalog {
    Catalog::new()
        .with::<UserRegistered>()
        .with::<ProductCreated>()
        .with::<OrderPlaced>()
        .with::<StockReserved>()
        .with::<StockRejected>()
        .with::<StockReleased>()
        .with::<OrderConfirmed>()
        .with::<OrderRejected>()
        .with::<OrderCancelled>()
        .with::<OrderDeadlinePassed>()
}
