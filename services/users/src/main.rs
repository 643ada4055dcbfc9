//! The users service as its own process, configured like every Keel process
//! (`KEEL_DATABASE_URL`, `KEEL_BUS_URL`, `KEEL_CONSUL_URL`, `KEEL_LISTEN_ADDR`,
//! `KEEL_ADVERTISE_HOST`; see `keel::runtime::ServiceRunner`), with its read model of
//! each user's orders (`keel-users projections rebuild users-orders`).

use keel::runtime::ServiceRunner;
use keel_users::{AppState, UsersOrders, app, migrate};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    ServiceRunner::new("users")
        .migrations(|db| async move { migrate(&db).await })
        .projection(UsersOrders)
        .routes(|context| {
            let ttl = context.config.idempotency_ttl;
            app(AppState::new(context.db.clone()).with_idempotency_ttl(ttl))
        })
        .run()
        .await
}
