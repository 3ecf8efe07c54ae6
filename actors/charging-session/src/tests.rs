//! Native tests of the process, through the SDK's encoding layer.

use super::*;
use tollgate_sdk::Command;
use tollgate_sdk::process_manager::{WitReaction, correlate, on_timer, react};

fn event<T: Serialize>(stream: &str, key: &str, sequence: u64, time: u64, correlation: &str, body: &T) -> Event {
    let (event_type, payload) = codec::encode(body).unwrap();
    Event {
        stream: stream.into(),
        key: key.into(),
        event_type,
        schema_version: 1,
        content_type: codec::JSON.into(),
        payload,
        sequence,
        time,
        command_id: format!("cmd-{stream}-{sequence}"),
        correlation_id: correlation.into(),
        causation_id: String::new(),
    }
}

fn plan(unit_price: i64) -> Vec<PriceTerm> {
    vec![PriceTerm::PerUnit { offer: "video".into(), unit_price }]
}

fn reserved(id: &str, unit_price: i64, expires_at: u64) -> AccountEvent {
    AccountEvent::Reserved {
        reservation_id: id.into(),
        offer: "video".into(),
        requested_units: 10,
        granted_units: 10,
        price: 10 * unit_price,
        held: 10 * unit_price,
        expires_at,
        final_unit: false,
        plan: plan(unit_price),
        counters: vec![],
    }
}

fn account_event(sequence: u64, time: u64, session: &str, body: AccountEvent) -> Event {
    event(account::STREAM, "alice", sequence, time, session, &body)
}

fn session_event(sequence: u64, session: &str, body: SessionEvent) -> Event {
    event(session::STREAM, session, sequence, 1_000 * sequence, session, &body)
}

fn usage(reservation: &str, used: u64, requested: u64, currency: Option<&str>) -> SessionEvent {
    SessionEvent::UsageReported {
        account: "alice".into(),
        reservation_id: reservation.into(),
        used_units: used,
        requested_units: requested,
        currency: currency.map(Into::into),
    }
}

/// Runs one event through correlate + react, as the host does.
fn step(state: Option<Vec<u8>>, event: &Event) -> WitReaction {
    assert!(correlate::<ChargingSession>(event).is_some(), "{} is correlated", event.event_type);
    react::<ChargingSession>(state.as_deref(), event).unwrap()
}

fn command<T: serde::de::DeserializeOwned>(c: &Command) -> T {
    codec::decode(&c.command_type, &c.payload).unwrap()
}

fn decoded(state: &Option<Vec<u8>>) -> Session {
    codec::from_json(state.as_ref().expect("the session goes on")).unwrap()
}

#[test]
fn one_shot_reservation_debited_on_termination_then_finishes() {
    let r = step(None, &account_event(3, 0, "s1", reserved("s1", 2, 60_000)));
    assert!(r.commands.is_empty());
    assert_eq!(r.set_timers.len(), 1);
    assert_eq!((r.set_timers[0].id.as_str(), r.set_timers[0].fire_at), (EXPIRY_TIMER, 60_000));
    let s = decoded(&r.state);
    assert_eq!(
        (s.account.as_str(), s.offer.as_str(), s.plan.clone(), s.validity_ms),
        ("alice", "video", plan(2), 60_000)
    );

    let t = step(
        r.state,
        &session_event(
            1,
            "s1",
            SessionEvent::Terminated { account: "alice".into(), reservation_id: "s1".into(), used_units: 4 },
        ),
    );
    assert_eq!(t.commands.len(), 1);
    let c = &t.commands[0];
    assert_eq!((c.stream.as_str(), c.key.as_str(), c.command_id.as_str()), ("account", "alice", "s1/debit/s1"));
    assert_eq!((c.correlation_id.as_str(), c.causation_id.as_str()), ("s1", "cmd-session-1"));
    assert_eq!(command::<AccountCommand>(c), AccountCommand::Debit { reservation_id: "s1".into(), used_units: 4 });
    assert!(t.state.is_some(), "waits for the debit");

    let d = step(
        t.state,
        &account_event(
            4,
            2_000,
            "s1",
            AccountEvent::Debited { reservation_id: "s1".into(), used_units: 4, charged: 8, released: 12 },
        ),
    );
    assert_eq!(d.cancel_timers, [EXPIRY_TIMER]);
    assert!(d.state.is_none(), "finished");
    assert!(d.commands.is_empty());
}

