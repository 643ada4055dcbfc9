//! The acceptance property of issue 16: random delivery orders and duplicates of a
//! saga's inputs end in the same final state as in-order delivery, through the real
//! code path ([`SagaRunner::handle_in`] on SQLite: decode, load, decide, store with
//! the expected version, steps appended and timers written), each delivery its own
//! transaction and each duplicate a new event id (so the saga itself, not the inbox,
//! absorbs it).
//!
//! The input sets are those whose in-order outcome is not a race: an order that is
//! paid, picked *and* cancelled ships or is refunded depending on which came first in
//! the world, so no delivery order can be "the" right one. Every other combination is
//! generated.

#![allow(clippy::unwrap_used)]

mod common;

use chrono::Utc;
use common::{Input, Shipping, cancelled, paid, picked, placed};
use keel_core::{CloudEvent, StreamId};
use keel_saga::SagaRunner;
use keel_sql::Db;
use keel_timers::TimersExt as _;
use proptest::prelude::*;

/// One order's inputs: placed, and any of paid, picked, cancelled (not all three).
fn inputs(order: &str) -> impl Strategy<Value = Vec<Input>> {
    let later = Utc::now() + chrono::Duration::hours(1);
    let order = order.to_owned();
    (any::<bool>(), any::<bool>(), any::<bool>())
        .prop_filter("paid, picked and cancelled is a race", |&(a, b, c)| !(a && b && c))
        .prop_map(move |(p, k, c)| {
            let mut inputs = vec![placed(&order, later)];
            if p {
                inputs.push(paid(&order));
            }
            if k {
                inputs.push(picked(&order));
            }
            if c {
                inputs.push(cancelled(&order));
            }
            inputs
        })
}

/// The inputs in order, and a delivery: each input one to three times, shuffled.
fn deliveries() -> impl Strategy<Value = (Vec<Input>, Vec<Input>)> {
    inputs("o-1").prop_flat_map(|in_order| {
        let n = in_order.len();
        (Just(in_order), prop::collection::vec(1..=3usize, n), any::<prop::sample::Index>())
            .prop_flat_map(|(in_order, copies, _)| {
                let delivered: Vec<Input> = in_order
                    .iter()
                    .zip(&copies)
                    .flat_map(|(input, &k)| std::iter::repeat_n(input.clone(), k))
                    .collect();
                (Just(in_order), Just(delivered).prop_shuffle())
            })
    })
}

async fn sqlite() -> Db {
    let path = std::env::temp_dir().join(format!("keel-saga-prop-{}.db", uuid::Uuid::now_v7()));
    Db::connect(&format!("sqlite://{}", path.display())).await.unwrap()
}

/// Delivers `inputs` one transaction each; returns the final state, the emitted event
/// types (sorted) and the pending timers.
async fn run(db: &Db, inputs: &[Input]) -> (Shipping, Vec<String>, u64) {
    let runner = SagaRunner::<Shipping>::new();
    for input in inputs {
        let event = CloudEvent::from_event(input, "/test").unwrap().build().unwrap();
        let mut tx = db.begin().await.unwrap();
        runner.handle_in(&mut tx, &event).await.unwrap();
        tx.commit().await.unwrap();
    }
    let state = runner.load(db, "o-1").await.unwrap().unwrap().state;
    let stream = StreamId::new("shipping-o-1").unwrap();
    let mut emitted: Vec<String> =
        db.read_stream(&stream).await.unwrap().iter().map(|e| e.ty().to_owned()).collect();
    emitted.sort();
    (state, emitted, db.pending_timers("default").await.unwrap())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn any_delivery_order_with_duplicates_ends_like_in_order((in_order, delivered) in deliveries()) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let (expected, actual) = rt.block_on(async {
            let expected = run(&sqlite().await, &in_order).await;
            let actual = run(&sqlite().await, &delivered).await;
            (expected, actual)
        });
        prop_assert_eq!(&actual.0, &expected.0, "final state; delivered {:?}", delivered);
        prop_assert_eq!(&actual.1, &expected.1, "emitted events; delivered {:?}", delivered);
        prop_assert_eq!(actual.2, expected.2, "pending timers; delivered {:?}", delivered);
    }
}
