//! Reading a topic outside any consumer group: assign partitions at chosen offsets
//! and read each up to its end. Used by the dead-letter tooling and by replay.
//!
//! The end of a partition is where the broker's fetch response says the partition
//! ends (librdkafka's end-of-partition event), not the `ListOffsets` high watermark:
//! Tansu 0.6 answers `ListOffsets(latest)` with the base offset of the last batch
//! plus one, which would cut off the tail of a batch.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use keel_core::BusError;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;

use crate::config::KafkaConfig;
use crate::error::from_kafka;
use crate::wire::InRecord;

/// Where to start in each partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum From {
    Beginning,
    Offset(i64),
    Time(DateTime<Utc>),
}

/// How long reading a topic to its end may take before it is a [`BusError::Timeout`].
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Reads `topic` from `from` to the end of every partition, at most `limit` records
/// per partition; records per partition in offset order, partitions in
/// partition order. A topic that does not exist reads as empty.
pub(crate) async fn read_topic(
    config: &KafkaConfig,
    topic: &str,
    from: From,
    limit: usize,
) -> Result<BTreeMap<i32, Vec<InRecord>>, BusError> {
    let config = config.clone();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || read_blocking(&config, &topic, from, limit))
        .await
        .map_err(|e| BusError::Backend(Box::new(e)))?
}

fn read_blocking(
    config: &KafkaConfig,
    topic: &str,
    from: From,
    limit: usize,
) -> Result<BTreeMap<i32, Vec<InRecord>>, BusError> {
    let reader: BaseConsumer =
        config.reader().create().map_err(|e| from_kafka("creating a Kafka reader", &e))?;
    let metadata = reader
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(|e| from_kafka(&format!("reading the metadata of `{topic}`"), &e))?;
    let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Ok(BTreeMap::new());
    };
    if found.error().is_some_and(|e| e == RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART)
        || found.partitions().is_empty()
    {
        return Ok(BTreeMap::new());
    }
    let partitions: Vec<i32> = found.partitions().iter().map(|p| p.id()).collect();
    let mut tpl = TopicPartitionList::new();
    for partition in &partitions {
        let offset = match from {
            From::Beginning => Offset::Beginning,
            From::Offset(n) => Offset::Offset(n.max(0)),
            From::Time(time) => Offset::Offset(time.timestamp_millis()),
        };
        tpl.add_partition_offset(topic, *partition, offset)
            .map_err(|e| from_kafka("listing partitions", &e))?;
    }
    if let From::Time(_) = from {
        tpl = reader
            .offsets_for_times(tpl, Duration::from_secs(10))
            .map_err(|e| from_kafka(&format!("finding offsets by time in `{topic}`"), &e))?;
    }
    // Partitions with nothing at or after the start are done before they begin.
    // A start inside a batch is fetched from up to `fetch_rewind` records earlier and
    // the records before it skipped (Tansu serves fetches from batch starts only).
    let mut open: HashSet<i32> = HashSet::new();
    let mut skip_below: HashMap<i32, i64> = HashMap::new();
    let mut assign = TopicPartitionList::new();
    for element in tpl.elements() {
        let offset = match element.offset() {
            Offset::End => continue,
            Offset::Offset(n) => {
                skip_below.insert(element.partition(), n);
                Offset::Offset(n.saturating_sub(config.fetch_rewind).max(0))
            }
            other => other,
        };
        assign
            .add_partition_offset(topic, element.partition(), offset)
            .map_err(|e| from_kafka("listing partitions", &e))?;
        open.insert(element.partition());
    }
    let mut records: BTreeMap<i32, Vec<InRecord>> = BTreeMap::new();
    if open.is_empty() {
        return Ok(records);
    }
    reader.assign(&assign).map_err(|e| from_kafka(&format!("reading `{topic}`"), &e))?;
    let deadline = Instant::now() + READ_TIMEOUT;
    while !open.is_empty() {
        if Instant::now() >= deadline {
            return Err(BusError::Timeout(format!(
                "reading `{topic}` to its end took longer than {READ_TIMEOUT:?}"
            )));
        }
        match reader.poll(Duration::from_millis(100)) {
            None => {}
            Some(Ok(message)) => {
                let record = InRecord::from_message(&message);
                let partition = record.partition;
                let early = skip_below.get(&partition).is_some_and(|from| record.offset < *from);
                if early || !open.contains(&partition) {
                    continue;
                }
                let list = records.entry(partition).or_default();
                list.push(record);
                if list.len() >= limit {
                    open.remove(&partition);
                }
            }
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                open.remove(&partition);
            }
            Some(Err(error)) => {
                return Err(from_kafka(&format!("reading `{topic}`"), &error));
            }
        }
    }
    Ok(records)
}
