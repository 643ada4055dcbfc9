//! `keel up`: the whole example system in one process (DESIGN.md 2.11).
//!
//! The users, products, orders and events services each run behind their own
//! loopback listener (the service kit: health, readiness, metrics, registration),
//! their subscribers consume from the bus, and the gateway routes `/api/*` to them
//! through the registry. With no configuration the store is SQLite, the bus is the log
//! itself (durable consumer groups, no relay needed) and the registry is in-process;
//! with `KEEL_BUS_URL` a relay in this process publishes the log to the broker, and
//! with `KEEL_CONSUL_URL` the services register in Consul.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use keel_bus::ConsumerHandle;
use keel_gateway::{AuthConfig, AuthMode, Gateway, GatewayConfig, JwksConfig, RouteConfig};
use keel_runtime::{
    Parts, ProjectionTask, Shutdown, TimerTask, redact_url, start_relay, start_service, system_bus,
};
use keel_service::RunningService;
use keel_sql::Db;
use tokio::sync::oneshot;

use crate::commands::shutdown_signal;
use crate::config::Config;

/// The relay's name in `keel up` (its checkpoint is `relay:up`).
const RELAY: &str = "up";
/// Connections one client IP may hold open to the gateway.
const MAX_CONNECTIONS_PER_CLIENT: u32 = 256;
/// Requests per second per client (its subject, else its IP) on each route, and the
/// burst above that rate.
const RATE_PER_SECOND: u32 = 200;
const RATE_BURST: u32 = 400;

/// Runs until Ctrl-C or SIGTERM, then stops everything in order: the gateway, the
/// services (deregister, drain), the consumers, the relay, the bus. Every part is
/// stopped even after one fails; each failure is logged naming its part, and then
/// `up` returns an error (so `keel up` exits non-zero).
pub async fn up(config: &Config) -> anyhow::Result<()> {
    if keel_sqlite::is_in_memory(&config.database_url) {
        tracing::warn!(
            "KEEL_DATABASE_URL `{}` is a database in memory: everything is lost when keel up stops",
            config.database_url
        );
    }
    let db = Db::connect_in(&config.database_url, &config.namespace).await.with_context(|| {
        format!("opening the database (KEEL_DATABASE_URL={})", redact_url(&config.database_url))
    })?;
    keel_users::migrate(&db).await.context("users migrations")?;
    keel_products::migrate(&db).await.context("products migrations")?;
    keel_orders::migrate(&db).await.context("orders migrations")?;
    let registry = keel_runtime::connect_registry(config).await?;
    let (bus, brokered) = system_bus(config, &db).await?;

    let ttl = config.idempotency_ttl;
    let users_state = keel_users::AppState::new(db.clone()).with_idempotency_ttl(ttl);
    let products_state = keel_products::AppState::new(db.clone()).with_idempotency_ttl(ttl);
    let directory = Arc::new(keel_orders::DiscoveryDirectory::new(registry.clone()));
    let orders_state = keel_orders::AppState::new(db.clone(), directory)
        .with_idempotency_ttl(ttl)
        .with_deadline(keel_orders::order_deadline_from_env()?);

    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut services = Vec::new();
    for (name, router) in [
        ("users", keel_users::app(users_state.clone())),
        ("products", keel_products::app(products_state.clone())),
        ("orders", keel_orders::app(orders_state.clone())),
        ("events", keel_events::app(db.log())),
    ] {
        let identity = config.identity_key();
        let service = start_service(name, router, &registry, &db, loopback, None, identity);
        services.push((name, service.await?));
    }

    // The services' projections, as their binaries register them with their runners.
    let projections = vec![(
        format!("the users service's projection {}", keel_users::UsersOrders::NAME),
        ProjectionTask::start(db.clone(), keel_users::UsersOrders.into()),
    )];
    let mut consumers: Vec<(String, ConsumerHandle)> = Vec::new();
    for (service, started) in [
        ("products", keel_products::start_consumers(&products_state, bus.clone()).await?),
        ("orders", keel_orders::start_consumers(&orders_state, bus.clone()).await?),
    ] {
        for (n, consumer) in started.into_iter().enumerate() {
            consumers.push((format!("the {service} service's consumer {}", n + 1), consumer));
        }
    }
    // The timers (the orders' deadlines) fire through the log, as in the orders binary.
    let timers = vec![(
        "the timer dispatcher".to_owned(),
        TimerTask::start(keel_timers::Dispatcher::new(db.clone())),
    )];
    let relay =
        if brokered { Some(start_relay(config, &db, bus.clone(), RELAY).await?) } else { None };

    // One recorder for the process, installed before the gateway (which would install
    // its own otherwise): /_keel/metrics shows the services', the bus's and the
    // relay's series beside the gateway's.
    let metrics = keel_telemetry::prometheus().clone();
    let gateway = Gateway::new(gateway_config(config), registry.clone())?;
    gateway.set_metrics_handle(metrics);
    let console = crate::console::console(config, db.log(), bus.clone()).await?;
    gateway.mount_console(keel_console::router(console));
    let listener = tokio::net::TcpListener::bind(config.gateway_addr).await.with_context(|| {
        format!("binding the gateway to {} (KEEL_GATEWAY_ADDR)", config.gateway_addr)
    })?;
    let gateway_addr = listener.local_addr()?;
    let (stop_gateway, gateway_stopped) = oneshot::channel::<()>();
    let gateway_task = tokio::spawn(gateway.serve(listener, async {
        let _ = gateway_stopped.await;
    }));

    // Installed before the banner says the system is up (see `shutdown_signal`).
    let stop = shutdown_signal();
    print_banner(config, gateway_addr, &services);
    stop.await;
    eprintln!("keel up: stopping");

    let mut report = Shutdown::new();
    // Live tails (SSE through the gateway) end first: the gateway drains in-flight
    // responses, and a live tail never finishes by itself.
    for (_, service) in &services {
        service.end_live_streams();
    }
    let _ = stop_gateway.send(());
    let gateway = match gateway_task.await {
        Ok(served) => served.map_err(anyhow::Error::from),
        Err(panicked) => Err(anyhow::Error::from(panicked)),
    };
    report.record("the gateway", gateway);
    let services =
        services.into_iter().map(|(name, service)| (format!("the {name} service"), service));
    let parts = Parts {
        services: services.collect(),
        consumers,
        timers,
        projections,
        relay,
        bus: Some(bus),
    };
    keel_runtime::shutdown::stop_parts(parts, &mut report).await;
    report.finish()?;
    eprintln!("keel up: stopped");
    Ok(())
}

