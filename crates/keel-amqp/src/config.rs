//! [`AmqpConfig`] and the `amqp://` URL it can be read from.
//!
//! ```text
//! amqp://user:pass@host:5672/vhost?queue_type=quorum&prefetch=64&heartbeat=30
//! ```
//!
//! Keel's own query parameters (the table in the crate docs) are taken out of the URL;
//! lapin's (`heartbeat`, `frame_max`, `channel_max`, `connection_timeout`,
//! `auth_mechanism`) are passed on to it; any other parameter is a configuration error
//! naming it, so a typo never goes unnoticed.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use keel_core::BusError;

/// The kind of RabbitMQ queue Keel declares for groups, retries and dead letters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum QueueType {
    /// Replicated, durable Raft queues (the default): confirmed messages survive a
    /// broker restart and, in a cluster, the loss of a minority of nodes.
    #[default]
    Quorum,
    /// Durable classic queues: lighter, one node only.
    Classic,
}

impl QueueType {
    /// The `x-queue-type` argument value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Quorum => "quorum",
            Self::Classic => "classic",
        }
    }
}

impl FromStr for QueueType {
    type Err = BusError;

    fn from_str(value: &str) -> Result<Self, BusError> {
        match value {
            "quorum" => Ok(Self::Quorum),
            "classic" => Ok(Self::Classic),
            other => Err(BusError::Config(format!(
                "queue_type must be `quorum` or `classic`, not `{other}`"
            ))),
        }
    }
}

/// How the RabbitMQ backend declares its topology, publishes and reconnects.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct AmqpConfig {
    /// Queue type of group, retry and dead-letter queues (`queue_type`).
    pub queue_type: QueueType,
    /// When set, overrides every subscription's own prefetch (`prefetch`).
    pub prefetch: Option<u16>,
    /// Declare group queues with `x-single-active-consumer` (`single_active_consumer`):
    /// one member of a group receives at a time, the others stand by, so a group
    /// keeps strict queue order even with several members.
    pub single_active_consumer: bool,
    /// How long a publish may wait for a free channel and for its confirms
    /// (`publish_timeout_ms`).
    pub publish_timeout: Duration,
    /// How many publishes may be in flight at once, one channel each
    /// (`publish_channels`); more wait, which is the back-pressure.
    pub publish_channels: usize,
    /// At most this many unconfirmed messages per channel; a larger batch is sent
    /// in windows of this size (`confirm_window`).
    pub confirm_window: usize,
    /// First and longest pause between reconnection attempts (`reconnect_min_ms`,
    /// `reconnect_max_ms`); the pause doubles after each failure.
    pub reconnect_min: Duration,
    /// Longest pause between reconnection attempts (see `reconnect_min`).
    pub reconnect_max: Duration,
    /// How long one connection attempt may take (`connect_timeout_ms`).
    pub connect_timeout: Duration,
    /// `x-expires` on every queue Keel declares (`queue_expires_ms`): for tests and
    /// throwaway groups only, since an idle queue expires with its messages.
    pub queue_expires: Option<Duration>,
    /// Shown in the broker's connection list (`connection_name`).
    pub connection_name: String,
}

impl Default for AmqpConfig {
    fn default() -> Self {
        Self {
            queue_type: QueueType::Quorum,
            prefetch: None,
            single_active_consumer: false,
            publish_timeout: Duration::from_secs(30),
            publish_channels: 8,
            confirm_window: 1024,
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(3),
            connect_timeout: Duration::from_secs(10),
            queue_expires: None,
            connection_name: "keel".to_owned(),
        }
    }
}

/// Query parameters lapin understands, passed on untouched.
const LAPIN_PARAMETERS: &[&str] =
    &["heartbeat", "frame_max", "channel_max", "connection_timeout", "auth_mechanism"];

/// Keel's own query parameters.
const KEEL_PARAMETERS: &[&str] = &[
    "queue_type",
    "prefetch",
    "single_active_consumer",
    "publish_timeout_ms",
    "publish_channels",
    "confirm_window",
    "reconnect_min_ms",
    "reconnect_max_ms",
    "connect_timeout_ms",
    "queue_expires_ms",
    "connection_name",
];

impl AmqpConfig {
    /// The default configuration with the Keel parameters of `url` applied.
    pub fn from_url(url: &str) -> Result<Self, BusError> {
        Ok(Self::default().apply_url(url)?.0)
    }

    #[must_use]
    /// Sets the queue type (`queue_type`).
    pub fn queue_type(mut self, queue_type: QueueType) -> Self {
        self.queue_type = queue_type;
        self
    }

    #[must_use]
    /// Sets the consumer prefetch (`prefetch`).
    pub fn prefetch(mut self, prefetch: u16) -> Self {
        self.prefetch = Some(prefetch.max(1));
        self
    }

