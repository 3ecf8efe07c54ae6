//! The compiled charging session and balance projector under the same given / when / then as
//! their native tests (`actors/*/tests/given_when_then.rs`): what the component does is what
//! the crate does natively.

use tollgate_billing_model::account::{AccountCommand, AccountEvent, STREAM};
use tollgate_billing_model::balance::{BUCKET, BalanceView};
use tollgate_billing_model::pricing::PriceTerm;
use tollgate_billing_model::session::SessionEvent;
use tollgate_host::aggregate::{Event, Timer};
use tollgate_host_test::fixtures::{BALANCE_PROJECTOR, CHARGING_SESSION, actor_path};
use tollgate_host_test::testing::{ProcessManagerTest, ProjectorTest, event};

fn session() -> ProcessManagerTest {
    let started = SessionEvent::Started { account: "ivy".into(), offer: "voice".into(), currency: "EUR".into() };
    let reserved = AccountEvent::Reserved {
        reservation_id: "call".into(),
        offer: "voice".into(),
        requested_units: 60,
        granted_units: 60,
        price: 120,
        held: 120,
        expires_at: 31_000,
        final_unit: false,
        plan: vec![PriceTerm::PerUnit { offer: "voice".into(), unit_price: 2 }],
        counters: vec![],
    };
    let reserved = Event { correlation_id: "call".into(), time: 1_000, ..event(STREAM, "ivy", &reserved) };
    ProcessManagerTest::load(actor_path(CHARGING_SESSION))
        .unwrap()
        .given([event("session", "call", &started), reserved])
}

#[test]
fn the_compiled_charging_session_debits_expires_finishes_and_ignores_as_natively() {
    let terminated = SessionEvent::Terminated { account: "ivy".into(), reservation_id: "call".into(), used_units: 10 };
    let debited = AccountEvent::Debited { reservation_id: "call".into(), used_units: 10, charged: 20, released: 100 };
    session()
        .when(event("session", "call", &terminated))
        .then_expect_commands([AccountCommand::Debit { reservation_id: "call".into(), used_units: 10 }])
        .and_when(Event { correlation_id: "call".into(), ..event(STREAM, "ivy", &debited) })
        .then_expect_finished();
    let timer = Timer { id: "expiry".into(), fire_at: 31_000, payload: b"call".to_vec() };
    session()
        .when_timer("call", timer, 31_000)
        .then_expect_commands([AccountCommand::Expire { reservation_id: "call".into() }]);
    session().when(event(STREAM, "ivy", &AccountEvent::ToppedUp { amount: 5 })).then_expect_ignored();
}

#[test]
fn the_compiled_balance_projector_projects_and_refuses_an_overflow_as_natively() {
    let at = |sequence, e: AccountEvent| Event { sequence, ..event(STREAM, "alice", &e) };
    let opened = || {
        [
            at(1, AccountEvent::Opened { currency: "EUR".into(), overdraft_limit: 0 }),
            at(2, AccountEvent::ToppedUp { amount: 500 }),
        ]
    };
    let then = ProjectorTest::load(actor_path(BALANCE_PROJECTOR)).unwrap().when(opened());
    let view: BalanceView = then.kv(BUCKET, "alice").unwrap();
    assert_eq!((view.balance, view.available), (500, 500));
    then.and_when([at(3, AccountEvent::ToppedUp { amount: i64::MAX })]).then_expect_rejection("amount-overflow");
}
