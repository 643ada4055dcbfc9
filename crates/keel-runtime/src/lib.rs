//! Running Keel processes from configuration: what the `keel` binary and the example
//! services' binaries share.
//!
//! # Layout
//!
//! - `config.rs`: [`Config`], the `KEEL_*` settings over an optional `keel.toml`, each
//!   bad value named by its key.
//! - `runner.rs`: [`ServiceRunner`], a service binary's whole `main`: its migrations,
//!   routes, consumers and projections, served from `KEEL_*` configuration until a
//!   signal, then stopped in order; [`ProjectionTask`], a projection following the log.
//! - `cli.rs`: the command line every runner binary gets: serving (the default),
//!   `projections list`, `projections rebuild NAME`, `replay --into projection:NAME`.
//! - `lib.rs`: opening the bus of `KEEL_BUS_URL` in the namespace of `KEEL_NAMESPACE`
//!   ([`open_bus`]) or the log itself ([`system_bus`]), the registry
//!   ([`connect_registry`]), the relay, and [`start_service`], which puts an axum app behind
//!   the service kit (health, readiness, metrics, registration).
//! - `redact.rs`: [`redact_url`], a connection URL without its secrets, for printing.
//! - `shutdown.rs`: stopping a process's [`Parts`] in order, each failure logged
//!   naming its part and the whole reported as a [`ShutdownError`].

#![warn(missing_docs)]

mod cli;
pub mod config;
mod redact;
mod runner;
pub mod shutdown;
mod task;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use keel_core::{Bus, Namespace, NamespacedBus};
use keel_registry::Registry;
use keel_service::{IdentityKey, Readiness, RunningService, Service, ServiceConfig};
use keel_sql::Db;
use keel_store::{Cursor, EventLog, Relay};

pub use config::{Config, ConfigError};
pub use keel_sql::{Conn, Projection, ProjectionSpec};
pub use redact::redact_url;
pub use runner::{ProjectionTask, RunningServiceRunner, ServiceContext, ServiceRunner, TimerTask};
pub use shutdown::{Parts, Shutdown, ShutdownError};

/// Connects to the broker at `url` (`KEEL_BUS_URL`) within `namespace`
/// (`KEEL_NAMESPACE`: its topics and groups are qualified, [`NamespacedBus`]); `None`
/// when the log itself is the bus (unset or `log://`), which the store's namespace
/// already keeps apart. A URL whose backend this build lacks is refused naming the
/// cargo feature that brings it.
pub async fn open_bus(
    url: Option<&str>,
    namespace: &Namespace,
) -> anyhow::Result<Option<Arc<dyn Bus>>> {
    Ok(open_broker(url).await?.map(|bus| NamespacedBus::wrap(bus, namespace)))
}

async fn open_broker(url: Option<&str>) -> anyhow::Result<Option<Arc<dyn Bus>>> {
    let Some(url) = url else { return Ok(None) };
    check_bus_backend(url, compiled)?;
    if url.starts_with("log://") {
        return Ok(None);
    }
    if url.starts_with("memory://") {
        #[cfg(feature = "memory")]
        return Ok(Some(Arc::new(keel_memory::MemoryBus::new())));
    }
    if url.starts_with("amqp://") || url.starts_with("amqps://") {
        #[cfg(feature = "amqp")]
        {
            let bus = keel_amqp::AmqpBus::connect(url, keel_amqp::AmqpConfig::default())
                .await
                .context("KEEL_BUS_URL")?;
            return Ok(Some(Arc::new(bus)));
        }
    }
    if url.starts_with("kafka://") {
        #[cfg(feature = "kafka")]
        {
            let bus = keel_kafka::KafkaBus::connect_checked(url).await.context("KEEL_BUS_URL")?;
            return Ok(Some(Arc::new(bus)));
        }
    }
    // check_bus_backend refused every scheme this build cannot open.
    anyhow::bail!("KEEL_BUS_URL `{}`: no backend opened it", redact_url(url))
}

