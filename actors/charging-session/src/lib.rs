//! The charging-session process manager: turns what the network reports about a session into
//! account debits, re-reservations and expiries.
//!
//! A session's id is the correlation id of its events: the admission request id that made its
//! first reservation (stream `session` uses it as key). Reactions:
//! - account `reserved`: remember the account, offer, price plan and validity, and
//!   arm timer [`EXPIRY_TIMER`] at the earliest `expires_at` of the session's open
//!   reservations.
//! - session `started`: remember the account's currency (needed to re-reserve).
//! - session `usage-reported`: `debit` the used units (command id `<session>/debit/<reservation>`)
//!   and, when more units are requested, `reserve` them as reservation `<session>/<n>` (command
//!   id `<session>/reserve/<n>`), where `n` is the report's sequence in the session stream, at
//!   the same price plan and validity (the account prices it from its counters then).
//! - session `terminated`: `debit` the final usage (the account frees the rest of the hold).
//! - account `debited` / `released` / `expired`: forget the reservation; cancel the timer when
//!   no reservation is left open; finish when the session terminated (or its grant lapsed)
//!   and nothing is open or pending.
//! - timer `expiry`: `expire` every due reservation (command id `<session>/expire/<reservation>`).
//! - a command of the session that the account refused (`on_refused`): a refused `reserve`
//!   will not be granted, so the session stops waiting for it and ends once nothing is open; a refused
//!   `debit` or `expire` leaves nothing this session can charge on that reservation (it was
//!   closed already, or the account will not take the usage), so it is closed as lapsed. The
//!   refusal is logged as a warning, and the session finishes once nothing is open or pending.
//!
//! Command ids depend only on the session id and the triggering event, never on counters in
//! the state, so a redelivered event resends the same commands and the host's command-id
//! de-duplication keeps them from charging twice.

use serde::de::{Deserializer, EnumAccess, IgnoredAny, VariantAccess, Visitor};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use tollgate_billing_model::account::{self, AccountCommand, AccountEvent};
use tollgate_billing_model::pricing::PriceTerm;
use tollgate_billing_model::session::{self, SessionEvent};
use tollgate_sdk::codec::refusal::CommandRefused;
use tollgate_sdk::process_manager::Reaction;
use tollgate_sdk::types::TimestampMs;
use tollgate_sdk::{Event, ProcessManager, Rejection, Timer, codec};

/// The id of the session's one timer; it fires at the earliest due reservation.
pub const EXPIRY_TIMER: &str = "expiry";

/// Validity of re-reservations when the first reservation's cannot be told.
pub const DEFAULT_VALIDITY_MS: u64 = 60_000;

const LOG_CONTEXT: &str = "charging-session";

/// The charging-session process manager component.
pub struct ChargingSession;

tollgate_sdk::export_process_manager!(ChargingSession);

/// The type name of any event, whatever its payload. The payload is decoded by stream in
/// [`ChargingSession::react`], into the models' [`AccountEvent`] or [`SessionEvent`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventType(pub String);

impl<'de> Deserialize<'de> for EventType {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct AnyVariant;
        impl<'de> Visitor<'de> for AnyVariant {
            type Value = EventType;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an externally tagged event")
            }
            fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<EventType, A::Error> {
                let (name, variant): (String, _) = data.variant()?;
                variant.newtype_variant::<IgnoredAny>()?;
                Ok(EventType(name))
            }
        }
        deserializer.deserialize_enum("EventType", &[], AnyVariant)
    }
}

/// An open reservation of the session.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct OpenReservation {
    /// When its grant lapses.
    pub expires_at: u64,
    /// Whether `expire` was sent for it.
    pub expire_sent: bool,
}

/// The state of one charging session.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct Session {
    /// The session id (the correlation id of its events).
    pub id: String,
    /// The account charged.
    pub account: String,
    /// The offer used.
    pub offer: String,
    /// The account's currency, from `started` or `usage-reported`.
    pub currency: Option<String>,
    /// How the session's units are priced, from its first `reserved` (empty until then).
    #[serde(default)]
    pub plan: Vec<PriceTerm>,
    /// Validity of the session's reservations, from its first `reserved`.
    pub validity_ms: u64,
    /// The reservation the network uses now.
    pub current: Option<String>,
    /// Reservations reserved and not yet debited, released or expired.
    pub open: BTreeMap<String, OpenReservation>,
    /// A re-reservation asked for whose `reserved` was not seen yet.
    pub pending: Option<String>,
    /// The network terminated the session.
    pub terminated: bool,
    /// The last reservation closed was released or expired rather than debited.
    pub lapsed: bool,
    /// The account refused a re-reservation: no further grant comes, so the session ends once
    /// nothing is open.
    #[serde(default)]
    pub refused: bool,
    /// When the expiry timer is armed to fire, if it is.
    pub timer_at: Option<u64>,
}

