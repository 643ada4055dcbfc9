//! [`KafkaConfig`]: how to reach the brokers and the knobs of producer and consumers,
//! from code or from a `kafka://` URL.

use std::time::Duration;

use keel_core::BusError;
use rdkafka::ClientConfig;

/// How consumer groups share partitions (`partition.assignment.strategy`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Assignment {
    /// `cooperative-sticky` (the default): a rebalance moves only the partitions that
    /// change owner, and the other members go on reading theirs meanwhile.
    #[default]
    Cooperative,
    /// `range`, the eager protocol: every rebalance revokes every partition of every
    /// member first. The Tansu profile uses it.
    Range,
}

impl Assignment {
    /// librdkafka's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cooperative => "cooperative-sticky",
            Self::Range => "range",
        }
    }
}

/// How to reach the brokers and how the backend behaves. The defaults are for Apache
/// Kafka (and brokers that behave like it); [`KafkaConfig::tansu`] (URL parameter
/// `profile=tansu`) applies the workarounds the Tansu broker needs (see the crate
/// docs). [`KafkaConfig::from_url`] reads the same fields from a `kafka://` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct KafkaConfig {
    /// `host:port[,host:port...]`, librdkafka's `bootstrap.servers`.
    pub brokers: String,
    /// Partitions of the topics the backend creates (Keel topics and their retry
    /// topics). Default 8.
    pub partitions: i32,
    /// Replication factor of the topics the backend creates; `None` (the default):
    /// the broker's `default.replication.factor` (Apache Kafka 2.4 and later).
    pub replication: Option<i32>,
    /// Whether the backend creates missing topics through the admin API. Turn it off
    /// where topics are provisioned otherwise (then every topic, including the
    /// `.retry` and `.dlq` ones, must exist). Default true.
    pub create_topics: bool,
    /// How long the producer waits to fill a batch (`linger.ms`, URL parameter
    /// `linger_ms`). Default 0, not librdkafka's 5 ms: a Keel publish waits for the
    /// broker to confirm its batch before the next, so lingering only adds to every
    /// hop. On Tansu (docs/benchmarks.md), 0 took an order's two hops from about 115
    /// to 55 ms at the median and confirmed batches of 1,000 from 74-84 to 92-163
    /// thousand events a second; the relay went about as fast (67-95 thousand against
    /// 73-78). Raise it where many publishers share a producer and fewer, larger
    /// requests matter more.
    pub linger: Duration,
    /// How long a publish may wait for the broker's confirmation before it fails with
    /// [`BusError::Timeout`] (`message.timeout.ms`). Default 30 s.
    pub publish_timeout: Duration,
    /// Largest record the producer sends (`message.max.bytes`). Default 8 MiB.
    pub max_message_bytes: usize,
    /// How often a subscription commits the offsets of settled messages. Commits also
    /// happen, synchronously, before partitions are given up and on close. Default
    /// 100 ms.
    pub commit_interval: Duration,
    /// How long a subscription giving up partitions (rebalance or close) waits for the
    /// deliveries it handed out from them to be settled before it commits and lets
    /// go. Default 10 s.
    pub revoke_timeout: Duration,
    /// How long a subscription waits after being assigned a partition before it reads
    /// the committed offset and starts fetching, so that the previous owner has given
    /// the partition up and committed. Needed on brokers whose group coordinator does
    /// not make a rebalance wait for every member (Tansu: 1 s, see the crate docs).
    /// Default zero: Apache Kafka's rebalances wait for the previous owner.
    pub handoff_grace: Duration,
    /// How long closing a subscription waits for a group join still in progress
    /// before it leaves the group, so that it leaves under the member id the
    /// coordinator knows (Tansu: 4 s, see the crate docs). Default zero.
    pub leave_wait: Duration,
    /// How long a partition of a member's topics may go unread (records past the
    /// group's committed offset, no commit moving, not assigned to this member)
    /// before the member rejoins the group so that the coordinator assigns it again
    /// (works around Tansu keeping stale assignments, see the crate docs; Tansu:
    /// 20 s). Zero turns the watchdog off. Default zero.
    pub orphan_timeout: Duration,
    /// Consumer group session timeout (`session.timeout.ms`): how long the
    /// coordinator waits for a silent member before it gives its partitions to the
    /// others. Default 45 s (Apache Kafka's own; Tansu: 10 s).
    pub session_timeout: Duration,
    /// Consumer heartbeat interval (`heartbeat.interval.ms`), at most a third of the
    /// session timeout. Default 3 s (Tansu: 100 ms, how fast a member notices a
    /// rebalance there).
    pub heartbeat_interval: Duration,
    /// How consumer groups share partitions (`assignment`: `cooperative` or
    /// `range`). Default [`Assignment::Cooperative`] (Tansu: range).
    pub assignment: Assignment,
    /// Most records a subscription buffers per partition; a full partition is not
    /// read further until handlers settle some (back-pressure). Default 1024.
    pub buffer_per_partition: usize,
    /// Most records the producer puts in one batch (`batch.num.messages`). Default
    /// 10000, librdkafka's own (Tansu: 1000; see [`KafkaConfig::fetch_rewind`]).
    pub max_batch_records: usize,
    /// How many records before a committed offset a member starts fetching when it
    /// takes a partition over (skipping them), so the batch holding that offset is
    /// fetched whole. Tansu 0.6 serves a fetch only from batches that *start* at or
    /// after the fetch offset: fetching from the middle of a batch skips the rest of
    /// it. Must be at least the most records any producer of the topic puts in one
    /// batch ([`KafkaConfig::max_batch_records`] for Keel; Tansu: 1000). Default 0:
    /// Apache Kafka serves a fetch from any offset.
    pub fetch_rewind: i64,
    /// librdkafka `client.id`. Default `keel`.
    pub client_id: String,
    /// Put before every group name to make the Kafka `group.id` (a Keel group `g`
    /// is the Kafka group `<group_prefix>g`). Default empty. Tests use it to keep
    /// their groups apart: members of one Kafka group rebalance together even when
    /// they read different topics.
    pub group_prefix: String,
    /// Further librdkafka properties for every client (security, SASL, tuning),
    /// applied last, so they override the backend's own settings. In a URL:
    /// `rdkafka.<property>=<value>`.
    pub librdkafka: std::collections::BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".to_owned(),
            partitions: 8,
            replication: None,
            create_topics: true,
            linger: Duration::ZERO,
            publish_timeout: Duration::from_secs(30),
            max_message_bytes: 8 * 1024 * 1024,
            commit_interval: Duration::from_millis(100),
            revoke_timeout: Duration::from_secs(10),
            handoff_grace: Duration::ZERO,
            leave_wait: Duration::ZERO,
            orphan_timeout: Duration::ZERO,
            session_timeout: Duration::from_secs(45),
            heartbeat_interval: Duration::from_secs(3),
            assignment: Assignment::Cooperative,
            buffer_per_partition: 1024,
            max_batch_records: 10_000,
            fetch_rewind: 0,
            client_id: "keel".to_owned(),
            group_prefix: String::new(),
            librdkafka: std::collections::BTreeMap::new(),
        }
    }
}

