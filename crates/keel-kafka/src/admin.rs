//! Topic creation through the admin API, remembered per bus so that each topic is
//! created at most once per process.

use std::collections::HashSet;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use keel_core::BusError;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;

use crate::config::KafkaConfig;
use crate::error::from_kafka;

/// Creates topics on demand.
pub(crate) struct Topics {
    admin: AdminClient<DefaultClientContext>,
    replication: i32,
    enabled: bool,
    known: Mutex<HashSet<String>>,
}

impl Topics {
    pub(crate) fn new(config: &KafkaConfig) -> Result<Self, BusError> {
        let admin = config
            .client()
            .create()
            .map_err(|e| from_kafka("creating the Kafka admin client", &e))?;
        Ok(Self {
            admin,
            // -1: the broker's default.replication.factor (Kafka 2.4 and later).
            replication: config.replication.unwrap_or(-1),
            enabled: config.create_topics,
            known: Mutex::new(HashSet::new()),
        })
    }

    /// Forgets that `topic` exists, so the next [`Topics::ensure`] asks the broker again:
    /// after a failed publish, since the topic may be gone (deleted by an operator, or
    /// a broker that came back empty).
    pub(crate) fn forget(&self, topic: &str) {
        self.known.lock().unwrap_or_else(PoisonError::into_inner).remove(topic);
    }

    fn is_known(&self, topic: &str) -> bool {
        self.known.lock().unwrap_or_else(PoisonError::into_inner).contains(topic)
    }

    /// Makes sure each `(topic, partitions)` exists: creates the missing ones with
    /// that many partitions (an existing topic is left as it is).
    pub(crate) async fn ensure(&self, topics: &[(&str, i32)]) -> Result<(), BusError> {
        let missing: Vec<(&str, i32)> =
            topics.iter().copied().filter(|(name, _)| !self.is_known(name)).collect();
        if missing.is_empty() || !self.enabled {
            return Ok(());
        }
        let new: Vec<NewTopic<'_>> = missing
            .iter()
            .map(|(name, partitions)| {
                NewTopic::new(name, *partitions, TopicReplication::Fixed(self.replication))
            })
            .collect();
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let results = self.admin.create_topics(&new, &options).await.map_err(|e| {
            let error = from_kafka("creating Kafka topics", &e);
            match error {
                BusError::Config(text) => BusError::Config(text),
                other => BusError::Connection(format!(
                    "could not create topics {:?} ({other}); is the broker at the configured address up?",
                    missing.iter().map(|(n, _)| *n).collect::<Vec<_>>()
                )),
            }
        })?;
        for result in results {
            match result {
                Ok(name) | Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => {
                    tracing::debug!(topic = %name, "topic ready");
                    self.known.lock().unwrap_or_else(PoisonError::into_inner).insert(name);
                }
                Err((name, code)) => {
                    let text = format!("the broker refused to create topic `{name}`: {code}");
                    return Err(match code {
                        RDKafkaErrorCode::InvalidPartitions
                        | RDKafkaErrorCode::InvalidReplicationFactor
                        | RDKafkaErrorCode::InvalidTopic
                        | RDKafkaErrorCode::InvalidConfig
                        | RDKafkaErrorCode::PolicyViolation
                        | RDKafkaErrorCode::TopicAuthorizationFailed
                        | RDKafkaErrorCode::ClusterAuthorizationFailed => BusError::Config(text),
                        _ => BusError::Connection(text),
                    });
                }
            }
        }
        Ok(())
    }
}