impl Session {
    fn done(&self) -> bool {
        self.open.is_empty() && self.pending.is_none() && (self.terminated || self.lapsed || self.refused)
    }

    /// Arms, moves or cancels the expiry timer to fire at the earliest open reservation's
    /// `expires_at` (those already sent `expire` excluded).
    fn sync_timer(&mut self, reaction: &mut Reaction) {
        let next = self.open.iter().filter(|(_, r)| !r.expire_sent).min_by_key(|(_, r)| r.expires_at);
        let at = next.map(|(_, r)| r.expires_at);
        if at == self.timer_at {
            return;
        }
        match next {
            Some((id, r)) => reaction.set_timers.push(Timer {
                id: EXPIRY_TIMER.into(),
                fire_at: r.expires_at,
                payload: id.as_bytes().to_vec(),
            }),
            None => reaction.cancel_timers.push(EXPIRY_TIMER.into()),
        }
        self.timer_at = at;
    }

    fn close(&mut self, reservation_id: &str, lapsed: bool) {
        if self.open.remove(reservation_id).is_some() {
            self.lapsed = lapsed;
        }
        if self.current.as_deref() == Some(reservation_id) {
            self.current = None;
        }
    }
}

fn send(
    reaction: &mut Reaction,
    account: &str,
    command_id: String,
    command: &AccountCommand,
    cause: &Event,
) -> Result<(), Rejection> {
    reaction.send(account::STREAM, account, &command_id, command, cause).map(|_| ())
}

fn decode<T: serde::de::DeserializeOwned>(envelope: &Event) -> Result<T, Rejection> {
    codec::decode(&envelope.event_type, &envelope.payload).map_err(|e| {
        Rejection::malformed(
            "malformed-event",
            format!(
                "event `{}` #{} of {}/{} does not decode: {e}",
                envelope.event_type, envelope.sequence, envelope.stream, envelope.key
            ),
        )
    })
}

/// The session an event belongs to, or `None` for events the process does not wait for.
pub fn session_of(envelope: &Event) -> Option<String> {
    let id = match (envelope.stream.as_str(), envelope.event_type.as_str()) {
        (account::STREAM, "reserved" | "debited" | "released" | "expired") => &envelope.correlation_id,
        (session::STREAM, "started" | "usage-reported" | "terminated") => &envelope.key,
        _ => return None,
    };
    (!id.is_empty()).then(|| id.clone())
}