/// The URL parameters of the Tansu profile ([`KafkaConfig::tansu`]), for scripts
/// and tests that build `kafka://` URLs for Tansu: `kafka://host:9092?profile=tansu`
/// is the same.
pub const TANSU_PARAMETERS: &str = "replication=1&handoff_grace_ms=1000&leave_wait_ms=4000\
&orphan_timeout_ms=20000&session_timeout_ms=10000&heartbeat_interval_ms=100\
&assignment=range&max_batch_records=1000&fetch_rewind=1000";

/// Broker settings Keel needs on Apache Kafka (`server.properties` names; in the
/// official image's environment, `KAFKA_` and the name in upper case with `_` for
/// `.`). `message.max.bytes` and `replica.fetch.max.bytes` let Keel's largest record
/// through (its default [`KafkaConfig::max_message_bytes`], 8 MiB, plus batch
/// overhead); topics are created by Keel with its partition count (retry and
/// dead-letter topics with one), never implicitly by a consumer's metadata request;
/// `min.insync.replicas` below the replication factor is what `acks=all` waits for.
/// Set `default.replication.factor` and `min.insync.replicas` to your cluster (3 and 2
/// on three brokers; docker-compose.yml's single broker uses 1 and 1).
pub const APACHE_KAFKA_BROKER_SETTINGS: &[(&str, &str)] = &[
    ("message.max.bytes", "8500000"),
    ("replica.fetch.max.bytes", "8500000"),
    ("auto.create.topics.enable", "false"),
    ("default.replication.factor", "1"),
    ("min.insync.replicas", "1"),
];

