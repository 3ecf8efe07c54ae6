//! The log as held in memory: every commit, indexed by `(stream, key)` and by position, and
//! the state the other records build (snapshots, projections, timers, consumer progress,
//! dead letters). Reads never touch the disk.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use super::record::{Commit, Record};
use crate::{KvWrite, Snapshot, Timer};

/// The commits of one `(stream, key)`.
#[derive(Default)]
pub(super) struct KeyIndex {
    pub(super) last_sequence: u64,
    /// Indexes into `LogIndex::commits`.
    pub(super) commits: Vec<usize>,
    /// Command id -> index into `LogIndex::commits` of the append that carried it.
    pub(super) command_ids: HashMap<String, usize>,
}

/// How far one consumer got.
#[derive(Default)]
pub(super) struct ConsumerProgress {
    /// Every commit whose last position is <= this is acked or dead-lettered.
    pub(super) done_upto: u64,
    /// Last positions of commits acked out of order.
    pub(super) done_above: BTreeSet<u64>,
    /// Failed deliveries so far, by commit last position.
    pub(super) attempts: HashMap<u64, u32>,
    /// Dead letters moved back for redelivery.
    pub(super) redrive: BTreeSet<u64>,
}

/// The timers set, by id and in due order (`(fire_at_ms, id)`), so a page of the due ones is
/// read without walking, copying or sorting every timer.
#[derive(Default)]
pub(super) struct TimerIndex {
    by_id: HashMap<String, Timer>,
    by_due: BTreeSet<(u64, String)>,
}

impl TimerIndex {
    /// Sets `timer`, replacing the one with its id.
    pub(super) fn insert(&mut self, timer: Timer) {
        if let Some(old) = self.by_id.get(&timer.id) {
            self.by_due.remove(&(old.fire_at_ms, old.id.clone()));
        }
        self.by_due.insert((timer.fire_at_ms, timer.id.clone()));
        self.by_id.insert(timer.id.clone(), timer);
    }

    /// Removes timer `id`, if set.
    pub(super) fn remove(&mut self, id: &str) {
        if let Some(old) = self.by_id.remove(id) {
            self.by_due.remove(&(old.fire_at_ms, old.id));
        }
    }

    /// Whether timer `id` is set.
    pub(super) fn contains(&self, id: &str) -> bool {
        self.by_id.contains_key(id)
    }

    /// The timers due at `now_ms` after `after` in due order, earliest first, at most `max`.
    pub(super) fn due(&self, now_ms: u64, after: Option<&(u64, String)>, max: usize) -> Vec<Timer> {
        let start = match after {
            Some(after) => std::ops::Bound::Excluded(after.clone()),
            None => std::ops::Bound::Unbounded,
        };
        self.by_due
            .range((start, std::ops::Bound::Unbounded))
            .take_while(|(at, _)| *at <= now_ms)
            .take(max)
            .filter_map(|(_, id)| self.by_id.get(id).cloned())
            .collect()
    }

    /// How many timers are due at `now_ms`.
    pub(super) fn count_due(&self, now_ms: u64) -> usize {
        match now_ms.checked_add(1) {
            // `(t, "")` is the least entry due at `t`: everything before it is due earlier.
            Some(later) => self.by_due.range(..(later, String::new())).count(),
            None => self.by_due.len(),
        }
    }
}

/// What is kept of a dead letter besides its commit.
pub(super) struct DeadLetterEntry {
    pub(super) attempts: u32,
    pub(super) reason: String,
}

/// Everything the log says, in memory.
#[derive(Default)]
pub(super) struct LogIndex {
    /// All commits (pending ones included), in position order.
    pub(super) commits: Vec<Arc<Commit>>,
    pub(super) next_position: u64,
    pub(super) keys: HashMap<(String, String), KeyIndex>,
    /// By `(stream, key, actor digest)`.
    pub(super) snapshots: HashMap<(String, String, String), Snapshot>,
    pub(super) checkpoints: HashMap<String, u64>,
    /// By `(consumer, bucket, key)`.
    pub(super) kv: BTreeMap<(String, String, String), Vec<u8>>,
    pub(super) timers: TimerIndex,
    pub(super) consumers: HashMap<String, ConsumerProgress>,
    /// By `(consumer, position)`.
    pub(super) dead: BTreeMap<(String, u64), DeadLetterEntry>,
    /// Set when a write failed: the disk may no longer match this index, so nothing more is
    /// written. The reason.
    pub(super) poisoned: Option<String>,
}

impl LogIndex {
    /// The index of an empty log.
    pub(super) fn new() -> LogIndex {
        LogIndex { next_position: 1, ..LogIndex::default() }
    }

