//! The prepaid account: commands, events and state.

use crate::pricing::{self, Part, PlanError, PriceTerm};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::BTreeMap;

/// The stream (aggregate type) of accounts.
pub const STREAM: &str = "account";

/// The largest amount an account deals in, in minor units (10^17: 10^15 units of a currency
/// with cents). Balances, overdraft limits, top-ups, refunds and direct debits are bounded by
/// it (a price above it is never covered, so never held or charged), so `balance - held + overdraft_limit` and every other sum the account forms stays far
/// inside `i64` (at most 4 x 10^17 in magnitude) and no money arithmetic can overflow. Larger
/// values are refused with `amount-overflow` (amounts) or `limit-out-of-range` (the limit).
pub const MAX_MONEY: i64 = 100_000_000_000_000_000;

/// How long after its validity a lapsed (expired) reservation's usage may still be charged
/// with [`AccountCommand::Settle`]: one hour. A network function reports usage when a grant's
/// validity ends (3GPP's VALIDITY_TIME trigger), so the report arrives just after the hold was
/// freed; it is charged from the available money, not refused.
pub const LATE_USAGE_WINDOW_MS: u64 = 3_600_000;

/// The most lapsed reservations an account remembers for late usage (the ones that lapsed
/// last), so its state stays bounded however many grants expire.
pub const LAPSED_KEPT: usize = 32;

/// An amount in integer minor units of a currency.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Money {
    /// Minor units (cents for EUR).
    pub minor_units: i64,
    /// ISO 4217 code.
    pub currency: String,
}

impl Money {
    /// Builds an amount.
    pub fn new(minor_units: i64, currency: &str) -> Self {
        Money { minor_units, currency: currency.into() }
    }
}

/// A tariff counter of one offer, kept per account (e.g. bundle uses left).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Counter {
    /// The offer it belongs to.
    pub offer: String,
    /// Its name within the offer.
    pub name: String,
    /// Its value.
    pub value: u64,
}

/// What can be asked of an account. The JSON form is `{"<kebab-case name>": {fields}}`; in
/// an envelope the name is the `command-type` and the fields are the payload.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum AccountCommand {
    /// Opens the account in a currency, optionally allowing an overdraft.
    Open {
        /// ISO 4217 code of the account's money.
        currency: String,
        /// How far below zero `available` may go, in minor units, 0..=[`MAX_MONEY`].
        #[serde(default)]
        overdraft_limit: i64,
    },
    /// Adds money; the balance afterwards is at most [`MAX_MONEY`].
    TopUp {
        /// The amount, > 0, in the account's currency.
        amount: Money,
    },
    /// Holds money for units before they are used: grants the most of `units` whose worst-case
    /// price ([`pricing::worst_price`]) the available money covers, and holds that amount.
    Reserve {
        /// Id of the new reservation; must not be open already.
        reservation_id: String,
        /// Units wanted, > 0.
        units: u64,
        /// How the units are priced (the rater's plan for the offer), at most
        /// [`pricing::MAX_PLAN_TERMS`] terms.
        plan: Vec<PriceTerm>,
        /// ISO 4217 code of the plan's amounts; must be the account's.
        currency: String,
        /// How long the grant is valid, in milliseconds from the command's time.
        validity_ms: u64,
        /// The offer the units are used under.
        #[serde(default)]
        offer: String,
    },
    /// Debits used units against a reservation and frees the rest of its hold.
    Debit {
        /// The reservation.
        reservation_id: String,
        /// Units used, at most the units granted.
        used_units: u64,
    },
    /// Charges the units used under a reservation, whatever they are: up to its grant from its
    /// hold (as `debit`), beyond its grant or after it lapsed (within
    /// [`LATE_USAGE_WINDOW_MS`] of its validity) from the available money as far as it goes;
    /// what that does not cover is recorded as unpaid (`usage-charged`). Usage is never
    /// refused for exceeding the grant: it was used.
    Settle {
        /// The reservation (open, or lapsed by `expire`).
        reservation_id: String,
        /// Units used.
        used_units: u64,
    },
    /// Frees a reservation's hold without charging.
    Release {
        /// The reservation.
        reservation_id: String,
    },
    /// Charges a one-shot event without a reservation.
    DirectDebit {
        /// The amount, > 0, in the account's currency.
        amount: Money,
        /// What the charge is for.
        #[serde(default)]
        description: String,
    },
    /// Frees a reservation whose validity has passed (by the command's time).
    Expire {
        /// The reservation.
        reservation_id: String,
    },
    /// Gives money taken back (RFC 4006's `REFUND_ACCOUNT`); the runtime sends it for the
    /// debits of an admission decision that failed. Money only: counters stay as they are.
    Refund {
        /// The amount, > 0, in the account's currency; the balance afterwards is at most
        /// [`MAX_MONEY`].
        amount: Money,
        /// Why, for the log.
        #[serde(default)]
        reason: String,
    },
}

