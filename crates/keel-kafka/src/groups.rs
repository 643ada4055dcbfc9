//! A consumer group from outside: its committed offsets and lag per partition, and
//! moving them (`keel groups list|reset`). Offsets are committed as a client outside
//! the group would (no membership), so the group must have no live members: a member's
//! next commit would undo the move.
//!
//! Tansu 0.6 answers `ListOffsets(latest)` with the base offset of the last batch plus
//! one (see the crate docs), so on Tansu a lag can read low by up to the rest of the
//! last batch, and a reset to the end may hand that tail out again (at-least-once; the
//! inbox deduplicates).

use std::time::Duration;

use chrono::{DateTime, Utc};
use keel_core::BusError;
use keel_core::bus::{validate_group, validate_topic};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;

use crate::config::KafkaConfig;
use crate::error::from_kafka;

const TIMEOUT: Duration = Duration::from_secs(10);

/// One partition of a group's topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartitionLag {
    /// The partition.
    pub partition: i32,
    /// The group's committed offset (the next record it reads); `None`: nothing
    /// committed yet.
    pub committed: Option<i64>,
    /// The partition's end (the high watermark).
    pub end: i64,
}

impl PartitionLag {
    /// Records after the committed offset (all of them when nothing is committed).
    pub fn lag(&self) -> u64 {
        u64::try_from(self.end - self.committed.unwrap_or(0)).unwrap_or(0)
    }
}

/// Where a group's offsets go in every partition of a topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupReset {
    /// The first record still kept.
    Start,
    /// After the last record: the group skips what is there.
    End,
    /// The first record at or after this time (the record timestamps).
    Time(DateTime<Utc>),
}

/// The committed offsets and lag of `group` on `topic`; empty when the topic does
/// not exist.
pub(crate) async fn lag(
    config: &KafkaConfig,
    topic: &str,
    group: &str,
) -> Result<Vec<PartitionLag>, BusError> {
    validate_topic(topic)?;
    validate_group(group)?;
    let (config, topic, group) = (config.clone(), topic.to_owned(), group.to_owned());
    blocking(move || {
        let consumer = outsider(&config, &group)?;
        let Some(partitions) = partitions(&consumer, &topic)? else { return Ok(Vec::new()) };
        let committed = committed(&consumer, &topic, &partitions)?;
        partitions
            .iter()
            .zip(committed)
            .map(|(&partition, committed)| {
                let (_, end) = consumer
                    .fetch_watermarks(&topic, partition, TIMEOUT)
                    .map_err(|e| from_kafka(&format!("reading the end of `{topic}`"), &e))?;
                Ok(PartitionLag { partition, committed, end })
            })
            .collect()
    })
    .await
}

/// Commits `group`'s offsets on every partition of `topic` to `to`; returns the
/// partitions as they are after the move.
pub(crate) async fn reset(
    config: &KafkaConfig,
    topic: &str,
    group: &str,
    to: GroupReset,
) -> Result<Vec<PartitionLag>, BusError> {
    validate_topic(topic)?;
    validate_group(group)?;
    let (config, topic, group) = (config.clone(), topic.to_owned(), group.to_owned());
    blocking(move || {
        let consumer = outsider(&config, &group)?;
        let Some(partitions) = partitions(&consumer, &topic)? else {
            return Err(BusError::Config(format!("no topic `{topic}` on the Kafka bus")));
        };
        let mut ends = Vec::with_capacity(partitions.len());
        let mut offsets = TopicPartitionList::new();
        for &partition in &partitions {
            let (low, high) = consumer
                .fetch_watermarks(&topic, partition, TIMEOUT)
                .map_err(|e| from_kafka(&format!("reading the offsets of `{topic}`"), &e))?;
            ends.push(high);
            let offset = match to {
                GroupReset::Start => Offset::Offset(low),
                GroupReset::End => Offset::Offset(high),
                GroupReset::Time(time) => Offset::Offset(time.timestamp_millis()),
            };
            offsets
                .add_partition_offset(&topic, partition, offset)
                .map_err(|e| from_kafka("listing partitions", &e))?;
        }
        if let GroupReset::Time(_) = to {
            offsets = consumer
                .offsets_for_times(offsets, TIMEOUT)
                .map_err(|e| from_kafka(&format!("finding offsets by time in `{topic}`"), &e))?;
        }
        let mut commit = TopicPartitionList::new();
        let mut moved = Vec::with_capacity(partitions.len());
        for (element, end) in offsets.elements().iter().zip(&ends) {
            // Nothing at or after the time: the end.
            let offset = match element.offset() {
                Offset::Offset(n) if n >= 0 => n,
                _ => *end,
            };
            commit
                .add_partition_offset(&topic, element.partition(), Offset::Offset(offset))
                .map_err(|e| from_kafka("listing partitions", &e))?;
            moved.push(PartitionLag {
                partition: element.partition(),
                committed: Some(offset),
                end: *end,
            });
        }
        consumer.commit(&commit, CommitMode::Sync).map_err(|e| {
            from_kafka(&format!("committing offsets of group {group} on `{topic}`"), &e)
        })?;
        Ok(moved)
    })
    .await
}

