//! The edge flow on the compiled reference actors: admission (policy -> rater -> account),
//! sessions (process manager), expiry timers, and the balance read model.

use std::sync::{Mutex, MutexGuard, OnceLock};
use tollgate_billing_model::account::{AccountCommand, AccountEvent, Money};
use tollgate_billing_model::balance::{BUCKET, BalanceView};
use tollgate_billing_model::session::{STREAM as SESSION, SessionEvent};
use tollgate_host::HostEngine;
use tollgate_host::aggregate::Outcome;
use tollgate_host_test::fixtures;
use tollgate_runtime::{AdmissionRequest, Decision, Loader, Manifest, ResultCode, Runtime};

/// `examples/edge.toml` (the five reference actors and the tariffs of `tollgate demo`), on
/// the actors this test run built.
pub fn manifest() -> Manifest {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/edge.toml");
    Manifest::load(&path).unwrap().with_actors_dir(&fixtures::actors_dir())
}

/// The test binary's loader: components are compiled once per test binary.
pub fn loader() -> MutexGuard<'static, Loader> {
    static LOADER: OnceLock<Mutex<Loader>> = OnceLock::new();
    let loader = LOADER.get_or_init(|| Mutex::new(Loader::new(HostEngine::shared().unwrap())));
    loader.lock().unwrap_or_else(|e| e.into_inner())
}

/// A fresh runtime over an ephemeral log.
pub fn runtime() -> Runtime {
    Runtime::new(&manifest(), &mut loader()).unwrap()
}

pub fn open(rt: &mut Runtime, account: &str, top_up: i64) {
    let c = rt
        .command(
            "account",
            account,
            &format!("{account}/open"),
            &AccountCommand::Open { currency: "EUR".into(), overdraft_limit: 0 },
        )
        .unwrap();
    assert!(matches!(rt.execute(&c).unwrap(), Outcome::Accepted(_)));
    if top_up > 0 {
        let c = rt
            .command(
                "account",
                account,
                &format!("{account}/top-up"),
                &AccountCommand::TopUp { amount: Money::new(top_up, "EUR") },
            )
            .unwrap();
        assert!(matches!(rt.execute(&c).unwrap(), Outcome::Accepted(_)));
    }
}

pub fn request(id: &str, account: &str, offer: &str, units: u64, country: Option<&str>) -> AdmissionRequest {
    AdmissionRequest {
        request_id: id.into(),
        subscriber: account.into(),
        offer: offer.into(),
        rating_group: 1,
        requested_units: units,
        country: country.map(Into::into),
    }
}

pub fn granted(d: &Decision) -> &tollgate_runtime::Granted {
    match d {
        Decision::Granted(g) => g,
        Decision::Denied(d) => panic!("denied {:?}: {}", d.code, d.message),
    }
}

fn denied(d: &Decision) -> (ResultCode, String) {
    match d {
        Decision::Denied(d) => (d.code, d.message.clone()),
        Decision::Granted(g) => panic!("granted {g:?}"),
    }
}

/// Ends a session: the network reports the final usage of its one reservation.
fn terminate(rt: &mut Runtime, session: &str, account: &str, used: u64) {
    let report = SessionEvent::Terminated { account: account.into(), reservation_id: session.into(), used_units: used };
    rt.report(SESSION, session, session, &format!("{session}/terminated"), &report).unwrap();
}

pub fn balance_view(rt: &Runtime, account: &str) -> BalanceView {
    let bytes = rt.host_state("balances").unwrap().kv_get(BUCKET, account).expect("the projector wrote a view");
    serde_json::from_slice(&bytes).unwrap()
}

#[test]
fn exact_balance_is_granted_then_quota_limit_reached() {
    let mut rt = runtime();
    open(&mut rt, "alice", 120);
    let d = rt.admit(&request("r1", "alice", "voice", 60, None)).unwrap();
    let g = granted(&d);
    assert_eq!((g.grant.granted_units, g.price.minor_units), (60, 120));
    assert!(g.grant.final_unit.is_some(), "the grant uses up the balance: final-unit indication");
    let (code, message) = denied(&rt.admit(&request("r2", "alice", "voice", 1, None)).unwrap());
    assert_eq!(code, ResultCode::QuotaLimitReached, "{message}");
}

#[test]
fn unknown_subscriber_is_user_unknown() {
    let mut rt = runtime();
    let (code, _) = denied(&rt.admit(&request("r1", "nobody", "voice", 1, None)).unwrap());
    assert_eq!(code, ResultCode::UserUnknown);
}

#[test]
fn bundle_uses_one_to_three_are_free_and_the_fourth_pays_the_refill() {
    let mut rt = runtime();
    open(&mut rt, "bob", 10_000);
    let mut prices = vec![];
    for i in 1..=7 {
        let id = format!("sms-{i}");
        let d = rt.admit(&request(&id, "bob", "sms-bundle", 1, None)).unwrap();
        prices.push(granted(&d).price.minor_units);
        terminate(&mut rt, &id, "bob", 1);
    }
    assert_eq!(prices, vec![0, 0, 0, 500, 0, 0, 500]);
    assert_eq!(rt.account("bob").unwrap().unwrap().balance, 10_000 - 1_000);
}

