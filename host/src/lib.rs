//! The tollgate host: load compiled actors into wasmtime, give them their imports, cap them,
//! and call them. The runtime runs every actor through it; `tollgate-host-test` adds the test
//! harness (recording, fixtures, given / when / then) on top.
//!
//! - [`HostEngine`]: one engine per process, pooling allocator with explicit limits, a CPU cap
//!   per call (fuel: deterministic, guest instructions only, see [`engine::FUEL_PER_MS`]), a
//!   budget per call for each host import ([`ImportBudgets`]: bytes logged, written, asked of
//!   `wasi:random` or moved through key-value storage, and calls), a wall-clock backstop
//!   (epoch interruption) for a host that is itself slow, and a memory cap per instance.
//! - [`CodeCache`]: compiled code on disk, keyed by component and engine configuration
//!   ([`HostEngine::with_code_cache`]).
//! - [`Actor`]: a loaded component; loading checks it is a component, what role it exports,
//!   and that every import is provided (the error names the missing interface).
//! - WASI is linked with nothing granted: no preopens, environment, arguments or network; a
//!   virtual clock (a sleep returns at once) and deterministic randomness. The guest's stderr
//!   is captured per call (its last 64 KiB) so a panic message reaches the error; its log lines
//!   go to `tracing`, bounded per call.
//! - A trap poisons its store: the instance is discarded and the next call gets a fresh one.
//!   Business failures are rejections (WIT results), never traps.
//! - [`HostState`]: an actor's configuration, key-value storage and clock, shared by all its
//!   instances; writes of a failed call are dropped.

pub mod actor;
pub mod aggregate;
pub mod bindings;
pub mod budget;
pub mod code_cache;
pub mod engine;
pub mod error;
pub mod guest;
pub mod host_state;
mod imports;
pub mod kind;
pub mod services;
pub mod state;
pub mod typed;

pub use actor::Actor;
pub use aggregate::{AggregateActor, AggregateHost, Outcome};
pub use budget::ImportBudgets;
pub use code_cache::{CodeCache, CodeCacheStats};
pub use engine::{HostEngine, Limits};
pub use error::HostError;
pub use host_state::{HostState, ImportObserver};
pub use kind::{ActorKind, KINDS, KindSpec};
pub use typed::{PolicyActor, ProcessManagerActor, ProjectorActor, RaterActor};
