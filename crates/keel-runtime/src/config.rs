//! Configuration: `KEEL_*` environment variables over an optional `keel.toml`.
//!
//! | key | env | default |
//! |---|---|---|
//! | `namespace` | `KEEL_NAMESPACE` | unset: no namespace, every name as it always was |
//! | `database_url` | `KEEL_DATABASE_URL` | `sqlite://keel-data/keel.db` (in a namespace: `sqlite://keel-data/<namespace>/keel.db`) |
//! | `bus_url` | `KEEL_BUS_URL` | unset: the log itself is the bus |
//! | `consul_url` | `KEEL_CONSUL_URL` | unset: in-process registry |
//! | `gateway_addr` | `KEEL_GATEWAY_ADDR` | `127.0.0.1:8080` |
//! | `jwt_secret` | `KEEL_JWT_SECRET` | unset: write routes open (warned) |
//! | `identity_secret` | `KEEL_IDENTITY_SECRET` | unset: derived from `jwt_secret` (the key of the gateway's signed identities; neither set: services believe any caller, warned) |
//! | `idempotency_ttl_secs` | `KEEL_IDEMPOTENCY_TTL_SECS` | `86400`: how long services remember an `Idempotency-Key` |
//! | `listen_addr` | `KEEL_LISTEN_ADDR` | `127.0.0.1:0` (a service binary's own listener) |
//! | `advertise_host` | `KEEL_ADVERTISE_HOST` | the listen IP, or 127.0.0.1 |
//! | `admin_token` | `KEEL_ADMIN_TOKEN` | unset: the admin endpoints (`/_keel/*`) answer loopback clients only |
//! | `consul_token` | `KEEL_CONSUL_TOKEN` | unset: no ACL token (sent as `X-Consul-Token`) |
//! | `consul_ca_file` | `KEEL_CONSUL_CA_FILE` | unset: the system's CAs only (a PEM CA to trust for an `https://` Consul) |
//! | `jwks_url` | `KEEL_JWKS_URL` | unset: no JWKS (the gateway's JWT keys, fetched again on an unknown `kid`) |
//!
//! A bad value stops start-up with a message naming the key.
//!
//! `KEEL_NAMESPACE` (1 to 32 characters of `a-z`, `0-9`, `_`, `-`, starting with a
//! letter; see [`Namespace`]) lets several deployments share one broker, Consul and
//! PostgreSQL database: it qualifies their topics, exchanges, queues, consumer groups
//! and Consul service names, and on PostgreSQL it is the schema of the tables. A SQLite
//! file is one deployment already: the namespace only picks the default file.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use keel_core::Namespace;
use keel_service::DEFAULT_IDEMPOTENCY_TTL;
use keel_service::IdentityKey;
use serde::Deserialize;

use crate::redact::redact_url;

/// Every environment variable [`Config`] reads, in the order of the table above (the
/// compose file and the README are checked against it).
pub const ENV_KEYS: &[&str] = &[
    "KEEL_NAMESPACE",
    "KEEL_DATABASE_URL",
    "KEEL_BUS_URL",
    "KEEL_CONSUL_URL",
    "KEEL_GATEWAY_ADDR",
    "KEEL_JWT_SECRET",
    "KEEL_IDENTITY_SECRET",
    "KEEL_IDEMPOTENCY_TTL_SECS",
    "KEEL_LISTEN_ADDR",
    "KEEL_ADVERTISE_HOST",
    "KEEL_ADMIN_TOKEN",
    "KEEL_CONSUL_TOKEN",
    "KEEL_CONSUL_CA_FILE",
    "KEEL_JWKS_URL",
];

/// The default database: SQLite under `./keel-data`.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://keel-data/keel.db";
/// The default gateway address.
pub const DEFAULT_GATEWAY_ADDR: &str = "127.0.0.1:8080";
/// The default listener of a service binary: loopback, any free port.
pub const DEFAULT_LISTEN_ADDR: &str = "127.0.0.1:0";

