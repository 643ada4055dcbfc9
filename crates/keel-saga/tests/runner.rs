//! The runner against real stores and buses: SQLite on every run, PostgreSQL with the
//! `integration` feature. Each case is a function of a fresh database; the modules at
//! the bottom run them per store. The bus is the log itself (what `keel up` runs), so
//! the saga's timer messages come back to it as they do in a deployment.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use common::{EXPIRY, Input, Shipping, TOPIC, expired, paid, picked, placed};
use keel_core::{Bus, CloudEvent, ExpectedVersion, StreamId};
use keel_saga::{Error, SagaRunner};
use keel_sql::Db;
use keel_testkit::util::{eventually_async, unique};
use keel_timers::{Dispatcher, DispatcherOptions, TimersExt as _};

/// A fresh SQLite database in a file of its own (several connections, as in a service).
async fn sqlite() -> Db {
    let path = std::env::temp_dir().join(format!("keel-saga-{}.db", uuid::Uuid::now_v7()));
    Db::connect(&format!("sqlite://{}", path.display())).await.unwrap()
}

/// A fresh PostgreSQL database.
#[cfg(feature = "integration")]
async fn postgres() -> Db {
    Db::connect(&keel_testkit::postgres::fresh_database("saga").await).await.unwrap()
}

/// The log itself as the bus.
async fn log_bus(db: &Db) -> Arc<dyn Bus> {
    match db {
        Db::Sqlite(log) => Arc::new(keel_logbus::open(Arc::new(log.clone())).await.unwrap()),
        Db::Postgres(log) => Arc::new(keel_logbus::open(Arc::new(log.clone())).await.unwrap()),
    }
}

/// An input as the services would append it: on the topic's stream of its order.
fn envelope(input: &Input) -> CloudEvent {
    CloudEvent::from_event(input, "/test").unwrap().build().unwrap()
}

async fn append(db: &Db, input: &Input) {
    let order = <Shipping as keel_saga::Saga>::correlation_id(input);
    let stream = StreamId::new(format!("{TOPIC}-{order}")).unwrap();
    let mut tx = db.begin().await.unwrap();
    tx.append(&stream, ExpectedVersion::Any, &[envelope(input)]).await.unwrap();
    tx.commit().await.unwrap();
}

/// The types of the events the saga appended for `order`.
async fn emitted(db: &Db, order: &str) -> Vec<String> {
    let stream = StreamId::new(format!("shipping-{order}")).unwrap();
    db.read_stream(&stream).await.unwrap().iter().map(|e| e.ty().to_owned()).collect()
}

/// Handled in the caller's transaction: the state, the appended events and the timer
/// commit together, and a rolled-back transaction leaves none of them.
async fn state_steps_and_timers_commit_together(db: Db) {
    let runner = SagaRunner::<Shipping>::new();
    let order = unique("o");
    let later = Utc::now() + chrono::Duration::hours(1);

    let mut tx = db.begin().await.unwrap();
    let handled = runner.handle_in(&mut tx, &envelope(&placed(&order, later))).await.unwrap();
    assert!(handled.started);
    drop(tx); // rolled back
    assert!(runner.load(&db, &order).await.unwrap().is_none());
    assert_eq!(db.pending_timers("default").await.unwrap(), 0);

    for input in [placed(&order, later), paid(&order)] {
        let mut tx = db.begin().await.unwrap();
        runner.handle_in(&mut tx, &envelope(&input)).await.unwrap();
        tx.commit().await.unwrap();
    }
    let instance = runner.load(&db, &order).await.unwrap().unwrap();
    assert_eq!(instance.version, 2);
    assert!(instance.state.placed && instance.state.paid && !instance.state.shipped);
    assert_eq!(db.pending_timers("default").await.unwrap(), 1, "the expiry is pending");

    let mut tx = db.begin().await.unwrap();
    let handled = runner.handle_in(&mut tx, &envelope(&picked(&order))).await.unwrap();
    tx.commit().await.unwrap();
    assert!(handled.instance.state.shipped);
    assert_eq!(emitted(&db, &order).await, ["shop.shipped"]);
    assert_eq!(db.pending_timers("default").await.unwrap(), 0, "shipping cancelled the expiry");
    let key = SagaRunner::<Shipping>::timer_key(&order, EXPIRY);
    assert!(key.starts_with("saga:shipping:") && key.ends_with(":expiry"), "{key}");
}

