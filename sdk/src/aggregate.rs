//! Aggregates: decide (`handle`) and evolve (`apply`), both pure.
//!
//! Implement [`Aggregate`] with typed state, commands and events, then export it with
//! [`export_aggregate!`](crate::export_aggregate), which serves `command-handler@0.2.0` from a
//! [`Resident`]: the instance's states, each named by (key, sequence), decided on and evolved
//! in place. [`Resident`] and the free functions ([`handle`], [`apply`]: the same decision and
//! fold on encoded states) run natively too, so an actor's logic can be tested and benchmarked
//! without a host.

use crate::codec::{self, JSON};
use crate::types::{AggregateInfo, Command, Event, EventDraft, Rejection};
use serde::{Serialize, de::DeserializeOwned};
use std::collections::HashMap;

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
    /// must give it back (no `#[serde(skip)]` fields): a snapshot is this encoding, and an
    /// instance that loads it must hold the very state that was encoded.
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
    drafts::<A>(&A::handle(state, typed, command)?)
}

/// Encodes decided events as the drafts the host appends.
fn drafts<A: Aggregate>(events: &[A::Event]) -> Result<Vec<EventDraft>, Rejection> {
    events
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

/// How many keys' states one instance keeps resident; past it an arbitrary key is evicted (the
/// host loads it again when it next names it).
pub const RESIDENT_KEYS: usize = 4096;

/// Why [`Resident::execute`] or [`Resident::load`] did nothing.
#[derive(Debug, Clone)]
pub enum Refusal {
    /// The actor refused, or an input does not decode.
    Rejected(Rejection),
    /// The key is not held at the sequence named.
    NotResident,
}

impl From<Rejection> for Refusal {
    fn from(r: Rejection) -> Self {
        Refusal::Rejected(r)
    }
}

/// Where [`Resident::load`] starts from.
pub enum Base<'a> {
    /// The state before the first event.
    Initial,
    /// An encoded state (as [`Resident::snapshot`] returned it) at a sequence.
    Snapshot(u64, &'a [u8]),
    /// The state held for the key at this sequence.
    Resident(u64),
}

/// One stored event as [`Resident::load`] folds it: the envelope fields it checks and the payload.
pub struct Stored<'a> {
    /// The event's `event-type`.
    pub event_type: &'a str,
    /// The event's `schema-version`.
    pub schema_version: u32,
    /// The event's `content-type`.
    pub content_type: &'a str,
    /// The event's `payload`.
    pub payload: &'a [u8],
    /// The event's `sequence`.
    pub sequence: u64,
}

/// The decoded states an instance holds, each named by (key, sequence): the aggregate's side of
/// the `command-handler@0.2.0` contract. A warm command decodes only the command: its state is
/// here, and its events evolve the state in place. [`export_aggregate!`](crate::export_aggregate)
/// keeps one per instance; natively it is the same code, for tests and baselines.
///
/// ```
/// # use tollgate_sdk::{aggregate::{Refusal, Resident}, Command};
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
/// let mut resident = Resident::<Counter>::new();
/// let add = Command::new("counter", "c1", "cmd-1", &serde_json::json!({"add": {"n": 2}})).unwrap();
/// // Sequence 0 is the initial state; the instance then holds c1 at 1.
/// assert_eq!(resident.execute(0, &add).unwrap().len(), 1);
/// assert_eq!(resident.snapshot("c1", 1).unwrap(), br#"{"n":2}"#);
/// // A state it does not hold is refused, not guessed.
/// assert!(matches!(resident.execute(5, &add), Err(Refusal::NotResident)));
/// ```
pub struct Resident<A: Aggregate> {
    states: HashMap<String, (u64, A::State), Keys>,
}

/// How resident keys are hashed: with fixed keys, because a guest's randomness is the host's
/// deterministic stream anyway, and seeding per instance would cost every fresh instance a
/// call to the host.
type Keys = std::hash::BuildHasherDefault<std::hash::DefaultHasher>;