/// What happened to an account. Amounts are minor units of the account's currency.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
// Events come from the account itself; fields of older versions (e.g. `reserved.unit_price`)
// are ignored rather than refused.
#[serde(rename_all = "kebab-case")]
pub enum AccountEvent {
    /// The account was opened.
    Opened {
        /// Its currency.
        currency: String,
        /// Its overdraft limit.
        overdraft_limit: i64,
    },
    /// Money was added.
    ToppedUp {
        /// The amount added.
        amount: i64,
    },
    /// Money was held and units granted.
    Reserved {
        /// The reservation.
        reservation_id: String,
        /// The offer.
        offer: String,
        /// Units asked for.
        requested_units: u64,
        /// Units granted.
        granted_units: u64,
        /// The price of the granted units from `counters` (events without a plan: `held`).
        #[serde(default)]
        price: i64,
        /// Money held: the plan's worst-case price of the granted units, >= `price`.
        held: i64,
        /// When the grant lapses (ms since the epoch).
        expires_at: u64,
        /// The grant uses up what is left: no further unit could be granted.
        final_unit: bool,
        /// How the units are priced. Empty in events written before price plans: those
        /// priced every unit alike, at `held / granted_units` (their `unit_price` field is
        /// ignored).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        plan: Vec<PriceTerm>,
        /// With a plan: the counters `price` was rated from. Without (older events): the
        /// counters to record once usage is debited.
        counters: Vec<Counter>,
    },
    /// Used units were charged and the rest of the hold freed.
    Debited {
        /// The reservation.
        reservation_id: String,
        /// Units used.
        used_units: u64,
        /// Money taken.
        charged: i64,
        /// Money of the hold freed again.
        released: i64,
    },
    /// A reservation's hold was freed without charging.
    Released {
        /// The reservation.
        reservation_id: String,
        /// Money freed.
        released: i64,
    },
    /// Usage no hold covered was charged: units beyond a reservation's grant, or used under a
    /// reservation that had lapsed. Comes before the `debited` of the grant's own units.
    UsageCharged {
        /// The reservation the units were used under.
        reservation_id: String,
        /// Units charged here (beyond the grant, or all of a lapsed reservation's).
        units: u64,
        /// Money taken: the price of the units, at most what was available.
        charged: i64,
        /// The rest of the price, which the available money did not cover.
        unpaid: i64,
    },
    /// A one-shot charge.
    DirectDebited {
        /// Money taken.
        amount: i64,
        /// What for.
        description: String,
    },
    /// A reservation lapsed and its hold was freed.
    Expired {
        /// The reservation.
        reservation_id: String,
        /// Money freed.
        released: i64,
    },
    /// Money taken was given back.
    Refunded {
        /// Money given back.
        amount: i64,
        /// Why.
        reason: String,
    },
}

/// An open reservation.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct Reservation {
    /// The offer.
    pub offer: String,
    /// Units granted.
    pub granted_units: u64,
    /// How the units are priced (empty for reservations made before price plans).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plan: Vec<PriceTerm>,
    /// Money held.
    pub held: i64,
    /// When the grant lapses.
    pub expires_at: u64,
    /// Reservations made before price plans: the counters to record once usage is debited.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub counters: Vec<Counter>,
}

impl Reservation {
    /// Whether pricing a use with the reservation's plan moves one of the account's counters.
    pub fn moves_counter(&self) -> bool {
        self.plan.iter().any(PriceTerm::moves_counter)
    }

    /// How the reservation's units are priced; one made before price plans priced each unit
    /// alike, so at `held / granted_units`.
    pub fn plan(&self) -> Cow<'_, [PriceTerm]> {
        if self.plan.is_empty() {
            let unit_price = self.held.checked_div(self.granted_units as i64).unwrap_or(0);
            Cow::Owned(vec![PriceTerm::PerUnit { offer: self.offer.clone(), unit_price }])
        } else {
            Cow::Borrowed(&self.plan)
        }
    }
}

