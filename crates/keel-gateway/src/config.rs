//! The gateway's configuration: a TOML file (every table `deny_unknown_fields`), the
//! same structure built in code (`keel up`), or `--route PREFIX=URL` pairs (the CLI).
//! [`GatewayConfig::validate`] names the key at fault in every error.

use std::net::SocketAddr;
use std::path::Path;
use std::str::FromStr;

use http::Method;
use keel_service::identity::Identity;
use serde::{Deserialize, Serialize};

use crate::error::ConfigError;
use keel_service::identity::IdentityKey;

/// Paths under this prefix are the gateway's own admin endpoints.
pub const ADMIN_PREFIX: &str = "/_keel";

/// The whole gateway configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Address to listen on, e.g. `127.0.0.1:8080` (used by the CLI; `serve` takes a listener).
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Largest request body accepted, in bytes (413 above it); routes may lower or raise it.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: u64,
    /// The credentials accepted; unset: none (routes that need auth cannot be
    /// configured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthConfig>,
    /// The secret that signs the identity forwarded to services as `x-keel-identity`
    /// (what `KEEL_IDENTITY_SECRET` configures; at least 16 bytes). Unset: the key is
    /// derived from the secret of the first HMAC JWT key in `auth` (what
    /// `KEEL_JWT_SECRET` configures), as the services derive theirs; with no such key
    /// either, no identity is signed and only `x-keel-subject` is forwarded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_secret: Option<String>,
    /// The bearer token the admin endpoints under `/_keel` (but `/_keel/health`) ask
    /// for (what `KEEL_ADMIN_TOKEN` configures; at least 16 bytes). Unset: they answer
    /// loopback clients only (see [`crate::AdminAccess`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_token: Option<String>,
    /// The most connections one client IP may hold open at once; more are answered 429
    /// and closed. Unset: no cap (a proxy or NAT in front would make every client one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections_per_client: Option<u32>,
    /// CORS answered by the gateway; unset: no CORS headers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<CorsConfig>,
    /// Where the gateway serves one OpenAPI document of everything it routes to (such
    /// as `/api/openapi.json`): the documents the routed services serve at
    /// [`keel_service::openapi::SERVICE_PATH`], merged, with the gateway's own answers
    /// and admin endpoints (see `crate::openapi`). Unset: not served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub openapi_path: Option<String>,
    /// The routes, matched by longest prefix.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
}

/// Credentials the gateway accepts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// JWT verification keys, tried in order.
    #[serde(default)]
    pub jwt: Vec<JwtKeyConfig>,
    /// Accepted API keys.
    #[serde(default)]
    pub api_keys: Vec<ApiKeyConfig>,
    /// The request header carrying an API key.
    #[serde(default = "default_api_key_header")]
    pub api_key_header: String,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    #[serde(default = "default_leeway_s")]
    pub leeway_s: u64,
    /// Verification keys fetched from a JWK set URL (what `KEEL_JWKS_URL` configures).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<JwksConfig>,
}

/// JWT verification keys published as a JWK set (an OIDC provider's `jwks_uri`): fetched
/// on first use and again when a token names an unknown `kid` (key rotation). Tokens
/// verified with these keys must have a `kid`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwksConfig {
    /// Where the set is, `https://...` (or `http://` inside a trusted network).
    pub url: String,
    /// Required `iss` claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Required `aud` claim (one of the token's audiences).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
}

impl JwksConfig {
    /// The set at `url`, with no issuer or audience required.
    pub fn new(url: impl Into<String>) -> Self {
        Self { url: url.into(), issuer: None, audience: None }
    }
}

/// One JWT verification key; the algorithm is pinned: a token is checked against this
/// key only if its header names exactly this `alg`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtKeyConfig {
    /// `HS256`, `HS384`, `HS512`, `RS256`, `RS384`, `RS512`, `PS256`, `ES256` or `ES384`.
    pub alg: String,
    /// The shared secret (HS* only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// The public key in PEM (RS*, PS*, ES* only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key_pem: Option<String>,
    /// When set, only tokens whose header has this `kid` use this key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    /// Required `iss` claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Required `aud` claim (one of the token's audiences).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
}

/// A named API key; the name becomes the authenticated subject, with `roles`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// The authenticated subject of requests with this key.
    pub name: String,
    /// The secret a client sends in the API-key header.
    pub key: String,
    /// The roles the key's identity carries (e.g. `admin`, `events:read`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
}

