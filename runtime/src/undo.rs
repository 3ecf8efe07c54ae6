//! Undoing a failed decision: a hold or charge a policy made inside a `decide` that failed
//! (trap or cap) is undone at once, since the client got an error and nothing may stay held
//! or charged for it. Each undo's command id names the failed decision.

use crate::error::RuntimeError;
use crate::shared::Shared;
use tollgate_billing_model::account::{AccountCommand, Money, STREAM as ACCOUNT_STREAM};
use tollgate_host::aggregate::Outcome;

/// The charging calls of the `decide` call under way that must be undone if it fails: the
/// client gets an error, so nothing may stay held or charged for it.
#[derive(Debug, Default)]
pub(crate) struct InDecide {
    /// The request being decided (empty outside `decide`).
    pub request_id: String,
    /// In the order the calls were made.
    pub undo: Vec<Undo>,
}

/// How one charging call made inside a failed `decide` is undone, on `account` of the
/// aggregate actor `account_actor`.
#[derive(Debug, Clone)]
pub(crate) struct Undo {
    /// The aggregate actor of the account.
    pub account_actor: String,
    /// The account.
    pub account: String,
    /// What to send.
    pub action: UndoAction,
}

/// The command that undoes a charging call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum UndoAction {
    /// A reservation made: released.
    Release {
        /// The reservation.
        reservation_id: String,
    },
    /// Money taken by a debit or a direct debit: refunded (counters stay as they are).
    Refund {
        /// The command id of the call that took it.
        charge_id: String,
        /// Minor units taken.
        amount: i64,
        /// The account's currency.
        currency: String,
    },
}

/// What every undo's command id carries; a policy's own calls may not use it, or one could
/// take the id of an undo and have that undo answered as done without being done.
pub(crate) const UNDO_MARK: &str = "-after-failed-decide/";

impl UndoAction {
    /// The command id of the undo of this call by the failed decision on `request_id`: it
    /// names that decision in the log, and marks the request as answered.
    pub fn command_id(&self, request_id: &str) -> String {
        match self {
            UndoAction::Release { reservation_id } => format!("{request_id}/released{UNDO_MARK}{reservation_id}"),
            UndoAction::Refund { charge_id, .. } => format!("{request_id}/refunded{UNDO_MARK}{charge_id}"),
        }
    }

    /// The account command that undoes the call, for the decision on `request_id` that
    /// failed with `failure`.
    pub fn command(&self, request_id: &str, failure: &str) -> AccountCommand {
        match self {
            UndoAction::Release { reservation_id } => {
                AccountCommand::Release { reservation_id: reservation_id.clone() }
            }
            UndoAction::Refund { charge_id, amount, currency } => AccountCommand::Refund {
                amount: Money::new(*amount, currency),
                reason: format!("charge `{charge_id}` of request `{request_id}`, whose decision failed: {failure}"),
            },
        }
    }

    /// What the call left on the account: `hold` or `charge`.
    pub fn what(&self) -> &'static str {
        match self {
            UndoAction::Release { .. } => "hold",
            UndoAction::Refund { .. } => "charge",
        }
    }

    /// What the undo did to it: `released` or `refunded`.
    pub fn done(&self) -> &'static str {
        match self {
            UndoAction::Release { .. } => "released",
            UndoAction::Refund { .. } => "refunded",
        }
    }
}

impl Shared {
    /// Undoes the charging calls of a failed `decide`, newest first: the client got an error,
    /// so nothing may stay held or charged for it. Holds are released, money taken is
    /// refunded; each undo's command id names the decision ([`UndoAction::command_id`]), so
    /// a repeat of the request is refused rather than answered with what was undone.
    pub(crate) fn undo_failed_decide(
        &mut self,
        request_id: &str,
        undo: Vec<Undo>,
        failure: &str,
    ) -> Result<(), RuntimeError> {
        for step in undo.into_iter().rev() {
            let command = step.action.command(request_id, failure);
            let mut envelope = tollgate_host::aggregate::json_command(
                ACCOUNT_STREAM,
                &step.account,
                &step.action.command_id(request_id),
                &command,
                self.clock.now_ms(),
            )
            .expect("an AccountCommand is an externally tagged enum of plain fields: it always encodes");
            envelope.correlation_id = request_id.into();
            let what = step.action.what();
            match self.execute_on(&step.account_actor, &envelope)? {
                Outcome::Accepted(_) => {
                    match step.action {
                        UndoAction::Release { .. } => self.stats.holds_released += 1,
                        UndoAction::Refund { .. } => self.stats.charges_refunded += 1,
                    }
                    tracing::warn!(request_id, account = %step.account, ?command, failure, "undid a {what} made by a decision that failed");
                }
                Outcome::Rejected(r) => tracing::error!(
                    request_id,
                    account = %step.account,
                    ?command,
                    code = %r.code,
                    "could not undo a {what} made by a decision that failed: {}",
                    r.message
                ),
            }
        }
        self.pump()
    }
}
