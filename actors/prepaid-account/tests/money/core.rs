//! The money property core: random interleavings of top-ups, refunds, direct debits, reservations,
//! debits, settlements (within, beyond and after a grant), releases and expiries, with several reservations open at once, over every price
//! plan kind, with amounts, limits, prices and unit counts drawn from the whole range
//! (0, 1, the bounds, near `i64::MAX` / `u64::MAX`).
//!
//! It runs against a [`Ledger`]: natively on the actor's logic (`tests/money.rs`), and on the
//! compiled component through the runtime (`runtime/tests/all/properties.rs`), where Rust's
//! release build does not check overflow.
//!
//! Invariants checked after every step: no panic and no trap; a refused command leaves the
//! state untouched; money is conserved (balance = top-ups + refunds - charges - direct debits);
//! `available = balance - held + overdraft_limit >= 0`; held = the sum of the open
//! reservations' holds, and they are exactly the reservations granted and not yet closed;
//! every amount stays within [`MAX_MONEY`]-derived bounds; a grant's price is the plan's price
//! of the granted units from the counters of the moment (settled plus reserved), its hold the
//! plan's worst case (>= the price) and no more units could have been covered; and each debit
//! charges what the same debits one after another would (the interleaving-independence rule);
//! a settlement charges the grant's units from its hold and the rest (beyond the grant, or of a
//! lapsed reservation) from the money available, exactly the sequential price, recording the
//! part available money did not cover as unpaid, and the account remembers at most
//! `LAPSED_KEPT` lapsed reservations.

use proptest::prelude::*;
use tollgate_billing_model::account::{
    self, Account, AccountCommand, AccountEvent, Counters, LAPSED_KEPT, LATE_USAGE_WINDOW_MS, MAX_MONEY, Money,
};
use tollgate_billing_model::pricing::{self, PriceTerm};

/// An account under test, named `acct`, in EUR.
pub trait Ledger {
    /// Runs `command` with id `id` at time `now`: the events, or the rejection's code.
    fn execute(&mut self, id: &str, command: &AccountCommand, now: u64) -> Result<Vec<AccountEvent>, String>;
    /// The account's state now.
    fn state(&mut self) -> Account;
}

/// One step of a run.
#[derive(Debug, Clone)]
pub enum Op {
    /// A top-up.
    TopUp(i64),
    /// A one-shot charge.
    DirectDebit(i64),
    /// Money given back.
    Refund(i64),
    /// A reservation of `units` under plan number `plan` of [`plans`].
    Reserve {
        /// Index into [`plans`].
        plan: usize,
        /// Units asked for.
        units: u64,
    },
    /// A debit of an open reservation (`pick` modulo the open ones); `used` is taken modulo
    /// the granted units + 1, or is the raw value when `raw` (to exceed the grant).
    Debit {
        /// Which open reservation.
        pick: usize,
        /// Units used.
        used: u64,
        /// Whether `used` is sent as drawn.
        raw: bool,
    },
    /// A release of an open reservation.
    Release {
        /// Which open reservation.
        pick: usize,
    },
    /// A settlement of usage under an open or an expired reservation (`pick` modulo all of
    /// them); `used` as drawn, so within, beyond, far beyond the grant.
    Settle {
        /// Which reservation.
        pick: usize,
        /// Units used.
        used: u64,
    },
    /// An expiry of an open reservation (refused before its validity ends).
    Expire {
        /// Which open reservation.
        pick: usize,
    },
    /// The clock moves on.
    Advance(u64),
}

fn per_unit(offer: &str, unit_price: i64) -> PriceTerm {
    PriceTerm::PerUnit { offer: offer.into(), unit_price }
}

fn bundle(offer: &str, size: u64, refill_price: i64) -> PriceTerm {
    PriceTerm::Bundle { offer: offer.into(), size, refill_price }
}

fn threshold(offer: &str, unit_price: i64, every: u64, discount: i64) -> PriceTerm {
    PriceTerm::Threshold { offer: offer.into(), unit_price, every, discount }
}

fn composite(offer: &str, markup_percent: u32, children: u32) -> PriceTerm {
    PriceTerm::Composite { offer: offer.into(), markup_percent, children }
}

