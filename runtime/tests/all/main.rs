//! Runtime tests on the compiled reference actors (built once per run by
//! `cargo xtask build-actors`).

mod edge;
mod properties;