#[test]
fn usage_reports_debit_and_re_reserve_at_the_same_price() {
    let started = SessionEvent::Started { account: "alice".into(), offer: "video".into(), currency: "EUR".into() };
    let r = step(None, &session_event(1, "s1", started));
    let r = step(r.state, &account_event(3, 0, "s1", reserved("s1", 2, 30_000)));
    let report = session_event(2, "s1", usage("s1", 10, 20, None));
    let u = step(r.state.clone(), &report);
    assert_eq!(u.commands.len(), 2);
    let ids: Vec<&str> = u.commands.iter().map(|c| c.command_id.as_str()).collect();
    assert_eq!(ids, ["s1/debit/s1", "s1/reserve/2"]);
    assert_eq!(
        command::<AccountCommand>(&u.commands[0]),
        AccountCommand::Debit { reservation_id: "s1".into(), used_units: 10 }
    );
    assert_eq!(
        command::<AccountCommand>(&u.commands[1]),
        AccountCommand::Reserve {
            reservation_id: "s1/2".into(),
            units: 20,
            plan: plan(2),
            currency: "EUR".into(),
            validity_ms: 30_000,
            offer: "video".into(),
        }
    );
    assert!(u.commands.iter().all(|c| c.correlation_id == "s1"));

    // Redelivered, on the old state or the new one: the same command ids.
    for state in [r.state.clone(), u.state.clone()] {
        let again = step(state, &report);
        let again_ids: Vec<&str> = again.commands.iter().map(|c| c.command_id.as_str()).collect();
        assert_eq!(again_ids, ids);
    }

    // The old reservation is debited: the timer goes, the session waits for the new one.
    let debited = AccountEvent::Debited { reservation_id: "s1".into(), used_units: 10, charged: 20, released: 0 };
    let d = step(u.state, &account_event(4, 3_000, "s1", debited));
    assert_eq!(d.cancel_timers, [EXPIRY_TIMER]);
    assert_eq!(decoded(&d.state).pending.as_deref(), Some("s1/2"));

    let n = step(d.state, &account_event(5, 3_000, "s1", reserved("s1/2", 2, 33_000)));
    assert_eq!(n.set_timers.len(), 1);
    assert_eq!((n.set_timers[0].fire_at, n.set_timers[0].payload.as_slice()), (33_000, b"s1/2".as_slice()));
    let s = decoded(&n.state);
    assert_eq!((s.current.as_deref(), s.pending.as_deref()), (Some("s1/2"), None));

    let end = SessionEvent::Terminated { account: "alice".into(), reservation_id: "s1/2".into(), used_units: 3 };
    let t = step(n.state, &session_event(3, "s1", end));
    assert_eq!(t.commands[0].command_id, "s1/debit/s1/2");
    let debited = AccountEvent::Debited { reservation_id: "s1/2".into(), used_units: 3, charged: 6, released: 34 };
    let f = step(t.state, &account_event(6, 4_000, "s1", debited));
    assert!(f.state.is_none());
    assert_eq!(f.cancel_timers, [EXPIRY_TIMER]);
}

#[test]
fn re_reserving_needs_the_currency_from_started_or_the_report() {
    let r = step(None, &account_event(3, 0, "s1", reserved("s1", 2, 60_000)));
    let without = step(r.state.clone(), &session_event(1, "s1", usage("s1", 1, 5, None)));
    assert_eq!(without.commands.len(), 1, "debit only");
    let with = step(r.state, &session_event(1, "s1", usage("s1", 1, 5, Some("EUR"))));
    assert_eq!(with.commands.len(), 2);
    assert_eq!(with.commands[1].command_id, "s1/reserve/1");
}

