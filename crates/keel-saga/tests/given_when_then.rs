//! The given/when/then kit on the example saga (feature `testing`), and the same
//! property as tests/property.rs over many more cases without a database.

#![allow(clippy::unwrap_used)]

mod common;

use chrono::Utc;
use common::{
    EXPIRY, Expired, Input, Output, Refunded, Restocked, Shipped, Shipping, cancelled, expired,
    paid, picked, placed,
};
use keel_saga::Step;
use keel_saga::testing::{Given, deliver_all};
use proptest::prelude::*;

type S = Step<Output, Input>;

#[test]
fn the_last_of_placed_paid_picked_ships_and_cancels_the_expiry() {
    let at = Utc::now();
    let state = Given::<Shipping>::inputs([paid("o"), picked("o")]).when(placed("o", at)).then([
        S::schedule(EXPIRY, at, Expired { order: "o".into() }),
        S::emit("shipping-o", Shipped { order: "o".into() }),
        S::cancel(EXPIRY),
    ]);
    assert!(state.shipped);
    Given::<Shipping>::inputs([placed("o", at), paid("o")])
        .when(picked("o"))
        .then([S::emit("shipping-o", Shipped { order: "o".into() }), S::cancel(EXPIRY)]);
}

#[test]
fn a_duplicate_decides_nothing() {
    let given = Given::<Shipping>::inputs([placed("o", Utc::now()), paid("o"), picked("o")]);
    let before = given.state().cloned();
    let after = given.when(picked("o")).then([]);
    assert_eq!(Some(after), before);
}

#[test]
fn expiry_compensates_what_was_done_once() {
    let state = Given::<Shipping>::inputs([placed("o", Utc::now()), paid("o"), picked("o")])
        .when(expired("o"))
        .then([]);
    assert!(state.shipped, "shipped before it expired: nothing to undo");
    Given::<Shipping>::inputs([placed("o", Utc::now()), paid("o")])
        .when(expired("o"))
        .then([S::emit("shipping-o", Refunded { order: "o".into() })]);
    Given::<Shipping>::inputs([placed("o", Utc::now()), paid("o"), expired("o")])
        .when(expired("o"))
        .then([]);
}

#[test]
fn a_cancellation_heard_first_is_applied_when_the_rest_arrives() {
    Given::<Shipping>::inputs([cancelled("o")]).when(placed("o", Utc::now())).then([]);
    Given::<Shipping>::inputs([cancelled("o"), placed("o", Utc::now())])
        .when(picked("o"))
        .then([S::emit("shipping-o", Restocked { order: "o".into() })]);
}

#[test]
fn a_timeout_without_a_saga_is_refused() {
    Given::<Shipping>::no_saga().when(expired("o")).then_refused();
}

proptest! {
    #[test]
    fn any_order_with_duplicates_ends_like_in_order(
        (p, k, c) in (any::<bool>(), any::<bool>(), any::<bool>()).prop_filter("race", |&(a, b, c)| !(a && b && c)),
        copies in prop::collection::vec(1..=3usize, 4),
        seed in any::<u64>(),
    ) {
        let at = Utc::now();
        let mut in_order = vec![placed("o", at)];
        if p { in_order.push(paid("o")); }
        if k { in_order.push(picked("o")); }
        if c { in_order.push(cancelled("o")); }
        let mut delivered: Vec<Input> = in_order
            .iter()
            .zip(&copies)
            .flat_map(|(input, &n)| std::iter::repeat_n(input.clone(), n))
            .collect();
        // A seeded Fisher-Yates shuffle.
        let mut state = seed | 1;
        for i in (1..delivered.len()).rev() {
            state ^= state << 13; state ^= state >> 7; state ^= state << 17;
            let j = usize::try_from(state % (i as u64 + 1)).unwrap();
            delivered.swap(i, j);
        }
        let (expected, _) = deliver_all::<Shipping>(&in_order);
        let (actual, _) = deliver_all::<Shipping>(&delivered);
        prop_assert_eq!(actual, expected, "delivered {:?}", delivered);
    }
}
