//! Given/when/then tests for sagas, without a database (feature `testing`). Inputs
//! are delivered as [`crate::SagaRunner`] delivers them: an input that finds no
//! instance starts one only if [`Saga::starts`] says so, and is otherwise refused
//! (the runner dead-letters it).
//!
//! ```
//! # use keel_saga::{Saga, Step, Steps};
//! # use keel_core::Event;
//! # use serde::{Deserialize, Serialize};
//! # #[derive(Debug, Clone, PartialEq, Event, Serialize, Deserialize)]
//! # #[event(type = "job.started")]
//! # struct Started { job: String }
//! # #[derive(Debug, Clone, PartialEq, Event, Serialize, Deserialize)]
//! # #[event(type = "job.done")]
//! # struct Done { job: String }
//! # #[derive(Debug, Default, Serialize, Deserialize)]
//! # struct Job { started: bool, reported: bool }
//! # impl Saga for Job {
//! #     const NAME: &'static str = "job";
//! #     const TOPICS: &'static [&'static str] = &["job"];
//! #     const TIMER_TOPIC: &'static str = "job";
//! #     type Input = Started;
//! #     type Output = Done;
//! #     fn correlation_id(input: &Started) -> &str { &input.job }
//! #     fn starts(_: &Started) -> bool { true }
//! #     fn handle(&mut self, input: &Started) -> Steps<Self> {
//! #         self.started = true;
//! #         if self.reported { return vec![] }
//! #         self.reported = true;
//! #         vec![Step::emit(format!("job-{}", input.job), Done { job: input.job.clone() })]
//! #     }
//! # }
//! use keel_saga::testing::Given;
//!
//! let started = Started { job: "7".into() };
//! let job = Given::<Job>::no_saga()
//!     .when(started.clone())
//!     .then([Step::emit("job-7", Done { job: "7".into() })]);
//! assert!(job.reported);
//! Given::<Job>::inputs([started.clone()]).when(started).then([]); // a duplicate: nothing
//! ```

use std::fmt::Debug;

use crate::saga::{Saga, Steps};

/// Delivers `input` to the instance in `instance` as the runner does: creates it if
/// there is none and the input starts one; `None` (the runner's dead letter) if there
/// is none and the input does not.
pub fn deliver<S: Saga>(instance: &mut Option<S>, input: &S::Input) -> Option<Steps<S>> {
    if instance.is_none() && !S::starts(input) {
        return None;
    }
    Some(instance.get_or_insert_with(S::default).handle(input))
}

/// Delivers `inputs` in turn to one instance (see [`deliver`]); returns the final
/// instance and the steps of each delivery (`None`: refused).
pub fn deliver_all<'a, S: Saga>(
    inputs: impl IntoIterator<Item = &'a S::Input>,
) -> (Option<S>, Vec<Option<Steps<S>>>) {
    let mut instance = None;
    let steps = inputs.into_iter().map(|input| deliver(&mut instance, input)).collect();
    (instance, steps)
}

/// The inputs a saga has seen: the "given" of a test.
#[derive(Debug)]
pub struct Given<S> {
    instance: Option<S>,
}

impl<S: Saga> Given<S> {
    /// No instance yet.
    pub fn no_saga() -> Self {
        Self { instance: None }
    }

    /// The instance after `inputs`, delivered in order (their steps are not checked).
    ///
    /// # Panics
    /// When an input finds no instance and does not start one.
    #[track_caller]
    pub fn inputs<I: Into<S::Input>>(inputs: impl IntoIterator<Item = I>) -> Self {
        let mut instance = None;
        for (n, input) in inputs.into_iter().enumerate() {
            assert!(
                deliver(&mut instance, &input.into()).is_some(),
                "given input {n} finds no {} saga and does not start one",
                S::NAME
            );
        }
        Self { instance }
    }

    /// The state the given inputs left, if they started an instance.
    pub fn state(&self) -> Option<&S> {
        self.instance.as_ref()
    }

    /// Delivers `input`.
    pub fn when(mut self, input: impl Into<S::Input>) -> When<S> {
        let steps = deliver(&mut self.instance, &input.into());
        When { instance: self.instance, steps }
    }
}

/// An input delivered: the "when"; check it with [`When::then`] or
/// [`When::then_refused`].
pub struct When<S: Saga> {
    instance: Option<S>,
    steps: Option<Steps<S>>,
}

impl<S: Saga> Debug for When<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("When")
            .field("saga", &S::NAME)
            .field("refused", &self.steps.is_none())
            .finish_non_exhaustive()
    }
}

impl<S: Saga> When<S> {
    /// Asserts the saga decided exactly `expected` (in order; empty: nothing) and
    /// returns its state for further checks.
    ///
    /// # Panics
    /// When the input was refused or other steps were decided.
    #[track_caller]
    pub fn then(self, expected: impl IntoIterator<Item = crate::Step<S::Output, S::Input>>) -> S
    where
        S::Output: PartialEq + Debug,
        S::Input: PartialEq + Debug,
    {
        let expected: Steps<S> = expected.into_iter().collect();
        let Some(steps) = self.steps else {
            panic!(
                "expected steps {expected:?}, but the input found no {} saga to handle it",
                S::NAME
            )
        };
        assert_eq!(steps, expected, "the saga decided other steps than expected");
        self.instance.expect("an instance that handled an input")
    }

    /// Asserts the input found no instance and did not start one (the runner
    /// dead-letters it with [`crate::Error::UnknownCorrelation`]).
    ///
    /// # Panics
    /// When the input was handled.
    #[track_caller]
    pub fn then_refused(self)
    where
        S::Output: Debug,
        S::Input: Debug,
    {
        if let Some(steps) = self.steps {
            panic!("expected the input to be refused, but the saga decided {steps:?}");
        }
    }

    /// What was decided (`None`: refused) and the state, for checks of your own.
    pub fn result(self) -> (Option<Steps<S>>, Option<S>) {
        (self.steps, self.instance)
    }
}
