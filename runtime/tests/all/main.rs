//! Runtime tests on the compiled reference actors (built once per run by
//! `cargo xtask build-actors`).

mod durable;
mod edge;
mod jetstream;
mod properties;