/// Plans of every kind, prices from 0 to `i64::MAX`. Offers share counters between plans
/// (`sms` is a bundle in two plans), as they do when one offer is reserved again.
pub fn plans() -> Vec<Vec<PriceTerm>> {
    vec![
        vec![per_unit("voice", 2)],
        vec![per_unit("free", 0)],
        vec![per_unit("dear", MAX_MONEY)],
        vec![per_unit("huge", i64::MAX)],
        vec![bundle("sms", 3, 500)],
        vec![bundle("one", 1, 1)],
        vec![bundle("wide", u64::MAX, i64::MAX)],
        vec![threshold("coffee", 105, 11, 10)],
        vec![threshold("every", i64::MAX, 1, i64::MAX)],
        vec![composite("vendor", 10, 1), per_unit("provider", 3)],
        vec![composite("combo", 15, 2), bundle("sms", 3, 500), threshold("tea", 99, 4, 25)],
        vec![composite("nested", u32::MAX, 1), composite("inner", 50, 1), per_unit("base", 7)],
    ]
}

/// Money drawn from the whole `i64` range, boundaries included.
pub fn amount() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(0),
        Just(1),
        Just(-1),
        1i64..2_000,
        Just(MAX_MONEY - 1),
        Just(MAX_MONEY),
        Just(MAX_MONEY + 1),
        Just(i64::MAX - 1),
        Just(i64::MAX),
        Just(i64::MIN),
        any::<i64>(),
    ]
}

/// Unit counts drawn from the whole `u64` range, boundaries included.
pub fn units() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1),
        Just(2),
        1u64..40,
        Just(i64::MAX as u64),
        Just(u64::MAX - 1),
        Just(u64::MAX),
        any::<u64>(),
    ]
}

/// One step.
pub fn op() -> impl Strategy<Value = Op> {
    let plans = plans().len();
    prop_oneof![
        3 => amount().prop_map(Op::TopUp),
        1 => amount().prop_map(Op::DirectDebit),
        1 => amount().prop_map(Op::Refund),
        4 => (0..plans, units()).prop_map(|(plan, units)| Op::Reserve { plan, units }),
        3 => (any::<usize>(), units(), prop::bool::weighted(0.1)).prop_map(|(pick, used, raw)| Op::Debit { pick, used, raw }),
        3 => (any::<usize>(), prop_oneof![3 => 0u64..80, 1 => units()]).prop_map(|(pick, used)| Op::Settle { pick, used }),
        1 => any::<usize>().prop_map(|pick| Op::Release { pick }),
        2 => any::<usize>().prop_map(|pick| Op::Expire { pick }),
        2 => prop_oneof![1u64..100_000, Just(30_000), Just(LATE_USAGE_WINDOW_MS), Just(u64::MAX / 4)].prop_map(Op::Advance),
    ]
}

/// A run: the overdraft limit, then the steps.
pub fn run() -> impl Strategy<Value = (i64, Vec<Op>)> {
    (prop_oneof![Just(0i64), amount()], prop::collection::vec(op(), 1..40))
}

/// What the same debits one after another would have done: the reference the account is
/// checked against.
#[derive(Default)]
struct Reference {
    topped_up: i128,
    refunded: i128,
    charged: i128,
    direct: i128,
    /// Usage charged beyond what holds covered.
    usage_charged: i128,
    /// Counters as settled by the debits so far, in order.
    counters: Counters,
    /// Open reservations: id -> (plan, granted units, held).
    open: std::collections::BTreeMap<String, (Vec<PriceTerm>, u64, i64)>,
    /// Reservations expired and not settled since: id -> (plan, when they lapsed).
    expired: std::collections::BTreeMap<String, (Vec<PriceTerm>, u64)>,
}

