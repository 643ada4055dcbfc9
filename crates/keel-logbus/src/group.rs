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
//!
//! Attempts survive a crash, so a message that kills the process is dead-lettered
//! after its consumer's `max_attempts` instead of coming back at attempt 1 for ever.
//! The lanes count the deliveries of this activation; an entry's `prior` adds those
//! before it. Two things are durable (`keel_bus_read_marks`, `keel_bus_attempts`),
//! neither written per first delivery: the feeder's *read mark*, stored (with the
//! checkpoint, in one transaction) before what it read can be handed out, and the
//! attempt number of each *redelivery* (attempt 2 on), stored before it is handed out.
//! After a crash, an event up to the old read mark with no record may have been handed
//! out once (`prior` 1: this over-counts events that were read ahead but not handed
//! out yet); one with a record was handed out at most at that attempt. A clean stop
//! (bus dropped, group retired) records what it knows instead ([`Stopped`]), so the
//! next activation counts exactly.
//!
//! Retried dead letters are loaded from their table while the group runs. A letter
//! settled here stays known (`settled_letters`) until every load that began before its
//! row was deleted or put back to rest has been taken in, so a stale load does not
//! hand it out again.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use keel_core::bus::{DeadLetter, DeadLetterId, Payload};
use keel_lanes::Lanes;
use keel_store::Cursor;
use tokio::time::Instant;

use crate::store::Attempts;

/// Where a message came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Origin {
    /// The log at `cursor`, at this offset of the group's current activation.
    Log { offset: u64, cursor: Cursor },
    /// A dead letter sent back by `retry` (its row stays until settled).
    Letter(DeadLetterId),
}

