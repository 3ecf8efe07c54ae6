//! Integration tests of the harness on compiled components (built once per run by
//! `cargo xtask build-actors`).

#![allow(clippy::unwrap_used)] // a test fails loudly on the first unexpected error

mod code_cache;
mod hostile;
mod loading;
mod misbehaving;
mod prepaid_account;
mod reactions;

use std::sync::OnceLock;
use tollgate_host::{Actor, HostEngine};
use tollgate_host_test::fixtures;

/// Loads (and compiles) each fixture once per test binary.
pub fn fixture(name: &'static str) -> Actor {
    static CACHE: OnceLock<std::sync::Mutex<std::collections::HashMap<&'static str, Actor>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut cache = cache.lock().unwrap();
    cache
        .entry(name)
        .or_insert_with(|| {
            let engine = HostEngine::shared().expect("engine");
            Actor::load(&engine, fixtures::actor_path(name)).unwrap_or_else(|e| panic!("{e}"))
        })
        .clone()
}