/// Keel's settings, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The deployment's namespace (`KEEL_NAMESPACE`); the default is none.
    pub namespace: Namespace,
    /// The event log's database (`KEEL_DATABASE_URL`): `sqlite://...` or `postgres://...`.
    pub database_url: String,
    /// The broker (`KEEL_BUS_URL`); `None`: the log itself is the bus.
    pub bus_url: Option<String>,
    /// Consul's HTTP address (`KEEL_CONSUL_URL`); `None`: the in-process registry.
    pub consul_url: Option<String>,
    /// Where the gateway listens (`KEEL_GATEWAY_ADDR`).
    pub gateway_addr: SocketAddr,
    /// The HMAC secret of the gateway's JWTs (`KEEL_JWT_SECRET`, at least 16 bytes);
    /// `None`: write routes are open.
    pub jwt_secret: Option<String>,
    /// The secret of the gateway's signed identities (see [`Config::identity_key`]).
    pub identity_secret: Option<String>,
    /// How long services remember an `Idempotency-Key`.
    pub idempotency_ttl: Duration,
    /// Where a service binary listens.
    pub listen_addr: SocketAddr,
    /// The host other processes reach a service binary by (registered in Consul).
    pub advertise_host: Option<String>,
    /// The bearer token of the admin endpoints (`KEEL_ADMIN_TOKEN`, at least 16
    /// bytes); `None`: they answer loopback clients only.
    pub admin_token: Option<String>,
    /// Consul's ACL token (`KEEL_CONSUL_TOKEN`), sent as `X-Consul-Token`.
    pub consul_token: Option<String>,
    /// A CA certificate (PEM file, `KEEL_CONSUL_CA_FILE`) to trust for an `https://`
    /// Consul, beside the system's.
    pub consul_ca_file: Option<std::path::PathBuf>,
    /// Where the gateway fetches its JWT verification keys (`KEEL_JWKS_URL`, a JWK
    /// set as OIDC providers publish it).
    pub jwks_url: Option<String>,
}

/// `keel.toml`: the same keys as the environment, in lower case.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    namespace: Option<String>,
    database_url: Option<String>,
    bus_url: Option<String>,
    consul_url: Option<String>,
    gateway_addr: Option<String>,
    jwt_secret: Option<String>,
    identity_secret: Option<String>,
    idempotency_ttl_secs: Option<String>,
    listen_addr: Option<String>,
    advertise_host: Option<String>,
    admin_token: Option<String>,
    consul_token: Option<String>,
    consul_ca_file: Option<String>,
    jwks_url: Option<String>,
}

/// A configuration error that names the key.
#[derive(Debug, thiserror::Error)]
#[error("configuration key `{key}`: {reason}")]
pub struct ConfigError {
    /// The key at fault by its environment name (`KEEL_GATEWAY_ADDR`, ...), or
    /// `keel.toml` when the file cannot be read.
    pub key: String,
    /// What is wrong with its value.
    pub reason: String,
}

fn error(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError { key: key.to_owned(), reason: reason.into() }
}

impl Config {
    /// Reads `keel.toml` in the working directory (if present) and the environment.
    pub fn load() -> Result<Self, ConfigError> {
        Self::from_sources(Path::new("keel.toml"), |key| std::env::var(key).ok())
    }

