//! The charging facade: serves a policy's `tollgate:billing/charging` import by sending
//! commands to the account aggregate, and its `tollgate:billing/rating` import by calling the
//! rater component. Request ids become command ids, so a repeated request changes nothing
//! twice and gets its original answer.

use crate::error::RuntimeError;
use crate::shared::Shared;
use crate::undo::{UNDO_MARK, Undo, UndoAction};
use std::sync::{Arc, Mutex};
use tollgate_billing_model::account::{
    Account, AccountCommand, AccountEvent, Counter as ModelCounter, Money as ModelMoney,
};
use tollgate_billing_model::pricing::PriceTerm as ModelTerm;
use tollgate_host::aggregate::{Event, Outcome, Rejection};
use tollgate_host::bindings::policy::tollgate::billing::charging::{ChargingError, DebitOutcome, ReserveRequest};
use tollgate_host::bindings::policy::tollgate::billing::rating as imported;
use tollgate_host::bindings::rater::tollgate::billing::types::{
    AccountStatus, BundleTerm, CompositeTerm, Counter, FinalUnitAction, Grant, Money, PerUnitTerm, PriceTerm,
    ResultCode, ThresholdTerm, Usage,
};
use tollgate_host::services::PolicyServices;
use tollgate_host::typed as exported;

/// Serves one policy's billing imports from the runtime's actors.
pub struct ChargingFacade {
    pub(crate) shared: Arc<Mutex<Shared>>,
    /// The aggregate actor serving `charging`.
    pub(crate) account_actor: String,
    /// The rater actor serving `rating`.
    pub(crate) rater_actor: String,
}

/// Maps an account rejection to a charging result code.
pub fn result_code(rejection: &Rejection) -> ResultCode {
    match rejection.code.as_str() {
        "unknown-account" => ResultCode::UserUnknown,
        "insufficient-funds" => ResultCode::QuotaLimitReached,
        _ => ResultCode::EndUserServiceDenied,
    }
}

fn error(code: ResultCode, message: impl Into<String>) -> ChargingError {
    ChargingError { code, message: message.into() }
}

fn money(minor_units: i64, currency: &str) -> Money {
    Money { minor_units, currency: currency.into() }
}

fn counters(counters: Vec<ModelCounter>) -> Vec<Counter> {
    counters.into_iter().map(|c| Counter { offer: c.offer, name: c.name, value: c.value }).collect()
}

/// The account as charging reports it: counters include the open reservations' units, so the
/// next use is rated after the granted ones.
fn status(key: &str, account: &Account) -> AccountStatus {
    AccountStatus {
        account: key.into(),
        balance: money(account.balance, &account.currency),
        held: money(account.held, &account.currency),
        available: money(account.available(), &account.currency),
        counters: counters(account.reserved_counter_list()),
    }
}

/// An account aggregate's events as the model's.
pub(crate) fn account_events(events: &[Event]) -> Result<Vec<AccountEvent>, RuntimeError> {
    events
        .iter()
        .map(|e| {
            tollgate_codec::decode(&e.event_type, &e.payload)
                .map_err(|source| RuntimeError::undecodable_event(&e.stream, &e.key, e.sequence, &e.event_type, source))
        })
        .collect()
}

/// A `tollgate:billing` price term as the model's.
pub fn model_term(term: PriceTerm) -> ModelTerm {
    match term {
        PriceTerm::PerUnit(PerUnitTerm { offer, unit_price }) => ModelTerm::PerUnit { offer, unit_price },
        PriceTerm::Bundle(BundleTerm { offer, size, refill_price }) => ModelTerm::Bundle { offer, size, refill_price },
        PriceTerm::Threshold(ThresholdTerm { offer, unit_price, every, discount }) => {
            ModelTerm::Threshold { offer, unit_price, every, discount }
        }
        PriceTerm::Composite(CompositeTerm { offer, markup_percent, children }) => {
            ModelTerm::Composite { offer, markup_percent, children }
        }
    }
}

