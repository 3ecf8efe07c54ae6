//! Money properties on the compiled components (a release build, where Rust does not check
//! overflow): the account core shared with the native test, and admissions through the
//! policy and the rater over every offer kind, with the balance projection checked too.

#[path = "../../../actors/prepaid-account/tests/money/core.rs"]
mod core;

use crate::edge::{check_projection, open, request, runtime};
use core::Ledger;
use proptest::prelude::*;
use tollgate_billing_model::account::{Account, AccountCommand, AccountEvent, MAX_MONEY, Money};
use tollgate_host::aggregate::Outcome;
use tollgate_runtime::{AdmissionRequest, Decision, ResultCode, Runtime};

/// The account component, through the runtime (projector and process manager included).
struct Component(Runtime);

impl Ledger for Component {
    fn execute(&mut self, id: &str, command: &AccountCommand, now: u64) -> Result<Vec<AccountEvent>, String> {
        self.0.clock().set_ms(now);
        let c = self.0.command("account", "acct", id, command).unwrap();
        match self.0.execute(&c).expect("no trap, no host failure") {
            Outcome::Rejected(r) => Err(r.code),
            Outcome::Accepted(events) => Ok(events
                .iter()
                .map(|e| tollgate_codec::decode::<AccountEvent>(&e.event_type, &e.payload).unwrap())
                .collect()),
        }
    }

    fn state(&mut self) -> Account {
        self.0.account("acct").unwrap().unwrap_or_default()
    }
}

/// Offers of `examples/edge.toml`, one of each kind: per-unit, bundle, threshold, composite,
/// geo-fenced.
const OFFERS: [&str; 5] = ["voice", "sms-bundle", "coffee", "vendor", "roaming"];

