//! Keel's service registry: services register themselves with a health check, and
//! callers discover the healthy instances of a service, kept fresh in the background.
//!
//! One trait, [`Registry`], with two backends: Consul (`KEEL_CONSUL_URL=http://...`)
//! and an in-process registry for the embedded mode (`keel up` with no configuration).
//!
//! # Layout
//!
//! - `lib.rs`: the [`Registry`] trait and the types it speaks: [`Registration`],
//!   [`HealthCheck`], [`Instance`], [`Watch`]; [`connect`] and [`connect_in`] (in a
//!   namespace), which pick the backend.
//! - `consul.rs`: [`ConsulRegistry`] over Consul's HTTP API; watches are blocking
//!   queries that keep the last snapshot through outages ([`next_index`] is the index
//!   reset rule of Consul's documentation); in a namespace, its names are qualified.
//! - `memory.rs`: [`InProcessRegistry`], which runs HTTP health checks itself.
#![warn(missing_docs)]

#[cfg(feature = "consul")]
mod consul;
mod memory;

#[cfg(feature = "consul")]
pub use consul::{ConsulRegistry, next_index};
pub use memory::InProcessRegistry;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use keel_core::Namespace;

/// What a service says about itself when it registers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// The instance; `instance.id` must be unique across the registry.
    pub instance: Instance,
    /// How the registry decides whether the instance is healthy; `None` = always healthy.
    pub check: Option<HealthCheck>,
}

/// An HTTP health check the registry runs against the instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// Absolute URL answered with 2xx while the instance is healthy (e.g. `/ready`).
    pub http: String,
    /// How often the registry checks `http`.
    pub interval: Duration,
    /// How long one check may take.
    pub timeout: Duration,
    /// After this long critical, the registry removes the instance altogether.
    pub deregister_critical_after: Duration,
    /// Whether the check starts out passing, so callers find the instance before the
    /// registry first checks it: set when the instance was ready as it registered.
    /// Otherwise it starts critical (as Consul's checks do) until a check passes, which
    /// Consul runs at a random moment within the first `interval`.
    pub initially_passing: bool,
}

/// One running instance of a service.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Instance {
    /// Unique id of this instance (e.g. `orders-<host>-<port>`).
    pub id: String,
    /// The service name instances are discovered by.
    pub service: String,
    /// Host name or IP address callers connect to.
    pub address: String,
    /// The port the instance listens on.
    pub port: u16,
    /// Free-form tags.
    pub tags: Vec<String>,
    /// Free-form metadata (e.g. the instance's version).
    pub meta: BTreeMap<String, String>,
}

impl Instance {
    /// `http://address:port`, the base URL of the instance.
    pub fn base_url(&self) -> String {
        if self.address.contains(':') {
            format!("http://[{}]:{}", self.address, self.port)
        } else {
            format!("http://{}:{}", self.address, self.port)
        }
    }
}

/// The healthy instances of one service, as last seen; cheap to clone and to read.
#[derive(Debug, Clone)]
pub struct Watch {
    rx: tokio::sync::watch::Receiver<Arc<[Instance]>>,
}

