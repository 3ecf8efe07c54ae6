//! The given / when / then engine: a case (what is given, the one thing it does), run on fresh
//! instances of its actors, and what came of it as a JSON map.
//!
//! `tollgate test` parses scenario files into [`Prepared`] cases and compares each
//! [`Outcome`] with the file's `then`; [`crate::testing::AggregateTest`] drives the same
//! aggregate runner ([`aggregate::AggregateRun`]) with typed commands and events.
//!
//! One module per actor kind: [`aggregate`], `projector`, `process_manager`, `rater`, `policy`;
//! [`run`] picks the one for the actor under test.

pub mod aggregate;
mod message;
mod policy;
mod process_manager;
mod projector;
mod rater;

pub use message::{AdmissionSpec, CounterSpec, Message, RateSpec, TimerSpec, stored_text};
pub use policy::Unlinked;

use crate::Recorder;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::path::PathBuf;
use tollgate_host::aggregate::{Command, Event, Rejection};
use tollgate_host::{Actor, ActorKind, HostError, HostState};
use tollgate_node::view::{self, EventView, json_or_text};

/// What a case does, checked and decoded.
#[derive(Debug, Clone)]
pub enum Act {
    /// A command to an aggregate.
    Command(Message),
    /// Events to a projector or process manager.
    Events(Vec<Message>),
    /// A timer firing.
    Timer(TimerSpec),
    /// An admission request.
    Admission(AdmissionSpec),
    /// A rating request.
    Rate(RateSpec),
}

/// A case ready to run.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The case's name.
    pub name: String,
    /// Its key.
    pub key: String,
    /// The default stream of events it sends.
    pub stream: Option<String>,
    /// The clock.
    pub clock_ms: u64,
    /// Config of the actor under test.
    pub config: BTreeMap<String, String>,
    /// Config of linked actors.
    pub link_config: BTreeMap<String, BTreeMap<String, String>>,
    /// Key-value seed.
    pub kv: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    /// Given events.
    pub events: Vec<Message>,
    /// Given commands.
    pub commands: Vec<Message>,
    /// What it does.
    pub act: Act,
}

/// The actors of one scenario file, loaded.
#[derive(Clone)]
pub struct Actors {
    /// The actor under test.
    pub actor: Actor,
    /// Its file.
    pub file: PathBuf,
    /// Linked actors (policy): link -> (file, actor).
    pub links: BTreeMap<String, (PathBuf, Actor)>,
}

/// Everything a case produced, by name (`events`, `rejection`, `kv`, `calls`, `error`, ...).
#[derive(Debug, Default)]
pub struct Outcome(pub Map<String, Value>);

impl Outcome {
    /// Records one part.
    pub fn insert(&mut self, name: &str, value: Value) {
        self.0.insert(name.into(), value);
    }
}

/// Runs one case on fresh instances; `Err` is a failure while setting up (`given`) or a
/// malformed envelope field of one of its messages.
pub fn run(actors: &Actors, case: &Prepared, loader: &mut tollgate_runtime::Loader) -> Result<Outcome, String> {
    match actors.actor.kind() {
        ActorKind::Aggregate => aggregate::run(actors, case),
        ActorKind::Projector => projector::run(actors, case),
        ActorKind::ProcessManager => process_manager::run(actors, case),
        ActorKind::Rater => rater::run(actors, case),
        ActorKind::Policy if actors.links.is_empty() => policy::run_alone(actors, case),
        ActorKind::Policy => policy::run_linked(actors, case, loader),
    }
}

/// The case's error for an `Act` its runner does not take: [`Prepared`] cases are checked
/// against the actor's kind before they run, so only a hand-built case gets here.
fn wrong_act(case: &Prepared, kind: ActorKind) -> String {
    format!("case `{}`: {} does not take {:?}", case.name, kind.a(), case.act)
}

/// Seeds key-value entries from the case.
fn seed_kv(host_state: &HostState, case: &Prepared) {
    for (bucket, entries) in &case.kv {
        for (key, value) in entries {
            host_state.kv_set(bucket, key, value);
        }
    }
}

/// A fresh host state seeded from the case (clock, config, key-value).
fn seeded_state(case: &Prepared) -> HostState {
    let host_state = HostState::new();
    host_state.clock().set_ms(case.clock_ms);
    host_state.replace_config(case.config.clone());
    seed_kv(&host_state, case);
    host_state
}

