//! Keel's API gateway: routes from a config file (path prefix with every sub-path,
//! optional prefix strip, method filter, a discovered service or static upstreams,
//! timeout, retries, auth, rate limit), a streaming reverse proxy that never buffers
//! or re-encodes bodies, JWT and API-key authentication whose identity (subject and
//! roles) reaches the upstream signed as `x-keel-identity` (see
//! `keel_service::identity`; the subject also in clear as `x-keel-subject` when it is
//! ASCII), CORS, a body size limit, and its own errors as `application/problem+json`.
//! With `openapi_path` set, the gateway serves there one OpenAPI document of every
//! routed service (fetched from the services) and of its own answers. Admin endpoints: `/_keel/health`, `/_keel/metrics`, `/_keel/routes`, private by
//! default ([`AdminAccess`]: the admin token as a bearer token, else loopback clients
//! only; `/_keel/health` is open), and the web console under `/_keel/console` once
//! mounted ([`Gateway::mount_console`]): the admin token opens it; otherwise, when the
//! gateway authenticates, an identity with the `admin` role, else loopback clients only.
//!
//! A method a route does not list gets 405 with `Allow` (the path exists; the method
//! does not); TRACE and CONNECT are never proxied. Per-route timeouts bound the wait
//! for the upstream's response head, not the streaming of the body that follows.
//!
//! Hostile clients (DESIGN 2.19): a client's fault (a malformed or short body, one
//! that stalls, one over the limit) is a 4xx and never counts against an instance's
//! breaker; a 4xx from the upstream never does either, and a retry never goes back to
//! the instance that just failed. RFC 9112's framing rules hyper leaves to its user
//! are enforced (one `Host`, `chunked` the only transfer coding, `100-continue` the
//! only expectation), identity and forwarding headers a client sends are dropped, and
//! metric labels come from closed sets (the route's prefix or `unmatched`, the status
//! class).
//!
//! # Layout
//!
//! - `config.rs`: [`GatewayConfig`] and its parts, from TOML, from code or from
//!   `--route PREFIX=URL`; validation that names the key at fault.
//! - `error.rs`: [`ConfigError`], the crate's one error type.
//! - `auth.rs`: JWT (algorithm pinned per key) and API-key authentication.
//! - `jwks.rs`: JWT keys from a JWK set URL, fetched again on an unknown `kid`.
//! - `route.rs`: the compiled route table (longest prefix), per-route pools, rate
//!   limiters and metric handles.
//! - `proxy.rs`: one proxied request: checks, header rewriting, the identity, the
//!   upstream call, and whose fault a failure was.
//! - `downstream.rs`: the client's side: its request body watched on the way upstream,
//!   its stream (hyper's bare parse-error answers become problem documents), the
//!   per-client connection cap.
//! - `upstream.rs`: the upstream HTTP/1.1 client, a keep-alive pool whose connections
//!   are driven by the requests that use them (no task per connection).
//! - `admin.rs`: [`AdminAccess`], who may use the admin endpoints.
//! - `openapi.rs`: the merged OpenAPI document of the routed services (each serves
//!   its own), with the gateway's answers and admin endpoints, at `openapi_path`.
//! - `gateway.rs`: [`Gateway`]: build, serve on a listener, per core
//!   ([`PerCoreListeners`]) or as an axum router, admin.

#![warn(missing_docs)]

mod admin;
mod auth;
mod config;
mod downstream;
mod error;
mod gateway;
mod jwks;
mod openapi;
mod proxy;
mod route;
mod upstream;

pub use admin::AdminAccess;
pub use config::{
    ADMIN_PREFIX, ApiKeyConfig, AuthConfig, AuthMode, BalanceSetting, BreakerSettings, CorsConfig,
    GatewayConfig, JwksConfig, JwtKeyConfig, RateLimitConfig, RouteConfig,
};
pub use error::{ConfigError, Result};
pub use gateway::{CONSOLE_PREFIX, ConnectionService, Gateway, PerCoreListeners};
pub use proxy::{IDENTITY_HEADER, REQUEST_ID_HEADER, SUBJECT_HEADER};
