//! "cold": the first call of an actor in a fresh process, measured in-process on one engine.
//!
//! * `cold-compile`: `Component::new` (Cranelift compiles the component) + link
//!   (`instantiate_pre`) + instantiate + the first command: `load` of the state from a
//!   snapshot, then `execute`.
//! * `cold-cache`: the same with `Component::deserialize` of bytes `Component::serialize`
//!   wrote, i.e. what a compiled-code cache saves (this uses wasmtime directly, not
//!   tollgate-host's cache, which reads and checksums an entry's bytes, then deserializes them).
//!   `cold-cache-file` deserializes from a file (mmap) instead, for comparison.
//! * `cold-engine`: what a fresh process pays once before any of that: `HostEngine::new`
//!   (pooling allocator, linker with every import, epoch thread).

#![allow(clippy::unwrap_used)] // a benchmark stops on the first unexpected error

use std::hint::black_box;
use std::time::{Duration, Instant};
use tollgate_benches::fixtures;
use tollgate_benches::measure::{self, Report};
use tollgate_host::aggregate::{Base, Command, StoredState};
use tollgate_host::bindings::aggregate::Aggregate;
use tollgate_host::state::StoreState;
use tollgate_host::{HostEngine, HostState, Limits};
use tollgate_host_test::fixtures::PREPAID_ACCOUNT;
use wasmtime::component::Component;

/// Links, instantiates and makes the first call.
fn first_call(engine: &HostEngine, component: &Component, state: &Base, command: &Command) {
    let pre = engine.linker().instantiate_pre(component).expect("link");
    let mut store = StoreState::new_store(engine, HostState::new(), None);
    store.set_epoch_deadline(engine.limits().cpu_ms);
    let instance = pre.instantiate(&mut store).expect("instantiate");
    let bindings = Aggregate::new(&mut store, &instance).expect("bindings");
    let handler = bindings.tollgate_eventsourcing_command_handler();
    let empty = tollgate_host::aggregate::pack(&[]);
    handler.call_load(&mut store, fixtures::KEY, state, &empty).expect("no trap").expect("the snapshot loads");
    let Base::Snapshot(StoredState { sequence, .. }) = state else { unreachable!("a snapshot base") };
    let r = handler.call_execute(&mut store, *sequence, command);
    black_box(r.expect("no trap").expect("accepted"));
}

fn main() {
    let engine = HostEngine::new(Limits::default()).expect("engine");
    let path = fixtures::actor(PREPAID_ACCOUNT);
    let bytes = std::fs::read(&path).expect("read prepaid-account");
    let serialized = Component::new(engine.engine(), &bytes).expect("compile").serialize().expect("serialize");
    let dir = tempfile::tempdir().expect("temp dir");
    let cached = dir.path().join("prepaid_account.cwasm");
    std::fs::write(&cached, &serialized).expect("write the serialized component");
    let history = fixtures::realistic_history();
    let state = fixtures::fold(None, &fixtures::events(&history, 1));
    let state = Base::Snapshot(StoredState { sequence: history.len() as u64, state });
    let command = fixtures::command("bench-reserve", &fixtures::reserve("bench-r"), 1_700_000_000_000);
    println!("cold: component {} bytes, serialized {} bytes", bytes.len(), serialized.len());

    let compile = || {
        let component = Component::new(engine.engine(), &bytes).expect("compile");
        first_call(&engine, &component, &state, &command);
    };
    // SAFETY: `serialized` was produced by `Component::serialize` on this very engine, in this
    // process, and is not modified; that is the contract `deserialize` asks for.
    let deserialize = || unsafe { Component::deserialize(engine.engine(), &serialized) }.expect("deserialize");
    // SAFETY: as above; the file holds exactly those bytes and nothing else writes it.
    let deserialize_file = || unsafe { Component::deserialize_file(engine.engine(), &cached) }.expect("deserialize");
    let cache = || first_call(&engine, &deserialize(), &state, &command);
    let cache_file = || first_call(&engine, &deserialize_file(), &state, &command);
    let engine_setup = || drop(black_box(HostEngine::new(Limits::default()).expect("engine")));

    let mut c = measure::criterion();
    {
        let mut group = c.benchmark_group("cold");
        group.sample_size(10).measurement_time(Duration::from_secs(4));
        group.bench_function("compile + first call", |b| b.iter(compile));
        group.sample_size(20).measurement_time(Duration::from_secs(3));
        group.bench_function("deserialize + first call", |b| b.iter(cache));
        group.bench_function("deserialize_file + first call", |b| b.iter(cache_file));
        group.bench_function("engine setup", |b| b.iter(engine_setup));
        group.finish();
    }
    c.final_summary();

    if !measure::bench_mode() {
        return;
    }
    let phase = Duration::from_secs(2);
    let timing = measure::measure_with_setup(phase, 20, |_| (), |()| compile());
    Report::new("cold-compile", "Component::new + instantiate_pre + instantiate + load + execute", &timing).write();
    let timing = measure::measure_with_setup(phase, 100, |_| (), |()| cache());
    let met = timing.p99() <= 5_000_000;
    Report::new(
        "cold-cache",
        "Component::deserialize (bytes) + instantiate_pre + instantiate + load + execute",
        &timing,
    )
    .target("<= 5 ms (p99)", met)
    .write();
    let timing = measure::measure_with_setup(phase, 100, |_| (), |()| cache_file());
    Report::new(
        "cold-cache-file",
        "Component::deserialize_file (mmap) + instantiate_pre + instantiate + load + execute",
        &timing,
    )
    .write();
    let timing = measure::measure_with_setup(phase, 100, |_| (), |()| engine_setup());
    Report::new("cold-engine", "HostEngine::new: pooling allocator, linker, epoch thread (once per process)", &timing)
        .write();

    // Where the cached path's time goes.
    let split = |f: &dyn Fn()| {
        let t = Instant::now();
        for _ in 0..50 {
            f();
        }
        t.elapsed() / 50
    };
    let deser = split(&|| drop(black_box(deserialize())));
    let component = deserialize();
    let link = split(&|| drop(black_box(engine.linker().instantiate_pre(&component).expect("link"))));
    let all = split(&|| first_call(&engine, &component, &state, &command));
    println!(
        "cold-cache breakdown: deserialize {deser:?}, instantiate_pre {link:?}, instantiate_pre + instantiate + first call {all:?}"
    );
}
