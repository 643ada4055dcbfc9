//! [`Service`]: bootstraps an axum app with the kit's endpoints and middleware,
//! registers it, and shuts it down gracefully.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt as _;
use http::{HeaderName, StatusCode, header};
use keel_core::Backoff;
use keel_registry::{HealthCheck, Instance, Registration, Registry};
use tokio::sync::watch;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{PropagateRequestIdLayer, SetRequestIdLayer};

use crate::identity::IdentityKey;
use crate::middleware::{self, MakeUuidV7, REQUEST_ID};
use crate::{Problem, Readiness, ServiceError, metrics};

/// How a service runs: where it listens, how others reach it, where it registers.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// The service name in the registry (`users`, `orders`, ...).
    pub name: String,
    /// Where to listen; port 0 picks a free port.
    pub listen: SocketAddr,
    /// The host name or address others (and the registry's health check) reach this
    /// instance at.
    pub advertise_host: String,
    /// Where the service registers and others discover it.
    pub registry: Arc<dyn Registry>,
    /// How long shutdown waits for in-flight requests before dropping them.
    pub shutdown_grace: Duration,
    /// The largest request body accepted (413 above it).
    pub body_limit: usize,
    /// The registry's health check of `/ready`.
    pub check_interval: Duration,
    /// How long the registry's health check waits for `/ready`.
    pub check_timeout: Duration,
    /// How long an instance may stay critical before the registry removes it.
    pub deregister_critical_after: Duration,
    /// Registry tags of the instance.
    pub tags: Vec<String>,
    /// Registry metadata of the instance (key, value).
    pub meta: BTreeMap<String, String>,
    /// Verifies the gateway's signed identities (see [`crate::identity`]); `None` is
    /// the open mode, where `x-keel-subject` is taken at its word.
    pub identity: Option<IdentityKey>,
}

impl ServiceConfig {
    /// Defaults: advertised at the listen address (loopback if it is unspecified),
    /// 10 s grace, 1 MiB bodies, checked every 10 s with a 2 s timeout, removed after
    /// one minute critical.
    pub fn new(name: impl Into<String>, listen: SocketAddr, registry: Arc<dyn Registry>) -> Self {
        let advertise_host = if listen.ip().is_unspecified() {
            "127.0.0.1".to_owned()
        } else {
            listen.ip().to_string()
        };
        Self {
            name: name.into(),
            listen,
            advertise_host,
            registry,
            shutdown_grace: Duration::from_secs(10),
            body_limit: 1024 * 1024,
            check_interval: Duration::from_secs(10),
            check_timeout: Duration::from_secs(2),
            deregister_critical_after: Duration::from_secs(60),
            tags: Vec::new(),
            meta: BTreeMap::new(),
            identity: None,
        }
    }
}

/// A service under construction: `Service::new(config).readiness(r).router(app)`,
/// then [`Service::bind`] (tests, `keel up`) or [`Service::serve`] (a binary's main).
///
/// Besides the app's routes it answers `/health` (alive), `/ready` (the readiness
/// checks; 503 from the start of shutdown), `/metrics` (Prometheus text), and wraps
/// everything in: request ids (`x-request-id`), trace context (`traceparent` in and
/// out, a span per request, [`keel_bus::layer::EventContext`] for the handler), the
/// caller's identity ([`crate::Caller`]), request metrics, problem+json for every
/// error, a 400 for control characters in the path or query, panics as 500, and the
/// body limit.
#[derive(Debug)]
pub struct Service {
    config: ServiceConfig,
    readiness: Readiness,
    router: Router,
}

impl Service {
    /// A service with `config`, no readiness checks and no routes yet.
    pub fn new(config: ServiceConfig) -> Self {
        Self { config, readiness: Readiness::new(), router: Router::new() }
    }

    /// The checks behind `/ready` (replacing any given before).
    #[must_use]
    pub fn readiness(mut self, readiness: Readiness) -> Self {
        self.readiness = readiness;
        self
    }

    /// Adds the app's routes (merged with any given before).
    #[must_use]
    pub fn router(mut self, router: Router) -> Self {
        self.router = self.router.merge(router);
        self
    }

    /// The complete app with the kit's endpoints and middleware, for driving with
    /// `tower::ServiceExt::oneshot` in tests; nothing is bound or registered.
    pub fn into_router(self) -> Router {
        app(&self.config, self.readiness, self.router, Arc::new(watch::Sender::new(false)))
    }

    /// Binds the listener, starts serving and registers with the registry (with an
    /// HTTP check on `/ready`). Fails if the address is taken or the registry refuses.
    pub async fn bind(self) -> Result<RunningService, ServiceError> {
        let Self { config, readiness, router } = self;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| ServiceError::Bind { addr: config.listen, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| ServiceError::Bind { addr: config.listen, source })?;
        let stopping = Arc::new(watch::Sender::new(false));
        let app = app(&config, readiness.clone(), router, stopping.clone());

        let (drain_tx, drain_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            axum::serve(without_delay(listener), app)
                .with_graceful_shutdown(async move {
                    let _ = drain_rx.await;
                })
                .await
        });

