//! The order aggregate: its state is the fold of its stream `order-<id>`, and its
//! commands decide which event (if any) comes next.

use keel::core::{CloudEvent, Event, StreamVersion};
use keel::sql::Db;
use keel_services_common::events::{
    OrderCancelled, OrderConfirmed, OrderItem, OrderPlaced, OrderRejected, stream_id, topics,
};
use serde::Serialize;
use serde_json::{Value, json};

use crate::error::Error;

/// Where an order stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OrderStatus {
    /// Placed; the stock is not reserved yet.
    Pending,
    Confirmed,
    Rejected,
    Cancelled,
}

impl OrderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Confirmed => "confirmed",
            Self::Rejected => "rejected",
            Self::Cancelled => "cancelled",
        }
    }
}

/// An order as its events left it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Order {
    pub id: String,
    pub user_id: String,
    pub items: Vec<OrderItem>,
    pub status: OrderStatus,
    /// Why it was rejected.
    pub reason: Option<String>,
    /// The subject that placed it (the `order.placed` event's actor); `None` when
    /// placed in the open mode without one.
    pub owner: Option<String>,
    /// The stream version the state was folded up to (the next append expects it).
    pub version: StreamVersion,
}

impl Order {
    /// The order of a stream's events; `None` for an empty stream. An event that does
    /// not fold into an order is [`Error::Unreadable`], naming the stream and the event.
    pub fn from_events(events: &[CloudEvent]) -> Result<Option<Self>, Error> {
        let mut order: Option<Self> = None;
        for (n, event) in events.iter().enumerate() {
            let version = event
                .stream_version()
                .unwrap_or(StreamVersion(u64::try_from(n).unwrap_or(u64::MAX) + 1));
            let ty = event.ty();
            let unreadable = |why: &dyn std::fmt::Display| {
                Error::Unreadable(format!(
                    "stream {}: event {} ({ty}, version {version}) {why}",
                    event.subject().unwrap_or("?"),
                    event.id(),
                ))
            };
            let decode = |e: keel::core::DecodeError| unreadable(&format!("cannot be read: {e}"));
            if ty == OrderPlaced::TYPE && order.is_none() {
                let placed: OrderPlaced = event.decode().map_err(decode)?;
                order = Some(Self {
                    id: placed.order_id,
                    user_id: placed.user_id,
                    items: placed.items,
                    status: OrderStatus::Pending,
                    reason: None,
                    owner: event.actor().map(str::to_owned),
                    version,
                });
                continue;
            }
            let Some(o) = order.as_mut() else {
                return Err(unreadable(&"comes before the order was placed"));
            };
            // An outcome applies only where it can follow the status so far: the
            // fulfilment saga appends its outcome at any version, so a confirmation
            // can land after a cancellation (which wins) or twice (which is once).
            if ty == OrderConfirmed::TYPE {
                if o.status == OrderStatus::Pending {
                    o.status = OrderStatus::Confirmed;
                }
            } else if ty == OrderRejected::TYPE {
                let rejected: OrderRejected = event.decode().map_err(decode)?;
                if o.status == OrderStatus::Pending {
                    o.status = OrderStatus::Rejected;
                    o.reason = Some(rejected.reason);
                }
            } else if ty == OrderCancelled::TYPE {
                if matches!(o.status, OrderStatus::Pending | OrderStatus::Confirmed) {
                    o.status = OrderStatus::Cancelled;
                }
            } else {
                return Err(unreadable(&"does not fit the order stream"));
            }
            o.version = version;
        }
        Ok(order)
    }

    /// Loads order `id` from its stream.
    pub async fn load(db: &Db, id: &str) -> Result<Option<Self>, Error> {
        let Ok(stream) = stream_id(topics::ORDER, id) else { return Ok(None) };
        Self::from_events(&db.read_stream(&stream).await?)
    }

    /// The stock is reserved: a pending order is confirmed; otherwise nothing changes
    /// (it was cancelled meanwhile, or this is a late duplicate).
    pub fn confirm(&self) -> Option<OrderConfirmed> {
        (self.status == OrderStatus::Pending).then(|| OrderConfirmed { order_id: self.id.clone() })
    }

    /// The stock was refused: a pending order is rejected.
    pub fn reject(&self, reason: &str) -> Option<OrderRejected> {
        (self.status == OrderStatus::Pending)
            .then(|| OrderRejected { order_id: self.id.clone(), reason: reason.to_owned() })
    }

