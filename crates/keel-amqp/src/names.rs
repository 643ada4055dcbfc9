//! The names of everything Keel declares on the broker (see the crate docs).
//!
//! Topic and group names are `[A-Za-z0-9._-]` (`keel_core::bus::validate_topic`), so
//! `:` can separate them without two (topic, group) pairs ever sharing a queue.

use std::time::Duration;

use keel_core::BusError;
use keel_core::bus::{validate_group, validate_topic};

/// The direct exchange every group's dead-letter queue is bound to (by its own name).
pub(crate) const DEAD_LETTER_EXCHANGE: &str = "keel.dlx";

/// The longest retry delay a bucket holds: 2^31 ms, about 24.8 days.
const MAX_BUCKET_MS: u64 = 1 << 31;

/// RabbitMQ's limit on exchange and queue names.
const MAX_NAME: usize = 255;

/// The exchange a topic's events are published to.
pub(crate) fn topic_exchange(topic: &str) -> String {
    format!("keel.{topic}")
}

/// A consumer group's queues.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct GroupNames {
    pub(crate) topic: String,
    pub(crate) group: String,
    /// `keel.<topic>`
    pub(crate) exchange: String,
    /// `keel.<topic>:<group>`
    pub(crate) queue: String,
    /// `keel.<topic>:<group>:dlq`
    pub(crate) dlq: String,
}

impl GroupNames {
    pub(crate) fn new(topic: &str, group: &str) -> Result<Self, BusError> {
        validate_topic(topic)?;
        validate_group(group)?;
        let queue = format!("keel.{topic}:{group}");
        let longest = queue.len() + ":retry.".len() + MAX_BUCKET_MS.to_string().len();
        if longest > MAX_NAME {
            return Err(BusError::Config(format!(
                "topic `{topic}` and group `{group}` are too long together: RabbitMQ queue \
                 names are at most {MAX_NAME} bytes, and `{queue}:retry.{MAX_BUCKET_MS}` \
                 would be {longest}"
            )));
        }
        Ok(Self {
            topic: topic.to_owned(),
            group: group.to_owned(),
            exchange: topic_exchange(topic),
            dlq: format!("{queue}:dlq"),
            queue,
        })
    }

    /// The retry queue holding messages for `bucket_ms` milliseconds:
    /// `keel.<topic>:<group>:retry.<bucket_ms>`.
    pub(crate) fn retry_queue(&self, bucket_ms: u64) -> String {
        format!("{}:retry.{bucket_ms}", self.queue)
    }
}

/// The retry bucket for a redelivery delay: the smallest power of two of milliseconds
/// that is at least `delay` (so the message waits at least `delay` and less than
/// twice as long), or `None` for no delay at all.
pub(crate) fn retry_bucket(delay: Duration) -> Option<u64> {
    if delay.is_zero() {
        return None;
    }
    let ms = u64::try_from(delay.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX);
    Some(ms.max(1).checked_next_power_of_two().unwrap_or(MAX_BUCKET_MS).min(MAX_BUCKET_MS))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_keep_topics_and_groups_apart() {
        let a = GroupNames::new("a.b", "c").expect("valid");
        let b = GroupNames::new("a", "b.c").expect("valid");
        assert_ne!(a.queue, b.queue);
        assert_eq!(a.exchange, "keel.a.b");
        assert_eq!(a.queue, "keel.a.b:c");
        assert_eq!(a.dlq, "keel.a.b:c:dlq");
        assert_eq!(a.retry_queue(16), "keel.a.b:c:retry.16");
        // A group named like another group's retry or dead-letter queue cannot clash.
        assert_ne!(GroupNames::new("t", "g.dlq").expect("valid").queue, a.dlq);
    }

    #[test]
    fn bad_and_overlong_names_are_config_errors() {
        assert!(matches!(GroupNames::new("a b", "g"), Err(BusError::Config(_))));
        assert!(matches!(GroupNames::new("t", ""), Err(BusError::Config(_))));
        let long = "x".repeat(120);
        let err = GroupNames::new(&long, &long).expect_err("too long");
        assert!(err.to_string().contains("too long"), "{err}");
    }

    #[test]
    fn buckets_round_up_to_powers_of_two() {
        assert_eq!(retry_bucket(Duration::ZERO), None);
        assert_eq!(retry_bucket(Duration::from_nanos(1)), Some(1));
        assert_eq!(retry_bucket(Duration::from_millis(1)), Some(1));
        assert_eq!(retry_bucket(Duration::from_millis(10)), Some(16));
        assert_eq!(retry_bucket(Duration::from_micros(16_001)), Some(32));
        assert_eq!(retry_bucket(Duration::from_millis(100)), Some(128));
        assert_eq!(retry_bucket(Duration::from_secs(30)), Some(32_768));
        assert_eq!(retry_bucket(Duration::MAX), Some(MAX_BUCKET_MS));
        for ms in 1..5000_u64 {
            let bucket = retry_bucket(Duration::from_millis(ms)).expect("some");
            assert!(bucket >= ms && bucket < 2 * ms, "{ms} -> {bucket}");
        }
    }
}
