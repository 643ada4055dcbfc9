//! The bus conformance suite against the real broker (Tansu on 127.0.0.1:9092, or
//! `KEEL_TEST_KAFKA_BROKERS`). Every case uses its own topics and groups.
//! The `broker_restarts_*` cases are skipped (see the reasons below); run with
//! `--run-ignored`, they restart the broker at `KEEL_TEST_KAFKA_BROKERS` (every other
//! test on it loses its data).

#![cfg(feature = "integration")]

mod common;

use std::sync::Arc;

use bytes::Bytes;
use keel_core::{Bus, BusError};
use keel_testkit::bus::BusFactory;

/// Each client the suite asks for is a bus of its own (its own producer), all on the
/// same broker. The suite names its groups `g`, `workers`, ...; each test (each
/// factory) puts a prefix of its own before them, so that tests running side by side
/// never share a Kafka group.
struct Factory {
    group_prefix: String,
}

impl Factory {
    fn new() -> Self {
        common::init_tracing();
        Self { group_prefix: common::unique_prefix() }
    }
}

#[async_trait::async_trait]
impl BusFactory for Factory {
    async fn bus(&self) -> Arc<dyn Bus> {
        let mut config = common::config(&self.group_prefix);
        // Tansu can leave a crashed member's partition assigned to nobody through a
        // rejoin (see `KafkaConfig::orphan_timeout`); at the default 20 s, the
        // watchdog gets two tries within the suite's 60 s patience, at 8 s several.
        config.orphan_timeout = std::time::Duration::from_secs(8);
        Arc::new(keel_kafka::KafkaBus::new(config).expect("Kafka bus"))
    }

    /// A foreign record: a plain producer, no `ce_` headers.
    async fn publish_raw(
        &self,
        topic: &str,
        content_type: &str,
        body: Bytes,
    ) -> Result<(), BusError> {
        let producer = common::raw_producer();
        common::send_raw(
            &producer,
            topic,
            None,
            &[("content-type", content_type.as_bytes())],
            &body,
        )
        .await;
        Ok(())
    }

    /// Stops Tansu and starts it again as it was started (`common::restart_broker`).
    async fn restart_broker(&self) {
        common::restart_broker().await;
    }
}

keel_testkit::bus_conformance!(Factory::new(); skip {
    broker_restarts_lose_nothing: "Tansu runs with in-memory storage: a restart drops every \
        record, so a message confirmed but not yet consumed is lost by the broker and the \
        case would pass or fail by timing",
    broker_restarts_then_consumption_resumes: "Tansu runs with in-memory storage: it comes \
        back from a restart as an empty cluster (no topics, no offsets), which a Kafka \
        deployment never sees; run anyway (--run-ignored), publishes time out because \
        keel-kafka creates a topic once per process, and librdkafka 2.12.1 may crash \
        (SIGSEGV in rd_kafka_metadata_update_op)",
});
