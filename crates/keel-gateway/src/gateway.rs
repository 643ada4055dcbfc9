//! [`Gateway`]: the compiled configuration, served on a listener (hyper HTTP/1.1 with
//! keep-alive, TCP_NODELAY, graceful shutdown) or mounted as an axum router, plus the
//! admin endpoints under `/_keel`.

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
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use keel_client::Endpoints;
use keel_registry::Registry;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tower_http::cors::{AllowHeaders, AllowMethods, AllowOrigin, CorsLayer};

use crate::auth::Authenticator;
use crate::config::{ADMIN_PREFIX, CorsConfig, GatewayConfig};
use crate::error::ConfigError;
use crate::proxy::{Shared, problem};
use crate::route::{Route, RouteTable};

/// How long in-flight requests may take to finish once shutdown starts.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The gateway: cheap to clone (everything is behind one `Arc`).
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Shared,
    cors: Option<CorsLayer>,
    metrics: OnceLock<PrometheusHandle>,
}

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
        let cors = config.cors.as_ref().map(cors_layer);
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
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_keepalive(Some(Duration::from_secs(60)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        let inner = Arc::new(Inner {
            shared: Shared { routes: RouteTable::new(routes), auth, client },
            cors,
            metrics,
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(housekeeping(Arc::downgrade(&inner)));
        }
        Ok(Self { inner })
    }

    /// Renders `/_keel/metrics` from `handle` (when the process installed its own
    /// Prometheus recorder before the gateway could). Ignored if one is already set.
    pub fn set_metrics_handle(&self, handle: PrometheusHandle) {
        let _ = self.inner.metrics.set(handle);
    }

    /// Answers one request (admin endpoint, gateway error or proxied response).
    /// `peer` is the client address, for `X-Forwarded-For` and per-IP rate limits.
    pub async fn handle(&self, req: Request<Body>, peer: Option<SocketAddr>) -> Response<Body> {
        let path = req.uri().path();
        if path.starts_with(ADMIN_PREFIX)
            && matches!(path.as_bytes().get(ADMIN_PREFIX.len()), None | Some(b'/'))
        {
            return self.admin(&req);
        }
        self.inner.shared.proxy(req, peer).await
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
    /// requests finish (up to 10 s).
    pub async fn serve<F>(self, listener: TcpListener, shutdown: F) -> std::io::Result<()>
    where
        F: Future<Output = ()> + Send,
    {
        let graceful = GracefulShutdown::new();
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new()).keep_alive(true).header_read_timeout(Duration::from_secs(30));
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
                    let connection = http.serve_connection(TokioIo::new(stream), self.connection_service(peer));
                    let connection = graceful.watch(connection);
                    tokio::spawn(async move {
                        if let Err(e) = connection.await {
                            tracing::debug!(error = %e, %peer, "connection ended with an error");
                        }
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
        Ok(())
    }

    fn connection_service(
        &self,
        peer: SocketAddr,
    ) -> TowerToHyperService<
        tower::util::Either<tower_http::cors::Cors<ConnectionService>, ConnectionService>,
    > {
        let service = ConnectionService { gateway: self.clone(), peer };
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
        match &req.uri().path()[ADMIN_PREFIX.len()..] {
            "/health" => json(&serde_json::json!({
                "status": "ok",
                "routes": self.inner.shared.routes.iter().count(),
            })),
            "/routes" => {
                let routes: Vec<_> = self.inner.shared.routes.iter().map(Route::describe).collect();
                json(&routes)
            }
            "/metrics" => match self.inner.metrics.get() {
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
            _ => problem(StatusCode::NOT_FOUND, "no such admin endpoint"),
        }
    }
}

/// The per-connection service: the gateway plus the client's address.
#[derive(Clone)]
pub struct ConnectionService {
    gateway: Gateway,
    peer: SocketAddr,
}

impl std::fmt::Debug for ConnectionService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionService").field("peer", &self.peer).finish()
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
        let peer = self.peer;
        Box::pin(async move { Ok(gateway.handle(req.map(Body::new), Some(peer)).await) })
    }
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
