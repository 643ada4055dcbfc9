//! One topic: the retained log of its messages and its consumer groups, behind one lock.
//!
//! The log keeps every message some group (or a group yet to come, while there are none)
//! may still need; it is trimmed from the front once every group has finished with a
//! message. Publishing waits while the log holds `capacity` messages: back-pressure
//! instead of dropping anything.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use keel_core::bus::{BusError, DeadLetter, DeadLetterId, Payload, StartFrom, SubscriptionSpec};
use tokio::sync::Notify;

use crate::group::{Group, Outcome, Take};

pub(crate) struct Topic {
    name: String,
    capacity: usize,
    /// The bus-wide closed flag.
    closed: Arc<AtomicBool>,
    /// Woken when the log shrinks (or the bus closes), for publishers waiting for room.
    space: Notify,
    state: Mutex<State>,
}

/// Deliberately short: the log may hold many messages.
impl fmt::Debug for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Topic")
            .field("name", &self.name)
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct State {
    /// Offset of the first message in `log`.
    base: u64,
    log: VecDeque<Arc<Payload>>,
    groups: Vec<Group>,
    by_name: HashMap<String, usize>,
    next_member: u64,
}

impl State {
    fn end(&self) -> u64 {
        self.base + u64::try_from(self.log.len()).unwrap_or(u64::MAX)
    }

    /// Drops the messages every group has finished with; whether any went.
    fn trim(&mut self) -> bool {
        let Some(low) = self.groups.iter().map(Group::low).min() else { return false };
        let mut trimmed = false;
        while self.base < low && self.log.pop_front().is_some() {
            self.base += 1;
            trimmed = true;
        }
        trimmed
    }
}

/// A member's place in a topic: which group, and its member id.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Seat {
    pub(crate) group: usize,
    pub(crate) member: u64,
}

impl Topic {
    pub(crate) fn new(name: String, capacity: usize, closed: Arc<AtomicBool>) -> Self {
        let state = State {
            base: 0,
            log: VecDeque::new(),
            groups: Vec::new(),
            by_name: HashMap::new(),
            next_member: 0,
        };
        Self {
            name,
            capacity: capacity.max(1),
            closed,
            space: Notify::new(),
            state: Mutex::new(state),
        }
    }

    /// The state, even if a thread panicked while holding the lock: every mutation keeps
    /// the state consistent at each step that could panic, and the bus must not panic.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Appends `messages` in order once the log has room, and hands them to every group.
    /// A batch goes in whole as soon as the log is below capacity, so a batch larger than
    /// the capacity cannot wait forever.
    pub(crate) async fn publish(&self, messages: Vec<Payload>) -> Result<(), BusError> {
        loop {
            let notified = self.space.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if self.is_closed() {
                return Err(BusError::Closed);
            }
            {
                let mut state = self.lock();
                if state.log.len() < self.capacity {
                    self.append(&mut state, messages);
                    return Ok(());
                }
            }
            notified.await;
        }
    }

    /// Appends without waiting: [`BusError::Backpressure`] if the log is full.
    pub(crate) fn try_publish(&self, messages: Vec<Payload>) -> Result<(), BusError> {
        if self.is_closed() {
            return Err(BusError::Closed);
        }
        let mut state = self.lock();
        if state.log.len() >= self.capacity {
            return Err(BusError::Backpressure(format!(
                "topic `{}` holds {} unsettled messages",
                self.name, self.capacity
            )));
        }
        self.append(&mut state, messages);
        Ok(())
    }

    fn append(&self, state: &mut State, messages: Vec<Payload>) {
        for message in messages {
            let offset = state.end();
            let message = Arc::new(message);
            for group in &mut state.groups {
                group.push(&message, offset);
            }
            state.log.push_back(message);
        }
        for group in &mut state.groups {
            group.advance();
            group.notify().notify_waiters();
        }
        // Groups that filtered every message out are already past them.
        if state.trim() {
            self.space.notify_waiters();
        }
    }

    /// Adds a member to the group of `spec`, creating the group if new. Returns its seat
    /// and the group's wake-up signal.
    pub(crate) fn join(&self, spec: &SubscriptionSpec) -> (Seat, Arc<Notify>) {
        let mut state = self.lock();
        let group = match state.by_name.get(&spec.group) {
            Some(&index) => {
                if let Some(group) = state.groups.get_mut(index) {
                    group.set_types(&spec.types);
                }
                index
            }
            None => {
                let mut group = match spec.start {
                    StartFrom::Earliest => {
                        let mut group =
                            Group::new(spec.group.clone(), spec.types.clone(), state.base);
                        for (offset, message) in (state.base..).zip(&state.log) {
                            group.push(message, offset);
                        }
                        group
                    }
                    StartFrom::Latest => {
                        Group::new(spec.group.clone(), spec.types.clone(), state.end())
                    }
                };
                group.advance();
                let index = state.groups.len();
                state.groups.push(group);
                state.by_name.insert(spec.group.clone(), index);
                // A group starting at the end may free what was kept for groups to come.
                if state.trim() {
                    self.space.notify_waiters();
                }
                index
            }
        };
        let member = state.next_member;
        state.next_member += 1;
        let prefetch = usize::try_from(spec.prefetch).unwrap_or(usize::MAX);
        let notify = match state.groups.get_mut(group) {
            Some(g) => {
                g.join(member, prefetch);
                Arc::clone(g.notify())
            }
            None => Arc::new(Notify::new()),
        };
        (Seat { group, member }, notify)
    }

    pub(crate) fn leave(&self, seat: Seat) {
        let mut state = self.lock();
        if let Some(group) = state.groups.get_mut(seat.group) {
            group.leave(seat.member);
        }
    }

    pub(crate) fn take(&self, seat: Seat) -> Take {
        let mut state = self.lock();
        match state.groups.get_mut(seat.group) {
            Some(group) => group.take(seat.member),
            None => Take::Gone,
        }
    }

    pub(crate) fn settle(&self, group: usize, id: u64, outcome: Outcome) -> Result<(), BusError> {
        let mut state = self.lock();
        let Some(g) = state.groups.get_mut(group) else { return Err(BusError::Closed) };
        g.settle(&self.name, id, outcome)?;
        if state.trim() {
            self.space.notify_waiters();
        }
        Ok(())
    }

    /// How many messages the log retains.
    #[cfg(test)]
    pub(crate) fn retained(&self) -> usize {
        self.lock().log.len()
    }

    /// Wakes every waiting publisher and member so they notice the bus closed.
    pub(crate) fn wake_all(&self) {
        self.space.notify_waiters();
        let state = self.lock();
        for group in &state.groups {
            group.notify().notify_waiters();
        }
    }

    /// Runs `f` on the group named `group`, if it exists.
    fn with_group<T>(&self, group: &str, f: impl FnOnce(&mut Group) -> T) -> Option<T> {
        let mut state = self.lock();
        let index = *state.by_name.get(group)?;
        state.groups.get_mut(index).map(f)
    }

    pub(crate) fn dead_letters(&self, group: &str, limit: usize) -> Vec<DeadLetter> {
        self.with_group(group, |g| g.dead_letters(limit)).unwrap_or_default()
    }

    pub(crate) fn retry(&self, group: &str, id: &DeadLetterId) -> bool {
        self.with_group(group, |g| g.retry(id)).unwrap_or(false)
    }

    pub(crate) fn depth(&self, group: &str) -> Option<(u64, u64)> {
        self.with_group(group, |g| g.depth())
    }

    pub(crate) fn purge(&self, group: &str) -> u64 {
        self.with_group(group, Group::purge).unwrap_or(0)
    }
}
