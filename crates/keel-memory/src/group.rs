//! One consumer group of a topic: which of the topic's messages it still owes, in which
//! order it may hand them out, what its members hold, and its dead letters.
//!
//! The order (key lanes, the ready queue, nack delays, prefetch per member) is
//! [`keel_lanes::Lanes`]; this file keeps the group's own concerns around it: the type
//! filter, which log offsets are finished with (so the topic may trim its log), the
//! dead letters, and waking members.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use keel_core::bus::{BusError, DeadLetter, DeadLetterId, DeadLetterReason, Payload};
use keel_lanes::Lanes;
use tokio::sync::Notify;
use tokio::time::Instant;

/// A message as a group holds it.
#[derive(Debug)]
struct Entry {
    msg: Arc<Payload>,
    /// Offset in the topic log; `None` for a dead letter sent back by `retry`, which
    /// belongs to this group alone and so does not hold back trimming of the log.
    offset: Option<u64>,
}

/// The partition key of a message: its lane.
fn key(msg: &Payload) -> Option<&str> {
    match msg {
        Payload::Event(event) => event.partition_key(),
        Payload::Undecodable(_) => None,
    }
}

/// What [`Group::take`] found for a member.
#[derive(Debug)]
pub(crate) enum Take {
    /// The payload is shared so it is copied out after the lock is released.
    Delivery { payload: Arc<Payload>, attempt: u32, id: u64 },
    /// Nothing to hand out now; try again when notified or at the instant given (the
    /// earliest end of a nack delay).
    Wait(Option<Instant>),
    /// The member has left the group.
    Gone,
}

/// How a delivery was settled.
#[derive(Debug)]
pub(crate) enum Outcome {
    Ack,
    Nack(Duration),
    DeadLetter(DeadLetterReason),
}

#[derive(Debug)]
pub(crate) struct Group {
    name: String,
    types: Vec<String>,
    /// Woken whenever a member may be able to take something (or the bus closed).
    notify: Arc<Notify>,
    /// The lowest log offset this group has not finished with.
    low: u64,
    /// Whether each log offset from `low` on is finished with (the front is always false).
    done: VecDeque<bool>,
    lanes: Lanes<Entry>,
    dead: VecDeque<DeadLetter>,
}

impl Group {
    /// A group that starts owing messages from log offset `low` on.
    pub(crate) fn new(name: String, types: Vec<String>, low: u64) -> Self {
        Self {
            name,
            types,
            notify: Arc::new(Notify::new()),
            low,
            done: VecDeque::new(),
            lanes: Lanes::new(),
            dead: VecDeque::new(),
        }
    }

    pub(crate) fn notify(&self) -> &Arc<Notify> {
        &self.notify
    }

    /// The lowest log offset the group still needs: the log may drop everything below.
    pub(crate) fn low(&self) -> u64 {
        self.low
    }

    /// The type filter is per group; the latest subscription's filter applies to messages
    /// published from then on.
    pub(crate) fn set_types(&mut self, types: &[String]) {
        if self.types != types {
            self.types = types.to_vec();
        }
    }

    fn wants(&self, msg: &Payload) -> bool {
        match msg {
            Payload::Event(event) => {
                self.types.is_empty() || self.types.iter().any(|t| t == event.ty())
            }
            // Undecodable messages have no trustworthy type; they go to the handler so it
            // can dead-letter them.
            Payload::Undecodable(_) => true,
        }
    }

    /// Takes in the log message at `offset` (offsets arrive in order, without gaps).
    /// Call [`Group::advance`] after a batch.
    pub(crate) fn push(&mut self, msg: &Arc<Payload>, offset: u64) {
        let wanted = self.wants(msg);
        self.done.push_back(!wanted);
        if wanted {
            self.lanes.push(key(msg), Entry { msg: Arc::clone(msg), offset: Some(offset) });
        }
    }

    /// Moves `low` past every finished offset at the front.
    pub(crate) fn advance(&mut self) {
        while self.done.front() == Some(&true) {
            self.done.pop_front();
            self.low += 1;
        }
    }

