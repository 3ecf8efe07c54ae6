//! Running prepared cases against fresh instances of their actors, and what each produced.

use super::compare::Outcome;
use super::format::{AdmissionSpec, Message, RateSpec, TimerSpec, stored_text};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use tollgate_host::aggregate::{
    Command, Event, EventDraft, Outcome as AggregateOutcome, Rejection, RejectionKind, Timer,
};
use tollgate_host::bindings::policy::tollgate::admission::types::{AdmissionRequest, Decision};
use tollgate_host::bindings::policy::tollgate::billing::charging::{ChargingError, DebitOutcome, ReserveRequest};
use tollgate_host::bindings::policy::tollgate::billing::rating as imported;
use tollgate_host::bindings::rater::tollgate::billing::types::{
    AccountStatus, Counter, Grant, Money, PriceLine, PriceTerm, ResultCode, Usage,
};
use tollgate_host::services::PolicyServices;
use tollgate_host::typed::{RatingError, RatingRequest};
use tollgate_host::{
    Actor, ActorKind, AggregateHost, HostError, HostState, PolicyActor, ProcessManagerActor, ProjectorActor, RaterActor,
};
use tollgate_host_test::Recorder;
use tollgate_node::view::{
    self, CommandView, CounterView, DecisionView, EventView, MoneyView, PriceLineView, json_or_text,
};

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

/// A fresh host state seeded from the case, and a recorder of it: scenario expectations may
/// name host calls (`then.calls`).
fn host_for(case: &Prepared) -> (HostState, Recorder) {
    let host_state = HostState::new();
    let recorder = Recorder::attach(&host_state);
    host_state.clock().set_ms(case.clock_ms);
    host_state.replace_config(case.config.clone());
    for (bucket, entries) in &case.kv {
        for (key, value) in entries {
            host_state.kv_set(bucket, key, value);
        }
    }
    (host_state, recorder)
}

/// Runs one case on fresh instances; `Err` is a failure while setting up (`given`).
pub fn run(actors: &Actors, case: &Prepared, loader: &mut tollgate_runtime::Loader) -> Result<Outcome, String> {
    match actors.actor.kind() {
        ActorKind::Aggregate => aggregate(actors, case),
        ActorKind::Projector => projector(actors, case),
        ActorKind::ProcessManager => process_manager(actors, case),
        ActorKind::Rater => rater(actors, case),
        ActorKind::Policy if actors.links.is_empty() => policy_alone(actors, case),
        ActorKind::Policy => policy(actors, case, loader),
    }
}

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
        time: message.meta_u64("time").map_err(|e| e.to_string())?.unwrap_or(now),
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
        let sequence = m.meta_u64("sequence").map_err(|e| e.to_string())?.unwrap_or(*next + 1);
        *next = sequence;
        let command_id = m.meta_str("command_id").unwrap_or(id);
        Ok(Event {
            stream,
            key,
            event_type: m.ty.clone(),
            schema_version: m.meta_u32("schema_version").map_err(|e| e.to_string())?.unwrap_or(1),
            content_type: tollgate_codec::JSON.into(),
            payload: m.payload_bytes(),
            sequence,
            time: m.meta_u64("time").map_err(|e| e.to_string())?.unwrap_or(now),
            correlation_id: m.meta_str("correlation_id").unwrap_or_else(|| command_id.clone()),
            causation_id: m.meta_str("causation_id").unwrap_or_default(),
            command_id,
        })
    }
}

fn event_json(e: &Event) -> Value {
    view::to_value(&EventView::from(e))
}

fn command_json(c: &Command) -> Value {
    view::to_value(&CommandView::from(c))
}

fn decision_json(d: &Decision) -> Value {
    view::to_value(&DecisionView::from(d))
}

fn money_json(m: &Money) -> Value {
    view::to_value(&MoneyView::from(m))
}

fn counters_json(counters: &[Counter]) -> Value {
    view::to_value(&counters.iter().map(CounterView::from).collect::<Vec<_>>())
}

fn lines_json(lines: &[PriceLine]) -> Value {
    view::to_value(&lines.iter().map(PriceLineView::from).collect::<Vec<_>>())
}

