//! The tollgate runtime: runs the actors of a [manifest](manifest::Manifest) together.
//!
//! - Aggregates execute commands against an [event store](journal::Journal): `file:DIR` (the
//!   embedded log), `nats://HOST:PORT` (JetStream), or an ephemeral log when none is given.
//!   Appends are checked against the key's sequence (optimistic concurrency, retried), a
//!   repeated command id is answered from the log, and states are snapshotted every
//!   `snapshot_every` events under the actor's digest.
//! - A policy's `charging` import is a [facade](facade::ChargingFacade) over an account
//!   aggregate and its `rating` import calls a rater component.
//! - Every commit is delivered to projectors and process managers through durable consumers;
//!   their key-value writes (instance states) are committed with their checkpoint, so a
//!   restart neither loses nor repeats them, and a delivery that keeps failing is
//!   dead-lettered. Timers live in the store and fire on the runtime's clock.
//! - Each actor has its own wasm store: a trap in one discards only that instance.
//! - Work a delivery may cause is bounded (`[reactions]` in the manifest): cascade depth,
//!   commands and timers per reaction and per outside input, timers per tick.
//! - A hold a policy made inside a `decide` that failed (trap or cap) is released at once;
//!   the release's command id names the failed decision.
//! - Streams and buckets named `tollgate.*` are the runtime's own: no actor or client reaches
//!   them.
//!
//! Inside, what the actors share lives behind one mutex (module `shared`); its work is split
//! into `commands` on aggregates, `dispatch` of commits to projectors and process managers,
//! `cascade` bounds on reactions, `timers`, and the `undo` of a failed decision's charging
//! calls; `namespace` holds the runtime's own stream and bucket names.

#![warn(missing_docs)]

pub mod access;
mod batch;
mod cascade;
mod commands;
mod dispatch;
pub mod error;
pub mod facade;
pub mod journal;
pub mod manifest;
mod namespace;
pub mod quota;
pub mod read_model;
pub mod replay;
pub mod resolve;
mod shared;
pub mod stats;
mod timers;
mod undo;

pub use dispatch::RefusedCommand;
pub use error::RuntimeError;
pub use journal::{AppendLatency, Journal};
pub use manifest::{Manifest, ReportsSpec};
pub use namespace::{REFUSALS_STREAM, RESERVED_PREFIX, TIMER_STREAM, is_reserved};
#[cfg(feature = "oci")]
pub use resolve::resolve_actor;
pub use shared::CommandRunner;
pub use stats::Stats;
pub use tollgate_host::bindings::policy::tollgate::admission::types::{AdmissionRequest, Decision, Denied, Granted};
pub use tollgate_host::bindings::rater::tollgate::billing::types::{FinalUnitAction, ResultCode};

use crate::commands::AggregateSlot;
use crate::dispatch::{ManagerSlot, ProjectorSlot};
use crate::namespace::refuse_reserved_subscriptions;
use crate::shared::Shared;
use crate::undo::InDecide;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use tollgate_billing_model::account::{Account, STREAM as ACCOUNT_STREAM};
use tollgate_host::aggregate::{Command, Event, Outcome};
use tollgate_host::host_state::VirtualClock;
use tollgate_host::{
    Actor, ActorKind, AggregateHost, HostEngine, HostState, Limits, PolicyActor, ProcessManagerActor, ProjectorActor,
    RaterActor,
};

/// Loads and compiles actors once per path, for runtimes that share an engine.
pub struct Loader {
    engine: HostEngine,
    cache: HashMap<PathBuf, Actor>,
}

impl Loader {
    /// A loader on `engine`.
    pub fn new(engine: HostEngine) -> Self {
        Loader { engine, cache: HashMap::new() }
    }

    /// The engine it compiles actors for.
    pub fn engine(&self) -> &HostEngine {
        &self.engine
    }

    /// Loads `file` (a path, or `oci://REF` pulled over HTTPS with the `oci` feature: see
    /// `resolve_actor`), checking its kind; compiled once per loader and file.
    pub fn load(&mut self, file: &Path, kind: ActorKind) -> Result<Actor, RuntimeError> {
        self.load_with(file, kind, false)
    }

