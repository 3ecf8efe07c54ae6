//! The tollgate test harness, on top of the production host (`tollgate-host`) and the runtime:
//! where the compiled actors are, a record of what an actor did through its imports, and the
//! one given / when / then engine.
//!
//! - [`fixtures`]: the compiled reference actors and test fixtures, built once per run by
//!   `cargo xtask build-actors`.
//! - [`Recorder`]: every import call and log line of an actor, like spin-test's `calls()`.
//! - [`scenario`]: the given / when / then engine: a case run on fresh instances of its actors
//!   (one runner per actor kind) and what came of it; `tollgate test` runs scenario files on it.
//! - [`testing::AggregateTest`]: `given(events).when(command).then_expect_events(..)` on a
//!   compiled aggregate, comparing decoded values, on the engine's aggregate runner.

pub mod fixtures;
pub mod recorder;
pub mod scenario;
pub mod testing;

pub use recorder::Recorder;
