//! Aggregates: decide (`handle`) and evolve (`apply`), both pure.
//!
//! Implement [`Aggregate`] with typed state, commands and events, then export it with
//! [`export_aggregate!`](crate::export_aggregate). The free functions here are what the
//! component runs, encoding included; natively they are the same code, so an actor's logic
//! can be tested and benchmarked without a host.

use crate::codec::{self, JSON};
use crate::types::{AggregateInfo, Command, Event, EventDraft, Rejection};
use serde::{Serialize, de::DeserializeOwned};

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
    /// Prefer ordered maps (`BTreeMap`) so its encoding is deterministic. Decoding its encoding
    /// must give it back (no `#[serde(skip)]` fields): a warm instance keeps the states it
    /// encoded and reuses them when the host passes those bytes in again.
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
    let typed = decode_command::<A>(command)?;
    decide::<A>(&decode_state::<A>(state)?, typed, command)
}

/// Folds encoded events into an encoded state, upcasting old ones first.
pub fn apply<A: Aggregate>(state: Option<&[u8]>, events: Vec<Event>) -> Result<Vec<u8>, Rejection> {
    let capacity = state.map_or(0, <[u8]>::len) + STATE_SLACK;
    let mut state = decode_state::<A>(state)?;
    evolve::<A>(&mut state, events)?;
    encode_state::<A>(&state, capacity)
}

fn decode_command<A: Aggregate>(command: &Command) -> Result<A::Command, Rejection> {
    check_content_type(&command.content_type, "command", &command.command_type)?;
    codec::decode(&command.command_type, &command.payload).map_err(|e| {
        if codec::is_unknown_variant(&e) {
            Rejection::unknown_command(&command.command_type)
        } else {
            Rejection::malformed(
                "malformed-command",
                format!("payload of command `{}` does not decode: {e}", command.command_type),
            )
        }
    })
}

fn decide<A: Aggregate>(state: &A::State, typed: A::Command, command: &Command) -> Result<Vec<EventDraft>, Rejection> {
    A::handle(state, typed, command)?
        .iter()
        .map(|event| {
            let (event_type, payload) =
                codec::encode(event).map_err(|e| Rejection::malformed("encode-event", e.to_string()))?;
            Ok(EventDraft { event_type, schema_version: A::EVENT_SCHEMA_VERSION, content_type: JSON.into(), payload })
        })
        .collect()
}

fn evolve<A: Aggregate>(state: &mut A::State, events: Vec<Event>) -> Result<(), Rejection> {
    for event in events {
        let event = upcast::<A>(event)?;
        A::apply(state, decode_event(&event)?);
    }
    Ok(())
}

/// Encodes a state into a buffer of `capacity` bytes: the previous state's length is a good
/// guess, and a buffer grown from empty copies a large state several times over.
fn encode_state<A: Aggregate>(state: &A::State, capacity: usize) -> Result<Vec<u8>, Rejection> {
    codec::to_json_in(Vec::with_capacity(capacity), state).map_err(|e| Rejection::malformed("encode-state", e.0))
}

/// Room for growth when a state is re-encoded after `apply`.
const STATE_SLACK: usize = 512;

/// How many decoded states a [`StateCache`] keeps.
pub const CACHED_STATES: usize = 8;

/// The decoded states an instance saw last, keyed by their encoded bytes.
///
/// The host keeps the state and passes it in on every call, so a stateless adapter would
/// decode the whole state for each command. The runtime calls `handle(S)`, then `apply(S)`
/// with the resulting events, then `handle(S')` with the state `apply` returned: each of those
/// finds its state here. A hit needs the exact bytes, so a cached state is always the decoding
/// of what the host passed; this relies on `State` round-tripping through its encoding (see
/// [`Aggregate::State`]). [`export_aggregate!`](crate::export_aggregate) keeps one per instance;
/// natively it makes a baseline that does the same work.
///
/// ```
/// # use tollgate_sdk::{aggregate::StateCache, Command, Event};
/// # #[derive(Default, serde::Serialize, serde::Deserialize)] struct Total { n: u64 }
/// # #[derive(serde::Deserialize)] #[serde(rename_all = "kebab-case")] enum Add { Add { n: u64 } }
/// # #[derive(serde::Serialize, serde::Deserialize)] #[serde(rename_all = "kebab-case")] enum Added { Added { n: u64 } }
/// # struct Counter;
/// # impl tollgate_sdk::Aggregate for Counter {
/// #     const STREAM: &'static str = "counter";
/// #     type State = Total; type Command = Add; type Event = Added;
/// #     fn handle(_: &Total, Add::Add { n }: Add, _: &Command) -> Result<Vec<Added>, tollgate_sdk::Rejection> {
/// #         Ok(vec![Added::Added { n }])
/// #     }
/// #     fn apply(state: &mut Total, Added::Added { n }: Added) { state.n += n; }
/// # }
/// let mut cache = StateCache::<Counter>::new();
/// let add = Command::new("counter", "c1", "cmd-1", &serde_json::json!({"add": {"n": 2}})).unwrap();
/// let drafts = cache.handle(None, &add).unwrap();
/// let draft = drafts[0].clone();
/// let event = Event {
///     stream: "counter".into(), key: "c1".into(), event_type: draft.event_type, schema_version: 1,
///     content_type: draft.content_type, payload: draft.payload, sequence: 1, time: 0,
///     command_id: "cmd-1".into(), correlation_id: String::new(), causation_id: String::new(),
/// };
/// let state = cache.apply(None, vec![event]).unwrap();
/// assert_eq!(state, br#"{"n":2}"#);
/// ```
pub struct StateCache<A: Aggregate> {
    slots: Vec<(Vec<u8>, A::State)>,
    next: usize,
}

