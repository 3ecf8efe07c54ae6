//! Running aggregates: the raw calls ([`AggregateActor`], the 0.2 contract, with a 0.1
//! component driven through the same calls) and a host that names each key's state by its
//! sequence and answers repeated command ids ([`AggregateHost`]).

use crate::actor::Actor;
use crate::bindings::aggregate::Aggregate;
pub use crate::bindings::aggregate::exports::tollgate::eventsourcing::command_handler::{Base, Refusal, StoredState};
pub use crate::bindings::aggregate::tollgate::eventsourcing::types::{
    AggregateInfo, Command, Event, EventBatch, EventDraft, Rejection, RejectionKind, Timer,
};
use crate::bindings::aggregate_v1::Aggregate as AggregateV1;
use crate::error::HostError;
use crate::guest::Guest;
use crate::host_state::HostState;
use crate::kind::ActorKind;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};

impl RejectionKind {
    /// The kind's name as the WIT spells it, e.g. `unknown-command`.
    ///
    /// ```
    /// use tollgate_host::aggregate::RejectionKind;
    /// assert_eq!(RejectionKind::UnknownCommand.name(), "unknown-command");
    /// ```
    pub fn name(self) -> &'static str {
        match self {
            RejectionKind::Business => "business",
            RejectionKind::Malformed => "malformed",
            RejectionKind::UnknownCommand => "unknown-command",
        }
    }
}

/// What makes a command the same command when its id comes again: the SHA-256 of its type,
/// content type and payload (not its time, ids or key, which a retry may restamp).
///
/// ```
/// # use tollgate_host::aggregate::{command_digest, json_command};
/// let c = json_command("account", "alice", "c1", &serde_json::json!({"top-up": {"amount": 5}}), 7).unwrap();
/// let later = tollgate_host::aggregate::Command { time: 9, ..c.clone() };
/// let other = json_command("account", "alice", "c1", &serde_json::json!({"top-up": {"amount": 6}}), 7).unwrap();
/// assert_eq!(command_digest(&c), command_digest(&later));
/// assert_ne!(command_digest(&c), command_digest(&other));
/// ```
pub fn command_digest(command: &Command) -> Vec<u8> {
    let mut hasher = Sha256::new();
    // Lengths first, so no two (type, content type, payload) triples hash the same bytes.
    for part in [command.command_type.as_bytes(), command.content_type.as_bytes(), &command.payload] {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    hasher.finalize().to_vec()
}

/// The answer to a command whose id was used before for another command (another type or
/// payload): refused, so a client that reuses an id by mistake is told rather than handed the
/// first command's outcome.
pub fn command_id_conflict(command: &Command) -> Rejection {
    Rejection {
        kind: RejectionKind::Malformed,
        code: "command-id-conflict".into(),
        message: format!(
            "command id `{}` on {}/{} was already used for another command; a retry must repeat the \
             command exactly, a new command needs a new id",
            command.command_id, command.stream, command.key
        ),
    }
}

/// Encodes a typed command (an externally tagged serde enum) into a JSON envelope whose
/// correlation id is its command id.
///
/// ```
/// #[derive(serde::Serialize)]
/// #[serde(rename_all = "kebab-case")]
/// enum Cmd { TopUp { amount: i64 } }
/// let c = tollgate_host::aggregate::json_command("account", "alice", "c1", &Cmd::TopUp { amount: 5 }, 7).unwrap();
/// assert_eq!((c.command_type.as_str(), c.time), ("top-up", 7));
/// ```
pub fn json_command<C: serde::Serialize>(
    stream: &str,
    key: &str,
    command_id: &str,
    command: &C,
    time: u64,
) -> Result<Command, tollgate_codec::CodecError> {
    let (command_type, payload) = tollgate_codec::encode(command)?;
    Ok(Command {
        stream: stream.into(),
        key: key.into(),
        command_type,
        content_type: tollgate_codec::JSON.into(),
        payload,
        command_id: command_id.into(),
        correlation_id: command_id.into(),
        causation_id: String::new(),
        time,
    })
}

/// An event envelope of a typed event (a serde enum) as JSON: schema version 1, sequence 1,
/// time 0, no ids; set the rest with struct update syntax.
///
/// ```
/// #[derive(serde::Serialize)]
/// #[serde(rename_all = "kebab-case")]
/// enum Fact { Started { units: u64 } }
/// let e = tollgate_host::aggregate::json_event("session", "call-1", &Fact::Started { units: 5 }).unwrap();
/// assert_eq!((e.event_type.as_str(), e.sequence), ("started", 1));
/// ```
pub fn json_event<E: serde::Serialize>(
    stream: &str,
    key: &str,
    event: &E,
) -> Result<Event, tollgate_codec::CodecError> {
    let (event_type, payload) = tollgate_codec::encode(event)?;
    Ok(Event {
        stream: stream.into(),
        key: key.into(),
        event_type,
        schema_version: 1,
        content_type: tollgate_codec::JSON.into(),
        payload,
        sequence: 1,
        time: 0,
        command_id: String::new(),
        correlation_id: String::new(),
        causation_id: String::new(),
    })
}

/// Most events handed to one `load` call when a stored tail is folded.
pub const FOLD_BATCH_EVENTS: usize = 256;
/// Most payload bytes handed to one `load` call when a stored tail is folded (a single larger
/// event still goes alone: it was applied alone when it was decided).
pub const FOLD_BATCH_BYTES: usize = 1 << 20;

/// The first field that identifies an event (rather than its content) that differs between
/// `before` and `after`, by its WIT name.
fn changed_identity(before: &Event, after: &Event) -> Option<&'static str> {
    [
        ("stream", before.stream == after.stream),
        ("key", before.key == after.key),
        ("sequence", before.sequence == after.sequence),
        ("time", before.time == after.time),
        ("command-id", before.command_id == after.command_id),
        ("correlation-id", before.correlation_id == after.correlation_id),
        ("causation-id", before.causation_id == after.causation_id),
    ]
    .into_iter()
    .find_map(|(field, same)| (!same).then_some(field))
}

