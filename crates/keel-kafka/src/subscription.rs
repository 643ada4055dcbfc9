//! One consumer group member: a librdkafka consumer on a thread of its own, the
//! records it has fetched, and the settle handles of what it handed out.
//!
//! # How offsets stay honest
//!
//! The member's thread polls the consumer (which also runs the rebalance callbacks)
//! and appends each record to its partition's queue. [`KafkaSubscription::next`]
//! hands out, from any partition, the first record whose key has nothing earlier
//! unsettled in that partition, so one key is handled strictly in order while
//! different keys run in parallel, and at most `prefetch` deliveries are unsettled at
//! once. Settling marks the record done; the thread commits, per partition, the
//! offset after the longest settled prefix of the queue, so a commit never passes a
//! record that is unhandled, in flight or waiting for redelivery. A nacked record
//! stays in place and is handed out again after its delay, ahead of every later
//! record of its key. Dead-lettering produces the record to the dead-letter topic,
//! waits for the broker's confirmation, then marks it done.
//!
//! # Rebalances
//!
//! Before partitions are revoked (rebalance, close, or drop), the member stops
//! handing out their records, waits up to `revoke_timeout` for the deliveries it
//! handed out from them to be settled, and commits synchronously. A newly assigned
//! partition is paused for `handoff_grace` first; then the member reads the committed
//! offset afresh, seeks to it and starts. The grace is there because Tansu's group
//! coordinator completes a rebalance without waiting for every member to rejoin
//! (see the crate docs): the previous owner may still be finishing its revoke when
//! the new owner is told the partition is its own.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use keel_core::bus::{DeadLetterReason, Settle};
use keel_core::{BusError, Delivery, Payload, StartFrom, Subscription, SubscriptionSpec};
use rdkafka::client::ClientContext;
use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaResult;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio::sync::{Notify, oneshot};

use crate::config::KafkaConfig;
use crate::dead_letters::DeadLetterSink;
use crate::error::from_kafka;
use crate::wire::InRecord;

/// A partition of one of the subscribed topics.
type Tp = (Arc<str>, i32);

/// What the member's thread, `next` and the settle handles share.
pub(crate) struct Shared {
    state: Mutex<State>,
    /// Wakes `next` (one waiter: the subscription).
    ready: Notify,
    /// Wakes the thread waiting in a revoke for deliveries to be settled.
    settled: Condvar,
    prefetch: usize,
    types: Vec<String>,
    sink: DeadLetterSink,
}

#[derive(Default)]
struct State {
    partitions: HashMap<Tp, Part>,
    /// Handed out and not settled, over all partitions (also those since revoked).
    in_flight: usize,
    next_epoch: u64,
    /// Set by close or drop: nothing more is handed out, the thread leaves the group.
    closing: bool,
    /// Set by the thread when it has left the group.
    finished: bool,
    /// Whether the last rebalance callback was an assignment: no join is in flight.
    assigned: bool,
    /// Where the round-robin over partitions starts next time.
    cursor: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Assigned, paused until the hand-off grace ends.
    Waiting(Instant),
    Active,
    /// Being given up: nothing more is handed out.
    Revoking,
}

struct Part {
    /// Which assignment this is: settles of an older one are ignored.
    epoch: u64,
    phase: Phase,
    entries: VecDeque<Entry>,
    /// The offset after the last record queued (-1: none yet).
    next_offset: i64,
    /// The last offset committed (-1: unknown).
    committed: i64,
}

struct Entry {
    record: Arc<InRecord>,
    /// The key whose order this record keeps (the partition key, else the record key).
    key: Option<Bytes>,
    status: Status,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    Ready { not_before: Option<Instant>, attempt: u32 },
    InFlight,
    Settled,
}

impl Part {
    fn new(epoch: u64, phase: Phase) -> Self {
        Self { epoch, phase, entries: VecDeque::new(), next_offset: -1, committed: -1 }
    }