impl ApiKeyConfig {
    /// The identity this key authenticates as; the error names `auth.api_keys[i]`.
    pub(crate) fn identity(&self, i: usize) -> Result<Identity, ConfigError> {
        let name = Identity::new(self.name.as_str())
            .map_err(|e| ConfigError::invalid(format!("auth.api_keys[{i}].name"), e.to_string()))?;
        name.with_roles(self.roles.iter().map(String::as_str))
            .map_err(|e| ConfigError::invalid(format!("auth.api_keys[{i}].roles"), e.to_string()))
    }
}

/// Cross-origin resource sharing, answered by the gateway (preflights never reach upstreams).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsConfig {
    /// Allowed origins; `["*"]` allows any.
    pub allow_origins: Vec<String>,
    /// Allowed methods; unset allows any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_methods: Option<Vec<String>>,
    /// Allowed request headers; unset allows any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_headers: Option<Vec<String>>,
    /// How long browsers may cache a preflight answer (`Access-Control-Max-Age`), in
    /// seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age_s: Option<u64>,
}

/// Which requests of a route need credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Open; credentials, if any, are ignored.
    #[default]
    None,
    /// Every request needs valid credentials.
    Required,
    /// Writes (anything but GET, HEAD, OPTIONS) need valid credentials; reads are open
    /// but credentials they carry are still checked.
    Write,
}

/// A token bucket per client (the authenticated subject, else the client IP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Requests allowed per second, sustained.
    pub per_second: u32,
    /// Requests allowed in a burst; defaults to `per_second`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

/// The circuit breaker of each upstream instance of a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerSettings {
    /// Consecutive failures (connect error, timeout, 5xx) that open the breaker.
    pub failure_threshold: u32,
    /// How long an open breaker refuses calls before one probe, in milliseconds.
    pub open_for_ms: u64,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self { failure_threshold: 5, open_for_ms: 10_000 }
    }
}

/// How a route chooses among its instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BalanceSetting {
    /// Each instance in turn.
    RoundRobin,
    /// Two random instances, the one with fewer calls in flight.
    #[default]
    PowerOfTwo,
}

/// One route: a path prefix (with all its sub-paths) proxied to a service or to a
/// static list of upstreams.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// `/api/orders` matches `/api/orders` and `/api/orders/...`, not `/api/ordersX`.
    pub prefix: String,
    /// A service name resolved through the registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Static base URLs (`http://host:port`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upstreams: Vec<String>,
    /// Removes the prefix from the path sent upstream (`/api/orders/7` -> `/7`).
    #[serde(default)]
    pub strip_prefix: bool,
    /// Allowed methods; unset allows all. Others get 405 with `Allow`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<String>>,
    /// Time allowed for the upstream's response head, per attempt.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Extra attempts, for idempotent requests without a body only.
    #[serde(default)]
    pub retries: u32,
    /// Which requests need credentials (default: none).
    #[serde(default)]
    pub auth: AuthMode,
    /// When set, only these authenticated subjects may use the route (others get 403).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_subjects: Option<Vec<String>>,
    /// A per-client rate limit; unset: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitConfig>,
    /// Overrides the global `max_body_bytes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<u64>,
    /// The breaker of each upstream instance.
    #[serde(default)]
    pub breaker: BreakerSettings,
    /// How an instance is chosen.
    #[serde(default)]
    pub balance: BalanceSetting,
}

fn default_listen() -> String {
    "127.0.0.1:8080".to_owned()
}

fn default_max_body_bytes() -> u64 {
    10 * 1024 * 1024
}

fn default_api_key_header() -> String {
    "x-api-key".to_owned()
}

fn default_leeway_s() -> u64 {
    30
}

fn default_timeout_ms() -> u64 {
    30_000
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            max_body_bytes: default_max_body_bytes(),
            auth: None,
            identity_secret: None,
            admin_token: None,
            max_connections_per_client: None,
            cors: None,
            openapi_path: None,
            routes: Vec::new(),
        }
    }
}

impl GatewayConfig {
    /// An empty configuration listening on `listen`; add routes with [`Self::route`].
    pub fn new(listen: impl Into<String>) -> Self {
        Self { listen: listen.into(), ..Self::default() }
    }

