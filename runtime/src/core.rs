//! The shared heart of the runtime: actors, the global event log, dispatch to projectors and
//! process managers, and timers. Guarded by one mutex; a policy's imports lock it per call.

use crate::error::RuntimeError;
use std::collections::BTreeMap;
use tollgate_billing_model::account::Account;
use tollgate_host::aggregate::{Command, Event, Outcome, Rejection, Timer};
use tollgate_host::fakes::VirtualClock;
use tollgate_host::kinds::{Rated, RatingError, RatingRequest, Reaction};
use tollgate_host::{AggregateHost, HostError, ProcessManagerActor, ProjectorActor, RaterActor};

/// A projector and how far it has read the log.
pub(crate) struct ProjectorSlot {
    pub name: String,
    pub actor: ProjectorActor,
    pub subscriptions: Vec<String>,
    pub checkpoint: usize,
}

/// A process manager, its instances' states and timers, and how far it has read the log.
pub(crate) struct ManagerSlot {
    pub name: String,
    pub actor: ProcessManagerActor,
    pub subscriptions: Vec<String>,
    pub checkpoint: usize,
    pub states: BTreeMap<String, Vec<u8>>,
    /// (instance, timer id) -> timer.
    pub timers: BTreeMap<(String, String), Timer>,
}

/// A command a process manager sent that the aggregate refused: kept for inspection.
#[derive(Debug, Clone)]
pub struct RefusedCommand {
    /// The process manager.
    pub manager: String,
    /// The command.
    pub command: Command,
    /// Why it was refused.
    pub rejection: Rejection,
}

pub(crate) struct Core {
    pub clock: VirtualClock,
    pub aggregates: BTreeMap<String, AggregateHost>,
    /// stream -> aggregate actor name.
    pub streams: BTreeMap<String, String>,
    pub raters: BTreeMap<String, RaterActor>,
    pub projectors: Vec<ProjectorSlot>,
    pub managers: Vec<ManagerSlot>,
    pub log: Vec<Event>,
    /// Per-key sequences of streams no aggregate owns (e.g. `session`, appended by the runtime).
    pub external_sequences: BTreeMap<(String, String), u64>,
    pub refused: Vec<RefusedCommand>,
}

impl Core {
    /// Runs a command on a named aggregate actor and logs any new events.
    pub fn execute_on(&mut self, actor: &str, command: &Command) -> Result<Outcome, RuntimeError> {
        let host = self.aggregates.get_mut(actor).ok_or_else(|| RuntimeError::NoSuchActor(actor.into()))?;
        let before = host.events(&command.key).len();
        let outcome = host.execute(command)?;
        let fresh = &host.events(&command.key)[before..];
        self.log.extend(fresh.iter().cloned());
        Ok(outcome)
    }

    /// Runs a command on the aggregate that owns its stream.
    pub fn execute(&mut self, command: &Command) -> Result<Outcome, RuntimeError> {
        let actor = self
            .streams
            .get(&command.stream)
            .cloned()
            .ok_or_else(|| RuntimeError::NoSuchStream(command.stream.clone()))?;
        self.execute_on(&actor, command)
    }

    /// An account's decoded state.
    pub fn account_state(&self, actor: &str, key: &str) -> Option<Account> {
        let bytes = self.aggregates.get(actor)?.state(key)?;
        serde_json::from_slice(bytes).ok()
    }

    /// Rates with a named rater.
    pub fn rate_on(
        &mut self,
        actor: &str,
        request: &RatingRequest,
    ) -> Result<Result<Rated, RatingError>, RuntimeError> {
        let rater = self.raters.get_mut(actor).ok_or_else(|| RuntimeError::NoSuchActor(actor.into()))?;
        Ok(rater.rate(request)?)
    }

    /// Appends an event to a stream no aggregate owns (a fact reported from outside).
    pub fn append_external(&mut self, mut event: Event) -> Event {
        let seq = self.external_sequences.entry((event.stream.clone(), event.key.clone())).or_default();
        *seq += 1;
        event.sequence = *seq;
        self.log.push(event.clone());
        event
    }