    /// Drops the settled prefix; the offset a commit may name now, if any.
    fn commit_point(&mut self) -> Option<i64> {
        while self.entries.front().is_some_and(|e| e.status == Status::Settled) {
            self.entries.pop_front();
        }
        match self.entries.front() {
            Some(first) => Some(first.record.offset),
            None => (self.next_offset >= 0).then_some(self.next_offset),
        }
    }

    fn has_in_flight(&self) -> bool {
        self.entries.iter().any(|e| e.status == Status::InFlight)
    }

    fn index_of(&self, offset: i64) -> Option<usize> {
        self.entries.binary_search_by_key(&offset, |e| e.record.offset).ok()
    }
}

fn lock(mutex: &Mutex<State>) -> MutexGuard<'_, State> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Whether the subscription takes the record: every type it asked for, and every
    /// record that does not decode (it goes to dead-letter with the reason). Decodes
    /// only records whose type header does not already say they are wanted.
    fn wants(&self, record: &InRecord) -> bool {
        let wanted = |ty: &str| self.types.iter().any(|t| t == ty);
        if self.types.is_empty() || record.binary_event_type().is_some_and(wanted) {
            return true;
        }
        match record.decode() {
            Payload::Event(event) => wanted(event.ty()),
            Payload::Undecodable(_) => true,
        }
    }

    /// Picks the next record to hand out (with its settle handle and attempt), or when
    /// to look again. The caller decodes it after letting go of the lock.
    fn take(
        self: &Arc<Self>,
        state: &mut State,
    ) -> Result<(Arc<InRecord>, KafkaSettle, u32), Option<Instant>> {
        if state.in_flight >= self.prefetch {
            return Err(None);
        }
        let now = Instant::now();
        let mut wake: Option<Instant> = None;
        let mut keys: Vec<&Tp> = state.partitions.keys().collect();
        keys.sort();
        let count = keys.len();
        let mut found = None;
        for i in 0..count {
            let tp = keys[(state.cursor + i) % count];
            let Some(part) = state.partitions.get(tp) else { continue };
            if part.phase != Phase::Active {
                continue;
            }
            let mut blocked: HashSet<&[u8]> = HashSet::new();
            for (index, entry) in part.entries.iter().enumerate() {
                match entry.status {
                    Status::Settled => {}
                    Status::InFlight => {
                        if let Some(key) = &entry.key {
                            blocked.insert(key);
                        }
                    }
                    Status::Ready { not_before, attempt } => {
                        if let Some(key) = &entry.key
                            && !blocked.insert(key)
                        {
                            continue;
                        }
                        match not_before {
                            Some(at) if at > now => {
                                wake = Some(wake.map_or(at, |w| w.min(at)));
                            }
                            _ => {
                                found = Some((tp.clone(), index, attempt, i));
                                break;
                            }
                        }
                    }
                }
            }
            if found.is_some() {
                break;
            }
        }
        let Some((tp, index, attempt, i)) = found else { return Err(wake) };
        state.cursor = (state.cursor + i + 1) % count.max(1);
        let Some(part) = state.partitions.get_mut(&tp) else { return Err(wake) };
        let epoch = part.epoch;
        let Some(entry) = part.entries.get_mut(index) else { return Err(wake) };
        entry.status = Status::InFlight;
        state.in_flight += 1;
        let record = Arc::clone(&entry.record);
        let settle = KafkaSettle {
            shared: Arc::clone(self),
            tp,
            epoch,
            attempt,
            record: Arc::clone(&record),
            done: false,
        };
        Ok((record, settle, attempt))
    }

    /// Records how a delivery ended: `None` = done, `Some(delay)` = hand it out again
    /// after `delay`.
    fn settle(&self, tp: &Tp, epoch: u64, offset: i64, attempt: u32, again: Option<Duration>) {
        let mut state = self.lock();
        state.in_flight = state.in_flight.saturating_sub(1);
        if let Some(part) = state.partitions.get_mut(tp).filter(|p| p.epoch == epoch) {
            if let Some(entry) = part.index_of(offset).and_then(|i| part.entries.get_mut(i))
                && entry.status == Status::InFlight
            {
                entry.status = match again {
                    None => Status::Settled,
                    Some(delay) => Status::Ready {
                        not_before: (!delay.is_zero()).then(|| Instant::now() + delay),
                        attempt: attempt.saturating_add(1),
                    },
                };
            }
            // Drop the settled prefix now, so `take` does not walk over it.
            part.commit_point();
        } else {
            tracing::debug!(topic = %tp.0, partition = tp.1, offset, "settled after the partition was given up");
        }
        drop(state);
        self.ready.notify_one();
        self.settled.notify_all();
    }

    fn close(&self) {
        self.lock().closing = true;
        self.ready.notify_one();
        self.settled.notify_all();
    }
}