    /// [`Loader::load`], speaking plain HTTP to the registry of an `oci://` file when
    /// `plain_http`.
    pub fn load_with(&mut self, file: &Path, kind: ActorKind, plain_http: bool) -> Result<Actor, RuntimeError> {
        self.load_file(None, file, kind, plain_http)
    }

    /// [`Loader::load_with`] for the manifest's actor `name`, which an error names.
    pub(crate) fn load_actor(
        &mut self,
        name: &str,
        file: &Path,
        kind: ActorKind,
        plain_http: bool,
    ) -> Result<Actor, RuntimeError> {
        self.load_file(Some(name), file, kind, plain_http)
    }

    fn load_file(
        &mut self,
        name: Option<&str>,
        file: &Path,
        kind: ActorKind,
        plain_http: bool,
    ) -> Result<Actor, RuntimeError> {
        let path = resolve::actor_file(name, file, plain_http)?;
        let actor = match self.cache.get(&path) {
            Some(a) => a.clone(),
            None => {
                let a = Actor::load(&self.engine, &path)?;
                self.cache.insert(path, a.clone());
                a
            }
        };
        actor.expect_kind(kind)?;
        Ok(actor)
    }
}

/// An engine with a manifest's limits and the default compiled-code cache.
pub fn engine_for(manifest: &Manifest) -> Result<HostEngine, RuntimeError> {
    engine_for_runtimes(manifest, 1)
}

/// [`engine_for`] with room for `runtimes` runtimes of the manifest at once: each holds an
/// instance of every actor, plus one being replaced after a trap.
pub fn engine_for_runtimes(manifest: &Manifest, runtimes: usize) -> Result<HostEngine, RuntimeError> {
    let default = Limits::default();
    let needed = runtimes.saturating_mul(manifest.actors.len()).saturating_mul(2);
    let max_instances = u32::try_from(needed).unwrap_or(u32::MAX).max(default.max_instances);
    let limits = Limits {
        cpu_ms: manifest.limits.cpu_ms,
        memory_bytes: manifest.limits.memory_mib << 20,
        max_instances,
        imports: manifest.limits.imports(),
    };
    Ok(HostEngine::new(limits)?.with_default_code_cache())
}

/// Actors wired together by a manifest.
pub struct Runtime {
    shared: Arc<Mutex<Shared>>,
    policies: BTreeMap<String, PolicyActor>,
    host_state: BTreeMap<String, HostState>,
    clock: VirtualClock,
}

impl Runtime {
    /// Reads a manifest and starts its actors over an ephemeral log, on an engine with the
    /// manifest's limits.
    pub fn load(path: &Path) -> Result<Runtime, RuntimeError> {
        Runtime::load_with_store(path, None)
    }

    /// [`Runtime::load`] over the store at `store` (`file:DIR` or `nats://HOST:PORT`).
    pub fn load_with_store(path: &Path, store: Option<&str>) -> Result<Runtime, RuntimeError> {
        let manifest = Manifest::load(path)?;
        let mut loader = Loader::new(engine_for(&manifest)?);
        let journal = match store {
            Some(url) => Journal::open_for(url, &manifest.store, &manifest.nats_access)?,
            None => Journal::ephemeral()?,
        };
        Runtime::open(&manifest, &mut loader, journal)
    }

    /// Starts the actors of a parsed manifest over an ephemeral log.
    pub fn new(manifest: &Manifest, loader: &mut Loader) -> Result<Runtime, RuntimeError> {
        Runtime::open(manifest, loader, Journal::ephemeral()?)
    }

