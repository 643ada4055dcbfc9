//! The scheduler a consumer group hands its messages out with, shared by the bus
//! backends that keep their groups in process (`keel-memory`, and `keel-logbus` for the
//! groups it feeds from the log).
//!
//! Messages wait in *lanes*: one lane per partition key, and a lane of its own for every
//! message without a key. Only the head of a lane is handed out, and the lane stays
//! *busy* until that head is settled (acked, dead-lettered, or nacked and its delay has
//! passed), which is what keeps order per key. A ready queue lists the lanes whose head
//! can go now, so taking a message and settling one are O(1) (O(log n) for nack delays),
//! never a scan. Members take deliveries up to their prefetch; a member that leaves gives
//! what it holds back to the head of its lanes.
//!
//! [`Lanes<T>`] knows nothing of payloads, log offsets or dead letters: `T` is whatever
//! the group keeps per message, and the group does its own bookkeeping (done offsets,
//! cursors, dead letters) with the `T` that [`Lanes::settle`] hands back.
//!
//! # Layout
//! All in this file: [`Lanes`] and its [`Take`] answer, then the private records it keeps
//! (a lane, a ready slot, a parked nack, an in-flight delivery, a member), then the unit
//! tests.
#![warn(missing_docs)]

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

/// Stand-in deadline for a nack delay too large to add to the clock.
const FAR_FUTURE: Duration = Duration::from_secs(60 * 60 * 24 * 365 * 30);

/// The per-key scheduler of one consumer group; `T` is what the group keeps per message.
#[derive(Debug)]
pub struct Lanes<T> {
    lanes: HashMap<Arc<str>, Lane<T>>,
    ready: VecDeque<Slot<T>>,
    /// Ordered by ready-at instant; the `u64` makes keys unique.
    parked: BTreeMap<(Instant, u64), Parked<T>>,
    in_flight: HashMap<u64, InFlight<T>>,
    members: HashMap<u64, Member>,
    /// Delivery ids and parking sequence numbers.
    next_id: u64,
}

/// What [`Lanes::take`] found for a member.
#[derive(Debug)]
pub enum Take<'a, T> {
    /// The head of a lane, now out as delivery `id`; `attempt` counts from 1.
    Delivery {
        /// The delivery's id, to settle it with.
        id: u64,
        /// How many times the item has been handed out, this time included.
        attempt: u32,
        /// The item.
        item: &'a T,
    },
    /// Nothing to hand out now (the member is at its prefetch, or nothing is ready): try
    /// again when something is pushed or settled, or at the instant given (the earliest
    /// end of a nack delay).
    Wait(Option<Instant>),
    /// Not a member (never joined, or left).
    Gone,
}

impl<T> Default for Lanes<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Lanes<T> {
    /// An empty scheduler: no lanes, no members.
    pub fn new() -> Self {
        Self {
            lanes: HashMap::new(),
            ready: VecDeque::new(),
            parked: BTreeMap::new(),
            in_flight: HashMap::new(),
            members: HashMap::new(),
            next_id: 0,
        }
    }

    /// Queues a new message at the tail of the lane of `key` (a lane of its own if `None`).
    pub fn push(&mut self, key: Option<&str>, item: T) {
        let held = Held { item, attempts: 0 };
        let Some(key) = key else {
            self.ready.push_back(Slot::Solo(held));
            return;
        };
        if let Some(lane) = self.lanes.get_mut(key) {
            lane.queue.push_back(held);
            if !lane.busy && lane.queue.len() == 1 {
                self.ready.push_back(Slot::Lane(Arc::clone(&lane.key)));
            }
        } else {
            let key: Arc<str> = Arc::from(key);
            let lane = Lane { key: Arc::clone(&key), queue: VecDeque::from([held]), busy: false };
            self.lanes.insert(Arc::clone(&key), lane);
            self.ready.push_back(Slot::Lane(key));
        }
    }

    /// Adds (or replaces) a member that may hold up to `prefetch` deliveries (at least 1).
    pub fn join(&mut self, member: u64, prefetch: usize) {
        self.members
            .insert(member, Member { prefetch: prefetch.max(1), deliveries: HashSet::new() });
    }