impl<A: Aggregate> StateCache<A> {
    /// An empty cache.
    pub const fn new() -> Self {
        StateCache { slots: Vec::new(), next: 0 }
    }

    /// [`handle`], decoding `state` only when this cache does not hold it.
    pub fn handle(&mut self, state: Option<Vec<u8>>, command: &Command) -> Result<Vec<EventDraft>, Rejection> {
        let typed = decode_command::<A>(command)?;
        let initial;
        let state = match state {
            None => {
                initial = A::State::default();
                &initial
            }
            Some(bytes) => {
                let at = match self.find(&bytes) {
                    Some(at) => at,
                    None => {
                        let state = decode_state::<A>(Some(&bytes))?;
                        self.insert(bytes, state)
                    }
                };
                &self.slots[at].1
            }
        };
        decide::<A>(state, typed, command)
    }

    /// [`apply`], starting from the cached decoding of `state` and keeping the result.
    pub fn apply(&mut self, state: Option<Vec<u8>>, events: Vec<Event>) -> Result<Vec<u8>, Rejection> {
        let capacity = state.as_ref().map_or(0, Vec::len) + STATE_SLACK;
        // The state being folded is superseded, so its slot is taken rather than copied.
        let mut folded = match state {
            None => A::State::default(),
            Some(bytes) => match self.find(&bytes) {
                Some(at) => self.slots.swap_remove(at).1,
                None => decode_state::<A>(Some(&bytes))?,
            },
        };
        evolve::<A>(&mut folded, events)?;
        let bytes = encode_state::<A>(&folded, capacity)?;
        self.insert(bytes.clone(), folded);
        Ok(bytes)
    }

    fn find(&self, bytes: &[u8]) -> Option<usize> {
        self.slots.iter().position(|(cached, _)| same_bytes(cached, bytes))
    }

    fn insert(&mut self, bytes: Vec<u8>, state: A::State) -> usize {
        if self.slots.len() < CACHED_STATES {
            self.slots.push((bytes, state));
            return self.slots.len() - 1;
        }
        self.next = (self.next + 1) % CACHED_STATES;
        self.slots[self.next] = (bytes, state);
        self.next
    }
}

impl<A: Aggregate> Default for StateCache<A> {
    fn default() -> Self {
        Self::new()
    }
}

/// `a == b` a word at a time: wasm's `memcmp` compares byte by byte, and a state is kilobytes.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    let ((a_words, a_rest), (b_words, b_rest)) = (a.as_chunks::<8>(), b.as_chunks::<8>());
    a.len() == b.len()
        && a_words.iter().zip(b_words).all(|(x, y)| u64::from_ne_bytes(*x) == u64::from_ne_bytes(*y))
        && a_rest == b_rest
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

/// Adapts an [`Aggregate`] to the generated `command-handler` export, with the instance's
/// [`StateCache`]. Used by [`export_aggregate!`](crate::export_aggregate), which provides the
/// cache: a static cannot be generic.
pub trait Adapter: 'static {
    /// The aggregate exported.
    type Aggregate: Aggregate;
    /// Runs `f` on the instance's cache.
    fn with_cache<R>(f: impl FnOnce(&mut StateCache<Self::Aggregate>) -> R) -> R;
}

impl<T: Adapter> crate::bindings::aggregate::exports::tollgate::eventsourcing::command_handler::Guest for T {
    fn describe() -> AggregateInfo {
        describe::<T::Aggregate>()
    }

