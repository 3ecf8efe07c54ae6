//! Outstanding grant exposure: the money open reservations hold, over every account in the
//! store, by currency; and the usage charged that the accounts could not pay. A grant this node answered is money the subscriber may still spend;
//! an operator watches what that adds up to. The server folds the account stream from the log
//! itself (the accounts' own events, whichever runtime or process wrote them), a page per tick,
//! so a restart or a large log never delays readiness.

use std::collections::{BTreeMap, HashMap};
use tollgate_billing_model::account::{self, Account, AccountEvent};
use tollgate_runtime::quota::past_margin;
use tollgate_runtime::{Journal, RuntimeError};

/// Events read from the log per [`Exposure::catch_up`] call.
pub(crate) const PAGE: usize = 4096;

/// What open reservations hold in one currency.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Held {
    /// Money held, in minor units. Each account's hold is within the billing model's bounds;
    /// the sum over accounts is kept in i128, so it never wraps.
    pub(crate) minor_units: i128,
    /// Open reservations.
    pub(crate) grants: u64,
    /// Usage charged that the money available did not cover (every `usage-charged` event's
    /// `unpaid`), in minor units.
    pub(crate) unpaid: i128,
}

/// The accounts folded so far and their totals.
#[derive(Debug, Default)]
pub(crate) struct Exposure {
    /// The next log position to fold.
    next: u64,
    accounts: HashMap<String, Account>,
    by_currency: BTreeMap<String, Held>,
    /// Account events that did not decode as the billing model's (another schema, damage):
    /// skipped, and counted so that a gap in the figure is visible.
    undecodable: u64,
}

impl Exposure {
    /// Folds at most one page of the events appended since the last call.
    pub(crate) fn catch_up(&mut self, journal: &Journal) -> Result<(), RuntimeError> {
        let page = journal.run("read the log for grant exposure", journal.store().read_all(self.next.max(1), PAGE))?;
        for event in page {
            self.next = event.position.saturating_add(1);
            if event.stream != account::STREAM {
                continue;
            }
            match tollgate_codec::decode::<AccountEvent>(&event.event_type, &event.payload) {
                Ok(decoded) => self.fold(event.key, decoded),
                Err(_) => self.undecodable += 1,
            }
        }
        Ok(())
    }

    fn fold(&mut self, key: String, event: AccountEvent) {
        let account = self.accounts.entry(key).or_default();
        if let AccountEvent::UsageCharged { unpaid, .. } = &event {
            self.by_currency.entry(account.currency.clone()).or_default().unpaid += i128::from(*unpaid);
        }
        let before = (account.currency.clone(), account.held, account.reservations.len());
        account.apply(event);
        let (currency, held, grants) = before;
        let was = self.by_currency.entry(currency).or_default();
        was.minor_units -= i128::from(held);
        was.grants = was.grants.saturating_sub(grants as u64);
        let now = self.by_currency.entry(account.currency.clone()).or_default();
        now.minor_units += i128::from(account.held);
        now.grants = now.grants.saturating_add(account.reservations.len() as u64);
    }

    /// `(account, reservation)` of every open grant whose validity ended more than `margin_ms`
    /// before `now` (as folded so far).
    pub(crate) fn due(&self, now: u64, margin_ms: u64) -> Vec<(String, String)> {
        let mut due = Vec::new();
        for (key, account) in &self.accounts {
            for (id, r) in &account.reservations {
                if past_margin(r.expires_at, margin_ms, now) {
                    due.push((key.clone(), id.clone()));
                }
            }
        }
        due
    }

    /// Held money and open grants by currency (an account not yet opened counts under "").
    pub(crate) fn by_currency(&self) -> &BTreeMap<String, Held> {
        &self.by_currency
    }

