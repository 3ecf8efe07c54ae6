//! Every prepaid-account command and rejection, and the idempotency rule, on the `.wasm`.

use crate::fixture;
use tollgate_billing_model::account::{Account, AccountCommand as C, AccountEvent as E, Counter, MAX_MONEY, Money};
use tollgate_billing_model::pricing::PriceTerm;
use tollgate_host_test::fixtures::PREPAID_ACCOUNT;
use tollgate_host_test::testing::AggregateTest;

fn account() -> AggregateTest {
    AggregateTest::from_actor(fixture(PREPAID_ACCOUNT)).unwrap()
}

fn eur(n: i64) -> Money {
    Money::new(n, "EUR")
}

fn opened() -> E {
    E::Opened { currency: "EUR".into(), overdraft_limit: 0 }
}

fn per_unit(price: i64) -> Vec<PriceTerm> {
    vec![PriceTerm::PerUnit { offer: "voice".into(), unit_price: price }]
}

fn reserve(id: &str, units: u64, price: i64) -> C {
    C::Reserve {
        reservation_id: id.into(),
        units,
        plan: per_unit(price),
        currency: "EUR".into(),
        validity_ms: 60_000,
        offer: "voice".into(),
    }
}

fn reserved(id: &str, requested: u64, granted: u64, price: i64, final_unit: bool) -> E {
    E::Reserved {
        reservation_id: id.into(),
        offer: "voice".into(),
        requested_units: requested,
        granted_units: granted,
        price: granted as i64 * price,
        held: granted as i64 * price,
        expires_at: 60_000,
        final_unit,
        plan: per_unit(price),
        counters: vec![],
    }
}

/// A `reserved` event as written before price plans: no plan (each unit at `held / granted`),
/// and the counters to record once usage is debited.
fn legacy_with_counters(mut event: E, with: Vec<Counter>) -> E {
    if let E::Reserved { plan, counters, .. } = &mut event {
        *plan = vec![];
        *counters = with;
    }
    event
}

#[test]
fn open_then_open_again_is_already_open() {
    account()
        .when(C::Open { currency: "EUR".into(), overdraft_limit: 0 })
        .then_expect_events([opened()])
        .and_when(C::Open { currency: "EUR".into(), overdraft_limit: 0 })
        .then_expect_rejection("already-open");
}

#[test]
fn open_rejects_a_bad_currency_and_a_negative_overdraft() {
    account().when(C::Open { currency: "euro".into(), overdraft_limit: 0 }).then_expect_rejection("invalid-currency");
    account().when(C::Open { currency: "EUR".into(), overdraft_limit: -1 }).then_expect_rejection("negative-amount");
    // A limit near i64::MAX made `available` overflow; limits are bounded instead.
    account()
        .when(C::Open { currency: "EUR".into(), overdraft_limit: i64::MAX })
        .then_expect_rejection("limit-out-of-range");
}

#[test]
fn every_command_on_an_unopened_account_is_unknown_account() {
    for command in [
        C::TopUp { amount: eur(1) },
        reserve("r", 1, 1),
        C::Debit { reservation_id: "r".into(), used_units: 1 },
        C::Release { reservation_id: "r".into() },
        C::DirectDebit { amount: eur(1), description: String::new() },
        C::Expire { reservation_id: "r".into() },
    ] {
        account().when(command).then_expect_rejection("unknown-account");
    }
}

#[test]
fn top_up_adds_money_and_checks_amount_and_currency() {
    let mut then = account()
        .given([opened()])
        .when(C::TopUp { amount: eur(500) })
        .then_expect_events([E::ToppedUp { amount: 500 }]);
    assert_eq!(then.state::<Account>().balance, 500);
    account().given([opened()]).when(C::TopUp { amount: eur(0) }).then_expect_rejection("zero-amount");
    account().given([opened()]).when(C::TopUp { amount: eur(-5) }).then_expect_rejection("negative-amount");
    account()
        .given([opened()])
        .when(C::TopUp { amount: Money::new(5, "USD") })
        .then_expect_rejection("currency-mismatch");
}

#[test]
fn reserve_grants_what_the_balance_covers_and_holds_it() {
    let mut then = account()
        .given([opened(), E::ToppedUp { amount: 1000 }])
        .when(reserve("s1", 60, 2))
        .then_expect_events([reserved("s1", 60, 60, 2, false)]);
    let state: Account = then.state();
    assert_eq!((state.balance, state.held, state.available()), (1000, 120, 880));
}

