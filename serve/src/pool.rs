//! The runtimes of one served node. Requests for different keys run in parallel on workers,
//! each a runtime on its own thread over the node's one store; requests for one key always go
//! to the same worker, so a node's workers never race each other on a key. Projectors,
//! process managers and timers run once, on the primary runtime, which delivers what the
//! workers wrote.

use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tollgate_billing_model::account::STREAM;
use tollgate_host::ActorKind;
use tollgate_node::{Node, NodeError, NodeHandle, Reply, Request, wall_ms};
use tollgate_runtime::quota::expiry;
use tollgate_runtime::{Journal, Loader, Manifest, Runtime, RuntimeError, Stats, engine_for_runtimes};

use crate::exposure::Exposure;
use crate::metrics::NodeReading;
use crate::nchf::RatingGroups;

/// What a node does in the lattice.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Role {
    /// Charges accounts itself, with the manifest's actors.
    #[default]
    Core,
    /// Admits from grants held by a core, reached over NATS (see [`crate::edge`]); sized by
    /// the manifest's `[quota]`.
    Edge {
        /// The core's NATS URL.
        url: String,
        /// The core's node name (its subjects are `tollgate.<core>.…`).
        core: String,
    },
}

impl Role {
    /// `core` or `edge`.
    pub fn name(&self) -> &'static str {
        match self {
            Role::Core => "core",
            Role::Edge { .. } => "edge",
        }
    }
}

/// What a server opens: the manifest, the store and the node's name.
#[derive(Debug, Clone, Default)]
pub struct NodeSpec {
    /// The manifest wiring the actors.
    pub manifest: PathBuf,
    /// The event store: `file:DIR` or `nats://HOST:PORT`.
    pub store: String,
    /// The name the node's counters are recorded under.
    pub name: String,
    /// Runtimes answering keyed requests in parallel (0: the primary answers everything).
    pub workers: usize,
    /// Core or edge.
    pub role: Role,
    /// Where to answer admissions and commands over NATS (`nats://HOST:PORT`), if anywhere.
    pub nats: Option<String>,
}

/// A primary runtime and its workers.
pub(crate) struct Pool {
    primary: NodeHandle,
    workers: Vec<NodeHandle>,
    delivery_queued: Arc<AtomicBool>,
    rating_groups: Arc<RatingGroups>,
    journal: Journal,
    exposure: Mutex<Exposure>,
    streams: Vec<String>,
    /// Expire grants still open this long after their validity (the manifest's
    /// `[quota] clock_skew_ms`); `None`: the node reaps nothing.
    reap_after_ms: Option<u64>,
}

impl Pool {
    /// Opens the primary (every actor) and the workers (aggregates, raters and policies) over
    /// one store; blocks until all have caught up.
    pub(crate) fn open(spec: &NodeSpec) -> Result<Pool, NodeError> {
        let manifest = Manifest::load(&spec.manifest).map_err(|e| NodeError::Runtime(e.into()))?;
        let engine = engine_for_runtimes(&manifest, spec.workers + 1)?;
        let journal = Journal::open_for(&spec.store, &manifest.store)?;
        let mut commands = manifest.clone();
        commands
            .actors
            .retain(|name, _| !matches!(manifest.kind(name), ActorKind::Projector | ActorKind::ProcessManager));
        let open = |manifest: Manifest, primary: bool| {
            let (engine, journal, name) = (engine.clone(), journal.clone(), spec.name.clone());
            NodeHandle::spawn(move || {
                let runtime = Runtime::open(&manifest, &mut Loader::new(engine), journal)?;
                if primary { Node::over(runtime, &name) } else { Node::beside(runtime, &name) }
            })
        };
        let primary = open(manifest.clone(), true)?;
        let workers = (0..spec.workers).map(|_| open(commands.clone(), false)).collect::<Result<Vec<_>, _>>()?;
        let rating_groups = Arc::new(manifest.rating_groups());
        let exposure = Mutex::default();
        let streams = primary.with_blocking(|node| node.runtime().command_streams())?;
        Ok(Pool {
            primary,
            workers,
            delivery_queued: Arc::new(AtomicBool::new(false)),
            rating_groups,
            journal,
            exposure,
            streams,
            reap_after_ms: manifest.quota.map(|q| q.clock_skew_ms),
        })
    }

