//! Runtime tests on the compiled reference actors (built once per run by
//! `cargo xtask build-actors`).

mod durable;
mod edge;
mod hostile;
mod jetstream;
mod properties;
