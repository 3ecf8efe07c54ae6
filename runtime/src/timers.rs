//! Process-manager timers: kept in the store, fired on the runtime's clock.
//!
//! A due timer becomes an event on [`TIMER_STREAM`], so its reaction is checkpointed like any
//! other delivery. Due timers are recorded in batches (concurrent appends, so the store
//! group-commits them), at most `reactions.max_timers_per_tick` per tick.

use crate::cascade::Cause;
use crate::dispatch::{ManagerSlot, current, host_error};
use crate::error::RuntimeError;
use crate::journal::to_new;
use crate::namespace::TIMER_STREAM;
use crate::shared::Shared;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use tollgate_host::aggregate::{Event, Timer};
use tollgate_store::{ExpectedVersion, StoreError, StoredEvent};

/// Due timers of one key recorded concurrently (they race for the key's next sequence).
const SAME_KEY_CONCURRENCY: usize = 16;

/// Due timers read from the store per page while looking for a batch of this runtime's.
const DUE_PAGE: usize = 256;

/// A due timer as recorded on [`TIMER_STREAM`], and its id in the store.
#[derive(Serialize, Deserialize)]
struct TimerKey {
    manager: String,
    instance: String,
    id: String,
}

/// The payload of a `timer-fired` event on [`TIMER_STREAM`].
#[derive(Serialize, Deserialize)]
struct FiredTimer {
    #[serde(flatten)]
    key: TimerKey,
    fire_at: u64,
    payload: Vec<u8>,
}

/// The store id of timer `id` of `manager`'s `instance`.
fn timer_key(manager: &str, instance: &str, id: &str) -> String {
    serde_json::to_string(&TimerKey { manager: manager.into(), instance: instance.into(), id: id.into() })
        .expect("a struct of strings always encodes as JSON")
}

/// The timer key of a store timer; `None` for a timer the runtime did not set.
fn parse_timer_key(id: &str) -> Option<TimerKey> {
    // The runtime sets every timer it owns with `timer_key`; an id that does not parse as one
    // was set by another user of the store, and is not the runtime's to fire or restore.
    serde_json::from_str(id).ok()
}

impl Shared {
    /// Loads the open timers of a process manager from the store.
    pub(crate) fn restore_timers(&self, slot: &mut ManagerSlot) -> Result<(), RuntimeError> {
        for timer in self.journal.run("read timers", self.journal.store().due_timers(u64::MAX))? {
            let Some(key) = parse_timer_key(&timer.id) else { continue };
            if key.manager == slot.name {
                let t = Timer { id: key.id.clone(), fire_at: timer.fire_at_ms, payload: timer.payload };
                slot.timers.insert((key.instance, key.id), t);
            }
        }
        Ok(())
    }

    /// Does what a reaction of `slot` on `instance` asks of its timers: cancels `cancel` (and
    /// every timer of the instance when it `finished`), otherwise sets `set`; what the set
    /// timers cause is at `next` in the cascade. The store is written when the page of
    /// deliveries under way is settled ([`Shared::write_timers`]).
    pub(crate) fn reschedule(
        &mut self,
        slot: &mut ManagerSlot,
        instance: &str,
        finished: bool,
        set: Vec<Timer>,
        mut cancel: Vec<String>,
        next: &Cause,
    ) -> Result<(), RuntimeError> {
        if finished {
            // The instance's timers are one range of the map, ordered by instance first.
            let from = (instance.to_string(), String::new());
            let own = slot.timers.range(from..).map(|((i, id), _)| (i, id)).take_while(|(i, _)| *i == instance);
            cancel.extend(own.map(|(_, id)| id.clone()));
        }
        for id in cancel {
            slot.timer_writes.insert(timer_key(&slot.name, instance, &id), None);
            slot.timers.remove(&(instance.to_string(), id));
        }
        if finished {
            return Ok(());
        }
        for timer in &set {
            let id = timer_key(&slot.name, instance, &timer.id);
            self.cascades.remember("", "", &id, next.clone());
            let stored =
                tollgate_store::Timer { id: id.clone(), fire_at_ms: timer.fire_at, payload: timer.payload.clone() };
            slot.timer_writes.insert(id, Some(stored));
        }
        for timer in set {
            slot.timers.insert((instance.to_string(), timer.id.clone()), timer);
        }
        Ok(())
    }

    /// Writes what a page of reactions did to `slot`'s timers (the last word on each), every
    /// put and cancel at once, so a store that group-commits (the embedded log) syncs once.
    pub(crate) fn write_timers(&self, slot: &mut ManagerSlot) -> Result<(), RuntimeError> {
        let writes = std::mem::take(&mut slot.timer_writes);
        if writes.is_empty() {
            return Ok(());
        }
        let written = self.journal.store().write_timers(writes.into_iter().collect());
        self.journal.run("set or cancel timers", written)?;
        Ok(())
    }