impl<A: Aggregate> Resident<A> {
    /// Holds nothing.
    pub const fn new() -> Self {
        Resident { states: HashMap::with_hasher(Keys::new()) }
    }

    /// Decides `command` on its key's state at `sequence` and evolves the state by the events
    /// decided (encoded as drafts, in order). A rejection changes nothing.
    pub fn execute(&mut self, sequence: u64, command: &Command) -> Result<Vec<EventDraft>, Refusal> {
        let typed = decode_command::<A>(command)?;
        let (at, state) = match self.states.get_mut(&command.key) {
            // Sequence 0 names the initial state whatever was held (an append that failed).
            _ if sequence == 0 => {
                self.states.remove(&command.key);
                let mut state = A::State::default();
                let drafts = evolve_by::<A>(&mut state, typed, command)?;
                if !drafts.is_empty() {
                    self.hold(command.key.clone(), drafts.len() as u64, state);
                }
                return Ok(drafts);
            }
            Some((at, state)) if *at == sequence => (at, state),
            _ => return Err(Refusal::NotResident),
        };
        let drafts = evolve_by::<A>(state, typed, command)?;
        *at += drafts.len() as u64;
        Ok(drafts)
    }

    /// Holds `key` at `base` with `events` folded in; a failure leaves the key not held.
    pub fn load<'a>(
        &mut self,
        key: &str,
        base: Base<'_>,
        events: impl IntoIterator<Item = Result<Stored<'a>, Rejection>>,
    ) -> Result<(), Refusal> {
        let held = self.states.remove(key);
        let (mut at, mut state) = match base {
            Base::Initial => (0, A::State::default()),
            Base::Snapshot(at, bytes) => (at, decode_state::<A>(Some(bytes))?),
            Base::Resident(at) => match held {
                Some((held_at, state)) if held_at == at => (at, state),
                _ => return Err(Refusal::NotResident),
            },
        };
        for event in events {
            let event = event?;
            if event.sequence != at.saturating_add(1) {
                return Err(Refusal::Rejected(Rejection::malformed(
                    "sequence-gap",
                    format!("event #{} of `{key}` does not follow the state at #{at}", event.sequence),
                )));
            }
            A::apply(&mut state, decode_stored::<A>(key, &event)?);
            at = event.sequence;
        }
        self.hold(key.into(), at, state);
        Ok(())
    }

    /// The state of `key` at `sequence`, encoded; `None` when it is not held at that sequence.
    pub fn snapshot(&self, key: &str, sequence: u64) -> Option<Vec<u8>> {
        let (at, state) = self.states.get(key)?;
        (*at == sequence).then(|| encode_state::<A>(state, STATE_SLACK).ok()).flatten()
    }

    /// Whether `key` is held, and at which sequence.
    pub fn sequence(&self, key: &str) -> Option<u64> {
        self.states.get(key).map(|(at, _)| *at)
    }

    fn hold(&mut self, key: String, at: u64, state: A::State) {
        if self.states.len() >= RESIDENT_KEYS && !self.states.contains_key(&key) {
            // Any key will do: the host loads an evicted key again when it names it.
            if let Some(evicted) = self.states.keys().next().cloned() {
                self.states.remove(&evicted);
            }
        }
        self.states.insert(key, (at, state));
    }
}

impl<A: Aggregate> Default for Resident<A> {
    fn default() -> Self {
        Self::new()
    }
}

/// Decides `typed` on `state`, encodes the events as drafts and folds them into `state`.
fn evolve_by<A: Aggregate>(
    state: &mut A::State,
    typed: A::Command,
    command: &Command,
) -> Result<Vec<EventDraft>, Rejection> {
    let events = A::handle(state, typed, command)?;
    let drafts = drafts::<A>(&events)?;
    for event in events {
        A::apply(state, event);
    }
    Ok(drafts)
}