    /// Delivers every new event to projectors and process managers, runs the commands they
    /// send, and repeats until nothing new happens.
    pub fn pump(&mut self) -> Result<(), RuntimeError> {
        loop {
            let logged = self.log.len();
            self.project()?;
            let mut managers = std::mem::take(&mut self.managers);
            let result = managers.iter_mut().try_for_each(|m| self.manage(m));
            self.managers = managers;
            result?;
            if self.log.len() == logged {
                return Ok(());
            }
        }
    }

    fn project(&mut self) -> Result<(), RuntimeError> {
        for slot in &mut self.projectors {
            let batch: Vec<Event> = self.log[slot.checkpoint..]
                .iter()
                .filter(|e| slot.subscriptions.contains(&e.stream))
                .cloned()
                .collect();
            if !batch.is_empty() {
                slot.actor.project(&batch)?.map_err(|rejection| RuntimeError::Projection {
                    projector: slot.name.clone(),
                    rejection: format!("{}: {}", rejection.code, rejection.message),
                })?;
            }
            slot.checkpoint = self.log.len();
        }
        Ok(())
    }

    fn manage(&mut self, slot: &mut ManagerSlot) -> Result<(), RuntimeError> {
        while slot.checkpoint < self.log.len() {
            let event = self.log[slot.checkpoint].clone();
            slot.checkpoint += 1;
            if !slot.subscriptions.contains(&event.stream) {
                continue;
            }
            let Some(instance) = slot.actor.correlate(&event)? else { continue };
            let state = slot.states.get(&instance).cloned();
            let reaction = slot.actor.react(state.as_deref(), &event)?.map_err(|r| RuntimeError::Process {
                manager: slot.name.clone(),
                instance: instance.clone(),
                rejection: format!("{}: {}", r.code, r.message),
            })?;
            self.apply_reaction(slot, &instance, reaction)?;
        }
        Ok(())
    }

    pub(crate) fn apply_reaction(
        &mut self,
        slot: &mut ManagerSlot,
        instance: &str,
        reaction: Reaction,
    ) -> Result<(), RuntimeError> {
        for id in &reaction.cancel_timers {
            slot.timers.remove(&(instance.to_string(), id.clone()));
        }
        for timer in reaction.set_timers {
            slot.timers.insert((instance.to_string(), timer.id.clone()), timer);
        }
        match reaction.state {
            Some(state) => {
                slot.states.insert(instance.into(), state);
            }
            None => {
                slot.states.remove(instance);
                slot.timers.retain(|(i, _), _| i != instance);
            }
        }
        for command in reaction.commands {
            if let Outcome::Rejected(rejection) = self.execute(&command)? {
                tracing::warn!(manager = %slot.name, command = %command.command_type, code = %rejection.code, "command refused");
                self.refused.push(RefusedCommand { manager: slot.name.clone(), command, rejection });
            }
        }
        Ok(())
    }

    /// Fires every timer due at `now`, earliest first, pumping after each.
    pub fn fire_due_timers(&mut self) -> Result<usize, RuntimeError> {
        let mut fired = 0;
        loop {
            let now = self.clock.now_ms();
            let due = self
                .managers
                .iter()
                .enumerate()
                .flat_map(|(i, m)| m.timers.iter().map(move |(k, t)| (t.fire_at, i, k.clone())))
                .filter(|(at, _, _)| *at <= now)
                .min();
            let Some((_, index, key)) = due else { return Ok(fired) };
            let mut managers = std::mem::take(&mut self.managers);
            let result = self.fire(&mut managers[index], key, now);
            self.managers = managers;
            result?;
            fired += 1;
            self.pump()?;
        }
    }

    fn fire(&mut self, slot: &mut ManagerSlot, key: (String, String), now: u64) -> Result<(), RuntimeError> {
        let timer = slot.timers.remove(&key).expect("due timer exists");
        let (instance, _) = key;
        let state = slot.states.get(&instance).cloned();
        let reaction = slot.actor.on_timer(state.as_deref(), &timer, now)?.map_err(|r| RuntimeError::Process {
            manager: slot.name.clone(),
            instance: instance.clone(),
            rejection: format!("{}: {}", r.code, r.message),
        })?;
        self.apply_reaction(slot, &instance, reaction)
    }
}

impl From<HostError> for RuntimeError {
    fn from(e: HostError) -> Self {
        RuntimeError::Host(e)
    }
}
