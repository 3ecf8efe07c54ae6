//! The runtimes of one served node. Requests for different keys run in parallel on workers,
//! each a runtime on its own thread over the node's one store; a key's requests run on one
//! worker at a time, in order, so a node's workers never race each other on a key (see
//! [`crate::dispatch`]: a worker stuck on one request does not hold other keys' requests).
//! Projectors, process managers and timers run once, on the primary runtime, which delivers
//! what the workers wrote. Every runtime publishes its counters after each request, so the
//! node's counters can be read, and recorded at shutdown, without waiting for a busy one.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tollgate_billing_model::account::STREAM;
use tollgate_host::ActorKind;
use tollgate_host::aggregate::{Command, Outcome};
use tollgate_node::{Node, NodeError, NodeHandle, Reply, Request, wall_ms};
use tollgate_runtime::quota::expiry;
use tollgate_runtime::{CommandRunner, Journal, Loader, Manifest, Runtime, RuntimeError, Stats, engine_for_runtimes};

use crate::dispatch::{Batchable, Dispatch, Start};
use crate::exposure::Exposure;
use crate::metrics::NodeReading;
use crate::nchf::RatingGroups;
use crate::problem::Problem;

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
    /// New writes wait while more events than this wait for the primary's projectors and
    /// process managers (`None`: [`DEFAULT_MAX_BACKLOG_EVENTS`]); see [`Pool::caught_up`].
    /// Only over the embedded log (`file:`): several cores over one JetStream store share
    /// the reactions' consumers, so no one of them can tell how far behind they are.
    pub max_backlog_events: Option<u64>,
}

/// Events the primary may have left to deliver before new writes wait: a few seconds of its
/// work, so its read models, expiries and timers stay that close to the log under any load.
pub const DEFAULT_MAX_BACKLOG_EVENTS: u64 = 16_384;

/// How long a write waits for the primary's backlog to come under its bound before it is
/// answered `503` with `Retry-After`.
pub const BACKLOG_WAIT: Duration = Duration::from_secs(2);

/// How long a worker may be busy with one request before requests for other keys waiting for
/// it move to other workers: far above a normal request (a few ms, an fsync included), far
/// below the wall-clock backstop that ends a stuck one.
pub const DEFAULT_REROUTE_AFTER: Duration = Duration::from_secs(1);

/// A primary runtime and its workers.
pub(crate) struct Pool {
    primary: Primary,
    workers: Option<Arc<Workers>>,
    delivery_queued: Arc<AtomicBool>,
    /// The backlog as last measured (see [`Pool::measure_backlog`]).
    backlog: Backlog,
    rating_groups: Arc<RatingGroups>,
    journal: Journal,
    exposure: Mutex<Exposure>,
    streams: Vec<String>,
    /// The primary's projectors, whose read models `/v1/kv` reads from the store.
    projectors: Vec<String>,
    /// Expire grants still open this long after their validity (the manifest's
    /// `[quota] clock_skew_ms`); `None`: the node reaps nothing.
    reap_after_ms: Option<u64>,
    /// The node's name and this run's id, under which the counters are recorded.
    name: String,
    run_id: String,
}

/// What the primary has not done yet, as last measured: a gauge, read without waiting for
/// it, and the bound that holds new writes back while the primary is far behind.
struct Backlog {
    /// Events committed but not yet delivered to the projectors and process managers.
    events: AtomicU64,
    /// Timers due but not yet fired.
    timers: AtomicU64,
    /// Writes wait while more events than this are undelivered; `None`: they never wait.
    max_events: Option<u64>,
    /// Woken at each measurement.
    measured: tokio::sync::Notify,
}

impl Backlog {
    fn new(max_events: Option<u64>) -> Backlog {
        Backlog { events: AtomicU64::new(0), timers: AtomicU64::new(0), max_events, measured: Default::default() }
    }

    /// Records a measurement and wakes the writes waiting for one.
    fn record(&self, events: u64, timers: u64) {
        self.events.store(events, Ordering::Relaxed);
        self.timers.store(timers, Ordering::Relaxed);
        self.measured.notify_waiters();
    }