    #[must_use]
    /// Turns single active consumer on or off (`single_active_consumer`).
    pub fn single_active_consumer(mut self, on: bool) -> Self {
        self.single_active_consumer = on;
        self
    }

    #[must_use]
    /// Sets how long a publish waits for its confirm (`publish_timeout_ms`).
    pub fn publish_timeout(mut self, timeout: Duration) -> Self {
        self.publish_timeout = timeout;
        self
    }

    #[must_use]
    /// Sets the number of publishing channels (`publish_channels`).
    pub fn publish_channels(mut self, channels: usize) -> Self {
        self.publish_channels = channels.max(1);
        self
    }

    #[must_use]
    /// Sets the unconfirmed-message window per channel (`confirm_window`).
    pub fn confirm_window(mut self, window: usize) -> Self {
        self.confirm_window = window.max(1);
        self
    }

    #[must_use]
    /// Sets the first and longest pause between reconnection attempts.
    pub fn reconnect(mut self, min: Duration, max: Duration) -> Self {
        self.reconnect_min = min;
        self.reconnect_max = max.max(min);
        self
    }

    #[must_use]
    /// Sets how long one connection attempt may take (`connect_timeout_ms`).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    #[must_use]
    /// Sets `x-expires` on declared queues (`queue_expires_ms`); `None` for none.
    pub fn queue_expires(mut self, expires: Option<Duration>) -> Self {
        self.queue_expires = expires;
        self
    }

    #[must_use]
    /// Sets the connection name shown in the broker's management UI (`connection_name`).
    pub fn connection_name(mut self, name: impl Into<String>) -> Self {
        self.connection_name = name.into();
        self
    }

    /// The pause before reconnection attempt `failures + 1`.
    pub(crate) fn reconnect_delay(&self, failures: u32) -> Duration {
        let factor = 2_u32.saturating_pow(failures.saturating_sub(1).min(16));
        self.reconnect_min.saturating_mul(factor).min(self.reconnect_max)
    }

    /// Applies the Keel parameters of `url` to `self`; returns the result and the
    /// URL for lapin (without Keel's parameters).
    pub(crate) fn apply_url(mut self, url: &str) -> Result<(Self, BrokerUri), BusError> {
        let mut parsed = url::Url::parse(url)
            .map_err(|e| BusError::Config(format!("the AMQP URL does not parse: {e}")))?;
        match parsed.scheme() {
            "amqp" => {}
            "amqps" => {
                return Err(BusError::Config(
                    "amqps:// needs TLS, which this build of keel-amqp does not include".into(),
                ));
            }
            other => {
                return Err(BusError::Config(format!(
                    "the AMQP URL must start with amqp://, not {other}://"
                )));
            }
        }
        let mut passed_on = Vec::new();
        for (key, value) in parsed.query_pairs() {
            let (key, value) = (key.into_owned(), value.into_owned());
            if LAPIN_PARAMETERS.contains(&key.as_str()) {
                passed_on.push((key, value));
            } else {
                self.set(&key, &value)?;
            }
        }
        if passed_on.is_empty() {
            parsed.set_query(None);
        } else {
            parsed.query_pairs_mut().clear().extend_pairs(passed_on);
        }
        let uri = parsed.to_string();
        // Let lapin check the rest (host, port, vhost, its own parameters) now.
        lapin::uri::AMQPUri::from_str(&uri)
            .map_err(|e| BusError::Config(format!("invalid AMQP URL: {e}")))?;
        Ok((self, BrokerUri(uri)))
    }

    fn set(&mut self, key: &str, value: &str) -> Result<(), BusError> {
        match key {
            "queue_type" => self.queue_type = value.parse()?,
            "prefetch" => self.prefetch = Some(number::<u16>(key, value, 1)?),
            "single_active_consumer" => self.single_active_consumer = boolean(key, value)?,
            "publish_timeout_ms" => self.publish_timeout = millis(key, value, 1)?,
            "publish_channels" => self.publish_channels = number(key, value, 1)?,
            "confirm_window" => self.confirm_window = number(key, value, 1)?,
            "reconnect_min_ms" => self.reconnect_min = millis(key, value, 1)?,
            "reconnect_max_ms" => self.reconnect_max = millis(key, value, 1)?,
            "connect_timeout_ms" => self.connect_timeout = millis(key, value, 1)?,
            "queue_expires_ms" => self.queue_expires = Some(millis(key, value, 1)?),
            "connection_name" => self.connection_name = value.to_owned(),
            other => {
                return Err(BusError::Config(format!(
                    "unknown parameter `{other}` in the AMQP URL (Keel's: {}; lapin's: {})",
                    KEEL_PARAMETERS.join(", "),
                    LAPIN_PARAMETERS.join(", ")
                )));
            }
        }
        if self.reconnect_max < self.reconnect_min {
            self.reconnect_max = self.reconnect_min;
        }
        Ok(())
    }
}

