//! The reference prepaid account aggregate (stream `account`).
//!
//! Online charging reserves before use: `reserve` grants the most of the units asked for whose
//! worst-case price under the request's price plan the available money covers, and holds that
//! amount; `debit` charges the used units with the plan, from the counters as the debits before
//! it settled them, and frees the rest of the hold; `settle` charges usage whatever it is
//! (units beyond the grant, or used under a reservation that lapsed within the late-usage
//! window) from the hold and then from the money available, recording what that does not
//! cover as unpaid; `release` and `expire` free a hold; `direct-debit`
//! charges a one-shot event; `refund` gives money back. `available = balance - held + overdraft_limit` never goes below
//! zero. Repeated command ids are answered by the host from the events they produced.
//!
//! Every amount is bounded by [`MAX_MONEY`] and every sum or product is checked: what cannot be
//! represented is refused (`amount-overflow`, `limit-out-of-range`) and the state is untouched.
//! A price of 0 grants every unit asked for and holds nothing, whatever the unit count.
//!
//! Counters: a reservation's units count for the next rating at once
//! ([`Account::reserved_counters`]); a debit settles them by the units used; a release or an
//! expiry gives them back.
//!
//! Events are at schema version 2; version 1 logs are read through [`upcast`](Aggregate::upcast).

use tollgate_billing_model::account::{
    Account, AccountCommand, AccountEvent, LATE_USAGE_WINDOW_MS, MAX_MONEY, Money, Reservation, STREAM, list,
};
use tollgate_billing_model::pricing::{self, PlanError, worst_price};
use tollgate_sdk::{Aggregate, Command, Event, Rejection};

/// `topped-up` and `direct-debited` as version 1 wrote them: `amount` was money (minor units
/// and currency); version 2 keeps the minor units, an account having one currency.
#[derive(serde::Deserialize)]
struct V1Amount {
    amount: Money,
    #[serde(default)]
    description: String,
}

/// The prepaid account aggregate.
pub struct PrepaidAccount;

tollgate_sdk::export_aggregate!(PrepaidAccount);

impl Aggregate for PrepaidAccount {
    const STREAM: &'static str = STREAM;
    type State = Account;
    type Command = AccountCommand;
    type Event = AccountEvent;
    const EVENT_SCHEMA_VERSION: u32 = 2;