    /// Account events skipped because they did not decode.
    pub(crate) fn undecodable(&self) -> u64 {
        self.undecodable
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use tollgate_billing_model::account::MAX_MONEY;
    use tollgate_store::{ExpectedVersion, NewEvent};

    fn new_event(command_id: &str, event_type: &str, payload: Vec<u8>) -> NewEvent {
        NewEvent {
            event_type: event_type.into(),
            schema_version: 1,
            content_type: "application/json".into(),
            payload,
            command_id: command_id.into(),
            command_digest: Vec::new(),
            correlation_id: String::new(),
            causation_id: String::new(),
            time_ms: 0,
        }
    }

    fn event(command_id: &str, event: &AccountEvent) -> NewEvent {
        let (event_type, payload) = tollgate_codec::encode(event).unwrap();
        new_event(command_id, &event_type, payload)
    }

    fn reserved(id: &str, held: i64) -> AccountEvent {
        AccountEvent::Reserved {
            reservation_id: id.into(),
            offer: "voice".into(),
            requested_units: 1,
            granted_units: 1,
            price: held,
            held,
            expires_at: 0,
            final_unit: false,
            plan: Vec::new(),
            counters: Vec::new(),
        }
    }

    fn opened(currency: &str) -> AccountEvent {
        AccountEvent::Opened { currency: currency.into(), overdraft_limit: 0 }
    }

    #[test]
    fn holds_are_summed_by_currency_as_grants_open_and_close_even_past_i64() {
        let journal = Journal::ephemeral().unwrap();
        let append = |stream: &str, key: &str, events: Vec<NewEvent>| {
            journal.append(stream, key, ExpectedVersion::Any, events).unwrap();
        };
        // A hundred holds of the most an account may hold: past i64 together.
        let keys: Vec<String> = (0..100).map(|k| format!("k{k}")).collect();
        for key in &keys {
            append(account::STREAM, key, vec![event("open", &opened("EUR"))]);
            append(account::STREAM, key, vec![event("r1", &reserved("r1", MAX_MONEY))]);
        }
        append(account::STREAM, "usd", vec![event("open", &opened("USD"))]);
        append(account::STREAM, "usd", vec![event("r1", &reserved("r1", 7))]);
        append(account::STREAM, "x", vec![new_event("bad", "reserved", b"{}".to_vec())]);
        append("other", "a", vec![event("other", &reserved("r9", 100))]);

        let mut exposure = Exposure::default();
        exposure.catch_up(&journal).unwrap();
        let most = i128::from(MAX_MONEY);
        assert_eq!(exposure.by_currency()["EUR"], Held { minor_units: 100 * most, grants: 100, unpaid: 0 });
        assert!(100 * most > i128::from(i64::MAX));
        assert_eq!(exposure.by_currency()["USD"], Held { minor_units: 7, grants: 1, unpaid: 0 });
        assert_eq!(exposure.undecodable(), 1);

        // A release, an expiry and a debit close their grants; a second catch-up folds nothing twice.
        append(
            account::STREAM,
            "k0",
            vec![event("rel", &AccountEvent::Released { reservation_id: "r1".into(), released: MAX_MONEY })],
        );
        append(
            account::STREAM,
            "k1",
            vec![event("exp", &AccountEvent::Expired { reservation_id: "r1".into(), released: MAX_MONEY })],
        );
        let debited = AccountEvent::Debited { reservation_id: "r1".into(), used_units: 1, charged: 7, released: 0 };
        append(account::STREAM, "usd", vec![event("deb", &debited)]);
        exposure.catch_up(&journal).unwrap();
        exposure.catch_up(&journal).unwrap();
        assert_eq!(exposure.by_currency()["EUR"], Held { minor_units: 98 * most, grants: 98, unpaid: 0 });
        assert_eq!(exposure.by_currency()["USD"], Held { minor_units: 0, grants: 0, unpaid: 0 });

        // Usage no money covered is summed as unpaid, past i64 too.
        for key in &keys[..3] {
            let late =
                AccountEvent::UsageCharged { reservation_id: "r1".into(), units: 9, charged: 5, unpaid: i64::MAX };
            append(account::STREAM, key, vec![event("late", &late)]);
        }
        exposure.catch_up(&journal).unwrap();
        assert_eq!(exposure.by_currency()["EUR"].unpaid, 3 * i128::from(i64::MAX));
    }
}
