//! What a handler receives, and how it fails.

use std::fmt;
use std::sync::Arc;

use keel_core::{CloudEvent, DecodeError, EventSet, TraceContext};

use crate::BoxError;

/// One event delivered to a consumer group, as a handler sees it.
#[derive(Clone, Debug)]
pub struct Message {
    event: CloudEvent,
    attempt: u32,
    topic: Arc<str>,
    group: Arc<str>,
}

impl Message {
    /// A message of `topic` for `group`; `attempt` counts from 1.
    pub fn new(event: CloudEvent, attempt: u32, topic: Arc<str>, group: Arc<str>) -> Self {
        Self { event, attempt, topic, group }
    }

    /// The CloudEvent as delivered.
    pub fn event(&self) -> &CloudEvent {
        &self.event
    }

    /// The CloudEvent, by value.
    pub fn into_event(self) -> CloudEvent {
        self.event
    }

    /// Which delivery attempt this is (1 = first).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The topic it was consumed from.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The consumer group it was delivered to.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// Decodes the data as `E`; a failure is permanent (retrying cannot fix the bytes).
    pub fn decode<E: EventSet>(&self) -> Result<E, HandlerError> {
        self.event.decode::<E>().map_err(HandlerError::from)
    }

    /// The trace context the event carries, if it carries a valid one.
    pub fn trace_context(&self) -> Option<TraceContext> {
        let ctx = TraceContext::parse(self.event.traceparent()?).ok()?;
        Some(ctx.with_state(self.event.tracestate().map(str::to_owned)))
    }
}

/// A handler's failure, with the one fact the consumer needs: retry or not, and
/// whether the event itself could not be read (which the consumer's or projection's
/// [`crate::consumer::Unreadable`] policy decides about).
#[derive(Debug)]
pub struct HandlerError {
    permanent: bool,
    unreadable: bool,
    source: BoxError,
}

impl HandlerError {
    /// A failure that may pass (a database or network hiccup): the message is retried
    /// with backoff, then dead-lettered after the last attempt.
    pub fn transient(source: impl Into<BoxError>) -> Self {
        Self { permanent: false, unreadable: false, source: source.into() }
    }

    /// A failure that retrying cannot fix (undecodable data, a rule the event breaks):
    /// the message is dead-lettered at once.
    pub fn permanent(source: impl Into<BoxError>) -> Self {
        Self { permanent: true, unreadable: false, source: source.into() }
    }

    /// The event cannot be read by this code: its data does not decode (also after
    /// upcasting), its schema version is newer than the code's, or its type is one the
    /// handler does not know. Permanent; what happens to it is the policy's choice
    /// ([`crate::consumer::Unreadable`]). A [`DecodeError`] converts to this.
    pub fn unreadable(source: impl Into<BoxError>) -> Self {
        Self { permanent: true, unreadable: true, source: source.into() }
    }

    /// Whether retrying cannot help (the message is dead-lettered at once).
    pub fn is_permanent(&self) -> bool {
        self.permanent
    }

    /// Whether the event itself could not be read ([`HandlerError::unreadable`]).
    pub fn is_unreadable(&self) -> bool {
        self.unreadable
    }

    /// A short, fixed label for why an event could not be read (for metrics):
    /// `future_version`, `missing_upcaster`, `upcast_failed`, `unknown_type` or
    /// `undecodable`.
    pub fn unreadable_reason(&self) -> &'static str {
        match self.source.downcast_ref::<DecodeError>() {
            Some(DecodeError::FutureVersion { .. }) => "future_version",
            Some(DecodeError::MissingUpcaster { .. }) => "missing_upcaster",
            Some(DecodeError::Upcast { .. }) => "upcast_failed",
            Some(DecodeError::UnexpectedType { .. }) => "unknown_type",
            _ => "undecodable",
        }
    }

    /// The underlying error.
    pub fn source_ref(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.source
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.source.fmt(f)?;
        let mut cause = self.source.source();
        while let Some(inner) = cause {
            write!(f, ": {inner}")?;
            cause = inner.source();
        }
        Ok(())
    }
}

impl std::error::Error for HandlerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

impl From<DecodeError> for HandlerError {
    fn from(value: DecodeError) -> Self {
        Self::unreadable(value)
    }
}
