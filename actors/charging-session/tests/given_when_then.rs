//! The charging session natively, given / when / then (`tollgate_sdk::testing`): the cases of
//! `scenarios/sessions.toml`, without a component or wasmtime.

#![allow(clippy::unwrap_used)]

use charging_session::{ChargingSession, EXPIRY_TIMER};
use tollgate_billing_model::account::{AccountCommand, AccountEvent};
use tollgate_billing_model::pricing::PriceTerm;
use tollgate_billing_model::session::SessionEvent;
use tollgate_sdk::testing::ProcessManagerTest;
use tollgate_sdk::{Event, Rejection, Timer};

fn voice_at_2() -> Vec<PriceTerm> {
    vec![PriceTerm::PerUnit { offer: "voice".into(), unit_price: 2 }]
}

/// Session `call` of account `ivy` began.
fn started() -> Event {
    let started = SessionEvent::Started { account: "ivy".into(), offer: "voice".into(), currency: "EUR".into() };
    Event::new("session", "call", &started).unwrap()
}

/// Its first reservation: 60 units at 2, due at 31000.
fn reserved() -> Event {
    let reserved = AccountEvent::Reserved {
        reservation_id: "call".into(),
        offer: "voice".into(),
        requested_units: 60,
        granted_units: 60,
        price: 120,
        held: 120,
        expires_at: 31_000,
        final_unit: false,
        plan: voice_at_2(),
        counters: vec![],
    };
    Event { correlation_id: "call".into(), time: 1_000, ..Event::new("account", "ivy", &reserved).unwrap() }
}

fn session() -> ProcessManagerTest<ChargingSession> {
    ProcessManagerTest::new().given([started(), reserved()])
}

#[test]
fn the_first_reservation_arms_the_expiry_timer() {
    ProcessManagerTest::<ChargingSession>::new()
        .when(reserved())
        .then_expect_commands::<AccountCommand>([])
        .then_expect_timers([(EXPIRY_TIMER, 31_000)]);
}

#[test]
fn a_usage_report_debits_and_re_reserves() {
    let report = SessionEvent::UsageReported {
        account: "ivy".into(),
        reservation_id: "call".into(),
        used_units: 60,
        requested_units: 30,
        currency: None,
    };
    let then = session()
        .when(Event { sequence: 2, ..Event::new("session", "call", &report).unwrap() })
        .then_expect_commands([
            AccountCommand::Debit { reservation_id: "call".into(), used_units: 60 },
            AccountCommand::Reserve {
                reservation_id: "call/2".into(),
                units: 30,
                plan: voice_at_2(),
                currency: "EUR".into(),
                validity_ms: 30_000,
                offer: "voice".into(),
            },
        ]);
    assert_eq!(then.state("call").unwrap().pending.as_deref(), Some("call/2"));
}

#[test]
fn termination_debits_the_final_usage_and_the_debit_finishes_the_session() {
    let terminated = SessionEvent::Terminated { account: "ivy".into(), reservation_id: "call".into(), used_units: 10 };
    let debited = AccountEvent::Debited { reservation_id: "call".into(), used_units: 10, charged: 20, released: 100 };
    session()
        .when(Event::new("session", "call", &terminated).unwrap())
        .then_expect_commands([AccountCommand::Debit { reservation_id: "call".into(), used_units: 10 }])
        .and_when(Event { correlation_id: "call".into(), ..Event::new("account", "ivy", &debited).unwrap() })
        .then_expect_finished();
}

#[test]
fn the_expiry_timer_expires_the_lapsed_reservation() {
    let timer = Timer { id: EXPIRY_TIMER.into(), fire_at: 31_000, payload: b"call".to_vec() };
    session()
        .when_timer("call", timer, 31_000)
        .then_expect_commands([AccountCommand::Expire { reservation_id: "call".into() }]);
}

#[test]
fn an_event_of_no_session_is_ignored() {
    let topped_up = AccountEvent::ToppedUp { amount: 5 };
    session().when(Event::new("account", "ivy", &topped_up).unwrap()).then_expect_ignored();
}

#[test]
fn a_refused_re_reservation_is_not_waited_for_and_the_session_ends() {
    let report = SessionEvent::UsageReported {
        account: "ivy".into(),
        reservation_id: "call".into(),
        used_units: 60,
        requested_units: 30,
        currency: None,
    };
    let then = session()
        .when(Event::new("session", "call", &report).unwrap())
        .then_expect_command_ids(["call/debit/call", "call/reserve/2"]);
    let Ok(Some((_, reaction))) = then.outcome() else { panic!("the report was not taken") };
    let reserve = reaction.commands[1].clone();
    let debited = AccountEvent::Debited { reservation_id: "call".into(), used_units: 60, charged: 120, released: 0 };
    let then = then
        .and_when_refused("call", &reserve, Rejection::business("insufficient-funds", "0 EUR cents available"))
        .then_expect_commands::<AccountCommand>([]);
    let state = then.state("call").unwrap();
    assert_eq!((state.pending, state.refused), (None, true));
    // The debit closes the last open reservation: nothing is pending any more, so it ends.
    then.and_when(Event { correlation_id: "call".into(), ..Event::new("account", "ivy", &debited).unwrap() })
        .then_expect_finished();
}

#[test]
fn a_refused_final_debit_closes_the_reservation_and_finishes_the_session() {
    let terminated = SessionEvent::Terminated { account: "ivy".into(), reservation_id: "call".into(), used_units: 10 };
    let then = session().when(Event::new("session", "call", &terminated).unwrap());
    let Ok(Some((_, reaction))) = then.outcome() else { panic!("the termination was not taken") };
    let debit = reaction.commands[0].clone();
    then.and_when_refused("call", &debit, Rejection::business("unknown-reservation", "`call` expired"))
        .then_expect_cancelled_timers([EXPIRY_TIMER])
        .then_expect_finished();
}