/// Packs events into one [`EventBatch`]: their strings and payloads back to back in one
/// buffer, eight end offsets per event, and their numbers in flat lists, so the batch lowers
/// into the guest as five copies.
///
/// ```
/// # use tollgate_host::aggregate::{json_event, pack};
/// let a = json_event("session", "call-1", &serde_json::json!({"started": {"units": 5}})).unwrap();
/// let b = tollgate_host::aggregate::Event { sequence: 2, ..a.clone() };
/// let batch = pack(&[a, b]);
/// assert_eq!((batch.ends.len(), batch.sequences), (16, vec![1, 2]));
/// assert_eq!(&batch.data[..7], b"session");
/// ```
pub fn pack(events: &[Event]) -> EventBatch {
    let parts = |e: &Event| {
        [
            e.stream.len(),
            e.key.len(),
            e.event_type.len(),
            e.content_type.len(),
            e.payload.len(),
            e.command_id.len(),
            e.correlation_id.len(),
            e.causation_id.len(),
        ]
    };
    let size: usize = events.iter().map(|e| parts(e).iter().sum::<usize>()).sum();
    let mut batch = EventBatch {
        data: Vec::with_capacity(size),
        ends: Vec::with_capacity(events.len() * 8),
        schema_versions: Vec::with_capacity(events.len()),
        sequences: Vec::with_capacity(events.len()),
        times: Vec::with_capacity(events.len()),
    };
    for e in events {
        for part in [
            e.stream.as_bytes(),
            e.key.as_bytes(),
            e.event_type.as_bytes(),
            e.content_type.as_bytes(),
            &e.payload,
            e.command_id.as_bytes(),
            e.correlation_id.as_bytes(),
            e.causation_id.as_bytes(),
        ] {
            batch.data.extend_from_slice(part);
            // `load`'s batches are bounded by `FOLD_BATCH_BYTES`, and a projector's by the
            // store's page, both far below 4 GiB.
            batch.ends.push(u32::try_from(batch.data.len()).expect("a batch is below 4 GiB"));
        }
        batch.schema_versions.push(e.schema_version);
        batch.sequences.push(e.sequence);
        batch.times.push(e.time);
    }
    batch
}

