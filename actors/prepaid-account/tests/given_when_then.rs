//! The prepaid account natively, given / when / then (`tollgate_sdk::testing`): commands in
//! through the codec, events and state out, without a component or wasmtime.

#![allow(clippy::unwrap_used)]

use prepaid_account::PrepaidAccount;
use tollgate_billing_model::account::{AccountCommand, AccountEvent, MAX_MONEY, Money};
use tollgate_sdk::Command;
use tollgate_sdk::testing::AggregateTest;

fn opened() -> AccountEvent {
    AccountEvent::Opened { currency: "EUR".into(), overdraft_limit: 0 }
}

#[test]
fn a_top_up_is_added_and_a_direct_debit_beyond_the_balance_is_refused() {
    let then = AggregateTest::<PrepaidAccount>::new()
        .key("alice")
        .given([opened()])
        .when(AccountCommand::TopUp { amount: Money::new(500, "EUR") })
        .then_expect_events([AccountEvent::ToppedUp { amount: 500 }])
        .and_when(AccountCommand::DirectDebit { amount: Money::new(501, "EUR"), description: "sms".into() })
        .then_expect_rejection("insufficient-funds")
        .and_when(AccountCommand::DirectDebit { amount: Money::new(500, "EUR"), description: "sms".into() })
        .then_expect_events([AccountEvent::DirectDebited { amount: 500, description: "sms".into() }]);
    let account = then.state();
    assert_eq!((account.balance, account.held), (0, 0));
}

#[test]
fn commands_to_an_account_not_opened_are_refused() {
    AggregateTest::<PrepaidAccount>::new()
        .when(AccountCommand::TopUp { amount: Money::new(5, "EUR") })
        .then_expect_rejection("unknown-account");
}

#[test]
fn a_top_up_that_would_overflow_the_balance_is_refused_and_changes_nothing() {
    let then = AggregateTest::<PrepaidAccount>::new()
        .given([opened(), AccountEvent::ToppedUp { amount: MAX_MONEY }])
        .when(AccountCommand::TopUp { amount: Money::new(1, "EUR") })
        .then_expect_rejection("amount-overflow");
    assert_eq!(then.state().balance, MAX_MONEY);
}

#[test]
fn a_command_of_another_shape_is_refused_as_malformed() {
    let test = AggregateTest::<PrepaidAccount>::new().given([opened()]);
    let mut top_up =
        Command::new("account", "test-key", "c1", &AccountCommand::TopUp { amount: Money::new(5, "EUR") }).unwrap();
    top_up.payload = br#"{"amount": "five"}"#.to_vec();
    test.when_command(top_up).then_expect_rejection("malformed-command");
}