/// How a delivery of this backend is settled.
struct KafkaSettle {
    shared: Arc<Shared>,
    tp: Tp,
    epoch: u64,
    attempt: u32,
    record: Arc<InRecord>,
    done: bool,
}

impl KafkaSettle {
    fn finish(mut self, again: Option<Duration>) {
        self.done = true;
        self.shared.settle(&self.tp, self.epoch, self.record.offset, self.attempt, again);
    }
}

#[async_trait]
impl Settle for KafkaSettle {
    async fn ack(self: Box<Self>) -> Result<(), BusError> {
        self.finish(None);
        Ok(())
    }

    async fn nack(self: Box<Self>, delay: Duration) -> Result<(), BusError> {
        self.finish(Some(delay));
        Ok(())
    }

    async fn dead_letter(self: Box<Self>, reason: DeadLetterReason) -> Result<(), BusError> {
        match self.shared.sink.send(&self.record, &reason).await {
            Ok(()) => {
                metrics::counter!("keel_kafka_dead_lettered_total").increment(1);
                self.finish(None);
                Ok(())
            }
            Err(error) => {
                tracing::warn!(%error, topic = %self.tp.0, partition = self.tp.1, offset = self.record.offset, "could not dead-letter; redelivering");
                self.finish(Some(Duration::from_secs(1)));
                Err(error)
            }
        }
    }
}

impl Drop for KafkaSettle {
    fn drop(&mut self) {
        if !self.done {
            // Dropped unsettled: hand it out again at once, with the same attempt
            // number (it was never handled).
            self.done = true;
            let attempt = self.attempt.saturating_sub(1);
            self.shared.settle(
                &self.tp,
                self.epoch,
                self.record.offset,
                attempt,
                Some(Duration::ZERO),
            );
        }
    }
}

/// The consumer context: the rebalance callbacks, run on the member's thread.
struct Member {
    shared: Arc<Shared>,
    grace: Duration,
    revoke_timeout: Duration,
}

impl ClientContext for Member {}

impl ConsumerContext for Member {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            metrics::counter!("keel_kafka_rebalances_total", "kind" => "revoke").increment(1);
            let tps =
                tpl.elements().iter().map(|e| (Arc::from(e.topic()), e.partition())).collect();
            self.revoke(consumer, tps);
        }
        if let Rebalance::Error(error) = rebalance {
            tracing::warn!(%error, "rebalance error");
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            metrics::counter!("keel_kafka_rebalances_total", "kind" => "assign").increment(1);
            self.assign(consumer, tpl);
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        if let Err(error) = result {
            tracing::warn!(%error, ?offsets, "offset commit failed");
        }
    }
}