        let instance = Instance {
            id: format!("{}-{}", config.name, uuid::Uuid::now_v7().simple()),
            service: config.name.clone(),
            address: config.advertise_host.clone(),
            port: local_addr.port(),
            tags: config.tags.clone(),
            meta: config.meta.clone(),
        };
        let registration = Registration {
            check: Some(HealthCheck {
                http: format!("{}/ready", instance.base_url()),
                interval: config.check_interval,
                timeout: config.check_timeout,
                deregister_critical_after: config.deregister_critical_after,
                initially_passing: false,
            }),
            instance,
        };
        if let Err(error) =
            config.registry.register(&as_it_is(&registration, &readiness).await).await
        {
            let _ = drain_tx.send(());
            let _ = server.await;
            return Err(ServiceError::Register(error));
        }
        let instance_id = registration.instance.id.clone();
        tracing::info!(service = %config.name, instance = %instance_id, %local_addr, "service started");

        let (shutdown_tx, mut shutdown_rx) = watch::channel(false);
        let streams = stopping.clone();
        let task = tokio::spawn(async move {
            let mut server = server;
            // A registry drops an instance critical for too long (say, its database was
            // down), and a restarted Consul dev agent forgets every instance at once;
            // look as often as the registry checks the instance (one cheap read of the
            // local agent) and register again once it is gone. While the registry
            // does not answer (an agent restarting), look again sooner, so the instance
            // is back within moments of the agent, not at the next interval.
            let interval = audit_interval(&config);
            let unanswered_backoff = Backoff::new(Duration::from_millis(100), interval);
            let mut next_look = interval;
            let mut unanswered = 0_u32;
            // Run until asked to stop, or until the server fails by itself.
            let early = loop {
                tokio::select! {
                    _ = shutdown_rx.wait_for(|stop| *stop) => break None,
                    result = &mut server => break Some(result),
                    () = tokio::time::sleep(next_look) => {}
                }
                next_look = if reregister(&*config.registry, &registration, &readiness).await {
                    unanswered = 0;
                    interval
                } else {
                    unanswered = unanswered.saturating_add(1);
                    unanswered_backoff.delay(unanswered)
                };
            };
            stopping.send_replace(true);
            let id = &registration.instance.id;
            // The grace period bounds deregistering and draining together.
            let deadline = tokio::time::Instant::now() + config.shutdown_grace;
            // Leave discovery first, so callers stop picking this instance.
            match tokio::time::timeout_at(deadline, config.registry.deregister(id)).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    tracing::warn!(instance = %id, %error, "deregistering failed");
                }
                Err(_) => tracing::warn!(instance = %id, "deregistering timed out"),
            }
            if let Some(result) = early {
                return finished(result);
            }
            let _ = drain_tx.send(());
            match tokio::time::timeout_at(deadline, &mut server).await {
                Ok(result) => finished(result),
                Err(_) => {
                    tracing::warn!(instance = %id, grace = ?config.shutdown_grace,
                        "requests still in flight after the grace period; dropping them");
                    server.abort();
                    Ok(())
                }
            }
        });
        Ok(RunningService { local_addr, instance_id, shutdown_tx, stopping: streams, task })
    }

    /// [`Service::bind`], then serves until `shutdown` completes (e.g. Ctrl-C), then
    /// shuts down gracefully.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), ServiceError> {
        let running = self.bind().await?;
        shutdown.await;
        running.shutdown();
        running.wait().await
    }
}

/// `listener` with Nagle's algorithm off on every connection it accepts.
///
/// Responses that stream small writes (the events API's live tail, Server-Sent Events)
/// otherwise meet Nagle's algorithm and the client's delayed acknowledgement: a write
/// made while the previous one is unacknowledged waits up to 40 ms for the client's
/// ack. At 100 orders a second that held the tail's events back 13 ms at the median
/// and 37 ms at the 99th percentile (docs/benchmarks.md).
pub(crate) fn without_delay(
    listener: tokio::net::TcpListener,
) -> impl axum::serve::Listener<Io = tokio::net::TcpStream, Addr = SocketAddr> {
    listener.tap_io(|stream| {
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "could not turn Nagle's algorithm off on a connection");
        }
    })
}

/// How often a running instance looks whether the registry still has it: at each
/// health check, and at least twice within `deregister_critical_after`.
fn audit_interval(config: &ServiceConfig) -> Duration {
    config.check_interval.min(config.deregister_critical_after / 2).max(Duration::from_millis(10))
}

/// Registers `registration` again if the registry no longer has it; `false` when the
/// registry did not answer (or registering again failed).
async fn reregister(
    registry: &dyn Registry,
    registration: &Registration,
    readiness: &Readiness,
) -> bool {
    let id = &registration.instance.id;
    match registry.is_registered(id).await {
        Ok(true) => true,
        Ok(false) => {
            tracing::warn!(instance = %id, "the registry dropped this instance; registering again");
            match registry.register(&as_it_is(registration, readiness).await).await {
                Ok(()) => true,
                Err(error) => {
                    tracing::warn!(instance = %id, %error, "registering again failed");
                    false
                }
            }
        }
        Err(error) => {
            tracing::debug!(instance = %id, %error, "registry unreachable");
            false
        }
    }
}

