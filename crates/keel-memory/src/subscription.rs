//! A member of a consumer group ([`MemorySubscription`]) and the settle handle of each
//! delivery it hands out ([`MemorySettle`]).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use keel_core::bus::{BusError, DeadLetterReason, Delivery, Payload, Settle, Subscription};
use tokio::sync::Notify;

use crate::group::{Outcome, Take};
use crate::topic::{Seat, Topic};

#[derive(Debug)]
pub(crate) struct MemorySubscription {
    topic: Arc<Topic>,
    seat: Seat,
    notify: Arc<Notify>,
}

impl MemorySubscription {
    pub(crate) fn new(topic: Arc<Topic>, seat: Seat, notify: Arc<Notify>) -> Self {
        Self { topic, seat, notify }
    }
}

impl Drop for MemorySubscription {
    fn drop(&mut self) {
        self.topic.leave(self.seat);
    }
}

#[async_trait]
impl Subscription for MemorySubscription {
    async fn next(&mut self) -> Option<Result<Delivery, BusError>> {
        let notify = Arc::clone(&self.notify);
        loop {
            // Registered before looking, so a wake-up between the look and the wait is
            // not lost.
            let notified = notify.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            let deadline = match self.topic.take(self.seat) {
                Take::Delivery { payload, attempt, id } => {
                    let settle = MemorySettle {
                        topic: Arc::clone(&self.topic),
                        group: self.seat.group,
                        id,
                        settled: false,
                    };
                    let payload = Payload::clone(&payload);
                    return Some(Ok(Delivery::new(payload, attempt, Box::new(settle))));
                }
                Take::Gone => return None,
                Take::Wait(deadline) => deadline,
            };
            // Closed: what is ready has been handed out; nothing more will come.
            if self.topic.is_closed() {
                return None;
            }
            match deadline {
                Some(at) => {
                    tokio::select! {
                        () = &mut notified => {}
                        () = tokio::time::sleep_until(at) => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    async fn close(self: Box<Self>) -> Result<(), BusError> {
        drop(self);
        Ok(())
    }
}

/// Settles one delivery. Dropped unsettled, it gives the message back at once.
#[derive(Debug)]
pub(crate) struct MemorySettle {
    topic: Arc<Topic>,
    group: usize,
    id: u64,
    settled: bool,
}

impl MemorySettle {
    fn settle(&mut self, outcome: Outcome) -> Result<(), BusError> {
        self.settled = true;
        self.topic.settle(self.group, self.id, outcome)
    }
}

impl Drop for MemorySettle {
    fn drop(&mut self) {
        if !self.settled {
            // Fails only if the subscription already gave it back.
            let _ = self.settle(Outcome::Nack(Duration::ZERO));
        }
    }
}

#[async_trait]
impl Settle for MemorySettle {
    async fn ack(mut self: Box<Self>) -> Result<(), BusError> {
        self.settle(Outcome::Ack)
    }

    async fn nack(mut self: Box<Self>, delay: Duration) -> Result<(), BusError> {
        self.settle(Outcome::Nack(delay))
    }

    async fn dead_letter(mut self: Box<Self>, reason: DeadLetterReason) -> Result<(), BusError> {
        self.settle(Outcome::DeadLetter(reason))
    }
}