impl Member {
    fn assign(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        let mut state = self.shared.lock();
        // Even without a grace, the member's thread starts the partition itself (seek
        // with rewind), so it stays paused until then.
        let phase = Phase::Waiting(Instant::now() + self.grace);
        state.assigned = true;
        for element in tpl.elements() {
            state.next_epoch += 1;
            let epoch = state.next_epoch;
            let part = Part::new(epoch, phase);
            state.partitions.insert((Arc::from(element.topic()), element.partition()), part);
        }
        drop(state);
        tracing::debug!(partitions = tpl.count(), grace = ?self.grace, "partitions assigned");
        if let Err(error) = consumer.pause(tpl) {
            tracing::warn!(%error, "could not pause newly assigned partitions");
        }
        self.shared.ready.notify_one();
    }

    /// Gives partitions up: stop handing them out, wait for what is in flight, commit.
    fn revoke(&self, consumer: &BaseConsumer<Self>, tps: Vec<Tp>) {
        let deadline = Instant::now() + self.revoke_timeout;
        let mut state = self.shared.lock();
        state.assigned = false;
        for tp in &tps {
            if let Some(part) = state.partitions.get_mut(tp) {
                part.phase = Phase::Revoking;
            }
        }
        loop {
            let busy =
                tps.iter().any(|tp| state.partitions.get(tp).is_some_and(Part::has_in_flight));
            let now = Instant::now();
            if !busy || now >= deadline {
                if busy {
                    tracing::warn!(timeout = ?self.revoke_timeout, "giving partitions up with deliveries still unsettled; they will be redelivered");
                }
                break;
            }
            state = self
                .shared
                .settled
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        let mut tpl = TopicPartitionList::new();
        for tp in &tps {
            if let Some(mut part) = state.partitions.remove(tp) {
                // Committed even when unchanged: an earlier asynchronous commit may have failed.
                if let Some(point) = part.commit_point()
                    && let Err(error) = tpl.add_partition_offset(&tp.0, tp.1, Offset::Offset(point))
                {
                    tracing::warn!(%error, "could not list an offset to commit");
                }
            }
        }
        drop(state);
        if tpl.count() > 0 {
            match consumer.commit(&tpl, CommitMode::Sync) {
                Ok(()) => {
                    metrics::counter!("keel_kafka_commits_total").increment(1);
                    tracing::debug!(?tpl, "committed before giving partitions up");
                }
                Err(error) => tracing::warn!(%error, "commit before giving partitions up failed"),
            }
        }
        self.shared.ready.notify_one();
    }
}

/// Wakes the member's thread when one of its queues gets something (librdkafka's
/// "queue became non-empty" callback), so an idle thread can sleep without adding
/// latency.
#[derive(Default)]
struct Wake {
    flag: Mutex<bool>,
    bell: Condvar,
}

impl Wake {
    fn ring(&self) {
        *self.flag.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.bell.notify_one();
    }

