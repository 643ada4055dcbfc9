//! Sending records: pipelined, confirmed, with back-pressure.
//!
//! Every record of a batch is handed to librdkafka's local queue before the first
//! confirmation is awaited (so a batch costs about one round trip), then every
//! delivery future is awaited: `publish` returns only once the broker has acknowledged
//! each record (`acks=all`, idempotent producer, so retries inside librdkafka neither
//! duplicate nor reorder). A full local queue is back-pressure: the sender waits for
//! an earlier record of its own batch to be confirmed (or briefly, if it has none in
//! flight) and tries again; nothing is dropped.

use std::time::Duration;

use keel_core::BusError;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer as _};

use crate::config::KafkaConfig;
use crate::error::{from_code, from_kafka};
use crate::wire::{OutRecord, Outgoing};

/// The bus's one producer (librdkafka producers are meant to be shared).
pub(crate) struct Producer {
    inner: FutureProducer,
}

impl Producer {
    pub(crate) fn new(config: &KafkaConfig) -> Result<Self, BusError> {
        let inner = config
            .producer()
            .create()
            .map_err(|e| from_kafka("creating the Kafka producer", &e))?;
        Ok(Self { inner })
    }

    /// Sends `records` to `topic` and waits for every confirmation.
    pub(crate) async fn send_all(
        &self,
        topic: &str,
        records: &[OutRecord],
    ) -> Result<(), BusError> {
        self.send_each(topic, records.len(), records.iter().map(OutRecord::outgoing)).await
    }

    /// Like [`Producer::send_all`], with records made one at a time as they are sent,
    /// so that making the next overlaps with librdkafka sending the previous ones.
    pub(crate) async fn send_each<'r>(
        &self,
        topic: &str,
        count: usize,
        records: impl Iterator<Item = Outgoing<'r>>,
    ) -> Result<(), BusError> {
        let mut pending: std::collections::VecDeque<DeliveryFuture> =
            std::collections::VecDeque::with_capacity(count);
        for record in records {
            let mut future_record: FutureRecord<'_, [u8], [u8]> =
                FutureRecord::to(topic).payload(record.value);
            if let Some(key) = record.key {
                future_record = future_record.key(key);
            }
            if let Some(headers) = record.headers {
                future_record = future_record.headers(headers);
            }
            loop {
                match self.inner.send_result(future_record) {
                    Ok(delivery) => {
                        pending.push_back(delivery);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        future_record = back;
                        metrics::counter!("keel_kafka_producer_queue_full_total").increment(1);
                        // Back-pressure: wait for our oldest record, else for anyone's.
                        match pending.pop_front() {
                            Some(oldest) => confirm(topic, oldest).await?,
                            None => tokio::time::sleep(Duration::from_millis(5)).await,
                        }
                    }
                    Err((error, _)) => return Err(from_kafka("publishing to Kafka", &error)),
                }
            }
        }
        for delivery in pending {
            confirm(topic, delivery).await?;
        }
        metrics::counter!("keel_kafka_published_total", "topic" => topic.to_owned())
            .increment(count as u64);
        Ok(())
    }

    /// Waits until everything queued is confirmed (or `timeout` passes).
    pub(crate) async fn flush(&self, timeout: Duration) -> Result<(), BusError> {
        let producer = self.inner.clone();
        tokio::task::spawn_blocking(move || producer.flush(timeout))
            .await
            .map_err(|e| BusError::Backend(Box::new(e)))?
            .map_err(|e| from_kafka("flushing the Kafka producer", &e))
    }
}

async fn confirm(topic: &str, delivery: DeliveryFuture) -> Result<(), BusError> {
    match delivery.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((KafkaError::MessageProduction(code), _))) => {
            Err(from_code(&format!("publishing to `{topic}`"), code))
        }
        Ok(Err((error, _))) => Err(from_kafka(&format!("publishing to `{topic}`"), &error)),
        Err(_canceled) => Err(BusError::Closed),
    }
}
