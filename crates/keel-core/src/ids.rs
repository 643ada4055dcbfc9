//! Identifiers and counters: event ids, stream ids, stream versions, log positions.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::DecodeError;

/// An event's id: a UUIDv7, so ids sort by creation time and index well.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventId(Uuid);

impl EventId {
    /// A fresh UUIDv7.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    /// The id as a UUID.
    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl Default for EventId {
    fn default() -> Self {
        Self::new()
    }
}

impl From<Uuid> for EventId {
    fn from(value: Uuid) -> Self {
        Self(value)
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for EventId {
    type Err = DecodeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self).map_err(|e| DecodeError::invalid("id", e.to_string()))
    }
}

/// The id of an event stream, such as `order-0190f0c2-...`.
///
/// The part before the first `-` is the stream's *category* (`order`), which Keel uses
/// as the default topic of the stream's events. Non-empty, at most 255 bytes, no
/// control characters.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StreamId(String);

impl StreamId {
    /// The longest stream id, in bytes.
    pub const MAX_LEN: usize = 255;

    /// A stream id; fails if it is empty, longer than [`Self::MAX_LEN`] bytes or
    /// contains control characters.
    pub fn new(id: impl Into<String>) -> Result<Self, DecodeError> {
        let id = id.into();
        if id.is_empty() {
            return Err(DecodeError::invalid("subject", "a stream id must not be empty"));
        }
        if id.len() > Self::MAX_LEN {
            return Err(DecodeError::invalid(
                "subject",
                format!(
                    "a stream id is at most {} bytes, this one has {}",
                    Self::MAX_LEN,
                    id.len()
                ),
            ));
        }
        if id.chars().any(char::is_control) {
            return Err(DecodeError::invalid(
                "subject",
                "a stream id must not contain control characters",
            ));
        }
        Ok(Self(id))
    }

    /// `category-rest` -> `category`; a stream id without `-` is its own category.
    pub fn category(&self) -> &str {
        self.0.split_once('-').map_or(&self.0, |(category, _)| category)
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for StreamId {
    type Error = DecodeError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<StreamId> for String {
    fn from(value: StreamId) -> Self {
        value.0
    }
}

impl FromStr for StreamId {
    type Err = DecodeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for StreamId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// The version of a stream: the first event of a stream has version 1, so a stream
/// that does not exist yet is at version 0.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct StreamVersion(pub u64);

impl StreamVersion {
    /// The version of a stream with no events.
    pub const NONE: Self = Self(0);

    /// The version after this one.
    pub fn next(self) -> Self {
        Self(self.0 + 1)
    }
}

impl fmt::Display for StreamVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A position in the global event log. Positions are assigned in increasing order but
/// may have holes (rolled-back transactions); position 0 is "before the first event".
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Position(pub u64);

impl Position {
    /// Before the first event: reading from here reads the whole log.
    pub const START: Self = Self(0);
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What an appender expects the stream's current version to be (optimistic concurrency).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExpectedVersion {
    /// Append whatever the stream's version.
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream must exist, at any version.
    StreamExists,
    /// The stream must be exactly at this version (`StreamVersion::NONE` = no stream).
    Exact(StreamVersion),
}

impl ExpectedVersion {
    /// Whether a stream currently at `current` satisfies this expectation.
    pub fn accepts(self, current: StreamVersion) -> bool {
        match self {
            Self::Any => true,
            Self::NoStream => current == StreamVersion::NONE,
            Self::StreamExists => current != StreamVersion::NONE,
            Self::Exact(expected) => current == expected,
        }
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("any"),
            Self::NoStream => f.write_str("no stream"),
            Self::StreamExists => f.write_str("stream exists"),
            Self::Exact(v) => write!(f, "version {v}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_are_v7_and_sort_by_creation() {
        let a = EventId::new();
        let b = EventId::new();
        assert_eq!(a.as_uuid().get_version_num(), 7);
        assert!(a < b);
        assert_eq!(a.to_string().parse::<EventId>().ok(), Some(a));
    }

    #[test]
    fn stream_category_is_the_part_before_the_first_dash() {
        assert_eq!(
            StreamId::new("order-1-2").map(|s| s.category().to_owned()).ok(),
            Some("order".into())
        );
        assert_eq!(
            StreamId::new("solo").map(|s| s.category().to_owned()).ok(),
            Some("solo".into())
        );
        assert!(StreamId::new("").is_err());
        assert!(StreamId::new("a\nb").is_err());
        assert!(StreamId::new("x".repeat(256)).is_err());
    }

    #[test]
    fn expected_version_rules() {
        use ExpectedVersion::*;
        let none = StreamVersion::NONE;
        let two = StreamVersion(2);
        assert!(Any.accepts(none) && Any.accepts(two));
        assert!(NoStream.accepts(none) && !NoStream.accepts(two));
        assert!(!StreamExists.accepts(none) && StreamExists.accepts(two));
        assert!(Exact(two).accepts(two) && !Exact(two).accepts(StreamVersion(3)));
        assert!(Exact(none).accepts(none));
    }
}
