//! A node: a runtime over a store, answering [`Request`]s.

use crate::protocol::{InvalidField, Repeated, Reply, Request, check_name};
use crate::view::{EventView, json_or_text};
use serde_json::Value;
use std::path::Path;
use tollgate_host::aggregate::Outcome;
use tollgate_runtime::{AdmissionRequest, Journal, Runtime, RuntimeError, Stats, read_model};

/// Why a node could not answer a request, or could not start or stop.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A field of the request is out of range; nothing ran.
    #[error(transparent)]
    Invalid(#[from] InvalidField),
    /// The command does not encode as a command envelope.
    #[error("`command`: {0}")]
    Command(#[source] tollgate_codec::CodecError),
    /// The runtime failed (store, actor, contention, bounds).
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The node could not catch up with what the store already holds.
    #[error("catching up with the store: {0}")]
    CatchUp(#[source] RuntimeError),
    /// The node's thread is gone (it panicked or was closed).
    #[error("the node has stopped")]
    Stopped,
}

/// The wall clock, in ms since the epoch (0 before 1970).
pub fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A runtime answering [`Request`]s. Its clock follows the wall clock and never goes back;
/// `advance_ms` moves it further. Due timers fire before every request.
pub struct Node {
    runtime: Runtime,
    name: String,
    started: u64,
    records: bool,
}

impl Node {
    /// Opens the manifest's actors over `store` (`file:DIR` or `nats://HOST:PORT`) and catches
    /// up with what the store holds. `name` names the node's recorded counters.
    pub fn open(manifest: &Path, store: &str, name: &str) -> Result<Node, NodeError> {
        Node::over(Runtime::load_with_store(manifest, Some(store))?, name)
    }

    /// A node over an already open runtime; catches up with its store.
    pub fn over(mut runtime: Runtime, name: &str) -> Result<Node, NodeError> {
        // Never before the log's last event (the runtime's clock starts there).
        let started = wall_ms().max(runtime.clock().now_ms());
        runtime.clock().set_ms(started);
        runtime.pump().map_err(NodeError::CatchUp)?;
        Ok(Node { runtime, name: name.into(), started, records: true })
    }

    /// A node that answers beside another over the same store (a worker of a server): it
    /// does not record its counters when closed; the other node [absorbs](Node::absorb) them.
    pub fn beside(runtime: Runtime, name: &str) -> Result<Node, NodeError> {
        Ok(Node { records: false, ..Node::over(runtime, name)? })
    }

    /// Adds the counters of a node that served beside this one, so they are recorded with
    /// this node's.
    pub fn absorb(&mut self, stats: &Stats) {
        self.runtime.absorb_stats(stats);
    }

    /// Moves the clock up to the wall clock (never back) and fires the timers now due;
    /// returns how many fired.
    pub fn tick(&mut self) -> Result<usize, NodeError> {
        self.catch_up_clock();
        Ok(self.runtime.advance_ms(0)?)
    }

    /// [`Node::tick`] for a caller that delivers the log itself, a page per turn: moves the
    /// clock up to the wall clock and records one batch of the timers due, `fired` having
    /// fired this tick already, leaving their reactions to the next delivery; returns how
    /// many fired (0: none left, or the tick's bound reached).
    pub fn fire_timers(&mut self, fired: usize) -> Result<usize, NodeError> {
        self.catch_up_clock();
        Ok(self.runtime.fire_due_batch(fired)?)
    }

    fn catch_up_clock(&self) {
        let now = self.runtime.clock().now_ms().max(wall_ms());
        self.runtime.clock().set_ms(now);
    }

    /// Answers one request: ticks, checks every field, then runs it.
    pub fn handle(&mut self, request: Request) -> Result<Reply, NodeError> {
        self.tick()?;
        self.answer(request)
    }

    /// Answers one request without ticking first, for a transport that has just ticked (the
    /// stdin transport ticks before it knows whether a line is a request at all).
    pub fn answer(&mut self, request: Request) -> Result<Reply, NodeError> {
        request.check(self.runtime.clock().now_ms())?;
        let rt = &mut self.runtime;
        Ok(match request {
            Request::Execute { stream, key, id, command } => {
                let envelope =
                    tollgate_host::aggregate::json_command(&stream, &key, &id, &command, rt.clock().now_ms())
                        .map_err(NodeError::Command)?;
                match rt.execute_noting_repeat(&envelope)? {
                    (Outcome::Accepted(events), true) => Reply::Repeated(Repeated {
                        accepted: events.iter().map(EventView::from).collect(),
                        repeat: true,
                    }),
                    (Outcome::Accepted(events), false) => Reply::Accepted(events.iter().map(EventView::from).collect()),
                    (Outcome::Rejected(r), _) => {
                        Reply::Rejected { kind: r.kind.name().into(), code: r.code, message: r.message }
                    }
                }
            }
            Request::Admit(a) => {
                let request = AdmissionRequest {
                    request_id: a.id,
                    subscriber: a.subscriber,
                    offer: a.offer,
                    rating_group: a.rating_group,
                    requested_units: a.units,
                    country: a.country,
                };
                Reply::Decision((&rt.admit(&request)?).into())
            }
            Request::Report { stream, key, id, event, correlation_id } => {
                let correlation = correlation_id.unwrap_or_else(|| key.clone());
                Reply::Recorded((&rt.report(&stream, &key, &correlation, &id, &event)?).into())
            }
            Request::AdvanceMs(ms) => Reply::TimersFired(rt.advance_ms(ms)?),
        })
    }

    /// The events of `key` on `stream`, oldest first (none for a key never written).
    pub fn stream(&self, stream: &str, key: &str) -> Result<Vec<EventView>, NodeError> {
        check_name("stream", stream)?;
        check_name("key", key)?;
        Ok(self.runtime.stream(stream, key, 1)?.iter().map(EventView::from).collect())
    }

    /// The value of `key` in read-model `bucket`, as JSON (or text), from the one projector
    /// that writes the bucket; `None` when no projector has written it or the key has no entry.
    pub fn kv(&self, bucket: &str, key: &str) -> Result<Option<Value>, NodeError> {
        read_kv(&self.runtime.journal(), &self.runtime.projectors(), bucket, key)
    }

    /// The node's clock, ms since the epoch.
    pub fn now_ms(&self) -> u64 {
        self.runtime.clock().now_ms()
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The runtime, e.g. to read events or state.
    pub fn runtime(&mut self) -> &mut Runtime {
        &mut self.runtime
    }

    /// The counters so far.
    pub fn stats(&self) -> Stats {
        self.runtime.stats()
    }

    /// Records the node's counters in the store (for `tollgate stats`; not for a node
    /// [beside](Node::beside) another) and returns them.
    pub fn close(self) -> Result<Stats, NodeError> {
        let stats = self.runtime.stats();
        if !self.records {
            return Ok(stats);
        }
        let run_id = format!("{}-{}-{}", self.name, self.started, std::process::id());
        self.runtime.record_stats(&self.name, &run_id)?;
        Ok(stats)
    }
}

/// The value under `key` of a read model's `bucket` as its projector (one of `projectors`)
/// last committed it, read from the store alone (no runtime, so it never waits for one that
/// is delivering a backlog); `None` when there is none.
pub fn read_kv(journal: &Journal, projectors: &[String], bucket: &str, key: &str) -> Result<Option<Value>, NodeError> {
    check_name("bucket", bucket)?;
    check_name("key", key)?;
    let writers = read_model::writers(journal, projectors.iter().map(String::as_str), bucket)?;
    match writers.as_slice() {
        [] => Ok(None),
        [projector] => Ok(read_model::get(journal, projector, bucket, key)?.map(|v| json_or_text(&v))),
        many => Err(NodeError::Invalid(InvalidField {
            field: "bucket".into(),
            problem: format!("is written by {} projectors ({})", many.len(), many.join(", ")),
        })),
    }
}
