//! Running Keel processes from configuration: what the `keel` binary and the example
//! services' binaries share.
//!
//! # Layout
//!
//! - `config.rs`: [`Config`], the `KEEL_*` settings over an optional `keel.toml`, each
//!   bad value named by its key.
//! - `lib.rs`: opening the bus of `KEEL_BUS_URL` ([`open_bus`]) or the log itself
//!   ([`system_bus`]), the relay, and [`start_service`] / [`run_service`], which put an
//!   axum app behind the service kit (health, readiness, metrics, registration).
//! - `redact.rs`: [`redact_url`], a connection URL without its secrets, for printing.
//! - `shutdown.rs`: stopping a process's [`Parts`] in order, each failure logged
//!   naming its part and the whole reported as a [`ShutdownError`].

pub mod config;
mod redact;
pub mod shutdown;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use keel_bus::ConsumerHandle;
use keel_core::Bus;
use keel_registry::Registry;
use keel_service::{IdentityKey, Readiness, RunningService, Service, ServiceConfig};
use keel_sql::Db;
use keel_store::{Cursor, EventLog, Relay};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use config::{Config, ConfigError};
pub use redact::redact_url;
pub use shutdown::{Parts, Shutdown, ShutdownError};

/// Connects to the broker at `url` (`KEEL_BUS_URL`); `None` when the log itself is the
/// bus (unset or `log://`). A URL whose backend this build lacks is refused naming the
/// cargo feature that brings it.
pub async fn open_bus(url: Option<&str>) -> anyhow::Result<Option<Arc<dyn Bus>>> {
    let Some(url) = url else { return Ok(None) };
    if url.starts_with("log://") {
        return Ok(None);
    }
    if url.starts_with("memory://") {
        #[cfg(feature = "memory")]
        return Ok(Some(Arc::new(keel_memory::MemoryBus::new())));
        #[cfg(not(feature = "memory"))]
        return Err(missing_feature("KEEL_BUS_URL", url, "memory"));
    }
    if url.starts_with("amqp://") || url.starts_with("amqps://") {
        #[cfg(feature = "amqp")]
        {
            let bus = keel_amqp::AmqpBus::connect(url, keel_amqp::AmqpConfig::default())
                .await
                .context("KEEL_BUS_URL")?;
            return Ok(Some(Arc::new(bus)));
        }
        #[cfg(not(feature = "amqp"))]
        return Err(missing_feature("KEEL_BUS_URL", url, "amqp"));
    }
    if url.starts_with("kafka://") {
        #[cfg(feature = "kafka")]
        {
            let bus = keel_kafka::KafkaBus::connect_checked(url).await.context("KEEL_BUS_URL")?;
            return Ok(Some(Arc::new(bus)));
        }
        #[cfg(not(feature = "kafka"))]
        return Err(missing_feature("KEEL_BUS_URL", url, "kafka"));
    }
    anyhow::bail!(
        "KEEL_BUS_URL `{}`: not a bus Keel knows (log://, memory://, amqp://, kafka://)",
        redact_url(url)
    )
}

/// The start-up error for a setting whose backend is not compiled in.
#[allow(dead_code)] // unused when every backend is compiled in
fn missing_feature(key: &str, url: &str, feature: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "{key} `{}` needs the `{feature}` feature, which this build of Keel lacks \
         (add it to the `keel` dependency's features)",
        redact_url(url)
    )
}

/// A relay running in this process, and how to stop it.
#[derive(Debug)]
pub struct RelayTask {
    stop: oneshot::Sender<()>,
    task: JoinHandle<keel_store::Result<()>>,
}

impl RelayTask {
    /// Starts relay `name` from the log to `bus`.
    pub fn start(log: Arc<dyn EventLog>, bus: Arc<dyn Bus>, name: &str) -> Self {
        let (stop, stopped) = oneshot::channel::<()>();
        let relay = Relay::new(log, bus, name);
        let task = tokio::spawn(relay.run(async {
            let _ = stopped.await;
        }));
        Self { stop, task }
    }

    /// Stops the relay after its current batch; an error if it failed or panicked.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        match self.task.await {
            Ok(result) => Ok(result?),
            Err(panicked) => Err(anyhow::Error::from(panicked).context("the relay task panicked")),
        }
    }
}

/// The bus services consume from: the broker of `KEEL_BUS_URL` (then `true`: the log
/// needs a relay to reach it), or (unset) the log itself.
pub async fn system_bus(config: &Config, db: &Db) -> anyhow::Result<(Arc<dyn Bus>, bool)> {
    if let Some(bus) = open_bus(config.bus_url.as_deref()).await? {
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

/// What a service binary hands [`run_service`]: its routes and its consumers.
#[derive(Debug)]
pub struct ServiceParts {
    pub router: Router,
    pub consumers: Vec<ConsumerHandle>,
}

/// The shared context a service binary builds its parts from.
#[derive(Clone)]
pub struct ServiceContext {
    pub config: Config,
    pub db: Db,
    pub bus: Arc<dyn Bus>,
    pub registry: Arc<dyn Registry>,
}

impl std::fmt::Debug for ServiceContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceContext").field("config", &self.config).finish_non_exhaustive()
    }
}

/// Runs one example service as its own process: reads [`Config`] (`KEEL_DATABASE_URL`,
/// `KEEL_BUS_URL`, `KEEL_CONSUL_URL`, `KEEL_LISTEN_ADDR`, `KEEL_ADVERTISE_HOST`, the
/// identity key from `KEEL_IDENTITY_SECRET` or `KEEL_JWT_SECRET`), sets
/// up tracing (OTLP export with `OTEL_EXPORTER_OTLP_ENDPOINT`), opens the database,
/// the bus (without a relay: in a distributed deployment `keel relay` runs alone) and
/// the registry, builds the service's parts, serves them until Ctrl-C or SIGTERM, then
/// deregisters, drains and stops the consumers.
pub async fn run_service<F, Fut>(name: &str, build: F) -> anyhow::Result<()>
where
    F: FnOnce(ServiceContext) -> Fut,
    Fut: Future<Output = anyhow::Result<ServiceParts>>,
{
    let config = Config::load()?;
    let _telemetry = keel_telemetry::init(name, "info").ok();
    let db = Db::connect(&config.database_url)
        .await
        .with_context(|| format!("KEEL_DATABASE_URL `{}`", redact_url(&config.database_url)))?;
    let registry =
        keel_registry::connect(config.consul_url.as_deref()).await.context("KEEL_CONSUL_URL")?;
    let (bus, _) = system_bus(&config, &db).await?;
    let context = ServiceContext {
        config: config.clone(),
        db: db.clone(),
        bus: bus.clone(),
        registry: registry.clone(),
    };
    let parts = build(context).await?;
    let running = start_service(
        name,
        parts.router,
        &registry,
        &db,
        config.listen_addr,
        config.advertise_host.as_deref(),
        config.identity_key(),
    )
    .await?;
    println!("{name} listening on http://{}", running.local_addr());
    shutdown_signal().await;
    let consumers = parts
        .consumers
        .into_iter()
        .enumerate()
        .map(|(n, consumer)| (format!("the {name} service's consumer {}", n + 1), consumer))
        .collect();
    shutdown::stop(Parts {
        services: vec![(format!("the {name} service"), running)],
        consumers,
        relay: None,
        bus: Some(bus),
    })
    .await?;
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