/// The events an accepted command's drafts become, numbered from `first`.
fn envelopes(stream: &str, command: &Command, first: u64, drafts: Vec<EventDraft>) -> Vec<Event> {
    drafts
        .into_iter()
        .enumerate()
        .map(|(i, d)| Event {
            stream: stream.into(),
            key: command.key.clone(),
            event_type: d.event_type,
            schema_version: d.schema_version,
            content_type: d.content_type,
            payload: d.payload,
            sequence: first + i as u64,
            time: command.time,
            command_id: command.command_id.clone(),
            correlation_id: command.correlation_id.clone(),
            causation_id: command.causation_id.clone(),
        })
        .collect()
}

/// The contract an aggregate component targets, and what the host keeps for it.
enum Contract {
    /// `command-handler@0.2.0`: the instance keeps the states.
    Current(Guest<Aggregate>),
    /// `command-handler@0.1.0`: the host keeps each key's state bytes and sends them with every
    /// call, offering the 0.2 calls on top of `handle` and `apply`.
    V1 { guest: Guest<AggregateV1>, states: HashMap<String, (u64, Option<Vec<u8>>)> },
}

/// An aggregate component's exports, called on a live instance, as the 0.2 contract's calls
/// (a 0.1 component is driven through `handle` and `apply`, its states kept here).
pub struct AggregateActor {
    contract: Contract,
}

fn handler_v1(
    b: &AggregateV1,
) -> &crate::bindings::aggregate_v1::exports::tollgate::eventsourcing::command_handler::Guest {
    b.tollgate_eventsourcing_command_handler()
}

impl AggregateActor {
    /// Wraps a loaded actor; fails unless it is an aggregate.
    pub fn new(actor: Actor, host_state: HostState) -> Result<Self, HostError> {
        actor.expect_kind(ActorKind::Aggregate)?;
        let contract = if actor.is_current() {
            Contract::Current(Guest::new(actor, host_state, None, |pre, store| {
                let instance = pre.instantiate(&mut *store)?;
                Aggregate::new(&mut *store, &instance)
            }))
        } else {
            Contract::V1 {
                guest: Guest::new(actor, host_state, None, |pre, store| {
                    let instance = pre.instantiate(&mut *store)?;
                    AggregateV1::new(&mut *store, &instance)
                }),
                states: HashMap::new(),
            }
        };
        Ok(AggregateActor { contract })
    }

    /// The actor's name (its file), as errors name it.
    pub fn name(&self) -> &str {
        match &self.contract {
            Contract::Current(g) => g.actor().name(),
            Contract::V1 { guest, .. } => guest.actor().name(),
        }
    }

    /// How many instances were created so far (one more after every trap).
    pub fn instances_created(&self) -> u64 {
        match &self.contract {
            Contract::Current(g) => g.instances_created(),
            Contract::V1 { guest, .. } => guest.instances_created(),
        }
    }

    /// Calls `describe`.
    pub fn describe(&mut self) -> Result<AggregateInfo, HostError> {
        match &mut self.contract {
            Contract::Current(g) => {
                g.call("describe", |b, s| b.tollgate_eventsourcing_command_handler().call_describe(s), |_| true)
            }
            Contract::V1 { guest, .. } => guest.call("describe", |b, s| handler_v1(b).call_describe(s), |_| true),
        }
    }

