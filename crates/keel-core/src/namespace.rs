//! Namespaces (`KEEL_NAMESPACE`, DESIGN 2.15): several deployments share one broker,
//! one Consul and one PostgreSQL database without seeing each other.
//!
//! A [`Namespace`] is either the default (no namespace: every name exactly as Keel
//! has always built it) or a short name of `[a-z0-9_-]` that qualifies everything the
//! deployment shares with others. It is applied in one place per seam:
//! - the bus: [`NamespacedBus`] wraps a broker backend (RabbitMQ, Kafka) and qualifies
//!   every topic and consumer group it is given (`<namespace>.<topic>`), so the
//!   backend builds its exchanges, queues, Kafka topics, group ids and dead-letter
//!   destinations from qualified names; dead letters come back with the names the
//!   caller used;
//! - the registry: Consul service names and instance ids are qualified the same way
//!   (keel-registry);
//! - the store: on PostgreSQL the namespace is a schema of its own
//!   ([`Namespace::schema`]; keel-postgres); a SQLite file is already one deployment.
//!   The log bus lives in the store, so its groups follow the store.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use async_trait::async_trait;

use crate::bus::{
    BusError, DeadLetter, DeadLetterId, DeadLetters, GroupDepth, Publisher, Subscriber,
    Subscription, SubscriptionSpec,
};
use crate::envelope::CloudEvent;

/// The separator between a namespace and the name it qualifies. No namespace contains
/// it, so two namespaces never qualify two names to the same string.
const SEPARATOR: char = '.';

/// A deployment's namespace; the default is none. See the [module docs](self).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Namespace(Option<Arc<str>>);

/// Why a namespace was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("namespace `{name}` {reason}")]
pub struct NamespaceError {
    /// The name as given.
    pub name: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl Namespace {
    /// The longest namespace: room is left for the names it qualifies within every
    /// backend's limits (RabbitMQ's 255 bytes, PostgreSQL's 63-byte identifiers).
    pub const MAX_LEN: usize = 32;

    /// The default: no namespace, every name unchanged.
    pub fn none() -> Self {
        Self(None)
    }

    /// Checks `name`: empty gives the default; otherwise 1 to [`Namespace::MAX_LEN`]
    /// characters of `a-z`, `0-9`, `_` and `-`, starting with a letter, and not
    /// starting with `pg_` (PostgreSQL reserves those schema names). Every backend
    /// accepts such names as they are.
    pub fn new(name: &str) -> Result<Self, NamespaceError> {
        let refuse = |reason| Err(NamespaceError { name: name.to_owned(), reason });
        if name.is_empty() {
            return Ok(Self::none());
        }
        if name.len() > Self::MAX_LEN {
            return refuse("is longer than 32 characters");
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        {
            return refuse("may contain only a-z, 0-9, `_` and `-`");
        }
        if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
            return refuse("must start with a letter a-z");
        }
        if name.starts_with("pg_") {
            return refuse("must not start with `pg_` (reserved by PostgreSQL)");
        }
        Ok(Self(Some(name.into())))
    }

    /// Whether this is the default (no namespace).
    pub fn is_default(&self) -> bool {
        self.0.is_none()
    }

    /// The namespace's name; `None` for the default.
    pub fn as_str(&self) -> Option<&str> {
        self.0.as_deref()
    }

    /// `name` within the namespace: `<namespace>.<name>`, or `name` itself for the
    /// default namespace.
    pub fn qualify<'a>(&self, name: &'a str) -> Cow<'a, str> {
        match &self.0 {
            None => Cow::Borrowed(name),
            Some(ns) => Cow::Owned(format!("{ns}{SEPARATOR}{name}")),
        }
    }

    /// The name [`Namespace::qualify`] was given for `qualified`; `None` when
    /// `qualified` is not in this namespace. The default namespace answers every name.
    pub fn unqualify<'a>(&self, qualified: &'a str) -> Option<&'a str> {
        match &self.0 {
            None => Some(qualified),
            Some(ns) => qualified.strip_prefix(&**ns)?.strip_prefix(SEPARATOR),
        }
    }

    /// The PostgreSQL schema of the namespace's tables; `None` for the default
    /// (the connection's own `search_path`, normally `public`).
    pub fn schema(&self) -> Option<&str> {
        self.as_str()
    }
}

impl FromStr for Namespace {
    type Err = NamespaceError;

    fn from_str(name: &str) -> Result<Self, NamespaceError> {
        Self::new(name)
    }
}

impl fmt::Display for Namespace {
    /// The name, or nothing for the default.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str().unwrap_or_default())
    }
}

/// A bus whose topics and consumer groups live in a [`Namespace`]: every name given
/// to it is qualified before it reaches the backend, and dead letters come back with
/// the names the caller used. Build it with [`NamespacedBus::wrap`].
///
/// Wrap broker backends (RabbitMQ, Kafka), whose names are shared with every other
/// deployment on the broker. The log bus needs no wrapping (and must not be wrapped:
/// it delivers events on the topic the log records for them): it lives in the store,
/// which the namespace already separates.
pub struct NamespacedBus {
    inner: Arc<dyn crate::bus::Bus>,
    namespace: Namespace,
}