    /// Waits (at most `wait`) until at most `max_events` events are undelivered, as
    /// measured; `Err` with the events undelivered when they are still more.
    async fn under_bound(&self, wait: Duration) -> Result<(), u64> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Listening before reading, so a measurement between the two is not missed.
            let measured = self.measured.notified();
            tokio::pin!(measured);
            measured.as_mut().enable();
            let Some(max_events) = self.max_events else { return Ok(()) };
            let behind = self.events.load(Ordering::Relaxed);
            if behind <= max_events {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, measured).await.is_err() {
                let behind = self.events.load(Ordering::Relaxed);
                return if behind <= max_events { Ok(()) } else { Err(behind) };
            }
        }
    }
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

/// The primary runtime: its thread, its published counters and how far it has delivered.
#[derive(Clone)]
pub(crate) struct Primary {
    handle: Arc<NodeHandle>,
    counters: Arc<Counters>,
    /// The log's position up to which the projectors and process managers have had every
    /// commit, as of the primary's last delivery step.
    delivered: Arc<AtomicU64>,
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

    /// Delivers the next page of commits to the projectors and process managers; returns
    /// whether there was more. Each step is one turn on the primary's thread, so a backlog is
    /// worked off between its other calls, never ahead of all of them.
    async fn deliver_step(&self) -> bool {
        let delivered = self.delivered.clone();
        let step = self
            .with(move |node| {
                let step = node.runtime().pump_step();
                delivered.store(node.runtime().delivered_through(), Ordering::Relaxed);
                step
            })
            .await;
        match step {
            Ok(Ok(more)) => more,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "delivering what the workers wrote");
                false
            }
            Err(_) => false,
        }
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

/// One request's work on a worker.
enum Job {
    /// A request: decided in a batch with others, answered once the batch is written.
    Request { request: Request, answer: oneshot::Sender<Result<Reply, NodeError>> },
    /// Any other call (an Nchf operation's steps): runs alone, its writes made at once; what
    /// it returns answers its caller.
    Call(Box<dyn FnOnce(&mut Node) -> Answer + Send>),
    /// A command a process manager on the primary sent: decided in a batch like a request.
    Command { command: Command, answer: oneshot::Sender<Result<Outcome, String>> },
}

/// Sends a call's result to its caller.
type Answer = Box<dyn FnOnce() + Send>;

impl Batchable for Job {
    fn batchable(&self) -> bool {
        matches!(self, Job::Request { .. } | Job::Command { .. })
    }
}

/// A job of a batch, decided and waiting for the batch's write.
enum Decided {
    Request(Request, oneshot::Sender<Result<Reply, NodeError>>, Result<Reply, NodeError>),
    Command(Command, oneshot::Sender<Result<Outcome, String>>, Result<Outcome, RuntimeError>),
}

/// The outcome of a process manager's command on a worker, its refusal counted as the
/// manager's.
fn command_outcome(node: &mut Node, outcome: Result<Outcome, RuntimeError>) -> Result<Outcome, String> {
    let outcome = outcome.map_err(|e| e.to_string())?;
    if let Outcome::Rejected(rejection) = &outcome {
        node.runtime().recount_as_reaction_refusal(&rejection.code);
    }
    Ok(outcome)
}

/// Runs a worker's batch: decides its requests one after the other on the states the worker
/// holds, writes all their appends with one store call, then answers them. A request one of
/// whose appends did not commit (a lost race with another runtime over the store, a store
/// error) is run again on its own, from the state in the store, and answered with that: no
/// request is answered with a decision whose events are not in the log. The worker's
/// counters are published before anyone is answered, so a client that has its answer reads
/// counters that count it.
fn run_batch(node: &mut Node, jobs: Vec<Job>, counters: &Counters) {
    let mut decided = Vec::with_capacity(jobs.len());
    let mut calls = Vec::new();
    node.runtime().begin_batch();
    for job in jobs {
        match job {
            Job::Request { request, answer } => {
                node.runtime().begin_job();
                let reply = node.handle(request.clone());
                decided.push(Decided::Request(request, answer, reply));
            }
            Job::Command { command, answer } => {
                node.runtime().begin_job();
                let outcome = node.runtime().execute(&command);
                decided.push(Decided::Command(command, answer, outcome));
            }
            // The dispatch hands a call alone; it runs once the requests before it are written.
            Job::Call(call) => calls.push(call),
        }
    }
    let failed = node.runtime().commit_batch();
    let mut answers: Vec<Answer> = decided
        .into_iter()
        .enumerate()
        .map(|(job, decided)| match decided {
            Decided::Request(request, answer, reply) => {
                let reply = if failed.contains(&job) { node.handle(request) } else { reply };
                // A caller that gave up waiting dropped its receiver; the request still ran.
                Box::new(move || drop(answer.send(reply))) as Answer
            }
            Decided::Command(command, answer, outcome) => {
                let outcome = if failed.contains(&job) { node.runtime().execute(&command) } else { outcome };
                let outcome = command_outcome(node, outcome);
                Box::new(move || drop(answer.send(outcome))) as Answer
            }
        })
        .collect();
    answers.extend(calls.into_iter().map(|call| call(node)));
    counters.publish(node);
    answers.into_iter().for_each(|answer| answer());
}