    /// Calls `execute`: decides `command` on its key's state at `sequence` and evolves it.
    pub fn execute(&mut self, sequence: u64, command: &Command) -> Result<Result<Vec<EventDraft>, Refusal>, HostError> {
        let (guest, states) = match &mut self.contract {
            Contract::Current(g) => {
                return g.call(
                    "execute",
                    |b, s| b.tollgate_eventsourcing_command_handler().call_execute(s, sequence, command),
                    |_| true,
                );
            }
            Contract::V1 { guest, states } => (guest, states),
        };
        let state = match states.get(&command.key) {
            _ if sequence == 0 => None,
            Some((at, state)) if *at == sequence => state.as_deref(),
            _ => return Ok(Err(Refusal::NotResident)),
        };
        let drafts = match guest.call("handle", |b, s| handler_v1(b).call_handle(s, state, command), |_| true)? {
            Err(rejection) => return Ok(Err(Refusal::Rejected(rejection))),
            Ok(drafts) => drafts,
        };
        if drafts.is_empty() {
            return Ok(Ok(drafts));
        }
        let events = envelopes(&command.stream, command, sequence + 1, drafts.clone());
        // Fold before answering: if apply fails, the command fails and nothing is appended.
        let folded = guest.call("apply", |b, s| handler_v1(b).call_apply(s, state, &events), |_| true)?;
        let folded = folded.map_err(|r| HostError::Host {
            context: format!("apply events of command `{}` to {}/{}", command.command_id, command.stream, command.key),
            message: format!("{}: {}", r.code, r.message),
        })?;
        states.insert(command.key.clone(), (sequence + events.len() as u64, Some(folded)));
        Ok(Ok(drafts))
    }

    /// Calls `load`: holds `key` at `base` with `events` (stored, upcast) folded in.
    pub fn load(&mut self, key: &str, base: &Base, events: &[Event]) -> Result<Result<(), Refusal>, HostError> {
        let (guest, states) = match &mut self.contract {
            Contract::Current(g) => {
                let batch = pack(events);
                return g.call(
                    "load",
                    |b, s| b.tollgate_eventsourcing_command_handler().call_load(s, key, base, &batch),
                    |_| true,
                );
            }
            Contract::V1 { guest, states } => (guest, states),
        };
        let held = states.remove(key);
        let (mut at, mut state) = match base {
            Base::Initial => (0, None),
            Base::Snapshot(s) => (s.sequence, Some(s.state.clone())),
            Base::Resident(at) => match held {
                Some((held_at, state)) if held_at == *at => (*at, state),
                _ => return Ok(Err(Refusal::NotResident)),
            },
        };
        if let Some(last) = events.last() {
            match guest.call("apply", |b, s| handler_v1(b).call_apply(s, state.as_deref(), events), |_| true)? {
                Ok(folded) => (at, state) = (last.sequence, Some(folded)),
                Err(rejection) => return Ok(Err(Refusal::Rejected(rejection))),
            }
        }
        states.insert(key.into(), (at, state));
        Ok(Ok(()))
    }

    /// Calls `snapshot`: the encoded state of `key` at `sequence`, if the instance holds it.
    pub fn snapshot(&mut self, key: &str, sequence: u64) -> Result<Option<Vec<u8>>, HostError> {
        match &mut self.contract {
            Contract::Current(g) => g.call(
                "snapshot",
                |b, s| b.tollgate_eventsourcing_command_handler().call_snapshot(s, key, sequence),
                |_| true,
            ),
            Contract::V1 { states, .. } => Ok(match states.get(key) {
                Some((at, state)) if *at == sequence => state.clone(),
                _ => None,
            }),
        }
    }

    /// Calls `render`: a state's bytes as JSON text. A 0.1 state is JSON already (the 0.1
    /// contract keeps states in the aggregate's content type, JSON for every SDK).
    pub fn render(&mut self, state: &[u8]) -> Result<Result<String, Rejection>, HostError> {
        match &mut self.contract {
            Contract::Current(g) => {
                g.call("render", |b, s| b.tollgate_eventsourcing_command_handler().call_render(s, state), |_| true)
            }
            Contract::V1 { .. } => Ok(String::from_utf8(state.to_vec()).map_err(|e| Rejection {
                kind: RejectionKind::Malformed,
                code: "malformed-state".into(),
                message: format!("the state is not UTF-8 JSON: {e}"),
            })),
        }
    }

    /// Calls `upcast`.
    pub fn upcast(&mut self, event: &Event) -> Result<Result<Event, Rejection>, HostError> {
        match &mut self.contract {
            Contract::Current(g) => {
                g.call("upcast", |b, s| b.tollgate_eventsourcing_command_handler().call_upcast(s, event), |_| true)
            }
            Contract::V1 { guest, .. } => guest.call("upcast", |b, s| handler_v1(b).call_upcast(s, event), |_| true),
        }
    }
}