/// The example system's routes; with `KEEL_JWT_SECRET`, writes need an HS256 token, and
/// so do reads of the event log (its events carry names and e-mails). Every route has
/// a rate limit per client, and each client IP a connection cap, generous enough for
/// the README's tour and the tests. Requests are forwarded with the caller's signed
/// identity (the key as the services derive theirs).
pub fn gateway_config(config: &Config) -> GatewayConfig {
    let credentials = auth_config(config);
    let auth = if credentials.is_some() { AuthMode::Write } else { AuthMode::None };
    let mut gateway = GatewayConfig::new(config.gateway_addr.to_string())
        // The services' own limit: the gateway answers 413 before an upstream could
        // refuse the body half-way through.
        .max_body_bytes(u64::try_from(keel_service::MAX_BODY_BYTES).unwrap_or(u64::MAX))
        .max_connections_per_client(MAX_CONNECTIONS_PER_CLIENT)
        // One document of the services' APIs, from each service's own.
        .openapi_path(keel_service::openapi::OPENAPI_PATH);
    for (prefix, service) in [
        ("/api/users", "users"),
        ("/api/products", "products"),
        ("/api/orders", "orders"),
        ("/api/events", "events"),
    ] {
        let auth =
            if service == "events" && auth != AuthMode::None { AuthMode::Required } else { auth };
        // Reads may be retried on another instance; the gateway never retries writes.
        let route = RouteConfig::to_service(prefix, service)
            .auth(auth)
            .timeout_ms(10_000)
            .retries(1)
            .rate_limit(RATE_PER_SECOND, RATE_BURST);
        gateway = gateway.route(route);
    }
    // `KEEL_IDENTITY_SECRET` (or keel.toml's `identity_secret`), as the services read it.
    if let Some(secret) = &config.identity_secret {
        gateway = gateway.identity_secret(secret.clone());
    }
    if let Some(token) = &config.admin_token {
        gateway = gateway.admin_token(token.clone());
    }
    match credentials {
        Some(credentials) => gateway.auth(credentials),
        None => {
            tracing::warn!(
                "neither KEEL_JWT_SECRET nor KEEL_JWKS_URL is set: the gateway's write routes \
                 are open to anyone"
            );
            gateway
        }
    }
}

