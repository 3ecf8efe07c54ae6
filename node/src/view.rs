//! The JSON shapes of events, commands and decisions, as replies, `tollgate log` and scenario
//! diffs show them. A payload that is JSON is shown as JSON, anything else as text.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tollgate_host::aggregate::{Command, Event};
use tollgate_host::bindings::rater::tollgate::billing::types::{Counter, Grant, Money, PriceLine};
use tollgate_runtime::{Decision, FinalUnitAction};

/// `bytes` as JSON when they are JSON, else as text (or a note saying they are not UTF-8).
///
/// ```
/// use tollgate_node::view::json_or_text;
///
/// assert_eq!(json_or_text(br#"{"a":1}"#), serde_json::json!({ "a": 1 }));
/// assert_eq!(json_or_text(b"plain"), serde_json::json!("plain"));
/// ```
pub fn json_or_text(bytes: &[u8]) -> Value {
    match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(_) => match std::str::from_utf8(bytes) {
            Ok(s) => Value::String(s.to_string()),
            Err(_) => Value::String(format!("<{} bytes, not UTF-8>", bytes.len())),
        },
    }
}

/// An event as a node shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventView {
    /// The event type, e.g. `topped-up`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The payload (JSON, or text).
    pub payload: Value,
    /// The stream.
    pub stream: String,
    /// The key (aggregate id).
    pub key: String,
    /// 1-based position in the key's stream.
    pub sequence: u64,
    /// When it was recorded, ms since the epoch.
    pub time: u64,
    /// The command that caused it.
    pub command_id: String,
    /// The request it belongs to.
    pub correlation_id: String,
    /// The message that directly caused it.
    pub causation_id: String,
    /// The payload's schema version.
    pub schema_version: u32,
}

impl From<&Event> for EventView {
    fn from(e: &Event) -> Self {
        EventView {
            event_type: e.event_type.clone(),
            payload: json_or_text(&e.payload),
            stream: e.stream.clone(),
            key: e.key.clone(),
            sequence: e.sequence,
            time: e.time,
            command_id: e.command_id.clone(),
            correlation_id: e.correlation_id.clone(),
            causation_id: e.causation_id.clone(),
            schema_version: e.schema_version,
        }
    }
}

/// A command as a node shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandView {
    /// The command type, e.g. `top-up`.
    #[serde(rename = "type")]
    pub command_type: String,
    /// The payload (JSON, or text).
    pub payload: Value,
    /// The stream of the aggregate it goes to.
    pub stream: String,
    /// The aggregate's key.
    pub key: String,
    /// When it was sent, ms since the epoch.
    pub time: u64,
    /// Its id (the idempotency key).
    pub command_id: String,
    /// The request it belongs to.
    pub correlation_id: String,
    /// The message that caused it.
    pub causation_id: String,
}

impl From<&Command> for CommandView {
    fn from(c: &Command) -> Self {
        CommandView {
            command_type: c.command_type.clone(),
            payload: json_or_text(&c.payload),
            stream: c.stream.clone(),
            key: c.key.clone(),
            time: c.time,
            command_id: c.command_id.clone(),
            correlation_id: c.correlation_id.clone(),
            causation_id: c.causation_id.clone(),
        }
    }
}

/// An amount of money.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoneyView {
    /// Integer minor units (cents for EUR).
    pub minor_units: i64,
    /// ISO 4217 code.
    pub currency: String,
}

impl From<&Money> for MoneyView {
    fn from(m: &Money) -> Self {
        MoneyView { minor_units: m.minor_units, currency: m.currency.clone() }
    }
}

/// A usage counter of an offer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterView {
    /// The offer it counts for.
    pub offer: String,
    /// Its name.
    pub name: String,
    /// Its value.
    pub value: u64,
}

impl From<&Counter> for CounterView {
    fn from(c: &Counter) -> Self {
        CounterView { offer: c.offer.clone(), name: c.name.clone(), value: c.value }
    }
}

/// One line of a price.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriceLineView {
    /// The offer it is priced under.
    pub offer: String,
    /// What it is for.
    pub description: String,
    /// The units it prices.
    pub units: u64,
    /// Its amount.
    pub amount: MoneyView,
}

impl From<&PriceLine> for PriceLineView {
    fn from(l: &PriceLine) -> Self {
        PriceLineView {
            offer: l.offer.clone(),
            description: l.description.clone(),
            units: l.units,
            amount: (&l.amount).into(),
        }
    }
}

/// What the network does when the final granted units are used up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FinalUnitView {
    /// End the service.
    Terminate,
    /// Redirect the subscriber to this address.
    Redirect(String),
    /// Allow only these filters.
    RestrictAccess(Vec<String>),
}

/// Units granted against a reservation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantView {
    /// The reservation holding the money.
    pub reservation_id: String,
    /// Units the subscriber may use.
    pub granted_units: u64,
    /// What the granted units cost.
    pub price: MoneyView,
    /// Counters after the grant.
    pub counters: Vec<CounterView>,
    /// Money held for it.
    pub held: MoneyView,
    /// When the hold lapses, ms since the epoch.
    pub expires_at: u64,
    /// Set when these are the last units.
    pub final_unit: Option<FinalUnitView>,
}

impl From<&Grant> for GrantView {
    fn from(g: &Grant) -> Self {
        GrantView {
            reservation_id: g.reservation_id.clone(),
            granted_units: g.granted_units,
            price: (&g.price).into(),
            counters: g.counters.iter().map(Into::into).collect(),
            held: (&g.held).into(),
            expires_at: g.expires_at,
            final_unit: g.final_unit.as_ref().map(|f| match f {
                FinalUnitAction::Terminate => FinalUnitView::Terminate,
                FinalUnitAction::Redirect(to) => FinalUnitView::Redirect(to.clone()),
                FinalUnitAction::RestrictAccess(filters) => FinalUnitView::RestrictAccess(filters.clone()),
            }),
        }
    }
}

/// An admission decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecisionView {
    /// The subscriber may use the granted units.
    Granted {
        /// The grant.
        grant: GrantView,
        /// The price of the granted units.
        price: MoneyView,
        /// How the price was made up.
        lines: Vec<PriceLineView>,
    },
    /// The subscriber may not.
    Denied {
        /// The result code, e.g. `quota-limit-reached`.
        code: String,
        /// Why, for people.
        message: String,
    },
}

impl From<&Decision> for DecisionView {
    fn from(d: &Decision) -> Self {
        match d {
            Decision::Granted(g) => DecisionView::Granted {
                grant: (&g.grant).into(),
                price: (&g.price).into(),
                lines: g.lines.iter().map(Into::into).collect(),
            },
            Decision::Denied(d) => DecisionView::Denied {
                code: tollgate_runtime::result_code_name(d.code).into(),
                message: d.message.clone(),
            },
        }
    }
}

/// `value` as a JSON value; the views above always encode.
pub fn to_value(value: &impl Serialize) -> Value {
    serde_json::to_value(value).unwrap_or_else(|e| Value::String(format!("<not encodable: {e}>")))
}
