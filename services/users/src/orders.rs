//! The `users_orders` read model: each user's orders and their status, from the
//! orders service's events. A projection (see `keel::sql::Projection`): the runner
//! applies the order events from the log in order, each page committed with the
//! projection's checkpoint, so a crash never applies an event twice or skips one; the
//! binary's `projections rebuild users-orders` rebuilds it blue/green: a new generation
//! of `users_orders` is built beside the live one (the SQL names it `{users_orders}`)
//! and switched in one transaction once it caught up.

use keel::bus::HandlerError;
use keel::core::{CloudEvent, Event};
use keel::sql::{Conn, Projection, args};
use keel::store::LogFilter;
use keel_services_common::events::{
    OrderCancelled, OrderConfirmed, OrderPlaced, OrderRejected, topics,
};

/// The read model of each user's orders (projection `users-orders`).
#[derive(Clone, Copy, Debug, Default)]
pub struct UsersOrders;

impl UsersOrders {
    /// The projection's name (its checkpoint is `projection:users-orders`).
    pub const NAME: &'static str = "users-orders";
}

#[keel::async_trait]
impl Projection for UsersOrders {
    fn name(&self) -> &str {
        Self::NAME
    }

    fn tables(&self) -> &[&str] {
        &["users_orders"]
    }

    fn filter(&self) -> LogFilter {
        LogFilter {
            types: [
                OrderPlaced::TYPE,
                OrderConfirmed::TYPE,
                OrderRejected::TYPE,
                OrderCancelled::TYPE,
            ]
            .map(str::to_owned)
            .to_vec(),
            ..LogFilter::topic(topics::ORDER)
        }
    }

    async fn apply(&self, conn: &mut Conn<'_>, event: &CloudEvent) -> Result<(), HandlerError> {
        let now = chrono::Utc::now().to_rfc3339();
        let ty = event.ty();
        // A decode error converts to `HandlerError::unreadable` (with `?`), so an event
        // this code cannot read meets the projection's policy (skip and record) instead
        // of failing its page for ever: the README's `keel publish order.placed --data
        // '{"total":12}'` must not stop the read model.
        if ty == OrderPlaced::TYPE {
            let placed: OrderPlaced = event.decode()?;
            let items = serde_json::to_string(&placed.items).map_err(HandlerError::permanent)?;
            conn.execute(
                "INSERT INTO {users_orders} (order_id, user_id, status, items, reason, placed_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (order_id) DO NOTHING",
                args![placed.order_id, placed.user_id, "pending", items, None::<String>, now.clone(), now],
            )
            .await?;
            return Ok(());
        }
        // The statuses an outcome may follow, as the order's own fold reads its stream:
        // a confirmation appended after a cancellation does not undo it.
        let (order_id, status, reason) = if ty == OrderConfirmed::TYPE {
            (event.decode::<OrderConfirmed>()?.order_id, "confirmed", None)
        } else if ty == OrderRejected::TYPE {
            let rejected: OrderRejected = event.decode()?;
            (rejected.order_id, "rejected", Some(rejected.reason))
        } else if ty == OrderCancelled::TYPE {
            (event.decode::<OrderCancelled>()?.order_id, "cancelled", None)
        } else {
            return Ok(());
        };
        let from = if status == "cancelled" { "confirmed" } else { "pending" };
        conn.execute(
            "UPDATE {users_orders} SET status = $1, reason = $2, updated_at = $3
             WHERE order_id = $4 AND status IN ('pending', $5)",
            args![status, reason, now, order_id, from],
        )
        .await?;
        Ok(())
    }
}