#[test]
fn overlapping_uses_count_at_once_and_released_ones_are_given_back() {
    let mut rt = runtime();
    open(&mut rt, "ben", 10_000);
    // Four uses admitted before any is debited: the 4th is not free (it was, before counters
    // were reserved with the reservation).
    let mut prices = vec![];
    for i in 1..=4 {
        let d = rt.admit(&request(&format!("o-{i}"), "ben", "sms-bundle", 1, None)).unwrap();
        prices.push(granted(&d).price.minor_units);
    }
    assert_eq!(prices, vec![0, 0, 0, 500]);
    // Use 3 is released unused: its free use is given back to the next rating.
    let release = AccountCommand::Release { reservation_id: "o-3".into() };
    assert!(matches!(
        rt.execute(&rt.command("account", "ben", "o-3/release", &release).unwrap()).unwrap(),
        Outcome::Accepted(_)
    ));
    let d = rt.admit(&request("o-5", "ben", "sms-bundle", 1, None)).unwrap();
    assert_eq!(granted(&d).price.minor_units, 500, "uses 1, 2 and 4 are open: this is the 4th use, which pays");
    for id in ["o-1", "o-2", "o-4", "o-5"] {
        terminate(&mut rt, id, "ben", 1);
    }
    // Four uses were used, one after another that is 3 free + one refill, whatever the order.
    let account = rt.account("ben").unwrap().unwrap();
    assert_eq!((account.balance, account.held), (10_000 - 500, 0));
    check_projection(&rt, "ben");
}

#[test]
fn several_units_of_per_use_and_composite_offers_are_priced_exactly() {
    let mut rt = runtime();
    open(&mut rt, "eve", 10_000);
    let d = rt.admit(&request("c-12", "eve", "coffee", 12, None)).unwrap();
    let g = granted(&d);
    assert_eq!((g.grant.granted_units, g.price.minor_units), (12, 12 * 100 - 10), "the 11th of 12 is 10% off");
    let d = rt.admit(&request("v-5", "eve", "vendor", 5, None)).unwrap();
    assert_eq!(granted(&d).price.minor_units, 55, "5 x 10 + 10% markup");
    terminate(&mut rt, "c-12", "eve", 12);
    terminate(&mut rt, "v-5", "eve", 5);
    assert_eq!(rt.account("eve").unwrap().unwrap().balance, 10_000 - 1_190 - 55, "charged what was priced");
}

#[test]
fn threshold_discount_makes_the_eleventh_use_ninety_percent() {
    let mut rt = runtime();
    open(&mut rt, "carol", 10_000);
    let mut prices = vec![];
    for i in 1..=12 {
        let id = format!("coffee-{i}");
        let d = rt.admit(&request(&id, "carol", "coffee", 1, None)).unwrap();
        prices.push(granted(&d).price.minor_units);
        terminate(&mut rt, &id, "carol", 1);
    }
    assert_eq!(prices[..10], [100; 10]);
    assert_eq!(prices[10], 90);
    assert_eq!(prices[11], 100, "the counter resets after the discount");
}

#[test]
fn composite_offer_adds_its_markup_to_the_childs_price() {
    let mut rt = runtime();
    open(&mut rt, "dave", 1_000);
    let d = rt.admit(&request("v1", "dave", "vendor", 10, None)).unwrap();
    let g = granted(&d);
    assert_eq!(g.price.minor_units, 110, "10 x 10 cents + 10%");
    assert!(g.lines.iter().any(|l| l.offer == "provider" && l.amount.minor_units == 100), "{:?}", g.lines);
}

#[test]
fn geo_fence_denies_outside_its_countries_and_reserves_nothing() {
    let mut rt = runtime();
    open(&mut rt, "erin", 1_000);
    let (code, message) = denied(&rt.admit(&request("g1", "erin", "roaming", 1, Some("FR"))).unwrap());
    assert_eq!(code, ResultCode::EndUserServiceRejected, "{message}");
    let account = rt.account("erin").unwrap().unwrap();
    assert!(account.reservations.is_empty() && account.held == 0);
    granted(&rt.admit(&request("g2", "erin", "roaming", 1, Some("AT"))).unwrap());
}

#[test]
fn unknown_offer_is_rating_failed() {
    let mut rt = runtime();
    open(&mut rt, "fay", 1_000);
    let (code, _) = denied(&rt.admit(&request("u1", "fay", "no-such-offer", 1, None)).unwrap());
    assert_eq!(code, ResultCode::RatingFailed);
}

