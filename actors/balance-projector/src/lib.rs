//! The reference balance projector: one [`BalanceView`] per account in key-value bucket
//! `balances`, key = account id.
//!
//! Every account event adds a ledger line (the last [`LEDGER_LINES`] are kept) with its signed
//! effect on `available` and `available` afterwards, so `ledger.last().effective_balance == available ==
//! balance - held + overdraft_limit` always holds. Projection is idempotent per event: an
//! event whose sequence is not above the last ledger line's is skipped, so a redelivered
//! batch changes nothing twice.

use tollgate_billing_model::account::{AccountEvent, STREAM};
use tollgate_billing_model::balance::{BUCKET, BalanceView, LEDGER_LINES, LedgerLine};
use tollgate_sdk::keyvalue::Bucket;
use tollgate_sdk::{Event, Projector, Rejection};

/// The balance projector component.
pub struct BalanceProjector;

tollgate_sdk::export_projector!(BalanceProjector);

impl Projector for BalanceProjector {
    const SUBSCRIPTIONS: &'static [&'static str] = &[STREAM];
    type Event = AccountEvent;

    fn project(event: AccountEvent, envelope: &Event) -> Result<(), Rejection> {
        if envelope.stream != STREAM {
            return Ok(());
        }
        let bucket = Bucket::open(BUCKET)?;
        let mut view: BalanceView = bucket.get_json(&envelope.key)?.unwrap_or_default();
        if apply(&mut view, event, envelope.sequence, &envelope.event_type)? {
            bucket.set_json(&envelope.key, &view)?;
        }
        Ok(())
    }
}

fn overflow(sequence: u64, event_type: &str) -> Rejection {
    Rejection::malformed("amount-overflow", format!("event `{event_type}` #{sequence} overflows the balance"))
}

