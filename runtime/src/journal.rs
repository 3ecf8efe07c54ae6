//! The runtime's event store, reached from synchronous actor calls.
//!
//! Actors run synchronously (a policy's imports call back into the runtime in the middle of a
//! guest call), while [`EventStore`] is async; the journal owns a small tokio runtime and
//! blocks on it. Call it from plain threads, never from inside another tokio runtime.

use crate::error::RuntimeError;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tollgate_host::aggregate::Event;
use tollgate_store::{
    AppendResult, BatchAppend, EventStore, ExpectedVersion, FileOptions, FileStore, NatsOptions, NatsStore, NewEvent,
    StoredEvent,
};

/// A shared handle on an event store. Clones share the store and its connection.
#[derive(Clone)]
pub struct Journal {
    inner: Arc<Inner>,
}

struct Inner {
    // Dropped before the tokio runtime: a NATS client's tasks live on it.
    store: Box<dyn EventStore>,
    tokio: tokio::runtime::Runtime,
    url: String,
    _ephemeral: Option<tempfile::TempDir>,
    appends: AppendClock,
}

/// Upper bounds of the append-latency buckets in microseconds: 50 µs doubling to ~1.6 s (an
/// unsynced append takes a few µs, an fsync'd one hundreds, a JetStream round trip ms), then
/// one bucket for everything slower.
const APPEND_BUCKETS_MICROS: [u64; 16] = {
    let mut bounds = [50; 16];
    let mut i = 1;
    while i < bounds.len() {
        bounds[i] = bounds[i - 1] * 2;
        i += 1;
    }
    bounds
};

/// Lock-free counts of how long appends took, shared by every clone of a journal.
#[derive(Default)]
struct AppendClock {
    buckets: [AtomicU64; APPEND_BUCKETS_MICROS.len() + 1],
    sum_micros: AtomicU64,
}

impl AppendClock {
    fn observe(&self, took: Duration) {
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let bucket =
            APPEND_BUCKETS_MICROS.iter().position(|&bound| micros <= bound).unwrap_or(APPEND_BUCKETS_MICROS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }
}

/// How long a journal's appends took (every append a command, a reported event or a counters
/// record made; the group commit's fsync included), for a Prometheus histogram.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AppendLatency {
    /// `(upper bound in seconds, appends that took at most that and more than the previous
    /// bound)`; the last bound is `f64::MAX`, everything slower.
    pub buckets: Vec<(f64, u64)>,
    /// Appends timed.
    pub count: u64,
    /// Their total duration in seconds.
    pub sum_seconds: f64,
}

fn tokio_runtime() -> Result<tokio::runtime::Runtime, RuntimeError> {
    // One worker keeps a NATS connection's background tasks (pings, reconnects) running
    // between calls without taking a core from the actors.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("tollgate-store")
        .enable_all()
        .build()
        .map_err(RuntimeError::Tokio)
}

impl Journal {
    /// Opens a store on a fresh tokio runtime.
    fn connect<F>(url: &str, open: impl FnOnce() -> F) -> Result<Journal, RuntimeError>
    where
        F: Future<Output = tollgate_store::Result<Box<dyn EventStore>>>,
    {
        let tokio = tokio_runtime()?;
        let store = tokio.block_on(open()).map_err(|source| RuntimeError::Store {
            url: url.into(),
            operation: "open".into(),
            source: Box::new(source),
        })?;
        Ok(Journal {
            inner: Arc::new(Inner { store, tokio, url: url.into(), _ephemeral: None, appends: AppendClock::default() }),
        })
    }

    /// Opens `file:DIR` (the embedded log) or `nats://HOST:PORT[,HOST:PORT...]` (JetStream).
    pub fn open(url: &str) -> Result<Journal, RuntimeError> {
        Journal::connect(url, || tollgate_store::open(url))
    }

    /// [`Journal::open`] as a manifest's `[store]` section says (its JetStream `replicas`),
    /// reaching a NATS server with `access` (the manifest's `[nats]`, or flags over it).
    pub fn open_for(
        url: &str,
        spec: &crate::manifest::StoreSpec,
        access: &tollgate_store::NatsAccess,
    ) -> Result<Journal, RuntimeError> {
        Journal::connect(url, || tollgate_store::open_with(url, spec.replicas, access))
    }

    /// Opens a store without writing to it (`tollgate events`, `stats`, `replay --check`, ...):
    /// an embedded log is neither created nor repaired, and writes fail.
    pub fn open_read_only(url: &str, access: &tollgate_store::NatsAccess) -> Result<Journal, RuntimeError> {
        Journal::connect(url, || tollgate_store::open_read_only(url, access))
    }

    /// JetStream at `url` with explicit options (e.g. a short request timeout for an edge node
    /// that must notice quickly that it is cut off).
    pub fn connect_nats(url: &str, options: NatsOptions) -> Result<Journal, RuntimeError> {
        Journal::connect(
            url,
            || async move { Ok(Box::new(NatsStore::connect(url, options).await?) as Box<dyn EventStore>) },
        )
    }

    /// A journal over a store opened by the caller (e.g. a [`FileStore`] whose writer
    /// counters a test reads through a clone); `url` names it in errors.
    pub fn with_store(url: &str, store: Box<dyn EventStore>) -> Result<Journal, RuntimeError> {
        let tokio = tokio_runtime()?;
        Ok(Journal {
            inner: Arc::new(Inner { store, tokio, url: url.into(), _ephemeral: None, appends: AppendClock::default() }),
        })
    }

