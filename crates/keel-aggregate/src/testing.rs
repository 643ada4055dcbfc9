//! Given/when/then tests for aggregates, without a database (feature `testing`):
//!
//! ```
//! # use keel_aggregate::Aggregate;
//! # use keel_core::Event;
//! # use serde::{Deserialize, Serialize};
//! # #[derive(Debug, Clone, PartialEq, Event, Serialize, Deserialize)]
//! # #[event(type = "counter.added")]
//! # struct Added { by: u32 }
//! # #[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
//! # struct Counter { total: u64 }
//! # #[derive(Debug, PartialEq, thiserror::Error)]
//! # #[error("nothing to add")]
//! # struct NothingToAdd;
//! # impl Aggregate for Counter {
//! #     const CATEGORY: &'static str = "counter";
//! #     type Event = Added;
//! #     type Command = u32;
//! #     type Error = NothingToAdd;
//! #     fn apply(&mut self, event: &Added) { self.total += u64::from(event.by); }
//! #     fn handle(&self, by: &u32) -> Result<Vec<Added>, NothingToAdd> {
//! #         if *by == 0 { return Err(NothingToAdd) }
//! #         Ok(vec![Added { by: *by }])
//! #     }
//! # }
//! use keel_aggregate::testing::Given;
//!
//! let after = Given::<Counter>::events([Added { by: 2 }]).when(3).then([Added { by: 3 }]);
//! assert_eq!(after.total, 5);
//! Given::<Counter>::no_events().when(0).then_error(NothingToAdd);
//! ```

use std::fmt::Debug;

use crate::aggregate::Aggregate;

/// The events an aggregate has seen: the "given" of a test.
#[derive(Debug)]
pub struct Given<A> {
    state: A,
}

impl<A: Aggregate> Given<A> {
    /// An aggregate that has seen `events`, in order.
    pub fn events<E: Into<A::Event>>(events: impl IntoIterator<Item = E>) -> Self {
        let mut state = A::default();
        for event in events {
            state.apply(&event.into());
        }
        Self { state }
    }

    /// An aggregate with no events yet.
    pub fn no_events() -> Self {
        Self { state: A::default() }
    }

    /// The state the given events left.
    pub fn state(&self) -> &A {
        &self.state
    }

    /// Handles `command` on that state.
    pub fn when(self, command: A::Command) -> When<A> {
        let decided = self.state.handle(&command);
        When { state: self.state, decided }
    }
}

/// A command handled: the "when"; check it with [`When::then`] or
/// [`When::then_error`].
pub struct When<A: Aggregate> {
    state: A,
    decided: Result<Vec<A::Event>, A::Error>,
}

impl<A: Aggregate> Debug for When<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("When")
            .field("aggregate", &std::any::type_name::<A>())
            .field("refused", &self.decided.is_err())
            .finish_non_exhaustive()
    }
}

impl<A: Aggregate> When<A> {
    /// Asserts the command decided exactly `expected` (in order; empty: no event), and
    /// returns the state after them for further checks.
    ///
    /// # Panics
    /// When the command was refused or decided other events.
    #[track_caller]
    pub fn then<E: Into<A::Event>>(self, expected: impl IntoIterator<Item = E>) -> A
    where
        A::Event: PartialEq + Debug,
    {
        let expected: Vec<A::Event> = expected.into_iter().map(Into::into).collect();
        let events = match self.decided {
            Ok(events) => events,
            Err(error) => {
                panic!("expected events {expected:?}, but the command was refused: {error}")
            }
        };
        assert_eq!(events, expected, "the command decided other events than expected");
        let mut state = self.state;
        for event in &events {
            state.apply(event);
        }
        state
    }

    /// Asserts the command was refused with `expected`.
    ///
    /// # Panics
    /// When the command decided events or was refused with another error.
    #[track_caller]
    pub fn then_error(self, expected: A::Error)
    where
        A::Event: Debug,
        A::Error: PartialEq + Debug,
    {
        match self.decided {
            Ok(events) => {
                panic!("expected the error {expected:?}, but the command decided {events:?}")
            }
            Err(error) => assert_eq!(error, expected, "the command was refused otherwise"),
        }
    }

    /// Asserts the command was refused with an error `check` accepts (for errors
    /// without `PartialEq`).
    ///
    /// # Panics
    /// When the command decided events or `check` returned false.
    #[track_caller]
    pub fn then_error_matches(self, check: impl FnOnce(&A::Error) -> bool)
    where
        A::Event: Debug,
    {
        match self.decided {
            Ok(events) => panic!("expected an error, but the command decided {events:?}"),
            Err(error) => assert!(check(&error), "the command was refused otherwise: {error}"),
        }
    }

    /// What the command decided, for checks of your own.
    pub fn result(self) -> Result<Vec<A::Event>, A::Error> {
        self.decided
    }
}

/// Asserts `state` reads back from its snapshot JSON as itself (what loading from a
/// snapshot relies on), and returns the JSON.
///
/// # Panics
/// When the state does not serialize, or deserializes differently.
#[track_caller]
pub fn assert_snapshot_round_trip<A: Aggregate + PartialEq + Debug>(state: &A) -> String {
    let json = serde_json::to_string(state).expect("the state serializes");
    let back: A = serde_json::from_str(&json).expect("the snapshot deserializes");
    assert_eq!(&back, state, "the state changed through its snapshot: {json}");
    json
}
