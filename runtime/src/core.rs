//! The shared heart of the runtime: actors over one event store, dispatch to projectors and
//! process managers through durable consumers, and timers. Guarded by one mutex; a policy's
//! imports lock it per call.
//!
//! - Commands: the key's state is loaded once (snapshot + tail, upcast), the command is
//!   decided, and its events are appended with the expected sequence. A lost race forgets the
//!   key, reloads and decides again; a committed command id is answered from the log.
//! - Projectors: each delivery is projected, then its key-value writes and the checkpoint are
//!   committed in one store call, then acked. A refusal or trap is nacked, and after
//!   `max_deliver` attempts dead-lettered.
//! - Process managers: like projectors, with instance states as their key-value writes.
//!   Timers are kept in the store; a due timer becomes an event on [`TIMER_STREAM`], so its
//!   reaction is checkpointed like any other delivery.

use crate::error::RuntimeError;
use crate::journal::{Journal, from_stored, to_new};
use crate::stats::Stats;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;
use tollgate_billing_model::account::Account;
use tollgate_host::aggregate::{Command, Event, Outcome, Rejection, Timer};
use tollgate_host::fakes::VirtualClock;
use tollgate_host::kinds::{Rated, RatingError, RatingRequest, Reaction};
use tollgate_host::{AggregateHost, Fakes, HostError, ProcessManagerActor, ProjectorActor, RaterActor};
use tollgate_store::{
    Consumer, ConsumerOptions, Delivery, ExpectedVersion, KvWrite, NackOutcome, Snapshot, StoreError, StoredEvent,
};

/// Stream of due process-manager timers (key `manager/instance`).
pub const TIMER_STREAM: &str = "tollgate.timers";
/// Bucket of a process manager's instance states.
const INSTANCES: &str = "tollgate.instances";
/// Bucket listing the buckets a projector wrote, so a restart can load them.
pub(crate) const META: &str = "tollgate.meta";
/// How many recent command ids per key are remembered, so a retry whose events are older than
/// the snapshot is still answered from the log rather than decided again.
const DEDUP_HORIZON: u64 = 1024;
/// Attempts of one command before contention is reported.
const MAX_ATTEMPTS: u32 = 64;
/// Deliveries asked for at once.
const DELIVERY_BATCH: usize = 256;

/// An aggregate actor, its cached states, and what was read of each key.
pub(crate) struct AggregateSlot {
    pub host: AggregateHost,
    /// Identifies the actor build and state encoding that wrote a snapshot.
    pub snapshot_tag: String,
    pub loaded: HashMap<String, LoadedKey>,
}

/// What the runtime knows about one key beyond its state.
#[derive(Default)]
pub(crate) struct LoadedKey {
    snapshot_sequence: u64,
    /// command id -> (first, last) sequence, for the last [`DEDUP_HORIZON`] commands.
    commands: HashMap<String, (u64, u64)>,
    order: VecDeque<String>,
}

impl LoadedKey {
    fn remember(&mut self, command_id: &str, sequence: u64) {
        if command_id.is_empty() {
            return;
        }
        match self.commands.get_mut(command_id) {
            Some(range) => range.1 = range.1.max(sequence),
            None => {
                self.commands.insert(command_id.into(), (sequence, sequence));
                self.order.push_back(command_id.into());
                if self.order.len() as u64 > DEDUP_HORIZON
                    && let Some(old) = self.order.pop_front()
                {
                    self.commands.remove(&old);
                }
            }
        }
    }
}

/// A projector, its consumer, and the buckets it has written.
pub(crate) struct ProjectorSlot {
    pub name: String,
    pub actor: ProjectorActor,
    pub fakes: Fakes,
    pub subscriptions: Vec<String>,
    pub consumer: Box<dyn Consumer>,
    pub buckets: Vec<String>,
}

