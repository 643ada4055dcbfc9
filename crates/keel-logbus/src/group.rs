//! One consumer group of a topic in this process: what it has read from the log and
//! not settled yet, in which order it may hand it out, what its members hold, and how
//! far its durable cursor may move.
//!
//! Messages wait in *lanes*, one per partition key (a message without a key is a lane
//! of its own). Only the head of a lane is handed out, and the lane stays busy until
//! that head is settled (acked, dead-lettered, or nacked and its delay has passed):
//! that keeps order per key. `ready` lists the lanes whose head can go now. The same
//! design as `keel-memory`'s groups, fed from the log instead of a topic buffer.
//!
//! Every event read gets an *offset* (a counter of this activation); `done` says which
//! offsets from `low` on are settled, and `committed` is the log cursor of the end of
//! the settled prefix: the only place the durable checkpoint may move to.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use keel_core::bus::{DeadLetterId, Payload};
use keel_store::Cursor;
use tokio::time::Instant;

/// Stand-in deadline for a nack delay too large to add to the clock.
const FAR_FUTURE: Duration = Duration::from_secs(60 * 60 * 24 * 365 * 30);

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
    attempts: u32,
    size: usize,
}

impl Entry {
    fn key(&self) -> Option<&str> {
        match &*self.payload {
            Payload::Event(event) => event.partition_key(),
            Payload::Undecodable(_) => None,
        }
    }
}

#[derive(Debug)]
struct Lane {
    key: Arc<str>,
    queue: VecDeque<Entry>,
    /// The previous head is out (in flight or waiting for its nack delay).
    busy: bool,
}

#[derive(Debug)]
enum Slot {
    Lane(Arc<str>),
    Solo(Entry),
}

#[derive(Debug)]
struct Parked {
    entry: Entry,
    key: Option<Arc<str>>,
}

#[derive(Debug)]
struct InFlight {
    entry: Entry,
    key: Option<Arc<str>>,
    member: u64,
}

