//! [`ServiceRunner`]: a service binary's `main`, from configuration to graceful shutdown.

use std::ffi::OsString;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use anyhow::Context as _;
use axum::Router;
use keel_bus::ConsumerHandle;
use keel_core::Bus;
use keel_registry::Registry;
use keel_service::RunningService;
use keel_sql::{Db, ProjectionSpec};

use crate::shutdown::{self, Parts};
use crate::task::StoppableTask;
use crate::{Config, redact_url, shutdown_signal, start_service, system_bus};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type MigrateFn = Box<dyn FnOnce(Db) -> BoxFuture<anyhow::Result<()>> + Send>;
type RoutesFn = Box<dyn FnOnce(&ServiceContext) -> Router + Send>;
type ConsumersFn =
    Box<dyn FnOnce(ServiceContext) -> BoxFuture<anyhow::Result<Vec<ConsumerHandle>>> + Send>;

/// What a service builds its routes and consumers from: the configuration and the
/// connections the runner opened. Cheap to clone.
#[derive(Clone)]
pub struct ServiceContext {
    /// The `KEEL_*` settings the runner read.
    pub config: Config,
    /// The database of `KEEL_DATABASE_URL` (the event log and the service's tables).
    pub db: Db,
    /// The bus of `KEEL_BUS_URL`, or the log itself when it is unset.
    pub bus: Arc<dyn Bus>,
    /// Consul with `KEEL_CONSUL_URL`, else an in-process registry.
    pub registry: Arc<dyn Registry>,
}

impl std::fmt::Debug for ServiceContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceContext").field("config", &self.config).finish_non_exhaustive()
    }
}

/// Runs one service as its own process: a builder of what the service is (its
/// migrations, routes, consumers and projections), then [`ServiceRunner::run`], which
/// reads [`Config`] (`KEEL_NAMESPACE`, `KEEL_DATABASE_URL`, `KEEL_BUS_URL`, `KEEL_CONSUL_URL`,
/// `KEEL_LISTEN_ADDR`, `KEEL_ADVERTISE_HOST`, the identity key of
/// `KEEL_IDENTITY_SECRET` or `KEEL_JWT_SECRET`), sets up tracing (OTLP export with
/// `OTEL_EXPORTER_OTLP_ENDPOINT`), opens the database and applies the migrations,
/// opens the bus and the registry, runs the projections (each leased: one active
/// runner across the service's replicas), starts the consumers, and serves the routes
/// behind the service kit (`/health`, `/ready`, `/metrics`, registration) until
/// Ctrl-C or SIGTERM; then it deregisters, drains requests, and stops the consumers,
/// the projections and the bus, in that order.
///
/// The binary also answers admin subcommands, run against `KEEL_DATABASE_URL`
/// without serving: `<bin> projections list`, `<bin> projections rebuild NAME`, and
/// `<bin> replay --into projection:NAME` (the same rebuild). A rebuild is blue/green:
/// the service keeps serving its read model while a new generation is built, and the
/// replica holding the projection switches it in once it caught up.
///
/// The runner starts no relay: in a deployment with a broker, `keel relay` runs
/// alone (with the log as the bus, the default, none is needed).
///
/// ```no_run
/// use keel_runtime::{ServiceContext, ServiceRunner};
/// use keel_sql::Db;
///
/// # struct Notes;
/// # #[async_trait::async_trait]
/// # impl keel_sql::Projection for Notes {
/// #     fn name(&self) -> &str { "notes" }
/// #     fn tables(&self) -> &[&str] { &["notes"] }
/// #     async fn apply(&self, _: &mut keel_sql::Conn<'_>, _: &keel_core::CloudEvent) -> Result<(), keel_bus::HandlerError> { Ok(()) }
/// # }
/// async fn migrate(db: Db) -> keel_sql::Result<()> {
///     # let _ = db;
///     // db.migrate(&sqlx::migrate!("./migrations/sqlite"), &sqlx::migrate!("./migrations/postgres")).await
///     Ok(())
/// }
///
/// #[tokio::main]
/// async fn main() -> anyhow::Result<()> {
///     ServiceRunner::new("notifications")
///         .migrations(migrate)
///         .projection(Notes)
///         .routes(|context: &ServiceContext| {
///             axum::Router::new()
///                 .route("/api/notes", axum::routing::get(|| async { "[]" }))
///                 .with_state(context.db.clone())
///         })
///         .run()
///         .await
/// }
/// ```
#[must_use = "a runner does nothing until it is run"]
pub struct ServiceRunner {
    name: String,
    config: Option<Config>,
    migrations: Vec<MigrateFn>,
    routes: Vec<RoutesFn>,
    consumers: Vec<ConsumersFn>,
    pub(crate) projections: Vec<ProjectionSpec>,
    timers: Vec<String>,
}

impl std::fmt::Debug for ServiceRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceRunner")
            .field("name", &self.name)
            .field("migrations", &self.migrations.len())
            .field("routes", &self.routes.len())
            .field("consumers", &self.consumers.len())
            .field("projections", &self.projection_names())
            .field("timers", &self.timers)
            .finish()
    }
}

