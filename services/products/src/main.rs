//! The products service as its own process, configured like every Keel process
//! (`KEEL_DATABASE_URL`, `KEEL_BUS_URL`, `KEEL_CONSUL_URL`, `KEEL_LISTEN_ADDR`,
//! `KEEL_ADVERTISE_HOST`; see `keel::runtime::ServiceRunner`).

use keel::runtime::{ServiceContext, ServiceRunner};
use keel_products::{AppState, app, migrate, start_consumers};

fn state(context: &ServiceContext) -> AppState {
    AppState::new(context.db.clone()).with_idempotency_ttl(context.config.idempotency_ttl)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    ServiceRunner::new("products")
        .migrations(|db| async move { migrate(&db).await })
        .consumers(
            |context| async move { start_consumers(&state(&context), context.bus.clone()).await },
        )
        .routes(|context| app(state(context)))
        .run()
        .await
}