    /// Starts the actors of a parsed manifest over `journal`: projectors and process managers
    /// resume from their checkpoints, with their key-value contents, states and timers.
    pub fn open(manifest: &Manifest, loader: &mut Loader, journal: Journal) -> Result<Runtime, RuntimeError> {
        let clock = VirtualClock::default();
        // Event times never go backwards across a restart: the clock starts at the last one.
        clock.set_ms(journal.last_event_time()?);
        let mut shared = Shared::new(clock.clone(), journal, manifest);
        let max_deliver = manifest.store.max_deliver;
        let mut host_states = BTreeMap::new();
        let mut policy_specs = Vec::new();
        for (name, spec) in &manifest.actors {
            let kind = manifest.kind(name);
            let actor = loader.load_actor(name, &spec.file, kind, manifest.registry.plain_http)?;
            let host_state = HostState::with_clock(clock.clone());
            host_state.replace_config(spec.config.clone());
            host_states.insert(name.clone(), host_state.clone());
            match kind {
                ActorKind::Aggregate => {
                    let digest = actor.digest().to_string();
                    let host = AggregateHost::new(actor, host_state)?.without_history();
                    let info = host.info();
                    let stream = info.stream.clone();
                    if is_reserved(&stream) {
                        let what = format!("aggregate `{name}` may not own stream");
                        return Err(RuntimeError::Reserved { what, name: stream });
                    }
                    let snapshot_tag = format!("{digest}#state-v{}", info.state_version);
                    if let Some(other) = shared.streams.insert(stream.clone(), name.clone()) {
                        return Err(RuntimeError::DuplicateStream(other, name.clone(), stream));
                    }
                    shared.aggregates.insert(
                        name.clone(),
                        AggregateSlot { host, snapshot_tag, loaded: HashMap::new(), accounts: HashMap::new() },
                    );
                }
                ActorKind::Rater => {
                    shared.raters.insert(name.clone(), RaterActor::new(actor, host_state)?);
                }
                ActorKind::Projector => {
                    host_state.record_kv_writes();
                    let mut actor = ProjectorActor::new(actor, host_state.clone())?;
                    let subscriptions = actor.subscriptions()?;
                    refuse_reserved_subscriptions("projector", name, &subscriptions)?;
                    let consumer = shared.consumer(name, max_deliver)?;
                    let mut slot = ProjectorSlot {
                        name: name.clone(),
                        actor,
                        host_state,
                        subscriptions,
                        consumer,
                        buckets: Vec::new(),
                    };
                    shared.restore_projection(&mut slot)?;
                    shared.projectors.push(slot);
                }
                ActorKind::ProcessManager => {
                    let mut actor = ProcessManagerActor::new(actor, host_state)?;
                    let subscriptions = actor.subscriptions()?;
                    refuse_reserved_subscriptions("process manager", name, &subscriptions)?;
                    let consumer = shared.consumer(name, max_deliver)?;
                    let mut slot = ManagerSlot {
                        name: name.clone(),
                        actor,
                        subscriptions,
                        consumer,
                        states: BTreeMap::new(),
                        pending: BTreeMap::new(),
                        timer_writes: BTreeMap::new(),
                        commands: Vec::new(),
                        timers: BTreeMap::new(),
                    };
                    shared.restore_manager(&mut slot)?;
                    shared.managers.push(slot);
                }
                ActorKind::Policy => policy_specs.push((name.clone(), actor, host_state, spec.links.clone())),
            }
        }
        if let Some((stream, owner)) = shared.report_streams.iter().find_map(|s| Some((s, shared.streams.get(s)?))) {
            return Err(RuntimeError::Report {
                stream: stream.clone(),
                message: format!("`[reports] streams` names it, but aggregate `{owner}` owns it: send it commands"),
            });
        }
        let shared = Arc::new(Mutex::new(shared));
        let mut policies = BTreeMap::new();
        for (name, actor, host_state, links) in policy_specs {
            // `Manifest::parse` requires both links; a `Manifest` built by hand may lack one.
            let link = |link: &'static str| {
                links.get(link).cloned().ok_or_else(|| RuntimeError::MissingLink { policy: name.clone(), link })
            };
            let facade = facade::ChargingFacade {
                shared: shared.clone(),
                account_actor: link("charging")?,
                rater_actor: link("rating")?,
            };
            policies.insert(name, PolicyActor::new(actor, host_state, Arc::new(facade))?);
        }
        Ok(Runtime { shared, policies, host_state: host_states, clock })
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The virtual clock every actor and command sees.
    pub fn clock(&self) -> &VirtualClock {
        &self.clock
    }