fn rejection_json(r: &Rejection) -> Value {
    let kind = match r.kind {
        RejectionKind::Business => "business",
        RejectionKind::Malformed => "malformed",
        RejectionKind::UnknownCommand => "unknown-command",
    };
    json!({ "code": r.code, "kind": kind, "message": r.message })
}

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
}

fn host_error(outcome: &mut Outcome, e: &HostError) {
    outcome.insert("error", Value::String(e.to_string()));
}

fn aggregate(actors: &Actors, case: &Prepared) -> Result<Outcome, String> {
    let (host_state, recorder) = host_for(case);
    let now = case.clock_ms;
    let mut host = AggregateHost::new(actors.actor.clone(), host_state.clone()).map_err(|e| e.to_string())?;
    let stream = host.info().stream.clone();
    let version = host.info().event_schema_version;
    let mut by_key: BTreeMap<String, Vec<EventDraft>> = BTreeMap::new();
    for m in &case.events {
        let draft = EventDraft {
            event_type: m.ty.clone(),
            schema_version: m.meta_u32("schema_version").map_err(|e| e.to_string())?.unwrap_or(version),
            content_type: tollgate_codec::JSON.into(),
            payload: m.payload_bytes(),
        };
        by_key.entry(m.meta_str("key").unwrap_or_else(|| case.key.clone())).or_default().push(draft);
    }
    for (key, drafts) in by_key {
        host.seed(&key, drafts, now).map_err(|e| format!("given events: {e}"))?;
    }
    for (i, m) in case.commands.iter().enumerate() {
        let c = command(case, &stream, m, format!("given-{}", i + 1), now)?;
        match host.execute(&c).map_err(|e| format!("given command #{} `{}`: {e}", i + 1, m.ty))? {
            AggregateOutcome::Accepted(_) => {}
            AggregateOutcome::Rejected(r) => {
                return Err(format!("given command #{} `{}` was rejected: {}: {}", i + 1, m.ty, r.code, r.message));
            }
        }
    }
    recorder.reset();
    let mut outcome = Outcome::default();
    let Act::Command(m) = &case.act else { unreachable!("checked when prepared") };
    let c = command(case, &stream, m, "cmd-1".into(), now)?;
    match host.execute(&c) {
        Ok(AggregateOutcome::Accepted(events)) => {
            outcome.insert("events", Value::Array(events.iter().map(event_json).collect()));
        }
        Ok(AggregateOutcome::Rejected(r)) => outcome.insert("rejection", rejection_json(&r)),
        Err(e) => host_error(&mut outcome, &e),
    }
    if let Some(state) = host.state(&c.key) {
        outcome.insert("state", json_or_text(state));
    }
    finish(&mut outcome, &host_state, &recorder);
    Ok(outcome)
}

fn projector(actors: &Actors, case: &Prepared) -> Result<Outcome, String> {
    let (host_state, recorder) = host_for(case);
    let mut actor = ProjectorActor::new(actors.actor.clone(), host_state.clone()).map_err(|e| e.to_string())?;
    let subscriptions = actor.subscriptions().map_err(|e| e.to_string())?;
    let stream = case.stream.clone().or_else(|| subscriptions.first().cloned()).unwrap_or_default();
    let mut seq = Sequencer::default();
    let given = case
        .events
        .iter()
        .enumerate()
        .map(|(i, m)| seq.event(case, &stream, m, format!("given-{}", i + 1), case.clock_ms))
        .collect::<Result<Vec<_>, _>>()?;
    if !given.is_empty() {
        match actor.project(&given) {
            Ok(Ok(())) => {}
            Ok(Err(r)) => return Err(format!("given events were refused: {}: {}", r.code, r.message)),
            Err(e) => return Err(format!("given events: {e}")),
        }
    }
    recorder.reset();
    let Act::Events(messages) = &case.act else { unreachable!("checked when prepared") };
    let batch = messages
        .iter()
        .enumerate()
        .map(|(i, m)| seq.event(case, &stream, m, format!("event-{}", i + 1), case.clock_ms))
        .collect::<Result<Vec<_>, _>>()?;
    let mut outcome = Outcome::default();
    match actor.project(&batch) {
        Ok(Ok(())) => {}
        Ok(Err(r)) => outcome.insert("rejection", rejection_json(&r)),
        Err(e) => host_error(&mut outcome, &e),
    }
    finish(&mut outcome, &host_state, &recorder);
    Ok(outcome)
}

