//! Counters a runtime keeps while it runs, printed by `tollgate stats` and `tollgate run`.

use crate::{Journal, RuntimeError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Stream on which a runtime records its counters when it stops (one event per run, keyed by
/// node), so `tollgate stats` can add them up from the store alone.
pub const STATS_STREAM: &str = "tollgate.stats";

/// Counters of one runtime (or the sum of several runs).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Commands that appended events.
    pub accepted: u64,
    /// Commands from clients (and a policy's charging calls) an aggregate refused, by
    /// rejection code.
    pub rejected: BTreeMap<String, u64>,
    /// Commands process managers sent that an aggregate refused, by rejection code: each is
    /// told to its manager (`tollgate.refusals`), not counted in `rejected`.
    #[serde(default)]
    pub reaction_refusals: BTreeMap<String, u64>,
    /// Commands answered from the log because their id was already committed.
    pub duplicates: u64,
    /// Appends that lost an optimistic-concurrency race (each was retried).
    pub occ_conflicts: u64,
    /// Admission decisions by result code (`success`, `credit-limit-reached`, ...).
    pub result_codes: BTreeMap<String, u64>,
    /// Snapshots written.
    pub snapshots: u64,
    /// Deliveries projectors and process managers failed (each nacked).
    pub delivery_failures: u64,
    /// Deliveries moved to the dead letters.
    pub dead_lettered: u64,
    /// Timers fired.
    pub timers_fired: u64,
    /// Reactions refused for going over a bound of `[reactions]` (each failed its delivery).
    #[serde(default)]
    pub reactions_over_bounds: u64,
    /// Holds released because the decision that made them failed (trap or cap).
    #[serde(default)]
    pub holds_released: u64,
    /// Debits and direct debits refunded because the decision that made them failed.
    #[serde(default)]
    pub charges_refunded: u64,
}

impl Stats {
    /// Takes back what was counted between `before` and `after` (readings of these counters):
    /// the work of a request that is answered again from scratch.
    pub(crate) fn take_back(&mut self, before: &Stats, after: &Stats) {
        fn counts(total: &mut u64, before: u64, after: u64) {
            *total = total.saturating_sub(after.saturating_sub(before));
        }
        fn by_code(total: &mut BTreeMap<String, u64>, before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) {
            for (code, &n) in after {
                let counted = n.saturating_sub(before.get(code).copied().unwrap_or(0));
                if let Some(t) = total.get_mut(code) {
                    *t = t.saturating_sub(counted);
                    if *t == 0 {
                        total.remove(code);
                    }
                }
            }
        }
        counts(&mut self.accepted, before.accepted, after.accepted);
        by_code(&mut self.rejected, &before.rejected, &after.rejected);
        by_code(&mut self.reaction_refusals, &before.reaction_refusals, &after.reaction_refusals);
        counts(&mut self.duplicates, before.duplicates, after.duplicates);
        counts(&mut self.occ_conflicts, before.occ_conflicts, after.occ_conflicts);
        by_code(&mut self.result_codes, &before.result_codes, &after.result_codes);
        counts(&mut self.snapshots, before.snapshots, after.snapshots);
        counts(&mut self.delivery_failures, before.delivery_failures, after.delivery_failures);
        counts(&mut self.dead_lettered, before.dead_lettered, after.dead_lettered);
        counts(&mut self.timers_fired, before.timers_fired, after.timers_fired);
        counts(&mut self.reactions_over_bounds, before.reactions_over_bounds, after.reactions_over_bounds);
        counts(&mut self.holds_released, before.holds_released, after.holds_released);
        counts(&mut self.charges_refunded, before.charges_refunded, after.charges_refunded);
    }

    /// Counts a refusal `execute` counted in `rejected` as a refusal of a process manager's
    /// command instead.
    pub(crate) fn recount_as_reaction_refusal(&mut self, code: &str) {
        if let Some(n) = self.rejected.get_mut(code) {
            *n -= 1;
            if *n == 0 {
                self.rejected.remove(code);
            }
        }
        *self.reaction_refusals.entry(code.into()).or_default() += 1;
    }

    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &Stats) {
        self.accepted += other.accepted;
        for (k, v) in &other.rejected {
            *self.rejected.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &other.reaction_refusals {
            *self.reaction_refusals.entry(k.clone()).or_default() += v;
        }
        self.duplicates += other.duplicates;
        self.occ_conflicts += other.occ_conflicts;
        for (k, v) in &other.result_codes {
            *self.result_codes.entry(k.clone()).or_default() += v;
        }
        self.snapshots += other.snapshots;
        self.delivery_failures += other.delivery_failures;
        self.dead_lettered += other.dead_lettered;
        self.timers_fired += other.timers_fired;
        self.reactions_over_bounds += other.reactions_over_bounds;
        self.holds_released += other.holds_released;
        self.charges_refunded += other.charges_refunded;
    }

    /// Records these counters as one event on [`STATS_STREAM`] under `node` (a repeat of
    /// `run_id` is a no-op), for `tollgate stats`; any thread may record, e.g. a server whose
    /// runtimes are still busy.
    pub fn record(&self, journal: &Journal, node: &str, run_id: &str, now_ms: u64) -> Result<(), RuntimeError> {
        let event = crate::journal::json_event("counters-recorded", self, run_id, now_ms)?;
        match journal.append(STATS_STREAM, node, tollgate_store::ExpectedVersion::Any, vec![event]) {
            Ok(_) | Err(tollgate_store::StoreError::Duplicate { .. }) => Ok(()),
            Err(e) => Err(journal.error("record counters", e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_sums_every_counter() {
        let mut a = Stats { accepted: 1, occ_conflicts: 2, ..Stats::default() };
        a.rejected.insert("insufficient-funds".into(), 1);
        let mut b = a.clone();
        b.result_codes.insert("success".into(), 3);
        b.reaction_refusals.insert("command-id-conflict".into(), 1);
        a.add(&b);
        assert_eq!(a.reaction_refusals["command-id-conflict"], 1);
        assert_eq!(a.accepted, 2);
        assert_eq!(a.occ_conflicts, 4);
        assert_eq!(a.rejected["insufficient-funds"], 2);
        assert_eq!(a.result_codes["success"], 3);
    }
}
