//! A consumer group's lag: for each partition of the topic, the high watermark minus
//! the group's committed offset (the low watermark where the group committed nothing
//! yet), read by a client that carries the group's id but never joins the group.
//!
//! On Tansu 0.6 the high watermark is the base offset of the last batch plus one
//! (see `reader.rs`), so the lag it reports can be short by the tail of the last batch.

use std::time::Duration;

use keel_core::BusError;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;

use crate::config::KafkaConfig;
use crate::error::from_kafka;

/// How long each broker request of a lag reading may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The messages of `topic` past `group`'s committed offsets, summed over partitions; 0
/// for a topic that does not exist.
pub(crate) async fn group_lag(
    config: &KafkaConfig,
    topic: &str,
    group: &str,
) -> Result<u64, BusError> {
    let config = config.clone();
    let (topic, group) = (topic.to_owned(), group.to_owned());
    tokio::task::spawn_blocking(move || lag_blocking(&config, &topic, &group))
        .await
        .map_err(|e| BusError::Backend(Box::new(e)))?
}

fn lag_blocking(config: &KafkaConfig, topic: &str, group: &str) -> Result<u64, BusError> {
    let client: BaseConsumer = config
        .member(group, "earliest")
        .create()
        .map_err(|e| from_kafka("creating a Kafka client", &e))?;
    let metadata = client
        .fetch_metadata(Some(topic), REQUEST_TIMEOUT)
        .map_err(|e| from_kafka(&format!("reading the metadata of `{topic}`"), &e))?;
    let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) else { return Ok(0) };
    if found.error().is_some_and(|e| e == RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART) {
        return Ok(0);
    }
    let mut tpl = TopicPartitionList::new();
    let mut marks = Vec::new();
    for partition in found.partitions() {
        let (low, high) = client
            .fetch_watermarks(topic, partition.id(), REQUEST_TIMEOUT)
            .map_err(|e| from_kafka(&format!("reading the offsets of `{topic}`"), &e))?;
        tpl.add_partition(topic, partition.id());
        marks.push((partition.id(), low, high));
    }
    if marks.is_empty() {
        return Ok(0);
    }
    let committed = client
        .committed_offsets(tpl, REQUEST_TIMEOUT)
        .map_err(|e| from_kafka(&format!("reading group `{group}`'s offsets"), &e))?;
    let mut lag = 0u64;
    for (partition, low, high) in marks {
        let from = committed
            .find_partition(topic, partition)
            .and_then(|element| match element.offset() {
                Offset::Offset(n) => Some(n),
                _ => None,
            })
            .unwrap_or(low)
            .max(low);
        lag += u64::try_from(high - from).unwrap_or(0);
    }
    Ok(lag)
}