/// The consumer groups the brokers know, by name (without the bus's group prefix;
/// groups outside the prefix are left out).
pub(crate) async fn names(config: &KafkaConfig) -> Result<Vec<String>, BusError> {
    let config = config.clone();
    blocking(move || {
        let consumer: BaseConsumer =
            config.reader().create().map_err(|e| from_kafka("creating a Kafka client", &e))?;
        let list = consumer
            .fetch_group_list(None, TIMEOUT)
            .map_err(|e| from_kafka("listing the consumer groups", &e))?;
        let mut names: Vec<String> = list
            .groups()
            .iter()
            .filter_map(|g| g.name().strip_prefix(config.group_prefix.as_str()))
            .filter(|name| !name.starts_with("keel-reader-"))
            .map(str::to_owned)
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    })
    .await
}

/// A client that speaks for `group` without joining it.
fn outsider(config: &KafkaConfig, group: &str) -> Result<BaseConsumer, BusError> {
    config.member(group, "earliest").create().map_err(|e| from_kafka("creating a Kafka client", &e))
}

/// The partitions of `topic`; `None` when it does not exist.
fn partitions(consumer: &BaseConsumer, topic: &str) -> Result<Option<Vec<i32>>, BusError> {
    let metadata = consumer
        .fetch_metadata(Some(topic), TIMEOUT)
        .map_err(|e| from_kafka(&format!("reading the metadata of `{topic}`"), &e))?;
    let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Ok(None);
    };
    if found.error().is_some_and(|e| e == RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART)
        || found.partitions().is_empty()
    {
        return Ok(None);
    }
    Ok(Some(found.partitions().iter().map(|p| p.id()).collect()))
}

/// The group's committed offset in each of `partitions`, in their order.
fn committed(
    consumer: &BaseConsumer,
    topic: &str,
    partitions: &[i32],
) -> Result<Vec<Option<i64>>, BusError> {
    let mut asked = TopicPartitionList::new();
    for &partition in partitions {
        asked
            .add_partition_offset(topic, partition, Offset::Invalid)
            .map_err(|e| from_kafka("listing partitions", &e))?;
    }
    let answer = consumer
        .committed_offsets(asked, TIMEOUT)
        .map_err(|e| from_kafka(&format!("reading the committed offsets on `{topic}`"), &e))?;
    Ok(partitions
        .iter()
        .map(|&partition| {
            answer.find_partition(topic, partition).and_then(|element| match element.offset() {
                Offset::Offset(n) if n >= 0 => Some(n),
                _ => None,
            })
        })
        .collect())
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, BusError> + Send + 'static,
) -> Result<T, BusError> {
    tokio::task::spawn_blocking(work).await.map_err(|e| BusError::Backend(Box::new(e)))?
}
