//! Runtime tests on the compiled reference actors (built once per run by
//! `cargo xtask build-actors`).

#![allow(clippy::unwrap_used)] // a test fails loudly on the first unexpected error

mod batch;
mod cluster;
mod durable;
mod edge;
mod hostile;
mod jetstream;
mod properties;
mod quota;
mod refusals;
mod resident;
