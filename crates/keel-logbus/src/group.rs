//! One consumer group of a topic in this process: what it has read from the log and
//! not settled yet, in which order it may hand it out, what its members hold, and how
//! far its durable cursor may move.
//!
//! The order (lanes per partition key, the ready queue, nack delays, prefetch per
//! member) is [`keel_lanes::Lanes`], as in `keel-memory`'s groups; this file keeps what
//! is particular to a group fed from the log: generations, the read-ahead bound, retried
//! dead letters, and the committed cursor.
//!
//! Every event read gets an *offset* (a counter of this activation); `done` says which
//! offsets from `low` on are settled, and `committed` is the log cursor of the end of
//! the settled prefix: the only place the durable checkpoint may move to.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use keel_core::bus::{DeadLetterId, Payload};
use keel_lanes::Lanes;
use keel_store::Cursor;
use tokio::time::Instant;

/// Where a message came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Origin {
    /// The log, at this offset of the group's current activation.
    Log(u64),
    /// A dead letter sent back by `retry` (its row stays until settled).
    Letter(DeadLetterId),
}

#[derive(Debug)]
struct Entry {
    payload: Arc<Payload>,
    origin: Origin,
    size: usize,
}

/// The partition key of a message: its lane.
fn key(payload: &Payload) -> Option<&str> {
    match payload {
        Payload::Event(event) => event.partition_key(),
        Payload::Undecodable(_) => None,
    }
}

/// What [`Group::take`] found for a member.
#[derive(Debug)]
pub(crate) enum Take {
    Delivery {
        payload: Arc<Payload>,
        attempt: u32,
        id: u64,
        generation: u64,
    },
    /// Nothing now; look again when notified or at the instant given.
    Wait(Option<Instant>),
    /// The member has left, or the group is gone.
    Gone,
}

/// A delivery taken out of the group to be dead-lettered (see [`Group::begin_dead_letter`]).
#[derive(Debug)]
pub(crate) struct Leaving {
    pub(crate) payload: Arc<Payload>,
    pub(crate) origin: Origin,
}

#[derive(Debug)]
pub(crate) struct Group {
    pub(crate) types: Vec<String>,
    /// Whether this process feeds the group now (it holds the lease).
    active: bool,
    /// The group retired (bus dropped or idle): members get `Gone`.
    closed: bool,
    /// Bumped on every activation and deactivation; settles of older deliveries are void.
    generation: u64,
    low: u64,
    done: VecDeque<(Cursor, bool)>,
    committed: Cursor,
    lanes: Lanes<Entry>,
    /// Messages read and not settled, and their data size.
    unsettled: usize,
    bytes: usize,
    /// Retried dead letters currently held.
    letters: HashSet<DeadLetterId>,
    /// Since when the group has had no members.
    empty_since: Option<Instant>,
}

impl Group {
    pub(crate) fn new(types: Vec<String>) -> Self {
        Self {
            types,
            active: false,
            closed: false,
            generation: 0,
            low: 0,
            done: VecDeque::new(),
            committed: Cursor::START,
            lanes: Lanes::new(),
            unsettled: 0,
            bytes: 0,
            letters: HashSet::new(),
            empty_since: Some(Instant::now()),
        }
    }

    /// Starts feeding from the durable cursor `from`.
    pub(crate) fn activate(&mut self, from: Cursor) {
        self.reset();
        self.active = true;
        self.committed = from;
    }

    /// Stops feeding (lease lost or given up): everything read is forgotten; it is
    /// read again from the durable cursor by whoever feeds the group next.
    pub(crate) fn deactivate(&mut self) {
        self.reset();
        self.active = false;
    }

    fn reset(&mut self) {
        self.generation += 1;
        self.low = 0;
        self.done.clear();
        self.lanes.clear();
        self.unsettled = 0;
        self.bytes = 0;
        self.letters.clear();
    }

    pub(crate) fn close(&mut self) {
        self.deactivate();
        self.closed = true;
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed
    }

