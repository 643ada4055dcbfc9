//! Keel's API gateway: routes from a config file (path prefix with every sub-path,
//! optional prefix strip, method filter, a discovered service or static upstreams,
//! timeout, retries, auth, rate limit), a streaming reverse proxy that never buffers
//! or re-encodes bodies, JWT and API-key authentication whose subject reaches the
//! upstream as `x-keel-subject`, CORS, a body size limit, and its own errors as
//! `application/problem+json`. Admin endpoints: `/_keel/health`, `/_keel/metrics`,
//! `/_keel/routes`.
//!
//! A method a route does not list gets 405 with `Allow` (the path exists; the method
//! does not). Per-route timeouts bound the wait for the upstream's response head, not
//! the streaming of the body that follows.
//!
//! # Layout
//!
//! - `config.rs`: [`GatewayConfig`] and its parts, from TOML, from code or from
//!   `--route PREFIX=URL`; validation that names the key at fault.
//! - `error.rs`: [`ConfigError`], the crate's one error type.
//! - `auth.rs`: JWT (algorithm pinned per key) and API-key authentication.
//! - `route.rs`: the compiled route table (longest prefix), per-route pools, rate
//!   limiters and metric handles.
//! - `proxy.rs`: one proxied request: checks, header rewriting, the upstream call.
//! - `upstream.rs`: the upstream HTTP/1.1 client, a keep-alive pool whose connections
//!   are driven by the requests that use them (no task per connection).
//! - `gateway.rs`: [`Gateway`]: build, serve on a listener, per core
//!   ([`PerCoreListeners`]) or as an axum router, admin.

mod auth;
mod config;
mod error;
mod gateway;
mod proxy;
mod route;
mod upstream;

pub use config::{
    ADMIN_PREFIX, ApiKeyConfig, AuthConfig, AuthMode, BalanceSetting, BreakerSettings, CorsConfig,
    GatewayConfig, JwtKeyConfig, RateLimitConfig, RouteConfig,
};
pub use error::{ConfigError, Result};
pub use gateway::{ConnectionService, Gateway, PerCoreListeners};
pub use proxy::{REQUEST_ID_HEADER, SUBJECT_HEADER};