    /// Waits until rung or `timeout` passes; clears the bell.
    fn wait(&self, timeout: Duration) {
        let mut rung = self.flag.lock().unwrap_or_else(PoisonError::into_inner);
        if !*rung {
            rung = self.bell.wait_timeout(rung, timeout).unwrap_or_else(PoisonError::into_inner).0;
        }
        *rung = false;
    }
}

/// The member's thread: polls, queues records, starts partitions after their grace,
/// commits, and finally leaves the group.
///
/// Each started partition's records come through a queue of its own (librdkafka's
/// partition queue), polled only while that partition's buffer has room: that is the
/// back-pressure. Pausing the partition instead would make librdkafka resume at the
/// next record's offset, which on Tansu may lie inside a batch (see `fetch_rewind`).
struct Worker {
    consumer: Arc<BaseConsumer<Member>>,
    wake: Arc<Wake>,
    queues: HashMap<Tp, (u64, PartitionQueue<Member>)>,
    shared: Arc<Shared>,
    start: StartFrom,
    buffer: usize,
    rewind: i64,
    leave_wait: Duration,
    commit_interval: Duration,
    last_commit: Instant,
    watchdog: Watchdog,
}

/// Notices partitions that nobody in the group reads, and makes the coordinator
/// assign them again by leaving and rejoining the group.
///
/// On Tansu 0.6, when a member's session expires (a crashed process, or a member
/// whose `JoinGroup` was still being answered when it left), the group stays "formed"
/// with the same generation: the leader's rejoin gets its old assignment back and
/// the expired member's partitions belong to nobody until the membership changes
/// again. A member that sees, for longer than `orphan_timeout`, a partition of its
/// topics that is not its own, holds records past the group's committed offset, and
/// whose committed offset does not move, leaves and rejoins; that bumps the
/// generation and the leader assigns every partition afresh. A handler stuck longer
/// than that on another member only costs a needless rebalance.
struct Watchdog {
    topics: Vec<String>,
    timeout: Duration,
    next_check: Instant,
    /// Per partition not ours: the committed offset seen and since when.
    stalled: HashMap<Tp, (i64, Instant)>,
}

/// How often the watchdog looks.
const WATCH_EVERY: Duration = Duration::from_secs(5);

/// Most records taken from one partition queue per round, so partitions take turns.
const ROUND: usize = 256;

impl Worker {
    fn run(mut self, done: oneshot::Sender<()>) {
        let mut idle = false;
        loop {
            if self.shared.lock().closing {
                break;
            }
            if idle {
                self.wake.wait(Duration::from_millis(10));
            }
            let mut got = 0;
            match self.consumer.poll(Duration::ZERO) {
                None => {}
                Some(Ok(message)) => {
                    // A record fetched before its partition got a queue of its own.
                    let record = InRecord::from_message(&message);
                    drop(message);
                    self.queue(record);
                    got += 1;
                }
                Some(Err(error)) => {
                    // The next round waits in `poll` (nothing was received).
                    tracing::warn!(%error, "Kafka consumer error");
                }
            }
            self.forget_revoked();
            self.start_waiting();
            got += self.drain_queues();
            idle = got == 0;
            if self.last_commit.elapsed() >= self.commit_interval {
                self.commit(CommitMode::Async);
            }
            if Instant::now() >= self.watchdog.next_check {
                self.watch();
            }
        }
        self.settle_join();
        // Give everything up (waiting for what is in flight), commit, leave.
        let assigned: Vec<Tp> = self.shared.lock().partitions.keys().cloned().collect();
        self.consumer.context().revoke(&self.consumer, assigned);
        self.queues.clear();
        self.consumer.unsubscribe();
        drop(self.consumer);
        self.shared.lock().finished = true;
        let _ = done.send(());
    }

    /// Before leaving, lets a join in flight finish (up to `leave_wait`), so that the
    /// member leaves under the id the coordinator knows. On Tansu, a `JoinGroup` that
    /// is still being answered when its member leaves puts the member back as a
    /// phantom; when the phantom's session expires, the group keeps its old
    /// assignment and the phantom's partitions are read by nobody.
    fn settle_join(&mut self) {
        let deadline = Instant::now() + self.leave_wait;
        while !self.shared.lock().assigned && Instant::now() < deadline {
            if let Some(Ok(message)) = self.consumer.poll(Duration::from_millis(10)) {
                // Closing: nothing more is handed out; the record stays uncommitted.
                drop(message);
            }
        }
    }

