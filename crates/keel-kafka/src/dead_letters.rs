//! Dead-letter topics and `keel dlq`.
//!
//! A group's dead letters go to the topic `<topic>.<group>.dlq` (one partition, so it
//! reads oldest first): the original record (key, headers, value) plus the headers in
//! [`crate::wire::dlq`] (error, attempts, original topic, partition and offset, time,
//! and a UUIDv7 id). Kafka cannot delete single records (and Tansu 0.6 drops the
//! connection on `DeleteRecords`), so the topic is an append-only log of events about
//! dead letters: a record with a `keel-tombstone: <id>` header removes that letter
//! (after `retry`), and one with a `keel-purge` header removes every letter before it
//! (`purge`). `list` reads the topic from the beginning and applies them.
//!
//! `retry` republishes the original record (Keel's headers stripped) to
//! `<topic>.<group>.retry`, which every member of that group also subscribes to, so
//! only that group gets it again, then writes the tombstone.

use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use keel_core::BusError;
use keel_core::bus::{DeadLetter, DeadLetterId, DeadLetterReason};

use crate::admin::Topics;
use crate::config::KafkaConfig;
use crate::producer::Producer;
use crate::reader::{From, read_topic};
use crate::wire::{InRecord, OutRecord, dlq};

/// The dead-letter topic of a group.
pub fn dead_letter_topic(topic: &str, group: &str) -> String {
    format!("{topic}.{group}.dlq")
}

/// The retry topic of a group: what `retry` sends back, read by the group only.
pub fn retry_topic(topic: &str, group: &str) -> String {
    format!("{topic}.{group}.retry")
}

/// Partitions of dead-letter and retry topics.
pub(crate) const SIDE_TOPIC_PARTITIONS: i32 = 1;

/// Where a subscription sends what it dead-letters.
#[derive(Clone)]
pub(crate) struct DeadLetterSink {
    pub(crate) producer: Arc<Producer>,
    pub(crate) topics: Arc<Topics>,
    pub(crate) topic: String,
}

impl DeadLetterSink {
    /// Produces `record` with the reason to the dead-letter topic and waits for the
    /// broker's confirmation.
    pub(crate) async fn send(
        &self,
        record: &InRecord,
        reason: &DeadLetterReason,
    ) -> Result<(), BusError> {
        self.topics.ensure(&[(&self.topic, SIDE_TOPIC_PARTITIONS)]).await?;
        let mut headers: Vec<(String, Bytes)> =
            record.headers.iter().filter(|(k, _)| !dlq::is_keel_header(k)).cloned().collect();
        let mut add =
            |name: &str, value: String| headers.push((name.to_owned(), Bytes::from(value)));
        add(dlq::ERROR, reason.error.clone());
        add(dlq::ATTEMPTS, reason.attempts.to_string());
        add(dlq::ORIGINAL_TOPIC, record.topic.clone());
        add(dlq::ORIGINAL_PARTITION, record.partition.to_string());
        add(dlq::ORIGINAL_OFFSET, record.offset.to_string());
        add(dlq::DEAD_LETTERED_AT, Utc::now().to_rfc3339());
        add(dlq::ID, uuid::Uuid::now_v7().to_string());
        let out = OutRecord { key: record.key.clone(), headers, value: record.value.clone() };
        self.producer.send_all(&self.topic, std::slice::from_ref(&out)).await?;
        Ok(())
    }
}

/// A live dead letter and the record that carries it.
struct Letter {
    letter: DeadLetter,
    record: InRecord,
}

/// Reads the group's dead-letter topic and applies tombstones and purges.
/// How many letters of a group are at rest.
pub(crate) async fn count(config: &KafkaConfig, topic: &str, group: &str) -> Result<u64, BusError> {
    let live = live_letters(config, topic, group).await?;
    Ok(u64::try_from(live.len()).unwrap_or(u64::MAX))
}

async fn live_letters(
    config: &KafkaConfig,
    topic: &str,
    group: &str,
) -> Result<Vec<Letter>, BusError> {
    let dlq_topic = dead_letter_topic(topic, group);
    let records = read_topic(config, &dlq_topic, From::Beginning, usize::MAX).await?;
    let mut live: Vec<Letter> = Vec::new();
    for record in records.into_values().flatten() {
        if record.header(dlq::PURGE).is_some() {
            live.clear();
        } else if let Some(id) = record.header(dlq::TOMBSTONE) {
            live.retain(|l| l.letter.id.0 != id);
        } else if let Some(id) = record.header(dlq::ID).map(str::to_owned) {
            let letter = DeadLetter {
                id: DeadLetterId(id),
                topic: topic.to_owned(),
                group: group.to_owned(),
                reason: record.header(dlq::ERROR).unwrap_or_default().to_owned(),
                attempts: record.header(dlq::ATTEMPTS).and_then(|a| a.parse().ok()).unwrap_or(1),
                dead_lettered_at: record
                    .header(dlq::DEAD_LETTERED_AT)
                    .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                    .map(|t| t.with_timezone(&Utc))
                    .or_else(|| record.timestamp.and_then(DateTime::from_timestamp_millis))
                    .unwrap_or_default(),
                payload: record.decode(),
            };
            live.push(Letter { letter, record });
        }
    }
    Ok(live)
}

pub(crate) async fn list(
    config: &KafkaConfig,
    topic: &str,
    group: &str,
    limit: usize,
) -> Result<Vec<DeadLetter>, BusError> {
    let live = live_letters(config, topic, group).await?;
    Ok(live.into_iter().take(limit).map(|l| l.letter).collect())
}

pub(crate) async fn retry(
    config: &KafkaConfig,
    producer: &Producer,
    topics: &Topics,
    topic: &str,
    group: &str,
    id: &DeadLetterId,
) -> Result<bool, BusError> {
    let live = live_letters(config, topic, group).await?;
    let Some(found) = live.into_iter().find(|l| &l.letter.id == id) else { return Ok(false) };
    let retry = retry_topic(topic, group);
    topics.ensure(&[(&retry, SIDE_TOPIC_PARTITIONS)]).await?;
    let headers =
        found.record.headers.iter().filter(|(k, _)| !dlq::is_keel_header(k)).cloned().collect();
    let out =
        OutRecord { key: found.record.key.clone(), headers, value: found.record.value.clone() };
    producer.send_all(&retry, std::slice::from_ref(&out)).await?;
    let tombstone = OutRecord {
        key: None,
        headers: vec![(dlq::TOMBSTONE.to_owned(), Bytes::from(id.0.clone()))],
        value: Bytes::new(),
    };
    producer.send_all(&dead_letter_topic(topic, group), std::slice::from_ref(&tombstone)).await?;
    tracing::info!(%topic, %group, %id, "dead letter sent back to its group");
    Ok(true)
}

pub(crate) async fn purge(
    config: &KafkaConfig,
    producer: &Producer,
    topic: &str,
    group: &str,
) -> Result<u64, BusError> {
    let live = live_letters(config, topic, group).await?;
    if live.is_empty() {
        return Ok(0);
    }
    let marker = OutRecord {
        key: None,
        headers: vec![(dlq::PURGE.to_owned(), Bytes::from(Utc::now().to_rfc3339()))],
        value: Bytes::new(),
    };
    producer.send_all(&dead_letter_topic(topic, group), std::slice::from_ref(&marker)).await?;
    tracing::info!(%topic, %group, purged = live.len(), "dead letters purged");
    Ok(live.len() as u64)
}
