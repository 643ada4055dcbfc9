//! The `users_orders` read model: each user's orders and their status, from the
//! orders service's events. Handled through the store's inbox, so the row change and
//! the processed mark commit together and a redelivered event changes nothing.

use std::sync::Arc;

use keel::bus::layer::Inbox as _;
use keel::bus::{ConsumerHandle, HandlerError, Message};
use keel::core::{BusError, Event, Subscriber, SubscriptionSpec};
use keel::sql::{Db, Error as SqlError, Tx, args, start_inbox_consumer};
use keel::store::{Cursor, LogFilter};
use keel_services_common::events::{
    OrderCancelled, OrderConfirmed, OrderPlaced, OrderRejected, topics,
};

use crate::AppState;

/// The consumer group of the read model.
pub const ORDERS_GROUP: &str = "users-orders";

pub(crate) async fn start(
    state: &AppState,
    bus: Arc<dyn Subscriber>,
) -> Result<ConsumerHandle, BusError> {
    let spec = SubscriptionSpec::new(topics::ORDER, ORDERS_GROUP).types([
        OrderPlaced::TYPE,
        OrderConfirmed::TYPE,
        OrderRejected::TYPE,
        OrderCancelled::TYPE,
    ]);
    start_inbox_consumer(&state.db, bus, spec, 4, apply).await
}

/// Rebuilds the read model by replay: empties it and forgets the group's processed
/// marks in one transaction, then applies every order event of the log in log order,
/// each in its own inbox transaction (so the live consumer, resuming, skips them).
/// Run it while the users service is stopped. Reports progress as events applied.
pub async fn rebuild(db: &Db, mut progress: impl FnMut(u64) + Send) -> Result<u64, SqlError> {
    let mut reset = db.begin().await?;
    reset.execute("DELETE FROM users_orders", args![]).await?;
    reset.execute("DELETE FROM keel_inbox WHERE group_name = $1", args![ORDERS_GROUP]).await?;
    reset.commit().await?;
    let log = db.log();
    let inbox = db.inbox();
    let filter = LogFilter {
        topic: Some(topics::ORDER.to_owned()),
        types: [OrderPlaced::TYPE, OrderConfirmed::TYPE, OrderRejected::TYPE, OrderCancelled::TYPE]
            .map(str::to_owned)
            .to_vec(),
        ..LogFilter::default()
    };
    let (topic, group): (Arc<str>, Arc<str>) = (topics::ORDER.into(), ORDERS_GROUP.into());
    let mut cursor = Cursor::START;
    let mut applied = 0;
    loop {
        let page = log.read_after(cursor, &filter, 500).await?;
        if page.events.is_empty() && page.next == cursor {
            break;
        }
        for stored in page.events {
            let message = Message::new(stored.event, 1, topic.clone(), group.clone());
            let Some(tx) =
                inbox.begin(ORDERS_GROUP, message.event().id()).await.map_err(rebuild_error)?
            else {
                continue;
            };
            let tx = apply(message, tx).await.map_err(rebuild_error)?;
            inbox.commit(tx).await.map_err(rebuild_error)?;
            applied += 1;
            progress(applied);
        }
        cursor = page.next;
    }
    Ok(applied)
}

fn rebuild_error(error: HandlerError) -> SqlError {
    SqlError::Event(format!("replaying into users_orders: {error}"))
}

/// Applies one order event to the read model inside the inbox transaction.
async fn apply(message: Message, mut tx: Tx) -> Result<Tx, HandlerError> {
    let now = chrono::Utc::now().to_rfc3339();
    let ty = message.event().ty();
    if ty == OrderPlaced::TYPE {
        let placed: OrderPlaced = message.decode()?;
        let items = serde_json::to_string(&placed.items).map_err(HandlerError::permanent)?;
        tx.execute(
            "INSERT INTO users_orders (order_id, user_id, status, items, reason, placed_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (order_id) DO NOTHING",
            args![placed.order_id, placed.user_id, "pending", items, None::<String>, now.clone(), now],
        )
        .await?;
        return Ok(tx);
    }
    let (order_id, status, reason) = if ty == OrderConfirmed::TYPE {
        (message.decode::<OrderConfirmed>()?.order_id, "confirmed", None)
    } else if ty == OrderRejected::TYPE {
        let rejected: OrderRejected = message.decode()?;
        (rejected.order_id, "rejected", Some(rejected.reason))
    } else if ty == OrderCancelled::TYPE {
        (message.decode::<OrderCancelled>()?.order_id, "cancelled", None)
    } else {
        return Ok(tx);
    };
    tx.execute(
        "UPDATE users_orders SET status = $1, reason = $2, updated_at = $3 WHERE order_id = $4",
        args![status, reason, now, order_id],
    )
    .await?;
    Ok(tx)
}
