//! Running aggregates: the raw calls ([`AggregateActor`]) and a host that keeps each key's
//! events and state in memory and answers repeated command ids ([`AggregateHost`]).

use crate::actor::Actor;
use crate::bindings::aggregate::Aggregate;
pub use crate::bindings::aggregate::tollgate::eventsourcing::types::{
    AggregateInfo, Command, Event, EventDraft, Rejection, RejectionKind, Timer,
};
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

/// Most events handed to one `apply` call when a stored tail is folded.
pub const FOLD_BATCH_EVENTS: usize = 256;
/// Most payload bytes handed to one `apply` call when a stored tail is folded (a single larger
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

/// An aggregate component's exports, called on a live instance.
pub struct AggregateActor {
    guest: Guest<Aggregate>,
}

impl AggregateActor {
    /// Wraps a loaded actor; fails unless it is an aggregate.
    pub fn new(actor: Actor, host_state: HostState) -> Result<Self, HostError> {
        actor.expect_kind(ActorKind::Aggregate)?;
        Ok(AggregateActor {
            guest: Guest::new(actor, host_state, None, |pre, store| {
                let instance = pre.instantiate(&mut *store)?;
                Aggregate::new(&mut *store, &instance)
            }),
        })
    }

    /// The instance lifecycle (how many instances were created, the actor, the host state).
    pub fn guest(&self) -> &Guest<Aggregate> {
        &self.guest
    }

    /// Calls `describe`.
    pub fn describe(&mut self) -> Result<AggregateInfo, HostError> {
        self.guest.call("describe", |b, s| b.tollgate_eventsourcing_command_handler().call_describe(s), |_| true)
    }

    /// Calls `handle`.
    pub fn handle(
        &mut self,
        state: Option<&[u8]>,
        command: &Command,
    ) -> Result<Result<Vec<EventDraft>, Rejection>, HostError> {
        self.guest.call(
            "handle",
            |b, s| b.tollgate_eventsourcing_command_handler().call_handle(s, state, command),
            |_| true,
        )
    }

    /// Calls `apply` with a batch of events.
    pub fn apply(&mut self, state: Option<&[u8]>, events: &[Event]) -> Result<Result<Vec<u8>, Rejection>, HostError> {
        self.guest.call(
            "apply",
            |b, s| b.tollgate_eventsourcing_command_handler().call_apply(s, state, events),
            |_| true,
        )
    }

    /// Calls `upcast`.
    pub fn upcast(&mut self, event: &Event) -> Result<Result<Event, Rejection>, HostError> {
        self.guest.call("upcast", |b, s| b.tollgate_eventsourcing_command_handler().call_upcast(s, event), |_| true)
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
    /// Last sequence folded into `state`.
    sequence: u64,
    events: Vec<Event>,
    state: Option<Vec<u8>>,
    /// command id -> (its command's digest, its outcome).
    outcomes: HashMap<String, (Vec<u8>, Outcome)>,
}

/// Keeps every key's events and state in memory, runs commands through an aggregate actor,
/// and answers a command id it has seen with the original outcome, changing nothing twice.
///
/// A runtime that keeps events in an event store uses it [`without_history`](Self::without_history)
/// as a cache of states: it [`restore`](Self::restore)s and [`fold`](Self::fold)s what it read
/// and [`forget`](Self::forget)s a key whose append lost a race.
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

    /// Keeps only each key's state and sequence: no events and no outcomes (an event store
    /// holds them), so memory does not grow with the number of commands.
    pub fn without_history(mut self) -> Self {
        self.history = false;
        self
    }

    /// The last sequence of `key` this host knows (0: none).
    pub fn sequence(&self, key: &str) -> u64 {
        self.keys.get(key).map_or(0, |k| k.sequence)
    }

    /// Sets `key` to a state read elsewhere (a snapshot), at `sequence`.
    pub fn restore(&mut self, key: &str, state: Option<Vec<u8>>, sequence: u64) {
        self.keys.insert(key.into(), KeyState { sequence, state, ..KeyState::default() });
    }

    /// Forgets everything about `key`.
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

