//! Writing the log: commands on aggregates, and facts reported from outside.
//!
//! A command's key is loaded once (snapshot + tail, upcast), the command is decided, and its
//! events are appended with the expected sequence (optimistic concurrency). A lost race
//! forgets the key, reloads and decides again; a committed command id is answered from the
//! log. States are snapshotted every `snapshot_every` events under the actor's digest.

use crate::error::RuntimeError;
use crate::journal::{from_stored, to_new};
use crate::namespace::is_reserved;
use crate::shared::Shared;
use std::collections::{HashMap, VecDeque};
use std::time::Duration;
use tollgate_billing_model::account::Account;
use tollgate_host::aggregate::{Command, Event, Outcome, command_digest, command_id_conflict};
use tollgate_host::{AggregateHost, HostError};
use tollgate_store::{ExpectedVersion, Snapshot, StoreError};

/// How many recent command ids per key are remembered, so a retry whose events are older than
/// the snapshot is still answered from the log rather than decided again.
const DEDUP_HORIZON: u64 = 1024;
/// Attempts of one command before contention is reported.
const MAX_ATTEMPTS: u32 = 64;

/// An aggregate actor, its cached states, and what was read of each key.
pub(crate) struct AggregateSlot {
    pub host: AggregateHost,
    /// Identifies the actor build and state encoding that wrote a snapshot.
    pub snapshot_tag: String,
    pub loaded: HashMap<String, LoadedKey>,
    /// Accounts the charging facade read, decoded, each at the sequence it was folded to: kept
    /// current from the events this runtime commits (folded by the billing model, as the
    /// account actor folds them), so reading an account costs no call into the actor.
    pub accounts: HashMap<String, (u64, Account)>,
}

/// What the runtime knows about one key beyond its state.
#[derive(Default)]
pub(crate) struct LoadedKey {
    snapshot_sequence: u64,
    /// command id -> (first, last) sequence and the command's digest (empty: unknown), for the
    /// last [`DEDUP_HORIZON`] commands.
    commands: HashMap<String, (u64, u64, Vec<u8>)>,
    order: VecDeque<String>,
}

