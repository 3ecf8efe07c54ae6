//! The tollgate runtime: runs the actors of a [manifest](manifest::Manifest) together.
//!
//! - Aggregates execute commands; their events go to one ordered log.
//! - A policy's `charging` import is a [facade](facade::ChargingFacade) over an account
//!   aggregate and its `rating` import calls a rater component.
//! - Every new event is delivered to projectors (in batches; their key-value writes commit only
//!   when the batch succeeds) and process managers (whose commands run at once and whose
//!   timers fire on the virtual clock).
//! - Each actor has its own store: a trap in one discards only that instance.
//!
//! This runtime keeps events in memory.

pub mod core;
pub mod error;
pub mod facade;
pub mod manifest;
pub mod resolve;

pub use crate::core::RefusedCommand;
pub use error::RuntimeError;
pub use manifest::Manifest;
pub use resolve::resolve_actor;
pub use tollgate_host::bindings::policy::tollgate::admission::types::{AdmissionRequest, Decision, Denied, Granted};
pub use tollgate_host::bindings::rater::tollgate::billing::types::{FinalUnitAction, ResultCode};

use crate::core::{Core, ManagerSlot, ProjectorSlot};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use tollgate_billing_model::account::{Account, STREAM as ACCOUNT_STREAM};
use tollgate_host::aggregate::{Command, Event, Outcome};
use tollgate_host::fakes::VirtualClock;
use tollgate_host::{
    Actor, ActorKind, AggregateHost, Fakes, HostEngine, Limits, PolicyActor, ProcessManagerActor, ProjectorActor,
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

    /// Loads `file` (a path, or `oci://REF` pulled over HTTPS: see [`resolve_actor`]),
    /// checking its kind; compiled once per loader and file.
    pub fn load(&mut self, file: &Path, kind: ActorKind) -> Result<Actor, RuntimeError> {
        self.load_with(file, kind, false)
    }

    /// [`Loader::load`], speaking plain HTTP to the registry of an `oci://` file when
    /// `plain_http`.
    pub fn load_with(&mut self, file: &Path, kind: ActorKind, plain_http: bool) -> Result<Actor, RuntimeError> {
        let path = resolve_actor(&file.to_string_lossy(), Path::new(""), plain_http)?;
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

/// Actors wired together by a manifest.
pub struct Runtime {
    core: Arc<Mutex<Core>>,
    policies: BTreeMap<String, PolicyActor>,
    fakes: BTreeMap<String, Fakes>,
    clock: VirtualClock,
}

impl Runtime {
    /// Reads a manifest and starts its actors on an engine with the manifest's limits.
    pub fn load(path: &Path) -> Result<Runtime, RuntimeError> {
        let manifest = Manifest::load(path)?;
        let limits = Limits {
            cpu_ms: manifest.limits.cpu_ms,
            memory_bytes: manifest.limits.memory_mib << 20,
            ..Limits::default()
        };
        let mut loader = Loader::new(HostEngine::new(limits)?.with_default_code_cache());
        Runtime::new(&manifest, &mut loader)
    }

    /// Starts the actors of a parsed manifest.
    pub fn new(manifest: &Manifest, loader: &mut Loader) -> Result<Runtime, RuntimeError> {
        let clock = VirtualClock::default();
        let mut core = Core {
            clock: clock.clone(),
            aggregates: BTreeMap::new(),
            streams: BTreeMap::new(),
            raters: BTreeMap::new(),
            projectors: Vec::new(),
            managers: Vec::new(),
            log: Vec::new(),
            external_sequences: BTreeMap::new(),
            refused: Vec::new(),
        };
        let mut fakes_by_actor = BTreeMap::new();
        let mut policy_specs = Vec::new();
        for (name, spec) in &manifest.actors {
            let kind = manifest.kind(name);
            let actor = loader.load_with(&spec.file, kind, manifest.registry.plain_http)?;
            let fakes = Fakes::with_clock(clock.clone());
            fakes.replace_config(spec.config.clone());
            fakes_by_actor.insert(name.clone(), fakes.clone());
            match kind {
                ActorKind::Aggregate => {
                    let host = AggregateHost::new(actor, fakes)?;
                    let stream = host.info().stream.clone();
                    if let Some(other) = core.streams.insert(stream.clone(), name.clone()) {
                        return Err(RuntimeError::DuplicateStream(other, name.clone(), stream));
                    }
                    core.aggregates.insert(name.clone(), host);
                }
                ActorKind::Rater => {
                    core.raters.insert(name.clone(), RaterActor::new(actor, fakes)?);
                }
                ActorKind::Projector => {
                    let mut actor = ProjectorActor::new(actor, fakes)?;
                    let subscriptions = actor.subscriptions()?;
                    core.projectors.push(ProjectorSlot { name: name.clone(), actor, subscriptions, checkpoint: 0 });
                }
                ActorKind::ProcessManager => {
                    let mut actor = ProcessManagerActor::new(actor, fakes)?;
                    let subscriptions = actor.subscriptions()?;
                    core.managers.push(ManagerSlot {
                        name: name.clone(),
                        actor,
                        subscriptions,
                        checkpoint: 0,
                        states: BTreeMap::new(),
                        timers: BTreeMap::new(),
                    });
                }
                ActorKind::Policy => policy_specs.push((name.clone(), actor, fakes, spec.links.clone())),
            }
        }
        let core = Arc::new(Mutex::new(core));
        let mut policies = BTreeMap::new();
        for (name, actor, fakes, links) in policy_specs {
            let facade = facade::ChargingFacade {
                core: core.clone(),
                account_actor: links["charging"].clone(),
                rater_actor: links["rating"].clone(),
            };
            policies.insert(name, PolicyActor::new(actor, fakes, Arc::new(facade))?);
        }
        Ok(Runtime { core, policies, fakes: fakes_by_actor, clock })
    }

    fn lock(&self) -> MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The virtual clock every actor and command sees.
    pub fn clock(&self) -> &VirtualClock {
        &self.clock
    }

    /// A JSON command envelope for `stream`/`key`, stamped with the clock.
    pub fn command<C: Serialize>(&self, stream: &str, key: &str, command_id: &str, command: &C) -> Command {
        tollgate_host::aggregate::json_command(stream, key, command_id, command, self.clock.now_ms())
            .expect("commands are externally tagged enums")
    }

    /// Runs a command on the aggregate owning its stream, then dispatches the new events.
    pub fn execute(&mut self, command: &Command) -> Result<Outcome, RuntimeError> {
        let mut core = self.lock();
        let outcome = core.execute(command)?;
        core.pump()?;
        Ok(outcome)
    }

    /// Asks the (only, or first by name) policy for an admission decision, then dispatches.
    pub fn admit(&mut self, request: &AdmissionRequest) -> Result<Decision, RuntimeError> {
        let name = self.policies.keys().next().cloned().ok_or_else(|| RuntimeError::NoSuchActor("<policy>".into()))?;
        self.admit_with(&name, request)
    }

    /// Asks the named policy for an admission decision, then dispatches.
    pub fn admit_with(&mut self, policy: &str, request: &AdmissionRequest) -> Result<Decision, RuntimeError> {
        let actor = self.policies.get_mut(policy).ok_or_else(|| RuntimeError::NoSuchActor(policy.into()))?;
        let decision = actor.decide(request)?;
        self.lock().pump()?;
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
        let (event_type, payload) = tollgate_sdk::codec::encode(event).expect("events are externally tagged enums");
        let mut core = self.lock();
        let event = core.append_external(Event {
            stream: stream.into(),
            key: key.into(),
            event_type,
            schema_version: 1,
            content_type: tollgate_sdk::codec::JSON.into(),
            payload,
            sequence: 0,
            time: self.clock.now_ms(),
            command_id: report_id.into(),
            correlation_id: correlation_id.into(),
            causation_id: String::new(),
        });
        core.pump()?;
        Ok(event)
    }

    /// Moves the clock forward and fires the timers that fall due; returns how many fired.
    pub fn advance_ms(&mut self, ms: u64) -> Result<usize, RuntimeError> {
        self.clock.advance_ms(ms);
        self.lock().fire_due_timers()
    }

    /// The state of account `key` (from the aggregate owning stream `account`).
    pub fn account(&self, key: &str) -> Option<Account> {
        let core = self.lock();
        let actor = core.streams.get(ACCOUNT_STREAM)?.clone();
        core.account_state(&actor, key)
    }

    /// Every event so far, in log order.
    pub fn events(&self) -> Vec<Event> {
        self.lock().log.clone()
    }

    /// Commands process managers sent that were refused.
    pub fn refused(&self) -> Vec<RefusedCommand> {
        self.lock().refused.clone()
    }

    /// The fakes (key-value, config, logs, calls) of an actor.
    pub fn fakes(&self, actor: &str) -> Option<&Fakes> {
        self.fakes.get(actor)
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
