//! The prepaid account: commands, events and state.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The stream (aggregate type) of accounts.
pub const STREAM: &str = "account";

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
        /// How far below zero `available` may go, in minor units.
        #[serde(default)]
        overdraft_limit: i64,
    },
    /// Adds money.
    TopUp {
        /// The amount, > 0, in the account's currency.
        amount: Money,
    },
    /// Holds money for units before they are used and grants
    /// `min(units, floor(available / unit_price))` of them.
    Reserve {
        /// Id of the new reservation; must not be open already.
        reservation_id: String,
        /// Units wanted, > 0.
        units: u64,
        /// Price of one unit, >= 0, in the account's currency.
        unit_price: Money,
        /// How long the grant is valid, in milliseconds from the command's time.
        validity_ms: u64,
        /// The offer the units are used under.
        #[serde(default)]
        offer: String,
        /// Tariff counters to record once usage is debited.
        #[serde(default)]
        counters: Vec<Counter>,
    },
    /// Debits used units against a reservation and frees the rest of its hold.
    Debit {
        /// The reservation.
        reservation_id: String,
        /// Units used, at most the units granted.
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
}

/// What happened to an account. Amounts are minor units of the account's currency.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
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
        /// Price per unit.
        unit_price: i64,
        /// Money held: granted units x unit price.
        held: i64,
        /// When the grant lapses (ms since the epoch).
        expires_at: u64,
        /// The grant uses up what is left: no further unit could be granted.
        final_unit: bool,
        /// Tariff counters to record once usage is debited.
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
}

/// An open reservation.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct Reservation {
    /// The offer.
    pub offer: String,
    /// Units granted.
    pub granted_units: u64,
    /// Price per unit.
    pub unit_price: i64,
    /// Money held.
    pub held: i64,
    /// When the grant lapses.
    pub expires_at: u64,
    /// Counters to record once usage is debited.
    pub counters: Vec<Counter>,
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
    /// Tariff counters: offer -> counter name -> value.
    pub counters: BTreeMap<String, BTreeMap<String, u64>>,
}

impl Account {
    /// What can still be reserved or charged: balance - held + overdraft limit.
    pub fn available(&self) -> i64 {
        self.balance - self.held + self.overdraft_limit
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

    /// Every counter, as a list ordered by offer and name.
    pub fn all_counters(&self) -> Vec<Counter> {
        self.counters.keys().flat_map(|offer| self.counters_of(offer)).collect()
    }

    /// Folds one event into the state.
    pub fn apply(&mut self, event: AccountEvent) {
        match event {
            AccountEvent::Opened { currency, overdraft_limit } => {
                self.open = true;
                self.currency = currency;
                self.overdraft_limit = overdraft_limit;
            }
            AccountEvent::ToppedUp { amount } => self.balance += amount,
            AccountEvent::Reserved {
                reservation_id,
                offer,
                granted_units,
                unit_price,
                held,
                expires_at,
                counters,
                ..
            } => {
                self.held += held;
                self.reservations.insert(
                    reservation_id,
                    Reservation { offer, granted_units, unit_price, held, expires_at, counters },
                );
            }
            AccountEvent::Debited { reservation_id, used_units, charged, .. } => {
                if let Some(r) = self.reservations.remove(&reservation_id) {
                    self.held -= r.held;
                    if used_units > 0 {
                        for c in r.counters {
                            self.counters.entry(c.offer).or_default().insert(c.name, c.value);
                        }
                    }
                }
                self.balance -= charged;
            }
            AccountEvent::Released { reservation_id, .. } | AccountEvent::Expired { reservation_id, .. } => {
                if let Some(r) = self.reservations.remove(&reservation_id) {
                    self.held -= r.held;
                }
            }
            AccountEvent::DirectDebited { amount, .. } => self.balance -= amount,
        }
    }
}