#[test]
fn expiry_timer_expires_due_reservations_and_the_session_finishes() {
    let r = step(None, &account_event(3, 0, "s1", reserved("s1", 2, 60_000)));
    let timer = r.set_timers[0].clone();
    let early = on_timer::<ChargingSession>(r.state.as_deref(), &timer, 59_999).unwrap();
    assert!(early.commands.is_empty());
    let fired = on_timer::<ChargingSession>(r.state.as_deref(), &timer, 60_000).unwrap();
    assert_eq!(fired.commands.len(), 1);
    let c = &fired.commands[0];
    assert_eq!((c.command_id.as_str(), c.correlation_id.as_str(), c.time), ("s1/expire/s1", "s1", 60_000));
    assert_eq!(command::<AccountCommand>(c), AccountCommand::Expire { reservation_id: "s1".into() });
    assert!(fired.set_timers.is_empty() && fired.cancel_timers.is_empty());

    let expired = AccountEvent::Expired { reservation_id: "s1".into(), released: 20 };
    let e = step(fired.state, &account_event(4, 60_000, "s1", expired));
    assert!(e.state.is_none(), "a lapsed grant ends the session");
}

#[test]
fn the_timer_follows_the_earliest_open_reservation() {
    let r = step(None, &account_event(3, 0, "s1", reserved("a", 2, 50_000)));
    let r = step(r.state, &account_event(4, 0, "s1", reserved("b", 2, 40_000)));
    assert_eq!(r.set_timers[0].fire_at, 40_000);
    let r = step(r.state, &account_event(5, 0, "s1", reserved("c", 2, 70_000)));
    assert!(r.set_timers.is_empty(), "unchanged");
    let fired = on_timer::<ChargingSession>(r.state.as_deref(), &r_timer(40_000), 45_000).unwrap();
    assert_eq!(fired.commands.len(), 1);
    assert_eq!(fired.set_timers[0].fire_at, 50_000);
}

fn r_timer(fire_at: u64) -> Timer {
    Timer { id: EXPIRY_TIMER.into(), fire_at, payload: vec![] }
}

#[test]
fn events_of_no_interest_are_skipped_without_error() {
    let topped_up = account_event(2, 0, "c9", AccountEvent::ToppedUp { amount: 5 });
    assert_eq!(correlate::<ChargingSession>(&topped_up), None);
    let r = react::<ChargingSession>(None, &topped_up).unwrap();
    assert!(r.state.is_none() && r.commands.is_empty());

    let mut unknown = topped_up.clone();
    unknown.event_type = "frobbed".into();
    assert_eq!(correlate::<ChargingSession>(&unknown), None);

    let mut elsewhere = account_event(3, 0, "s1", reserved("s1", 2, 60_000));
    elsewhere.stream = "ledger".into();
    assert_eq!(correlate::<ChargingSession>(&elsewhere), None);

    // A debit this process never tracked leaves no instance behind.
    let orphan = AccountEvent::Debited { reservation_id: "x".into(), used_units: 1, charged: 1, released: 0 };
    let r = step(None, &account_event(4, 0, "req-7", orphan));
    assert!(r.state.is_none() && r.commands.is_empty());
}

#[test]
fn session_events_correlate_by_key_and_account_events_by_correlation_id() {
    let e = session_event(1, "s9", usage("s9", 1, 0, None));
    assert_eq!(correlate::<ChargingSession>(&e).as_deref(), Some("s9"));
    let e = account_event(3, 0, "s8", reserved("s8", 2, 60_000));
    assert_eq!(correlate::<ChargingSession>(&e).as_deref(), Some("s8"));
}

#[test]
fn model_session_events_use_the_documented_json() {
    let (ty, payload) = codec::encode(&usage("req-1", 10, 10, None)).unwrap();
    assert_eq!(ty, "usage-reported");
    assert_eq!(
        String::from_utf8(payload).unwrap(),
        r#"{"account":"alice","reservation_id":"req-1","used_units":10,"requested_units":10}"#
    );
    let decoded: SessionEvent =
        codec::decode("terminated", br#"{"account":"alice","reservation_id":"req-1/2","used_units":3}"#).unwrap();
    assert!(matches!(decoded, SessionEvent::Terminated { used_units: 3, .. }));
    let started: SessionEvent =
        codec::decode("started", br#"{"account":"alice","offer":"video","currency":"EUR"}"#).unwrap();
    assert!(matches!(started, SessionEvent::Started { .. }));
}