    #[cfg(test)]
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    pub(crate) fn committed(&self) -> Cursor {
        self.committed
    }

    /// How many more messages the feeder may read: the read-ahead window is twice what
    /// the members may hold (at least `min`), and at most `max_bytes` of data.
    pub(crate) fn room(&self, min: usize, max_bytes: usize) -> usize {
        if self.bytes >= max_bytes {
            return 0;
        }
        self.lanes.prefetch().saturating_mul(2).max(min).saturating_sub(self.unsettled)
    }

    /// Takes in an event read from the log at `cursor` (in log order).
    pub(crate) fn push(&mut self, payload: Payload, cursor: Cursor, size: usize) {
        let offset = self.low + u64::try_from(self.done.len()).unwrap_or(u64::MAX);
        self.done.push_back((cursor, false));
        self.unsettled += 1;
        self.bytes += size;
        let payload = Arc::new(payload);
        self.lanes.push(
            key(&payload),
            Entry { payload: Arc::clone(&payload), origin: Origin::Log(offset), size },
        );
    }

    /// Records that the log up to `cursor` holds nothing more for the group (filtered
    /// out, or settled without a delivery such as an undecodable row).
    pub(crate) fn pass(&mut self, cursor: Cursor) {
        let last = self.done.back().map_or(self.committed, |(c, _)| *c);
        if cursor > last {
            self.done.push_back((cursor, true));
            self.advance();
        }
    }

    /// Takes in a retried dead letter (unless it is held already).
    pub(crate) fn push_letter(&mut self, id: DeadLetterId, payload: Payload) {
        if !self.letters.insert(id.clone()) {
            return;
        }
        let size = payload_size(&payload);
        self.unsettled += 1;
        self.bytes += size;
        let payload = Arc::new(payload);
        self.lanes.push(
            key(&payload),
            Entry { payload: Arc::clone(&payload), origin: Origin::Letter(id), size },
        );
    }

    fn advance(&mut self) {
        while let Some((cursor, true)) = self.done.front().copied() {
            self.done.pop_front();
            self.low += 1;
            self.committed = self.committed.max(cursor);
        }
    }

    fn mark_done(&mut self, offset: u64) {
        let Some(index) = offset.checked_sub(self.low).and_then(|i| usize::try_from(i).ok()) else {
            return;
        };
        if let Some((_, flag)) = self.done.get_mut(index) {
            *flag = true;
        }
        self.advance();
    }

    /// The message is settled (its lane is freed already): count it out and free its
    /// offset or its letter.
    fn finish(&mut self, entry: &Entry) {
        self.unsettled = self.unsettled.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(entry.size);
        match &entry.origin {
            Origin::Log(offset) => self.mark_done(*offset),
            Origin::Letter(id) => {
                self.letters.remove(id);
            }
        }
    }

    pub(crate) fn join(&mut self, member: u64, prefetch: usize) {
        self.lanes.join(member, prefetch);
        self.empty_since = None;
    }

    /// Removes a member and gives back everything it holds.
    pub(crate) fn leave(&mut self, member: u64) {
        if !self.lanes.leave(member) {
            return;
        }
        if !self.lanes.has_members() {
            self.empty_since = Some(Instant::now());
        }
    }

    pub(crate) fn idle_since(&self) -> Option<Instant> {
        self.empty_since
    }

    /// Hands the head of the first ready lane to `member`, if it has room.
    pub(crate) fn take(&mut self, member: u64) -> Take {
        if self.closed {
            return Take::Gone;
        }
        self.lanes.unpark(Instant::now());
        match self.lanes.take(member) {
            keel_lanes::Take::Delivery { id, attempt, item } => Take::Delivery {
                payload: Arc::clone(&item.payload),
                attempt,
                id,
                generation: self.generation,
            },
            keel_lanes::Take::Wait(until) => Take::Wait(until),
            keel_lanes::Take::Gone => Take::Gone,
        }
    }