    /// Parses and validates a TOML document.
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Reads, parses and validates a TOML file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
        Self::from_toml_str(&text)
    }

    /// Routes from `PREFIX=URL[,URL...]` pairs, as `keel gateway --route` gives them.
    pub fn static_routes(pairs: &[&str]) -> Result<Self, ConfigError> {
        let mut config = Self::default();
        for (i, pair) in pairs.iter().enumerate() {
            let Some((prefix, urls)) = pair.split_once('=') else {
                return Err(ConfigError::invalid(
                    format!("routes[{i}]"),
                    format!("`{pair}`: expected PREFIX=URL"),
                ));
            };
            let urls = urls.split(',').map(|u| u.trim().to_owned()).collect();
            config.routes.push(RouteConfig::to_upstreams(prefix.trim(), urls));
        }
        config.validate()?;
        Ok(config)
    }

    /// Adds a route.
    #[must_use]
    pub fn route(mut self, route: RouteConfig) -> Self {
        self.routes.push(route);
        self
    }

    /// Sets the accepted credentials.
    #[must_use]
    pub fn auth(mut self, auth: AuthConfig) -> Self {
        self.auth = Some(auth);
        self
    }

    /// Sets the CORS policy.
    #[must_use]
    pub fn cors(mut self, cors: CorsConfig) -> Self {
        self.cors = Some(cors);
        self
    }

    /// Sets the largest request body, in bytes.
    #[must_use]
    pub fn max_body_bytes(mut self, bytes: u64) -> Self {
        self.max_body_bytes = bytes;
        self
    }

    /// Sets the secret that signs forwarded identities (at least 16 bytes).
    #[must_use]
    pub fn identity_secret(mut self, secret: impl Into<String>) -> Self {
        self.identity_secret = Some(secret.into());
        self
    }

    /// Sets the admin endpoints' bearer token (at least 16 bytes).
    #[must_use]
    pub fn admin_token(mut self, token: impl Into<String>) -> Self {
        self.admin_token = Some(token.into());
        self
    }

    /// Serves the merged OpenAPI document of the routed services at `path`.
    #[must_use]
    pub fn openapi_path(mut self, path: impl Into<String>) -> Self {
        self.openapi_path = Some(path.into());
        self
    }

    /// Caps the connections one client IP may hold open.
    #[must_use]
    pub fn max_connections_per_client(mut self, max: u32) -> Self {
        self.max_connections_per_client = Some(max);
        self
    }

    /// The key that signs forwarded identities: `identity_secret`, else derived from
    /// the first HMAC JWT key's secret, else none.
    pub fn identity_key(&self) -> Option<IdentityKey> {
        if let Some(secret) = &self.identity_secret {
            return Some(IdentityKey::from_secret(secret.as_bytes()));
        }
        let auth = self.auth.as_ref()?;
        let hmac = auth.jwt.iter().find(|k| k.alg.starts_with("HS"))?;
        hmac.secret.as_deref().map(IdentityKey::derive_from_jwt_secret)
    }

    /// The listen address, parsed.
    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.listen.parse().map_err(|_| {
            ConfigError::invalid("listen", format!("`{}` is not host:port", self.listen))
        })
    }

    /// Checks everything that start-up would otherwise trip over; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.listen_addr()?;
        if self.max_body_bytes == 0 {
            return Err(ConfigError::invalid("max_body_bytes", "must be positive"));
        }
        if self.identity_secret.as_ref().is_some_and(|s| s.len() < 16) {
            return Err(ConfigError::invalid("identity_secret", "must be at least 16 bytes"));
        }
        if self.admin_token.as_ref().is_some_and(|s| s.len() < 16) {
            return Err(ConfigError::invalid("admin_token", "must be at least 16 bytes"));
        }
        if self.max_connections_per_client == Some(0) {
            return Err(ConfigError::invalid("max_connections_per_client", "must be positive"));
        }
        if let Some(auth) = &self.auth {
            auth.validate()?;
        }
        if let Some(cors) = &self.cors {
            cors.validate()?;
        }
        if let Some(path) = &self.openapi_path
            && (!path.starts_with('/')
                || path.starts_with(ADMIN_PREFIX)
                || path.contains(['?', '#']))
        {
            return Err(ConfigError::invalid(
                "openapi_path",
                format!("`{path}` must be a path starting with / outside {ADMIN_PREFIX}"),
            ));
        }
        let mut seen: Vec<String> = Vec::with_capacity(self.routes.len());
        for (i, route) in self.routes.iter().enumerate() {
            route.validate(i, self.auth.as_ref())?;
            let prefix = normalize_prefix(&route.prefix);
            if seen.contains(&prefix) {
                return Err(ConfigError::invalid(
                    format!("routes[{i}].prefix"),
                    format!("`{}` is already routed by an earlier route", route.prefix),
                ));
            }
            seen.push(prefix);
        }
        Ok(())
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            jwt: Vec::new(),
            api_keys: Vec::new(),
            api_key_header: default_api_key_header(),
            leeway_s: default_leeway_s(),
            jwks: None,
        }
    }
}