/// What became of a command.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Events were appended.
    Accepted(Vec<Event>),
    /// The aggregate said no; nothing was appended.
    Rejected(Rejection),
}

#[derive(Default)]
struct KeyState {
    /// The sequence of the state the instance holds for the key.
    sequence: u64,
    events: Vec<Event>,
    /// command id -> (its command's digest, its outcome).
    outcomes: HashMap<String, (Vec<u8>, Outcome)>,
}

/// Runs commands through an aggregate actor, naming each key's state by its sequence (the
/// instance holds the states), and answers a command id it has seen with the original
/// outcome, changing nothing twice. By default it keeps every key's events, and loads a key
/// again from them when the instance no longer holds it.
///
/// A runtime that keeps events in an event store uses it [`without_history`](Self::without_history):
/// it [`load`](Self::load)s what it read, [`forget`](Self::forget)s a key whose append failed,
/// and loads a key again when [`execute`](Self::execute) says [`HostError::NotResident`].
pub struct AggregateHost {
    actor: AggregateActor,
    info: AggregateInfo,
    keys: BTreeMap<String, KeyState>,
    history: bool,
}

impl AggregateHost {
    /// Wraps an aggregate actor.
    pub fn new(actor: Actor, host_state: HostState) -> Result<Self, HostError> {
        let mut actor = AggregateActor::new(actor, host_state)?;
        let info = actor.describe()?;
        Ok(AggregateHost { actor, info, keys: BTreeMap::new(), history: true })
    }

    /// Keeps only each key's sequence: no events and no outcomes (an event store holds them),
    /// so memory does not grow with the number of commands.
    pub fn without_history(mut self) -> Self {
        self.history = false;
        self
    }

    /// The last sequence of `key` this host knows (0: none).
    pub fn sequence(&self, key: &str) -> u64 {
        self.keys.get(key).map_or(0, |k| k.sequence)
    }

    /// Forgets everything about `key` (the instance's copy is replaced by the next load, or
    /// by the initial state when the key is next used at sequence 0).
    pub fn forget(&mut self, key: &str) {
        self.keys.remove(key);
    }

    /// Raises events written under an older schema version through the actor's `upcast`.
    /// An upcast may change an event's type, schema version and payload only: one that moves
    /// the event (stream, key, sequence, time, or its command, correlation or causation id) is
    /// refused, naming the field, since dispatch, deduplication and ordering rely on them.
    pub fn upcast(&mut self, events: Vec<Event>) -> Result<Vec<Event>, HostError> {
        let current = self.info.event_schema_version;
        events
            .into_iter()
            .map(|e| {
                if e.schema_version >= current {
                    return Ok(e);
                }
                let what = format!("{}/{} #{} `{}` v{}", e.stream, e.key, e.sequence, e.event_type, e.schema_version);
                let context = format!("upcast {what} to v{current}");
                let raised = self.actor.upcast(&e)?.map_err(|r| HostError::Host {
                    context: context.clone(),
                    message: format!("{}: {}", r.code, r.message),
                })?;
                match changed_identity(&e, &raised) {
                    Some(field) => Err(HostError::Host {
                        context,
                        message: format!("the upcast changed the event's `{field}`; an upcast may change only its type, schema version and payload"),
                    }),
                    None => Ok(raised),
                }
            })
            .collect()
    }

