//! Keel's Kafka bus backend: [`KafkaBus`] implements the `keel_core::bus` traits
//! (publish with confirmation, consumer groups, settling, dead letters) over any
//! Kafka-protocol broker through librdkafka (rdkafka), and [`KafkaReplay`] reads a
//! topic from an offset or a time for `keel replay`.
//!
//! # Mapping
//!
//! - A Keel topic is the Kafka topic of the same name, created through the admin API
//!   on first publish or subscribe with [`KafkaConfig::partitions`] partitions
//!   (default 8) and [`KafkaConfig::replication`] (default: the broker's
//!   `default.replication.factor`); an existing topic is
//!   used as it is, and a refused creation is a [`BusError::Config`] or
//!   [`BusError::Connection`] naming the topic.
//! - An event is a record in the CloudEvents Kafka binding, binary mode: `ce_`
//!   headers, a `content-type` header, the data as the value, and the partition key as
//!   the record key (no partition key: a null key, and each such record goes to a
//!   random partition, so a group's members share them).
//!   Consumers also accept structured mode (`application/cloudevents+json`); anything
//!   else is handed out as [`keel_core::Payload::Undecodable`] and so dead-lettered at
//!   once by `keel-bus`.
//! - A consumer group is the Kafka consumer group of the same name (after
//!   [`KafkaConfig::group_prefix`], empty by default). Its dead letters go
//!   to `<topic>.<group>.dlq` and `keel dlq retry` sends them back through
//!   `<topic>.<group>.retry`, which the group's members also read (both topics have
//!   one partition; see `dead_letters.rs`). `publish_to_group` (a backfill from the
//!   log, `keel replay --into group:TOPIC:GROUP`) also goes through the retry topic.
//! - A record that can never be produced (over `max_message_bytes`, refused by the
//!   broker's validation) fails with [`BusError::Unpublishable`]; refusals of a
//!   topic or an account stay [`BusError::Rejected`].
//!
//! # Guarantees
//!
//! - Publishing: idempotent producer, `acks=all`; `publish` pipelines the batch and
//!   returns once every record is confirmed. A full local queue makes the caller wait
//!   (back-pressure), never drops.
//! - Consuming: at-least-once. Offsets are committed only after settling (librdkafka's
//!   automatic commits and offset stores are off), per partition only up to the first
//!   unsettled record. Records with the same partition key are handed out one at a
//!   time, in partition order, and a nacked record is redelivered (attempt + 1) before
//!   any later record of its key; different keys are handed out in parallel up to the
//!   subscription's prefetch. Back-pressure: a partition whose buffer is full is not
//!   read further until handlers settle some of it.
//! - Rebalances: before partitions are revoked, their in-flight deliveries are
//!   awaited (up to [`KafkaConfig::revoke_timeout`]) and the settled offsets committed
//!   synchronously; a dropped or closed subscription does the same and leaves the
//!   group, so its unsettled records go to the other members.
//!
//! # Apache Kafka
//!
//! The defaults are for Apache Kafka: 45 s sessions with 3 s heartbeats,
//! cooperative-sticky assignment (a rebalance moves only the partitions that change
//! owner), no hand-off grace, no fetch rewind, no orphan watchdog, and the broker's
//! own replication factor for the topics Keel creates. The brokers need the settings
//! of [`APACHE_KAFKA_BROKER_SETTINGS`] (records up to 8 MiB, no implicit topic
//! creation, replication and `min.insync.replicas` for `acks=all`);
//! docker-compose.yml's Kafka service has them.
//!
//! # Tansu
//!
//! The test broker, Tansu 0.6, differs from Apache Kafka in ways this crate works
//! around when told to: [`KafkaConfig::tansu`], or `profile=tansu` in the URL (the
//! tests and scripts use it; [`TANSU_PARAMETERS`] spells it out). Each workaround was
//! found with small experiments and confirmed in Tansu's source
//! (docs/benchmarks-kafka.md has the details):
//! - **Fetches start at batch boundaries only.** A fetch at offset `n` returns the
//!   batches whose *first* offset is `>= n`: starting inside a batch skips the rest of
//!   it (or, inside the last batch, returns nothing until a new batch arrives). A
//!   member therefore starts a partition [`KafkaConfig::fetch_rewind`] records before
//!   the committed offset and skips what lies before it; the producer keeps batches
//!   to [`KafkaConfig::max_batch_records`]; back-pressure stops polling a partition's
//!   own queue rather than pausing it (a resume would fetch from inside a batch);
//!   readers (dead letters, replay) rewind the same way.
//! - **Rebalances do not wait for members.** The leader's assignment takes effect at
//!   once while the other members learn of the new generation at their next
//!   heartbeat, and commits are not fenced by generation, so two members could read
//!   a partition for a moment. A newly assigned partition waits
//!   [`KafkaConfig::handoff_grace`] before the member reads the committed offset and
//!   starts; heartbeats are frequent (100 ms). A follower's `JoinGroup` is held for
//!   3 s, so a rebalance takes about 3 s.
//! - **Expired members leave stale assignments.** When a member's session expires
//!   (a crash, or a member whose `JoinGroup` was still being answered when it left,
//!   which Tansu puts back as a phantom), the group keeps its generation and the
//!   leader's rejoin gets its old assignment back: the expired member's partitions
//!   are read by nobody. Closing waits up to [`KafkaConfig::leave_wait`] for a join
//!   in flight, so members leave under an id the coordinator knows, and a watchdog
//!   rejoins the group when a partition has gone unread for
//!   [`KafkaConfig::orphan_timeout`].
//! - `ListOffsets(latest)` answers the base offset of the last batch plus one, so
//!   readers stop at the end-of-partition event of a fetch instead, and a new group
//!   starting at `Latest` may also receive the tail of the last batch written before
//!   it. `DeleteRecords` is not implemented (the broker drops the connection), so
//!   purging dead letters writes a marker record. Offset-commit metadata is not
//!   stored. Kafka transactions are not used.
//!
//! Without the profile none of these workarounds is on.
//!
//! Members of one Kafka group rebalance together even when they read different
//! topics; [`KafkaConfig::group_prefix`] namespaces group ids (the tests give each
//! test its own).
//!
//! # Layout
//!
//! - `lib.rs`: [`KafkaBus`], its construction (with [`KafkaBus::connect_checked`]'s
//!   quiet start-up probe of the brokers) and the trait impls.
//! - `config.rs`: [`KafkaConfig`], `kafka://` URL parsing and the librdkafka settings
//!   of each client.
//! - `wire.rs`: the record format (binary and structured mode, Keel's dead-letter
//!   headers).
//! - `producer.rs`: pipelined, confirmed sends with back-pressure.
//! - `admin.rs`: topic creation.
//! - `subscription.rs`: a group member: its thread, per-partition queues, in-order
//!   hand-out, settling, commits, rebalance callbacks, back-pressure, the watchdog.
//! - `dead_letters.rs`: dead-letter and retry topics, `list`, `retry` and `purge`.
//! - `groups.rs`: a group's committed offsets and lag, listing and moving them.
//! - `reader.rs`: reading a topic outside a group up to its end.
//! - `lag.rs`: a consumer group's lag (high watermarks minus committed offsets).
//! - `replay.rs`: [`KafkaReplay`].
//! - `error.rs`: librdkafka errors as [`BusError`]s.
#![warn(missing_docs)]