impl AuthConfig {
    /// Accepts HS256 tokens signed with `secret` (what `KEEL_JWT_SECRET` configures).
    pub fn hs256(secret: impl Into<String>) -> Self {
        Self::default().jwt(JwtKeyConfig {
            alg: "HS256".to_owned(),
            secret: Some(secret.into()),
            public_key_pem: None,
            kid: None,
            issuer: None,
            audience: None,
        })
    }

    /// Accepts tokens signed by the keys of the JWK set at `jwks.url`.
    #[must_use]
    pub fn jwks(mut self, jwks: JwksConfig) -> Self {
        self.jwks = Some(jwks);
        self
    }

    /// Adds a JWT verification key.
    #[must_use]
    pub fn jwt(mut self, key: JwtKeyConfig) -> Self {
        self.jwt.push(key);
        self
    }

    /// Accepts API key `key`, authenticating as `name` without roles.
    #[must_use]
    pub fn api_key(mut self, name: impl Into<String>, key: impl Into<String>) -> Self {
        self.api_keys.push(ApiKeyConfig { name: name.into(), key: key.into(), roles: Vec::new() });
        self
    }

    /// An API key whose identity carries `roles`.
    #[must_use]
    pub fn api_key_with_roles(
        mut self,
        name: impl Into<String>,
        key: impl Into<String>,
        roles: &[&str],
    ) -> Self {
        let roles = roles.iter().map(|r| (*r).to_owned()).collect();
        self.api_keys.push(ApiKeyConfig { name: name.into(), key: key.into(), roles });
        self
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(jwks) = &self.jwks
            && !(jwks.url.starts_with("https://") || jwks.url.starts_with("http://"))
        {
            return Err(ConfigError::invalid("auth.jwks.url", "expected an https:// URL"));
        }
        if http::HeaderName::from_str(&self.api_key_header).is_err() {
            return Err(ConfigError::invalid("auth.api_key_header", "not a valid header name"));
        }
        for (i, key) in self.jwt.iter().enumerate() {
            crate::auth::decoding_key(key).map_err(|(field, reason)| {
                ConfigError::invalid(format!("auth.jwt[{i}].{field}"), reason)
            })?;
        }
        for (i, key) in self.api_keys.iter().enumerate() {
            key.identity(i)?;
            if key.key.len() < 16 {
                return Err(ConfigError::invalid(
                    format!("auth.api_keys[{i}].key"),
                    "must be at least 16 characters",
                ));
            }
            if self.api_keys[..i].iter().any(|k| k.name == key.name) {
                return Err(ConfigError::invalid(
                    format!("auth.api_keys[{i}].name"),
                    format!("`{}` is used twice", key.name),
                ));
            }
        }
        Ok(())
    }

    fn is_empty(&self) -> bool {
        self.jwt.is_empty() && self.api_keys.is_empty() && self.jwks.is_none()
    }
}