/// Runs `ops` on `ledger` (a fresh account opened with `overdraft_limit`), checking the
/// invariants after every step. Panics, with the step, when one breaks.
pub fn check_run(ledger: &mut impl Ledger, overdraft_limit: i64, ops: &[Op]) {
    let mut now = 1_000u64;
    let open = AccountCommand::Open { currency: "EUR".into(), overdraft_limit };
    let opened = ledger.execute("open", &open, now);
    if !(0..=MAX_MONEY).contains(&overdraft_limit) {
        let code = opened.expect_err("an out-of-range limit is refused");
        assert!(code == "limit-out-of-range" || code == "negative-amount", "{code}");
        assert!(!ledger.state().open, "a refused open changes nothing");
        return;
    }
    opened.expect("a limit within range is accepted");
    let plans = plans();
    let mut reference = Reference::default();
    for (step, op) in ops.iter().enumerate() {
        let id = format!("op-{step}");
        let before = ledger.state();
        let open_ids: Vec<String> = before.reservations.keys().cloned().collect();
        let pick = |i: usize| (!open_ids.is_empty()).then(|| open_ids[i % open_ids.len()].clone());
        let any_ids: Vec<String> = open_ids.iter().chain(reference.expired.keys()).cloned().collect();
        let command = match op {
            Op::TopUp(amount) => AccountCommand::TopUp { amount: Money::new(*amount, "EUR") },
            Op::Refund(amount) => AccountCommand::Refund { amount: Money::new(*amount, "EUR"), reason: "test".into() },
            Op::DirectDebit(amount) => {
                AccountCommand::DirectDebit { amount: Money::new(*amount, "EUR"), description: String::new() }
            }
            Op::Reserve { plan, units } => AccountCommand::Reserve {
                reservation_id: id.clone(),
                units: *units,
                plan: plans[*plan].clone(),
                currency: "EUR".into(),
                validity_ms: 30_000,
                offer: plans[*plan][0].offer().into(),
            },
            Op::Debit { pick: i, used, raw } => {
                let Some(reservation_id) = pick(*i) else { continue };
                let granted = before.reservations[&reservation_id].granted_units;
                let used = if *raw { *used } else { used % granted.saturating_add(1).max(1) };
                AccountCommand::Debit { reservation_id, used_units: used }
            }
            Op::Release { pick: i } => {
                let Some(reservation_id) = pick(*i) else { continue };
                AccountCommand::Release { reservation_id }
            }
            Op::Settle { pick: i, used } => {
                if any_ids.is_empty() {
                    continue;
                }
                AccountCommand::Settle { reservation_id: any_ids[i % any_ids.len()].clone(), used_units: *used }
            }
            Op::Expire { pick: i } => {
                let Some(reservation_id) = pick(*i) else { continue };
                AccountCommand::Expire { reservation_id }
            }
            Op::Advance(ms) => {
                now = now.saturating_add(*ms);
                continue;
            }
        };
        let context = format!("step {step}: {op:?} -> {command:?}");
        match ledger.execute(&id, &command, now) {
            Err(code) => {
                assert_eq!(ledger.state(), before, "{context}: refused ({code}) but the state changed");
                expect_refusal(&before, &reference, &command, &code, now, &context);
            }
            Ok(events) if matches!(command, AccountCommand::Settle { .. }) => {
                settled(&mut reference, &before, &command, &events, &context);
            }
            Ok(events) => {
                assert_eq!(events.len(), 1, "{context}: one event per command");
                follow(&mut reference, &before, &command, &events[0], now, &context);
            }
        }
        let after = ledger.state();
        check_state(&after, &reference, &context);
    }
}

/// A refusal must be one the command deserved.
fn expect_refusal(
    before: &Account,
    reference: &Reference,
    command: &AccountCommand,
    code: &str,
    now: u64,
    context: &str,
) {
    let allowed: &[&str] = match command {
        AccountCommand::TopUp { .. } | AccountCommand::Refund { .. } => {
            &["zero-amount", "negative-amount", "amount-overflow"]
        }
        AccountCommand::DirectDebit { .. } => {
            &["zero-amount", "negative-amount", "amount-overflow", "insufficient-funds"]
        }
        AccountCommand::Reserve { units, .. } => {
            if *units == 0 {
                &["zero-amount"]
            } else {
                &["insufficient-funds", "amount-overflow"]
            }
        }
        AccountCommand::Debit { reservation_id, used_units } => {
            assert!(
                *used_units > before.reservations[reservation_id].granted_units,
                "{context}: debit refused ({code})"
            );
            &["exceeds-grant"]
        }
        AccountCommand::Expire { .. } => &["not-expired"],
        AccountCommand::Settle { reservation_id, used_units } => {
            if let Some((plan, ..)) = reference.open.get(reservation_id) {
                let read = |o: &str, n: &str| reference.counters.get(o).and_then(|c| c.get(n)).copied();
                let price = pricing::price(plan, &read, *used_units, &mut |_, _| {});
                assert!(price.is_err(), "{context}: a settlement that could be priced was refused ({code})");
                &["amount-overflow"]
            } else if let Some(lapsed) = before.lapsed.get(reservation_id) {
                if now > lapsed.expires_at.saturating_add(LATE_USAGE_WINDOW_MS) {
                    &["late-usage-window-passed"]
                } else {
                    &["amount-overflow"]
                }
            } else {
                // Expired, but forgotten: past the window of a later lapse, or past the count.
                &["unknown-reservation"]
            }
        }
        _ => &[],
    };
    assert!(allowed.contains(&code), "{context}: unexpected refusal `{code}`");
}