impl LoadedKey {
    fn remember(&mut self, command_id: &str, sequence: u64, digest: &[u8]) {
        if command_id.is_empty() {
            return;
        }
        match self.commands.get_mut(command_id) {
            Some(range) => range.1 = range.1.max(sequence),
            None => {
                self.commands.insert(command_id.into(), (sequence, sequence, digest.to_vec()));
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

impl Shared {
    /// Reads a key's snapshot and the events after it into the aggregate's cache.
    fn load(&mut self, actor: &str, key: &str) -> Result<(), RuntimeError> {
        let slot = self.aggregates.get_mut(actor).ok_or_else(|| RuntimeError::NoSuchActor(actor.into()))?;
        if slot.loaded.contains_key(key) {
            return Ok(());
        }
        let stream = slot.host.info().stream.clone();
        let tag = slot.snapshot_tag.clone();
        let snapshot = self.journal.run("read snapshot", self.journal.store().get_snapshot(&stream, key, &tag))?;
        let at = snapshot.as_ref().map_or(0, |s| s.sequence);
        let from = at.saturating_sub(DEDUP_HORIZON) + 1;
        let tail = self.journal.run("read events", self.journal.store().read(&stream, key, from))?;
        let mut loaded = LoadedKey { snapshot_sequence: at, ..LoadedKey::default() };
        for e in &tail {
            loaded.remember(&e.command_id, e.sequence, &e.command_digest);
        }
        let fresh: Vec<Event> = tail.into_iter().filter(|e| e.sequence > at).map(from_stored).collect();
        slot.host.load(key, snapshot.map(|s| (s.sequence, s.state)), fresh)?;
        slot.loaded.insert(key.into(), loaded);
        Ok(())
    }

    /// Drops a key's cached state, so the next use reads it from the store.
    pub fn forget(&mut self, actor: &str, key: &str) {
        if let Some(slot) = self.aggregates.get_mut(actor) {
            slot.host.forget(key);
            slot.loaded.remove(key);
            slot.accounts.remove(key);
        }
    }

    /// The events `(first..=last)` of a key, as committed, and the digest of the command that
    /// wrote them (empty: unknown).
    fn committed(&self, stream: &str, key: &str, first: u64, last: u64) -> Result<(Vec<Event>, Vec<u8>), RuntimeError> {
        let events = self.journal.run("read events", self.journal.store().read(stream, key, first))?;
        let digest = events.first().map(|e| e.command_digest.clone()).unwrap_or_default();
        let mut events: Vec<Event> = events.into_iter().map(from_stored).collect();
        // A command held in the batch under way is answered from what it will commit.
        if let Some(batch) = &self.batch {
            events.extend(batch.events(stream, key, first));
        }
        Ok((events.into_iter().take_while(|e| e.sequence <= last).collect(), digest))
    }

    /// The answer to a command whose id was committed before: its events again, or a conflict
    /// when that id was committed for another command (digests known and different).
    fn answer_repeat(&mut self, command: &Command, digest: &[u8], known: &[u8], events: Vec<Event>) -> Outcome {
        if !known.is_empty() && known != digest {
            *self.stats.rejected.entry("command-id-conflict".into()).or_default() += 1;
            tracing::debug!("command id reused for another command");
            return Outcome::Rejected(command_id_conflict(command));
        }
        self.stats.duplicates += 1;
        tracing::debug!("repeated command answered from the log");
        Outcome::Accepted(events)
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
        let digest = command_digest(command);
        const REGISTERED: &str = "the aggregate was found above, and aggregates are never removed";
        let mut reloaded = false;
        for attempt in 1..=MAX_ATTEMPTS {
            self.load(actor, key)?;
            let slot = self.aggregates.get_mut(actor).expect(REGISTERED);
            let loaded = slot.loaded.get(key).expect("`load` succeeded, so the key is cached");
            if let Some((first, last, known)) = loaded.commands.get(&command.command_id).cloned() {
                let (events, _) = self.committed(stream, key, first, last)?;
                return Ok(self.answer_repeat(command, &digest, &known, events));
            }
            let expected = slot.host.sequence(key);
            let decided = match slot.host.execute(command) {
                // A fresh instance (after a trap) or an evicted key: load it once more.
                Err(HostError::NotResident { .. }) if !reloaded => {
                    reloaded = true;
                    self.forget(actor, key);
                    continue;
                }
                decided => decided?,
            };
            let events = match decided {
                Outcome::Rejected(r) => {
                    // A rejection appends nothing, so no append race tells a stale copy from the
                    // key as committed: another runtime over the store (a worker, the primary's
                    // reactions) may have moved it on. Only a decision on the latest state counts.
                    let latest =
                        self.journal.run("read last sequence", self.journal.store().last_sequence(stream, key))?;
                    if latest > expected && attempt < MAX_ATTEMPTS {
                        tracing::debug!(attempt, expected, latest, "rejected on a stale copy; reloading");
                        self.forget(actor, key);
                        continue;
                    }
                    *self.stats.rejected.entry(r.code.clone()).or_default() += 1;
                    return Ok(Outcome::Rejected(r));
                }
                Outcome::Accepted(events) => events,
            };
            let new = events.iter().map(|e| to_new(e, &digest)).collect();
            let appended = match &mut self.batch {
                Some(batch) => Ok(batch.hold(actor, stream, key, expected, new)),
                None => self.journal.append(stream, key, ExpectedVersion::Exact(expected), new),
            };
            let slot = self.aggregates.get_mut(actor).expect(REGISTERED);
            match appended {
                Ok(result) => {
                    let loaded =
                        slot.loaded.get_mut(key).expect("the key was cached above and only this call changes it");
                    loaded.remember(&command.command_id, result.first_sequence, &digest);
                    loaded.remember(&command.command_id, result.last_sequence, &digest);
                    follow_account(&mut slot.accounts, key, expected, result.last_sequence, &events);
                    self.stats.accepted += 1;
                    if self.batch.is_none() {
                        self.maybe_snapshot(actor, key)?;
                    }
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
                    slot.host.forget(key);
                    slot.loaded.remove(key);
                    let (events, known) =
                        self.committed(stream, key, original.first_sequence, original.last_sequence)?;
                    return Ok(self.answer_repeat(command, &digest, &known, events));
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

    /// Writes a snapshot of a key `execute_on` just committed to, once it is `snapshot_every`
    /// events past the last one.
    pub(crate) fn maybe_snapshot(&mut self, actor: &str, key: &str) -> Result<(), RuntimeError> {
        let Some(slot) = self.aggregates.get_mut(actor) else { return Ok(()) };
        // A key forgotten since (a batch's lost append) is snapshotted after its next load.
        let Some(loaded) = slot.loaded.get_mut(key) else { return Ok(()) };
        let sequence = slot.host.sequence(key);
        if self.snapshot_every == 0 || sequence - loaded.snapshot_sequence < self.snapshot_every {
            return Ok(());
        }
        let state = match slot.host.state(key) {
            Ok(Some(state)) => state,
            Ok(None) => return Ok(()),
            // The command is committed; a state the instance cannot give now is snapshotted later.
            Err(e) => {
                tracing::warn!(%key, error = %e, "snapshot not taken");
                return Ok(());
            }
        };
        let snapshot = Snapshot { actor_digest: slot.snapshot_tag.clone(), sequence, state };
        loaded.snapshot_sequence = sequence;
        let stream = slot.host.info().stream.clone();
        // The command's events are committed; a snapshot only shortens a later load. A store
        // that cannot take it now (a replicated bucket electing its leader) costs the next
        // load some events, not the command: said, and tried again `snapshot_every` later.
        match self.journal.run("write snapshot", self.journal.store().put_snapshot(&stream, key, snapshot)) {
            Ok(()) => self.stats.snapshots += 1,
            Err(e) => tracing::warn!(%stream, %key, error = %e, "snapshot not written"),
        }
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
        let loaded = self.aggregates.get(actor).and_then(|slot| slot.loaded.get(key));
        Ok(loaded.is_some_and(|k| k.commands.contains_key(command_id)))
    }

    /// An account's decoded state, loading it from the store if needed; `None` before its
    /// first event.
    pub fn account_state(&mut self, actor: &str, key: &str) -> Result<Option<Account>, RuntimeError> {
        self.with_account(actor, key, Account::clone)
    }

    /// `f` of an account's decoded state (without copying it), loading it if needed; `None`
    /// before its first event. The state is decoded from the actor's snapshot once, then kept
    /// current from committed events.
    pub fn with_account<R>(
        &mut self,
        actor: &str,
        key: &str,
        f: impl FnOnce(&Account) -> R,
    ) -> Result<Option<R>, RuntimeError> {
        self.load(actor, key)?;
        let Some(slot) = self.aggregates.get_mut(actor) else { return Ok(None) };
        let at = slot.host.sequence(key);
        if let Some((seen, account)) = slot.accounts.get(key)
            && *seen == at
        {
            return Ok(Some(f(account)));
        }
        let state = match slot.host.state(key) {
            Err(HostError::NotResident { .. }) => {
                self.forget(actor, key);
                self.load(actor, key)?;
                let slot = self.aggregates.get_mut(actor).expect("loaded above");
                slot.host.state(key)?
            }
            state => state?,
        };
        let slot = self.aggregates.get_mut(actor).expect("loaded above");
        let Some(bytes) = state else { return Ok(None) };
        let at = slot.host.sequence(key);
        let account: Account = tollgate_codec::from_json(&bytes).map_err(|source| RuntimeError::UndecodableState {
            stream: slot.host.info().stream.clone(),
            key: key.into(),
            sequence: at,
            source,
        })?;
        let answer = f(&account);
        slot.accounts.insert(key.into(), (at, account));
        Ok(Some(answer))
    }

    /// Appends an event to a stream no aggregate owns (a fact reported from outside); a
    /// repeated id returns the event first recorded under it.
    pub fn append_external(&mut self, event: Event) -> Result<Event, RuntimeError> {
        let (stream, key) = (event.stream.clone(), event.key.clone());
        let appended = self.journal.append(&stream, &key, ExpectedVersion::Any, vec![to_new(&event, &[])]);
        let sequence = match appended {
            Ok(result) => result.first_sequence,
            Err(StoreError::Duplicate { original, .. }) => {
                self.stats.duplicates += 1;
                let sequence = original.first_sequence;
                let (events, _) = self.committed(&stream, &key, sequence, sequence)?;
                return events.into_iter().next().ok_or(RuntimeError::MissingEvent { stream, key, sequence });
            }
            Err(e) => return Err(self.journal.error("append", e)),
        };
        Ok(Event { sequence, ..event })
    }
}

/// Folds a command's committed events into the decoded account kept for `key`, if one is kept
/// at the sequence they follow; otherwise (or if they do not decode as account events) it is
/// dropped and read from the actor again when next wanted.
fn follow_account(accounts: &mut HashMap<String, (u64, Account)>, key: &str, before: u64, last: u64, events: &[Event]) {
    let Some((at, account)) = accounts.get_mut(key) else { return };
    match crate::facade::account_events(events) {
        Ok(decoded) if *at == before => {
            decoded.into_iter().for_each(|e| account.apply(e));
            *at = last;
        }
        _ => {
            accounts.remove(key);
        }
    }
}

/// Waits a little before retrying a lost race, longer each time and spread by command, so
/// racing writers do not collide again in lockstep.
fn backoff(attempt: u32, command_id: &str) {
    let spread = command_id.bytes().fold(attempt as u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64)) % 200;
    let micros = (50u64 << attempt.min(6)) + spread;
    std::thread::sleep(Duration::from_micros(micros));
}