    fn mark_done(&mut self, offset: u64) {
        let Some(index) = offset.checked_sub(self.low).and_then(|i| usize::try_from(i).ok()) else {
            return;
        };
        if let Some(flag) = self.done.get_mut(index) {
            *flag = true;
        }
        self.advance();
    }

    /// The message is done for this group (its lane is freed already): free its offset.
    fn finish(&mut self, entry: &Entry) {
        if let Some(offset) = entry.offset {
            self.mark_done(offset);
        }
    }

    pub(crate) fn join(&mut self, member: u64, prefetch: usize) {
        self.lanes.join(member, prefetch);
    }

    /// Removes a member and gives everything it holds back to the group.
    pub(crate) fn leave(&mut self, member: u64) {
        if self.lanes.leave(member) {
            self.notify.notify_waiters();
        }
    }

    /// Hands the head of the first ready lane to `member`, if it has room for another.
    pub(crate) fn take(&mut self, member: u64) -> Take {
        if self.lanes.unpark(Instant::now()) {
            // Other members may have room for what just became ready.
            self.notify.notify_waiters();
        }
        match self.lanes.take(member) {
            keel_lanes::Take::Delivery { id, attempt, item } => {
                Take::Delivery { payload: Arc::clone(&item.msg), attempt, id }
            }
            keel_lanes::Take::Wait(until) => Take::Wait(until),
            keel_lanes::Take::Gone => Take::Gone,
        }
    }

    /// Settles delivery `id`. [`BusError::Closed`] if it is no longer out (its
    /// subscription was closed and it went back to the group).
    pub(crate) fn settle(
        &mut self,
        topic: &str,
        id: u64,
        outcome: Outcome,
    ) -> Result<(), BusError> {
        match outcome {
            Outcome::Ack => {
                let Some(entry) = self.lanes.settle(id) else { return Err(BusError::Closed) };
                self.finish(&entry);
            }
            Outcome::Nack(delay) => {
                if !self.lanes.nack(id, delay, Instant::now()) {
                    return Err(BusError::Closed);
                }
            }
            Outcome::DeadLetter(reason) => {
                let Some(entry) = self.lanes.settle(id) else { return Err(BusError::Closed) };
                self.dead.push_back(DeadLetter {
                    id: DeadLetterId(uuid::Uuid::now_v7().to_string()),
                    topic: topic.to_owned(),
                    group: self.name.clone(),
                    reason: reason.error,
                    attempts: reason.attempts,
                    dead_lettered_at: Utc::now(),
                    payload: Payload::clone(&entry.msg),
                });
                self.finish(&entry);
            }
        }
        // A lane may be ready, the member has room again, or (nack) a waiting member
        // must re-arm its timer for an earlier deadline.
        self.notify.notify_waiters();
        Ok(())
    }

    /// The group's backlog: messages it wants and has not settled, and its dead letters.
    pub(crate) fn depth(&self) -> (u64, u64) {
        let waiting = self.done.iter().filter(|done| !**done).count();
        let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        (count(waiting), count(self.dead.len()))
    }

    pub(crate) fn dead_letters(&self, limit: usize) -> Vec<DeadLetter> {
        self.dead.iter().take(limit).cloned().collect()
    }

    /// Sends a dead letter back to this group (only) as a new message.
    pub(crate) fn retry(&mut self, id: &DeadLetterId) -> bool {
        let Some(position) = self.dead.iter().position(|d| &d.id == id) else { return false };
        let Some(letter) = self.dead.remove(position) else { return false };
        let msg = Arc::new(letter.payload);
        self.lanes.push(key(&msg), Entry { msg: Arc::clone(&msg), offset: None });
        self.notify.notify_waiters();
        true
    }

    pub(crate) fn purge(&mut self) -> u64 {
        let count = u64::try_from(self.dead.len()).unwrap_or(u64::MAX);
        self.dead.clear();
        count
    }
}