    /// Has the instance hold `key` at a snapshot (or the initial state) with `events` (stored,
    /// following it) folded in, upcasting older ones, in batches of at most
    /// [`FOLD_BATCH_EVENTS`] events and [`FOLD_BATCH_BYTES`] payload bytes: a tail that was
    /// applied event by event within the CPU and memory caps is loaded within them too,
    /// however long it grew. On failure the key is forgotten.
    pub fn load(&mut self, key: &str, snapshot: Option<(u64, Vec<u8>)>, events: Vec<Event>) -> Result<(), HostError> {
        self.keys.remove(key);
        let mut at = snapshot.as_ref().map_or(0, |(at, _)| *at);
        let mut base = match snapshot {
            Some((sequence, state)) => Base::Snapshot(StoredState { sequence, state }),
            // Sequence 0 is the initial state to `execute`: nothing to send.
            None if events.is_empty() => return Ok(()),
            None => Base::Initial,
        };
        let kept = if self.history { events.clone() } else { Vec::new() };
        let mut rest = events.into_iter().peekable();
        loop {
            let mut batch = Vec::new();
            let mut bytes = 0usize;
            while let Some(e) = rest.next_if(|e| {
                batch.is_empty() || (batch.len() < FOLD_BATCH_EVENTS && bytes + e.payload.len() <= FOLD_BATCH_BYTES)
            }) {
                bytes += e.payload.len();
                batch.push(e);
            }
            let first = batch.first().map_or(at, |e| e.sequence);
            let last = batch.last().map_or(at, |e| e.sequence);
            let batch = self.upcast(batch)?;
            let refused = match self.actor.load(key, &base, &batch)? {
                Ok(()) => None,
                Err(Refusal::Rejected(r)) => Some(format!("{}: {}", r.code, r.message)),
                Err(Refusal::NotResident) => Some("the instance no longer holds the events loaded before".into()),
            };
            if let Some(message) = refused {
                return Err(HostError::Host {
                    context: format!("load stored events #{first}..=#{last} into {}/{key}", self.info.stream),
                    message,
                });
            }
            at = last;
            base = Base::Resident(at);
            if rest.peek().is_none() {
                break;
            }
        }
        let k = self.keys.entry(key.into()).or_default();
        k.sequence = at;
        k.events = kept;
        Ok(())
    }

    /// Loads `key` again from the events this host kept (with history only).
    fn reload(&mut self, key: &str) -> Result<(), HostError> {
        let Some(k) = self.keys.get_mut(key) else { return Ok(()) };
        let (events, outcomes) = (k.events.clone(), std::mem::take(&mut k.outcomes));
        self.load(key, None, events)?;
        self.keys.entry(key.into()).or_default().outcomes = outcomes;
        Ok(())
    }

    fn not_resident(&self, key: &str) -> HostError {
        HostError::NotResident {
            actor: self.actor.name().into(),
            stream: self.info.stream.clone(),
            key: key.into(),
            sequence: self.sequence(key),
        }
    }

    /// The aggregate's description.
    pub fn info(&self) -> &AggregateInfo {
        &self.info
    }

    /// The underlying actor.
    pub fn actor(&mut self) -> &mut AggregateActor {
        &mut self.actor
    }

    /// Appends already-decided events (a test's `given`), folding them into the state.
    pub fn seed(&mut self, key: &str, drafts: Vec<EventDraft>, time: u64) -> Result<Vec<Event>, HostError> {
        let at = self.sequence(key);
        let seeding = Command {
            stream: self.info.stream.clone(),
            key: key.into(),
            command_type: String::new(),
            content_type: String::new(),
            payload: Vec::new(),
            command_id: String::new(),
            correlation_id: String::new(),
            causation_id: String::new(),
            time,
        };
        let mut events = envelopes(&self.info.stream, &seeding, at + 1, drafts);
        for e in &mut events {
            let id = format!("given-{}", e.sequence);
            (e.command_id, e.correlation_id) = (id.clone(), id);
        }
        let base = if at == 0 { Base::Initial } else { Base::Resident(at) };
        let refused = self.actor.load(key, &base, &events)?;
        let k = self.keys.entry(key.into()).or_default();
        k.events.extend(events.iter().cloned());
        match refused {
            Ok(()) => k.sequence += events.len() as u64,
            Err(Refusal::NotResident) => self.reload(key)?,
            Err(Refusal::Rejected(r)) => {
                k.events.truncate(k.events.len() - events.len());
                return Err(HostError::Host {
                    context: format!("apply given events to {}/{key}", self.info.stream),
                    message: format!("{}: {}", r.code, r.message),
                });
            }
        }
        Ok(events)
    }