    /// Takes delivery `id` of `generation` out as settled for good; `None` when it is
    /// no longer out (given back meanwhile, or of an older generation).
    fn settle(&mut self, generation: u64, id: u64) -> Option<Entry> {
        if generation != self.generation {
            return None;
        }
        let entry = self.lanes.settle(id)?;
        self.finish(&entry);
        Some(entry)
    }

    /// Acks a delivery: the origin of a retried letter is returned so its row can be
    /// deleted. `None` when the delivery is no longer out (given back meanwhile).
    pub(crate) fn ack(&mut self, generation: u64, id: u64) -> Option<Origin> {
        self.settle(generation, id).map(|entry| entry.origin)
    }

    /// Gives a delivery back, to go again after `delay`; whether it was out.
    pub(crate) fn nack(&mut self, generation: u64, id: u64, delay: Duration) -> bool {
        generation == self.generation && self.lanes.nack(id, delay, Instant::now())
    }

    /// The payload and origin of a delivery about to be dead-lettered (it stays out,
    /// so its lane stays held, until [`Group::end_dead_letter`]).
    pub(crate) fn begin_dead_letter(&self, generation: u64, id: u64) -> Option<Leaving> {
        if generation != self.generation {
            return None;
        }
        let entry = self.lanes.get(id)?;
        Some(Leaving { payload: Arc::clone(&entry.payload), origin: entry.origin.clone() })
    }

    /// The dead letter is stored: the message is done for the group.
    pub(crate) fn end_dead_letter(&mut self, generation: u64, id: u64) -> bool {
        self.settle(generation, id).is_some()
    }
}

/// The size a payload counts for in the read-ahead bound.
pub(crate) fn payload_size(payload: &Payload) -> usize {
    match payload {
        Payload::Event(event) => event.data().map_or(0, bytes::Bytes::len) + 256,
        Payload::Undecodable(raw) => raw.body.len() + 256,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_core::CloudEvent;

    fn event(key: &str) -> Payload {
        Payload::Event(
            CloudEvent::builder("t", "/s").partition_key(key).build().expect("valid event"),
        )
    }

    fn at(position: i64) -> Cursor {
        Cursor { epoch: 0, txid: 0, position }
    }

    fn take(group: &mut Group, member: u64) -> Option<(u64, u32)> {
        match group.take(member) {
            Take::Delivery { id, attempt, .. } => Some((id, attempt)),
            _ => None,
        }
    }

    #[test]
    fn the_cursor_moves_only_past_a_settled_prefix() {
        let mut group = Group::new(Vec::new());
        group.activate(at(0));
        group.join(1, 10);
        group.push(event("a"), at(1), 0);
        group.push(event("b"), at(2), 0);
        group.pass(at(5));
        let first = take(&mut group, 1).expect("first");
        let second = take(&mut group, 1).expect("second");
        let generation = group.generation();
        assert!(group.ack(generation, second.0).is_some());
        assert_eq!(group.committed(), at(0), "the first is not settled");
        assert!(group.nack(generation, first.0, Duration::ZERO));
        assert_eq!(group.committed(), at(0));
        let again = take(&mut group, 1).expect("redelivered");
        assert_eq!(again.1, 2, "second attempt");
        assert!(group.ack(generation, again.0).is_some());
        assert_eq!(group.committed(), at(5));
    }

    #[test]
    fn a_key_waits_for_its_head_and_leavers_give_back() {
        let mut group = Group::new(Vec::new());
        group.activate(at(0));
        group.join(1, 10);
        group.join(2, 10);
        group.push(event("a"), at(1), 0);
        group.push(event("a"), at(2), 0);
        let (id, _) = take(&mut group, 1).expect("head of a");
        assert!(take(&mut group, 2).is_none(), "the key's next waits");
        group.leave(1);
        let (again, attempt) = take(&mut group, 2).expect("given back");
        assert_eq!(attempt, 2);
        assert!(group.ack(group.generation(), id).is_none(), "the old delivery is void");
        assert!(group.ack(group.generation(), again).is_some());
        assert!(take(&mut group, 2).is_some(), "then the key's next");
    }
}
