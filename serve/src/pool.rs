//! The runtimes of one served node. Requests for different keys run in parallel on workers,
//! each a runtime on its own thread over the node's one store; a key's requests run on one
//! worker at a time, in order, so a node's workers never race each other on a key (see
//! [`crate::dispatch`]: a worker stuck on one request does not hold other keys' requests).
//! Projectors, process managers and timers run once, on the primary runtime, which delivers
//! what the workers wrote. Every runtime publishes its counters after each request, so the
//! node's counters can be read, and recorded at shutdown, without waiting for a busy one.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tollgate_billing_model::account::STREAM;
use tollgate_host::ActorKind;
use tollgate_node::{Node, NodeError, NodeHandle, Reply, Request, wall_ms};
use tollgate_runtime::quota::expiry;
use tollgate_runtime::{Journal, Loader, Manifest, Runtime, RuntimeError, Stats, engine_for_runtimes};

use crate::dispatch::{Dispatch, Start};
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
    /// Credentials and TLS for every NATS connection of the node (its store, its service, an
    /// edge's link to its core): the manifest's `[nats]` with any flags over it.
    pub access: tollgate_store::NatsAccess,
    /// A worker busy with one request this long is passed over: requests for other keys
    /// waiting for it move to other workers (`None`: [`DEFAULT_REROUTE_AFTER`]).
    pub reroute_after: Option<Duration>,
}

/// How long a worker may be busy with one request before requests for other keys waiting for
/// it move to other workers: far above a normal request (a few ms, an fsync included), far
/// below the wall-clock backstop that ends a stuck one.
pub const DEFAULT_REROUTE_AFTER: Duration = Duration::from_secs(1);

/// A primary runtime and its workers.
pub(crate) struct Pool {
    primary: Primary,
    workers: Option<Arc<Workers>>,
    delivery_queued: Arc<AtomicBool>,
    rating_groups: Arc<RatingGroups>,
    journal: Journal,
    exposure: Mutex<Exposure>,
    streams: Vec<String>,
    /// Expire grants still open this long after their validity (the manifest's
    /// `[quota] clock_skew_ms`); `None`: the node reaps nothing.
    reap_after_ms: Option<u64>,
    /// The node's name and this run's id, under which the counters are recorded.
    name: String,
    run_id: String,
}

/// The counters a runtime published after its last finished call.
#[derive(Default)]
struct Counters(Mutex<Stats>);

impl Counters {
    fn publish(&self, node: &Node) {
        *self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = node.stats();
    }

    fn read(&self) -> Stats {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }
}

/// The primary runtime: its thread and its published counters.
pub(crate) struct Primary {
    handle: NodeHandle,
    counters: Arc<Counters>,
}

impl Primary {
    /// Runs `call` on the primary's thread, in turn with its other work, and returns what it
    /// returns.
    pub(crate) async fn with<R: Send + 'static>(
        &self,
        call: impl FnOnce(&mut Node) -> R + Send + 'static,
    ) -> Result<R, NodeError> {
        let counters = self.counters.clone();
        self.handle
            .with(move |node| {
                let result = call(node);
                counters.publish(node);
                result
            })
            .await
    }

    /// Queues `call` on the primary's thread without waiting for it.
    fn post(&self, call: impl FnOnce(&mut Node) + Send + 'static) -> Result<(), NodeError> {
        let counters = self.counters.clone();
        self.handle.post(move |node| {
            call(node);
            counters.publish(node);
        })
    }
}

/// One request's work on a worker: runs, publishes the worker's counters, then answers (so a
/// client that has its answer reads counters that count it).
type Job = Box<dyn FnOnce(&mut Node, &Counters) + Send>;

/// The workers: their threads, their counters, and the requests waiting for them.
struct Workers {
    handles: Vec<NodeHandle>,
    counters: Vec<Counters>,
    dispatch: Mutex<Dispatch<Job>>,
}

impl Workers {
    fn dispatch(&self) -> MutexGuard<'_, Dispatch<Job>> {
        self.dispatch.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Hands `start` to its worker; when it is done the worker takes its next request.
    fn run(self: &Arc<Self>, start: Option<Start<Job>>) {
        let mut next = start;
        while let Some(Start { worker, job }) = next.take() {
            let workers = self.clone();
            let posted = self.handles[worker].post(move |node| {
                job(node, &workers.counters[worker]);
                let next = workers.dispatch().finished(worker, Instant::now());
                workers.run(next);
            });
            if posted.is_err() {
                // The worker's thread is gone: the job was dropped with the closure (its
                // caller hears that the node stopped), and so is each one after it.
                next = self.dispatch().finished(worker, Instant::now());
            }
        }
    }
}