    /// A JSON command envelope for `stream`/`key`, stamped with the clock; fails when
    /// `command` is not an externally tagged enum.
    pub fn command<C: Serialize>(
        &self,
        stream: &str,
        key: &str,
        command_id: &str,
        command: &C,
    ) -> Result<Command, RuntimeError> {
        tollgate_host::aggregate::json_command(stream, key, command_id, command, self.clock.now_ms())
            .map_err(|source| RuntimeError::Encode { what: format!("a command for {stream}/{key}"), source })
    }

    /// Runs a command on the aggregate owning its stream, then dispatches the new events.
    pub fn execute(&mut self, command: &Command) -> Result<Outcome, RuntimeError> {
        Ok(self.execute_noting_repeat(command)?.0)
    }

    /// [`Runtime::execute`], also saying whether the command's id was committed before, so the
    /// answer is the original outcome and nothing ran again (`true`), which a client may want
    /// to know (`Tollgate-Repeat: true` over HTTP and NATS).
    pub fn execute_noting_repeat(&mut self, command: &Command) -> Result<(Outcome, bool), RuntimeError> {
        let mut shared = self.lock();
        let duplicates = shared.stats.duplicates;
        let outcome = shared.execute(command)?;
        // Only a repeat answered from the log counts a duplicate while one command runs.
        let repeat = shared.stats.duplicates != duplicates;
        shared.pump()?;
        Ok((outcome, repeat))
    }

    /// Starts deciding in a batch: the appends of the commands and decisions that follow are
    /// held (each applied to its key's resident state at once) until
    /// [`Runtime::commit_batch`] writes them all with one store call. For a runtime that
    /// dispatches nothing itself (a served node's worker): its projectors and process
    /// managers would not see held events.
    ///
    /// ```no_run
    /// # fn answer(_: usize) {} fn answer_again(_: usize) {}
    /// # let mut runtime = tollgate_runtime::Runtime::load("examples/edge.toml".as_ref()).unwrap();
    /// runtime.begin_batch();
    /// for job in 0..3 {
    ///     runtime.begin_job();
    ///     // ... runtime.admit(..) or runtime.execute(..), its answer kept, not sent yet
    /// }
    /// let failed = runtime.commit_batch();
    /// for job in 0..3 {
    ///     if failed.contains(&job) { answer_again(job) } else { answer(job) }
    /// }
    /// ```
    pub fn begin_batch(&mut self) {
        self.lock().begin_batch();
    }

    /// Marks where the batch's next job (request) begins.
    pub fn begin_job(&mut self) {
        self.lock().begin_job();
    }

    /// Writes the batch's held appends with one store call. Returns the jobs (numbered from 0
    /// in the order they began) one of whose appends did not commit: nothing they decided may
    /// be answered as accepted; their keys are read again from the store and their counters
    /// taken back, so they can be run again, outside a batch, from scratch.
    pub fn commit_batch(&mut self) -> std::collections::BTreeSet<usize> {
        self.lock().commit_batch()
    }

    /// Asks the (only, or first by name) policy for an admission decision, then dispatches.
    pub fn admit(&mut self, request: &AdmissionRequest) -> Result<Decision, RuntimeError> {
        let name = self.policies.keys().next().cloned().ok_or_else(|| RuntimeError::NoSuchActor("<policy>".into()))?;
        self.admit_with(&name, request)
    }

    /// Asks the named policy for an admission decision, then dispatches.
    pub fn admit_with(&mut self, policy: &str, request: &AdmissionRequest) -> Result<Decision, RuntimeError> {
        self.lock().in_decide = InDecide { request_id: request.request_id.clone(), undo: Vec::new() };
        let actor = self.policies.get_mut(policy).ok_or_else(|| RuntimeError::NoSuchActor(policy.into()))?;
        let span = tracing::info_span!("admission", policy, correlation_id = %request.request_id, subscriber = %request.subscriber);
        let _entered = span.enter();
        let decided = actor.decide(request);
        let undo = std::mem::take(&mut self.lock().in_decide).undo;
        let decision = match decided {
            Ok(decision) => decision,
            Err(e) => {
                self.lock().undo_failed_decide(&request.request_id, undo, &e.to_string())?;
                return Err(e.into());
            }
        };
        let code = match &decision {
            Decision::Granted(_) => ResultCode::Success,
            Decision::Denied(d) => d.code,
        };
        let mut shared = self.lock();
        *shared.stats.result_codes.entry(result_code_name(code).into()).or_default() += 1;
        shared.pump()?;
        Ok(decision)
    }