/// Checks a settlement's events against the reference, and moves the reference on: the grant's
/// units from its hold at the sequential price, the rest from what was available, the price
/// split exactly into charged and unpaid.
fn settled(
    reference: &mut Reference,
    before: &Account,
    command: &AccountCommand,
    events: &[AccountEvent],
    context: &str,
) {
    let AccountCommand::Settle { reservation_id, used_units } = command else { unreachable!() };
    let read = |o: &str, n: &str| reference.counters.get(o).and_then(|c| c.get(n)).copied();
    let (plan, excess, available) = match reference.open.remove(reservation_id) {
        Some((plan, granted, held)) => {
            let within = (*used_units).min(granted);
            let debited = events.last().expect("a settlement records events");
            let AccountEvent::Debited { used_units: used, charged, released, .. } = debited else {
                panic!("{context}: an open reservation's settlement ends with its debit: {events:?}")
            };
            assert_eq!(*used, within, "{context}: the grant's own units are debited");
            let expected = pricing::price(&plan, &read, within, &mut |_, _| {}).unwrap();
            assert_eq!((*charged, charged + released), (expected, held), "{context}: the debit of the grant");
            reference.charged += i128::from(*charged);
            let total = pricing::price(&plan, &read, *used_units, &mut |_, _| {}).unwrap();
            let excess = total - expected;
            assert_eq!(events.len(), if *used_units > granted { 2 } else { 1 }, "{context}: {events:?}");
            (plan, (*used_units > granted).then(|| (*used_units - granted, excess)), before.available() + released)
        }
        None => {
            let (plan, _) = reference.expired.remove(reservation_id).expect("settled an open or expired reservation");
            assert!(before.lapsed.contains_key(reservation_id), "{context}: a forgotten reservation was charged");
            assert_eq!(events.len(), 1, "{context}: {events:?}");
            let price = pricing::price(&plan, &read, *used_units, &mut |_, _| {}).unwrap();
            (plan, Some((*used_units, price)), before.available())
        }
    };
    if let Some((units, price)) = excess {
        let AccountEvent::UsageCharged { reservation_id: id, units: u, charged, unpaid } = &events[0] else {
            panic!("{context}: usage no hold covered is `usage-charged`: {events:?}")
        };
        assert_eq!((id, *u), (reservation_id, units), "{context}");
        assert_eq!(*charged, price.min(available.max(0)), "{context}: takes what is available, no more");
        assert_eq!(
            i128::from(*charged) + i128::from(*unpaid),
            i128::from(price),
            "{context}: charged + unpaid = price"
        );
        assert!(*unpaid >= 0, "{context}");
        reference.usage_charged += i128::from(*charged);
    }
    account::advance(&mut reference.counters, &plan, *used_units);
}

