//! The bus conformance suite against the in-process backend.

use std::sync::Arc;

use bytes::Bytes;
use keel_core::bus::RawMessage;
use keel_core::{Bus, BusError};
use keel_memory::MemoryBus;
use keel_testkit::bus::BusFactory;

/// One in-process bus per test; every client the suite asks for shares it.
struct Memory(MemoryBus);

#[async_trait::async_trait]
impl BusFactory for Memory {
    async fn bus(&self) -> Arc<dyn Bus> {
        Arc::new(self.0.clone())
    }

    async fn publish_raw(
        &self,
        topic: &str,
        content_type: &str,
        body: Bytes,
    ) -> Result<(), BusError> {
        // What a foreign producer's message looks like after a failed decode.
        let error = keel_core::codec::from_message(
            keel_core::codec::Binding::Amqp,
            [],
            Some(content_type),
            body.clone(),
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        let raw = RawMessage {
            headers: Vec::new(),
            content_type: Some(content_type.to_owned()),
            body,
            error,
        };
        self.0.publish_raw(topic, raw)
    }
}

keel_testkit::bus_conformance!(Memory(MemoryBus::new()); skip {
    broker_restarts_lose_nothing: "the in-process bus has no broker to restart",
    broker_restarts_then_consumption_resumes: "the in-process bus has no broker to restart",
});
