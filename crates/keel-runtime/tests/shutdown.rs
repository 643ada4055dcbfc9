//! Stopping a process's parts: every part that fails to stop is reported by name, and
//! the others are still stopped.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use keel_bus::{Consumer, HandlerError, Message, handler_fn};
use keel_core::bus::{DeadLetter, DeadLetterId, DeadLetters, Publisher, Subscriber, Subscription};
use keel_core::{BusError, CloudEvent, Delivery, SubscriptionSpec};
use keel_memory::MemoryBus;
use keel_runtime::shutdown::{Parts, stop};

/// A bus whose broker is gone by shutdown: closing it, or a subscription of it, fails.
struct BrokerGone {
    inner: MemoryBus,
    closed: AtomicBool,
}

struct LeaveFails(Box<dyn Subscription>);

#[async_trait]
impl Subscription for LeaveFails {
    async fn next(&mut self) -> Option<Result<Delivery, BusError>> {
        self.0.next().await
    }

    async fn close(self: Box<Self>) -> Result<(), BusError> {
        self.0.close().await?;
        Err(BusError::Connection("could not leave the group".into()))
    }
}

#[async_trait]
impl Publisher for BrokerGone {
    async fn publish(&self, topic: &str, events: &[CloudEvent]) -> Result<(), BusError> {
        self.inner.publish(topic, events).await
    }

    async fn close(&self) -> Result<(), BusError> {
        self.closed.store(true, Ordering::SeqCst);
        Err(BusError::Timeout("3 messages still unconfirmed".into()))
    }
}

#[async_trait]
impl Subscriber for BrokerGone {
    async fn subscribe(&self, spec: SubscriptionSpec) -> Result<Box<dyn Subscription>, BusError> {
        Ok(Box::new(LeaveFails(self.inner.subscribe(spec).await?)))
    }
}

#[async_trait]
impl DeadLetters for BrokerGone {
    async fn list(
        &self,
        topic: &str,
        group: &str,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, BusError> {
        self.inner.list(topic, group, limit).await
    }

    async fn retry(&self, topic: &str, group: &str, id: &DeadLetterId) -> Result<bool, BusError> {
        self.inner.retry(topic, group, id).await
    }

    async fn purge(&self, topic: &str, group: &str) -> Result<u64, BusError> {
        self.inner.purge(topic, group).await
    }
}

async fn ok(_: Message) -> Result<(), HandlerError> {
    Ok(())
}

#[tokio::test]
async fn every_part_that_fails_to_stop_is_reported_by_name() {
    let gone = Arc::new(BrokerGone { inner: MemoryBus::new(), closed: AtomicBool::new(false) });
    let failing = Consumer::new(gone.clone(), SubscriptionSpec::new("orders", "status"))
        .start(handler_fn(ok))
        .await
        .unwrap();
    let healthy = Consumer::new(Arc::new(MemoryBus::new()), SubscriptionSpec::new("orders", "g"))
        .start(handler_fn(ok))
        .await
        .unwrap();

    let outcome = stop(Parts {
        services: Vec::new(),
        consumers: vec![
            ("the orders service's consumer 1".to_owned(), failing),
            ("the users service's consumer 1".to_owned(), healthy),
        ],
        timers: Vec::new(),
        projections: Vec::new(),
        relay: None,
        bus: Some(gone.clone()),
    })
    .await;

    let error = outcome.expect_err("a failed shutdown is reported");
    assert_eq!(error.failed, ["the orders service's consumer 1", "the bus"]);
    assert!(error.to_string().contains("the orders service's consumer 1, the bus"), "{error}");
    assert!(gone.closed.load(Ordering::SeqCst), "the bus is closed after a consumer failed");
}
