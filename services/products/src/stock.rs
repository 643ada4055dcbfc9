//! Stock reservations for orders, effectively once.
//!
//! `order.placed`: every item is decremented only where enough stock is left
//! (`... AND stock >= q`, so concurrent reservations can never take it below zero, in
//! SQLite's serialized writers and under PostgreSQL's row locks alike); if one item
//! falls short, the items already taken in this transaction are put back, and the
//! order gets `stock.rejected` instead of `stock.reserved`. Products are visited in id
//! order so two reservations never lock rows in opposite orders.
//! `order.cancelled`: whatever the order holds goes back, with `stock.released`, and
//! the order is remembered as cancelled: an `order.placed` heard after it (in
//! whichever order the bus delivers them) reserves nothing and is answered
//! `stock.rejected`. Both run in the inbox's transaction, with the events they append.

use std::collections::BTreeMap;
use std::sync::Arc;

use keel::bus::layer::current_context;
use keel::bus::{ConsumerHandle, HandlerError, Message};
use keel::core::{BusError, Event, ExpectedVersion, Subscriber, SubscriptionSpec};
use keel::sql::{Error as SqlError, Tx, args, envelope, start_inbox_consumer};
use keel_services_common::events::{
    OrderCancelled, OrderPlaced, StockRejected, StockReleased, StockReserved, stream_id, topics,
};

use crate::{AppState, SOURCE};

/// The consumer group of the reservations.
pub const STOCK_GROUP: &str = "products-stock";

pub(crate) async fn start(
    state: &AppState,
    bus: Arc<dyn Subscriber>,
) -> Result<ConsumerHandle, BusError> {
    let spec = SubscriptionSpec::new(topics::ORDER, STOCK_GROUP)
        .types([OrderPlaced::TYPE, OrderCancelled::TYPE]);
    start_inbox_consumer(&state.db, bus, spec, 4, handle).await
}

async fn handle(message: Message, tx: Tx) -> Result<Tx, HandlerError> {
    if message.event().ty() == OrderPlaced::TYPE {
        Ok(reserve(message.decode()?, tx).await?)
    } else if message.event().ty() == OrderCancelled::TYPE {
        Ok(release(message.decode()?, tx).await?)
    } else {
        Ok(tx)
    }
}

/// Reserves every item of `order` or none; appends the outcome to `stock-<order id>`.
async fn reserve(order: OrderPlaced, mut tx: Tx) -> Result<Tx, SqlError> {
    let context = current_context().unwrap_or_default();
    let stream = stream_id(topics::STOCK, &order.order_id)?;
    let cancelled: Option<(String,)> = tx
        .fetch_optional(
            "SELECT order_id FROM products_cancelled_orders WHERE order_id = $1",
            args![&order.order_id],
        )
        .await?;
    if cancelled.is_some() {
        let reason = "the order was cancelled before its stock was reserved".to_owned();
        tracing::info!(order = %order.order_id, "placed after its cancellation: nothing reserved");
        let event =
            envelope(&StockRejected { order_id: order.order_id, reason }, SOURCE, &context)?;
        tx.append(&stream, ExpectedVersion::Any, &[event]).await?;
        return Ok(tx);
    }
    let mut wanted: BTreeMap<&str, i64> = BTreeMap::new();
    for item in &order.items {
        *wanted.entry(item.product_id.as_str()).or_default() += item.quantity;
    }
    let mut taken = Vec::with_capacity(wanted.len());
    let mut shortfall = None;
    for (&product, &quantity) in &wanted {
        let updated = if quantity > 0 {
            tx.execute(
                "UPDATE products_products SET stock = stock - $1 WHERE id = $2 AND stock >= $3",
                args![quantity, product, quantity],
            )
            .await?
        } else {
            0
        };
        if updated == 0 {
            shortfall = Some(why_not(&mut tx, product, quantity).await?);
            break;
        }
        taken.push((product, quantity));
    }
    let event = match shortfall {
        Some(reason) => {
            for (product, quantity) in taken {
                tx.execute(
                    "UPDATE products_products SET stock = stock + $1 WHERE id = $2",
                    args![quantity, product],
                )
                .await?;
            }
            tracing::info!(order = %order.order_id, %reason, "stock refused");
            envelope(&StockRejected { order_id: order.order_id.clone(), reason }, SOURCE, &context)?
        }
        None => {
            for (product, quantity) in taken {
                tx.execute(
                    "INSERT INTO products_reservations (order_id, product_id, quantity) VALUES ($1, $2, $3)",
                    args![&order.order_id, product, quantity],
                )
                .await?;
            }
            envelope(&StockReserved { order_id: order.order_id.clone() }, SOURCE, &context)?
        }
    };
    tx.append(&stream, ExpectedVersion::Any, &[event]).await?;
    Ok(tx)
}

/// Why `quantity` of `product` cannot be taken.
async fn why_not(tx: &mut Tx, product: &str, quantity: i64) -> Result<String, SqlError> {
    if quantity <= 0 {
        return Ok(format!("quantity {quantity} of product {product} is not positive"));
    }
    let stock: Option<(i64,)> = tx
        .fetch_optional("SELECT stock FROM products_products WHERE id = $1", args![product])
        .await?;
    Ok(match stock {
        None => format!("product {product} does not exist"),
        Some((left,)) => {
            format!("product {product}: {quantity} wanted, {left} in stock")
        }
    })
}

/// Gives back what a cancelled order holds, and remembers it cancelled.
async fn release(order: OrderCancelled, mut tx: Tx) -> Result<Tx, SqlError> {
    tx.execute(
        "INSERT INTO products_cancelled_orders (order_id) VALUES ($1) ON CONFLICT (order_id) DO NOTHING",
        args![&order.order_id],
    )
    .await?;
    let held: Vec<(String, i64)> = tx
        .fetch_all(
            "SELECT product_id, quantity FROM products_reservations WHERE order_id = $1 ORDER BY product_id",
            args![&order.order_id],
        )
        .await?;
    if held.is_empty() {
        return Ok(tx);
    }
    for (product, quantity) in held {
        tx.execute(
            "UPDATE products_products SET stock = stock + $1 WHERE id = $2",
            args![quantity, product],
        )
        .await?;
    }
    tx.execute("DELETE FROM products_reservations WHERE order_id = $1", args![&order.order_id])
        .await?;
    let context = current_context().unwrap_or_default();
    let stream = stream_id(topics::STOCK, &order.order_id)?;
    let event = envelope(&StockReleased { order_id: order.order_id.clone() }, SOURCE, &context)?;
    tx.append(&stream, ExpectedVersion::Any, &[event]).await?;
    Ok(tx)
}
