#![cfg(feature = "integration")]
//! The bus conformance suite against the real RabbitMQ (`KEEL_TEST_AMQP_URL`, by
//! default 127.0.0.1:5672). Every case uses its own topics, so its own exchanges and
//! queues. The `broker_restarts_*` cases stop and start the broker; the test script
//! runs them alone, after the rest.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use keel_core::{Bus, BusError};
use keel_testkit::bus::BusFactory;
use lapin::BasicProperties;

struct Factory;

#[async_trait::async_trait]
impl BusFactory for Factory {
    async fn bus(&self) -> Arc<dyn Bus> {
        common::init_logs();
        common::dyn_bus().await
    }

    /// A foreign producer: plain lapin, straight to the topic's exchange.
    async fn publish_raw(
        &self,
        topic: &str,
        content_type: &str,
        body: Bytes,
    ) -> Result<(), BusError> {
        let properties = BasicProperties::default().with_content_type(content_type.into());
        common::plain_publish(topic, "foreign.message", properties, body).await
    }

    async fn restart_broker(&self) {
        common::restart_broker().await;
    }
}

keel_testkit::bus_conformance!(Factory; skip {
    late_group_receives_earlier_messages:
        "a RabbitMQ queue only holds what was published after it was bound",
});