    fn handle(account: &Account, command: AccountCommand, envelope: &Command) -> Result<Vec<AccountEvent>, Rejection> {
        if let AccountCommand::Open { currency, overdraft_limit } = command {
            return open(account, currency, overdraft_limit);
        }
        if !account.open {
            return Err(Rejection::business("unknown-account", format!("account `{}` is not open", envelope.key)));
        }
        match command {
            AccountCommand::Open { .. } => unreachable!("handled above"),
            AccountCommand::TopUp { amount } => {
                let amount = credit(account, &amount, "top-up")?;
                Ok(vec![AccountEvent::ToppedUp { amount }])
            }
            AccountCommand::Refund { amount, reason } => {
                let amount = credit(account, &amount, "refund")?;
                Ok(vec![AccountEvent::Refunded { amount, reason }])
            }
            AccountCommand::Reserve { reservation_id, units, plan, currency, validity_ms, offer } => {
                if account.reservations.contains_key(&reservation_id) {
                    return Err(Rejection::business(
                        "duplicate-reservation-id",
                        format!("reservation `{reservation_id}` is already open"),
                    ));
                }
                if units == 0 {
                    return Err(Rejection::malformed("zero-amount", "`units` must be > 0"));
                }
                same_currency(account, &currency, "plan")?;
                let worst = |n| worst_price(&plan, n);
                let available = account.available();
                let one = match worst(1) {
                    Err(PlanError::Malformed(m)) => return Err(Rejection::malformed("invalid-plan", m)),
                    Err(PlanError::Overflow) => return Err(overflow("the price of one unit overflows".into())),
                    Ok(one) => one,
                };
                // The most units whose worst-case price is covered: prices grow with the unit
                // count, so a binary search finds it; an overflowing price is not covered.
                let covered = |n| worst(n).is_ok_and(|p| p <= available);
                let granted = if covered(units) {
                    units
                } else {
                    let (mut lo, mut hi) = (0, units);
                    while hi - lo > 1 {
                        let mid = lo + (hi - lo) / 2;
                        if covered(mid) { lo = mid } else { hi = mid }
                    }
                    lo
                };
                if granted == 0 {
                    return Err(Rejection::business(
                        "insufficient-funds",
                        format!("available {available} {} does not cover one unit at {one}", account.currency),
                    ));
                }
                let held = worst(granted).map_err(|_| overflow("the held amount overflows".into()))?;
                let counters = account.reserved_counters();
                let read = |offer: &str, name: &str| counters.get(offer).and_then(|c| c.get(name)).copied();
                let price = pricing::price(&plan, &read, granted, &mut |_, _| {})
                    .map_err(|_| overflow("the price overflows".into()))?;
                let mut rated_from = list(&counters);
                rated_from.retain(|c| plan.iter().any(|t| t.offer() == c.offer));
                Ok(vec![AccountEvent::Reserved {
                    reservation_id,
                    offer,
                    requested_units: units,
                    granted_units: granted,
                    price,
                    held,
                    expires_at: envelope.time.saturating_add(validity_ms),
                    // Final unit: after this hold not even one more unit could be granted.
                    final_unit: available.saturating_sub(held) < one,
                    plan,
                    counters: rated_from,
                }])
            }
            AccountCommand::Debit { reservation_id, used_units } => {
                let r = reservation(account, &reservation_id)?;
                if used_units > r.granted_units {
                    return Err(Rejection::business(
                        "exceeds-grant",
                        format!(
                            "{used_units} units used but reservation `{reservation_id}` granted {}",
                            r.granted_units
                        ),
                    ));
                }
                let (charged, released) = from_hold(account, r, used_units)?;
                Ok(vec![AccountEvent::Debited { reservation_id, used_units, charged, released }])
            }
            AccountCommand::Settle { reservation_id, used_units } => {
                settle(account, reservation_id, used_units, envelope.time)
            }
            AccountCommand::Release { reservation_id } => {
                let released = reservation(account, &reservation_id)?.held;
                Ok(vec![AccountEvent::Released { reservation_id, released }])
            }
            AccountCommand::Expire { reservation_id } => {
                let r = reservation(account, &reservation_id)?;
                if envelope.time < r.expires_at {
                    return Err(Rejection::business(
                        "not-expired",
                        format!("reservation `{reservation_id}` is valid until {}", r.expires_at),
                    ));
                }
                Ok(vec![AccountEvent::Expired { reservation_id, released: r.held }])
            }
            AccountCommand::DirectDebit { amount, description } => {
                let amount = positive(account, &amount, "amount")?;
                if amount > account.available() {
                    return Err(Rejection::business(
                        "insufficient-funds",
                        format!("available {} {} < {amount}", account.available(), account.currency),
                    ));
                }
                Ok(vec![AccountEvent::DirectDebited { amount, description }])
            }
        }
    }

    fn apply(account: &mut Account, event: AccountEvent) {
        account.apply(event);
    }

    fn upcast(mut event: Event) -> Result<Event, Rejection> {
        if matches!(event.event_type.as_str(), "topped-up" | "direct-debited") {
            let bad = |e: tollgate_sdk::codec::CodecError| Rejection::malformed("malformed-event", e.0);
            let v1: V1Amount = tollgate_sdk::codec::from_json(&event.payload).map_err(bad)?;
            let amount = v1.amount.minor_units;
            let raised = if event.event_type == "topped-up" {
                AccountEvent::ToppedUp { amount }
            } else {
                AccountEvent::DirectDebited { amount, description: v1.description }
            };
            event.payload = tollgate_sdk::codec::encode(&raised).map_err(bad)?.1;
        }
        event.schema_version = 2;
        Ok(event)
    }
}

/// What `used_units` (at most the grant) of `r` cost, and what is left of its hold.
fn from_hold(account: &Account, r: &Reservation, used_units: u64) -> Result<(i64, i64), Rejection> {
    // The hold is the worst case of the granted units, so it covers the charge; checked all
    // the same, a reservation from a log written without bounds must not wrap.
    account
        .charge(r, used_units)
        .ok()
        .and_then(|c| Some((c, r.held.checked_sub(c).filter(|rest| *rest >= 0)?)))
        .ok_or_else(|| overflow(format!("{used_units} units cost more than the hold {}", r.held)))
}