#[derive(Debug)]
struct Entry {
    payload: Arc<Payload>,
    origin: Origin,
    size: usize,
    /// Attempts before this activation (see the module docs).
    prior: u32,
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
        /// A redelivery of the log event at this cursor whose attempt is not stored
        /// yet: store it before handing it out.
        record: Option<Cursor>,
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

/// What a group fed here knew when it stopped cleanly, for the feeder to store.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Stopped {
    pub(crate) committed: Cursor,
    /// The highest attempt each unsettled event may have been handed out at, where
    /// more than is recorded.
    pub(crate) attempts: Vec<(Cursor, u32)>,
    /// The previous feeder's read mark, if it was still ahead of the checkpoint.
    pub(crate) window: Option<Cursor>,
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
    /// Retried letters settled here whose row a load may still return: the number of
    /// loads begun when the row was written, `None` while the write is under way.
    settled_letters: HashMap<DeadLetterId, Option<u64>>,
    /// Loads of retrying letters begun.
    letter_loads: u64,
    /// The previous feeder's read mark, if past the checkpoint: events up to it may
    /// have been handed out once without a record.
    window: Option<Cursor>,
    /// Attempt numbers stored for events after the checkpoint.
    recorded: HashMap<Cursor, u32>,
    /// Unsettled log events that may have been handed out: their cursor and highest
    /// attempt, by offset.
    tried: HashMap<u64, (Cursor, u32)>,
    /// Set by a clean [`Group::close`] of an active group.
    stopped: Option<Stopped>,
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
            settled_letters: HashMap::new(),
            letter_loads: 0,
            window: None,
            recorded: HashMap::new(),
            tried: HashMap::new(),
            stopped: None,
            empty_since: Some(Instant::now()),
        }
    }

    /// Starts feeding from the durable cursor `from`, with the attempts stored after it.
    pub(crate) fn activate(&mut self, from: Cursor, attempts: Attempts) {
        self.reset();
        self.active = true;
        self.committed = from;
        self.window = attempts.read_mark.filter(|mark| *mark > from);
        self.recorded = attempts.recorded.into_iter().filter(|(at, _)| *at > from).collect();
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
        self.window = None;
        self.recorded.clear();
        self.tried.clear();
    }

    /// Retires the group for good. If it was fed here, what it knew about attempts
    /// is kept for [`Group::take_stopped`].
    pub(crate) fn close(&mut self) {
        if self.closed {
            return;
        }
        if self.active {
            let attempts = self
                .tried
                .values()
                .filter(|(at, attempt)| self.recorded.get(at).is_none_or(|r| attempt > r))
                .copied()
                .collect();
            self.stopped =
                Some(Stopped { committed: self.committed, attempts, window: self.window });
        }
        self.deactivate();
        self.closed = true;
    }

    /// What a clean close left to store (once).
    pub(crate) fn take_stopped(&mut self) -> Option<Stopped> {
        self.stopped.take()
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
        let unrecorded = u32::from(self.window.is_some_and(|mark| cursor <= mark));
        let prior = self.recorded.get(&cursor).map_or(unrecorded, |r| (*r).max(unrecorded));
        if prior > 0 {
            self.tried.insert(offset, (cursor, prior));
        }
        let payload = Arc::new(payload);
        let origin = Origin::Log { offset, cursor };
        self.lanes
            .push(key(&payload), Entry { payload: Arc::clone(&payload), origin, size, prior });
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

    /// Starts a load of the retrying letters; its number, for [`Group::push_letters`].
    pub(crate) fn begin_letter_load(&mut self) -> u64 {
        let load = self.letter_loads;
        self.letter_loads += 1;
        load
    }

    /// Takes in the retrying letters that load number `load` found, except those held
    /// already and those settled since the load began; whether it took any.
    pub(crate) fn push_letters(&mut self, load: u64, letters: Vec<DeadLetter>) -> bool {
        // Written before this load began: the load saw their rows as they are now.
        self.settled_letters.retain(|_, written| written.is_none_or(|at| at > load));
        let mut any = false;
        for letter in letters {
            if self.settled_letters.contains_key(&letter.id)
                || !self.letters.insert(letter.id.clone())
            {
                continue;
            }
            let size = payload_size(&letter.payload);
            self.unsettled += 1;
            self.bytes += size;
            let payload = Arc::new(letter.payload);
            let origin = Origin::Letter(letter.id);
            let entry = Entry { payload: Arc::clone(&payload), origin, size, prior: 0 };
            self.lanes.push(key(&payload), entry);
            any = true;
        }
        any
    }

    /// The row of a letter settled here was deleted or put back to rest (`stored`), or
    /// that failed (then a later load may hand the letter out again).
    pub(crate) fn letter_written(&mut self, id: &DeadLetterId, stored: bool) {
        if stored {
            self.settled_letters.insert(id.clone(), Some(self.letter_loads));
        } else {
            self.settled_letters.remove(id);
        }
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
    /// offset, or note its letter as being settled (see [`Group::letter_written`]).
    fn finish(&mut self, entry: &Entry) {
        self.unsettled = self.unsettled.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(entry.size);
        match &entry.origin {
            Origin::Log { offset, .. } => {
                self.tried.remove(offset);
                self.mark_done(*offset);
            }
            Origin::Letter(id) => {
                self.letters.remove(id);
                self.settled_letters.insert(id.clone(), None);
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
            keel_lanes::Take::Delivery { id, attempt, item } => {
                let attempt = item.prior.saturating_add(attempt);
                let record = match &item.origin {
                    Origin::Log { offset, cursor } => {
                        self.tried.insert(*offset, (*cursor, attempt));
                        let stored = self.recorded.get(cursor).copied().unwrap_or(0);
                        (attempt >= 2 && attempt > stored).then_some(*cursor)
                    }
                    Origin::Letter(_) => None,
                };
                Take::Delivery {
                    payload: Arc::clone(&item.payload),
                    attempt,
                    id,
                    generation: self.generation,
                    record,
                }
            }
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

    /// The attempt of the event at `cursor` is stored.
    pub(crate) fn recorded_attempt(&mut self, generation: u64, cursor: Cursor, attempt: u32) {
        if generation == self.generation {
            let stored = self.recorded.entry(cursor).or_insert(0);
            *stored = (*stored).max(attempt);
        }
    }

    /// The checkpoint is stored at `cursor`, and the attempt records up to it deleted.
    pub(crate) fn forget_records_up_to(&mut self, cursor: Cursor) {
        self.recorded.retain(|at, _| *at > cursor);
    }

    /// Acks a delivery: the origin of a retried letter is returned so its row can be
    /// deleted (then report it with [`Group::letter_written`]). `None` when the
    /// delivery is no longer out (given back meanwhile).
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
        let Some(entry) = self.settle(generation, id) else { return false };
        if let Origin::Letter(letter) = &entry.origin {
            self.letter_written(letter, true);
        }
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
        take_recording(group, member).map(|(id, attempt, _)| (id, attempt))
    }

    fn take_recording(group: &mut Group, member: u64) -> Option<(u64, u32, Option<Cursor>)> {
        match group.take(member) {
            Take::Delivery { id, attempt, record, .. } => Some((id, attempt, record)),
            _ => None,
        }
    }

    fn letter(n: u8) -> DeadLetter {
        DeadLetter {
            id: DeadLetterId(format!("letter-{n}")),
            topic: "t".into(),
            group: "g".into(),
            reason: "r".into(),
            attempts: 1,
            dead_lettered_at: chrono::Utc::now(),
            payload: event("a"),
        }
    }

    #[test]
    fn the_cursor_moves_only_past_a_settled_prefix() {
        let mut group = Group::new(Vec::new());
        group.activate(at(0), Attempts::default());
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
        group.activate(at(0), Attempts::default());
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

    #[test]
    fn a_letter_being_settled_is_not_taken_in_again_from_a_stale_load() {
        let mut group = Group::new(Vec::new());
        group.activate(at(0), Attempts::default());
        group.join(1, 10);
        let load = group.begin_letter_load();
        assert!(group.push_letters(load, vec![letter(1)]));
        let (id, _) = take(&mut group, 1).expect("the retried letter");
        // Acked: its row is being deleted while loads go on.
        assert!(matches!(group.ack(group.generation(), id), Some(Origin::Letter(_))));
        let during = group.begin_letter_load();
        assert!(!group.push_letters(during, vec![letter(1)]), "taken in while deleted");
        group.letter_written(&letter(1).id, true);
        assert!(!group.push_letters(during, vec![letter(1)]), "a load begun before the delete");
        // A load begun after the delete cannot see the row: it is forgotten then.
        let after = group.begin_letter_load();
        assert!(!group.push_letters(after, Vec::new()));
        assert!(group.settled_letters.is_empty());
        // A failed delete leaves the row retrying: a later load hands it out again.
        let load = group.begin_letter_load();
        assert!(group.push_letters(load, vec![letter(2)]));
        let (id, _) = take(&mut group, 1).expect("the second letter");
        assert!(group.ack(group.generation(), id).is_some());
        group.letter_written(&letter(2).id, false);
        let load = group.begin_letter_load();
        assert!(group.push_letters(load, vec![letter(2)]));
    }

    #[test]
    fn attempts_go_on_from_what_is_stored() {
        let mut group = Group::new(Vec::new());
        let attempts = Attempts { read_mark: Some(at(3)), recorded: vec![(at(2), 3), (at(0), 9)] };
        group.activate(at(0), attempts);
        group.join(1, 10);
        for position in 1..=4 {
            group.push(event(&position.to_string()), at(position), 0);
        }
        let got: Vec<_> = (0..4).map(|_| take_recording(&mut group, 1).expect("one")).collect();
        let got: Vec<_> = got.into_iter().map(|(_, attempt, record)| (attempt, record)).collect();
        assert_eq!(
            got,
            [(2, Some(at(1))), (4, Some(at(2))), (2, Some(at(3))), (1, None)],
            "read before a crash: once more than recorded; after the read mark: first"
        );
        group.recorded_attempt(group.generation(), at(1), 2);
        group.push(event("5"), at(5), 0);
        let stopped = {
            group.close();
            group.take_stopped().expect("a clean stop")
        };
        let mut attempts = stopped.attempts;
        attempts.sort();
        assert_eq!(attempts, [(at(2), 4), (at(3), 2), (at(4), 1)], "what is not recorded yet");
        assert_eq!((stopped.committed, stopped.window), (at(0), Some(at(3))));
        assert!(group.take_stopped().is_none());
    }
}