/// Runs the primary's process managers' commands on the workers that own their keys, so
/// they are decided on fresh states and written in the workers' batches. Holds the workers
/// weakly: closing the pool is not kept from dropping them.
struct OnWorkers(Weak<Workers>);

impl CommandRunner for OnWorkers {
    fn run(&self, commands: &[Command]) -> Option<Vec<Result<Outcome, String>>> {
        let workers = self.0.upgrade()?;
        if workers.dispatch().is_closed() {
            return None;
        }
        let waiting: Vec<_> = commands
            .iter()
            .map(|command| {
                let (answer, outcome) = oneshot::channel();
                let job = Job::Command { command: command.clone(), answer };
                workers.submit(&command.key, job).map(|()| outcome)
            })
            .collect();
        drop(workers);
        let stopped = || "the node stopped before the command ran".to_string();
        Some(
            waiting
                .into_iter()
                .map(|outcome| outcome.map_err(|_| stopped())?.blocking_recv().map_err(|_| stopped())?)
                .collect(),
        )
    }
}

/// Grant expiries the reaper has in flight at once.
const REAP_CHUNK: usize = 1024;

/// Requests a worker decides together at most: enough to share one fsync among all that
/// wait, few enough that the first of them is not held long for the last.
const MAX_BATCH: usize = 256;

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

    /// Hands `start` to its worker; when it is done the worker takes its next batch.
    fn run(self: &Arc<Self>, start: Option<Start<Job>>) {
        let mut next = start;
        while let Some(Start { worker, jobs }) = next.take() {
            let workers = self.clone();
            let posted = self.handles[worker].post(move |node| {
                run_batch(node, jobs, &workers.counters[worker]);
                let next = workers.dispatch().finished(worker, Instant::now());
                workers.run(next);
            });
            if posted.is_err() {
                // The worker's thread is gone: the jobs were dropped with the closure (their
                // callers hear that the node stopped), and so is each one after them.
                next = self.dispatch().finished(worker, Instant::now());
            }
        }
    }

    /// Queues `job` for `key` and starts its worker if it is free.
    fn submit(self: &Arc<Self>, key: &str, job: Job) -> Result<(), NodeError> {
        let start = self.dispatch().submit(key, job, Instant::now()).map_err(|_| NodeError::Stopped)?;
        self.run(start);
        Ok(())
    }
}

/// The runtime that answers a key's requests (see [`Pool::for_key`]).
pub(crate) struct Keyed<'a> {
    pool: &'a Pool,
    key: String,
}

