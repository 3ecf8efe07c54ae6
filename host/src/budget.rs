//! What one guest call may do through the host's imports.
//!
//! Fuel counts only the guest's own instructions, so that the time the host spends inside an
//! import (an fsync behind a policy's `reserve`, a load on a busy machine) never changes the
//! verdict on a call. The other side of that choice: a guest that hands the host the same
//! 1 MiB string in a loop spends almost no fuel while the host copies gigabytes. So every
//! import the host serves has its own budget per call, counted in calls or bytes; the import
//! that goes over it traps the call with [`BudgetExceeded`], which names the import and the
//! budget, and the call ends within about the CPU cap instead of at the wall-clock backstop.
//! A trapped call is like any other trap: its instance is discarded and its key-value writes
//! are dropped.

use std::fmt;

/// The per-call budgets of the host's imports (manifest `[limits]`, see `docs/manifest.md`).
/// Counted from 0 at the start of every call of an actor's export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImportBudgets {
    /// `wasi:logging/logging.log` calls.
    pub log_calls: u64,
    /// Bytes handed to `wasi:logging` (contexts and messages, lines dropped over the kept
    /// 64 KiB included).
    pub log_bytes: u64,
    /// Bytes written to stdout and stderr (`wasi:cli`; stdout is discarded, stderr keeps its
    /// last 64 KiB).
    pub output_bytes: u64,
    /// Bytes asked of `wasi:random` (secure and insecure).
    pub random_bytes: u64,
    /// `wasi:clocks` calls (reading the time, subscribing to a sleep or a timeout): a guest
    /// waiting for time to pass polls in a loop.
    pub clock_calls: u64,
    /// `wasi:config/store` calls.
    pub config_calls: u64,
    /// `wasi:keyvalue/store` calls (open, get, set, delete, exists, list-keys).
    pub kv_calls: u64,
    /// Bytes of bucket names, keys and values passed to or from `wasi:keyvalue` either way
    /// (`list-keys` counts the keys of the bucket it pages through).
    pub kv_bytes: u64,
    /// Key-value writes (set and delete): for a projector, per delivery.
    pub kv_writes: u64,
    /// Bytes of keys and values written: for a projector, per delivery.
    pub kv_write_bytes: u64,
    /// `tollgate:billing/rating` calls.
    pub rating_calls: u64,
    /// `tollgate:billing/charging` calls (each one runs a command on the account, with its
    /// append and fsync).
    pub charging_calls: u64,
}

impl Default for ImportBudgets {
    /// Far above what an honest actor does in one call (the reference actors log a few lines,
    /// make one to three billing calls and a few key-value calls per event) and far below
    /// what would hold the host: each is a few milliseconds of host work at most.
    fn default() -> Self {
        ImportBudgets {
            log_calls: 10_000,
            log_bytes: 4 << 20,
            output_bytes: 4 << 20,
            random_bytes: 1 << 20,
            clock_calls: 10_000,
            config_calls: 1_000,
            kv_calls: 50_000,
            kv_bytes: 64 << 20,
            kv_writes: 10_000,
            kv_write_bytes: 16 << 20,
            rating_calls: 64,
            charging_calls: 16,
        }
    }
}

impl ImportBudgets {
    /// These budgets `times` over (saturating): for one call that does the work of `times`
    /// calls, such as a projector fed many deliveries at once by `tollgate replay`.
    pub fn times(&self, times: u64) -> ImportBudgets {
        let mut scaled = *self;
        for budget in Budget::ALL {
            *budget.slot(&mut scaled) = budget.of(self).saturating_mul(times.max(1));
        }
        scaled
    }

    /// The first budget that is 0 (each must let at least one call or byte through).
    pub fn zero(&self) -> Option<Budget> {
        Budget::ALL.into_iter().find(|b| b.of(self) == 0)
    }
}

