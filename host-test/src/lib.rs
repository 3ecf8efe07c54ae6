//! The tollgate test harness, on top of the production host (`tollgate-host`): where the
//! compiled actors are, a record of what an actor did through its imports, and tests written
//! given / when / then.
//!
//! - [`fixtures`]: the compiled reference actors and test fixtures, built once per run by
//!   `cargo xtask build-actors`.
//! - [`Recorder`]: every import call and log line of an actor, like spin-test's `calls()`.
//! - [`testing::AggregateTest`]: `given(events).when(command).then_expect_events(..)` on a
//!   compiled aggregate, comparing decoded values.

pub mod fixtures;
pub mod recorder;
pub mod testing;

pub use recorder::Recorder;