/// The query parameters [`KafkaConfig::from_url`] understands.
pub const URL_PARAMETERS: &[&str] = &[
    "profile",
    "partitions",
    "replication",
    "create_topics",
    "linger_ms",
    "publish_timeout_ms",
    "max_message_bytes",
    "commit_interval_ms",
    "revoke_timeout_ms",
    "handoff_grace_ms",
    "leave_wait_ms",
    "orphan_timeout_ms",
    "session_timeout_ms",
    "heartbeat_interval_ms",
    "assignment",
    "buffer_per_partition",
    "max_batch_records",
    "fetch_rewind",
    "client_id",
    "group_prefix",
];

impl KafkaConfig {
    /// The defaults, with these brokers.
    pub fn new(brokers: impl Into<String>) -> Self {
        Self { brokers: brokers.into(), ..Self::default() }
    }

    /// The workarounds the Tansu broker (0.6) needs, over the Apache Kafka defaults
    /// (URL parameter `profile=tansu`, the same as [`TANSU_PARAMETERS`]): a 1 s
    /// hand-off grace, a 4 s leave wait, the 20 s orphan watchdog, 10 s sessions with
    /// 100 ms heartbeats, range assignment, batches of at most 1000 records with a
    /// 1000-record fetch rewind, and a replication factor of 1 (Tansu has no broker
    /// default). The crate docs say why each is needed.
    #[must_use]
    pub fn tansu(mut self) -> Self {
        self.replication = Some(1);
        self.handoff_grace = Duration::from_secs(1);
        self.leave_wait = Duration::from_secs(4);
        self.orphan_timeout = Duration::from_secs(20);
        self.session_timeout = Duration::from_secs(10);
        self.heartbeat_interval = Duration::from_millis(100);
        self.assignment = Assignment::Range;
        self.max_batch_records = 1000;
        self.fetch_rewind = 1000;
        self
    }

    /// Parses `kafka://host:port[,host2:port]?partitions=8&...`. The parameters are
    /// the fields of [`KafkaConfig`] (durations in milliseconds with an `_ms`
    /// suffix), listed in [`URL_PARAMETERS`]; an unknown or malformed one is a
    /// [`BusError::Config`] naming it.
    pub fn from_url(url: &str) -> Result<Self, BusError> {
        let rest = url.strip_prefix("kafka://").ok_or_else(|| {
            BusError::Config(format!("bus URL `{url}` must start with `kafka://`"))
        })?;
        let (hosts, query) = match rest.split_once('?') {
            Some((hosts, query)) => (hosts, Some(query)),
            None => (rest, None),
        };
        let hosts = hosts.trim_end_matches('/');
        if hosts.is_empty() {
            return Err(BusError::Config(format!("bus URL `{url}` names no broker")));
        }
        for host in hosts.split(',') {
            let valid = host.rsplit_once(':').is_some_and(|(name, port)| {
                !name.is_empty() && !port.is_empty() && port.parse::<u16>().is_ok()
            });
            if !valid {
                return Err(BusError::Config(format!(
                    "broker `{host}` in bus URL `{url}` must be `host:port`"
                )));
            }
        }
        let mut config = Self::new(hosts);
        let pairs: Vec<(&str, &str)> = query
            .into_iter()
            .flat_map(|q| q.split('&'))
            .filter(|p| !p.is_empty())
            .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
            .collect();
        // The profile first, wherever it is: the other parameters refine it.
        for (_, value) in pairs.iter().filter(|(key, _)| *key == "profile") {
            config = match *value {
                "apache" => Self::new(hosts),
                "tansu" => Self::new(hosts).tansu(),
                other => {
                    return Err(BusError::Config(format!(
                        "bus URL parameter `profile` must be `apache` or `tansu`, not `{other}`"
                    )));
                }
            };
        }
        for (key, value) in pairs.into_iter().filter(|(key, _)| *key != "profile") {
            config.set_parameter(key, value)?;
        }
        config.validate()?;
        Ok(config)
    }