/// One of the budgets of [`ImportBudgets`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    /// [`ImportBudgets::log_calls`].
    LogCalls,
    /// [`ImportBudgets::log_bytes`].
    LogBytes,
    /// [`ImportBudgets::output_bytes`].
    OutputBytes,
    /// [`ImportBudgets::random_bytes`].
    RandomBytes,
    /// [`ImportBudgets::clock_calls`].
    ClockCalls,
    /// [`ImportBudgets::config_calls`].
    ConfigCalls,
    /// [`ImportBudgets::kv_calls`].
    KvCalls,
    /// [`ImportBudgets::kv_bytes`].
    KvBytes,
    /// [`ImportBudgets::kv_writes`].
    KvWrites,
    /// [`ImportBudgets::kv_write_bytes`].
    KvWriteBytes,
    /// [`ImportBudgets::rating_calls`].
    RatingCalls,
    /// [`ImportBudgets::charging_calls`].
    ChargingCalls,
}

impl Budget {
    /// Every budget, in the order of [`ImportBudgets`]' fields.
    pub const ALL: [Budget; 12] = [
        Budget::LogCalls,
        Budget::LogBytes,
        Budget::OutputBytes,
        Budget::RandomBytes,
        Budget::ClockCalls,
        Budget::ConfigCalls,
        Budget::KvCalls,
        Budget::KvBytes,
        Budget::KvWrites,
        Budget::KvWriteBytes,
        Budget::RatingCalls,
        Budget::ChargingCalls,
    ];

    /// The field of [`ImportBudgets`], which is also its name in the manifest's `[limits]`.
    pub fn field(self) -> &'static str {
        match self {
            Budget::LogCalls => "log_calls",
            Budget::LogBytes => "log_bytes",
            Budget::OutputBytes => "output_bytes",
            Budget::RandomBytes => "random_bytes",
            Budget::ClockCalls => "clock_calls",
            Budget::ConfigCalls => "config_calls",
            Budget::KvCalls => "kv_calls",
            Budget::KvBytes => "kv_bytes",
            Budget::KvWrites => "kv_writes",
            Budget::KvWriteBytes => "kv_write_bytes",
            Budget::RatingCalls => "rating_calls",
            Budget::ChargingCalls => "charging_calls",
        }
    }

    /// The import it counts.
    pub fn import(self) -> &'static str {
        match self {
            Budget::LogCalls | Budget::LogBytes => "wasi:logging/logging",
            Budget::OutputBytes => "wasi:cli/stdout and wasi:cli/stderr",
            Budget::RandomBytes => "wasi:random",
            Budget::ClockCalls => "wasi:clocks",
            Budget::ConfigCalls => "wasi:config/store",
            Budget::KvCalls | Budget::KvBytes | Budget::KvWrites | Budget::KvWriteBytes => "wasi:keyvalue/store",
            Budget::RatingCalls => "tollgate:billing/rating",
            Budget::ChargingCalls => "tollgate:billing/charging",
        }
    }

    /// What it counts, naming the import, e.g. ``bytes logged through `wasi:logging/logging` ``.
    pub fn what(self) -> &'static str {
        match self {
            Budget::LogCalls => "calls to `wasi:logging/logging`",
            Budget::LogBytes => "bytes logged through `wasi:logging/logging`",
            Budget::OutputBytes => "bytes written to stdout and stderr (`wasi:cli`)",
            Budget::RandomBytes => "bytes of `wasi:random`",
            Budget::ClockCalls => "calls to `wasi:clocks`",
            Budget::ConfigCalls => "calls to `wasi:config/store`",
            Budget::KvCalls => "calls to `wasi:keyvalue/store`",
            Budget::KvBytes => "bytes read or written through `wasi:keyvalue/store`",
            Budget::KvWrites => "key-value writes (`wasi:keyvalue/store` set and delete)",
            Budget::KvWriteBytes => "bytes of key-value writes (`wasi:keyvalue/store`)",
            Budget::RatingCalls => "calls to `tollgate:billing/rating`",
            Budget::ChargingCalls => "calls to `tollgate:billing/charging`",
        }
    }

    /// Its value in `budgets`.
    pub fn of(self, budgets: &ImportBudgets) -> u64 {
        let mut copy = *budgets;
        *self.slot(&mut copy)
    }

    fn slot(self, b: &mut ImportBudgets) -> &mut u64 {
        match self {
            Budget::LogCalls => &mut b.log_calls,
            Budget::LogBytes => &mut b.log_bytes,
            Budget::OutputBytes => &mut b.output_bytes,
            Budget::RandomBytes => &mut b.random_bytes,
            Budget::ClockCalls => &mut b.clock_calls,
            Budget::ConfigCalls => &mut b.config_calls,
            Budget::KvCalls => &mut b.kv_calls,
            Budget::KvBytes => &mut b.kv_bytes,
            Budget::KvWrites => &mut b.kv_writes,
            Budget::KvWriteBytes => &mut b.kv_write_bytes,
            Budget::RatingCalls => &mut b.rating_calls,
            Budget::ChargingCalls => &mut b.charging_calls,
        }
    }
}