/// `settle`: the grant's own units from its hold; units beyond it, or used under a lapsed
/// reservation, from the money available as far as it goes, the rest recorded as unpaid.
fn settle(account: &Account, reservation_id: String, used: u64, now: u64) -> Result<Vec<AccountEvent>, Rejection> {
    let cannot_price = || overflow(format!("the price of {used} units under `{reservation_id}` overflows"));
    if let Some(r) = account.reservations.get(&reservation_id) {
        let within = used.min(r.granted_units);
        let (charged, released) = from_hold(account, r, within)?;
        let debited =
            AccountEvent::Debited { reservation_id: reservation_id.clone(), used_units: within, charged, released };
        if used == within {
            return Ok(vec![debited]);
        }
        let price = account.charge(r, used).ok().and_then(|all| all.checked_sub(charged)).ok_or_else(cannot_price)?;
        // Once the debit frees the hold, what is available grows by what the hold had left.
        let available = account.available().saturating_add(released);
        let excess = taken(price, available, reservation_id, used - within);
        return Ok(vec![excess, debited]);
    }
    let Some(r) = account.lapsed.get(&reservation_id) else {
        return Err(Rejection::business(
            "unknown-reservation",
            format!("no open or recently lapsed reservation `{reservation_id}`"),
        ));
    };
    if now > r.expires_at.saturating_add(LATE_USAGE_WINDOW_MS) {
        return Err(Rejection::business(
            "late-usage-window-passed",
            format!(
                "reservation `{reservation_id}` lapsed at {}; usage is charged until {} ms after that",
                r.expires_at, LATE_USAGE_WINDOW_MS
            ),
        ));
    }
    let price = account.charge(r, used).map_err(|_| cannot_price())?;
    Ok(vec![taken(price, account.available(), reservation_id, used)])
}

/// `usage-charged` for `units` costing `price`: as much as `available` covers, the rest unpaid.
fn taken(price: i64, available: i64, reservation_id: String, units: u64) -> AccountEvent {
    let charged = price.min(available.max(0));
    AccountEvent::UsageCharged { reservation_id, units, charged, unpaid: price.saturating_sub(charged) }
}

/// A positive amount the balance can take in whole (`what` names the command).
fn credit(account: &Account, amount: &Money, what: &str) -> Result<i64, Rejection> {
    let amount = positive(account, amount, "amount")?;
    match account.balance.checked_add(amount) {
        Some(balance) if balance <= MAX_MONEY => Ok(amount),
        _ => Err(overflow(format!(
            "a {what} of {amount} would take the balance {} past the largest balance, {MAX_MONEY}",
            account.balance
        ))),
    }
}

fn open(account: &Account, currency: String, overdraft_limit: i64) -> Result<Vec<AccountEvent>, Rejection> {
    if account.open {
        return Err(Rejection::business("already-open", format!("account is already open in {}", account.currency)));
    }
    if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(Rejection::malformed(
            "invalid-currency",
            format!("`currency` must be an ISO 4217 code like EUR, not `{currency}`"),
        ));
    }
    if overdraft_limit < 0 {
        return Err(Rejection::malformed("negative-amount", "`overdraft_limit` must be >= 0"));
    }
    if overdraft_limit > MAX_MONEY {
        return Err(Rejection::business(
            "limit-out-of-range",
            format!("`overdraft_limit` {overdraft_limit} is above the largest amount, {MAX_MONEY}"),
        ));
    }
    Ok(vec![AccountEvent::Opened { currency, overdraft_limit }])
}

fn same_currency(account: &Account, currency: &str, field: &str) -> Result<(), Rejection> {
    if currency == account.currency {
        Ok(())
    } else {
        Err(Rejection::business(
            "currency-mismatch",
            format!("`{field}` is in {currency} but the account is in {}", account.currency),
        ))
    }
}

fn overflow(message: String) -> Rejection {
    Rejection::business("amount-overflow", message)
}

fn positive(account: &Account, money: &Money, field: &str) -> Result<i64, Rejection> {
    same_currency(account, &money.currency, field)?;
    match money.minor_units {
        0 => Err(Rejection::malformed("zero-amount", format!("`{field}` must be > 0"))),
        n if n < 0 => Err(Rejection::malformed("negative-amount", format!("`{field}` must be > 0, got {n}"))),
        n if n > MAX_MONEY => Err(overflow(format!("`{field}` {n} is above the largest amount, {MAX_MONEY}"))),
        n => Ok(n),
    }
}

fn reservation<'a>(
    account: &'a Account,
    id: &str,
) -> Result<&'a tollgate_billing_model::account::Reservation, Rejection> {
    account
        .reservations
        .get(id)
        .ok_or_else(|| Rejection::business("unknown-reservation", format!("no open reservation `{id}`")))
}