impl ProcessManager for ChargingSession {
    const SUBSCRIPTIONS: &'static [&'static str] = &[account::STREAM, session::STREAM];
    type State = Session;
    type Event = EventType;

    fn correlate(_event: &EventType, envelope: &Event) -> Option<String> {
        session_of(envelope)
    }

    fn react(state: &mut Session, _event: EventType, envelope: &Event) -> Result<Reaction, Rejection> {
        let mut reaction = Reaction::default();
        let Some(id) = session_of(envelope) else {
            // Not an event this process waits for: nothing to do (and nothing to keep if new).
            reaction.finished = state.id.is_empty();
            return Ok(reaction);
        };
        let fresh = state.id.is_empty();
        if fresh {
            state.id = id;
        }
        if envelope.stream == account::STREAM {
            match decode::<AccountEvent>(envelope)? {
                AccountEvent::Reserved { reservation_id, offer, plan, granted_units, held, expires_at, .. } => {
                    if state.account.is_empty() {
                        state.account = envelope.key.clone();
                    }
                    if state.offer.is_empty() {
                        state.offer = offer.clone();
                    }
                    if state.plan.is_empty() {
                        // A reservation made before price plans priced every unit alike.
                        state.plan = if plan.is_empty() {
                            let unit_price = held.checked_div(granted_units as i64).unwrap_or(0);
                            vec![PriceTerm::PerUnit { offer: offer.clone(), unit_price }]
                        } else {
                            plan
                        };
                        let validity = expires_at.saturating_sub(envelope.time);
                        state.validity_ms = if validity == 0 { DEFAULT_VALIDITY_MS } else { validity };
                    }
                    if state.pending.as_deref() == Some(reservation_id.as_str()) {
                        state.pending = None;
                    }
                    state.lapsed = false;
                    state.open.insert(reservation_id.clone(), OpenReservation { expires_at, expire_sent: false });
                    state.current = Some(reservation_id);
                }
                AccountEvent::Debited { reservation_id, .. } => {
                    if fresh {
                        // A debit of no session this process tracks.
                        reaction.finished = true;
                        return Ok(reaction);
                    }
                    state.close(&reservation_id, false);
                }
                AccountEvent::Released { reservation_id, .. } | AccountEvent::Expired { reservation_id, .. } => {
                    if fresh {
                        reaction.finished = true;
                        return Ok(reaction);
                    }
                    state.close(&reservation_id, true);
                }
                _ => {}
            }
        } else {
            match decode::<SessionEvent>(envelope)? {
                SessionEvent::Started { account, offer, currency } => {
                    state.account = account;
                    state.offer = offer;
                    state.currency = Some(currency);
                }
                SessionEvent::UsageReported { account, reservation_id, used_units, requested_units, currency } => {
                    if currency.is_some() {
                        state.currency = currency;
                    }
                    if state.account.is_empty() {
                        state.account = account.clone();
                    }
                    let debit = AccountCommand::Debit { reservation_id: reservation_id.clone(), used_units };
                    send(&mut reaction, &account, format!("{}/debit/{reservation_id}", state.id), &debit, envelope)?;
                    if requested_units > 0 {
                        match (state.plan.is_empty(), &state.currency) {
                            (false, Some(currency)) => {
                                let n = envelope.sequence;
                                let new_id = format!("{}/{n}", state.id);
                                let reserve = AccountCommand::Reserve {
                                    reservation_id: new_id.clone(),
                                    units: requested_units,
                                    plan: state.plan.clone(),
                                    currency: currency.clone(),
                                    validity_ms: state.validity_ms,
                                    offer: state.offer.clone(),
                                };
                                send(&mut reaction, &account, format!("{}/reserve/{n}", state.id), &reserve, envelope)?;
                                state.pending = Some(new_id);
                            }
                            (true, _) => tollgate_sdk::log::warn(
                                LOG_CONTEXT,
                                &format!("session `{}`: no reservation seen yet, cannot re-reserve", state.id),
                            ),
                            (_, None) => tollgate_sdk::log::warn(
                                LOG_CONTEXT,
                                &format!(
                                    "session `{}`: the account's currency is unknown, cannot re-reserve",
                                    state.id
                                ),
                            ),
                        }
                    }
                }
                SessionEvent::Terminated { account, reservation_id, used_units } => {
                    if state.account.is_empty() {
                        state.account = account.clone();
                    }
                    let debit = AccountCommand::Debit { reservation_id: reservation_id.clone(), used_units };
                    send(&mut reaction, &account, format!("{}/debit/{reservation_id}", state.id), &debit, envelope)?;
                    state.terminated = true;
                }
            }
        }
        state.sync_timer(&mut reaction);
        // Done means nothing is open, so `sync_timer` has cancelled the timer already.
        reaction.finished = state.done();
        Ok(reaction)
    }

    fn on_timer(state: &mut Session, timer: &Timer, now: TimestampMs) -> Result<Reaction, Rejection> {
        let mut reaction = Reaction::default();
        if state.id.is_empty() {
            reaction.finished = true;
            return Ok(reaction);
        }
        if timer.id != EXPIRY_TIMER {
            return Ok(reaction);
        }
        state.timer_at = None;
        // Commands caused by the timer, correlated with the session, issued at `now`.
        let cause = Event {
            stream: session::STREAM.into(),
            key: state.id.clone(),
            event_type: String::new(),
            schema_version: 1,
            content_type: codec::JSON.into(),
            payload: Vec::new(),
            sequence: 0,
            time: now,
            command_id: format!("{}/timer/{EXPIRY_TIMER}", state.id),
            correlation_id: state.id.clone(),
            causation_id: String::new(),
        };
        let account = state.account.clone();
        for (reservation_id, r) in state.open.iter_mut().filter(|(_, r)| !r.expire_sent && r.expires_at <= now) {
            let expire = AccountCommand::Expire { reservation_id: reservation_id.clone() };
            send(&mut reaction, &account, format!("{}/expire/{reservation_id}", state.id), &expire, &cause)?;
            r.expire_sent = true;
        }
        state.sync_timer(&mut reaction);
        Ok(reaction)
    }

    fn on_refused(state: &mut Session, refused: &CommandRefused, _envelope: &Event) -> Result<Reaction, Rejection> {
        let mut reaction = Reaction::default();
        if state.id.is_empty() {
            // The session finished before the refusal came: nothing is left to correct.
            reaction.finished = true;
            return Ok(reaction);
        }
        tollgate_sdk::log::warn(
            LOG_CONTEXT,
            &format!(
                "session `{}`: `{}` {} was refused: {}: {}",
                state.id, refused.command_type, refused.command_id, refused.code, refused.message
            ),
        );
        match refused.command::<AccountCommand>() {
            Ok(AccountCommand::Reserve { reservation_id, .. })
                if state.pending.as_deref() == Some(reservation_id.as_str()) =>
            {
                state.pending = None;
                state.refused = true;
            }
            Ok(AccountCommand::Debit { reservation_id, .. } | AccountCommand::Expire { reservation_id }) => {
                state.close(&reservation_id, true);
            }
            // The session sends no other command; one it cannot read changes nothing.
            _ => {}
        }
        state.sync_timer(&mut reaction);
        reaction.finished = state.done();
        Ok(reaction)
    }
}

#[cfg(test)]
mod tests;