/// `registration` with its health check starting out as the instance is now: passing
/// when its readiness checks pass, so that callers find it at once instead of after
/// the registry's first check (up to a whole check interval later: after a Consul
/// agent restart, that long with no instance to route to).
async fn as_it_is(registration: &Registration, readiness: &Readiness) -> Registration {
    let mut registration = registration.clone();
    if let Some(check) = &mut registration.check {
        check.initially_passing = readiness.failures().await.is_empty();
    }
    registration
}

fn finished(
    result: Result<std::io::Result<()>, tokio::task::JoinError>,
) -> Result<(), ServiceError> {
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(ServiceError::Serve(error)),
        Err(error) => Err(ServiceError::Serve(std::io::Error::other(error))),
    }
}

/// A bound, registered service.
#[derive(Debug)]
pub struct RunningService {
    local_addr: SocketAddr,
    instance_id: String,
    shutdown_tx: watch::Sender<bool>,
    stopping: Arc<watch::Sender<bool>>,
    task: tokio::task::JoinHandle<Result<(), ServiceError>>,
}

impl RunningService {
    /// The address actually bound (the port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The id registered: `<name>-<uuid>`.
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// The first step of a shutdown, for a process that must drain something in front
    /// of this service first (a gateway in the same process): `/ready` turns 503 and
    /// live streams (Server-Sent Events) end, so that their clients, and any proxy
    /// between, let go at once; the listener stays open and registered until
    /// [`RunningService::shutdown`].
    pub fn end_live_streams(&self) {
        self.stopping.send_replace(true);
    }

    /// Starts the graceful shutdown: `/ready` turns 503, live streams (Server-Sent
    /// Events) end, the instance deregisters, the listener closes and in-flight
    /// requests finish (within the grace period).
    pub fn shutdown(&self) {
        self.shutdown_tx.send_replace(true);
    }

    /// Waits until the service has stopped (after [`RunningService::shutdown`], or a
    /// server failure).
    pub async fn wait(self) -> Result<(), ServiceError> {
        match self.task.await {
            Ok(result) => result,
            Err(error) => Err(ServiceError::Serve(std::io::Error::other(error))),
        }
    }
}

/// The app: kit endpoints + the service's routes, under the kit's middleware.
fn app(
    config: &ServiceConfig,
    readiness: Readiness,
    router: Router,
    stopping: Arc<watch::Sender<bool>>,
) -> Router {
    let streams_end = stopping.clone();
    let prometheus = metrics::prometheus();
    let kit = Router::new()
        .route("/health", get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }))
        .route("/ready", get(move || ready(readiness.clone(), stopping.subscribe())))
        .route(
            "/metrics",
            get(move || {
                let prometheus = prometheus.clone();
                async move {
                    prometheus.run_upkeep();
                    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], prometheus.render())
                }
            }),
        );
    let name = config.name.clone();
    let identity = config.identity.clone();
    let request_id = HeaderName::from_static(REQUEST_ID);
    // Layers run outside-in from the last one added.
    kit.merge(router)
        .layer(DefaultBodyLimit::disable())
        .layer(RequestBodyLimitLayer::new(config.body_limit))
        .layer(CatchPanicLayer::custom(middleware::panic_response))
        .layer(axum::middleware::from_fn(middleware::problems))
        .layer(axum::middleware::from_fn(move |request, next| {
            middleware::end_streams_on_shutdown(streams_end.subscribe(), request, next)
        }))
        .layer(axum::middleware::from_fn(middleware::input_hygiene))
        .layer(axum::middleware::from_fn(move |request, next| {
            metrics::record(name.clone(), request, next)
        }))
        .layer(axum::middleware::from_fn(move |request, next| {
            middleware::trace(identity.clone(), request, next)
        }))
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(SetRequestIdLayer::new(request_id, MakeUuidV7))
}

async fn ready(readiness: Readiness, stopping: watch::Receiver<bool>) -> Response {
    if *stopping.borrow() {
        return Problem::new(StatusCode::SERVICE_UNAVAILABLE)
            .with_detail("shutting down")
            .into_response();
    }
    let failures = readiness.failures().await;
    if failures.is_empty() {
        return axum::Json(serde_json::json!({"status": "ready"})).into_response();
    }
    let names: Vec<&str> = failures.iter().map(|(name, _)| name.as_str()).collect();
    let mut problem = Problem::new(StatusCode::SERVICE_UNAVAILABLE)
        .with_detail(format!("not ready: {}", names.join(", ")));
    for (name, reason) in failures {
        problem = problem.with_field(name, reason);
    }
    problem.into_response()
}

#[cfg(test)]
mod tests {
    use axum::serve::Listener as _;

    use super::without_delay;

    #[tokio::test]
    async fn accepted_connections_send_small_writes_at_once() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let mut listener = without_delay(listener);
        let client = tokio::net::TcpStream::connect(addr);
        let ((accepted, _), client) = tokio::join!(listener.accept(), client);
        client.expect("connect");
        assert!(accepted.nodelay().expect("the option"), "Nagle's algorithm is still on");
    }
}