    fn set_parameter(&mut self, key: &str, value: &str) -> Result<(), BusError> {
        fn number<T: std::str::FromStr>(key: &str, value: &str) -> Result<T, BusError> {
            value.parse().map_err(|_| {
                BusError::Config(format!(
                    "bus URL parameter `{key}` must be a non-negative integer, not `{value}`"
                ))
            })
        }
        let millis = |value: &str| number::<u64>(key, value).map(Duration::from_millis);
        match key {
            "partitions" => self.partitions = number(key, value)?,
            "replication" => self.replication = Some(number(key, value)?),
            "create_topics" => {
                self.create_topics = match value {
                    "true" => true,
                    "false" => false,
                    _ => {
                        return Err(BusError::Config(format!(
                            "bus URL parameter `create_topics` must be `true` or `false`, not `{value}`"
                        )));
                    }
                }
            }
            "linger_ms" => self.linger = millis(value)?,
            "publish_timeout_ms" => self.publish_timeout = millis(value)?,
            "max_message_bytes" => self.max_message_bytes = number(key, value)?,
            "commit_interval_ms" => self.commit_interval = millis(value)?,
            "revoke_timeout_ms" => self.revoke_timeout = millis(value)?,
            "handoff_grace_ms" => self.handoff_grace = millis(value)?,
            "leave_wait_ms" => self.leave_wait = millis(value)?,
            "orphan_timeout_ms" => self.orphan_timeout = millis(value)?,
            "session_timeout_ms" => self.session_timeout = millis(value)?,
            "heartbeat_interval_ms" => self.heartbeat_interval = millis(value)?,
            "assignment" => {
                self.assignment = match value {
                    "cooperative" | "cooperative-sticky" => Assignment::Cooperative,
                    "range" => Assignment::Range,
                    _ => {
                        return Err(BusError::Config(format!(
                            "bus URL parameter `assignment` must be `cooperative` or `range`, not `{value}`"
                        )));
                    }
                }
            }
            "buffer_per_partition" => self.buffer_per_partition = number(key, value)?,
            "max_batch_records" => self.max_batch_records = number(key, value)?,
            "fetch_rewind" => self.fetch_rewind = number(key, value)?,
            "client_id" if !value.is_empty() => self.client_id = value.to_owned(),
            "group_prefix" => self.group_prefix = value.to_owned(),
            property if property.starts_with("rdkafka.") && property.len() > 8 => {
                self.librdkafka.insert(property["rdkafka.".len()..].to_owned(), value.to_owned());
            }
            _ => {
                return Err(BusError::Config(format!(
                    "unknown or empty bus URL parameter `{key}` (known: {}, and `rdkafka.<property>`)",
                    URL_PARAMETERS.join(", ")
                )));
            }
        }
        Ok(())
    }