/// Checks an accepted command's event against the reference, and moves the reference on.
fn follow(
    reference: &mut Reference,
    before: &Account,
    command: &AccountCommand,
    event: &AccountEvent,
    now: u64,
    context: &str,
) {
    match (command, event) {
        (AccountCommand::TopUp { amount }, AccountEvent::ToppedUp { amount: added }) => {
            assert_eq!(amount.minor_units, *added, "{context}");
            reference.topped_up += i128::from(*added);
        }
        (AccountCommand::Refund { amount, reason }, AccountEvent::Refunded { amount: given, reason: why }) => {
            assert_eq!((amount.minor_units, reason), (*given, why), "{context}");
            reference.refunded += i128::from(*given);
        }
        (AccountCommand::DirectDebit { amount, .. }, AccountEvent::DirectDebited { amount: taken, .. }) => {
            assert_eq!(amount.minor_units, *taken, "{context}");
            assert!(*taken <= before.available(), "{context}: a direct debit beyond available");
            reference.direct += i128::from(*taken);
        }
        (
            AccountCommand::Reserve { reservation_id, units, plan, .. },
            AccountEvent::Reserved { granted_units, price, held, plan: kept, counters, .. },
        ) => {
            assert_eq!(kept, plan, "{context}: the plan is kept");
            assert!(*granted_units >= 1 && granted_units <= units, "{context}");
            let worst = pricing::worst_price(plan, *granted_units).expect("a granted hold is representable");
            assert_eq!(*held, worst, "{context}: the hold is the worst case of the granted units");
            assert!(*held <= before.available(), "{context}: held beyond available");
            if granted_units < units {
                let more = pricing::worst_price(plan, granted_units + 1);
                assert!(more.is_err() || more.unwrap() > before.available(), "{context}: one more unit was covered");
            }
            // The price is the plan's, from the counters settled plus reserved at the time.
            let reserved = before.reserved_counters();
            let read = |o: &str, n: &str| reserved.get(o).and_then(|c| c.get(n)).copied();
            let expected = pricing::price(plan, &read, *granted_units, &mut |_, _| {}).unwrap();
            assert_eq!(*price, expected, "{context}: the grant's price");
            assert!(*price <= *held, "{context}: the hold is below the price");
            let named: Vec<_> =
                account::list(&reserved).into_iter().filter(|c| plan.iter().any(|t| t.offer() == c.offer)).collect();
            assert_eq!(*counters, named, "{context}: the counters the price was rated from");
            reference.open.insert(reservation_id.clone(), (plan.clone(), *granted_units, *held));
        }
        (
            AccountCommand::Debit { reservation_id, used_units },
            AccountEvent::Debited { used_units: used, charged, released, .. },
        ) => {
            assert_eq!(used, used_units, "{context}");
            let (plan, _, held) = reference.open.remove(reservation_id).expect("debited an open reservation");
            // The same debits one after another: this one priced from the counters as the
            // debits before it settled them.
            let read = |o: &str, n: &str| reference.counters.get(o).and_then(|c| c.get(n)).copied();
            let expected = pricing::price(&plan, &read, *used, &mut |_, _| {}).unwrap();
            assert_eq!(*charged, expected, "{context}: charged differs from the sequential price");
            assert_eq!(charged + released, held, "{context}: charged + released = held");
            assert!(*released >= 0, "{context}");
            account::advance(&mut reference.counters, &plan, *used);
            reference.charged += i128::from(*charged);
        }
        (AccountCommand::Release { reservation_id }, AccountEvent::Released { released, .. }) => {
            let (_, _, held) = reference.open.remove(reservation_id).expect("closed an open reservation");
            assert_eq!(*released, held, "{context}");
        }
        (AccountCommand::Expire { reservation_id }, AccountEvent::Expired { released, .. }) => {
            let (plan, _, held) = reference.open.remove(reservation_id).expect("closed an open reservation");
            assert_eq!(*released, held, "{context}");
            assert!(before.reservations[reservation_id].expires_at <= now, "{context}: expired before its validity");
            reference.expired.insert(reservation_id.clone(), (plan, before.reservations[reservation_id].expires_at));
        }
        _ => panic!("{context}: unexpected event {event:?}"),
    }
}

fn check_state(account: &Account, reference: &Reference, context: &str) {
    let balance =
        reference.topped_up + reference.refunded - reference.charged - reference.direct - reference.usage_charged;
    assert_eq!(i128::from(account.balance), balance, "{context}: money conserved");
    assert!(account.balance <= MAX_MONEY && account.balance >= -MAX_MONEY, "{context}: balance out of bounds");
    let held: i128 = account.reservations.values().map(|r| i128::from(r.held)).sum();
    assert_eq!(i128::from(account.held), held, "{context}: held = sum of open reservations");
    let available = i128::from(account.balance) - held + i128::from(account.overdraft_limit);
    assert!(available >= 0, "{context}: available {available} below -overdraft");
    assert_eq!(i128::from(account.available()), available, "{context}: available() is exact");
    let open: Vec<&String> = account.reservations.keys().collect();
    let expected: Vec<&String> = reference.open.keys().collect();
    assert_eq!(open, expected, "{context}: the open reservations");
    assert_eq!(account.counters, reference.counters, "{context}: settled counters");
    assert!(account.lapsed.len() <= LAPSED_KEPT, "{context}: {} lapsed reservations kept", account.lapsed.len());
    for id in account.lapsed.keys() {
        assert!(
            reference.expired.contains_key(id),
            "{context}: `{id}` is kept as lapsed but was not expired or was settled"
        );
    }
}
