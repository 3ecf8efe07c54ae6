//! The reference prepaid account aggregate (stream `account`).
//!
//! Online charging reserves before use: `reserve` grants
//! `min(units, floor(available / unit_price))` units and holds their price; `debit` charges the
//! used units and frees the rest of the hold; `release` and `expire` free a hold; `direct-debit`
//! charges a one-shot event. `available = balance - held + overdraft_limit` never goes below
//! zero. Repeated command ids are answered by the host from the events they produced.
//!
//! Events are at schema version 2; version 1 logs are read through [`upcast`](Aggregate::upcast).

use tollgate_billing_model::account::{Account, AccountCommand, AccountEvent, Money, STREAM};
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
                let amount = positive(account, &amount, "amount")?;
                Ok(vec![AccountEvent::ToppedUp { amount }])
            }
            AccountCommand::Reserve { reservation_id, units, unit_price, validity_ms, offer, counters } => {
                if account.reservations.contains_key(&reservation_id) {
                    return Err(Rejection::business(
                        "duplicate-reservation-id",
                        format!("reservation `{reservation_id}` is already open"),
                    ));
                }
                if units == 0 {
                    return Err(Rejection::malformed("zero-amount", "`units` must be > 0"));
                }
                same_currency(account, &unit_price, "unit_price")?;
                let price = unit_price.minor_units;
                if price < 0 {
                    return Err(Rejection::malformed("negative-amount", "`unit_price` must be >= 0"));
                }
                let available = account.available();
                let affordable = if price == 0 { units } else { (available.max(0) / price) as u64 };
                let granted = units.min(affordable);
                if granted == 0 {
                    return Err(Rejection::business(
                        "insufficient-funds",
                        format!("available {available} {} does not cover one unit at {price}", account.currency),
                    ));
                }
                let held = i64::try_from(granted)
                    .ok()
                    .and_then(|g| g.checked_mul(price))
                    .ok_or_else(|| Rejection::malformed("amount-overflow", "units x unit_price overflows"))?;
                // Final unit: after this hold not even one more unit could be granted.
                let final_unit = price > 0 && available - held < price;
                Ok(vec![AccountEvent::Reserved {
                    reservation_id,
                    offer,
                    requested_units: units,
                    granted_units: granted,
                    unit_price: price,
                    held,
                    expires_at: envelope.time.saturating_add(validity_ms),
                    final_unit,
                    counters,
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
                let charged = used_units as i64 * r.unit_price;
                Ok(vec![AccountEvent::Debited { reservation_id, used_units, charged, released: r.held - charged }])
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
    Ok(vec![AccountEvent::Opened { currency, overdraft_limit }])
}

fn same_currency(account: &Account, money: &Money, field: &str) -> Result<(), Rejection> {
    if money.currency == account.currency {
        Ok(())
    } else {
        Err(Rejection::business(
            "currency-mismatch",
            format!("`{field}` is in {} but the account is in {}", money.currency, account.currency),
        ))
    }
}

fn positive(account: &Account, money: &Money, field: &str) -> Result<i64, Rejection> {
    same_currency(account, money, field)?;
    match money.minor_units {
        0 => Err(Rejection::malformed("zero-amount", format!("`{field}` must be > 0"))),
        n if n < 0 => Err(Rejection::malformed("negative-amount", format!("`{field}` must be > 0, got {n}"))),
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
