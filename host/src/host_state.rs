//! The state a host keeps for an actor beside its instances: configuration, key-value storage
//! (read models) and the clock, shared by every store the actor's instances run in.
//!
//! Key-value writes made during a call are staged and only committed when the call succeeds:
//! a trap or an error leaves storage untouched. A runtime records the committed writes to
//! persist them ([`HostState::record_kv_writes`]); a test harness may watch every import call
//! and log line through an [`ImportObserver`]. Without one nothing accumulates, so a
//! long-running node keeps no history of calls.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

/// One log line an actor emitted through `wasi:logging`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LogLine {
    /// `trace` .. `critical`.
    pub level: String,
    /// The context the actor gave.
    pub context: String,
    /// The message.
    pub message: String,
}

/// One call an actor made to a host import.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HostCall {
    /// The interface, e.g. `wasi:keyvalue/store`.
    pub interface: String,
    /// The function, e.g. `bucket.set`.
    pub function: String,
    /// The arguments, rendered for reading (`key=value` pairs).
    pub args: Vec<String>,
}

/// Watches what an actor does through its imports: every host call and every log line its log
/// budget lets through. A test harness records them; a runtime sets none.
pub trait ImportObserver: Send + Sync {
    /// An actor called a host import.
    fn host_call(&self, call: HostCall);
    /// An actor emitted a log line (or the host logged on its behalf, e.g. a dropped-lines
    /// warning).
    fn log_line(&self, line: LogLine);
}

/// The virtual clock actors and commands see, in milliseconds since the epoch.
#[derive(Debug, Clone, Default)]
pub struct VirtualClock(Arc<AtomicU64>);

impl VirtualClock {
    /// Now, in ms.
    pub fn now_ms(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Sets the time.
    pub fn set_ms(&self, ms: u64) {
        self.0.store(ms, Ordering::Relaxed)
    }

    /// Moves the time forward.
    pub fn advance_ms(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::Relaxed);
    }
}

impl wasmtime_wasi::HostWallClock for VirtualClock {
    fn resolution(&self) -> std::time::Duration {
        std::time::Duration::from_millis(1)
    }

    fn now(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.now_ms())
    }
}

impl wasmtime_wasi::HostMonotonicClock for VirtualClock {
    fn resolution(&self) -> u64 {
        1_000_000
    }

    fn now(&self) -> u64 {
        self.now_ms().saturating_mul(1_000_000)
    }
}

/// One committed key-value write: (bucket, key, new value or `None` for a deletion).
pub type KvChange = (String, String, Option<Vec<u8>>);

/// Key-value contents: bucket -> key -> value.
pub type Buckets = BTreeMap<String, BTreeMap<String, Vec<u8>>>;

#[derive(Default)]
struct State {
    config: BTreeMap<String, String>,
    buckets: Buckets,
    /// Writes of the call in progress: (bucket, key) -> new value or deletion.
    staged: BTreeMap<(String, String), Option<Vec<u8>>>,
    /// Committed writes not yet taken by [`HostState::take_kv_writes`], when recording.
    written: Option<Vec<KvChange>>,
}

/// The shared handle to an actor's host state. Cloning it shares the same state.
#[derive(Clone, Default)]
pub struct HostState {
    state: Arc<Mutex<State>>,
    clock: VirtualClock,
    /// Set at most once; read without a lock on every import call.
    observer: Arc<OnceLock<Arc<dyn ImportObserver>>>,
}

/// The host-side representation of an open `wasi:keyvalue` bucket.
#[derive(Debug, Clone)]
pub struct BucketHandle {
    /// The bucket's name.
    pub name: String,
}

impl HostState {
    /// Empty state at time 0, observed by no one.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update under the lock is a single map operation, so a panic elsewhere while
        // holding it cannot leave the state half-updated: keep going with the data.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Empty state sharing `clock` with other actors.
    pub fn with_clock(clock: VirtualClock) -> Self {
        HostState { state: Default::default(), clock, observer: Default::default() }
    }

    /// The virtual clock.
    pub fn clock(&self) -> &VirtualClock {
        &self.clock
    }

    /// Sets a configuration value (`wasi:config/store`).
    pub fn set_config(&self, key: &str, value: &str) {
        self.lock().config.insert(key.into(), value.into());
    }

