//! [`Gateway`]: the compiled configuration, served on a listener (hyper HTTP/1.1 with
//! keep-alive, TCP_NODELAY, graceful shutdown), on one single-threaded runtime per
//! core behind `SO_REUSEPORT` ([`Gateway::serve_per_core`]), or mounted as an axum
//! router, plus the admin endpoints under `/_keel`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use keel_client::Endpoints;
use keel_registry::Registry;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tower_http::cors::{AllowHeaders, AllowMethods, AllowOrigin, CorsLayer};

use crate::admin::AdminAccess;
use crate::auth::Authenticator;
use crate::config::{ADMIN_PREFIX, CorsConfig, GatewayConfig};
use crate::downstream::{ClientStream, ConnectionLimit, too_many_connections};
use crate::error::ConfigError;
use crate::proxy::{Downstream, Shared, problem};
use crate::route::{Route, RouteTable};
use crate::upstream::UpstreamPool;

/// How long in-flight requests may take to finish once shutdown starts.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest request head (request line and headers) accepted; larger ones get 431.
/// Above hyper's longest request target (64 KiB, 414 beyond), so that a long target
/// is told apart from too many headers.
const MAX_HEADER_BYTES: usize = 128 * 1024;

/// The gateway: cheap to clone (everything is behind one `Arc`).
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Shared,
    admin: AdminAccess,
    cors: Option<CorsLayer>,
    metrics: OnceLock<PrometheusHandle>,
    connections: Option<Arc<ConnectionLimit>>,
    /// The web console, served under [`CONSOLE_PREFIX`] once mounted.
    console: OnceLock<axum::Router>,
    /// Where the merged OpenAPI document is served (`openapi_path`).
    openapi_path: Option<String>,
}

/// Where [`Gateway::mount_console`] serves the console.
pub const CONSOLE_PREFIX: &str = "/_keel/console";

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").field("routes", &self.inner.shared.routes).finish_non_exhaustive()
    }
}

impl Gateway {
    /// Validates `config` and builds the gateway; routes naming a `service` follow it
    /// through `registry`. Must be called inside a tokio runtime (discovery watches and
    /// housekeeping run as tasks).
    pub fn new(config: GatewayConfig, registry: Arc<dyn Registry>) -> Result<Self, ConfigError> {
        Self::build(config, Some(registry))
    }

    /// A gateway whose routes all have static `upstreams` (`keel gateway --route`).
    pub fn without_registry(config: GatewayConfig) -> Result<Self, ConfigError> {
        Self::build(config, None)
    }