#[derive(Debug)]
struct Member {
    prefetch: usize,
    deliveries: HashSet<u64>,
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
    lanes: HashMap<Arc<str>, Lane>,
    ready: VecDeque<Slot>,
    parked: BTreeMap<(Instant, u64), Parked>,
    in_flight: HashMap<u64, InFlight>,
    members: HashMap<u64, Member>,
    next_id: u64,
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
            lanes: HashMap::new(),
            ready: VecDeque::new(),
            parked: BTreeMap::new(),
            in_flight: HashMap::new(),
            members: HashMap::new(),
            next_id: 0,
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
        self.ready.clear();
        self.parked.clear();
        self.in_flight.clear();
        for member in self.members.values_mut() {
            member.deliveries.clear();
        }
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
        let prefetch: usize = self.members.values().map(|m| m.prefetch).sum();
        prefetch.saturating_mul(2).max(min).saturating_sub(self.unsettled)
    }

    /// Takes in an event read from the log at `cursor` (in log order).
    pub(crate) fn push(&mut self, payload: Payload, cursor: Cursor, size: usize) {
        let offset = self.low + u64::try_from(self.done.len()).unwrap_or(u64::MAX);
        self.done.push_back((cursor, false));
        self.unsettled += 1;
        self.bytes += size;
        self.enqueue(Entry {
            payload: Arc::new(payload),
            origin: Origin::Log(offset),
            attempts: 0,
            size,
        });
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
        self.enqueue(Entry {
            payload: Arc::new(payload),
            origin: Origin::Letter(id),
            attempts: 0,
            size,
        });
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

    fn enqueue(&mut self, entry: Entry) {
        let Some(key) = entry.key() else {
            self.ready.push_back(Slot::Solo(entry));
            return;
        };
        if let Some(lane) = self.lanes.get_mut(key) {
            lane.queue.push_back(entry);
            if !lane.busy && lane.queue.len() == 1 {
                self.ready.push_back(Slot::Lane(Arc::clone(&lane.key)));
            }
        } else {
            let key: Arc<str> = Arc::from(key);
            let lane = Lane { key: Arc::clone(&key), queue: VecDeque::from([entry]), busy: false };
            self.lanes.insert(Arc::clone(&key), lane);
            self.ready.push_back(Slot::Lane(key));
        }
    }

    fn requeue(&mut self, entry: Entry, key: Option<Arc<str>>) {
        let Some(key) = key else {
            self.ready.push_back(Slot::Solo(entry));
            return;
        };
        match self.lanes.get_mut(&key) {
            Some(lane) => {
                lane.queue.push_front(entry);
                lane.busy = false;
            }
            None => {
                let lane =
                    Lane { key: Arc::clone(&key), queue: VecDeque::from([entry]), busy: false };
                self.lanes.insert(Arc::clone(&key), lane);
            }
        }
        self.ready.push_back(Slot::Lane(key));
    }

    fn finish(&mut self, entry: Entry, key: Option<Arc<str>>) {
        self.unsettled = self.unsettled.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(entry.size);
        match entry.origin {
            Origin::Log(offset) => self.mark_done(offset),
            Origin::Letter(id) => {
                self.letters.remove(&id);
            }
        }
        let Some(key) = key else { return };
        let Some(lane) = self.lanes.get_mut(&key) else { return };
        lane.busy = false;
        if lane.queue.is_empty() {
            self.lanes.remove(&key);
        } else {
            self.ready.push_back(Slot::Lane(key));
        }
    }

    /// Makes nacked messages whose delay has passed ready again; whether any.
    fn unpark(&mut self, now: Instant) -> bool {
        let mut any = false;
        while let Some(first) = self.parked.first_entry() {
            if first.key().0 > now {
                break;
            }
            let Parked { entry, key } = first.remove();
            self.requeue(entry, key);
            any = true;
        }
        any
    }

    pub(crate) fn join(&mut self, member: u64, prefetch: usize) {
        self.members
            .insert(member, Member { prefetch: prefetch.max(1), deliveries: HashSet::new() });
        self.empty_since = None;
    }

    /// Removes a member and gives back everything it holds.
    pub(crate) fn leave(&mut self, member: u64) {
        let Some(left) = self.members.remove(&member) else { return };
        for id in left.deliveries {
            if let Some(out) = self.in_flight.remove(&id) {
                self.requeue(out.entry, out.key);
            }
        }
        if self.members.is_empty() {
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
        self.unpark(Instant::now());
        let Some(holder) = self.members.get(&member) else { return Take::Gone };
        if holder.deliveries.len() >= holder.prefetch {
            return Take::Wait(None);
        }
        while let Some(slot) = self.ready.pop_front() {
            let (mut entry, key) = match slot {
                Slot::Solo(entry) => (entry, None),
                Slot::Lane(key) => {
                    let Some(lane) = self.lanes.get_mut(&key) else { continue };
                    if lane.busy {
                        continue;
                    }
                    let Some(entry) = lane.queue.pop_front() else {
                        self.lanes.remove(&key);
                        continue;
                    };
                    lane.busy = true;
                    (entry, Some(key))
                }
            };
            entry.attempts = entry.attempts.saturating_add(1);
            let id = self.next_id;
            self.next_id += 1;
            let payload = Arc::clone(&entry.payload);
            let attempt = entry.attempts;
            self.in_flight.insert(id, InFlight { entry, key, member });
            if let Some(holder) = self.members.get_mut(&member) {
                holder.deliveries.insert(id);
            }
            return Take::Delivery { payload, attempt, id, generation: self.generation };
        }
        Take::Wait(self.parked.keys().next().map(|(at, _)| *at))
    }

    fn take_out(&mut self, generation: u64, id: u64) -> Option<InFlight> {
        if generation != self.generation {
            return None;
        }
        let out = self.in_flight.remove(&id)?;
        if let Some(holder) = self.members.get_mut(&out.member) {
            holder.deliveries.remove(&id);
        }
        Some(out)
    }

    /// Acks a delivery: the origin of a retried letter is returned so its row can be
    /// deleted. `None` when the delivery is no longer out (given back meanwhile).
    pub(crate) fn ack(&mut self, generation: u64, id: u64) -> Option<Origin> {
        let out = self.take_out(generation, id)?;
        let origin = out.entry.origin.clone();
        self.finish(out.entry, out.key);
        Some(origin)
    }

    /// Gives a delivery back, to go again after `delay`; whether it was out.
    pub(crate) fn nack(&mut self, generation: u64, id: u64, delay: Duration) -> bool {
        let Some(out) = self.take_out(generation, id) else { return false };
        if delay.is_zero() {
            self.requeue(out.entry, out.key);
        } else {
            let now = Instant::now();
            let at = now.checked_add(delay).or_else(|| now.checked_add(FAR_FUTURE)).unwrap_or(now);
            let seq = self.next_id;
            self.next_id += 1;
            self.parked.insert((at, seq), Parked { entry: out.entry, key: out.key });
        }
        true
    }

    /// The payload and origin of a delivery about to be dead-lettered (it stays out,
    /// so its lane stays held, until [`Group::end_dead_letter`]).
    pub(crate) fn begin_dead_letter(&self, generation: u64, id: u64) -> Option<Leaving> {
        if generation != self.generation {
            return None;
        }
        let out = self.in_flight.get(&id)?;
        Some(Leaving { payload: Arc::clone(&out.entry.payload), origin: out.entry.origin.clone() })
    }

    /// The dead letter is stored: the message is done for the group.
    pub(crate) fn end_dead_letter(&mut self, generation: u64, id: u64) -> bool {
        let Some(out) = self.take_out(generation, id) else { return false };
        self.finish(out.entry, out.key);
        true
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