    /// An embedded log in a fresh temporary directory, removed when the last clone is dropped;
    /// no fsync, because nothing in it outlives the process.
    pub fn ephemeral() -> Result<Journal, RuntimeError> {
        let tokio = tokio_runtime()?;
        let dir =
            tempfile::Builder::new().prefix("tollgate-ephemeral-").tempdir().map_err(RuntimeError::EphemeralDir)?;
        let url = format!("file:{}", dir.path().display());
        let options = FileOptions { sync: false, ..FileOptions::default() };
        let store = FileStore::open_with(dir.path(), options).map_err(|source| RuntimeError::Store {
            url: url.clone(),
            operation: "open".into(),
            source: Box::new(source),
        })?;
        let inner =
            Inner { store: Box::new(store), tokio, url, _ephemeral: Some(dir), appends: AppendClock::default() };
        Ok(Journal { inner: Arc::new(inner) })
    }

    /// The URL the store was opened with.
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    /// The store.
    pub fn store(&self) -> &dyn EventStore {
        self.inner.store.as_ref()
    }

    /// Runs a store future to completion.
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.inner.tokio.block_on(future)
    }

    /// Appends `events` to `(stream, key)` if it is at `expected`, timing the append for
    /// [`Journal::append_latency`].
    pub fn append(
        &self,
        stream: &str,
        key: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> tollgate_store::Result<AppendResult> {
        let start = Instant::now();
        let result = self.block_on(self.store().append(stream, key, expected, events));
        self.inner.appends.observe(start.elapsed());
        result
    }

    /// Writes several appends with one store call (see [`EventStore::append_batch`]); each is
    /// timed as long as the whole call took, which is how long each waited.
    pub fn append_batch(&self, appends: Vec<BatchAppend>) -> Vec<tollgate_store::Result<AppendResult>> {
        let start = Instant::now();
        let results = self.block_on(self.store().append_batch(appends));
        let took = start.elapsed();
        results.iter().for_each(|_| self.inner.appends.observe(took));
        results
    }

    /// How long the appends made through [`Journal::append`] took, over every clone of this
    /// journal.
    pub fn append_latency(&self) -> AppendLatency {
        let clock = &self.inner.appends;
        let bounds = APPEND_BUCKETS_MICROS.iter().map(|&micros| micros as f64 / 1e6).chain(std::iter::once(f64::MAX));
        let buckets: Vec<(f64, u64)> =
            bounds.zip(&clock.buckets).map(|(b, n)| (b, n.load(Ordering::Relaxed))).collect();
        AppendLatency {
            count: buckets.iter().map(|(_, n)| n).sum(),
            sum_seconds: clock.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
            buckets,
        }
    }

    /// Runs one store call, naming the operation in the error.
    pub fn run<T>(&self, op: &str, call: impl Future<Output = tollgate_store::Result<T>>) -> Result<T, RuntimeError> {
        self.block_on(call).map_err(|e| self.error(op, e))
    }

    /// A store error as a runtime error naming this store and `op`.
    pub fn error(&self, op: &str, e: tollgate_store::StoreError) -> RuntimeError {
        RuntimeError::Store { url: self.inner.url.clone(), operation: op.into(), source: Box::new(e) }
    }
}

impl Journal {
    /// The time of the store's last event (by position), 0 when it has none. A runtime's clock
    /// starts there at the earliest, so event times never go backwards across a restart, even
    /// when the host's clock does.
    pub fn last_event_time(&self) -> Result<u64, RuntimeError> {
        let store = self.store();
        let head = self.run("find the log's last event", store.head_position())?;
        if head == 0 {
            return Ok(0);
        }
        let last = self.run("find the log's last event", store.read_all(head, 1))?;
        Ok(last.first().map_or(0, |e| e.time_ms))
    }
}

/// A JSON event the runtime writes itself (not decided by an actor), e.g. a node's counters.
pub fn json_event<T: serde::Serialize>(
    event_type: &str,
    body: &T,
    command_id: &str,
    time_ms: u64,
) -> Result<NewEvent, RuntimeError> {
    let payload = tollgate_codec::to_json(body)
        .map_err(|source| RuntimeError::Encode { what: format!("a `{event_type}` event"), source })?;
    Ok(NewEvent {
        event_type: event_type.into(),
        schema_version: 1,
        content_type: tollgate_codec::JSON.into(),
        payload,
        command_id: command_id.into(),
        command_digest: Vec::new(),
        correlation_id: command_id.into(),
        causation_id: String::new(),
        time_ms,
    })
}

/// The store's form of an event the host built, from the command of `command_digest` (empty:
/// not from a command).
pub fn to_new(e: &Event, command_digest: &[u8]) -> NewEvent {
    NewEvent {
        event_type: e.event_type.clone(),
        schema_version: e.schema_version,
        content_type: e.content_type.clone(),
        payload: e.payload.clone(),
        command_id: e.command_id.clone(),
        command_digest: command_digest.to_vec(),
        correlation_id: e.correlation_id.clone(),
        causation_id: e.causation_id.clone(),
        time_ms: e.time,
    }
}

/// The host's form of a stored event.
pub fn from_stored(e: StoredEvent) -> Event {
    Event {
        stream: e.stream,
        key: e.key,
        event_type: e.event_type,
        schema_version: e.schema_version,
        content_type: e.content_type,
        payload: e.payload,
        sequence: e.sequence,
        time: e.time_ms,
        command_id: e.command_id,
        correlation_id: e.correlation_id,
        causation_id: e.causation_id,
    }
}
