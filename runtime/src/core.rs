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
//!   reaction is checkpointed like any other delivery. Due timers are recorded in batches
//!   (concurrent appends, so the store group-commits them), at most
//!   `reactions.max_timers_per_tick` per tick.
//! - Cascades: every command and timer a reaction causes is one step deeper than the input it
//!   reacted to and counts against the outside input at the root of the chain; a reaction over
//!   a bound of the manifest's `[reactions]` does nothing and fails its delivery.
//! - Namespaces: streams and buckets whose names start with [`RESERVED_PREFIX`] are the
//!   runtime's; no actor or client can own, subscribe to, report on or write them.

use crate::error::RuntimeError;
use crate::journal::{Journal, from_stored, to_new};
use crate::manifest::ReactionLimits;
use crate::stats::Stats;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tollgate_billing_model::account::{Account, AccountCommand, Money};
use tollgate_host::aggregate::{Command, Event, Outcome, Rejection, Timer};
use tollgate_host::host_state::VirtualClock;
use tollgate_host::typed::{Rated, RatingError, RatingRequest, Reaction};
use tollgate_host::{AggregateHost, HostError, HostState, ProcessManagerActor, ProjectorActor, RaterActor};
use tollgate_store::{
    Consumer, ConsumerOptions, Delivery, ExpectedVersion, KvWrite, NackOutcome, Snapshot, StoreError, StoredEvent,
};

/// Prefix of the runtime's own streams and buckets ([`TIMER_STREAM`],
/// [`crate::stats::STATS_STREAM`], the instance and meta buckets).
pub const RESERVED_PREFIX: &str = "tollgate.";
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
/// Due timers of one key recorded concurrently (they race for the key's next sequence).
const SAME_KEY_CONCURRENCY: usize = 16;
/// Causes remembered (commands and timers by id, roots by effect count), oldest forgotten
/// first: an input whose cause was forgotten counts as a new root, so memory stays bounded
/// while every chain stays bounded by `max_cascade_depth` per run.
const CASCADE_MEMORY: usize = 1 << 16;

/// Whether `name` (a stream or a bucket) is in the runtime's own namespace.
pub fn is_reserved(name: &str) -> bool {
    name.starts_with(RESERVED_PREFIX)
}

/// Where an input stands in a cascade of reactions.
#[derive(Clone)]
struct Cause {
    /// Reactions between the outside input at the root and this one (0: it is the root).
    depth: u32,
    /// Names the outside input at the root of the chain.
    root: Arc<str>,
}

/// The causes of commands and timers process managers sent, and how much each root caused.
#[derive(Default)]
pub(crate) struct Cascades {
    /// (stream, key, command id) of a command, or (`""`, `""`, store id) of a timer.
    causes: HashMap<(String, String, String), Cause>,
    order: VecDeque<(String, String, String)>,
    /// Commands and timers caused so far per root.
    effects: HashMap<Arc<str>, u64>,
    roots: VecDeque<Arc<str>>,
}

impl Cascades {
    fn cause(&self, stream: &str, key: &str, id: &str) -> Option<Cause> {
        self.causes.get(&(stream.to_string(), key.to_string(), id.to_string())).cloned()
    }

    fn remember(&mut self, stream: &str, key: &str, id: &str, cause: Cause) {
        let entry = (stream.to_string(), key.to_string(), id.to_string());
        if self.causes.insert(entry.clone(), cause).is_none() {
            self.order.push_back(entry);
            if self.order.len() > CASCADE_MEMORY
                && let Some(old) = self.order.pop_front()
            {
                self.causes.remove(&old);
            }
        }
    }

    fn effects(&self, root: &Arc<str>) -> u64 {
        self.effects.get(root).copied().unwrap_or(0)
    }

