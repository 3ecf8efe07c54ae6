//! Aggregates: decide (`handle`) and evolve (`apply`), both pure.
//!
//! Implement [`Aggregate`] with typed state, commands and events, then export it with
//! [`export_aggregate!`](crate::export_aggregate). The free functions here are what the
//! component runs, encoding included; natively they are the same code, so an actor's logic
//! can be tested and benchmarked without a host.

use crate::codec::{self, JSON};
use crate::types::{AggregateInfo, Command, Event, EventDraft, Rejection};
use serde::{Serialize, de::DeserializeOwned};
use std::marker::PhantomData;

/// An event-sourced aggregate with typed state, commands and events.
///
/// Commands and events are externally tagged serde enums: the variant name is the envelope's
/// `command-type` / `event-type`, its content the JSON payload.
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use tollgate_sdk::{Aggregate, Command, Rejection};
///
/// #[derive(Default, Serialize, Deserialize)]
/// struct Counter { total: u64 }
/// #[derive(Deserialize)]
/// #[serde(rename_all = "kebab-case")]
/// enum CounterCommand { Add { n: u64 } }
/// #[derive(Serialize, Deserialize)]
/// #[serde(rename_all = "kebab-case")]
/// enum CounterEvent { Added { n: u64 } }
///
/// struct CounterAggregate;
/// impl Aggregate for CounterAggregate {
///     const STREAM: &'static str = "counter";
///     type State = Counter;
///     type Command = CounterCommand;
///     type Event = CounterEvent;
///     fn handle(_: &Counter, cmd: CounterCommand, _: &Command) -> Result<Vec<CounterEvent>, Rejection> {
///         let CounterCommand::Add { n } = cmd;
///         if n == 0 { return Err(Rejection::malformed("zero", "`n` must be > 0")); }
///         Ok(vec![CounterEvent::Added { n }])
///     }
///     fn apply(state: &mut Counter, event: CounterEvent) {
///         let CounterEvent::Added { n } = event;
///         state.total += n;
///     }
/// }
/// tollgate_sdk::export_aggregate!(CounterAggregate);
///
/// let cmd = Command::new("counter", "c1", "cmd-1", &serde_json::json!({"add": {"n": 2}})).unwrap();
/// let events = tollgate_sdk::aggregate::handle::<CounterAggregate>(None, &cmd).unwrap();
/// assert_eq!(events[0].event_type, "added");
/// ```
pub trait Aggregate {
    /// The stream (aggregate type) this aggregate owns, e.g. `account`.
    const STREAM: &'static str;
    /// Schema version of the events it writes; older events go through [`Aggregate::upcast`].
    const EVENT_SCHEMA_VERSION: u32 = 1;
    /// Version of the state encoding; raise it when `State` changes shape, so that old
    /// snapshots are discarded and rebuilt from events.
    const STATE_VERSION: u32 = 1;
    /// The state, rebuilt from events; `Default` is the state before the first event.
    /// Prefer ordered maps (`BTreeMap`) so its encoding is deterministic.
    type State: Serialize + DeserializeOwned + Default;
    /// The commands, an externally tagged serde enum.
    type Command: DeserializeOwned;
    /// The events, an externally tagged serde enum.
    type Event: Serialize + DeserializeOwned;

    /// Decides what `command` means for `state`: events to append, or a rejection.
    /// `envelope` carries the command's key, id and time (its payload is already decoded).
    fn handle(state: &Self::State, command: Self::Command, envelope: &Command) -> Result<Vec<Self::Event>, Rejection>;

    /// Folds one event into the state. Must not fail: events are facts.
    fn apply(state: &mut Self::State, event: Self::Event);

    /// Raises an event written under an older schema by one or more versions. The default
    /// knows no older versions and rejects them.
    fn upcast(event: Event) -> Result<Event, Rejection> {
        Err(Rejection::malformed(
            "unsupported-schema-version",
            format!(
                "event `{}` has schema version {} but this actor reads only version {}",
                event.event_type,
                event.schema_version,
                Self::EVENT_SCHEMA_VERSION
            ),
        ))
    }
}

/// Describes `A` to its host.
pub fn describe<A: Aggregate>() -> AggregateInfo {
    AggregateInfo {
        stream: A::STREAM.into(),
        content_type: JSON.into(),
        event_schema_version: A::EVENT_SCHEMA_VERSION,
        state_version: A::STATE_VERSION,
    }
}

/// Decodes a state, `None` meaning the state before the first event.
pub fn decode_state<A: Aggregate>(state: Option<&[u8]>) -> Result<A::State, Rejection> {
    match state {
        None => Ok(A::State::default()),
        Some(bytes) => codec::from_json(bytes).map_err(|e| {
            Rejection::malformed("malformed-state", format!("state of `{}` does not decode: {e}", A::STREAM))
        }),
    }
}

