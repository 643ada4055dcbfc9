//! Replay from Kafka: read a topic from an offset or a time, outside any consumer
//! group (nothing is committed, no member is disturbed). `keel replay` uses it when
//! the bus is Kafka.

use std::collections::VecDeque;

use chrono::{DateTime, Utc};
use keel_core::bus::validate_topic;
use keel_core::{BusError, Payload};

use crate::config::KafkaConfig;
use crate::reader::{From, read_topic};

/// Where a replay starts, in every partition of the topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplayStart {
    /// From the first record the broker still holds.
    Beginning,
    /// From this offset in each partition (Kafka offsets count per partition).
    Offset(i64),
    /// From the first record whose timestamp is at or after this time, found per
    /// partition with `offsets_for_times`.
    Time(DateTime<Utc>),
}

/// One record read by a replay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplayedRecord {
    /// The record's partition.
    pub partition: i32,
    /// The record's offset within its partition.
    pub offset: i64,
    /// The record's timestamp, when the broker gave one.
    pub timestamp: Option<DateTime<Utc>>,
    /// The decoded event, or the raw record with the reason it did not decode.
    pub payload: Payload,
}

/// Reads topics from an offset or a time. Cheap to create; each call uses a fresh
/// reader that assigns the partitions itself (no consumer group).
#[derive(Clone, Debug)]
pub struct KafkaReplay {
    config: KafkaConfig,
}

impl KafkaReplay {
    /// A replay reader for the cluster `config` names.
    pub fn new(config: KafkaConfig) -> Self {
        Self { config }
    }

    /// Reads `topic` from `start` up to the end of each partition as it is when the
    /// read reaches it, at most `limit` records in all. Records come merged across
    /// partitions by timestamp, each partition's in offset order. A topic that does
    /// not exist reads as empty.
    pub async fn read(
        &self,
        topic: &str,
        start: ReplayStart,
        limit: usize,
    ) -> Result<Vec<ReplayedRecord>, BusError> {
        validate_topic(topic)?;
        if let ReplayStart::Offset(n) = start
            && n < 0
        {
            return Err(BusError::Config(format!("replay offset {n} must not be negative")));
        }
        let from = match start {
            ReplayStart::Beginning => From::Beginning,
            ReplayStart::Offset(n) => From::Offset(n),
            ReplayStart::Time(t) => From::Time(t),
        };
        let per_partition = read_topic(&self.config, topic, from, limit).await?;
        let mut queues: Vec<VecDeque<ReplayedRecord>> = per_partition
            .into_values()
            .map(|records| {
                records
                    .into_iter()
                    .map(|r| ReplayedRecord {
                        partition: r.partition,
                        offset: r.offset,
                        timestamp: r.timestamp.and_then(DateTime::from_timestamp_millis),
                        payload: r.decode(),
                    })
                    .collect()
            })
            .collect();
        let mut records = merge(&mut queues, limit);
        // A broker that answers "no record at or after that time" with an offset
        // instead of the end (Tansu does) would replay older records: the timestamp
        // decides.
        if let ReplayStart::Time(since) = start {
            records.retain(|r| r.timestamp.is_none_or(|at| at >= since));
        }
        Ok(records)
    }
}

/// Merges per-partition queues by timestamp, keeping each queue's order.
fn merge(queues: &mut [VecDeque<ReplayedRecord>], limit: usize) -> Vec<ReplayedRecord> {
    let mut out = Vec::new();
    while out.len() < limit {
        let next = queues
            .iter()
            .enumerate()
            .filter_map(|(i, q)| q.front().map(|r| (r.timestamp, r.partition, i)))
            .min()
            .map(|(_, _, i)| i);
        let Some(record) = next.and_then(|i| queues[i].pop_front()) else { break };
        out.push(record);
    }
    out
}

#[cfg(test)]
mod tests {
    use keel_core::CloudEvent;

    use super::*;

    fn record(partition: i32, offset: i64, millis: i64) -> ReplayedRecord {
        ReplayedRecord {
            partition,
            offset,
            timestamp: DateTime::from_timestamp_millis(millis),
            payload: Payload::Event(CloudEvent::builder("t", "/s").build().expect("valid")),
        }
    }

    #[test]
    fn merges_by_time_keeping_partition_order() {
        let mut queues = vec![
            VecDeque::from([record(0, 0, 10), record(0, 1, 30)]),
            VecDeque::from([record(1, 0, 20), record(1, 1, 5)]),
        ];
        let merged: Vec<(i32, i64)> =
            merge(&mut queues, 10).iter().map(|r| (r.partition, r.offset)).collect();
        assert_eq!(merged, [(0, 0), (1, 0), (1, 1), (0, 1)]);
        let mut queues = vec![VecDeque::from([record(0, 0, 1), record(0, 1, 2)])];
        assert_eq!(merge(&mut queues, 1).len(), 1);
    }
}