impl ChargingFacade {
    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends an account command; host failures become `end-user-service-denied`.
    fn send(
        &self,
        request_id: &str,
        account: &str,
        command: &AccountCommand,
    ) -> Result<(Vec<AccountEvent>, String), ChargingError> {
        if request_id.contains(UNDO_MARK) {
            return Err(error(
                ResultCode::EndUserServiceDenied,
                format!("request id `{request_id}` contains `{UNDO_MARK}`, which only the runtime's undos use"),
            ));
        }
        let mut shared = self.lock();
        let now = shared.clock.now_ms();
        let mut envelope = tollgate_host::aggregate::json_command(
            tollgate_billing_model::account::STREAM,
            account,
            request_id,
            command,
            now,
        )
        .map_err(|e| error(ResultCode::EndUserServiceDenied, format!("encode command: {e}")))?;
        // Every call of one decision is correlated with the request decided.
        if !shared.in_decide.request_id.is_empty() {
            envelope.correlation_id = shared.in_decide.request_id.clone();
        }
        // `accepted` counts only appends, not commands answered from the log.
        let appended_before = shared.stats.accepted;
        let outcome = shared
            .execute_on(&self.account_actor, &envelope)
            .map_err(|e| error(ResultCode::EndUserServiceDenied, format!("account actor failed: {e}")))?;
        let new = shared.stats.accepted > appended_before;
        let events = match outcome {
            Outcome::Rejected(r) => return Err(error(result_code(&r), r.message)),
            Outcome::Accepted(events) => {
                account_events(&events).map_err(|e| error(ResultCode::EndUserServiceDenied, e.to_string()))?
            }
        };
        // An account without events is in its initial state (not opened): no currency.
        let currency = shared
            .with_account(&self.account_actor, account, |a| a.currency.clone())
            .map_err(|e| error(ResultCode::EndUserServiceDenied, format!("read account: {e}")))?
            .unwrap_or_default();
        let undo = undo_of(request_id, command, &events, &currency);
        self.track(&mut shared, account, command, undo, new)?;
        Ok((events, currency))
    }

    /// Remembers how to undo a charging call until the `decide` under way returns (it is
    /// undone if that fails), and refuses a repeated call whose decision failed and was undone:
    /// answering it from the log would hand out a grant released or a charge refunded.
    fn track(
        &self,
        shared: &mut Shared,
        account: &str,
        command: &AccountCommand,
        action: Option<UndoAction>,
        new: bool,
    ) -> Result<(), ChargingError> {
        if new {
            // A reservation this decision debited or released is no longer held.
            if let AccountCommand::Debit { reservation_id, .. } | AccountCommand::Release { reservation_id } = command {
                shared.in_decide.undo.retain(|u| {
                    u.account != account || u.action != UndoAction::Release { reservation_id: reservation_id.clone() }
                });
            }
            if let Some(action) = action {
                shared.in_decide.undo.push(Undo {
                    account_actor: self.account_actor.clone(),
                    account: account.into(),
                    action,
                });
            }
            return Ok(());
        }
        let Some(action) = action else { return Ok(()) };
        let decision = shared.in_decide.request_id.clone();
        match shared.recently_committed(&self.account_actor, account, &action.command_id(&decision)) {
            Ok(false) => Ok(()),
            Ok(true) => Err(error(
                ResultCode::EndUserServiceDenied,
                format!(
                    "request `{decision}` failed before it was answered and its {} was {}; send a new request id",
                    action.what(),
                    action.done()
                ),
            )),
            Err(e) => Err(error(ResultCode::EndUserServiceDenied, format!("read account: {e}"))),
        }
    }

    /// The status of an open account.
    fn open_status(&self, account: &str) -> Result<AccountStatus, ChargingError> {
        let read = self.lock().with_account(&self.account_actor, account, |a| a.open.then(|| status(account, a)));
        match read {
            Ok(Some(Some(status))) => Ok(status),
            Ok(_) => Err(error(ResultCode::UserUnknown, format!("no account `{account}`"))),
            Err(e) => Err(error(ResultCode::EndUserServiceDenied, format!("read account: {e}"))),
        }
    }

    fn rate_with_rater(&self, request: imported::RatingRequest) -> Result<imported::Rated, imported::RatingError> {
        let request = exported::RatingRequest { usage: request.usage, counters: request.counters };
        let mut shared = self.lock();
        match shared.rate_on(&self.rater_actor, &request) {
            Ok(Ok(r)) => Ok(imported::Rated { lines: r.lines, total: r.total, plan: r.plan, counters: r.counters }),
            Ok(Err(e)) => Err(match e {
                exported::RatingError::UnknownOffer(s) => imported::RatingError::UnknownOffer(s),
                exported::RatingError::UnknownRatingGroup(g) => imported::RatingError::UnknownRatingGroup(g),
                exported::RatingError::OutsideGeoFence(s) => imported::RatingError::OutsideGeoFence(s),
                exported::RatingError::InvalidTariff(s) => imported::RatingError::InvalidTariff(s),
                exported::RatingError::UsageOverflow(s) => imported::RatingError::UsageOverflow(s),
            }),
            Err(host) => Err(imported::RatingError::InvalidTariff(format!("rater failed: {host}"))),
        }
    }
}

