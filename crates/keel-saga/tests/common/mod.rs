//! The example saga of the tests: shipping an order once it is paid and picked;
//! refunding and restocking (compensation) if it is cancelled or expires first.

#![allow(dead_code, unreachable_pub, missing_docs)]

use chrono::{DateTime, Utc};
use keel_aggregate::event_set;
use keel_core::Event;
use keel_saga::{Saga, Step, Steps};
use serde::{Deserialize, Serialize};

pub const TOPIC: &str = "shop";

#[derive(Debug, Clone, PartialEq, Event, Serialize, Deserialize)]
#[event(type = "shop.placed", key = order)]
pub struct Placed {
    pub order: String,
    /// When the order expires unless shipped.
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Event, Serialize, Deserialize)]
#[event(type = "shop.paid", key = order)]
pub struct Paid {
    pub order: String,
}

#[derive(Debug, Clone, PartialEq, Event, Serialize, Deserialize)]
#[event(type = "shop.picked", key = order)]
pub struct Picked {
    pub order: String,
}

#[derive(Debug, Clone, PartialEq, Event, Serialize, Deserialize)]
#[event(type = "shop.cancelled", key = order)]
pub struct Cancelled {
    pub order: String,
}

/// The saga's own timeout.
#[derive(Debug, Clone, PartialEq, Event, Serialize, Deserialize)]
#[event(type = "shop.expired", key = order)]
pub struct Expired {
    pub order: String,
}

event_set! {
    #[derive(Debug, Clone, PartialEq)]
    pub enum Input {
        Placed(Placed),
        Paid(Paid),
        Picked(Picked),
        Cancelled(Cancelled),
        Expired(Expired),
    }
}

#[derive(Debug, Clone, PartialEq, Event, Serialize, Deserialize)]
#[event(type = "shop.shipped", key = order)]
pub struct Shipped {
    pub order: String,
}

#[derive(Debug, Clone, PartialEq, Event, Serialize, Deserialize)]
#[event(type = "shop.refunded", key = order)]
pub struct Refunded {
    pub order: String,
}

#[derive(Debug, Clone, PartialEq, Event, Serialize, Deserialize)]
#[event(type = "shop.restocked", key = order)]
pub struct Restocked {
    pub order: String,
}

event_set! {
    #[derive(Debug, Clone, PartialEq)]
    pub enum Output {
        Shipped(Shipped),
        Refunded(Refunded),
        Restocked(Restocked),
    }
}

/// What has been seen, and what has been done: every step is decided from these,
/// once, so the order of the inputs does not matter.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Shipping {
    pub order: String,
    pub placed: bool,
    pub paid: bool,
    pub picked: bool,
    pub cancelled: bool,
    pub expired: bool,
    pub shipped: bool,
    pub refunded: bool,
    pub restocked: bool,
}

pub const EXPIRY: &str = "expiry";

impl Shipping {
    fn stream(&self) -> String {
        format!("shipping-{}", self.order)
    }

    /// Cancelled or expired before it shipped.
    pub fn abandoned(&self) -> bool {
        !self.shipped && (self.cancelled || self.expired)
    }
}

impl Saga for Shipping {
    const NAME: &'static str = "shipping";
    const TOPICS: &'static [&'static str] = &[TOPIC];
    const TIMER_TOPIC: &'static str = TOPIC;
    type Input = Input;
    type Output = Output;

    fn correlation_id(input: &Input) -> &str {
        match input {
            Input::Placed(e) => &e.order,
            Input::Paid(e) => &e.order,
            Input::Picked(e) => &e.order,
            Input::Cancelled(e) => &e.order,
            Input::Expired(e) => &e.order,
        }
    }

    fn starts(input: &Input) -> bool {
        !matches!(input, Input::Expired(_))
    }

    fn handle(&mut self, input: &Input) -> Steps<Self> {
        self.order = Self::correlation_id(input).to_owned();
        let mut steps = Vec::new();
        match input {
            Input::Placed(placed) => {
                self.placed = true;
                if !self.shipped && !self.abandoned() {
                    let expired = Expired { order: self.order.clone() };
                    steps.push(Step::schedule(EXPIRY, placed.expires_at, expired));
                }
            }
            Input::Paid(_) => self.paid = true,
            Input::Picked(_) => self.picked = true,
            Input::Cancelled(_) => self.cancelled = true,
            Input::Expired(_) => self.expired = true,
        }
        if self.placed && self.paid && self.picked && !self.shipped && !self.abandoned() {
            self.shipped = true;
            steps.push(Step::emit(self.stream(), Shipped { order: self.order.clone() }));
            steps.push(Step::cancel(EXPIRY));
        }
        if self.abandoned() {
            if self.paid && !self.refunded {
                self.refunded = true;
                steps.push(Step::emit(self.stream(), Refunded { order: self.order.clone() }));
            }
            if self.picked && !self.restocked {
                self.restocked = true;
                steps.push(Step::emit(self.stream(), Restocked { order: self.order.clone() }));
            }
            if self.cancelled && matches!(input, Input::Cancelled(_)) {
                steps.push(Step::cancel(EXPIRY));
            }
        }
        steps
    }

    fn is_finished(&self) -> bool {
        self.shipped || self.abandoned()
    }
}

pub fn placed(order: &str, expires_at: DateTime<Utc>) -> Input {
    Placed { order: order.into(), expires_at }.into()
}
pub fn paid(order: &str) -> Input {
    Paid { order: order.into() }.into()
}
pub fn picked(order: &str) -> Input {
    Picked { order: order.into() }.into()
}
pub fn cancelled(order: &str) -> Input {
    Cancelled { order: order.into() }.into()
}
pub fn expired(order: &str) -> Input {
    Expired { order: order.into() }.into()
}
