//! Keel's in-process bus backend: [`MemoryBus`] implements the `keel_core::bus` traits
//! (publish, consumer groups, settling, dead letters) entirely in memory. It is a real
//! backend for single-process deployments and tests, with the same guarantees as the
//! broker backends: per-partition-key order within a group, competing consumers within a
//! group and fan-out across groups, redelivery of whatever is not settled, and
//! back-pressure instead of dropped messages. Nothing survives the process.
//!
//! Layout:
//! - `lib.rs`: [`MemoryBus`], the topic registry, the closed flag and the trait impls.
//! - `topic.rs`: one topic: the retained log of its messages, trimming, capacity waits,
//!   and its groups behind one lock.
//! - `group.rs`: one consumer group: the type filter, which log offsets it is done with,
//!   its dead letters, and its [`keel_lanes::Lanes`] (key lanes, the ready queue, nack
//!   delays, in-flight deliveries per member with prefetch).
//! - `subscription.rs`: a group member (`Subscription`) and the settle handle of each
//!   delivery (`Settle`, and `Drop` as an undelayed nack).
#![warn(missing_docs)]

mod group;
mod subscription;
mod topic;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use keel_core::CloudEvent;
use keel_core::bus::{
    BusError, DeadLetter, DeadLetterId, DeadLetters, GroupDepth, Payload, Publisher, RawMessage,
    Subscriber, Subscription, SubscriptionSpec, validate_group, validate_topic,
};

use crate::subscription::MemorySubscription;
use crate::topic::Topic;

/// How many messages a topic retains (unsettled by some group) before publishing waits.
pub const DEFAULT_CAPACITY: usize = 100_000;

/// The in-process bus. Clones share the same topics.
#[derive(Clone)]
pub struct MemoryBus {
    shared: Arc<Shared>,
}

struct Shared {
    capacity: usize,
    closed: Arc<AtomicBool>,
    topics: Mutex<HashMap<String, Arc<Topic>>>,
}

impl fmt::Debug for MemoryBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryBus")
            .field("capacity", &self.shared.capacity)
            .field("closed", &self.shared.closed.load(Ordering::SeqCst))
            .finish_non_exhaustive()
    }
}

impl Default for MemoryBus {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryBus {
    /// A bus whose topics each retain up to [`DEFAULT_CAPACITY`] messages.
    pub fn new() -> Self {
        Self::with_capacity(DEFAULT_CAPACITY)
    }

    /// A bus whose topics each retain up to `capacity` messages (at least 1) that some
    /// group has not settled yet; publishing to a full topic waits.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            shared: Arc::new(Shared {
                capacity: capacity.max(1),
                closed: Arc::new(AtomicBool::new(false)),
                topics: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Stores a message that is not a valid CloudEvent, so that groups receive it as
    /// [`Payload::Undecodable`] (for conformance tests of the dead-letter path). Does not
    /// wait for room: a full topic gives [`BusError::Backpressure`].
    pub fn publish_raw(&self, topic: &str, raw: RawMessage) -> Result<(), BusError> {
        validate_topic(topic)?;
        self.topic(topic)?.try_publish(vec![Payload::Undecodable(raw)])
    }

    fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::SeqCst)
    }

    /// The topic named `name`, created if new ([`BusError::Closed`] once closed).
    fn topic(&self, name: &str) -> Result<Arc<Topic>, BusError> {
        let mut topics = self.shared.topics.lock().unwrap_or_else(PoisonError::into_inner);
        // Checked under the registry lock, which `close` takes after setting the flag:
        // a topic created here is either seen by `close` or never created.
        if self.is_closed() {
            return Err(BusError::Closed);
        }
        let topic = topics.entry(name.to_owned()).or_insert_with(|| {
            Arc::new(Topic::new(
                name.to_owned(),
                self.shared.capacity,
                Arc::clone(&self.shared.closed),
            ))
        });
        Ok(Arc::clone(topic))
    }

    /// The topic named `name` if it exists (without creating it).
    fn existing_topic(&self, name: &str) -> Option<Arc<Topic>> {
        let topics = self.shared.topics.lock().unwrap_or_else(PoisonError::into_inner);
        topics.get(name).cloned()
    }
}

#[async_trait]
impl Publisher for MemoryBus {
    /// Returns once every event is in the topic's log (the in-memory confirmation),
    /// waiting while the topic is at capacity.
    async fn publish(&self, topic: &str, events: &[CloudEvent]) -> Result<(), BusError> {
        validate_topic(topic)?;
        if self.is_closed() {
            return Err(BusError::Closed);
        }
        if events.is_empty() {
            return Ok(());
        }
        let messages = events.iter().cloned().map(Payload::Event).collect();
        self.topic(topic)?.publish(messages).await
    }

    /// Closes the bus: publishing fails from now on, waiting publishers get
    /// [`BusError::Closed`], and subscriptions end once they have handed out what is ready.
    async fn close(&self) -> Result<(), BusError> {
        self.shared.closed.store(true, Ordering::SeqCst);
        let topics: Vec<Arc<Topic>> = {
            let topics = self.shared.topics.lock().unwrap_or_else(PoisonError::into_inner);
            topics.values().cloned().collect()
        };
        for topic in topics {
            topic.wake_all();
        }
        Ok(())
    }
}

#[async_trait]
impl Subscriber for MemoryBus {
    async fn subscribe(&self, spec: SubscriptionSpec) -> Result<Box<dyn Subscription>, BusError> {
        spec.validate()?;
        let topic = self.topic(&spec.topic)?;
        let (seat, notify) = topic.join(&spec);
        Ok(Box::new(MemorySubscription::new(topic, seat, notify)))
    }

    /// Lag: the messages the group wants and has not settled yet (0 for a group or a
    /// topic that does not exist).
    async fn depth(&self, topic: &str, group: &str) -> Result<GroupDepth, BusError> {
        validate_topic(topic)?;
        validate_group(group)?;
        let (lag, dead) = self.existing_topic(topic).and_then(|t| t.depth(group)).unwrap_or((0, 0));
        Ok(GroupDepth::new(Some(lag), Some(dead)))
    }
}

#[async_trait]
impl DeadLetters for MemoryBus {
    async fn list(
        &self,
        topic: &str,
        group: &str,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, BusError> {
        validate_topic(topic)?;
        validate_group(group)?;
        Ok(self.existing_topic(topic).map(|t| t.dead_letters(group, limit)).unwrap_or_default())
    }

    async fn retry(&self, topic: &str, group: &str, id: &DeadLetterId) -> Result<bool, BusError> {
        validate_topic(topic)?;
        validate_group(group)?;
        Ok(self.existing_topic(topic).is_some_and(|t| t.retry(group, id)))
    }

    async fn purge(&self, topic: &str, group: &str) -> Result<u64, BusError> {
        validate_topic(topic)?;
        validate_group(group)?;
        Ok(self.existing_topic(topic).map_or(0, |t| t.purge(group)))
    }
}

#[cfg(test)]
mod tests;
