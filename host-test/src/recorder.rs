//! A record of what an actor did through its imports, for assertions.

use std::sync::{Arc, Mutex, MutexGuard};
use tollgate_host::HostState;
use tollgate_host::host_state::{HostCall, ImportObserver, LogLine};

#[derive(Default)]
struct Record {
    calls: Vec<HostCall>,
    logs: Vec<LogLine>,
}

/// Keeps every import call and log line of the actors whose host state it watches, oldest
/// first, until [`Recorder::reset`]. Cloning it shares the same record.
///
/// ```
/// use tollgate_host::HostState;
/// use tollgate_host_test::Recorder;
///
/// let state = HostState::new();
/// let recorder = Recorder::attach(&state);
/// assert!(recorder.calls().is_empty());
/// ```
#[derive(Clone, Default)]
pub struct Recorder(Arc<Mutex<Record>>);

impl Recorder {
    /// A recorder watching `state` from now on. When `state` already has an observer, the
    /// recorder stays empty.
    pub fn attach(state: &HostState) -> Recorder {
        let recorder = Recorder::default();
        state.observe(Arc::new(recorder.clone()));
        recorder
    }

    fn lock(&self) -> MutexGuard<'_, Record> {
        // Pushes and clears only: a panic elsewhere cannot leave the record half-written.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Calls to host imports so far, oldest first.
    pub fn calls(&self) -> Vec<HostCall> {
        self.lock().calls.clone()
    }

    /// Log lines so far, oldest first (as each call's log budget let them through).
    pub fn logs(&self) -> Vec<LogLine> {
        self.lock().logs.clone()
    }

    /// Forgets recorded calls and log lines.
    pub fn reset(&self) {
        let mut record = self.lock();
        record.calls.clear();
        record.logs.clear();
    }
}

impl ImportObserver for Recorder {
    fn host_call(&self, call: HostCall) {
        self.lock().calls.push(call);
    }

    fn log_line(&self, line: LogLine) {
        self.lock().logs.push(line);
    }
}
