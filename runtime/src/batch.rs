//! Deciding in batches: a runtime that takes several requests at once decides each on the
//! states it holds, holding their appends, then writes them all with one store call (one
//! group commit on the embedded log) before any of them is answered.
//!
//! A held append is applied to the key's resident state at once, so the batch's next request
//! on that key is decided after it, as it would be one request at a time. An append that does
//! not commit (a lost race with another runtime, a store error) makes its key forgotten, so
//! it is read again from the store, and fails its job: the caller answers that job again from
//! scratch (see [`crate::Runtime::commit_batch`]), never with what was decided on events that
//! are not in the log.

use crate::shared::Shared;
use crate::stats::Stats;
use std::collections::BTreeSet;
use tollgate_host::aggregate::Event;
use tollgate_store::{AppendResult, BatchAppend, ExpectedVersion, NewEvent, StoreError};

/// The appends held since [`Shared::begin_batch`], and the counters at each job's start.
#[derive(Default)]
pub(crate) struct Batch {
    held: Vec<Held>,
    /// `starts[j]`: the runtime's counters when job `j` began.
    starts: Vec<Stats>,
}

/// One append held for the batch's commit.
struct Held {
    job: usize,
    actor: String,
    stream: String,
    key: String,
    expected: u64,
    events: Vec<NewEvent>,
}

impl Batch {
    /// Holds an append of `events` to `(stream, key)` at `expected`; returns the result it will
    /// have if it commits.
    pub(crate) fn hold(
        &mut self,
        actor: &str,
        stream: &str,
        key: &str,
        expected: u64,
        events: Vec<NewEvent>,
    ) -> AppendResult {
        let count = events.len() as u64;
        self.held.push(Held {
            job: self.starts.len().saturating_sub(1),
            actor: actor.into(),
            stream: stream.into(),
            key: key.into(),
            expected,
            events,
        });
        AppendResult { first_sequence: expected + 1, last_sequence: expected + count, positions: Vec::new() }
    }

    /// The held events of `(stream, key)` from sequence `first` on, as they will be committed.
    pub(crate) fn events(&self, stream: &str, key: &str, first: u64) -> Vec<Event> {
        let mut out = Vec::new();
        for h in self.held.iter().filter(|h| h.stream == stream && h.key == key) {
            for (i, e) in h.events.iter().enumerate() {
                let sequence = h.expected + 1 + i as u64;
                if sequence >= first {
                    out.push(Event {
                        stream: h.stream.clone(),
                        key: h.key.clone(),
                        event_type: e.event_type.clone(),
                        schema_version: e.schema_version,
                        content_type: e.content_type.clone(),
                        payload: e.payload.clone(),
                        sequence,
                        time: e.time_ms,
                        command_id: e.command_id.clone(),
                        correlation_id: e.correlation_id.clone(),
                        causation_id: e.causation_id.clone(),
                    });
                }
            }
        }
        out
    }
}

impl Shared {
    /// Starts holding appends (see the module docs); a batch already started is kept.
    pub fn begin_batch(&mut self) {
        self.batch.get_or_insert_with(Batch::default);
    }

    /// Marks where the batch's next job begins, so its appends and counters are told apart.
    pub fn begin_job(&mut self) {
        let stats = self.stats.clone();
        if let Some(batch) = &mut self.batch {
            batch.starts.push(stats);
        }
    }

    /// Writes every held append with one store call, then snapshots the keys that need it.
    /// Returns the jobs (numbered from 0 in the order they began) an append of which did not
    /// commit: their keys are forgotten and their counters taken back, so answering them
    /// again counts them once.
    pub fn commit_batch(&mut self) -> BTreeSet<usize> {
        let Some(batch) = self.batch.take() else { return BTreeSet::new() };
        let Batch { mut held, starts } = batch;
        let end = self.stats.clone();
        // The events move to the store; what stays of each held append names its key and job.
        let appends: Vec<BatchAppend> = held
            .iter_mut()
            .map(|h| BatchAppend {
                stream: h.stream.clone(),
                key: h.key.clone(),
                expected: ExpectedVersion::Exact(h.expected),
                events: std::mem::take(&mut h.events),
            })
            .collect();
        let results = if appends.is_empty() { Vec::new() } else { self.journal.append_batch(appends) };
        let mut failed = BTreeSet::new();
        let mut lost: BTreeSet<(String, String)> = BTreeSet::new();
        let mut committed: BTreeSet<(String, String)> = BTreeSet::new();
        let mut conflicts = 0;
        for (h, result) in held.iter().zip(results) {
            match result {
                Ok(_) => {
                    committed.insert((h.actor.clone(), h.key.clone()));
                }
                Err(e) => {
                    if matches!(e, StoreError::Conflict { .. }) {
                        conflicts += 1;
                    }
                    tracing::debug!(stream = %h.stream, key = %h.key, error = %e, "a held append did not commit");
                    failed.insert(h.job);
                    lost.insert((h.actor.clone(), h.key.clone()));
                }
            }
        }
        for (actor, key) in &lost {
            self.forget(actor, key);
            committed.remove(&(actor.clone(), key.clone()));
        }
        for &job in &failed {
            let after = starts.get(job + 1).unwrap_or(&end);
            if let Some(before) = starts.get(job) {
                self.stats.take_back(before, after);
            }
        }
        self.stats.occ_conflicts += conflicts;
        for (actor, key) in committed {
            // The events are committed; a snapshot only shortens a later load.
            if let Err(e) = self.maybe_snapshot(&actor, &key) {
                tracing::warn!(%actor, %key, error = %e, "snapshot not taken");
            }
        }
        failed
    }
}
