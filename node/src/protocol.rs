//! What a node is asked and what it answers, as JSON:
//!
//! ```text
//! {"execute": {"stream": "account", "key": "alice", "id": "c1", "command": {"top-up": {"amount": {"minor_units": 500, "currency": "EUR"}}}}}
//! {"admit": {"id": "r1", "subscriber": "alice", "offer": "voice", "units": 60}}
//! {"report": {"stream": "session", "key": "call-1", "id": "call-1/started", "event": {"started": {...}}}}
//! {"advance_ms": 30000}
//! ```
//!
//! ```
//! use tollgate_node::{Request, Reply};
//!
//! let request: Request = serde_json::from_str(r#"{"advance_ms": 30000}"#).unwrap();
//! assert_eq!(request, Request::AdvanceMs(30000));
//! assert_eq!(serde_json::to_string(&Reply::TimersFired(2)).unwrap(), r#"{"timers_fired":2}"#);
//! ```

use crate::view::{DecisionView, EventView};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The longest stream, key, id, subscriber, offer, country or correlation id, in bytes.
pub const MAX_NAME_BYTES: usize = 256;

/// The latest time `advance_ms` may move the clock to: 9999-12-31T23:59:59.999Z, in ms.
pub const MAX_CLOCK_MS: u64 = 253_402_300_799_999;

/// One request to a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Sends a command to the aggregate owning `stream`.
    Execute {
        /// The stream.
        stream: String,
        /// The aggregate's key.
        key: String,
        /// The command id (the idempotency key).
        id: String,
        /// The command, externally tagged: `"close"` or `{"top-up": {...}}`.
        command: Value,
    },
    /// Asks the admission policy whether a subscriber may use a service.
    Admit(Admission),
    /// Records a fact that happened outside (a session started, usage was metered).
    Report {
        /// The stream.
        stream: String,
        /// The key.
        key: String,
        /// The fact's id (its idempotency key).
        id: String,
        /// The event, externally tagged.
        event: Value,
        /// The request it belongs to (default: the key).
        correlation_id: Option<String>,
    },
    /// Moves the clock forward and fires the timers that became due.
    AdvanceMs(u64),
}

/// An admission request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admission {
    /// The request id (its idempotency key).
    pub id: String,
    /// The subscriber (account key).
    pub subscriber: String,
    /// The offer the usage is charged under.
    pub offer: String,
    /// Units requested.
    pub units: u64,
    /// The rating group (default 1).
    #[serde(default = "one")]
    pub rating_group: u32,
    /// Where the subscriber is, ISO 3166-1 alpha-2.
    pub country: Option<String>,
}

impl Admission {
    /// Refuses an admission whose names are empty, too long or hold control characters.
    pub fn check(&self) -> Result<(), InvalidField> {
        check_name("id", &self.id)?;
        check_name("subscriber", &self.subscriber)?;
        check_name("offer", &self.offer)?;
        self.country.as_deref().map_or(Ok(()), |c| check_name("country", c))
    }
}

fn one() -> u32 {
    1
}

/// A node's answer to a [`Request`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// The command was accepted with these events (none for a no-op).
    Accepted(Vec<EventView>),
    /// The command was rejected; nothing was recorded.
    Rejected {
        /// What kind of refusal: `business`, `malformed` or `unknown-command`.
        kind: String,
        /// The rejection code, e.g. `insufficient-funds`.
        code: String,
        /// Why, for people.
        message: String,
    },
    /// The fact was recorded as this event.
    Recorded(EventView),
    /// The clock moved; this many timers fired.
    TimersFired(usize),
    /// The command's id was committed before, for the same command: its original events,
    /// and nothing ran again (`{"accepted": [events], "repeat": true}`).
    #[serde(untagged)]
    Repeated(Repeated),
    /// The admission decision (`{"granted": ...}` or `{"denied": ...}`).
    #[serde(untagged)]
    Decision(DecisionView),
}

/// A command answered as a repeat of an id committed before.
///
/// ```
/// use tollgate_node::{Reply, protocol::Repeated};
///
/// let reply = Reply::Repeated(Repeated { accepted: vec![], repeat: true });
/// assert_eq!(serde_json::to_string(&reply).unwrap(), r#"{"accepted":[],"repeat":true}"#);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Repeated {
    /// The events the id was first accepted with.
    pub accepted: Vec<EventView>,
    /// Always `true`: tells a repeat from a first answer.
    pub repeat: bool,
}

/// Why a request was refused before anything ran: the field and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{field}` {problem}")]
pub struct InvalidField {
    /// The field, e.g. `key` or `command type`.
    pub field: String,
    /// What is wrong, e.g. `is empty`.
    pub problem: String,
}

fn invalid(field: &str, problem: String) -> InvalidField {
    InvalidField { field: field.into(), problem }
}

/// Refuses an empty name, one over [`MAX_NAME_BYTES`], or one with control characters.
pub fn check_name(field: &str, value: &str) -> Result<(), InvalidField> {
    if value.is_empty() {
        return Err(invalid(field, "is empty".into()));
    }
    if value.len() > MAX_NAME_BYTES {
        return Err(invalid(field, format!("is {} bytes long, over the limit of {MAX_NAME_BYTES}", value.len())));
    }
    if let Some(c) = value.chars().find(|c| c.is_control()) {
        return Err(invalid(field, format!("contains the control character {c:?}")));
    }
    Ok(())
}

/// Refuses a command or event that is not externally tagged: a bare type name (`"close"`) or
/// an object with exactly one key (`{"top-up": {...}}`).
pub fn check_tagged(field: &str, value: &Value) -> Result<(), InvalidField> {
    let name = match value {
        Value::String(name) => name,
        Value::Object(map) if map.len() == 1 => match map.keys().next() {
            Some(name) => name,
            None => return Err(invalid(field, "has no type".into())),
        },
        Value::Object(map) => {
            return Err(invalid(
                field,
                format!(
                    "is an object with {} keys; it must have exactly one, the {field} type (e.g. {{\"top-up\": {{...}}}})",
                    map.len()
                ),
            ));
        }
        other => {
            return Err(invalid(
                field,
                format!(
                    "is {}; it must be a {field} type name (\"close\") or an object with one key, the {field} type ({{\"top-up\": {{...}}}})",
                    kind_of(other)
                ),
            ));
        }
    };
    check_name(&format!("{field} type"), name)
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl Request {
    /// Refuses a request whose fields are out of range, before anything runs; `now_ms` is the
    /// node's clock (for `advance_ms`).
    pub fn check(&self, now_ms: u64) -> Result<(), InvalidField> {
        match self {
            Request::Execute { stream, key, id, command } => {
                check_name("stream", stream)?;
                check_name("key", key)?;
                check_name("id", id)?;
                check_tagged("command", command)
            }
            Request::Admit(a) => a.check(),
            Request::Report { stream, key, id, event, correlation_id } => {
                check_name("stream", stream)?;
                check_name("key", key)?;
                check_name("id", id)?;
                correlation_id.as_deref().map_or(Ok(()), |c| check_name("correlation_id", c))?;
                check_tagged("event", event)
            }
            Request::AdvanceMs(ms) => match now_ms.checked_add(*ms) {
                Some(to) if to <= MAX_CLOCK_MS => Ok(()),
                _ => Err(invalid(
                    "advance_ms",
                    format!("{ms} would move the clock from {now_ms} past {MAX_CLOCK_MS} ms (the year 9999)"),
                )),
            },
        }
    }
}