    /// The customer cancels: allowed while pending or confirmed; `Err` says why not.
    pub fn cancel(&self) -> Result<OrderCancelled, String> {
        match self.status {
            OrderStatus::Pending | OrderStatus::Confirmed => {
                Ok(OrderCancelled { order_id: self.id.clone() })
            }
            other => Err(format!("the order is {} and cannot be cancelled", other.as_str())),
        }
    }

    /// The order as `GET /api/orders/{id}` shows it.
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "user_id": self.user_id,
            "items": self.items,
            "status": self.status,
            "reason": self.reason,
            "version": self.version.0,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use keel::core::envelope::ext;

    fn at<E: Event>(event: &E, version: i64) -> CloudEvent {
        let mut e = CloudEvent::from_event(event, "/t").unwrap().build().unwrap();
        e.set_extension(ext::STREAM_VERSION, version).unwrap();
        e
    }

    fn placed() -> CloudEvent {
        let items = vec![OrderItem { product_id: "p".into(), quantity: 2 }];
        at(&OrderPlaced { order_id: "o".into(), user_id: "u".into(), items }, 1)
    }

    #[test]
    fn given_placed_when_confirmed_then_confirmed_at_version_two() {
        let confirmed = at(&OrderConfirmed { order_id: "o".into() }, 2);
        let order = Order::from_events(&[placed(), confirmed]).unwrap().unwrap();
        assert_eq!(order.status, OrderStatus::Confirmed);
        assert_eq!(order.version, StreamVersion(2));
        assert!(order.confirm().is_none(), "confirming twice changes nothing");
        assert!(order.cancel().is_ok());
    }

    #[test]
    fn given_placed_then_a_pending_order_can_be_confirmed_rejected_or_cancelled() {
        let order = Order::from_events(&[placed()]).unwrap().unwrap();
        assert_eq!(order.status, OrderStatus::Pending);
        assert!(order.confirm().is_some());
        assert_eq!(order.reject("none left").map(|r| r.reason), Some("none left".into()));
        assert!(order.cancel().is_ok());
    }

    #[test]
    fn given_rejected_then_cancel_is_refused_with_the_reason() {
        let rejected = at(&OrderRejected { order_id: "o".into(), reason: "none left".into() }, 2);
        let order = Order::from_events(&[placed(), rejected]).unwrap().unwrap();
        assert_eq!(order.reason.as_deref(), Some("none left"));
        assert!(order.cancel().unwrap_err().contains("rejected"));
        assert_eq!(order.to_json()["status"], "rejected");
    }

    #[test]
    fn a_cancellation_wins_over_a_confirmation_appended_after_it() {
        let cancelled = at(&OrderCancelled { order_id: "o".into() }, 2);
        let confirmed = at(&OrderConfirmed { order_id: "o".into() }, 3);
        let order = Order::from_events(&[placed(), cancelled, confirmed]).unwrap().unwrap();
        assert_eq!(order.status, OrderStatus::Cancelled);
        assert_eq!(order.version, StreamVersion(3));
        let rejected = at(&OrderRejected { order_id: "o".into(), reason: "late".into() }, 4);
        let confirmed = at(&OrderConfirmed { order_id: "o".into() }, 2);
        let order = Order::from_events(&[placed(), confirmed, rejected]).unwrap().unwrap();
        assert_eq!((order.status, order.reason), (OrderStatus::Confirmed, None));
    }

    #[test]
    fn an_empty_stream_is_no_order_and_a_stray_event_is_an_error() {
        assert_eq!(Order::from_events(&[]).unwrap(), None);
        let stray = at(&OrderConfirmed { order_id: "o".into() }, 1);
        let id = stray.id().to_owned();
        let error = Order::from_events(&[stray]).unwrap_err();
        assert!(matches!(&error, Error::Unreadable(why) if why.contains(&id)), "{error}");
    }

    #[test]
    fn the_subject_that_placed_it_owns_it() {
        let mut event = placed();
        event.set_extension(keel::core::envelope::ext::ACTOR, "alice").unwrap();
        assert_eq!(Order::from_events(&[event]).unwrap().unwrap().owner.as_deref(), Some("alice"));
        assert_eq!(Order::from_events(&[placed()]).unwrap().unwrap().owner, None);
    }
}
