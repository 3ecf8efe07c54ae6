//! The one wasmtime `Engine` per process, its limits, and the linker with every import the
//! harness provides.

use crate::budget::ImportBudgets;
use crate::code_cache::CodeCache;
use crate::error::HostError;
use crate::state::StoreState;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// What one call of an actor may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// CPU time of the guest per call, in milliseconds, counted in fuel ([`FUEL_PER_MS`] per
    /// ms): the same call gets the same verdict on an idle or a loaded machine, and time spent
    /// in host imports (an fsync behind a policy's `reserve`) is not counted. At most
    /// [`MAX_CPU_MS`].
    pub cpu_ms: u64,
    /// Linear memory per instance, in bytes.
    pub memory_bytes: usize,
    /// Instances alive at once across the engine (pooling allocator slots).
    pub max_instances: u32,
    /// What one call may do through each host import (see [`crate::budget`]).
    pub imports: ImportBudgets,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { cpu_ms: 100, memory_bytes: 64 << 20, max_instances: 128, imports: ImportBudgets::default() }
    }
}

impl Limits {
    /// The fuel one call starts with: `cpu_ms` x [`FUEL_PER_MS`].
    pub fn fuel(&self) -> u64 {
        // Cannot overflow: `HostEngine::new` refuses a `cpu_ms` above `MAX_CPU_MS`.
        self.cpu_ms.saturating_mul(FUEL_PER_MS)
    }

    /// The wall-clock backstop of one call, in ms: [`BACKSTOP_FACTOR`] x `cpu_ms`, at least
    /// [`MIN_BACKSTOP_MS`].
    pub fn backstop_ms(&self) -> u64 {
        self.cpu_ms.saturating_mul(BACKSTOP_FACTOR).max(MIN_BACKSTOP_MS)
    }

    fn backstop_ticks(&self) -> u64 {
        self.backstop_ms().div_ceil(EPOCH_TICK.as_millis() as u64)
    }

    fn check(&self) -> Result<(), HostError> {
        let bad = |message: String| Err(HostError::Host { context: "check the limits".into(), message });
        if !(1..=MAX_CPU_MS).contains(&self.cpu_ms) {
            return bad(format!("cpu_ms is {}, must be between 1 and {MAX_CPU_MS}", self.cpu_ms));
        }
        if !(1..=MAX_MEMORY_BYTES).contains(&self.memory_bytes) {
            return bad(format!("memory_bytes is {}, must be between 1 and {MAX_MEMORY_BYTES}", self.memory_bytes));
        }
        if self.max_instances == 0 || self.max_instances.checked_mul(8).is_none() {
            return bad(format!("max_instances is {}, must be between 1 and {}", self.max_instances, u32::MAX / 8));
        }
        if let Some(budget) = self.imports.zero() {
            return bad(format!("the import budget {} is 0, must be at least 1", budget.field()));
        }
        Ok(())
    }
}

/// Fuel per millisecond of [`Limits::cpu_ms`]. Fuel counts wasm operators as wasmtime executes
/// them (most cost 1); calibrated by timing the `misbehaving` fixture's `spin` loop, which ran
/// about 1.1 billion operators a second on this project's reference machine (2-core x86-64
/// VM), and rounded down to 1 million per ms, so a call's cap in ms is close to the CPU time
/// it gets on such a machine. A faster machine runs the same fuel in less time, a slower or
/// loaded one in more: the verdict on a call never changes, only how long it takes.
pub const FUEL_PER_MS: u64 = 1_000_000;

/// The largest `cpu_ms` accepted: a minute of guest CPU per call.
pub const MAX_CPU_MS: u64 = 60_000;

/// The largest linear memory accepted: the whole 4 GiB a 32-bit guest can address.
pub const MAX_MEMORY_BYTES: usize = 4 << 30;

/// The wall-clock backstop is this many times the CPU cap, and at least [`MIN_BACKSTOP_MS`].
///
/// Fuel does not run down while the guest waits in a host import; the imports' own budgets
/// ([`crate::budget`]) end a call that loops over them within about its CPU cap, so the
/// backstop is what is left for a host that is itself slow: it must never fire on an honest
/// call. It counts wall time from the start of the call to its end, and so includes what the
/// guest is owed but does not control: being scheduled out on a loaded machine (a call using
/// all its fuel on a 2-core machine shared by a dozen busy threads takes several times its
/// cap) and the host's work inside imports, above all a policy's charging calls, each a
/// command on the account with an append and its fsync (a few ms here, hundreds of ms on a
/// saturated disk, at most `charging_calls` of them per call).
pub const BACKSTOP_FACTOR: u64 = 10;

/// The shortest wall-clock backstop, in ms: 50 times the default CPU cap of 100 ms, and over
/// ten times a loaded fsync plus a call's fuel run on a fraction of a core (see
/// [`BACKSTOP_FACTOR`]), yet short enough that a call stuck in the host gives its worker back
/// within seconds.
pub const MIN_BACKSTOP_MS: u64 = 5_000;

/// How often the epoch advances: the granularity of the wall-clock backstop.
const EPOCH_TICK: Duration = Duration::from_millis(10);
/// Bytes of a pooled memory or table reset in place (memset) rather than decommitted when its
/// instance goes away.
const RESIDENT_BYTES: usize = 1 << 20;

struct Inner {
    engine: Engine,
    linker: Linker<StoreState>,
    limits: Limits,
}

/// A wasmtime engine configured for actors, with its linker and an optional cache of compiled
/// code on disk. Cheap to clone.
#[derive(Clone)]
pub struct HostEngine(Arc<Inner>, Option<Arc<CodeCache>>);

