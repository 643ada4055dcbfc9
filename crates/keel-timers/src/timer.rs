//! What a timer is: a key, a due time and the message to append when it is due.

use std::time::Duration;

use chrono::{DateTime, Utc};
use keel_core::{CloudEvent, StreamId};

use crate::error::{Error, Result};

/// The dispatcher name timers belong to unless they name another.
pub const DEFAULT_DISPATCHER: &str = "default";

/// The longest timer key or dispatcher name, in bytes (so `timer-<key>` is always a
/// valid stream id).
pub const MAX_KEY_LEN: usize = 200;

/// When a timer is due.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Due {
    /// At this instant (in the past: at once).
    At(DateTime<Utc>),
    /// This long after it is scheduled (counted from the clock of the scheduling
    /// process when [`crate::schedule_in`] runs).
    After(Duration),
}

impl Due {
    /// The instant, with `After` counted from `now`.
    pub(crate) fn resolve(self, now: DateTime<Utc>) -> Result<DateTime<Utc>> {
        match self {
            Self::At(at) => Ok(at),
            Self::After(delay) => chrono::Duration::from_std(delay)
                .ok()
                .and_then(|delay| now.checked_add_signed(delay))
                .ok_or_else(|| {
                    Error::invalid("due", format!("{delay:?} from now is out of range"))
                }),
        }
    }
}

impl From<DateTime<Utc>> for Due {
    fn from(at: DateTime<Utc>) -> Self {
        Self::At(at)
    }
}

impl From<Duration> for Due {
    fn from(delay: Duration) -> Self {
        Self::After(delay)
    }
}

/// A durable timer: when it is due, its dispatcher appends `event` to the log (to the
/// timer's own stream `timer-<key>` unless another stream is given), and the relay
/// carries it to the bus like any other event.
///
/// The key identifies the timer within its dispatcher name: scheduling a key that is
/// still pending **replaces** it (new due time, new message), so a deadline can be
/// moved by scheduling it again, and [`crate::cancel_in`] finds it by key.
///
/// The event's topic follows the log's rule: its `topic` extension, else the stream's
/// category (`timer` for the default stream). Give the event a `topic` extension, or
/// the timer a stream of the right category, to route it elsewhere.
#[derive(Clone, Debug, PartialEq)]
pub struct Timer {
    pub(crate) dispatcher: String,
    pub(crate) key: String,
    pub(crate) due: Due,
    pub(crate) stream: Option<StreamId>,
    pub(crate) event: CloudEvent,
}

impl Timer {
    /// A timer that appends `event` at `due` (an instant, or a `Duration` from now).
    pub fn new(key: impl Into<String>, due: impl Into<Due>, event: CloudEvent) -> Self {
        Self {
            dispatcher: DEFAULT_DISPATCHER.to_owned(),
            key: key.into(),
            due: due.into(),
            stream: None,
            event,
        }
    }

    /// A timer due at `at`.
    pub fn at(key: impl Into<String>, at: DateTime<Utc>, event: CloudEvent) -> Self {
        Self::new(key, Due::At(at), event)
    }

    /// A timer due `delay` after it is scheduled.
    pub fn after(key: impl Into<String>, delay: Duration, event: CloudEvent) -> Self {
        Self::new(key, Due::After(delay), event)
    }

    /// Appends the message to `stream` instead of the timer's own `timer-<key>` (an
    /// aggregate's stream only when you mean it: the append does not check the
    /// stream's version).
    #[must_use]
    pub fn stream(mut self, stream: StreamId) -> Self {
        self.stream = Some(stream);
        self
    }

    /// Puts the timer under another dispatcher name (default [`DEFAULT_DISPATCHER`]):
    /// only a [`crate::Dispatcher`] of that name fires it, and keys are unique per name.
    #[must_use]
    pub fn dispatcher(mut self, name: impl Into<String>) -> Self {
        self.dispatcher = name.into();
        self
    }

    /// The key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The dispatcher name.
    pub fn dispatcher_name(&self) -> &str {
        &self.dispatcher
    }

    /// When it is due.
    pub fn due(&self) -> Due {
        self.due
    }

    /// The message.
    pub fn event(&self) -> &CloudEvent {
        &self.event
    }

    /// The stream the message goes to: the one given, or `timer-<key>`.
    pub fn target_stream(&self) -> Result<StreamId> {
        match &self.stream {
            Some(stream) => Ok(stream.clone()),
            None => StreamId::new(format!("timer-{}", self.key))
                .map_err(|e| Error::invalid("key", e.to_string())),
        }
    }
}

/// Checks a timer key or dispatcher name.
pub(crate) fn check_name(field: &'static str, value: &str) -> Result<()> {
    if value.is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    if value.len() > MAX_KEY_LEN {
        return Err(Error::invalid(
            field,
            format!("is at most {MAX_KEY_LEN} bytes, this one has {}", value.len()),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(Error::invalid(field, "must not contain control characters"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> CloudEvent {
        CloudEvent::builder("test.ping", "/test").build().expect("a valid event")
    }

    #[test]
    fn after_counts_from_now_and_the_default_stream_is_the_timers_own() -> Result<()> {
        let now = Utc::now();
        let timer = Timer::after("order-7-deadline", Duration::from_secs(90), event());
        assert_eq!(timer.due().resolve(now)?, now + chrono::Duration::seconds(90));
        assert_eq!(timer.target_stream()?.as_str(), "timer-order-7-deadline");
        assert_eq!(timer.dispatcher_name(), DEFAULT_DISPATCHER);
        Ok(())
    }

    #[test]
    fn bad_keys_and_delays_name_the_field() {
        let field = |r: Result<()>| match r {
            Err(Error::InvalidTimer { field, .. }) => Some(field),
            _ => None,
        };
        assert_eq!(field(check_name("key", "")), Some("key"));
        assert_eq!(field(check_name("key", &"k".repeat(MAX_KEY_LEN + 1))), Some("key"));
        assert_eq!(field(check_name("dispatcher", "a\nb")), Some("dispatcher"));
        assert_eq!(field(check_name("key", "fine-key")), None);
        let huge = Due::After(Duration::from_secs(u64::MAX)).resolve(Utc::now());
        assert!(matches!(huge, Err(Error::InvalidTimer { field: "due", .. })));
    }
}
