//! The balance projector natively, given / when / then (`tollgate_sdk::testing`): events in,
//! the `balances` entry out, without a component or wasmtime.

#![allow(clippy::unwrap_used)]

use balance_projector::BalanceProjector;
use tollgate_billing_model::account::{AccountEvent, STREAM};
use tollgate_billing_model::balance::{BUCKET, BalanceView};
use tollgate_sdk::Event;
use tollgate_sdk::testing::ProjectorTest;

/// Account `alice`'s event number `sequence`.
fn event(sequence: u64, event: AccountEvent) -> Event {
    Event { sequence, ..Event::new(STREAM, "alice", &event).unwrap() }
}

fn opened_and_topped_up() -> [Event; 2] {
    [
        event(1, AccountEvent::Opened { currency: "EUR".into(), overdraft_limit: 0 }),
        event(2, AccountEvent::ToppedUp { amount: 500 }),
    ]
}

#[test]
fn a_top_up_shows_in_the_balance_and_the_ledger() {
    let then = ProjectorTest::<BalanceProjector>::new().when(opened_and_topped_up());
    let views = then.kv::<BalanceView>(BUCKET);
    let alice = &views["alice"];
    assert_eq!((alice.currency.as_str(), alice.balance, alice.available), ("EUR", 500, 500));
    assert_eq!(alice.ledger.last().map(|l| (l.sequence, l.effective_balance)), Some((2, 500)));
}

#[test]
fn a_redelivered_batch_changes_nothing_twice() {
    let then = ProjectorTest::<BalanceProjector>::new().given(opened_and_topped_up()).when(opened_and_topped_up());
    let before = then.kv::<BalanceView>(BUCKET);
    let then = then.and_when([event(2, AccountEvent::ToppedUp { amount: 500 })]);
    assert_eq!(then.kv::<BalanceView>(BUCKET), before);
    assert_eq!(before["alice"].balance, 500);
}

#[test]
fn an_event_that_overflows_the_balance_is_refused() {
    ProjectorTest::<BalanceProjector>::new()
        .given(opened_and_topped_up())
        .when([event(3, AccountEvent::ToppedUp { amount: i64::MAX })])
        .then_expect_rejection("amount-overflow");
}