fn timer_json(t: &Timer) -> Value {
    json!({ "id": t.id, "fire_at": t.fire_at, "payload": json_or_text(&t.payload) })
}

/// What a process manager's reactions in one case added up to.
#[derive(Default)]
struct Reactions {
    commands: Vec<Value>,
    set: Vec<Value>,
    cancelled: Vec<Value>,
    last: Option<(String, Option<Vec<u8>>)>,
    failure: Option<(&'static str, Value)>,
}

impl Reactions {
    /// Records one reaction; false when it failed (and the case stops).
    fn apply(
        &mut self,
        instance: String,
        result: Result<Result<tollgate_host::typed::Reaction, Rejection>, HostError>,
        states: &mut BTreeMap<String, Vec<u8>>,
    ) -> bool {
        match result {
            Ok(Ok(reaction)) => {
                self.commands.extend(reaction.commands.iter().map(command_json));
                self.set.extend(reaction.set_timers.iter().map(timer_json));
                self.cancelled.extend(reaction.cancel_timers.iter().cloned().map(Value::String));
                match &reaction.state {
                    Some(s) => {
                        states.insert(instance.clone(), s.clone());
                    }
                    None => {
                        states.remove(&instance);
                    }
                }
                self.last = Some((instance, reaction.state));
                true
            }
            Ok(Err(r)) => {
                self.failure = Some(("rejection", rejection_json(&r)));
                false
            }
            Err(e) => {
                self.failure = Some(("error", Value::String(e.to_string())));
                false
            }
        }
    }
}

fn process_manager(actors: &Actors, case: &Prepared) -> Result<Outcome, String> {
    let (host_state, recorder) = host_for(case);
    let mut actor = ProcessManagerActor::new(actors.actor.clone(), host_state.clone()).map_err(|e| e.to_string())?;
    let subscriptions = actor.subscriptions().map_err(|e| e.to_string())?;
    let stream = case.stream.clone().or_else(|| subscriptions.first().cloned()).unwrap_or_default();
    let mut seq = Sequencer::default();
    let mut states: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut timers: BTreeMap<(String, String), Timer> = BTreeMap::new();
    for (i, m) in case.events.iter().enumerate() {
        let event = seq.event(case, &stream, m, format!("given-{}", i + 1), case.clock_ms)?;
        let what = format!("given event #{} `{}`", i + 1, m.ty);
        let Some(instance) = actor.correlate(&event).map_err(|e| format!("{what}: {e}"))? else { continue };
        let reaction = actor
            .react(states.get(&instance).map(Vec::as_slice), &event)
            .map_err(|e| format!("{what}: {e}"))?
            .map_err(|r| format!("{what} was refused: {}: {}", r.code, r.message))?;
        for id in reaction.cancel_timers {
            timers.remove(&(instance.clone(), id));
        }
        for t in reaction.set_timers {
            timers.insert((instance.clone(), t.id.clone()), t);
        }
        match reaction.state {
            Some(s) => {
                states.insert(instance, s);
            }
            None => {
                states.remove(&instance);
            }
        }
    }
    recorder.reset();
    let mut outcome = Outcome::default();
    let mut run = Reactions::default();
    let mut ignored = true;
    match &case.act {
        Act::Events(messages) => {
            for (i, m) in messages.iter().enumerate() {
                let event = seq.event(case, &stream, m, format!("event-{}", i + 1), case.clock_ms)?;
                let instance = match actor.correlate(&event) {
                    Ok(Some(instance)) => instance,
                    Ok(None) => continue,
                    Err(e) => {
                        run.failure = Some(("error", Value::String(e.to_string())));
                        break;
                    }
                };
                ignored = false;
                let result = actor.react(states.get(&instance).map(Vec::as_slice), &event);
                if !run.apply(instance, result, &mut states) {
                    break;
                }
            }
        }
        Act::Timer(spec) => {
            ignored = false;
            let instance = spec.instance.clone().unwrap_or_else(|| {
                if states.len() == 1 { states.keys().next().cloned().unwrap_or_default() } else { case.key.clone() }
            });
            let known = timers.get(&(instance.clone(), spec.id.clone()));
            let timer = Timer {
                id: spec.id.clone(),
                fire_at: spec.fire_at.or(known.map(|t| t.fire_at)).unwrap_or(case.clock_ms),
                payload: match &spec.payload {
                    Some(p) => stored_text(p).into_bytes(),
                    None => known.map(|t| t.payload.clone()).unwrap_or_default(),
                },
            };
            let result = actor.on_timer(states.get(&instance).map(Vec::as_slice), &timer, case.clock_ms);
            run.apply(instance, result, &mut states);
        }
        _ => unreachable!("checked when prepared"),
    }
    if let Some((name, value)) = run.failure {
        outcome.insert(name, value);
    } else {
        outcome.insert("ignored", Value::Bool(ignored));
        if !ignored {
            outcome.insert("commands", Value::Array(run.commands));
            outcome.insert("timers", Value::Array(run.set));
            outcome.insert("cancelled_timers", Value::Array(run.cancelled));
            if let Some((_, state)) = &run.last {
                outcome.insert("finished", Value::Bool(state.is_none()));
                if let Some(s) = state {
                    outcome.insert("state", json_or_text(s));
                }
            }
        }
    }
    finish(&mut outcome, &host_state, &recorder);
    Ok(outcome)
}

/// A price plan in the JSON of the model's `PriceTerm` (what the account's events carry).
fn plan_json(plan: &[PriceTerm]) -> Value {
    let terms: Vec<_> = plan.iter().cloned().map(tollgate_runtime::facade::model_term).collect();
    serde_json::to_value(terms).unwrap_or(Value::Null)
}

fn rater(actors: &Actors, case: &Prepared) -> Result<Outcome, String> {
    let (host_state, recorder) = host_for(case);
    let mut actor = RaterActor::new(actors.actor.clone(), host_state.clone()).map_err(|e| e.to_string())?;
    let Act::Rate(spec) = &case.act else { unreachable!("checked when prepared") };
    let request = RatingRequest {
        usage: Usage {
            offer: spec.offer.clone(),
            rating_group: spec.rating_group,
            units: spec.units,
            country: spec.country.clone(),
        },
        counters: spec
            .counters
            .iter()
            .map(|c| Counter { offer: c.offer.clone(), name: c.name.clone(), value: c.value })
            .collect(),
    };
    let mut outcome = Outcome::default();
    match actor.rate(&request) {
        Ok(Ok(r)) => outcome.insert(
            "rated",
            json!({
                "lines": lines_json(&r.lines),
                "total": money_json(&r.total),
                "plan": plan_json(&r.plan),
                "counters": counters_json(&r.counters),
            }),
        ),
        Ok(Err(e)) => {
            let (kind, detail) = match e {
                RatingError::UnknownOffer(s) => ("unknown-offer", json!(s)),
                RatingError::UnknownRatingGroup(g) => ("unknown-rating-group", json!(g)),
                RatingError::OutsideGeoFence(s) => ("outside-geo-fence", json!(s)),
                RatingError::InvalidTariff(s) => ("invalid-tariff", json!(s)),
                RatingError::UsageOverflow(s) => ("usage-overflow", json!(s)),
            };
            outcome.insert("rating_error", json!({ kind: detail }));
        }
        Err(e) => host_error(&mut outcome, &e),
    }
    finish(&mut outcome, &host_state, &recorder);
    Ok(outcome)
}

fn admission_request(case: &Prepared) -> AdmissionRequest {
    let Act::Admission(spec) = &case.act else { unreachable!("checked when prepared") };
    AdmissionRequest {
        request_id: spec.request_id.clone().unwrap_or_else(|| "req-1".into()),
        subscriber: spec.subscriber.clone().unwrap_or_else(|| case.key.clone()),
        offer: spec.offer.clone(),
        rating_group: spec.rating_group,
        requested_units: spec.requested_units,
        country: spec.country.clone(),
    }
}

/// Serves a policy with no linked actors: every charging and rating call is refused.
struct Unlinked;

fn unlinked() -> ChargingError {
    ChargingError {
        code: ResultCode::EndUserServiceDenied,
        message: "no charging actor is linked (scenario `links.charging`)".into(),
    }
}

impl PolicyServices for Unlinked {
    fn rate(&self, _: imported::RatingRequest) -> Result<imported::Rated, imported::RatingError> {
        Err(imported::RatingError::InvalidTariff("no rater is linked (scenario `links.rating`)".into()))
    }
    fn reserve(&self, _: ReserveRequest) -> Result<Grant, ChargingError> {
        Err(unlinked())
    }
    fn debit(&self, _: &str, _: &str, _: &str, _: u64) -> Result<DebitOutcome, ChargingError> {
        Err(unlinked())
    }
    fn release(&self, _: &str, _: &str, _: &str) -> Result<Money, ChargingError> {
        Err(unlinked())
    }
    fn direct_debit(&self, _: &str, _: &str, _: Money, _: &str) -> Result<AccountStatus, ChargingError> {
        Err(unlinked())
    }
    fn balance_check(&self, _: &str) -> Result<AccountStatus, ChargingError> {
        Err(unlinked())
    }
    fn price_enquiry(&self, _: &str, _: Usage) -> Result<imported::Rated, ChargingError> {
        Err(unlinked())
    }
}

fn policy_alone(actors: &Actors, case: &Prepared) -> Result<Outcome, String> {
    let (host_state, recorder) = host_for(case);
    let mut actor =
        PolicyActor::new(actors.actor.clone(), host_state.clone(), Arc::new(Unlinked)).map_err(|e| e.to_string())?;
    let mut outcome = Outcome::default();
    match actor.decide(&admission_request(case)) {
        Ok(d) => outcome.insert("decision", decision_json(&d)),
        Err(e) => host_error(&mut outcome, &e),
    }
    outcome.insert("events", Value::Array(vec![]));
    finish(&mut outcome, &host_state, &recorder);
    Ok(outcome)
}

fn policy(actors: &Actors, case: &Prepared, loader: &mut tollgate_runtime::Loader) -> Result<Outcome, String> {
    let config = |c: &BTreeMap<String, String>| serde_json::to_value(c).expect("strings encode");
    let link = |name: &str| actors.links.get(name).map(|(f, _)| f.display().to_string()).unwrap_or_default();
    let empty = BTreeMap::new();
    let manifest = json!({ "actors": {
        "policy": {
            "kind": "policy",
            "file": actors.file.display().to_string(),
            "config": config(&case.config),
            "links": { "charging": "account", "rating": "rater" },
        },
        "account": {
            "kind": "aggregate",
            "file": link("charging"),
            "config": config(case.link_config.get("charging").unwrap_or(&empty)),
        },
        "rater": {
            "kind": "rater",
            "file": link("rating"),
            "config": config(case.link_config.get("rating").unwrap_or(&empty)),
        },
    }});
    let text = toml::to_string(&manifest).map_err(|e| format!("build the runtime manifest: {e}"))?;
    let manifest =
        tollgate_runtime::Manifest::parse(std::path::Path::new("scenario"), &text, std::path::Path::new("."))
            .map_err(|e| e.to_string())?;
    let mut rt = tollgate_runtime::Runtime::new(&manifest, loader).map_err(|e| e.to_string())?;
    rt.clock().set_ms(case.clock_ms);
    let host_state = rt.host_state("policy").cloned().expect("the manifest above names the policy");
    // A node records nothing; a scenario may name the policy's host calls (`then.calls`).
    let recorder = Recorder::attach(&host_state);
    for (bucket, entries) in &case.kv {
        for (key, value) in entries {
            host_state.kv_set(bucket, key, value);
        }
    }
    for (i, m) in case.commands.iter().enumerate() {
        let c = command(case, tollgate_billing_model::account::STREAM, m, format!("given-{}", i + 1), case.clock_ms)?;
        match rt.execute(&c).map_err(|e| format!("given command #{} `{}`: {e}", i + 1, m.ty))? {
            AggregateOutcome::Accepted(_) => {}
            AggregateOutcome::Rejected(r) => {
                return Err(format!("given command #{} `{}` was rejected: {}: {}", i + 1, m.ty, r.code, r.message));
            }
        }
    }
    recorder.reset();
    let before = rt.events().len();
    let mut outcome = Outcome::default();
    match rt.admit_with("policy", &admission_request(case)) {
        Ok(d) => outcome.insert("decision", decision_json(&d)),
        Err(e) => outcome.insert("error", Value::String(e.to_string())),
    }
    outcome.insert("events", rt.events()[before..].iter().map(event_json).collect());
    finish(&mut outcome, &host_state, &recorder);
    Ok(outcome)
}