mod admin;
mod config;
mod dead_letters;
mod error;
mod groups;
mod lag;
mod producer;
mod reader;
mod replay;
mod subscription;
mod wire;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use keel_core::bus::{
    DeadLetter, DeadLetterId, DeadLetters, GroupDepth, Publisher, Subscriber, Subscription,
    validate_group, validate_topic,
};
use keel_core::{BusError, CloudEvent, SubscriptionSpec};
use rdkafka::consumer::{BaseConsumer, Consumer as _};

pub use crate::config::{
    APACHE_KAFKA_BROKER_SETTINGS, Assignment, KafkaConfig, TANSU_PARAMETERS, URL_PARAMETERS,
};
pub use crate::dead_letters::{dead_letter_topic, retry_topic};
pub use crate::groups::{GroupReset, PartitionLag};
pub use crate::replay::{KafkaReplay, ReplayStart, ReplayedRecord};
pub use crate::wire::{CONTENT_TYPE, dlq as dlq_headers};

use crate::admin::Topics;
use crate::dead_letters::{DeadLetterSink, SIDE_TOPIC_PARTITIONS};
use crate::producer::Producer;
use crate::subscription::KafkaSubscription;

/// The Kafka bus. Clones share one producer, one admin client and the closed flag.
#[derive(Clone)]
pub struct KafkaBus {
    inner: Arc<Inner>,
}

struct Inner {
    config: KafkaConfig,
    producer: Arc<Producer>,
    topics: Arc<Topics>,
    closed: AtomicBool,
}

impl fmt::Debug for KafkaBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaBus")
            .field("brokers", &self.inner.config.brokers)
            .field("closed", &self.inner.closed.load(Ordering::SeqCst))
            .finish_non_exhaustive()
    }
}