impl Watch {
    /// Discovery answers from a watch channel of the current instances.
    pub fn new(rx: tokio::sync::watch::Receiver<Arc<[Instance]>>) -> Self {
        Self { rx }
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<[Instance]> {
        self.rx.borrow().clone()
    }

    /// Waits until the snapshot changes; `Err` when the registry has shut down.
    pub async fn changed(&mut self) -> Result<Arc<[Instance]>, RegistryError> {
        self.rx.changed().await.map_err(|_| RegistryError::Closed)?;
        Ok(self.rx.borrow_and_update().clone())
    }
}

/// Registration and discovery. Implementations are cheap to share (`Arc<dyn Registry>`).
#[async_trait::async_trait]
pub trait Registry: Send + Sync + fmt::Debug {
    /// Registers (or re-registers) an instance.
    async fn register(&self, registration: &Registration) -> Result<(), RegistryError>;
    /// Removes an instance; removing an unknown one is not an error.
    async fn deregister(&self, instance_id: &str) -> Result<(), RegistryError>;
    /// Whether `instance_id` is registered at all, passing or not. A registry drops an
    /// instance that stays critical too long; its owner uses this to re-register. The
    /// default (for registries that cannot tell) answers `true`.
    async fn is_registered(&self, instance_id: &str) -> Result<bool, RegistryError> {
        let _ = instance_id;
        Ok(true)
    }
    /// The healthy instances of `service` right now (one round trip).
    async fn healthy(&self, service: &str) -> Result<Vec<Instance>, RegistryError>;
    /// A live snapshot of the healthy instances of `service`, kept fresh in the
    /// background until every clone of the returned [`Watch`] is dropped.
    fn watch(&self, service: &str) -> Watch;
}

/// The registry for `url`: `None` (or empty) gives a new [`InProcessRegistry`],
/// `http://host:port` (or `https://`) a [`ConsulRegistry`] once the agent has answered
/// with a leader.
/// Errors name the URL.
pub async fn connect(url: Option<&str>) -> Result<Arc<dyn Registry>, RegistryError> {
    connect_in(url, &Namespace::none()).await
}

/// [`connect`] within `namespace` (`KEEL_NAMESPACE`): Consul's service names and
/// instance ids are qualified ([`ConsulRegistry::with_namespace`]). The in-process
/// registry belongs to one process and needs no namespace.
pub async fn connect_in(
    url: Option<&str>,
    namespace: &Namespace,
) -> Result<Arc<dyn Registry>, RegistryError> {
    connect_with(url, &ConsulAccess::default().namespace(namespace.clone())).await
}

/// How Keel reaches a Consul agent beyond its URL.
#[derive(Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsulAccess {
    /// Consul's ACL token (`KEEL_CONSUL_TOKEN`), sent as `X-Consul-Token`.
    pub token: Option<String>,
    /// A certificate authority (PEM) to trust for an `https://` agent, beside the
    /// system's (the contents of `KEEL_CONSUL_CA_FILE`).
    pub ca_pem: Option<Vec<u8>>,
    /// The namespace (`KEEL_NAMESPACE`) qualifying service names and instance ids.
    pub namespace: Namespace,
}

impl std::fmt::Debug for ConsulAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsulAccess")
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("ca_pem", &self.ca_pem.as_ref().map(Vec::len))
            .field("namespace", &self.namespace)
            .finish()
    }
}

impl ConsulAccess {
    /// With the ACL token `token`.
    #[must_use]
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Within `namespace`.
    #[must_use]
    pub fn namespace(mut self, namespace: Namespace) -> Self {
        self.namespace = namespace;
        self
    }

    /// Trusting the certificate authority `ca_pem` (PEM).
    #[must_use]
    pub fn ca_pem(mut self, ca_pem: impl Into<Vec<u8>>) -> Self {
        self.ca_pem = Some(ca_pem.into());
        self
    }
}

/// [`connect`] with a token, a CA and a namespace for Consul (ignored for the
/// in-process registry).
pub async fn connect_with(
    url: Option<&str>,
    access: &ConsulAccess,
) -> Result<Arc<dyn Registry>, RegistryError> {
    #[cfg(not(feature = "consul"))]
    let _ = access;
    match url.map(str::trim).filter(|u| !u.is_empty()) {
        None => Ok(Arc::new(InProcessRegistry::new())),
        #[cfg(feature = "consul")]
        Some(url) => {
            let registry = ConsulRegistry::with_tls(url, access.ca_pem.as_deref())?;
            let registry = match &access.token {
                Some(token) => registry.with_token(token)?,
                None => registry,
            };
            Ok(Arc::new(registry.checked().await?.with_namespace(access.namespace.clone())))
        }
        #[cfg(not(feature = "consul"))]
        Some(url) => Err(RegistryError::InvalidUrl {
            url: url.to_owned(),
            reason: "KEEL_CONSUL_URL needs the `consul` feature, which this build of Keel lacks"
                .to_owned(),
        }),
    }
}

/// What can go wrong talking to a registry.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    #[error("registry unreachable: {0}")]
    /// The registry could not be reached (connection refused, timeout).
    Unreachable(String),
    #[error("registry refused the request: {0}")]
    /// The registry answered with an error.
    Refused(String),
    #[error("invalid registry URL {url:?}: {reason}")]
    /// The registry URL (`KEEL_CONSUL_URL`) is not usable.
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    #[error("registry closed")]
    /// The registry was closed (an in-process registry after shutdown).
    Closed,
}

impl RegistryError {
    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unreachable(_))
    }
}