impl HostEngine {
    /// Builds an engine with explicit pooling limits and starts its epoch ticker (the
    /// wall-clock backstop); fails if a limit is out of range.
    ///
    /// ```no_run
    /// let engine = tollgate_host::HostEngine::new(tollgate_host::Limits::default()).unwrap();
    /// assert_eq!(engine.limits().cpu_ms, 100);
    /// ```
    pub fn new(limits: Limits) -> Result<Self, HostError> {
        limits.check()?;
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(limits.max_instances)
            .total_core_instances(limits.max_instances * 8)
            .total_memories(limits.max_instances * 2)
            .total_tables(limits.max_instances * 8)
            .total_stacks(limits.max_instances)
            .max_core_instances_per_component(16)
            .max_memories_per_component(2)
            .max_tables_per_component(16)
            .max_memory_size(limits.memory_bytes)
            // A fresh instance of a billing actor dirties a few dozen pages. Resetting just those
            // with memset (found by PAGEMAP_SCAN where the kernel has it) keeps them resident:
            // no madvise, TLB shootdown and page faults per instance.
            .pagemap_scan(wasmtime::Enabled::Auto)
            .linear_memory_keep_resident(RESIDENT_BYTES)
            .table_keep_resident(RESIDENT_BYTES);
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .consume_fuel(true)
            .epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        // For `perf`: JIT code would otherwise show as bare addresses.
        if std::env::var_os("TOLLGATE_PERFMAP").is_some() {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&config).map_err(HostError::host("create the wasmtime engine"))?;
        let linker = build_linker(&engine).map_err(HostError::host("link host imports"))?;
        spawn_epoch_ticker(&engine);
        Ok(HostEngine(Arc::new(Inner { engine, linker, limits }), None))
    }

    /// The process-wide engine with default limits, created on first use.
    pub fn shared() -> Result<HostEngine, HostError> {
        static SHARED: OnceLock<HostEngine> = OnceLock::new();
        if let Some(engine) = SHARED.get() {
            return Ok(engine.clone());
        }
        let engine = HostEngine::new(Limits::default())?;
        Ok(SHARED.get_or_init(|| engine).clone())
    }

    /// This engine (the same wasmtime engine, shared) with compiled code cached under
    /// `cache_dir/compiled/` (see [`crate::code_cache`]); [`Actor::load`](crate::Actor::load) then
    /// compiles a component once per engine configuration, not once per process.
    pub fn with_code_cache(&self, cache_dir: impl Into<PathBuf>) -> HostEngine {
        HostEngine(self.0.clone(), Some(Arc::new(CodeCache::new(cache_dir))))
    }

    /// [`HostEngine::with_code_cache`] on the default cache directory
    /// ([`code_cache::cache_dir`](crate::code_cache::cache_dir)); unchanged when there is none.
    /// The CLI and the runtime use this.
    pub fn with_default_code_cache(&self) -> HostEngine {
        match crate::code_cache::cache_dir() {
            Some(dir) => self.with_code_cache(dir),
            None => {
                tracing::debug!("no cache directory (HOME unset): compiled code is not cached");
                self.clone()
            }
        }
    }

    /// The compiled-code cache, if any.
    pub fn code_cache(&self) -> Option<&CodeCache> {
        self.1.as_deref()
    }

    /// The wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.0.engine
    }

    /// The linker holding every import the harness provides.
    pub fn linker(&self) -> &Linker<StoreState> {
        &self.0.linker
    }

    /// Per-call limits.
    pub fn limits(&self) -> &Limits {
        &self.0.limits
    }

    /// Gives `store` the budget of one call: [`Limits::fuel`] and the wall-clock backstop.
    pub fn arm<T>(&self, store: &mut wasmtime::Store<T>) {
        store.set_fuel(self.0.limits.fuel()).expect("fuel is enabled on every engine");
        store.set_epoch_deadline(self.0.limits.backstop_ticks());
    }
}

fn spawn_epoch_ticker(engine: &Engine) {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("tollgate-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .expect("spawn the epoch thread");
}

pub(crate) fn build_linker(engine: &Engine) -> wasmtime::Result<Linker<StoreState>> {
    use crate::bindings::{aggregate, policy, process_manager, projector, rater};
    let mut linker = Linker::new(engine);
    // Worlds share interfaces (logging, types); each world's add_to_linker defines them again.
    linker.allow_shadowing(true);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
    // Shadows WASI's clocks: the monotonic clock's subscriptions would block on real time, and
    // both count against each call's budget of clock calls.
    wasmtime_wasi::p2::bindings::clocks::monotonic_clock::add_to_linker::<_, HasSelf<StoreState>>(&mut linker, |s| s)?;
    wasmtime_wasi::p2::bindings::clocks::wall_clock::add_to_linker::<_, HasSelf<StoreState>>(&mut linker, |s| s)?;
    // Shadows WASI's randomness with the same, counted against each call's budget.
    wasmtime_wasi::p2::bindings::random::random::add_to_linker::<_, HasSelf<StoreState>>(&mut linker, |s| s)?;
    wasmtime_wasi::p2::bindings::random::insecure::add_to_linker::<_, HasSelf<StoreState>>(&mut linker, |s| s)?;
    aggregate::Aggregate::add_to_linker::<_, HasSelf<StoreState>>(&mut linker, |s| s)?;
    projector::Projector::add_to_linker::<_, HasSelf<StoreState>>(&mut linker, |s| s)?;
    process_manager::ProcessManager::add_to_linker::<_, HasSelf<StoreState>>(&mut linker, |s| s)?;
    rater::Rater::add_to_linker::<_, HasSelf<StoreState>>(&mut linker, |s| s)?;
    policy::Policy::add_to_linker::<_, HasSelf<StoreState>>(&mut linker, |s| s)?;
    Ok(linker)
}