#[derive(Debug, Clone)]
enum Step {
    TopUp(i64),
    Admit { offer: usize, units: u64, country: Option<&'static str> },
    Repeat { pick: usize },
    Debit { pick: usize, used_percent: u64 },
    Release { pick: usize },
    Advance(u64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        2 => prop_oneof![1i64..5_000, Just(MAX_MONEY)].prop_map(Step::TopUp),
        5 => (0..OFFERS.len(), prop_oneof![1u64..30, Just(0u64), Just(u64::MAX), Just(i64::MAX as u64)], prop_oneof![Just(Some("DE")), Just(Some("FR")), Just(None)])
            .prop_map(|(offer, units, country)| Step::Admit { offer, units, country }),
        1 => any::<usize>().prop_map(|pick| Step::Repeat { pick }),
        3 => (any::<usize>(), 0u64..=100).prop_map(|(pick, used_percent)| Step::Debit { pick, used_percent }),
        1 => any::<usize>().prop_map(|pick| Step::Release { pick }),
        1 => (1u64..40_000).prop_map(Step::Advance),
    ]
}

fn sum_of(rt: &Runtime, event_type: &str, field: &str) -> i64 {
    rt.events()
        .unwrap()
        .iter()
        .filter(|e| e.stream == "account" && e.event_type == event_type)
        .map(|e| serde_json::from_slice::<serde_json::Value>(&e.payload).unwrap()[field].as_i64().unwrap())
        .sum()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// 64 generated runs of up to 40 account commands on the compiled account.
    #[test]
    fn money_stays_right_on_the_component((overdraft_limit, ops) in core::run()) {
        let mut ledger = Component(runtime());
        core::check_run(&mut ledger, overdraft_limit, &ops);
        if ledger.0.account("acct").unwrap().is_some() {
            check_projection(&ledger.0, "acct");
        }
    }

    /// 64 generated runs of up to 30 admissions, repeats, debits and releases through the
    /// policy and the rater: a grant's price is the sum of its lines; a debit of all granted
    /// units right after the grant charges its price; a repeated request id answers the
    /// original decision; and the account's invariants hold after every step.
    #[test]
    fn admissions_price_hold_and_repeat_exactly(steps in prop::collection::vec(step(), 1..30)) {
        let mut rt = runtime();
        open(&mut rt, "acct", 0);
        let mut topped_up = 0i64;
        let mut granted: Vec<(AdmissionRequest, String)> = Vec::new();
        for (i, step) in steps.into_iter().enumerate() {
            let id = format!("step-{i}");
            match step {
                Step::TopUp(amount) => {
                    let c = rt.command("account", "acct", &id, &AccountCommand::TopUp { amount: Money::new(amount, "EUR") }).unwrap();
                    if let Outcome::Accepted(_) = rt.execute(&c).unwrap() {
                        topped_up += amount;
                    }
                }
                Step::Admit { offer, units, country } => {
                    let before = rt.account("acct").unwrap().unwrap();
                    let admission = request(&id, "acct", OFFERS[offer], units, country);
                    let decision = rt.admit(&admission).unwrap();
                    match &decision {
                        Decision::Granted(g) => {
                            prop_assert!(g.grant.granted_units >= 1 && g.grant.granted_units <= units);
                            let lines: i128 = g.lines.iter().map(|l| i128::from(l.amount.minor_units)).sum();
                            prop_assert_eq!(lines, i128::from(g.price.minor_units), "price = sum of lines");
                            prop_assert!(g.grant.held.minor_units >= g.price.minor_units, "hold below price");
                            // Nothing else settles before it when it is the only open
                            // reservation: a debit of all its units charges its price.
                            if before.reservations.is_empty() {
                                let debit = AccountCommand::Debit { reservation_id: id.clone(), used_units: g.grant.granted_units };
                                let c = rt.command("account", "acct", &format!("{id}/all"), &debit).unwrap();
                                match rt.execute(&c).unwrap() {
                                    Outcome::Accepted(events) => {
                                        let event = tollgate_codec::decode::<AccountEvent>(&events[0].event_type, &events[0].payload).unwrap();
                                        let AccountEvent::Debited { charged, .. } = event else { panic!("{event:?}") };
                                        prop_assert_eq!(charged, g.price.minor_units, "a debit of all granted units charges the price");
                                    }
                                    Outcome::Rejected(r) => panic!("{}: {}", r.code, r.message),
                                }
                            }
                        }
                        Decision::Denied(d) => {
                            prop_assert_eq!(rt.account("acct").unwrap().unwrap(), before, "a denial changes nothing");
                            if units == 0 {
                                prop_assert_eq!(d.code, ResultCode::EndUserServiceDenied);
                            }
                        }
                    }
                    if matches!(decision, Decision::Granted(_)) {
                        granted.push((admission, format!("{decision:?}")));
                    }
                }
                Step::Repeat { pick } => {
                    if granted.is_empty() {
                        continue;
                    }
                    let (admission, first) = &granted[pick % granted.len()];
                    let again = rt.admit(admission).unwrap();
                    prop_assert_eq!(&format!("{again:?}"), first, "a repeat answers the original decision");
                }
                Step::Debit { pick, used_percent } => {
                    let open: Vec<_> = rt.account("acct").unwrap().unwrap().reservations.into_iter().collect();
                    if !open.is_empty() {
                        let (rid, r) = &open[pick % open.len()];
                        let used = (u128::from(r.granted_units) * u128::from(used_percent) / 100) as u64;
                        let c = rt.command("account", "acct", &id, &AccountCommand::Debit { reservation_id: rid.clone(), used_units: used }).unwrap();
                        prop_assert!(matches!(rt.execute(&c).unwrap(), Outcome::Accepted(_)));
                    }
                }
                Step::Release { pick } => {
                    let open: Vec<_> = rt.account("acct").unwrap().unwrap().reservations.into_keys().collect();
                    if !open.is_empty() {
                        let rid = open[pick % open.len()].clone();
                        let c = rt.command("account", "acct", &id, &AccountCommand::Release { reservation_id: rid }).unwrap();
                        prop_assert!(matches!(rt.execute(&c).unwrap(), Outcome::Accepted(_)));
                    }
                }
                Step::Advance(ms) => {
                    rt.advance_ms(ms).unwrap();
                }
            }
            let account = rt.account("acct").unwrap().unwrap();
            prop_assert!(account.available() >= 0, "available {} below -overdraft", account.available());
            let charged = sum_of(&rt, "debited", "charged") + sum_of(&rt, "direct-debited", "amount");
            prop_assert_eq!(topped_up, account.balance + charged, "money conserved");
            let holds: i64 = account.reservations.values().map(|r| r.held).sum();
            prop_assert_eq!(account.held, holds, "held = sum of open reservations");
            check_projection(&rt, "acct");
        }
    }
}