fn number<T>(key: &str, value: &str, min: T) -> Result<T, BusError>
where
    T: FromStr + PartialOrd + fmt::Display,
{
    match value.parse::<T>() {
        Ok(n) if n >= min => Ok(n),
        _ => Err(BusError::Config(format!(
            "parameter `{key}` must be a whole number of at least {min}, not `{value}`"
        ))),
    }
}

fn millis(key: &str, value: &str, min: u64) -> Result<Duration, BusError> {
    number(key, value, min).map(Duration::from_millis)
}

fn boolean(key: &str, value: &str) -> Result<bool, BusError> {
    match value {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => {
            Err(BusError::Config(format!("parameter `{key}` must be true or false, not `{value}`")))
        }
    }
}

/// The URL handed to lapin. Its `Debug` hides the password.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct BrokerUri(pub(crate) String);

impl BrokerUri {
    /// The URL without its password, for logs.
    pub(crate) fn redacted(&self) -> String {
        match url::Url::parse(&self.0) {
            Ok(mut url) => {
                if url.password().is_some() {
                    let _ = url.set_password(Some("***"));
                }
                url.to_string()
            }
            Err(_) => "<invalid url>".to_owned(),
        }
    }
}

impl fmt::Debug for BrokerUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_without_parameters() {
        let (config, uri) =
            AmqpConfig::default().apply_url("amqp://guest:guest@127.0.0.1:5672/%2f").expect("ok");
        assert_eq!(config, AmqpConfig::default());
        assert_eq!(uri.0, "amqp://guest:guest@127.0.0.1:5672/%2f");
    }

    #[test]
    fn keel_parameters_are_applied_and_removed() {
        let (config, uri) = AmqpConfig::default()
            .apply_url(
                "amqp://u:p@h:5673/vh?queue_type=classic&prefetch=10&heartbeat=30\
                 &single_active_consumer=true&publish_timeout_ms=1500&queue_expires_ms=60000\
                 &reconnect_min_ms=50&reconnect_max_ms=20&connection_name=svc",
            )
            .expect("ok");
        assert_eq!(config.queue_type, QueueType::Classic);
        assert_eq!(config.prefetch, Some(10));
        assert!(config.single_active_consumer);
        assert_eq!(config.publish_timeout, Duration::from_millis(1500));
        assert_eq!(config.queue_expires, Some(Duration::from_secs(60)));
        assert_eq!(config.reconnect_min, Duration::from_millis(50));
        assert_eq!(config.reconnect_max, Duration::from_millis(50), "max is at least min");
        assert_eq!(config.connection_name, "svc");
        assert_eq!(uri.0, "amqp://u:p@h:5673/vh?heartbeat=30");
    }

    #[test]
    fn unknown_and_bad_parameters_are_named() {
        let err = AmqpConfig::from_url("amqp://h/?prefech=10").expect_err("typo");
        assert!(matches!(&err, BusError::Config(m) if m.contains("`prefech`")), "{err}");
        let err = AmqpConfig::from_url("amqp://h/?queue_type=stream").expect_err("bad type");
        assert!(err.to_string().contains("queue_type"), "{err}");
        let err = AmqpConfig::from_url("amqp://h/?prefetch=0").expect_err("zero");
        assert!(err.to_string().contains("`prefetch`"), "{err}");
        let err = AmqpConfig::from_url("amqp://h/?prefetch=70000").expect_err("too big");
        assert!(err.to_string().contains("`prefetch`"), "{err}");
        let err = AmqpConfig::from_url("amqp://h/?single_active_consumer=maybe").expect_err("b");
        assert!(err.to_string().contains("single_active_consumer"), "{err}");
        let err = AmqpConfig::from_url("amqp://h/?heartbeat=x").expect_err("lapin's too");
        assert!(matches!(err, BusError::Config(_)), "{err}");
    }

    #[test]
    fn other_schemes_and_garbage_are_config_errors() {
        for url in ["amqps://h/", "kafka://h:9092", "not a url", ""] {
            let err = AmqpConfig::from_url(url).expect_err(url);
            assert!(matches!(err, BusError::Config(_)), "{url}: {err}");
        }
    }

    #[test]
    fn the_password_is_never_shown() {
        let (_, uri) = AmqpConfig::default().apply_url("amqp://me:secret@h/%2f").expect("ok");
        let shown = format!("{uri:?}");
        assert!(!shown.contains("secret") && shown.contains("***"), "{shown}");
    }

    #[test]
    fn reconnect_delay_doubles_up_to_the_cap() {
        let config = AmqpConfig::default()
            .reconnect(Duration::from_millis(100), Duration::from_millis(1000));
        let delays: Vec<u128> = (1..=6).map(|n| config.reconnect_delay(n).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(config.reconnect_delay(u32::MAX), Duration::from_millis(1000));
    }
}
