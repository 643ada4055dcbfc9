//! One consumer group of a topic: which of the topic's messages it still owes, in which
//! order it may hand them out, what its members hold, and its dead letters.
//!
//! Messages are queued in *lanes*: one lane per partition key, and a lane of its own for
//! every message without a key. Only the head of a lane is ever handed out, and the lane
//! stays *busy* until that head is settled (acked, dead-lettered, or nacked and its delay
//! has passed), which is what keeps order per key. `ready` lists the lanes whose head can
//! be handed out now, so taking a message and settling one are O(1) (O(log n) for nack
//! delays), never a scan.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use keel_core::bus::{BusError, DeadLetter, DeadLetterId, DeadLetterReason, Payload};
use tokio::sync::Notify;
use tokio::time::Instant;

/// Stand-in deadline for a nack delay too large to add to the clock.
const FAR_FUTURE: Duration = Duration::from_secs(60 * 60 * 24 * 365 * 30);

/// A message as a group holds it.
#[derive(Debug)]
struct Entry {
    msg: Arc<Payload>,
    /// Offset in the topic log; `None` for a dead letter sent back by `retry`, which
    /// belongs to this group alone and so does not hold back trimming of the log.
    offset: Option<u64>,
    /// How many times it has been handed out.
    attempts: u32,
}

impl Entry {
    fn key(&self) -> Option<&str> {
        match &*self.msg {
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

/// A lane whose head can be handed out now.
#[derive(Debug)]
enum Slot {
    Lane(Arc<str>),
    /// A message without a partition key: a lane of one, kept out of `lanes`.
    Solo(Entry),
}

/// A nacked message waiting for its delay (its lane, if keyed, stays busy meanwhile).
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
    lanes: HashMap<Arc<str>, Lane>,
    ready: VecDeque<Slot>,
    /// Ordered by ready-at instant; the `u64` makes keys unique.
    parked: BTreeMap<(Instant, u64), Parked>,
    in_flight: HashMap<u64, InFlight>,
    members: HashMap<u64, Member>,
    next_id: u64,
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
            lanes: HashMap::new(),
            ready: VecDeque::new(),
            parked: BTreeMap::new(),
            in_flight: HashMap::new(),
            members: HashMap::new(),
            next_id: 0,
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
            self.enqueue(Entry { msg: Arc::clone(msg), offset: Some(offset), attempts: 0 });
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

    /// Puts a message that was out back at the head of its lane, ready to go again.
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

    /// The message is done for this group: free its offset and its lane.
    fn finish(&mut self, entry: Entry, key: Option<Arc<str>>) {
        if let Some(offset) = entry.offset {
            self.mark_done(offset);
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

    /// Makes nacked messages whose delay has passed ready again.
    fn unpark(&mut self, now: Instant) {
        let mut any = false;
        while let Some(first) = self.parked.first_entry() {
            if first.key().0 > now {
                break;
            }
            let Parked { entry, key } = first.remove();
            self.requeue(entry, key);
            any = true;
        }
        if any {
            // Other members may have room for what just became ready.
            self.notify.notify_waiters();
        }
    }

    pub(crate) fn join(&mut self, member: u64, prefetch: usize) {
        self.members
            .insert(member, Member { prefetch: prefetch.max(1), deliveries: HashSet::new() });
    }

    /// Removes a member and gives everything it holds back to the group.
    pub(crate) fn leave(&mut self, member: u64) {
        let Some(left) = self.members.remove(&member) else { return };
        for id in left.deliveries {
            if let Some(out) = self.in_flight.remove(&id) {
                self.requeue(out.entry, out.key);
            }
        }
        self.notify.notify_waiters();
    }

    /// Hands the head of the first ready lane to `member`, if it has room for another.
    pub(crate) fn take(&mut self, member: u64) -> Take {
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
            let payload = Arc::clone(&entry.msg);
            let attempt = entry.attempts;
            self.in_flight.insert(id, InFlight { entry, key, member });
            if let Some(holder) = self.members.get_mut(&member) {
                holder.deliveries.insert(id);
            }
            return Take::Delivery { payload, attempt, id };
        }
        Take::Wait(self.parked.keys().next().map(|(at, _)| *at))
    }

    /// Settles delivery `id`. [`BusError::Closed`] if it is no longer out (its
    /// subscription was closed and it went back to the group).
    pub(crate) fn settle(
        &mut self,
        topic: &str,
        id: u64,
        outcome: Outcome,
    ) -> Result<(), BusError> {
        let Some(out) = self.in_flight.remove(&id) else { return Err(BusError::Closed) };
        if let Some(holder) = self.members.get_mut(&out.member) {
            holder.deliveries.remove(&id);
        }
        match outcome {
            Outcome::Ack => self.finish(out.entry, out.key),
            Outcome::Nack(delay) if delay.is_zero() => self.requeue(out.entry, out.key),
            Outcome::Nack(delay) => {
                let now = Instant::now();
                let at =
                    now.checked_add(delay).or_else(|| now.checked_add(FAR_FUTURE)).unwrap_or(now);
                let seq = self.next_id;
                self.next_id += 1;
                self.parked.insert((at, seq), Parked { entry: out.entry, key: out.key });
            }
            Outcome::DeadLetter(reason) => {
                self.dead.push_back(DeadLetter {
                    id: DeadLetterId(uuid::Uuid::now_v7().to_string()),
                    topic: topic.to_owned(),
                    group: self.name.clone(),
                    reason: reason.error,
                    attempts: reason.attempts,
                    dead_lettered_at: Utc::now(),
                    payload: Payload::clone(&out.entry.msg),
                });
                self.finish(out.entry, out.key);
            }
        }
        // A lane may be ready, the member has room again, or (nack) a waiting member
        // must re-arm its timer for an earlier deadline.
        self.notify.notify_waiters();
        Ok(())
    }

    pub(crate) fn dead_letters(&self, limit: usize) -> Vec<DeadLetter> {
        self.dead.iter().take(limit).cloned().collect()
    }

    /// Sends a dead letter back to this group (only) as a new message.
    pub(crate) fn retry(&mut self, id: &DeadLetterId) -> bool {
        let Some(position) = self.dead.iter().position(|d| &d.id == id) else { return false };
        let Some(letter) = self.dead.remove(position) else { return false };
        self.enqueue(Entry { msg: Arc::new(letter.payload), offset: None, attempts: 0 });
        self.notify.notify_waiters();
        true
    }

    pub(crate) fn purge(&mut self) -> u64 {
        let count = u64::try_from(self.dead.len()).unwrap_or(u64::MAX);
        self.dead.clear();
        count
    }
}
