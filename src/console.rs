//! The web console (`keel-console`) as `keel up` mounts it on its gateway and as
//! `keel console` serves it alone: on the configured store and bus, with the example
//! system's consumer groups, the rebuildable projections of this binary, and the admin
//! check of the gateway (the `admin` role when KEEL_JWT_SECRET is set).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use async_trait::async_trait;
use keel_console::{BusGroups, Console, LogBusGroups, Rebuild};
use keel_core::Bus;
use keel_gateway::{AuthConfig, Gateway, GatewayConfig};
use keel_runtime::redact_url;
use keel_services_common::events::topics;

use crate::backends::{Store, open_bus};
use crate::config::Config;
use crate::projections;

/// The consumer groups of the example system (a broker cannot list them).
fn example_groups(console: Console) -> Console {
    console
        .group(topics::ORDER, keel_products::STOCK_GROUP)
        .group(topics::ORDER, keel_orders::FULFILMENT_GROUP)
        .group(topics::STOCK, keel_orders::FULFILMENT_GROUP)
}

/// Rebuilds the projections this binary knows (`keel projections rebuild`).
struct CliRebuild {
    url: String,
    namespace: keel_core::Namespace,
}

#[async_trait]
impl Rebuild for CliRebuild {
    fn names(&self) -> Vec<String> {
        projections::names().into_iter().map(str::to_owned).collect()
    }

    async fn rebuild(&self, name: &str) -> Result<u64, String> {
        let store = Store::open(&self.url, &self.namespace).await.map_err(|e| format!("{e:#}"))?;
        let rebuilt = projections::rebuild(&store, name, false, |_| {})
            .await
            .map_err(|e| format!("{e:#}"))?;
        Ok(rebuilt.map_or(0, |rebuilt| rebuilt.applied))
    }
}

/// The console on the configured store: `bus` is the bus the system uses (the log bus
/// without KEEL_BUS_URL): its dead letters, and a relay's retries when it is a broker.
pub async fn console(
    config: &Config,
    log: Arc<dyn keel_store::EventLog>,
    bus: Arc<dyn Bus>,
) -> anyhow::Result<Console> {
    let described = config
        .bus_url
        .as_deref()
        .map_or_else(|| "the event log itself (log bus)".to_owned(), redact_url);
    let mut console = Console::new(log.clone())
        .describe_store(redact_url(&config.database_url))
        .describe_bus(described)
        .dead_letters(bus.clone())
        .rebuild(Arc::new(CliRebuild {
            url: config.database_url.clone(),
            namespace: config.namespace.clone(),
        }));
    console = example_groups(console);
    match config.bus_url.as_deref() {
        None => console = console.group_lag(Arc::new(LogBusGroups::new(log))),
        // A broker's lag through the system's own bus (namespaced like the services').
        Some(_) => {
            console = console.relay_publisher(bus.clone()).group_lag(Arc::new(BusGroups::new(bus)));
        }
    }
    Ok(console)
}

/// `keel console`: the console alone on `listen`, behind the gateway's admin check.
pub async fn serve(config: &Config, listen: SocketAddr) -> anyhow::Result<()> {
    let store = Store::open(&config.database_url, &config.namespace).await?;
    let bus: Arc<dyn Bus> = match open_bus(config.bus_url.as_deref(), &config.namespace).await? {
        Some(bus) => bus,
        None => match &store {
            Store::Sqlite(log) => Arc::new(keel_logbus::open(log.clone()).await?),
            Store::Postgres(log) => Arc::new(keel_logbus::open(log.clone()).await?),
        },
    };
    let app = keel_console::router(console(config, store.log(), bus.clone()).await?);
    let mut gateway_config = GatewayConfig::new(listen.to_string());
    if let Some(secret) = &config.jwt_secret {
        gateway_config = gateway_config.auth(AuthConfig::hs256(secret.clone()));
    } else {
        tracing::warn!("KEEL_JWT_SECRET is not set: the console is open to anyone who reaches it");
    }
    let gateway = Gateway::without_registry(gateway_config)?;
    gateway.mount_console(app);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the console to {listen}"))?;
    let addr = listener.local_addr()?;
    let stop = crate::commands::shutdown_signal();
    println!("keel console: http://{addr}{}/", keel_console::BASE);
    println!("  database  {}", redact_url(&config.database_url));
    gateway.serve(listener, stop).await?;
    keel_core::Publisher::close(&*bus).await?;
    Ok(())
}