impl Keyed<'_> {
    /// Answers a request; on a worker, in a batch with other keys' requests.
    pub(crate) async fn request(&self, request: Request) -> Result<Reply, NodeError> {
        let Some(workers) = &self.pool.workers else {
            return self.pool.primary.with(move |node| node.handle(request)).await?;
        };
        let (answer, reply) = oneshot::channel();
        workers.submit(&self.key, Job::Request { request, answer })?;
        reply.await.map_err(|_| NodeError::Stopped)?
    }

    /// Runs `call` on the key's runtime, after the key's earlier requests, and returns what
    /// it returns.
    pub(crate) async fn with<R: Send + 'static>(
        &self,
        call: impl FnOnce(&mut Node) -> R + Send + 'static,
    ) -> Result<R, NodeError> {
        let Some(workers) = &self.pool.workers else { return self.pool.primary.with(call).await };
        let (answer, reply) = oneshot::channel();
        let job = Job::Call(Box::new(move |node| {
            let result = call(node);
            // A caller that gave up waiting dropped its receiver; the call still ran.
            Box::new(move || drop(answer.send(result)))
        }));
        workers.submit(&self.key, job)?;
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
        let primary = Arc::new(open(manifest.clone())?);
        let handles = (0..spec.workers).map(|_| open(commands.clone())).collect::<Result<Vec<_>, _>>()?;
        let counters = Arc::new(Counters::default());
        let published = counters.clone();
        let (streams, projectors) = primary.with_blocking(move |node| {
            published.publish(node);
            (node.runtime().command_streams(), node.runtime().projectors())
        })?;
        let workers = if handles.is_empty() {
            None
        } else {
            let counters = handles.iter().map(|_| Counters::default()).collect();
            let reroute_after = spec.reroute_after.unwrap_or(DEFAULT_REROUTE_AFTER);
            let dispatch = Mutex::new(Dispatch::new(handles.len(), reroute_after, MAX_BATCH));
            Some(Arc::new(Workers { handles, counters, dispatch }))
        };
        if let Some(workers) = &workers {
            let runner = OnWorkers(Arc::downgrade(workers));
            primary.with_blocking(move |node| node.runtime().run_commands_with(Box::new(runner)))?;
        }
        Ok(Pool {
            primary: Primary { handle: primary, counters, delivered: Arc::default() },
            // Only a node whose primary delivers the whole log can tell how far behind its
            // reactions are: several cores over one JetStream store share the consumers.
            backlog: Backlog::new(
                spec.store.starts_with("file:").then(|| spec.max_backlog_events.unwrap_or(DEFAULT_MAX_BACKLOG_EVENTS)),
            ),
            workers,
            delivery_queued: Arc::new(AtomicBool::new(false)),
            rating_groups: Arc::new(manifest.rating_groups()),
            journal,
            exposure: Mutex::default(),
            streams,
            projectors,
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
        // Sent together, a chunk at a time, so the workers decide them in batches (one append
        // per batch) rather than one round trip each.
        for chunk in due.chunks(REAP_CHUNK) {
            let expiries = chunk.iter().map(|(account, reservation_id)| {
                let (id, command) = expiry(reservation_id);
                let command = tollgate_node::view::to_value(&command);
                let request = Request::Execute { stream: STREAM.into(), key: account.clone(), id, command };
                async move { self.for_key(account).request(request).await }
            });
            for reply in futures_util::future::join_all(expiries).await {
                if let Reply::Accepted(events) = reply? {
                    expired += events.len();
                }
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

    /// A read model's value as its projector last committed it, from the store: never waits
    /// for the primary (see [`tollgate_node::read_kv`]). Blocks on the store.
    pub(crate) fn read_kv(&self, bucket: &str, key: &str) -> Result<Option<serde_json::Value>, NodeError> {
        tollgate_node::read_kv(&self.journal, &self.projectors, bucket, key)
    }

    /// Events committed and not yet delivered to the projectors, as last measured.
    pub(crate) fn undelivered(&self) -> u64 {
        self.backlog.events.load(Ordering::Relaxed)
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
        if self.workers.is_some() {
            self.deliver();
        }
    }

    /// Starts delivering the log to the projectors and process managers, a page per turn of
    /// the primary's thread, until nothing is new; one delivery runs at a time.
    pub(crate) fn deliver(&self) {
        if self.delivery_queued.swap(true, Ordering::SeqCst) {
            return;
        }
        let (primary, queued) = (self.primary.clone(), self.delivery_queued.clone());
        let delivering = async move {
            loop {
                while primary.deliver_step().await {}
                queued.store(false, Ordering::SeqCst);
                // A write answered after the last step but before the flag was cleared is
                // delivered now; a delivery started meanwhile takes over.
                if !primary.deliver_step().await || queued.swap(true, Ordering::SeqCst) {
                    return;
                }
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(tokio) => drop(tokio.spawn(delivering)),
            // Outside the server's tokio runtime: one full delivery, queued on the primary.
            Err(_) => {
                let queued = self.delivery_queued.clone();
                let _ = self.primary.post(move |node| {
                    queued.store(false, Ordering::SeqCst);
                    if let Err(e) = node.runtime().pump() {
                        tracing::warn!(error = %e, "delivering what the workers wrote");
                    }
                });
            }
        }
    }

    /// Measures what the primary has not done yet: events committed but not delivered to
    /// its projectors and process managers, and timers due but not fired. Blocks on the
    /// store; never waits for the primary.
    pub(crate) fn measure_backlog(&self) -> Result<(), RuntimeError> {
        let store = self.journal.store();
        let head = self.journal.run("read the log's head", store.head_position())?;
        let due = self.journal.run("read timers", store.due_timer_count(wall_ms()))?;
        let delivered = self.primary.delivered.load(Ordering::Relaxed);
        self.backlog.record(head.saturating_sub(delivered), due as u64);
        Ok(())
    }

    /// Holds a new write while the primary is behind by more than the node's bound
    /// ([`NodeSpec::max_backlog_events`]), until a measurement finds it under the bound
    /// (measured every tick); `503` with `Retry-After` when it is still over after
    /// [`BACKLOG_WAIT`]. So a load the node's reactions cannot follow slows and sheds its
    /// writes instead of growing the backlog, its memory and every later expiry's delay
    /// without bound. The primary's own commands, and expiries, are never held.
    pub(crate) async fn caught_up(&self) -> Result<(), Problem> {
        self.backlog.under_bound(BACKLOG_WAIT).await.map_err(|behind| {
            Problem::unavailable(
                "NF_CONGESTION",
                format!(
                    "the node's projectors and process managers are {behind} events behind, over its bound of {}; \
                     retry later",
                    self.backlog.max_events.unwrap_or_default()
                ),
            )
        })
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
        let waiting = self.workers.as_ref().map_or(0, |w| w.dispatch().waiting());
        let exposure = self.exposure.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        NodeReading {
            backlog_events: self.backlog.events.load(Ordering::Relaxed),
            backlog_timers: self.backlog.timers.load(Ordering::Relaxed),
            waiting,
            writes: self.journal.store().write_stats(),
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
        let through = self.primary.delivered.clone();
        // Step by step until the deadline: a backlog left is delivered after a restart, from
        // the consumers' durable positions.
        let posted = self.primary.post(move |node| {
            let mut more = true;
            while more && Instant::now() < until {
                more = node.runtime().pump_step().unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "delivering what the workers wrote");
                    false
                });
            }
            through.store(node.runtime().delivered_through(), Ordering::Relaxed);
            let _ = delivered.send(());
        });
        let delivered = posted.is_ok() && wait.recv_timeout(until.saturating_duration_since(Instant::now())).is_ok();
        if !delivered {
            tracing::warn!("the primary runtime is still busy: its counters are those of its last finished call");
        }
        if self.measure_backlog().is_ok() {
            let (events, timers) =
                (self.backlog.events.load(Ordering::Relaxed), self.backlog.timers.load(Ordering::Relaxed));
            let position = self.primary.delivered.load(Ordering::Relaxed);
            tracing::info!(
                delivered_through = position,
                undelivered_events = events,
                due_timers = timers,
                "stopping: what is left is delivered and fired after a restart"
            );
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
            if delivered && let Ok(handle) = Arc::try_unwrap(primary.handle) {
                let _ = handle.close();
            }
        }
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_write_waits_for_a_measurement_under_the_bound_and_is_refused_when_none_comes() {
        let backlog = Arc::new(Backlog::new(Some(100)));
        assert_eq!(backlog.under_bound(Duration::ZERO).await, Ok(()), "nothing behind");
        backlog.record(100, 7);
        assert_eq!(backlog.under_bound(Duration::ZERO).await, Ok(()), "at the bound");
        backlog.record(101, 7);
        assert_eq!(backlog.under_bound(Duration::from_millis(20)).await, Err(101), "over, and never measured again");
        // However long it may wait, a write goes once a measurement finds the backlog under.
        let waiting = tokio::spawn({
            let backlog = backlog.clone();
            async move { backlog.under_bound(Duration::from_secs(3600)).await }
        });
        tokio::task::yield_now().await;
        backlog.record(5_000, 0);
        backlog.record(3, 0);
        assert_eq!(waiting.await.unwrap(), Ok(()));
        // Without a bound nothing waits.
        let unbounded = Backlog::new(None);
        unbounded.record(u64::MAX, 0);
        assert_eq!(unbounded.under_bound(Duration::from_secs(3600)).await, Ok(()));
    }
}
