//! The balance read model: one document per account, kept by the `balance-projector` in the
//! key-value bucket [`BUCKET`] under the account id.
//!
//! Invariant: `available == balance - held + overdraft_limit`, and the last ledger line's
//! `effective_balance == available`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Ledger lines a view keeps: the most recent ones (the account's log has them all), so a
/// view's size, and the cost of projecting into it, stays the same however old the account.
pub const LEDGER_LINES: usize = 100;

/// The key-value bucket holding balance views.
pub const BUCKET: &str = "balances";

/// An account's money as the read side sees it. Amounts are minor units of `currency`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct BalanceView {
    /// ISO 4217 code (empty until the account's `opened` event is seen).
    pub currency: String,
    /// Money on the account.
    pub balance: i64,
    /// Money held by open reservations (the sum of `holds`).
    pub held: i64,
    /// What can still be reserved: `balance - held + overdraft_limit`.
    pub available: i64,
    /// How far below zero `available` may go.
    pub overdraft_limit: i64,
    /// Open holds: reservation id -> money held.
    pub holds: BTreeMap<String, i64>,
    /// The effect on `available` of the last [`LEDGER_LINES`] projected events, oldest first.
    pub ledger: Vec<LedgerLine>,
}

/// One event's effect on an account's available money.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct LedgerLine {
    /// The event's sequence in the account's stream.
    pub sequence: u64,
    /// The event's type, e.g. `reserved`.
    pub event_type: String,
    /// Signed effect on `available` (a reservation is negative, a top-up positive).
    pub amount: i64,
    /// `available` after the event.
    pub effective_balance: i64,
}

impl BalanceView {
    /// The sequence of the last projected event, 0 when none was.
    pub fn last_sequence(&self) -> u64 {
        self.ledger.last().map_or(0, |l| l.sequence)
    }

    /// Checks the view's invariants; the message names the first one broken.
    ///
    /// ```
    /// let view = tollgate_billing_model::balance::BalanceView::default();
    /// assert!(view.check().is_ok());
    /// ```
    pub fn check(&self) -> Result<(), String> {
        let held = self.holds.values().try_fold(0i64, |sum, h| sum.checked_add(*h));
        if held != Some(self.held) {
            return Err(format!("held {} != sum of holds {held:?}", self.held));
        }
        let available = self.balance.checked_sub(self.held).and_then(|a| a.checked_add(self.overdraft_limit));
        if available != Some(self.available) {
            return Err(format!("available {} != balance - held + overdraft_limit = {available:?}", self.available));
        }
        match self.ledger.last() {
            Some(last) if last.effective_balance != self.available => Err(format!(
                "last ledger line's effective_balance {} != available {}",
                last.effective_balance, self.available
            )),
            _ => Ok(()),
        }
    }
}