/// The trap an import raises when a call goes over one of its budgets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetExceeded {
    /// The budget.
    pub budget: Budget,
    /// Its value for this call.
    pub limit: u64,
}

impl fmt::Display for BudgetExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "over its budget of {} {} per call (`limits.{}`)",
            self.limit,
            self.budget.what(),
            self.budget.field()
        )
    }
}

impl std::error::Error for BudgetExceeded {}

/// What the call in progress has used of its budgets.
#[derive(Debug, Clone)]
pub struct ImportUse {
    budgets: ImportBudgets,
    used: [u64; Budget::ALL.len()],
}

impl ImportUse {
    /// Nothing used yet of `budgets`.
    pub fn new(budgets: ImportBudgets) -> Self {
        ImportUse { budgets, used: [0; Budget::ALL.len()] }
    }

    /// Starts a call with `budgets`.
    pub fn reset(&mut self, budgets: ImportBudgets) {
        *self = ImportUse::new(budgets);
    }

    /// Counts `amount` against `budget`; over it, the trap to raise.
    pub fn charge(&mut self, budget: Budget, amount: u64) -> Result<(), BudgetExceeded> {
        let slot = &mut self.used[budget as usize];
        *slot = slot.saturating_add(amount);
        let limit = budget.of(&self.budgets);
        if *slot > limit { Err(BudgetExceeded { budget, limit }) } else { Ok(()) }
    }

    /// How much of `budget` the call has used (its amounts summed, past the limit included).
    pub fn used(&self, budget: Budget) -> u64 {
        self.used[budget as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_lets_its_limit_through_and_traps_past_it() {
        let budgets = ImportBudgets { log_calls: 2, ..ImportBudgets::default() };
        let mut used = ImportUse::new(budgets);
        assert!(used.charge(Budget::LogCalls, 1).is_ok());
        assert!(used.charge(Budget::LogCalls, 1).is_ok());
        let trap = used.charge(Budget::LogCalls, 1).unwrap_err();
        assert_eq!(
            trap.to_string(),
            "over its budget of 2 calls to `wasi:logging/logging` per call (`limits.log_calls`)"
        );
        used.reset(budgets);
        assert_eq!(used.used(Budget::LogCalls), 0);
        assert!(used.charge(Budget::LogBytes, u64::MAX).is_err(), "no overflow past the limit");
    }

    #[test]
    fn budgets_scale_and_name_their_fields() {
        let b = ImportBudgets::default();
        assert_eq!(b.times(3).kv_writes, 3 * b.kv_writes);
        assert_eq!(b.times(0), b, "a call does at least one call's work");
        assert_eq!(ImportBudgets { charging_calls: u64::MAX, ..b }.times(2).charging_calls, u64::MAX);
        assert_eq!(b.zero(), None);
        assert_eq!(ImportBudgets { kv_bytes: 0, ..b }.zero(), Some(Budget::KvBytes));
        let fields: Vec<&str> = Budget::ALL.iter().map(|b| b.field()).collect();
        assert_eq!(fields.len(), fields.iter().collect::<std::collections::BTreeSet<_>>().len(), "distinct");
    }
}