/// Runs `A::handle` on encoded state and command, returning encoded events.
pub fn handle<A: Aggregate>(state: Option<&[u8]>, command: &Command) -> Result<Vec<EventDraft>, Rejection> {
    check_content_type(&command.content_type, "command", &command.command_type)?;
    let typed: A::Command = codec::decode(&command.command_type, &command.payload).map_err(|e| {
        if codec::is_unknown_variant(&e) {
            Rejection::unknown_command(&command.command_type)
        } else {
            Rejection::malformed(
                "malformed-command",
                format!("payload of command `{}` does not decode: {e}", command.command_type),
            )
        }
    })?;
    let state = decode_state::<A>(state)?;
    let events = A::handle(&state, typed, command)?;
    events
        .iter()
        .map(|event| {
            let (event_type, payload) =
                codec::encode(event).map_err(|e| Rejection::malformed("encode-event", e.to_string()))?;
            Ok(EventDraft { event_type, schema_version: A::EVENT_SCHEMA_VERSION, content_type: JSON.into(), payload })
        })
        .collect()
}

/// Folds encoded events into an encoded state, upcasting old ones first.
pub fn apply<A: Aggregate>(state: Option<&[u8]>, events: Vec<Event>) -> Result<Vec<u8>, Rejection> {
    let mut state = decode_state::<A>(state)?;
    for event in events {
        let event = upcast::<A>(event)?;
        A::apply(&mut state, decode_event(&event)?);
    }
    codec::to_json(&state).map_err(|e| Rejection::malformed("encode-state", e.to_string()))
}

/// Brings an event to `A::EVENT_SCHEMA_VERSION`, or rejects one from the future.
pub fn upcast<A: Aggregate>(event: Event) -> Result<Event, Rejection> {
    if event.schema_version == A::EVENT_SCHEMA_VERSION {
        return Ok(event);
    }
    if event.schema_version > A::EVENT_SCHEMA_VERSION {
        return Err(Rejection::malformed(
            "unsupported-schema-version",
            format!(
                "event `{}` has schema version {}, newer than this actor's {}",
                event.event_type,
                event.schema_version,
                A::EVENT_SCHEMA_VERSION
            ),
        ));
    }
    let from = event.schema_version;
    let raised = A::upcast(event)?;
    if raised.schema_version <= from || raised.schema_version > A::EVENT_SCHEMA_VERSION {
        return Err(Rejection::malformed(
            "bad-upcast",
            format!("upcast of `{}` from version {from} returned version {}", raised.event_type, raised.schema_version),
        ));
    }
    upcast::<A>(raised)
}

/// Decodes a JSON event envelope into a typed event; a failure names the event.
pub(crate) fn decode_event<T: DeserializeOwned>(event: &Event) -> Result<T, Rejection> {
    check_content_type(&event.content_type, "event", &event.event_type)?;
    codec::decode(&event.event_type, &event.payload).map_err(|e| {
        Rejection::malformed(
            "malformed-event",
            format!(
                "event `{}` #{} of {}/{} does not decode: {e}",
                event.event_type, event.sequence, event.stream, event.key
            ),
        )
    })
}

pub(crate) fn check_content_type(content_type: &str, what: &str, name: &str) -> Result<(), Rejection> {
    if content_type == JSON {
        Ok(())
    } else {
        Err(Rejection::malformed(
            "unsupported-content-type",
            format!("{what} `{name}` has content type `{content_type}`; this actor reads `{JSON}`"),
        ))
    }
}

/// Adapts an [`Aggregate`] to the generated `command-handler` export. Used by
/// [`export_aggregate!`](crate::export_aggregate).
pub struct Adapter<A>(PhantomData<A>);

impl<A: Aggregate> crate::bindings::aggregate::exports::tollgate::eventsourcing::command_handler::Guest for Adapter<A> {
    fn describe() -> AggregateInfo {
        describe::<A>()
    }

    fn handle(state: Option<Vec<u8>>, command: Command) -> Result<Vec<EventDraft>, Rejection> {
        handle::<A>(state.as_deref(), &command)
    }

    fn apply(state: Option<Vec<u8>>, events: Vec<Event>) -> Result<Vec<u8>, Rejection> {
        apply::<A>(state.as_deref(), events)
    }

    fn upcast(event: Event) -> Result<Event, Rejection> {
        upcast::<A>(event)
    }
}

/// Exports an [`Aggregate`] as the component's `tollgate:eventsourcing/command-handler`.
///
/// Expands only when compiling for `wasm32`; natively the crate stays a plain library.
///
/// ```ignore
/// tollgate_sdk::export_aggregate!(PrepaidAccount);
/// ```
#[macro_export]
macro_rules! export_aggregate {
    ($ty:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            type TollgateAggregate = $crate::aggregate::Adapter<$ty>;
    $crate::bindings::aggregate::export!(TollgateAggregate with_types_in $crate::bindings::aggregate);
        };
    };
}