    /// Runs a command. A trap leaves the key's events and state untouched. Without history, a
    /// key the instance no longer holds is [`HostError::NotResident`]: load it and run again.
    pub fn execute(&mut self, command: &Command) -> Result<Outcome, HostError> {
        if command.stream != self.info.stream {
            return Ok(Outcome::Rejected(Rejection {
                kind: RejectionKind::Malformed,
                code: "wrong-stream".into(),
                message: format!(
                    "command for stream `{}` sent to the `{}` aggregate",
                    command.stream, self.info.stream
                ),
            }));
        }
        // Without history there are no outcomes to compare with (the runtime keeps digests in
        // its log), so the hash is not spent on every command.
        let digest = if self.history { command_digest(command) } else { Vec::new() };
        if let Some((first, outcome)) = self.keys.get(&command.key).and_then(|k| k.outcomes.get(&command.command_id)) {
            if *first != digest {
                return Ok(Outcome::Rejected(command_id_conflict(command)));
            }
            return Ok(outcome.clone());
        }
        let at = self.sequence(&command.key);
        let mut decided = self.actor.execute(at, command)?;
        if matches!(decided, Err(Refusal::NotResident)) {
            if !self.history {
                return Err(self.not_resident(&command.key));
            }
            self.reload(&command.key)?;
            decided = self.actor.execute(at, command)?;
        }
        let outcome = match decided {
            Err(Refusal::Rejected(rejection)) => Outcome::Rejected(rejection),
            Err(Refusal::NotResident) => {
                return Err(HostError::Host {
                    context: format!("execute `{}` on {}/{}", command.command_id, command.stream, command.key),
                    message: format!("the instance does not hold the state at #{at} it was just loaded with"),
                });
            }
            Ok(drafts) => {
                let events = envelopes(&self.info.stream, command, at + 1, drafts);
                let k = self.keys.entry(command.key.clone()).or_default();
                k.sequence += events.len() as u64;
                if self.history {
                    k.events.extend(events.iter().cloned());
                }
                Outcome::Accepted(events)
            }
        };
        if self.history {
            let k = self.keys.entry(command.key.clone()).or_default();
            k.outcomes.insert(command.command_id.clone(), (digest, outcome.clone()));
        }
        Ok(outcome)
    }

    /// Whether `command` (its id, with the same type and payload) was answered before, so
    /// running it again answers the same and changes nothing (always false
    /// [`without_history`](Self::without_history)).
    pub fn has_answered(&self, command: &Command) -> bool {
        let known = self.keys.get(&command.key).and_then(|k| k.outcomes.get(&command.command_id));
        known.is_some_and(|(digest, _)| *digest == command_digest(command))
    }

    /// Every event of `key`, oldest first (none [`without_history`](Self::without_history)).
    pub fn events(&self, key: &str) -> &[Event] {
        self.keys.get(key).map_or(&[], |k| &k.events)
    }

    /// The encoded state of `key` (as the actor's `snapshot` encodes it), if it has events.
    pub fn state(&mut self, key: &str) -> Result<Option<Vec<u8>>, HostError> {
        let at = self.sequence(key);
        if at == 0 {
            return Ok(None);
        }
        if let Some(state) = self.actor.snapshot(key, at)? {
            return Ok(Some(state));
        }
        if !self.history {
            return Err(self.not_resident(key));
        }
        self.reload(key)?;
        self.actor.snapshot(key, at)?.map(Some).ok_or_else(|| self.not_resident(key))
    }

    /// The state of `key` as JSON text (the actor's `render` of its snapshot), if it has events.
    pub fn state_json(&mut self, key: &str) -> Result<Option<String>, HostError> {
        let Some(state) = self.state(key)? else { return Ok(None) };
        let rendered = self.actor.render(&state)?;
        rendered.map(Some).map_err(|r| HostError::Host {
            context: format!("render the state of {}/{key}", self.info.stream),
            message: format!("{}: {}", r.code, r.message),
        })
    }

    /// The keys with events.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }
}