    /// Records a fact reported from outside (e.g. the network's usage report on stream
    /// `session`), then dispatches it.
    pub fn report<E: Serialize>(
        &mut self,
        stream: &str,
        key: &str,
        correlation_id: &str,
        report_id: &str,
        event: &E,
    ) -> Result<Event, RuntimeError> {
        let event = tollgate_host::aggregate::json_event(stream, key, event).map_err(|e| RuntimeError::Report {
            stream: stream.into(),
            message: format!("the event is not an externally tagged enum: {e}"),
        })?;
        if is_reserved(stream) {
            return Err(RuntimeError::Report {
                stream: stream.into(),
                message: format!("streams starting with `{RESERVED_PREFIX}` are the runtime's own"),
            });
        }
        let mut shared = self.lock();
        if let Some(owner) = shared.streams.get(stream) {
            return Err(RuntimeError::Report {
                stream: stream.into(),
                message: format!("aggregate `{owner}` owns it: send it a command instead"),
            });
        }
        let event = shared.append_external(Event {
            sequence: 0,
            time: self.clock.now_ms(),
            command_id: report_id.into(),
            correlation_id: correlation_id.into(),
            ..event
        })?;
        shared.pump()?;
        Ok(event)
    }

    /// The streams a served node takes outside facts on (the manifest's `[reports] streams`).
    pub fn report_streams(&self) -> Vec<String> {
        self.lock().report_streams.clone()
    }

    /// Moves the clock forward and fires the timers that fall due; returns how many fired.
    pub fn advance_ms(&mut self, ms: u64) -> Result<usize, RuntimeError> {
        self.clock.advance_ms(ms);
        self.lock().fire_due_timers()
    }

    /// Has the commands of this runtime's process managers run by `runner` (a served core's
    /// workers): a page of deliveries' commands are handed over together when the page is
    /// settled, before its instance states and acknowledgements are written.
    pub fn run_commands_with(&mut self, runner: Box<dyn CommandRunner>) {
        self.lock().runner = Some(runner);
    }

    /// Counts a refusal this runtime counted as a command's as a refusal of a process
    /// manager's command instead (a [`CommandRunner`] running another runtime's reactions).
    pub fn recount_as_reaction_refusal(&mut self, code: &str) {
        self.lock().stats.recount_as_reaction_refusal(code);
    }

    /// Records one batch of the timers due now, `fired` having fired this tick already, without
    /// delivering them (see [`Runtime::pump_step`]); returns how many. [`Runtime::advance_ms`]
    /// fires them all and runs their reactions.
    pub fn fire_due_batch(&mut self, fired: usize) -> Result<usize, RuntimeError> {
        self.lock().fire_due_batch(fired)
    }

    /// Delivers whatever is new in the store (e.g. written by another runtime) to projectors
    /// and process managers.
    pub fn pump(&mut self) -> Result<(), RuntimeError> {
        self.lock().pump()
    }

    /// One step of [`Runtime::pump`]: the next page of commits to each projector and process
    /// manager; returns whether any had something new (call again until it says `false`).
    pub fn pump_step(&mut self) -> Result<bool, RuntimeError> {
        self.lock().pump_step()
    }

    /// The log's position up to which every commit has been delivered to this runtime's
    /// projectors and process managers, as of its last pump step (0 before the first).
    pub fn delivered_through(&self) -> u64 {
        self.lock().delivered_through
    }

    /// The state of account `key` (from the aggregate owning stream `account`), as of the
    /// last event this runtime read or wrote; `None` when the account has no events or no
    /// aggregate owns the stream.
    pub fn account(&self, key: &str) -> Result<Option<Account>, RuntimeError> {
        let mut shared = self.lock();
        let Some(actor) = shared.streams.get(ACCOUNT_STREAM).cloned() else { return Ok(None) };
        shared.account_state(&actor, key)
    }

