//! Random sequences of top-ups, admissions, debits, releases and expiries through the runtime
//! and the compiled actors; the invariants are checked after every step.

use crate::edge::{balance_view, check_projection, open, request, runtime};
use proptest::prelude::*;
use tollgate_billing_model::account::{AccountCommand, Money};
use tollgate_host::aggregate::Outcome;
use tollgate_runtime::{Decision, Runtime};

#[derive(Debug, Clone)]
enum Op {
    TopUp(i64),
    Admit { offer: &'static str, units: u64 },
    Debit { pick: usize, used_percent: u64 },
    Release { pick: usize },
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (1i64..400).prop_map(Op::TopUp),
        (1u64..80).prop_map(|units| Op::Admit { offer: "voice", units }),
        Just(Op::Admit { offer: "coffee", units: 1 }),
        Just(Op::Admit { offer: "sms-bundle", units: 1 }),
        (any::<usize>(), 0u64..=100).prop_map(|(pick, used_percent)| Op::Debit { pick, used_percent }),
        any::<usize>().prop_map(|pick| Op::Release { pick }),
        (1u64..40_000).prop_map(Op::Advance),
    ]
}

fn sum_of(rt: &Runtime, event_type: &str, field: &str) -> i64 {
    rt.events()
        .iter()
        .filter(|e| e.stream == "account" && e.event_type == event_type)
        .map(|e| serde_json::from_slice::<serde_json::Value>(&e.payload).unwrap()[field].as_i64().unwrap())
        .sum()
}

fn check(rt: &Runtime, topped_up: i64) {
    let account = rt.account("acct").unwrap();
    assert!(account.available() >= 0, "available {} below -overdraft", account.available());
    let debited = sum_of(rt, "debited", "charged") + sum_of(rt, "direct-debited", "amount");
    assert_eq!(sum_of(rt, "topped-up", "amount"), topped_up, "every accepted top-up is an event");
    assert_eq!(topped_up, account.balance + debited, "money conserved: top-ups = balance + debits");
    let holds: i64 = account.reservations.values().map(|r| r.held).sum();
    assert_eq!(account.held, holds, "held = sum of open reservations");
    check_projection(rt, "acct");
    assert_eq!(balance_view(rt, "acct").holds.len(), account.reservations.len());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold_after_every_step(ops in prop::collection::vec(op(), 1..30)) {
        let mut rt = runtime();
        open(&mut rt, "acct", 0);
        let mut topped_up = 0;
        for (i, op) in ops.into_iter().enumerate() {
            let id = format!("op-{i}");
            match op {
                Op::TopUp(amount) => {
                    let c = rt.command("account", "acct", &id, &AccountCommand::TopUp { amount: Money::new(amount, "EUR") });
                    if let Outcome::Accepted(_) = rt.execute(&c).unwrap() {
                        topped_up += amount;
                    }
                }
                Op::Admit { offer, units } => {
                    let decision = rt.admit(&request(&id, "acct", offer, units, None)).unwrap();
                    if let Decision::Granted(g) = decision {
                        prop_assert!(g.grant.granted_units <= units);
                    }
                }
                Op::Debit { pick, used_percent } => {
                    let open: Vec<_> = rt.account("acct").unwrap().reservations.into_iter().collect();
                    if !open.is_empty() {
                        let (rid, r) = &open[pick % open.len()];
                        let used = r.granted_units * used_percent / 100;
                        let c = rt.command("account", "acct", &id, &AccountCommand::Debit { reservation_id: rid.clone(), used_units: used });
                        prop_assert!(matches!(rt.execute(&c).unwrap(), Outcome::Accepted(_)));
                    }
                }
                Op::Release { pick } => {
                    let open: Vec<_> = rt.account("acct").unwrap().reservations.into_keys().collect();
                    if !open.is_empty() {
                        let rid = open[pick % open.len()].clone();
                        let c = rt.command("account", "acct", &id, &AccountCommand::Release { reservation_id: rid });
                        prop_assert!(matches!(rt.execute(&c).unwrap(), Outcome::Accepted(_)));
                    }
                }
                Op::Advance(ms) => {
                    rt.advance_ms(ms).unwrap();
                    let now = rt.clock().now_ms();
                    let account = rt.account("acct").unwrap();
                    prop_assert!(account.reservations.values().all(|r| r.expires_at > now), "a lapsed grant is still held");
                }
            }
            check(&rt, topped_up);
        }
    }
}