    /// See [`Watchdog`].
    fn watch(&mut self) {
        let now = Instant::now();
        self.watchdog.next_check = now + WATCH_EVERY;
        if self.watchdog.timeout.is_zero() {
            return;
        }
        let ours: HashSet<Tp> = self.shared.lock().partitions.keys().cloned().collect();
        let mut tpl = TopicPartitionList::new();
        let mut ends: HashMap<Tp, i64> = HashMap::new();
        for topic in &self.watchdog.topics {
            let Ok(metadata) = self.consumer.fetch_metadata(Some(topic), Duration::from_secs(5))
            else {
                return;
            };
            for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
                let tp: Tp = (Arc::from(topic.as_str()), partition.id());
                if ours.contains(&tp) {
                    continue;
                }
                let Ok((low, high)) =
                    self.consumer.fetch_watermarks(topic, partition.id(), Duration::from_secs(5))
                else {
                    return;
                };
                if high > low {
                    ends.insert(tp.clone(), high);
                    tpl.add_partition(topic, partition.id());
                }
            }
        }
        if tpl.count() == 0 {
            self.watchdog.stalled.clear();
            return;
        }
        let Ok(committed) = self.consumer.committed_offsets(tpl, Duration::from_secs(5)) else {
            return;
        };
        let mut stalled = HashMap::new();
        let mut orphan = None;
        for element in committed.elements() {
            let tp: Tp = (Arc::from(element.topic()), element.partition());
            let end = ends.get(&tp).copied().unwrap_or(0);
            let behind = match element.offset() {
                Offset::Offset(n) => n < end,
                // Never committed: only a group reading from the earliest is behind.
                _ => self.start == StartFrom::Earliest,
            };
            if !behind {
                continue;
            }
            let seen = match element.offset() {
                Offset::Offset(n) => n,
                _ => -1,
            };
            let since = match self.watchdog.stalled.get(&tp) {
                Some((before, since)) if *before == seen => *since,
                _ => now,
            };
            if now.duration_since(since) >= self.watchdog.timeout {
                orphan = Some((tp.clone(), seen));
            }
            stalled.insert(tp, (seen, since));
        }
        self.watchdog.stalled = stalled;
        if let Some((tp, committed)) = orphan {
            tracing::warn!(
                topic = %tp.0,
                partition = tp.1,
                committed,
                timeout = ?self.watchdog.timeout,
                "a partition with unread records is read by no member; rejoining the group so it is assigned again"
            );
            metrics::counter!("keel_kafka_orphan_rejoins_total").increment(1);
            self.watchdog.stalled.clear();
            self.consumer.unsubscribe();
            let topics: Vec<&str> = self.watchdog.topics.iter().map(String::as_str).collect();
            if let Err(error) = self.consumer.subscribe(&topics) {
                tracing::warn!(%error, "could not subscribe again");
            }
        }
    }

    /// Takes records from the partition queues whose buffers have room.
    fn drain_queues(&mut self) -> usize {
        let room: Vec<(Tp, usize)> = {
            let state = self.shared.lock();
            self.queues
                .iter()
                .filter_map(|(tp, (epoch, _))| {
                    let part = state.partitions.get(tp).filter(|p| p.epoch == *epoch)?;
                    let room = self.buffer.saturating_sub(part.entries.len()).min(ROUND);
                    (room > 0).then(|| (tp.clone(), room))
                })
                .collect()
        };
        let mut got = 0;
        for (tp, room) in room {
            let mut records = Vec::new();
            if let Some((_, queue)) = self.queues.get(&tp) {
                while records.len() < room {
                    match queue.poll(Duration::ZERO) {
                        None => break,
                        Some(Ok(message)) => records.push(InRecord::from_message(&message)),
                        Some(Err(error)) => {
                            tracing::warn!(%error, topic = %tp.0, partition = tp.1, "Kafka fetch error");
                            break;
                        }
                    }
                }
            }
            got += records.len();
            for record in records {
                self.queue(record);
            }
        }
        got
    }

    /// Drops the queues of partitions given up (or assigned anew) since.
    fn forget_revoked(&mut self) {
        let state = self.shared.lock();
        self.queues.retain(|tp, (epoch, _)| {
            state.partitions.get(tp).is_some_and(|p| p.epoch == *epoch && p.phase == Phase::Active)
        });
    }