/// The runtime that answers a key's requests (see [`Pool::for_key`]).
pub(crate) struct Keyed<'a> {
    pool: &'a Pool,
    key: String,
}

impl Keyed<'_> {
    /// Answers a request.
    pub(crate) async fn request(&self, request: Request) -> Result<Reply, NodeError> {
        self.with(move |node| node.handle(request)).await?
    }

    /// Runs `call` on the key's runtime, after the key's earlier requests, and returns what
    /// it returns.
    pub(crate) async fn with<R: Send + 'static>(
        &self,
        call: impl FnOnce(&mut Node) -> R + Send + 'static,
    ) -> Result<R, NodeError> {
        let Some(workers) = &self.pool.workers else { return self.pool.primary.with(call).await };
        let (answer, reply) = oneshot::channel();
        let job: Job = Box::new(move |node, counters| {
            let result = call(node);
            counters.publish(node);
            // A caller that gave up waiting dropped its receiver; the call still ran.
            let _ = answer.send(result);
        });
        let start = workers.dispatch().submit(&self.key, job, Instant::now()).map_err(|_| NodeError::Stopped)?;
        workers.run(start);
        reply.await.map_err(|_| NodeError::Stopped)
    }
}

impl Pool {
    /// Opens the primary (every actor) and the workers (aggregates, raters and policies) over
    /// one store; blocks until all have caught up.
    pub(crate) fn open(spec: &NodeSpec) -> Result<Pool, NodeError> {
        let manifest = Manifest::load(&spec.manifest).map_err(|e| NodeError::Runtime(e.into()))?;
        let engine = engine_for_runtimes(&manifest, spec.workers + 1)?;
        let journal = Journal::open_for(&spec.store, &manifest.store, &spec.access)?;
        let mut commands = manifest.clone();
        commands
            .actors
            .retain(|name, _| !matches!(manifest.kind(name), ActorKind::Projector | ActorKind::ProcessManager));
        let started = wall_ms();
        // No runtime records its own counters: the pool records everyone's at once, also when
        // one is stuck on a call (see `Pool::close`).
        let open = |manifest: Manifest| {
            let (engine, journal, name) = (engine.clone(), journal.clone(), spec.name.clone());
            NodeHandle::spawn(move || Node::beside(Runtime::open(&manifest, &mut Loader::new(engine), journal)?, &name))
        };
        let primary = open(manifest.clone())?;
        let handles = (0..spec.workers).map(|_| open(commands.clone())).collect::<Result<Vec<_>, _>>()?;
        let counters = Arc::new(Counters::default());
        let published = counters.clone();
        let streams = primary.with_blocking(move |node| {
            published.publish(node);
            node.runtime().command_streams()
        })?;
        let workers = if handles.is_empty() {
            None
        } else {
            let counters = handles.iter().map(|_| Counters::default()).collect();
            let reroute_after = spec.reroute_after.unwrap_or(DEFAULT_REROUTE_AFTER);
            let dispatch = Mutex::new(Dispatch::new(handles.len(), reroute_after));
            Some(Arc::new(Workers { handles, counters, dispatch }))
        };
        Ok(Pool {
            primary: Primary { handle: primary, counters },
            workers,
            delivery_queued: Arc::new(AtomicBool::new(false)),
            rating_groups: Arc::new(manifest.rating_groups()),
            journal,
            exposure: Mutex::default(),
            streams,
            reap_after_ms: manifest.quota.map(|q| q.clock_skew_ms),
            run_id: format!("{}-{started}-{}", spec.name, std::process::id()),
            name: spec.name.clone(),
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
    /// data ref): one at a time and in order for one key (see [`crate::dispatch`]).
    pub(crate) fn for_key(&self, key: &str) -> Keyed<'_> {
        Keyed { pool: self, key: key.to_string() }
    }

    /// Moves requests waiting for a stuck worker to free ones; called every few
    /// milliseconds while the node serves.
    pub(crate) fn reroute(&self) {
        if let Some(workers) = &self.workers {
            let starts = workers.dispatch().reroute(Instant::now());
            for start in starts {
                workers.run(Some(start));
            }
        }
    }

    /// How often [`Pool::reroute`] should run: a few times per reroute threshold.
    pub(crate) fn reroute_every(&self) -> Option<Duration> {
        let workers = self.workers.as_ref()?;
        let after = workers.dispatch().reroute_after();
        Some((after / 4).clamp(Duration::from_millis(5), Duration::from_millis(250)))
    }

    /// How each Nchf rating group is charged (the manifest's `[rating_groups]`).
    pub(crate) fn rating_groups(&self) -> Arc<RatingGroups> {
        self.rating_groups.clone()
    }

    /// The runtime with the projectors, process managers and timers.
    pub(crate) fn primary(&self) -> &Primary {
        &self.primary
    }

    /// After a worker may have written: has the primary deliver new events to projectors and
    /// process managers, once for any number of writes made before it gets to it.
    pub(crate) fn wrote(&self) {
        if self.workers.is_none() || self.delivery_queued.swap(true, Ordering::SeqCst) {
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

    /// The counters of every runtime as each published them after its last finished call,
    /// summed: read without waiting for a busy runtime.
    pub(crate) fn stats(&self) -> Stats {
        let mut total = self.primary.counters.read();
        for counters in self.workers.iter().flat_map(|w| &w.counters) {
            total.add(&counters.read());
        }
        total
    }

    /// Folds the next page of the log into the grant exposure; blocks on the store.
    pub(crate) fn fold_exposure(&self) -> Result<(), RuntimeError> {
        self.exposure.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).catch_up(&self.journal)
    }

    /// What `/metrics` reports of the node: its counters, its store's append latency, the
    /// grant exposure folded so far and how its workers are doing.
    pub(crate) fn reading(&self) -> NodeReading {
        let stats = self.stats();
        let (rerouted, stuck) = match &self.workers {
            Some(workers) => {
                let dispatch = workers.dispatch();
                (dispatch.rerouted(), dispatch.stuck_workers(Instant::now()))
            }
            None => (0, 0),
        };
        let exposure = self.exposure.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        NodeReading {
            stats,
            appends: self.journal.append_latency(),
            exposure: exposure.by_currency().clone(),
            undecodable: exposure.undecodable(),
            edge: None,
            rerouted,
            stuck_workers: stuck,
        }
    }

    /// Closes the node and records its counters: the workers take no more requests (those
    /// still waiting are refused), the primary delivers what they wrote (waited for until
    /// `until`), then the counters of every call finished are recorded, those of a runtime
    /// still stuck on a call included, up to its last finished one. Blocks on the store.
    pub(crate) fn close(self: Arc<Self>, until: Instant) -> Result<Stats, NodeError> {
        if let Some(workers) = &self.workers {
            // Dropped outside the lock: each tells its caller the node stopped.
            let refused = workers.dispatch().close();
            drop(refused);
        }
        let (delivered, wait) = std::sync::mpsc::channel();
        let posted = self.primary.post(move |node| {
            if let Err(e) = node.runtime().pump() {
                tracing::warn!(error = %e, "delivering what the workers wrote");
            }
            let _ = delivered.send(());
        });
        let delivered = posted.is_ok() && wait.recv_timeout(until.saturating_duration_since(Instant::now())).is_ok();
        if !delivered {
            tracing::warn!("the primary runtime is still busy: its counters are those of its last finished call");
        }
        let stats = self.stats();
        stats.record(&self.journal, &self.name, &self.run_id, wall_ms())?;
        // The runtimes idle now are stopped and joined; one still stuck on a call (whose job
        // holds the workers) is left to end with the process.
        if let Ok(Pool { primary, workers, .. }) = Arc::try_unwrap(self) {
            if let Some(workers) = workers.and_then(|w| Arc::try_unwrap(w).ok()) {
                let running: Vec<bool> = (0..workers.handles.len()).map(|w| workers.dispatch().is_running(w)).collect();
                for (handle, running) in workers.handles.into_iter().zip(running) {
                    if !running {
                        let _ = handle.close();
                    }
                }
            }
            if delivered {
                let _ = primary.handle.close();
            }
        }
        Ok(stats)
    }
}