/// How to undo the call `request_id` that sent `command` and got `events`, if it held or took
/// money.
fn undo_of(request_id: &str, command: &AccountCommand, events: &[AccountEvent], currency: &str) -> Option<UndoAction> {
    match (command, events.first()) {
        (AccountCommand::Reserve { .. }, Some(AccountEvent::Reserved { reservation_id, .. })) => {
            Some(UndoAction::Release { reservation_id: reservation_id.clone() })
        }
        (AccountCommand::Debit { .. }, Some(AccountEvent::Debited { charged: amount, .. }))
        | (AccountCommand::DirectDebit { .. }, Some(AccountEvent::DirectDebited { amount, .. }))
            if *amount > 0 =>
        {
            Some(UndoAction::Refund { charge_id: request_id.into(), amount: *amount, currency: currency.into() })
        }
        _ => None,
    }
}

impl PolicyServices for ChargingFacade {
    fn rate(&self, request: imported::RatingRequest) -> Result<imported::Rated, imported::RatingError> {
        self.rate_with_rater(request)
    }

    fn reserve(&self, request: ReserveRequest) -> Result<Grant, ChargingError> {
        let command = AccountCommand::Reserve {
            reservation_id: request.reservation_id.clone(),
            units: request.units,
            plan: request.plan.into_iter().map(model_term).collect(),
            currency: request.currency,
            validity_ms: request.validity_ms,
            offer: request.offer.clone(),
        };
        // A repeated request id asking for the same reservation is answered with the original
        // `reserved` event: the original grant, price and counters, whatever happened since.
        // The same id asking for another one (other units, offer, plan or validity) is refused
        // as a `command-id-conflict`.
        let (events, currency) = self.send(&request.request_id, &request.account, &command)?;
        match events.into_iter().next() {
            Some(AccountEvent::Reserved {
                reservation_id,
                granted_units,
                price,
                held,
                expires_at,
                final_unit,
                counters: rated_from,
                ..
            }) => Ok(Grant {
                reservation_id,
                granted_units,
                price: money(price, &currency),
                counters: counters(rated_from),
                held: money(held, &currency),
                expires_at,
                final_unit: final_unit.then_some(FinalUnitAction::Terminate),
            }),
            other => Err(error(ResultCode::EndUserServiceDenied, format!("unexpected outcome of reserve: {other:?}"))),
        }
    }

    fn debit(
        &self,
        request_id: &str,
        account: &str,
        reservation_id: &str,
        used_units: u64,
    ) -> Result<DebitOutcome, ChargingError> {
        let command = AccountCommand::Debit { reservation_id: reservation_id.into(), used_units };
        let (events, currency) = self.send(request_id, account, &command)?;
        match events.into_iter().next() {
            Some(AccountEvent::Debited { charged, released, .. }) => Ok(DebitOutcome {
                charged: money(charged, &currency),
                released: money(released, &currency),
                status: self.open_status(account)?,
            }),
            other => Err(error(ResultCode::EndUserServiceDenied, format!("unexpected outcome of debit: {other:?}"))),
        }
    }

    fn release(&self, request_id: &str, account: &str, reservation_id: &str) -> Result<Money, ChargingError> {
        let command = AccountCommand::Release { reservation_id: reservation_id.into() };
        let (events, currency) = self.send(request_id, account, &command)?;
        match events.into_iter().next() {
            Some(AccountEvent::Released { released, .. }) => Ok(money(released, &currency)),
            other => Err(error(ResultCode::EndUserServiceDenied, format!("unexpected outcome of release: {other:?}"))),
        }
    }

    fn direct_debit(
        &self,
        request_id: &str,
        account: &str,
        amount: Money,
        description: &str,
    ) -> Result<AccountStatus, ChargingError> {
        let command = AccountCommand::DirectDebit {
            amount: ModelMoney::new(amount.minor_units, &amount.currency),
            description: description.into(),
        };
        self.send(request_id, account, &command)?;
        self.open_status(account)
    }

    fn balance_check(&self, account: &str) -> Result<AccountStatus, ChargingError> {
        self.open_status(account)
    }

    fn price_enquiry(&self, account: &str, usage: Usage) -> Result<imported::Rated, ChargingError> {
        let counters = self.open_status(account)?.counters;
        self.rate_with_rater(imported::RatingRequest { usage, counters }).map_err(|e| {
            let (code, message) = match e {
                imported::RatingError::OutsideGeoFence(m) => (ResultCode::EndUserServiceRejected, m),
                imported::RatingError::UnknownOffer(m) => (ResultCode::RatingFailed, format!("unknown offer `{m}`")),
                imported::RatingError::UnknownRatingGroup(g) => {
                    (ResultCode::RatingFailed, format!("unknown rating group {g}"))
                }
                imported::RatingError::InvalidTariff(m) => (ResultCode::RatingFailed, m),
                imported::RatingError::UsageOverflow(m) => (ResultCode::RatingFailed, format!("usage overflow: {m}")),
            };
            error(code, message)
        })
    }
}