    fn build(
        config: GatewayConfig,
        registry: Option<Arc<dyn Registry>>,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        let metrics = OnceLock::new();
        // Installed before the route metric handles are registered, so they land in it.
        if let Some(handle) = process_recorder() {
            let _ = metrics.set(handle.clone());
        }
        let auth = config.auth.as_ref().map(Authenticator::new).transpose()?;
        let identity_key = config.identity_key();
        if auth.is_some() && identity_key.is_none() {
            tracing::warn!(
                "the gateway has no identity key (no `identity_secret` and no HMAC JWT key): \
                 services receive x-keel-subject only, which they cannot verify"
            );
        }
        let connections = config.max_connections_per_client.map(ConnectionLimit::new);
        let admin = AdminAccess::new(config.admin_token.as_deref());
        let cors = config.cors.as_ref().map(cors_layer);
        let openapi_path = config.openapi_path.clone();
        // One pool per service, shared by the routes that name it (the first route's
        // breaker and balance settings apply).
        let mut services: HashMap<String, Endpoints> = HashMap::new();
        let mut routes = Vec::with_capacity(config.routes.len());
        for (i, route) in config.routes.into_iter().enumerate() {
            let pool = Route::pool_config(&route);
            let endpoints = match &route.service {
                Some(service) => {
                    let Some(registry) = &registry else {
                        return Err(ConfigError::invalid(
                            format!("routes[{i}].service"),
                            "service routes need a registry; use `upstreams` instead",
                        ));
                    };
                    services
                        .entry(service.clone())
                        .or_insert_with(|| {
                            Endpoints::discovered(service, registry.watch(service), pool)
                        })
                        .clone()
                }
                None => Endpoints::fixed(&route.prefix, route.upstreams.clone(), pool),
            };
            routes.push(Route::new(route, endpoints, config.max_body_bytes));
        }
        let inner = Arc::new(Inner {
            shared: Shared {
                routes: RouteTable::new(routes),
                auth,
                identity_key,
                upstream: UpstreamPool::new(),
            },
            admin,
            cors,
            metrics,
            connections,
            console: OnceLock::new(),
            openapi_path,
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(housekeeping(Arc::downgrade(&inner)));
        }
        Ok(Self { inner })
    }

    /// Who may use the admin endpoints (for admin routes served beside the gateway's).
    pub fn admin_access(&self) -> &AdminAccess {
        &self.inner.admin
    }

    /// Renders `/_keel/metrics` from `handle` (when the process installed its own
    /// Prometheus recorder before the gateway could). Ignored if one is already set.
    pub fn set_metrics_handle(&self, handle: PrometheusHandle) {
        let _ = self.inner.metrics.set(handle);
    }

    /// Serves `app` (the web console, `keel-console`) for every request under
    /// `/_keel/console`, whatever its method, with the full path. When the gateway
    /// authenticates (`auth` configured), each of those requests needs credentials whose
    /// identity has the `admin` role: 401 without valid ones, 403 with another role.
    /// Ignored if a console is already mounted.
    pub fn mount_console(&self, app: axum::Router) {
        let _ = self.inner.console.set(app);
    }

    /// A request to the mounted console, after the admin check.
    async fn console(
        &self,
        req: Request<Body>,
        app: axum::Router,
        peer: Option<SocketAddr>,
    ) -> Response<Body> {
        let admin = &self.inner.admin;
        let token_presented =
            admin.has_token() && admin.check(req.uri().path(), req.headers(), peer).is_none();
        if token_presented {
            // The admin token opens the console as it opens every admin endpoint.
        } else if let Some(auth) = &self.inner.shared.auth {
            match auth.authenticate(req.headers()).await {
                Ok(Some(identity)) if identity.is_admin() => {}
                Ok(Some(_)) => {
                    return problem(StatusCode::FORBIDDEN, "the console needs the `admin` role");
                }
                Ok(None) => return unauthorized("the console needs an admin's credentials"),
                Err(refusal) => return unauthorized(refusal.detail()),
            }
        } else if let Some(refused) = admin.check(req.uri().path(), req.headers(), peer) {
            return refused;
        }
        match tower::ServiceExt::oneshot(app, req).await {
            Ok(response) => response,
            Err(never) => match never {},
        }
    }

    /// Answers one request (admin endpoint, gateway error or proxied response).
    /// `peer` is the client address, for `X-Forwarded-For` and per-IP rate limits.
    pub async fn handle(&self, req: Request<Body>, peer: Option<SocketAddr>) -> Response<Body> {
        let downstream = Downstream {
            peer,
            peer_ip: peer.and_then(Downstream::ip_header),
            upstream: self.inner.shared.upstream.clone(),
        };
        self.handle_from(req, &downstream).await
    }

    /// [`Gateway::handle`] for a connection the gateway serves itself.
    async fn handle_from(&self, req: Request<Body>, downstream: &Downstream) -> Response<Body> {
        if self.inner.openapi_path.as_deref() == Some(req.uri().path())
            && (req.method() == Method::GET || req.method() == Method::HEAD)
        {
            return self.openapi(req.uri().path()).await;
        }
        if is_admin(req.uri().path()) {
            if let Some(app) = self.inner.console.get().filter(|_| is_console(req.uri().path())) {
                return self.console(req, app.clone(), downstream.peer).await;
            }
            if let Some(refused) =
                self.inner.admin.check(req.uri().path(), req.headers(), downstream.peer)
            {
                return refused;
            }
            return self.admin(&req);
        }
        self.inner.shared.proxy(req, downstream).await
    }

    /// The merged OpenAPI document of the routed services, served at `path`
    /// (see `crate::openapi`): 503 naming the service whose document is missing.
    async fn openapi(&self, path: &str) -> Response<Body> {
        use axum::response::IntoResponse as _;
        let admin_token = self.inner.admin.has_token();
        match crate::openapi::document(&self.inner.shared.routes, path, admin_token).await {
            Ok(document) => json(&document),
            Err(detail) => {
                tracing::warn!(%detail, "the OpenAPI document cannot be assembled");
                keel_service::Problem::new(StatusCode::SERVICE_UNAVAILABLE)
                    .with_detail(detail)
                    .with_retry_after(1)
                    .into_response()
            }
        }
    }

    /// The gateway as an axum router (for `keel up`); serve it with
    /// `into_make_service_with_connect_info::<SocketAddr>()` to get client addresses.
    pub fn router(&self) -> axum::Router {
        let gateway = self.clone();
        let router = axum::Router::new().fallback(move |req: Request<Body>| {
            let gateway = gateway.clone();
            async move {
                let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
                gateway.handle(req, peer).await
            }
        });
        match &self.inner.cors {
            Some(cors) => router.layer(cors.clone()),
            None => router,
        }
    }

    /// Serves HTTP/1.1 on `listener` until `shutdown` completes, then lets in-flight
    /// requests finish (up to 10 s). Runs on the caller's runtime, with the gateway's
    /// shared upstream connection pool. Requests hyper cannot parse are answered with
    /// problem documents, and `max_connections_per_client` is enforced (neither is,
    /// when the gateway is served as a [`Gateway::router`]).
    pub async fn serve<F>(self, listener: TcpListener, shutdown: F) -> std::io::Result<()>
    where
        F: Future<Output = ()> + Send,
    {
        let upstream = self.inner.shared.upstream.clone();
        self.serve_with(listener, upstream, shutdown).await;
        Ok(())
    }

    /// Serves like [`Gateway::serve`], in nginx's worker model: each of `listeners`
    /// gets an OS thread of its own running a single-threaded tokio runtime, with its
    /// own upstream connection pool, so a request never leaves the thread that
    /// accepted its connection (no cross-thread wake-ups, no shared pool lock). Routes,
    /// breakers, rate limits and metrics stay shared. When `shutdown` completes every
    /// worker stops accepting and lets its in-flight requests finish (up to 10 s);
    /// this returns once all have stopped. If a worker cannot start, the others are
    /// stopped and its error is returned.
    ///
    /// Dropping the returned future before it completes also stops the workers (they
    /// still drain their in-flight requests).
    pub async fn serve_per_core<F>(
        self,
        listeners: PerCoreListeners,
        shutdown: F,
    ) -> std::io::Result<()>
    where
        F: Future<Output = ()> + Send,
    {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let (done_tx, mut done) = tokio::sync::mpsc::unbounded_channel();
        let workers = listeners.listeners.len();
        for (i, listener) in listeners.listeners.into_iter().enumerate() {
            let gateway = self.clone();
            let mut stopped = stopped.clone();
            let done_tx = done_tx.clone();
            let spawned =
                std::thread::Builder::new().name(format!("keel-gw-{i}")).spawn(move || {
                    let result = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .and_then(|runtime| {
                            runtime.block_on(async move {
                                let listener = TcpListener::from_std(listener)?;
                                // `Err` means the sender is gone: stop as well.
                                let stop = async move {
                                    let _ = stopped.wait_for(|stop| *stop).await;
                                };
                                gateway.serve_with(listener, UpstreamPool::new(), stop).await;
                                Ok(())
                            })
                        });
                    let _ = done_tx.send(result);
                });
            if let Err(e) = spawned {
                let _ = stop.send(true);
                return Err(e);
            }
        }
        drop(done_tx);
        let mut first_error = None;
        let mut finished = 0;
        tokio::pin!(shutdown);
        // Workers end early only when they fail to start; one failing stops all.
        tokio::select! {
            () = &mut shutdown => {}
            Some(result) = done.recv() => {
                finished += 1;
                first_error = result.err();
            }
        }
        let _ = stop.send(true);
        while finished < workers {
            let Some(result) = done.recv().await else { break };
            finished += 1;
            if let Err(e) = result {
                first_error.get_or_insert(e);
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The accept loop of one runtime: every connection's requests go upstream
    /// through `upstream`.
    async fn serve_with<F>(self, listener: TcpListener, upstream: UpstreamPool, shutdown: F)
    where
        F: Future<Output = ()>,
    {
        let graceful = GracefulShutdown::new();
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .keep_alive(true)
            .header_read_timeout(Duration::from_secs(30))
            .max_header_size(MAX_HEADER_BYTES);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(accepted) => accepted,
                        Err(e) => {
                            // Usually out of file descriptors: back off instead of spinning.
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    let slot = match &self.inner.connections {
                        Some(limit) => match limit.admit(peer.ip()) {
                            Some(slot) => Some(slot),
                            None => {
                                tracing::debug!(%peer, "too many connections from this client");
                                tokio::spawn(refuse(stream));
                                continue;
                            }
                        },
                        None => None,
                    };
                    let service = self.connection_service(peer, upstream.clone());
                    let io = TokioIo::new(ClientStream::new(stream));
                    let connection = graceful.watch(http.serve_connection(io, service));
                    tokio::spawn(async move {
                        if let Err(e) = connection.await {
                            tracing::debug!(error = %e, %peer, "connection ended with an error");
                        }
                        drop(slot);
                    });
                }
                () = &mut shutdown => break,
            }
        }
        drop(listener);
        if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown()).await.is_err() {
            tracing::warn!(
                "gateway shutdown: in-flight requests still running after {DRAIN_TIMEOUT:?}"
            );
        }
    }

    fn connection_service(
        &self,
        peer: SocketAddr,
        upstream: UpstreamPool,
    ) -> TowerToHyperService<
        tower::util::Either<tower_http::cors::Cors<ConnectionService>, ConnectionService>,
    > {
        let service = ConnectionService {
            gateway: self.clone(),
            downstream: Arc::new(Downstream::new(peer, upstream)),
        };
        let service = match &self.inner.cors {
            Some(cors) => tower::util::Either::Left(tower::Layer::layer(cors, service)),
            None => tower::util::Either::Right(service),
        };
        TowerToHyperService::new(service)
    }

    fn admin(&self, req: &Request<Body>) -> Response<Body> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return problem(StatusCode::METHOD_NOT_ALLOWED, "admin endpoints are read-only");
        }
        let path = &req.uri().path()[ADMIN_PREFIX.len()..];
        let Some(endpoint) = AdminEndpoint::ALL.into_iter().find(|e| e.path() == path) else {
            return problem(StatusCode::NOT_FOUND, "no such admin endpoint");
        };
        match endpoint {
            AdminEndpoint::Health => json(&serde_json::json!({
                "status": "ok",
                "routes": self.inner.shared.routes.iter().count(),
            })),
            AdminEndpoint::Routes => {
                let routes: Vec<_> = self.inner.shared.routes.iter().map(Route::describe).collect();
                json(&routes)
            }
            AdminEndpoint::Metrics => match self.inner.metrics.get() {
                Some(handle) => {
                    let mut response = Response::new(Body::from(handle.render()));
                    response.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("text/plain; version=0.0.4"),
                    );
                    response
                }
                None => problem(
                    StatusCode::NOT_FOUND,
                    "another metrics recorder is installed in this process",
                ),
            },
        }
    }
}