#[test]
fn reserve_grants_partially_with_final_unit_when_it_uses_up_the_rest() {
    account()
        .given([opened(), E::ToppedUp { amount: 95 }])
        .when(reserve("s1", 100, 10))
        .then_expect_events([reserved("s1", 100, 9, 10, true)]);
}

#[test]
fn exact_balance_is_granted_with_final_unit_then_insufficient_funds() {
    account()
        .given([opened(), E::ToppedUp { amount: 100 }])
        .when(reserve("s1", 10, 10))
        .then_expect_events([reserved("s1", 10, 10, 10, true)])
        .and_when(reserve("s2", 1, 10))
        .then_expect_rejection("insufficient-funds");
}

#[test]
fn overdraft_limit_extends_available() {
    account()
        .given([E::Opened { currency: "EUR".into(), overdraft_limit: 50 }])
        .when(reserve("s1", 10, 10))
        .then_expect_events([reserved("s1", 10, 5, 10, true)]);
}

#[test]
fn reserve_rejections() {
    let funded = || account().given([opened(), E::ToppedUp { amount: 1000 }]);
    funded().when(reserve("s1", 0, 1)).then_expect_rejection("zero-amount");
    funded().when(reserve("s1", 1, -1)).then_expect_rejection("invalid-plan");
    funded()
        .when(C::Reserve {
            reservation_id: "s1".into(),
            units: 1,
            plan: per_unit(1),
            currency: "USD".into(),
            validity_ms: 1,
            offer: String::new(),
        })
        .then_expect_rejection("currency-mismatch");
    funded()
        .given([reserved("s1", 1, 1, 1, false)])
        .when(reserve("s1", 1, 1))
        .then_expect_rejection("duplicate-reservation-id");
    account().given([opened()]).when(reserve("s1", 1, 1)).then_expect_rejection("insufficient-funds");
}

#[test]
fn free_units_are_granted_in_full_without_a_hold() {
    account().given([opened()]).when(reserve("s1", 3, 0)).then_expect_events([reserved("s1", 3, 3, 0, false)]);
}

#[test]
fn debit_of_a_reservation_made_before_price_plans_records_its_counters() {
    let counters = vec![Counter { offer: "voice".into(), name: "bundle-remaining".into(), value: 2 }];
    let mut then = account()
        .given([
            opened(),
            E::ToppedUp { amount: 1000 },
            legacy_with_counters(reserved("s1", 60, 60, 2, false), counters.clone()),
        ])
        .when(C::Debit { reservation_id: "s1".into(), used_units: 45 })
        .then_expect_events([E::Debited { reservation_id: "s1".into(), used_units: 45, charged: 90, released: 30 }]);
    let state: Account = then.state();
    assert_eq!((state.balance, state.held, state.available()), (910, 0, 910));
    assert_eq!(state.counters_of("voice"), counters);
}

#[test]
fn debit_rejections() {
    let held = || account().given([opened(), E::ToppedUp { amount: 1000 }, reserved("s1", 10, 10, 2, false)]);
    held().when(C::Debit { reservation_id: "nope".into(), used_units: 1 }).then_expect_rejection("unknown-reservation");
    held().when(C::Debit { reservation_id: "s1".into(), used_units: 11 }).then_expect_rejection("exceeds-grant");
}

#[test]
fn release_frees_the_hold_without_charging() {
    let mut then = account()
        .given([opened(), E::ToppedUp { amount: 1000 }, reserved("s1", 10, 10, 2, false)])
        .when(C::Release { reservation_id: "s1".into() })
        .then_expect_events([E::Released { reservation_id: "s1".into(), released: 20 }]);
    assert_eq!(then.state::<Account>().available(), 1000);
    account()
        .given([opened()])
        .when(C::Release { reservation_id: "s1".into() })
        .then_expect_rejection("unknown-reservation");
}

#[test]
fn expire_frees_the_hold_only_after_validity() {
    let test = account().given([opened(), E::ToppedUp { amount: 1000 }, reserved("s1", 10, 10, 2, false)]);
    test.host_state().clock().set_ms(59_999);
    let mut then = test.when(C::Expire { reservation_id: "s1".into() }).then_expect_rejection("not-expired");
    then.test().host_state().clock().set_ms(60_000);
    then.and_when(C::Expire { reservation_id: "s1".into() })
        .then_expect_events([E::Expired { reservation_id: "s1".into(), released: 20 }]);
    account()
        .given([opened()])
        .when(C::Expire { reservation_id: "s1".into() })
        .then_expect_rejection("unknown-reservation");
}