    /// Checks the values make sense together.
    pub fn validate(&self) -> Result<(), BusError> {
        let bad = |what: &str| Err(BusError::Config(what.to_owned()));
        if self.brokers.trim().is_empty() {
            return bad("no Kafka broker configured");
        }
        if self.partitions < 1 {
            return bad("`partitions` must be at least 1");
        }
        if self.replication.is_some_and(|r| r < 1 || r > i32::from(i16::MAX)) {
            return bad("`replication` must be at least 1");
        }
        if self.max_message_bytes < 1024 || self.max_message_bytes > 1_000_000_000 {
            return bad("`max_message_bytes` must be between 1024 and 1000000000");
        }
        if self.publish_timeout.is_zero() || self.session_timeout.is_zero() {
            return bad("`publish_timeout_ms` and `session_timeout_ms` must be positive");
        }
        if self.heartbeat_interval.is_zero() || self.heartbeat_interval >= self.session_timeout {
            return bad("`heartbeat_interval_ms` must be positive and below `session_timeout_ms`");
        }
        if self.buffer_per_partition == 0 {
            return bad("`buffer_per_partition` must be at least 1");
        }
        if self.max_batch_records == 0 || self.max_batch_records > 1_000_000 {
            return bad("`max_batch_records` must be between 1 and 1000000");
        }
        if self.fetch_rewind < 0 {
            return bad("`fetch_rewind` must not be negative");
        }
        Ok(())
    }

    /// Applies the extra librdkafka properties (last, so they win).
    fn finish(&self, mut config: ClientConfig) -> ClientConfig {
        for (key, value) in &self.librdkafka {
            config.set(key, value);
        }
        config
    }

    /// A plain client (the admin client).
    pub(crate) fn client(&self) -> ClientConfig {
        self.finish(self.base())
    }

    /// Settings every client shares.
    fn base(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("client.id", &self.client_id)
            // librdkafka's logs go to `tracing` through the client context's default.
            .set("log_level", "4");
        config
    }

    /// The producer: idempotent, every record confirmed by all in-sync replicas.
    pub(crate) fn producer(&self) -> ClientConfig {
        let mut config = self.base();
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", millis(self.linger))
            .set("message.timeout.ms", millis(self.publish_timeout))
            .set("message.max.bytes", self.max_message_bytes.to_string())
            .set("batch.num.messages", self.max_batch_records.to_string())
            // Records without a key go to a random partition each, not to one
            // partition per linger window, so a group's members share them.
            .set("sticky.partitioning.linger.ms", "0")
            .set("compression.type", "none");
        self.finish(config)
    }

    /// A group member: no automatic commits or offset stores (offsets are committed by
    /// the subscription once messages are settled).
    pub(crate) fn member(&self, group: &str, reset: &str) -> ClientConfig {
        let mut config = self.base();
        config
            .set("group.id", format!("{}{group}", self.group_prefix))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", reset)
            .set("partition.assignment.strategy", self.assignment.as_str())
            .set("session.timeout.ms", millis(self.session_timeout))
            .set("heartbeat.interval.ms", millis(self.heartbeat_interval))
            .set("queued.min.messages", "10000")
            .set("queued.max.messages.kbytes", "16384");
        self.fetch_sizes(&mut config);
        self.finish(config)
    }

    /// A reader that assigns partitions itself (dead letters, replay): no group
    /// membership, no commits, end-of-partition events on.
    pub(crate) fn reader(&self) -> ClientConfig {
        let mut config = self.base();
        config
            .set("group.id", format!("keel-reader-{}", uuid::Uuid::now_v7().simple()))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "true")
            .set("auto.offset.reset", "earliest");
        self.fetch_sizes(&mut config);
        self.finish(config)
    }
}

impl KafkaConfig {
    /// Fetch sizes that let the largest record through (librdkafka wants the receive
    /// limit above the fetch limit).
    fn fetch_sizes(&self, config: &mut ClientConfig) {
        let fetch = self.max_message_bytes.saturating_mul(4).max(52_428_800);
        config
            .set("fetch.message.max.bytes", self.max_message_bytes.to_string())
            .set("fetch.max.bytes", fetch.to_string())
            .set("receive.message.max.bytes", (fetch + 1_048_576).to_string());
    }
}