    /// Reads `file` (if it exists) and then `env`, which wins.
    pub fn from_sources(
        file: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let from_file = match std::fs::read_to_string(file) {
            Ok(text) => toml::from_str::<File>(&text).map_err(|e| {
                let key = e.message().split('`').nth(1).unwrap_or("keel.toml").to_owned();
                error(&key, format!("{} in {}", e.message(), file.display()))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => File::default(),
            Err(e) => {
                return Err(error("keel.toml", format!("cannot read {}: {e}", file.display())));
            }
        };
        let pick = |env_key: &str, file_value: Option<String>| {
            env(env_key).or(file_value).filter(|v| !v.trim().is_empty())
        };

        let namespace = match pick("KEEL_NAMESPACE", from_file.namespace) {
            None => Namespace::none(),
            Some(name) => Namespace::new(name.trim()).map_err(|e| {
                error(
                    "KEEL_NAMESPACE",
                    format!(
                        "{e}: use 1 to 32 characters of a-z, 0-9, `_` and `-`, starting \
                         with a letter"
                    ),
                )
            })?,
        };
        let database_url = pick("KEEL_DATABASE_URL", from_file.database_url).unwrap_or_else(|| {
            match namespace.as_str() {
                None => DEFAULT_DATABASE_URL.into(),
                Some(ns) => format!("sqlite://keel-data/{ns}/keel.db"),
            }
        });
        if !(database_url.starts_with("sqlite:")
            || database_url.starts_with("postgres://")
            || database_url.starts_with("postgresql://"))
        {
            return Err(error(
                "KEEL_DATABASE_URL",
                format!("`{}` is neither sqlite:... nor postgres://...", redact_url(&database_url)),
            ));
        }
        let bus_url = pick("KEEL_BUS_URL", from_file.bus_url);
        if let Some(url) = &bus_url {
            let known = ["memory://", "amqp://", "amqps://", "kafka://", "log://"];
            if !known.iter().any(|scheme| url.starts_with(scheme)) {
                return Err(error(
                    "KEEL_BUS_URL",
                    format!(
                        "`{}`: expected memory://, amqp://..., kafka://... or log:// (or unset)",
                        redact_url(url)
                    ),
                ));
            }
        }
        let consul_url = pick("KEEL_CONSUL_URL", from_file.consul_url);
        if let Some(url) = &consul_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(error(
                "KEEL_CONSUL_URL",
                format!("`{}` is not an http:// or https:// URL", redact_url(url)),
            ));
        }
        let gateway = pick("KEEL_GATEWAY_ADDR", from_file.gateway_addr)
            .unwrap_or_else(|| DEFAULT_GATEWAY_ADDR.into());
        let gateway_addr = gateway.parse().map_err(|e| {
            error("KEEL_GATEWAY_ADDR", format!("`{gateway}` is not host:port ({e})"))
        })?;
        let jwt_secret = pick("KEEL_JWT_SECRET", from_file.jwt_secret);
        if jwt_secret.as_ref().is_some_and(|s| s.len() < 16) {
            return Err(error("KEEL_JWT_SECRET", "an HS256 secret must be at least 16 bytes"));
        }
        let identity_secret = pick("KEEL_IDENTITY_SECRET", from_file.identity_secret);
        if identity_secret.as_ref().is_some_and(|s| s.len() < 16) {
            return Err(error("KEEL_IDENTITY_SECRET", "the secret must be at least 16 bytes"));
        }
        let idempotency_ttl =
            match pick("KEEL_IDEMPOTENCY_TTL_SECS", from_file.idempotency_ttl_secs) {
                None => DEFAULT_IDEMPOTENCY_TTL,
                Some(text) => match text.trim().parse::<u64>() {
                    Ok(seconds) if seconds > 0 => Duration::from_secs(seconds),
                    _ => {
                        return Err(error(
                            "KEEL_IDEMPOTENCY_TTL_SECS",
                            format!("`{text}` is not a whole number of seconds above 0"),
                        ));
                    }
                },
            };
        let listen = pick("KEEL_LISTEN_ADDR", from_file.listen_addr)
            .unwrap_or_else(|| DEFAULT_LISTEN_ADDR.into());
        let listen_addr = listen
            .parse()
            .map_err(|e| error("KEEL_LISTEN_ADDR", format!("`{listen}` is not host:port ({e})")))?;
        let advertise_host = pick("KEEL_ADVERTISE_HOST", from_file.advertise_host);
        let admin_token = pick("KEEL_ADMIN_TOKEN", from_file.admin_token);
        if admin_token.as_ref().is_some_and(|s| s.len() < 16) {
            return Err(error("KEEL_ADMIN_TOKEN", "the token must be at least 16 bytes"));
        }
        let consul_token = pick("KEEL_CONSUL_TOKEN", from_file.consul_token);
        if consul_token.as_ref().is_some_and(|t| t.chars().any(|c| c.is_control())) {
            return Err(error("KEEL_CONSUL_TOKEN", "the token has control characters"));
        }
        let consul_ca_file =
            pick("KEEL_CONSUL_CA_FILE", from_file.consul_ca_file).map(std::path::PathBuf::from);
        let jwks_url = pick("KEEL_JWKS_URL", from_file.jwks_url);
        if let Some(url) = &jwks_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(error(
                "KEEL_JWKS_URL",
                format!("`{}` is not an http:// or https:// URL", redact_url(url)),
            ));
        }
        Ok(Self {
            namespace,
            database_url,
            bus_url,
            consul_url,
            gateway_addr,
            jwt_secret,
            identity_secret,
            idempotency_ttl,
            listen_addr,
            advertise_host,
            admin_token,
            consul_token,
            consul_ca_file,
            jwks_url,
        })
    }