impl CorsConfig {
    /// Any origin, any method, any header.
    pub fn permissive() -> Self {
        Self {
            allow_origins: vec!["*".to_owned()],
            allow_methods: None,
            allow_headers: None,
            max_age_s: None,
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.allow_origins.is_empty() {
            return Err(ConfigError::invalid("cors.allow_origins", "must not be empty"));
        }
        let any = self.allow_origins.iter().any(|o| o == "*");
        for (i, origin) in self.allow_origins.iter().enumerate() {
            if any && origin != "*" {
                return Err(ConfigError::invalid(
                    format!("cors.allow_origins[{i}]"),
                    "`*` cannot be combined with named origins",
                ));
            }
            if http::HeaderValue::from_str(origin).is_err() {
                return Err(ConfigError::invalid(
                    format!("cors.allow_origins[{i}]"),
                    "not a valid origin",
                ));
            }
        }
        for (i, m) in self.allow_methods.iter().flatten().enumerate() {
            if Method::from_str(m).is_err() {
                return Err(ConfigError::invalid(
                    format!("cors.allow_methods[{i}]"),
                    "not an HTTP method",
                ));
            }
        }
        for (i, h) in self.allow_headers.iter().flatten().enumerate() {
            if http::HeaderName::from_str(h).is_err() {
                return Err(ConfigError::invalid(
                    format!("cors.allow_headers[{i}]"),
                    "not a header name",
                ));
            }
        }
        Ok(())
    }
}

impl RouteConfig {
    /// A route to a service resolved through the registry.
    pub fn to_service(prefix: impl Into<String>, service: impl Into<String>) -> Self {
        Self { service: Some(service.into()), ..Self::blank(prefix.into()) }
    }

    /// A route to a static list of base URLs.
    pub fn to_upstreams(prefix: impl Into<String>, base_urls: Vec<String>) -> Self {
        Self { upstreams: base_urls, ..Self::blank(prefix.into()) }
    }

    fn blank(prefix: String) -> Self {
        Self {
            prefix,
            service: None,
            upstreams: Vec::new(),
            strip_prefix: false,
            methods: None,
            timeout_ms: default_timeout_ms(),
            retries: 0,
            auth: AuthMode::None,
            allow_subjects: None,
            rate_limit: None,
            max_body_bytes: None,
            breaker: BreakerSettings::default(),
            balance: BalanceSetting::default(),
        }
    }

    /// Whether to remove the prefix from the path sent upstream.
    #[must_use]
    pub fn strip_prefix(mut self, strip: bool) -> Self {
        self.strip_prefix = strip;
        self
    }

    /// Allows only these methods (others get 405).
    #[must_use]
    pub fn methods(mut self, methods: &[&str]) -> Self {
        self.methods = Some(methods.iter().map(|m| (*m).to_owned()).collect());
        self
    }

    /// Time allowed for the upstream's response head, per attempt, in milliseconds.
    #[must_use]
    pub fn timeout_ms(mut self, ms: u64) -> Self {
        self.timeout_ms = ms;
        self
    }

    /// Extra attempts for idempotent requests without a body.
    #[must_use]
    pub fn retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    /// Sets which requests need credentials.
    #[must_use]
    pub fn auth(mut self, auth: AuthMode) -> Self {
        self.auth = auth;
        self
    }

    /// Limits each client to `per_second` requests, with bursts up to `burst`.
    #[must_use]
    pub fn rate_limit(mut self, per_second: u32, burst: u32) -> Self {
        self.rate_limit = Some(RateLimitConfig { per_second, burst: Some(burst) });
        self
    }

    /// Opens an instance's breaker after `failure_threshold` consecutive failures, for
    /// `open_for_ms` milliseconds.
    #[must_use]
    pub fn breaker(mut self, failure_threshold: u32, open_for_ms: u64) -> Self {
        self.breaker = BreakerSettings { failure_threshold, open_for_ms };
        self
    }

