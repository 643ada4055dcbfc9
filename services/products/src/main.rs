//! The products service as its own process, configured like every Keel process
//! (`KEEL_DATABASE_URL`, `KEEL_BUS_URL`, `KEEL_CONSUL_URL`, `KEEL_LISTEN_ADDR`,
//! `KEEL_ADVERTISE_HOST`; see keel-runtime).

use keel::runtime::{ServiceParts, run_service};
use keel_products::{AppState, app, migrate, start_consumers};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    run_service("products", |context| async move {
        migrate(&context.db).await?;
        let state =
            AppState::new(context.db.clone()).with_idempotency_ttl(context.config.idempotency_ttl);
        let consumers = start_consumers(&state, context.bus.clone()).await?;
        Ok(ServiceParts { router: app(state), consumers })
    })
    .await
}