    fn add_effects(&mut self, root: &Arc<str>, n: u64) {
        match self.effects.get_mut(root) {
            Some(count) => *count = count.saturating_add(n),
            None => {
                self.effects.insert(root.clone(), n);
                self.roots.push_back(root.clone());
                if self.roots.len() > CASCADE_MEMORY
                    && let Some(old) = self.roots.pop_front()
                {
                    self.effects.remove(&old);
                }
            }
        }
    }
}

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
    pub host_state: HostState,
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
    /// Bounds on what reactions may cause.
    pub limits: ReactionLimits,
    pub cascades: Cascades,
    /// The `decide` call under way and what to undo if it fails (see
    /// [`crate::Runtime::admit_with`]).
    pub in_decide: InDecide,
}

/// The charging calls of the `decide` call under way that must be undone if it fails: the
/// client gets an error, so nothing may stay held or charged for it.
#[derive(Debug, Default)]
pub(crate) struct InDecide {
    /// The request being decided (empty outside `decide`).
    pub request_id: String,
    /// In the order the calls were made.
    pub undo: Vec<Undo>,
}

/// How one charging call made inside a failed `decide` is undone, on `account` of the
/// aggregate actor `account_actor`.
#[derive(Debug, Clone)]
pub(crate) struct Undo {
    /// The aggregate actor of the account.
    pub account_actor: String,
    /// The account.
    pub account: String,
    /// What to send.
    pub action: UndoAction,
}

/// The command that undoes a charging call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum UndoAction {
    /// A reservation made: released.
    Release {
        /// The reservation.
        reservation_id: String,
    },
    /// Money taken by a debit or a direct debit: refunded (counters stay as they are).
    Refund {
        /// The command id of the call that took it.
        charge_id: String,
        /// Minor units taken.
        amount: i64,
        /// The account's currency.
        currency: String,
    },
}

/// What every undo's command id carries; a policy's own calls may not use it, or one could
/// take the id of an undo and have that undo answered as done without being done.
pub(crate) const UNDO_MARK: &str = "-after-failed-decide/";

impl UndoAction {
    /// The command id of the undo of this call by the failed decision on `request_id`: it
    /// names that decision in the log, and marks the request as answered.
    pub fn command_id(&self, request_id: &str) -> String {
        match self {
            UndoAction::Release { reservation_id } => format!("{request_id}/released{UNDO_MARK}{reservation_id}"),
            UndoAction::Refund { charge_id, .. } => format!("{request_id}/refunded{UNDO_MARK}{charge_id}"),
        }
    }

    /// The account command that undoes the call, for the decision on `request_id` that
    /// failed with `failure`.
    pub fn command(&self, request_id: &str, failure: &str) -> AccountCommand {
        match self {
            UndoAction::Release { reservation_id } => {
                AccountCommand::Release { reservation_id: reservation_id.clone() }
            }
            UndoAction::Refund { charge_id, amount, currency } => AccountCommand::Refund {
                amount: Money::new(*amount, currency),
                reason: format!("charge `{charge_id}` of request `{request_id}`, whose decision failed: {failure}"),
            },
        }
    }