/// Tariff counters: offer -> counter name -> value.
pub type Counters = BTreeMap<String, BTreeMap<String, u64>>;

/// Moves `counters` on by `units` uses priced with `plan` (nothing for 0 units, or when the
/// plan cannot price them: such a plan was refused when it was reserved).
pub fn advance(counters: &mut Counters, plan: &[PriceTerm], units: u64) {
    // Rating an account walks every open reservation: most plans move no counter at all.
    if units == 0 || !plan.iter().any(PriceTerm::moves_counter) {
        return;
    }
    let mut moved = Vec::new();
    let read = |offer: &str, name: &str| counters.get(offer).and_then(|c| c.get(name)).copied();
    let priced = pricing::price(plan, &read, units, &mut |index, part| {
        let (name, value) = match part {
            Part::Bundle { remaining, .. } => (pricing::BUNDLE_REMAINING, remaining),
            Part::Threshold { uses, .. } => (pricing::USES_SINCE_DISCOUNT, uses),
            _ => return,
        };
        moved.push((plan[index].offer().to_string(), name, value));
    });
    if priced.is_ok() {
        for (offer, name, value) in moved {
            counters.entry(offer).or_default().insert(name.into(), value);
        }
    }
}

/// The state of an account, rebuilt from its events.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct Account {
    /// Whether `opened` happened.
    pub open: bool,
    /// ISO 4217 code.
    pub currency: String,
    /// How far below zero `available` may go.
    pub overdraft_limit: i64,
    /// Money on the account.
    pub balance: i64,
    /// Money held by open reservations (the sum of their `held`).
    pub held: i64,
    /// Open reservations by id.
    pub reservations: BTreeMap<String, Reservation>,
    /// Tariff counters as settled by debits: offer -> counter name -> value.
    pub counters: Counters,
    /// Reservations that lapsed (`expired`) and whose usage may still be charged late: at most
    /// [`LAPSED_KEPT`], none lapsed more than [`LATE_USAGE_WINDOW_MS`] before the last one.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub lapsed: BTreeMap<String, Reservation>,
    /// Open reservations whose plan moves a counter, kept by [`Account::apply`] beside
    /// `reservations` (as `held` is), so rating an account none of whose plans moves a counter
    /// does not walk its reservations.
    #[serde(skip)]
    counting: CountingPlans,
}

/// A count derived from the state, not part of it: never serialized (`None` after a state is
/// read back, until the next event is applied) and equal whatever it holds.
#[derive(Clone, Copy, Debug, Default)]
struct CountingPlans(Option<usize>);

impl PartialEq for CountingPlans {
    fn eq(&self, _: &CountingPlans) -> bool {
        true
    }
}

impl Eq for CountingPlans {}

impl Account {
    /// What can still be reserved or charged: balance - held + overdraft limit.
    ///
    /// The account keeps every amount within [`MAX_MONEY`], so this is exact; the arithmetic
    /// saturates only for a log written without those bounds, where it must not panic.
    pub fn available(&self) -> i64 {
        self.balance.saturating_sub(self.held).saturating_add(self.overdraft_limit)
    }

    /// The counters of `offer`, as a list.
    pub fn counters_of(&self, offer: &str) -> Vec<Counter> {
        self.counters
            .get(offer)
            .into_iter()
            .flatten()
            .map(|(name, value)| Counter { offer: offer.into(), name: name.clone(), value: *value })
            .collect()
    }

    /// What `units` of `reservation` cost now: its plan from the settled counters (debits are
    /// priced in the order they settle, so any interleaving charges what the same debits one
    /// after another would).
    pub fn charge(&self, reservation: &Reservation, units: u64) -> Result<i64, PlanError> {
        let read = |offer: &str, name: &str| self.counters.get(offer).and_then(|c| c.get(name)).copied();
        pricing::price(&reservation.plan(), &read, units, &mut |_, _| {})
    }

    /// The settled counters moved on by the granted units of every open reservation: what the
    /// next use is rated from, so a granted use counts at once. (Moving a counter on by `a`
    /// then `b` uses is moving it on by `a + b`, so the reservations' order does not matter.)
    pub fn reserved_counters(&self) -> Counters {
        let mut counters = self.counters.clone();
        if self.counting.0 == Some(0) {
            return counters;
        }
        for r in self.reservations.values().filter(|r| r.moves_counter()) {
            advance(&mut counters, &r.plan(), r.granted_units);
        }
        counters
    }

