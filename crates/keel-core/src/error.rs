//! Typed errors for decoding and validating envelopes.

use std::borrow::Cow;

/// `Result` with [`DecodeError`] as the default error.
pub type Result<T, E = DecodeError> = std::result::Result<T, E>;

/// Why bytes, headers or JSON could not be turned into a valid [`crate::CloudEvent`]
/// (or an envelope into a typed event). Every message names what is wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// A required CloudEvents attribute is absent.
    #[error("missing required CloudEvents attribute `{0}`")]
    MissingAttribute(&'static str),
    /// An attribute is present but its value breaks the specification.
    #[error("invalid CloudEvents attribute `{name}`: {reason}")]
    InvalidAttribute {
        /// The attribute's name.
        name: Cow<'static, str>,
        /// What is wrong with its value.
        reason: String,
    },
    /// An extension attribute's name breaks the naming rules (`[a-z0-9]+`, not reserved).
    #[error("invalid CloudEvents attribute name `{name}`: {reason}")]
    InvalidAttributeName {
        /// The name as given.
        name: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// The `specversion` is not one this decoder understands.
    #[error("unsupported CloudEvents specversion `{0}` (this decoder understands 1.0)")]
    UnsupportedSpecVersion(String),
    /// The message is not a CloudEvent in any mode this decoder accepts.
    #[error("not a CloudEvent: {0}")]
    NotACloudEvent(String),
    /// The structured-mode JSON document is malformed.
    #[error("malformed CloudEvents JSON: {0}")]
    Json(#[source] serde_json::Error),
    /// The event's data does not decode into the requested type.
    #[error("event `{ty}` data does not decode as {target}: {source}")]
    Data {
        /// The event's type.
        ty: String,
        /// The Rust type it was decoded into.
        target: &'static str,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// The event's type is not the one (or one of those) the caller asked for.
    #[error("unexpected event type `{found}` (expected {expected})")]
    UnexpectedType {
        /// The event's type.
        found: String,
        /// The type or types asked for.
        expected: String,
    },
    /// The data was written at a schema version newer than the code knows (an event
    /// from a newer deployment): never decoded with defaults.
    #[error(
        "event `{event_type}` has schema version {version}, newer than the {known} this code knows"
    )]
    FutureVersion {
        /// The event's type.
        event_type: String,
        /// The schema version the data was written at.
        version: u32,
        /// The newest schema version the code knows.
        known: u32,
    },
    /// The data is at an older schema version and no upcaster step leads on from it.
    #[error("event `{event_type}` at schema version {from} has no upcaster to version {}", from + 1)]
    MissingUpcaster {
        /// The event's type.
        event_type: String,
        /// The version with no step leading on from it.
        from: u32,
        /// The version the code expects.
        to: u32,
    },
    /// An upcaster step failed on this data.
    #[error("upcasting event `{event_type}` from schema version {from} failed: {source}")]
    Upcast {
        /// The event's type.
        event_type: String,
        /// The version the failing step starts from.
        from: u32,
        /// The step's error.
        #[source]
        source: crate::upcast::StepError,
    },
    /// The `schemaversion` attribute is not a valid version (1 or more).
    #[error("invalid schema version {0} (versions start at 1)")]
    InvalidSchemaVersion(u64),
}

impl DecodeError {
    pub(crate) fn invalid(name: impl Into<Cow<'static, str>>, reason: impl Into<String>) -> Self {
        Self::InvalidAttribute { name: name.into(), reason: reason.into() }
    }
}
