//! Dispatch: every commit is delivered to projectors and process managers through durable
//! consumers, and what they do with it is committed with their checkpoint.
//!
//! - Projectors: each delivery is projected; a page of deliveries' key-value writes and the
//!   checkpoint are committed in one store call, then the page is acked in one more. A
//!   refusal or trap is nacked, and after `max_deliver` attempts dead-lettered.
//! - Process managers: like projectors, with instance states as their key-value writes (a
//!   page's later deliveries see the states its earlier ones left). The commands a reaction
//!   sends run at once (with a [`crate::CommandRunner`], on it when the page settles); the
//!   timers it sets are kept by [`crate::timers`].
//!   A reaction over a bound of `[reactions]` ([`crate::cascade`]) does nothing and fails its
//!   delivery. A command an aggregate refuses is recorded on [`REFUSALS_STREAM`] and delivered
//!   to the instance that sent it (its `react`), like any other input: a manager that cannot
//!   take it fails that delivery, which ends in the dead letters.

use crate::cascade::Cause;
use crate::error::RuntimeError;
use crate::journal::{from_stored, to_new};
use crate::namespace::{INSTANCES, META, REFUSALS_STREAM, TIMER_STREAM, is_reserved};
use crate::shared::Shared;
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use tollgate_codec::refusal::{COMMAND_REFUSED, CommandRefused};
use tollgate_host::aggregate::{Command, Event, Outcome, Rejection, Timer};
use tollgate_host::typed::Reaction;
use tollgate_host::{HostError, HostState, ProcessManagerActor, ProjectorActor};
use tollgate_store::{
    Consumer, ConsumerOptions, Delivery, ExpectedVersion, KvWrite, NackOutcome, StoreError, StoredEvent,
};

/// Deliveries asked for at once.
const DELIVERY_BATCH: usize = 256;

/// Bytes of key-value writes a page holds before they are committed: well inside the
/// 1 MiB message in which a JetStream store records a projection commit.
const PAGE_BYTES: usize = 512 * 1024;

/// What a page of deliveries to one consumer did and has not committed yet. Its writes are
/// committed with the checkpoint of the last delivery that made any, then all its deliveries
/// are acknowledged at once: a page costs two store writes (two syncs), not two per delivery.
/// A delivery that fails settles the page before it is nacked, so acknowledgements and
/// failures reach the consumer in delivery order.
#[derive(Default)]
struct Page {
    /// Key-value writes in the order they were made (later ones win).
    writes: Vec<KvWrite>,
    bytes: usize,
    /// The checkpoint the writes commit with: the highest position that wrote.
    commit_at: Option<u64>,
    acks: Vec<u64>,
}