/// A process manager, its consumer, its instances' states and its timers.
pub(crate) struct ManagerSlot {
    pub name: String,
    pub actor: ProcessManagerActor,
    pub subscriptions: Vec<String>,
    pub consumer: Box<dyn Consumer>,
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

/// A due timer as recorded on [`TIMER_STREAM`], and its id in the store.
#[derive(Serialize, Deserialize)]
struct TimerKey {
    manager: String,
    instance: String,
    id: String,
}

#[derive(Serialize, Deserialize)]
struct FiredTimer {
    #[serde(flatten)]
    key: TimerKey,
    fire_at: u64,
    payload: Vec<u8>,
}

pub(crate) struct Core {
    pub clock: VirtualClock,
    pub journal: Journal,
    pub aggregates: BTreeMap<String, AggregateSlot>,
    /// stream -> aggregate actor name.
    pub streams: BTreeMap<String, String>,
    pub raters: BTreeMap<String, RaterActor>,
    pub projectors: Vec<ProjectorSlot>,
    pub managers: Vec<ManagerSlot>,
    pub refused: Vec<RefusedCommand>,
    pub stats: Stats,
    /// A snapshot is written once a key has this many events past its last one (0: never).
    pub snapshot_every: u64,
}

fn host_error(context: String, rejection: &Rejection) -> HostError {
    HostError::Host { context, message: format!("{}: {}", rejection.code, rejection.message) }
}

impl Core {
    /// Opens the consumer of a projector or process manager.
    pub fn consumer(&self, name: &str, max_deliver: u32) -> Result<Box<dyn Consumer>, RuntimeError> {
        let options = ConsumerOptions { max_deliver, ..ConsumerOptions::default() };
        self.journal.run("open consumer", self.journal.store().consumer(name, options))
    }

    /// Loads what a projector committed before (its buckets) into its fakes.
    pub fn restore_projection(&self, slot: &mut ProjectorSlot) -> Result<(), RuntimeError> {
        let name = slot.name.as_str();
        let Some(list) = self.journal.run("read projection", self.journal.store().kv_get(name, META, "buckets"))?
        else {
            return Ok(());
        };
        slot.buckets = serde_json::from_slice(&list)
            .map_err(|e| self.journal.error("read projection", StoreError::Corrupt(e.to_string())))?;
        for bucket in &slot.buckets {
            for (key, value) in self.journal.run("read projection", self.journal.store().kv_list(name, bucket))? {
                slot.fakes.kv_set(bucket, &key, &value);
            }
        }
        Ok(())
    }

    /// Loads a process manager's instance states and open timers.
    pub fn restore_manager(&self, slot: &mut ManagerSlot) -> Result<(), RuntimeError> {
        let name = slot.name.as_str();
        slot.states = self
            .journal
            .run("read process states", self.journal.store().kv_list(name, INSTANCES))?
            .into_iter()
            .collect();
        for timer in self.journal.run("read timers", self.journal.store().due_timers(u64::MAX))? {
            let Ok(key) = serde_json::from_str::<TimerKey>(&timer.id) else { continue };
            if key.manager == slot.name {
                let t = Timer { id: key.id.clone(), fire_at: timer.fire_at_ms, payload: timer.payload };
                slot.timers.insert((key.instance, key.id), t);
            }
        }
        Ok(())
    }

    /// Reads a key's snapshot and the events after it into the aggregate's cache.
    fn load(&mut self, actor: &str, key: &str) -> Result<(), RuntimeError> {
        let slot = self.aggregates.get_mut(actor).ok_or_else(|| RuntimeError::NoSuchActor(actor.into()))?;
        if slot.loaded.contains_key(key) {
            return Ok(());
        }
        let stream = slot.host.info().stream.clone();
        let tag = slot.snapshot_tag.clone();
        let snapshot = self.journal.run("read snapshot", self.journal.store().get_snapshot(&stream, key, &tag))?;
        let (state, at) = snapshot.map_or((None, 0), |s| (Some(s.state), s.sequence));
        let from = at.saturating_sub(DEDUP_HORIZON) + 1;
        let tail = self.journal.run("read events", self.journal.store().read(&stream, key, from))?;
        let mut loaded = LoadedKey { snapshot_sequence: at, ..LoadedKey::default() };
        for e in &tail {
            loaded.remember(&e.command_id, e.sequence);
        }
        let fresh: Vec<Event> = tail.into_iter().filter(|e| e.sequence > at).map(from_stored).collect();
        slot.host.restore(key, state, at);
        if let Err(e) = slot.host.fold(key, fresh) {
            slot.host.forget(key);
            return Err(e.into());
        }
        slot.loaded.insert(key.into(), loaded);
        Ok(())
    }