    /// Removes a member: everything it holds goes back to the head of its lane, ready to
    /// go again. Whether it was a member.
    pub fn leave(&mut self, member: u64) -> bool {
        let Some(left) = self.members.remove(&member) else { return false };
        for id in left.deliveries {
            if let Some(out) = self.in_flight.remove(&id) {
                self.requeue(out.held, out.key);
            }
        }
        true
    }

    /// Whether any member has joined (and not left).
    pub fn has_members(&self) -> bool {
        !self.members.is_empty()
    }

    /// How many deliveries all members together may hold.
    pub fn prefetch(&self) -> usize {
        self.members.values().map(|m| m.prefetch).sum()
    }

    /// Makes nacked messages whose delay has passed by `now` ready again; whether any.
    /// Call it before [`Lanes::take`].
    pub fn unpark(&mut self, now: Instant) -> bool {
        let mut any = false;
        while let Some(first) = self.parked.first_entry() {
            if first.key().0 > now {
                break;
            }
            let Parked { held, key } = first.remove();
            self.requeue(held, key);
            any = true;
        }
        any
    }

    /// Hands the head of the first ready lane to `member`, if it has room for another.
    pub fn take(&mut self, member: u64) -> Take<'_, T> {
        let Some(holder) = self.members.get_mut(&member) else { return Take::Gone };
        if holder.deliveries.len() >= holder.prefetch {
            return Take::Wait(None);
        }
        while let Some(slot) = self.ready.pop_front() {
            let (mut held, key) = match slot {
                Slot::Solo(held) => (held, None),
                Slot::Lane(key) => {
                    let Some(lane) = self.lanes.get_mut(&key) else { continue };
                    if lane.busy {
                        continue;
                    }
                    let Some(held) = lane.queue.pop_front() else {
                        self.lanes.remove(&key);
                        continue;
                    };
                    lane.busy = true;
                    (held, Some(key))
                }
            };
            held.attempts = held.attempts.saturating_add(1);
            let id = self.next_id;
            self.next_id += 1;
            let attempt = held.attempts;
            holder.deliveries.insert(id);
            let out = self.in_flight.entry(id).or_insert(InFlight { held, key, member });
            return Take::Delivery { id, attempt, item: &out.held.item };
        }
        Take::Wait(self.parked.keys().next().map(|(at, _)| *at))
    }

    /// The message of delivery `id` while it is out.
    pub fn get(&self, id: u64) -> Option<&T> {
        self.in_flight.get(&id).map(|out| &out.held.item)
    }

    /// Delivery `id` is done for the group (acked or dead-lettered): frees its lane and
    /// hands its message back. `None` if it is not out (given back meanwhile).
    pub fn settle(&mut self, id: u64) -> Option<T> {
        let out = self.take_out(id)?;
        if let Some(key) = out.key
            && let Some(lane) = self.lanes.get_mut(&key)
        {
            lane.busy = false;
            if lane.queue.is_empty() {
                self.lanes.remove(&key);
            } else {
                self.ready.push_back(Slot::Lane(key));
            }
        }
        Some(out.held.item)
    }

    /// Gives delivery `id` back, to go again at the head of its lane after `delay` from
    /// `now` (its lane stays busy meanwhile); whether it was out.
    pub fn nack(&mut self, id: u64, delay: Duration, now: Instant) -> bool {
        let Some(out) = self.take_out(id) else { return false };
        if delay.is_zero() {
            self.requeue(out.held, out.key);
        } else {
            let at = now.checked_add(delay).or_else(|| now.checked_add(FAR_FUTURE)).unwrap_or(now);
            let seq = self.next_id;
            self.next_id += 1;
            self.parked.insert((at, seq), Parked { held: out.held, key: out.key });
        }
        true
    }

    /// Drops every message (queued, parked and out); the members stay, holding nothing.
    pub fn clear(&mut self) {
        self.lanes.clear();
        self.ready.clear();
        self.parked.clear();
        self.in_flight.clear();
        for member in self.members.values_mut() {
            member.deliveries.clear();
        }
    }

    fn take_out(&mut self, id: u64) -> Option<InFlight<T>> {
        let out = self.in_flight.remove(&id)?;
        if let Some(holder) = self.members.get_mut(&out.member) {
            holder.deliveries.remove(&id);
        }
        Some(out)
    }

    /// Puts a message that was out back at the head of its lane, ready to go again.
    fn requeue(&mut self, held: Held<T>, key: Option<Arc<str>>) {
        let Some(key) = key else {
            self.ready.push_back(Slot::Solo(held));
            return;
        };
        match self.lanes.get_mut(&key) {
            Some(lane) => {
                lane.queue.push_front(held);
                lane.busy = false;
            }
            None => {
                let lane =
                    Lane { key: Arc::clone(&key), queue: VecDeque::from([held]), busy: false };
                self.lanes.insert(Arc::clone(&key), lane);
            }
        }
        self.ready.push_back(Slot::Lane(key));
    }
}

