//! The event-sourcing envelopes every actor kind shares, with constructors for rejections.

pub use crate::bindings::aggregate::tollgate::eventsourcing::types::{
    AggregateInfo, Command, Event, EventDraft, Rejection, RejectionKind, Timer, TimestampMs,
};

impl Rejection {
    /// A business rule said no, e.g. `Rejection::business("insufficient-funds", "…")`.
    ///
    /// ```
    /// let r = tollgate_sdk::Rejection::business("insufficient-funds", "available 5 EUR cents < 7");
    /// assert_eq!(r.kind, tollgate_sdk::RejectionKind::Business);
    /// ```
    pub fn business(code: impl Into<String>, message: impl Into<String>) -> Self {
        Rejection { kind: RejectionKind::Business, code: code.into(), message: message.into() }
    }

    /// An input could not be decoded or a field is out of range.
    ///
    /// ```
    /// let r = tollgate_sdk::Rejection::malformed("zero-amount", "`amount` must be > 0");
    /// assert_eq!(r.code, "zero-amount");
    /// ```
    pub fn malformed(code: impl Into<String>, message: impl Into<String>) -> Self {
        Rejection { kind: RejectionKind::Malformed, code: code.into(), message: message.into() }
    }

    /// The actor does not know this command type.
    ///
    /// ```
    /// let r = tollgate_sdk::Rejection::unknown_command("withdraw");
    /// assert_eq!(r.code, "unknown-command");
    /// ```
    pub fn unknown_command(command_type: &str) -> Self {
        Rejection {
            kind: RejectionKind::UnknownCommand,
            code: "unknown-command".into(),
            message: format!("unknown command type `{command_type}`"),
        }
    }
}

impl Event {
    /// Builds a JSON event envelope from a typed event (a serde enum): time 0, no command,
    /// correlation or causation ids, and the next sequence of its stream key on this thread
    /// (1, 2, 3, ... in the order they are made), so events made one after another for a test
    /// form a history as the host numbers it. Set other fields with struct update syntax.
    ///
    /// ```
    /// #[derive(serde::Serialize)]
    /// #[serde(rename_all = "kebab-case")]
    /// enum Ev { ToppedUp { amount: i64 } }
    /// let e = tollgate_sdk::Event::new("account", "alice", &Ev::ToppedUp { amount: 5 }).unwrap();
    /// assert_eq!((e.event_type.as_str(), e.sequence), ("topped-up", 1));
    /// let next = tollgate_sdk::Event::new("account", "alice", &Ev::ToppedUp { amount: 7 }).unwrap();
    /// assert_eq!(next.sequence, 2);
    /// let bob = tollgate_sdk::Event::new("account", "bob", &Ev::ToppedUp { amount: 1 }).unwrap();
    /// assert_eq!(bob.sequence, 1, "each key counts on its own");
    /// let later = tollgate_sdk::Event { time: 60_000, ..next };
    /// ```
    pub fn new<T: serde::Serialize>(stream: &str, key: &str, event: &T) -> Result<Self, Rejection> {
        let (event_type, payload) =
            crate::codec::encode(event).map_err(|e| Rejection::malformed("encode-event", e.to_string()))?;
        Ok(Event {
            stream: stream.into(),
            key: key.into(),
            event_type,
            schema_version: 1,
            content_type: crate::codec::JSON.into(),
            payload,
            sequence: next_sequence(stream, key),
            time: 0,
            command_id: String::new(),
            correlation_id: String::new(),
            causation_id: String::new(),
        })
    }
}

std::thread_local! {
    /// The last sequence [`Event::new`] gave each (stream, key) on this thread.
    static SEQUENCES: std::cell::RefCell<std::collections::BTreeMap<(String, String), u64>> =
        const { std::cell::RefCell::new(std::collections::BTreeMap::new()) };
}

fn next_sequence(stream: &str, key: &str) -> u64 {
    SEQUENCES.with_borrow_mut(|s| {
        let n = s.entry((stream.into(), key.into())).or_default();
        *n = n.saturating_add(1);
        *n
    })
}

impl Command {
    /// Builds a JSON command envelope from a typed command (a serde enum).
    ///
    /// ```
    /// #[derive(serde::Serialize)]
    /// #[serde(rename_all = "kebab-case")]
    /// enum Cmd { TopUp { amount: i64 } }
    /// let c = tollgate_sdk::Command::new("account", "alice", "cmd-1", &Cmd::TopUp { amount: 5 }).unwrap();
    /// assert_eq!(c.command_type, "top-up");
    /// ```
    pub fn new<T: serde::Serialize>(stream: &str, key: &str, command_id: &str, command: &T) -> Result<Self, Rejection> {
        let (command_type, payload) =
            crate::codec::encode(command).map_err(|e| Rejection::malformed("encode-command", e.to_string()))?;
        Ok(Command {
            stream: stream.into(),
            key: key.into(),
            command_type,
            content_type: crate::codec::JSON.into(),
            payload,
            command_id: command_id.into(),
            correlation_id: command_id.into(),
            causation_id: String::new(),
            time: 0,
        })
    }
}