    fn handle(state: Option<Vec<u8>>, command: Command) -> Result<Vec<EventDraft>, Rejection> {
        T::with_cache(|cache| cache.handle(state, &command))
    }

    fn apply(state: Option<Vec<u8>>, events: Vec<Event>) -> Result<Vec<u8>, Rejection> {
        T::with_cache(|cache| cache.apply(state, events))
    }

    fn upcast(event: Event) -> Result<Event, Rejection> {
        upcast::<T::Aggregate>(event)
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
            struct TollgateAggregate;
            ::std::thread_local! {
                static CACHE: ::std::cell::RefCell<$crate::aggregate::StateCache<$ty>> =
                    const { ::std::cell::RefCell::new($crate::aggregate::StateCache::new()) };
            }
            impl $crate::aggregate::Adapter for TollgateAggregate {
                type Aggregate = $ty;
                fn with_cache<R>(f: impl FnOnce(&mut $crate::aggregate::StateCache<$ty>) -> R) -> R {
                    CACHE.with_borrow_mut(f)
                }
            }
    $crate::bindings::aggregate::export!(TollgateAggregate with_types_in $crate::bindings::aggregate);
        };
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde::Deserialize;
    use std::collections::BTreeMap;

    /// Tallies per name; `take` is refused when it would go below zero.
    struct Tally;

    #[derive(Deserialize)]
    #[serde(rename_all = "kebab-case")]
    enum TallyCommand {
        Add { name: String, n: u64 },
        Take { name: String, n: u64 },
    }

    #[derive(Serialize, Deserialize)]
    #[serde(rename_all = "kebab-case")]
    enum TallyEvent {
        Added { name: String, n: u64 },
        Taken { name: String, n: u64 },
    }

    impl Aggregate for Tally {
        const STREAM: &'static str = "tally";
        type State = BTreeMap<String, u64>;
        type Command = TallyCommand;
        type Event = TallyEvent;

        fn handle(state: &Self::State, command: TallyCommand, _: &Command) -> Result<Vec<TallyEvent>, Rejection> {
            match command {
                TallyCommand::Add { name, n } => Ok(vec![TallyEvent::Added { name, n }]),
                TallyCommand::Take { name, n } if state.get(&name).copied().unwrap_or(0) >= n => {
                    Ok(vec![TallyEvent::Taken { name, n }])
                }
                TallyCommand::Take { .. } => Err(Rejection::business("too-few", "not enough")),
            }
        }

        fn apply(state: &mut Self::State, event: TallyEvent) {
            match event {
                TallyEvent::Added { name, n } => *state.entry(name).or_default() += n,
                TallyEvent::Taken { name, n } => *state.entry(name).or_default() -= n,
            }
        }
    }

    fn event(draft: EventDraft, sequence: u64) -> Event {
        Event {
            stream: "tally".into(),
            key: "t".into(),
            event_type: draft.event_type,
            schema_version: draft.schema_version,
            content_type: draft.content_type,
            payload: draft.payload,
            sequence,
            time: 0,
            command_id: format!("c{sequence}"),
            correlation_id: String::new(),
            causation_id: String::new(),
        }
    }

    proptest! {
        /// Whatever states the host passes, old or new, in any order, the cache answers exactly
        /// as decoding them afresh would.
        #[test]
        fn cached_answers_equal_fresh_ones(
            steps in prop::collection::vec((any::<bool>(), 0..3usize, 1..5u64, any::<prop::sample::Index>()), 1..60)
        ) {
            let mut cache = StateCache::<Tally>::new();
            let mut seen: Vec<Option<Vec<u8>>> = vec![None];
            for (i, (add, name, n, pick)) in steps.into_iter().enumerate() {
                let state = pick.get(&seen).clone();
                let name = ["a", "b", "c"][name].to_string();
                let body = if add { serde_json::json!({"add": {"name": name, "n": n}}) } else {
                    serde_json::json!({"take": {"name": name, "n": n}})
                };
                let command = Command::new("tally", "t", &format!("c{i}"), &body).unwrap();
                // The generated envelope types have no `PartialEq`; their Debug form shows every field.
                let fresh = handle::<Tally>(state.as_deref(), &command);
                prop_assert_eq!(format!("{:?}", cache.handle(state.clone(), &command)), format!("{fresh:?}"));
                if let Ok(drafts) = fresh {
                    let events: Vec<Event> = drafts.into_iter().map(|d| event(d, i as u64)).collect();
                    let next = apply::<Tally>(state.as_deref(), events.clone()).unwrap();
                    prop_assert_eq!(cache.apply(state, events).unwrap(), next.clone());
                    seen.push(Some(next));
                }
            }
        }
    }
}