impl KafkaBus {
    /// A bus from a `kafka://host:port[,host:port]?partitions=8&...` URL (see
    /// [`KafkaConfig::from_url`]). Creates the clients; it does not wait for the
    /// broker (see [`KafkaBus::ping`]).
    pub fn connect(url: &str) -> Result<Self, BusError> {
        Self::new(KafkaConfig::from_url(url)?)
    }

    /// Like [`KafkaBus::connect`], but first waits up to [`CONNECT_TIMEOUT`] for a
    /// broker to answer, and fails with one [`BusError::Connection`] if none does.
    /// Without the check an unreachable broker is found out only by the clients
    /// made later, each of which logs its connection errors while it retries for
    /// good; the probe's own client logs nothing above `debug`.
    pub async fn connect_checked(url: &str) -> Result<Self, BusError> {
        let config = KafkaConfig::from_url(url)?;
        config.validate()?;
        probe(&config, CONNECT_TIMEOUT).await?;
        Self::new(config)
    }

    /// A bus with this configuration.
    pub fn new(config: KafkaConfig) -> Result<Self, BusError> {
        config.validate()?;
        let producer = Arc::new(Producer::new(&config)?);
        let topics = Arc::new(Topics::new(&config)?);
        Ok(Self {
            inner: Arc::new(Inner { config, producer, topics, closed: AtomicBool::new(false) }),
        })
    }

    /// The configuration this bus was opened with.
    pub fn config(&self) -> &KafkaConfig {
        &self.inner.config
    }

    /// Checks that a broker answers (a metadata request), for readiness probes.
    pub async fn ping(&self) -> Result<(), BusError> {
        let config = self.inner.config.clone();
        tokio::task::spawn_blocking(move || {
            let client: BaseConsumer = config
                .reader()
                .create()
                .map_err(|e| error::from_kafka("creating a Kafka client", &e))?;
            client.fetch_metadata(None, Duration::from_secs(5)).map(|_| ()).map_err(|e| {
                BusError::Connection(format!("no Kafka broker answers at {}: {e}", config.brokers))
            })
        })
        .await
        .map_err(|e| BusError::Backend(Box::new(e)))?
    }

    /// A replay reader on the same brokers.
    pub fn replay(&self) -> KafkaReplay {
        KafkaReplay::new(self.inner.config.clone())
    }

    /// Consumer group `group`'s committed offset, end and lag in each partition of
    /// `topic` (empty when the topic does not exist).
    pub async fn group_lag(&self, topic: &str, group: &str) -> Result<Vec<PartitionLag>, BusError> {
        groups::lag(&self.inner.config, topic, group).await
    }

    /// Moves consumer group `group`'s committed offsets on `topic` to `to`, as a
    /// client outside the group (stop its members first: a member's next commit would
    /// undo the move); returns the partitions after the move.
    pub async fn reset_group(
        &self,
        topic: &str,
        group: &str,
        to: GroupReset,
    ) -> Result<Vec<PartitionLag>, BusError> {
        groups::reset(&self.inner.config, topic, group, to).await
    }

    /// The consumer groups the brokers know (within [`KafkaConfig::group_prefix`],
    /// which is taken off their names).
    pub async fn group_names(&self) -> Result<Vec<String>, BusError> {
        groups::names(&self.inner.config).await
    }
}

/// How long [`KafkaBus::connect_checked`] waits for a broker to answer.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A client context that keeps librdkafka's logs and errors at `debug`: the probe's
/// caller reports the one failure that matters.
struct Quiet;

impl rdkafka::ClientContext for Quiet {
    fn log(&self, _level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        tracing::debug!(target: "librdkafka", "{fac} {message}");
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        tracing::debug!(target: "librdkafka", %error, "{reason}");
    }
}

impl rdkafka::consumer::ConsumerContext for Quiet {}

/// Asks the brokers for their metadata, waiting at most `timeout`.
async fn probe(config: &KafkaConfig, timeout: Duration) -> Result<(), BusError> {
    let config = config.clone();
    tokio::task::spawn_blocking(move || {
        let client: BaseConsumer<Quiet> = config
            .client()
            .create_with_context(Quiet)
            .map_err(|e| error::from_kafka("creating a Kafka client", &e))?;
        client.fetch_metadata(None, timeout).map(|_| ()).map_err(|e| {
            BusError::Connection(format!(
                "no Kafka broker answered at {} within {} s ({e})",
                config.brokers,
                timeout.as_secs()
            ))
        })
    })
    .await
    .map_err(|e| BusError::Backend(Box::new(e)))?
}

