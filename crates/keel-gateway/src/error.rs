//! The crate's one error type: what stops the gateway from starting.

/// A configuration the gateway refuses to start with; the message names the key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A value is present but wrong, e.g. `routes[2].prefix: must start with '/'`.
    #[error("{key}: {reason}")]
    Invalid {
        /// The key, as a path such as `routes[2].prefix`.
        key: String,
        /// What is wrong with its value.
        reason: String,
    },
    /// The TOML is malformed or has an unknown key (toml's message names it and its line).
    #[error("invalid gateway configuration: {0}")]
    Parse(String),
    /// The configuration file cannot be read.
    #[error("cannot read gateway configuration {path}: {source}")]
    Read {
        /// The file's path.
        path: String,
        /// The operating system's error.
        source: std::io::Error,
    },
}

impl ConfigError {
    pub(crate) fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid { key: key.into(), reason: reason.into() }
    }

    /// The configuration key at fault, when one is known.
    pub fn key(&self) -> Option<&str> {
        match self {
            Self::Invalid { key, .. } => Some(key),
            _ => None,
        }
    }
}

/// The gateway's results, failing with [`ConfigError`] by default.
pub type Result<T, E = ConfigError> = std::result::Result<T, E>;