impl fmt::Debug for NamespacedBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NamespacedBus").field("namespace", &self.namespace).finish_non_exhaustive()
    }
}

impl NamespacedBus {
    /// `bus` within `namespace`; the default namespace returns `bus` itself.
    pub fn wrap(bus: Arc<dyn crate::bus::Bus>, namespace: &Namespace) -> Arc<dyn crate::bus::Bus> {
        if namespace.is_default() {
            bus
        } else {
            Arc::new(Self { inner: bus, namespace: namespace.clone() })
        }
    }

    /// The namespace the names are qualified with.
    pub fn namespace(&self) -> &Namespace {
        &self.namespace
    }

    fn restore(&self, mut letter: DeadLetter) -> DeadLetter {
        if let Some(topic) = self.namespace.unqualify(&letter.topic) {
            letter.topic = topic.to_owned();
        }
        if let Some(group) = self.namespace.unqualify(&letter.group) {
            letter.group = group.to_owned();
        }
        letter
    }
}

#[async_trait]
impl Publisher for NamespacedBus {
    async fn publish(&self, topic: &str, events: &[CloudEvent]) -> Result<(), BusError> {
        self.inner.publish(&self.namespace.qualify(topic), events).await
    }

    async fn publish_routed(
        &self,
        topic: &str,
        events: &[CloudEvent],
    ) -> Result<Vec<String>, BusError> {
        self.inner.publish_routed(&self.namespace.qualify(topic), events).await
    }

    async fn publish_to_group(
        &self,
        topic: &str,
        group: &str,
        events: &[CloudEvent],
    ) -> Result<(), BusError> {
        let (topic, group) = (self.namespace.qualify(topic), self.namespace.qualify(group));
        self.inner.publish_to_group(&topic, &group, events).await
    }

    async fn close(&self) -> Result<(), BusError> {
        Publisher::close(&*self.inner).await
    }
}

#[async_trait]
impl Subscriber for NamespacedBus {
    async fn subscribe(
        &self,
        mut spec: SubscriptionSpec,
    ) -> Result<Box<dyn Subscription>, BusError> {
        // Check the caller's names first, so errors name what the caller gave.
        spec.validate()?;
        spec.topic = self.namespace.qualify(&spec.topic).into_owned();
        spec.group = self.namespace.qualify(&spec.group).into_owned();
        self.inner.subscribe(spec).await
    }

    async fn depth(&self, topic: &str, group: &str) -> Result<GroupDepth, BusError> {
        let (topic, group) = (self.namespace.qualify(topic), self.namespace.qualify(group));
        self.inner.depth(&topic, &group).await
    }
}

#[async_trait]
impl DeadLetters for NamespacedBus {
    async fn list(
        &self,
        topic: &str,
        group: &str,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, BusError> {
        let (topic, group) = (self.namespace.qualify(topic), self.namespace.qualify(group));
        let letters = self.inner.list(&topic, &group, limit).await?;
        Ok(letters.into_iter().map(|letter| self.restore(letter)).collect())
    }

    async fn retry(&self, topic: &str, group: &str, id: &DeadLetterId) -> Result<bool, BusError> {
        let (topic, group) = (self.namespace.qualify(topic), self.namespace.qualify(group));
        self.inner.retry(&topic, &group, id).await
    }

    async fn purge(&self, topic: &str, group: &str) -> Result<u64, BusError> {
        let (topic, group) = (self.namespace.qualify(topic), self.namespace.qualify(group));
        self.inner.purge(&topic, &group).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_keeps_every_name() {
        let none = Namespace::new("").expect("empty is the default");
        assert!(none.is_default());
        assert_eq!(none, Namespace::default());
        assert_eq!(none.qualify("orders"), "orders");
        assert_eq!(none.unqualify("orders"), Some("orders"));
        assert_eq!(none.schema(), None);
        assert_eq!(none.to_string(), "");
    }

    #[test]
    fn a_namespace_qualifies_and_unqualifies() {
        let ns: Namespace = "team-a_1".parse().expect("valid");
        assert_eq!(ns.qualify("orders"), "team-a_1.orders");
        assert_eq!(ns.unqualify("team-a_1.orders"), Some("orders"));
        assert_eq!(ns.unqualify("team-a_1orders"), None);
        assert_eq!(ns.unqualify("orders"), None);
        assert_eq!(ns.schema(), Some("team-a_1"));
        // No two namespaces qualify names to the same string.
        let other = Namespace::new("team").expect("valid");
        assert_eq!(other.unqualify(&ns.qualify("x")), None);
    }

    #[test]
    fn bad_names_are_refused_with_the_reason() {
        for bad in ["A", "1abc", "-x", "a.b", "a b", "pg_x", "é", &"a".repeat(33)] {
            let error = Namespace::new(bad).expect_err(bad);
            assert_eq!(error.name, bad);
        }
        assert!(Namespace::new(&"a".repeat(32)).is_ok());
    }
}
