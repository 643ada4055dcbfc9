//! The order's outcome: the stock reservation's answer confirms or rejects a pending
//! order, appended to its stream with the version it was loaded at (a concurrent
//! command makes that a conflict, and the message is retried on the new state). The
//! append and the inbox mark commit together, so a redelivered answer changes nothing.

use std::sync::Arc;

use keel::bus::layer::{Inbox as _, TraceLayer, current_context};
use keel::bus::{Consumer, ConsumerHandle, HandlerError, Message, handler_fn};
use keel::core::{BusError, Event, ExpectedVersion, Subscriber, SubscriptionSpec};
use keel::sql::{Db, DbInbox, Error as SqlError, envelope};
use keel_services_common::events::{StockRejected, StockReserved, stream_id, topics};
use tower::Layer as _;

use crate::order::Order;
use crate::{AppState, SOURCE};

/// The consumer group of the outcomes.
pub const STATUS_GROUP: &str = "orders-status";

pub(crate) async fn start(
    state: &AppState,
    bus: Arc<dyn Subscriber>,
) -> Result<ConsumerHandle, BusError> {
    let spec = SubscriptionSpec::new(topics::STOCK, STATUS_GROUP)
        .types([StockReserved::TYPE, StockRejected::TYPE]);
    let db = state.db.clone();
    let inbox = state.db.inbox();
    let handler = handler_fn(move |message: Message| {
        let db = db.clone();
        let inbox = inbox.clone();
        async move { decide(&db, &inbox, message).await }
    });
    Consumer::new(bus, spec).concurrency(4).start(TraceLayer::new().layer(handler)).await
}

/// Loads the order (before the write transaction: on SQLite a writer that waited for
/// a second pooled connection could starve the pool), then appends the outcome and
/// the inbox mark together. A stale load is a version conflict, retried.
async fn decide(db: &Db, inbox: &DbInbox, message: Message) -> Result<(), HandlerError> {
    let (order_id, reserved, reason) = if message.event().ty() == StockReserved::TYPE {
        (message.decode::<StockReserved>()?.order_id, true, String::new())
    } else {
        let rejected = message.decode::<StockRejected>()?;
        (rejected.order_id, false, rejected.reason)
    };
    let Some(order) = Order::load(db, &order_id).await? else {
        let error = SqlError::Event(format!("stock answer for unknown order `{order_id}`"));
        return Err(HandlerError::permanent(error));
    };
    let context = current_context().unwrap_or_default();
    let event = if reserved {
        order.confirm().map(|e| envelope(&e, SOURCE, &context)).transpose()?
    } else {
        order.reject(&reason).map(|e| envelope(&e, SOURCE, &context)).transpose()?
    };
    let Some(mut tx) = inbox.begin(message.group(), message.event().id()).await? else {
        return Ok(());
    };
    let Some(event) = event else {
        tracing::debug!(order = %order_id, status = order.status.as_str(), "order is no longer pending");
        return inbox.commit(tx).await;
    };
    let stream = stream_id(topics::ORDER, &order_id)?;
    tx.append(&stream, ExpectedVersion::Exact(order.version), &[event]).await?;
    inbox.commit(tx).await
}
