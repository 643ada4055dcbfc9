//! The route table, compiled once at start-up: longest-prefix match over normalised
//! prefixes (no regex, no allocation per request), each route with its upstream pool,
//! rate limiter and metric handles.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use http::{HeaderValue, Method};
use keel_client::{Balance, BreakerConfig, Endpoints, PoolConfig};
use serde::Serialize;

use crate::config::{AuthMode, BalanceSetting, RouteConfig, normalize_prefix};

/// The `Allow` of a route that lists no methods.
const ANY_METHOD: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";
/// The `route` label of requests no route matched (no prefix can be this: they start
/// with `/`).
const UNMATCHED: &str = "unmatched";

/// Who a rate limit counts against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum ClientKey {
    Subject(String),
    Ip(IpAddr),
    Unknown,
}

/// Requests, by status class, and latency of one route.
#[derive(Debug)]
pub(crate) struct RouteMetrics {
    by_class: [metrics::Counter; 5],
    latency: metrics::Histogram,
}

impl RouteMetrics {
    fn new(prefix: &str) -> Self {
        let counter = |class: &'static str| metrics::counter!("keel_gateway_requests_total", "route" => prefix.to_owned(), "class" => class);
        Self {
            by_class: [
                counter("1xx"),
                counter("2xx"),
                counter("3xx"),
                counter("4xx"),
                counter("5xx"),
            ],
            latency: metrics::histogram!("keel_gateway_request_duration_seconds", "route" => prefix.to_owned()),
        }
    }

    pub(crate) fn record(&self, status: u16, elapsed: Duration) {
        self.count(status);
        self.latency.record(elapsed.as_secs_f64());
    }

    /// Counts a request without timing it.
    pub(crate) fn count(&self, status: u16) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.by_class[class].increment(1);
    }
}

pub(crate) struct Route {
    pub(crate) prefix: String,
    pub(crate) config: RouteConfig,
    pub(crate) methods: Option<Vec<Method>>,
    /// The `Allow` header of a 405.
    pub(crate) allow: HeaderValue,
    pub(crate) timeout: Duration,
    pub(crate) limiter: Option<DefaultKeyedRateLimiter<ClientKey>>,
    pub(crate) max_body_bytes: u64,
    pub(crate) endpoints: Endpoints,
    pub(crate) metrics: RouteMetrics,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route")
            .field("prefix", &self.prefix)
            .field("endpoints", &self.endpoints)
            .finish()
    }
}