/// `writes` with only the last write of each (bucket, key): what committing them in order
/// would leave.
fn last_writes(writes: Vec<KvWrite>) -> Vec<KvWrite> {
    let mut at: HashMap<(String, String), usize> = HashMap::with_capacity(writes.len());
    let mut out: Vec<KvWrite> = Vec::with_capacity(writes.len());
    for w in writes {
        match at.entry((w.bucket.clone(), w.key.clone())) {
            Entry::Occupied(e) => out[*e.get()] = w,
            Entry::Vacant(e) => {
                e.insert(out.len());
                out.push(w);
            }
        }
    }
    out
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
    /// States the page of deliveries under way changed, not committed yet (`None`: finished).
    pub pending: BTreeMap<String, Option<Vec<u8>>>,
    /// (instance, timer id) -> timer.
    pub timers: BTreeMap<(String, String), Timer>,
    /// Timers the page of deliveries under way set (`Some`) or cancelled (`None`), by their
    /// id in the store, not written yet.
    pub timer_writes: BTreeMap<String, Option<tollgate_store::Timer>>,
    /// Commands the page's reactions sent, for a [`crate::CommandRunner`] to run when the page
    /// is settled: (instance, command, its place in the cascade).
    pub commands: Vec<(String, Command, Cause)>,
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

/// A refusal by an actor as a host error naming what was refused.
pub(crate) fn host_error(context: String, rejection: &Rejection) -> HostError {
    HostError::Host { context, message: format!("{}: {}", rejection.code, rejection.message) }
}

/// The correlation id of a delivery (of its first event), for tracing.
fn correlation(delivery: &Delivery) -> &str {
    delivery.events.first().map_or("", |e| e.correlation_id.as_str())
}

impl Shared {
    /// Opens the consumer of a projector or process manager.
    pub fn consumer(&self, name: &str, max_deliver: u32) -> Result<Box<dyn Consumer>, RuntimeError> {
        let options = ConsumerOptions { max_deliver, ..ConsumerOptions::default() };
        self.journal.run("open consumer", self.journal.store().consumer(name, options))
    }

    /// Loads what a projector committed before (its buckets) into its host state.
    pub fn restore_projection(&self, slot: &mut ProjectorSlot) -> Result<(), RuntimeError> {
        let name = slot.name.as_str();
        slot.buckets = crate::read_model::buckets(&self.journal, name)?;
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
        self.restore_timers(slot)
    }

    /// Delivers every new commit to projectors and process managers, runs the commands they
    /// send, and repeats until nothing new happens.
    pub fn pump(&mut self) -> Result<(), RuntimeError> {
        while self.pump_step()? {}
        Ok(())
    }

    /// Delivers the next page of commits (up to [`DELIVERY_BATCH`]) to each projector and
    /// process manager; returns whether any had something new. A caller with other work
    /// (a served node's primary) interleaves it between steps rather than waiting for a
    /// backlog to drain.
    pub fn pump_step(&mut self) -> Result<bool, RuntimeError> {
        if self.projectors.is_empty() && self.managers.is_empty() {
            return Ok(false);
        }
        // Read before the step: when nothing was new, everything up to it was delivered.
        let head = self.journal.run("read the log's head", self.journal.store().head_position())?;
        let mut lowest: Option<u64> = None;
        let mut projectors = std::mem::take(&mut self.projectors);
        let result = projectors.iter_mut().try_for_each(|p| {
            if let Some(last) = self.project(p)? {
                lowest = Some(lowest.map_or(last, |l| l.min(last)));
            }
            Ok::<_, RuntimeError>(())
        });
        self.projectors = projectors;
        result?;
        let mut managers = std::mem::take(&mut self.managers);
        let result = managers.iter_mut().try_for_each(|m| {
            if let Some(last) = self.manage(m)? {
                lowest = Some(lowest.map_or(last, |l| l.min(last)));
            }
            Ok::<_, RuntimeError>(())
        });
        self.managers = managers;
        result?;
        self.delivered_through = lowest.unwrap_or(head).max(self.delivered_through);
        Ok(lowest.is_some())
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

    /// Commits what `page` holds: its writes with the checkpoint of the last delivery that
    /// made any, then the acknowledgement of every delivery of it.
    fn settle(&self, name: &str, consumer: &mut Box<dyn Consumer>, page: &mut Page) -> Result<(), RuntimeError> {
        let page = std::mem::take(page);
        if let Some(position) = page.commit_at {
            self.commit(name, position, last_writes(page.writes))?;
        }
        if !page.acks.is_empty() {
            self.journal.block_on(consumer.ack_all(&page.acks)).map_err(|e| self.journal.error("ack", e))?;
        }
        Ok(())
    }

    /// Projects the next page of deliveries; returns the position of the last, if any.
    fn project(&mut self, slot: &mut ProjectorSlot) -> Result<Option<u64>, RuntimeError> {
        let deliveries = self.next_deliveries(&mut slot.consumer)?;
        let last = deliveries.last().map(|d| d.position);
        let mut page = Page::default();
        for delivery in deliveries {
            let span = tracing::info_span!("project", projector = %slot.name, position = delivery.position, correlation_id = %correlation(&delivery));
            let _entered = span.enter();
            let events = match self.wanted(&delivery.events, &slot.subscriptions) {
                Ok(events) => events,
                Err(e) => {
                    self.settle(&slot.name, &mut slot.consumer, &mut page)?;
                    self.fail(&slot.name, &mut slot.consumer, delivery.position, &e.to_string())?;
                    continue;
                }
            };
            if events.is_empty() {
                page.acks.push(delivery.position);
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
                // The page's earlier writes go first: the undo reads what the store holds.
                self.settle(&slot.name, &mut slot.consumer, &mut page)?;
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
                let list = serde_json::to_vec(&slot.buckets).expect("a list of strings always encodes as JSON");
                writes.push(KvWrite { bucket: META.into(), key: "buckets".into(), value: Some(list) });
            }
            let bytes: usize =
                writes.iter().map(|w| w.bucket.len() + w.key.len() + w.value.as_ref().map_or(0, Vec::len)).sum();
            if page.bytes + bytes > PAGE_BYTES {
                self.settle(&slot.name, &mut slot.consumer, &mut page)?;
            }
            page.bytes += bytes;
            page.writes.extend(writes);
            // A redriven dead letter may come after newer commits: the checkpoint never goes back.
            page.commit_at = page.commit_at.max(Some(delivery.position));
            page.acks.push(delivery.position);
        }
        self.settle(&slot.name, &mut slot.consumer, &mut page)?;
        Ok(last)
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

    /// Runs the reactions to the next page of deliveries; returns the position of the last,
    /// if any.
    fn manage(&mut self, slot: &mut ManagerSlot) -> Result<Option<u64>, RuntimeError> {
        let deliveries = self.next_deliveries(&mut slot.consumer)?;
        let last = deliveries.last().map(|d| d.position);
        let mut page = Page::default();
        for delivery in deliveries {
            let span = tracing::info_span!("manage", manager = %slot.name, position = delivery.position, correlation_id = %correlation(&delivery));
            let _entered = span.enter();
            // A delivery's states join the page's only once it succeeded, so a failure leaves
            // them as the page's earlier deliveries left them.
            let mut changed: BTreeMap<String, Option<Vec<u8>>> = BTreeMap::new();
            match self.manage_delivery(slot, &delivery, &mut changed) {
                Ok(()) => {
                    if !changed.is_empty() {
                        let bytes: usize = changed.iter().map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len)).sum();
                        if page.bytes + bytes > PAGE_BYTES {
                            self.settle_manager(slot, &mut page)?;
                        }
                        page.bytes += bytes;
                        page.commit_at = page.commit_at.max(Some(delivery.position));
                        slot.pending.extend(changed);
                    }
                    page.acks.push(delivery.position);
                }
                Err(e) => {
                    self.settle_manager(slot, &mut page)?;
                    self.fail(&slot.name, &mut slot.consumer, delivery.position, &e.to_string())?;
                }
            }
        }
        self.settle_manager(slot, &mut page)?;
        Ok(last)
    }

    /// [`Shared::settle`] for a process manager: the commands its page sent are run (on the
    /// [`crate::CommandRunner`] if there is one), the timers it set and cancelled written,
    /// then the page's instance states are its writes, and they become the manager's states
    /// once committed (dropped if anything before fails).
    fn settle_manager(&mut self, slot: &mut ManagerSlot, page: &mut Page) -> Result<(), RuntimeError> {
        // Commands and timers first: a page whose checkpoint moved never lacks what it sent.
        if let Err(e) = self.run_commands(slot) {
            slot.pending.clear();
            slot.timer_writes.clear();
            return Err(e);
        }
        let pending = std::mem::take(&mut slot.pending);
        self.write_timers(slot)?;
        page.writes = pending
            .iter()
            .map(|(k, v)| KvWrite { bucket: INSTANCES.into(), key: k.clone(), value: v.clone() })
            .collect();
        self.settle(&slot.name, &mut slot.consumer, page)?;
        for (instance, state) in pending {
            match state {
                Some(s) => slot.states.insert(instance, s),
                None => slot.states.remove(&instance),
            };
        }
        Ok(())
    }

    fn manage_delivery(
        &mut self,
        slot: &mut ManagerSlot,
        delivery: &Delivery,
        changed: &mut BTreeMap<String, Option<Vec<u8>>>,
    ) -> Result<(), RuntimeError> {
        for stored in &delivery.events {
            if stored.stream == TIMER_STREAM {
                self.react_to_timer(slot, stored, changed)?;
                continue;
            }
            if stored.stream == REFUSALS_STREAM {
                self.react_to_refusal(slot, stored, changed)?;
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

    /// Does what a process manager's reaction (to an input at `cause`) asks, unless it goes
    /// over a bound of `[reactions]`: its timers are set and cancelled, its instance state is
    /// noted in `changed`, and its commands run.
    pub(crate) fn apply_reaction(
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
        let next = cause.next();
        let Reaction { state, commands, set_timers, cancel_timers } = reaction;
        self.reschedule(slot, instance, state.is_none(), set_timers, cancel_timers, &next)?;
        changed.insert(instance.into(), state);
        for command in commands {
            self.cascades.remember(&command.stream, &command.key, &command.command_id, next.clone());
            if self.runner.is_some() {
                slot.commands.push((instance.into(), command, next.clone()));
                continue;
            }
            let outcome = self.execute_sent(&command)?;
            self.refused_or_not(&slot.name, instance, command, outcome, &next)?;
        }
        Ok(())
    }

    /// Executes a command a process manager sent here, its refusal counted as the manager's.
    fn execute_sent(&mut self, command: &Command) -> Result<Outcome, RuntimeError> {
        let outcome = self.execute(command)?;
        if let Outcome::Rejected(rejection) = &outcome {
            self.stats.recount_as_reaction_refusal(&rejection.code);
        }
        Ok(outcome)
    }

    /// What follows a process manager's command: a refusal is recorded on
    /// [`REFUSALS_STREAM`] for the instance that sent it, and kept for inspection.
    fn refused_or_not(
        &mut self,
        manager: &str,
        instance: &str,
        command: Command,
        outcome: Outcome,
        cause: &Cause,
    ) -> Result<(), RuntimeError> {
        if let Outcome::Rejected(rejection) = outcome {
            tracing::warn!(manager, command = %command.command_type, code = %rejection.code, "command refused; telling the process manager");
            self.record_refusal(manager, instance, &command, &rejection, cause)?;
            self.refused.push(RefusedCommand { manager: manager.into(), command, rejection });
        }
        Ok(())
    }

    /// Runs the commands a page of `slot`'s reactions sent, on the [`crate::CommandRunner`]
    /// (or here, when it takes none), all handed over at once.
    fn run_commands(&mut self, slot: &mut ManagerSlot) -> Result<(), RuntimeError> {
        let sent = std::mem::take(&mut slot.commands);
        if sent.is_empty() {
            return Ok(());
        }
        let commands: Vec<Command> = sent.iter().map(|(_, command, _)| command.clone()).collect();
        let outcomes = self.runner.as_ref().and_then(|runner| runner.run(&commands));
        let outcomes = match outcomes {
            Some(outcomes) => outcomes,
            None => commands.iter().map(|command| self.execute_sent(command).map_err(|e| e.to_string())).collect(),
        };
        for ((instance, command, cause), outcome) in sent.into_iter().zip(outcomes) {
            let what = format!("{} sent `{}` {}", slot.name, command.command_type, command.command_id);
            let outcome = outcome.map_err(|message| RuntimeError::from(HostError::Host { context: what, message }))?;
            self.refused_or_not(&slot.name, &instance, command, outcome, &cause)?;
        }
        Ok(())
    }

    /// Records that the aggregate refused `command` of `manager`'s `instance` as an event on
    /// [`REFUSALS_STREAM`], which the manager's consumer then delivers to the instance. Its id
    /// names the command and the code, so a redelivered reaction's refusal is recorded once;
    /// what the manager does about it is one step deeper in the cascade than the command.
    fn record_refusal(
        &mut self,
        manager: &str,
        instance: &str,
        command: &Command,
        rejection: &Rejection,
        cause: &Cause,
    ) -> Result<(), RuntimeError> {
        let refused = CommandRefused {
            manager: manager.into(),
            instance: instance.into(),
            stream: command.stream.clone(),
            key: command.key.clone(),
            command_id: command.command_id.clone(),
            command_type: command.command_type.clone(),
            payload: String::from_utf8(command.payload.clone()).unwrap_or_default(),
            kind: rejection.kind.name().into(),
            code: rejection.code.clone(),
            message: rejection.message.clone(),
        };
        let event = Event {
            stream: REFUSALS_STREAM.into(),
            key: format!("{manager}/{instance}"),
            event_type: COMMAND_REFUSED.into(),
            schema_version: 1,
            content_type: tollgate_codec::JSON.into(),
            payload: serde_json::to_vec(&refused).expect("a struct of strings always encodes as JSON"),
            sequence: 0,
            time: self.clock.now_ms(),
            command_id: format!("refused/{}/{}/{}/{}", command.stream, command.key, command.command_id, rejection.code),
            correlation_id: command.correlation_id.clone(),
            causation_id: command.command_id.clone(),
        };
        let store = self.journal.store();
        let appended = self.journal.block_on(store.append(
            &event.stream,
            &event.key,
            ExpectedVersion::Any,
            vec![to_new(&event, &[])],
        ));
        match appended {
            Ok(_) | Err(StoreError::Duplicate { .. }) => {}
            Err(e) => return Err(self.journal.error("record refused command", e)),
        }
        self.cascades.remember(&event.stream, &event.key, &event.command_id, cause.next());
        Ok(())
    }

    /// Runs `slot`'s reaction to a refusal recorded on [`REFUSALS_STREAM`] (if the refused
    /// command was its own): the event goes to the instance that sent the command, whose
    /// `react` may compensate; a refusal it refuses fails the delivery like any other input.
    fn react_to_refusal(
        &mut self,
        slot: &mut ManagerSlot,
        stored: &StoredEvent,
        changed: &mut BTreeMap<String, Option<Vec<u8>>>,
    ) -> Result<(), RuntimeError> {
        let refused: CommandRefused = tollgate_codec::from_json(&stored.payload).map_err(|source| {
            RuntimeError::undecodable_event(&stored.stream, &stored.key, stored.sequence, &stored.event_type, source)
        })?;
        if refused.manager != slot.name {
            return Ok(());
        }
        let state = current(slot, changed, &refused.instance);
        let what = format!(
            "{} told that `{}` {} on {}/{} was refused ({})",
            slot.name, refused.command_type, refused.command_id, refused.stream, refused.key, refused.code
        );
        let event = from_stored(stored.clone());
        let reaction = slot.actor.react(state.as_deref(), &event)?.map_err(|r| host_error(what.clone(), &r))?;
        let cause = self.cause_of(stored);
        self.apply_reaction(slot, &refused.instance, reaction, changed, &cause, &what)
    }
}

/// An instance's state as the delivery under way left it so far.
pub(crate) fn current(
    slot: &ManagerSlot,
    changed: &BTreeMap<String, Option<Vec<u8>>>,
    instance: &str,
) -> Option<Vec<u8>> {
    match changed.get(instance).or_else(|| slot.pending.get(instance)) {
        Some(state) => state.clone(),
        None => slot.states.get(instance).cloned(),
    }
}
