//! The saga: a state machine keyed by a correlation id, fed input events, deciding
//! steps (events to append, timers to schedule or cancel).

use keel_core::EventSet;
use keel_timers::Due;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// A saga (process manager). Its state is [`Default`] before its first input;
/// [`handle`](Saga::handle) records an input in the state and decides the steps that
/// follow from what the state has now seen. The state is stored as JSON (serde).
///
/// **Order and duplicates.** Inputs arrive in any order and more than once (a
/// redelivery in another order, `keel dlq retry`, two topics consumed apart). Write
/// the state as *what has been seen* (flags or sets, never a single "current step"
/// that assumes an order) plus *what has been done* (the steps already decided), and
/// decide each step from those, once: then every order of the same inputs ends in the
/// same state, and a duplicate changes nothing. See the crate docs for an example.
pub trait Saga: Default + Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The saga's name: the key of its rows (with the correlation id) and the prefix
    /// of its timer keys. Never rename a saga that has instances.
    const NAME: &'static str;
    /// The bus topics its inputs arrive on (one subscription each).
    const TOPICS: &'static [&'static str];
    /// The topic its timer messages are published on (its `topic` extension); it
    /// should be one of [`TOPICS`](Saga::TOPICS), or the saga never hears its timeouts.
    const TIMER_TOPIC: &'static str;

    /// The events the saga consumes (its timers' messages among them): one
    /// [`keel_core::Event`] type, or several gathered in an enum (see
    /// `keel_aggregate::event_set!`).
    type Input: EventSet;
    /// The events the saga appends.
    type Output: EventSet;

    /// The saga instance an input belongs to.
    fn correlation_id(input: &Self::Input) -> &str;

    /// Whether `input` may create the saga when none exists for its correlation id.
    /// For order-independence, every input that can arrive first must start it (the
    /// state records it and waits for the rest); an input that can only follow the
    /// saga's own steps (its timeouts, answers to its requests) should not. An input
    /// that does not start a saga and finds none is dead-lettered with the reason.
    fn starts(input: &Self::Input) -> bool;

    /// Records `input` in the state and decides what to do now. It may run more than
    /// once for one delivery (a concurrent input of the same saga makes the write a
    /// conflict, and the delivery is retried on the state that won), so it only
    /// decides; the runner carries the steps out in the same transaction as the state.
    fn handle(&mut self, input: &Self::Input) -> Vec<Step<Self::Output, Self::Input>>;

    /// Whether the saga is over (stored beside the state, for queries and clean-up;
    /// inputs that come later are still handled).
    fn is_finished(&self) -> bool {
        false
    }
}

/// What a saga decided to do about an input: carried out in the transaction that
/// stores its new state, so the state and its effects commit together or not at all.
#[derive(Clone, Debug, PartialEq)]
pub enum Step<O, I> {
    /// Appends `event` to the stream `stream` (any version).
    Emit {
        /// The stream id (its category is the event's default topic).
        stream: String,
        /// The event.
        event: O,
    },
    /// Schedules `event` (an input of the saga: a timeout) for `due`, under `key`
    /// within this saga instance: scheduling a key again moves it. A due time in the
    /// past fires at once.
    Schedule {
        /// The timer's key within the saga instance.
        key: String,
        /// When it is due.
        due: Due,
        /// The message it publishes, on the saga's [`Saga::TIMER_TOPIC`].
        event: I,
    },
    /// Cancels the timer `key` of this saga instance (nothing if it already fired).
    Cancel {
        /// The timer's key within the saga instance.
        key: String,
    },
}

impl<O, I> Step<O, I> {
    /// [`Step::Emit`].
    pub fn emit(stream: impl Into<String>, event: impl Into<O>) -> Self {
        Self::Emit { stream: stream.into(), event: event.into() }
    }

    /// [`Step::Schedule`]: `due` is an instant or a `Duration` from now.
    pub fn schedule(key: impl Into<String>, due: impl Into<Due>, event: impl Into<I>) -> Self {
        Self::Schedule { key: key.into(), due: due.into(), event: event.into() }
    }

    /// [`Step::Cancel`].
    pub fn cancel(key: impl Into<String>) -> Self {
        Self::Cancel { key: key.into() }
    }
}

/// The steps of saga `S`.
pub type Steps<S> = Vec<Step<<S as Saga>::Output, <S as Saga>::Input>>;