    /// What the call left on the account: `hold` or `charge`.
    pub fn what(&self) -> &'static str {
        match self {
            UndoAction::Release { .. } => "hold",
            UndoAction::Refund { .. } => "charge",
        }
    }

    /// What the undo did to it: `released` or `refunded`.
    pub fn done(&self) -> &'static str {
        match self {
            UndoAction::Release { .. } => "released",
            UndoAction::Refund { .. } => "refunded",
        }
    }
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

    /// Loads what a projector committed before (its buckets) into its host state.
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
                slot.host_state.kv_set(bucket, &key, &value);
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
        if is_reserved(&command.stream) {
            return Err(RuntimeError::Reserved {
                what: "a command may not go to stream".into(),
                name: command.stream.clone(),
            });
        }
        let actor = self
            .streams
            .get(&command.stream)
            .cloned()
            .ok_or_else(|| RuntimeError::NoSuchStream(command.stream.clone()))?;
        self.execute_on(&actor, command)
    }

    /// Whether `command_id` is among the recent commands committed on `key` of an aggregate
    /// (the last [`DEDUP_HORIZON`] of them).
    pub fn recently_committed(&mut self, actor: &str, key: &str, command_id: &str) -> Result<bool, RuntimeError> {
        self.load(actor, key)?;
        Ok(self.aggregates[actor].loaded.get(key).is_some_and(|k| k.commands.contains_key(command_id)))
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
            // What a failed call wrote is dropped here, so it is not committed with the next
            // delivery.
            let mut writes: Vec<KvWrite> = slot
                .host_state
                .take_kv_writes()
                .into_iter()
                .map(|(bucket, key, value)| KvWrite { bucket, key, value })
                .collect();
            let refusal = refusal.or_else(|| {
                let intruding = writes.iter().find(|w| is_reserved(&w.bucket))?;
                let error = RuntimeError::Reserved {
                    what: format!("projector `{}` may not write bucket", slot.name),
                    name: intruding.bucket.clone(),
                };
                Some(format!("{error}; nothing of this delivery was committed"))
            });
            if let Some(reason) = refusal {
                self.undo_writes(slot, &writes)?;
                self.fail(&slot.name, &mut slot.consumer, delivery.position, &reason)?;
                continue;
            }
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

    /// Puts back what a projector's failed call wrote, in its in-memory view, from the store
    /// (where nothing of it was committed), so the view stays what was committed.
    fn undo_writes(&self, slot: &ProjectorSlot, writes: &[KvWrite]) -> Result<(), RuntimeError> {
        for w in writes {
            let store = self.journal.store();
            match self.journal.run("read projection", store.kv_get(&slot.name, &w.bucket, &w.key))? {
                Some(value) => slot.host_state.kv_set(&w.bucket, &w.key, &value),
                None => slot.host_state.kv_remove(&w.bucket, &w.key),
            }
        }
        Ok(())
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
                let what = format!("{} on timer `{}` of `{instance}`", slot.name, timer.id);
                let reaction =
                    slot.actor.on_timer(state.as_deref(), &timer, now)?.map_err(|r| host_error(what.clone(), &r))?;
                self.stats.timers_fired += 1;
                let cause = self.cause_of(stored);
                self.apply_reaction(slot, &instance, reaction, changed, &cause, &what)?;
                continue;
            }
            if !slot.subscriptions.contains(&stored.stream) {
                continue;
            }
            let event = self.wanted(std::slice::from_ref(stored), &slot.subscriptions)?;
            let Some(event) = event.into_iter().next() else { continue };
            let Some(instance) = slot.actor.correlate(&event)? else { continue };
            let state = current(slot, changed, &instance);
            let what = format!("{} reacting to {}/{} #{}", slot.name, event.stream, event.key, event.sequence);
            let reaction = slot.actor.react(state.as_deref(), &event)?.map_err(|r| host_error(what.clone(), &r))?;
            let cause = self.cause_of(stored);
            self.apply_reaction(slot, &instance, reaction, changed, &cause, &what)?;
        }
        Ok(())
    }

    /// The cascade an input belongs to: the one of the reaction that sent its command or set
    /// its timer, or a new chain rooted at it.
    fn cause_of(&self, input: &StoredEvent) -> Cause {
        self.cascades.cause(&input.stream, &input.key, &input.command_id).unwrap_or_else(|| Cause {
            depth: 0,
            root: format!("{}/{} #{}", input.stream, input.key, input.sequence).into(),
        })
    }

    /// Refuses a reaction (to an input at `cause`) that goes over a bound of `[reactions]`.
    fn check_bounds(&self, reaction: &Reaction, cause: &Cause, what: &str) -> Result<(), RuntimeError> {
        let limits = &self.limits;
        let (commands, timers) = (reaction.commands.len() as u64, reaction.set_timers.len() as u64);
        let over = |bound, limit: u64, message: String| {
            Err(RuntimeError::ReactionBound { bound, limit, message: format!("{what}: {message}") })
        };
        if commands > u64::from(limits.max_commands_per_reaction) {
            return over(
                "max_commands_per_reaction",
                limits.max_commands_per_reaction.into(),
                format!("sends {commands} commands"),
            );
        }
        if timers > u64::from(limits.max_timers_per_reaction) {
            return over(
                "max_timers_per_reaction",
                limits.max_timers_per_reaction.into(),
                format!("sets {timers} timers"),
            );
        }
        let effects = commands + timers;
        if effects == 0 {
            return Ok(());
        }
        let depth = cause.depth.saturating_add(1);
        if depth > limits.max_cascade_depth {
            return over(
                "max_cascade_depth",
                limits.max_cascade_depth.into(),
                format!(
                    "would send commands or set timers at cascade depth {depth} (the chain started at {})",
                    cause.root
                ),
            );
        }
        let total = self.cascades.effects(&cause.root).saturating_add(effects);
        if total > limits.max_cascade_effects {
            return over(
                "max_cascade_effects",
                limits.max_cascade_effects,
                format!("would bring the commands and timers caused by {} to {total}", cause.root),
            );
        }
        Ok(())
    }

    fn apply_reaction(
        &mut self,
        slot: &mut ManagerSlot,
        instance: &str,
        reaction: Reaction,
        changed: &mut BTreeMap<String, Option<Vec<u8>>>,
        cause: &Cause,
        what: &str,
    ) -> Result<(), RuntimeError> {
        if let Err(e) = self.check_bounds(&reaction, cause, what) {
            self.stats.reactions_over_bounds += 1;
            return Err(e);
        }
        let effects = (reaction.commands.len() + reaction.set_timers.len()) as u64;
        self.cascades.add_effects(&cause.root, effects);
        let next = Cause { depth: cause.depth.saturating_add(1), root: cause.root.clone() };
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
            let stored: Vec<tollgate_store::Timer> = reaction
                .set_timers
                .iter()
                .map(|timer| tollgate_store::Timer {
                    id: timer_key(&slot.name, instance, &timer.id),
                    fire_at_ms: timer.fire_at,
                    payload: timer.payload.clone(),
                })
                .collect();
            for t in &stored {
                self.cascades.remember("", "", &t.id, next.clone());
            }
            // Concurrent puts: the store group-commits a reaction's timers in one sync.
            let puts = stored.into_iter().map(|t| self.journal.store().put_timer(t));
            for result in self.journal.block_on(futures_util::future::join_all(puts)) {
                result.map_err(|e| self.journal.error("set timer", e))?;
            }
            for timer in reaction.set_timers {
                slot.timers.insert((instance.to_string(), timer.id.clone()), timer);
            }
        }
        changed.insert(instance.into(), reaction.state);
        for command in reaction.commands {
            self.cascades.remember(&command.stream, &command.key, &command.command_id, next.clone());
            if let Outcome::Rejected(rejection) = self.execute(&command)? {
                tracing::warn!(manager = %slot.name, command = %command.command_type, code = %rejection.code, "command refused");
                self.refused.push(RefusedCommand { manager: slot.name.clone(), command, rejection });
            }
        }
        Ok(())
    }

    /// Records the timers due at `now` as events on [`TIMER_STREAM`] (earliest first, in
    /// batches of `reactions.timer_batch`) and dispatches them, until none is due (a reaction
    /// may set another) or `reactions.max_timers_per_tick` fired; returns how many fired.
    /// Timers left due fire on the next tick.
    pub fn fire_due_timers(&mut self) -> Result<usize, RuntimeError> {
        let mut fired = 0;
        let per_tick = self.limits.max_timers_per_tick as usize;
        loop {
            let now = self.clock.now_ms();
            let due = self.journal.run("read timers", self.journal.store().due_timers(now))?;
            let room = per_tick.saturating_sub(fired).min(self.limits.timer_batch as usize);
            let mut ours = due
                .into_iter()
                .filter_map(|t| {
                    let key = serde_json::from_str::<TimerKey>(&t.id).ok()?;
                    self.managers.iter().any(|m| m.name == key.manager).then_some((t, key))
                })
                .peekable();
            if ours.peek().is_none() {
                return Ok(fired);
            }
            if room == 0 {
                tracing::warn!(
                    fired,
                    max_timers_per_tick = per_tick,
                    "more timers are due than one tick may fire; the rest fire on the next tick"
                );
                return Ok(fired);
            }
            let batch: Vec<(tollgate_store::Timer, TimerKey)> = ours.take(room).collect();
            fired += batch.len();
            self.fire_batch(batch, now)?;
            self.pump()?;
        }
    }

    /// Records a batch of due timers and removes them from the store, each with concurrent
    /// store calls, so a store that group-commits (the embedded log) syncs once per batch.
    /// A timer recorded twice (a crash before its removal) keeps its first record: its event's
    /// command id is the timer's id and due time.
    fn fire_batch(&mut self, batch: Vec<(tollgate_store::Timer, TimerKey)>, now: u64) -> Result<(), RuntimeError> {
        let fired: Vec<(String, String, String)> =
            batch.iter().map(|(_, k)| (k.manager.clone(), k.instance.clone(), k.id.clone())).collect();
        let events: Vec<Event> = batch
            .into_iter()
            .map(|(timer, key)| Event {
                stream: TIMER_STREAM.into(),
                key: format!("{}/{}", key.manager, key.instance),
                event_type: "timer-fired".into(),
                schema_version: 1,
                content_type: tollgate_codec::JSON.into(),
                payload: serde_json::to_vec(&FiredTimer { fire_at: timer.fire_at_ms, payload: timer.payload, key })
                    .expect("timers encode"),
                sequence: 0,
                time: now,
                command_id: format!("{}@{}", timer.id, timer.fire_at_ms),
                correlation_id: timer.id,
                causation_id: String::new(),
            })
            .collect();
        let store = self.journal.store();
        // Appends to one key race for its next sequence (JetStream retries a lost race a
        // bounded number of times), so each wave holds at most SAME_KEY_CONCURRENCY per key.
        let mut waves: Vec<Vec<&Event>> = Vec::new();
        let mut per_key: HashMap<&str, usize> = HashMap::new();
        for e in &events {
            let n = per_key.entry(e.key.as_str()).or_default();
            let wave = *n / SAME_KEY_CONCURRENCY;
            *n += 1;
            if waves.len() <= wave {
                waves.push(Vec::new());
            }
            waves[wave].push(e);
        }
        for wave in waves {
            let appends = wave.iter().map(|e| store.append(&e.stream, &e.key, ExpectedVersion::Any, vec![to_new(e)]));
            for result in self.journal.block_on(futures_util::future::join_all(appends)) {
                match result {
                    Ok(_) => {}
                    Err(StoreError::Duplicate { .. }) => self.stats.duplicates += 1,
                    Err(e) => return Err(self.journal.error("record due timer", e)),
                }
            }
        }
        for e in &events {
            // The timer's reaction continues the cascade of the reaction that set it.
            if let Some(cause) = self.cascades.cause("", "", &e.correlation_id) {
                self.cascades.remember(&e.stream, &e.key, &e.command_id, cause);
            }
        }
        let cancels = events.iter().map(|e| store.cancel_timer(&e.correlation_id));
        for result in self.journal.block_on(futures_util::future::join_all(cancels)) {
            result.map_err(|e| self.journal.error("cancel fired timer", e))?;
        }
        for (manager, instance, id) in fired {
            if let Some(slot) = self.managers.iter_mut().find(|m| m.name == manager) {
                slot.timers.remove(&(instance, id));
            }
        }
        Ok(())
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
