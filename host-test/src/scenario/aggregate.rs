//! The aggregate runner: [`AggregateRun`] seeds a key's events, runs given commands and the
//! `when` command, and captures what came of it. Scenario files and
//! [`crate::testing::AggregateTest`] both run aggregates through it.

use super::{Act, Actors, Outcome, Prepared, event_json, finish, host_error, rejection_json, seeded_state, wrong_act};
use crate::Recorder;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use tollgate_host::aggregate::{Command, Event, EventDraft, Outcome as AggregateOutcome};
use tollgate_host::{Actor, ActorKind, AggregateHost, HostError, HostState};
use tollgate_node::view::json_or_text;

/// One aggregate on a host state of its own, with a recorder of its import calls.
pub struct AggregateRun {
    /// The aggregate and the keys it has seen.
    pub host: AggregateHost,
    /// Its host state (clock, config, key-value).
    pub state: HostState,
    /// Its import calls and log lines.
    pub recorder: Recorder,
}

/// What one command did.
pub struct When {
    /// The aggregate's decision, or the host's failure (trap, cap).
    pub outcome: Result<AggregateOutcome, HostError>,
    /// The events the command appended to its key.
    pub appended: Vec<Event>,
}

impl AggregateRun {
    /// Runs `actor` on `state` (seeded or not), recording its import calls from now on.
    pub fn new(actor: Actor, state: HostState) -> Result<Self, HostError> {
        let recorder = Recorder::attach(&state);
        let host = AggregateHost::new(actor, state.clone())?;
        Ok(AggregateRun { host, state, recorder })
    }

    /// The virtual clock, ms since the epoch: the time of seeded events and stamped commands.
    pub fn now(&self) -> u64 {
        self.state.clock().now_ms()
    }

    /// The schema version the aggregate writes, the default of given events.
    pub fn schema_version(&self) -> u32 {
        self.host.info().event_schema_version
    }

    /// Events that already happened to `key`, stamped with the clock.
    pub fn seed(&mut self, key: &str, drafts: Vec<EventDraft>) -> Result<(), HostError> {
        let now = self.now();
        self.host.seed(key, drafts, now).map(drop)
    }

    /// A typed command to `key` of this aggregate's stream, stamped with the clock.
    pub fn command<C: Serialize>(
        &self,
        key: &str,
        command_id: &str,
        command: &C,
    ) -> Result<Command, tollgate_codec::CodecError> {
        tollgate_host::aggregate::json_command(&self.host.info().stream, key, command_id, command, self.now())
    }

    /// A command that already ran, which must be accepted; `what` names it in the error.
    pub fn given_command(&mut self, what: &str, command: &Command) -> Result<(), String> {
        match self.host.execute(command).map_err(|e| format!("{what}: {e}"))? {
            AggregateOutcome::Accepted(_) => Ok(()),
            AggregateOutcome::Rejected(r) => Err(format!("{what} was rejected: {}: {}", r.code, r.message)),
        }
    }

    /// Runs `command`; what it decided and appended.
    pub fn when(&mut self, command: &Command) -> When {
        let before = self.host.events(&command.key).len();
        let outcome = self.host.execute(command);
        let appended = self.host.events(&command.key).get(before..).unwrap_or_default().to_vec();
        When { outcome, appended }
    }
}

/// Runs an aggregate case: given events by key, given commands, then the `when` command.
pub(super) fn run(actors: &Actors, case: &Prepared) -> Result<Outcome, String> {
    let Act::Command(m) = &case.act else { return Err(wrong_act(case, ActorKind::Aggregate)) };
    let mut run = AggregateRun::new(actors.actor.clone(), seeded_state(case)).map_err(|e| e.to_string())?;
    let stream = run.host.info().stream.clone();
    let version = run.schema_version();
    let now = run.now();
    let mut by_key: BTreeMap<String, Vec<EventDraft>> = BTreeMap::new();
    for given in &case.events {
        let draft = EventDraft {
            event_type: given.ty.clone(),
            schema_version: given.meta_u32("schema_version")?.unwrap_or(version),
            content_type: tollgate_codec::JSON.into(),
            payload: given.payload_bytes(),
        };
        by_key.entry(given.meta_str("key").unwrap_or_else(|| case.key.clone())).or_default().push(draft);
    }
    for (key, drafts) in by_key {
        run.seed(&key, drafts).map_err(|e| format!("given events: {e}"))?;
    }
    for (i, given) in case.commands.iter().enumerate() {
        let c = super::command(case, &stream, given, format!("given-{}", i + 1), now)?;
        run.given_command(&format!("given command #{} `{}`", i + 1, given.ty), &c)?;
    }
    run.recorder.reset();
    let mut outcome = Outcome::default();
    let c = super::command(case, &stream, m, "cmd-1".into(), now)?;
    outcome.insert("duplicate", Value::Bool(run.host.has_answered(&c)));
    match run.when(&c).outcome {
        Ok(AggregateOutcome::Accepted(events)) => {
            outcome.insert("events", Value::Array(events.iter().map(event_json).collect()));
        }
        Ok(AggregateOutcome::Rejected(r)) => outcome.insert("rejection", rejection_json(&r)),
        Err(e) => host_error(&mut outcome, &e),
    }
    // The state as the actor renders it: JSON whatever its own encoding.
    match run.host.state_json(&c.key) {
        Ok(Some(state)) => {
            outcome.insert("state", json_or_text(state.as_bytes()));
        }
        Ok(None) => {}
        Err(e) => host_error(&mut outcome, &e),
    }
    finish(&mut outcome, &run.state, &run.recorder);
    Ok(outcome)
}