    fn validate(&self, i: usize, auth: Option<&AuthConfig>) -> Result<(), ConfigError> {
        let key = |field: &str| format!("routes[{i}].{field}");
        if !self.prefix.starts_with('/') {
            return Err(ConfigError::invalid(key("prefix"), "must start with '/'"));
        }
        if self.prefix.contains(['?', '#', ' ']) {
            return Err(ConfigError::invalid(
                key("prefix"),
                "must be a plain path (no '?', '#' or spaces)",
            ));
        }
        let normalized = normalize_prefix(&self.prefix);
        if normalized == ADMIN_PREFIX || normalized.starts_with("/_keel/") {
            return Err(ConfigError::invalid(
                key("prefix"),
                "`/_keel` is reserved for the admin endpoints",
            ));
        }
        match (&self.service, self.upstreams.is_empty()) {
            (Some(_), false) | (None, true) => {
                return Err(ConfigError::invalid(
                    key("service"),
                    "set exactly one of `service` and `upstreams`",
                ));
            }
            (Some(service), true) if service.is_empty() => {
                return Err(ConfigError::invalid(key("service"), "must not be empty"));
            }
            _ => {}
        }
        for (j, url) in self.upstreams.iter().enumerate() {
            check_base_url(url)
                .map_err(|reason| ConfigError::invalid(key(&format!("upstreams[{j}]")), reason))?;
        }
        for (j, m) in self.methods.iter().flatten().enumerate() {
            let method = Method::from_str(m).ok().filter(|_| !m.is_empty());
            let Some(method) = method else {
                return Err(ConfigError::invalid(
                    key(&format!("methods[{j}]")),
                    format!("`{m}` is not an HTTP method"),
                ));
            };
            if method == Method::TRACE || method == Method::CONNECT {
                return Err(ConfigError::invalid(
                    key(&format!("methods[{j}]")),
                    format!("{m} is never proxied"),
                ));
            }
        }
        if self.timeout_ms == 0 {
            return Err(ConfigError::invalid(key("timeout_ms"), "must be positive"));
        }
        if self.retries > 10 {
            return Err(ConfigError::invalid(key("retries"), "at most 10"));
        }
        if self.auth != AuthMode::None && auth.is_none_or(AuthConfig::is_empty) {
            return Err(ConfigError::invalid(
                key("auth"),
                "needs an [auth] section with a JWT key or an API key",
            ));
        }
        if self.allow_subjects.is_some() && self.auth == AuthMode::None {
            return Err(ConfigError::invalid(
                key("allow_subjects"),
                "needs `auth` = \"required\" or \"write\"",
            ));
        }
        if let Some(limit) = self.rate_limit {
            if limit.per_second == 0 {
                return Err(ConfigError::invalid(key("rate_limit.per_second"), "must be positive"));
            }
            if limit.burst == Some(0) {
                return Err(ConfigError::invalid(key("rate_limit.burst"), "must be positive"));
            }
        }
        if self.max_body_bytes == Some(0) {
            return Err(ConfigError::invalid(key("max_body_bytes"), "must be positive"));
        }
        if self.breaker.failure_threshold == 0 {
            return Err(ConfigError::invalid(key("breaker.failure_threshold"), "must be positive"));
        }
        Ok(())
    }
}

/// `/api/` and `/api` are the same prefix; `/` stays `/`.
pub(crate) fn normalize_prefix(prefix: &str) -> String {
    let trimmed = prefix.trim_end_matches('/');
    if trimmed.is_empty() { "/".to_owned() } else { trimmed.to_owned() }
}

/// An upstream base URL is `http://host:port` with no path, query or credentials
/// (upstreams are plain HTTP inside the deployment; TLS ends in front of the gateway).
pub(crate) fn check_base_url(url: &str) -> Result<(), String> {
    let uri = http::Uri::from_str(url).map_err(|e| format!("`{url}`: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!("`{url}`: only http:// upstreams are supported"));
    }
    let Some(authority) = uri.authority() else {
        return Err(format!("`{url}`: missing host"));
    };
    if authority.as_str().contains('@') {
        return Err(format!("`{url}`: credentials are not allowed"));
    }
    if uri.path_and_query().is_some_and(|p| p.as_str() != "/" && !p.as_str().is_empty()) {
        return Err(format!("`{url}`: a base URL has no path or query"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        GatewayConfig::from_toml_str(text).err().map(|e| e.to_string()).unwrap_or_default()
    }

    #[test]
    fn the_openapi_path_is_a_path_outside_the_admin_surface() {
        let config = GatewayConfig::from_toml_str("openapi_path = \"/api/openapi.json\"")
            .expect("a path outside /_keel");
        assert_eq!(config.openapi_path.as_deref(), Some("/api/openapi.json"));
        for bad in ["api/openapi.json", "/_keel/openapi.json", "/api/openapi.json?x"] {
            let error = err(&format!("openapi_path = \"{bad}\""));
            assert!(error.contains("openapi_path"), "{bad}: {error}");
        }
    }

    #[test]
    fn full_example_parses() {
        let config = GatewayConfig::from_toml_str(
            r#"
            listen = "127.0.0.1:8080"
            max_body_bytes = 1024
            [auth]
            jwt = [{ alg = "HS256", secret = "s3cret", issuer = "keel", audience = "keel-api" }]
            api_keys = [{ name = "ci", key = "0123456789abcdef" }]
            [cors]
            allow_origins = ["*"]
            [[routes]]
            prefix = "/api/orders"
            service = "orders"
            methods = ["GET", "POST"]
            timeout_ms = 5000
            retries = 1
            auth = "write"
            rate_limit = { per_second = 100, burst = 200 }
            [[routes]]
            prefix = "/static/"
            upstreams = ["http://127.0.0.1:3001", "http://127.0.0.1:3002/"]
            strip_prefix = true
            "#,
        )
        .expect("valid");
        assert_eq!(config.routes.len(), 2);
        assert_eq!(config.routes[0].auth, AuthMode::Write);
        assert_eq!(config.routes[1].timeout_ms, 30_000);
    }

    #[test]
    fn errors_name_the_key() {
        assert!(
            err("[[routes]]\nprefix = \"api\"\nservice = \"a\"").starts_with("routes[0].prefix:")
        );
        assert!(
            err("[[routes]]\nprefix = \"/a\"\nservice = \"a\"\n[[routes]]\nprefix = \"/b\"")
                .starts_with("routes[1].service:")
        );
        assert!(
            err("[[routes]]\nprefix = \"/a\"\nupstreams = [\"ftp://x\"]")
                .starts_with("routes[0].upstreams[0]:")
        );
        assert!(
            err("[[routes]]\nprefix = \"/a\"\nservice = \"a\"\nmethods = [\"G T\"]")
                .starts_with("routes[0].methods[0]:")
        );
        assert!(
            err("[[routes]]\nprefix = \"/a\"\nservice = \"a\"\nauth = \"required\"")
                .starts_with("routes[0].auth:")
        );
        assert!(
            err("[[routes]]\nprefix = \"/a\"\nservice = \"a\"\nrate_limit = { per_second = 0 }")
                .starts_with("routes[0].rate_limit.per_second:")
        );
        assert!(err("[[routes]]\nprefix = \"/a/\"\nservice = \"a\"\n[[routes]]\nprefix = \"/a\"\nservice = \"b\"")
            .starts_with("routes[1].prefix:"));
        assert!(err("listen = \"nowhere\"").starts_with("listen:"));
        assert!(
            err("[auth]\njwt = [{ alg = \"none\", secret = \"x\" }]")
                .starts_with("auth.jwt[0].alg:")
        );
        assert!(
            err("[auth]\njwt = [{ alg = \"RS256\", secret = \"x\" }]")
                .starts_with("auth.jwt[0].secret:")
        );
        assert!(
            err("[auth]\njwt = [{ alg = \"RS256\", public_key_pem = \"garbage\" }]")
                .starts_with("auth.jwt[0].public_key_pem:")
        );
        assert!(
            err("[auth]\njwt = [{ alg = \"HS256\", public_key_pem = \"x\" }]")
                .starts_with("auth.jwt[0].public_key_pem:")
        );
        assert!(
            err("[auth]\napi_keys = [{ name = \"ci\", key = \"short\" }]")
                .starts_with("auth.api_keys[0].key:")
        );
        assert!(
            err("[[routes]]\nprefix = \"/_keel/x\"\nservice = \"a\"")
                .starts_with("routes[0].prefix:")
        );
        assert!(
            err("[cors]\nallow_origins = [\"*\", \"http://a\"]")
                .starts_with("cors.allow_origins[1]:")
        );
    }

    #[test]
    fn unknown_keys_are_named() {
        let message = err("[[routes]]\nprefix = \"/a\"\nservice = \"a\"\ntimeout = 5");
        assert!(message.contains("timeout"), "{message}");
        assert!(message.contains("unknown field"), "{message}");
    }

    #[test]
    fn static_routes_parse_pairs() {
        let config = GatewayConfig::static_routes(&[
            "/api=http://127.0.0.1:3000",
            "/=http://a:1,http://b:2",
        ])
        .expect("valid");
        assert_eq!(config.routes[1].upstreams, vec!["http://a:1", "http://b:2"]);
        let bad = GatewayConfig::static_routes(&["/api"]).expect_err("no url");
        assert!(bad.to_string().starts_with("routes[0]:"));
        let bad = GatewayConfig::static_routes(&["/api=localhost:3000"]).expect_err("no scheme");
        assert!(bad.to_string().starts_with("routes[0].upstreams[0]:"), "{bad}");
    }
}