    /// The streams whose commands the node's aggregates take.
    pub(crate) fn streams(&self) -> &[String] {
        &self.streams
    }

    /// Expires every grant whose validity plus the clock-skew margin has passed by the wall
    /// clock: an edge that never settled it (cut off, gone) can no longer be using it. Each
    /// `expire` goes to the worker of its account, with id `<reservation>/expire`, so a
    /// repeat changes nothing.
    pub(crate) async fn reap(&self) -> Result<usize, NodeError> {
        let Some(margin) = self.reap_after_ms else { return Ok(0) };
        let due = self.exposure.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).due(wall_ms(), margin);
        let mut expired = 0;
        for (account, reservation_id) in due {
            let (id, command) = expiry(&reservation_id);
            let command = tollgate_node::view::to_value(&command);
            let request = Request::Execute { stream: STREAM.into(), key: account.clone(), id, command };
            if let Reply::Accepted(events) = self.for_key(&account).request(request).await? {
                expired += events.len();
            }
        }
        if expired > 0 {
            tracing::info!(expired, "expired grants past validity and the clock-skew margin");
            self.wrote();
        }
        Ok(expired)
    }

    /// The runtime that answers requests for `key` (a stream key, a subscriber, a charging
    /// data ref): always the same one for one key.
    pub(crate) fn for_key(&self, key: &str) -> &NodeHandle {
        if self.workers.is_empty() {
            return &self.primary;
        }
        let mut hasher = std::hash::DefaultHasher::new();
        key.hash(&mut hasher);
        &self.workers[(hasher.finish() % self.workers.len() as u64) as usize]
    }

    /// How each Nchf rating group is charged (the manifest's `[rating_groups]`).
    pub(crate) fn rating_groups(&self) -> Arc<RatingGroups> {
        self.rating_groups.clone()
    }

    /// The runtime with the projectors, process managers and timers.
    pub(crate) fn primary(&self) -> &NodeHandle {
        &self.primary
    }

    /// After a worker may have written: has the primary deliver new events to projectors and
    /// process managers, once for any number of writes made before it gets to it.
    pub(crate) fn wrote(&self) {
        if self.workers.is_empty() || self.delivery_queued.swap(true, Ordering::SeqCst) {
            return;
        }
        let queued = self.delivery_queued.clone();
        let _ = self.primary.post(move |node| {
            queued.store(false, Ordering::SeqCst);
            if let Err(e) = node.runtime().pump() {
                tracing::warn!(error = %e, "delivering what the workers wrote");
            }
        });
    }

    /// The counters of every runtime, summed.
    pub(crate) async fn stats(&self) -> Stats {
        let mut total = Stats::default();
        for node in std::iter::once(&self.primary).chain(&self.workers) {
            if let Ok(stats) = node.with(|node| node.stats()).await {
                total.add(&stats);
            }
        }
        total
    }

    /// Folds the next page of the log into the grant exposure; blocks on the store.
    pub(crate) fn fold_exposure(&self) -> Result<(), RuntimeError> {
        self.exposure.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).catch_up(&self.journal)
    }

    /// What `/metrics` reports of the node: its counters, its store's append latency and the
    /// grant exposure folded so far.
    pub(crate) async fn reading(&self) -> NodeReading {
        let stats = self.stats().await;
        let exposure = self.exposure.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        NodeReading {
            stats,
            appends: self.journal.append_latency(),
            exposure: exposure.by_currency().clone(),
            undecodable: exposure.undecodable(),
            edge: None,
        }
    }

    /// Closes the workers, then the primary, which records everyone's counters; blocks.
    pub(crate) fn close(self) -> Result<Stats, NodeError> {
        let mut workers = Stats::default();
        for worker in self.workers {
            workers.add(&worker.close()?);
        }
        self.primary.with_blocking(move |node| {
            node.absorb(&workers);
            // What the workers wrote last is delivered before the node stops.
            node.runtime().pump()
        })??;
        self.primary.close()
    }
}