    /// Replaces all configuration.
    pub fn replace_config(&self, config: BTreeMap<String, String>) {
        self.lock().config = config;
    }

    /// A configuration value.
    pub fn config(&self, key: &str) -> Option<String> {
        self.lock().config.get(key).cloned()
    }

    /// All configuration, sorted by key.
    pub fn config_all(&self) -> Vec<(String, String)> {
        self.lock().config.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// Sets a key-value entry (a test's seed, or a read model restored from the store).
    pub fn kv_set(&self, bucket: &str, key: &str, value: &[u8]) {
        self.lock().buckets.entry(bucket.into()).or_default().insert(key.into(), value.to_vec());
    }

    /// Removes a key-value entry (e.g. to put back what a refused call wrote).
    pub fn kv_remove(&self, bucket: &str, key: &str) {
        if let Some(b) = self.lock().buckets.get_mut(bucket) {
            b.remove(key);
        }
    }

    /// A committed key-value entry.
    pub fn kv_get(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        self.lock().buckets.get(bucket).and_then(|b| b.get(key)).cloned()
    }

    /// All committed key-value contents.
    pub fn kv_snapshot(&self) -> Buckets {
        self.lock().buckets.clone()
    }

    /// Starts recording committed key-value writes, so a runtime can persist exactly what
    /// one successful call wrote (see [`HostState::take_kv_writes`]).
    pub fn record_kv_writes(&self) {
        self.lock().written.get_or_insert_with(Vec::new);
    }

    /// The writes committed since the last take, oldest first (empty unless recording).
    pub fn take_kv_writes(&self) -> Vec<KvChange> {
        self.lock().written.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Lets `observer` see every import call and log line from now on. There is at most one
    /// observer: false (and nothing changes) when one is already set.
    pub fn observe(&self, observer: Arc<dyn ImportObserver>) -> bool {
        self.observer.set(observer).is_ok()
    }

    /// Tells the observer about a call; `args` renders its arguments only when there is one.
    pub(crate) fn record(&self, interface: &str, function: &str, args: impl FnOnce() -> Vec<String>) {
        if let Some(observer) = self.observer.get() {
            observer.host_call(HostCall { interface: interface.into(), function: function.into(), args: args() });
        }
    }

    /// Tells the observer about a log line.
    pub(crate) fn log(&self, level: &str, context: &str, message: &str) {
        if let Some(observer) = self.observer.get() {
            observer.log_line(LogLine { level: level.into(), context: context.into(), message: message.into() });
        }
    }

    pub(crate) fn staged_get(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        let s = self.lock();
        match s.staged.get(&(bucket.to_string(), key.to_string())) {
            Some(v) => v.clone(),
            None => s.buckets.get(bucket).and_then(|b| b.get(key)).cloned(),
        }
    }

    pub(crate) fn staged_put(&self, bucket: &str, key: &str, value: Option<Vec<u8>>) {
        self.lock().staged.insert((bucket.into(), key.into()), value);
    }

    pub(crate) fn staged_keys(&self, bucket: &str) -> Vec<String> {
        let s = self.lock();
        let mut keys: std::collections::BTreeSet<String> =
            s.buckets.get(bucket).map(|b| b.keys().cloned().collect()).unwrap_or_default();
        for ((b, k), v) in &s.staged {
            if b == bucket {
                if v.is_some() {
                    keys.insert(k.clone());
                } else {
                    keys.remove(k);
                }
            }
        }
        keys.into_iter().collect()
    }

    /// Commits the writes of the call that just succeeded.
    pub(crate) fn commit(&self) {
        let mut s = self.lock();
        let staged = std::mem::take(&mut s.staged);
        for ((bucket, key), value) in staged {
            if let Some(written) = s.written.as_mut() {
                written.push((bucket.clone(), key.clone(), value.clone()));
            }
            let b = s.buckets.entry(bucket).or_default();
            match value {
                Some(v) => {
                    b.insert(key, v);
                }
                None => {
                    b.remove(&key);
                }
            }
        }
    }

    /// Drops the writes of the call that just failed.
    pub(crate) fn discard(&self) {
        self.lock().staged.clear();
    }
}