    /// Drops a key's cached state, so the next use reads it from the store.
    pub fn forget(&mut self, actor: &str, key: &str) {
        if let Some(slot) = self.aggregates.get_mut(actor) {
            slot.host.forget(key);
            slot.loaded.remove(key);
        }
    }

    /// The events `(first..=last)` of a key, as committed.
    fn committed(&self, stream: &str, key: &str, first: u64, last: u64) -> Result<Vec<Event>, RuntimeError> {
        let events = self.journal.run("read events", self.journal.store().read(stream, key, first))?;
        Ok(events.into_iter().take_while(|e| e.sequence <= last).map(from_stored).collect())
    }

    /// Runs a command on a named aggregate actor and appends its events.
    pub fn execute_on(&mut self, actor: &str, command: &Command) -> Result<Outcome, RuntimeError> {
        let span = tracing::info_span!(
            "command",
            stream = %command.stream,
            key = %command.key,
            command = %command.command_type,
            command_id = %command.command_id,
            correlation_id = %command.correlation_id,
        );
        let _entered = span.enter();
        let slot = self.aggregates.get_mut(actor).ok_or_else(|| RuntimeError::NoSuchActor(actor.into()))?;
        if command.stream != slot.host.info().stream {
            // The host answers with a `wrong-stream` rejection without touching any key.
            return Ok(slot.host.execute(command)?);
        }
        let (stream, key) = (command.stream.as_str(), command.key.as_str());
        for attempt in 1..=MAX_ATTEMPTS {
            self.load(actor, key)?;
            let slot = self.aggregates.get_mut(actor).expect("checked above");
            if let Some(&(first, last)) = slot.loaded[key].commands.get(&command.command_id) {
                self.stats.duplicates += 1;
                tracing::debug!("repeated command answered from the log");
                return Ok(Outcome::Accepted(self.committed(stream, key, first, last)?));
            }
            let expected = slot.host.sequence(key);
            let events = match slot.host.execute(command)? {
                Outcome::Rejected(r) => {
                    *self.stats.rejected.entry(r.code.clone()).or_default() += 1;
                    return Ok(Outcome::Rejected(r));
                }
                Outcome::Accepted(events) => events,
            };
            let new = events.iter().map(to_new).collect();
            let appended =
                self.journal.block_on(self.journal.store().append(stream, key, ExpectedVersion::Exact(expected), new));
            let slot = self.aggregates.get_mut(actor).expect("checked above");
            match appended {
                Ok(result) => {
                    let loaded = slot.loaded.get_mut(key).expect("loaded above");
                    loaded.remember(&command.command_id, result.first_sequence);
                    loaded.remember(&command.command_id, result.last_sequence);
                    self.stats.accepted += 1;
                    self.maybe_snapshot(actor, key)?;
                    return Ok(Outcome::Accepted(events));
                }
                Err(StoreError::Conflict { actual, .. }) => {
                    self.stats.occ_conflicts += 1;
                    tracing::debug!(attempt, expected, actual, "lost an append race; reloading");
                    slot.host.forget(key);
                    slot.loaded.remove(key);
                    backoff(attempt, &command.command_id);
                }
                Err(StoreError::Duplicate { original, .. }) => {
                    self.stats.duplicates += 1;
                    slot.host.forget(key);
                    slot.loaded.remove(key);
                    return Ok(Outcome::Accepted(self.committed(
                        stream,
                        key,
                        original.first_sequence,
                        original.last_sequence,
                    )?));
                }
                Err(e) => {
                    slot.host.forget(key);
                    slot.loaded.remove(key);
                    return Err(self.journal.error("append", e));
                }
            }
        }
        Err(RuntimeError::Contention { stream: stream.into(), key: key.into(), attempts: MAX_ATTEMPTS })
    }

