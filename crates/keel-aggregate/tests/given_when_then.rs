//! The example account as given/when/then tests (the `testing` kit).

#![allow(clippy::unwrap_used)]

mod common;

use common::{Account, AccountError, Command, Deposited, Opened, Withdrawn, deposit};
use keel_aggregate::testing::{Given, assert_snapshot_round_trip};

fn opened() -> Opened {
    Opened { account_id: "a-1".into(), owner: "ada".into() }
}

#[test]
fn given_no_events_when_opened_then_opened() {
    let after = Given::<Account>::no_events()
        .when(Command::Open { id: "a-1".into(), owner: "ada".into() })
        .then([opened()]);
    assert_eq!(after.id.as_deref(), Some("a-1"));
}

#[test]
fn given_opened_when_deposited_then_deposited_and_the_balance_grows() {
    let after = Given::<Account>::events([opened()])
        .when(deposit(250))
        .then([Deposited { account_id: "a-1".into(), cents: 250 }]);
    assert_eq!((after.balance, after.movements), (250, 1));
}

#[test]
fn given_a_balance_when_overdrawn_then_refused_with_the_balance() {
    let given = Given::<Account>::events::<common::AccountEvent>([
        opened().into(),
        Deposited { account_id: "a-1".into(), cents: 100 }.into(),
        Withdrawn { account_id: "a-1".into(), cents: 30 }.into(),
    ]);
    assert_eq!(given.state().balance, 70);
    given
        .when(Command::Withdraw { cents: 71 })
        .then_error(AccountError::Insufficient { balance: 70, wanted: 71 });
}

#[test]
fn given_no_events_when_deposited_then_refused() {
    Given::<Account>::no_events()
        .when(deposit(1))
        .then_error_matches(|e| matches!(e, AccountError::NotOpen));
    Given::<Account>::events([opened()])
        .when(Command::Open { id: "a-1".into(), owner: "x".into() })
        .then_error(AccountError::AlreadyOpen);
}

#[test]
#[should_panic(expected = "other events than expected")]
fn then_fails_on_other_events() {
    Given::<Account>::events([opened()])
        .when(deposit(5))
        .then([Deposited { account_id: "a-1".into(), cents: 6 }]);
}

#[test]
#[should_panic(expected = "the command was refused")]
fn then_fails_on_a_refusal() {
    Given::<Account>::no_events().when(deposit(5)).then([opened()]);
}

#[test]
#[should_panic(expected = "but the command decided")]
fn then_error_fails_on_events() {
    Given::<Account>::events([opened()]).when(deposit(5)).then_error(AccountError::NotOpen);
}

#[test]
fn the_account_survives_its_snapshot() {
    let after = Given::<Account>::events([opened()])
        .when(deposit(5))
        .then([Deposited { account_id: "a-1".into(), cents: 5 }]);
    let json = assert_snapshot_round_trip(&after);
    assert!(json.contains("\"balance\":5"), "{json}");
}