    /// Runs `slot`'s reaction to a fired timer recorded on [`TIMER_STREAM`] (if the timer is
    /// its own), noting the instance's new state in `changed`.
    pub(crate) fn react_to_timer(
        &mut self,
        slot: &mut ManagerSlot,
        stored: &StoredEvent,
        changed: &mut BTreeMap<String, Option<Vec<u8>>>,
    ) -> Result<(), RuntimeError> {
        let fired: FiredTimer = tollgate_codec::from_json(&stored.payload).map_err(|source| {
            RuntimeError::undecodable_event(&stored.stream, &stored.key, stored.sequence, &stored.event_type, source)
        })?;
        if fired.key.manager != slot.name {
            return Ok(());
        }
        let instance = fired.key.instance.clone();
        let state = current(slot, changed, &instance);
        let timer = Timer { id: fired.key.id.clone(), fire_at: fired.fire_at, payload: fired.payload };
        let now = self.clock.now_ms();
        let what = format!("{} on timer `{}` of `{instance}`", slot.name, timer.id);
        let reaction = slot.actor.on_timer(state.as_deref(), &timer, now)?.map_err(|r| host_error(what.clone(), &r))?;
        self.stats.timers_fired += 1;
        let cause = self.cause_of(stored);
        self.apply_reaction(slot, &instance, reaction, changed, &cause, &what)
    }

    /// Records the timers due at `now` as events on [`TIMER_STREAM`] (earliest first, in
    /// batches of `reactions.timer_batch`) and dispatches them, until none is due (a reaction
    /// may set another) or `reactions.max_timers_per_tick` fired; returns how many fired.
    /// Timers left due fire on the next tick.
    pub fn fire_due_timers(&mut self) -> Result<usize, RuntimeError> {
        let mut fired = 0;
        loop {
            let batch = self.fire_due_batch(fired)?;
            if batch == 0 {
                return Ok(fired);
            }
            fired += batch;
            self.pump()?;
        }
    }

    /// Records one batch (`reactions.timer_batch`) of the timers now due, when `fired` this
    /// tick leaves room under `reactions.max_timers_per_tick`; returns how many. Their
    /// reactions run when the log is delivered next, so a caller that delivers page by page
    /// (a served node's primary) is never held for a whole backlog of reactions.
    pub fn fire_due_batch(&mut self, fired: usize) -> Result<usize, RuntimeError> {
        // A runtime without process managers (a served node's worker) owns no timer: it does
        // not read the due ones on every request.
        if self.managers.is_empty() {
            return Ok(0);
        }
        let now = self.clock.now_ms();
        let per_tick = self.limits.max_timers_per_tick as usize;
        let room = per_tick.saturating_sub(fired).min(self.limits.timer_batch as usize);
        // With no room left, one of ours due is enough to say so.
        let batch = self.due_ours(now, room.max(1))?;
        if batch.is_empty() {
            return Ok(0);
        }
        if room == 0 {
            tracing::warn!(
                fired,
                max_timers_per_tick = per_tick,
                "more timers are due than one tick may fire; the rest fire on the next tick"
            );
            return Ok(0);
        }
        let count = batch.len();
        self.fire_batch(batch, now)?;
        Ok(count)
    }

    /// Up to `want` of the timers due at `now` that belong to this runtime's managers, earliest
    /// first, read from the store a page at a time (timers of managers run elsewhere are
    /// passed over).
    fn due_ours(&self, now: u64, want: usize) -> Result<Vec<(tollgate_store::Timer, TimerKey)>, RuntimeError> {
        let page_size = want.max(DUE_PAGE);
        let mut ours = Vec::new();
        let mut after = None;
        loop {
            let page = self
                .journal
                .run("read timers", self.journal.store().due_timers_page(now, after.as_ref(), page_size))?;
            let full = page.len() == page_size;
            after = page.last().map(|t| (t.fire_at_ms, t.id.clone()));
            for timer in page {
                let Some(key) = parse_timer_key(&timer.id) else { continue };
                if self.managers.iter().any(|m| m.name == key.manager) {
                    ours.push((timer, key));
                    if ours.len() == want {
                        return Ok(ours);
                    }
                }
            }
            if !full {
                return Ok(ours);
            }
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
                    .expect("a struct of strings, numbers and bytes always encodes as JSON"),
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
            let appends =
                wave.iter().map(|e| store.append(&e.stream, &e.key, ExpectedVersion::Any, vec![to_new(e, &[])]));
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