/// A fresh seeded host state and a recorder of it: scenario expectations may name host calls
/// (`then.calls`).
fn host_for(case: &Prepared) -> (HostState, Recorder) {
    let host_state = seeded_state(case);
    let recorder = Recorder::attach(&host_state);
    (host_state, recorder)
}

/// A command envelope from a case's message: the message's envelope fields, else the given
/// stream, the case key, `default_id` and `now`.
fn command(case: &Prepared, stream: &str, message: &Message, default_id: String, now: u64) -> Result<Command, String> {
    let id = message.meta_str("command_id").unwrap_or(default_id);
    Ok(Command {
        stream: message.meta_str("stream").unwrap_or_else(|| stream.to_string()),
        key: message.meta_str("key").unwrap_or_else(|| case.key.clone()),
        command_type: message.ty.clone(),
        content_type: tollgate_codec::JSON.into(),
        payload: message.payload_bytes(),
        correlation_id: message.meta_str("correlation_id").unwrap_or_else(|| id.clone()),
        causation_id: message.meta_str("causation_id").unwrap_or_default(),
        command_id: id,
        time: message.meta_u64("time")?.unwrap_or(now),
    })
}

/// Numbers events per (stream, key) like a log would, unless the file states sequences.
#[derive(Default)]
struct Sequencer(BTreeMap<(String, String), u64>);

impl Sequencer {
    fn event(
        &mut self,
        case: &Prepared,
        default_stream: &str,
        m: &Message,
        id: String,
        now: u64,
    ) -> Result<Event, String> {
        let stream = m.meta_str("stream").unwrap_or_else(|| default_stream.to_string());
        let key = m.meta_str("key").unwrap_or_else(|| case.key.clone());
        let next = self.0.entry((stream.clone(), key.clone())).or_default();
        let sequence = m.meta_u64("sequence")?.unwrap_or(*next + 1);
        *next = sequence;
        let command_id = m.meta_str("command_id").unwrap_or(id);
        Ok(Event {
            stream,
            key,
            event_type: m.ty.clone(),
            schema_version: m.meta_u32("schema_version")?.unwrap_or(1),
            content_type: tollgate_codec::JSON.into(),
            payload: m.payload_bytes(),
            sequence,
            time: m.meta_u64("time")?.unwrap_or(now),
            correlation_id: m.meta_str("correlation_id").unwrap_or_else(|| command_id.clone()),
            causation_id: m.meta_str("causation_id").unwrap_or_default(),
            command_id,
        })
    }
}

fn event_json(e: &Event) -> Value {
    view::to_value(&EventView::from(e))
}

fn rejection_json(r: &Rejection) -> Value {
    json!({ "code": r.code, "kind": r.kind.name(), "message": r.message })
}

/// Adds the side effects every kind reports: key-value contents and host calls.
fn finish(outcome: &mut Outcome, host_state: &HostState, recorder: &Recorder) {
    let kv: Map<String, Value> = host_state
        .kv_snapshot()
        .into_iter()
        .map(|(bucket, entries)| {
            let entries: Map<String, Value> = entries.into_iter().map(|(k, v)| (k, json_or_text(&v))).collect();
            (bucket, Value::Object(entries))
        })
        .collect();
    outcome.insert("kv", Value::Object(kv));
    let calls = recorder
        .calls()
        .into_iter()
        .map(|c| {
            let mut line = format!("{} {}", c.interface, c.function);
            for a in c.args {
                line.push(' ');
                line.push_str(&a);
            }
            Value::String(line)
        })
        .collect();
    outcome.insert("calls", Value::Array(calls));
    // What the actor warned about explains a failing case (e.g. an event it cannot decode).
    let warnings = recorder
        .logs()
        .into_iter()
        .filter(|l| matches!(l.level.as_str(), "warn" | "error" | "critical"))
        .map(|l| Value::String(format!("{} {}: {}", l.level, l.context, l.message)))
        .collect();
    outcome.insert("warnings", Value::Array(warnings));
}

fn host_error(outcome: &mut Outcome, e: &HostError) {
    outcome.insert("error", Value::String(e.to_string()));
}