/// A message as the scheduler holds it.
#[derive(Debug)]
struct Held<T> {
    item: T,
    /// How many times it has been handed out.
    attempts: u32,
}

#[derive(Debug)]
struct Lane<T> {
    key: Arc<str>,
    queue: VecDeque<Held<T>>,
    /// The previous head is out (in flight or waiting for its nack delay).
    busy: bool,
}

/// A lane whose head can be handed out now.
#[derive(Debug)]
enum Slot<T> {
    Lane(Arc<str>),
    /// A message without a partition key: a lane of one, kept out of `lanes`.
    Solo(Held<T>),
}

/// A nacked message waiting for its delay (its lane, if keyed, stays busy meanwhile).
#[derive(Debug)]
struct Parked<T> {
    held: Held<T>,
    key: Option<Arc<str>>,
}

#[derive(Debug)]
struct InFlight<T> {
    held: Held<T>,
    key: Option<Arc<str>>,
    member: u64,
}

#[derive(Debug)]
struct Member {
    prefetch: usize,
    deliveries: HashSet<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The delivery `member` gets now, as (id, attempt, item).
    fn take(lanes: &mut Lanes<&'static str>, member: u64) -> Option<(u64, u32, &'static str)> {
        match lanes.take(member) {
            Take::Delivery { id, attempt, item } => Some((id, attempt, *item)),
            Take::Wait(_) | Take::Gone => None,
        }
    }

    fn wait(lanes: &mut Lanes<&'static str>, member: u64) -> Option<Instant> {
        match lanes.take(member) {
            Take::Wait(until) => until,
            other => panic!("expected to wait, got {other:?}"),
        }
    }

    #[test]
    fn a_key_goes_in_order_and_waits_for_its_head() {
        let mut lanes = Lanes::new();
        lanes.join(1, 10);
        lanes.push(Some("a"), "a1");
        lanes.push(Some("a"), "a2");
        lanes.push(Some("b"), "b1");
        lanes.push(None, "solo");
        let (a1, attempt, item) = take(&mut lanes, 1).expect("head of a");
        assert_eq!((attempt, item), (1, "a1"));
        assert_eq!(take(&mut lanes, 1).map(|t| t.2), Some("b1"));
        assert_eq!(take(&mut lanes, 1).map(|t| t.2), Some("solo"));
        assert_eq!(wait(&mut lanes, 1), None, "a2 waits for a1");
        assert_eq!(lanes.get(a1), Some(&"a1"));
        assert_eq!(lanes.settle(a1), Some("a1"));
        assert_eq!(lanes.settle(a1), None, "settled once");
        assert_eq!(take(&mut lanes, 1).map(|t| t.2), Some("a2"));
    }

    #[test]
    fn a_member_holds_at_most_its_prefetch() {
        let mut lanes = Lanes::new();
        lanes.join(1, 2);
        lanes.join(2, 0);
        for item in ["x", "y", "z", "w"] {
            lanes.push(None, item);
        }
        assert_eq!(lanes.prefetch(), 3, "a prefetch of 0 counts as 1");
        let (x, _, _) = take(&mut lanes, 1).expect("x");
        assert!(take(&mut lanes, 1).is_some());
        assert_eq!(wait(&mut lanes, 1), None, "full");
        assert!(take(&mut lanes, 2).is_some());
        assert_eq!(wait(&mut lanes, 2), None, "full at 1");
        assert!(lanes.settle(x).is_some());
        assert_eq!(take(&mut lanes, 1).map(|t| t.2), Some("w"));
        assert!(matches!(lanes.take(3), Take::Gone));
    }