    fn maybe_snapshot(&mut self, actor: &str, key: &str) -> Result<(), RuntimeError> {
        let slot = self.aggregates.get_mut(actor).expect("caller checked");
        let loaded = slot.loaded.get_mut(key).expect("caller loaded");
        let sequence = slot.host.sequence(key);
        if self.snapshot_every == 0 || sequence - loaded.snapshot_sequence < self.snapshot_every {
            return Ok(());
        }
        let Some(state) = slot.host.state(key) else { return Ok(()) };
        let snapshot = Snapshot { actor_digest: slot.snapshot_tag.clone(), sequence, state: state.to_vec() };
        loaded.snapshot_sequence = sequence;
        let stream = slot.host.info().stream.clone();
        self.journal.run("write snapshot", self.journal.store().put_snapshot(&stream, key, snapshot))?;
        self.stats.snapshots += 1;
        Ok(())
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

    /// An account's decoded state, loading it from the store if needed.
    pub fn account_state(&mut self, actor: &str, key: &str) -> Result<Option<Account>, RuntimeError> {
        self.load(actor, key)?;
        let Some(bytes) = self.aggregates.get(actor).and_then(|s| s.host.state(key)) else { return Ok(None) };
        Ok(serde_json::from_slice(bytes).ok())
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

    /// Appends an event to a stream no aggregate owns (a fact reported from outside); a
    /// repeated id returns the event first recorded under it.
    pub fn append_external(&mut self, event: Event) -> Result<Event, RuntimeError> {
        let (stream, key) = (event.stream.clone(), event.key.clone());
        let appended = self.journal.block_on(self.journal.store().append(
            &stream,
            &key,
            ExpectedVersion::Any,
            vec![to_new(&event)],
        ));
        let sequence = match appended {
            Ok(result) => result.first_sequence,
            Err(StoreError::Duplicate { original, .. }) => {
                self.stats.duplicates += 1;
                let events = self.committed(&stream, &key, original.first_sequence, original.first_sequence)?;
                return events.into_iter().next().ok_or_else(|| RuntimeError::Store {
                    url: self.journal.url().into(),
                    message: format!("duplicate report on {stream}/{key} has no event"),
                });
            }
            Err(e) => return Err(self.journal.error("append", e)),
        };
        Ok(Event { sequence, ..event })
    }

    /// Delivers every new commit to projectors and process managers, runs the commands they
    /// send, and repeats until nothing new happens.
    pub fn pump(&mut self) -> Result<(), RuntimeError> {
        loop {
            let mut progressed = false;
            let mut projectors = std::mem::take(&mut self.projectors);
            let result = projectors.iter_mut().try_for_each(|p| {
                progressed |= self.project(p)?;
                Ok::<_, RuntimeError>(())
            });
            self.projectors = projectors;
            result?;
            let mut managers = std::mem::take(&mut self.managers);
            let result = managers.iter_mut().try_for_each(|m| {
                progressed |= self.manage(m)?;
                Ok::<_, RuntimeError>(())
            });
            self.managers = managers;
            result?;
            if !progressed {
                return Ok(());
            }
        }
    }

    fn next_deliveries(&self, consumer: &mut Box<dyn Consumer>) -> Result<Vec<Delivery>, RuntimeError> {
        self.journal
            .block_on(consumer.next(DELIVERY_BATCH, Duration::ZERO))
            .map_err(|e| self.journal.error("next delivery", e))
    }

    /// Events of a delivery the subscriber wants, raised to their aggregate's schema version.
    fn wanted(&mut self, events: &[StoredEvent], subscriptions: &[String]) -> Result<Vec<Event>, RuntimeError> {
        let mut out = Vec::new();
        for e in events {
            if !subscriptions.contains(&e.stream) {
                continue;
            }
            let event = from_stored(e.clone());
            match self.streams.get(&e.stream).and_then(|a| self.aggregates.get_mut(a)) {
                Some(slot) => out.extend(slot.host.upcast(vec![event])?),
                None => out.push(event),
            }
        }
        Ok(out)
    }

    /// Settles a delivery a subscriber failed: redelivered, or dead-lettered after its attempts.
    fn fail(
        &mut self,
        who: &str,
        consumer: &mut Box<dyn Consumer>,
        position: u64,
        reason: &str,
    ) -> Result<(), RuntimeError> {
        self.stats.delivery_failures += 1;
        let outcome =
            self.journal.block_on(consumer.nack(position, reason)).map_err(|e| self.journal.error("nack", e))?;
        if outcome == NackOutcome::DeadLettered {
            self.stats.dead_lettered += 1;
            tracing::error!(consumer = who, position, reason, "delivery dead-lettered");
        } else {
            tracing::warn!(consumer = who, position, reason, "delivery failed; it will be redelivered");
        }
        Ok(())
    }

    fn ack(&self, consumer: &mut Box<dyn Consumer>, position: u64) -> Result<(), RuntimeError> {
        self.journal.block_on(consumer.ack(position)).map_err(|e| self.journal.error("ack", e))
    }

    fn project(&mut self, slot: &mut ProjectorSlot) -> Result<bool, RuntimeError> {
        let deliveries = self.next_deliveries(&mut slot.consumer)?;
        let progressed = !deliveries.is_empty();
        for delivery in deliveries {
            let span = tracing::info_span!("project", projector = %slot.name, position = delivery.position, correlation_id = %delivery.events[0].correlation_id);
            let _entered = span.enter();
            let events = match self.wanted(&delivery.events, &slot.subscriptions) {
                Ok(events) => events,
                Err(e) => {
                    self.fail(&slot.name, &mut slot.consumer, delivery.position, &e.to_string())?;
                    continue;
                }
            };
            if events.is_empty() {
                self.ack(&mut slot.consumer, delivery.position)?;
                continue;
            }
            let refusal = match slot.actor.project(&events) {
                Ok(Ok(())) => None,
                Ok(Err(r)) => Some(format!("{}: {}", r.code, r.message)),
                Err(e) => Some(e.to_string()),
            };
            if let Some(reason) = refusal {
                self.fail(&slot.name, &mut slot.consumer, delivery.position, &reason)?;
                continue;
            }
            let mut writes: Vec<KvWrite> = slot
                .fakes
                .take_kv_writes()
                .into_iter()
                .map(|(bucket, key, value)| KvWrite { bucket, key, value })
                .collect();
            let before = slot.buckets.len();
            for w in &writes {
                if !slot.buckets.contains(&w.bucket) {
                    slot.buckets.push(w.bucket.clone());
                }
            }
            if slot.buckets.len() != before {
                let list = serde_json::to_vec(&slot.buckets).expect("strings encode");
                writes.push(KvWrite { bucket: META.into(), key: "buckets".into(), value: Some(list) });
            }
            self.commit(&slot.name, delivery.position, writes)?;
            self.ack(&mut slot.consumer, delivery.position)?;
        }
        Ok(progressed)
    }

    /// Commits a delivery's key-value writes with the consumer's checkpoint. A redriven dead
    /// letter (or a commit another process already passed) is older than the checkpoint: its
    /// writes land atomically without moving the checkpoint back.
    fn commit(&self, consumer: &str, position: u64, writes: Vec<KvWrite>) -> Result<(), RuntimeError> {
        let store = self.journal.store();
        match self.journal.block_on(store.commit_projection(consumer, position, writes.clone())) {
            Err(StoreError::StaleCheckpoint { checkpoint, .. }) => {
                self.journal.run("commit an older delivery", store.rebuild_projection(consumer, checkpoint, writes))
            }
            other => other.map_err(|e| self.journal.error("commit delivery", e)),
        }
    }

    fn manage(&mut self, slot: &mut ManagerSlot) -> Result<bool, RuntimeError> {
        let deliveries = self.next_deliveries(&mut slot.consumer)?;
        let progressed = !deliveries.is_empty();
        for delivery in deliveries {
            let span = tracing::info_span!("manage", manager = %slot.name, position = delivery.position, correlation_id = %delivery.events[0].correlation_id);
            let _entered = span.enter();
            // States change only once the delivery is committed, so a failure leaves them.
            let mut changed: BTreeMap<String, Option<Vec<u8>>> = BTreeMap::new();
            match self.manage_delivery(slot, &delivery, &mut changed) {
                Ok(()) => {
                    let writes: Vec<KvWrite> = changed
                        .iter()
                        .map(|(k, v)| KvWrite { bucket: INSTANCES.into(), key: k.clone(), value: v.clone() })
                        .collect();
                    if !writes.is_empty() {
                        self.commit(&slot.name, delivery.position, writes)?;
                    }
                    for (instance, state) in changed {
                        match state {
                            Some(s) => slot.states.insert(instance, s),
                            None => slot.states.remove(&instance),
                        };
                    }
                    self.ack(&mut slot.consumer, delivery.position)?;
                }
                Err(e) => self.fail(&slot.name, &mut slot.consumer, delivery.position, &e.to_string())?,
            }
        }
        Ok(progressed)
    }

    fn manage_delivery(
        &mut self,
        slot: &mut ManagerSlot,
        delivery: &Delivery,
        changed: &mut BTreeMap<String, Option<Vec<u8>>>,
    ) -> Result<(), RuntimeError> {
        for stored in &delivery.events {
            if stored.stream == TIMER_STREAM {
                let fired: FiredTimer = serde_json::from_slice(&stored.payload).map_err(|e| {
                    RuntimeError::Host(HostError::Host { context: "decode fired timer".into(), message: e.to_string() })
                })?;
                if fired.key.manager != slot.name {
                    continue;
                }
                let instance = fired.key.instance.clone();
                let state = current(slot, changed, &instance);
                let timer = Timer { id: fired.key.id.clone(), fire_at: fired.fire_at, payload: fired.payload };
                let now = self.clock.now_ms();
                let reaction = slot
                    .actor
                    .on_timer(state.as_deref(), &timer, now)?
                    .map_err(|r| host_error(format!("{} on timer `{}` of `{instance}`", slot.name, timer.id), &r))?;
                self.stats.timers_fired += 1;
                self.apply_reaction(slot, &instance, reaction, changed)?;
                continue;
            }
            if !slot.subscriptions.contains(&stored.stream) {
                continue;
            }
            let event = self.wanted(std::slice::from_ref(stored), &slot.subscriptions)?;
            let Some(event) = event.into_iter().next() else { continue };
            let Some(instance) = slot.actor.correlate(&event)? else { continue };
            let state = current(slot, changed, &instance);
            let reaction = slot.actor.react(state.as_deref(), &event)?.map_err(|r| {
                host_error(format!("{} reacting to {}/{} #{}", slot.name, event.stream, event.key, event.sequence), &r)
            })?;
            self.apply_reaction(slot, &instance, reaction, changed)?;
        }
        Ok(())
    }

    fn apply_reaction(
        &mut self,
        slot: &mut ManagerSlot,
        instance: &str,
        reaction: Reaction,
        changed: &mut BTreeMap<String, Option<Vec<u8>>>,
    ) -> Result<(), RuntimeError> {
        let mut cancel = reaction.cancel_timers.clone();
        if reaction.state.is_none() {
            cancel.extend(slot.timers.keys().filter(|(i, _)| i == instance).map(|(_, id)| id.clone()));
        }
        for id in cancel {
            let key = timer_key(&slot.name, instance, &id);
            self.journal.run("cancel timer", self.journal.store().cancel_timer(&key))?;
            slot.timers.remove(&(instance.to_string(), id));
        }
        if reaction.state.is_some() {
            for timer in reaction.set_timers {
                let stored = tollgate_store::Timer {
                    id: timer_key(&slot.name, instance, &timer.id),
                    fire_at_ms: timer.fire_at,
                    payload: timer.payload.clone(),
                };
                self.journal.run("set timer", self.journal.store().put_timer(stored))?;
                slot.timers.insert((instance.to_string(), timer.id.clone()), timer);
            }
        }
        changed.insert(instance.into(), reaction.state);
        for command in reaction.commands {
            if let Outcome::Rejected(rejection) = self.execute(&command)? {
                tracing::warn!(manager = %slot.name, command = %command.command_type, code = %rejection.code, "command refused");
                self.refused.push(RefusedCommand { manager: slot.name.clone(), command, rejection });
            }
        }
        Ok(())
    }

    /// Records every timer due at `now` as an event on [`TIMER_STREAM`] (earliest first) and
    /// dispatches it, until none is due (a reaction may set another); returns how many fired.
    pub fn fire_due_timers(&mut self) -> Result<usize, RuntimeError> {
        let mut fired = 0;
        loop {
            let now = self.clock.now_ms();
            let due = self.journal.run("read timers", self.journal.store().due_timers(now))?;
            let ours = due.into_iter().find_map(|t| {
                let key = serde_json::from_str::<TimerKey>(&t.id).ok()?;
                self.managers.iter().any(|m| m.name == key.manager).then_some((t, key))
            });
            let Some((timer, key)) = ours else { return Ok(fired) };
            let event = Event {
                stream: TIMER_STREAM.into(),
                key: format!("{}/{}", key.manager, key.instance),
                event_type: "timer-fired".into(),
                schema_version: 1,
                content_type: tollgate_sdk::codec::JSON.into(),
                payload: serde_json::to_vec(&FiredTimer {
                    fire_at: timer.fire_at_ms,
                    payload: timer.payload.clone(),
                    key,
                })
                .expect("timers encode"),
                sequence: 0,
                time: now,
                // Firing twice (a crash before the cancel) records the timer once.
                command_id: format!("{}@{}", timer.id, timer.fire_at_ms),
                correlation_id: timer.id.clone(),
                causation_id: String::new(),
            };
            self.append_external(event)?;
            self.journal.run("cancel timer", self.journal.store().cancel_timer(&timer.id))?;
            fired += 1;
            self.pump()?;
        }
    }
}

fn current(slot: &ManagerSlot, changed: &BTreeMap<String, Option<Vec<u8>>>, instance: &str) -> Option<Vec<u8>> {
    match changed.get(instance) {
        Some(state) => state.clone(),
        None => slot.states.get(instance).cloned(),
    }
}

fn timer_key(manager: &str, instance: &str, id: &str) -> String {
    serde_json::to_string(&TimerKey { manager: manager.into(), instance: instance.into(), id: id.into() })
        .expect("strings encode")
}

/// Waits a little before retrying a lost race, longer each time and spread by command, so
/// racing writers do not collide again in lockstep.
fn backoff(attempt: u32, command_id: &str) {
    let spread = command_id.bytes().fold(attempt as u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64)) % 200;
    let micros = (50u64 << attempt.min(6)) + spread;
    std::thread::sleep(Duration::from_micros(micros));
}

impl From<HostError> for RuntimeError {
    fn from(e: HostError) -> Self {
        RuntimeError::Host(e)
    }
}