/// The gateway's own endpoints under [`ADMIN_PREFIX`] (the console aside), so that
/// the OpenAPI document can be checked to describe each (`crate::openapi`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AdminEndpoint {
    Health,
    Routes,
    Metrics,
}

impl AdminEndpoint {
    /// Every endpoint.
    pub(crate) const ALL: [Self; 3] = [Self::Health, Self::Routes, Self::Metrics];

    /// Its path under [`ADMIN_PREFIX`].
    pub(crate) fn path(self) -> &'static str {
        match self {
            Self::Health => "/health",
            Self::Routes => "/routes",
            Self::Metrics => "/metrics",
        }
    }
}

/// The per-connection service: the gateway, the client's address and the upstream
/// pool of the runtime serving the connection.
#[derive(Clone)]
pub struct ConnectionService {
    gateway: Gateway,
    downstream: Arc<Downstream>,
}

impl std::fmt::Debug for ConnectionService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionService").field("peer", &self.downstream.peer).finish()
    }
}

impl tower::Service<Request<Incoming>> for ConnectionService {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future =
        std::pin::Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let gateway = self.gateway.clone();
        let downstream = self.downstream.clone();
        Box::pin(async move { Ok(gateway.handle_from(req.map(Body::new), &downstream).await) })
    }
}