    #[test]
    fn nacked_messages_come_back_in_order_of_their_delay() {
        let now = Instant::now();
        let mut lanes = Lanes::new();
        lanes.join(1, 10);
        lanes.push(Some("a"), "a1");
        lanes.push(Some("a"), "a2");
        lanes.push(None, "solo");
        let (a1, _, _) = take(&mut lanes, 1).expect("a1");
        let (solo, _, _) = take(&mut lanes, 1).expect("solo");
        assert!(lanes.nack(a1, Duration::from_secs(20), now));
        assert!(lanes.nack(solo, Duration::from_secs(10), now));
        assert!(!lanes.nack(solo, Duration::ZERO, now), "no longer out");
        assert_eq!(wait(&mut lanes, 1), Some(now + Duration::from_secs(10)), "a2 waits too");
        assert!(!lanes.unpark(now + Duration::from_secs(9)));
        assert!(lanes.unpark(now + Duration::from_secs(10)));
        assert_eq!(take(&mut lanes, 1).map(|t| (t.1, t.2)), Some((2, "solo")));
        assert_eq!(wait(&mut lanes, 1), Some(now + Duration::from_secs(20)));
        assert!(lanes.unpark(now + Duration::from_secs(20)));
        let (again, attempt, item) = take(&mut lanes, 1).expect("a1 again, before a2");
        assert_eq!((attempt, item), (2, "a1"));
        assert!(lanes.nack(again, Duration::ZERO, now));
        assert_eq!(take(&mut lanes, 1).map(|t| (t.1, t.2)), Some((3, "a1")), "a zero delay");
    }

    #[test]
    fn a_delay_too_large_for_the_clock_still_parks() {
        let now = Instant::now();
        let mut lanes = Lanes::new();
        lanes.join(1, 1);
        lanes.push(None, "x");
        let (x, _, _) = take(&mut lanes, 1).expect("x");
        assert!(lanes.nack(x, Duration::MAX, now));
        assert!(wait(&mut lanes, 1).is_some_and(|at| at > now));
    }

    #[test]
    fn a_leaver_gives_its_deliveries_back_at_the_head_of_their_lanes() {
        let mut lanes = Lanes::new();
        lanes.join(1, 10);
        lanes.join(2, 10);
        lanes.push(Some("a"), "a1");
        lanes.push(Some("a"), "a2");
        lanes.push(Some("b"), "b1");
        let (a1, _, _) = take(&mut lanes, 1).expect("a1");
        let (b1, _, _) = take(&mut lanes, 1).expect("b1");
        assert_eq!(wait(&mut lanes, 2), None, "a2 waits for a1");
        assert!(lanes.leave(1));
        assert!(!lanes.leave(1), "left already");
        assert!(matches!(lanes.take(1), Take::Gone));
        assert_eq!(lanes.settle(a1), None, "the old delivery is void");
        assert_eq!(lanes.get(b1), None);
        let mut again = [take(&mut lanes, 2).expect("one back"), take(&mut lanes, 2).expect("two")];
        again.sort_by_key(|t| t.2);
        assert_eq!(again.iter().map(|t| (t.1, t.2)).collect::<Vec<_>>(), [(2, "a1"), (2, "b1")]);
        assert_eq!(wait(&mut lanes, 2), None, "a2 still waits");
        assert_eq!(lanes.settle(again[0].0), Some("a1"));
        assert_eq!(take(&mut lanes, 2).map(|t| t.2), Some("a2"));
    }

    #[test]
    fn clearing_keeps_the_members() {
        let now = Instant::now();
        let mut lanes = Lanes::new();
        lanes.join(1, 1);
        lanes.push(Some("a"), "a1");
        lanes.push(None, "x");
        let (a1, _, _) = take(&mut lanes, 1).expect("a1");
        lanes.clear();
        assert!(lanes.has_members());
        assert_eq!(lanes.settle(a1), None);
        assert!(!lanes.unpark(now + Duration::from_secs(1)));
        assert_eq!(wait(&mut lanes, 1), None, "nothing left, and room again");
        lanes.push(Some("a"), "a2");
        assert_eq!(take(&mut lanes, 1).map(|t| t.2), Some("a2"));
    }
}