impl ServiceRunner {
    /// A runner for the service `name`: the name it registers under, logs and traces as.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            config: None,
            migrations: Vec::new(),
            routes: Vec::new(),
            consumers: Vec::new(),
            projections: Vec::new(),
            timers: Vec::new(),
        }
    }

    /// Uses `config` instead of reading `keel.toml` and the environment (tests, or a
    /// binary that builds its configuration itself).
    pub fn config(mut self, config: Config) -> Self {
        self.config = Some(config);
        self
    }

    /// Creates the service's tables: `migrate` runs once the database is open, before
    /// anything else (before serving, and before an admin subcommand). Migrations
    /// registered by several calls run in order.
    pub fn migrations<F, Fut, E>(mut self, migrate: F) -> Self
    where
        F: FnOnce(Db) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<anyhow::Error> + 'static,
    {
        self.migrations.push(Box::new(move |db| {
            let migrating = migrate(db);
            Box::pin(async move { migrating.await.map_err(Into::into) })
        }));
        self
    }

    /// Adds the service's HTTP routes (several calls are merged into one router).
    pub fn routes<F>(mut self, routes: F) -> Self
    where
        F: FnOnce(&ServiceContext) -> Router + Send + 'static,
    {
        self.routes.push(Box::new(routes));
        self
    }

    /// Adds consumers: `start` subscribes them (on `context.bus`) and returns their
    /// handles, which the runner stops, draining, at shutdown. They start after the
    /// projections and before the routes are served.
    pub fn consumers<F, Fut, E>(mut self, start: F) -> Self
    where
        F: FnOnce(ServiceContext) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Vec<ConsumerHandle>, E>> + Send + 'static,
        E: Into<anyhow::Error> + 'static,
    {
        self.consumers.push(Box::new(move |context| {
            let starting = start(context);
            Box::pin(async move { starting.await.map_err(Into::into) })
        }));
        self
    }

    /// Registers a projection (a [`keel_sql::Projection`], or a [`ProjectionSpec`]
    /// with its options): it runs while the service serves, and the binary's
    /// `projections` subcommands list and rebuild it. Names must be unique.
    pub fn projection(mut self, projection: impl Into<ProjectionSpec>) -> Self {
        self.projections.push(projection.into());
        self
    }

    /// Runs the timer dispatcher of the default name (`keel_timers::DEFAULT_DISPATCHER`)
    /// while the service serves: it fires the durable timers and delayed messages
    /// (sagas' timeouts among them) through the log. One dispatcher per name is active
    /// across processes (a lease), so every replica may run it.
    pub fn timers(self) -> Self {
        self.timers_named(keel_timers::DEFAULT_DISPATCHER)
    }

    /// Runs the timer dispatcher named `name` while the service serves (see
    /// [`ServiceRunner::timers`]).
    pub fn timers_named(mut self, name: impl Into<String>) -> Self {
        let name = name.into();
        if !self.timers.contains(&name) {
            self.timers.push(name);
        }
        self
    }

    /// The names of the registered projections, in registration order.
    pub fn projection_names(&self) -> Vec<&str> {
        self.projections.iter().map(ProjectionSpec::name).collect()
    }

    /// The process's `main`: parses the command line (`std::env::args`), then serves
    /// until Ctrl-C or SIGTERM or runs the admin subcommand it names. See
    /// [`ServiceRunner`].
    pub async fn run(self) -> anyhow::Result<()> {
        self.run_with_args(std::env::args_os()).await
    }

    /// [`ServiceRunner::run`] with an explicit command line (the first item is the
    /// program name). A command line clap cannot parse prints its message (or the
    /// help) and exits the process, as command-line programs do.
    pub async fn run_with_args(
        self,
        args: impl IntoIterator<Item = impl Into<OsString> + Clone>,
    ) -> anyhow::Result<()> {
        let command = crate::cli::parse(args);
        match command {
            crate::cli::Command::Serve => {
                // Telemetry set up by the program itself stays; any other failure (an
                // OTLP endpoint without the `otel` feature) stops start-up, naming why.
                let _telemetry = match keel_telemetry::init(&self.name, "info") {
                    Ok(guard) => Some(guard),
                    Err(keel_telemetry::TelemetryError::AlreadyInitialised) => None,
                    Err(error) => return Err(error.into()),
                };
                let name = self.name.clone();
                let running = self.start().await?;
                let stop = shutdown_signal();
                println!("{name} listening on http://{}", running.local_addr());
                stop.await;
                running.stop().await
            }
            command => crate::cli::admin(self, command).await,
        }
    }

    /// Opens the configuration's database and applies the migrations (what every
    /// subcommand does first).
    pub(crate) async fn open(&mut self) -> anyhow::Result<(Config, Db)> {
        let config = match self.config.take() {
            Some(config) => config,
            None => Config::load()?,
        };
        self.check_projection_names()?;
        let db = Db::connect_in(&config.database_url, &config.namespace)
            .await
            .with_context(|| format!("KEEL_DATABASE_URL `{}`", redact_url(&config.database_url)))?;
        for migrate in self.migrations.drain(..) {
            migrate(db.clone()).await.with_context(|| format!("the {} migrations", self.name))?;
        }
        Ok((config, db))
    }

    fn check_projection_names(&self) -> anyhow::Result<()> {
        let names = self.projection_names();
        for (n, name) in names.iter().enumerate() {
            if names[..n].contains(name) {
                anyhow::bail!("the {} service registers two projections named `{name}`", self.name);
            }
        }
        Ok(())
    }

    /// The registered projection `name`, or an error listing the known ones.
    pub(crate) fn find_projection(&self, name: &str) -> anyhow::Result<&ProjectionSpec> {
        self.projections.iter().find(|spec| spec.name() == name).ok_or_else(|| {
            let known = self.projection_names();
            let known = if known.is_empty() { "none".to_owned() } else { known.join(", ") };
            anyhow::anyhow!(
                "the {} service has no projection `{name}` (its projections: {known})",
                self.name
            )
        })
    }

    /// Starts the service (everything [`ServiceRunner::run`] starts before it waits for
    /// a signal) and returns it running; stop it with [`RunningServiceRunner::stop`].
    /// Tracing is left to the caller.
    pub async fn start(mut self) -> anyhow::Result<RunningServiceRunner> {
        let (config, db) = self.open().await?;
        let name = self.name;
        let registry = crate::connect_registry(&config).await?;
        let (bus, _) = system_bus(&config, &db).await?;
        let context = ServiceContext {
            config: config.clone(),
            db: db.clone(),
            bus: bus.clone(),
            registry: registry.clone(),
        };
        let mut parts = Parts { bus: Some(bus), ..Parts::default() };
        let started = async {
            for spec in self.projections {
                let label = format!("the {name} service's projection {}", spec.name());
                parts.projections.push((label, ProjectionTask::start(db.clone(), spec)));
            }
            for timers in self.timers {
                let label = format!("the {name} service's timer dispatcher {timers}");
                let dispatcher = keel_timers::Dispatcher::named(db.clone(), timers);
                parts.timers.push((label, TimerTask::start(dispatcher)));
            }
            for start in self.consumers {
                for consumer in start(context.clone()).await? {
                    let n = parts.consumers.len() + 1;
                    parts.consumers.push((format!("the {name} service's consumer {n}"), consumer));
                }
            }
            let router = self
                .routes
                .into_iter()
                .fold(Router::new(), |router, routes| router.merge(routes(&context)));
            start_service(
                &name,
                router,
                &registry,
                &db,
                config.listen_addr,
                config.advertise_host.as_deref(),
                config.identity_key(),
            )
            .await
        };
        match started.await {
            Ok(service) => {
                parts.services.push((format!("the {name} service"), service));
                Ok(RunningServiceRunner { name, parts })
            }
            Err(error) => {
                // Stop what did start; the start-up error is the one to report.
                let _ = shutdown::stop(parts).await;
                Err(error)
            }
        }
    }
}

