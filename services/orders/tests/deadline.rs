//! The order deadline (issue 16): an order not settled within it is cancelled by the
//! fulfilment saga, whose timer survives a restart of the whole system; the stock the
//! order took goes back whenever the products service hears of it; a settled order's
//! timer is cancelled. On SQLite on every run, on PostgreSQL with `integration`.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Options, System, eventually, get};
use keel::core::StreamId;
use keel::sql::Db;
use keel::timers::TimersExt as _;

/// The types of the events of stream `stream`.
async fn types(db: &Db, stream: &str) -> Vec<String> {
    let stream = StreamId::new(stream).unwrap();
    db.read_stream(&stream).await.unwrap().iter().map(|e| e.ty().to_owned()).collect()
}

/// `reopen` gives a new connection to the same store (the restarted process's).
async fn an_unsettled_order_is_cancelled_at_its_deadline_across_a_restart<F, Fut>(
    db: Db,
    file: Option<std::path::PathBuf>,
    reopen: F,
) where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Db>,
{
    // The stock service is down: nothing settles the order.
    let options =
        Options { deadline: Duration::from_secs(3), products: false, ..Options::default() };
    let system = System::with_options(db, file, options.clone()).await;
    let user = system.user("late").await;
    let product = system.product(5).await;
    let order = system.order(&user, &product, 2).await;
    assert_eq!(system.db.pending_timers("default").await.unwrap(), 1, "the deadline");
    let (db, file) = system.stop_keeping_the_store().await;
    assert_eq!(types(&db, &format!("order-{order}")).await, ["order.placed"], "still pending");
    drop(db);

    // Restarted: the timer is still there, fires, and the saga cancels the order.
    let system = System::with_options(reopen().await, file, options).await;
    let settled = system.settled(&order).await;
    assert_eq!(settled["status"], "cancelled", "{settled}");
    assert_eq!(system.db.pending_timers("default").await.unwrap(), 0);
    assert_eq!(
        types(&system.db, &format!("order-{order}")).await,
        ["order.placed", "order.cancelled"]
    );

    // The stock service comes back (the system restarts with it; the in-memory bus
    // gives a new group only what is published after it subscribes, and the relay
    // publishes the log from the start): it hears the placement (reserves) and then
    // the cancellation (releases); the late reservation does not confirm the order.
    let (db, file) = system.stop_keeping_the_store().await;
    drop(db);
    let options = Options { deadline: Duration::from_secs(3), ..Options::default() };
    let system = System::with_options(reopen().await, file, options).await;
    let stock_stream = format!("stock-{order}");
    let db = system.db.clone();
    eventually(|| async {
        (types(&db, &stock_stream).await == ["stock.reserved", "stock.released"]).then_some(())
    })
    .await;
    assert_eq!(system.stock(&product).await, 5, "the stock went back");
    let uri = format!("/api/users/{user}/orders");
    eventually(|| async {
        let reply = get(&system.users, &uri).await;
        (reply.body["orders"][0]["status"] == "cancelled").then_some(())
    })
    .await;
    // Let the saga hear the late answer, then check nothing changed.
    let saga = keel_orders::fulfilment();
    eventually(|| async {
        saga.load(&db, &order).await.unwrap().is_some_and(|s| s.state.reserved).then_some(())
    })
    .await;
    let order_now = get(&system.orders, &format!("/api/orders/{order}")).await;
    assert_eq!(order_now.body["status"], "cancelled");
    assert_eq!(types(&db, &format!("order-{order}")).await, ["order.placed", "order.cancelled"]);
    system.stop().await;
}

/// A settled order's deadline is cancelled with the settling event.
async fn a_settled_order_cancels_its_deadline(db: Db) {
    let options = Options { deadline: Duration::from_secs(3600), ..Options::default() };
    let system = System::with_options(db, None, options).await;
    let user = system.user("quick").await;
    let product = system.product(5).await;
    let order = system.order(&user, &product, 1).await;
    assert_eq!(system.settled(&order).await["status"], "confirmed");
    assert_eq!(system.db.pending_timers("default").await.unwrap(), 0);
    let saga = keel_orders::fulfilment().load(&system.db, &order).await.unwrap().unwrap();
    assert_eq!(saga.state.settled(), keel_orders::Settled::Confirmed);
    system.stop().await;
}

#[tokio::test]
async fn an_unsettled_order_is_cancelled_at_its_deadline_across_a_restart_on_sqlite() {
    let (db, file) = System::sqlite_db().await;
    let url = format!("sqlite://{}", file.display());
    an_unsettled_order_is_cancelled_at_its_deadline_across_a_restart(db, Some(file), || async {
        Db::connect(&url).await.unwrap()
    })
    .await;
}

#[tokio::test]
async fn a_settled_order_cancels_its_deadline_on_sqlite() {
    a_settled_order_cancels_its_deadline(System::sqlite_db().await.0).await;
}

#[cfg(feature = "integration")]
#[tokio::test]
async fn an_unsettled_order_is_cancelled_at_its_deadline_across_a_restart_on_postgres() {
    let url = keel_testkit::postgres::fresh_database("orders").await;
    let db = Db::connect(&url).await.unwrap();
    an_unsettled_order_is_cancelled_at_its_deadline_across_a_restart(db, None, || async {
        Db::connect(&url).await.unwrap()
    })
    .await;
}

#[cfg(feature = "integration")]
#[tokio::test]
async fn a_settled_order_cancels_its_deadline_on_postgres() {
    let url = keel_testkit::postgres::fresh_database("orders").await;
    a_settled_order_cancels_its_deadline(Db::connect(&url).await.unwrap()).await;
}