#[test]
fn direct_debit_charges_within_available() {
    account()
        .given([opened(), E::ToppedUp { amount: 100 }])
        .when(C::DirectDebit { amount: eur(9), description: "sms".into() })
        .then_expect_events([E::DirectDebited { amount: 9, description: "sms".into() }]);
    account()
        .given([opened(), E::ToppedUp { amount: 100 }, reserved("s1", 10, 10, 9, false)])
        .when(C::DirectDebit { amount: eur(11), description: "sms".into() })
        .then_expect_rejection("insufficient-funds");
    account()
        .given([opened()])
        .when(C::DirectDebit { amount: eur(0), description: String::new() })
        .then_expect_rejection("zero-amount");
}

#[test]
fn refund_gives_money_back_up_to_the_largest_balance() {
    let mut then = account()
        .given([opened(), E::DirectDebited { amount: 9, description: "sms".into() }])
        .when(C::Refund { amount: eur(9), reason: "sms not delivered".into() })
        .then_expect_events([E::Refunded { amount: 9, reason: "sms not delivered".into() }]);
    assert_eq!(then.state::<Account>().balance, 0);
    account()
        .given([opened(), E::ToppedUp { amount: MAX_MONEY }])
        .when(C::Refund { amount: eur(1), reason: String::new() })
        .then_expect_rejection("amount-overflow");
    account()
        .given([opened()])
        .when(C::Refund { amount: eur(-1), reason: String::new() })
        .then_expect_rejection("negative-amount");
}

#[test]
fn a_repeated_command_id_returns_the_original_outcome_and_changes_nothing_twice() {
    let mut then = account()
        .given([opened(), E::ToppedUp { amount: 1000 }])
        .when_with_id("debit-1", C::DirectDebit { amount: eur(100), description: "x".into() })
        .then_expect_events([E::DirectDebited { amount: 100, description: "x".into() }])
        .and_when_with_id("debit-1", C::DirectDebit { amount: eur(100), description: "x".into() })
        .then_expect_events([E::DirectDebited { amount: 100, description: "x".into() }]);
    assert_eq!(then.state::<Account>().balance, 900, "charged once");
    assert_eq!(then.stream::<E>().len(), 3, "no event appended twice");
}

#[test]
fn a_repeated_rejected_command_id_stays_rejected() {
    account()
        .given([opened()])
        .when_with_id("r-1", reserve("s1", 1, 10))
        .then_expect_rejection("insufficient-funds")
        .and_when(C::TopUp { amount: eur(100) })
        .then_expect_events([E::ToppedUp { amount: 100 }])
        .and_when_with_id("r-1", reserve("s1", 1, 10))
        .then_expect_rejection("insufficient-funds");
}

#[test]
fn a_new_command_reusing_a_reservation_id_is_a_duplicate() {
    account()
        .given([opened(), E::ToppedUp { amount: 1000 }])
        .when_with_id("a", reserve("s1", 1, 10))
        .then_expect_events([reserved("s1", 1, 1, 10, false)])
        .and_when_with_id("b", reserve("s1", 1, 10))
        .then_expect_rejection("duplicate-reservation-id");
}

#[test]
fn unknown_command_and_malformed_payload_are_distinct_rejections() {
    use tollgate_host::aggregate::{Outcome, RejectionKind};
    let test = account().given([opened()]);
    let mut command = test.command("c1", &C::TopUp { amount: eur(1) });
    command.command_type = "withdraw".into();
    let then = test.when_command(command);
    match then.outcome() {
        Ok(Outcome::Rejected(r)) => {
            assert_eq!((r.kind, r.code.as_str()), (RejectionKind::UnknownCommand, "unknown-command"))
        }
        other => panic!("{other:?}"),
    }
    let mut then = then;
    let mut command = then.test().command("c2", &C::TopUp { amount: eur(1) });
    command.payload = br#"{"amount": "ten"}"#.to_vec();
    let then = then.into_test().when_command(command);
    match then.outcome() {
        Ok(Outcome::Rejected(r)) => {
            assert_eq!(r.kind, RejectionKind::Malformed);
            assert!(r.message.contains("top-up"), "{}", r.message);
        }
        other => panic!("{other:?}"),
    }
}