    /// Folds events already stored (upcasting older ones) into `key`'s state, in batches of at
    /// most [`FOLD_BATCH_EVENTS`] events and [`FOLD_BATCH_BYTES`] payload bytes: a tail that was
    /// applied event by event within the CPU and memory caps is reloaded within them too,
    /// however long it grew.
    pub fn fold(&mut self, key: &str, events: Vec<Event>) -> Result<(), HostError> {
        let mut rest = events.into_iter().peekable();
        while rest.peek().is_some() {
            let mut batch = Vec::new();
            let mut bytes = 0usize;
            while let Some(e) = rest.next_if(|e| {
                batch.is_empty() || (batch.len() < FOLD_BATCH_EVENTS && bytes + e.payload.len() <= FOLD_BATCH_BYTES)
            }) {
                bytes += e.payload.len();
                batch.push(e);
            }
            self.fold_batch(key, batch)?;
        }
        Ok(())
    }

    fn fold_batch(&mut self, key: &str, events: Vec<Event>) -> Result<(), HostError> {
        let Some(last) = events.last().map(|e| e.sequence) else { return Ok(()) };
        let first = events[0].sequence;
        let events = self.upcast(events)?;
        let state = self.keys.get(key).and_then(|k| k.state.clone());
        let new_state = self.actor.apply(state.as_deref(), &events)?.map_err(|r| HostError::Host {
            context: format!("apply stored events #{first}..=#{last} to {}/{key}", self.info.stream),
            message: format!("{}: {}", r.code, r.message),
        })?;
        let k = self.keys.entry(key.into()).or_default();
        if self.history {
            k.events.extend(events);
        }
        k.sequence = last;
        k.state = Some(new_state);
        Ok(())
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
        let current = self.keys.get(key);
        let state = current.and_then(|k| k.state.clone());
        let first = current.map_or(0, |k| k.sequence) + 1;
        let events: Vec<Event> = drafts
            .into_iter()
            .enumerate()
            .map(|(i, d)| {
                let id = format!("given-{}", first + i as u64);
                self.envelope(key, first + i as u64, d, &id, &id, "", time)
            })
            .collect();
        let new_state = self.actor.apply(state.as_deref(), &events)?.map_err(|r| HostError::Host {
            context: format!("apply given events to {}/{key}", self.info.stream),
            message: format!("{}: {}", r.code, r.message),
        })?;
        let k = self.keys.entry(key.into()).or_default();
        k.sequence += events.len() as u64;
        k.events.extend(events.iter().cloned());
        k.state = Some(new_state);
        Ok(events)
    }

    /// Runs a command. A trap leaves the key's events and state untouched.
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
        let current = self.keys.get(&command.key);
        let state = current.and_then(|k| k.state.clone());
        let next = current.map_or(0, |k| k.sequence) + 1;
        let outcome = match self.actor.handle(state.as_deref(), command)? {
            Err(rejection) => Outcome::Rejected(rejection),
            Ok(drafts) => {
                let events: Vec<Event> = drafts
                    .into_iter()
                    .enumerate()
                    .map(|(i, d)| {
                        self.envelope(
                            &command.key,
                            next + i as u64,
                            d,
                            &command.command_id,
                            &command.correlation_id,
                            &command.causation_id,
                            command.time,
                        )
                    })
                    .collect();
                // Fold before committing: if apply fails, nothing was appended.
                let new_state = self.actor.apply(state.as_deref(), &events)?.map_err(|r| HostError::Host {
                    context: format!(
                        "apply events of command `{}` to {}/{}",
                        command.command_id, command.stream, command.key
                    ),
                    message: format!("{}: {}", r.code, r.message),
                })?;
                let k = self.keys.entry(command.key.clone()).or_default();
                k.sequence += events.len() as u64;
                if self.history {
                    k.events.extend(events.iter().cloned());
                }
                k.state = Some(new_state);
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

    /// The encoded state of `key`, if it has events.
    pub fn state(&self, key: &str) -> Option<&[u8]> {
        self.keys.get(key).and_then(|k| k.state.as_deref())
    }

    /// The keys with events.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    #[allow(clippy::too_many_arguments)]
    fn envelope(
        &self,
        key: &str,
        sequence: u64,
        draft: EventDraft,
        command_id: &str,
        correlation_id: &str,
        causation_id: &str,
        time: u64,
    ) -> Event {
        Event {
            stream: self.info.stream.clone(),
            key: key.into(),
            event_type: draft.event_type,
            schema_version: draft.schema_version,
            content_type: draft.content_type,
            payload: draft.payload,
            sequence,
            time,
            command_id: command_id.into(),
            correlation_id: correlation_id.into(),
            causation_id: causation_id.into(),
        }
    }
}
