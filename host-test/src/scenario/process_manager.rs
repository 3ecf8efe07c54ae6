//! The process manager runner: given events correlated and reacted to (keeping states and
//! timers), then the `when` events or a timer firing.

use super::{Act, Actors, Outcome, Prepared, Sequencer, finish, host_for, rejection_json, stored_text, wrong_act};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use tollgate_host::aggregate::{Command, Rejection, Timer};
use tollgate_host::typed::Reaction;
use tollgate_host::{ActorKind, HostError, ProcessManagerActor};
use tollgate_node::view::{self, CommandView, json_or_text};

fn command_json(c: &Command) -> Value {
    view::to_value(&CommandView::from(c))
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
        result: Result<Result<Reaction, Rejection>, HostError>,
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

/// Runs a process manager case.
pub(super) fn run(actors: &Actors, case: &Prepared) -> Result<Outcome, String> {
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
        _ => return Err(wrong_act(case, ActorKind::ProcessManager)),
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