    fn queue(&mut self, record: InRecord) {
        let tp: Tp = (Arc::from(record.topic.as_str()), record.partition);
        let wanted = self.shared.wants(&record);
        let key = record.ordering_key();
        let mut state = self.shared.lock();
        let Some(part) = state.partitions.get_mut(&tp) else { return };
        if part.phase != Phase::Active || record.offset < part.next_offset {
            // Not ours yet (or any more), or before the start (a rewound fetch).
            return;
        }
        part.next_offset = record.offset + 1;
        let status =
            if wanted { Status::Ready { not_before: None, attempt: 1 } } else { Status::Settled };
        part.entries.push_back(Entry { record: Arc::new(record), key, status });
        drop(state);
        if wanted {
            self.shared.ready.notify_one();
        }
    }

    /// Starts the partitions whose hand-off grace is over: reads the committed offset
    /// afresh, gives the partition a queue of its own, seeks and resumes.
    fn start_waiting(&mut self) {
        let now = Instant::now();
        let due: Vec<(Tp, u64)> = self
            .shared
            .lock()
            .partitions
            .iter()
            .filter(|(_, p)| matches!(p.phase, Phase::Waiting(at) if at <= now))
            .map(|(tp, p)| (tp.clone(), p.epoch))
            .collect();
        if due.is_empty() {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for (tp, _) in &due {
            tpl.add_partition(&tp.0, tp.1);
        }
        let committed = match self.consumer.committed_offsets(tpl, Duration::from_secs(10)) {
            Ok(committed) => committed,
            Err(error) => {
                tracing::warn!(%error, "could not read committed offsets; trying again");
                return;
            }
        };
        let mut resume = TopicPartitionList::new();
        for (tp, epoch) in due {
            let offset =
                committed.find_partition(&tp.0, tp.1).map(|e| e.offset()).and_then(|o| match o {
                    Offset::Offset(n) if n >= 0 => Some(n),
                    _ => None,
                });
            let Some(mut queue) = self.consumer.split_partition_queue(&tp.0, tp.1) else {
                tracing::warn!(topic = %tp.0, partition = tp.1, "no partition queue; trying again");
                continue;
            };
            let wake = Arc::clone(&self.wake);
            queue.set_nonempty_callback(move || wake.ring());
            // Fetch from up to `rewind` records earlier, so that the batch holding the
            // committed offset comes whole; `queue` skips what lies before it.
            let seek_to = match (offset, self.start) {
                (Some(n), _) => Offset::Offset(n.saturating_sub(self.rewind).max(0)),
                (None, StartFrom::Earliest) => Offset::Beginning,
                (None, StartFrom::Latest) => Offset::End,
            };
            if let Err(error) = self.consumer.seek(&tp.0, tp.1, seek_to, Duration::from_secs(10)) {
                tracing::warn!(%error, topic = %tp.0, partition = tp.1, "could not seek; trying again");
                continue;
            }
            let mut state = self.shared.lock();
            let Some(part) = state.partitions.get_mut(&tp).filter(|p| p.epoch == epoch) else {
                continue;
            };
            part.phase = Phase::Active;
            part.committed = offset.unwrap_or(-1);
            part.next_offset = offset.unwrap_or(-1);
            drop(state);
            self.queues.insert(tp.clone(), (epoch, queue));
            resume.add_partition(&tp.0, tp.1);
        }
        if resume.count() > 0 {
            tracing::debug!(?resume, "starting assigned partitions");
            if let Err(error) = self.consumer.resume(&resume) {
                tracing::warn!(%error, "could not resume assigned partitions");
            }
        }
    }

    /// Commits, per active partition, the offset after its settled prefix.
    fn commit(&mut self, mode: CommitMode) {
        self.last_commit = Instant::now();
        let mut tpl = TopicPartitionList::new();
        {
            let mut state = self.shared.lock();
            for (tp, part) in state.partitions.iter_mut() {
                if part.phase != Phase::Active {
                    continue;
                }
                if let Some(point) = part.commit_point().filter(|p| *p > part.committed)
                    && tpl.add_partition_offset(&tp.0, tp.1, Offset::Offset(point)).is_ok()
                {
                    part.committed = point;
                }
            }
        }
        if tpl.count() == 0 {
            return;
        }
        metrics::counter!("keel_kafka_commits_total").increment(1);
        if let Err(error) = self.consumer.commit(&tpl, mode) {
            tracing::warn!(%error, "offset commit failed");
        }
    }
}

/// A member of a consumer group on Kafka.
pub(crate) struct KafkaSubscription {
    shared: Arc<Shared>,
    done: Option<oneshot::Receiver<()>>,
}

impl std::fmt::Debug for KafkaSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSubscription").finish_non_exhaustive()
    }
}

