//! "fresh": a fresh instance per command, from the actor's `InstancePre` with the pooling
//! allocator: each iteration creates a new `AggregateActor`, which holds no state, so the
//! command costs what a miss costs: `load` of the realistic state from a snapshot (the first
//! call instantiates), then `execute` of a reserve on it; then it is dropped (returning its
//! pool slot).
//!
//! `fresh-raw` does the same one level lower, to show what the harness adds: a new store
//! (`StoreState::new_store`: WASI context with nothing granted, memory cap), `instantiate` from
//! the `InstancePre`, the typed bindings, `load` and `execute`.

#![allow(clippy::unwrap_used)] // a benchmark stops on the first unexpected error

use std::hint::black_box;
use tollgate_benches::fixtures;
use tollgate_benches::measure::{self, PHASE, Report};
use tollgate_host::aggregate::{Base, StoredState};
use tollgate_host::bindings::aggregate::Aggregate;
use tollgate_host::state::StoreState;
use tollgate_host::{Actor, AggregateActor, HostEngine, HostState, Limits};
use tollgate_host_test::fixtures::PREPAID_ACCOUNT;

fn main() {
    let engine = HostEngine::new(Limits::default()).expect("engine");
    let actor = Actor::load(&engine, fixtures::actor(PREPAID_ACCOUNT)).expect("load prepaid-account");
    let host_state = HostState::new();
    let state = fixtures::fold(None, &fixtures::events(&fixtures::realistic_history(), 1));
    let reserve = fixtures::command("bench-reserve", &fixtures::reserve("bench-r"), 1_700_000_000_000);
    let at = fixtures::realistic_history().len() as u64;
    let base = Base::Snapshot(StoredState { sequence: at, state });

    let fresh = || {
        let mut a = AggregateActor::new(actor.clone(), host_state.clone()).expect("aggregate actor");
        a.load(fixtures::KEY, &base, &[]).expect("no trap").expect("the snapshot loads");
        black_box(a.execute(at, &reserve).expect("no trap").expect("accepted"));
        debug_assert_eq!(a.instances_created(), 1);
    };
    let raw = || {
        let mut store = StoreState::new_store(&engine, host_state.clone(), None);
        store.set_epoch_deadline(engine.limits().cpu_ms);
        let instance = actor.instance_pre().instantiate(&mut store).expect("instantiate");
        let bindings = Aggregate::new(&mut store, &instance).expect("bindings");
        let handler = bindings.tollgate_eventsourcing_command_handler();
        let empty = tollgate_host::aggregate::pack(&[]);
        handler.call_load(&mut store, fixtures::KEY, &base, &empty).expect("no trap").expect("the snapshot loads");
        let r = handler.call_execute(&mut store, at, &reserve);
        black_box(r.expect("no trap").expect("accepted"));
    };
    fresh();
    raw();

    let mut c = measure::criterion();
    c.bench_function("fresh instance + reserve", |b| b.iter(fresh));
    c.bench_function("fresh-raw instantiate + reserve", |b| b.iter(raw));
    c.final_summary();

    if !measure::bench_mode() {
        return;
    }
    let timing = measure::measure(PHASE, fresh);
    Report::new(
        "fresh",
        "new AggregateActor + load of the state from a snapshot + execute (reserve): instantiate from InstancePre (pooling) + two calls",
        &timing,
    )
    .target(">= 40k/s", timing.ops_per_sec >= 40_000.0)
    .write();
    let timing = measure::measure(PHASE, raw);
    Report::new(
        "fresh-raw",
        "new store + InstancePre::instantiate + bindings + load + execute, without the harness's Guest",
        &timing,
    )
    .write();
}