impl Route {
    pub(crate) fn new(config: RouteConfig, endpoints: Endpoints, global_max_body: u64) -> Self {
        let prefix = normalize_prefix(&config.prefix);
        let methods: Option<Vec<Method>> = config
            .methods
            .as_ref()
            .map(|ms| ms.iter().filter_map(|m| Method::from_str(m).ok()).collect());
        let allow = methods
            .as_ref()
            .and_then(|ms| {
                let list: Vec<&str> = ms.iter().map(Method::as_str).collect();
                HeaderValue::from_str(&list.join(", ")).ok()
            })
            .unwrap_or_else(|| HeaderValue::from_static(ANY_METHOD));
        let limiter = config.rate_limit.and_then(|limit| {
            let rate = NonZeroU32::new(limit.per_second)?;
            let burst = limit.burst.and_then(NonZeroU32::new).unwrap_or(rate);
            Some(governor::RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)))
        });
        Self {
            metrics: RouteMetrics::new(&prefix),
            prefix,
            methods,
            allow,
            timeout: Duration::from_millis(config.timeout_ms),
            limiter,
            max_body_bytes: config.max_body_bytes.unwrap_or(global_max_body),
            endpoints,
            config,
        }
    }

    pub(crate) fn pool_config(config: &RouteConfig) -> PoolConfig {
        PoolConfig {
            balance: match config.balance {
                BalanceSetting::RoundRobin => Balance::RoundRobin,
                BalanceSetting::PowerOfTwo => Balance::PowerOfTwoChoices,
            },
            breaker: BreakerConfig {
                failure_threshold: config.breaker.failure_threshold,
                open_for: Duration::from_millis(config.breaker.open_for_ms),
            },
        }
    }

    /// Whether the route takes `method`. TRACE (it would echo the request, credentials
    /// included) and CONNECT (a tunnel) are never proxied.
    pub(crate) fn allows(&self, method: &Method) -> bool {
        self.methods.as_ref().is_none_or(|ms| ms.contains(method))
            && *method != Method::TRACE
            && *method != Method::CONNECT
    }

    /// Whether this request must carry credentials.
    pub(crate) fn needs_auth(&self, method: &Method) -> bool {
        match self.config.auth {
            AuthMode::None => false,
            AuthMode::Required => true,
            AuthMode::Write => !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS),
        }
    }

    /// `Err(seconds to wait)` when the client is over its rate.
    pub(crate) fn check_rate(&self, key: &ClientKey) -> Result<(), u64> {
        let Some(limiter) = &self.limiter else { return Ok(()) };
        limiter.check_key(key).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
        })
    }

    /// The path sent upstream.
    pub(crate) fn upstream_path<'a>(&self, path: &'a str) -> &'a str {
        if !self.config.strip_prefix || self.prefix == "/" {
            return path;
        }
        match path.get(self.prefix.len()..) {
            Some("") | None => "/",
            Some(rest) => rest,
        }
    }

    fn matches(&self, path: &str) -> bool {
        self.prefix == "/"
            || (path.starts_with(self.prefix.as_str())
                && matches!(path.as_bytes().get(self.prefix.len()), None | Some(b'/')))
    }

    pub(crate) fn describe(&self) -> RouteInfo {
        RouteInfo {
            prefix: self.prefix.clone(),
            service: self.config.service.clone(),
            upstreams: self.config.upstreams.clone(),
            strip_prefix: self.config.strip_prefix,
            methods: self.config.methods.clone(),
            timeout_ms: self.config.timeout_ms,
            retries: self.config.retries,
            auth: self.config.auth,
            rate_limit: self
                .config
                .rate_limit
                .map(|l| (l.per_second, l.burst.unwrap_or(l.per_second))),
            instances: self
                .endpoints
                .states()
                .into_iter()
                .map(|(url, state)| InstanceInfo {
                    url,
                    breaker: format!("{state:?}").to_lowercase(),
                })
                .collect(),
        }
    }

    pub(crate) fn retain_recent(&self) {
        if let Some(limiter) = &self.limiter {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

/// One row of `/_keel/routes`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct RouteInfo {
    /// The path prefix the route matches.
    prefix: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    service: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    upstreams: Vec<String>,
    strip_prefix: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    methods: Option<Vec<String>>,
    timeout_ms: u64,
    retries: u32,
    auth: AuthMode,
    /// Requests per second and burst, per client.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<u32>>, min_items = 2, max_items = 2)]
    rate_limit: Option<(u32, u32)>,
    /// The instances the route sends to, with their breakers' states.
    instances: Vec<InstanceInfo>,
}

/// An instance a route sends to.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct InstanceInfo {
    url: String,
    breaker: String,
}

/// Routes sorted longest prefix first, so the first match is the longest.
#[derive(Debug)]
pub(crate) struct RouteTable {
    routes: Vec<Route>,
    /// Requests no route matched, under one `route` label (labels come from closed
    /// sets: a path never becomes one).
    pub(crate) unmatched: RouteMetrics,
}

impl RouteTable {
    pub(crate) fn new(mut routes: Vec<Route>) -> Self {
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        Self { routes, unmatched: RouteMetrics::new(UNMATCHED) }
    }

    pub(crate) fn find(&self, path: &str) -> Option<&Route> {
        self.routes.iter().find(|r| r.matches(path))
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(prefixes: &[(&str, bool)]) -> RouteTable {
        let routes = prefixes
            .iter()
            .map(|(p, strip)| {
                let config = RouteConfig::to_upstreams(*p, vec!["http://127.0.0.1:1".into()])
                    .strip_prefix(*strip);
                let endpoints =
                    Endpoints::fixed(p, config.upstreams.clone(), Route::pool_config(&config));
                Route::new(config, endpoints, 1)
            })
            .collect();
        RouteTable::new(routes)
    }

    #[test]
    fn longest_prefix_wins_on_segment_boundaries() {
        let t = table(&[("/", false), ("/api", false), ("/api/users", false)]);
        let hit = |p: &str| t.find(p).map(|r| r.prefix.clone()).unwrap_or_default();
        assert_eq!(hit("/api/users"), "/api/users");
        assert_eq!(hit("/api/users/7/orders"), "/api/users");
        assert_eq!(hit("/api/usersX"), "/api");
        assert_eq!(hit("/api"), "/api");
        assert_eq!(hit("/apix"), "/");
        assert_eq!(hit("/other"), "/");
    }

    #[test]
    fn no_catch_all_means_no_match() {
        let t = table(&[("/api/", false)]);
        assert!(t.find("/api/x").is_some());
        assert!(t.find("/ap").is_none());
        assert!(t.find("/apix").is_none());
    }

    #[test]
    fn strip_prefix_keeps_the_rest() {
        let t = table(&[("/svc", true)]);
        let r = t.find("/svc/a/b").expect("route");
        assert_eq!(r.upstream_path("/svc/a/b"), "/a/b");
        assert_eq!(r.upstream_path("/svc"), "/");
        assert_eq!(r.upstream_path("/svc/"), "/");
    }
}
