//! The orders service as its own process, configured like every Keel process
//! (`KEEL_DATABASE_URL`, `KEEL_BUS_URL`, `KEEL_CONSUL_URL`, `KEEL_LISTEN_ADDR`,
//! `KEEL_ADVERTISE_HOST`; see `keel::runtime::ServiceRunner`), plus
//! `KEEL_ORDER_DEADLINE_SECS` (default 300): an order not settled within it is
//! cancelled. Users and products are found through the registry.

use std::sync::Arc;
use std::time::Duration;

use keel::runtime::{ServiceContext, ServiceRunner};
use keel_orders::{
    AppState, DiscoveryDirectory, app, migrate, order_deadline_from_env, start_consumers,
};

fn state(context: &ServiceContext, deadline: Duration) -> AppState {
    let directory = Arc::new(DiscoveryDirectory::new(context.registry.clone()));
    AppState::new(context.db.clone(), directory)
        .with_idempotency_ttl(context.config.idempotency_ttl)
        .with_deadline(deadline)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // A bad value stops start-up naming the variable.
    let deadline = order_deadline_from_env()?;
    ServiceRunner::new("orders")
        .migrations(|db| async move { migrate(&db).await })
        .consumers(move |context| async move {
            start_consumers(&state(&context, deadline), context.bus.clone()).await
        })
        // The orders' deadlines are durable timers: this process fires them.
        .timers()
        .routes(move |context| app(state(context, deadline)))
        .run()
        .await
}