    /// Index of the commit holding `position`.
    fn commit_index(&self, position: u64) -> Option<usize> {
        let i = self.commits.partition_point(|c| c.last_position() < position);
        (i < self.commits.len() && self.commits[i].first_position <= position).then_some(i)
    }

    pub(super) fn commit_at(&self, position: u64) -> Option<&Arc<Commit>> {
        self.commit_index(position).map(|i| &self.commits[i])
    }

    pub(super) fn insert_commit(&mut self, c: Commit, command_id: &str) {
        let idx = self.commits.len();
        let ki = self.keys.entry((c.stream.clone(), c.key.clone())).or_default();
        ki.last_sequence = c.last_sequence();
        ki.commits.push(idx);
        if !command_id.is_empty() {
            ki.command_ids.insert(command_id.to_owned(), idx);
        }
        self.next_position = c.last_position() + 1;
        self.commits.push(Arc::new(c));
    }

    /// Applies one record read back from the log, checking that an events record continues
    /// the log where it should. The error names what is out of place.
    pub(super) fn replay(&mut self, r: Record) -> Result<(), String> {
        let Record::Events(c) = r else {
            self.apply(r);
            return Ok(());
        };
        if c.first_position != self.next_position {
            return Err(format!("events at position {}, expected {}", c.first_position, self.next_position));
        }
        let expected_seq = self.keys.get(&(c.stream.clone(), c.key.clone())).map_or(0, |k| k.last_sequence) + 1;
        if c.first_sequence != expected_seq || c.events.is_empty() {
            return Err(format!(
                "events of {}/{} at sequence {}, expected {expected_seq}",
                c.stream, c.key, c.first_sequence
            ));
        }
        let command_id = c.events.first().map_or_else(String::new, |e| e.command_id.clone());
        self.insert_commit(c, &command_id);
        Ok(())
    }

    /// Applies a non-event record (events are inserted with [`LogIndex::insert_commit`]).
    pub(super) fn apply(&mut self, r: Record) {
        match r {
            Record::Events(_) | Record::SegmentEnd { .. } => {}
            Record::Snapshot { stream, key, snapshot } => {
                self.snapshots.insert((stream, key, snapshot.actor_digest.clone()), snapshot);
            }
            Record::Projection { consumer, position, writes } => self.apply_projection(consumer, position, writes),
            Record::TimerPut(t) => {
                self.timers.insert(t);
            }
            Record::TimerCancel(id) => {
                self.timers.remove(&id);
            }
            Record::Ack { consumer, position } => self.mark_done(&consumer, position),
            Record::Nack { consumer, position, attempts } => {
                self.consumers.entry(consumer).or_default().attempts.insert(position, attempts);
            }
            Record::DeadLetter { consumer, position, attempts, reason } => {
                self.mark_done(&consumer, position);
                self.dead.insert((consumer, position), DeadLetterEntry { attempts, reason });
            }
            Record::Redrive { consumer, position } => {
                self.dead.remove(&(consumer.clone(), position));
                let cs = self.consumers.entry(consumer).or_default();
                cs.attempts.remove(&position);
                cs.redrive.insert(position);
            }
        }
    }

    fn apply_projection(&mut self, consumer: String, position: u64, writes: Vec<KvWrite>) {
        for w in writes {
            let k = (consumer.clone(), w.bucket, w.key);
            match w.value {
                Some(v) => self.kv.insert(k, v),
                None => self.kv.remove(&k),
            };
        }
        self.checkpoints.insert(consumer, position);
    }

    fn mark_done(&mut self, consumer: &str, position: u64) {
        let cs = self.consumers.entry(consumer.to_owned()).or_default();
        cs.attempts.remove(&position);
        cs.redrive.remove(&position);
        if position > cs.done_upto {
            cs.done_above.insert(position);
        }
        // Advance over the contiguous prefix of finished commits (positions are dense).
        loop {
            let next_first = cs.done_upto + 1;
            let i = self.commits.partition_point(|c| c.last_position() < next_first);
            let Some(c) = self.commits.get(i) else { break };
            if c.first_position != next_first || !cs.done_above.remove(&c.last_position()) {
                break;
            }
            cs.done_upto = c.last_position();
        }
    }

    /// Last sequence of a key among its commits at or below `durable`.
    pub(super) fn durable_last_sequence(&self, ki: &KeyIndex, durable: u64) -> u64 {
        ki.commits
            .iter()
            .rev()
            .map(|&i| &self.commits[i])
            .find(|c| c.last_position() <= durable)
            .map(|c| c.last_sequence())
            .unwrap_or(0)
    }
}