#[test]
fn the_same_request_id_reserves_once_and_answers_the_same() {
    let mut rt = runtime();
    open(&mut rt, "gil", 1_000);
    let first = rt.admit(&request("dup", "gil", "voice", 10, None)).unwrap();
    let second = rt.admit(&request("dup", "gil", "voice", 10, None)).unwrap();
    assert_eq!(granted(&first).grant.reservation_id, granted(&second).grant.reservation_id);
    assert_eq!(granted(&first).grant.held.minor_units, granted(&second).grant.held.minor_units);
    let account = rt.account("gil").unwrap().unwrap();
    assert_eq!((account.reservations.len(), account.held), (1, 20));
}

#[test]
fn validity_expiry_releases_the_hold() {
    let mut rt = runtime();
    open(&mut rt, "hal", 1_000);
    granted(&rt.admit(&request("e1", "hal", "voice", 100, None)).unwrap());
    assert_eq!(rt.account("hal").unwrap().unwrap().held, 200);
    assert_eq!(rt.advance_ms(29_999).unwrap(), 0, "not yet due");
    assert_eq!(rt.account("hal").unwrap().unwrap().held, 200);
    assert!(rt.advance_ms(1).unwrap() >= 1, "the expiry timer fired");
    let account = rt.account("hal").unwrap().unwrap();
    assert_eq!((account.held, account.balance), (0, 1_000));
    assert!(rt.events().unwrap().iter().any(|e| e.event_type == "expired"));
    assert!(rt.timers().is_empty(), "no timer left behind");
}

#[test]
fn a_session_debits_updates_re_reserves_and_terminates() {
    let mut rt = runtime();
    open(&mut rt, "ivy", 1_000);
    rt.report(
        SESSION,
        "call",
        "call",
        "call/started",
        &SessionEvent::Started { account: "ivy".into(), offer: "voice".into(), currency: "EUR".into() },
    )
    .unwrap();
    granted(&rt.admit(&request("call", "ivy", "voice", 60, None)).unwrap());
    let update = SessionEvent::UsageReported {
        account: "ivy".into(),
        reservation_id: "call".into(),
        used_units: 60,
        requested_units: 30,
        currency: None,
    };
    rt.report(SESSION, "call", "call", "call/update-1", &update).unwrap();
    let account = rt.account("ivy").unwrap().unwrap();
    assert_eq!(account.balance, 1_000 - 120, "the update debited 60 units");
    assert_eq!(account.held, 60, "and re-reserved 30 units");
    let open_reservation = account.reservations.keys().next().unwrap().clone();
    terminate_reservation(&mut rt, "call", "ivy", &open_reservation, 10);
    let account = rt.account("ivy").unwrap().unwrap();
    assert_eq!((account.balance, account.held), (1_000 - 140, 0), "final usage debited, the rest released");
    assert!(rt.timers().is_empty());
}

fn terminate_reservation(rt: &mut Runtime, session: &str, account: &str, reservation: &str, used: u64) {
    let report =
        SessionEvent::Terminated { account: account.into(), reservation_id: reservation.into(), used_units: used };
    rt.report(SESSION, session, session, &format!("{session}/terminated"), &report).unwrap();
}

#[test]
fn the_projector_matches_the_aggregate_after_every_event() {
    let mut rt = runtime();
    open(&mut rt, "jay", 500);
    check_projection(&rt, "jay");
    granted(&rt.admit(&request("p1", "jay", "voice", 100, None)).unwrap());
    check_projection(&rt, "jay");
    terminate(&mut rt, "p1", "jay", 40);
    check_projection(&rt, "jay");
    granted(&rt.admit(&request("p2", "jay", "voice", 500, None)).unwrap());
    check_projection(&rt, "jay");
    rt.advance_ms(60_000).unwrap();
    check_projection(&rt, "jay");
    let c = rt
        .command(
            "account",
            "jay",
            "dd",
            &AccountCommand::DirectDebit { amount: Money::new(7, "EUR"), description: "sms".into() },
        )
        .unwrap();
    rt.execute(&c).unwrap();
    check_projection(&rt, "jay");
    let events = rt.events().unwrap().iter().filter(|e| e.stream == "account" && e.key == "jay").count();
    assert_eq!(balance_view(&rt, "jay").ledger.len(), events, "one ledger line per account event");
}

pub fn check_projection(rt: &Runtime, account: &str) {
    let view = balance_view(rt, account);
    view.check().unwrap();
    let state = rt.account(account).unwrap().unwrap();
    assert_eq!((view.balance, view.held, view.available), (state.balance, state.held, state.available()));
    assert_eq!(view.ledger.last().unwrap().effective_balance, state.available());
}

#[test]
fn account_events_decode_with_the_shared_model() {
    let mut rt = runtime();
    open(&mut rt, "kim", 10);
    for e in rt.events().unwrap() {
        tollgate_codec::decode::<AccountEvent>(&e.event_type, &e.payload).unwrap();
    }
}