/// Whether this build has the bus backend of cargo feature `feature`.
fn compiled(feature: &str) -> bool {
    const BACKENDS: [(&str, bool); 3] = [
        ("memory", cfg!(feature = "memory")),
        ("amqp", cfg!(feature = "amqp")),
        ("kafka", cfg!(feature = "kafka")),
    ];
    BACKENDS.iter().any(|&(name, on)| name == feature && on)
}

/// Refuses a `KEEL_BUS_URL` Keel does not know, or whose backend (cargo feature) is not
/// in the build (`compiled` says which are), naming the feature.
fn check_bus_backend(url: &str, compiled: impl Fn(&str) -> bool) -> anyhow::Result<()> {
    let feature = if url.starts_with("log://") {
        return Ok(());
    } else if url.starts_with("memory://") {
        "memory"
    } else if url.starts_with("amqp://") || url.starts_with("amqps://") {
        "amqp"
    } else if url.starts_with("kafka://") {
        "kafka"
    } else {
        anyhow::bail!(
            "KEEL_BUS_URL `{}`: not a bus Keel knows (log://, memory://, amqp://, kafka://)",
            redact_url(url)
        )
    };
    if compiled(feature) { Ok(()) } else { Err(missing_feature("KEEL_BUS_URL", url, feature)) }
}

/// The start-up error for a setting whose backend is not compiled in.
fn missing_feature(key: &str, url: &str, feature: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "{key} `{}` needs the `{feature}` feature, which this build of Keel lacks \
         (add it to the `keel` dependency's features)",
        redact_url(url)
    )
}

/// A relay running in this process, and how to stop it.
#[derive(Debug)]
pub struct RelayTask(task::StoppableTask<keel_store::StoreError>);

impl RelayTask {
    /// Starts relay `name` from the log to `bus`.
    pub fn start(log: Arc<dyn EventLog>, bus: Arc<dyn Bus>, name: &str) -> Self {
        let relay = Relay::new(log, bus, name);
        Self(task::StoppableTask::spawn(|stopped| relay.run(stopped)))
    }

    /// Stops the relay after its current batch; an error if it failed or panicked.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.0.stop("the relay task").await
    }
}

/// The registry of `KEEL_CONSUL_URL` (unset: in-process), reached with
/// `KEEL_CONSUL_TOKEN` and, for `https://`, trusting `KEEL_CONSUL_CA_FILE`'s CA too.
pub async fn connect_registry(config: &Config) -> anyhow::Result<Arc<dyn keel_registry::Registry>> {
    let mut access = keel_registry::ConsulAccess::default().namespace(config.namespace.clone());
    if let Some(token) = &config.consul_token {
        access = access.token(token.clone());
    }
    if let Some(path) = &config.consul_ca_file {
        let pem = std::fs::read(path)
            .with_context(|| format!("reading KEEL_CONSUL_CA_FILE {}", path.display()))?;
        access = access.ca_pem(pem);
    }
    keel_registry::connect_with(config.consul_url.as_deref(), &access)
        .await
        .context("KEEL_CONSUL_URL")
}

/// The bus services consume from: the broker of `KEEL_BUS_URL` (then `true`: the log
/// needs a relay to reach it), or (unset) the log itself.
pub async fn system_bus(config: &Config, db: &Db) -> anyhow::Result<(Arc<dyn Bus>, bool)> {
    if let Some(bus) = open_bus(config.bus_url.as_deref(), &config.namespace).await? {
        return Ok((bus, true));
    }
    let bus: Arc<dyn Bus> = match db {
        #[cfg(feature = "sqlite")]
        Db::Sqlite(log) => Arc::new(keel_logbus::open(Arc::new(log.clone())).await?),
        #[cfg(feature = "postgres")]
        Db::Postgres(log) => Arc::new(keel_logbus::open(Arc::new(log.clone())).await?),
    };
    Ok((bus, false))
}

