//! The order's fulfilment, as a saga (keyed by the order id): it hears the order's
//! placement and cancellation (topic `order`), the stock reservation's answer (topic
//! `stock`) and the order's deadline (a durable timer the order was placed with), in
//! whatever order they arrive, and settles the order once: confirmed when the stock
//! is reserved, rejected when it is refused, cancelled when the deadline passes first
//! (the products service then releases whatever it reserved). Its state, the events it
//! appends to the order's stream, the timer it cancels and the inbox mark commit in
//! one transaction.

use std::sync::Arc;

use keel::bus::ConsumerHandle;
use keel::core::{BusError, Subscriber};
use keel::saga::{Saga, SagaRunner, Step, Steps};
use keel_services_common::events::{
    OrderCancelled, OrderConfirmed, OrderDeadlinePassed, OrderPlaced, OrderRejected, StockRejected,
    StockReserved, topics,
};
use serde::{Deserialize, Serialize};

use crate::{AppState, SOURCE};

/// The consumer group of the saga (on both of its topics).
pub const FULFILMENT_GROUP: &str = "orders-fulfilment";

/// The key of the order's deadline timer within its saga instance.
pub const DEADLINE: &str = "deadline";

keel::aggregate::event_set! {
    /// What the fulfilment saga hears.
    #[derive(Clone, Debug, PartialEq)]
    pub enum Input {
        Placed(OrderPlaced),
        Reserved(StockReserved),
        Refused(StockRejected),
        Cancelled(OrderCancelled),
        DeadlinePassed(OrderDeadlinePassed),
    }
}

keel::aggregate::event_set! {
    /// What the fulfilment saga appends to the order's stream.
    #[derive(Clone, Debug, PartialEq)]
    pub enum Output {
        Confirmed(OrderConfirmed),
        Rejected(OrderRejected),
        Cancelled(OrderCancelled),
    }
}

/// One order's fulfilment: what has been heard, and what has been decided. Every
/// decision is taken from these, once, so inputs in another order or twice change
/// nothing but what they must.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fulfilment {
    pub order_id: String,
    /// Heard: `order.placed`.
    pub placed: bool,
    /// Heard: `stock.reserved`.
    pub reserved: bool,
    /// Heard: `stock.rejected`, with its reason.
    pub refused: Option<String>,
    /// Heard: `order.cancelled` (by the customer, or the saga's own).
    pub cancelled: bool,
    /// Heard: `order.deadline_passed`.
    pub deadline_passed: bool,
    /// Decided: `order.confirmed`.
    pub confirmed: bool,
    /// Decided: `order.rejected`.
    pub rejected: bool,
    /// Decided: `order.cancelled` because the deadline passed.
    pub expired: bool,
}

/// Where an order ends, as its fulfilment sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settled {
    /// Not settled yet.
    Pending,
    /// Confirmed (and not cancelled).
    Confirmed,
    /// Rejected.
    Rejected,
    /// Cancelled, by the customer or the deadline.
    Cancelled,
}

impl Fulfilment {
    /// Where the order ends: a cancellation wins over a confirmation (the order's own
    /// fold reads its stream the same way).
    pub fn settled(&self) -> Settled {
        if self.cancelled || self.expired {
            Settled::Cancelled
        } else if self.rejected {
            Settled::Rejected
        } else if self.confirmed {
            Settled::Confirmed
        } else {
            Settled::Pending
        }
    }

    fn stream(&self) -> String {
        format!("{}-{}", topics::ORDER, self.order_id)
    }
}

impl Saga for Fulfilment {
    const NAME: &'static str = "order-fulfilment";
    const TOPICS: &'static [&'static str] = &[topics::ORDER, topics::STOCK];
    const TIMER_TOPIC: &'static str = topics::ORDER;
    type Input = Input;
    type Output = Output;

    fn correlation_id(input: &Input) -> &str {
        match input {
            Input::Placed(e) => &e.order_id,
            Input::Reserved(e) => &e.order_id,
            Input::Refused(e) => &e.order_id,
            Input::Cancelled(e) => &e.order_id,
            Input::DeadlinePassed(e) => &e.order_id,
        }
    }

    /// Any of them can be heard first: the order is placed with its deadline timer
    /// (which may fire before the saga hears the placement), and the stock's answer
    /// travels on another topic than the placement.
    fn starts(_: &Input) -> bool {
        true
    }

    fn handle(&mut self, input: &Input) -> Steps<Self> {
        Self::correlation_id(input).clone_into(&mut self.order_id);
        let was = self.settled();
        match input {
            Input::Placed(_) => self.placed = true,
            Input::Reserved(_) => self.reserved = true,
            Input::Refused(e) => self.refused = Some(e.reason.clone()),
            Input::Cancelled(_) => self.cancelled = true,
            Input::DeadlinePassed(_) => self.deadline_passed = true,
        }
        let order_id = self.order_id.clone();
        let mut steps = Vec::new();
        if self.settled() == Settled::Pending {
            if self.reserved {
                self.confirmed = true;
                steps.push(Step::emit(self.stream(), OrderConfirmed { order_id }));
            } else if let Some(reason) = self.refused.clone() {
                self.rejected = true;
                steps.push(Step::emit(self.stream(), OrderRejected { order_id, reason }));
            } else if self.deadline_passed {
                // Compensation: the cancellation makes the products service release
                // whatever it reserved, whenever it hears of it.
                self.expired = true;
                steps.push(Step::emit(self.stream(), OrderCancelled { order_id }));
            }
        }
        if was == Settled::Pending && self.settled() != Settled::Pending && !self.deadline_passed {
            steps.push(Step::cancel(DEADLINE));
        }
        steps
    }

    fn is_finished(&self) -> bool {
        self.settled() != Settled::Pending
    }
}