#[async_trait]
impl Publisher for KafkaBus {
    async fn publish(&self, topic: &str, events: &[CloudEvent]) -> Result<(), BusError> {
        validate_topic(topic)?;
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(BusError::Closed);
        }
        if events.is_empty() {
            return Ok(());
        }
        self.inner.topics.ensure(&[(topic, self.inner.config.partitions)]).await?;
        // Encoded one by one as they are handed to librdkafka, which meanwhile sends.
        let sent = self
            .inner
            .producer
            .send_each(topic, events.len(), events.iter().map(wire::outgoing))
            .await;
        if sent.as_ref().is_err_and(|e| !e.is_unpublishable()) {
            self.inner.topics.forget(topic);
        }
        sent
    }

    /// To the group's retry topic `<topic>.<group>.retry`, which only that group's
    /// members read (see `dead_letters.rs`); created if missing, so the events wait
    /// there for a group that has not joined yet. A Kafka group can also be rewound
    /// on its topic, which keeps every record; this is for events the topic never
    /// had, or has no longer.
    async fn publish_to_group(
        &self,
        topic: &str,
        group: &str,
        events: &[CloudEvent],
    ) -> Result<(), BusError> {
        validate_topic(topic)?;
        validate_group(group)?;
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(BusError::Closed);
        }
        if events.is_empty() {
            return Ok(());
        }
        let retry = retry_topic(topic, group);
        validate_topic(&retry)?;
        self.inner.topics.ensure(&[(&retry, SIDE_TOPIC_PARTITIONS)]).await?;
        let sent = self
            .inner
            .producer
            .send_each(&retry, events.len(), events.iter().map(wire::outgoing))
            .await;
        if sent.as_ref().is_err_and(|e| !e.is_unpublishable()) {
            self.inner.topics.forget(&retry);
        }
        sent
    }

    /// Refuses new publishes and waits until everything accepted is confirmed.
    async fn close(&self) -> Result<(), BusError> {
        self.inner.closed.store(true, Ordering::SeqCst);
        self.inner.producer.flush(self.inner.config.publish_timeout).await
    }
}

#[async_trait]
impl Subscriber for KafkaBus {
    async fn subscribe(&self, spec: SubscriptionSpec) -> Result<Box<dyn Subscription>, BusError> {
        spec.validate()?;
        let retry = retry_topic(&spec.topic, &spec.group);
        validate_topic(&retry)?;
        self.inner
            .topics
            .ensure(&[(&spec.topic, self.inner.config.partitions), (&retry, SIDE_TOPIC_PARTITIONS)])
            .await?;
        let sink = DeadLetterSink {
            producer: Arc::clone(&self.inner.producer),
            topics: Arc::clone(&self.inner.topics),
            topic: dead_letter_topic(&spec.topic, &spec.group),
        };
        let subscription =
            KafkaSubscription::start(&self.inner.config, &spec, &[&spec.topic, &retry], sink)?;
        tracing::debug!(topic = %spec.topic, group = %spec.group, "subscribed");
        Ok(Box::new(subscription))
    }

    /// Lag: the topic's high watermarks minus the group's committed offsets, over its
    /// partitions (see `lag.rs`); dead letters: the live letters of its dead-letter
    /// topic (read from the topic's beginning).
    async fn depth(&self, topic: &str, group: &str) -> Result<GroupDepth, BusError> {
        validate_topic(topic)?;
        validate_group(group)?;
        let lag = lag::group_lag(&self.inner.config, topic, group).await?;
        let dead = dead_letters::count(&self.inner.config, topic, group).await?;
        Ok(GroupDepth::new(Some(lag), Some(dead)))
    }
}

#[async_trait]
impl DeadLetters for KafkaBus {
    async fn list(
        &self,
        topic: &str,
        group: &str,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, BusError> {
        validate_topic(topic)?;
        validate_group(group)?;
        dead_letters::list(&self.inner.config, topic, group, limit).await
    }

    async fn retry(&self, topic: &str, group: &str, id: &DeadLetterId) -> Result<bool, BusError> {
        validate_topic(topic)?;
        validate_group(group)?;
        dead_letters::retry(
            &self.inner.config,
            &self.inner.producer,
            &self.inner.topics,
            topic,
            group,
            id,
        )
        .await
    }

    async fn purge(&self, topic: &str, group: &str) -> Result<u64, BusError> {
        validate_topic(topic)?;
        validate_group(group)?;
        dead_letters::purge(&self.inner.config, &self.inner.producer, topic, group).await
    }
}

#[cfg(test)]
mod tests;