impl KafkaSubscription {
    /// Joins the group: subscribes to `topics` and starts the member's thread.
    pub(crate) fn start(
        config: &KafkaConfig,
        spec: &SubscriptionSpec,
        topics: &[&str],
        sink: DeadLetterSink,
    ) -> Result<Self, BusError> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            ready: Notify::new(),
            settled: Condvar::new(),
            prefetch: usize::try_from(spec.prefetch.max(1)).unwrap_or(usize::MAX),
            types: spec.types.clone(),
            sink,
        });
        let reset = match spec.start {
            StartFrom::Earliest => "earliest",
            StartFrom::Latest => "latest",
        };
        let member = Member {
            shared: Arc::clone(&shared),
            grace: config.handoff_grace,
            revoke_timeout: config.revoke_timeout,
        };
        let consumer: BaseConsumer<Member> = config
            .member(&spec.group, reset)
            .create_with_context(member)
            .map_err(|e| from_kafka("creating the Kafka consumer", &e))?;
        consumer.subscribe(topics).map_err(|e| from_kafka("subscribing", &e))?;
        let wake = Arc::new(Wake::default());
        let mut consumer = consumer;
        let ring = Arc::clone(&wake);
        consumer.set_nonempty_callback(move || ring.ring());
        let worker = Worker {
            wake,
            consumer: Arc::new(consumer),
            queues: HashMap::new(),
            rewind: config.fetch_rewind,
            leave_wait: config.leave_wait,
            shared: Arc::clone(&shared),
            start: spec.start,
            buffer: config.buffer_per_partition.max(1),
            commit_interval: config.commit_interval,
            last_commit: Instant::now(),
            watchdog: Watchdog {
                topics: topics.iter().map(|t| (*t).to_owned()).collect(),
                timeout: config.orphan_timeout,
                next_check: Instant::now() + WATCH_EVERY,
                stalled: HashMap::new(),
            },
        };
        let (done_tx, done_rx) = oneshot::channel();
        std::thread::Builder::new()
            .name(format!("keel-kafka-{}", spec.group))
            .spawn(move || worker.run(done_tx))
            .map_err(|e| BusError::Backend(Box::new(e)))?;
        Ok(Self { shared, done: Some(done_rx) })
    }
}

#[async_trait]
impl Subscription for KafkaSubscription {
    async fn next(&mut self) -> Option<Result<Delivery, BusError>> {
        loop {
            let notified = self.shared.ready.notified();
            let taken = {
                let mut state = self.shared.lock();
                if state.closing || state.finished {
                    return None;
                }
                self.shared.take(&mut state)
            };
            let wake = match taken {
                Ok((record, settle, attempt)) => {
                    return Some(Ok(Delivery::new(record.decode(), attempt, Box::new(settle))));
                }
                Err(wake) => wake,
            };
            match wake {
                Some(at) => {
                    let at = tokio::time::Instant::from_std(at);
                    tokio::select! {
                        () = notified => {}
                        () = tokio::time::sleep_until(at) => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    async fn close(mut self: Box<Self>) -> Result<(), BusError> {
        self.shared.close();
        if let Some(done) = self.done.take() {
            let _ = done.await;
        }
        Ok(())
    }
}

impl Drop for KafkaSubscription {
    fn drop(&mut self) {
        self.shared.close();
    }
}