/// The gateway's credentials: HS256 tokens signed with `KEEL_JWT_SECRET`, and tokens
/// signed by the keys of the JWK set at `KEEL_JWKS_URL`; `None` when neither is set.
pub fn auth_config(config: &Config) -> Option<AuthConfig> {
    let mut auth = match &config.jwt_secret {
        Some(secret) => AuthConfig::hs256(secret.clone()),
        None if config.jwks_url.is_some() => AuthConfig::default(),
        None => return None,
    };
    if let Some(url) = &config.jwks_url {
        auth = auth.jwks(JwksConfig::new(url.clone()));
    }
    Some(auth)
}

fn print_banner(config: &Config, gateway: SocketAddr, services: &[(&str, RunningService)]) {
    let bus = config.bus_url.as_deref().map_or_else(|| "the event log itself".into(), redact_url);
    let registry = config.consul_url.as_deref().map_or_else(|| "in-process".into(), redact_url);
    println!("keel up: the example system is running (Ctrl-C stops it)");
    if let Some(namespace) = config.namespace.as_str() {
        println!("  namespace {namespace}");
    }
    println!("  database  {}", redact_url(&config.database_url));
    println!("  bus       {bus}");
    println!("  registry  {registry}");
    println!("  gateway   http://{gateway}");
    println!("  console   http://{gateway}{}/", keel_console::BASE);
    for (name, service) in services {
        println!("  {name:<9} http://{}", service.local_addr());
    }
    println!();
    println!("try:");
    println!(
        "  curl -s http://{gateway}/api/users -H 'content-type: application/json' -d '{{\"name\":\"Ada\",\"email\":\"ada@example.com\"}}'"
    );
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::path::Path;

    use keel_gateway::AuthMode;

    use super::*;

    fn config(jwt_secret: Option<&'static str>) -> Config {
        Config::from_sources(Path::new("/nonexistent/keel.toml"), move |key| match key {
            "KEEL_JWT_SECRET" => jwt_secret.map(str::to_owned),
            _ => None,
        })
        .unwrap()
    }

    #[test]
    fn with_auth_on_the_event_log_needs_a_token_for_reads_too() {
        let gateway = gateway_config(&config(Some("a-secret-of-sixteen-bytes")));
        for route in &gateway.routes {
            let expected =
                if route.prefix == "/api/events" { AuthMode::Required } else { AuthMode::Write };
            assert_eq!(route.auth, expected, "{}", route.prefix);
        }
        assert!(gateway.identity_key().is_some(), "identities are signed");
        let open = gateway_config(&config(None));
        assert!(open.routes.iter().all(|r| r.auth == AuthMode::None));
    }

    #[test]
    fn rate_limits_a_connection_cap_and_the_services_body_limit_are_on() {
        let gateway = gateway_config(&config(None));
        for route in &gateway.routes {
            let limit =
                route.rate_limit.unwrap_or_else(|| panic!("{} has no rate limit", route.prefix));
            assert!(limit.per_second >= 100, "{}: {limit:?}", route.prefix);
        }
        assert_eq!(gateway.max_connections_per_client, Some(MAX_CONNECTIONS_PER_CLIENT));
        // No larger than the services' own limit, so that the gateway answers 413 itself
        // rather than racing an upstream that refuses the body mid-stream.
        let services_limit = u64::try_from(keel_service::MAX_BODY_BYTES).unwrap();
        assert_eq!(gateway.max_body_bytes, services_limit);
    }
}