/// Starts relay `name` from the log to the broker `bus`. Start it after the consumers
/// have subscribed: RabbitMQ keeps nothing for a group that does not exist yet. The
/// in-memory bus is relayed from the start each time: it forgets everything on exit,
/// and the consumers' inboxes skip what they already handled.
pub async fn start_relay(
    config: &Config,
    db: &Db,
    bus: Arc<dyn Bus>,
    name: &str,
) -> anyhow::Result<RelayTask> {
    let log = db.log();
    if config.bus_url.as_deref().is_some_and(|url| url.starts_with("memory://")) {
        log.save_checkpoint(&Relay::checkpoint_name(name), Cursor::START).await?;
    }
    Ok(RelayTask::start(log, bus, name))
}

/// Puts `router` behind the service kit on `listen`, registered as `name`, ready
/// while the database answers, verifying callers' signed identities with `identity`
/// ([`Config::identity_key`]; `None`, the open mode, is warned about).
pub async fn start_service(
    name: &str,
    router: Router,
    registry: &Arc<dyn Registry>,
    db: &Db,
    listen: SocketAddr,
    advertise_host: Option<&str>,
    identity: Option<IdentityKey>,
) -> anyhow::Result<RunningService> {
    let mut service_config = ServiceConfig::new(name, listen, registry.clone());
    if let Some(host) = advertise_host {
        service_config.advertise_host = host.to_owned();
    }
    if identity.is_none() {
        tracing::warn!(
            service = name,
            "neither KEEL_IDENTITY_SECRET nor KEEL_JWT_SECRET is set: the service believes \
             whoever reaches its port (x-keel-subject) and lets anonymous callers write"
        );
    }
    service_config.identity = identity;
    service_config.check_interval = Duration::from_secs(2);
    service_config.shutdown_grace = Duration::from_secs(5);
    let log = db.log();
    let readiness = Readiness::new().check("database", move || {
        let log = log.clone();
        async move { log.head().await.map(|_| ()).map_err(|e| e.to_string()) }
    });
    Service::new(service_config)
        .readiness(readiness)
        .router(router)
        .bind()
        .await
        .with_context(|| format!("starting the {name} service"))
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM.
///
/// The handlers are installed when this is called, not when the future is first
/// polled: call it before announcing that the process is up (`listening on ...`), so
/// a signal sent as soon as that line is read does not meet the default action, which
/// kills the process without a graceful stop.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate()).ok();
        let interrupt = signal(SignalKind::interrupt()).ok();
        async move {
            let received = |signal: Option<tokio::signal::unix::Signal>| async move {
                match signal {
                    Some(mut signal) => {
                        signal.recv().await;
                    }
                    // Not installable: only the other signal stops the process.
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = received(term) => {}
                () = received(interrupt) => {}
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bus_url_for_a_backend_the_build_lacks_names_the_feature() {
        for (url, feature) in [
            ("amqp://guest:secret@127.0.0.1:5672/%2f", "amqp"),
            ("kafka://127.0.0.1:9092", "kafka"),
            ("memory://", "memory"),
        ] {
            let error = check_bus_backend(url, |f| f != feature).expect_err(url).to_string();
            assert!(error.starts_with("KEEL_BUS_URL `"), "{error}");
            assert!(error.contains(&format!("needs the `{feature}` feature")), "{error}");
            assert!(!error.contains("secret"), "the password is redacted: {error}");
            assert!(check_bus_backend(url, |_| true).is_ok(), "{url} with every feature");
        }
        assert!(check_bus_backend("log://", |_| false).is_ok(), "the log needs no feature");
        let error = check_bus_backend("nats://x", |_| true).expect_err("nats").to_string();
        assert!(error.contains("not a bus Keel knows"), "{error}");
    }

    /// `open_bus` (which the runner's start goes through, via `system_bus`) applies
    /// the check before opening anything.
    #[tokio::test]
    async fn open_bus_checks_the_url_first() {
        let none = Namespace::none();
        let error = open_bus(Some("nats://x"), &none).await.err().expect("refused").to_string();
        assert!(error.contains("not a bus Keel knows"), "{error}");
        assert!(open_bus(Some("log://"), &none).await.expect("the log").is_none());
        assert!(!compiled("nats"));
    }
}