    /// [`Account::reserved_counters`] as a list ordered by offer and name.
    pub fn reserved_counter_list(&self) -> Vec<Counter> {
        list(&self.reserved_counters())
    }

    /// Folds one event into the state. Events were checked against the bounds when they were
    /// decided; the arithmetic saturates so that a foreign or damaged log cannot panic here.
    pub fn apply(&mut self, event: AccountEvent) {
        let mut counting = match self.counting.0 {
            Some(n) => n,
            None => self.reservations.values().filter(|r| r.moves_counter()).count(),
        };
        self.apply_event(event, &mut counting);
        self.counting = CountingPlans(Some(counting));
    }

    /// [`Account::apply`], counting the open reservations whose plan moves a counter.
    fn apply_event(&mut self, event: AccountEvent, counting: &mut usize) {
        match event {
            AccountEvent::Opened { currency, overdraft_limit } => {
                self.open = true;
                self.currency = currency;
                self.overdraft_limit = overdraft_limit;
            }
            AccountEvent::ToppedUp { amount } | AccountEvent::Refunded { amount, .. } => {
                self.balance = self.balance.saturating_add(amount)
            }
            AccountEvent::Reserved {
                reservation_id, offer, granted_units, plan, held, expires_at, counters, ..
            } => {
                self.held = self.held.saturating_add(held);
                // With a plan the counters only say what the price was rated from.
                let counters = if plan.is_empty() { counters } else { Vec::new() };
                let reservation = Reservation { offer, granted_units, plan, held, expires_at, counters };
                *counting += usize::from(reservation.moves_counter());
                if let Some(replaced) = self.reservations.insert(reservation_id, reservation) {
                    *counting = counting.saturating_sub(usize::from(replaced.moves_counter()));
                }
            }
            AccountEvent::Debited { reservation_id, used_units, charged, .. } => {
                if let Some(r) = self.reservations.remove(&reservation_id) {
                    *counting = counting.saturating_sub(usize::from(r.moves_counter()));
                    self.held = self.held.saturating_sub(r.held);
                    if !r.counters.is_empty() {
                        // A reservation made before price plans recorded its counters as they
                        // would be after its usage.
                        if used_units > 0 {
                            for c in r.counters {
                                self.counters.entry(c.offer).or_default().insert(c.name, c.value);
                            }
                        }
                    } else {
                        advance(&mut self.counters, &r.plan(), used_units);
                    }
                }
                self.balance = self.balance.saturating_sub(charged);
            }
            AccountEvent::Released { reservation_id, .. } => {
                if let Some(r) = self.reservations.remove(&reservation_id) {
                    *counting = counting.saturating_sub(usize::from(r.moves_counter()));
                    self.held = self.held.saturating_sub(r.held);
                }
            }
            AccountEvent::Expired { reservation_id, .. } => {
                if let Some(r) = self.reservations.remove(&reservation_id) {
                    *counting = counting.saturating_sub(usize::from(r.moves_counter()));
                    self.held = self.held.saturating_sub(r.held);
                    self.lapse(reservation_id, r);
                }
            }
            AccountEvent::UsageCharged { reservation_id, units, charged, .. } => {
                // Units beyond an open grant count on from its own units (its `debited` follows);
                // a lapsed reservation's usage is settled once and forgotten.
                let plan = match self.reservations.get(&reservation_id) {
                    Some(r) => Some(r.plan().into_owned()),
                    None => self.lapsed.remove(&reservation_id).map(|r| r.plan().into_owned()),
                };
                if let Some(plan) = plan {
                    advance(&mut self.counters, &plan, units);
                }
                self.balance = self.balance.saturating_sub(charged);
            }
            AccountEvent::DirectDebited { amount, .. } => self.balance = self.balance.saturating_sub(amount),
        }
    }
}

impl Account {
    /// Remembers a lapsed reservation for late usage, forgetting those that lapsed more than
    /// [`LATE_USAGE_WINDOW_MS`] before it and, past [`LAPSED_KEPT`], the earliest to lapse.
    fn lapse(&mut self, reservation_id: String, reservation: Reservation) {
        let horizon = reservation.expires_at.saturating_sub(LATE_USAGE_WINDOW_MS);
        self.lapsed.retain(|_, r| r.expires_at >= horizon);
        self.lapsed.insert(reservation_id, reservation);
        while self.lapsed.len() > LAPSED_KEPT {
            let earliest =
                self.lapsed.iter().min_by_key(|(id, r)| (r.expires_at, (*id).clone())).map(|(id, _)| id.clone());
            match earliest {
                Some(id) => self.lapsed.remove(&id),
                None => break,
            };
        }
    }
}