/// The saga's runner (its events' source is the service's).
pub fn runner() -> SagaRunner<Fulfilment> {
    SagaRunner::new().source(SOURCE)
}

pub(crate) async fn start(
    state: &AppState,
    bus: Arc<dyn Subscriber>,
) -> Result<Vec<ConsumerHandle>, BusError> {
    runner().start(&state.db, bus, FULFILMENT_GROUP, 4).await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use keel::saga::testing::{Given, deliver_all};
    use keel_services_common::events::OrderItem;
    use proptest::prelude::*;

    type S = Step<Output, Input>;

    fn placed() -> Input {
        let items = vec![OrderItem { product_id: "p".into(), quantity: 1 }];
        OrderPlaced { order_id: "o".into(), user_id: "u".into(), items }.into()
    }
    fn reserved() -> Input {
        StockReserved { order_id: "o".into() }.into()
    }
    fn refused() -> Input {
        StockRejected { order_id: "o".into(), reason: "none left".into() }.into()
    }
    fn cancelled() -> Input {
        OrderCancelled { order_id: "o".into() }.into()
    }
    fn deadline() -> Input {
        OrderDeadlinePassed { order_id: "o".into() }.into()
    }

    #[test]
    fn reserved_stock_confirms_once_and_cancels_the_deadline() {
        let saga = Given::<Fulfilment>::inputs([placed()]).when(reserved()).then([
            S::emit("order-o", OrderConfirmed { order_id: "o".into() }),
            S::cancel(DEADLINE),
        ]);
        assert_eq!(saga.settled(), Settled::Confirmed);
        Given::<Fulfilment>::inputs([placed(), reserved()]).when(reserved()).then([]);
    }

    #[test]
    fn the_answer_heard_before_the_placement_still_settles_the_order() {
        Given::<Fulfilment>::no_saga().when(refused()).then([
            S::emit("order-o", OrderRejected { order_id: "o".into(), reason: "none left".into() }),
            S::cancel(DEADLINE),
        ]);
        Given::<Fulfilment>::inputs([refused()]).when(placed()).then([]);
    }

    #[test]
    fn the_deadline_cancels_an_unsettled_order_and_nothing_else() {
        let saga = Given::<Fulfilment>::inputs([placed()])
            .when(deadline())
            .then([S::emit("order-o", OrderCancelled { order_id: "o".into() })]);
        assert_eq!(saga.settled(), Settled::Cancelled);
        // The stock reserved after that is not confirmed (the products service
        // releases it on the cancellation).
        Given::<Fulfilment>::inputs([placed(), deadline()]).when(reserved()).then([]);
        Given::<Fulfilment>::inputs([placed(), reserved()]).when(deadline()).then([]);
        Given::<Fulfilment>::inputs([placed()]).when(cancelled()).then([S::cancel(DEADLINE)]);
        Given::<Fulfilment>::inputs([placed(), cancelled()]).when(deadline()).then([]);
    }

    proptest! {
        /// Every delivery order of an order's inputs, each one to three times, ends
        /// where in-order delivery does: the deadline aside (it races the answer in
        /// the world, not only on the bus), and a customer's cancellation counted as
        /// the order's end whether it came before or after the confirmation.
        #[test]
        fn any_order_with_duplicates_settles_like_in_order(
            answer in prop_oneof![Just(reserved()), Just(refused())],
            cancel in any::<bool>(),
            copies in prop::collection::vec(1..=3usize, 3),
            shuffle in any::<u64>(),
        ) {
            let mut in_order = vec![placed(), answer];
            if cancel { in_order.push(cancelled()); }
            let mut delivered: Vec<Input> = in_order
                .iter()
                .zip(&copies)
                .flat_map(|(input, &n)| std::iter::repeat_n(input.clone(), n))
                .collect();
            let mut seed = shuffle | 1;
            for i in (1..delivered.len()).rev() {
                seed ^= seed << 13; seed ^= seed >> 7; seed ^= seed << 17;
                let j = usize::try_from(seed % u64::try_from(i + 1).unwrap()).unwrap();
                delivered.swap(i, j);
            }
            let (expected, _) = deliver_all::<Fulfilment>(&in_order);
            let (actual, _) = deliver_all::<Fulfilment>(&delivered);
            let (expected, actual) = (expected.unwrap(), actual.unwrap());
            prop_assert_eq!(actual.settled(), expected.settled(), "delivered {:?}", delivered);
            prop_assert_eq!(
                (actual.placed, actual.reserved, &actual.refused, actual.cancelled),
                (expected.placed, expected.reserved, &expected.refused, expected.cancelled),
            );
        }
    }
}