/// Folds one account event into `view`. Returns `Ok(false)` (and changes nothing) when the
/// event was projected already, i.e. `sequence <= view.last_sequence()`.
///
/// ```
/// use tollgate_billing_model::{account::AccountEvent, balance::BalanceView};
/// let mut view = BalanceView::default();
/// balance_projector::apply(&mut view, AccountEvent::ToppedUp { amount: 500 }, 1, "topped-up").unwrap();
/// assert_eq!((view.balance, view.available, view.ledger[0].effective_balance), (500, 500, 500));
/// ```
pub fn apply(view: &mut BalanceView, event: AccountEvent, sequence: u64, event_type: &str) -> Result<bool, Rejection> {
    if sequence <= view.last_sequence() {
        return Ok(false);
    }
    let overflow = || overflow(sequence, event_type);
    let before = view.available;
    match event {
        AccountEvent::Opened { currency, overdraft_limit } => {
            view.currency = currency;
            view.overdraft_limit = overdraft_limit;
        }
        AccountEvent::ToppedUp { amount } | AccountEvent::Refunded { amount, .. } => {
            view.balance = view.balance.checked_add(amount).ok_or_else(overflow)?;
        }
        AccountEvent::Reserved { reservation_id, held, .. } => {
            let previous = view.holds.insert(reservation_id, held).unwrap_or(0);
            view.held = view.held.checked_sub(previous).and_then(|h| h.checked_add(held)).ok_or_else(overflow)?;
        }
        AccountEvent::Debited { reservation_id, charged, released, .. } => {
            // The hold is what was reserved; the event's charged + released says the same.
            let hold = match view.holds.remove(&reservation_id) {
                Some(hold) => hold,
                None => charged.checked_add(released).ok_or_else(overflow)?,
            };
            view.held = view.held.checked_sub(hold).ok_or_else(overflow)?;
            view.balance = view.balance.checked_sub(charged).ok_or_else(overflow)?;
        }
        AccountEvent::Released { reservation_id, released } | AccountEvent::Expired { reservation_id, released } => {
            let hold = view.holds.remove(&reservation_id).unwrap_or(released);
            view.held = view.held.checked_sub(hold).ok_or_else(overflow)?;
        }
        AccountEvent::DirectDebited { amount, .. } | AccountEvent::UsageCharged { charged: amount, .. } => {
            view.balance = view.balance.checked_sub(amount).ok_or_else(overflow)?;
        }
    }
    view.available =
        view.balance.checked_sub(view.held).and_then(|a| a.checked_add(view.overdraft_limit)).ok_or_else(overflow)?;
    let amount = view.available.checked_sub(before).ok_or_else(overflow)?;
    view.ledger.push(LedgerLine { sequence, event_type: event_type.into(), amount, effective_balance: view.available });
    if view.ledger.len() > LEDGER_LINES {
        view.ledger.drain(..view.ledger.len() - LEDGER_LINES);
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reserved(id: &str, held: i64) -> AccountEvent {
        AccountEvent::Reserved {
            reservation_id: id.into(),
            offer: "voice".into(),
            requested_units: 10,
            granted_units: 10,
            price: held,
            held,
            expires_at: 60_000,
            final_unit: false,
            plan: vec![tollgate_billing_model::pricing::PriceTerm::PerUnit {
                offer: "voice".into(),
                unit_price: held / 10,
            }],
            counters: vec![],
        }
    }

    fn project_all(events: Vec<(&str, AccountEvent)>) -> BalanceView {
        let mut view = BalanceView::default();
        for (i, (ty, event)) in events.into_iter().enumerate() {
            assert!(apply(&mut view, event, i as u64 + 1, ty).unwrap());
            view.check().unwrap();
        }
        view
    }

    #[test]
    fn follows_an_account_through_reserve_debit_release_expiry_and_refund() {
        let view = project_all(vec![
            ("opened", AccountEvent::Opened { currency: "EUR".into(), overdraft_limit: 50 }),
            ("topped-up", AccountEvent::ToppedUp { amount: 1000 }),
            ("reserved", reserved("r1", 200)),
            ("reserved", reserved("r2", 100)),
            (
                "debited",
                AccountEvent::Debited { reservation_id: "r1".into(), used_units: 3, charged: 60, released: 140 },
            ),
            ("reserved", reserved("r3", 300)),
            ("released", AccountEvent::Released { reservation_id: "r2".into(), released: 100 }),
            ("direct-debited", AccountEvent::DirectDebited { amount: 40, description: "sms".into() }),
        ]);
        assert_eq!(view.currency, "EUR");
        assert_eq!((view.balance, view.held, view.overdraft_limit), (900, 300, 50));
        assert_eq!(view.available, 650);
        assert_eq!(view.holds.keys().collect::<Vec<_>>(), ["r3"]);
        let amounts: Vec<i64> = view.ledger.iter().map(|l| l.amount).collect();
        assert_eq!(amounts, [50, 1000, -200, -100, 140, -300, 100, -40]);
        assert_eq!(view.ledger[4].event_type, "debited");

        let mut view = view;
        apply(&mut view, AccountEvent::Expired { reservation_id: "r3".into(), released: 300 }, 9, "expired").unwrap();
        view.check().unwrap();
        assert_eq!((view.held, view.available, view.ledger.last().unwrap().amount), (0, 950, 300));
        let refund = AccountEvent::Refunded { amount: 40, reason: "sms refused".into() };
        apply(&mut view, refund, 10, "refunded").unwrap();
        view.check().unwrap();
        assert_eq!((view.balance, view.available, view.ledger.last().unwrap().amount), (940, 990, 40));
    }

    #[test]
    fn skips_events_already_projected() {
        let mut view = project_all(vec![
            ("opened", AccountEvent::Opened { currency: "EUR".into(), overdraft_limit: 0 }),
            ("topped-up", AccountEvent::ToppedUp { amount: 100 }),
        ]);
        let before = view.clone();
        assert!(!apply(&mut view, AccountEvent::ToppedUp { amount: 100 }, 2, "topped-up").unwrap());
        assert!(!apply(&mut view, AccountEvent::ToppedUp { amount: 100 }, 1, "topped-up").unwrap());
        assert_eq!(view, before);
        assert!(apply(&mut view, AccountEvent::ToppedUp { amount: 1 }, 3, "topped-up").unwrap());
        assert_eq!(view.balance, 101);
    }

    #[test]
    fn the_ledger_keeps_the_latest_lines_and_still_skips_repeats() {
        let mut view = BalanceView::default();
        for sequence in 1..=150 {
            assert!(apply(&mut view, AccountEvent::ToppedUp { amount: 1 }, sequence, "topped-up").unwrap());
        }
        assert_eq!(view.ledger.len(), LEDGER_LINES);
        assert_eq!((view.ledger[0].sequence, view.last_sequence(), view.balance), (51, 150, 150));
        assert!(!apply(&mut view, AccountEvent::ToppedUp { amount: 1 }, 150, "topped-up").unwrap());
    }

    #[test]
    fn overflow_is_a_rejection() {
        let mut view = project_all(vec![("topped-up", AccountEvent::ToppedUp { amount: i64::MAX })]);
        let err = apply(&mut view, AccountEvent::ToppedUp { amount: 1 }, 2, "topped-up").unwrap_err();
        assert_eq!(err.code, "amount-overflow");
        assert_eq!(view.ledger.len(), 1);
    }

    #[test]
    fn the_view_decodes_from_the_documented_json() {
        let view = project_all(vec![("reserved", reserved("r1", 20))]);
        let json = serde_json_shape(&view);
        assert!(json.contains(r#""holds":{"r1":20}"#), "{json}");
        assert!(json.contains(r#""effective_balance":-20"#), "{json}");
    }

    fn serde_json_shape(view: &BalanceView) -> String {
        String::from_utf8(tollgate_sdk::codec::to_json(view).unwrap()).unwrap()
    }
}