/// Decodes a stored event for `load`, upcasting one of an older schema (the host normally has).
fn decode_stored<A: Aggregate>(key: &str, event: &Stored<'_>) -> Result<A::Event, Rejection> {
    if event.schema_version != A::EVENT_SCHEMA_VERSION {
        let envelope = Event {
            stream: A::STREAM.into(),
            key: key.into(),
            event_type: event.event_type.into(),
            schema_version: event.schema_version,
            content_type: event.content_type.into(),
            payload: event.payload.to_vec(),
            sequence: event.sequence,
            time: 0,
            command_id: String::new(),
            correlation_id: String::new(),
            causation_id: String::new(),
        };
        return decode_event(&upcast::<A>(envelope)?);
    }
    check_content_type(event.content_type, "event", event.event_type)?;
    codec::decode(event.event_type, event.payload).map_err(|e| {
        Rejection::malformed(
            "malformed-event",
            format!("event `{}` #{} of {}/{key} does not decode: {e}", event.event_type, event.sequence, A::STREAM),
        )
    })
}

/// Renders an encoded state as JSON text, refusing bytes that do not decode.
pub fn render<A: Aggregate>(state: &[u8]) -> Result<String, Rejection> {
    let decoded = decode_state::<A>(Some(state))?;
    let bytes = encode_state::<A>(&decoded, state.len())?;
    String::from_utf8(bytes).map_err(|e| Rejection::malformed("encode-state", e.to_string()))
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
/// [`Resident`] states. Used by [`export_aggregate!`](crate::export_aggregate), which provides
/// them: a static cannot be generic.
pub trait Adapter: 'static {
    /// The aggregate exported.
    type Aggregate: Aggregate;
    /// Runs `f` on the instance's resident states.
    fn with_resident<R>(f: impl FnOnce(&mut Resident<Self::Aggregate>) -> R) -> R;
}

use crate::batch::unpack;
use crate::bindings::aggregate::exports::tollgate::eventsourcing::command_handler as export;
use crate::bindings::aggregate::tollgate::eventsourcing::types::EventBatch;

fn wit_refusal(refusal: Refusal) -> export::Refusal {
    match refusal {
        Refusal::Rejected(r) => export::Refusal::Rejected(r),
        Refusal::NotResident => export::Refusal::NotResident,
    }
}

impl<T: Adapter> export::Guest for T {
    fn describe() -> AggregateInfo {
        describe::<T::Aggregate>()
    }

    fn execute(sequence: u64, command: Command) -> Result<Vec<EventDraft>, export::Refusal> {
        T::with_resident(|r| r.execute(sequence, &command)).map_err(wit_refusal)
    }

    fn load(key: String, base: export::Base, events: EventBatch) -> Result<(), export::Refusal> {
        let base = match &base {
            export::Base::Initial => Base::Initial,
            export::Base::Snapshot(s) => Base::Snapshot(s.sequence, &s.state),
            export::Base::Resident(at) => Base::Resident(*at),
        };
        T::with_resident(|r| r.load(&key, base, unpack(&events))).map_err(wit_refusal)
    }

    fn snapshot(key: String, sequence: u64) -> Option<Vec<u8>> {
        T::with_resident(|r| r.snapshot(&key, sequence))
    }

    fn render(state: Vec<u8>) -> Result<String, Rejection> {
        render::<T::Aggregate>(&state)
    }

    fn upcast(event: Event) -> Result<Event, Rejection> {
        upcast::<T::Aggregate>(event)
    }
}