    /// Reads account `key` afresh from the store (other runtimes may have written it).
    pub fn reload_account(&self, key: &str) -> Result<Option<Account>, RuntimeError> {
        let mut shared = self.lock();
        let Some(actor) = shared.streams.get(ACCOUNT_STREAM).cloned() else { return Ok(None) };
        shared.forget(&actor, key);
        shared.account_state(&actor, key)
    }

    /// Every event in the store, in commit order.
    pub fn events(&self) -> Result<Vec<Event>, RuntimeError> {
        let shared = self.lock();
        let all = shared.journal.run("read log", shared.journal.store().read_all(1, usize::MAX))?;
        Ok(all.into_iter().map(journal::from_stored).collect())
    }

    /// The tag under which the aggregate owning `stream` writes snapshots: its component's
    /// digest and state version, so another build never reads them.
    pub fn snapshot_tag(&self, stream: &str) -> Option<String> {
        let shared = self.lock();
        let actor = shared.streams.get(stream)?;
        shared.aggregates.get(actor).map(|slot| slot.snapshot_tag.clone())
    }

    /// The streams whose commands this runtime's aggregates take.
    pub fn command_streams(&self) -> Vec<String> {
        self.lock().streams.keys().cloned().collect()
    }

    /// The event store.
    pub fn journal(&self) -> Journal {
        self.lock().journal.clone()
    }

    /// This runtime's counters so far.
    pub fn stats(&self) -> Stats {
        self.lock().stats.clone()
    }

    /// Adds `other`'s counters into this runtime's, e.g. those of runtimes that served the
    /// same node beside it, so one recorded run counts them all.
    pub fn absorb_stats(&self, other: &Stats) {
        self.lock().stats.add(other);
    }

    /// Records this runtime's counters as one event on [`stats::STATS_STREAM`] under `node`,
    /// for `tollgate stats`.
    pub fn record_stats(&self, node: &str, run_id: &str) -> Result<(), RuntimeError> {
        let shared = self.lock();
        shared.stats.record(&shared.journal, node, run_id, self.clock.now_ms())
    }

    /// Commands process managers sent that were refused.
    pub fn refused(&self) -> Vec<RefusedCommand> {
        self.lock().refused.clone()
    }

    /// The host state (key-value, config, clock) of an actor.
    pub fn host_state(&self, actor: &str) -> Option<&HostState> {
        self.host_state.get(actor)
    }

    /// The names of the projectors, in manifest order.
    pub fn projectors(&self) -> Vec<String> {
        self.lock().projectors.iter().map(|p| p.name.clone()).collect()
    }

    /// The events of `key` on `stream`, oldest first, from sequence `from` (1 = all).
    pub fn stream(&self, stream: &str, key: &str, from: u64) -> Result<Vec<Event>, RuntimeError> {
        let journal = self.journal();
        let events = journal.run("read events", journal.store().read(stream, key, from))?;
        Ok(events.into_iter().map(journal::from_stored).collect())
    }

    /// Open timers per process manager: (manager, instance, timer id, fire at).
    pub fn timers(&self) -> Vec<(String, String, String, u64)> {
        self.lock()
            .managers
            .iter()
            .flat_map(|m| m.timers.iter().map(|((i, id), t)| (m.name.clone(), i.clone(), id.clone(), t.fire_at)))
            .collect()
    }
}

/// The WIT name of a result code (`success`, `quota-limit-reached`, ...).
pub fn result_code_name(code: ResultCode) -> &'static str {
    match code {
        ResultCode::Success => "success",
        ResultCode::EndUserServiceDenied => "end-user-service-denied",
        ResultCode::QuotaLimitReached => "quota-limit-reached",
        ResultCode::UserUnknown => "user-unknown",
        ResultCode::RatingFailed => "rating-failed",
        ResultCode::EndUserServiceRejected => "end-user-service-rejected",
    }
}