fn millis(duration: Duration) -> String {
    duration.as_millis().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_brokers_and_parameters() {
        let config = KafkaConfig::from_url(
            "kafka://a:9092,b:9093?partitions=3&handoff_grace_ms=0&client_id=svc",
        )
        .expect("valid");
        assert_eq!(config.brokers, "a:9092,b:9093");
        assert_eq!(config.partitions, 3);
        assert_eq!(config.handoff_grace, Duration::ZERO);
        assert_eq!(config.client_id, "svc");
        let config =
            KafkaConfig::from_url("kafka://h:1?rdkafka.security.protocol=ssl").expect("ok");
        assert_eq!(config.librdkafka.get("security.protocol").map(String::as_str), Some("ssl"));
        let member = config.member("g", "earliest");
        assert_eq!(member.get("security.protocol"), Some("ssl"));
        assert_eq!(member.get("enable.auto.commit"), Some("false"));
        assert_eq!(KafkaConfig::from_url("kafka://h:1/").expect("valid").partitions, 8);
    }

    #[test]
    fn defaults_are_for_apache_kafka_and_the_tansu_profile_is_a_parameter() {
        let apache = KafkaConfig::from_url("kafka://h:1").expect("valid");
        assert_eq!(apache, KafkaConfig::new("h:1"));
        assert_eq!(apache.replication, None, "the broker's default.replication.factor");
        assert_eq!(
            (apache.handoff_grace, apache.leave_wait, apache.orphan_timeout, apache.fetch_rewind),
            (Duration::ZERO, Duration::ZERO, Duration::ZERO, 0)
        );
        assert_eq!(apache.session_timeout, Duration::from_secs(45));
        assert_eq!(apache.heartbeat_interval, Duration::from_secs(3));
        let member = apache.member("g", "earliest");
        assert_eq!(member.get("partition.assignment.strategy"), Some("cooperative-sticky"));
        assert_eq!(member.get("session.timeout.ms"), Some("45000"));

        let tansu = KafkaConfig::from_url("kafka://h:1?profile=tansu").expect("valid");
        assert_eq!(tansu, KafkaConfig::new("h:1").tansu());
        assert_eq!(
            KafkaConfig::from_url(&format!("kafka://h:1?{TANSU_PARAMETERS}")).expect("valid"),
            tansu,
            "TANSU_PARAMETERS is the profile"
        );
        assert_eq!(
            tansu.member("g", "earliest").get("partition.assignment.strategy"),
            Some("range")
        );
        assert_eq!(tansu.replication, Some(1));
        // Later parameters refine the profile, wherever it stands.
        let refined =
            KafkaConfig::from_url("kafka://h:1?fetch_rewind=5&profile=tansu").expect("valid");
        assert_eq!((refined.fetch_rewind, refined.handoff_grace), (5, Duration::from_secs(1)));
        let err = KafkaConfig::from_url("kafka://h:1?profile=redpanda").expect_err("unknown");
        assert!(err.to_string().contains("`profile`"), "{err}");
        let err = KafkaConfig::from_url("kafka://h:1?assignment=sticky").expect_err("unknown");
        assert!(err.to_string().contains("`assignment`"), "{err}");
    }

    #[test]
    fn names_what_is_wrong() {
        let err = KafkaConfig::from_url("kafka://h:1?partitionz=3").expect_err("unknown");
        assert!(err.to_string().contains("`partitionz`"), "{err}");
        let err = KafkaConfig::from_url("kafka://h:1?partitions=x").expect_err("bad number");
        assert!(err.to_string().contains("`partitions`"), "{err}");
        let err = KafkaConfig::from_url("kafka://h:1?partitions=0").expect_err("zero");
        assert!(err.to_string().contains("partitions"), "{err}");
        assert!(KafkaConfig::from_url("amqp://h:1").is_err());
        assert!(KafkaConfig::from_url("kafka://").is_err());
        assert!(KafkaConfig::from_url("kafka://host").is_err());
        assert!(KafkaConfig::from_url("kafka://host:port").is_err());
    }
}