/// `counters` as a list ordered by offer and name.
pub fn list(counters: &Counters) -> Vec<Counter> {
    counters
        .iter()
        .flat_map(|(offer, named)| {
            named.iter().map(move |(name, value)| Counter { offer: offer.clone(), name: name.clone(), value: *value })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reserved(id: &str, expires_at: u64) -> AccountEvent {
        AccountEvent::Reserved {
            reservation_id: id.into(),
            offer: "voice".into(),
            requested_units: 1,
            granted_units: 1,
            price: 2,
            held: 2,
            expires_at,
            final_unit: false,
            plan: vec![PriceTerm::PerUnit { offer: "voice".into(), unit_price: 2 }],
            counters: Vec::new(),
        }
    }

    fn lapse(account: &mut Account, id: &str, expires_at: u64) {
        account.apply(reserved(id, expires_at));
        account.apply(AccountEvent::Expired { reservation_id: id.into(), released: 2 });
    }

    #[test]
    fn lapsed_reservations_are_kept_for_late_usage_within_the_window_and_the_count() {
        let mut account = Account::default();
        for i in 0..LAPSED_KEPT as u64 + 8 {
            lapse(&mut account, &format!("r{i:02}"), 1_000 + i);
        }
        assert_eq!(account.lapsed.len(), LAPSED_KEPT);
        assert!(!account.lapsed.contains_key("r07") && account.lapsed.contains_key("r08"), "the earliest go first");
        assert_eq!((account.held, account.reservations.len()), (0, 0));
        // One lapsing a window later forgets every one that lapsed before the window.
        lapse(&mut account, "late", 1_000 + LAPSED_KEPT as u64 + 8 + LATE_USAGE_WINDOW_MS);
        assert_eq!(account.lapsed.keys().collect::<Vec<_>>(), ["late"]);
        // Usage charged late settles it: forgotten, counted, paid for.
        account.balance = 10;
        account.apply(AccountEvent::UsageCharged { reservation_id: "late".into(), units: 3, charged: 6, unpaid: 0 });
        assert!(account.lapsed.is_empty());
        assert_eq!(account.balance, 4);
        // A released reservation is not kept: nothing was used under it.
        account.apply(reserved("gone", 5_000));
        account.apply(AccountEvent::Released { reservation_id: "gone".into(), released: 2 });
        assert!(account.lapsed.is_empty());
    }

    #[test]
    fn reserved_counters_follow_the_plans_that_move_counters_through_every_event_and_a_read_back() {
        let bundle = |id: &str| AccountEvent::Reserved {
            reservation_id: id.into(),
            offer: "sms".into(),
            requested_units: 2,
            granted_units: 2,
            price: 0,
            held: 0,
            expires_at: 9_000,
            final_unit: false,
            plan: vec![PriceTerm::Bundle { offer: "sms".into(), size: 3, refill_price: 500 }],
            counters: Vec::new(),
        };
        // Every open reservation's plan applied, whatever the account remembers.
        let walked = |account: &Account| {
            let mut counters = account.counters.clone();
            for r in account.reservations.values() {
                advance(&mut counters, &r.plan(), r.granted_units);
            }
            counters
        };
        let mut account = Account::default();
        let events = [
            reserved("v1", 9_000),
            bundle("b1"),
            reserved("v2", 9_000),
            bundle("b2"),
            AccountEvent::Debited { reservation_id: "b1".into(), used_units: 2, charged: 500, released: 0 },
            AccountEvent::Expired { reservation_id: "b2".into(), released: 0 },
            bundle("b3"),
            AccountEvent::Released { reservation_id: "b3".into(), released: 0 },
            AccountEvent::Released { reservation_id: "v1".into(), released: 2 },
        ];
        for event in events {
            account.apply(event);
            assert_eq!(account.reserved_counters(), walked(&account));
            // A state read back knows no count until its next event: it walks meanwhile.
            let read_back: Account = serde_json::from_str(&serde_json::to_string(&account).unwrap()).unwrap();
            assert_eq!(read_back, account);
            assert_eq!(read_back.reserved_counters(), walked(&account));
        }
        assert_eq!(account.counting.0, Some(0), "no open reservation moves a counter");
        account.apply(bundle("b4"));
        assert_ne!(account.reserved_counters(), account.counters, "b4's two uses count at once");
        assert_eq!(account.reserved_counters(), walked(&account));
    }
}