/// An input that does not start a saga and finds none is refused as
/// `UnknownCorrelation` (permanent); through the bus it is dead-lettered with that
/// reason, and consumption goes on.
async fn unknown_correlation_is_dead_lettered_with_the_reason(db: Db) {
    let runner = SagaRunner::<Shipping>::new();
    let stray = unique("stray");
    let mut tx = db.begin().await.unwrap();
    let error = runner.handle_in(&mut tx, &envelope(&expired(&stray))).await.unwrap_err();
    assert!(
        matches!(&error, Error::UnknownCorrelation { correlation_id, .. } if *correlation_id == stray)
    );
    assert!(!error.is_retryable());
    drop(tx);

    let bus = log_bus(&db).await;
    let group = unique("shipping");
    let consumers = runner.start(&db, bus.clone(), &group, 4).await.unwrap();
    append(&db, &expired(&stray)).await;
    let order = unique("o");
    append(&db, &paid(&order)).await;
    let runner2 = runner.clone();
    let db2 = db.clone();
    eventually_async("the next input handled", || {
        let (runner, db, order) = (runner2.clone(), db2.clone(), order.clone());
        async move { runner.load(&db, &order).await.unwrap().is_some() }
    })
    .await;
    let bus2 = bus.clone();
    let group2 = group.clone();
    eventually_async("the dead letter", || {
        let (bus, group) = (bus2.clone(), group2.clone());
        async move { !bus.list(TOPIC, &group, 10).await.unwrap().is_empty() }
    })
    .await;
    let letters = bus.list(TOPIC, &group, 10).await.unwrap();
    assert_eq!(letters.len(), 1);
    assert!(letters[0].reason.contains("no instance for correlation id"), "{}", letters[0].reason);
    assert!(letters[0].reason.contains(&stray), "{}", letters[0].reason);
    assert!(runner.load(&db, &stray).await.unwrap().is_none());
    for consumer in consumers {
        consumer.stop().await.unwrap();
    }
}

/// The whole loop on the log bus: inputs appended out of order and twice, a timeout
/// scheduled in the past (it fires at once) through the dispatcher, the saga's
/// compensation emitted exactly once each, the timer gone.
async fn a_timeout_in_the_past_fires_at_once_and_compensates_once(db: Db) {
    let runner = SagaRunner::<Shipping>::new();
    let bus = log_bus(&db).await;
    let group = unique("shipping");
    let consumers = runner.start(&db, bus.clone(), &group, 4).await.unwrap();
    let dispatcher = Dispatcher::new(db.clone()).options(DispatcherOptions {
        poll_interval: Duration::from_millis(50),
        ..Default::default()
    });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let dispatching = tokio::spawn(async move {
        dispatcher
            .run(async {
                let _ = stopped.await;
            })
            .await
    });

    let order = unique("o");
    let later = Utc::now() + chrono::Duration::hours(1);
    for input in [paid(&order), picked(&order), paid(&order), placed(&order, later)] {
        append(&db, &input).await;
    }
    let past = Utc::now() - chrono::Duration::minutes(5);
    // Picked twice and expired in the past: the expiry fires at once and the picked
    // goods go back, once.
    let other = unique("o");
    for input in [picked(&other), placed(&other, past), picked(&other)] {
        append(&db, &input).await;
    }
    let (runner2, db2, other2) = (runner.clone(), db.clone(), other.clone());
    eventually_async("the other order to expire", || {
        let (runner, db, other) = (runner2.clone(), db2.clone(), other2.clone());
        async move { runner.load(&db, &other).await.unwrap().is_some_and(|i| i.state.expired) }
    })
    .await;
    let (runner2, db2, order2) = (runner.clone(), db.clone(), order.clone());
    eventually_async("the order to ship", || {
        let (runner, db, order) = (runner2.clone(), db2.clone(), order2.clone());
        async move { runner.load(&db, &order).await.unwrap().is_some_and(|i| i.state.shipped) }
    })
    .await;
    let shipped = runner.load(&db, &order).await.unwrap().unwrap().state;
    assert!(shipped.shipped && !shipped.expired, "{shipped:?}");
    assert_eq!(emitted(&db, &order).await, ["shop.shipped"]);
    assert_eq!(emitted(&db, &other).await, ["shop.restocked"], "compensated once");
    assert_eq!(db.pending_timers("default").await.unwrap(), 0);
    assert!(bus.list(TOPIC, &group, 10).await.unwrap().is_empty(), "no dead letters");

    let _ = stop.send(());
    dispatching.await.unwrap().unwrap();
    for consumer in consumers {
        consumer.stop().await.unwrap();
    }
}

macro_rules! cases {
    ($db:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn state_steps_and_timers_commit_together() {
            super::state_steps_and_timers_commit_together(super::$db().await).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn unknown_correlation_is_dead_lettered_with_the_reason() {
            super::unknown_correlation_is_dead_lettered_with_the_reason(super::$db().await).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_timeout_in_the_past_fires_at_once_and_compensates_once() {
            super::a_timeout_in_the_past_fires_at_once_and_compensates_once(super::$db().await)
                .await;
        }
    };
}

mod sqlite {
    cases!(sqlite);
}

#[cfg(feature = "integration")]
mod postgres {
    cases!(postgres);
}