/// Tells a connection over the per-client cap so, then closes it.
async fn refuse(mut stream: tokio::net::TcpStream) {
    use tokio::io::AsyncWriteExt as _;
    let answer = too_many_connections();
    let written = tokio::time::timeout(Duration::from_secs(5), async {
        stream.write_all(&answer).await?;
        stream.shutdown().await
    });
    let _ = written.await;
}

fn is_console(path: &str) -> bool {
    path.starts_with(CONSOLE_PREFIX)
        && matches!(path.as_bytes().get(CONSOLE_PREFIX.len()), None | Some(b'/'))
}

fn unauthorized(detail: &'static str) -> Response<Body> {
    let mut response = problem(StatusCode::UNAUTHORIZED, detail);
    response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

fn is_admin(path: &str) -> bool {
    path.starts_with(ADMIN_PREFIX)
        && matches!(path.as_bytes().get(ADMIN_PREFIX.len()), None | Some(b'/'))
}

/// Listening sockets for [`Gateway::serve_per_core`]: one per worker, all bound to
/// one address with `SO_REUSEPORT`, so that the kernel spreads new connections over
/// them (on Linux; elsewhere `SO_REUSEPORT` does not balance, so one socket is bound).
#[derive(Debug)]
pub struct PerCoreListeners {
    listeners: Vec<std::net::TcpListener>,
    local_addr: SocketAddr,
}

impl PerCoreListeners {
    /// Binds `workers` sockets to `addr` (port 0 picks one port for all of them).
    pub fn bind(addr: SocketAddr, workers: std::num::NonZeroUsize) -> std::io::Result<Self> {
        let workers = if cfg!(target_os = "linux") { workers.get() } else { 1 };
        // SO_REUSEPORT would let this gateway quietly share a port another process
        // (say, a gateway started twice) already listens on; a plain bind first turns
        // that into the usual "address in use" error.
        if addr.port() != 0 {
            drop(std::net::TcpListener::bind(addr)?);
        }
        let first = reuseport_listener(addr)?;
        let local_addr = first.local_addr()?;
        let mut listeners = Vec::with_capacity(workers);
        listeners.push(first);
        for _ in 1..workers {
            listeners.push(reuseport_listener(local_addr)?);
        }
        Ok(Self { listeners, local_addr })
    }

    /// The address the sockets listen on (with the port picked when 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// How many workers will serve.
    pub fn workers(&self) -> usize {
        self.listeners.len()
    }
}

fn reuseport_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // As tokio's `TcpListener::bind`: a restart can bind while old connections linger.
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

fn json<T: serde::Serialize>(value: &T) -> Response<Body> {
    let body = serde_json::to_vec_pretty(value).unwrap_or_default();
    let mut response = Response::new(Body::from(body));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn cors_layer(config: &CorsConfig) -> CorsLayer {
    let origins = if config.allow_origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(config.allow_origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    let methods = match &config.allow_methods {
        Some(methods) => {
            AllowMethods::list(methods.iter().filter_map(|m| m.parse::<Method>().ok()))
        }
        None => AllowMethods::any(),
    };
    let headers = match &config.allow_headers {
        Some(headers) => AllowHeaders::list(headers.iter().filter_map(|h| h.parse().ok())),
        None => AllowHeaders::any(),
    };
    let mut layer =
        CorsLayer::new().allow_origin(origins).allow_methods(methods).allow_headers(headers);
    if let Some(max_age) = config.max_age_s {
        layer = layer.max_age(Duration::from_secs(max_age));
    }
    layer
}

/// The process-wide Prometheus recorder, installed by the first gateway unless the
/// process already has a recorder (then `None`: see [`Gateway::set_metrics_handle`]).
fn process_recorder() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE.get_or_init(|| PrometheusBuilder::new().install_recorder().ok()).as_ref()
}

/// Histogram upkeep and forgetting idle rate-limit keys, until the gateway is dropped.
async fn housekeeping(inner: Weak<Inner>) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        if let Some(handle) = inner.metrics.get() {
            handle.run_upkeep();
        }
        for route in inner.shared.routes.iter() {
            route.retain_recent();
        }
    }
}