    /// The key services verify the gateway's signed identities with (and the gateway
    /// signs them with): `identity_secret` if set, else derived from `jwt_secret`;
    /// `None` (the open mode) without either.
    pub fn identity_key(&self) -> Option<IdentityKey> {
        match (&self.identity_secret, &self.jwt_secret) {
            (Some(secret), _) => Some(IdentityKey::from_secret(secret.as_bytes())),
            (None, Some(jwt_secret)) => Some(IdentityKey::derive_from_jwt_secret(jwt_secret)),
            (None, None) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |key| pairs.iter().find(|(k, _)| *k == key).map(|(_, v)| (*v).to_owned())
    }

    #[test]
    fn defaults_run_on_sqlite() -> Result<(), ConfigError> {
        let config = Config::from_sources(Path::new("/nonexistent/keel.toml"), env(&[]))?;
        assert_eq!(config.database_url, DEFAULT_DATABASE_URL);
        assert_eq!(config.bus_url, None);
        assert_eq!(config.gateway_addr.to_string(), DEFAULT_GATEWAY_ADDR);
        Ok(())
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases: [(&'static [(&'static str, &'static str)], &str); 11] = [
            (&[("KEEL_NAMESPACE", "Team A")], "KEEL_NAMESPACE"),
            (&[("KEEL_NAMESPACE", "pg_team")], "KEEL_NAMESPACE"),
            (&[("KEEL_NAMESPACE", "a-namespace-much-longer-than-32-chars")], "KEEL_NAMESPACE"),
            (&[("KEEL_LISTEN_ADDR", "nowhere")], "KEEL_LISTEN_ADDR"),
            (&[("KEEL_DATABASE_URL", "mysql://x")], "KEEL_DATABASE_URL"),
            (&[("KEEL_BUS_URL", "nats://x")], "KEEL_BUS_URL"),
            (&[("KEEL_GATEWAY_ADDR", "localhost")], "KEEL_GATEWAY_ADDR"),
            (&[("KEEL_JWT_SECRET", "short")], "KEEL_JWT_SECRET"),
            (&[("KEEL_IDENTITY_SECRET", "short")], "KEEL_IDENTITY_SECRET"),
            (&[("KEEL_IDEMPOTENCY_TTL_SECS", "a day")], "KEEL_IDEMPOTENCY_TTL_SECS"),
            (&[("KEEL_IDEMPOTENCY_TTL_SECS", "0")], "KEEL_IDEMPOTENCY_TTL_SECS"),
        ];
        for (pairs, key) in cases {
            let err = Config::from_sources(Path::new("/nonexistent"), env(pairs)).expect_err(key);
            assert_eq!(err.key, key);
            assert!(err.to_string().starts_with(&format!("configuration key `{key}`")), "{err}");
        }
    }

    #[test]
    fn env_keys_are_the_keys_read() {
        let read = std::sync::Mutex::new(Vec::new());
        let _ = Config::from_sources(Path::new("/nonexistent/keel.toml"), |key| {
            read.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(key.to_owned());
            None
        });
        let read = read.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
        assert_eq!(read, ENV_KEYS, "ENV_KEYS lists what from_sources reads, in order");
    }

    #[test]
    fn a_namespace_is_read_and_picks_its_own_sqlite_file() -> Result<(), ConfigError> {
        let nowhere = Path::new("/nonexistent/keel.toml");
        let config = Config::from_sources(nowhere, env(&[]))?;
        assert!(config.namespace.is_default(), "no namespace by default");
        let config = Config::from_sources(nowhere, env(&[("KEEL_NAMESPACE", "team-a")]))?;
        assert_eq!(config.namespace.as_str(), Some("team-a"));
        assert_eq!(config.database_url, "sqlite://keel-data/team-a/keel.db");
        let config = Config::from_sources(
            nowhere,
            env(&[("KEEL_NAMESPACE", "team-a"), ("KEEL_DATABASE_URL", "postgres://h/db")]),
        )?;
        assert_eq!(config.database_url, "postgres://h/db", "an explicit URL is kept");
        Ok(())
    }

    #[test]
    fn the_identity_key_is_its_own_secret_or_derived_from_the_jwt_secret() -> Result<(), ConfigError>
    {
        use keel_service::{Identity, IdentityKey};
        let nowhere = Path::new("/nonexistent/keel.toml");
        let alice = Identity::new("alice").expect("a subject");
        assert!(Config::from_sources(nowhere, env(&[]))?.identity_key().is_none());

        const JWT: &str = "a-jwt-secret-of-some-length";
        let config = Config::from_sources(nowhere, env(&[("KEEL_JWT_SECRET", JWT)]))?;
        let key = config.identity_key().expect("derived from the JWT secret");
        let token = IdentityKey::derive_from_jwt_secret(JWT).sign(&alice);
        assert_eq!(key.verify(&token).ok(), Some(alice.clone()));

        let config = Config::from_sources(
            nowhere,
            env(&[("KEEL_JWT_SECRET", JWT), ("KEEL_IDENTITY_SECRET", "its-own-identity-secret")]),
        )?;
        let key = config.identity_key().expect("its own");
        assert!(key.verify(&token).is_err(), "not the derived key");
        let token = IdentityKey::from_secret(b"its-own-identity-secret").sign(&alice);
        assert_eq!(key.verify(&token).ok(), Some(alice));
        Ok(())
    }

    #[test]
    fn idempotency_keys_are_kept_a_day_unless_configured() -> Result<(), ConfigError> {
        let nowhere = Path::new("/nonexistent/keel.toml");
        let config = Config::from_sources(nowhere, env(&[]))?;
        assert_eq!(config.idempotency_ttl, std::time::Duration::from_secs(86_400));
        let config = Config::from_sources(nowhere, env(&[("KEEL_IDEMPOTENCY_TTL_SECS", "3600")]))?;
        assert_eq!(config.idempotency_ttl, std::time::Duration::from_secs(3600));
        Ok(())
    }

    #[test]
    fn the_file_is_read_and_unknown_keys_are_named() -> Result<(), Box<dyn std::error::Error>> {
        let dir = std::env::temp_dir().join(format!("keel-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let file = dir.join("keel.toml");
        std::fs::write(&file, "bus_url = \"memory://\"\ngateway_addr = \"127.0.0.1:9000\"\n")?;
        let config = Config::from_sources(&file, env(&[("KEEL_GATEWAY_ADDR", "127.0.0.1:9100")]))?;
        assert_eq!(config.bus_url.as_deref(), Some("memory://"));
        assert_eq!(config.gateway_addr.port(), 9100, "the environment wins");
        std::fs::write(&file, "databse_url = \"sqlite://x.db\"\n")?;
        let err = Config::from_sources(&file, env(&[])).expect_err("typo");
        assert_eq!(err.key, "databse_url");
        Ok(())
    }
}