/// Exports an [`Aggregate`] as the component's `tollgate:eventsourcing/command-handler@0.2.0`.
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
                static RESIDENT: ::std::cell::RefCell<$crate::aggregate::Resident<$ty>> =
                    const { ::std::cell::RefCell::new($crate::aggregate::Resident::new()) };
            }
            impl $crate::aggregate::Adapter for TollgateAggregate {
                type Aggregate = $ty;
                fn with_resident<R>(f: impl FnOnce(&mut $crate::aggregate::Resident<$ty>) -> R) -> R {
                    RESIDENT.with_borrow_mut(f)
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
        /// Whatever the host does (commands on the held state, loads from a snapshot, from
        /// events or from nothing, names of states not held), the resident states answer exactly
        /// as deciding and folding the encoded state afresh would.
        #[test]
        fn resident_answers_equal_fresh_ones(
            steps in prop::collection::vec((0..4u8, 0..3usize, 1..5u64), 1..60)
        ) {
            let mut resident = Resident::<Tally>::new();
            // What the host has committed: the encoded state and its events.
            let (mut state, mut events): (Option<Vec<u8>>, Vec<Event>) = (None, Vec::new());
            for (i, (step, name, n)) in steps.into_iter().enumerate() {
                let at = events.len() as u64;
                match step {
                    0 => resident.load("t", Base::Initial, events.iter().map(|e| Ok(stored(e)))).unwrap(),
                    1 => {
                        let bytes = state.clone().unwrap_or_else(|| b"{}".to_vec());
                        resident.load("t", Base::Snapshot(at, &bytes), std::iter::empty()).unwrap();
                    }
                    2 => {
                        // A state the instance does not hold is refused, never guessed.
                        let refused = resident.execute(at + 1, &take(i, name, n));
                        prop_assert!(matches!(refused, Err(Refusal::NotResident)));
                        continue;
                    }
                    _ => {}
                }
                let add = i % 2 == 0;
                let command = if add { Command::new("tally", "t", &format!("c{i}"), &serde_json::json!({"add": {"name": (["a", "b", "c"][name]), "n": n}})).unwrap() } else { take(i, name, n) };
                let fresh = handle::<Tally>(state.as_deref(), &command);
                let held = resident.execute(at, &command);
                match (fresh, held) {
                    (Ok(drafts), Ok(held)) => {
                        prop_assert_eq!(format!("{drafts:?}"), format!("{held:?}"));
                        let new: Vec<Event> = drafts.into_iter().enumerate().map(|(k, d)| event(d, at + 1 + k as u64)).collect();
                        state = Some(apply::<Tally>(state.as_deref(), new.clone()).unwrap());
                        events.extend(new);
                        prop_assert_eq!(resident.snapshot("t", events.len() as u64), state.clone());
                    }
                    (Err(fresh), Err(Refusal::Rejected(held))) => prop_assert_eq!(format!("{fresh:?}"), format!("{held:?}")),
                    (fresh, held) => prop_assert!(false, "fresh {fresh:?} but resident {held:?}"),
                }
            }
        }
    }

    #[test]
    fn a_malformed_batch_leaves_the_key_not_held() {
        use crate::bindings::aggregate::tollgate::eventsourcing::types::EventBatch;
        let batch = |last| EventBatch {
            data: b"tallytaddedapplication/json{\"name\":\"a\",\"n\":2}".to_vec(),
            ends: vec![5, 6, 11, 27, 45, 45, 45, last],
            schema_versions: vec![1],
            sequences: vec![1],
            times: vec![0],
        };
        let mut resident = Resident::<Tally>::new();
        resident.load("t", Base::Initial, unpack(&batch(45))).unwrap();
        assert_eq!(resident.snapshot("t", 1).unwrap(), br#"{"a":2}"#);
        let Err(Refusal::Rejected(r)) = resident.load("t", Base::Initial, unpack(&batch(46))) else {
            panic!("a part outside the data is refused")
        };
        assert_eq!(r.code, "malformed-batch");
        assert_eq!(resident.sequence("t"), None, "a failed load leaves the key not held");
    }

    fn take(i: usize, name: usize, n: u64) -> Command {
        Command::new(
            "tally",
            "t",
            &format!("c{i}"),
            &serde_json::json!({"take": {"name": (["a", "b", "c"][name]), "n": n}}),
        )
        .unwrap()
    }

    fn stored(e: &Event) -> Stored<'_> {
        Stored {
            event_type: &e.event_type,
            schema_version: e.schema_version,
            content_type: &e.content_type,
            payload: &e.payload,
            sequence: e.sequence,
        }
    }
}