/// A service the runner started: serving, consuming and projecting until stopped.
#[derive(Debug)]
pub struct RunningServiceRunner {
    name: String,
    parts: Parts,
}

impl RunningServiceRunner {
    /// The service's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where the service listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.parts.services.first().map(|(_, service)| service.local_addr()).unwrap_or_else(|| {
            // start() returns a running runner only with its service.
            SocketAddr::from(([0, 0, 0, 0], 0))
        })
    }

    /// The running HTTP service (its registration, readiness).
    pub fn service(&self) -> Option<&RunningService> {
        self.parts.services.first().map(|(_, service)| service)
    }

    /// Deregisters, drains in-flight requests, then stops the consumers (each
    /// finishing its messages), the projections (after their current page) and the
    /// bus. Every part is stopped even after one fails; the error names those that
    /// did not stop cleanly.
    pub async fn stop(self) -> anyhow::Result<()> {
        shutdown::stop(self.parts).await?;
        Ok(())
    }
}

/// A timer dispatcher running in this process, and how to stop it.
#[derive(Debug)]
pub struct TimerTask(StoppableTask<keel_timers::Error>);

impl TimerTask {
    /// Runs `dispatcher` (it stands by while another process holds its lease).
    pub fn start(dispatcher: keel_timers::Dispatcher) -> Self {
        Self(StoppableTask::spawn(|stopped| async move { dispatcher.run(stopped).await }))
    }

    /// Stops the dispatcher (a page in flight rolls back and fires later); an error
    /// if it failed or panicked.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.0.stop("the timer dispatcher").await
    }
}

/// A projection following the log in this process, and how to stop it.
#[derive(Debug)]
pub struct ProjectionTask(StoppableTask<keel_sql::Error>);

impl ProjectionTask {
    /// Starts `spec` on `db` (its runner stands by while another process holds the
    /// projection's lease).
    pub fn start(db: Db, spec: ProjectionSpec) -> Self {
        Self(StoppableTask::spawn(|stopped| async move { spec.run(&db, stopped).await }))
    }

    /// Stops the projection after its current page; an error if it failed or panicked.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.0.stop("the projection task").await
    }
}
