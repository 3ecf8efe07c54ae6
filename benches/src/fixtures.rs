//! Compiled actors, account commands, states and event streams shared by the benches.

use std::path::PathBuf;
use tollgate_billing_model::account::{AccountCommand, AccountEvent, Counter, STREAM};
use tollgate_billing_model::pricing::PriceTerm;
use tollgate_host::aggregate as host;

/// Account every bench works on.
pub const KEY: &str = "alice";

/// Path of a compiled reference actor (e.g. `prepaid_account`); panics with the fix when it
/// has not been built.
pub fn actor(name: &str) -> PathBuf {
    let path = tollgate_host_test::fixtures::actor_path(name);
    assert!(path.is_file(), "{} is missing: run `cargo xtask build-actors` (or `cargo xtask bench`)", path.display());
    path
}

/// A host-side command envelope for the account stream.
pub fn command(command_id: &str, command: &AccountCommand, time: u64) -> host::Command {
    host::json_command(STREAM, KEY, command_id, command, time).expect("account commands encode")
}

/// The same envelope as the SDK (guest-side) type, for the native baseline.
pub fn native_command(c: &host::Command) -> tollgate_sdk::Command {
    tollgate_sdk::Command {
        stream: c.stream.clone(),
        key: c.key.clone(),
        command_type: c.command_type.clone(),
        content_type: c.content_type.clone(),
        payload: c.payload.clone(),
        command_id: c.command_id.clone(),
        correlation_id: c.correlation_id.clone(),
        causation_id: c.causation_id.clone(),
        time: c.time,
    }
}

/// The same event as the SDK (guest-side) type, for the native baseline.
pub fn native_event(e: &host::Event) -> tollgate_sdk::Event {
    tollgate_sdk::Event {
        stream: e.stream.clone(),
        key: e.key.clone(),
        event_type: e.event_type.clone(),
        schema_version: e.schema_version,
        content_type: e.content_type.clone(),
        payload: e.payload.clone(),
        sequence: e.sequence,
        time: e.time,
        command_id: e.command_id.clone(),
        correlation_id: e.correlation_id.clone(),
        causation_id: e.causation_id.clone(),
    }
}

/// Envelopes account events as host events with sequences from `first_sequence`.
pub fn events(typed: &[AccountEvent], first_sequence: u64) -> Vec<host::Event> {
    typed
        .iter()
        .enumerate()
        .map(|(i, event)| {
            let (event_type, payload) = tollgate_codec::encode(event).expect("account events encode");
            envelope(event_type, payload, first_sequence + i as u64)
        })
        .collect()
}

/// The envelope the store gives an encoded account event appended at `sequence`.
pub fn envelope(event_type: String, payload: Vec<u8>, sequence: u64) -> host::Event {
    host::Event {
        stream: STREAM.into(),
        key: KEY.into(),
        event_type,
        // The version prepaid-account writes (and its native baseline expects).
        schema_version: 2,
        content_type: tollgate_codec::JSON.into(),
        payload,
        sequence,
        time: 1_700_000_000_000 + sequence,
        command_id: format!("cmd-{sequence}"),
        correlation_id: format!("cmd-{sequence}"),
        causation_id: String::new(),
    }
}

/// Folds events natively into an encoded state (the same code and encoding as the component).
pub fn fold(state: Option<&[u8]>, events: &[host::Event]) -> Vec<u8> {
    let native = events.iter().map(native_event).collect();
    tollgate_sdk::aggregate::apply::<prepaid_account::PrepaidAccount>(state, native).expect("events fold")
}

fn counter(offer: &str, name: &str, value: u64) -> Counter {
    Counter { offer: offer.into(), name: name.into(), value }
}

fn reserved(id: &str, offer: &str, units: u64, unit_price: i64, counters: Vec<Counter>) -> AccountEvent {
    AccountEvent::Reserved {
        reservation_id: id.into(),
        offer: offer.into(),
        requested_units: units,
        granted_units: units,
        price: units as i64 * unit_price,
        held: units as i64 * unit_price,
        expires_at: 1_700_000_030_000,
        final_unit: false,
        // The form of events written before price plans: their counters are recorded on debit.
        plan: vec![],
        counters,
    }
}

/// The history of a busy prepaid subscriber: opened, topped up, tariff counters on four
/// offers (each set by a debited reservation), and eight open reservations across offers.
/// Its state encodes to about 1.5 KiB of JSON.
pub fn realistic_history() -> Vec<AccountEvent> {
    let offers = [("voice", 2), ("sms-bundle", 0), ("coffee", 100), ("video", 10)];
    let mut history = vec![
        AccountEvent::Opened { currency: "EUR".into(), overdraft_limit: 0 },
        AccountEvent::ToppedUp { amount: 5_000_000 },
    ];
    for (i, (offer, price)) in offers.iter().enumerate() {
        let id = format!("{offer}-done-{i}");
        let counters = vec![counter(offer, "uses", 3 + i as u64), counter(offer, "refills", i as u64)];
        history.push(reserved(&id, offer, 10, *price, counters));
        history.push(AccountEvent::Debited {
            reservation_id: id,
            used_units: 7,
            charged: 7 * price,
            released: 3 * price,
        });
    }
    for i in 0..8 {
        let (offer, price) = offers[i % offers.len()];
        let id = format!("session-{i:04}-{offer}");
        history.push(reserved(&id, offer, 60, price, vec![counter(offer, "uses", 10 + i as u64)]));
    }
    history
}

/// The reserve command the warm benches send: 60 voice units at 2 cents, 30 s validity.
pub fn reserve(reservation_id: &str) -> AccountCommand {
    AccountCommand::Reserve {
        reservation_id: reservation_id.into(),
        units: 60,
        plan: vec![PriceTerm::PerUnit { offer: "voice".into(), unit_price: 2 }],
        currency: "EUR".into(),
        validity_ms: 30_000,
        offer: "voice".into(),
    }
}

/// Releases a reservation.
pub fn release(reservation_id: &str) -> AccountCommand {
    AccountCommand::Release { reservation_id: reservation_id.into() }
}

/// `n` account events of a long-lived subscriber: opened and topped up, then sessions that
/// reserve and, eight sessions later, are debited or released, with a top-up every 50
/// sessions. At most nine reservations are open at once, so the state stays small.
pub fn replay_history(n: usize) -> Vec<AccountEvent> {
    let mut history = vec![
        AccountEvent::Opened { currency: "EUR".into(), overdraft_limit: 0 },
        AccountEvent::ToppedUp { amount: 1_000_000 },
    ];
    let mut session = 0usize;
    while history.len() < n {
        let id = format!("s-{session}");
        history.push(reserved(&id, "voice", 60, 2, vec![counter("voice", "uses", session as u64 % 11)]));
        if session >= 8 {
            let old = format!("s-{}", session - 8);
            history.push(if session.is_multiple_of(2) {
                AccountEvent::Debited { reservation_id: old, used_units: 42, charged: 84, released: 36 }
            } else {
                AccountEvent::Released { reservation_id: old, released: 120 }
            });
        }
        if session % 50 == 49 {
            history.push(AccountEvent::ToppedUp { amount: 10_000 });
        }
        session += 1;
    }
    history.truncate(n);
    history
}
